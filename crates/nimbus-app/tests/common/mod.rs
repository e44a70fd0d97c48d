//! Helpers shared by this crate's integration tests.

use nimbus_app::{PushModule, PushRequest, Tenant};

/// Pushes one module (and activates it), as the CLI's push does in two steps.
pub async fn push_module(tenant: &Tenant, path: &str, source: String, source_map: Option<String>) {
    let staged = tenant
        .start_push(PushRequest {
            modules: vec![PushModule {
                path: path.into(),
                source,
                source_map,
                environment: "isolate".into(),
            }],
            unchanged: vec![],
            schema_source: None,
            dry_run: false,
        })
        .await
        .unwrap_or_else(|e| panic!("start push: {e}"));
    tenant
        .finish_push(&staged.token, false)
        .await
        .unwrap_or_else(|e| panic!("finish push: {e}"));
}

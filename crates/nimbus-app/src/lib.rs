//! Per-tenant use cases of Nimbus: the tenant catalog, running functions, pushing code.
//!
//! [`Nimbus`] is one server instance: it owns the control-plane catalog of tenants, the
//! storage backend, the shared JavaScript pool, and the active [`Tenant`]s. A [`Tenant`]
//! runs queries and mutations (with bounded optimistic-concurrency retries) and accepts
//! code pushes. Everything here is transport-agnostic: `nimbus-server` turns HTTP into
//! these calls and these results into HTTP.

mod action;
mod admission;
mod auth;
mod capacity;
mod catalog;
mod config;
mod cron_schedule;
mod dedup;
mod deployment;
mod egress;
mod env;
mod error;
mod execute;
mod fetch;
mod graduate;
mod http_action;
mod instance;
mod limits;
mod live;
pub mod metrics;
mod placement;
mod push;
mod query_cache;
mod saved_code_cache;
mod scheduler;
mod servers;
mod syscalls;
mod system;
mod tenant;

pub use action::ActionLimits;
pub use auth::{
    check_token_offline, Algorithm as AuthAlgorithm, AuthConfig, AuthProvider, UserIdentity,
};
pub use config::{JournalSettings, NimbusConfig};
pub use deployment::{FunctionInfo, ModuleHash};
pub use egress::EgressPolicy;
pub use env::EnvChange;
pub use error::AppError;
pub use execute::{parse_args, Caller, FunctionFailure, FunctionRequest, FunctionResponse};
pub use fetch::FetchLimits;
pub use graduate::Graduated;
pub use http_action::{HttpActionRequest, HttpActionResponse};
pub use instance::{CreatedTenant, Nimbus, TenantInfo, MIN_ADMIN_KEY_LEN, TENANT_BASE_BYTES};
pub use limits::{Limit, LimitOverrides, TenantLimits};
pub use live::{
    subscription_cost, Drained, LiveLimits, LiveResult, LiveSession, LiveStats, QueryId,
    SubscribeError, TooManySessions,
};
pub use nimbus_engine::{StorageHealth, StorageState};
pub use nimbus_journal::{JournalStats, TenantLag};
pub use nimbus_runtime::{CacheStats as JsCacheStats, Engine as JsEngine, FunctionKind};
pub use placement::{
    redact_url, Location, Placement, PlacementPolicy, PostgresSettings, ServerOrigin,
    ServerSettings, DEFAULT_SERVER,
};
pub use push::{IndexChange, PushModule, PushRequest, StagedPush, StagedStatus};
pub use saved_code_cache::{stats as saved_code_cache_stats, SavedCodeCacheStats};
pub use scheduler::{SchedulerConfig, SchedulerStats};
pub use servers::ServerInfo;
pub use tenant::{Tenant, TenantStats};

/// Tenant names: `^[a-z][a-z0-9-]{0,62}$`.
pub fn is_valid_tenant_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 63
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

#[cfg(test)]
mod tests {
    #[test]
    fn tenant_names() {
        for ok in ["a", "acme", "shop-42", &"a".repeat(63)] {
            assert!(super::is_valid_tenant_name(ok), "{ok}");
        }
        for bad in ["", "A", "1abc", "-a", "a_b", "a.b", &"a".repeat(64), "ä"] {
            assert!(!super::is_valid_tenant_name(bad), "{bad}");
        }
    }
}

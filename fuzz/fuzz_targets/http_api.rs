//! HTTP requests to the function API, the CLI's push, log and environment endpoints, the
//! admin API and `/metrics`, through the real router (the server's whole request path,
//! without the socket): any method, tenant routing, credentials, encoding and body.
//!
//! What must hold, whatever the request: no panic, no 500, and every error is a JSON
//! object with a string `code` and a string `message`.
#![no_main]

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use nimbus_fuzz::{server, INSTANCE_KEY, TENANT};
use serde_json::{json, Value as Json};
use tower::ServiceExt as _;

#[derive(Arbitrary, Debug)]
enum Verb {
    Get,
    Post,
    Put,
    Patch,
    Delete,
    Options,
}

/// How the request names the tenant.
#[derive(Arbitrary, Debug)]
enum Routing {
    PathPrefix,
    Host,
    /// No tenant (the CLI's calls, with the key naming it; the admin API).
    Neither,
    /// A tenant that does not exist.
    Missing,
}

#[derive(Arbitrary, Debug)]
enum Endpoint {
    Query,
    Mutation,
    Action,
    Function,
    QueryTs,
    QueryAtTs,
    Run(String),
    StartPush,
    WaitForSchema,
    FinishPush,
    ConfigHashes,
    FunctionLogs,
    CanonicalUrls,
    Export,
    UpdateEnvironmentVariables,
    AdminTenants,
    AdminTenant(bool),
    AdminStats,
    AdminReopen,
    AdminRotateKey,
    AdminDisconnect,
    Health,
    Metrics,
    Path(String),
}

impl Endpoint {
    fn path(&self) -> String {
        let tenant = |fixture: bool| if fixture { TENANT } else { "fz-other" };
        match self {
            Endpoint::Query => "/api/query".into(),
            Endpoint::Mutation => "/api/mutation".into(),
            Endpoint::Action => "/api/action".into(),
            Endpoint::Function => "/api/function".into(),
            Endpoint::QueryTs => "/api/query_ts".into(),
            Endpoint::QueryAtTs => "/api/query_at_ts".into(),
            Endpoint::Run(rest) => format!("/api/run/{rest}"),
            Endpoint::StartPush => "/api/deploy2/start_push".into(),
            Endpoint::WaitForSchema => "/api/deploy2/wait_for_schema".into(),
            Endpoint::FinishPush => "/api/deploy2/finish_push".into(),
            Endpoint::ConfigHashes => "/api/get_config_hashes".into(),
            Endpoint::FunctionLogs => "/api/stream_function_logs".into(),
            Endpoint::CanonicalUrls => "/api/v1/get_canonical_urls".into(),
            Endpoint::Export => "/api/export/request/zip".into(),
            Endpoint::UpdateEnvironmentVariables => "/api/update_environment_variables".into(),
            Endpoint::AdminTenants => "/admin/tenants".into(),
            Endpoint::AdminTenant(fixture) => format!("/admin/tenants/{}", tenant(*fixture)),
            Endpoint::AdminStats => format!("/admin/tenants/{TENANT}/stats"),
            Endpoint::AdminReopen => format!("/admin/tenants/{TENANT}/reopen"),
            Endpoint::AdminRotateKey => format!("/admin/tenants/{TENANT}/rotate-key"),
            Endpoint::AdminDisconnect => format!("/admin/tenants/{TENANT}/disconnect"),
            Endpoint::Health => "/health".into(),
            Endpoint::Metrics => "/metrics".into(),
            Endpoint::Path(path) => format!("/{path}"),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Credentials {
    None,
    InstanceKey,
    TenantKey,
    WrongTenantKey,
    Bearer(String),
    Convex(String),
}

#[derive(Arbitrary, Debug)]
enum Payload {
    Raw(Vec<u8>),
    /// A function call as the clients send it.
    Call {
        path: String,
        function: u8,
        args: String,
        format: Option<String>,
    },
    /// A tenant to create (names outside the fixture's are deleted again at once).
    Tenant(String),
    /// A push as the CLI sends it, with one module of any source.
    Push {
        source: String,
        schema: Option<String>,
    },
}

const FUNCTIONS: [&str; 8] = [
    "f:count",
    "f:echo",
    "f:fail",
    "f:whoami",
    "f:add",
    "f:reject",
    "f:crash",
    "f:missing",
];

impl Payload {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Payload::Raw(bytes) => bytes.clone(),
            Payload::Call {
                path,
                function,
                args,
                format,
            } => {
                let path = FUNCTIONS
                    .get(usize::from(*function))
                    .map_or(path.as_str(), |f| f);
                let args: Json = serde_json::from_str(args).unwrap_or_else(|_| json!(args));
                let mut body = json!({ "path": path, "args": args });
                if let Some(format) = format {
                    body["format"] = json!(format);
                }
                body.to_string().into_bytes()
            }
            Payload::Tenant(name) => json!({ "name": name }).to_string().into_bytes(),
            Payload::Push { source, schema } => json!({
                "adminKey": server().tenant_key(),
                "functions": "convex/",
                "appDefinition": {
                    "definition": null,
                    "dependencies": [],
                    "schema": schema.as_ref().map(|s| json!({"path": "schema.js", "source": s})),
                    "changedModules": [{"path": "g.js", "source": source, "environment": "isolate"}],
                    "udfServerVersion": "1.48.0",
                },
                "componentDefinitions": [],
                "nodeDependencies": [],
            })
            .to_string()
            .into_bytes(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Call {
    verb: Verb,
    routing: Routing,
    endpoint: Endpoint,
    credentials: Credentials,
    origin: bool,
    brotli: bool,
    query: Option<String>,
    payload: Payload,
}

fn request(call: &Call) -> Option<Request<Body>> {
    let method = match call.verb {
        Verb::Get => Method::GET,
        Verb::Post => Method::POST,
        Verb::Put => Method::PUT,
        Verb::Patch => Method::PATCH,
        Verb::Delete => Method::DELETE,
        Verb::Options => Method::OPTIONS,
    };
    let path = call.endpoint.path();
    let mut uri = match call.routing {
        Routing::PathPrefix => format!("/t/{TENANT}{path}"),
        Routing::Missing => format!("/t/fz-missing{path}"),
        Routing::Host | Routing::Neither => path,
    };
    if let Some(query) = &call.query {
        uri = format!("{uri}?{query}");
    }
    let host = match call.routing {
        Routing::Host => format!("{TENANT}.localhost"),
        _ => "127.0.0.1".into(),
    };
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", host)
        .header("content-type", "application/json");
    let authorization = match &call.credentials {
        Credentials::None => None,
        Credentials::InstanceKey => Some(format!("Bearer {INSTANCE_KEY}")),
        Credentials::TenantKey => Some(format!("Convex {}", server().tenant_key())),
        Credentials::WrongTenantKey => Some(format!("Convex {TENANT}|0123456789abcdef")),
        Credentials::Bearer(token) => Some(format!("Bearer {token}")),
        Credentials::Convex(key) => Some(format!("Convex {key}")),
    };
    if let Some(authorization) = authorization {
        builder = builder.header("authorization", authorization);
    }
    if call.origin {
        builder = builder
            .header("origin", "http://app.example")
            .header("access-control-request-method", "POST");
    }
    let mut body = call.payload.bytes();
    if call.brotli {
        builder = builder.header("content-encoding", "br");
        // Mostly a real brotli stream, so decompression is reached; a raw payload stays raw.
        if !matches!(call.payload, Payload::Raw(_)) {
            let mut compressed = Vec::new();
            let mut writer = brotli::CompressorWriter::new(&mut compressed, 4096, 5, 22);
            std::io::Write::write_all(&mut writer, &body).ok()?;
            drop(writer);
            body = compressed;
        }
    }
    // A URI or header the HTTP layer would refuse before the router sees it is skipped.
    builder.body(Body::from(body)).ok()
}

fuzz_target!(|call: Call| {
    let server = server();
    let Some(request) = request(&call) else {
        return;
    };
    let (status, body) = server.runtime.block_on(async {
        let response = server
            .router
            .clone()
            .oneshot(request)
            .await
            .unwrap_or_else(|never| match never {});
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 64 << 20)
            .await
            .unwrap_or_else(|e| panic!("reading the response body: {e}"));
        (status, body)
    });
    assert_ne!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "a 500 for {call:?}: {}",
        String::from_utf8_lossy(&body)
    );
    if status.is_client_error() || status.is_server_error() {
        let error: Json = serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "a {status} whose body is not JSON ({e}) for {call:?}: {}",
                String::from_utf8_lossy(&body)
            )
        });
        assert!(
            error["code"].is_string() && error["message"].is_string(),
            "a {status} without a code and a message for {call:?}: {error}"
        );
    }
    // Keep the instance as the next input expects it: one fixture tenant with a known key,
    // and nothing else that piles up.
    if status.is_success() {
        let answer: Json = serde_json::from_slice(&body).unwrap_or(Json::Null);
        match (&call.endpoint, status) {
            (Endpoint::AdminTenants, StatusCode::CREATED) => {
                if let Some(name) = answer["name"].as_str().filter(|n| *n != TENANT) {
                    server.runtime.block_on(async {
                        server
                            .nimbus
                            .delete_tenant(name)
                            .await
                            .unwrap_or_else(|e| panic!("deleting {name}: {e}"));
                    });
                }
            }
            (Endpoint::AdminRotateKey, _) => {
                if let Some(key) = answer["adminKey"].as_str() {
                    server.set_tenant_key(key.to_string());
                }
            }
            _ => {}
        }
    }
    if matches!(call.verb, Verb::Delete) {
        server.ensure_tenant();
    }
});

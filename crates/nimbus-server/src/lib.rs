//! The HTTP face of Nimbus: tenant resolution, the Convex HTTP API, the CLI push
//! endpoints, the admin API. The only crate that knows HTTP and JSON wire shapes; it
//! holds no business logic (everything is a call into `nimbus-app`).
//!
//! Routing is done by hand in [`dispatch`] rather than with axum's router, because a
//! tenant is addressed three ways (path prefix `/t/<tenant>`, host name
//! `<tenant>.<domain>`, or — for CLI calls that drop the prefix — the admin key), and
//! the same API paths live under each.

mod admin;
mod cors;
mod error;
mod functions;
mod limits;
mod metrics;
mod push;
mod site;
mod sync;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use nimbus_app::{Nimbus, Tenant};
use serde_json::{json, Value as Json};

pub use error::ApiError;
pub use site::{site_router, SiteConfig};
pub use sync::SyncConfig;

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Host-name routing: `<tenant>.<domain>` addresses a tenant.
    pub domain: String,
    /// Largest request body, compressed or not; larger bodies get 413.
    pub max_request_bytes: usize,
    /// How long `stream_function_logs` long-polls before answering.
    pub log_poll_wait: Duration,
    /// WebSocket sync connections.
    pub sync: SyncConfig,
    /// Open WebSocket connections one client address may have, across every tenant;
    /// further upgrades get 429 `TooManyConnections`.
    pub max_connections_per_address: usize,
    /// Failed admin authentications one client address may make in `auth_failure_window`;
    /// beyond, its admin requests get 429 `TooManyFailedAuthentications` until the window
    /// ends.
    pub max_auth_failures: u32,
    pub auth_failure_window: Duration,
    /// Tenants with series of their own in `GET /metrics` (the busiest); the other active
    /// ones are summed under `tenant="_other"`.
    pub metrics_max_tenants: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            domain: "localhost".into(),
            max_request_bytes: 8 << 20,
            log_poll_wait: Duration::from_secs(10),
            sync: SyncConfig::default(),
            max_connections_per_address: 1000,
            max_auth_failures: 20,
            auth_failure_window: Duration::from_secs(60),
            metrics_max_tenants: 100,
        }
    }
}

/// Client addresses whose failed authentications are remembered at once.
const MAX_TRACKED_AUTH_ADDRESSES: usize = 100_000;

/// What a sync socket reads into before it knows a frame's size (see `BENCHMARKS.md`, "Idle
/// sockets"): the protocol's messages are mostly small, and a larger frame gets room of its
/// own size as it arrives.
const SOCKET_READ_BUFFER_BYTES: usize = 4 << 10;

#[derive(Clone)]
pub(crate) struct AppState {
    pub nimbus: Arc<Nimbus>,
    pub config: Arc<ServerConfig>,
    pub connections: Arc<limits::ConnectionLimiter>,
    pub auth_failures: Arc<limits::AuthFailures>,
    /// When the router was made (`nimbus_uptime_seconds`).
    pub started: std::time::Instant,
}

impl AppState {
    /// Runs an admin-key check for a request from `client` under the per-address limit of
    /// failed authentications: refused while the address is locked out, and a wrong key is
    /// counted.
    pub async fn authenticate<T>(
        &self,
        client: IpAddr,
        check: impl std::future::Future<Output = Result<T, nimbus_app::AppError>>,
    ) -> Result<T, ApiError> {
        self.auth_failures.check(client)?;
        let result = check.await;
        if matches!(result, Err(nimbus_app::AppError::Unauthenticated)) {
            self.auth_failures.record_failure(client);
        }
        Ok(result?)
    }

    /// Checks `Authorization: Bearer <instance admin key>` of an instance-level request
    /// (the admin API, `/metrics`), under the per-address limit of failed authentications.
    /// `what` names the endpoint in the 401 message when the header is missing.
    pub async fn authenticate_instance_admin(
        &self,
        incoming: &Incoming,
        what: &str,
    ) -> Result<(), ApiError> {
        let key = incoming
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let Some(key) = key else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "Unauthenticated",
                format!("{what} needs Authorization: Bearer <instance admin key>"),
            ));
        };
        let check = async { self.nimbus.check_instance_admin_key(key) };
        self.authenticate(incoming.client, check).await
    }
}

/// The whole HTTP service. Serve it with client addresses
/// (`into_make_service_with_connect_info::<SocketAddr>`, as [`serve`] does): per-address
/// limits count requests without one as coming from 0.0.0.0.
pub fn router(nimbus: Arc<Nimbus>, config: ServerConfig) -> Router {
    let state = AppState {
        nimbus,
        connections: limits::ConnectionLimiter::new(config.max_connections_per_address),
        auth_failures: Arc::new(limits::AuthFailures::new(
            config.max_auth_failures,
            config.auth_failure_window,
            MAX_TRACKED_AUTH_ADDRESSES,
        )),
        config: Arc::new(config),
        started: std::time::Instant::now(),
    };
    Router::new().fallback(handle).with_state(state)
}

/// Serves until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt as _;
    // Answers go out as soon as they are written: with Nagle's algorithm on, an answer
    // written in two parts waits for the client's (delayed, up to 40 ms) ACK of the first.
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY on a connection");
        }
    });
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

async fn handle(State(state): State<AppState>, request: Request) -> Response {
    let path = collapse_slashes(request.uri().path());
    let (route_tenant, rest) = route(&path, request.headers(), &state.config.domain);
    // Tenant routes answer web pages on any origin (see `cors`); the instance admin API and
    // `/metrics` do not.
    let cross_origin = request.headers().contains_key(axum::http::header::ORIGIN)
        && (route_tenant.is_some() || !(is_instance_admin_path(&rest) || rest == "/metrics"));
    if cross_origin && cors::is_preflight(request.method(), request.headers()) {
        return cors::preflight(request.headers());
    }
    let mut response = match dispatch(&state, request, &path, route_tenant, rest).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    if cross_origin {
        cors::allow_any_origin(&mut response);
    }
    response
}

/// The tenant of `/admin/tenants/<tenant>/diagnostics`.
fn tenant_diagnostics_path(path: &str) -> Option<&str> {
    path.strip_prefix("/admin/tenants/")?
        .strip_suffix("/diagnostics")
        .filter(|name| !name.contains('/'))
}

/// `/admin` and below, reached without a tenant: the instance admin API.
fn is_instance_admin_path(path: &str) -> bool {
    path == "/admin" || path.starts_with("/admin/")
}

/// A parsed request: what every handler needs.
pub(crate) struct Incoming {
    /// The client's address (for per-address limits).
    pub client: IpAddr,
    pub method: Method,
    /// Path after the tenant prefix, with repeated slashes collapsed.
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
}

impl Incoming {
    pub fn json(&self) -> Result<Json, ApiError> {
        error::parse_json(&self.body)
    }

    /// The admin key from `Authorization: Convex <key>` or the body's `adminKey`.
    pub fn admin_key(&self, body: Option<&Json>) -> Option<String> {
        let header = self
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Convex "))
            .map(|v| v.split(':').next().unwrap_or(v).trim().to_string());
        header.or_else(|| {
            body.and_then(|b| b.get("adminKey"))
                .and_then(Json::as_str)
                .map(str::to_string)
        })
    }
}

pub(crate) fn collapse_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestTooLarge",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    };
    let raw = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())?;
    let brotli = headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        == Some("br");
    if !brotli {
        return Ok(raw);
    }
    use std::io::Read as _;
    let mut decoded = Vec::new();
    let reader = brotli::Decompressor::new(raw.as_ref(), 64 << 10);
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut decoded)
        .map_err(|e| ApiError::bad_json(format!("the brotli body cannot be decompressed: {e}")))?;
    if decoded.len() > limit {
        return Err(too_large());
    }
    Ok(decoded.into())
}

/// The tenant named by the host header (`acme.localhost:3210` → `acme`).
fn tenant_from_host(headers: &HeaderMap, domain: &str) -> Option<String> {
    let host = headers.get("host")?.to_str().ok()?;
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let name = host.strip_suffix(domain)?.strip_suffix('.')?;
    nimbus_app::is_valid_tenant_name(name).then(|| name.to_string())
}

/// Paths of the CLI, which may arrive without the tenant prefix.
fn is_cli_path(path: &str) -> bool {
    path.starts_with("/api/deploy2/")
        || path == "/api/get_config_hashes"
        || path == "/api/stream_function_logs"
        || path == "/api/v1/get_canonical_urls"
        || path == "/api/update_environment_variables"
}

/// `/api/sync` (Rust and Python clients) or `/api/<client version>/sync` (npm).
fn is_sync_path(path: &str) -> bool {
    path == "/api/sync"
        || path
            .strip_prefix("/api/")
            .and_then(|rest| rest.strip_suffix("/sync"))
            .is_some_and(|version| !version.is_empty() && !version.contains('/'))
}

/// Splits `/t/<tenant>/rest` into the tenant and `/rest`; otherwise the tenant comes from
/// the host name.
pub(crate) fn route(path: &str, headers: &HeaderMap, domain: &str) -> (Option<String>, String) {
    match path.strip_prefix("/t/") {
        Some(after) => {
            let (name, rest) = after
                .split_once('/')
                .map_or((after, "/".to_string()), |(n, r)| (n, format!("/{r}")));
            (Some(name.to_string()), rest)
        }
        None => (tenant_from_host(headers, domain), path.to_string()),
    }
}

/// Serves a request whose `path` (slashes collapsed) was routed to `route_tenant` and the
/// path under it, `rest`.
async fn dispatch(
    state: &AppState,
    request: Request,
    path: &str,
    route_tenant: Option<String>,
    rest: String,
) -> Result<Response, ApiError> {
    let (mut parts, body) = request.into_parts();
    let client = parts
        .extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip());
    if path == "/health" {
        return Ok(axum::Json(json!({"status": "ok"})).into_response());
    }
    if is_sync_path(&rest) {
        let Some(name) = route_tenant else {
            return Err(ApiError::not_found(&rest));
        };
        let tenant = state.nimbus.tenant(&name).await?;
        // Counted before the upgrade, so a client over a limit gets a plain 429.
        let slot = state.connections.acquire(client)?;
        let session = tenant.live_session(client).map_err(|full| {
            let mut error = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyConnections",
                full.to_string(),
            );
            error.retry_after_secs = Some(5);
            error
        })?;
        use axum::extract::FromRequestParts as _;
        let upgrade = axum::extract::ws::WebSocketUpgrade::from_request_parts(&mut parts, state)
            .await
            .map_err(|rejection| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "WebSocketUpgradeRequired",
                    format!("{rest} is the sync protocol's WebSocket endpoint: {rejection}"),
                )
            })?;
        let limit = sync::hard_message_limit(state.config.sync.max_message_bytes);
        let state = state.clone();
        return Ok(upgrade
            .max_message_size(limit)
            .max_frame_size(limit)
            // The read buffer is allocated up front for every socket (128 KiB by default, most
            // of what an idle socket cost); it grows for a large frame and reads in bigger
            // steps only then. Writes are not buffered past what one send needs.
            .read_buffer_size(SOCKET_READ_BUFFER_BYTES)
            .write_buffer_size(0)
            .on_upgrade(move |socket| sync::run(state, tenant, session, slot, client, socket)));
    }
    let body = read_body(body, &parts.headers, state.config.max_request_bytes).await?;
    let incoming = Incoming {
        client,
        method: parts.method,
        path: rest,
        query: parts.uri.query().map(str::to_string),
        headers: parts.headers,
        body,
    };
    if route_tenant.is_none() && is_instance_admin_path(&incoming.path) {
        // A tenant's own admin key may read that tenant's diagnostics.
        if let (Some(name), Some(key)) = (
            tenant_diagnostics_path(&incoming.path),
            incoming.admin_key(None),
        ) {
            if incoming.method == Method::GET {
                let check = state.nimbus.check_tenant_admin_key(name, &key);
                state.authenticate(incoming.client, check).await?;
                let body = admin::tenant_diagnostics(state, name).await?;
                return Ok(axum::Json(body).into_response());
            }
        }
        return admin::handle(state, &incoming).await;
    }
    if route_tenant.is_none() && incoming.path == "/metrics" {
        return metrics::handle(state, &incoming).await;
    }
    if let Some(error) = functions::unsupported_convex_endpoint(&incoming.path) {
        return Err(error);
    }
    if is_cli_path(&incoming.path) {
        return push::handle(state, route_tenant.as_deref(), &incoming).await;
    }
    let Some(name) = route_tenant else {
        return Err(ApiError::not_found(&incoming.path));
    };
    let tenant = state.nimbus.tenant(&name).await?;
    functions::handle(state, &tenant, &incoming).await
}

/// Resolves the tenant of an admin-key request: the route's tenant (checked against the
/// key) or the key's own tenant.
pub(crate) async fn tenant_for_key(
    state: &AppState,
    client: IpAddr,
    route_tenant: Option<&str>,
    key: Option<String>,
) -> Result<Arc<Tenant>, ApiError> {
    let Some(key) = key else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthenticated",
            "this endpoint needs the tenant's admin key (Authorization: Convex <key>)",
        ));
    };
    match route_tenant {
        Some(name) => {
            // A missing tenant is a 404 before it is a key problem.
            state.nimbus.tenant_info(name).await?;
            state
                .authenticate(client, state.nimbus.check_tenant_admin_key(name, &key))
                .await?;
            Ok(state.nimbus.tenant(name).await?)
        }
        None => {
            state
                .authenticate(client, state.nimbus.tenant_for_admin_key(&key))
                .await
        }
    }
}

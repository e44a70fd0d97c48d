//! The HTTP-actions listener (`nimbus serve --site-listen`): a tenant's `convex/http.ts`
//! routes answer here, on a port of their own, as on a Convex deployment's site URL.
//!
//! Tenants are routed as on the API port: the path prefix `/t/<tenant>` or the host name
//! `<tenant>.<domain>`; the rest of the path is the router's path. Nothing is added to the
//! handlers' responses: CORS is the app's, with OPTIONS routes and headers as the Convex
//! docs show. Request bodies are read up to `max_request_bytes` (413 past it, without
//! reading the rest).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use nimbus_app::{HttpActionRequest, Nimbus};

use crate::error::ApiError;

/// Settings of the site listener.
#[derive(Debug, Clone)]
pub struct SiteConfig {
    /// Host-name routing: `<tenant>.<domain>` addresses a tenant.
    pub domain: String,
    /// Largest request body; larger ones get 413.
    pub max_request_bytes: usize,
}

#[derive(Clone)]
struct SiteState {
    nimbus: Arc<Nimbus>,
    config: Arc<SiteConfig>,
}

/// The site service; serve it with [`crate::serve`].
pub fn site_router(nimbus: Arc<Nimbus>, config: SiteConfig) -> Router {
    let state = SiteState {
        nimbus,
        config: Arc::new(config),
    };
    Router::new().fallback(handle).with_state(state)
}

async fn handle(State(state): State<SiteState>, request: Request) -> Response {
    match run(&state, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn run(state: &SiteState, request: Request) -> Result<Response, ApiError> {
    let path = crate::collapse_slashes(request.uri().path());
    let (tenant, rest) = crate::route(&path, request.headers(), &state.config.domain);
    let Some(name) = tenant else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "TenantNotFound",
            format!(
                "no tenant in {path}: HTTP actions are at /t/<tenant>/<route>, or at \
                 <tenant>.{}",
                state.config.domain
            ),
        ));
    };
    let tenant = state.nimbus.tenant(&name).await?;
    let head = request.method() == Method::HEAD;
    let method = if head {
        "GET".to_string()
    } else {
        request.method().as_str().to_string()
    };
    let host = request
        .headers()
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost")
        .to_string();
    let url = match request.uri().query() {
        Some(query) => format!("http://{host}{path}?{query}"),
        None => format!("http://{host}{path}"),
    };
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let limit = state.config.max_request_bytes;
    let body = axum::body::to_bytes(request.into_body(), limit)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestTooLarge",
                format!("the request body is larger than the limit of {limit} bytes"),
            )
        })?;
    let answer = tenant
        .run_http_action(HttpActionRequest {
            method,
            url,
            path: rest,
            headers,
            body: body.to_vec(),
        })
        .await?;
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = if head {
        Response::new(Body::empty())
    } else {
        Response::new(Body::from(answer.body))
    };
    *response.status_mut() = status;
    for (name, value) in answer.headers {
        // Framing is the server's business.
        if matches!(
            name.as_str(),
            "content-length" | "transfer-encoding" | "connection" | "keep-alive"
        ) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    Ok(response)
}

//! Cross-origin requests to a tenant's API.
//!
//! A web app is usually served from another origin than its backend, so a browser asks
//! before each non-simple call (`OPTIONS` with `Origin` and `Access-Control-Request-*`, a
//! preflight) and hides every answer that lacks `Access-Control-Allow-Origin`. Every tenant
//! route (the function API, the sync socket, the CLI's endpoints) answers any origin, as
//! Convex does. That is safe because nothing here authenticates by cookie: the user's token
//! and the admin key travel in the `Authorization` header, which a page on another origin
//! can only send if it already holds them. So the answers say `*` and never allow
//! credentials (a browser then sends no cookies with the call).
//!
//! The instance admin API (`/admin/...` without a tenant) is for operators' tools, not web
//! pages, and gets no CORS headers: a browser refuses to show its answers to other origins.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;

/// How long a browser may reuse a preflight's answer (browsers cap it lower: Chromium at
/// 2 hours).
const PREFLIGHT_MAX_AGE_SECS: u32 = 86_400;

/// Methods a tenant's routes answer (the function API uses GET and POST; the rest are for
/// HTTP actions).
const ALLOWED_METHODS: &str = "GET, POST, PUT, PATCH, DELETE, OPTIONS";

/// Headers a preflight may ask for when it lists none we can echo.
const DEFAULT_ALLOWED_HEADERS: &str = "content-type, authorization, convex-client";

/// Longest `Access-Control-Request-Headers` echoed back; a longer list gets the default.
const MAX_REQUESTED_HEADERS_BYTES: usize = 1024;

/// Whether a request is a CORS preflight: `OPTIONS` with both `Origin` and
/// `Access-Control-Request-Method`. A bare `OPTIONS` is an ordinary (unsupported) request.
pub(crate) fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The answer to a preflight: 204, any origin, the methods above, and the headers the
/// browser asked for. It is the same whether or not the tenant or path exists, so the real
/// request then gets its real answer (a 404 the page can read, say).
pub(crate) fn preflight(headers: &HeaderMap) -> Response {
    let allowed_headers = headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .filter(|v| v.len() <= MAX_REQUESTED_HEADERS_BYTES && is_header_list(v.as_bytes()))
        .cloned()
        .unwrap_or(HeaderValue::from_static(DEFAULT_ALLOWED_HEADERS));
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let out = response.headers_mut();
    out.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    out.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(ALLOWED_METHODS),
    );
    out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allowed_headers);
    out.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from(PREFLIGHT_MAX_AGE_SECS),
    );
    // The allowed headers echo the request's, so a cache must key on them.
    out.insert(
        header::VARY,
        HeaderValue::from_static("Access-Control-Request-Headers"),
    );
    response
}

/// Marks a tenant route's answer (success or error) as readable by any origin.
pub(crate) fn allow_any_origin(response: &mut Response) {
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
}

/// A comma-separated list of header names (RFC 9110 tokens), as browsers send in
/// `Access-Control-Request-Headers`. Anything else is not echoed.
fn is_header_list(value: &[u8]) -> bool {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    !value.is_empty()
        && value.split(|&b| b == b',').all(|name| {
            let name = name.trim_ascii();
            !name.is_empty() && name.iter().all(|&b| token(b))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn a_preflight_needs_origin_and_a_requested_method() {
        let full = request_headers(&[
            ("origin", "http://app.example"),
            ("access-control-request-method", "POST"),
        ]);
        assert!(is_preflight(&Method::OPTIONS, &full));
        assert!(!is_preflight(&Method::POST, &full));
        let no_method = request_headers(&[("origin", "http://app.example")]);
        assert!(!is_preflight(&Method::OPTIONS, &no_method));
        let no_origin = request_headers(&[("access-control-request-method", "POST")]);
        assert!(!is_preflight(&Method::OPTIONS, &no_origin));
    }

    #[test]
    fn requested_headers_are_echoed_only_when_they_are_a_header_list() {
        let asked = |value: &'static str| {
            let response = preflight(&request_headers(&[
                ("origin", "http://app.example"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", value),
            ]));
            assert_eq!(response.status(), StatusCode::NO_CONTENT);
            assert_eq!(response.headers()["access-control-allow-origin"], "*");
            response.headers()["access-control-allow-headers"]
                .to_str()
                .map(str::to_string)
                .unwrap_or_default()
        };
        assert_eq!(
            asked("authorization,content-type,convex-client"),
            "authorization,content-type,convex-client"
        );
        assert_eq!(asked("x-a, x-b"), "x-a, x-b");
        assert_eq!(asked("bad header"), DEFAULT_ALLOWED_HEADERS);
        assert_eq!(asked("a,,b"), DEFAULT_ALLOWED_HEADERS);
        let none = preflight(&request_headers(&[
            ("origin", "http://app.example"),
            ("access-control-request-method", "POST"),
        ]));
        assert_eq!(
            none.headers()["access-control-allow-headers"],
            DEFAULT_ALLOWED_HEADERS
        );
    }
}

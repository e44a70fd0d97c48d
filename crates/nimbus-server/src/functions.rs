//! The Convex function API of a tenant: `/api/query`, `/api/mutation`, `/api/action`,
//! `/api/function`, `/api/run/<module>/<export>`, `/api/query_ts`.

use std::sync::Arc;

use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use nimbus_app::{Caller, FunctionKind, FunctionRequest, FunctionResponse, Tenant};
use nimbus_types::json::{decode_u64, encode, encode_u64};
use serde_json::{json, Value as Json};

use crate::{ApiError, AppState, Incoming};

#[derive(Clone, Copy)]
enum Format {
    Encoded,
    Clean,
}

fn parse_format(body: &Json, default: Format) -> Result<Format, ApiError> {
    match body.get("format") {
        None | Some(Json::Null) => Ok(default),
        Some(Json::String(f)) => match f.as_str() {
            "convex_encoded_json" | "convex_json" => Ok(Format::Encoded),
            "json" | "convex_clean_json" => Ok(Format::Clean),
            other => Err(ApiError::bad_json(format!("unknown format {other:?}"))),
        },
        Some(other) => Err(ApiError::bad_json(format!(
            "format must be a string, got {other}"
        ))),
    }
}

async fn caller(
    state: &AppState,
    tenant: &Tenant,
    incoming: &Incoming,
) -> Result<Caller, ApiError> {
    let Some(auth) = incoming
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(Caller::Client);
    };
    if let Some(key) = incoming.admin_key(None) {
        state
            .authenticate(
                incoming.client,
                state.nimbus.check_tenant_admin_key(tenant.name(), &key),
            )
            .await?;
        return Ok(Caller::Admin);
    }
    if let Some(token) = auth.strip_prefix("Bearer ") {
        return Ok(Caller::User(tenant.authenticate_user(token).await?));
    }
    Err(ApiError::new(
        StatusCode::UNAUTHORIZED,
        "Unauthenticated",
        "unrecognized Authorization header",
    ))
}

/// A Convex endpoint the CLI calls for a feature Nimbus does not have yet: 501 with a
/// message naming the feature. Not 404: the CLI retries a 404 for about half a minute (a
/// new deployment may not be routable yet), and stops at once on a 501 to a POST, printing
/// the message. The CLI sends these without the tenant prefix, so this is checked before
/// any routing.
pub(crate) fn unsupported_convex_endpoint(path: &str) -> Option<ApiError> {
    let feature = unsupported_convex_feature(path)?;
    Some(ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "NotSupported",
        format!("Nimbus does not support {feature} yet ({path})"),
    ))
}

fn unsupported_convex_feature(path: &str) -> Option<&'static str> {
    if path.starts_with("/api/export/") {
        Some("snapshot export (`npx convex export`)")
    } else if path == "/api/import"
        || path.starts_with("/api/import/")
        || path == "/api/perform_import"
    {
        Some("snapshot import (`npx convex import`)")
    } else if path == "/api/run_test_function" {
        Some("inline queries (`npx convex run --inline-query`)")
    } else {
        None
    }
}

pub(crate) async fn handle(
    state: &AppState,
    tenant: &Arc<Tenant>,
    incoming: &Incoming,
) -> Result<Response, ApiError> {
    let path = incoming.path.as_str();
    if incoming.method != Method::POST {
        if path.starts_with("/api/") {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{path} takes POST"),
            ));
        }
        return Err(ApiError::not_found(path));
    }
    let (kind, default_format, function_path) = match path {
        "/api/query" => (Some(FunctionKind::Query), Format::Clean, None),
        "/api/mutation" => (Some(FunctionKind::Mutation), Format::Clean, None),
        "/api/action" => (Some(FunctionKind::Action), Format::Clean, None),
        "/api/function" => (None, Format::Clean, None),
        "/api/query_ts" => {
            return Ok(axum::Json(json!({"ts": encode_u64(tenant.latest_ts())})).into_response());
        }
        "/api/query_at_ts" => (Some(FunctionKind::Query), Format::Clean, None),
        _ => match path.strip_prefix("/api/run/") {
            Some(run) => match run.rsplit_once('/') {
                Some((module, export)) if !module.is_empty() && !export.is_empty() => {
                    (None, Format::Clean, Some(format!("{module}:{export}")))
                }
                _ => return Err(ApiError::not_found(path)),
            },
            None => return Err(ApiError::not_found(path)),
        },
    };
    let body = incoming.json()?;
    if !body.is_object() {
        return Err(ApiError::bad_json(
            "expected a JSON object {\"path\", \"args\", \"format\"}",
        ));
    }
    let function_path = match function_path {
        Some(p) => p,
        None => match body.get("path").and_then(Json::as_str) {
            Some(p) => p.to_string(),
            None => {
                return Err(ApiError::bad_json(
                    "missing \"path\": the function name, like \"messages:list\"",
                ))
            }
        },
    };
    let format = parse_format(&body, default_format)?;
    let caller = caller(state, tenant, incoming).await?;
    let at_ts = match path {
        "/api/query_at_ts" => match body.get("ts").and_then(Json::as_str) {
            Some(ts) => {
                Some(decode_u64(ts).map_err(|e| ApiError::bad_json(format!("invalid ts: {e}")))?)
            }
            None => {
                return Err(ApiError::bad_json(
                    "missing \"ts\": a timestamp from /api/query_ts",
                ))
            }
        },
        _ => None,
    };
    let request = FunctionRequest {
        path: function_path.clone(),
        args: body.get("args").cloned().unwrap_or(Json::Null),
        kind,
        caller,
        at_ts,
    };
    let response = tenant.run(request).await?;
    let (status, body) = response_body(&response, format);
    let micros = response.execution.as_micros();
    tracing::info!(tenant = tenant.name(), path = %function_path, status, scanned = response.documents_scanned, micros = micros as u64, cached = response.cached, "call");
    let mut http = (
        [(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    let headers = http.headers_mut();
    let cache = if response.cached { "hit" } else { "miss" };
    for (name, value) in [
        (
            "nimbus-documents-scanned",
            response.documents_scanned.to_string(),
        ),
        ("nimbus-execution-us", micros.to_string()),
        ("nimbus-query-cache", cache.to_string()),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    Ok(http)
}

/// The JSON body of a function call's answer, written directly (a cached query's value
/// text is rendered once and copied into every answer that serves it). Returns the status
/// for the log line and the body.
fn response_body(response: &FunctionResponse, format: Format) -> (&'static str, Vec<u8>) {
    match &response.result {
        Ok(value) => {
            let text = match format {
                Format::Encoded => value.encoded_json(),
                Format::Clean => value.clean_json(),
            };
            let mut body = Vec::with_capacity(text.len() + 64);
            body.extend_from_slice(br#"{"status":"success","value":"#);
            body.extend_from_slice(text.as_bytes());
            body.extend_from_slice(br#","logLines":"#);
            write_json(&mut body, &response.log_lines);
            body.push(b'}');
            ("success", body)
        }
        Err(failure) => {
            let mut body = json!({
                "status": "error", "errorMessage": failure.message, "errorCode": failure.code,
                "logLines": response.log_lines,
            });
            if let Some(data) = &failure.data {
                body["errorData"] = encode(data);
            }
            let mut bytes = Vec::new();
            write_json(&mut bytes, &body);
            (failure.code, bytes)
        }
    }
}

fn write_json(out: &mut Vec<u8>, value: &impl serde::Serialize) {
    // Writing strings and JSON trees into a Vec cannot fail.
    if let Err(e) = serde_json::to_writer(&mut *out, value) {
        tracing::error!(error = %e, "serializing a response failed");
        out.extend_from_slice(b"null");
    }
}

//! The one place where errors become HTTP responses.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use nimbus_app::AppError;
use serde_json::json;

/// A request-level failure: status + `{"code", "message"}` (+ `Retry-After`).
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after_secs: Option<u64>,
    /// For a 429: which limit refused the request (`limit` in the body).
    pub limit: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
            limit: None,
        }
    }

    pub fn bad_json(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "BadJsonInput", message)
    }

    pub fn not_found(path: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no route for {path}"),
        )
    }
}

impl From<AppError> for ApiError {
    fn from(error: AppError) -> Self {
        let status =
            StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(%error, "internal error");
        }
        ApiError {
            status,
            code: error.code(),
            message: error.to_string(),
            retry_after_secs: error.retry_after_secs(),
            limit: error.overloaded_limit(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "code": self.code, "message": self.message });
        if let Some(limit) = self.limit {
            body["limit"] = json!(limit);
        }
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert("retry-after", value);
            }
        }
        response
    }
}

/// Parses a JSON body, telling malformed JSON (`BadJsonInput`) from JSON nested beyond
/// the parser's limit (`InvalidValue`).
pub fn parse_json(body: &[u8]) -> Result<serde_json::Value, ApiError> {
    if body.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_slice(body).map_err(|e| {
        if e.to_string().contains("recursion limit") {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "InvalidValue",
                "the value is nested too deeply (the limit is 64 levels)",
            )
        } else {
            ApiError::bad_json(format!("the request body is not valid JSON: {e}"))
        }
    })
}

//! HTTP actions: requests to a tenant's site URL, routed by the default export of its
//! `convex/http.ts` (an `httpRouter`) to `httpAction` handlers, which run as actions (see
//! `action.rs`) and answer with a `Response`.

use std::time::Instant;

use nimbus_runtime::{FunctionKind, HttpRequestIn, Invocation};
use serde_json::{json, Value as Json};

use crate::action::ActionContext;
use crate::error::AppError;
use crate::execute::Caller;
use crate::metrics::CallOutcome;
use crate::tenant::Tenant;

/// The module whose default export routes HTTP actions.
const ROUTER_MODULE: &str = "http.js";

/// A request for an HTTP action, as the site listener received it.
#[derive(Debug, Clone)]
pub struct HttpActionRequest {
    pub method: String,
    /// The URL the client used (`request.url` in the handler).
    pub url: String,
    /// The router's path: the URL's path without the tenant prefix.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The handler's answer.
#[derive(Debug, Clone)]
pub struct HttpActionResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpActionResponse {
    /// An answer of the server's own (no route, a failed handler): JSON `{code, message}`.
    fn error(status: u16, code: &str, message: String) -> HttpActionResponse {
        HttpActionResponse {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: json!({"code": code, "message": message})
                .to_string()
                .into_bytes(),
        }
    }
}

impl Tenant {
    /// Runs the HTTP action `request` is routed to. Failures of the handler are answers
    /// (500 with `{code, message}`); only the server's own refusals are errors.
    pub async fn run_http_action(
        &self,
        request: HttpActionRequest,
    ) -> Result<HttpActionResponse, AppError> {
        let started = Instant::now();
        let response = self.run_http_action_inner(request).await;
        let outcome = match &response {
            Ok(answer) if answer.status < 500 => CallOutcome::Success,
            Ok(_) => CallOutcome::Failure,
            Err(_) => CallOutcome::Error,
        };
        self.requests
            .record(FunctionKind::Action, outcome, started.elapsed());
        response
    }

    async fn run_http_action_inner(
        &self,
        request: HttpActionRequest,
    ) -> Result<HttpActionResponse, AppError> {
        let deployment = self.deployment();
        if !deployment.module_set.modules.contains_key(ROUTER_MODULE) {
            return Ok(HttpActionResponse::error(
                404,
                "NoHttpRouter",
                format!(
                    "No HttpAction routed for {}: this deployment has no convex/http.ts",
                    request.path
                ),
            ));
        }
        let _inflight = self.admit_call()?;
        let _alive = self.admit_action()?;
        let meta = json!({
            "url": request.url,
            "method": request.method,
            "headers": request.headers,
            "pathname": request.path,
        });
        let context = ActionContext {
            caller: Caller::Function(None),
            function_name: format!("{} {}", request.method, request.path),
            request_id: hex::encode(rand::random::<[u8; 8]>()),
            depth: 0,
            deadline: Instant::now() + self.config.actions.timeout,
            scheduled: Default::default(),
        };
        let invocation = Invocation {
            tenant: self.name_arc(),
            modules: deployment.module_set.clone(),
            module_path: ROUTER_MODULE.into(),
            export_name: "default".into(),
            kind: FunctionKind::Action,
            args_json: "[{}]".into(),
            rng_seed: rand::random(),
            now_ms: crate::execute::now_ms(),
            request_id: context.request_id.clone(),
            system_env: self.system_env(),
            http: Some(HttpRequestIn {
                meta_json: meta.to_string(),
                body: request.body,
            }),
            limits: Some(self.call_limits()),
        };
        let Some(outcome) = self.drive(invocation, &context).await? else {
            return Ok(HttpActionResponse::error(
                500,
                "FunctionTimeout",
                format!(
                    "the HTTP action for {} timed out: actions may run for at most {} s",
                    context.function_name,
                    self.config.actions.timeout.as_secs()
                ),
            ));
        };
        for line in &outcome.log_lines {
            tracing::debug!(tenant = self.name(), route = %context.function_name, "{line}");
        }
        let text = match outcome.result {
            Ok(text) => text,
            Err(error) => {
                return Ok(HttpActionResponse::error(
                    500,
                    error.code(),
                    error.to_string(),
                ))
            }
        };
        parse_response(&text).map_err(|e| {
            AppError::Internal(format!("the HTTP action's response could not be read: {e}"))
        })
    }
}

/// Reads `{status, headers, body}` (the body a binary string, one character per byte).
fn parse_response(text: &str) -> Result<HttpActionResponse, String> {
    let json: Json = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let status = json
        .get("status")
        .and_then(Json::as_u64)
        .and_then(|s| u16::try_from(s).ok())
        .ok_or("no status")?;
    let headers = json
        .get("headers")
        .and_then(Json::as_array)
        .map(|pairs| {
            pairs
                .iter()
                .filter_map(|pair| {
                    let name = pair.get(0)?.as_str()?;
                    let value = pair.get(1)?.as_str()?;
                    Some((name.to_string(), value.to_string()))
                })
                .collect()
        })
        .unwrap_or_default();
    let body = json
        .get("body")
        .and_then(Json::as_str)
        .unwrap_or_default()
        .chars()
        .map(|c| u8::try_from(u32::from(c)).map_err(|_| "the body is not binary".to_string()))
        .collect::<Result<Vec<u8>, String>>()?;
    Ok(HttpActionResponse {
        status,
        headers,
        body,
    })
}

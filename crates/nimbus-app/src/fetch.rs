//! `fetch` from actions: an HTTP client in Rust under the egress policy and the limits of
//! [`FetchLimits`]. One [`Fetcher`] per instance; each tenant bounds its own concurrent
//! requests (see `Tenant::fetch_permits`).

use std::sync::Arc;
use std::time::Duration;

use nimbus_runtime::OpValue;
use serde::Deserialize;
use serde_json::json;

use crate::egress::{EgressPolicy, EgressResolver};

/// Bounds of outbound requests.
#[derive(Debug, Clone)]
pub struct FetchLimits {
    /// A request must be answered, body included, within this (and within what is left of
    /// the action's time).
    pub timeout: Duration,
    /// Largest request body an action may send.
    pub max_request_bytes: usize,
    /// Largest response body read; a larger one fails the fetch (the rest is not read).
    pub max_response_bytes: usize,
    /// Requests one tenant may have open at once; more wait for a turn.
    pub per_tenant: usize,
}

impl Default for FetchLimits {
    fn default() -> Self {
        FetchLimits {
            timeout: Duration::from_secs(60),
            max_request_bytes: 8 << 20,
            max_response_bytes: 16 << 20,
            per_tenant: 16,
        }
    }
}

/// Redirects followed by one request (as browsers do, at most 20; we stop at 10).
const MAX_REDIRECTS: usize = 10;
/// Headers a request may carry, and their total size.
const MAX_REQUEST_HEADERS: usize = 100;
const MAX_REQUEST_HEADER_BYTES: usize = 64 << 10;

/// What JavaScript's `fetch` sends along with the body.
#[derive(Debug, Deserialize)]
pub(crate) struct FetchRequest {
    url: String,
    method: String,
    headers: Vec<(String, String)>,
    redirect: String,
}

/// The instance's outbound HTTP clients (one follows redirects, one does not).
pub struct Fetcher {
    following: reqwest::Client,
    manual: reqwest::Client,
    policy: EgressPolicy,
    pub(crate) limits: FetchLimits,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("policy", &self.policy)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    pub fn new(policy: EgressPolicy, limits: FetchLimits) -> Result<Fetcher, String> {
        let build = |redirect: reqwest::redirect::Policy| {
            reqwest::Client::builder()
                .dns_resolver(Arc::new(EgressResolver::new(policy.clone())))
                // A proxy from the environment would connect on the tenant's behalf
                // without the policy's checks.
                .no_proxy()
                .redirect(redirect)
                .connect_timeout(Duration::from_secs(10))
                .user_agent("Nimbus-Action")
                .build()
                .map_err(|e| format!("building the HTTP client: {e}"))
        };
        // Redirect targets given as names are checked by the resolver; addresses are
        // checked here, since they never reach it.
        let literal_policy = policy.clone();
        let follow = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                let error = format!("more than {MAX_REDIRECTS} redirects");
                return attempt.error(error);
            }
            match literal_policy.check_literal(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(message) => attempt.error(message),
            }
        });
        Ok(Fetcher {
            following: build(follow)?,
            manual: build(reqwest::redirect::Policy::none())?,
            policy,
            limits,
        })
    }

    /// Performs one request. `time_left` is what remains of the calling action's time.
    pub(crate) async fn fetch(
        &self,
        request: FetchRequest,
        body: Option<Vec<u8>>,
        time_left: Duration,
    ) -> Result<OpValue, String> {
        let url = reqwest::Url::parse(&request.url)
            .map_err(|e| format!("invalid URL {:?}: {e}", request.url))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "{url}: only http: and https: URLs can be fetched, not {}:",
                url.scheme()
            ));
        }
        self.policy.check_literal(&url)?;
        let method = reqwest::Method::from_bytes(request.method.as_bytes())
            .map_err(|_| format!("invalid method {:?}", request.method))?;
        let body_len = body.as_ref().map_or(0, Vec::len);
        if body_len > self.limits.max_request_bytes {
            return Err(format!(
                "the request body is {body_len} bytes, over the limit of {} bytes",
                self.limits.max_request_bytes
            ));
        }
        let headers = request_headers(&request.headers)?;
        let client = match request.redirect.as_str() {
            "follow" => &self.following,
            _ => &self.manual,
        };
        let timeout = self.limits.timeout.min(time_left);
        let mut builder = client
            .request(method, url.clone())
            .headers(headers)
            .timeout(timeout);
        if let Some(body) = body {
            builder = builder.body(body);
        }
        let mut response = builder.send().await.map_err(|e| describe(&url, &e))?;
        if request.redirect == "error" && response.status().is_redirection() {
            return Err(format!(
                "{url} answered with a redirect ({}), and the request's redirect mode is \"error\"",
                response.status()
            ));
        }
        let limit = self.limits.max_response_bytes;
        if response
            .content_length()
            .is_some_and(|length| length > limit as u64)
        {
            return Err(format!(
                "{url}: the response body is larger than the limit of {limit} bytes"
            ));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| describe(&url, &e))? {
            if bytes.len() + chunk.len() > limit {
                return Err(format!(
                    "{url}: the response body is larger than the limit of {limit} bytes"
                ));
            }
            bytes.extend_from_slice(&chunk);
        }
        let status = response.status();
        let headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_string(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect();
        let final_url = response.url().to_string();
        let info = json!({
            "status": status.as_u16(),
            "statusText": status.canonical_reason().unwrap_or_default(),
            "headers": headers,
            "url": final_url,
            "redirected": final_url != url.as_str(),
        });
        Ok(OpValue {
            json: info.to_string(),
            body: Some(bytes),
        })
    }
}

/// The request's headers, without those the client sets itself.
fn request_headers(pairs: &[(String, String)]) -> Result<reqwest::header::HeaderMap, String> {
    if pairs.len() > MAX_REQUEST_HEADERS {
        return Err(format!(
            "the request has {} headers, over the limit of {MAX_REQUEST_HEADERS}",
            pairs.len()
        ));
    }
    let total: usize = pairs.iter().map(|(n, v)| n.len() + v.len()).sum();
    if total > MAX_REQUEST_HEADER_BYTES {
        return Err(format!(
            "the request's headers take {total} bytes, over the limit of {MAX_REQUEST_HEADER_BYTES}"
        ));
    }
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in pairs {
        let lower = name.to_ascii_lowercase();
        // Framing and routing are the client's business.
        if matches!(
            lower.as_str(),
            "host"
                | "content-length"
                | "connection"
                | "transfer-encoding"
                | "keep-alive"
                | "upgrade"
        ) {
            continue;
        }
        let name = reqwest::header::HeaderName::from_bytes(lower.as_bytes())
            .map_err(|_| format!("invalid header name {name:?}"))?;
        let value = reqwest::header::HeaderValue::from_str(value)
            .map_err(|_| format!("invalid value for header {name}"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// A failed request, with the cause the client found (refusals by the egress policy
/// arrive as the resolver's error, deep in the chain).
fn describe(url: &reqwest::Url, error: &reqwest::Error) -> String {
    let mut message = if error.is_timeout() {
        format!("{url}: the request timed out")
    } else {
        format!("{url}: {error}")
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message
}

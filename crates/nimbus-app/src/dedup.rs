//! Exactly-once mutations across reconnects.
//!
//! The npm client re-sends every mutation it has not seen completed when its socket
//! reconnects, with the same session ID and request ID — including mutations that did run
//! (their socket died after the commit, before or after the answer was sent).
//!
//! **The exactly-once rule.** A mutation sent over a live session with a session ID runs
//! at most once per (session, request ID), and every copy of it is answered with the first
//! run's result:
//! - the run is a task of its own, never the socket's: once started it finishes, commits
//!   and stores its answer whatever happens to the socket that sent it;
//! - a copy that arrives while the run is going waits for it (in-flight map, per tenant,
//!   bounded by the tenant's in-flight calls);
//! - a run that writes stores a *receipt* (its result, under the key) in the same storage
//!   batch as its writes, so the answer is durable exactly when the effects are: a copy
//!   arriving later, after a restart, an idle eviction, or a storage failure whose batch
//!   may or may not have become durable, is looked up there and replayed. Receipts expire
//!   by age (`EngineConfig::receipt_ttl`, an hour by default), not by count;
//! - a run that fails, or writes nothing, stores nothing: running it again has no effect
//!   the first run had.

use std::collections::HashMap;
use std::sync::Arc;

use nimbus_types::json::{decode, encode_text, SharedValue};
use serde_json::Value as Json;
use tokio::sync::watch;

use crate::error::AppError;
use crate::execute::{FunctionRequest, FunctionResponse};
use crate::tenant::Tenant;

type Outcome = Result<(FunctionResponse, bool), AppError>;

/// Runs of re-sendable mutations still going, by receipt key.
#[derive(Default)]
pub(crate) struct InFlight {
    runs: HashMap<Vec<u8>, watch::Receiver<Option<Outcome>>>,
}

/// The receipt key of a (session, request): length-prefixed, so no two pairs share a key.
pub(crate) fn receipt_key(session_id: &str, request_id: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(session_id.len() + 12);
    key.extend_from_slice(b"m");
    key.extend_from_slice(&(session_id.len() as u16).to_be_bytes());
    key.extend_from_slice(session_id.as_bytes());
    key.extend_from_slice(&request_id.to_be_bytes());
    key
}

/// A receipt's body: the mutation's result as convex-JSON.
pub(crate) fn receipt_body(result: &nimbus_types::Value) -> Vec<u8> {
    encode_text(result).into_bytes()
}

fn replayed(body: &[u8], ts: u64) -> Result<FunctionResponse, AppError> {
    let json: Json = serde_json::from_slice(body)
        .map_err(|e| AppError::Internal(format!("a stored receipt is not JSON: {e}")))?;
    let value = decode(&json).map_err(|e| AppError::Internal(format!("a stored receipt: {e}")))?;
    Ok(FunctionResponse {
        result: Ok(Arc::new(SharedValue::new(value))),
        log_lines: Vec::new(),
        documents_scanned: 0,
        execution: std::time::Duration::ZERO,
        ts,
        cached: false,
    })
}

impl Tenant {
    /// Runs a mutation once per `(session_id, request_id)` (see the module doc): a copy
    /// gets the first run's response (`replayed` = true). `may_be_resent` says whether the
    /// request can be a copy of one sent on an earlier socket (the session reconnected);
    /// only then is the durable receipt looked up before running.
    pub async fn run_once(
        self: &Arc<Self>,
        session_id: &str,
        request_id: u64,
        may_be_resent: bool,
        request: FunctionRequest,
    ) -> Outcome {
        let key = receipt_key(session_id, request_id);
        let (answer, first) = {
            let mut in_flight = self.in_flight.lock();
            match in_flight.runs.get(&key) {
                Some(running) => (running.clone(), false),
                None => {
                    let (sender, answer) = watch::channel(None);
                    in_flight.runs.insert(key.clone(), answer.clone());
                    let tenant = self.clone();
                    tokio::spawn(async move {
                        let outcome = tenant.run_first(key.clone(), may_be_resent, request).await;
                        let _ = sender.send(Some(outcome));
                        tenant.in_flight.lock().runs.remove(&key);
                    });
                    (answer, true)
                }
            }
        };
        // A copy waiting for the first run is a replay, whatever the first run did.
        wait(answer)
            .await
            .map(|(response, replayed)| (response, replayed || !first))
    }

    /// The first copy of a request: replays a stored receipt, or runs the mutation with
    /// its receipt.
    async fn run_first(
        &self,
        key: Vec<u8>,
        may_be_resent: bool,
        request: FunctionRequest,
    ) -> Outcome {
        if may_be_resent {
            let stored = self
                .engine()
                .receipt(key.clone())
                .await
                .map_err(|e| AppError::from_engine(self.name(), e))?;
            if let Some((ts, body)) = stored {
                return Ok((replayed(&body, ts.0)?, true));
            }
        }
        self.run_with_receipt(request, Some(key))
            .await
            .map(|response| (response, false))
    }
}

async fn wait(mut answer: watch::Receiver<Option<Outcome>>) -> Outcome {
    match answer.wait_for(Option::is_some).await {
        Ok(outcome) => outcome
            .clone()
            .unwrap_or_else(|| Err(AppError::Internal("a mutation run gave no answer".into()))),
        Err(_) => Err(AppError::Internal(
            "the mutation's run ended without an answer (see the server log)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_distinct_per_session_and_request() {
        assert_ne!(receipt_key("ab", 1), receipt_key("a", 1));
        assert_ne!(receipt_key("s", 1), receipt_key("s", 2));
        assert_eq!(receipt_key("s", 7), receipt_key("s", 7));
    }
}

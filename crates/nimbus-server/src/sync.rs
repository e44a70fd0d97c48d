//! The Convex sync protocol over WebSocket (`/api/<version>/sync`, `/api/sync`).
//!
//! One [`Connection`] per socket. It keeps the client's versions (query set, identity,
//! timestamp) and answers with `Transition`s built from its [`LiveSession`]: every
//! Transition carries results that are all current at its `endVersion.ts`.
//!
//! - A `ModifyQuerySet` is acknowledged (the query-set version advances) in the first
//!   Transition that carries a result for every query it added; until then the socket is
//!   not read further, so at most one change is pending.
//! - Mutations run in order on a per-connection task. A successful `MutationResponse`
//!   carries the commit timestamp, and is followed by a Transition whose `ts` reaches it
//!   once every live query reflects the commit (the client resolves the mutation then).
//!   No Transition is sent while one of the connection's mutations is queued or running:
//!   its commit may already be in the live results, and a client that sees a mutation's
//!   effects before its response applies its optimistic update on top of them. Results
//!   that arrive meanwhile wait in the session (coalesced per query) and go out right
//!   after the response, so a client that keeps mutations in flight without pause gets
//!   its Transitions once the queue drains. A mutation that fails with `errorData` (a
//!   `ConvexError`) is followed by a Transition too, empty if nothing changed: the Rust
//!   and Python clients complete such a mutation only at the next Transition.
//! - Bounds: mutations queued per connection (the socket is not read while full, so TCP
//!   pushes back), undelivered results (coalesced per query by the session), a send
//!   timeout (a client that does not read is disconnected), and the message size.
//! - Protocol errors get a `FatalError` and a close, for this connection only.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use nimbus_app::{
    AppError, Caller, FunctionKind, FunctionRequest, FunctionResponse, LiveResult, LiveSession,
    QueryId, Tenant,
};
use nimbus_types::json::{encode, encode_u64};
use serde_json::{json, Value as Json};
use tokio::sync::mpsc;

use crate::AppState;

/// Settings of sync connections.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// Longest a client message may be; a longer one is a protocol error.
    pub max_message_bytes: usize,
    /// A send that does not complete within this (the client is not reading) closes the
    /// connection.
    pub send_timeout: Duration,
    /// A `Ping` is sent after this long without other messages.
    pub ping_interval: Duration,
    /// A WebSocket ping is sent this often (clients answer with a pong).
    pub ws_ping_interval: Duration,
    /// A client silent this long (no message, no pong) is disconnected.
    pub idle_timeout: Duration,
    /// Mutations and actions queued per connection; while full, the socket is not read.
    pub max_queued_requests: usize,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            max_message_bytes: 8 << 20,
            send_timeout: Duration::from_secs(30),
            ping_interval: Duration::from_secs(15),
            ws_ping_interval: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(120),
            max_queued_requests: 64,
        }
    }
}

/// The versions a client tracks (`StateVersion`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Version {
    query_set: u64,
    identity: u64,
    ts: u64,
}

impl Version {
    fn to_json(self) -> Json {
        json!({"querySet": self.query_set, "identity": self.identity, "ts": encode_u64(self.ts)})
    }
}

/// A query-set or identity change waiting for the first results of its queries.
struct PendingChange {
    query_set: u64,
    identity: u64,
    awaiting: HashSet<QueryId>,
    /// Results for awaited queries, held until the change is acknowledged.
    held: BTreeMap<QueryId, Modification>,
    /// Modifications decided locally (removals, adds refused by a limit).
    local: Vec<Json>,
}

struct Request {
    request_id: u64,
    kind: FunctionKind,
    path: String,
    args: Json,
    caller: Caller,
    session_id: Option<String>,
    /// The session connected before (`connectionCount` > 0): the request may be a copy of
    /// one sent on an earlier socket.
    may_be_resent: bool,
}

struct Answer {
    request_id: u64,
    kind: FunctionKind,
    outcome: Result<FunctionResponse, AppError>,
}

/// Why the connection ends.
enum End {
    /// The client closed, or the socket failed.
    Gone,
    /// Our decision: send `FatalError` (when given) and close with this code and reason.
    Close {
        fatal: Option<String>,
        code: u16,
        reason: String,
    },
}

/// Longest `sessionId` accepted in `Connect` (the official clients send a UUID, 36
/// characters). The session ID is kept with every remembered mutation, so it is bounded.
pub(crate) const MAX_SESSION_ID_LEN: usize = 64;

/// Whether `id` is a session ID this server keeps: 1 to 64 of `[A-Za-z0-9_-]`.
fn valid_session_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_SESSION_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Serves one upgraded socket. `session` and `_slot` were taken before the upgrade (so a
/// tenant or address over its connection limit is refused with a plain HTTP 429); both are
/// released when the connection ends.
pub(crate) async fn run(
    state: AppState,
    tenant: Arc<Tenant>,
    session: LiveSession,
    _slot: crate::limits::ConnectionSlot,
    client: std::net::IpAddr,
    socket: WebSocket,
) {
    let config = state.config.sync.clone();
    let mut connection = Connection {
        state,
        client,
        tenant,
        session,
        config,
        socket,
        version: Version {
            query_set: 0,
            identity: 0,
            ts: 0,
        },
        client_query_set: 0,
        client_identity: 0,
        caller: Caller::Client,
        session_id: None,
        reconnected: false,
        connected: false,
        pending: None,
        awaiting_ts: None,
        owes_transition: false,
        mutations_in_flight: 0,
        requests: None,
        new_answers: None,
        last_sent: Instant::now(),
        last_received: Instant::now(),
    };
    let end = connection.serve().await;
    // Stops running its queued requests (actions already started finish on their own).
    connection.requests = None;
    if let End::Close {
        fatal,
        code,
        reason,
    } = end
    {
        connection.session.record_dropped();
        tracing::info!(tenant = connection.tenant.name(), code, %reason, "closing a sync connection");
        if let Some(error) = fatal {
            let _ = connection
                .send(json!({"type": "FatalError", "error": error}))
                .await;
        }
        let close = Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from(truncate(&reason, 120)),
        }));
        let _ = tokio::time::timeout(
            connection.config.send_timeout,
            connection.socket.send(close),
        )
        .await;
        // Read (and drop) what the client still sends until it answers the close, for a
        // short while: closing a TCP connection with unread data resets it, and the reset
        // can destroy the FatalError and close frame before the client reads them.
        let _ = tokio::time::timeout(CLOSE_LINGER, async {
            while let Some(Ok(message)) = connection.socket.recv().await {
                if matches!(message, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

/// How long a connection the server closes keeps reading for the client's close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

struct Connection {
    state: AppState,
    /// The client's address (admin authentications count against it).
    client: std::net::IpAddr,
    tenant: Arc<Tenant>,
    session: LiveSession,
    config: SyncConfig,
    socket: WebSocket,
    /// The version of the last Transition sent.
    version: Version,
    /// The query-set and identity versions the client has asked for.
    client_query_set: u64,
    client_identity: u64,
    caller: Caller,
    session_id: Option<String>,
    /// `Connect` said `connectionCount` > 0: the session had sockets before this one.
    reconnected: bool,
    connected: bool,
    pending: Option<PendingChange>,
    /// A successful mutation committed at this timestamp; a Transition must reach it.
    awaiting_ts: Option<u64>,
    /// A mutation failed with `errorData`: the Rust client (and the Python one built on it)
    /// completes such a mutation only at the next Transition, so one must follow even if
    /// nothing changed.
    owes_transition: bool,
    /// Mutations queued or running on this connection whose response is not sent yet.
    mutations_in_flight: usize,
    /// Its mutations and actions, in order: made at the first one, so a socket that only
    /// subscribes (most are) holds neither the queues nor the task.
    requests: Option<RequestQueue>,
    /// The answers of a queue just made, for `serve` to take.
    new_answers: Option<mpsc::Receiver<Answer>>,
    last_sent: Instant,
    /// When the client last sent anything (a message, a pong).
    last_received: Instant,
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

fn fatal(message: impl Into<String>) -> End {
    End::Close {
        fatal: Some(message.into()),
        code: 1008,
        reason: "protocol error".into(),
    }
}

/// One entry of a Transition's `modifications`.
enum Modification {
    /// A query's result. A value's JSON is rendered once per result and shared by every
    /// subscriber of that query ([`LiveResult::value_json`]).
    Result(QueryId, Arc<LiveResult>),
    /// Built for this session alone: removals, and adds refused by a limit.
    Local(Json),
}

impl Modification {
    /// Whether it tells the client of a result (counted as an update sent).
    fn is_result(&self) -> bool {
        match self {
            Modification::Result(..) => true,
            Modification::Local(json) => json["type"] != "QueryRemoved",
        }
    }
}

impl serde::Serialize for Modification {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            Modification::Result(query_id, result) => match result.value_json() {
                Some(value) => {
                    let mut map = serializer.serialize_map(Some(5))?;
                    map.serialize_entry("type", "QueryUpdated")?;
                    map.serialize_entry("queryId", query_id)?;
                    map.serialize_entry("value", value)?;
                    map.serialize_entry("logLines", &result.log_lines)?;
                    map.serialize_entry("journal", &result.journal)?;
                    map.end()
                }
                None => result_json(*query_id, result).serialize(serializer),
            },
            Modification::Local(json) => json.serialize(serializer),
        }
    }
}

/// A Transition as sent: serialized straight to text, so shared results are copied in as
/// rendered.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct TransitionMessage<'a> {
    r#type: &'static str,
    start_version: Json,
    end_version: Json,
    modifications: &'a [Modification],
}

fn result_json(query_id: QueryId, result: &LiveResult) -> Json {
    match &result.result {
        Ok(value) => json!({
            "type": "QueryUpdated", "queryId": query_id, "value": encode(value),
            "logLines": result.log_lines, "journal": result.journal,
        }),
        Err(failure) => {
            let mut m = json!({
                "type": "QueryFailed", "queryId": query_id, "errorMessage": failure.message,
                "logLines": result.log_lines, "journal": result.journal,
            });
            if let Some(data) = &failure.data {
                m["errorData"] = encode(data);
            }
            m
        }
    }
}

/// The largest message a socket reads at all (twice the request limit): messages between
/// the two are refused one by one, larger ones end the connection.
pub(crate) fn hard_message_limit(max_message_bytes: usize) -> usize {
    max_message_bytes.saturating_mul(2)
}

/// System errors after which a mutation may or may not have run (an unavailable tenant, a
/// server bug): the client should re-send it. An overload is not one of them: the call was
/// refused before it ran, and is answered on its own (`error_text`).
fn is_transient(error: &AppError) -> bool {
    matches!(error, AppError::Unavailable { .. } | AppError::Internal(_))
}

/// A refused call's answer on the socket: its code, what happened and, for an overload,
/// which limit refused it and when to retry (what HTTP says in `limit` and `Retry-After`).
fn error_text(error: &AppError) -> String {
    match (error.overloaded_limit(), error.retry_after_secs()) {
        (Some(limit), Some(secs)) => {
            format!(
                "{}: {error} (limit: {limit}; retry after {secs} s)",
                error.code()
            )
        }
        _ => format!("{}: {error}", error.code()),
    }
}

fn query_failed(query_id: QueryId, message: String) -> Json {
    json!({
        "type": "QueryFailed", "queryId": query_id, "errorMessage": message,
        "logLines": [], "journal": null,
    })
}

fn field_u64(message: &Json, name: &str) -> Result<u64, End> {
    message
        .get(name)
        .and_then(Json::as_u64)
        .ok_or_else(|| fatal(format!("{name} must be a non-negative integer")))
}

fn field_str<'a>(message: &'a Json, name: &str) -> Result<&'a str, End> {
    message
        .get(name)
        .and_then(Json::as_str)
        .ok_or_else(|| fatal(format!("{name} must be a string")))
}

impl Connection {
    async fn serve(&mut self) -> End {
        let mut answers: Option<mpsc::Receiver<Answer>> = None;
        let mut closed = self.tenant.closed_signal();
        let mut kicked = self.tenant.disconnect_signal();
        let mut published = self.session.published_watch();
        let notify = self.session.notifier();
        // Pings at least three times per idle timeout, so a client that answers them is
        // never judged idle.
        let tick = self
            .config
            .ws_ping_interval
            .min(self.config.idle_timeout / 3)
            .max(Duration::from_millis(100));
        let mut ticker = tokio::time::interval(tick);
        loop {
            if let Some(made) = self.new_answers.take() {
                answers = Some(made);
            }
            let can_read = self.pending.is_none()
                && self
                    .requests
                    .as_ref()
                    .is_none_or(|queue| queue.sender.capacity() > 0);
            if !can_read {
                // Not reading: the client's silence says nothing about it meanwhile.
                self.last_received = Instant::now();
            }
            let awaiting = self.awaiting_ts;
            let may_flush = self.mutations_in_flight == 0;
            let step = tokio::select! {
                biased;
                _ = async { closed.wait_for(|closed| *closed).await.map(|_| ()) } => Err(End::Close {
                    fatal: None, code: 4040, reason: "TenantNotFound: the tenant was deleted".into(),
                }),
                _ = kicked.changed() => Err(End::Close {
                    fatal: None, code: 1012, reason: "the server closed this connection; reconnect".into(),
                }),
                Some(answer) = next_answer(&mut answers) => self.answer(answer).await,
                // Not polled while a mutation is in flight: the notification keeps its
                // permit and fires once the response is out.
                _ = notify.notified(), if may_flush => self.flush().await,
                // A round moved on: the commit a mutation waits for may be reflected now.
                _ = published.changed(), if awaiting.is_some() && may_flush => self.flush().await,
                message = self.socket.recv(), if can_read => self.receive(message).await,
                _ = ticker.tick() => self.keep_alive().await,
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// Every tick: a WebSocket ping (the client's pong proves it is there), a protocol
    /// `Ping` after `ping_interval` without other messages, and the end of a connection
    /// whose client was silent for `idle_timeout` (a half-open connection would otherwise
    /// keep its subscriptions for as long as TCP takes to notice).
    async fn keep_alive(&mut self) -> Result<(), End> {
        if self
            .caller
            .identity()
            .is_some_and(|identity| identity.expired())
        {
            // Its results and mutations would run as a user whose proof has lapsed.
            let base = self.client_identity.saturating_sub(1);
            return self
                .auth_error(base, "the auth token has expired".into(), false)
                .await;
        }
        if self.last_received.elapsed() >= self.config.idle_timeout {
            return Err(End::Close {
                fatal: None,
                code: 1001,
                reason: format!(
                    "IdleTimeout: nothing from the client for {} s",
                    self.config.idle_timeout.as_secs()
                ),
            });
        }
        let ping = tokio::time::timeout(
            self.config.send_timeout,
            self.socket.send(Message::Ping(Default::default())),
        );
        match ping.await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(End::Gone),
            Err(_) => return Err(self.slow_consumer()),
        }
        if self.last_sent.elapsed() >= self.config.ping_interval {
            self.send(json!({"type": "Ping"})).await?;
        }
        Ok(())
    }

    fn slow_consumer(&self) -> End {
        End::Close {
            fatal: None,
            code: 1008,
            reason: format!(
                "SlowConsumer: the client did not read for {} s",
                self.config.send_timeout.as_secs()
            ),
        }
    }

    async fn send(&mut self, message: Json) -> Result<(), End> {
        self.send_text(message.to_string()).await
    }

    async fn send_text(&mut self, text: String) -> Result<(), End> {
        match tokio::time::timeout(
            self.config.send_timeout,
            self.socket.send(Message::Text(text.into())),
        )
        .await
        {
            Ok(Ok(())) => {
                self.last_sent = Instant::now();
                Ok(())
            }
            Ok(Err(_)) => Err(End::Gone),
            Err(_) => Err(self.slow_consumer()),
        }
    }

    /// Sends a Transition with whatever results the session can show, acknowledging a
    /// pending change once all its queries have results; and one even if empty when it
    /// moves the client's timestamp past a mutation's commit.
    async fn flush(&mut self) -> Result<(), End> {
        if self.mutations_in_flight > 0 {
            // Deferred until the in-flight mutations are answered (see the module doc);
            // `answer` flushes when the last one is.
            return Ok(());
        }
        let drained = self.session.drain();
        let mut modifications = Vec::new();
        for (query_id, result) in &drained.updates {
            let m = Modification::Result(*query_id, result.clone());
            match &mut self.pending {
                Some(change)
                    if change.awaiting.contains(query_id) || change.held.contains_key(query_id) =>
                {
                    change.awaiting.remove(query_id);
                    change.held.insert(*query_id, m);
                }
                _ => modifications.push(m),
            }
        }
        let mut end = Version {
            ts: self.version.ts.max(drained.ts),
            ..self.version
        };
        if self
            .pending
            .as_ref()
            .is_some_and(|change| change.awaiting.is_empty())
        {
            if let Some(change) = self.pending.take() {
                modifications.extend(change.local.into_iter().map(Modification::Local));
                modifications.extend(change.held.into_values());
                end.query_set = change.query_set;
                end.identity = change.identity;
            }
        }
        let reaches = self.awaiting_ts.is_some_and(|ts| end.ts >= ts);
        // A Transition that would only move the timestamp is not worth sending, except
        // one a mutation's caller waits for.
        let versions_moved =
            end.query_set != self.version.query_set || end.identity != self.version.identity;
        if modifications.is_empty() && !versions_moved && !reaches && !self.owes_transition {
            return Ok(());
        }
        let updates = modifications.iter().filter(|m| m.is_result()).count();
        let transition = TransitionMessage {
            r#type: "Transition",
            start_version: self.version.to_json(),
            end_version: end.to_json(),
            modifications: &modifications,
        };
        let text = serde_json::to_string(&transition)
            .map_err(|e| fatal(format!("a Transition could not be written: {e}")))?;
        self.send_text(text).await?;
        self.session.record_sent(updates);
        self.version = end;
        if reaches {
            self.awaiting_ts = None;
        }
        self.owes_transition = false;
        Ok(())
    }

    async fn answer(&mut self, answer: Answer) -> Result<(), End> {
        let kind = match answer.kind {
            FunctionKind::Action => "ActionResponse",
            _ => "MutationResponse",
        };
        if answer.kind == FunctionKind::Mutation {
            debug_assert!(self.mutations_in_flight > 0, "an answer to no mutation");
            self.mutations_in_flight = self.mutations_in_flight.saturating_sub(1);
            if let Err(error) = &answer.outcome {
                if is_transient(error) {
                    // The mutation may or may not have run (a storage failure's batch may
                    // be durable): closing the socket makes the client reconnect and
                    // re-send it, and the copy is answered exactly once (`run_once`).
                    return Err(End::Close {
                        fatal: None,
                        code: 1011,
                        reason: format!("{}: {error}", error.code()),
                    });
                }
            }
        }
        let mut message = json!({"type": kind, "requestId": answer.request_id});
        match answer.outcome {
            Ok(response) => {
                message["logLines"] = json!(response.log_lines);
                match response.result {
                    Ok(value) => {
                        message["success"] = json!(true);
                        message["result"] = encode(value.value());
                        if answer.kind == FunctionKind::Mutation {
                            message["ts"] = json!(encode_u64(response.ts));
                            self.awaiting_ts = Some(self.awaiting_ts.unwrap_or(0).max(response.ts));
                        }
                    }
                    Err(failure) => {
                        message["success"] = json!(false);
                        message["result"] = json!(failure.message);
                        if let Some(data) = &failure.data {
                            message["errorData"] = encode(data);
                            self.owes_transition |= answer.kind == FunctionKind::Mutation;
                        }
                    }
                }
            }
            Err(error) => {
                message["success"] = json!(false);
                message["result"] = json!(error_text(&error));
                message["logLines"] = json!([]);
            }
        }
        self.send(message).await?;
        // Results held back while mutations were in flight go out now, if this was the
        // last one (`flush` defers otherwise). The Transition reaching the commit follows
        // (see `serve`), now if the session can already show it.
        self.flush().await
    }

    async fn receive(&mut self, message: Option<Result<Message, axum::Error>>) -> Result<(), End> {
        if matches!(message, Some(Ok(_))) {
            self.last_received = Instant::now();
        }
        let text = match message {
            None => return Err(End::Gone),
            Some(Err(e)) => {
                let text = e.to_string();
                if text.contains("too long") || text.contains("Space limit") {
                    return Err(fatal(format!(
                        "the message is larger than {} bytes, more than the socket reads \
                         (requests over {} bytes are refused one by one)",
                        hard_message_limit(self.config.max_message_bytes),
                        self.config.max_message_bytes
                    )));
                }
                return Err(End::Gone);
            }
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Binary(_))) => {
                return Err(fatal("binary frames are not part of the sync protocol"))
            }
            Some(Ok(Message::Close(_))) => return Err(End::Gone),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => return Ok(()),
        };
        if text.len() > self.config.max_message_bytes {
            return self.refuse_too_large(text.as_str()).await;
        }
        let message: Json = serde_json::from_str(text.as_str())
            .map_err(|e| fatal(format!("the message is not valid JSON: {e}")))?;
        let Some(kind) = message.get("type").and_then(Json::as_str) else {
            return Err(fatal("every message needs a string \"type\""));
        };
        if !self.connected && kind != "Connect" {
            return Err(fatal(format!(
                "the first message must be Connect, got {kind}"
            )));
        }
        match kind {
            "Connect" => {
                if self.connected {
                    return Err(fatal("Connect was already received on this socket"));
                }
                self.connected = true;
                self.reconnected = message
                    .get("connectionCount")
                    .and_then(Json::as_u64)
                    .is_none_or(|count| count > 0);
                self.session_id = match message.get("sessionId") {
                    None | Some(Json::Null) => None,
                    Some(Json::String(id)) if valid_session_id(id) => Some(id.clone()),
                    Some(_) => {
                        return Err(fatal(format!(
                            "InvalidSessionId: sessionId must be 1 to {MAX_SESSION_ID_LEN} \
                             characters of [A-Za-z0-9_-] (the official clients send a UUID)"
                        )))
                    }
                };
                Ok(())
            }
            "ModifyQuerySet" => self.modify_query_set(&message).await,
            "Mutation" | "Action" => {
                let request_id = field_u64(&message, "requestId")?;
                let path = field_str(&message, "udfPath")?.to_string();
                let request = Request {
                    request_id,
                    kind: if kind == "Mutation" {
                        FunctionKind::Mutation
                    } else {
                        FunctionKind::Action
                    },
                    path,
                    args: message.get("args").cloned().unwrap_or(Json::Null),
                    caller: self.caller.clone(),
                    session_id: self.session_id.clone(),
                    may_be_resent: self.reconnected,
                };
                let is_mutation = request.kind == FunctionKind::Mutation;
                // The socket is read only while the queue has room, so this cannot fail
                // for lack of space; it fails only if the worker is gone.
                self.request_queue()
                    .sender
                    .try_send(request)
                    .map_err(|_| End::Gone)?;
                if is_mutation {
                    self.mutations_in_flight += 1;
                }
                Ok(())
            }
            "Authenticate" => self.authenticate(&message).await,
            "Event" => Ok(()),
            other => Err(fatal(format!("unknown message type {other:?}"))),
        }
    }

    /// A message over `max_message_bytes` (but within what the socket reads) is refused on
    /// its own, not as a protocol error: the npm client stops for good on a `FatalError`,
    /// while a failed request only fails that request. A mutation or action gets a failed
    /// response, a query-set change adds nothing (each add fails); anything else is a
    /// protocol error. Only the message's small fields are parsed.
    async fn refuse_too_large(&mut self, text: &str) -> Result<(), End> {
        #[derive(serde::Deserialize)]
        struct Head {
            #[serde(rename = "type")]
            kind: String,
            #[serde(rename = "requestId")]
            request_id: Option<u64>,
            #[serde(rename = "baseVersion")]
            base_version: Option<u64>,
            #[serde(rename = "newVersion")]
            new_version: Option<u64>,
            modifications: Option<Vec<ModificationHead>>,
        }
        #[derive(serde::Deserialize)]
        struct ModificationHead {
            #[serde(rename = "type")]
            kind: String,
            #[serde(rename = "queryId")]
            query_id: QueryId,
        }
        let refusal = format!(
            "RequestTooLarge: the message is {} bytes, over the limit of {} bytes",
            text.len(),
            self.config.max_message_bytes
        );
        let head: Head = serde_json::from_str(text)
            .map_err(|e| fatal(format!("the message is not valid JSON: {e}")))?;
        if !self.connected {
            return Err(fatal(format!(
                "the first message must be Connect, got {}",
                head.kind
            )));
        }
        match head.kind.as_str() {
            "Mutation" | "Action" => {
                let Some(request_id) = head.request_id else {
                    return Err(fatal("requestId must be a non-negative integer"));
                };
                let kind = if head.kind == "Mutation" {
                    "MutationResponse"
                } else {
                    "ActionResponse"
                };
                self.send(json!({
                    "type": kind, "requestId": request_id, "success": false,
                    "result": refusal, "logLines": [],
                }))
                .await
            }
            "ModifyQuerySet" => {
                let modifications = head
                    .modifications
                    .unwrap_or_default()
                    .into_iter()
                    // Adds are refused without their arguments; removes apply as usual.
                    .map(|m| json!({"type": m.kind, "queryId": m.query_id}))
                    .collect::<Vec<_>>();
                let message = json!({
                    "type": "ModifyQuerySet",
                    "baseVersion": head.base_version,
                    "newVersion": head.new_version,
                    "modifications": modifications,
                });
                self.modify_query_set_refusing(&message, Some(&refusal))
                    .await
            }
            other => Err(fatal(format!(
                "a {other} message is larger than the limit of {} bytes",
                self.config.max_message_bytes
            ))),
        }
    }

    async fn modify_query_set(&mut self, message: &Json) -> Result<(), End> {
        self.modify_query_set_refusing(message, None).await
    }

    /// Applies a query-set change; with `refuse_adds`, every Add fails with that message.
    async fn modify_query_set_refusing(
        &mut self,
        message: &Json,
        refuse_adds: Option<&str>,
    ) -> Result<(), End> {
        let base = field_u64(message, "baseVersion")?;
        let new = field_u64(message, "newVersion")?;
        if base != self.client_query_set || new != base + 1 {
            return Err(fatal(format!(
                "query set version out of order: the server is at {}, the message goes from {base} to {new}",
                self.client_query_set
            )));
        }
        let Some(modifications) = message.get("modifications").and_then(Json::as_array) else {
            return Err(fatal("modifications must be an array"));
        };
        let mut change = PendingChange {
            query_set: new,
            identity: self.client_identity,
            awaiting: HashSet::new(),
            held: BTreeMap::new(),
            local: Vec::new(),
        };
        for modification in modifications {
            let query_id = field_u64(modification, "queryId")?;
            let query_id = QueryId::try_from(query_id)
                .map_err(|_| fatal(format!("queryId {query_id} is too large")))?;
            match modification.get("type").and_then(Json::as_str) {
                Some("Add") => {
                    if self.session.has(query_id) {
                        return Err(fatal(format!(
                            "queryId {query_id} is already in the query set"
                        )));
                    }
                    // A refused query (bad arguments, a limit) is answered with QueryFailed
                    // and not kept: the client keeps it in its own set, and its later Remove
                    // is acknowledged like any other.
                    if let Some(refusal) = refuse_adds {
                        change
                            .local
                            .push(query_failed(query_id, refusal.to_string()));
                        continue;
                    }
                    let path = field_str(modification, "udfPath")?;
                    let journal = modification
                        .get("journal")
                        .and_then(Json::as_str)
                        .map(str::to_string);
                    let added =
                        nimbus_app::parse_args(modification.get("args").unwrap_or(&Json::Null))
                            .map_err(|e| e.to_string())
                            .and_then(|args| {
                                self.session
                                    .add(query_id, path, &args, self.caller.clone(), journal)
                                    .map_err(|refused| refused.to_string())
                            });
                    match added {
                        Ok(()) => {
                            change.awaiting.insert(query_id);
                        }
                        Err(message) => change.local.push(query_failed(query_id, message)),
                    }
                }
                Some("Remove") => {
                    // Removing a query the server does not hold (refused when added) is
                    // acknowledged all the same.
                    self.session.remove(query_id);
                    change.awaiting.remove(&query_id);
                    change.held.remove(&query_id);
                    change
                        .local
                        .retain(|m| m["queryId"].as_u64() != Some(u64::from(query_id)));
                    change
                        .local
                        .push(json!({"type": "QueryRemoved", "queryId": query_id}));
                }
                _ => return Err(fatal("each modification must be an Add or a Remove")),
            }
        }
        self.client_query_set = new;
        self.pending = Some(change);
        self.flush().await
    }

    async fn authenticate(&mut self, message: &Json) -> Result<(), End> {
        let base = field_u64(message, "baseVersion")?;
        if base != self.client_identity {
            return Err(fatal(format!(
                "identity version out of order: the server is at {}, the message is based on {base}",
                self.client_identity
            )));
        }
        let caller = match message.get("tokenType").and_then(Json::as_str) {
            Some("None") => Caller::Client,
            Some("Admin") => {
                let key = field_str(message, "value")?;
                let state = self.state.clone();
                let check = state.nimbus.check_tenant_admin_key(self.tenant.name(), key);
                match state.authenticate(self.client, check).await {
                    Ok(()) => Caller::Admin,
                    Err(error) => return self.auth_error(base, error.message, true).await,
                }
            }
            Some("User") => {
                let token = field_str(message, "value")?;
                match self.tenant.authenticate_user(token).await {
                    Ok(identity) => Caller::User(identity),
                    Err(error) => return self.auth_error(base, error.to_string(), true).await,
                }
            }
            _ => return Err(fatal("tokenType must be \"User\", \"Admin\" or \"None\"")),
        };
        self.client_identity = base + 1;
        let mut change = PendingChange {
            query_set: self.client_query_set,
            identity: self.client_identity,
            awaiting: HashSet::new(),
            held: BTreeMap::new(),
            local: Vec::new(),
        };
        if caller != self.caller {
            // Every query re-runs under the new identity.
            self.caller = caller.clone();
            let refused = self.session.resubscribe_all(caller);
            for query_id in self.session.query_ids() {
                change.awaiting.insert(query_id);
            }
            for (query_id, error) in refused {
                change.local.push(query_failed(query_id, error.to_string()));
            }
        }
        self.pending = Some(change);
        self.flush().await
    }

    /// Refuses the socket's identity: `AuthError`, then a close. `update_attempted` says
    /// whether it answers the client's `Authenticate` (true) or an identity the server
    /// found expired (false); either way the npm client fetches a fresh token and
    /// reconnects.
    async fn auth_error(
        &mut self,
        base: u64,
        error: String,
        update_attempted: bool,
    ) -> Result<(), End> {
        self.send(json!({
            "type": "AuthError", "error": error, "baseVersion": base,
            "authUpdateAttempted": update_attempted,
        }))
        .await?;
        Err(End::Close {
            fatal: None,
            code: 1008,
            reason: "authentication failed".into(),
        })
    }
}

/// A connection's queue of mutations and actions, and the task running them (stopped when
/// the queue is dropped).
struct RequestQueue {
    sender: mpsc::Sender<Request>,
    worker: tokio::task::JoinHandle<()>,
}

impl Drop for RequestQueue {
    fn drop(&mut self) {
        self.worker.abort();
    }
}

impl Connection {
    /// The request queue, made (with its task and answer channel) on first use.
    fn request_queue(&mut self) -> &RequestQueue {
        let capacity = self.config.max_queued_requests.max(1);
        let tenant = &self.tenant;
        let new_answers = &mut self.new_answers;
        self.requests.get_or_insert_with(|| {
            let (sender, queue) = mpsc::channel(capacity);
            let (answer_tx, answers) = mpsc::channel(capacity);
            *new_answers = Some(answers);
            RequestQueue {
                sender,
                worker: tokio::spawn(run_requests(tenant.clone(), queue, answer_tx)),
            }
        })
    }
}

/// The next answer of a connection's request queue; never, while it has none.
async fn next_answer(answers: &mut Option<mpsc::Receiver<Answer>>) -> Option<Answer> {
    match answers {
        Some(answers) => answers.recv().await,
        None => std::future::pending().await,
    }
}

/// Actions one connection may have running at once; a further action waits for one of
/// them to end before it starts (and requests behind it wait in the connection's queue).
const MAX_ACTIONS_PER_CONNECTION: usize = 16;

/// Runs a connection's mutations one at a time, in the order received, as the client
/// expects. Actions are not ordered (the official clients do not wait for one before
/// sending the next) and may wait on the outside world for minutes, so each runs in a
/// task of its own beside the mutations.
async fn run_requests(
    tenant: Arc<Tenant>,
    mut queue: mpsc::Receiver<Request>,
    answers: mpsc::Sender<Answer>,
) {
    let actions = Arc::new(tokio::sync::Semaphore::new(MAX_ACTIONS_PER_CONNECTION));
    while let Some(request) = queue.recv().await {
        let function_request = FunctionRequest {
            path: request.path,
            args: request.args,
            kind: Some(request.kind),
            caller: request.caller,
            at_ts: None,
        };
        if request.kind == FunctionKind::Action {
            let Ok(turn) = actions.clone().acquire_owned().await else {
                return;
            };
            let (tenant, answers) = (tenant.clone(), answers.clone());
            tokio::spawn(async move {
                let outcome = tenant.run(function_request).await;
                drop(turn);
                let answer = Answer {
                    request_id: request.request_id,
                    kind: FunctionKind::Action,
                    outcome,
                };
                let _ = answers.send(answer).await;
            });
            continue;
        }
        let outcome = match (&request.session_id, request.kind) {
            (Some(session), FunctionKind::Mutation) => tenant
                .run_once(
                    session,
                    request.request_id,
                    request.may_be_resent,
                    function_request,
                )
                .await
                .map(|(response, _)| response),
            _ => tenant.run(function_request).await,
        };
        let answer = Answer {
            request_id: request.request_id,
            kind: request.kind,
            outcome,
        };
        if answers.send(answer).await.is_err() {
            return;
        }
    }
}

//! The sync protocol, up to the session state machine: each input is one WebSocket session
//! against a running server (real router, real socket on loopback, a tenant with pushed
//! functions). The input is a sequence of operations a client could do (connect, change
//! its query set, run mutations and actions, authenticate, send junk), made mostly valid so
//! that the fuzzer reaches deep states, with deliberate version skews and raw frames mixed
//! in.
//!
//! What must hold, whatever the input:
//! - every server message is a JSON object of a known type;
//! - Transitions chain: each starts at the previous one's end version, timestamps never go
//!   back, and no version is ahead of what the client asked for;
//! - every Mutation and Action gets exactly one response, unless the session ends with a
//!   `FatalError` or a close;
//! - a successful mutation is followed by a Transition reaching its commit, and a failed
//!   one that carries `errorData` by a Transition (the Rust client waits for one);
//! - the server neither panics nor hangs (libFuzzer's `-timeout` and the waits below), and a
//!   fresh, well-formed session still gets its query result afterwards.
#![no_main]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use nimbus_fuzz::{server, TENANT};
use serde_json::{json, Value as Json};
use tokio_tungstenite::tungstenite::Message;

/// How long the server may take to answer what a session sent. Answers take milliseconds;
/// past this the input is reported as a hang.
const ANSWER_LIMIT: Duration = Duration::from_secs(8);

#[derive(Arbitrary, Debug)]
enum Function {
    Count,
    Echo,
    Fail,
    Whoami,
    Add,
    Reject,
    Crash,
    Missing,
    Named(String),
}

impl Function {
    fn path(&self) -> String {
        match self {
            Function::Count => "f:count".into(),
            Function::Echo => "f:echo".into(),
            Function::Fail => "f:fail".into(),
            Function::Whoami => "f:whoami".into(),
            Function::Add => "f:add".into(),
            Function::Reject => "f:reject".into(),
            Function::Crash => "f:crash".into(),
            Function::Missing => "f:missing".into(),
            Function::Named(name) => name.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Args {
    Empty,
    Number(f64),
    Text(String),
    Integer(i64),
    Nested(u8),
    NotAnArray(String),
    Json(String),
}

impl Args {
    fn json(&self) -> Json {
        match self {
            Args::Empty => json!([{}]),
            Args::Number(n) => json!([{ "n": n }]),
            Args::Text(text) => json!([{ "text": text }]),
            Args::Integer(i) => {
                let bytes = base64::engine::general_purpose::STANDARD.encode(i.to_le_bytes());
                json!([{ "n": { "$integer": bytes } }])
            }
            Args::Nested(depth) => {
                let mut value = json!(1);
                for _ in 0..*depth {
                    value = json!({ "a": [value] });
                }
                json!([value])
            }
            Args::NotAnArray(text) => json!(text),
            Args::Json(text) => serde_json::from_str(text).unwrap_or(Json::Null),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Auth {
    Admin,
    WrongAdmin,
    User(String),
    Clear,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Connect {
        session: u8,
        connection_count: u8,
        max_observed_ts: Option<u64>,
    },
    Add {
        query_id: u8,
        function: Function,
        args: Args,
        journal: Option<String>,
    },
    Remove {
        query_id: u8,
    },
    Mutation {
        request_id: u8,
        function: Function,
        args: Args,
    },
    Action {
        request_id: u8,
        function: Function,
    },
    Authenticate(Auth),
    Event,
    /// The next query-set change or authentication claims versions off by this much.
    Skew(i8),
    /// A frame of any text; a well-formed request in it is not sent (the state machine's
    /// requests come from the operations above, which this session tracks).
    Raw(String),
}

#[derive(Arbitrary, Debug)]
struct Session {
    /// Send a Connect first, as every client does.
    connect_first: bool,
    ops: Vec<Op>,
}

/// What the client sent that the server owes an answer for.
#[derive(Default)]
struct Sent {
    query_set: u64,
    identity: u64,
    /// Responses owed, by request ID (a client may reuse one).
    requests: BTreeMap<u64, usize>,
}

fn decode_ts(value: &Json) -> u64 {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("a timestamp is not a string: {value}"));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap_or_else(|e| panic!("a timestamp is not base64 ({e}): {text}"));
    let bytes: [u8; 8] = bytes
        .try_into()
        .unwrap_or_else(|_| panic!("a timestamp is not 8 bytes: {text}"));
    u64::from_le_bytes(bytes)
}

fn session_id(choice: u8) -> Json {
    match choice % 4 {
        0 => json!(format!("fuzz-session-{}", choice / 4)),
        1 => Json::Null,
        2 => json!("x".repeat(usize::from(choice))),
        _ => json!(choice),
    }
}

/// Turns operations into frames, tracking the versions a real client would.
fn frames(session: &Session, sent: &mut Sent) -> Vec<String> {
    let mut frames = Vec::new();
    if session.connect_first {
        frames.push(
            json!({"type": "Connect", "sessionId": "fuzz-session", "connectionCount": 0})
                .to_string(),
        );
    }
    let mut skew: i64 = 0;
    let mut modifications = Vec::new();
    let flush = |modifications: &mut Vec<Json>,
                 frames: &mut Vec<String>,
                 sent: &mut Sent,
                 skew: &mut i64| {
        if modifications.is_empty() {
            return;
        }
        let base = sent.query_set as i64 + *skew;
        *skew = 0;
        frames.push(
            json!({
                "type": "ModifyQuerySet",
                "baseVersion": base,
                "newVersion": base + 1,
                "modifications": std::mem::take(modifications),
            })
            .to_string(),
        );
        sent.query_set += 1;
    };
    for op in &session.ops {
        if !matches!(op, Op::Add { .. } | Op::Remove { .. }) {
            flush(&mut modifications, &mut frames, sent, &mut skew);
        }
        match op {
            Op::Connect {
                session,
                connection_count,
                max_observed_ts,
            } => {
                let mut connect = json!({
                    "type": "Connect",
                    "sessionId": session_id(*session),
                    "connectionCount": connection_count,
                    "lastCloseReason": null,
                });
                if let Some(ts) = max_observed_ts {
                    connect["maxObservedTimestamp"] =
                        json!(base64::engine::general_purpose::STANDARD.encode(ts.to_le_bytes()));
                }
                frames.push(connect.to_string());
            }
            Op::Add {
                query_id,
                function,
                args,
                journal,
            } => {
                let mut add = json!({
                    "type": "Add",
                    "queryId": query_id,
                    "udfPath": function.path(),
                    "args": args.json(),
                });
                if let Some(journal) = journal {
                    add["journal"] = json!(journal);
                }
                modifications.push(add);
            }
            Op::Remove { query_id } => {
                modifications.push(json!({"type": "Remove", "queryId": query_id}));
            }
            Op::Mutation {
                request_id,
                function,
                args,
            } => {
                frames.push(
                    json!({
                        "type": "Mutation",
                        "requestId": request_id,
                        "udfPath": function.path(),
                        "args": args.json(),
                    })
                    .to_string(),
                );
                *sent.requests.entry(u64::from(*request_id)).or_default() += 1;
            }
            Op::Action {
                request_id,
                function,
            } => {
                frames.push(
                    json!({
                        "type": "Action",
                        "requestId": request_id,
                        "udfPath": function.path(),
                        "args": [{}],
                    })
                    .to_string(),
                );
                *sent.requests.entry(u64::from(*request_id)).or_default() += 1;
            }
            Op::Authenticate(auth) => {
                let base = sent.identity as i64 + skew;
                skew = 0;
                let (token_type, value) = match auth {
                    Auth::Admin => ("Admin", json!(server().tenant_key())),
                    Auth::WrongAdmin => ("Admin", json!(format!("{TENANT}|not-the-key"))),
                    Auth::User(token) => ("User", json!(token)),
                    Auth::Clear => ("None", Json::Null),
                };
                let mut message = json!({
                    "type": "Authenticate",
                    "baseVersion": base,
                    "tokenType": token_type,
                });
                if !value.is_null() {
                    message["value"] = value;
                }
                frames.push(message.to_string());
                sent.identity += 1;
            }
            Op::Event => frames
                .push(json!({"type": "Event", "eventType": "fuzz", "event": {"n": 1}}).to_string()),
            Op::Skew(delta) => skew = i64::from(*delta),
            Op::Raw(text) => {
                let kind = serde_json::from_str::<Json>(text)
                    .ok()
                    .and_then(|v| v.get("type").and_then(Json::as_str).map(str::to_string));
                if !matches!(
                    kind.as_deref(),
                    Some("Mutation" | "Action" | "ModifyQuerySet" | "Authenticate")
                ) {
                    frames.push(text.clone());
                }
            }
        }
    }
    flush(&mut modifications, &mut frames, sent, &mut skew);
    frames
}

/// What the server sent, checked message by message.
#[derive(Default)]
struct Seen {
    end: Option<Json>,
    ts: u64,
    answers: BTreeMap<u64, usize>,
    /// A Transition must reach this timestamp (a mutation committed there) ...
    owed_ts: Option<u64>,
    /// ... or, after a failure with `errorData`, any Transition must come.
    owed_transition: bool,
    fatal: bool,
    closed: bool,
    query_updates: usize,
}

impl Seen {
    fn check(&mut self, message: &Json, sent: &Sent) {
        let kind = message
            .get("type")
            .and_then(Json::as_str)
            .unwrap_or_else(|| panic!("a server message has no type: {message}"));
        match kind {
            "Transition" => {
                let start = &message["startVersion"];
                match &self.end {
                    Some(end) => assert_eq!(
                        start, end,
                        "a Transition does not start where the previous one ended"
                    ),
                    None => assert!(
                        start["querySet"] == 0 && start["identity"] == 0,
                        "the first Transition starts at {start}"
                    ),
                }
                let end = &message["endVersion"];
                let ts = decode_ts(&end["ts"]);
                assert!(ts >= self.ts, "a Transition went back in time");
                assert!(
                    end["querySet"]
                        .as_u64()
                        .is_some_and(|v| v <= sent.query_set),
                    "a Transition is at query set {} but the client asked for {}",
                    end["querySet"],
                    sent.query_set
                );
                assert!(
                    end["identity"].as_u64().is_some_and(|v| v <= sent.identity),
                    "a Transition is at identity {} but the client asked for {}",
                    end["identity"],
                    sent.identity
                );
                self.ts = ts;
                self.end = Some(end.clone());
                self.owed_transition = false;
                if self.owed_ts.is_some_and(|owed| ts >= owed) {
                    self.owed_ts = None;
                }
                let modifications = message["modifications"]
                    .as_array()
                    .unwrap_or_else(|| panic!("a Transition without modifications: {message}"));
                self.query_updates += modifications
                    .iter()
                    .filter(|m| m["type"] == "QueryUpdated")
                    .count();
            }
            "MutationResponse" | "ActionResponse" => {
                let id = message["requestId"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("a response without a request ID: {message}"));
                let count = self.answers.entry(id).or_default();
                *count += 1;
                assert!(
                    *count <= sent.requests.get(&id).copied().unwrap_or(0),
                    "more responses to request {id} than requests: {message}"
                );
                if kind == "MutationResponse" {
                    if message["success"] == true {
                        let ts = decode_ts(&message["ts"]);
                        self.owed_ts = Some(self.owed_ts.map_or(ts, |owed| owed.max(ts)));
                    } else if message.get("errorData").is_some() {
                        self.owed_transition = true;
                    }
                }
            }
            "FatalError" => self.fatal = true,
            "AuthError" | "Ping" => {}
            other => panic!("unknown server message type {other:?}: {message}"),
        }
    }

    fn done(&self, sent: &Sent) -> bool {
        self.fatal
            || self.closed
            || (self.answers == sent.requests && self.owed_ts.is_none() && !self.owed_transition)
    }
}

/// Runs a session and waits until it is fully answered.
async fn run_checked(session: &Session) {
    let url = format!("ws://{}/t/{TENANT}/api/sync", server().addr);
    let (socket, _) = tokio_tungstenite::connect_async_with_config(&url, None, true)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let (mut write, mut read) = socket.split();
    let mut sent = Sent::default();
    let frames = frames(session, &mut sent);
    let mut writer = tokio::spawn(async move {
        for frame in frames {
            if write.send(Message::text(frame)).await.is_err() {
                break;
            }
        }
        write
    });
    let mut write = None;
    let mut seen = Seen::default();
    let deadline = tokio::time::Instant::now() + ANSWER_LIMIT;
    // Sending and receiving run together: the server stops reading while its request queue
    // is full, and empties it only as its answers are read.
    loop {
        if write.is_some() && seen.done(&sent) {
            break;
        }
        let message = tokio::select! {
            finished = &mut writer, if write.is_none() => {
                write = Some(finished.unwrap_or_else(|e| panic!("the writer failed: {e}")));
                continue;
            }
            message = tokio::time::timeout_at(deadline, read.next()) => message,
        };
        match message {
            Err(_) if write.is_none() => panic!("the server stopped reading the session's frames"),
            Err(_) => panic!(
                "no complete answer within {ANSWER_LIMIT:?}: responses {:?} for requests {:?}, \
                 Transition owed at ts {:?} / after errorData {}",
                seen.answers, sent.requests, seen.owed_ts, seen.owed_transition
            ),
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => {
                seen.closed = true;
                break;
            }
            Ok(Some(Ok(Message::Text(text)))) => {
                let message: Json = serde_json::from_str(text.as_str())
                    .unwrap_or_else(|e| panic!("the server sent invalid JSON ({e}): {text}"));
                seen.check(&message, &sent);
                if seen.fatal {
                    break;
                }
            }
            Ok(Some(Ok(Message::Binary(_)))) => panic!("the server sent a binary frame"),
            Ok(Some(Ok(_))) => {}
        }
    }
    match write {
        Some(mut write) => {
            let _ = write.close().await;
        }
        None => writer.abort(),
    }
}

/// A well-formed session subscribing to `f:count` gets a result: the server still serves.
async fn still_serves() {
    let session = Session {
        connect_first: true,
        ops: vec![Op::Add {
            query_id: 0,
            function: Function::Count,
            args: Args::Empty,
            journal: None,
        }],
    };
    let url = format!("ws://{}/t/{TENANT}/api/sync", server().addr);
    let (socket, _) = tokio_tungstenite::connect_async_with_config(&url, None, true)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let (mut write, mut read) = socket.split();
    let mut sent = Sent::default();
    for frame in frames(&session, &mut sent) {
        write
            .send(Message::text(frame))
            .await
            .unwrap_or_else(|e| panic!("send: {e}"));
    }
    let mut seen = Seen::default();
    let result = tokio::time::timeout(ANSWER_LIMIT, async {
        while seen.query_updates == 0 {
            match read.next().await {
                Some(Ok(Message::Text(text))) => {
                    let message: Json = serde_json::from_str(text.as_str())
                        .unwrap_or_else(|e| panic!("invalid JSON ({e}): {text}"));
                    assert!(
                        message["type"] != "FatalError",
                        "a well-formed session failed: {message}"
                    );
                    seen.check(&message, &sent);
                }
                Some(Ok(_)) => {}
                other => panic!("the socket ended: {other:?}"),
            }
        }
    })
    .await;
    assert!(
        result.is_ok(),
        "a well-formed session got no query result after the fuzzed one"
    );
    let _ = write.close().await;
}

static RUNS: AtomicU64 = AtomicU64::new(0);

fuzz_target!(|session: Session| {
    let server = server();
    server.runtime.block_on(run_checked(&session));
    if RUNS.fetch_add(1, Ordering::Relaxed).is_multiple_of(64) {
        server.runtime.block_on(still_serves());
    }
});

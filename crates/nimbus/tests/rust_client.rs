//! The official Rust client (`convex` crate) against a real `nimbus serve`: subscribe to a
//! query of `examples/pos`, see another client's mutation, run its own mutation, resume
//! after the server closes its socket, and get the answer to mutations that fail (with a
//! `ConvexError` and with a plain error).
//!
//! The Rust client replaces the URL path with `/api/sync`, so it reaches the tenant by host
//! name: `http://rust-live.localhost:<port>`. That name must resolve to 127.0.0.1; when it
//! does not, the test adds it to `/etc/hosts` (CI runs as root) or fails saying so.
//! Pushing `examples/pos` uses the official CLI from `examples/pos/node_modules`
//! (`scripts/test.sh` installs it before the Rust tests).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use convex::{ConvexClient, ConvexClientBuilder, FunctionResult, Value, WebSocketState};
use futures::StreamExt;
use serde_json::json;

const TENANT: &str = "rust-live";
const WAIT: Duration = Duration::from_secs(30);

struct Server {
    child: Child,
    port: u16,
    admin_key: String,
    _data: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Makes `<tenant>.localhost` resolve to 127.0.0.1.
fn ensure_host_resolves(host: &str) {
    if (host, 80)
        .to_socket_addrs()
        .is_ok_and(|mut a| a.next().is_some())
    {
        return;
    }
    use std::io::Write as _;
    let appended = std::fs::OpenOptions::new()
        .append(true)
        .open("/etc/hosts")
        .and_then(|mut f| writeln!(f, "127.0.0.1 {host}"));
    assert!(
        appended.is_ok() && (host, 80).to_socket_addrs().is_ok(),
        "{host} does not resolve and /etc/hosts is not writable: add `127.0.0.1 {host}` to it"
    );
}

async fn start_server() -> Server {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    // At least 32 characters, as the server requires of NIMBUS_ADMIN_KEY.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let admin_key = format!("rust-test-{}-{nanos:032x}", std::process::id());
    let child = Command::new(env!("CARGO_BIN_EXE_nimbus"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data.path())
        .env("NIMBUS_ADMIN_KEY", &admin_key)
        .env(
            "RUST_LOG",
            std::env::var("NIMBUS_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let server = Server {
        child,
        port,
        admin_key,
        _data: data,
    };
    let health = format!("http://127.0.0.1:{port}/health");
    let deadline = tokio::time::Instant::now() + WAIT;
    while !reqwest::get(&health)
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nimbus did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server
}

async fn admin(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> serde_json::Value {
    let mut request = reqwest::Client::new()
        .request(method, format!("http://127.0.0.1:{}{path}", server.port))
        .bearer_auth(&server.admin_key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.json().await.unwrap()
}

fn push_pos(url: &str, admin_key: &str) {
    let pos = repo_root().join("examples/pos");
    let cli = pos.join("node_modules/convex/bin/main.js");
    assert!(
        cli.exists(),
        "{} is missing: run `npm ci` in examples/pos (scripts/test.sh does)",
        cli.display()
    );
    let output = Command::new("node")
        .arg(&cli)
        .args(["deploy", "--yes", "--typecheck", "disable"])
        .current_dir(&pos)
        .env_remove("CONVEX_DEPLOYMENT")
        .env("CONVEX_SELF_HOSTED_URL", url)
        .env("CONVEX_SELF_HOSTED_ADMIN_KEY", admin_key)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "convex deploy failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn args(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn value(result: FunctionResult) -> Value {
    match result {
        FunctionResult::Value(v) => v,
        other => panic!("the function failed: {other:?}"),
    }
}

fn field(v: &Value, name: &str) -> f64 {
    match v {
        Value::Object(fields) => match fields.get(name) {
            Some(Value::Float64(f)) => *f,
            Some(Value::Int64(i)) => *i as f64,
            other => panic!("{name} is {other:?}"),
        },
        other => panic!("not an object: {other:?}"),
    }
}

/// A client whose socket states (connecting, connected) the test can follow.
async fn client(url: &str) -> (ConvexClient, tokio::sync::mpsc::Receiver<WebSocketState>) {
    let (states_tx, states) = tokio::sync::mpsc::channel(64);
    let client = ConvexClientBuilder::new(url)
        .with_on_state_change(states_tx)
        .build()
        .await
        .unwrap();
    (client, states)
}

/// Forgets the socket states seen so far.
fn drain(states: &mut tokio::sync::mpsc::Receiver<WebSocketState>) {
    while states.try_recv().is_ok() {}
}

/// Waits until the client has noticed its socket closed and has connected again.
///
/// Needed before the next mutation: `convex` 0.10.4 fails a mutation submitted while its
/// socket is failing with "channel closed", although it keeps the mutation and re-sends it
/// after reconnecting (the caller sees an error for a mutation that will still run).
async fn reconnected(states: &mut tokio::sync::mpsc::Receiver<WebSocketState>) {
    tokio::time::timeout(WAIT, async {
        let mut saw_connecting = false;
        loop {
            match states.recv().await.expect("the client stopped") {
                WebSocketState::Connecting => saw_connecting = true,
                WebSocketState::Connected if saw_connecting => return,
                WebSocketState::Connected => {}
            }
        }
    })
    .await
    .expect("the client did not reconnect");
}

/// The next subscription value for which `open_orders` is `expected`.
async fn next_with_open_orders(sub: &mut convex::QuerySubscription, expected: f64) -> Value {
    tokio::time::timeout(WAIT, async {
        loop {
            let v = value(sub.next().await.expect("the subscription ended"));
            if field(&v, "openOrders") == expected {
                return v;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no update with openOrders = {expected}"))
}

/// How long a failed mutation may take to be answered before the test calls it a hang. The
/// answer normally takes milliseconds (the test prints it); the bound is loose because CI
/// machines are shared, and a hang is for ever.
const FAILED_MUTATION_LIMIT: Duration = Duration::from_secs(10);

/// The whole scenario's bound. A hang must fail the test, never stall CI.
const SCENARIO_LIMIT: Duration = Duration::from_secs(180);

/// The test runs its own runtime rather than `#[tokio::test]`, for two reasons found the hard
/// way (a CI run that hung for 90 minutes):
///
/// - `convex` 0.10.4's socket worker can spin without yielding: when its socket fails after
///   the client that owned it was dropped, it loops on a closed channel (`next()` returning
///   `None`) waiting for a reconnect request that can never come. A spinning task pins a
///   worker thread, so with every worker pinned no timer fires and `tokio::time::timeout`
///   cannot end the test, and dropping the runtime waits for the spinning poll forever.
/// - So: a watchdog thread aborts the process past the limit whatever the runtime is doing;
///   the runtime has more workers than the two clients have socket tasks; the clients are
///   dropped (and their tasks given time to be cancelled) before the server is stopped; and
///   the runtime is shut down with a timeout instead of dropped.
#[test]
fn official_rust_client_subscribes_mutates_and_reconnects() {
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(SCENARIO_LIMIT + Duration::from_secs(30))
            == Err(std::sync::mpsc::RecvTimeoutError::Timeout)
        {
            eprintln!(
                "rust_client: the scenario did not finish in time; aborting the test process"
            );
            std::process::abort();
        }
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let outcome =
        runtime.block_on(async { tokio::time::timeout(SCENARIO_LIMIT, scenario()).await });
    runtime.shutdown_timeout(Duration::from_secs(5));
    let _ = done_tx.send(());
    let _ = watchdog.join();
    outcome.unwrap_or_else(|_| {
        panic!("the Rust client scenario did not finish within {SCENARIO_LIMIT:?}")
    });
}

async fn scenario() {
    let server = start_server().await;
    let created = admin(
        &server,
        reqwest::Method::POST,
        "/admin/tenants",
        Some(json!({"name": TENANT})),
    )
    .await;
    let key = created["adminKey"].as_str().unwrap().to_string();
    eprintln!("rust_client: tenant created; pushing examples/pos");
    let path_url = format!("http://127.0.0.1:{}/t/{TENANT}", server.port);
    push_pos(&path_url, &key);
    let host = format!("{TENANT}.localhost");
    ensure_host_resolves(&host);
    let url = format!("http://{host}:{}", server.port);

    eprintln!("rust_client: pushed; connecting to {url}");
    let (mut subscriber, mut subscriber_states) = client(&url).await;
    let (mut other, mut other_states) = client(&url).await;
    let shop = value(
        other
            .mutation(
                "shops:create",
                args(&[("name", Value::String("Rust shop".into()))]),
            )
            .await
            .unwrap(),
    );
    let product = value(
        other
            .mutation(
                "products:add",
                args(&[
                    ("shopId", shop.clone()),
                    ("name", Value::String("Tea".into())),
                    ("sku", Value::String("TEA".into())),
                    ("priceCents", Value::Float64(300.0)),
                    ("stock", Value::Float64(100.0)),
                ]),
            )
            .await
            .unwrap(),
    );
    let order = |qty: f64| {
        args(&[
            ("shopId", shop.clone()),
            (
                "items",
                Value::Array(vec![Value::Object(args(&[
                    ("productId", product.clone()),
                    ("qty", Value::Float64(qty)),
                ]))]),
            ),
        ])
    };

    eprintln!("rust_client: seeded; subscribing");
    let mut summary = subscriber
        .subscribe("dashboard:summary", args(&[("shopId", shop.clone())]))
        .await
        .unwrap();
    next_with_open_orders(&mut summary, 0.0).await;

    // Another client's mutation reaches the subscription.
    value(other.mutation("orders:create", order(2.0)).await.unwrap());
    let v = next_with_open_orders(&mut summary, 1.0).await;
    assert_eq!(field(&v, "openTotalCents"), 600.0);

    // The subscriber's own mutation: it resolves, and the subscription reflects it.
    value(
        subscriber
            .mutation("orders:create", order(1.0))
            .await
            .unwrap(),
    );
    next_with_open_orders(&mut summary, 2.0).await;

    // The server closes every socket of the tenant; the client reconnects and resumes.
    drain(&mut subscriber_states);
    drain(&mut other_states);
    let closed = admin(
        &server,
        reqwest::Method::POST,
        &format!("/admin/tenants/{TENANT}/disconnect"),
        None,
    )
    .await;
    assert!(closed["sessions"].as_u64().unwrap() >= 2, "{closed}");
    reconnected(&mut subscriber_states).await;
    reconnected(&mut other_states).await;
    value(other.mutation("orders:create", order(1.0)).await.unwrap());
    next_with_open_orders(&mut summary, 3.0).await;
    value(
        subscriber
            .mutation("orders:create", order(1.0))
            .await
            .unwrap(),
    );
    next_with_open_orders(&mut summary, 4.0).await;

    let stats = admin(
        &server,
        reqwest::Method::GET,
        &format!("/admin/tenants/{TENANT}/stats"),
        None,
    )
    .await;
    assert!(
        stats["live"]["droppedSessions"].as_u64().unwrap() >= 2,
        "{stats}"
    );

    // Failed mutations get their answer (issue 17). `convex` 0.10.4 completes a mutation
    // that failed with `errorData` (a `ConvexError`) only at the next Transition: the server
    // must send one even though nothing changed, or the caller waits for ever. Both clients
    // are tried: `other` has no subscription, `subscriber` has one whose result stays put.
    for (who, client) in [("other", &mut other), ("subscriber", &mut subscriber)] {
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(
            FAILED_MUTATION_LIMIT,
            client.mutation("orders:create", order(1_000.0)),
        )
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{who}: a mutation throwing ConvexError got no answer in {FAILED_MUTATION_LIMIT:?}"
            )
        })
        .unwrap();
        eprintln!(
            "rust_client: {who}: ConvexError answered in {:?}",
            started.elapsed()
        );
        match outcome {
            FunctionResult::ConvexError(error) => {
                let Value::Object(data) = &error.data else {
                    panic!("{who}: errorData is not an object: {:?}", error.data);
                };
                assert_eq!(
                    data.get("code"),
                    Some(&Value::String("OUT_OF_STOCK".into())),
                    "{who}: {data:?}"
                );
                assert_eq!(data.get("requested"), Some(&Value::Float64(1_000.0)));
                assert_eq!(data.get("productId"), Some(&product));
                assert!(
                    matches!(data.get("available"), Some(Value::Float64(n)) if *n < 1_000.0),
                    "{who}: {data:?}"
                );
            }
            other => panic!("{who}: expected a ConvexError, got {other:?}"),
        }

        // A failure without errorData (here the argument validator's): completed at once.
        let started = std::time::Instant::now();
        let mut bad = order(1.0);
        bad.insert("shopId".into(), Value::String("not an id".into()));
        let outcome =
            tokio::time::timeout(FAILED_MUTATION_LIMIT, client.mutation("orders:create", bad))
                .await
                .unwrap_or_else(|_| panic!("{who}: a failing mutation got no answer"))
                .unwrap();
        eprintln!(
            "rust_client: {who}: plain error answered in {:?}",
            started.elapsed()
        );
        match outcome {
            FunctionResult::ErrorMessage(message) => {
                assert!(message.contains("shopId"), "{who}: {message}")
            }
            other => panic!("{who}: expected an error message, got {other:?}"),
        }
    }
    // Nothing was written: the subscription still shows four open orders, and the next
    // successful mutation still reaches it.
    value(other.mutation("orders:create", order(1.0)).await.unwrap());
    next_with_open_orders(&mut summary, 5.0).await;

    // Teardown order matters (see the test's doc comment): the clients go first, while the
    // server still answers, and their tasks get a moment to be cancelled; then the server.
    drop(summary);
    drop(subscriber);
    drop(other);
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(server);
    eprintln!("rust_client: done");
}

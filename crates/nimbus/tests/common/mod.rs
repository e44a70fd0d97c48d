//! Helpers shared by the tests that run the official Rust client (`convex` crate) against a
//! real `nimbus serve` child process: starting the server, the admin API, pushing a project
//! with the official CLI, reaching a tenant by host name, and running a scenario under a
//! watchdog.
//!
//! Each test binary uses only some of them.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use convex::{ConvexClient, ConvexClientBuilder, FunctionResult, Value, WebSocketState};
use futures::FutureExt as _;

pub const WAIT: Duration = Duration::from_secs(30);

pub struct Server {
    child: Child,
    pub port: u16,
    pub admin_key: String,
    _data: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Makes `<tenant>.localhost` resolve to 127.0.0.1.
pub fn ensure_host_resolves(host: &str) {
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

pub async fn start_server() -> Server {
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

pub async fn admin(
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

/// Pushes the Convex project in `project` (its `convex/` directory, with `node_modules`
/// resolving to `examples/pos/node_modules`) with the official CLI of `examples/pos`.
pub fn deploy(project: &Path, url: &str, admin_key: &str) {
    let cli = repo_root().join("examples/pos/node_modules/convex/bin/main.js");
    assert!(
        cli.exists(),
        "{} is missing: run `npm ci` in examples/pos (scripts/test.sh does)",
        cli.display()
    );
    convex_cli(
        &cli,
        project,
        url,
        admin_key,
        &["deploy", "--yes", "--typecheck", "disable"],
        "convex deploy",
    );
}

/// Runs the official CLI at `cli` in `project` against the tenant at `url`; asserts it
/// succeeded (`what` names the step in the failure message, with the CLI's output).
pub fn convex_cli(
    cli: &Path,
    project: &Path,
    url: &str,
    admin_key: &str,
    args: &[&str],
    what: &str,
) {
    let output = Command::new("node")
        .arg(cli)
        .args(args)
        .current_dir(project)
        .env_remove("CONVEX_DEPLOYMENT")
        .env("CONVEX_SELF_HOSTED_URL", url)
        .env("CONVEX_SELF_HOSTED_ADMIN_KEY", admin_key)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{what} failed ({url}):\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

pub fn args(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

pub fn value(result: FunctionResult) -> Value {
    match result {
        FunctionResult::Value(v) => v,
        other => panic!("the function failed: {other:?}"),
    }
}

/// A client whose socket states (connecting, connected) the test can follow.
pub async fn client(url: &str) -> (ConvexClient, tokio::sync::mpsc::Receiver<WebSocketState>) {
    let (states_tx, states) = tokio::sync::mpsc::channel(64);
    let client = ConvexClientBuilder::new(url)
        .with_on_state_change(states_tx)
        .build()
        .await
        .unwrap();
    (client, states)
}

/// Forgets the socket states seen so far.
pub fn drain(states: &mut tokio::sync::mpsc::Receiver<WebSocketState>) {
    while states.try_recv().is_ok() {}
}

/// Waits until the client has noticed its socket closed and has connected again.
///
/// Needed before the next mutation: `convex` 0.10.4 fails a mutation submitted while its
/// socket is failing with "channel closed", although it keeps the mutation and re-sends it
/// after reconnecting (the caller sees an error for a mutation that will still run).
pub async fn reconnected(states: &mut tokio::sync::mpsc::Receiver<WebSocketState>) {
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

/// Runs `scenario` on a runtime of its own, bounded by `limit`, under a watchdog thread.
///
/// The tests run their own runtime rather than `#[tokio::test]`, for two reasons found the
/// hard way (a CI run that hung for 90 minutes):
///
/// - `convex` 0.10.4's socket worker can spin without yielding: when its socket fails after
///   the client that owned it was dropped, it loops on a closed channel (`next()` returning
///   `None`) waiting for a reconnect request that can never come. A spinning task pins a
///   worker thread, so with every worker pinned no timer fires and `tokio::time::timeout`
///   cannot end the test, and dropping the runtime waits for the spinning poll forever.
/// - So: a watchdog thread aborts the process past the limit whatever the runtime is doing;
///   the runtime has more workers than the clients have socket tasks; the clients are
///   dropped (and their tasks given time to be cancelled) before the server is stopped; and
///   the runtime is shut down with a timeout instead of dropped.
pub fn run_bounded<F: Future<Output = ()>>(name: &str, limit: Duration, scenario: F) {
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog_name = name.to_string();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(limit + Duration::from_secs(30))
            == Err(std::sync::mpsc::RecvTimeoutError::Timeout)
        {
            eprintln!(
                "{watchdog_name}: the scenario did not finish in time; aborting the test process"
            );
            std::process::abort();
        }
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    // A failed assertion inside the scenario is caught here, so that the runtime is still
    // shut down with a timeout (never dropped while a client's task may spin) before the
    // panic goes on.
    let outcome = runtime.block_on(async {
        std::panic::AssertUnwindSafe(tokio::time::timeout(limit, scenario))
            .catch_unwind()
            .await
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    let _ = done_tx.send(());
    let _ = watchdog.join();
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(_)) => panic!("the {name} scenario did not finish within {limit:?}"),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

//! The shared journal under crashes (issue 14): a real `nimbus serve` (this test build,
//! with the journal's fault points compiled in) kills itself with SIGKILL at a fault point
//! while 50 tenants write at once; after a restart every acknowledged mutation of every
//! tenant is there, none is there in part, and the journal has nothing left unsynced. Then
//! a tenant is deleted and created again while its records are in flight: the new tenant
//! starts empty, also after a crash, and the other tenants lose nothing.
//!
//! Each mutation is the e2e app's `durability:write`: three rows in one transaction.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};

const TENANTS: usize = 50;
const PARTS: usize = 3;

struct Nimbus {
    child: Child,
    port: u16,
    admin_key: String,
    data: PathBuf,
}

impl Nimbus {
    fn start(data: &Path, port: u16, admin_key: &str, fault: Option<(&str, u64)>) -> Nimbus {
        let mut command = Command::new(env!("CARGO_BIN_EXE_nimbus"));
        command
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(data)
            // Small segments, so truncation runs within the test.
            .args(["--journal", "--journal-segment-mib", "1"])
            .env("NIMBUS_ADMIN_KEY", admin_key)
            .env(
                "RUST_LOG",
                std::env::var("NIMBUS_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env_remove("NIMBUS_JOURNAL_FAULT")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some((point, after)) = fault {
            command
                .env("NIMBUS_JOURNAL_FAULT", point)
                .env("NIMBUS_JOURNAL_FAULT_AFTER", after.to_string());
        }
        Nimbus {
            child: command.spawn().unwrap(),
            port,
            admin_key: admin_key.to_string(),
            data: data.to_path_buf(),
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Waits for `/health`, or for the process to die (a fault during start-up).
    async fn healthy(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            if reqwest::get(format!("{}/health", self.base()))
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return true;
            }
            assert!(Instant::now() < deadline, "nimbus did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the process exits; whether SIGKILL ended it.
    async fn killed(&mut self, within: Duration) -> bool {
        use std::os::unix::process::ExitStatusExt;
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.signal() == Some(9);
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Json>) -> Json {
        let mut request = reqwest::Client::new()
            .request(method, format!("{}{path}", self.base()))
            .bearer_auth(&self.admin_key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Json::Null)
    }
}

impl Drop for Nimbus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The e2e app's push, as the official CLI makes it, written to a file instead of sent.
fn push_request(url: &str, key: &str, dir: &Path) -> Json {
    let e2e = common::repo_root().join("tests/e2e");
    let cli = e2e.join("node_modules/convex/bin/main.js");
    assert!(
        cli.exists(),
        "{} is missing: run `npm ci` in tests/e2e",
        cli.display()
    );
    let out = dir.join("push-request");
    let out_arg = out.to_string_lossy().into_owned();
    common::convex_cli(
        &cli,
        &e2e.join("app"),
        url,
        key,
        &[
            "deploy",
            "--yes",
            "--typecheck",
            "disable",
            "--codegen",
            "disable",
            "--push-all-modules",
            "--write-push-request",
            &out_arg,
        ],
        "writing the push request",
    );
    serde_json::from_slice(&std::fs::read(out.with_extension("json")).unwrap()).unwrap()
}

/// Pushes by replaying the CLI's three push requests.
async fn push(http: &reqwest::Client, url: &str, key: &str, template: &Json) {
    let post = |path: &'static str, body: Json| {
        let request = http
            .post(format!("{url}/api/deploy2/{path}"))
            .header("authorization", format!("Convex {key}"))
            .json(&body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            let text = response.text().await.unwrap();
            assert!(status.is_success(), "{path}: {status} {text}");
            serde_json::from_str::<Json>(&text).unwrap()
        }
    };
    let mut body = template.clone();
    body["adminKey"] = json!(key);
    let started = post("start_push", body).await;
    let waited = post(
        "wait_for_schema",
        json!({"adminKey": key, "schemaChange": started["schemaChange"], "timeoutMs": 10000, "dryRun": false}),
    )
    .await;
    assert_eq!(waited["type"], "complete", "{waited}");
    post(
        "finish_push",
        json!({"adminKey": key, "startPush": started, "dryRun": false}),
    )
    .await;
}

/// Creates a tenant and pushes the app to it; its URL.
async fn tenant_with_app(
    server: &Nimbus,
    http: &reqwest::Client,
    name: &str,
    template: &Json,
) -> String {
    let created = server
        .admin(
            reqwest::Method::POST,
            "/admin/tenants",
            Some(json!({"name": name})),
        )
        .await;
    let url = created["url"].as_str().unwrap().to_string();
    push(http, &url, created["adminKey"].as_str().unwrap(), template).await;
    url
}

async fn call(
    http: &reqwest::Client,
    base: &str,
    tenant: &str,
    kind: &str,
    path: &str,
    args: Json,
) -> Result<Json, String> {
    let response = http
        .post(format!("{base}/t/{tenant}/api/{kind}"))
        .json(&json!({"path": path, "format": "convex_encoded_json", "args": [args]}))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status();
    let body: Json = response.json().await.map_err(|e| format!("body: {e}"))?;
    if status.is_success() && body["status"] == "success" {
        Ok(body["value"].clone())
    } else {
        Err(format!("{status}: {body}"))
    }
}

/// `(writer, seq)` pairs acknowledged, per tenant.
type Acked = BTreeMap<String, BTreeSet<u64>>;

/// One writer per tenant, each writing `durability:write` in a loop until `stop` or until
/// the server stops answering; what was acknowledged.
async fn write_all(
    base: String,
    tenants: Vec<String>,
    writer: u64,
    stop: Arc<AtomicBool>,
) -> Acked {
    let http = reqwest::Client::new();
    let loops = tenants.into_iter().map(|tenant| {
        let (http, base, tenant, stop) = (http.clone(), base.clone(), tenant, stop.clone());
        tokio::spawn(async move {
            let mut acked = BTreeSet::new();
            for seq in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match call(
                    &http,
                    &base,
                    &tenant,
                    "mutation",
                    "durability:write",
                    json!({"writer": writer, "seq": seq}),
                )
                .await
                {
                    Ok(_) => {
                        acked.insert(seq);
                    }
                    Err(e) if e.starts_with("429") || e.starts_with("503") => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    // The server died (or is dying) under the request.
                    Err(_) => break,
                }
            }
            (tenant, acked)
        })
    });
    let mut all = Acked::new();
    for done in futures::future::join_all(loops).await {
        let (tenant, acked) = done.unwrap();
        all.insert(tenant, acked);
    }
    all
}

/// Every acknowledged write of `writer` is there whole, and nothing is there in part.
async fn verify(base: &str, acked: &Acked, writer: u64, what: &str) -> usize {
    let http = reqwest::Client::new();
    let mut present = 0;
    for (tenant, seqs) in acked {
        let rows = call(
            &http,
            base,
            tenant,
            "query",
            "durability:rows",
            json!({"writer": writer}),
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: reading {tenant}: {e}"));
        let mut parts: BTreeMap<u64, usize> = BTreeMap::new();
        for row in rows.as_array().unwrap() {
            *parts
                .entry(row["seq"].as_f64().unwrap() as u64)
                .or_default() += 1;
        }
        for (seq, count) in &parts {
            assert_eq!(*count, PARTS, "{what}: {tenant} holds seq {seq} in part");
        }
        for seq in seqs {
            assert!(
                parts.contains_key(seq),
                "{what}: {tenant} lost acknowledged seq {seq}"
            );
        }
        present += parts.len();
    }
    present
}

/// Waits until no tenant has journal records left unsynced.
async fn journal_settles(server: &Nimbus, what: &str) -> Json {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = reqwest::Client::new()
            .get(format!("{}/metrics", server.base()))
            .bearer_auth(&server.admin_key)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let metric = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("{what}: no {name} in /metrics"))
        };
        let behind = metric("nimbus_journal_tenants_behind");
        if behind == 0.0 {
            return json!({
                "segments": metric("nimbus_journal_segments"),
                "diskBytes": metric("nimbus_journal_disk_bytes"),
                "syncs": metric("nimbus_journal_syncs_total"),
                "records": metric("nimbus_journal_records_total"),
            });
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {behind} tenants stay behind"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A started server with `count` tenants `<prefix>0..` holding the e2e app (the CLI writes
/// the push once; it is replayed to every tenant); the push template for more.
struct Setup {
    data: tempfile::TempDir,
    _work: tempfile::TempDir,
    port: u16,
    key: String,
    http: reqwest::Client,
    server: Nimbus,
    tenants: Vec<String>,
    template: Json,
}

async fn setup(prefix: &str, count: usize) -> Setup {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let key = format!("journal-test-{prefix}-{:032x}", rand::random::<u128>());
    let http = reqwest::Client::new();
    let mut server = Nimbus::start(data.path(), port, &key, None);
    assert!(server.healthy().await);
    let first_name = format!("{prefix}0");
    let first = server
        .admin(
            reqwest::Method::POST,
            "/admin/tenants",
            Some(json!({"name": first_name})),
        )
        .await;
    let (url, admin_key) = (
        first["url"].as_str().unwrap(),
        first["adminKey"].as_str().unwrap(),
    );
    let template = push_request(url, admin_key, work.path());
    push(&http, url, admin_key, &template).await;
    let mut tenants = vec![first_name];
    for i in 1..count {
        let name = format!("{prefix}{i}");
        tenant_with_app(&server, &http, &name, &template).await;
        tenants.push(name);
    }
    Setup {
        data,
        _work: work,
        port,
        key,
        http,
        server,
        tenants,
        template,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crashes_at_every_journal_fault_point_lose_nothing_acknowledged() {
    let Setup {
        data,
        port,
        key,
        server,
        tenants,
        ..
    } = setup("t", TENANTS).await;
    drop(server);

    // Each round: the fault point the writers run into (after how many passes: truncation
    // runs once a second, once tenants synced), then, for `during-catch-up`, a start that
    // dies while applying the records the first crash left unapplied (`after-sync` leaves
    // its round journaled but not applied).
    let rounds: [(&str, u64, Option<&str>); 4] = [
        ("after-append", 200, None),
        ("after-sync", 200, None),
        ("after-sync", 100, Some("during-catch-up")),
        ("during-truncation", 0, None),
    ];
    let mut all_acked: Vec<(u64, Acked)> = Vec::new();
    for (round, (point, after, then)) in rounds.into_iter().enumerate() {
        let writer = round as u64;
        let what = then.unwrap_or(point);
        let mut server = Nimbus::start(data.path(), port, &key, Some((point, after)));
        assert!(server.healthy().await, "{what}: died while starting");
        let stop = Arc::new(AtomicBool::new(false));
        let writing = tokio::spawn(write_all(
            server.base(),
            tenants.clone(),
            writer,
            stop.clone(),
        ));
        let killed = server.killed(Duration::from_secs(120)).await;
        stop.store(true, Ordering::Relaxed);
        let acked = writing.await.unwrap();
        assert!(killed, "{point}: the fault point was never reached");
        let count: usize = acked.values().map(BTreeSet::len).sum();
        println!(
            "{point}: killed with {count} mutations acknowledged over {} tenants",
            acked.len()
        );
        all_acked.push((writer, acked));
        drop(server);

        if let Some(then) = then {
            // Tenants behind are opened at start and catch up: the first record applied
            // kills the process.
            let mut server = Nimbus::start(data.path(), port, &key, Some((then, 0)));
            let _ = server.healthy().await;
            assert!(
                server.killed(Duration::from_secs(30)).await,
                "{then}: nothing was caught up"
            );
            println!("{then}: killed while applying journal records at start");
        }

        // A clean start: everything acknowledged so far, in every round, is there.
        let mut server = Nimbus::start(data.path(), port, &key, None);
        assert!(server.healthy().await, "{what}: the restart failed");
        let mut present = 0;
        for (writer, acked) in &all_acked {
            present += verify(&server.base(), acked, *writer, what).await;
        }
        let journal = journal_settles(&server, what).await;
        println!(
            "{what}: after the restart {present} mutations are there whole; journal {journal}"
        );
        drop(server);
    }
    drop(data);
}

/// The tenant `again` holds no row of the writers `earlier` (its deleted predecessors').
async fn none_of(
    http: &reqwest::Client,
    base: &str,
    earlier: std::ops::RangeInclusive<u64>,
    what: &str,
) {
    for writer in earlier {
        let rows = call(
            http,
            base,
            "again",
            "query",
            "durability:rows",
            json!({"writer": writer}),
        )
        .await
        .unwrap();
        assert_eq!(
            rows,
            json!([]),
            "{what}: the new tenant has writer {writer}'s rows"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_deleted_and_created_again_under_load_starts_empty() {
    let Setup {
        data,
        port,
        key,
        http,
        mut server,
        tenants: keep,
        template,
        ..
    } = setup("keep", 8).await;
    tenant_with_app(&server, &http, "again", &template).await;

    // Writers on every tenant; `again` is deleted under its writer, created again at once
    // and written to by a new writer, several times.
    let stop = Arc::new(AtomicBool::new(false));
    let keeping = tokio::spawn(write_all(server.base(), keep.clone(), 1, stop.clone()));
    for cycle in 0..3u64 {
        let old_stop = Arc::new(AtomicBool::new(false));
        let old = tokio::spawn(write_all(
            server.base(),
            vec!["again".to_string()],
            100 + cycle,
            old_stop.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
        server
            .admin(reqwest::Method::DELETE, "/admin/tenants/again", None)
            .await;
        old_stop.store(true, Ordering::Relaxed);
        let old_acked = old.await.unwrap();
        assert!(
            old_acked.values().map(BTreeSet::len).sum::<usize>() > 0,
            "cycle {cycle}: the old tenant took writes"
        );
        tenant_with_app(&server, &http, "again", &template).await;
        none_of(
            &http,
            &server.base(),
            100..=100 + cycle,
            &format!("cycle {cycle}"),
        )
        .await;
    }
    let fresh_stop = Arc::new(AtomicBool::new(false));
    let fresh = tokio::spawn(write_all(
        server.base(),
        vec!["again".to_string()],
        200,
        fresh_stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A crash with all of it in flight.
    let _ = server.child.kill();
    stop.store(true, Ordering::Relaxed);
    fresh_stop.store(true, Ordering::Relaxed);
    let kept = keeping.await.unwrap();
    let fresh_acked = fresh.await.unwrap();
    drop(server);

    let server = Nimbus::start(data.path(), port, &key, None);
    let mut server = server;
    assert!(server.healthy().await);
    let present = verify(&server.base(), &kept, 1, "after the crash").await;
    assert!(present > 0);
    verify(
        &server.base(),
        &fresh_acked,
        200,
        "the new tenant after the crash",
    )
    .await;
    none_of(&http, &server.base(), 100..=102, "after the crash").await;
    journal_settles(&server, "recreate").await;
    let _ = &server.data;
}

//! Ordering with slow functions, over pushed code and real storage:
//! - deploy/commit ordering (the review's finding 11.8): a mutation that conflicts with a
//!   deploy re-runs on a fresh snapshot, and must run the code of that snapshot;
//! - a live query whose evaluation is overtaken by a commit into what it reads must be
//!   evaluated again (its result must not be declared current past that commit).

use std::sync::Arc;
use std::time::Duration;

mod common;

use nimbus_app::{Caller, FunctionKind, FunctionRequest, Nimbus, NimbusConfig, Tenant};
use serde_json::json;

/// A module whose mutation `log:write` inserts a row, spins `spin` iterations, and returns
/// the code generation `generation`. The wrapper mimics what Convex bundles export.
fn module(generation: u32) -> String {
    format!(
        r#"
function register(kind, handler) {{
  const f = {{ [kind]: true, isPublic: true, exportArgs: () => '{{"type":"any"}}', exportReturns: () => "null" }};
  f.invokeQuery = f.invokeMutation = async (argsJson) => JSON.stringify(await handler(JSON.parse(argsJson)[0]));
  return f;
}}
export const count = register("isQuery", async ({{ spin }}) => {{
  let x = 0;
  for (let i = 0; i < spin; i++) {{ x = (x + i) % 1000; }}
  return JSON.parse(await Convex.asyncSyscall("1.0/count", JSON.stringify({{ table: "log" }})));
}});
export const write = register("isMutation", async ({{ spin }}) => {{
  await Convex.asyncSyscall("1.0/insert", JSON.stringify({{ table: "log", value: {{ generation: {generation} }} }}));
  let x = 0;
  for (let i = 0; i < spin; i++) {{ x = (x + i) % 1000; }}
  return {generation};
}});
"#
    )
}

async fn push(tenant: &Tenant, generation: u32) {
    common::push_module(tenant, "log.js", module(generation), None).await;
}

fn write(spin: u64) -> FunctionRequest {
    FunctionRequest {
        path: "log:write".into(),
        args: json!([{ "spin": spin }]),
        kind: Some(FunctionKind::Mutation),
        caller: Caller::Client,
        at_ts: None,
    }
}

async fn generation_of(tenant: &Tenant, spin: u64) -> serde_json::Value {
    let response = tenant
        .run(write(spin))
        .await
        .unwrap_or_else(|e| panic!("run: {e}"));
    match response.result {
        Ok(value) => serde_json::Value::from(value.clean_json().parse::<f64>().unwrap_or(-1.0)),
        Err(failure) => panic!("the mutation failed: {}", failure.message),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutation_retried_after_a_deploy_runs_the_new_code() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut config = NimbusConfig::new(dir.path().to_path_buf(), "http://127.0.0.1:1".into());
    config.admin_key = Some("instance-key-0123456789abcdef0123456789".into());
    config.pool.workers = 2;
    config.pool.limits.cpu_time = Duration::from_secs(30);
    let nimbus = Nimbus::open(config).await.unwrap_or_else(|e| panic!("{e}"));
    nimbus
        .create_tenant("ordered")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let tenant: Arc<Tenant> = nimbus
        .tenant("ordered")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    push(&tenant, 1).await;
    assert_eq!(generation_of(&tenant, 0).await, json!(1.0));
    // Calibrate a spin of about a second, so the deploy lands inside it. A calibration can
    // be far off (a JIT runs the long loop at another speed than the short one: 1 failure
    // in 6 runs when this asserted the first try), so a slow mutation that finished before
    // the deploy did is tried again with a longer spin, and a new generation.
    let started = std::time::Instant::now();
    generation_of(&tenant, 2_000_000).await;
    let per_iteration = started.elapsed().as_secs_f64() / 2_000_000.0;
    let mut spin = (1.0 / per_iteration.max(1e-9)) as u64;
    for generation in 2..5u32 {
        let slow = {
            let tenant = tenant.clone();
            tokio::spawn(async move { generation_of(&tenant, spin).await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let overlapped = !slow.is_finished() && {
            push(&tenant, generation).await;
            !slow.is_finished()
        };
        if !overlapped {
            // The next try pushes the next generation, whether this one's push ran or not.
            slow.await.unwrap_or_else(|e| panic!("{e}"));
            spin *= 3;
            continue;
        }
        // Its first attempt conflicts with the deploy (the catalog moved); the retry reads
        // the new snapshot, and so runs the new code.
        assert_eq!(
            slow.await.unwrap_or_else(|e| panic!("{e}")),
            json!(f64::from(generation))
        );
        return;
    }
    panic!("the slow mutation never outlasted a deploy, even at {spin} iterations");
}

/// The first evaluation of a new live query registers no read set until it completes, so a
/// commit landing meanwhile was matched against nothing, and the evaluation's stale result
/// was then declared current past that commit: the subscriber never saw the write (the
/// official Rust client's reconnect test caught it under load). Now the evaluation's read
/// set is checked against the commits since its snapshot, and it runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_during_a_first_evaluation_is_seen() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut config = NimbusConfig::new(dir.path().to_path_buf(), "http://127.0.0.1:1".into());
    config.admin_key = Some("instance-key-0123456789abcdef0123456789".into());
    config.pool.workers = 2;
    config.pool.limits.cpu_time = Duration::from_secs(30);
    let nimbus = Nimbus::open(config).await.unwrap_or_else(|e| panic!("{e}"));
    nimbus
        .create_tenant("live")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let tenant: Arc<Tenant> = nimbus
        .tenant("live")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    push(&tenant, 1).await;
    generation_of(&tenant, 0).await;
    let started = std::time::Instant::now();
    generation_of(&tenant, 2_000_000).await; // two rows in `log` now
    let spin = (0.8 * 2_000_000.0 / started.elapsed().as_secs_f64().max(1e-6)) as u64;
    let session = tenant
        .live_session(std::net::Ipv4Addr::LOCALHOST.into())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut args = nimbus_types::Object::new();
    args.insert("spin".into(), nimbus_types::Value::Float64(spin as f64));
    session
        .add(
            7,
            "log:count",
            &nimbus_types::Value::Object(args),
            Caller::Client,
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    // The evaluation spins for most of a second: commit a third row meanwhile.
    tokio::time::sleep(Duration::from_millis(150)).await;
    generation_of(&tenant, 0).await;
    let notify = session.notifier();
    let mut last = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let three = Some(nimbus_types::Value::Float64(3.0));
    while last != three {
        for (_, result) in session.drain().updates {
            last = result.result.clone().ok();
        }
        if last == three {
            break;
        }
        assert!(
            tokio::time::timeout_at(deadline, notify.notified())
                .await
                .is_ok(),
            "the subscription never saw the third row (last result {last:?})"
        );
    }
}

// The pool's contract tests, included by pool.rs (the preferred engine: V8 where the build
// has it) and pool_quickjs.rs (QuickJS), so that both engines pass the same tests.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use nimbus_runtime::{
    analyze_modules, CodeId, FunctionError, FunctionKind, Invocation, JsPool, ModuleSet,
    PoolConfig, RuntimeLimits, SyscallError, SyscallHost,
};

const APP: &str = r#"
import { helper } from "./_deps/util.js";
function register(kind, handler, extra = {}) {
  const f = { [kind]: true, isPublic: true, exportArgs: () => '{"type":"any"}', exportReturns: () => "null", ...extra };
  f.invokeQuery = f.invokeMutation = async (argsJson) => JSON.stringify(await handler(JSON.parse(argsJson)[0]));
  return f;
}
export const echo = register("isQuery", async (args) => {
  const doc = JSON.parse(await Convex.asyncSyscall("1.0/get", JSON.stringify({ id: args.id })));
  console.log("got", doc, 42);
  return { doc, helper: helper(), env: process.env.GREETING ?? null };
});
export const write = register("isMutation", async (args) => JSON.parse(await Convex.asyncSyscall("1.0/insert", JSON.stringify(args))));
export const fail = register("isQuery", async () => {
  const e = new Error('{"code":7}');
  e.name = "ConvexError";
  e.data = '{"code":7}';
  e[Symbol.for("ConvexError")] = true;
  throw e;
});
export const failSyscall = register("isQuery", async () => {
  try {
    await Convex.asyncSyscall("1.0/boom", "{}");
    return "no error";
  } catch (e) {
    return { message: e.message, data: e.data };
  }
});
export const random = register("isQuery", async () => [Math.random(), Date.now(), new Date().getTime()]);
export const spin = register("isQuery", async () => { while (true) {} });
// Large arrays (64 Ki elements each) reach the memory limit in a few dozen steps, well inside
// the CPU limit even on a loaded machine. (Not strings: V8 builds `repeat` and `+` results as
// ropes of a few nodes, so those took longer than the CPU limit to fill its heap.)
export const hog = register("isQuery", async () => { const a = []; while (true) a.push(new Array(1 << 16).fill(a.length)); });
export const recurse = register("isQuery", async () => { const f = (n) => f(n + 1) + 1; return f(0); });
export const thrown = register("isQuery", async () => { throw new TypeError("first line\nsecond line"); });
export const block = register("isQuery", async () => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0));
export const internalOne = register("isMutation", async () => 1, { isPublic: undefined, isInternal: true });
export const notAFunction = 5;
function action(handler) {
  return { isAction: true, isPublic: true, exportArgs: () => '{"type":"any"}', exportReturns: () => "null",
    invokeAction: async (requestId, argsJson) => JSON.stringify(await handler(JSON.parse(argsJson)[0])) };
}
const op = async (name, args) => JSON.parse(await Convex.asyncSyscall(name, JSON.stringify(args)));
// Two operations at once, then one that depends on both, then a timer.
export const fanOut = action(async () => {
  const [a, b] = await Promise.all([op("1.0/actions/query", { n: 1 }), op("1.0/actions/query", { n: 2 })]);
  const c = await op("1.0/actions/mutation", { n: a + b });
  const late = await new Promise((resolve) => setTimeout(() => resolve(Date.now() > 1_700_000_000_000), 10));
  let failed = null;
  try { await op("1.0/actions/action", {}); } catch (e) { failed = { message: e.message, data: e.data }; }
  return { c, late, failed };
});
export const busyThenWait = action(async () => {
  const until = Date.now() + 200;
  while (Date.now() < until) {}
  await op("1.0/actions/query", {});
  return "answered";
});
export const waitForever = action(async () => { await op("1.0/actions/query", {}); return "answered"; });
export const neverSettles = action(() => new Promise(() => {}));
export const spinAfterWait = action(async () => { await op("1.0/actions/query", {}); while (true) {} });
export const tooManyOps = action(async () => {
  const all = [];
  for (let i = 0; i < 300; i++) all.push(op("x", {}).catch((e) => e.message));
  return (await Promise.race(all));
});
export const web = action(async () => {
  const url = new URL("../b?x=1 2#h", "HTTP://Example.COM:80/a/c");
  url.searchParams.append("y", "é&");
  const headers = new Headers({ "X-A": "1" });
  headers.append("x-a", "2");
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode("abc")));
  const response = new Response(JSON.stringify({ ok: 1 }), { status: 201 });
  const request = new Request("https://a.test/p", { method: "post", body: "hi" });
  return {
    href: url.href, host: url.host, a: headers.get("X-A"),
    digest: Array.from(digest.slice(0, 4)),
    status: response.status, json: await response.json(), used: response.bodyUsed,
    method: request.method, type: request.headers.get("content-type"), body: await request.text(),
    uuid: crypto.randomUUID().length,
  };
});
export const noFetchInQueries = register("isQuery", async () => {
  try { await fetch("https://a.test"); return "fetched"; } catch (e) { return e.message; }
});
"#;

fn modules(code: u128) -> ModuleSet {
    let mut map = BTreeMap::new();
    map.insert("app.js".to_string(), APP.to_string());
    map.insert(
        "_deps/util.js".to_string(),
        "export const helper = () => 'from a chunk';".to_string(),
    );
    let mut env = BTreeMap::new();
    env.insert("GREETING".to_string(), "hi".to_string());
    ModuleSet::new(CodeId(code), Arc::new(map), Arc::new(env))
}

/// Records syscalls (and the worker threads they ran on) and answers a few of them.
#[derive(Default)]
struct FakeHost {
    calls: Vec<String>,
    threads: Vec<String>,
}

impl SyscallHost for FakeHost {
    fn syscall(&mut self, op: &str, args: &str) -> Result<String, SyscallError> {
        self.async_syscall(op, args)
    }
    fn async_syscall(&mut self, op: &str, args: &str) -> Result<String, SyscallError> {
        self.calls.push(format!("{op} {args}"));
        self.threads.push(
            std::thread::current()
                .name()
                .unwrap_or_default()
                .to_string(),
        );
        match op {
            "1.0/get" => Ok(r#"{"_id":"abc","n":1}"#.to_string()),
            "1.0/insert" => Ok(r#"{"_id":"new"}"#.to_string()),
            _ => Err(SyscallError {
                message: format!("no such op {op}"),
                data_json: Some(r#"{"op":"x"}"#.into()),
            }),
        }
    }
}

fn pool(workers: usize) -> JsPool {
    pool_with_homes(workers, workers)
}

fn pool_with_homes(workers: usize, workers_per_tenant: usize) -> JsPool {
    pool_with(workers, workers_per_tenant, Duration::from_millis(300))
}

fn pool_with(workers: usize, workers_per_tenant: usize, cpu_time: Duration) -> JsPool {
    pool_with_cache(workers, workers_per_tenant, cpu_time, (4, 256 << 20))
}

fn pool_with_cache(
    workers: usize,
    workers_per_tenant: usize,
    cpu_time: Duration,
    (isolates_per_worker, cache_bytes_per_worker): (usize, usize),
) -> JsPool {
    let config = PoolConfig {
        workers,
        workers_per_tenant,
        queue_capacity: 16,
        isolates_per_worker,
        cache_bytes_per_worker,
        max_actions: 4,
        limits: RuntimeLimits {
            memory_bytes: 32 << 20,
            cpu_time,
            max_stack_bytes: 256 << 10,
            action_cpu_time: cpu_time,
        },
        engine: ENGINE,
    };
    JsPool::new(config).unwrap_or_else(|e| panic!("{e}"))
}

/// `echo` (a query making one syscall) for `tenant`.
fn echo(tenant: &str, seed: u64) -> Invocation {
    call(
        tenant,
        "echo",
        FunctionKind::Query,
        r#"[{"id":"abc"}]"#,
        seed,
    )
}

fn call(tenant: &str, export: &str, kind: FunctionKind, args: &str, seed: u64) -> Invocation {
    Invocation {
        tenant: Arc::from(tenant),
        modules: modules(1),
        module_path: "app.js".into(),
        export_name: export.into(),
        kind,
        args_json: args.into(),
        rng_seed: seed,
        now_ms: 1_700_000_000_000.0,
        request_id: String::new(),
        system_env: Default::default(),
        http: None,
        limits: None,
    }
}

#[tokio::test]
async fn queries_call_syscalls_log_and_read_env() {
    let pool = pool(2);
    let (host, outcome) = pool
        .invoke(echo("a", 1), FakeHost::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let value = outcome.result.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        value,
        r#"{"doc":{"_id":"abc","n":1},"helper":"from a chunk","env":"hi"}"#
    );
    assert_eq!(host.calls, vec![r#"1.0/get {"id":"abc"}"#.to_string()]);
    assert_eq!(
        outcome.log_lines,
        vec!["[LOG] 'got' { _id: 'abc', n: 1 } 42".to_string()]
    );
}

#[tokio::test]
async fn errors_are_classified() {
    let pool = pool(2);
    let run = |export: &'static str, kind| {
        pool.invoke(call("a", export, kind, "[{}]", 1), FakeHost::default())
    };
    let (_, o) = run("fail", FunctionKind::Query)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    match o.result {
        Err(FunctionError::ConvexError { data_json, message }) => {
            assert_eq!(data_json, r#"{"code":7}"#);
            assert!(message.starts_with("Uncaught ConvexError"), "{message}");
        }
        other => panic!("expected ConvexError, got {other:?}"),
    }
    let (_, o) = run("failSyscall", FunctionKind::Query)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // A failed syscall rejects with an Error carrying `data` (the Convex library turns that
    // into a ConvexError); here the module catches it and returns both.
    assert_eq!(
        o.result.ok().as_deref(),
        Some(r#"{"message":"no such op 1.0/boom","data":{"op":"x"}}"#)
    );
    let (_, o) = run("echo", FunctionKind::Mutation)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        matches!(o.result, Err(FunctionError::WrongKind { .. })),
        "{:?}",
        o.result
    );
    let (_, o) = run("missing", FunctionKind::Query)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        matches!(o.result, Err(FunctionError::ExportNotFound { .. })),
        "{:?}",
        o.result
    );
    // An uncaught error reads as Convex answers it, on either engine: "Uncaught Name:
    // message" once (V8's `stack` repeats that header; QuickJS's does not), then the frames.
    let (_, o) = run("thrown", FunctionKind::Query)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    match o.result {
        Err(FunctionError::Uncaught { message }) => {
            assert!(
                message.starts_with("Uncaught TypeError: first line\nsecond line\n"),
                "{message}"
            );
            assert_eq!(message.matches("first line").count(), 1, "{message}");
            assert_eq!(message.matches("second line").count(), 1, "{message}");
            let frames: Vec<&str> = message.lines().skip(2).collect();
            assert!(
                !frames.is_empty() && frames.iter().all(|l| l.trim_start().starts_with("at ")),
                "only frames follow the message: {message}"
            );
        }
        other => panic!("expected Uncaught, got {other:?}"),
    }
    let (_, o) = run("recurse", FunctionKind::Query)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        matches!(o.result, Err(FunctionError::Uncaught { .. })),
        "deep recursion fails cleanly: {:?}",
        o.result
    );
    // Blocking the worker thread for ever (no one can notify) is refused, not waited out.
    let (_, o) = tokio::time::timeout(Duration::from_secs(20), run("block", FunctionKind::Query))
        .await
        .unwrap_or_else(|_| panic!("Atomics.wait blocked the worker"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        matches!(o.result, Err(FunctionError::Uncaught { .. })),
        "Atomics.wait must throw: {:?}",
        o.result
    );
}

#[tokio::test]
async fn randomness_and_time_are_deterministic_per_seed() {
    let pool = pool(1);
    let mut results = Vec::new();
    for seed in [7, 7, 8] {
        let (_, o) = pool
            .invoke(
                call("a", "random", FunctionKind::Query, "[{}]", seed),
                FakeHost::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        results.push(o.result.unwrap_or_else(|e| panic!("{e}")));
    }
    assert_eq!(results[0], results[1], "same seed, same values");
    assert_ne!(results[0], results[2], "another seed, other values");
    assert!(
        results[0].contains("1700000000000,1700000000000"),
        "{}",
        results[0]
    );
}

/// Starts an endless loop for tenant "noisy", runs `quiet_calls` calls of tenant "quiet"
/// meanwhile, one after another (each must succeed), and checks the loop ends in a timeout.
/// Returns whether the loop was still running when the quiet calls had all finished.
async fn loop_beside_quiet_calls(pool: &Arc<JsPool>, quiet_calls: u64) -> bool {
    let spinner = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.invoke(
                call("noisy", "spin", FunctionKind::Query, "[{}]", 1),
                FakeHost::default(),
            )
            .await
        })
    };
    for seed in 0..quiet_calls {
        let (_, o) = pool
            .invoke(echo("quiet", seed), FakeHost::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(o.result.is_ok(), "{:?}", o.result);
    }
    let loop_still_running = !spinner.is_finished();
    let (_, o) = spinner
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        matches!(o.result, Err(FunctionError::Timeout { .. })),
        "{:?}",
        o.result
    );
    loop_still_running
}

#[tokio::test]
async fn limits_fail_one_call_and_other_tenants_carry_on() {
    let pool = Arc::new(pool(2));
    // While one worker spins, the other serves another tenant.
    loop_beside_quiet_calls(&pool, 5).await;

    let (_, o) = pool
        .invoke(
            call("noisy", "hog", FunctionKind::Query, "[{}]", 1),
            FakeHost::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        matches!(o.result, Err(FunctionError::OutOfMemory { .. })),
        "{:?}",
        o.result
    );
    // The tenant that hit its limits gets a fresh runtime and works again.
    let (_, o) = pool
        .invoke(echo("noisy", 1), FakeHost::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(o.result.is_ok(), "{:?}", o.result);
}

/// A tenant's calls run only on its home workers: a window of `workers_per_tenant`
/// consecutive workers, so its cached isolates live on those alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_run_on_their_tenants_home_workers() {
    let pool = Arc::new(pool_with_homes(4, 2));
    for tenant in ["a", "b", "c", "d", "e"] {
        let mut calls = tokio::task::JoinSet::new();
        for seed in 0..8 {
            let pool = pool.clone();
            calls.spawn(async move { pool.invoke(echo(tenant, seed), FakeHost::default()).await });
        }
        let mut workers = std::collections::BTreeSet::new();
        while let Some(joined) = calls.join_next().await {
            let (host, outcome) = joined
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(outcome.result.is_ok(), "{:?}", outcome.result);
            let name = host.threads.first().cloned().unwrap_or_default();
            let n: usize = name
                .strip_prefix("nimbus-js-")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("a call ran on thread {name:?}"));
            workers.insert(n);
        }
        assert!(
            !workers.is_empty() && workers.len() <= 2,
            "tenant {tenant} ran on workers {workers:?}"
        );
        if let [first, second] = workers.iter().copied().collect::<Vec<_>>()[..] {
            assert!(
                second == first + 1 || (first == 0 && second == 3),
                "tenant {tenant}'s homes are not consecutive: {workers:?}"
            );
        }
    }
}

/// A home worker busy with a long call is passed over even though its queue is empty: the
/// other tenant's calls all finish while the loop still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_home_worker_is_passed_over() {
    // Two workers, both homes of every tenant; the loop may run for 3 s, far longer than
    // the quiet calls take even on a loaded machine.
    let pool = Arc::new(pool_with(2, 2, Duration::from_secs(3)));
    assert!(
        loop_beside_quiet_calls(&pool, 5).await,
        "the quiet tenant's calls waited for the loop to end"
    );
}

/// A call sent the moment the previous one's answer arrives must not find its worker still
/// counting the finished call: tied with the worker stuck in a loop, it could queue behind
/// the loop (seen in the e2e suite as a bystander mutation waiting the whole loop out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_calls_never_queue_behind_a_long_call() {
    // 2,000 echo calls take a few hundred milliseconds; the loop may run for 5 s.
    let pool = Arc::new(pool_with(2, 2, Duration::from_secs(5)));
    assert!(
        loop_beside_quiet_calls(&pool, 2_000).await,
        "a quiet call queued behind the loop"
    );
}

#[test]
fn analysis_lists_registered_functions() {
    let analysis =
        analyze_modules(ENGINE, &modules(1), &RuntimeLimits::default()).unwrap_or_else(|e| panic!("{e}"));
    let mut names: Vec<(String, FunctionKind, bool)> = analysis
        .functions
        .iter()
        .map(|f| {
            (
                f.name.clone(),
                f.kind,
                f.visibility == nimbus_runtime::Visibility::Public,
            )
        })
        .collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(names.len(), 19, "{names:?}");
    assert!(names.contains(&("fanOut".to_string(), FunctionKind::Action, true)));
    assert!(names.contains(&("internalOne".to_string(), FunctionKind::Mutation, false)));
    assert!(names.contains(&("echo".to_string(), FunctionKind::Query, true)));
    assert!(!names.iter().any(|n| n.0 == "notAFunction"));
    assert!(analysis
        .functions
        .iter()
        .all(|f| f.module_path == "app.js" && f.args_json == r#"{"type":"any"}"#));
}

/// Reports the mark an earlier tenant's call left on the global object ("none" if none),
/// leaves its own, and reads `process.env.GREETING`.
const LEAK: &str = r#"export const leak = register("isQuery", async () => {
  const seen = globalThis.__mark ?? "none";
  globalThis.__mark = "marked";
  return `${seen}, ${process.env.GREETING}`;
});"#;

/// A module set whose `version` export returns `answer`.
fn versioned(code: u128, answer: &str) -> ModuleSet {
    let mut map = BTreeMap::new();
    map.insert(
        "app.js".to_string(),
        APP.replace(
            "export const random",
            &format!("export const version = register(\"isQuery\", async () => \"{answer}\");\n{LEAK}\nexport const random"),
        ),
    );
    map.insert(
        "_deps/util.js".to_string(),
        "export const helper = () => 'from a chunk';".to_string(),
    );
    ModuleSet::new(CodeId(code), Arc::new(map), Arc::new(BTreeMap::new()))
}

async fn version(pool: &JsPool, tenant: &str, modules: ModuleSet) -> String {
    let mut invocation = call(tenant, "version", FunctionKind::Query, "[{}]", 1);
    invocation.modules = modules;
    let (_, outcome) = pool
        .invoke(invocation, FakeHost::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    outcome.result.unwrap_or_else(|e| panic!("{e}"))
}

/// The review's reproduction at the pool's level: a tenant deleted and created again under
/// the same name pushes new code; its calls must run the new code, not a cached runtime of
/// the old tenant (runtimes used to be found by name and a per-tenant counter that started
/// again at the same value).
#[tokio::test]
async fn a_runtime_only_ever_runs_the_code_it_was_built_from() {
    let pool = pool(1);
    assert_eq!(version(&pool, "re", versioned(11, "v1")).await, r#""v1""#);
    assert_eq!(version(&pool, "re", versioned(22, "v2")).await, r#""v2""#);
    // Back to the first code: a fresh runtime of it, never the other one.
    assert_eq!(version(&pool, "re", versioned(11, "v1")).await, r#""v1""#);
}

#[tokio::test]
async fn forgetting_a_tenant_drops_its_runtimes() {
    let pool = pool_with_homes(2, 2);
    for seed in 0..4 {
        pool.invoke(echo("gone", seed), FakeHost::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        pool.invoke(echo("stays", seed), FakeHost::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(pool.cached_isolates("gone").await.unwrap_or(0) >= 1);
    pool.forget_tenant("gone");
    assert_eq!(pool.cached_isolates("gone").await.ok(), Some(0));
    assert!(pool.cached_isolates("stays").await.unwrap_or(0) >= 1);
}

/// Drives an action to its end, answering each operation with `answer` (one resume per
/// step, all of the step's operations at once) and recording the operations' names.
async fn drive_action(
    pool: &JsPool,
    inv: Invocation,
    answer: impl Fn(&nimbus_runtime::AsyncOp) -> nimbus_runtime::OpResult,
) -> (Vec<String>, nimbus_runtime::Outcome) {
    let (mut handle, mut step) = pool
        .start_action(inv)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut seen = Vec::new();
    loop {
        match step {
            nimbus_runtime::ActionStep::Done(outcome) => return (seen, outcome),
            nimbus_runtime::ActionStep::Pending(ops) => {
                let results = ops
                    .iter()
                    .map(|op| {
                        seen.push(format!("{} {}", op.op, op.args_json));
                        (op.id, answer(op))
                    })
                    .collect();
                step = handle
                    .resume(results)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }
}

fn action_call(tenant: &str, export: &str) -> Invocation {
    call(tenant, export, FunctionKind::Action, "[{}]", 7)
}

#[tokio::test]
async fn actions_wait_for_operations_in_steps() {
    let pool = pool(1);
    let (ops, outcome) = drive_action(&pool, action_call("t", "fanOut"), |op| {
        let args: serde_json::Value = serde_json::from_str(&op.args_json).unwrap_or_default();
        match op.op.as_str() {
            "1.0/actions/query" => Ok(nimbus_runtime::OpValue::json(args["n"].to_string())),
            "1.0/actions/mutation" => Ok(nimbus_runtime::OpValue::json(format!(
                "{}",
                args["n"].as_i64().unwrap_or(0) * 10
            ))),
            "nimbus/sleep" => Ok(nimbus_runtime::OpValue::json("null".into())),
            _ => Err(SyscallError {
                message: "nested failed".into(),
                data_json: Some(r#"{"code":3}"#.into()),
            }),
        }
    })
    .await;
    assert_eq!(
        ops,
        [
            r#"1.0/actions/query {"n":1}"#,
            r#"1.0/actions/query {"n":2}"#,
            r#"1.0/actions/mutation {"n":3}"#,
            r#"nimbus/sleep {"ms":10}"#,
            "1.0/actions/action {}",
        ]
    );
    let result = outcome.result.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        result,
        r#"{"c":30,"late":true,"failed":{"message":"nested failed","data":{"code":3}}}"#
    );
}

#[tokio::test]
async fn a_waiting_action_holds_no_worker() {
    // One worker: while the action waits for its operation, a query runs on that worker.
    let pool = pool(1);
    let (mut handle, step) = pool
        .start_action(action_call("t", "waitForever"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let nimbus_runtime::ActionStep::Pending(ops) = step else {
        panic!("the action should wait for its query");
    };
    let (_, outcome) = pool
        .invoke(echo("t", 1), FakeHost::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(outcome.result.is_ok(), "{:?}", outcome.result);
    let step = handle
        .resume(vec![(
            ops[0].id,
            Ok(nimbus_runtime::OpValue::json("1".into())),
        )])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    match step {
        nimbus_runtime::ActionStep::Done(outcome) => {
            assert_eq!(outcome.result.ok().as_deref(), Some("\"answered\""));
        }
        other => panic!("expected the end, got {other:?}"),
    }
}

#[tokio::test]
async fn action_limits_and_dead_ends_fail_clearly() {
    let pool = pool(1);
    let (_, outcome) = drive_action(&pool, action_call("t", "neverSettles"), |_| {
        Ok(nimbus_runtime::OpValue::json("null".into()))
    })
    .await;
    assert!(
        matches!(outcome.result, Err(FunctionError::NeverSettled("action"))),
        "{:?}",
        outcome.result
    );
    // The CPU limit counts every step.
    let (_, outcome) = drive_action(&pool, action_call("t", "spinAfterWait"), |_| {
        Ok(nimbus_runtime::OpValue::json("null".into()))
    })
    .await;
    assert!(
        matches!(outcome.result, Err(FunctionError::Timeout { .. })),
        "{:?}",
        outcome.result
    );
    // The operation past the limit is refused at once, so the race ends in the first step.
    let (_, outcome) = drive_action(&pool, action_call("t", "tooManyOps"), |_| {
        Ok(nimbus_runtime::OpValue::json("null".into()))
    })
    .await;
    let message = outcome.result.unwrap_or_else(|e| panic!("{e}"));
    assert!(message.contains("operations in flight"), "{message}");
    // Only so many actions live at once; a dropped handle gives its place back.
    let mut handles = Vec::new();
    for _ in 0..4 {
        handles.push(
            pool.start_action(action_call("t", "waitForever"))
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    let refused = pool.start_action(action_call("t", "waitForever")).await;
    assert!(
        matches!(refused, Err(nimbus_runtime::PoolError::TooManyActions(4))),
        "{:?}",
        refused.err()
    );
    handles.pop();
    assert!(pool
        .start_action(action_call("t", "waitForever"))
        .await
        .is_ok());
}

#[tokio::test]
async fn web_globals_work_and_fetch_is_for_actions_only() {
    let pool = pool(1);
    let (_, outcome) = drive_action(&pool, action_call("t", "web"), |_| {
        Ok(nimbus_runtime::OpValue::json("null".into()))
    })
    .await;
    let result: serde_json::Value =
        serde_json::from_str(&outcome.result.unwrap_or_else(|e| panic!("{e}"))).unwrap_or_default();
    // Changing searchParams re-serializes the whole query as a form, as browsers do.
    assert_eq!(result["href"], "http://example.com/b?x=1+2&y=%C3%A9%26#h");
    assert_eq!(result["host"], "example.com");
    assert_eq!(result["a"], "1, 2");
    assert_eq!(
        result["digest"],
        serde_json::json!([0xba, 0x78, 0x16, 0xbf])
    );
    assert_eq!(result["status"], 201);
    assert_eq!(result["json"], serde_json::json!({"ok": 1}));
    assert_eq!(result["used"], true);
    assert_eq!(result["method"], "POST");
    assert_eq!(result["type"], "text/plain;charset=UTF-8");
    assert_eq!(result["body"], "hi");
    assert_eq!(result["uuid"], 36);
    let (_, outcome) = pool
        .invoke(
            call("t", "noFetchInQueries", FunctionKind::Query, "[{}]", 1),
            FakeHost::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let message = outcome.result.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        message.contains("Can't use fetch() in queries and mutations"),
        "{message}"
    );
}

/// Review of this change: a caller that gave up after an action's first step had answered
/// but before it read the answer (its future dropped, say by a timeout) left the action
/// parked on its worker for ever: the handle was marked finished until it learned the
/// action's worker from that answer, so dropping it sent no drop.
#[tokio::test]
async fn an_action_whose_caller_gave_up_is_not_left_parked() {
    let pool = pool(1);
    let mut start = Box::pin(pool.start_action(action_call("t", "busyThenWait")));
    // The first poll queues the step and waits for its answer.
    let pending = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(std::future::Future::poll(start.as_mut(), cx).is_pending())
    })
    .await;
    assert!(pending, "the first step takes 200 ms");
    // The worker finishes the step and answers while nobody polls; then the caller gives up.
    std::thread::sleep(Duration::from_millis(600));
    drop(start);
    // The worker reads the drop before it runs this call.
    let (_, outcome) = pool
        .invoke(echo("t", 1), FakeHost::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(outcome.result.is_ok());
    assert_eq!(pool.parked_actions().await.unwrap_or(usize::MAX), 0);
    // A finished action and a dropped waiting one leave nothing either.
    let (mut handle, step) = pool
        .start_action(action_call("t", "waitForever"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let nimbus_runtime::ActionStep::Pending(ops) = step else {
        panic!("the action should wait");
    };
    assert_eq!(pool.parked_actions().await.unwrap_or(usize::MAX), 1);
    let done = handle
        .resume(vec![(
            ops[0].id,
            Ok(nimbus_runtime::OpValue::json("1".into())),
        )])
        .await;
    assert!(matches!(done, Ok(nimbus_runtime::ActionStep::Done(_))));
    assert_eq!(pool.parked_actions().await.unwrap_or(usize::MAX), 0);
    let (handle, _) = pool
        .start_action(action_call("t", "waitForever"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    drop(handle);
    assert_eq!(pool.parked_actions().await.unwrap_or(usize::MAX), 0);
}

/// One call of `tenant`, whose code is its own (a code identity per tenant, as pushes get).
async fn one_call(pool: &JsPool, tenant: &str) {
    let mut invocation = echo(tenant, 1);
    invocation.modules = modules(u128::from(tenant.as_bytes()[0]));
    pool.invoke(invocation, FakeHost::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .1
        .result
        .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn the_runtime_cache_is_bounded_in_bytes_as_well_as_in_runtimes() {
    // One runtime's heap, as the cache measures it.
    let roomy = pool_with_cache(1, 1, Duration::from_millis(300), (16, 256 << 20));
    one_call(&roomy, "a").await;
    let one = roomy.cache_stats();
    assert_eq!(one.runtimes, 1);
    assert!(
        one.bytes > 10_000,
        "a runtime with code has a heap ({} bytes)",
        one.bytes
    );

    // Room for two and a half runtimes by bytes, sixteen by count: bytes decide.
    let bound = one.bytes * 5 / 2;
    let by_bytes = pool_with_cache(1, 1, Duration::from_millis(300), (16, bound));
    for tenant in ["a", "b", "c", "d"] {
        one_call(&by_bytes, tenant).await;
    }
    let stats = by_bytes.cache_stats();
    assert_eq!((stats.runtimes, stats.evictions), (2, 2), "{stats:?}");
    assert!(stats.bytes <= bound, "{stats:?} within {bound}");
    // The most recent ones stayed: "d" runs from the cache, "a" was dropped.
    assert_eq!(by_bytes.cached_isolates("d").await.ok(), Some(1));
    assert_eq!(by_bytes.cached_isolates("a").await.ok(), Some(0));

    // Three by count, plenty of bytes: the count decides.
    let by_count = pool_with_cache(1, 1, Duration::from_millis(300), (3, 256 << 20));
    for tenant in ["a", "b", "c", "d", "e"] {
        one_call(&by_count, tenant).await;
    }
    let stats = by_count.cache_stats();
    assert_eq!((stats.runtimes, stats.evictions), (3, 2), "{stats:?}");

    // A runtime larger than the whole bound still runs, cached alone.
    let tiny = pool_with_cache(1, 1, Duration::from_millis(300), (16, 1));
    for tenant in ["a", "b"] {
        one_call(&tiny, tenant).await;
    }
    assert_eq!(tiny.cache_stats().runtimes, 1);
}

/// V8 keeps a push's compiled code: push-time analysis leaves a cache of every module it
/// loaded (their top level), and the push's first runtime makes them again after its first
/// call (with what that call compiled), once: the caller saves them then, and a push whose
/// caches come back from storage is not remade. A push with no caches gets them the same
/// way. Caches of other sources are refused by V8 and the sources compiled. QuickJS keeps
/// none.
#[tokio::test]
async fn code_caches_are_made_once_and_serve_the_runtimes_after() {
    let v8 = ENGINE == nimbus_runtime::Engine::V8;
    let pushed = versioned(31, "cached");
    analyze_modules(ENGINE, &pushed, &RuntimeLimits::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pushed.code_cache.contains("app.js"), v8, "{:?}", pushed.code_cache);
    assert!(!pushed.code_cache.take_unsaved(), "push-time caches go with the deployment");
    let at_push = pushed.code_cache.bytes();
    let first = pool(1);
    assert_eq!(version(&first, "cc", pushed.clone()).await, r#""cached""#);
    if v8 {
        // Made after the reply.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !pushed.code_cache.made_after_a_call() {
            assert!(std::time::Instant::now() < deadline, "no code cache after a call");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(pushed.code_cache.take_unsaved(), "to be saved");
        assert!(
            pushed.code_cache.bytes() > at_push,
            "the call's functions are in: {} against {at_push} bytes",
            pushed.code_cache.bytes()
        );
    } else {
        assert!(!pushed.code_cache.made_after_a_call());
        assert!(!pushed.code_cache.take_unsaved());
    }
    // Later calls, and another pool's runtimes, leave them be.
    assert_eq!(version(&first, "cc", pushed.clone()).await, r#""cached""#);
    let other = pool(1);
    assert_eq!(version(&other, "cc", pushed.clone()).await, r#""cached""#);
    assert_eq!(version(&other, "cc", pushed.clone()).await, r#""cached""#);
    assert!(!pushed.code_cache.take_unsaved(), "made once");

    // Caches given back from storage (the same source, as after a restart) are not remade.
    let restored = versioned(34, "cached");
    restored.code_cache.restore(
        pushed
            .code_cache
            .entries()
            .into_iter()
            .map(|(name, bytes)| (name, bytes.to_vec())),
    );
    assert_eq!(version(&other, "cc3", restored.clone()).await, r#""cached""#);
    assert_eq!(version(&other, "cc3", restored.clone()).await, r#""cached""#);
    assert!(!restored.code_cache.take_unsaved());

    // No caches at push time: the first runtime makes them after its first call.
    let fresh = versioned(33, "fresh");
    assert!(fresh.code_cache.is_empty());
    assert_eq!(version(&first, "cc2", fresh.clone()).await, r#""fresh""#);
    if v8 {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !fresh.code_cache.made_after_a_call() {
            assert!(std::time::Instant::now() < deadline, "no code cache after a call");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(fresh.code_cache.contains("app.js"));
    } else {
        assert!(fresh.code_cache.is_empty());
    }

    // Another pool: new runtimes, from the caches.
    let second = pool(1);
    assert_eq!(version(&second, "cc", pushed.clone()).await, r#""cached""#);
    assert_eq!(version(&second, "cc2", fresh.clone()).await, r#""fresh""#);
    // Other sources under the same names, given those caches: the new sources run.
    let changed = ModuleSet {
        code_cache: pushed.code_cache.clone(),
        ..versioned(32, "changed")
    };
    assert_eq!(version(&second, "cc", changed).await, r#""changed""#);
}

/// A worker keeps a blank runtime ready, and a tenant's first call starts from it: it gets
/// that tenant's own modules and `process.env`, and the next tenant a new blank one (no
/// global a tenant set is seen by another).
#[tokio::test]
async fn runtimes_made_ahead_of_need_carry_nothing_between_tenants() {
    let pool = pool(1);
    for (tenant, code) in [("spare-a", 41), ("spare-b", 42), ("spare-c", 43)] {
        let mut modules = versioned(code, tenant);
        let mut env = BTreeMap::new();
        env.insert("GREETING".to_string(), format!("hello {tenant}"));
        modules.env = Arc::new(env);
        assert_eq!(
            version(&pool, tenant, modules.clone()).await,
            format!("\"{tenant}\"")
        );
        let mut leak = call(tenant, "leak", FunctionKind::Query, "[{}]", 1);
        leak.modules = modules;
        let (_, outcome) = pool
            .invoke(leak, FakeHost::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // `leak` reports what an earlier tenant might have left, then leaves its own mark.
        assert_eq!(
            outcome.result.unwrap_or_else(|e| panic!("{e}")),
            format!("\"none, hello {tenant}\"")
        );
    }
}

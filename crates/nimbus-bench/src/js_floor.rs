//! The JavaScript floor: what one `examples/pos` function call costs in the JavaScript engine
//! alone, on each engine this build has (V8 and QuickJS side by side, from one run).
//!
//! The modules are the official CLI's bundle (from its push request), run by Nimbus's own
//! runtime (`nimbus-runtime::JsPool`, one worker) against a host that answers every syscall
//! at once with canned documents of the right shape: no HTTP, no engine, no storage. The
//! time per call is therefore the least a call can cost on this machine, and one core's
//! calls/s the most it can serve, whatever the rest of the server does. Beside each Convex
//! function runs a hand-written module making the same syscalls without the Convex library,
//! to show how much of the floor is the library's per-call work.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use nimbus_runtime::{
    Engine, FunctionKind, Invocation, JsPool, ModuleSet, PoolConfig, RuntimeLimits, SyscallError,
    SyscallHost,
};
use serde_json::{json, Value as Json};

use crate::stats;

const SHOP: &str = "k1730cz1fq2zj16zpm5e7n4v8s7ay9rb";
const PRODUCT: &str = "jd7a3kx0s8r2f1m9y4q6t5v0bn7h2c3e";
const ORDER: &str = "m572a1bq5cz9v6q2d0qn2y1ka97ay9rc";
/// Documents a `listOpen` query stream yields (the benchmark's `limit`).
const LIST_ROWS: usize = 10;

/// Syscalls made without the Convex library: the same database work as `orders:listOpen`
/// and `orders:create`, written directly against the `Convex` global.
const DIRECT: &str = r#"
const call = async (op, args) => JSON.parse(await Convex.asyncSyscall(op, JSON.stringify(args)));
function register(kind, handler) {
  const f = { [kind]: true, isPublic: true };
  f.invokeQuery = f.invokeMutation = async (argsJson) => JSON.stringify(await handler(JSON.parse(argsJson)[0]));
  return f;
}
export const listOpen = register("isQuery", async (args) => {
  const { queryId } = await call("1.0/queryStream", { query: { source: { type: "IndexRange", indexName: "orders.by_shop_status_created", range: [], order: "desc" }, operators: [{ limit: args.limit }] }, version: "1" });
  const out = [];
  for (;;) {
    const { value, done } = await call("1.0/queryStreamNext", { queryId });
    if (done) break;
    out.push(value);
  }
  return out;
});
export const create = register("isMutation", async (args) => {
  const line = args.items[0];
  const product = await call("1.0/get", { id: line.productId, table: "products" });
  const { _id } = await call("1.0/insert", { table: "orders", value: { shopId: args.shopId, status: "open", createdAt: Date.now(), totalCents: product.priceCents } });
  await call("1.0/shallowMerge", { id: product._id, value: { stock: product.stock - line.qty } });
  await call("1.0/insert", { table: "orderItems", value: { orderId: _id, productId: product._id, qty: line.qty, priceCents: product.priceCents } });
  return { orderId: _id, totalCents: product.priceCents, createdAt: Date.now() };
});
// An action waiting on one operation (as `ctx.runQuery` does), in a module of its own and
// in one that loads the Convex library with the app's code (as an app's actions module
// does): each action builds an isolate and loads its module graph.
export const ping = { isAction: true, isPublic: true,
  invokeAction: async (_requestId, argsJson) => JSON.stringify(await call("1.0/actions/query", JSON.parse(argsJson)[0])) };
export const open = register("isMutation", async (args) => {
  const { _id } = await call("1.0/insert", { table: "orders", value: { shopId: args.shopId, status: "open", createdAt: Date.now(), totalCents: 0 } });
  return _id;
});
"#;

/// Answers every syscall at once, with documents shaped like the real host's answers.
struct InstantHost {
    rows_left: usize,
}

fn order_doc(n: usize) -> String {
    format!(
        r#"{{"_creationTime":1764000000000.5,"_id":"{ORDER}","createdAt":{},"shopId":"{SHOP}","status":"open","totalCents":1200}}"#,
        1_764_000_000_000u64 + n as u64
    )
}

fn product_doc() -> String {
    format!(
        r#"{{"_creationTime":1764000000000.5,"_id":"{PRODUCT}","name":"Product 1","priceCents":250,"shopId":"{SHOP}","sku":"SKU-1","stock":1000000}}"#
    )
}

impl SyscallHost for InstantHost {
    fn syscall(&mut self, op: &str, args: &str) -> Result<String, SyscallError> {
        self.async_syscall(op, args)
    }

    fn async_syscall(&mut self, op: &str, _args: &str) -> Result<String, SyscallError> {
        Ok(match op {
            "1.0/queryStream" => {
                self.rows_left = LIST_ROWS;
                r#"{"queryId":1}"#.to_string()
            }
            "1.0/queryStreamNext" if self.rows_left == 0 => r#"{"value":null,"done":true}"#.into(),
            "1.0/queryStreamNext" => {
                self.rows_left -= 1;
                format!(r#"{{"value":{},"done":false}}"#, order_doc(self.rows_left))
            }
            "1.0/queryCleanup" => "true".into(),
            "1.0/get" | "1.0/shallowMerge" => product_doc(),
            "1.0/insert" => format!(r#"{{"_id":"{ORDER}"}}"#),
            other => {
                return Err(SyscallError {
                    message: format!("js-floor: unexpected syscall {other}"),
                    data_json: None,
                })
            }
        })
    }
}

/// The function modules of a push request written by `npx convex deploy
/// --write-push-request`.
fn modules_of_push_request(path: &Path) -> Result<BTreeMap<String, String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let request: Json = serde_json::from_str(&text).context("the push request is not JSON")?;
    let modules = request
        .pointer("/appDefinition/changedModules")
        .and_then(Json::as_array)
        .ok_or_else(|| anyhow!("{}: no appDefinition.changedModules", path.display()))?;
    let mut out = BTreeMap::new();
    for module in modules {
        let (Some(path), Some(source)) = (
            module.get("path").and_then(Json::as_str),
            module.get("source").and_then(Json::as_str),
        ) else {
            bail!("a module without path or source");
        };
        out.insert(path.to_string(), source.to_string());
    }
    if !out.contains_key("orders.js") {
        bail!("{}: no orders.js (is this examples/pos?)", path.display());
    }
    Ok(out)
}

struct Case {
    label: &'static str,
    module: &'static str,
    export: &'static str,
    kind: FunctionKind,
    args: String,
    /// Each call goes to a tenant the pool has not seen, so it pays for a new runtime and
    /// the loading of its modules before the call itself.
    first_call: FirstCall,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FirstCall {
    /// A warm runtime (the pool's, after the warm-up calls).
    No,
    /// A new runtime compiling the modules from source (no code cache).
    FromSource,
    /// A new runtime compiling them from the code caches push-time analysis made (after
    /// loading the modules, before any call: what a deployment stores).
    FromPushCache,
    /// A new runtime compiling them from the code cache its push's first runtime made
    /// after its first call (it also holds the functions that call compiled).
    FromCodeCache,
}

/// Runs `calls` calls of each function (after `calls / 10` warm-up calls) and returns the
/// JSON result (`kind: "js-floor"`). `only` keeps the functions whose label or name contains
/// it, `engine` one engine.
pub(crate) async fn run(
    push_request: &Path,
    calls: usize,
    only: Option<&str>,
    engine: Option<Engine>,
) -> Result<Json> {
    let mut modules = modules_of_push_request(push_request)?;
    modules.insert("direct.js".to_string(), DIRECT.to_string());
    modules.insert(
        "withLibrary.js".to_string(),
        "import \"./orders.js\";\nexport { ping } from \"./direct.js\";\n".to_string(),
    );
    let modules = ModuleSet::new(
        nimbus_runtime::CodeId(1),
        Arc::new(modules),
        Arc::new(BTreeMap::new()),
    );
    let list_args = json!([{"shopId": SHOP, "limit": LIST_ROWS as f64}]).to_string();
    let create_args =
        json!([{"shopId": SHOP, "items": [{"productId": PRODUCT, "qty": 1.0}]}]).to_string();
    let open_args = json!([{ "shopId": SHOP }]).to_string();
    let cases = [
        Case {
            label: "orders:listOpen (Convex library, 10 rows)",
            module: "orders.js",
            export: "listOpen",
            kind: FunctionKind::Query,
            args: list_args.clone(),
            first_call: FirstCall::No,
        },
        Case {
            label: "the same syscalls without the Convex library",
            module: "direct.js",
            export: "listOpen",
            kind: FunctionKind::Query,
            args: list_args.clone(),
            first_call: FirstCall::No,
        },
        Case {
            label: "orders:create (Convex library: get, insert, patch, insert)",
            module: "orders.js",
            export: "create",
            kind: FunctionKind::Mutation,
            args: create_args.clone(),
            first_call: FirstCall::No,
        },
        Case {
            label: "the same syscalls without the Convex library",
            module: "direct.js",
            export: "create",
            kind: FunctionKind::Mutation,
            args: create_args,
            first_call: FirstCall::No,
        },
        Case {
            label: "orders:open (Convex library: one insert)",
            module: "orders.js",
            export: "open",
            kind: FunctionKind::Mutation,
            args: open_args.clone(),
            first_call: FirstCall::No,
        },
        Case {
            label: "the same syscall without the Convex library",
            module: "direct.js",
            export: "open",
            kind: FunctionKind::Mutation,
            args: open_args,
            first_call: FirstCall::No,
        },
        Case {
            label: "an action awaiting one operation (own isolate, no library)",
            module: "direct.js",
            export: "ping",
            kind: FunctionKind::Action,
            args: "[{}]".to_string(),
            first_call: FirstCall::No,
        },
        Case {
            label: "the same action in a module that loads the Convex library and orders.js",
            module: "withLibrary.js",
            export: "ping",
            kind: FunctionKind::Action,
            args: "[{}]".to_string(),
            first_call: FirstCall::No,
        },
        Case {
            label: "a tenant's first call: a new runtime, the Convex library and orders.js compiled from source and loaded, then orders:listOpen",
            module: "orders.js",
            export: "listOpen",
            kind: FunctionKind::Query,
            args: list_args.clone(),
            first_call: FirstCall::FromSource,
        },
        Case {
            label: "the same first call, given the code caches push-time analysis made and the deployment stores (V8 compiles from them; QuickJS has none)",
            module: "orders.js",
            export: "listOpen",
            kind: FunctionKind::Query,
            args: list_args.clone(),
            first_call: FirstCall::FromPushCache,
        },
        Case {
            label: "the same first call, given the code caches the push's first runtime made after its first call (V8 compiles from them; QuickJS has none)",
            module: "orders.js",
            export: "listOpen",
            kind: FunctionKind::Query,
            args: list_args.clone(),
            first_call: FirstCall::FromCodeCache,
        },
    ];
    let cases: Vec<Case> = cases
        .into_iter()
        .filter(|case| {
            only.is_none_or(|text| {
                case.label.contains(text)
                    || format!("{}:{}", case.module.trim_end_matches(".js"), case.export)
                        .contains(text)
            })
        })
        .collect();
    if cases.is_empty() {
        bail!("no function matches {:?}", only.unwrap_or_default());
    }
    if let Some(engine) = engine.filter(|e| !e.is_available()) {
        bail!("this build has no {engine} engine");
    }
    let engines: Vec<Engine> = [Engine::V8, Engine::QuickJs]
        .into_iter()
        .filter(|e| e.is_available() && engine.is_none_or(|only| only == *e))
        .collect();
    let mut results = Vec::new();
    for engine in engines {
        let pool = JsPool::new(PoolConfig {
            workers: 1,
            workers_per_tenant: 1,
            engine,
            ..PoolConfig::default()
        })?;
        let fresh_tenants = std::cell::Cell::new(0u64);
        // The same modules under a code id of their own, with the caches push-time
        // analysis makes (a deployment's); calls leave them as they are, since every
        // module then has a cache.
        let pushed = ModuleSet::new(
            nimbus_runtime::CodeId(u128::from(u64::MAX)),
            modules.modules.clone(),
            modules.env.clone(),
        );
        if cases
            .iter()
            .any(|c| c.first_call == FirstCall::FromPushCache)
        {
            nimbus_runtime::analyze_modules(engine, &pushed, &RuntimeLimits::default())
                .map_err(|e| anyhow!("push-time analysis failed: {e}"))?;
            if !pushed.code_cache.is_empty() {
                eprintln!(
                    "js-floor: push-time code caches: {} modules, {} KiB",
                    pushed.code_cache.len(),
                    pushed.code_cache.bytes() >> 10
                );
            }
        }
        for case in &cases {
            let invocation = || Invocation {
                tenant: if case.first_call != FirstCall::No {
                    fresh_tenants.set(fresh_tenants.get() + 1);
                    Arc::from(format!("js-floor-{}", fresh_tenants.get()))
                } else {
                    Arc::from("js-floor")
                },
                // The pool's runtimes are keyed by code: a tenant of its own gets code of
                // its own (the same modules under another id, as after a push), with no
                // code cache or with the one its first runtime made.
                modules: match case.first_call {
                    FirstCall::No => modules.clone(),
                    FirstCall::FromSource => ModuleSet::new(
                        nimbus_runtime::CodeId(1 + u128::from(fresh_tenants.get())),
                        modules.modules.clone(),
                        modules.env.clone(),
                    ),
                    // A copy of the push-time caches each time: the first runtime given
                    // them makes them again after its call (and would make them
                    // after-call caches for every runtime after it).
                    FirstCall::FromPushCache => ModuleSet {
                        code_id: nimbus_runtime::CodeId(1 + u128::from(fresh_tenants.get())),
                        code_cache: Arc::new(pushed.code_cache.copy_for_new_code()),
                        ..pushed.clone()
                    },
                    FirstCall::FromCodeCache => ModuleSet {
                        code_id: nimbus_runtime::CodeId(1 + u128::from(fresh_tenants.get())),
                        ..modules.clone()
                    },
                },
                module_path: case.module.to_string(),
                export_name: case.export.to_string(),
                kind: case.kind,
                args_json: case.args.clone(),
                rng_seed: 7,
                now_ms: 1_764_000_000_000.0,
                request_id: String::new(),
                system_env: Default::default(),
                http: None,
                limits: None,
            };
            // One call; its time in the engine (for an action, the wall time of building its
            // isolate and both its steps), or why it failed.
            let call = || async {
                if case.kind == FunctionKind::Action {
                    let started = Instant::now();
                    let (mut handle, step) = pool.start_action(invocation()).await?;
                    let nimbus_runtime::ActionStep::Pending(ops) = step else {
                        bail!("{}: the action did not wait for its operation", case.label);
                    };
                    let answers = ops
                        .iter()
                        .map(|op| (op.id, Ok(nimbus_runtime::OpValue::json("null".into()))))
                        .collect();
                    match handle.resume(answers).await? {
                        nimbus_runtime::ActionStep::Done(outcome) => outcome
                            .result
                            .map_err(|e| anyhow!("{} failed: {e}", case.label))?,
                        nimbus_runtime::ActionStep::Pending(_) => {
                            bail!("{}: the action kept waiting", case.label)
                        }
                    };
                    return anyhow::Ok(started.elapsed());
                }
                if case.first_call != FirstCall::No {
                    // The worker's work after the previous reply (its next spare runtime,
                    // code caches) is not this call's.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let started = Instant::now();
                let (_, outcome) = pool
                    .invoke(invocation(), InstantHost { rows_left: 0 })
                    .await?;
                outcome
                    .result
                    .map_err(|e| anyhow!("{} failed: {e}", case.label))?;
                // A first call's runtime is made before the call's clock starts: its time
                // is the wall time of the whole invocation.
                anyhow::Ok(if case.first_call != FirstCall::No {
                    started.elapsed()
                } else {
                    outcome.cpu_time
                })
            };
            for _ in 0..(calls / 10).max(1) {
                call().await?;
            }
            let mut histogram = stats::new_histogram()?;
            let mut busy = Duration::ZERO;
            let started = Instant::now();
            for _ in 0..calls {
                let cpu_time = call().await?;
                stats::record(&mut histogram, cpu_time)?;
                busy += cpu_time;
            }
            let elapsed = started.elapsed();
            let mut summary = stats::summary(&histogram, calls as u64, elapsed);
            summary["label"] = json!(case.label);
            summary["engine"] = json!(engine.name());
            summary["function"] = json!(format!(
                "{}:{}",
                case.module.trim_end_matches(".js"),
                case.export
            ));
            summary["mean_us"] = json!(busy.as_secs_f64() * 1e6 / calls as f64);
            summary["calls_per_core_sec"] = json!(calls as f64 / busy.as_secs_f64());
            eprintln!(
                "js-floor: {}: {:.0} µs per call in {}",
                case.label,
                busy.as_secs_f64() * 1e6 / calls as f64,
                engine.describe()
            );
            results.push(summary);
        }
    }
    let code_cache_bytes = modules.code_cache.bytes();
    if code_cache_bytes > 0 {
        eprintln!(
            "js-floor: code caches made after a first call: {} modules, {} KiB",
            modules.code_cache.len(),
            code_cache_bytes >> 10
        );
    }
    Ok(json!({
        "schema_version": stats::SCHEMA_VERSION,
        "kind": "js-floor",
        "calls": calls,
        "code_cache_bytes": code_cache_bytes,
        "results": results,
    }))
}

//! One tenant's QuickJS runtime and context, and the calls made in it.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rquickjs::{Context, Function, Runtime};
use serde_json::{json, Value as Json};

use crate::action::{start_op, OpSlot};
use crate::modules::ModuleMap;
use crate::natives;
use crate::{
    AnalyzedFunction, FunctionError, FunctionKind, Invocation, ModuleAnalysis, ModuleSet, Outcome,
    RuntimeError, RuntimeLimits, SyscallError, SyscallHost, Visibility,
};

const PRELUDE: &str = include_str!("js/prelude.js");
const WEB: &str = include_str!("js/web.js");
/// Defines the globals of `web.js` as accessors that evaluate it on first use: compiling
/// it costs about 2 ms (its classes compile slowly in QuickJS), which every isolate would
/// pay, while most query and mutation code never touches `URL`, `fetch` or `Headers`.
const WEB_ON_DEMAND: &str = r#"(() => {
  const g = globalThis;
  const source = g.__nimbus_web_source;
  delete g.__nimbus_web_source;
  const names = ["DOMException", "Event", "EventTarget", "AbortSignal", "AbortController",
    "setTimeout", "setInterval", "clearTimeout", "clearInterval", "queueMicrotask", "performance",
    "URL", "URLSearchParams", "Headers", "Request", "Response", "fetch", "__nimbus_http", "crypto"];
  let loaded = false;
  const load = () => {
    if (loaded) return;
    loaded = true;
    for (const name of names) delete g[name];
    (0, eval)(source);
  };
  for (const name of names) {
    Object.defineProperty(g, name, {
      configurable: true, enumerable: false,
      get() { load(); return g[name]; },
      set(value) { load(); g[name] = value; },
    });
  }
})();"#;
/// Push-time analysis may evaluate large bundles: it gets this much CPU time.
const ANALYSIS_CPU_TIME: Duration = Duration::from_secs(10);

type HostSlot = Rc<RefCell<Option<Box<dyn SyscallHost>>>>;
/// What an entry point returns: the host back, the outcome JSON and log lines (or why
/// there are none), and the wall time taken.
type EntryResult = (
    Box<dyn SyscallHost>,
    Result<(Json, Vec<String>), FunctionError>,
    Duration,
);

/// A tenant's runtime for one push's code ([`crate::CodeId`]). Lives on one worker thread.
pub(crate) struct Isolate {
    // Field order matters: the context must drop before its runtime.
    context: Context,
    runtime: Runtime,
    host: HostSlot,
    /// Async operations started by an action (see `action.rs`).
    ops: OpSlot,
    deadline: Rc<Cell<Option<Instant>>>,
    interrupted: Rc<Cell<bool>>,
    limits: RuntimeLimits,
    /// Set after a timeout, memory exhaustion or internal failure: the runtime's state
    /// is not trusted any more and the isolate must be dropped.
    pub broken: bool,
}

fn js_error(context: &str, e: rquickjs::Error) -> String {
    format!("{context}: {e}")
}

/// A host for push-time evaluation: code that runs at import time may not touch data.
struct NoDatabase;

impl SyscallHost for NoDatabase {
    fn syscall(&mut self, op: &str, _args: &str) -> Result<String, SyscallError> {
        Err(SyscallError {
            message: format!("{op} cannot be called while modules are being loaded"),
            data_json: None,
        })
    }
    fn async_syscall(&mut self, op: &str, args: &str) -> Result<String, SyscallError> {
        self.syscall(op, args)
    }
}

impl Isolate {
    pub fn new(
        modules: &ModuleSet,
        system_env: &BTreeMap<String, String>,
        limits: &RuntimeLimits,
    ) -> Result<Isolate, String> {
        let runtime = Runtime::new().map_err(|e| js_error("creating a runtime", e))?;
        runtime.set_memory_limit(limits.memory_bytes);
        runtime.set_max_stack_size(limits.max_stack_bytes);
        let deadline: Rc<Cell<Option<Instant>>> = Rc::new(Cell::new(None));
        let interrupted = Rc::new(Cell::new(false));
        {
            let deadline = deadline.clone();
            let interrupted = interrupted.clone();
            runtime.set_interrupt_handler(Some(Box::new(move || match deadline.get() {
                Some(at) if Instant::now() >= at => {
                    interrupted.set(true);
                    true
                }
                _ => false,
            })));
        }
        runtime.set_loader(
            ModuleMap {
                modules: modules.modules.clone(),
            },
            ModuleMap {
                modules: modules.modules.clone(),
            },
        );
        let context = Context::full(&runtime).map_err(|e| js_error("creating a context", e))?;
        let host: HostSlot = Rc::new(RefCell::new(None));
        let ops: OpSlot = Rc::default();
        let mut env = modules.env.as_ref().clone();
        env.extend(system_env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let env_json = serde_json::to_string(&env).map_err(|e| e.to_string())?;
        context.with(|ctx| -> Result<(), String> {
            let slot = host.clone();
            let native = Function::new(ctx.clone(), move |op: String, args: String, is_async: bool| -> String {
                dispatch(&slot, &op, &args, is_async)
            })
            .map_err(|e| js_error("installing syscalls", e))?;
            let ops_slot = ops.clone();
            let native_op = Function::new(ctx.clone(), move |op: String, args: String, body: rquickjs::function::Opt<String>| -> String {
                start_op(&ops_slot, op, args, body.0)
            })
            .map_err(|e| js_error("installing syscalls", e))?;
            let globals = ctx.globals();
            globals.set("__nimbus_native_syscall", native).map_err(|e| js_error("installing syscalls", e))?;
            globals.set("__nimbus_native_op", native_op).map_err(|e| js_error("installing syscalls", e))?;
            let natives = [
                ("__nimbus_url_parse", Function::new(ctx.clone(), |input: String, base: String| natives::url_parse(&input, &base))),
                ("__nimbus_url_set", Function::new(ctx.clone(), |href: String, field: String, value: String| natives::url_set(&href, &field, &value))),
                ("__nimbus_digest", Function::new(ctx.clone(), |algorithm: String, data: String| natives::digest(&algorithm, &data))),
                ("__nimbus_random_hex", Function::new(ctx.clone(), |n: usize| natives::random_hex(n))),
            ];
            for (name, function) in natives {
                let function = function.map_err(|e| js_error("installing natives", e))?;
                globals.set(name, function).map_err(|e| js_error("installing natives", e))?;
            }
            globals.set("__nimbus_env", env_json).map_err(|e| js_error("installing process.env", e))?;
            ctx.eval::<(), _>(
                "globalThis.process = { env: JSON.parse(globalThis.__nimbus_env) }; delete globalThis.__nimbus_env;",
            )
            .map_err(|e| js_error("installing process.env", e))?;
            ctx.eval::<(), _>(PRELUDE).map_err(|e| js_error("installing the prelude", e))?;
            globals.set("__nimbus_web_source", WEB).map_err(|e| js_error("installing the web globals", e))?;
            ctx.eval::<(), _>(WEB_ON_DEMAND).map_err(|e| js_error("installing the web globals", e))?;
            Ok(())
        })?;
        Ok(Isolate {
            context,
            runtime,
            host,
            ops,
            deadline,
            interrupted,
            limits: limits.clone(),
            broken: false,
        })
    }

    /// Runs one JS entry point (`__nimbus_invoke`, `__nimbus_analyze`, ...) with the host
    /// installed, drains the job queue, and returns the outcome JSON and log lines.
    fn run_entry(
        &mut self,
        host: Box<dyn SyscallHost>,
        cpu_time: Duration,
        seed: u64,
        now_ms: f64,
        start: impl FnOnce(&rquickjs::Ctx<'_>) -> rquickjs::Result<()>,
    ) -> EntryResult {
        *self.host.borrow_mut() = Some(host);
        let (elapsed, failure) = self.drive(cpu_time, |ctx| {
            let begin: Function = ctx.globals().get("__nimbus_begin")?;
            begin.call::<_, ()>(((seed >> 32) as u32, seed as u32, now_ms, false))?;
            start(ctx)
        });
        let host = self.host.borrow_mut().take();
        let Some(host) = host else {
            self.broken = true;
            return (
                Box::new(NoDatabase),
                Err(FunctionError::Internal("syscall host lost".into())),
                elapsed,
            );
        };
        if self.interrupted.get() {
            self.broken = true;
            return (
                host,
                Err(FunctionError::Timeout { limit: cpu_time }),
                elapsed,
            );
        }
        (host, self.finish(failure), elapsed)
    }

    /// Runs `start` and then every job it queued (promise reactions), with the interrupt
    /// handler armed for `cpu_time`. Returns the time taken and the first exception that
    /// escaped (if any). [`Isolate::interrupted`] tells whether the deadline struck.
    pub(crate) fn drive(
        &mut self,
        cpu_time: Duration,
        start: impl FnOnce(&rquickjs::Ctx<'_>) -> rquickjs::Result<()>,
    ) -> (Duration, Option<String>) {
        let started = Instant::now();
        self.interrupted.set(false);
        self.deadline.set(Some(started + cpu_time));
        let started_ok = self.context.with(|ctx| start(&ctx));
        let mut failure = started_ok.err().map(|e| e.to_string());
        if failure.is_none() {
            loop {
                match self.runtime.execute_pending_job() {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(_) if self.interrupted.get() => break,
                    Err(exception) => {
                        // An exception escaped a job: report it, keep draining.
                        let message = exception
                            .0
                            .with(|ctx| ctx.catch().as_exception().map(|e| e.to_string()));
                        failure.get_or_insert_with(|| {
                            message.unwrap_or_else(|| "an exception escaped a job".into())
                        });
                    }
                }
            }
        }
        self.deadline.set(None);
        (started.elapsed(), failure)
    }

    pub(crate) fn ops(&self) -> &OpSlot {
        &self.ops
    }

    pub(crate) fn with_context<R>(&self, f: impl FnOnce(rquickjs::Ctx<'_>) -> R) -> R {
        self.context.with(f)
    }

    /// Whether the last [`Isolate::drive`] was stopped by its deadline.
    pub(crate) fn interrupted(&self) -> bool {
        self.interrupted.get()
    }

    /// Reads the entry point's outcome and log lines (`__nimbus_finish`).
    pub(crate) fn finish(
        &mut self,
        failure: Option<String>,
    ) -> Result<(Json, Vec<String>), FunctionError> {
        let finished = self.context.with(|ctx| -> rquickjs::Result<String> {
            let finish: Function = ctx.globals().get("__nimbus_finish")?;
            finish.call::<_, String>(())
        });
        let text = match finished {
            Ok(text) => text,
            Err(e) => {
                self.broken = true;
                return Err(
                    if self.near_memory_limit() || e.to_string().contains("out of memory") {
                        FunctionError::OutOfMemory {
                            limit_bytes: self.limits.memory_bytes,
                        }
                    } else {
                        FunctionError::Internal(failure.unwrap_or_else(|| e.to_string()))
                    },
                );
            }
        };
        match serde_json::from_str::<Json>(&text) {
            Ok(json) => {
                let logs = json
                    .get("logs")
                    .and_then(Json::as_array)
                    .map(|lines| {
                        lines
                            .iter()
                            .filter_map(|l| l.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                let outcome = json.get("outcome").cloned().unwrap_or(Json::Null);
                Ok((outcome, logs))
            }
            Err(e) => {
                self.broken = true;
                Err(FunctionError::Internal(format!("unreadable outcome: {e}")))
            }
        }
    }

    /// Gives the runtime a new heap limit (a tenant's runtime is cached on a worker across
    /// calls, and the tenant's limit may have changed since it was made).
    fn set_memory_limit(&mut self, bytes: usize) {
        if bytes != self.limits.memory_bytes {
            self.runtime.set_memory_limit(bytes);
            self.limits.memory_bytes = bytes;
        }
    }

    /// Bytes the runtime's allocator holds now (its heap, modules and objects).
    pub fn heap_bytes(&self) -> usize {
        usize::try_from(self.runtime.memory_usage().malloc_size).unwrap_or(0)
    }

    fn near_memory_limit(&self) -> bool {
        let usage = self.runtime.memory_usage();
        usage.malloc_size as usize >= self.limits.memory_bytes.saturating_mul(9) / 10
    }

    /// Runs one function call.
    pub fn invoke(
        &mut self,
        inv: &Invocation,
        host: Box<dyn SyscallHost>,
    ) -> (Box<dyn SyscallHost>, Outcome) {
        let kind = inv.kind.js_name();
        let cpu_time = match inv.limits {
            Some(limits) => {
                self.set_memory_limit(limits.memory_bytes);
                limits.cpu_time
            }
            None => self.limits.cpu_time,
        };
        let (host, result, elapsed) =
            self.run_entry(host, cpu_time, inv.rng_seed, inv.now_ms, |ctx| {
                let invoke: Function = ctx.globals().get("__nimbus_invoke")?;
                invoke.call::<_, ()>((
                    inv.module_path.as_str(),
                    inv.export_name.as_str(),
                    kind,
                    inv.args_json.as_str(),
                    inv.request_id.as_str(),
                ))
            });
        let (result, log_lines) = match result {
            Ok((outcome, logs)) => (self.interpret(inv, &outcome), logs),
            Err(error) => (Err(error), Vec::new()),
        };
        (
            host,
            Outcome {
                result,
                log_lines,
                cpu_time: elapsed,
            },
        )
    }

    pub(crate) fn interpret(
        &mut self,
        inv: &Invocation,
        outcome: &Json,
    ) -> Result<String, FunctionError> {
        let text = |key: &str| outcome_text(outcome, key);
        match outcome.get("kind").and_then(Json::as_str) {
            Some("ok") => Ok(text("value")),
            Some("convexError") => Err(FunctionError::ConvexError {
                message: text("message"),
                data_json: text("data"),
            }),
            Some("uncaught") => {
                let message = text("message");
                // When QuickJS cannot even allocate the out-of-memory error it throws `null`;
                // a function that itself throws `null` is reported the same way.
                if message.contains("out of memory") || message == "Uncaught null" {
                    self.broken = true;
                    Err(FunctionError::OutOfMemory {
                        limit_bytes: self.limits.memory_bytes,
                    })
                } else {
                    Err(FunctionError::Uncaught { message })
                }
            }
            Some("notFound") => Err(FunctionError::ExportNotFound {
                module: inv.module_path.clone(),
                export: inv.export_name.clone(),
            }),
            Some("wrongKind") => Err(FunctionError::WrongKind {
                name: format!(
                    "{}:{}",
                    inv.module_path.trim_end_matches(".js"),
                    inv.export_name
                ),
                actual: FunctionKind::from_js_name(&text("actual")).unwrap_or(inv.kind),
                expected: inv.kind,
            }),
            _ => Err(FunctionError::NeverSettled(inv.kind.js_name())),
        }
    }
}

fn dispatch(slot: &HostSlot, op: &str, args: &str, is_async: bool) -> String {
    let mut guard = slot.borrow_mut();
    let Some(host) = guard.as_mut() else {
        return format!(
            "e{}",
            json!({"message": format!("{op}: no database access here")})
        );
    };
    let answer = if is_async {
        host.async_syscall(op, args)
    } else {
        host.syscall(op, args)
    };
    match answer {
        Ok(result) => format!("o{result}"),
        Err(SyscallError { message, data_json }) => {
            let data = data_json.and_then(|d| serde_json::from_str::<Json>(&d).ok());
            let mut body = json!({ "message": message });
            if let Some(data) = data {
                body["data"] = data;
            }
            format!("e{body}")
        }
    }
}

/// A string field of an outcome object (empty when absent).
fn outcome_text(outcome: &Json, key: &str) -> String {
    outcome
        .get(key)
        .and_then(Json::as_str)
        .unwrap_or_default()
        .to_string()
}

impl Isolate {
    /// Runs a push-time entry point (no database, a generous CPU budget) and returns its
    /// outcome object.
    fn run_at_push(
        &mut self,
        start: impl FnOnce(&rquickjs::Ctx<'_>) -> rquickjs::Result<()>,
    ) -> Result<Json, RuntimeError> {
        let (_, result, _) = self.run_entry(Box::new(NoDatabase), ANALYSIS_CPU_TIME, 1, 0.0, start);
        result.map(|(outcome, _)| outcome).map_err(analysis_failure)
    }
}

fn analysis_failure(error: FunctionError) -> RuntimeError {
    RuntimeError::Analyze(match error {
        FunctionError::Timeout { .. } => {
            "loading the modules took longer than 10 s of CPU time".into()
        }
        other => other.to_string(),
    })
}

/// Loads every function module of a push and lists its functions.
pub fn analyze_modules(
    modules: &ModuleSet,
    limits: &RuntimeLimits,
) -> Result<ModuleAnalysis, RuntimeError> {
    let mut isolate =
        Isolate::new(modules, &BTreeMap::new(), limits).map_err(RuntimeError::Analyze)?;
    let paths: Vec<&String> = modules
        .modules
        .keys()
        .filter(|p| {
            !p.starts_with("_deps/") && p.as_str() != "schema.js" && p.as_str() != "crons.js"
        })
        .collect();
    let paths_json =
        serde_json::to_string(&paths).map_err(|e| RuntimeError::Analyze(e.to_string()))?;
    let present = |path: &'static str| {
        if modules.modules.contains_key(path) {
            path
        } else {
            ""
        }
    };
    let (crons, auth) = (present("crons.js"), present("auth.config.js"));
    let outcome = isolate.run_at_push(|ctx| {
        let analyze: Function = ctx.globals().get("__nimbus_analyze")?;
        analyze.call::<_, ()>((paths_json.as_str(), crons, auth))
    })?;
    let text = |key: &str| outcome_text(&outcome, key);
    match outcome.get("kind").and_then(Json::as_str) {
        Some("ok") => {}
        Some("moduleError") => {
            return Err(RuntimeError::Analyze(format!(
                "Failed to load {}: {}",
                text("module"),
                text("message")
            )))
        }
        Some(_) => {
            return Err(RuntimeError::Analyze(format!(
                "Failed to analyze the modules: {}",
                text("message")
            )))
        }
        None => {
            return Err(RuntimeError::Analyze(
                "module loading never finished (top-level await?)".into(),
            ))
        }
    }
    let value: Json =
        serde_json::from_str(&text("value")).map_err(|e| RuntimeError::Analyze(e.to_string()))?;
    let mut functions = Vec::new();
    for f in value
        .get("functions")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
    {
        let field = |k: &str| f.get(k).and_then(Json::as_str).map(str::to_string);
        let (Some(module_path), Some(name), Some(kind)) =
            (field("module"), field("name"), field("kind"))
        else {
            continue;
        };
        let Some(kind) = FunctionKind::from_js_name(&kind) else {
            continue;
        };
        functions.push(AnalyzedFunction {
            module_path,
            name,
            kind,
            visibility: if field("visibility").as_deref() == Some("internal") {
                Visibility::Internal
            } else {
                Visibility::Public
            },
            args_json: field("args").unwrap_or_else(|| "{\"type\":\"any\"}".into()),
            returns_json: field("returns"),
        });
    }
    let crons_json = value
        .get("crons")
        .and_then(Json::as_str)
        .map(str::to_string);
    let auth_json = value.get("auth").and_then(Json::as_str).map(str::to_string);
    Ok(ModuleAnalysis {
        functions,
        crons_json,
        auth_json,
    })
}

/// Evaluates `schema.js` and returns its `default.export()` JSON text.
pub fn evaluate_schema(
    schema_source: &str,
    limits: &RuntimeLimits,
) -> Result<String, RuntimeError> {
    let mut map = BTreeMap::new();
    map.insert("schema.js".to_string(), schema_source.to_string());
    let modules = ModuleSet {
        code_id: crate::CodeId::NONE,
        modules: Arc::new(map),
        env: Arc::new(BTreeMap::new()),
    };
    let mut isolate =
        Isolate::new(&modules, &BTreeMap::new(), limits).map_err(RuntimeError::Analyze)?;
    let outcome = isolate.run_at_push(|ctx| {
        let schema: Function = ctx.globals().get("__nimbus_schema")?;
        schema.call::<_, ()>(("schema.js",))
    })?;
    let text = |key: &str| outcome_text(&outcome, key);
    match outcome.get("kind").and_then(Json::as_str) {
        Some("ok") => Ok(text("value")),
        Some(_) => Err(RuntimeError::Analyze(format!(
            "Failed to evaluate schema.js: {}",
            text("message")
        ))),
        None => Err(RuntimeError::Analyze(
            "schema.js never finished evaluating".into(),
        )),
    }
}

/// Recovers the caller's concrete host type.
pub(crate) fn downcast_host<H: SyscallHost>(host: Box<dyn SyscallHost>) -> Option<H> {
    let any: Box<dyn Any> = host;
    any.downcast::<H>().ok().map(|h| *h)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every global `web.js` defines must be one of the accessors that load it, or it would
    /// stay undefined until something else happened to load the file.
    #[test]
    fn every_web_global_loads_web_js_on_demand() {
        let defined: Vec<&str> = WEB
            .split("define(\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .collect();
        assert!(defined.len() >= 15, "{defined:?}");
        for name in defined {
            assert!(
                WEB_ON_DEMAND.contains(&format!("\"{name}\"")),
                "{name} is defined by web.js but does not load it"
            );
        }
    }
}

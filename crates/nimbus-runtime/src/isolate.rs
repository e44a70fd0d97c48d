//! One tenant's runtime for one push's code, and the calls made in it: the prelude, the
//! entry points (`__nimbus_invoke`, `__nimbus_analyze`, ...) and their outcomes, over a
//! [`Vm`] of either engine.

use std::any::Any;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};

use crate::action::OpSlot;
use crate::vm::{Arg, Engine, Natives, Vm, VmFailure};
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
/// The name module loading sees as the importer of the entry points' `import()`s.
const PRELUDE_NAME: &str = "__nimbus";

pub(crate) type HostSlot = Rc<RefCell<Option<Box<dyn SyscallHost>>>>;
/// What an entry point returns: the host back, the outcome JSON and log lines (or why
/// there are none), and the wall time taken.
type EntryResult = (
    Box<dyn SyscallHost>,
    Result<(Json, Vec<String>), FunctionError>,
    Duration,
);

/// `globalThis.__nimbus_web_source = "<web.js>";`, made once.
fn web_source_script() -> &'static str {
    static SCRIPT: OnceLock<String> = OnceLock::new();
    SCRIPT.get_or_init(|| {
        // A JSON string is a JavaScript string literal.
        let literal = serde_json::to_string(WEB).unwrap_or_else(|_| "\"\"".into());
        format!("globalThis.__nimbus_web_source = {literal};")
    })
}

/// A tenant's runtime for one push's code ([`crate::CodeId`]). Lives on one worker thread.
pub(crate) struct Isolate {
    vm: Vm,
    host: HostSlot,
    /// Async operations started by an action (see `action.rs`).
    ops: OpSlot,
    /// Whether the last [`Isolate::drive`] was stopped by its deadline.
    interrupted: bool,
    /// CPU time of a call without limits of its own.
    default_cpu_time: Duration,
    /// Set after a timeout, memory exhaustion or internal failure: the runtime's state
    /// is not trusted any more and the isolate must be dropped.
    pub broken: bool,
    /// Whether it was given a push's code ([`Isolate::adopt`]); a blank one has none.
    adopted: bool,
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
    /// A runtime for one push of one tenant: its modules, `process.env` and limits.
    pub fn new(
        engine: Engine,
        modules: &ModuleSet,
        system_env: &BTreeMap<String, String>,
        limits: &RuntimeLimits,
    ) -> Result<Isolate, String> {
        let mut isolate = Isolate::blank(engine, limits)?;
        isolate.adopt(modules, system_env)?;
        Ok(isolate)
    }

    /// A runtime with Nimbus's globals and no tenant's code or environment yet: what every
    /// runtime starts as, made ahead of need (a worker's spare, see `pool.rs`) or in
    /// [`Isolate::new`]. It has run nothing of any tenant's, so [`Isolate::adopt`] may give
    /// it to any one.
    pub fn blank(engine: Engine, limits: &RuntimeLimits) -> Result<Isolate, String> {
        let host: HostSlot = Rc::new(RefCell::new(None));
        let ops: OpSlot = Rc::default();
        let natives = Natives {
            host: host.clone(),
            ops: ops.clone(),
        };
        let mut vm = Vm::new(engine, natives, limits)?;
        let fail = |what: &str, e: VmFailure| format!("{what}: {e}");
        vm.eval_static_script(PRELUDE_NAME, PRELUDE)
            .map_err(|e| fail("installing the prelude", e))?;
        vm.eval_static_script("__nimbus_web_source", web_source_script())
            .map_err(|e| fail("installing the web globals", e))?;
        vm.eval_static_script("__nimbus_web", WEB_ON_DEMAND)
            .map_err(|e| fail("installing the web globals", e))?;
        Ok(Isolate {
            vm,
            host,
            ops,
            interrupted: false,
            default_cpu_time: limits.cpu_time,
            broken: false,
            adopted: false,
        })
    }

    /// A runtime for one push: `spare` (a blank runtime) when it can take `limits`, else a
    /// new one. A V8 heap's size is fixed when it is made, so a call with a memory limit of
    /// its own gets a runtime of its own (the spare is dropped).
    pub fn from_spare(
        spare: Option<Isolate>,
        engine: Engine,
        modules: &ModuleSet,
        system_env: &BTreeMap<String, String>,
        limits: &RuntimeLimits,
    ) -> Result<Isolate, String> {
        if let Some(mut spare) = spare {
            if spare.accepts_memory_limit(limits.memory_bytes) {
                spare.adopt(modules, system_env)?;
                return Ok(spare);
            }
        }
        Isolate::new(engine, modules, system_env, limits)
    }

    /// Makes a blank runtime ([`Isolate::blank`]) the runtime of one push: its modules and
    /// `process.env` (the push's variables, then `system_env`). Once per runtime.
    pub fn adopt(
        &mut self,
        modules: &ModuleSet,
        system_env: &BTreeMap<String, String>,
    ) -> Result<(), String> {
        if self.adopted {
            return Err("internal error: this runtime already has a push's code".into());
        }
        self.adopted = true;
        self.vm.set_modules(modules);
        let mut env = modules.env.as_ref().clone();
        env.extend(system_env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let env_json = serde_json::to_string(&env).map_err(|e| e.to_string())?;
        let env_literal = serde_json::to_string(&env_json).map_err(|e| e.to_string())?;
        self.vm
            .eval_script(
                "__nimbus_env",
                &format!("globalThis.process = {{ env: JSON.parse({env_literal}) }};"),
            )
            .map_err(|e| format!("installing process.env: {e}"))
    }

    /// Runs one JS entry point (`__nimbus_invoke`, `__nimbus_analyze`, ...) with the host
    /// installed, drains the job queue, and returns the outcome JSON and log lines.
    fn run_entry(
        &mut self,
        host: Box<dyn SyscallHost>,
        cpu_time: Duration,
        seed: u64,
        now_ms: f64,
        entry: &str,
        args: &[Arg<'_>],
    ) -> EntryResult {
        *self.host.borrow_mut() = Some(host);
        let (elapsed, failure) = self.drive(cpu_time, |vm| {
            vm.call(
                "__nimbus_begin",
                &[
                    Arg::Number(f64::from((seed >> 32) as u32)),
                    Arg::Number(f64::from(seed as u32)),
                    Arg::Number(now_ms),
                    Arg::Bool(false),
                ],
            )?;
            vm.call(entry, args).map(drop)
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
        if self.interrupted {
            self.broken = true;
            return (
                host,
                Err(FunctionError::Timeout { limit: cpu_time }),
                elapsed,
            );
        }
        if failure == Some(VmFailure::OutOfMemory) {
            self.broken = true;
            return (host, Err(self.out_of_memory()), elapsed);
        }
        (host, self.finish(failure.map(|f| f.to_string())), elapsed)
    }

    /// Runs `start` and then every job it queued (promise reactions), stopped at
    /// `cpu_time`. Returns the time taken and the first failure (an exception that escaped,
    /// or the memory limit). [`Isolate::interrupted`] tells whether the deadline struck.
    pub(crate) fn drive(
        &mut self,
        cpu_time: Duration,
        start: impl FnOnce(&mut Vm) -> Result<(), VmFailure>,
    ) -> (Duration, Option<VmFailure>) {
        let started = Instant::now();
        self.vm.arm(started + cpu_time);
        let mut failure = start(&mut self.vm).err();
        if failure.is_none() {
            match self.vm.run_jobs() {
                Ok(escaped) => failure = escaped.map(VmFailure::Exception),
                Err(e) => failure = Some(e),
            }
        }
        let fired = self.vm.disarm();
        self.interrupted = fired || failure == Some(VmFailure::Terminated);
        (started.elapsed(), failure)
    }

    pub(crate) fn ops(&self) -> &OpSlot {
        &self.ops
    }

    pub(crate) fn vm(&mut self) -> &mut Vm {
        &mut self.vm
    }

    /// Whether the last [`Isolate::drive`] was stopped by its deadline.
    pub(crate) fn interrupted(&self) -> bool {
        self.interrupted
    }

    fn out_of_memory(&self) -> FunctionError {
        FunctionError::OutOfMemory {
            limit_bytes: self.vm.memory_limit(),
        }
    }

    /// Reads the entry point's outcome and log lines (`__nimbus_finish`).
    pub(crate) fn finish(
        &mut self,
        failure: Option<String>,
    ) -> Result<(Json, Vec<String>), FunctionError> {
        let text = match self.vm.call("__nimbus_finish", &[]) {
            Ok(Some(text)) => text,
            Ok(None) => {
                self.broken = true;
                return Err(FunctionError::Internal(
                    failure.unwrap_or_else(|| "the outcome is not text".into()),
                ));
            }
            Err(e) => {
                self.broken = true;
                return Err(
                    if self.vm.near_memory_limit()
                        || e == VmFailure::OutOfMemory
                        || e.to_string().contains("out of memory")
                    {
                        self.out_of_memory()
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

    /// Whether [`Isolate::make_code_caches`] has work (V8: after this runtime's first call,
    /// unless its push's caches were made after a call already).
    pub fn wants_code_caches(&self) -> bool {
        self.vm.wants_code_caches()
    }

    /// Makes the code caches of the modules this runtime compiled (see `crate::code_cache`).
    /// Between calls, off the caller's path: the pool runs it after replying.
    pub fn make_code_caches(&mut self) {
        self.vm.make_code_caches(true);
    }

    /// Bytes the runtime holds now (its heap, modules and objects).
    pub fn heap_bytes(&self) -> usize {
        self.vm.memory_bytes()
    }

    /// Whether this runtime can run a call with a heap limit of `bytes` (V8's is fixed
    /// when the isolate is made: one made for another limit must be replaced).
    pub fn accepts_memory_limit(&mut self, bytes: usize) -> bool {
        self.vm.set_memory_limit(bytes)
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
                if !self.vm.set_memory_limit(limits.memory_bytes) {
                    // The pool replaces such a runtime before the call (accepts_memory_limit).
                    self.broken = true;
                }
                limits.cpu_time
            }
            None => self.default_cpu_time,
        };
        let (host, result, elapsed) = self.run_entry(
            host,
            cpu_time,
            inv.rng_seed,
            inv.now_ms,
            "__nimbus_invoke",
            &[
                Arg::Str(&inv.module_path),
                Arg::Str(&inv.export_name),
                Arg::Str(kind),
                Arg::Str(&inv.args_json),
                Arg::Str(&inv.request_id),
            ],
        );
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
                    Err(self.out_of_memory())
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

pub(crate) fn dispatch(slot: &HostSlot, op: &str, args: &str, is_async: bool) -> String {
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
    fn run_at_push(&mut self, entry: &str, args: &[Arg<'_>]) -> Result<Json, RuntimeError> {
        let (_, result, _) =
            self.run_entry(Box::new(NoDatabase), ANALYSIS_CPU_TIME, 1, 0.0, entry, args);
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
    engine: Engine,
    modules: &ModuleSet,
    limits: &RuntimeLimits,
) -> Result<ModuleAnalysis, RuntimeError> {
    let mut isolate =
        Isolate::new(engine, modules, &BTreeMap::new(), limits).map_err(RuntimeError::Analyze)?;
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
    let outcome = isolate.run_at_push(
        "__nimbus_analyze",
        &[Arg::Str(&paths_json), Arg::Str(crons), Arg::Str(auth)],
    )?;
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
    // Every module is loaded: their code caches go with the deployment, so that the first
    // runtime of this push (after a restart too) compiles none of them from source.
    isolate.vm.make_code_caches(false);
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
    engine: Engine,
    schema_source: &str,
    limits: &RuntimeLimits,
) -> Result<String, RuntimeError> {
    let mut map = BTreeMap::new();
    map.insert("schema.js".to_string(), schema_source.to_string());
    let modules = ModuleSet::new(
        crate::CodeId::NONE,
        Arc::new(map),
        Arc::new(BTreeMap::new()),
    );
    let mut isolate =
        Isolate::new(engine, &modules, &BTreeMap::new(), limits).map_err(RuntimeError::Analyze)?;
    let outcome = isolate.run_at_push("__nimbus_schema", &[Arg::Str("schema.js")])?;
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

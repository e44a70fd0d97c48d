//! The engine boundary: one JavaScript virtual machine per isolate, QuickJS or V8, behind
//! the few primitives [`crate::isolate::Isolate`] is built on (run a script, call a global
//! function, drain the job queue, stop at a deadline, measure and bound memory).
//!
//! Both engines install the same natives ([`NATIVES`], answered by [`Natives`]), load the
//! same modules (a tenant's [`ModuleSet`], resolved by [`crate::modules::resolve_path`]) and
//! run the same prelude, so a function sees the same globals, syscalls and determinism on
//! either.

mod quickjs;
mod v8;

use std::time::Instant;

pub use nimbus_v8::Arg;

use crate::action::{start_op, OpSlot};
use crate::isolate::{dispatch, HostSlot};
use crate::{natives, ModuleSet, RuntimeLimits};

/// Which engine runs tenants' functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Engine {
    QuickJs,
    V8,
}

impl Engine {
    /// V8 when this build has it (see `nimbus-v8`), else QuickJS.
    pub const fn preferred() -> Engine {
        if nimbus_v8::AVAILABLE {
            Engine::V8
        } else {
            Engine::QuickJs
        }
    }

    /// Whether this build can run it.
    pub fn is_available(self) -> bool {
        match self {
            Engine::QuickJs => true,
            Engine::V8 => nimbus_v8::AVAILABLE,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Engine::QuickJs => "quickjs",
            Engine::V8 => "v8",
        }
    }

    /// The engine and its version, for logs and diagnostics.
    pub fn describe(self) -> String {
        match self {
            Engine::QuickJs => "QuickJS (rquickjs 0.14)".into(),
            Engine::V8 => match nimbus_v8::version() {
                Some(version) => format!("V8 {version} (libnode)"),
                None => "V8 (not in this build)".into(),
            },
        }
    }
}

impl std::str::FromStr for Engine {
    type Err = String;
    fn from_str(s: &str) -> Result<Engine, String> {
        match s {
            "quickjs" => Ok(Engine::QuickJs),
            "v8" => Ok(Engine::V8),
            other => Err(format!(
                "unknown JavaScript engine {other:?}: expected v8 or quickjs"
            )),
        }
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The natives every engine installs as globals, by id (their index here).
pub(crate) const NATIVES: [&str; 6] = [
    "__nimbus_native_syscall",
    "__nimbus_native_op",
    "__nimbus_url_parse",
    "__nimbus_url_set",
    "__nimbus_digest",
    "__nimbus_random_hex",
];

/// Answers the natives of one isolate: syscalls go to the call's host, async operations
/// of an action to its op queue.
#[derive(Clone)]
pub(crate) struct Natives {
    pub host: HostSlot,
    pub ops: OpSlot,
}

impl Natives {
    /// Native `id` ([`NATIVES`]) with `args`. Every native answers with text (`o...` or
    /// `e...`); none throws.
    pub fn call(&self, id: u32, args: &[Arg<'_>]) -> Result<String, String> {
        let text = |i: usize| args.get(i).map_or("", Arg::as_str);
        Ok(match id {
            0 => dispatch(
                &self.host,
                text(0),
                text(1),
                matches!(args.get(2), Some(Arg::Bool(true))),
            ),
            1 => start_op(
                &self.ops,
                text(0).to_string(),
                text(1).to_string(),
                match args.get(2) {
                    Some(Arg::Str(body)) => Some(body.to_string()),
                    _ => None,
                },
            ),
            2 => natives::url_parse(text(0), text(1)),
            3 => natives::url_set(text(0), text(1), text(2)),
            4 => natives::digest(text(0), text(1)),
            5 => natives::random_hex(match args.first() {
                // A saturating cast: NaN and negatives ask for nothing, huge counts fail.
                Some(Arg::Number(n)) => *n as usize,
                _ => 0,
            }),
            other => return Err(format!("no native number {other}")),
        })
    }
}

/// Why an entry into JavaScript failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum VmFailure {
    /// An exception escaped: its message (and stack where the engine gives one).
    Exception(String),
    /// Stopped at the deadline of [`Vm::arm`].
    Terminated,
    /// The memory limit was reached; the VM must be dropped.
    OutOfMemory,
    /// The engine's own failure.
    Internal(String),
}

impl std::fmt::Display for VmFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmFailure::Exception(m) | VmFailure::Internal(m) => f.write_str(m),
            VmFailure::Terminated => f.write_str("terminated at its deadline"),
            VmFailure::OutOfMemory => f.write_str("out of memory"),
        }
    }
}

/// One tenant runtime's virtual machine: one heap, one context.
pub(crate) enum Vm {
    QuickJs(quickjs::QuickVm),
    V8(v8::V8Vm),
}

impl Vm {
    /// A VM with no modules yet ([`Vm::set_modules`] gives them).
    pub fn new(engine: Engine, natives: Natives, limits: &RuntimeLimits) -> Result<Vm, String> {
        Ok(match engine {
            Engine::QuickJs => Vm::QuickJs(quickjs::QuickVm::new(natives, limits)?),
            Engine::V8 => Vm::V8(v8::V8Vm::new(natives, limits)?),
        })
    }

    /// The modules this VM loads from: one push of one tenant. Set once, before any
    /// module is imported.
    pub fn set_modules(&mut self, modules: &ModuleSet) {
        match self {
            Vm::QuickJs(vm) => vm.set_modules(modules),
            Vm::V8(vm) => vm.set_modules(modules),
        }
    }

    /// Runs a classic script (the prelude).
    pub fn eval_script(&mut self, name: &str, source: &str) -> Result<(), VmFailure> {
        match self {
            Vm::QuickJs(vm) => vm.eval_script(name, source),
            Vm::V8(vm) => vm.eval_script(name, source),
        }
    }

    /// Runs one of Nimbus's own scripts (the same source in every runtime: V8 compiles it
    /// from the process's code cache).
    pub fn eval_static_script(
        &mut self,
        name: &'static str,
        source: &'static str,
    ) -> Result<(), VmFailure> {
        match self {
            Vm::QuickJs(vm) => vm.eval_script(name, source),
            Vm::V8(vm) => vm.eval_static_script(name, source),
        }
    }

    /// Whether [`Vm::make_code_caches`] has work to do (see `crate::code_cache`).
    pub fn wants_code_caches(&self) -> bool {
        match self {
            Vm::QuickJs(_) => false,
            Vm::V8(vm) => vm.wants_code_caches(),
        }
    }

    /// Makes the code caches of what this runtime compiled, for the runtimes after it
    /// (`after_a_call`: after its first call; else after push-time analysis).
    pub fn make_code_caches(&mut self, after_a_call: bool) {
        match self {
            Vm::QuickJs(_) => {}
            Vm::V8(vm) => vm.make_code_caches(after_a_call),
        }
    }

    /// Calls the global function `name`; `Some` when it returned a string.
    pub fn call(&mut self, name: &str, args: &[Arg<'_>]) -> Result<Option<String>, VmFailure> {
        match self {
            Vm::QuickJs(vm) => vm.call(name, args),
            Vm::V8(vm) => vm.call(name, args),
        }
    }

    /// Runs queued jobs (promise reactions) until none is left. `Ok(Some(message))`: an
    /// exception escaped a job (the first one; the rest still ran).
    pub fn run_jobs(&mut self) -> Result<Option<String>, VmFailure> {
        match self {
            Vm::QuickJs(vm) => vm.run_jobs(),
            Vm::V8(vm) => vm.run_jobs(),
        }
    }

    /// Stops whatever runs at `deadline`, until [`Vm::disarm`].
    pub fn arm(&mut self, deadline: Instant) {
        match self {
            Vm::QuickJs(vm) => vm.arm(deadline),
            Vm::V8(vm) => vm.arm(deadline),
        }
    }

    /// Ends the watch; true if the deadline struck.
    pub fn disarm(&mut self) -> bool {
        match self {
            Vm::QuickJs(vm) => vm.disarm(),
            Vm::V8(vm) => vm.disarm(),
        }
    }

    /// Bytes the VM holds (its heap and what it allocated outside it).
    pub fn memory_bytes(&self) -> usize {
        match self {
            Vm::QuickJs(vm) => vm.memory_bytes(),
            Vm::V8(vm) => vm.memory_bytes(),
        }
    }

    /// Whether memory use is at (or within a tenth of) the limit: a failure then is
    /// reported as running out of memory.
    pub fn near_memory_limit(&self) -> bool {
        self.memory_bytes() >= self.memory_limit().saturating_mul(9) / 10
    }

    pub fn memory_limit(&self) -> usize {
        match self {
            Vm::QuickJs(vm) => vm.memory_limit,
            Vm::V8(vm) => vm.memory_limit,
        }
    }

    /// Applies a new memory limit; false when this VM cannot change it (V8 fixes its
    /// heap's size when it makes the isolate) and must be replaced.
    pub fn set_memory_limit(&mut self, bytes: usize) -> bool {
        match self {
            Vm::QuickJs(vm) => {
                vm.set_memory_limit(bytes);
                true
            }
            Vm::V8(vm) => vm.memory_limit == bytes,
        }
    }
}

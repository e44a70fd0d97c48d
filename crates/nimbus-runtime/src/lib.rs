//! Runs tenants' Convex functions in-process, in V8 (Debian's libnode, through
//! `nimbus-v8`) or QuickJS (through `rquickjs`): one [`Engine`] per pool, behind the same
//! boundary (`vm.rs`), so that everything above it is the same for both.
//!
//! - [`JsPool`]: a fixed set of worker threads fed by one bounded job queue. Each worker
//!   caches one runtime (a V8 isolate, or a QuickJS runtime) with one context per (tenant,
//!   [`CodeId`]) in a bounded LRU, so a tenant's code never shares a runtime or context
//!   with another tenant's, and a runtime built from one push never runs another push's
//!   code.
//! - Every call has a CPU-time limit (QuickJS's interrupt handler, or V8's
//!   `TerminateExecution` from a watchdog thread, stops it at the deadline) and a memory
//!   limit (QuickJS's allocator limit; V8's heap limit and a bound on ArrayBuffer bytes);
//!   a call that exceeds either fails with [`FunctionError::Timeout`] /
//!   [`FunctionError::OutOfMemory`], its runtime is discarded, and the worker moves on.
//! - The runtime knows nothing about the database: every `Convex.syscall` /
//!   `Convex.asyncSyscall` goes to the [`SyscallHost`] the caller passes with the call.
//!   Async syscalls are answered synchronously (the engine reads in-memory snapshots or
//!   local storage); JavaScript still sees a promise.
//! - [`analyze_modules`] and [`evaluate_schema`] run pushed code once at push time.

mod action;
mod code_cache;
mod isolate;
mod modules;
mod natives;
mod pool;
mod vm;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub use action::{ActionStep, AsyncOp, OpResult, OpValue, MAX_OPS_IN_FLIGHT};
pub use code_cache::CodeCache;
pub use isolate::{analyze_modules, evaluate_schema};
pub use pool::{ActionHandle, CacheStats, JsPool};
pub use vm::Engine;

/// Limits of one function call.
#[derive(Debug, Clone)]
pub struct RuntimeLimits {
    /// Heap of one tenant runtime, in bytes; allocation beyond it fails the call.
    pub memory_bytes: usize,
    /// CPU time of one call (checked by the interrupt handler).
    pub cpu_time: Duration,
    /// Native stack the interpreter may use, in bytes (deep recursion fails cleanly).
    pub max_stack_bytes: usize,
    /// CPU time of one action, over all its steps (time spent waiting is not counted).
    pub action_cpu_time: Duration,
}

impl Default for RuntimeLimits {
    fn default() -> Self {
        RuntimeLimits {
            memory_bytes: 64 << 20,
            cpu_time: Duration::from_secs(1),
            max_stack_bytes: 512 << 10,
            action_cpu_time: Duration::from_secs(30),
        }
    }
}

/// Configuration of the worker pool.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Worker threads.
    pub workers: usize,
    /// Jobs waiting for a worker, in all (split evenly over the workers' queues); when a
    /// call's home workers' queues are full, [`JsPool::invoke`] fails at once with
    /// [`PoolError::QueueFull`].
    pub queue_capacity: usize,
    /// Workers one tenant's calls may run on (its home workers; see [`JsPool`]). Fewer
    /// means fewer cached isolates per tenant; more lets one tenant use more cores.
    pub workers_per_tenant: usize,
    /// Cached tenant runtimes per worker (least recently used ones are dropped).
    pub isolates_per_worker: usize,
    /// Bytes of cached tenant runtimes per worker (their heaps, as QuickJS counts them):
    /// least recently used ones are dropped to stay under it. A runtime larger than this
    /// alone is still used, and cached by itself.
    pub cache_bytes_per_worker: usize,
    /// Actions alive at once in the whole pool (running or waiting between steps), each
    /// with an isolate of its own; starting one more fails with
    /// [`PoolError::TooManyActions`].
    pub max_actions: usize,
    pub limits: RuntimeLimits,
    /// The engine every worker runs functions in.
    pub engine: Engine,
}

impl Default for PoolConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        PoolConfig {
            workers: (cores * 2).max(4),
            queue_capacity: 1024,
            workers_per_tenant: default_workers_per_tenant((cores * 2).max(4)),
            isolates_per_worker: DEFAULT_ISOLATES_PER_WORKER,
            cache_bytes_per_worker: DEFAULT_CACHE_MIB_PER_WORKER << 20,
            max_actions: 256,
            limits: RuntimeLimits::default(),
            engine: Engine::preferred(),
        }
    }
}

/// Default bound on cached runtimes per worker, by count: high enough that the byte bound
/// decides for small apps (a thousand active tenants with two homes each over four workers
/// need 500 each).
pub const DEFAULT_ISOLATES_PER_WORKER: usize = 1024;
/// Default bound on cached runtimes per worker, in MiB.
pub const DEFAULT_CACHE_MIB_PER_WORKER: usize = 256;

/// Half the workers, at least 2 (or all of them when there are fewer): a busy tenant can
/// use about half the machine's cores, and each tenant's isolates live on half the workers.
pub fn default_workers_per_tenant(workers: usize) -> usize {
    (workers / 2).max(2).min(workers.max(1))
}

/// Identifies one activated push of one tenant: random, allocated when the push is
/// activated, never reused (not by the same tenant, not by a tenant deleted and created
/// again under the same name). Cached runtimes are found by it, so a runtime is only ever
/// used for the exact code it was built from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CodeId(pub u128);

impl CodeId {
    /// A fresh identity (128 random bits).
    pub fn random() -> CodeId {
        CodeId(rand::random())
    }

    /// The identity of "no code pushed yet"; no push ever gets it.
    pub const NONE: CodeId = CodeId(0);
}

impl std::fmt::Display for CodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// The code of one tenant at one push.
#[derive(Debug, Clone)]
pub struct ModuleSet {
    /// Which push this is (see [`CodeId`]).
    pub code_id: CodeId,
    /// `"orders.js"`, `"_deps/ABC.js"` → ES module source.
    pub modules: Arc<BTreeMap<String, String>>,
    /// `process.env`.
    pub env: Arc<BTreeMap<String, String>>,
    /// The modules' compiled code, made by the first runtime of this push (V8).
    pub code_cache: Arc<CodeCache>,
}

impl ModuleSet {
    pub fn new(
        code_id: CodeId,
        modules: Arc<BTreeMap<String, String>>,
        env: Arc<BTreeMap<String, String>>,
    ) -> ModuleSet {
        ModuleSet {
            code_id,
            modules,
            env,
            code_cache: Arc::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FunctionKind {
    Query,
    Mutation,
    Action,
}

impl FunctionKind {
    fn js_name(self) -> &'static str {
        match self {
            FunctionKind::Query => "query",
            FunctionKind::Mutation => "mutation",
            FunctionKind::Action => "action",
        }
    }

    fn from_js_name(name: &str) -> Option<FunctionKind> {
        match name {
            "query" => Some(FunctionKind::Query),
            "mutation" => Some(FunctionKind::Mutation),
            "action" => Some(FunctionKind::Action),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    Public,
    Internal,
}

/// One function call.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub tenant: Arc<str>,
    pub modules: ModuleSet,
    pub module_path: String,
    pub export_name: String,
    pub kind: FunctionKind,
    /// JSON text of an array holding the one args object: `[{"a":1}]`.
    pub args_json: String,
    pub rng_seed: u64,
    pub now_ms: f64,
    pub request_id: String,
    /// Variables the server sets in `process.env` (`CONVEX_CLOUD_URL`, `CONVEX_SITE_URL`),
    /// over the tenant's own of the same names.
    pub system_env: Arc<BTreeMap<String, String>>,
    /// For an HTTP action (an action with `kind` Action): the request, routed by the
    /// default export of `http.js`.
    pub http: Option<HttpRequestIn>,
    /// The calling tenant's own limits, over the pool's [`RuntimeLimits`] (`None`: the
    /// pool's).
    pub limits: Option<CallLimits>,
}

/// A tenant's limits of one call, where they differ from the pool's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimits {
    /// CPU time of one query or mutation (an action's total is
    /// [`RuntimeLimits::action_cpu_time`]).
    pub cpu_time: Duration,
    /// Heap of the tenant's runtime, in bytes.
    pub memory_bytes: usize,
}

/// An HTTP action's request as JavaScript builds its `Request` from it.
#[derive(Debug, Clone)]
pub struct HttpRequestIn {
    /// JSON: `{url, method, headers: [[name, value]...], pathname}` (`pathname` is the
    /// router's path: the request's path without the tenant prefix).
    pub meta_json: String,
    pub body: Vec<u8>,
}

/// A syscall failure, shown to the function as a thrown `Error`.
#[derive(Debug, Clone)]
pub struct SyscallError {
    pub message: String,
    /// convex-JSON text of `ConvexError` data, if the failure carries one.
    pub data_json: Option<String>,
}

/// Answers the syscalls of one call. Called on the worker thread.
pub trait SyscallHost: std::any::Any + Send {
    fn syscall(&mut self, op: &str, args_json: &str) -> Result<String, SyscallError>;
    fn async_syscall(&mut self, op: &str, args_json: &str) -> Result<String, SyscallError>;
}

/// What a call produced.
#[derive(Debug)]
pub struct Outcome {
    /// The JSON text the function's promise resolved to (convex-JSON of the result).
    pub result: Result<String, FunctionError>,
    pub log_lines: Vec<String>,
    /// Wall time the call held its worker.
    pub cpu_time: Duration,
}

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum FunctionError {
    #[error("{message}")]
    Uncaught { message: String },
    #[error("{message}")]
    ConvexError { message: String, data_json: String },
    #[error("Function execution timed out: it used more than its CPU time limit of {} ms", limit.as_millis())]
    Timeout { limit: Duration },
    #[error("Function ran out of memory: it allocated more than its limit of {} MiB", limit_bytes >> 20)]
    OutOfMemory { limit_bytes: usize },
    #[error("Could not find function {export} in module {module}")]
    ExportNotFound { module: String, export: String },
    #[error("{name} is registered as a {actual:?} but is being run as a {expected:?}")]
    WrongKind {
        name: String,
        actual: FunctionKind,
        expected: FunctionKind,
    },
    #[error(
        "The function's promise never settled (it awaited something that cannot happen in a {0})"
    )]
    NeverSettled(&'static str),
    #[error("internal runtime error: {0}")]
    Internal(String),
}

impl FunctionError {
    /// Stable code for clients (`errorCode`).
    pub fn code(&self) -> &'static str {
        match self {
            FunctionError::Uncaught { .. } => "UncaughtError",
            FunctionError::ConvexError { .. } => "ConvexError",
            FunctionError::Timeout { .. } => "FunctionTimeout",
            FunctionError::OutOfMemory { .. } => "FunctionOutOfMemory",
            FunctionError::ExportNotFound { .. } => "FunctionNotFound",
            FunctionError::WrongKind { .. } => "InvalidFunctionKind",
            FunctionError::NeverSettled(_) => "UncaughtError",
            FunctionError::Internal(_) => "InternalError",
        }
    }
}

/// Failures of the pool itself (the call never ran).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    #[error("the JavaScript job queues of this tenant's workers are full ({0} waiting calls)")]
    QueueFull(usize),
    #[error("the JavaScript pool is shut down")]
    ShutDown,
    #[error("the JavaScript worker failed while running the call (see the server log)")]
    WorkerFailed,
    #[error("{0} actions are already running on this server; retry later")]
    TooManyActions(usize),
}

/// Failures of push-time analysis and pool start-up.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    #[error("{0}")]
    Analyze(String),
    #[error("cannot start the JavaScript pool: {0}")]
    Start(String),
}

/// Push-time analysis of a module set.
#[derive(Debug, Clone)]
pub struct ModuleAnalysis {
    pub functions: Vec<AnalyzedFunction>,
    /// `crons.js` `default.export()`, if present.
    pub crons_json: Option<String>,
    /// `auth.config.js`'s default export as JSON, if the module is present.
    pub auth_json: Option<String>,
}

#[derive(Debug, Clone)]
pub struct AnalyzedFunction {
    pub module_path: String,
    pub name: String,
    pub kind: FunctionKind,
    pub visibility: Visibility,
    pub args_json: String,
    pub returns_json: Option<String>,
}

/// Analysis errors are [`RuntimeError::Analyze`].
pub type AnalyzeError = RuntimeError;

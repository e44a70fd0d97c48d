//! Running one function call: resolve, validate arguments, execute in the runtime against
//! a transaction, validate the result, and for mutations commit with bounded retries.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nimbus_engine::{EngineError, ErrorClass, Snapshot};
use nimbus_runtime::{FunctionError, FunctionKind, Invocation};
use nimbus_types::json::{decode, SharedValue};
use nimbus_types::{TypesError, Value};
use serde_json::Value as Json;

use crate::deployment::{canonical_path, display_name, CompiledFunction, Deployment};
use crate::error::AppError;
use crate::metrics::CallOutcome;
use crate::syscalls::{IdsOf, TxnHost};
use crate::system::{SystemError, SystemQuery};
use crate::tenant::{deployment_of, Tenant};

/// Attempts (the first plus jittered retries) a mutation makes before its retries take
/// turns under the tenant's retry lock.
const OPTIMISTIC_ATTEMPTS: usize = 3;

/// Who is calling: clients may call public functions only, anonymously or as a user whose
/// token was checked; the tenant admin may call internal ones too. Part of every cached
/// result's and shared live query's key, so two callers never share a result.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Caller {
    Client,
    User(Arc<crate::auth::UserIdentity>),
    Admin,
    /// A function of the tenant (an action's `ctx.runQuery` ...), on behalf of the user it
    /// runs for, if any: it may call internal functions, not system queries.
    Function(Option<Arc<crate::auth::UserIdentity>>),
}

impl Caller {
    /// The identity `ctx.auth.getUserIdentity()` returns.
    pub fn identity(&self) -> Option<&Arc<crate::auth::UserIdentity>> {
        match self {
            Caller::User(identity) | Caller::Function(Some(identity)) => Some(identity),
            Caller::Client | Caller::Admin | Caller::Function(None) => None,
        }
    }
}

/// One function call as a transport received it.
#[derive(Debug, Clone)]
pub struct FunctionRequest {
    /// `orders:create`, `orders.js:create`, `orders` (default export).
    pub path: String,
    /// convex-JSON arguments: `[argsObject]` or a bare object.
    pub args: Json,
    /// The kind the endpoint expects (`None`: any, as `/api/function`).
    pub kind: Option<FunctionKind>,
    pub caller: Caller,
    /// For `/api/query_at_ts`: the snapshot timestamp the client wants.
    pub at_ts: Option<u64>,
}

/// What a mutation commits besides its own writes.
#[derive(Debug, Default)]
pub(crate) struct CommitExtras {
    /// Its receipt, under this key (see `dedup.rs`).
    pub receipt: Option<Vec<u8>>,
    /// The scheduled job it runs as: its completion commits with it (see `scheduler/`).
    pub job: Option<crate::scheduler::JobRef>,
}

/// A failure of the function itself (reported with HTTP 200 and `status: "error"`).
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionFailure {
    /// Stable code: `FunctionNotFound`, `ArgumentValidationError`, `UncaughtError`, ...
    pub code: &'static str,
    pub message: String,
    /// `ConvexError` data.
    pub data: Option<Value>,
}

/// The outcome of a call that reached the function.
#[derive(Debug, Clone)]
pub struct FunctionResponse {
    /// Shared: a cached query result is served to many callers, rendered to JSON once.
    pub result: Result<Arc<SharedValue>, FunctionFailure>,
    pub log_lines: Vec<String>,
    pub documents_scanned: u64,
    pub execution: Duration,
    /// Snapshot (queries) or commit (mutations) timestamp.
    pub ts: u64,
    /// The result came from the query cache (no JavaScript ran).
    pub cached: bool,
}

impl FunctionResponse {
    pub(crate) fn failure(code: &'static str, message: String, ts: u64) -> Self {
        FunctionResponse {
            result: Err(FunctionFailure {
                code,
                message,
                data: None,
            }),
            log_lines: Vec::new(),
            documents_scanned: 0,
            execution: Duration::ZERO,
            ts,
            cached: false,
        }
    }
}

fn kind_label(kind: FunctionKind) -> &'static str {
    match kind {
        FunctionKind::Query => "query",
        FunctionKind::Mutation => "mutation",
        FunctionKind::Action => "action",
    }
}

/// A function resolved in the deployment of the snapshot it will read.
pub(crate) struct Resolved {
    pub snapshot: Arc<Snapshot>,
    pub deployment: Arc<Deployment>,
    pub function: Arc<CompiledFunction>,
    pub name: String,
}

/// How many times a query re-runs on a fresh snapshot after a conflict inside it (a paged
/// read at a snapshot the undo log no longer covers) before the call fails with 429.
const QUERY_CONFLICT_ATTEMPTS: usize = 3;

impl Tenant {
    /// Runs a function call to completion.
    pub async fn run(&self, request: FunctionRequest) -> Result<FunctionResponse, AppError> {
        self.run_with_receipt(request, None).await
    }

    /// Runs a function call; a mutation that writes also stores a receipt of its result
    /// under `receipt` in the same commit (see `dedup.rs`).
    pub(crate) async fn run_with_receipt(
        &self,
        request: FunctionRequest,
        receipt: Option<Vec<u8>>,
    ) -> Result<FunctionResponse, AppError> {
        let extras = CommitExtras { receipt, job: None };
        self.run_at_depth(request, extras, 0).await
    }

    /// Runs a scheduled job's function, with no user; a mutation commits the job's
    /// completion with its writes.
    pub(crate) async fn run_scheduled(
        &self,
        request: FunctionRequest,
        job: Option<crate::scheduler::JobRef>,
    ) -> Result<FunctionResponse, AppError> {
        let extras = CommitExtras { receipt: None, job };
        self.run_at_depth(request, extras, 0).await
    }

    /// Runs a call made by an action `depth` actions deep.
    pub(crate) async fn run_nested(
        &self,
        request: FunctionRequest,
        depth: u32,
    ) -> Result<FunctionResponse, AppError> {
        self.run_at_depth(request, CommitExtras::default(), depth)
            .await
    }

    async fn run_at_depth(
        &self,
        request: FunctionRequest,
        extras: CommitExtras,
        depth: u32,
    ) -> Result<FunctionResponse, AppError> {
        let started = Instant::now();
        let snapshot = match request.at_ts {
            None => self.engine().snapshot(),
            Some(ts) => self.snapshot_at(ts)?,
        };
        if let Some((query, name)) = system_query(&request.path, &request.caller) {
            return self.run_system(query, &name, &request, snapshot);
        }
        let resolved = match resolve_at(snapshot, &request.path, request.kind, &request.caller) {
            Ok(resolved) => resolved,
            Err((failure, ts)) => {
                return Ok(FunctionResponse::failure(failure.code, failure.message, ts))
            }
        };
        let args = parse_args(&request.args)?;
        let kind = resolved.function.info.kind;
        let response = self
            .run_resolved(resolved, request, args, extras, depth)
            .await;
        let outcome = match &response {
            Ok(FunctionResponse { result: Ok(_), .. }) => CallOutcome::Success,
            Ok(_) => CallOutcome::Failure,
            Err(_) => CallOutcome::Error,
        };
        self.requests.record(kind, outcome, started.elapsed());
        response
    }

    /// Runs a resolved call once admitted (refused at once when the tenant has too many in
    /// flight).
    async fn run_resolved(
        &self,
        resolved: Resolved,
        request: FunctionRequest,
        args: Value,
        extras: CommitExtras,
        depth: u32,
    ) -> Result<FunctionResponse, AppError> {
        let _inflight = self.admit_call()?;
        match resolved.function.info.kind {
            FunctionKind::Query => {
                let cacheable = request.at_ts.is_none();
                self.run_query(resolved, &request.path, &request.caller, args, cacheable)
                    .await
            }
            FunctionKind::Mutation => {
                self.run_mutation(resolved, &request.path, &request.caller, args, extras)
                    .await
            }
            FunctionKind::Action => {
                Box::pin(self.run_action(resolved, &request.caller, args, depth)).await
            }
        }
    }

    fn snapshot_at(&self, ts: u64) -> Result<Arc<Snapshot>, AppError> {
        self.engine()
            .snapshot_at(nimbus_types::Timestamp(ts))
            .ok_or_else(|| {
                AppError::SnapshotUnavailable(format!(
                    "the snapshot at timestamp {ts} is not available: Nimbus keeps the last \
                     {} snapshots of up to {} s (latest is {})",
                    self.config.engine.recent_snapshots,
                    self.config.engine.write_log_age.as_secs(),
                    self.latest_ts()
                ))
            })
    }

    /// Evaluates a query for a live subscription at a given snapshot, with the code of that
    /// snapshot: its result (or failure), log lines, and read set. A failed query still has
    /// a read set (what it read before failing); an infrastructure failure (overload, a
    /// conflict at a stale snapshot) is returned as the error.
    pub(crate) async fn evaluate_live(
        &self,
        path: &str,
        args: &Value,
        caller: &Caller,
        journal: Option<String>,
        snapshot: Arc<Snapshot>,
    ) -> Result<LiveEvaluation, AppError> {
        if let Some((query, name)) = system_query(path, caller) {
            let deployment = deployment_of(&snapshot);
            let mut txn = self.engine().begin_at(snapshot);
            let result = self.system_result(query, &name, args, &mut txn, &deployment)?;
            return Ok(LiveEvaluation {
                result,
                log_lines: Vec::new(),
                read_set: txn.finish().read_set,
                page_end: None,
            });
        }
        let resolved = match resolve_at(snapshot, path, Some(FunctionKind::Query), caller) {
            Ok(resolved) => resolved,
            Err((failure, _)) => {
                return Ok(LiveEvaluation {
                    result: Err(failure),
                    log_lines: Vec::new(),
                    read_set: nimbus_engine::ReadSet::default(),
                    page_end: None,
                })
            }
        };
        let mut txn = self.engine().begin_at(resolved.snapshot.clone());
        txn.set_journal(journal);
        if let Err(message) = check_args(&resolved.function, args, &txn) {
            return Ok(LiveEvaluation {
                result: Err(FunctionFailure {
                    code: "ArgumentValidationError",
                    message,
                    data: None,
                }),
                log_lines: Vec::new(),
                read_set: txn.finish().read_set,
                page_end: None,
            });
        }
        let (host, outcome) = self
            .execute(&resolved, caller, args.clone(), txn, None)
            .await?;
        if let Some(error) = host.system_error {
            return Err(system_error(self.name(), error));
        }
        let result = finish_result(&resolved.function, outcome.result, &host.txn);
        let page_end = host.txn.page_end().map(str::to_string);
        Ok(LiveEvaluation {
            result,
            log_lines: outcome.log_lines,
            read_set: host.txn.finish().read_set,
            page_end,
        })
    }

    async fn run_query(
        &self,
        mut resolved: Resolved,
        path: &str,
        caller: &Caller,
        args: Value,
        cacheable: bool,
    ) -> Result<FunctionResponse, AppError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let txn = self.engine().begin_at(resolved.snapshot.clone());
            let snapshot_ts = txn.snapshot().ts;
            let ts = snapshot_ts.0;
            if let Err(message) = check_args(&resolved.function, &args, &txn) {
                return Ok(FunctionResponse::failure(
                    "ArgumentValidationError",
                    message,
                    ts,
                ));
            }
            // The cache holds results valid at the latest snapshots; reads at a past one
            // bypass it.
            let key = cacheable.then(|| {
                crate::query_cache::CacheKey::new(
                    resolved.deployment.code_id,
                    &resolved.function.info.module_path,
                    &resolved.function.info.name,
                    &args,
                    caller.identity().map(|identity| identity.text()),
                )
            });
            let engine = self.engine().clone();
            let hit = key.as_ref().and_then(|key| {
                self.query_cache
                    .lock()
                    .get(key, snapshot_ts, |since, read_set| {
                        engine.unchanged_since(since, read_set)
                    })
            });
            if let Some(value) = hit {
                return Ok(FunctionResponse {
                    result: Ok(value),
                    log_lines: Vec::new(),
                    documents_scanned: 0,
                    execution: Duration::ZERO,
                    ts,
                    cached: true,
                });
            }
            let (host, outcome) = self
                .execute(&resolved, caller, args.clone(), txn, None)
                .await?;
            let documents_scanned = host.txn.stats().documents_scanned;
            if let Some(error) = host.system_error {
                if error.class() == ErrorClass::Conflict
                    && cacheable
                    && attempt < QUERY_CONFLICT_ATTEMPTS
                {
                    // The snapshot went stale under a paged read: run again on a fresh one.
                    resolved = match resolve_at(
                        self.engine().snapshot(),
                        path,
                        Some(FunctionKind::Query),
                        caller,
                    ) {
                        Ok(fresh) => fresh,
                        Err((failure, ts)) => {
                            return Ok(FunctionResponse::failure(failure.code, failure.message, ts))
                        }
                    };
                    continue;
                }
                return Err(system_error(self.name(), error));
            }
            let result = finish_result(&resolved.function, outcome.result, &host.txn)
                .map(|value| Arc::new(SharedValue::new(value)));
            if let (Ok(value), Some(key)) = (&result, key) {
                let finished = host.txn.finish();
                self.query_cache
                    .lock()
                    .insert(key, snapshot_ts, finished.read_set, value.clone());
            }
            return Ok(FunctionResponse {
                result,
                log_lines: outcome.log_lines,
                documents_scanned,
                execution: outcome.cpu_time,
                ts,
                cached: false,
            });
        }
    }

    /// Runs a mutation with bounded retries. Every attempt runs the code of the snapshot it
    /// reads: after a deploy, a conflicting attempt re-runs under the new code and schema,
    /// never the old.
    async fn run_mutation(
        &self,
        mut resolved: Resolved,
        path: &str,
        caller: &Caller,
        args: Value,
        extras: CommitExtras,
    ) -> Result<FunctionResponse, AppError> {
        let CommitExtras { receipt, job } = extras;
        let mut attempt = 0;
        // Held from the OPTIMISTIC_ATTEMPTS-th conflict on: such retries of this tenant run one
        // at a time, so a hot document cannot starve a mutation through endless stampedes.
        let mut retry_turn: Option<tokio::sync::MutexGuard<'_, ()>> = None;
        loop {
            attempt += 1;
            let mut txn = self.engine().begin_at(resolved.snapshot.clone());
            if let Some(job) = &job {
                // A job canceled (or run) meanwhile is not run; reading its document puts
                // it in this transaction's read set, so a cancel committed before this
                // commits makes it conflict and re-run, and then stop here.
                match crate::scheduler::begin_job(&mut txn, job) {
                    Ok(true) => {}
                    Ok(false) => {
                        if txn.has_writes() {
                            // A cron run whose cron is gone: record it canceled.
                            match self.engine().commit(txn.finish()).await {
                                Ok(_) | Err(EngineError::Conflict(_)) => {}
                                Err(error) => {
                                    return Err(AppError::from_engine(self.name(), error))
                                }
                            }
                        }
                        return Ok(crate::scheduler::skipped_response(resolved.snapshot.ts.0));
                    }
                    Err(error) => return Err(system_error(self.name(), error)),
                }
            }
            if let Err(message) = check_args(&resolved.function, &args, &txn) {
                return Ok(FunctionResponse::failure(
                    "ArgumentValidationError",
                    message,
                    txn.snapshot().ts.0,
                ));
            }
            let started = Instant::now();
            let (mut host, outcome) = self
                .execute(&resolved, caller, args.clone(), txn, job.as_ref())
                .await?;
            let conflict = match host.system_error {
                Some(EngineError::Conflict(reason)) => Err(EngineError::Conflict(reason)),
                Some(error) => return Err(system_error(self.name(), error)),
                None => Ok(()),
            };
            let documents_scanned = host.txn.stats().documents_scanned;
            let committed = match conflict {
                Err(conflict) => Err(conflict),
                Ok(()) => {
                    let result = finish_result(&resolved.function, outcome.result, &host.txn)
                        .map(|value| Arc::new(SharedValue::new(value)));
                    if result.is_err() {
                        // A failed mutation writes nothing: its transaction is dropped here.
                        return Ok(FunctionResponse {
                            result,
                            log_lines: outcome.log_lines,
                            documents_scanned,
                            execution: outcome.cpu_time,
                            ts: host.txn.snapshot().ts.0,
                            cached: false,
                        });
                    }
                    if let Some(job) = &job {
                        if let Err(error) =
                            crate::scheduler::finish_job(&mut host.txn, job, "success", None)
                        {
                            return Err(system_error(self.name(), error));
                        }
                    }
                    let scheduled = std::mem::take(&mut host.scheduled);
                    if scheduled.changed_jobs() {
                        // Before the commit is acknowledged, the instance knows when this
                        // tenant has work due (in case it closes or the server stops).
                        self.scheduler
                            .lower_record(self.name(), scheduled.earliest_due())
                            .await;
                    }
                    let mut finished = host.txn.finish();
                    if let (Some(key), Ok(value)) = (&receipt, &result) {
                        finished.receipt = Some(nimbus_storage::Receipt {
                            key: key.clone(),
                            body: crate::dedup::receipt_body(value.value()),
                        });
                    }
                    let committed = self.engine().commit(finished).await;
                    if committed.is_ok() && scheduled.changed_jobs() {
                        self.scheduler.wake();
                    }
                    committed.map(|ts| (ts, result))
                }
            };
            match committed {
                Ok((ts, result)) => {
                    return Ok(FunctionResponse {
                        result,
                        log_lines: outcome.log_lines,
                        documents_scanned,
                        execution: outcome.cpu_time,
                        ts: ts.0,
                        cached: false,
                    })
                }
                Err(EngineError::Conflict(reason)) if attempt < self.max_attempts() => {
                    tracing::debug!(tenant = self.name(), name = %resolved.name, attempt, %reason, elapsed_us = started.elapsed().as_micros() as u64, "mutation conflict, retrying");
                    if attempt < OPTIMISTIC_ATTEMPTS {
                        // Most conflicts are two writers meeting once: back off a little,
                        // at random, and try again on a fresh snapshot.
                        let jitter_us = rand::random::<u64>() % (1_000 * attempt as u64);
                        tokio::time::sleep(Duration::from_micros(jitter_us)).await;
                    } else if retry_turn.is_none() {
                        retry_turn = Some(self.retry_lock().lock().await);
                    }
                    // The next attempt reads the latest snapshot, with its code.
                    resolved = match resolve_at(
                        self.engine().snapshot(),
                        path,
                        Some(FunctionKind::Mutation),
                        caller,
                    ) {
                        Ok(fresh) => fresh,
                        Err((failure, ts)) => {
                            return Ok(FunctionResponse::failure(failure.code, failure.message, ts))
                        }
                    };
                    continue;
                }
                Err(EngineError::Conflict(reason)) => {
                    return Err(AppError::Overloaded {
                        tenant: self.name().to_string(),
                        detail: format!(
                            "{} conflicted with concurrent writes {attempt} times ({reason}); \
                             retry later",
                            resolved.name
                        ),
                        retry_after_secs: 1,
                        limit: crate::limits::CONFLICTS,
                    })
                }
                Err(other) => return Err(AppError::from_engine(self.name(), other)),
            }
        }
    }

    /// Runs a system query (see `system.rs`) over HTTP: a query at `snapshot`, never cached.
    fn run_system(
        &self,
        query: SystemQuery,
        name: &str,
        request: &FunctionRequest,
        snapshot: Arc<Snapshot>,
    ) -> Result<FunctionResponse, AppError> {
        let ts = snapshot.ts.0;
        if let Some(expected) = request.kind.filter(|kind| *kind != FunctionKind::Query) {
            return Ok(FunctionResponse::failure(
                "InvalidFunctionKind",
                format!(
                    "Trying to execute {name} as {}, but it is defined as query.",
                    kind_label(expected)
                ),
                ts,
            ));
        }
        let args = parse_args(&request.args)?;
        let _inflight = self.admit_call()?;
        let started = Instant::now();
        let deployment = deployment_of(&snapshot);
        let mut txn = self.engine().begin_at(snapshot);
        let result = self.system_result(query, name, &args, &mut txn, &deployment)?;
        Ok(FunctionResponse {
            result: result.map(|value| Arc::new(SharedValue::new(value))),
            log_lines: Vec::new(),
            documents_scanned: txn.stats().documents_scanned,
            execution: started.elapsed(),
            ts,
            cached: false,
        })
    }

    /// A system query's result; the engine's own failures (overload, a stale snapshot)
    /// are the call's error, as for a pushed query.
    fn system_result(
        &self,
        query: SystemQuery,
        name: &str,
        args: &Value,
        txn: &mut nimbus_engine::Transaction,
        deployment: &Deployment,
    ) -> Result<Result<Value, FunctionFailure>, AppError> {
        let url = format!("{}/t/{}", self.config.public_url, self.name());
        match query.run(name, args, txn, deployment, &url) {
            Ok(value) => Ok(Ok(value)),
            Err(SystemError::Failure(failure)) => Ok(Err(failure)),
            Err(SystemError::Engine(error)) if error.class() == ErrorClass::User => {
                Ok(Err(FunctionFailure {
                    code: "UncaughtError",
                    message: format!("{name}: {error}"),
                    data: None,
                }))
            }
            Err(SystemError::Engine(error)) => Err(system_error(self.name(), error)),
        }
    }

    async fn execute(
        &self,
        resolved: &Resolved,
        caller: &Caller,
        args: Value,
        txn: nimbus_engine::Transaction,
        job: Option<&crate::scheduler::JobRef>,
    ) -> Result<(TxnHost, nimbus_runtime::Outcome), AppError> {
        let Resolved {
            deployment,
            function,
            name,
            ..
        } = resolved;
        let args_json = format!("[{}]", nimbus_types::json::encode_text(&args));
        let now_ms = now_ms();
        let invocation = Invocation {
            tenant: self.name_arc(),
            modules: deployment.module_set.clone(),
            module_path: function.info.module_path.clone(),
            export_name: function.info.name.clone(),
            kind: function.info.kind,
            args_json,
            rng_seed: rand::random(),
            now_ms,
            request_id: String::new(),
            system_env: self.system_env(),
            http: None,
            limits: Some(self.call_limits()),
        };
        let host = TxnHost {
            txn,
            kind: function.info.kind,
            schema: deployment.schema.clone(),
            function_name: name.clone(),
            identity: caller.identity().cloned(),
            system_error: None,
            deployment: deployment.clone(),
            scheduler: self.scheduler.clone(),
            scheduled: Default::default(),
            job: job.cloned(),
        };
        self.save_code_caches_when_made(deployment);
        let _running = self.acquire_worker().await?;
        let (host, outcome) =
            self.pool()
                .invoke(invocation, host)
                .await
                .map_err(|e| AppError::Overloaded {
                    tenant: self.name().to_string(),
                    detail: e.to_string(),
                    retry_after_secs: 1,
                    limit: crate::limits::WORKER_POOL,
                })?;
        self.cpu.record(outcome.cpu_time);
        Ok((host, outcome))
    }
}

/// Milliseconds since the Unix epoch, as `Date.now()` shows them.
pub(crate) fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

fn system_error(tenant: &str, error: EngineError) -> AppError {
    match error.class() {
        ErrorClass::Overloaded | ErrorClass::Unavailable => AppError::from_engine(tenant, error),
        // Transient: the call read a snapshot that went stale; the client retries.
        ErrorClass::Conflict => AppError::Overloaded {
            tenant: tenant.to_string(),
            detail: format!("{error}; retry"),
            retry_after_secs: 1,
            limit: crate::limits::CONFLICTS,
        },
        ErrorClass::User | ErrorClass::Internal => AppError::Internal(error.to_string()),
    }
}

/// A live query's evaluation (see [`Tenant::evaluate_live`]).
pub(crate) struct LiveEvaluation {
    pub result: Result<Value, FunctionFailure>,
    pub log_lines: Vec<String>,
    pub read_set: nimbus_engine::ReadSet,
    /// The end cursor of its first page, if it paginated (its new journal).
    pub page_end: Option<String>,
}

/// The system query a path names, with its display name, when the tenant admin calls it.
/// Anyone else falls through to the pushed functions, where no such function exists.
fn system_query(path: &str, caller: &Caller) -> Option<(SystemQuery, String)> {
    if *caller != Caller::Admin {
        return None;
    }
    let (module, export) = canonical_path(path)?;
    SystemQuery::find(&module, &export).map(|query| (query, display_name(&module, &export)))
}

/// Resolves a function in the deployment of `snapshot`; a failure comes with the
/// snapshot's timestamp.
fn resolve_at(
    snapshot: Arc<Snapshot>,
    path: &str,
    kind: Option<FunctionKind>,
    caller: &Caller,
) -> Result<Resolved, (FunctionFailure, u64)> {
    let deployment = deployment_of(&snapshot);
    match resolve(&deployment, path, kind, caller) {
        Ok((function, name)) => Ok(Resolved {
            snapshot,
            deployment,
            function,
            name,
        }),
        Err(failure) => Err((failure, snapshot.ts.0)),
    }
}

/// Finds a callable function: it exists, the caller may call it, and it is of the kind the
/// endpoint expects. Returns it with its display name (`module:export`).
fn resolve(
    deployment: &crate::deployment::Deployment,
    path: &str,
    kind: Option<FunctionKind>,
    caller: &Caller,
) -> Result<(Arc<CompiledFunction>, String), FunctionFailure> {
    let fail = |code, message| FunctionFailure {
        code,
        message,
        data: None,
    };
    let Some((module, export)) = canonical_path(path) else {
        return Err(fail(
            "FunctionNotFound",
            format!("Invalid function path {path:?}"),
        ));
    };
    let name = display_name(&module, &export);
    let function = match deployment.functions.get(&(module, export)) {
        Some(f) if f.info.public || matches!(caller, Caller::Admin | Caller::Function(_)) => {
            f.clone()
        }
        _ => {
            return Err(fail(
                "FunctionNotFound",
                format!(
                    "Could not find public function for '{name}'. Did you forget to run \
                     `npx convex dev` or `npx convex deploy`?"
                ),
            ))
        }
    };
    if let Some(expected) = kind {
        if expected != function.info.kind {
            return Err(fail(
                "InvalidFunctionKind",
                format!(
                    "Trying to execute {name} as {}, but it is defined as {}.",
                    kind_label(expected),
                    kind_label(function.info.kind)
                ),
            ));
        }
    }
    Ok((function, name))
}

/// Decodes arguments kept as convex-JSON text (by [`nimbus_types::json::encode_text`]).
pub(crate) fn decode_args_text(text: &str) -> Result<Value, AppError> {
    let json: Json = serde_json::from_str(text)
        .map_err(|e| AppError::Internal(format!("stored arguments are not JSON: {e}")))?;
    decode(&json).map_err(|e| AppError::Internal(format!("stored arguments: {e}")))
}

/// Accepts `[argsObject]` (positional form) or a bare object.
pub fn parse_args(args: &Json) -> Result<Value, AppError> {
    let object = match args {
        Json::Array(items) if items.len() == 1 => &items[0],
        Json::Array(items) if items.is_empty() => return Ok(Value::Object(Default::default())),
        Json::Array(items) => {
            return Err(AppError::BadRequest(format!(
                "args must be one object (or an array holding one object), got an array of {}",
                items.len()
            )))
        }
        Json::Null => return Ok(Value::Object(Default::default())),
        other => other,
    };
    let value = decode(object).map_err(|e| AppError::InvalidValue(format!("invalid args: {e}")))?;
    match value {
        Value::Object(_) => Ok(value),
        other => Err(AppError::BadRequest(format!(
            "args must be an object, got {}",
            other.type_name()
        ))),
    }
}

pub(crate) fn check_args(
    function: &CompiledFunction,
    args: &Value,
    txn: &nimbus_engine::Transaction,
) -> Result<(), String> {
    function
        .args
        .check(args, &IdsOf(txn))
        .map_err(|e| format!("ArgumentValidationError: {e}",))
}

/// Turns the runtime's outcome into the function's result, validating the return value.
pub(crate) fn finish_result(
    function: &CompiledFunction,
    result: Result<String, FunctionError>,
    txn: &nimbus_engine::Transaction,
) -> Result<Value, FunctionFailure> {
    let text = result.map_err(runtime_failure)?;
    let value = serde_json::from_str::<Json>(&text)
        .map_err(|e| e.to_string())
        .and_then(|json| decode(&json).map_err(|e: TypesError| e.to_string()))
        .map_err(|e| FunctionFailure {
            code: "UncaughtError",
            message: format!("the function returned a value that is not a Convex value: {e}"),
            data: None,
        })?;
    if let Some(returns) = &function.returns {
        returns
            .check(&value, &IdsOf(txn))
            .map_err(|e| FunctionFailure {
                code: "ReturnValidationError",
                message: format!("ReturnsValidationError: {e}"),
                data: None,
            })?;
    }
    Ok(value)
}

fn runtime_failure(error: FunctionError) -> FunctionFailure {
    let code = error.code();
    match error {
        FunctionError::ConvexError { message, data_json } => {
            let data = serde_json::from_str::<Json>(&data_json)
                .ok()
                .and_then(|json| decode(&json).ok());
            FunctionFailure {
                code,
                message,
                data,
            }
        }
        other => FunctionFailure {
            code,
            message: other.to_string(),
            data: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The review's finding 11.7: a conflict raised inside a function (a paged read at a
    /// snapshot older than the undo window) was reported as HTTP 500. It is transient: a
    /// query re-runs on a fresh snapshot and a mutation re-runs (see `run_query` and
    /// `run_mutation`), and what is left after the retries is a 429 with Retry-After.
    #[test]
    fn a_conflict_inside_a_function_is_transient() {
        let error = system_error(
            "t",
            EngineError::Conflict("the snapshot is older than the undo log window".into()),
        );
        assert_eq!(error.http_status(), 429, "{error}");
        assert!(error.retry_after_secs().is_some());
        let bug = system_error("t", EngineError::User("x".into()));
        assert_eq!(bug.http_status(), 500);
    }
}

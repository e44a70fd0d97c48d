//! Running one function call: resolve, validate arguments, execute in the runtime against
//! a transaction, validate the result, and for mutations commit with bounded retries.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nimbus_engine::{EngineError, ErrorClass};
use nimbus_runtime::{FunctionError, FunctionKind, Invocation};
use nimbus_types::json::{decode, SharedValue};
use nimbus_types::{TypesError, Value};
use serde_json::Value as Json;

use crate::deployment::{canonical_path, display_name, CompiledFunction};
use crate::error::AppError;
use crate::syscalls::{IdsOf, TxnHost};
use crate::tenant::Tenant;

/// Attempts (the first plus jittered retries) a mutation makes before its retries take
/// turns under the tenant's retry lock.
const OPTIMISTIC_ATTEMPTS: usize = 3;

/// Who is calling: clients may call public functions only; the tenant admin may call
/// internal ones too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Caller {
    Client,
    Admin,
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
    fn failure(code: &'static str, message: String, ts: u64) -> Self {
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

impl Tenant {
    /// Runs a function call to completion.
    pub async fn run(&self, request: FunctionRequest) -> Result<FunctionResponse, AppError> {
        let deployment = self.deployment();
        let ts_now = self.latest_ts();
        let (function, name) =
            match resolve(&deployment, &request.path, request.kind, request.caller) {
                Ok(found) => found,
                Err(failure) => {
                    return Ok(FunctionResponse::failure(
                        failure.code,
                        failure.message,
                        ts_now,
                    ))
                }
            };
        let args = parse_args(&request.args)?;
        let _inflight = self.admit_call()?;
        match function.info.kind {
            FunctionKind::Query => {
                self.run_query(&deployment, &function, &name, args, request.at_ts)
                    .await
            }
            FunctionKind::Mutation => self.run_mutation(&deployment, &function, &name, args).await,
            FunctionKind::Action => Ok(FunctionResponse::failure(
                "UnsupportedFunctionKind",
                format!("{name} is an action; Nimbus does not run actions yet"),
                ts_now,
            )),
        }
    }

    /// Evaluates a query for a live subscription at a given snapshot: its result (or
    /// failure), log lines, and read set. A failed query still has a read set (what it
    /// read before failing); an infrastructure failure is returned as the error.
    pub(crate) async fn evaluate_live(
        &self,
        path: &str,
        args: &Value,
        caller: Caller,
        snapshot: Arc<nimbus_engine::Snapshot>,
    ) -> Result<LiveEvaluation, AppError> {
        let deployment = self.deployment();
        let (function, name) = match resolve(&deployment, path, Some(FunctionKind::Query), caller) {
            Ok(found) => found,
            Err(failure) => {
                return Ok(LiveEvaluation {
                    result: Err(failure),
                    log_lines: Vec::new(),
                    read_set: nimbus_engine::ReadSet::default(),
                })
            }
        };
        let txn = self.engine().begin_at(snapshot);
        if let Err(message) = check_args(&function, args, &txn) {
            return Ok(LiveEvaluation {
                result: Err(FunctionFailure {
                    code: "ArgumentValidationError",
                    message,
                    data: None,
                }),
                log_lines: Vec::new(),
                read_set: txn.finish().read_set,
            });
        }
        let (host, outcome) = self
            .execute(&deployment, &function, &name, args.clone(), txn)
            .await?;
        if let Some(error) = host.system_error {
            return Err(system_error(self.name(), error));
        }
        let result = finish_result(&function, outcome.result, &host.txn);
        Ok(LiveEvaluation {
            result,
            log_lines: outcome.log_lines,
            read_set: host.txn.finish().read_set,
        })
    }

    async fn run_query(
        &self,
        deployment: &Arc<crate::deployment::Deployment>,
        function: &Arc<CompiledFunction>,
        name: &str,
        args: Value,
        at_ts: Option<u64>,
    ) -> Result<FunctionResponse, AppError> {
        let txn = match at_ts {
            None => self.engine().begin(),
            Some(ts) => match self.engine().snapshot_at(nimbus_types::Timestamp(ts)) {
                Some(snapshot) => self.engine().begin_at(snapshot),
                None => {
                    return Err(AppError::SnapshotUnavailable(format!(
                        "the snapshot at timestamp {ts} is not available: Nimbus keeps the last \
                         {} snapshots of up to {} s (latest is {})",
                        self.config.engine.recent_snapshots,
                        self.config.engine.write_log_age.as_secs(),
                        self.latest_ts()
                    )))
                }
            },
        };
        let snapshot_ts = txn.snapshot().ts;
        let ts = snapshot_ts.0;
        if let Err(message) = check_args(function, &args, &txn) {
            return Ok(FunctionResponse::failure(
                "ArgumentValidationError",
                message,
                ts,
            ));
        }
        // The cache holds results at the latest snapshot; reads at a past one bypass it.
        let key = at_ts.is_none().then(|| crate::query_cache::CacheKey {
            generation: deployment.generation,
            module: function.info.module_path.clone(),
            export: function.info.name.clone(),
            args: nimbus_types::json::encode_text(&args),
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
        let (host, outcome) = self.execute(deployment, function, name, args, txn).await?;
        let documents_scanned = host.txn.stats().documents_scanned;
        if let Some(error) = host.system_error {
            return Err(system_error(self.name(), error));
        }
        let result = finish_result(function, outcome.result, &host.txn)
            .map(|value| Arc::new(SharedValue::new(value)));
        if let (Ok(value), Some(key)) = (&result, key) {
            let finished = host.txn.finish();
            self.query_cache
                .lock()
                .insert(key, snapshot_ts, finished.read_set, value.clone());
        }
        Ok(FunctionResponse {
            result,
            log_lines: outcome.log_lines,
            documents_scanned,
            execution: outcome.cpu_time,
            ts,
            cached: false,
        })
    }

    async fn run_mutation(
        &self,
        deployment: &Arc<crate::deployment::Deployment>,
        function: &Arc<CompiledFunction>,
        name: &str,
        args: Value,
    ) -> Result<FunctionResponse, AppError> {
        let mut attempt = 0;
        // Held from the OPTIMISTIC_ATTEMPTS-th conflict on: such retries of this tenant run one
        // at a time, so a hot document cannot starve a mutation through endless stampedes.
        let mut retry_turn: Option<tokio::sync::MutexGuard<'_, ()>> = None;
        loop {
            attempt += 1;
            let txn = self.engine().begin();
            if let Err(message) = check_args(function, &args, &txn) {
                return Ok(FunctionResponse::failure(
                    "ArgumentValidationError",
                    message,
                    txn.snapshot().ts.0,
                ));
            }
            let started = Instant::now();
            let (host, outcome) = self
                .execute(deployment, function, name, args.clone(), txn)
                .await?;
            if let Some(error) = host.system_error {
                return Err(system_error(self.name(), error));
            }
            let documents_scanned = host.txn.stats().documents_scanned;
            let result = finish_result(function, outcome.result, &host.txn)
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
            match self.engine().commit(host.txn.finish()).await {
                Ok(ts) => {
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
                    tracing::debug!(tenant = self.name(), %name, attempt, %reason, elapsed_us = started.elapsed().as_micros() as u64, "mutation conflict, retrying");
                    if attempt < OPTIMISTIC_ATTEMPTS {
                        // Most conflicts are two writers meeting once: back off a little,
                        // at random, and try again on a fresh snapshot.
                        let jitter_us = rand::random::<u64>() % (1_000 * attempt as u64);
                        tokio::time::sleep(Duration::from_micros(jitter_us)).await;
                    } else if retry_turn.is_none() {
                        retry_turn = Some(self.retry_lock().lock().await);
                    }
                    continue;
                }
                Err(EngineError::Conflict(reason)) => {
                    return Err(AppError::Overloaded {
                        tenant: self.name().to_string(),
                        detail: format!(
                            "{name} conflicted with concurrent writes {attempt} times ({reason}); \
                             retry later"
                        ),
                        retry_after_secs: 1,
                    })
                }
                Err(other) => return Err(AppError::from_engine(self.name(), other)),
            }
        }
    }

    async fn execute(
        &self,
        deployment: &Arc<crate::deployment::Deployment>,
        function: &Arc<CompiledFunction>,
        name: &str,
        args: Value,
        txn: nimbus_engine::Transaction,
    ) -> Result<(TxnHost, nimbus_runtime::Outcome), AppError> {
        let args_json = format!("[{}]", nimbus_types::json::encode_text(&args));
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0);
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
        };
        let host = TxnHost {
            txn,
            kind: function.info.kind,
            schema: deployment.schema.clone(),
            function_name: name.to_string(),
            system_error: None,
        };
        let _running = self.acquire_worker().await?;
        self.pool()
            .invoke(invocation, host)
            .await
            .map_err(|e| AppError::Overloaded {
                tenant: self.name().to_string(),
                detail: e.to_string(),
                retry_after_secs: 1,
            })
    }
}

fn system_error(tenant: &str, error: EngineError) -> AppError {
    match error.class() {
        ErrorClass::Overloaded | ErrorClass::Unavailable => AppError::from_engine(tenant, error),
        ErrorClass::User | ErrorClass::Conflict | ErrorClass::Internal => {
            AppError::Internal(error.to_string())
        }
    }
}

/// A live query's evaluation (see [`Tenant::evaluate_live`]).
pub(crate) struct LiveEvaluation {
    pub result: Result<Value, FunctionFailure>,
    pub log_lines: Vec<String>,
    pub read_set: nimbus_engine::ReadSet,
}

/// Finds a callable function: it exists, the caller may call it, and it is of the kind the
/// endpoint expects. Returns it with its display name (`module:export`).
fn resolve(
    deployment: &crate::deployment::Deployment,
    path: &str,
    kind: Option<FunctionKind>,
    caller: Caller,
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
        Some(f) if f.info.public || caller == Caller::Admin => f.clone(),
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

fn check_args(
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
fn finish_result(
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

//! Running actions: the async side of `nimbus_runtime`'s stepped actions.
//!
//! An action's JavaScript runs on a pool worker only while it has work; every operation it
//! starts (`ctx.runQuery`, `ctx.runMutation`, `ctx.runAction`, `fetch`, a timer) comes back
//! here and runs on the async runtime, concurrently with the action's other operations.
//! When at least one has finished, the action is resumed with every result ready by then.
//! Each nested query or mutation is its own transaction in the same tenant, admitted and
//! counted like any other call of the tenant.
//!
//! Bounds (see [`ActionLimits`]): actions alive per tenant (more are refused with 429 at
//! once), wall time of one action, nesting depth of `ctx.runAction`, and, from the
//! runtime, CPU time, heap and operations in flight per action.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use nimbus_runtime::{ActionStep, AsyncOp, FunctionKind, Invocation, OpResult, OpValue, PoolError};
use nimbus_types::json::encode;
use nimbus_types::Value;
use serde_json::{json, Value as Json};

use crate::error::AppError;
use crate::execute::{Caller, FunctionRequest, FunctionResponse, Resolved};
use crate::tenant::Tenant;

/// Bounds of actions.
#[derive(Debug, Clone)]
pub struct ActionLimits {
    /// Wall time of one action, waiting included (Convex allows 10 minutes).
    pub timeout: Duration,
    /// Actions of one tenant alive at once; more are refused with 429.
    pub per_tenant: usize,
    /// `ctx.runAction` inside `ctx.runAction` ... at most this deep.
    pub max_depth: u32,
}

impl Default for ActionLimits {
    fn default() -> Self {
        ActionLimits {
            timeout: Duration::from_secs(600),
            per_tenant: 64,
            max_depth: 8,
        }
    }
}

/// The boxed future of one operation: its id and result.
type OpFuture<'a> = Pin<Box<dyn Future<Output = (u64, OpResult)> + Send + 'a>>;

/// What every operation of one action shares.
pub(crate) struct ActionContext {
    pub caller: Caller,
    pub function_name: String,
    pub request_id: String,
    pub depth: u32,
    pub deadline: Instant,
    /// What it scheduled so far (the per-call limits).
    pub scheduled: tokio::sync::Mutex<crate::scheduler::ScheduledByCall>,
}

impl Tenant {
    /// Runs an action to its end (or its time limit).
    pub(crate) async fn run_action(
        &self,
        resolved: Resolved,
        caller: &Caller,
        args: Value,
        depth: u32,
    ) -> Result<FunctionResponse, AppError> {
        let started = Instant::now();
        let limits = &self.config.actions;
        let ts = resolved.snapshot.ts.0;
        if depth > limits.max_depth {
            return Ok(FunctionResponse::failure(
                "UncaughtError",
                format!(
                    "{}: actions calling actions are nested more than {} deep",
                    resolved.name, limits.max_depth
                ),
                ts,
            ));
        }
        let _alive = self.admit_action()?;
        {
            let txn = self.engine().begin_at(resolved.snapshot.clone());
            if let Err(message) = crate::execute::check_args(&resolved.function, &args, &txn) {
                return Ok(FunctionResponse::failure(
                    "ArgumentValidationError",
                    message,
                    ts,
                ));
            }
        }
        let context = ActionContext {
            caller: Caller::Function(caller.identity().cloned()),
            function_name: resolved.name.clone(),
            request_id: hex::encode(rand::random::<[u8; 8]>()),
            depth,
            deadline: started + limits.timeout,
            scheduled: Default::default(),
        };
        let invocation = Invocation {
            tenant: self.name_arc(),
            modules: resolved.deployment.module_set.clone(),
            module_path: resolved.function.info.module_path.clone(),
            export_name: resolved.function.info.name.clone(),
            kind: FunctionKind::Action,
            args_json: format!("[{}]", nimbus_types::json::encode_text(&args)),
            rng_seed: rand::random(),
            now_ms: crate::execute::now_ms(),
            request_id: context.request_id.clone(),
            system_env: self.system_env(),
            http: None,
            limits: Some(self.call_limits()),
        };
        let Some(outcome) = self.drive(invocation, &context).await? else {
            return Ok(FunctionResponse::failure(
                "FunctionTimeout",
                format!(
                    "{} timed out: actions may run for at most {} s",
                    resolved.name,
                    limits.timeout.as_secs()
                ),
                ts,
            ));
        };
        let txn = self.engine().begin_at(self.engine().snapshot());
        let result = crate::execute::finish_result(&resolved.function, outcome.result, &txn);
        Ok(FunctionResponse {
            result: result.map(|value| Arc::new(nimbus_types::json::SharedValue::new(value))),
            log_lines: outcome.log_lines,
            documents_scanned: 0,
            execution: outcome.cpu_time,
            ts: self.latest_ts(),
            cached: false,
        })
    }

    /// Runs an action's steps, performing the operations of each, until it ends; `None`
    /// when it passed its deadline first (dropping the handle drops its isolate).
    pub(crate) async fn drive(
        &self,
        invocation: Invocation,
        context: &ActionContext,
    ) -> Result<Option<nimbus_runtime::Outcome>, AppError> {
        let (mut handle, mut step) = {
            let _running = self.acquire_worker().await?;
            self.pool()
                .start_action(invocation)
                .await
                .map_err(|e| self.pool_error(e))?
        };
        let mut in_flight: FuturesUnordered<OpFuture<'_>> = FuturesUnordered::new();
        loop {
            match step {
                ActionStep::Done(outcome) => {
                    self.cpu.record(outcome.cpu_time);
                    return Ok(Some(outcome));
                }
                ActionStep::Pending(ops) => {
                    for op in ops {
                        in_flight.push(self.perform(op, context));
                    }
                }
            }
            let next = tokio::time::timeout_at(context.deadline.into(), in_flight.next());
            let first = match next.await {
                Ok(Some(result)) => result,
                Ok(None) => {
                    return Err(AppError::Internal(
                        "an action waited with no operation in flight".into(),
                    ))
                }
                Err(_) => return Ok(None),
            };
            let mut results = vec![first];
            while let Some(Some(ready)) = in_flight.next().now_or_never() {
                results.push(ready);
            }
            let _running = self.acquire_worker().await?;
            step = handle
                .resume(results)
                .await
                .map_err(|e| self.pool_error(e))?;
        }
    }

    fn pool_error(&self, error: PoolError) -> AppError {
        AppError::Overloaded {
            tenant: self.name().to_string(),
            detail: error.to_string(),
            retry_after_secs: 1,
            limit: crate::limits::WORKER_POOL,
        }
    }

    /// Performs one operation an action started.
    fn perform<'a>(&'a self, op: AsyncOp, context: &'a ActionContext) -> OpFuture<'a> {
        Box::pin(async move {
            let id = op.id;
            let result = match serde_json::from_str::<Json>(&op.args_json) {
                Ok(args) => self.perform_parsed(&op.op, args, op.body, context).await,
                Err(e) => Err(op_error(format!("{}: arguments are not JSON: {e}", op.op))),
            };
            (id, result)
        })
    }

    async fn perform_parsed(
        &self,
        op: &str,
        args: Json,
        body: Option<Vec<u8>>,
        context: &ActionContext,
    ) -> OpResult {
        match op {
            "1.0/actions/query" => self.nested(FunctionKind::Query, &args, context).await,
            "1.0/actions/mutation" => self.nested(FunctionKind::Mutation, &args, context).await,
            "1.0/actions/action" => self.nested(FunctionKind::Action, &args, context).await,
            "1.0/getUserIdentity" => Ok(OpValue::json(
                context
                    .caller
                    .identity()
                    .map_or(Json::Null, |identity| encode(identity.value()))
                    .to_string(),
            )),
            "1.0/getFunctionMetadata" => Ok(OpValue::json(
                json!({"name": context.function_name, "componentPath": ""}).to_string(),
            )),
            "1.0/getRequestMetadata" => Ok(OpValue::json(
                json!({
                    "ip": null, "userAgent": null, "requestId": context.request_id,
                    "scheduledFunctionId": null, "authToken": null
                })
                .to_string(),
            )),
            "nimbus/sleep" => {
                let ms = args
                    .get("ms")
                    .and_then(Json::as_f64)
                    .unwrap_or(0.0)
                    .max(0.0);
                // A sleep past the action's deadline never ends: the deadline ends the
                // action first (and drops this future).
                let ms = ms.min(
                    context
                        .deadline
                        .saturating_duration_since(Instant::now())
                        .as_millis() as f64
                        + 1_000.0,
                );
                tokio::time::sleep(Duration::from_secs_f64(ms / 1000.0)).await;
                Ok(OpValue::json("null".into()))
            }
            "nimbus/fetch" => {
                let request = serde_json::from_value(args)
                    .map_err(|e| op_error(format!("fetch: malformed request: {e}")))?;
                let _turn = self.fetch_turn().await.map_err(op_error)?;
                let time_left = context.deadline.saturating_duration_since(Instant::now());
                self.fetcher()
                    .fetch(request, body, time_left)
                    .await
                    .map_err(op_error)
            }
            "1.0/actions/schedule" | "1.0/actions/cancel_job" => self
                .schedule_from_action(op, &args, &context.scheduled)
                .await
                .map(|value| OpValue::json(value.to_string()))
                .map_err(op_error),
            "1.0/actions/vectorSearch" => {
                Err(op_error("vector search is not supported by Nimbus".into()))
            }
            other => Err(op_error(format!(
                "Unknown async operation {other}: Nimbus does not implement it in actions"
            ))),
        }
    }

    /// `ctx.runQuery` / `runMutation` / `runAction`: a call of its own in this tenant, by
    /// the same user, allowed to reach internal functions.
    async fn nested(&self, kind: FunctionKind, args: &Json, context: &ActionContext) -> OpResult {
        let name = match crate::deployment::syscall_function_path(args) {
            Ok(name) => name,
            Err(what) => {
                let what = what.unwrap_or("a call without a function name");
                return Err(op_error(format!("Nimbus does not support {what} yet")));
            }
        };
        let request = FunctionRequest {
            path: name.to_string(),
            args: args.get("args").cloned().unwrap_or(Json::Null),
            kind: Some(kind),
            caller: context.caller.clone(),
            at_ts: None,
        };
        let run: Pin<Box<dyn Future<Output = Result<FunctionResponse, AppError>> + Send + '_>> =
            Box::pin(self.run_nested(request, context.depth + 1));
        match run.await {
            Ok(FunctionResponse {
                result: Ok(value), ..
            }) => Ok(OpValue::json(value.encoded_json().to_string())),
            Ok(FunctionResponse {
                result: Err(failure),
                ..
            }) => Err(nimbus_runtime::SyscallError {
                message: failure.message,
                data_json: failure.data.as_ref().map(|data| encode(data).to_string()),
            }),
            Err(error) => Err(op_error(error.to_string())),
        }
    }
}

fn op_error(message: String) -> nimbus_runtime::SyscallError {
    nimbus_runtime::SyscallError {
        message,
        data_json: None,
    }
}

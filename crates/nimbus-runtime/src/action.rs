//! Actions: calls that run outside a transaction and wait for the outside world.
//!
//! An action runs in a fresh isolate of its own (never a cached one: its globals, timers
//! and pending promises belong to it alone) and proceeds in *steps*. A step runs
//! JavaScript until nothing is left to do but wait; every async operation it started
//! (`ctx.runQuery`, `fetch`, a timer, ...) is handed to the caller as an [`AsyncOp`], and
//! the step ends with [`ActionStep::Pending`]. The caller performs the operations however
//! it likes (concurrently, on the async runtime) and resumes the action with their
//! results. Between steps the isolate is parked on its worker thread and the thread runs
//! other calls: a waiting action holds no thread.
//!
//! Bounds: the CPU time of all steps together is limited ([`RuntimeLimits::action_cpu_time`]),
//! the heap by the runtime's memory limit, and the operations in flight at once by
//! [`MAX_OPS_IN_FLIGHT`] (starting one more throws in JavaScript).

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;
use std::time::Duration;

use serde_json::Value as Json;

use crate::isolate::Isolate;
use crate::vm::{Arg, Engine, Vm, VmFailure};
use crate::{FunctionError, Invocation, Outcome, RuntimeLimits, SyscallError};

/// Operations one action may have started and not yet seen answered.
pub const MAX_OPS_IN_FLIGHT: usize = 256;

/// One asynchronous operation an action started.
#[derive(Debug, Clone)]
pub struct AsyncOp {
    /// Unique within the action; the result is matched to the operation by it.
    pub id: u64,
    /// `1.0/actions/query`, `nimbus/fetch`, `nimbus/sleep`, ...
    pub op: String,
    /// JSON text of the operation's arguments.
    pub args_json: String,
    /// Binary payload (a fetch request body), if any.
    pub body: Option<Vec<u8>>,
}

/// The answer to an [`AsyncOp`].
#[derive(Debug, Clone)]
pub struct OpValue {
    /// JSON text handed to JavaScript.
    pub json: String,
    /// Binary payload (a fetch response body), handed over as an `ArrayBuffer`.
    pub body: Option<Vec<u8>>,
}

impl OpValue {
    pub fn json(json: String) -> OpValue {
        OpValue { json, body: None }
    }
}

pub type OpResult = Result<OpValue, SyscallError>;

/// Where an action stands after a step.
#[derive(Debug)]
pub enum ActionStep {
    /// Waiting: these operations were started in this step (others may still be in flight
    /// from earlier steps). Resume with results as they arrive.
    Pending(Vec<AsyncOp>),
    /// Finished; `cpu_time` in the outcome is the sum over all steps.
    Done(Outcome),
}

/// Operations JavaScript started, shared between the isolate's native function and the
/// stepping code.
#[derive(Debug, Default)]
pub(crate) struct OpQueue {
    /// Whether this isolate runs an action (queries and mutations may not start ops).
    pub enabled: bool,
    next_id: u64,
    /// Started in the current step, not yet handed to the caller.
    requested: Vec<AsyncOp>,
    /// Handed to the caller, not yet answered.
    outstanding: HashSet<u64>,
}

pub(crate) type OpSlot = Rc<RefCell<OpQueue>>;

/// The native side of `Convex.asyncSyscall` in an action: records the op and returns
/// `o<id>`, or `e<message>` when it cannot be started.
pub(crate) fn start_op(
    slot: &OpSlot,
    op: String,
    args_json: String,
    body: Option<String>,
) -> String {
    let mut queue = slot.borrow_mut();
    if !queue.enabled {
        return format!("e{op} can only be started in an action");
    }
    if queue.requested.len() + queue.outstanding.len() >= MAX_OPS_IN_FLIGHT {
        return format!(
            "e{op}: this action already has {MAX_OPS_IN_FLIGHT} operations in flight; \
             await some before starting more"
        );
    }
    let body = match body.map(|text| latin1_bytes(&text)).transpose() {
        Ok(body) => body,
        Err(message) => return format!("e{op}: {message}"),
    };
    queue.next_id += 1;
    let id = queue.next_id;
    queue.requested.push(AsyncOp {
        id,
        op,
        args_json,
        body,
    });
    format!("o{id}")
}

/// The bytes of a "binary string" (each character one byte), as JavaScript hands them over.
pub(crate) fn latin1_bytes(text: &str) -> Result<Vec<u8>, String> {
    text.chars()
        .map(|c| {
            u8::try_from(u32::from(c))
                .map_err(|_| "binary data held a character above U+00FF".to_string())
        })
        .collect()
}

/// A running action: its isolate, parked on a worker between steps.
pub(crate) struct ActionState {
    isolate: Isolate,
    invocation: Invocation,
    cpu_used: Duration,
    cpu_limit: Duration,
}

impl ActionState {
    /// Builds the action's isolate (from `spare`, a blank runtime, when it fits the
    /// action's limits) and runs its first step.
    pub fn start(
        engine: Engine,
        spare: Option<Isolate>,
        invocation: Invocation,
        limits: &RuntimeLimits,
    ) -> (Option<ActionState>, ActionStep) {
        let mut own_limits = limits.clone();
        if let Some(call) = invocation.limits {
            own_limits.memory_bytes = call.memory_bytes;
        }
        let isolate = match Isolate::from_spare(
            spare,
            engine,
            &invocation.modules,
            &invocation.system_env,
            &own_limits,
        ) {
            Ok(isolate) => isolate,
            Err(message) => {
                let error =
                    FunctionError::Internal(format!("cannot load the tenant's code: {message}"));
                return (None, done(Err(error), Vec::new(), Duration::ZERO));
            }
        };
        isolate.ops().borrow_mut().enabled = true;
        let mut state = ActionState {
            isolate,
            invocation,
            cpu_used: Duration::ZERO,
            cpu_limit: limits.action_cpu_time,
        };
        let inv = state.invocation.clone();
        let step = state.step(|vm| {
            vm.call(
                "__nimbus_begin",
                &[
                    Arg::Number(f64::from((inv.rng_seed >> 32) as u32)),
                    Arg::Number(f64::from(inv.rng_seed as u32)),
                    Arg::Number(inv.now_ms),
                    Arg::Bool(true),
                ],
            )?;
            if let Some(http) = &inv.http {
                return vm
                    .call(
                        "__nimbus_http",
                        &[Arg::Str(&http.meta_json), Arg::Bytes(&http.body)],
                    )
                    .map(drop);
            }
            vm.call(
                "__nimbus_invoke",
                &[
                    Arg::Str(&inv.module_path),
                    Arg::Str(&inv.export_name),
                    Arg::Str(inv.kind.js_name()),
                    Arg::Str(&inv.args_json),
                    Arg::Str(&inv.request_id),
                ],
            )
            .map(drop)
        });
        state.settle(step)
    }

    /// Hands results of earlier operations to JavaScript and runs until it waits again.
    /// Results of operations the action does not wait for (any more) are ignored.
    pub fn resume(mut self, results: Vec<(u64, OpResult)>) -> (Option<ActionState>, ActionStep) {
        let results: Vec<(u64, OpResult)> = {
            let mut queue = self.isolate.ops().borrow_mut();
            results
                .into_iter()
                .filter(|(id, _)| queue.outstanding.remove(id))
                .collect()
        };
        let step = self.step(move |vm| {
            for (id, result) in results {
                let id = Arg::Number(id as f64);
                match &result {
                    Ok(OpValue { json, body }) => vm.call(
                        "__nimbus_settle",
                        &[
                            id,
                            Arg::Bool(true),
                            Arg::Str(json),
                            body.as_deref().map_or(Arg::Undefined, Arg::Bytes),
                        ],
                    )?,
                    Err(error) => vm.call(
                        "__nimbus_settle",
                        &[
                            id,
                            Arg::Bool(false),
                            Arg::Str(&failure_json(error)),
                            Arg::Undefined,
                        ],
                    )?,
                };
            }
            Ok(())
        });
        self.settle(step)
    }

    /// Runs one step within what is left of the CPU budget.
    fn step(&mut self, start: impl FnOnce(&mut Vm) -> Result<(), VmFailure>) -> StepEnd {
        let budget = self.cpu_limit.saturating_sub(self.cpu_used);
        let (elapsed, failure) = self.isolate.drive(budget, start);
        self.cpu_used += elapsed;
        if self.isolate.interrupted() || self.cpu_used >= self.cpu_limit {
            return StepEnd::Failed(FunctionError::Timeout {
                limit: self.cpu_limit,
            });
        }
        if failure == Some(VmFailure::OutOfMemory) {
            return StepEnd::Failed(FunctionError::OutOfMemory {
                limit_bytes: self.isolate.vm().memory_limit(),
            });
        }
        let failure = failure.map(|f| f.to_string());
        match self.isolate.vm().call("__nimbus_settled", &[]) {
            Ok(Some(state)) if state == "settled" => StepEnd::Settled(failure),
            Ok(_) => StepEnd::Waiting,
            Err(e) => StepEnd::Failed(FunctionError::Internal(
                failure.unwrap_or_else(|| e.to_string()),
            )),
        }
    }

    /// Turns the end of a step into what the caller sees; the state survives only while the
    /// action waits.
    fn settle(mut self, end: StepEnd) -> (Option<ActionState>, ActionStep) {
        match end {
            StepEnd::Failed(error) => {
                let logs = self
                    .isolate
                    .finish(None)
                    .map(|(_, logs)| logs)
                    .unwrap_or_default();
                (None, done(Err(error), logs, self.cpu_used))
            }
            StepEnd::Settled(failure) => {
                let (result, logs) = match self.isolate.finish(failure) {
                    Ok((outcome, logs)) => {
                        (self.isolate.interpret(&self.invocation, &outcome), logs)
                    }
                    Err(error) => (Err(error), Vec::new()),
                };
                (None, done(result, logs, self.cpu_used))
            }
            StepEnd::Waiting => {
                let started: Vec<AsyncOp> = {
                    let mut queue = self.isolate.ops().borrow_mut();
                    let started = std::mem::take(&mut queue.requested);
                    queue.outstanding.extend(started.iter().map(|op| op.id));
                    started
                };
                if started.is_empty() && self.isolate.ops().borrow().outstanding.is_empty() {
                    // Nothing can ever wake it: a promise awaited that no operation settles.
                    let logs = self
                        .isolate
                        .finish(None)
                        .map(|(_, logs)| logs)
                        .unwrap_or_default();
                    return (
                        None,
                        done(
                            Err(FunctionError::NeverSettled("action")),
                            logs,
                            self.cpu_used,
                        ),
                    );
                }
                (Some(self), ActionStep::Pending(started))
            }
        }
    }
}

enum StepEnd {
    /// The function's promise settled (the outcome is set); an exception that escaped a
    /// job on the way, if any.
    Settled(Option<String>),
    Waiting,
    Failed(FunctionError),
}

fn done(
    result: Result<String, FunctionError>,
    log_lines: Vec<String>,
    cpu_time: Duration,
) -> ActionStep {
    ActionStep::Done(Outcome {
        result,
        log_lines,
        cpu_time,
    })
}

/// `{message, data?}`: what a rejected operation hands to JavaScript.
fn failure_json(error: &SyscallError) -> String {
    let mut body = serde_json::json!({ "message": error.message });
    if let Some(data) = error
        .data_json
        .as_deref()
        .and_then(|d| serde_json::from_str::<Json>(d).ok())
    {
        body["data"] = data;
    }
    body.to_string()
}

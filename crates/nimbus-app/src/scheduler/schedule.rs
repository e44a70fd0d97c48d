//! Scheduling and canceling: `1.0/schedule` and `1.0/cancel_job` in a mutation's
//! transaction, and their action forms, each in a transaction of its own.

use super::*;

/// What one call has scheduled so far (its limits are per call).
#[derive(Debug, Default)]
pub(crate) struct ScheduledByCall {
    pub count: usize,
    pub args_bytes: usize,
    /// The soonest due time scheduled (ms since the epoch).
    pub earliest_ms: Option<f64>,
    /// Jobs canceled.
    pub canceled: usize,
}

impl ScheduledByCall {
    /// The instance record must be this soon before the commit is acknowledged.
    pub fn earliest_due(&self) -> Option<i64> {
        self.earliest_ms.map(|due| due.floor() as i64)
    }

    /// Whether the scheduler should look again once the call commits.
    pub fn changed_jobs(&self) -> bool {
        self.count > 0 || self.canceled > 0
    }
}

/// Validates a `1.0/schedule` request and writes the job into `txn`; returns its ID.
/// Errors are the caller's (messages for the function), except engine failures.
pub(crate) fn schedule(
    txn: &mut Transaction,
    deployment: &Deployment,
    config: &SchedulerConfig,
    so_far: &mut ScheduledByCall,
    args: &Json,
) -> Result<String, ScheduleError> {
    let fail = |message: String| Err(ScheduleError::User(message));
    let name = match crate::deployment::syscall_function_path(args) {
        Ok(name) => name,
        Err(Some(what)) => return fail(format!("scheduler: Nimbus does not support {what} yet")),
        Err(None) => return fail("scheduler: the call names no function".into()),
    };
    let Some((module, export)) = canonical_path(name) else {
        return fail(format!("scheduler: invalid function path {name:?}"));
    };
    let display = crate::deployment::display_name(&module, &export);
    let Some(function) = deployment.functions.get(&(module.clone(), export.clone())) else {
        return fail(format!(
            "Attempted to schedule function at nonexistent path: {display}. Did you forget to \
             push it?"
        ));
    };
    if function.info.kind == FunctionKind::Query {
        return fail(format!(
            "Cannot schedule {display}: it is a query; only mutations and actions can be scheduled"
        ));
    }
    let ts = match args.get("ts").and_then(Json::as_f64) {
        Some(ts) if ts.is_finite() => ts,
        _ => {
            return fail(format!(
                "Cannot schedule {display}: the time to run it is not a valid date"
            ))
        }
    };
    let due_ms = ts * 1000.0;
    if due_ms < 0.0 {
        return fail(format!(
            "Cannot schedule {display}: the time to run it is before 1970 ({due_ms} ms); a \
             delay must be non-negative"
        ));
    }
    if due_ms > MAX_DUE_MS {
        return fail(format!(
            "Cannot schedule {display}: the time to run it is after the year 9999"
        ));
    }
    let args_value = match args.get("args").map(decode) {
        Some(Ok(value @ Value::Object(_))) => value,
        None | Some(Ok(Value::Null)) => Value::Object(Object::new()),
        Some(Ok(other)) => {
            return fail(format!(
                "Cannot schedule {display}: its arguments must be an object, not {}",
                other.type_name()
            ))
        }
        Some(Err(e)) => {
            return fail(format!(
                "Cannot schedule {display}: its arguments are not Convex values: {e}"
            ))
        }
    };
    if let Err(e) = function
        .args
        .check(&args_value, &crate::syscalls::IdsOf(txn))
    {
        return fail(format!(
            "ArgumentValidationError: scheduling {display}: {e}"
        ));
    }
    let args_bytes = nimbus_types::json::encode_text(&args_value).len();
    if so_far.count + 1 > config.max_per_call {
        return fail(format!(
            "Cannot schedule {display}: one function call may schedule at most {} functions",
            config.max_per_call
        ));
    }
    if so_far.args_bytes + args_bytes > config.max_args_bytes_per_call {
        return fail(format!(
            "Cannot schedule {display}: the arguments of the functions one call schedules may \
             total at most {} bytes",
            config.max_args_bytes_per_call
        ));
    }
    let mut fields = Object::new();
    fields.insert("name".into(), Value::String(format!("{module}:{export}")));
    fields.insert("args".into(), Value::Array(vec![args_value]));
    fields.insert("scheduledTime".into(), Value::Float64(due_ms));
    fields.insert("state".into(), state("pending", None));
    let id = txn
        .insert(SCHEDULED, fields)
        .map_err(ScheduleError::Engine)?;
    so_far.count += 1;
    so_far.args_bytes += args_bytes;
    so_far.earliest_ms = Some(so_far.earliest_ms.map_or(due_ms, |e| e.min(due_ms)));
    Ok(txn.encode_id(id))
}

/// Why scheduling or canceling failed.
#[derive(Debug)]
pub(crate) enum ScheduleError {
    /// The function's fault: reported to it as an exception.
    User(String),
    Engine(EngineError),
}

/// `1.0/cancel_job`: a pending or running job becomes `canceled`; a finished one is left
/// as it is. `running` is the job the calling mutation runs as, which cannot cancel itself.
pub(crate) fn cancel(
    txn: &mut Transaction,
    args: &Json,
    running: Option<&DocumentId>,
) -> Result<(), ScheduleError> {
    let Some(text) = args.get("id").and_then(Json::as_str) else {
        return Err(ScheduleError::User("scheduler.cancel: missing `id`".into()));
    };
    let id = match txn.decode_id(text) {
        Ok(id) if txn.table_name_of(&id) == Some(SCHEDULED) => id,
        _ => {
            return Err(ScheduleError::User(format!(
                "scheduler.cancel: {text:?} is not the ID of a scheduled function"
            )))
        }
    };
    if running == Some(&id) {
        return Err(ScheduleError::User(
            "scheduler.cancel: a scheduled function cannot cancel itself while it runs".into(),
        ));
    }
    let Some(doc) = txn.get(&id).map_err(ScheduleError::Engine)? else {
        return Err(ScheduleError::User(format!(
            "scheduler.cancel: no scheduled function has the ID {text:?} (finished jobs are \
             deleted after their retention period)"
        )));
    };
    if matches!(state_kind(&doc), Some("pending" | "inProgress")) {
        let changes = BTreeMap::from([
            ("state".to_string(), Some(state("canceled", None))),
            ("completedTime".to_string(), Some(Value::Float64(now_ms()))),
        ]);
        txn.patch(&id, changes).map_err(ScheduleError::Engine)?;
    }
    Ok(())
}

impl Tenant {
    /// `1.0/actions/schedule` and `1.0/actions/cancel_job`: a transaction of their own,
    /// committed before the action goes on (Convex: scheduling from an action takes effect
    /// at once).
    pub(crate) async fn schedule_from_action(
        &self,
        op: &str,
        args: &Json,
        so_far: &tokio::sync::Mutex<ScheduledByCall>,
    ) -> Result<Json, String> {
        // One scheduling operation of an action at a time, so its per-call limits hold
        // however many it starts at once.
        let mut so_far = so_far.lock().await;
        for attempt in 1.. {
            let snapshot = self.engine().snapshot();
            let deployment = deployment_of(&snapshot);
            let mut txn = self.engine().begin_at(snapshot);
            // Counted for real only once committed.
            let mut counted = ScheduledByCall {
                count: so_far.count,
                args_bytes: so_far.args_bytes,
                earliest_ms: None,
                canceled: 0,
            };
            let outcome = if op == "1.0/actions/schedule" {
                schedule(
                    &mut txn,
                    &deployment,
                    &self.scheduler.config,
                    &mut counted,
                    args,
                )
                .map(Json::String)
            } else {
                cancel(&mut txn, args, None).map(|()| Json::Null)
            };
            let value = match outcome {
                Ok(value) => value,
                Err(ScheduleError::User(message)) => return Err(message),
                Err(ScheduleError::Engine(error)) => return Err(format!("scheduler: {error}")),
            };
            self.scheduler
                .lower_record(self.name(), counted.earliest_due())
                .await;
            match self.engine().commit(txn.finish()).await {
                Ok(_) => {
                    so_far.count = counted.count;
                    so_far.args_bytes = counted.args_bytes;
                    self.scheduler.wake();
                    return Ok(value);
                }
                Err(error) if error.class() == ErrorClass::Conflict && attempt < 5 => continue,
                Err(error) => return Err(format!("scheduler: {error}")),
            }
        }
        Err("scheduler: gave up after repeated conflicts".into())
    }
}

//! Running one job to its recorded outcome: mutations with their completion in their own
//! transaction (exactly once), actions marked before and recorded after (at most once).

use super::*;

/// At the start of a scheduled mutation's transaction: whether the job is still to run
/// (pending, and for a cron run, its cron still deployed in this snapshot); if so it is
/// shown `inProgress` to the function.
pub(crate) fn begin_job(txn: &mut Transaction, job: &JobRef) -> Result<bool, EngineError> {
    let Some(doc) = txn.get(&job.id)? else {
        return Ok(false);
    };
    if state_kind(&doc) != Some("pending") {
        return Ok(false);
    }
    if job.table == JobTable::CronRun && !cron_still_deployed(txn.snapshot(), &doc) {
        finish_job(txn, job, "canceled", None)?;
        return Ok(false);
    }
    let changes = BTreeMap::from([("state".to_string(), Some(state("inProgress", None)))]);
    txn.patch(&job.id, changes)?;
    Ok(true)
}

/// Writes a job's final state into `txn`.
pub(crate) fn finish_job(
    txn: &mut Transaction,
    job: &JobRef,
    kind: &str,
    error: Option<&str>,
) -> Result<(), EngineError> {
    let changes = BTreeMap::from([
        ("state".to_string(), Some(state(kind, error))),
        ("completedTime".to_string(), Some(Value::Float64(now_ms()))),
    ]);
    txn.patch(&job.id, changes).map(|_| ())
}

fn cron_still_deployed(snapshot: &Snapshot, run: &Object) -> bool {
    let deployment = deployment_of(snapshot);
    let (Some(ident), Some(name)) = (string_field(run, "cron"), string_field(run, "name")) else {
        return false;
    };
    deployment
        .crons
        .iter()
        .any(|cron| cron.ident == ident && cron.udf_path() == name)
}

/// Longest error message kept in a job's `failed` state (a function may throw a huge one).
const MAX_ERROR_BYTES: usize = 8 << 10;

/// `message` cut to at most `max` bytes, on a character boundary, marked when cut.
fn truncated(mut message: String, max: usize) -> String {
    if message.len() > max {
        let mut end = max;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str(" [truncated]");
    }
    message
}

/// The failure code of a scheduled mutation's response when its job was no longer pending
/// (canceled, or its cron gone) by the time its transaction read it: nothing to record.
const SKIPPED: &str = "JobNotPending";

impl Tenant {
    /// Runs one job to its recorded outcome. Returns without recording anything only when
    /// the tenant is closing (the job stays as it was and runs after the next opening).
    pub(super) async fn run_job(self: &Arc<Self>, job: JobRef) {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.try_run_job(&job).await {
                Ok(()) => return,
                Err(error) if error.is_retryable() => {
                    // Busy (its own budgets), or its storage is being reopened: the job
                    // waits for its turn, holding its slot.
                    tracing::debug!(tenant = self.name(), job = %job.id_text, %error, "scheduled job waits");
                    if *self.closed_signal().borrow() {
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(error) => {
                    tracing::warn!(tenant = self.name(), job = %job.id_text, %error, "a scheduled job could not run");
                    let _ = self
                        .record_outcome(&job, None, Err(error.to_string()))
                        .await;
                    return;
                }
            }
        }
    }

    async fn try_run_job(self: &Arc<Self>, job: &JobRef) -> Result<(), AppError> {
        let snapshot = self.engine().snapshot();
        let Some(doc) = snapshot
            .get(&job.id)
            .map_err(|e| AppError::from_engine(self.name(), e))?
        else {
            return Ok(());
        };
        let (Some(name), Some(Value::Array(args))) = (string_field(&doc, "name"), doc.get("args"))
        else {
            return self
                .record_outcome(job, None, Err("the job's document is malformed".into()))
                .await;
        };
        let args_json = encode(args.first().unwrap_or(&Value::Object(Object::new())));
        let deployment = deployment_of(&snapshot);
        let kind = canonical_path(name)
            .and_then(|key| deployment.functions.get(&key))
            .map(|f| f.info.kind);
        let request = FunctionRequest {
            path: name.to_string(),
            args: args_json,
            kind: None,
            caller: Caller::Function(None),
            at_ts: None,
        };
        match kind {
            Some(FunctionKind::Action) => {
                match state_kind(&doc) {
                    Some("pending") => {
                        if !self.mark_in_progress(job).await? {
                            return Ok(());
                        }
                    }
                    // Marked by an earlier try of this run, which was refused before it
                    // started (busy): still this process's, so it may start now.
                    Some("inProgress") => {}
                    _ => return Ok(()),
                }
                let response = self.run_scheduled(request, None).await?;
                self.record_outcome(job, Some(&response), Ok(())).await
            }
            Some(FunctionKind::Mutation) => {
                if state_kind(&doc) != Some("pending") {
                    return Ok(());
                }
                let request = FunctionRequest {
                    kind: Some(FunctionKind::Mutation),
                    ..request
                };
                let response = self.run_scheduled(request, Some(job.clone())).await?;
                match &response.result {
                    // Its completion was committed with its writes.
                    Ok(_) => {
                        self.scheduler.succeeded.fetch_add(1, Ordering::Relaxed);
                        Ok(())
                    }
                    Err(failure) if failure.code == SKIPPED => Ok(()),
                    Err(_) => self.record_outcome(job, Some(&response), Ok(())).await,
                }
            }
            // Pushed away since it was scheduled: a mutation or action no longer.
            Some(FunctionKind::Query) | None => {
                if !matches!(state_kind(&doc), Some("pending" | "inProgress")) {
                    return Ok(());
                }
                let why = match kind {
                    Some(_) => format!("{name} is a query now; only mutations and actions run"),
                    None => format!("{name} is no longer deployed"),
                };
                self.record_outcome(job, None, Err(why)).await
            }
        }
    }

    /// Commits `inProgress` for an action about to run; false if it is not pending (or its
    /// cron is no longer deployed).
    async fn mark_in_progress(&self, job: &JobRef) -> Result<bool, AppError> {
        self.change_job(job, false, |txn, doc| {
            if state_kind(doc) != Some("pending") {
                return Ok(None);
            }
            if job.table == JobTable::CronRun && !cron_still_deployed(txn.snapshot(), doc) {
                finish_job(txn, job, "canceled", None)?;
                return Ok(Some(false));
            }
            let changes = BTreeMap::from([("state".to_string(), Some(state("inProgress", None)))]);
            txn.patch(&job.id, changes)?;
            Ok(Some(true))
        })
        .await
    }

    /// Changes a job's document in a transaction of its own, committed with retries on
    /// conflict: `change` sees the current document and writes into the transaction, and
    /// answers `None` to write nothing. A job that is gone answers `absent`.
    async fn change_job<T>(
        &self,
        job: &JobRef,
        absent: T,
        change: impl Fn(&mut Transaction, &Object) -> Result<Option<T>, EngineError>,
    ) -> Result<T, AppError> {
        let engine_error = |e| AppError::from_engine(self.name(), e);
        loop {
            let mut txn = self.engine().begin();
            let Some(doc) = txn.get(&job.id).map_err(engine_error)? else {
                return Ok(absent);
            };
            let Some(answer) = change(&mut txn, &doc).map_err(engine_error)? else {
                return Ok(absent);
            };
            match self.engine().commit(txn.finish()).await {
                Ok(_) => return Ok(answer),
                Err(EngineError::Conflict(_)) => continue,
                Err(error) => return Err(engine_error(error)),
            }
        }
    }

    /// Records a job's outcome: `success` or `failed` with the function's error, unless it
    /// was canceled (or finished) meanwhile. `error` overrides the response (the function
    /// could not be run at all).
    async fn record_outcome(
        &self,
        job: &JobRef,
        response: Option<&FunctionResponse>,
        error: Result<(), String>,
    ) -> Result<(), AppError> {
        let failure = match (error, response) {
            (Err(message), _) => Some(message),
            (Ok(()), Some(FunctionResponse { result: Err(f), .. })) => {
                Some(format!("{}: {}", f.code, f.message))
            }
            _ => None,
        }
        .map(|message| truncated(message, MAX_ERROR_BYTES));
        if failure.is_some() {
            self.scheduler.failed.fetch_add(1, Ordering::Relaxed);
        } else {
            self.scheduler.succeeded.fetch_add(1, Ordering::Relaxed);
        }
        let (kind, error) = match &failure {
            Some(message) => ("failed", Some(message.as_str())),
            None => ("success", None),
        };
        self.change_job(job, (), |txn, doc| {
            if !matches!(state_kind(doc), Some("pending" | "inProgress")) {
                return Ok(None);
            }
            finish_job(txn, job, kind, error).map(Some)
        })
        .await
    }

    /// Marks the scheduled actions a crash cut short (`inProgress` when the tenant opens)
    /// as failed: they run at most once.
    pub(super) async fn fail_interrupted_actions(&self) -> Result<(), AppError> {
        for table in [JobTable::Scheduled, JobTable::CronRun] {
            loop {
                let mut txn = self.engine().begin();
                let query = index_query(
                    table.name(),
                    BY_NEXT,
                    json!([{"type": "Eq", "fieldPath": "state.kind", "value": "inProgress"}]),
                )
                .map_err(|e| AppError::from_engine(self.name(), e))?;
                let mut found = Vec::new();
                let query_id = txn
                    .open_query(&query)
                    .map_err(|e| AppError::from_engine(self.name(), e))?;
                while let Some(doc) = txn
                    .next_in_query(query_id)
                    .map_err(|e| AppError::from_engine(self.name(), e))?
                {
                    if let Some(id) = string_field(&doc, "_id").and_then(|t| txn.decode_id(t).ok())
                    {
                        found.push(id);
                    }
                    if found.len() >= RETENTION_CHUNK {
                        break;
                    }
                }
                txn.close_query(query_id);
                if found.is_empty() {
                    break;
                }
                for id in &found {
                    let job = JobRef {
                        table,
                        id: *id,
                        id_text: String::new(),
                    };
                    finish_job(
                        &mut txn,
                        &job,
                        "failed",
                        Some(
                            "Transient error while executing action: the server stopped while \
                             it ran (scheduled actions run at most once)",
                        ),
                    )
                    .map_err(|e| AppError::from_engine(self.name(), e))?;
                }
                match self.engine().commit(txn.finish()).await {
                    Ok(_) | Err(EngineError::Conflict(_)) => {}
                    Err(error) => return Err(AppError::from_engine(self.name(), error)),
                }
            }
        }
        Ok(())
    }
}

impl AppError {
    /// Whether a job refused with this error should wait and try again.
    fn is_retryable(&self) -> bool {
        matches!(
            self,
            AppError::Overloaded { .. } | AppError::Unavailable { .. }
        )
    }
}

/// A response's failure code for a job that was no longer pending when its turn came.
pub(crate) fn skipped_response(ts: u64) -> FunctionResponse {
    FunctionResponse::failure(SKIPPED, "the job is no longer pending".into(), ts)
}

#[cfg(test)]
mod tests {
    use super::truncated;

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        assert_eq!(truncated("short".into(), 10), "short");
        let cut = truncated("ééééé".into(), 5);
        assert_eq!(cut, "éé [truncated]");
    }
}

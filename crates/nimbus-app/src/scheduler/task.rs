//! The scheduler task of a tenant: one pass per wake-up starts what is due, counts the
//! backlog, and keeps the instance's record of the next due time.

use super::*;

/// Starts the scheduler task of a tenant just opened.
pub(crate) fn start(tenant: &Arc<Tenant>) {
    let weak = Arc::downgrade(tenant);
    let name = tenant.name().to_string();
    tokio::spawn(async move {
        run_loop(weak).await;
        tracing::debug!(tenant = %name, "scheduler task stopped");
    });
}

/// How often the pending backlog is counted (a scan of the pending index).
const COUNT_EVERY: Duration = Duration::from_secs(1);
/// How often finished jobs past retention are deleted.
const RETENTION_EVERY: Duration = Duration::from_secs(60);

async fn run_loop(weak: Weak<Tenant>) {
    let Some((scheduler, engine, name)) = weak.upgrade().map(|t| {
        (
            t.scheduler.clone(),
            t.engine().clone(),
            t.name().to_string(),
        )
    }) else {
        return;
    };
    let mut first = true;
    let mut reconciled: Option<nimbus_runtime::CodeId> = None;
    let mut last_count: Option<std::time::Instant> = None;
    let mut last_retention = std::time::Instant::now();
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(tenant) = current(&weak, &scheduler, &name).await else {
            break;
        };
        let mut closed = tenant.closed_signal();
        if *closed.borrow() {
            break;
        }
        let pass = tenant
            .scheduler_pass(
                &mut first,
                &mut reconciled,
                &mut last_count,
                &mut last_retention,
            )
            .await;
        let sleep = match pass {
            Ok(Pass { next_due, wake_at }) => {
                backoff = Duration::from_millis(100);
                let due = next_due.map(|due| due.floor() as i64);
                scheduler
                    .next_due_ms
                    .store(due.unwrap_or(i64::MIN), Ordering::Relaxed);
                scheduler.lower_record(&name, due).await;
                match wake_at {
                    Some(at) => {
                        let wait_ms = (at - now_ms()).max(0.0);
                        Duration::from_secs_f64(wait_ms / 1000.0).min(MAX_SLEEP)
                    }
                    None => MAX_SLEEP,
                }
            }
            Err(error) => {
                tracing::warn!(tenant = %name, %error, "a scheduler pass failed; retrying");
                backoff = (backoff * 2).min(Duration::from_secs(5));
                backoff
            }
        };
        // Wait holding only the weak reference: an idle tenant may be closed meanwhile
        // (its `closed` sender is then dropped, which ends the wait).
        drop(tenant);
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = scheduler.wake.notified() => {}
            _ = closed.changed() => {}
        }
    }
    // The tenant closed: leave the instance its exact earliest due time, read from its
    // final state (a job committed after the last pass lowered the record itself).
    let due = engine_next_due(&engine).ok().flatten();
    drop(engine);
    scheduler.set_record(&name, due).await;
}

/// The task's tenant, if it is still in service: the one the instance's map holds under
/// this name (found under the map's lock, so never one closed to make room), and the very
/// one this task was started for. Waits while its activation finishes.
async fn current(
    weak: &Weak<Tenant>,
    scheduler: &TenantScheduler,
    name: &str,
) -> Option<Arc<Tenant>> {
    let Some(lookup) = &scheduler.lookup else {
        return weak.upgrade();
    };
    loop {
        match lookup(name) {
            Some(Lookup::Active(tenant)) => {
                return std::ptr::eq(Arc::as_ptr(&tenant), weak.as_ptr()).then_some(tenant);
            }
            // The activation that started this task has not finished yet.
            Some(Lookup::Opening) if weak.strong_count() > 0 => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            _ => return None,
        }
    }
}

/// The earliest due time of a tenant's pending jobs and crons, from its latest snapshot.
fn engine_next_due(engine: &nimbus_engine::TenantEngine) -> Result<Option<i64>, EngineError> {
    let mut txn = engine.begin_internal();
    let mut earliest: Option<f64> = None;
    for table in [SCHEDULED, CRON_RUNS] {
        scan_pending(&mut txn, table, |_, doc| {
            let due = float_field(doc, "scheduledTime").unwrap_or(0.0);
            earliest = Some(earliest.map_or(due, |e: f64| e.min(due)));
            false
        })?;
    }
    for cron in read_crons(&mut txn)? {
        earliest = Some(earliest.map_or(cron.next_ts, |e: f64| e.min(cron.next_ts)));
    }
    Ok(earliest.map(|due| due.floor() as i64))
}

/// What one pass leaves to wait for.
struct Pass {
    /// The earliest due time of what it did not start (perhaps already past, when every
    /// slot is taken): what stats show and the instance's record needs.
    next_due: Option<f64>,
    /// When to look again by the clock: the earliest job or cron run not yet due. Due
    /// jobs left for want of a slot are looked at again when a running one ends (its task
    /// wakes the scheduler), not by spinning.
    wake_at: Option<f64>,
}

fn earliest(a: Option<f64>, b: f64) -> Option<f64> {
    Some(a.map_or(b, |a| a.min(b)))
}

impl Tenant {
    /// One look at the tenant's jobs: reconcile crons after a deploy, start due cron runs
    /// and due jobs (up to the free slots), keep the backlog count and retention. Returns
    /// the next due time of what was not started.
    async fn scheduler_pass(
        self: &Arc<Self>,
        first: &mut bool,
        reconciled: &mut Option<nimbus_runtime::CodeId>,
        last_count: &mut Option<std::time::Instant>,
        last_retention: &mut std::time::Instant,
    ) -> Result<Pass, AppError> {
        let engine_error = |e: EngineError| AppError::from_engine(self.name(), e);
        if *first {
            self.fail_interrupted_actions().await?;
            *first = false;
        }
        let code_id = self.deployment().code_id;
        if *reconciled != Some(code_id) {
            self.reconcile_crons().await.map_err(engine_error)?;
            *reconciled = Some(code_id);
        }
        let now = now_ms();
        let cron_due = self.start_due_crons(now).await.map_err(engine_error)?;
        let mut next_due = cron_due;
        let mut wake_at = cron_due;
        let slots = self
            .scheduler
            .config
            .concurrency_per_tenant
            .max(1)
            .saturating_sub(self.scheduler.running.lock().len());
        let mut to_start = Vec::new();
        let mut txn = self.engine().begin_internal();
        for table in [JobTable::CronRun, JobTable::Scheduled] {
            let running = self.scheduler.running.lock().clone();
            scan_pending(&mut txn, table.name(), |id, doc| {
                if running.contains(&id) {
                    return true;
                }
                let due = float_field(doc, "scheduledTime").unwrap_or(0.0);
                if due > now {
                    next_due = earliest(next_due, due);
                    wake_at = earliest(wake_at, due);
                    return false;
                }
                if to_start.len() >= slots {
                    // Due, but every slot is taken.
                    next_due = earliest(next_due, due);
                    return false;
                }
                to_start.push(JobRef {
                    table,
                    id,
                    id_text: string_field(doc, "_id").unwrap_or_default().to_string(),
                });
                true
            })
            .map_err(engine_error)?;
        }
        // Counted at most once a second while jobs run; when the tenant goes quiet, at
        // once, so the figure never stays stale.
        let quiet = to_start.is_empty() && self.scheduler.running.lock().is_empty();
        if quiet || last_count.is_none_or(|at| at.elapsed() >= COUNT_EVERY) {
            *last_count = Some(std::time::Instant::now());
            let mut pending = 0u64;
            for table in [SCHEDULED, CRON_RUNS] {
                scan_pending(&mut txn, table, |_, _| {
                    pending += 1;
                    pending < PENDING_COUNT_CAP
                })
                .map_err(engine_error)?;
            }
            self.scheduler.pending.store(pending, Ordering::Relaxed);
        }
        drop(txn);
        if !to_start.is_empty() {
            // Running jobs keep the tenant in use (not released as idle).
            self.touch();
        }
        for job in to_start {
            self.scheduler.running.lock().insert(job.id);
            let tenant = self.clone();
            tokio::spawn(async move {
                let id = job.id;
                tenant.run_job(job).await;
                tenant.scheduler.running.lock().remove(&id);
                tenant.scheduler.wake();
            });
        }
        if last_retention.elapsed() >= RETENTION_EVERY {
            *last_retention = std::time::Instant::now();
            self.apply_retention().await.map_err(engine_error)?;
        }
        Ok(Pass { next_due, wake_at })
    }

    /// Prepares a tenant just opened: the scheduler's system tables exist before any call
    /// can schedule, then its task starts.
    pub(crate) async fn start_scheduler(self: &Arc<Self>) -> Result<(), AppError> {
        self.engine()
            .ensure_system_tables(system_tables())
            .await
            .map_err(|e| AppError::from_engine(self.name(), e))?;
        start(self);
        Ok(())
    }
}

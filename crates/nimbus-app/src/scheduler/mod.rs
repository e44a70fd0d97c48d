//! Scheduled functions and cron jobs of a tenant.
//!
//! **Where jobs live.** Every job is a document in the tenant's own namespace, in a system
//! table the engine keeps apart from the pushed schema (deploys never touch its indexes):
//! - `_scheduled_functions`: what `ctx.scheduler.runAfter`/`runAt` created, in Convex's
//!   shape (`name`, `args`, `scheduledTime`, `completedTime`, `state`), readable through
//!   `ctx.db.system`;
//! - `_cron_jobs`: one document per cron of the deployed `crons.js` (its spec, `nextTs`,
//!   `prevTs`), kept in step with the deployment by the tenant's scheduler task;
//! - `_cron_job_logs`: one document per cron run, in the same shape as a scheduled
//!   function (plus `cron`, the cron's identifier), so runs are recorded and executed by
//!   the same code.
//!
//! **Exactly once, at most once.** A scheduled mutation's completion (`success`) is written
//! in the transaction of the mutation itself: the job and its effects commit together or
//! not at all, so after a crash the job is still `pending` and runs again, and a job that
//! committed is never run twice. Inside that transaction the job shows `inProgress`, and it
//! reads its own job document, so a concurrent `cancel` conflicts with it: one of the two
//! wins. A failed mutation writes nothing but the `failed` state. A scheduled action is
//! marked `inProgress` in a commit of its own before it starts and its outcome is recorded
//! after: an action found `inProgress` when a tenant opens was cut short by a crash and is
//! marked `failed`, never re-run.
//!
//! **Who runs them.** Each active tenant has one scheduler task (`task.rs`), holding only
//! a weak reference while it waits, so an idle tenant can still be closed; it takes the
//! tenant for a pass from the instance's map, under the lock where eviction decides, so it
//! never works on one already closed to make room. It starts due
//! jobs in due-time order, at most [`SchedulerConfig::concurrency_per_tenant`] at a time;
//! each run is an ordinary call of the tenant (its in-flight and worker budgets), so one
//! tenant's backlog only ever waits on that tenant's own turns. The earliest due time of a
//! tenant is kept in the instance's control-plane catalog, so that a tenant that is not
//! active (closed while idle, or after a restart) is opened when its next job is due (see
//! `run_waker` in `instance.rs`).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use nimbus_engine::{EngineError, ErrorClass, Snapshot, Transaction, WantedIndexes};
use nimbus_runtime::FunctionKind;
use nimbus_types::json::{decode, encode};
use nimbus_types::query::SerializedQuery;
use nimbus_types::{Document, DocumentId, Object, Value};
use parking_lot::Mutex;
use serde_json::{json, Value as Json};
use tokio::sync::Notify;

use crate::deployment::{canonical_path, Deployment};
use crate::error::AppError;
use crate::execute::{now_ms, Caller, FunctionRequest, FunctionResponse};
use crate::tenant::{deployment_of, Tenant};

pub(crate) const SCHEDULED: &str = "_scheduled_functions";
pub(crate) const CRON_JOBS: &str = "_cron_jobs";
pub(crate) const CRON_RUNS: &str = "_cron_job_logs";
/// Pending jobs by due time: `["state.kind", "scheduledTime"]`.
const BY_NEXT: &str = "by_next";
/// Finished jobs by completion time, for retention: `["completedTime"]`.
const BY_COMPLETION: &str = "by_completion";

/// The latest due time accepted: the end of year 9999, as JavaScript dates go.
const MAX_DUE_MS: f64 = 253_402_300_799_999.0;
/// Most crons one `crons.js` may declare.
pub(crate) const MAX_CRONS: usize = 1_000;
/// Most pending jobs counted for stats; a larger backlog shows as this many.
const PENDING_COUNT_CAP: u64 = 100_000;
/// Finished jobs deleted per retention commit.
const RETENTION_CHUNK: usize = 512;
/// The longest the scheduler task sleeps without looking again (cheap: one index seek).
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// The scheduler's limits and retention, per tenant.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Jobs of one tenant running at once.
    pub concurrency_per_tenant: usize,
    /// Functions one mutation or action call may schedule.
    pub max_per_call: usize,
    /// Total bytes of the arguments one call may schedule.
    pub max_args_bytes_per_call: usize,
    /// How long finished `_scheduled_functions` rows are kept.
    pub retention: Duration,
    /// How long finished cron runs (`_cron_job_logs`) are kept.
    pub cron_run_retention: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            concurrency_per_tenant: 8,
            max_per_call: 1_000,
            max_args_bytes_per_call: 8 << 20,
            retention: Duration::from_secs(7 * 24 * 3600),
            cron_run_retention: Duration::from_secs(3600),
        }
    }
}

/// The system tables and indexes the scheduler needs in every tenant.
pub(crate) fn system_tables() -> WantedIndexes {
    let job_indexes = || {
        BTreeMap::from([
            (
                BY_NEXT.to_string(),
                vec!["state.kind".to_string(), "scheduledTime".to_string()],
            ),
            (BY_COMPLETION.to_string(), vec!["completedTime".to_string()]),
        ])
    };
    BTreeMap::from([
        (SCHEDULED.to_string(), job_indexes()),
        (CRON_RUNS.to_string(), job_indexes()),
        (CRON_JOBS.to_string(), BTreeMap::new()),
    ])
}

/// Counters of a tenant's scheduler (stats, diagnostics, metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    /// Jobs waiting to run (due or not), counted at most once a second.
    pub pending: u64,
    /// Jobs running now in this process.
    pub running: u64,
    /// When the next pending job or cron run is due (ms since the epoch).
    pub next_due_ms: Option<i64>,
    pub succeeded: u64,
    pub failed: u64,
}

/// A tenant's scheduler state: what its task and its calls share.
pub(crate) struct TenantScheduler {
    pub config: SchedulerConfig,
    /// Poked after a commit that scheduled or canceled something, and when a run ends.
    wake: Notify,
    running: Mutex<HashSet<DocumentId>>,
    pending: AtomicU64,
    /// `i64::MIN`: nothing due.
    next_due_ms: AtomicI64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    /// The instance's record of this tenant's earliest due time.
    due_record: Option<Arc<dyn DueRecord>>,
    /// What that record holds, as far as this tenant knows (`None`: nothing).
    recorded: Mutex<Option<i64>>,
    /// How the task finds its tenant in the instance (without one, tests: its weak
    /// reference alone).
    lookup: Option<TenantLookup>,
}

/// What the instance's map holds for a tenant name (see `Nimbus::current_tenant`).
pub(crate) enum Lookup {
    Active(Arc<Tenant>),
    /// Being opened: not yet in service.
    Opening,
}

/// Finds a tenant in the instance's map of active tenants (`None`: not there).
pub(crate) type TenantLookup = Arc<dyn Fn(&str) -> Option<Lookup> + Send + Sync>;

/// Where the instance keeps each tenant's earliest due time (the control-plane catalog).
pub(crate) trait DueRecord: Send + Sync {
    fn record(&self, tenant: &str, due_ms: Option<i64>);
}

impl TenantScheduler {
    pub fn new(
        config: SchedulerConfig,
        due_record: Option<Arc<dyn DueRecord>>,
        recorded: Option<i64>,
        lookup: Option<TenantLookup>,
    ) -> Self {
        TenantScheduler {
            config,
            wake: Notify::new(),
            running: Mutex::new(HashSet::new()),
            pending: AtomicU64::new(0),
            next_due_ms: AtomicI64::new(i64::MIN),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            due_record,
            recorded: Mutex::new(recorded),
            lookup,
        }
    }

    /// Tells the scheduler task to look again (a commit scheduled or canceled jobs).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub fn stats(&self) -> SchedulerStats {
        let next = self.next_due_ms.load(Ordering::Relaxed);
        SchedulerStats {
            pending: self.pending.load(Ordering::Relaxed),
            running: self.running.lock().len() as u64,
            next_due_ms: (next != i64::MIN).then_some(next),
            succeeded: self.succeeded.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }

    /// Lowers the instance's record of this tenant's earliest due time to `due` if that
    /// is sooner (or there is none). Called before a commit that schedules a job is
    /// acknowledged, and after each pass: the record is never later than a committed
    /// job, so a tenant that is closed or crashes is opened in time. A record that is too
    /// early costs one needless opening; it is made exact when the tenant closes.
    pub async fn lower_record(&self, tenant: &str, due: Option<i64>) {
        let lower = {
            let recorded = self.recorded.lock();
            match (due, *recorded) {
                (Some(due), Some(old)) => due < old,
                (Some(_), None) => true,
                (None, _) => false,
            }
        };
        if lower {
            self.set_record(tenant, due).await;
        }
    }

    /// Writes the record as it is (the tenant is closing, and `due` is exact).
    async fn set_record(&self, tenant: &str, due: Option<i64>) {
        let Some(record) = self.due_record.clone() else {
            return;
        };
        {
            let mut recorded = self.recorded.lock();
            if *recorded == due {
                return;
            }
            *recorded = due;
        }
        let tenant = tenant.to_string();
        let written = tokio::task::spawn_blocking(move || record.record(&tenant, due)).await;
        if let Err(error) = written {
            tracing::warn!(%error, "recording a tenant's next due job failed");
        }
    }
}

/// Which system table a job is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobTable {
    Scheduled,
    CronRun,
}

impl JobTable {
    fn name(self) -> &'static str {
        match self {
            JobTable::Scheduled => SCHEDULED,
            JobTable::CronRun => CRON_RUNS,
        }
    }
}

/// A job being run: mutations carry it into their transaction (`run_mutation`).
#[derive(Debug, Clone)]
pub(crate) struct JobRef {
    pub table: JobTable,
    pub id: DocumentId,
    /// Its ID as functions see it (`getRequestMetadata().scheduledFunctionId`).
    pub id_text: String,
}

/// A job's lifecycle states, as stored in `state.kind`.
fn state_kind(doc: &Object) -> Option<&str> {
    match doc.get("state") {
        Some(Value::Object(state)) => match state.get("kind") {
            Some(Value::String(kind)) => Some(kind.as_str()),
            _ => None,
        },
        _ => None,
    }
}

fn state(kind: &str, error: Option<&str>) -> Value {
    let mut state = Object::new();
    state.insert("kind".into(), Value::String(kind.into()));
    if let Some(error) = error {
        state.insert("error".into(), Value::String(error.into()));
    }
    Value::Object(state)
}

fn float_field(doc: &Object, name: &str) -> Option<f64> {
    match doc.get(name) {
        Some(Value::Float64(v)) => Some(*v),
        Some(Value::Int64(v)) => Some(*v as f64),
        _ => None,
    }
}

fn string_field<'a>(doc: &'a Object, name: &str) -> Option<&'a str> {
    match doc.get(name) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

fn index_query(table: &str, index: &str, range: Json) -> Result<SerializedQuery, EngineError> {
    SerializedQuery::parse(&json!({
        "source": {"type": "IndexRange", "indexName": format!("{table}.{index}"),
                   "range": range, "order": "asc"},
        "operators": []
    }))
    .map_err(EngineError::Types)
}

/// Visits pending jobs of `table` in due order until `visit` returns false.
fn scan_pending(
    txn: &mut Transaction,
    table: &str,
    mut visit: impl FnMut(DocumentId, &Document) -> bool,
) -> Result<(), EngineError> {
    let query = index_query(
        table,
        BY_NEXT,
        json!([{"type": "Eq", "fieldPath": "state.kind", "value": "pending"}]),
    )?;
    let query_id = txn.open_query(&query)?;
    while let Some(doc) = txn.next_in_query(query_id)? {
        let Some(id) = string_field(&doc, "_id").and_then(|text| txn.decode_id(text).ok()) else {
            continue;
        };
        if !visit(id, &doc) {
            break;
        }
    }
    txn.close_query(query_id);
    Ok(())
}

mod crons;
mod run;
mod schedule;
mod task;

use crons::read_crons;
pub(crate) use crons::{parse_crons, CronJob};
pub(crate) use run::{begin_job, finish_job, skipped_response};
pub(crate) use schedule::{cancel, schedule, ScheduleError, ScheduledByCall};

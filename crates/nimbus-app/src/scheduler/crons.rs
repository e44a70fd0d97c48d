//! Crons: `crons.js` parsed against the deployment, `_cron_jobs` kept in step with it,
//! due runs started as `_cron_job_logs` jobs, and retention of finished jobs.

use super::*;

/// One cron job of a deployment's `crons.js`.
#[derive(Debug, Clone)]
pub(crate) struct CronJob {
    pub ident: String,
    pub module: String,
    pub export: String,
    pub args: Value,
    pub schedule: crate::cron_schedule::Schedule,
    pub schedule_json: Json,
}

impl CronJob {
    /// The function as runs record it (`module.js:export`).
    pub fn udf_path(&self) -> String {
        format!("{}:{}", self.module, self.export)
    }

    /// When the cron runs next after `ms` (ms since the epoch).
    pub fn next_after_ms(&self, ms: f64) -> Option<f64> {
        self.schedule.next_after(ms, &self.ident)
    }

    /// The spec stored in `_cron_jobs`; a change of it restarts the cron's timing.
    fn spec(&self) -> Value {
        let mut spec = Object::new();
        spec.insert("udfPath".into(), Value::String(self.udf_path()));
        spec.insert("udfArgs".into(), Value::Array(vec![self.args.clone()]));
        let schedule = decode(&self.schedule_json).unwrap_or(Value::Null);
        spec.insert("cronSchedule".into(), schedule);
        Value::Object(spec)
    }
}

/// Parses `crons.js`'s export (`{ident: {name, args: [obj], schedule}}`) against the
/// deployment's functions. `strict` (a push) fails on the first bad cron; a stored
/// deployment keeps the good ones and logs the rest.
pub(crate) fn parse_crons(
    text: &str,
    functions: &std::collections::HashMap<
        (String, String),
        Arc<crate::deployment::CompiledFunction>,
    >,
    strict: bool,
) -> Result<Vec<CronJob>, String> {
    let json: Json = serde_json::from_str(text).map_err(|e| format!("crons.js: not JSON: {e}"))?;
    let Json::Object(entries) = json else {
        return Err("crons.js: the default export must be the object cronJobs() returns".into());
    };
    if entries.len() > MAX_CRONS {
        return Err(format!(
            "crons.js declares {} cron jobs; at most {MAX_CRONS} are allowed",
            entries.len()
        ));
    }
    let mut crons = Vec::new();
    for (ident, entry) in entries {
        match parse_cron(&ident, &entry, functions) {
            Ok(cron) => crons.push(cron),
            Err(message) if strict => return Err(message),
            Err(message) => tracing::warn!(cron = %ident, %message, "a stored cron job is skipped"),
        }
    }
    Ok(crons)
}

fn parse_cron(
    ident: &str,
    entry: &Json,
    functions: &std::collections::HashMap<
        (String, String),
        Arc<crate::deployment::CompiledFunction>,
    >,
) -> Result<CronJob, String> {
    if ident.is_empty() || ident.len() > 256 || !ident.chars().all(|c| (' '..='~').contains(&c)) {
        return Err(format!(
            "crons.js: cron identifier {ident:?} must be 1 to 256 printable ASCII characters"
        ));
    }
    let name = entry
        .get("name")
        .and_then(Json::as_str)
        .ok_or_else(|| format!("crons.js: cron {ident:?} names no function"))?;
    let (module, export) = canonical_path(name)
        .ok_or_else(|| format!("crons.js: cron {ident:?}: invalid function path {name:?}"))?;
    let display = crate::deployment::display_name(&module, &export);
    let function = functions
        .get(&(module.clone(), export.clone()))
        .ok_or_else(|| {
            format!("crons.js: cron {ident:?} runs {display}, which is not a deployed function")
        })?;
    if function.info.kind == FunctionKind::Query {
        return Err(format!(
            "crons.js: cron {ident:?} runs {display}, a query; crons run mutations and actions"
        ));
    }
    let args = match entry.get("args") {
        None | Some(Json::Null) => Value::Object(Object::new()),
        Some(Json::Array(items)) if items.is_empty() => Value::Object(Object::new()),
        Some(Json::Array(items)) if items.len() == 1 => decode(&items[0])
            .map_err(|e| format!("crons.js: cron {ident:?}: its arguments: {e}"))?,
        Some(other) => {
            decode(other).map_err(|e| format!("crons.js: cron {ident:?}: its arguments: {e}"))?
        }
    };
    if !matches!(args, Value::Object(_)) {
        return Err(format!(
            "crons.js: cron {ident:?}: its arguments must be an object"
        ));
    }
    function
        .args
        .check(&args, &AnyIds)
        .map_err(|e| format!("crons.js: cron {ident:?}: arguments of {display}: {e}"))?;
    let schedule_json = entry
        .get("schedule")
        .cloned()
        .ok_or_else(|| format!("crons.js: cron {ident:?} has no schedule"))?;
    let schedule = crate::cron_schedule::Schedule::parse(&schedule_json)
        .map_err(|e| format!("crons.js: cron {ident:?}: {e}"))?;
    Ok(CronJob {
        ident: ident.to_string(),
        module,
        export,
        args,
        schedule,
        schedule_json,
    })
}

/// IDs are checked for shape only at push (no snapshot to resolve them against).
struct AnyIds;

impl nimbus_types::validator::IdCheck for AnyIds {
    fn is_id_of_table(&self, _id: &str, _table: &str) -> bool {
        true
    }
}

/// One `_cron_jobs` document, as the loop reads it.
pub(super) struct CronState {
    id: DocumentId,
    ident: String,
    spec: Value,
    pub(super) next_ts: f64,
    last_run: Option<DocumentId>,
}

pub(super) fn read_crons(txn: &mut Transaction) -> Result<Vec<CronState>, EngineError> {
    let query = SerializedQuery::parse(&json!({
        "source": {"type": "FullTableScan", "tableName": CRON_JOBS, "order": "asc"},
        "operators": []
    }))?;
    let query_id = txn.open_query(&query)?;
    let mut crons = Vec::new();
    while let Some(doc) = txn.next_in_query(query_id)? {
        let Some(id) = string_field(&doc, "_id").and_then(|t| txn.decode_id(t).ok()) else {
            continue;
        };
        crons.push(CronState {
            id,
            ident: string_field(&doc, "name").unwrap_or_default().to_string(),
            spec: doc.get("cronSpec").cloned().unwrap_or(Value::Null),
            next_ts: float_field(&doc, "nextTs").unwrap_or(f64::MAX),
            last_run: string_field(&doc, "lastRunId").and_then(|t| txn.decode_id(t).ok()),
        });
    }
    txn.close_query(query_id);
    Ok(crons)
}

impl Tenant {
    /// Brings `_cron_jobs` in step with the crons of the latest deployment: new ones get
    /// their first due time, changed ones start again, removed ones go. One commit; it
    /// conflicts with a push committed meanwhile (and is then done again for that one).
    pub(super) async fn reconcile_crons(&self) -> Result<(), EngineError> {
        let snapshot = self.engine().snapshot();
        let deployment = deployment_of(&snapshot);
        let mut txn = self.engine().begin_at(snapshot);
        let stored = read_crons(&mut txn)?;
        let now = now_ms();
        let mut seen = HashSet::new();
        for cron in deployment.crons.iter() {
            seen.insert(cron.ident.clone());
            let spec = cron.spec();
            let existing = stored.iter().find(|s| s.ident == cron.ident);
            if existing.is_some_and(|s| s.spec == spec) {
                continue;
            }
            tracing::info!(
                tenant = self.name(),
                cron = %cron.ident,
                function = %cron.udf_path(),
                schedule = %cron.schedule.describe(),
                "cron job registered"
            );
            let next = cron.next_after_ms(now).unwrap_or(f64::MAX);
            let mut fields = Object::new();
            fields.insert("name".into(), Value::String(cron.ident.clone()));
            fields.insert("cronSpec".into(), spec);
            fields.insert("nextTs".into(), Value::Float64(next));
            match existing {
                Some(old) => {
                    txn.replace(&old.id, fields)?;
                }
                None => {
                    txn.insert(CRON_JOBS, fields)?;
                }
            }
        }
        for old in stored.iter().filter(|s| !seen.contains(&s.ident)) {
            txn.delete(&old.id)?;
        }
        self.engine().commit(txn.finish()).await.map(|_| ())
    }

    /// Starts the runs of crons that are due, in one commit: each gets a pending
    /// `_cron_job_logs` row and its next due time. A cron whose previous run has not
    /// finished skips this run. Runs missed while the server was down are not made up:
    /// one run covers them, and the next is the first due time after now.
    pub(super) async fn start_due_crons(&self, now: f64) -> Result<Option<f64>, EngineError> {
        let snapshot = self.engine().snapshot();
        let deployment = deployment_of(&snapshot);
        let mut txn = self.engine().begin_at(snapshot);
        let crons = read_crons(&mut txn)?;
        let mut earliest: Option<f64> = None;
        let mut started = false;
        for stored in crons {
            let Some(cron) = deployment.crons.iter().find(|c| c.ident == stored.ident) else {
                continue;
            };
            if stored.next_ts > now {
                earliest = Some(earliest.map_or(stored.next_ts, |e: f64| e.min(stored.next_ts)));
                continue;
            }
            let previous_running = match stored.last_run {
                Some(run) => txn
                    .get(&run)?
                    .is_some_and(|doc| matches!(state_kind(&doc), Some("pending" | "inProgress"))),
                None => false,
            };
            let next = cron
                .next_after_ms(now.max(stored.next_ts))
                .unwrap_or(f64::MAX);
            earliest = Some(earliest.map_or(next, |e: f64| e.min(next)));
            let mut changes = BTreeMap::from([
                ("prevTs".to_string(), Some(Value::Float64(stored.next_ts))),
                ("nextTs".to_string(), Some(Value::Float64(next))),
            ]);
            if !previous_running {
                let mut run = Object::new();
                run.insert("name".into(), Value::String(cron.udf_path()));
                run.insert("cron".into(), Value::String(cron.ident.clone()));
                run.insert("args".into(), Value::Array(vec![cron.args.clone()]));
                run.insert("scheduledTime".into(), Value::Float64(stored.next_ts));
                run.insert("state".into(), state("pending", None));
                let run_id = txn.insert(CRON_RUNS, run)?;
                changes.insert(
                    "lastRunId".to_string(),
                    Some(Value::String(txn.encode_id(run_id))),
                );
            }
            txn.patch(&stored.id, changes)?;
            started = true;
        }
        if started {
            self.engine().commit(txn.finish()).await?;
        }
        Ok(earliest)
    }

    /// Deletes finished jobs past their retention, a chunk per commit.
    pub(super) async fn apply_retention(&self) -> Result<(), EngineError> {
        let now = now_ms();
        for (table, keep) in [
            (SCHEDULED, self.scheduler.config.retention),
            (CRON_RUNS, self.scheduler.config.cron_run_retention),
        ] {
            let cutoff = now - keep.as_secs_f64() * 1000.0;
            loop {
                let mut txn = self.engine().begin();
                let query = index_query(
                    table,
                    BY_COMPLETION,
                    json!([
                        {"type": "Gt", "fieldPath": "completedTime", "value": 0.0},
                        {"type": "Lt", "fieldPath": "completedTime", "value": cutoff}
                    ]),
                )?;
                let query_id = txn.open_query(&query)?;
                let mut old = Vec::new();
                while let Some(doc) = txn.next_in_query(query_id)? {
                    if let Some(id) = string_field(&doc, "_id").and_then(|t| txn.decode_id(t).ok())
                    {
                        old.push(id);
                    }
                    if old.len() >= RETENTION_CHUNK {
                        break;
                    }
                }
                txn.close_query(query_id);
                let full = old.len() >= RETENTION_CHUNK;
                for id in &old {
                    txn.delete(id)?;
                }
                if !old.is_empty() {
                    self.engine().commit(txn.finish()).await?;
                }
                if !full {
                    break;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_runtime::CodeId;

    use crate::deployment::{Deployment, FunctionInfo};
    use crate::error::AppError;

    fn function(name: &str, kind: FunctionKind) -> FunctionInfo {
        FunctionInfo {
            module_path: "jobs.js".into(),
            name: name.into(),
            kind,
            public: false,
            args_json: r#"{"type":"object","value":{"n":{"fieldType":{"type":"number"},"optional":false}}}"#
                .into(),
            returns_json: None,
        }
    }

    /// A push's deployment with `crons` as `crons.js` exported them.
    fn push(crons: serde_json::Value) -> Result<Deployment, AppError> {
        Deployment::build(
            0,
            CodeId::NONE,
            Vec::new(),
            vec![
                function("tick", FunctionKind::Mutation),
                function("fetchAll", FunctionKind::Action),
                function("read", FunctionKind::Query),
            ],
            None,
            Some(crons.to_string()),
            None,
            Arc::new(BTreeMap::new()),
        )
    }

    fn refusal(crons: serde_json::Value) -> String {
        match push(crons) {
            Err(AppError::PushFailed { code, message }) => {
                assert_eq!(code, "InvalidCrons");
                message
            }
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("the push should fail"),
        }
    }

    #[test]
    fn crons_resolve_against_the_pushed_functions() {
        let deployment = push(json!({
            "every second": {"name": "jobs:tick", "args": [{"n": 1}],
                             "schedule": {"type": "interval", "seconds": 1}},
            "nightly": {"name": "jobs.js:fetchAll", "args": [{"n": 2}],
                        "schedule": {"type": "cron", "cron": "0 3 * * *"}},
        }))
        .unwrap_or_else(|e| panic!("push: {e}"));
        let names: Vec<_> = deployment.crons.iter().map(|c| c.udf_path()).collect();
        assert_eq!(names, ["jobs.js:tick", "jobs.js:fetchAll"]);
        assert_eq!(
            deployment.crons[0].next_after_ms(1_000.0),
            Some(2_000.0),
            "an interval runs a period after the last time"
        );
    }

    #[test]
    fn a_bad_cron_fails_the_push_with_its_name_and_problem() {
        let schedule = json!({"type": "interval", "seconds": 1});
        let cases = [
            (
                json!({"c": {"name": "jobs:missing", "args": [{"n": 1}], "schedule": schedule}}),
                "not a deployed function",
            ),
            (
                json!({"c": {"name": "jobs:read", "args": [{"n": 1}], "schedule": schedule}}),
                "a query",
            ),
            (
                json!({"c": {"name": "jobs:tick", "args": [{"n": "one"}], "schedule": schedule}}),
                "arguments of jobs:tick",
            ),
            (
                json!({"c": {"name": "jobs:tick", "args": [{"n": 1}],
                             "schedule": {"type": "cron", "cron": "61 * * * *"}}}),
                "minute 61 is out of range",
            ),
            (
                json!({"c": {"name": "jobs:tick", "args": [{"n": 1}]}}),
                "has no schedule",
            ),
            (json!(["not", "an", "object"]), "must be the object"),
        ];
        for (crons, expected) in cases {
            let message = refusal(crons.clone());
            assert!(message.contains(expected), "{crons}: {message}");
        }
    }

    #[test]
    fn a_stored_deployment_keeps_its_good_crons() {
        let crons = json!({
            "good": {"name": "jobs:tick", "args": [{"n": 1}],
                     "schedule": {"type": "interval", "minutes": 5}},
            "gone": {"name": "jobs:missing", "args": [{}],
                     "schedule": {"type": "interval", "minutes": 5}},
        });
        let stored = Deployment::build(
            3,
            CodeId::random(),
            Vec::new(),
            vec![function("tick", FunctionKind::Mutation)],
            None,
            Some(crons.to_string()),
            None,
            Arc::new(BTreeMap::new()),
        )
        .unwrap_or_else(|e| panic!("load: {e}"));
        assert_eq!(stored.crons.len(), 1);
        assert_eq!(stored.crons[0].ident, "good");
    }
}

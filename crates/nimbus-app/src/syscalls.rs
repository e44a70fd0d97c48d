//! The Convex syscalls of queries and mutations, answered from a [`Transaction`].
//!
//! The runtime calls [`TxnHost`] on its worker thread for every `Convex.syscall` and
//! `Convex.asyncSyscall`; all of them are answered synchronously from the transaction
//! (snapshot reads and buffered writes), so no syscall ever blocks on I/O or on another
//! tenant. Arguments and results are JSON text in the shapes of the compat spec §3.

use std::collections::BTreeMap;
use std::sync::Arc;

use nimbus_engine::{EngineError, ErrorClass, Transaction};
use nimbus_runtime::{FunctionKind, SyscallError, SyscallHost};
use nimbus_types::json::{decode, decode_optional, encode, encode_object};
use nimbus_types::query::SerializedQuery;
use nimbus_types::schema::Schema;
use nimbus_types::validator::IdCheck;
use nimbus_types::{Document, Object, Value};
use serde_json::{json, Value as Json};

/// Answers syscalls for one query or mutation execution.
pub(crate) struct TxnHost {
    pub txn: Transaction,
    pub kind: FunctionKind,
    pub schema: Option<Arc<Schema>>,
    /// Display name of the function (`orders:create`).
    pub function_name: String,
    /// The caller's identity, for `ctx.auth.getUserIdentity()`.
    pub identity: Option<Arc<crate::auth::UserIdentity>>,
    /// The first non-user error (an engine failure that is not the function's fault),
    /// kept so the caller reports it as a system error rather than a JS exception.
    pub system_error: Option<EngineError>,
    /// The deployment the call runs (functions it may schedule).
    pub deployment: Arc<crate::deployment::Deployment>,
    pub scheduler: Arc<crate::scheduler::TenantScheduler>,
    /// What this call scheduled (limits per call; the commit wakes the scheduler).
    pub scheduled: crate::scheduler::ScheduledByCall,
    /// The scheduled job this call runs as, if any.
    pub job: Option<crate::scheduler::JobRef>,
}

impl TxnHost {
    fn fail(&mut self, error: EngineError) -> SyscallError {
        let message = error.to_string();
        if error.class() != ErrorClass::User && self.system_error.is_none() {
            self.system_error = Some(error);
        }
        SyscallError {
            message,
            data_json: None,
        }
    }

    fn dispatch(&mut self, op: &str, args: &Json) -> Result<Json, SyscallError> {
        match op {
            "1.0/get" => self.get(args),
            "1.0/insert" => self.insert(args),
            "1.0/shallowMerge" => self.patch(args),
            "1.0/replace" => self.replace(args),
            "1.0/remove" => self.remove(args),
            "1.0/db/normalizeId" => self.normalize_id(args),
            "1.0/queryStream" => self.query_stream(args),
            "1.0/queryStreamNext" => self.query_next(args),
            "1.0/queryCleanup" => self.query_cleanup(args),
            "1.0/queryPage" => self.query_page(args),
            "1.0/count" => self.count(args),
            "1.0/getSnapshotTs" => Ok(encode(&Value::Int64(self.txn.snapshot().ts.0 as i64))),
            "1.0/getUserIdentity" => Ok(self
                .identity
                .as_ref()
                .map_or(Json::Null, |identity| encode(identity.value()))),
            "1.0/getFunctionMetadata" => {
                Ok(json!({"name": self.function_name, "componentPath": ""}))
            }
            "1.0/getRequestMetadata" => Ok(json!({
                "ip": null, "userAgent": null, "requestId": "",
                "scheduledFunctionId": self.job.as_ref().map(|job| job.id_text.clone()),
                "authToken": null
            })),
            "1.0/schedule" => self.schedule(args),
            "1.0/cancel_job" => self.cancel_job(args),
            _ => Err(SyscallError {
                message: format!("Unknown async operation {op}: Nimbus does not implement it yet"),
                data_json: None,
            }),
        }
    }

    fn require_mutation(&self, what: &str) -> Result<(), SyscallError> {
        match self.kind {
            FunctionKind::Mutation => Ok(()),
            FunctionKind::Query | FunctionKind::Action => Err(user(format!(
                "{what} is not allowed in a query: queries are read-only"
            ))),
        }
    }

    fn schedule(&mut self, args: &Json) -> Result<Json, SyscallError> {
        self.require_mutation("Scheduling a function")?;
        let config = self.scheduler.config.clone();
        match crate::scheduler::schedule(
            &mut self.txn,
            &self.deployment,
            &config,
            &mut self.scheduled,
            args,
        ) {
            Ok(id) => Ok(Json::String(id)),
            Err(crate::scheduler::ScheduleError::User(message)) => Err(user(message)),
            Err(crate::scheduler::ScheduleError::Engine(error)) => Err(self.fail(error)),
        }
    }

    fn cancel_job(&mut self, args: &Json) -> Result<Json, SyscallError> {
        self.require_mutation("Canceling a scheduled function")?;
        let running = self.job.as_ref().map(|job| job.id);
        match crate::scheduler::cancel(&mut self.txn, args, running.as_ref()) {
            Ok(()) => {
                // The scheduler looks again once this commits (its next due time may move).
                self.scheduled.canceled += 1;
                Ok(Json::Null)
            }
            Err(crate::scheduler::ScheduleError::User(message)) => Err(user(message)),
            Err(crate::scheduler::ScheduleError::Engine(error)) => Err(self.fail(error)),
        }
    }

    /// User code may read system tables (`ctx.db.system`) but never write them.
    fn refuse_system_table(&self, table: Option<&str>, op: &str) -> Result<(), SyscallError> {
        match table {
            Some(table) if nimbus_engine::is_system_table(table) => Err(user(format!(
                "{op}: the system table {table:?} is read-only (use ctx.scheduler to change \
                 scheduled functions)"
            ))),
            _ => Ok(()),
        }
    }

    fn id_arg(&self, args: &Json, op: &str) -> Result<nimbus_types::DocumentId, SyscallError> {
        let text = str_field(args, "id")?;
        let id = self.txn.decode_id(text).map_err(|_| {
            user(format!(
                "Invalid argument `id` for `{op}`: {text:?} is not a valid ID of this deployment"
            ))
        })?;
        if let Some(table) = args.get("table").and_then(Json::as_str) {
            let actual = self.txn.table_name_of(&id);
            if actual != Some(table) {
                return Err(user(format!(
                    "Invalid argument `id` for `{op}`: the ID {text:?} does not belong to table {table:?}"
                )));
            }
        }
        Ok(id)
    }

    fn get(&mut self, args: &Json) -> Result<Json, SyscallError> {
        let text = str_field(args, "id")?;
        let Ok(id) = self.txn.decode_id(text) else {
            return Err(user(format!(
                "Invalid argument `id` for `db.get`: {text:?} is not a valid ID of this deployment"
            )));
        };
        if let Some(table) = args.get("table").and_then(Json::as_str) {
            if self
                .txn
                .table_name_of(&id)
                .is_some_and(|actual| actual != table)
            {
                return Err(user(format!(
                    "Invalid argument `id` for `db.get`: the ID {text:?} does not belong to table {table:?}"
                )));
            }
        }
        match self.txn.get(&id) {
            Ok(Some(doc)) => Ok(encode_object(&doc)),
            Ok(None) => Ok(Json::Null),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn insert(&mut self, args: &Json) -> Result<Json, SyscallError> {
        self.require_mutation("db.insert")?;
        let table = str_field(args, "table")?.to_string();
        self.refuse_system_table(Some(&table), "db.insert")?;
        let fields = object_arg(args.get("value"), "value")?;
        self.check_schema(&table, &fields)?;
        match self.txn.insert(&table, fields) {
            Ok(id) => Ok(json!({"_id": self.txn.encode_id(id)})),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn patch(&mut self, args: &Json) -> Result<Json, SyscallError> {
        self.require_mutation("db.patch")?;
        let id = self.id_arg(args, "db.patch")?;
        self.refuse_system_table(self.txn.table_name_of(&id), "db.patch")?;
        let Some(Json::Object(map)) = args.get("value") else {
            return Err(user(
                "Invalid argument `value` for `db.patch`: expected an object".into(),
            ));
        };
        let mut changes = BTreeMap::new();
        for (key, value) in map {
            let decoded = decode_optional(value).map_err(|e| user(e.to_string()))?;
            changes.insert(key.clone(), decoded);
        }
        let updated = match self.txn.patch(&id, changes) {
            Ok(doc) => doc,
            Err(e) => return Err(self.fail(e)),
        };
        self.check_written(&id, &updated)?;
        Ok(encode_object(&updated))
    }

    fn replace(&mut self, args: &Json) -> Result<Json, SyscallError> {
        self.require_mutation("db.replace")?;
        let id = self.id_arg(args, "db.replace")?;
        self.refuse_system_table(self.txn.table_name_of(&id), "db.replace")?;
        let fields = object_arg(args.get("value"), "value")?;
        let updated = match self.txn.replace(&id, fields) {
            Ok(doc) => doc,
            Err(e) => return Err(self.fail(e)),
        };
        self.check_written(&id, &updated)?;
        Ok(encode_object(&updated))
    }

    fn remove(&mut self, args: &Json) -> Result<Json, SyscallError> {
        self.require_mutation("db.delete")?;
        let id = self.id_arg(args, "db.delete")?;
        self.refuse_system_table(self.txn.table_name_of(&id), "db.delete")?;
        match self.txn.delete(&id) {
            Ok(doc) => Ok(encode_object(&doc)),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn normalize_id(&mut self, args: &Json) -> Result<Json, SyscallError> {
        let table = str_field(args, "table")?;
        let text = str_field(args, "idString")?;
        Ok(json!({"id": self.txn.normalize_id(table, text)}))
    }

    fn parse_query(args: &Json) -> Result<SerializedQuery, SyscallError> {
        let query = args
            .get("query")
            .ok_or_else(|| user("missing `query`".into()))?;
        SerializedQuery::parse(query).map_err(|e| user(e.to_string()))
    }

    fn query_stream(&mut self, args: &Json) -> Result<Json, SyscallError> {
        let query = Self::parse_query(args)?;
        match self.txn.open_query(&query) {
            Ok(id) => Ok(json!({"queryId": id})),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn query_id(args: &Json) -> Result<u32, SyscallError> {
        args.get("queryId")
            .and_then(Json::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| user("missing or invalid `queryId`".into()))
    }

    fn query_next(&mut self, args: &Json) -> Result<Json, SyscallError> {
        let id = Self::query_id(args)?;
        match self.txn.next_in_query(id) {
            Ok(Some(doc)) => Ok(json!({"value": encode_object(&doc), "done": false})),
            Ok(None) => Ok(json!({"value": null, "done": true})),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn query_cleanup(&mut self, args: &Json) -> Result<Json, SyscallError> {
        let id = Self::query_id(args)?;
        Ok(Json::Bool(self.txn.close_query(id)))
    }

    fn query_page(&mut self, args: &Json) -> Result<Json, SyscallError> {
        let query = Self::parse_query(args)?;
        let cursor = args.get("cursor").and_then(Json::as_str);
        let end_cursor = args.get("endCursor").and_then(Json::as_str);
        let page_size = args.get("pageSize").and_then(Json::as_f64).unwrap_or(0.0);
        if !(page_size.is_finite() && page_size >= 0.0) {
            return Err(user(
                "paginationOpts.numItems must be a non-negative number".into(),
            ));
        }
        match self
            .txn
            .page(&query, cursor, end_cursor, page_size as usize)
        {
            Ok(page) => Ok(json!({
                "page": page.documents.iter().map(|d| encode_object(d)).collect::<Vec<_>>(),
                "isDone": page.is_done,
                "continueCursor": page.continue_cursor,
                "splitCursor": null,
                "pageStatus": null,
            })),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn count(&mut self, args: &Json) -> Result<Json, SyscallError> {
        let table = str_field(args, "table")?;
        match self.txn.count(table) {
            Ok(n) => Ok(json!(n)),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Schema validation of a new or updated document (its user fields).
    fn check_schema(&self, table: &str, doc: &Object) -> Result<(), SyscallError> {
        let Some(schema) = &self.schema else {
            return Ok(());
        };
        schema
            .check_document(table, doc, &IdsOf(&self.txn))
            .map_err(|e| {
                user(format!(
                    "Failed to insert or update a document in table \"{table}\" because it does \
                     not match the schema: {e}"
                ))
            })
    }

    fn check_written(
        &self,
        id: &nimbus_types::DocumentId,
        doc: &Document,
    ) -> Result<(), SyscallError> {
        match self.txn.table_name_of(id) {
            Some(table) => self.check_schema(table, doc),
            None => Ok(()),
        }
    }
}

/// ID checks for validators: an ID is valid for a table when it normalizes there.
pub(crate) struct IdsOf<'a>(pub &'a Transaction);

impl IdCheck for IdsOf<'_> {
    fn is_id_of_table(&self, id: &str, table: &str) -> bool {
        self.0.normalize_id(table, id).is_some()
    }
}

impl SyscallHost for TxnHost {
    fn syscall(&mut self, op: &str, args_json: &str) -> Result<String, SyscallError> {
        self.async_syscall(op, args_json)
    }

    fn async_syscall(&mut self, op: &str, args_json: &str) -> Result<String, SyscallError> {
        let args: Json = serde_json::from_str(args_json)
            .map_err(|e| user(format!("syscall {op}: arguments are not JSON: {e}")))?;
        self.dispatch(op, &args).map(|result| result.to_string())
    }
}

fn user(message: String) -> SyscallError {
    SyscallError {
        message,
        data_json: None,
    }
}

fn str_field<'a>(args: &'a Json, name: &str) -> Result<&'a str, SyscallError> {
    args.get(name)
        .and_then(Json::as_str)
        .ok_or_else(|| user(format!("missing or invalid argument `{name}`")))
}

fn object_arg(value: Option<&Json>, name: &str) -> Result<Object, SyscallError> {
    let value = value.ok_or_else(|| user(format!("missing argument `{name}`")))?;
    match decode(value).map_err(|e| user(e.to_string()))? {
        Value::Object(fields) => Ok(fields),
        other => Err(user(format!(
            "`{name}` must be an object, not {}",
            other.type_name()
        ))),
    }
}

//! Transactions: reads at one snapshot, buffered writes, and the read set.
//!
//! A query function runs in a read-only transaction; a mutation's transaction is handed to
//! the committer when the function returns. Reads see the snapshot plus the
//! transaction's own writes. Nothing here touches storage, and nothing blocks.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use nimbus_storage::{IndexNumber, KeyRange, ScanOrder};
use nimbus_types::index_key::{document_key, encode_value};
use nimbus_types::query::{Expr, Order, QueryOperator, QuerySource, SerializedQuery};
use nimbus_types::value::check_user_document;
use nimbus_types::{Document, DocumentId, Object, TableNumber, TypesError, Value};

use crate::catalog::{Catalog, BY_CREATION_TIME, BY_ID};
use crate::cursor::CursorCodec;
use crate::error::EngineError;
use crate::read_set::ReadSet;
use crate::snapshot::{narrowed, Snapshot};

/// Bounds of one transaction. Exceeding one fails the function with a clear error. The
/// read bounds are what keeps a call's memory outside the JavaScript heap small (a page of
/// results is built in Rust, before the runtime's memory limit sees it), and they match
/// Convex's own per-function limits.
#[derive(Debug, Clone)]
pub struct TransactionLimits {
    /// Most documents one transaction may write.
    pub max_writes: usize,
    /// Most documents one transaction may read: index entries visited by queries and
    /// pages (whether or not a filter kept them), and documents found by `get`.
    pub max_documents_read: usize,
    /// Most bytes of documents (Convex size) one transaction may read, counted like
    /// `max_documents_read`.
    pub max_bytes_read: usize,
    /// Most queries open at once.
    pub max_open_queries: usize,
}

impl Default for TransactionLimits {
    fn default() -> Self {
        TransactionLimits {
            max_writes: 16_000,
            max_documents_read: 16_384,
            max_bytes_read: 8 << 20,
            max_open_queries: 1_000,
        }
    }
}

/// The latest state of a document written by this transaction.
#[derive(Debug, Clone)]
pub struct PendingWrite {
    pub table: TableNumber,
    /// The document at the transaction's snapshot (`None`: it did not exist).
    pub old: Option<Document>,
    /// `None` = deleted.
    pub new: Option<Document>,
}

/// Counters of one transaction, reported per function call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransactionStats {
    /// Index entries visited by queries and gets (whether or not a filter kept them).
    pub documents_scanned: u64,
    /// Bytes (Convex size) of the documents counted in `documents_scanned`.
    pub bytes_read: u64,
    /// Documents inserted, patched, replaced or deleted.
    pub documents_written: u64,
}

/// A prepared query that yields documents one by one (`queryStream`/`queryStreamNext`).
struct QueryCursor {
    plan: QueryPlan,
    /// Key of the last entry consumed (returned or filtered out).
    last_key: Option<Vec<u8>>,
    returned: usize,
    done: bool,
    /// Entries fetched from the snapshot but not consumed yet, in scan order.
    buffer: std::collections::VecDeque<crate::snapshot::ScanEntry>,
    /// Key of the last entry fetched from the snapshot.
    fetched_until: Option<Vec<u8>>,
    snapshot_exhausted: bool,
    /// Size of the next fetch: starts small (most queries take few rows) and doubles.
    next_fetch: usize,
}

/// Smallest and largest snapshot fetch of a cursor.
const FETCH_MIN: usize = 8;
const FETCH_MAX: usize = 512;

impl QueryCursor {
    fn new(plan: QueryPlan) -> Self {
        QueryCursor {
            plan,
            last_key: None,
            returned: 0,
            done: false,
            buffer: std::collections::VecDeque::new(),
            fetched_until: None,
            snapshot_exhausted: false,
            next_fetch: FETCH_MIN,
        }
    }

    /// Starts after `key` (pagination).
    fn resume_after(&mut self, key: Vec<u8>) {
        self.fetched_until = Some(key.clone());
        self.last_key = Some(key);
    }
}

/// A query compiled against the catalog: which index, which byte range, which order.
#[derive(Debug, Clone)]
pub struct QueryPlan {
    pub table: Option<TableNumber>,
    pub index: Option<IndexNumber>,
    pub range: KeyRange,
    pub order: ScanOrder,
    pub filters: Vec<Expr>,
    pub limit: Option<usize>,
    /// Fields of the index (to compute keys of the transaction's own writes).
    fields: Vec<String>,
}

/// One page of a paginated query.
#[derive(Debug, Clone)]
pub struct Page {
    pub documents: Vec<Document>,
    pub continue_cursor: String,
    pub is_done: bool,
}

/// A transaction at a snapshot.
pub struct Transaction {
    snapshot: Arc<Snapshot>,
    /// The catalog as this transaction sees it (with tables it created).
    catalog: Arc<Catalog>,
    writes: BTreeMap<DocumentId, PendingWrite>,
    /// Bumped on every write so query cursors know to refresh their overlay.
    write_version: u64,
    read_set: ReadSet,
    stats: TransactionStats,
    limits: TransactionLimits,
    queries: HashMap<u32, QueryCursor>,
    next_query_id: u32,
    last_creation_time: f64,
    cursor_codec: CursorCodec,
    created_tables: Vec<String>,
    journal: Journal,
}

/// A live query's page boundary (Convex's query journal): the end cursor its first page
/// keeps across re-runs, so rows never shift between pages.
#[derive(Default)]
struct Journal {
    /// The end cursor to use when the first paginated query gives none.
    end_cursor: Option<String>,
    /// Whether a paginated query ran.
    used: bool,
    /// The first page's end cursor.
    page_end: Option<String>,
}

impl Transaction {
    pub(crate) fn new(
        snapshot: Arc<Snapshot>,
        limits: TransactionLimits,
        cursor_codec: CursorCodec,
    ) -> Self {
        let catalog = snapshot.catalog.clone();
        Transaction {
            snapshot,
            catalog,
            writes: BTreeMap::new(),
            write_version: 0,
            read_set: ReadSet::default(),
            stats: TransactionStats::default(),
            limits,
            queries: HashMap::new(),
            next_query_id: 0,
            last_creation_time: 0.0,
            cursor_codec,
            created_tables: Vec::new(),
            journal: Journal::default(),
        }
    }

    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }

    pub fn stats(&self) -> TransactionStats {
        self.stats
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The document IDs written, with their final state.
    pub fn writes(&self) -> &BTreeMap<DocumentId, PendingWrite> {
        &self.writes
    }

    pub fn has_writes(&self) -> bool {
        !self.writes.is_empty() || !self.created_tables.is_empty()
    }

    /// Encodes an ID as text.
    pub fn encode_id(&self, id: DocumentId) -> String {
        self.snapshot.id_codec.encode(id)
    }

    /// Parses an ID of this tenant.
    pub fn decode_id(&self, text: &str) -> Result<DocumentId, TypesError> {
        self.snapshot.id_codec.decode(text)
    }

    /// Name of the table an ID belongs to, if that table exists.
    pub fn table_name_of(&self, id: &DocumentId) -> Option<&str> {
        self.catalog.table_name(id.table)
    }

    /// `normalizeId`: the canonical ID if `text` is an ID of `table`.
    pub fn normalize_id(&self, table: &str, text: &str) -> Option<String> {
        let id = self.decode_id(text).ok()?;
        let info = self.catalog.table(table)?;
        (info.number == id.table).then(|| self.encode_id(id))
    }

    /// Reads a document by ID (`db.get`). Records the read.
    pub fn get(&mut self, id: &DocumentId) -> Result<Option<Document>, EngineError> {
        if let Some(table) = self.catalog.table_name(id.table) {
            if let Ok(info) = self.catalog.resolve_index(table, BY_ID) {
                let key = id_key(&self.encode_id(*id));
                let number = info.number;
                self.read_set.record(number, KeyRange::prefix(key));
            }
        } else {
            self.depend_on_catalog();
        }
        let found = match self.writes.get(id) {
            Some(pending) => pending.new.clone(),
            None => self.snapshot.get(id)?,
        };
        self.count_read(found.as_ref())?;
        Ok(found)
    }

    /// Names of the tables this transaction sees, in order. The read set then depends on
    /// the catalog, so a live query of the list re-runs when a table appears or goes.
    pub fn table_names(&mut self) -> Vec<String> {
        self.depend_on_catalog();
        self.catalog.tables().map(|t| t.name.clone()).collect()
    }

    fn depend_on_catalog(&mut self) {
        self.read_set.catalog_version = Some(self.snapshot.catalog.version);
    }

    /// Inserts a document into `table` (created if new); returns its ID.
    pub fn insert(&mut self, table: &str, mut fields: Object) -> Result<DocumentId, EngineError> {
        check_user_document(&fields)?;
        self.check_write_budget()?;
        let table_number = match self.catalog.table(table) {
            Some(info) => info.number,
            None => {
                nimbus_types::names::check_user_table_name(table)?;
                // A new table changes the catalog: the committer accepts this transaction
                // only if nobody else changed the catalog since its snapshot.
                self.depend_on_catalog();
                let mut catalog = (*self.catalog).clone();
                let number = catalog.create_table(table);
                self.catalog = Arc::new(catalog);
                self.created_tables.push(table.to_string());
                number
            }
        };
        let creation_time = self.next_creation_time();
        let id = DocumentId::new_time_ordered(table_number, creation_time as u64, rand::random());
        let id_text = self.encode_id(id);
        fields.insert("_id".to_string(), Value::String(id_text));
        fields.insert("_creationTime".to_string(), Value::Float64(creation_time));
        self.put(id, table_number, None, Some(Arc::new(fields)));
        Ok(id)
    }

    /// Replaces all user fields of an existing document (`db.replace`).
    pub fn replace(
        &mut self,
        id: &DocumentId,
        mut fields: Object,
    ) -> Result<Document, EngineError> {
        let existing = self.existing(id, "replace")?;
        for system in ["_id", "_creationTime"] {
            match fields.remove(system) {
                None => {}
                Some(value) if Some(&value) == existing.get(system) => {}
                Some(_) => {
                    return Err(EngineError::User(format!(
                        "Cannot replace the system field {system} with a different value"
                    )))
                }
            }
        }
        check_user_document(&fields)?;
        self.finish_update(id, &existing, fields)
    }

    /// Shallow-merges fields into an existing document (`db.patch`); `None` values delete
    /// the field.
    pub fn patch(
        &mut self,
        id: &DocumentId,
        changes: BTreeMap<String, Option<Value>>,
    ) -> Result<Document, EngineError> {
        let existing = self.existing(id, "patch")?;
        let mut fields: Object = existing
            .iter()
            .filter(|(k, _)| k.as_str() != "_id" && k.as_str() != "_creationTime")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, value) in changes {
            if name == "_id" || name == "_creationTime" {
                if value.as_ref() == existing.get(&name) {
                    continue;
                }
                return Err(EngineError::User(format!(
                    "Cannot patch the system field {name} with a different value"
                )));
            }
            match value {
                Some(value) => fields.insert(name, value),
                None => fields.remove(&name),
            };
        }
        check_user_document(&fields)?;
        self.finish_update(id, &existing, fields)
    }

    /// Deletes an existing document (`db.delete`); returns it.
    pub fn delete(&mut self, id: &DocumentId) -> Result<Document, EngineError> {
        let existing = self.existing(id, "delete")?;
        self.check_write_budget()?;
        self.put(*id, id.table, Some(existing.clone()), None);
        Ok(existing)
    }

    fn existing(&mut self, id: &DocumentId, op: &str) -> Result<Document, EngineError> {
        match self.get(id)? {
            Some(doc) => Ok(doc),
            None => Err(EngineError::User(format!(
                "{op} on nonexistent document ID {}",
                self.encode_id(*id)
            ))),
        }
    }

    fn finish_update(
        &mut self,
        id: &DocumentId,
        existing: &Document,
        mut fields: Object,
    ) -> Result<Document, EngineError> {
        self.check_write_budget()?;
        for system in ["_id", "_creationTime"] {
            if let Some(value) = existing.get(system) {
                fields.insert(system.to_string(), value.clone());
            }
        }
        let doc = Arc::new(fields);
        self.put(*id, id.table, Some(existing.clone()), Some(doc.clone()));
        Ok(doc)
    }

    /// Records a write; `current` is the document before this write (the snapshot's
    /// version on the first write of a document in this transaction).
    fn put(
        &mut self,
        id: DocumentId,
        table: TableNumber,
        current: Option<Document>,
        new: Option<Document>,
    ) {
        let old = match self.writes.get(&id) {
            Some(earlier) => earlier.old.clone(),
            None => current,
        };
        self.writes.insert(id, PendingWrite { table, old, new });
        self.write_version += 1;
        self.stats.documents_written += 1;
    }

    fn check_write_budget(&self) -> Result<(), EngineError> {
        if self.writes.len() >= self.limits.max_writes {
            return Err(EngineError::User(format!(
                "Too many writes in one mutation: the limit is {} documents",
                self.limits.max_writes
            )));
        }
        Ok(())
    }

    /// Counts one read (a visited index entry, or a `get`) against the read limits.
    fn count_read(&mut self, doc: Option<&Document>) -> Result<(), EngineError> {
        self.stats.documents_scanned += 1;
        self.stats.bytes_read += doc.map_or(0, |d| Value::object_size(d) as u64);
        if self.stats.documents_scanned > self.limits.max_documents_read as u64 {
            return Err(EngineError::User(format!(
                "Too many documents read in one function: the limit is {} (index entries \
                 visited by queries and documents read by get); read fewer, e.g. with an \
                 index range or a smaller page",
                self.limits.max_documents_read
            )));
        }
        if self.stats.bytes_read > self.limits.max_bytes_read as u64 {
            return Err(EngineError::User(format!(
                "Too many bytes read in one function: the limit is {} bytes of documents; \
                 read fewer or smaller documents, e.g. with a smaller page",
                self.limits.max_bytes_read
            )));
        }
        Ok(())
    }

    fn next_creation_time(&mut self) -> f64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0);
        // Creation times are unique and increasing within a transaction; across
        // transactions ties are broken by `_id` in every index.
        let next = if now > self.last_creation_time {
            now
        } else {
            self.last_creation_time + 0.001
        };
        self.last_creation_time = next;
        next
    }

    /// Compiles a serialized query into a plan.
    pub fn plan(&mut self, query: &SerializedQuery) -> Result<QueryPlan, EngineError> {
        let (table_name, index_name, range_exprs, order) = match &query.source {
            QuerySource::FullTableScan { table, order } => {
                (table.as_str(), BY_CREATION_TIME, &[][..], *order)
            }
            QuerySource::IndexRange {
                table,
                index,
                range,
                order,
            } => (table.as_str(), index.as_str(), range.as_slice(), *order),
            QuerySource::Search { table, index, .. } => {
                return Err(EngineError::User(format!(
                    "Search index {table}.{index}: full-text search is not supported by \
                     Nimbus yet"
                )))
            }
        };
        let mut filters = Vec::new();
        let mut limit: Option<usize> = None;
        for op in &query.operators {
            match op {
                QueryOperator::Filter(expr) => filters.push(expr.clone()),
                QueryOperator::Limit(n) => limit = Some(limit.map_or(*n, |l| l.min(*n))),
            }
        }
        let order = match order {
            Order::Asc => ScanOrder::Ascending,
            Order::Desc => ScanOrder::Descending,
        };
        let Some(table) = self.catalog.table(table_name) else {
            // A table that does not exist yet reads as empty, but if one is created the
            // reader must notice: depend on the catalog.
            if index_name != BY_CREATION_TIME && index_name != BY_ID {
                return Err(EngineError::User(format!(
                    "Index {table_name}.{index_name} not found."
                )));
            }
            self.depend_on_catalog();
            return Ok(QueryPlan {
                table: None,
                index: None,
                range: KeyRange::all(),
                order,
                filters,
                limit,
                fields: Vec::new(),
            });
        };
        let table_number = table.number;
        let info = self.catalog.resolve_index(table_name, index_name)?;
        let range = nimbus_types::query::plan_index_range(&info.fields, range_exprs)?;
        Ok(QueryPlan {
            table: Some(table_number),
            index: Some(info.number),
            range,
            order,
            filters,
            limit,
            fields: info.fields.clone(),
        })
    }

    /// `queryStream`: prepares a query; returns its handle.
    pub fn open_query(&mut self, query: &SerializedQuery) -> Result<u32, EngineError> {
        if self.queries.len() >= self.limits.max_open_queries {
            return Err(EngineError::User(format!(
                "Too many open queries: the limit is {}",
                self.limits.max_open_queries
            )));
        }
        let plan = self.plan(query)?;
        let id = self.next_query_id;
        self.next_query_id += 1;
        self.queries.insert(id, QueryCursor::new(plan));
        Ok(id)
    }

    /// `queryStreamNext`: the next document, or `None` at the end.
    pub fn next_in_query(&mut self, query_id: u32) -> Result<Option<Document>, EngineError> {
        let Some(mut cursor) = self.queries.remove(&query_id) else {
            return Err(EngineError::User(format!("Query {query_id} is not open")));
        };
        let result = self.advance(&mut cursor);
        self.queries.insert(query_id, cursor);
        result
    }

    /// `queryCleanup`: closes a query, recording what it read.
    pub fn close_query(&mut self, query_id: u32) -> bool {
        match self.queries.remove(&query_id) {
            Some(cursor) => {
                self.record_coverage(&cursor);
                true
            }
            None => false,
        }
    }

    fn advance(&mut self, cursor: &mut QueryCursor) -> Result<Option<Document>, EngineError> {
        if cursor.done {
            return Ok(None);
        }
        if cursor
            .plan
            .limit
            .is_some_and(|limit| cursor.returned >= limit)
        {
            cursor.done = true;
            return Ok(None);
        }
        loop {
            let Some((key, doc)) = self.next_raw(cursor)? else {
                cursor.done = true;
                cursor.last_key = None;
                // Covered the whole range.
                self.record_full(&cursor.plan);
                return Ok(None);
            };
            cursor.last_key = Some(key);
            if !self.passes(&cursor.plan.filters, &doc)? {
                continue;
            }
            cursor.returned += 1;
            if cursor
                .plan
                .limit
                .is_some_and(|limit| cursor.returned >= limit)
            {
                cursor.done = true;
                self.record_coverage(cursor);
            }
            return Ok(Some(doc));
        }
    }

    fn passes(&self, filters: &[Expr], doc: &Document) -> Result<bool, EngineError> {
        for filter in filters {
            if !filter.matches(doc)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The next entry of the cursor's range after `cursor.last_key`, merging the snapshot
    /// with this transaction's own writes. Counts it as scanned.
    fn next_raw(
        &mut self,
        cursor: &mut QueryCursor,
    ) -> Result<Option<(Vec<u8>, Document)>, EngineError> {
        let (Some(index), Some(table)) = (cursor.plan.index, cursor.plan.table) else {
            return Ok(None);
        };
        // Next snapshot entry not superseded by this transaction's writes.
        let from_snapshot = loop {
            if cursor.buffer.is_empty() && !cursor.snapshot_exhausted {
                let fetch = cursor.next_fetch;
                let batch = self.snapshot.scan(
                    index,
                    &cursor.plan.range,
                    cursor.plan.order,
                    cursor.fetched_until.as_deref(),
                    fetch,
                )?;
                cursor.snapshot_exhausted = batch.len() < fetch;
                cursor.next_fetch = (fetch * 2).min(FETCH_MAX);
                if let Some((key, _, _)) = batch.last() {
                    cursor.fetched_until = Some(key.clone());
                }
                cursor.buffer.extend(batch);
            }
            match cursor.buffer.front() {
                None => break None,
                Some((_, id, _)) if self.writes.contains_key(id) => {
                    cursor.buffer.pop_front();
                }
                Some(_) => {
                    break cursor
                        .buffer
                        .front()
                        .map(|(k, _, d)| (k.clone(), d.clone()))
                }
            }
        };
        let from_writes = self.next_written(table, &cursor.plan, cursor.last_key.as_deref());
        let take_snapshot = match (&from_snapshot, &from_writes) {
            (None, None) => return Ok(None),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(a), Some(b)) => match cursor.plan.order {
                ScanOrder::Ascending => a.0 <= b.0,
                ScanOrder::Descending => a.0 >= b.0,
            },
        };
        let next = if take_snapshot {
            cursor.buffer.pop_front();
            from_snapshot
        } else {
            from_writes
        };
        self.count_read(next.as_ref().map(|(_, doc)| doc))?;
        Ok(next)
    }

    fn next_written(
        &self,
        table: TableNumber,
        plan: &QueryPlan,
        after: Option<&[u8]>,
    ) -> Option<(Vec<u8>, Document)> {
        if self.writes.is_empty() {
            return None;
        }
        let bounded = narrowed(&plan.range, plan.order, after);
        let mut best: Option<(Vec<u8>, Document)> = None;
        for (id, write) in &self.writes {
            if id.table != table {
                continue;
            }
            let Some(doc) = &write.new else { continue };
            let key = document_key(&plan.fields, doc);
            if !bounded.contains(&key) {
                continue;
            }
            let better = match (&best, plan.order) {
                (None, _) => true,
                (Some((k, _)), ScanOrder::Ascending) => key < *k,
                (Some((k, _)), ScanOrder::Descending) => key > *k,
            };
            if better {
                best = Some((key, doc.clone()));
            }
        }
        best
    }

    fn record_full(&mut self, plan: &QueryPlan) {
        if let Some(index) = plan.index {
            self.read_set.record(index, plan.range.clone());
        }
    }

    /// Records the part of the range a cursor covered so far.
    fn record_coverage(&mut self, cursor: &QueryCursor) {
        let Some(index) = cursor.plan.index else {
            return;
        };
        if cursor.done && cursor.last_key.is_none() {
            return; // Already recorded in full.
        }
        let covered = match (&cursor.last_key, cursor.plan.order) {
            (None, _) => return,
            (Some(last), ScanOrder::Ascending) => KeyRange {
                start: cursor.plan.range.start.clone(),
                end: Bound::Included(last.clone()),
            },
            (Some(last), ScanOrder::Descending) => KeyRange {
                start: Bound::Included(last.clone()),
                end: cursor.plan.range.end.clone(),
            },
        };
        self.read_set.record(index, covered);
    }

    /// `queryPage`: one page of a paginated query.
    ///
    /// Without an end cursor the page holds up to `page_size` documents; with one, every
    /// document up to and including the end cursor's position, and its continue cursor is
    /// the end cursor. The first paginated query of a transaction takes its end cursor from
    /// the transaction's journal when the caller gives none (a live query re-running keeps
    /// its page boundaries), and records its page's end as the journal.
    ///
    /// Whatever happens, the part of the range the page covered is recorded in the read set
    /// (a failure part-way, such as a read limit, included), so a mutation that catches the
    /// error still commits only against what it saw.
    pub fn page(
        &mut self,
        query: &SerializedQuery,
        cursor: Option<&str>,
        end_cursor: Option<&str>,
        page_size: usize,
    ) -> Result<Page, EngineError> {
        let first_page = !self.journal.used;
        self.journal.used = true;
        let journaled = if first_page && end_cursor.is_none() {
            self.journal.end_cursor.clone()
        } else {
            None
        };
        let end_cursor = end_cursor.or(journaled.as_deref());
        if page_size == 0 && end_cursor.is_none() {
            return Err(EngineError::User(
                "NoDocumentsForPagination: paginationOpts.numItems must be greater than 0".into(),
            ));
        }
        let plan = self.plan(query)?;
        let fingerprint = plan_fingerprint(&plan);
        let start = match cursor {
            Some(text) => self.cursor_codec.decode(text, &fingerprint)?,
            None => CursorPosition::Start,
        };
        let end = match end_cursor {
            Some(text) => Some(self.cursor_codec.decode(text, &fingerprint)?),
            None => None,
        };
        let mut state = QueryCursor::new(QueryPlan {
            limit: None,
            ..plan
        });
        match start {
            CursorPosition::Start => {}
            CursorPosition::After(key) => state.resume_after(key),
            CursorPosition::End => state.done = true,
        }
        let start_key = state.last_key.clone();
        let mut documents = Vec::new();
        let mut last_position = start_key.clone();
        let scanned = self.scan_page(
            &mut state,
            end.as_ref(),
            page_size,
            &mut documents,
            &mut last_position,
        );
        let reached_end = matches!(scanned, Ok(true));
        // Record the covered part of the range: from the start cursor to the last
        // position (or to the end of the range).
        if let Some(index) = state.plan.index {
            let covered = covered_between(
                &state.plan.range,
                state.plan.order,
                start_key.as_deref(),
                if reached_end {
                    None
                } else {
                    last_position.as_deref()
                },
            );
            self.read_set.record(index, covered);
        }
        scanned?;
        let continue_position = match end {
            // The page ends exactly at its end cursor.
            Some(end) => end,
            None if reached_end => CursorPosition::End,
            None => match last_position {
                Some(key) => CursorPosition::After(key),
                None => CursorPosition::Start,
            },
        };
        let is_done = continue_position == CursorPosition::End;
        let continue_cursor = self.cursor_codec.encode(&continue_position, &fingerprint);
        if first_page {
            self.journal.page_end = Some(continue_cursor.clone());
        }
        Ok(Page {
            documents,
            continue_cursor,
            is_done,
        })
    }

    /// The scan of [`Transaction::page`]: fills `documents` and moves `last_position`;
    /// returns whether the end of the range was reached.
    fn scan_page(
        &mut self,
        state: &mut QueryCursor,
        end: Option<&CursorPosition>,
        page_size: usize,
        documents: &mut Vec<Document>,
        last_position: &mut Option<Vec<u8>>,
    ) -> Result<bool, EngineError> {
        if state.done {
            return Ok(true);
        }
        loop {
            if end.is_none() && documents.len() >= page_size {
                return Ok(false);
            }
            let Some((key, doc)) = self.next_raw(state)? else {
                return Ok(true);
            };
            if let Some(CursorPosition::After(end_key)) = end {
                let beyond = match state.plan.order {
                    ScanOrder::Ascending => key > *end_key,
                    ScanOrder::Descending => key < *end_key,
                };
                if beyond {
                    *last_position = Some(end_key.clone());
                    return Ok(false);
                }
            }
            state.last_key = Some(key.clone());
            *last_position = Some(key);
            if self.passes(&state.plan.filters, &doc)? {
                documents.push(doc);
            }
        }
    }

    /// Sets the end cursor the transaction's first paginated query uses when its caller
    /// gives none (a live query's journal).
    pub fn set_journal(&mut self, end_cursor: Option<String>) {
        self.journal.end_cursor = end_cursor;
    }

    /// The end cursor of the transaction's first page, if it read one (the live query's
    /// new journal).
    pub fn page_end(&self) -> Option<&str> {
        self.journal.page_end.as_deref()
    }

    /// Number of documents in a table (`count`): kept per table by every commit, so it
    /// reads no documents and does not count against the read limits. It depends on the
    /// whole table, so any write to it invalidates the read.
    pub fn count(&mut self, table: &str) -> Result<u64, EngineError> {
        let Some(info) = self.catalog.table(table) else {
            self.depend_on_catalog();
            return Ok(0);
        };
        let number = info.number;
        let index = self.catalog.resolve_index(table, BY_ID)?.number;
        self.read_set.record(index, KeyRange::all());
        let mut count = self.snapshot.table_count(number) as i64;
        for (id, write) in &self.writes {
            if id.table != number {
                continue;
            }
            count += i64::from(write.new.is_some()) - i64::from(write.old.is_some());
        }
        Ok(count.max(0) as u64)
    }

    /// Ends the transaction: records what open queries read and returns what the
    /// committer (or a live-query registry) needs.
    pub fn finish(mut self) -> FinishedTransaction {
        let open: Vec<u32> = self.queries.keys().copied().collect();
        for id in open {
            self.close_query(id);
        }
        FinishedTransaction {
            snapshot: self.snapshot,
            catalog: self.catalog,
            writes: self.writes,
            read_set: self.read_set,
            stats: self.stats,
            created_tables: self.created_tables,
            receipt: None,
        }
    }
}

/// What a finished transaction hands to the committer.
pub struct FinishedTransaction {
    pub snapshot: Arc<Snapshot>,
    pub catalog: Arc<Catalog>,
    pub writes: BTreeMap<DocumentId, PendingWrite>,
    pub read_set: ReadSet,
    pub stats: TransactionStats,
    pub created_tables: Vec<String>,
    /// Written in the same batch as the writes (a mutation that must run exactly once).
    pub receipt: Option<nimbus_storage::Receipt>,
}

/// A position in a paginated query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorPosition {
    Start,
    After(Vec<u8>),
    End,
}

fn covered_between(
    range: &KeyRange,
    order: ScanOrder,
    from: Option<&[u8]>,
    to: Option<&[u8]>,
) -> KeyRange {
    let (mut start, mut end) = (range.start.clone(), range.end.clone());
    match order {
        ScanOrder::Ascending => {
            if let Some(from) = from {
                start = Bound::Excluded(from.to_vec());
            }
            if let Some(to) = to {
                end = Bound::Included(to.to_vec());
            }
        }
        ScanOrder::Descending => {
            if let Some(from) = from {
                end = Bound::Excluded(from.to_vec());
            }
            if let Some(to) = to {
                start = Bound::Included(to.to_vec());
            }
        }
    }
    KeyRange { start, end }
}

/// Identifies a query's index, range and order, so a cursor of one query is rejected by
/// another.
fn plan_fingerprint(plan: &QueryPlan) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&plan.index.map_or(0, |i| i.0).to_be_bytes());
    out.push(u8::from(plan.order == ScanOrder::Ascending));
    for bound in [&plan.range.start, &plan.range.end] {
        match bound {
            Bound::Unbounded => out.push(0),
            Bound::Included(k) => {
                out.push(1);
                out.extend_from_slice(&(k.len() as u64).to_be_bytes());
                out.extend_from_slice(k);
            }
            Bound::Excluded(k) => {
                out.push(2);
                out.extend_from_slice(&(k.len() as u64).to_be_bytes());
                out.extend_from_slice(k);
            }
        }
    }
    out
}

/// Key of a document in the `by_id` index.
fn id_key(id_text: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(id_text.len() + 3);
    encode_value(&Value::String(id_text.to_string()), &mut key);
    key
}

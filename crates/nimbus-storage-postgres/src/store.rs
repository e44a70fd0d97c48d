//! One open namespace: its runtime connection pool and the [`TenantStore`] methods.
//!
//! Copying a namespace: an export page is one keyset statement per kind of row it
//! reaches (`Statements::export`), each its own snapshot; an import is one transaction
//! written like a batch (`BEGIN`, upserts of arrays pipelined, an optional `max_ts`
//! update, `COMMIT`).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use nimbus_storage::{
    decode_document_id, encode_document_id, export_page_by_kind, ExportChunk, ExportCursor,
    ExportKind, ExportPage, ExportPosition, ExportedRow, IndexNumber, IndexScan, IndexWrite,
    KeyRange, NamespaceStats, ScanOrder, StorageError, StoredDocument, TenantStore, WriteBatch,
};
use nimbus_types::{DocumentId, TableNumber, Timestamp};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{NoTls, Row};

use crate::bridge::Bridge;
use crate::error::{pg, pool};
use crate::sql::{Statements, FORMAT_VERSION};
use crate::PostgresConfig;

/// Rows per page of a table scan: the bound on what a scan holds beyond what its caller
/// has not yet visited (one page in the channel, one being fetched). Documents are at
/// most 1 MiB (`nimbus_types::value::MAX_DOCUMENT_SIZE`), so two pages are at most 128 MiB, and
/// typically (documents of a few hundred bytes) some tens of KiB.
const SCAN_PAGE_ROWS: usize = 64;

/// One statement of a batch: what it does (for errors), its SQL and its typed parameters.
type Statement<'a> = (&'static str, &'a str, Vec<(&'a (dyn ToSql + Sync), Type)>);

pub(crate) struct PostgresStore {
    inner: Arc<Inner>,
    bridge: Arc<Bridge>,
}

struct Inner {
    namespace: String,
    sql: Statements,
    pool: Pool,
    /// Bound on one trait call ([`PostgresConfig::operation_timeout`]).
    operation_timeout: Duration,
}

tokio::task_local! {
    /// Set once the trait call this task runs for has given up (its operation timeout
    /// passed). Connections it holds are then closed rather than pooled: one may still have
    /// a statement running, and the next caller would wait behind it.
    static ABANDONED: Arc<AtomicBool>;
}

/// A pooled connection that is closed instead of returned when its call was abandoned.
pub(crate) struct Connection {
    object: Option<deadpool_postgres::Object>,
    abandoned: Option<Arc<AtomicBool>>,
}

impl std::ops::Deref for Connection {
    type Target = deadpool_postgres::Object;
    fn deref(&self) -> &Self::Target {
        // Invariant: `object` is `Some` until `drop`.
        self.object.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl std::ops::DerefMut for Connection {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.object.as_mut().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let abandoned = self
            .abandoned
            .as_ref()
            .is_some_and(|flag| flag.load(Ordering::Acquire));
        if let (true, Some(object)) = (abandoned, self.object.take()) {
            // Out of the pool; dropping the client closes the connection.
            drop(deadpool_postgres::Object::take(object));
        }
    }
}

impl PostgresStore {
    pub(crate) fn open(
        namespace: &str,
        schema: &str,
        runtime: tokio_postgres::Config,
        config: &PostgresConfig,
        bridge: Arc<Bridge>,
    ) -> Result<PostgresStore, StorageError> {
        let manager = Manager::from_config(
            runtime,
            NoTls,
            ManagerConfig {
                // A pooled connection is checked only for being closed: a statement on a
                // connection that died since fails as busy and the engine retries.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.max_connections_per_namespace.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(config.wait_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.connect_timeout))
            .build()
            .map_err(|e| StorageError::Io(format!("{namespace}: building the pool: {e}")))?;
        let store = PostgresStore {
            inner: Arc::new(Inner {
                namespace: namespace.to_string(),
                sql: Statements::new(schema),
                pool,
                operation_timeout: config.operation_timeout,
            }),
            bridge,
        };
        // No existence check of its own (that would take a control connection per
        // activation): a missing database, schema or table is a missing namespace.
        let version = store.with(|inner| async move {
            let missing = |e: &tokio_postgres::Error| {
                [
                    SqlState::INVALID_CATALOG_NAME,
                    SqlState::INVALID_SCHEMA_NAME,
                    SqlState::UNDEFINED_TABLE,
                ]
                .iter()
                .any(|state| e.code() == Some(state))
            };
            let not_found = || StorageError::NamespaceNotFound(inner.namespace.clone());
            let client = match inner.pool.get().await {
                Ok(object) => Connection::new(object),
                Err(deadpool_postgres::PoolError::Backend(e)) if missing(&e) => {
                    return Err(not_found())
                }
                Err(e) => return Err(crate::error::pool("connect", &inner.namespace, e)),
            };
            let row = match client.query_typed_one(&inner.sql.format_version, &[]).await {
                Ok(row) => row,
                Err(e) if missing(&e) => return Err(not_found()),
                Err(e) => return Err(pg("read format version", &inner.namespace, e)),
            };
            row.try_get::<_, i64>(0)
                .map_err(|e| pg("read format version", &inner.namespace, e))
        })?;
        if version > FORMAT_VERSION {
            return Err(StorageError::Corrupted {
                namespace: namespace.to_string(),
                detail: format!(
                    "format version {version} is newer than this Nimbus ({FORMAT_VERSION})"
                ),
            });
        }
        Ok(store)
    }

    /// Runs `work` with the namespace on the backend's runtime, for at most the operation
    /// timeout: past it the call fails as busy (retryable) and the connections it holds
    /// are closed. A write abandoned this way may or may not have committed, like one whose
    /// connection broke; the engine treats both as a storage failure and reloads from what
    /// is durable.
    fn with<T, F, Fut>(&self, work: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Inner>) -> Fut,
        Fut: std::future::Future<Output = Result<T, StorageError>> + Send + 'static,
    {
        let limit = self.inner.operation_timeout;
        let inner = self.inner.clone();
        let abandoned = Arc::new(AtomicBool::new(false));
        let mut work = Box::pin(ABANDONED.scope(abandoned.clone(), work(self.inner.clone())));
        self.bridge.run(async move {
            match tokio::time::timeout(limit, &mut work).await {
                Ok(result) => result,
                Err(_) => {
                    // Flag first, then drop: the connections see the flag as they drop.
                    abandoned.store(true, Ordering::Release);
                    drop(work);
                    Err(inner.timed_out())
                }
            }
        })
    }
}

impl Connection {
    fn new(object: deadpool_postgres::Object) -> Connection {
        Connection {
            object: Some(object),
            abandoned: ABANDONED.try_with(Arc::clone).ok(),
        }
    }
}

impl Inner {
    /// One step of a call spawned on its own (a table scan), bounded by the operation
    /// timeout; past it the task's connections are marked to be closed.
    async fn bounded<T>(
        &self,
        step: impl std::future::Future<Output = Result<T, StorageError>>,
    ) -> Result<T, StorageError> {
        match tokio::time::timeout(self.operation_timeout, step).await {
            Ok(result) => result,
            Err(_) => {
                let _ = ABANDONED.try_with(|flag| flag.store(true, Ordering::Release));
                Err(self.timed_out())
            }
        }
    }

    fn timed_out(&self) -> StorageError {
        StorageError::Busy(format!(
            "{}: Postgres did not answer within {} s",
            self.namespace,
            self.operation_timeout.as_secs_f64()
        ))
    }

    async fn connection(&self) -> Result<Connection, StorageError> {
        self.pool
            .get()
            .await
            .map(Connection::new)
            .map_err(|e| pool("connect", &self.namespace, e))
    }

    fn corrupted(&self, detail: String) -> StorageError {
        StorageError::Corrupted {
            namespace: self.namespace.clone(),
            detail,
        }
    }

    /// A document from a row of `(id, table_number, ts, body)` starting at column `at`.
    fn document(&self, row: &Row, at: usize) -> Result<StoredDocument, StorageError> {
        let get = |e| pg("read row", &self.namespace, e);
        let id: Vec<u8> = row.try_get(at).map_err(get)?;
        let table: i64 = row.try_get(at + 1).map_err(get)?;
        let ts: i64 = row.try_get(at + 2).map_err(get)?;
        let body: Vec<u8> = row.try_get(at + 3).map_err(get)?;
        let id = decode_document_id(&id)
            .ok_or_else(|| self.corrupted("document id is not 20 bytes".into()))?;
        Ok(StoredDocument {
            id,
            table: TableNumber(
                u32::try_from(table)
                    .map_err(|_| self.corrupted(format!("table number {table}")))?,
            ),
            ts: Timestamp(
                u64::try_from(ts).map_err(|_| self.corrupted(format!("timestamp {ts}")))?,
            ),
            body,
        })
    }

    /// Writes a batch in one transaction: `BEGIN`, then every statement pipelined (sent
    /// together, run in order, one round trip), then `COMMIT`. The first statement moves
    /// `max_ts` forward and takes its row lock; when it changes no row the batch is refused
    /// and the transaction is rolled back (dropped), so nothing of it stays.
    async fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        let ns = &self.namespace;
        let sql = &self.sql;
        let ts = i64::try_from(batch.ts.0).map_err(|_| {
            StorageError::Io(format!("{ns}: batch timestamp {} too large", batch.ts))
        })?;
        let rows = BatchRows::new(&batch);
        let mut ops: Vec<Statement> = Vec::new();
        ops.push((
            "advance max_ts",
            &sql.advance_max_ts,
            vec![(&ts, Type::INT8)],
        ));
        if !rows.put_ids.is_empty() {
            ops.push((
                "write documents",
                &sql.put_documents,
                vec![
                    (&rows.put_ids, Type::BYTEA_ARRAY),
                    (&rows.put_tables, Type::INT8_ARRAY),
                    (&ts, Type::INT8),
                    (&rows.put_bodies, Type::BYTEA_ARRAY),
                ],
            ));
        }
        if !rows.deleted_ids.is_empty() {
            ops.push((
                "delete documents",
                &sql.delete_documents,
                vec![(&rows.deleted_ids, Type::BYTEA_ARRAY)],
            ));
        }
        for step in &rows.index_steps {
            match step {
                IndexStep::Entries(entries) => {
                    if !entries.del_keys.is_empty() {
                        ops.push((
                            "delete index entries",
                            &sql.delete_entries,
                            vec![
                                (&entries.del_indexes, Type::INT8_ARRAY),
                                (&entries.del_keys, Type::BYTEA_ARRAY),
                            ],
                        ));
                    }
                    if !entries.put_keys.is_empty() {
                        ops.push((
                            "write index entries",
                            &sql.put_entries,
                            vec![
                                (&entries.put_indexes, Type::INT8_ARRAY),
                                (&entries.put_keys, Type::BYTEA_ARRAY),
                                (&entries.put_ids, Type::BYTEA_ARRAY),
                            ],
                        ));
                    }
                }
                IndexStep::Drop(index) => {
                    ops.push(("drop index", &sql.drop_index, vec![(index, Type::INT8)]));
                }
                IndexStep::DropChunk(index, limit) => ops.push((
                    "drop index chunk",
                    &sql.drop_index_chunk,
                    vec![(index, Type::INT8), (limit, Type::INT8)],
                )),
            }
        }
        if !rows.put_names.is_empty() {
            ops.push((
                "write globals",
                &sql.put_globals,
                vec![
                    (&rows.put_names, Type::TEXT_ARRAY),
                    (&rows.put_values, Type::BYTEA_ARRAY),
                ],
            ));
        }
        if !rows.deleted_names.is_empty() {
            ops.push((
                "delete globals",
                &sql.delete_globals,
                vec![(&rows.deleted_names, Type::TEXT_ARRAY)],
            ));
        }
        if !rows.receipt_keys.is_empty() {
            ops.push((
                "write receipts",
                &sql.put_receipts,
                vec![
                    (&rows.receipt_keys, Type::BYTEA_ARRAY),
                    (&ts, Type::INT8),
                    (&rows.receipt_bodies, Type::BYTEA_ARRAY),
                ],
            ));
        }
        if let Some(before) = &rows.expire_before {
            ops.push((
                "expire receipts",
                &sql.expire_receipts,
                vec![(before, Type::INT8)],
            ));
        }

        let mut client = self.connection().await?;
        let tx = client.transaction().await.map_err(|e| pg("begin", ns, e))?;
        // Polled in order, so sent in order; the server runs them in that order. On the
        // first failure the rest are dropped (their answers are discarded) and so is `tx`.
        let done = futures::future::try_join_all(ops.iter().map(|(what, statement, params)| {
            let tx = &tx;
            async move {
                tx.execute_typed(statement, params)
                    .await
                    .map_err(|e| pg(what, ns, e))
            }
        }))
        .await?;
        if done.first() != Some(&1) {
            let max_ts = tx
                .query_typed_one(&sql.max_ts, &[])
                .await
                .and_then(|row| row.try_get::<_, i64>(0))
                .map_err(|e| pg("read max_ts", ns, e))?;
            return Err(StorageError::Io(format!(
                "{ns}: batch timestamp {} is not after the last one ({max_ts})",
                batch.ts
            )));
        }
        tx.commit().await.map_err(|e| pg("commit", ns, e))
    }

    /// Writes exported rows and, when given, `max_ts` in one transaction: `BEGIN`, one
    /// upsert per kind of row (rows as arrays, pipelined like a batch's), then `COMMIT`.
    async fn import(
        &self,
        rows: Vec<ExportedRow>,
        max_ts: Option<Timestamp>,
    ) -> Result<(), StorageError> {
        let ns = &self.namespace;
        let sql = &self.sql;
        let rows = ImportRows::new(ns, &rows)?;
        let max_ts = max_ts.map(|ts| i64_timestamp(ns, ts)).transpose()?;
        let mut ops: Vec<Statement> = Vec::new();
        if !rows.doc_ids.is_empty() {
            ops.push((
                "import documents",
                &sql.import_documents,
                vec![
                    (&rows.doc_ids, Type::BYTEA_ARRAY),
                    (&rows.doc_tables, Type::INT8_ARRAY),
                    (&rows.doc_ts, Type::INT8_ARRAY),
                    (&rows.doc_bodies, Type::BYTEA_ARRAY),
                ],
            ));
        }
        if !rows.entry_keys.is_empty() {
            ops.push((
                "import index entries",
                &sql.put_entries,
                vec![
                    (&rows.entry_indexes, Type::INT8_ARRAY),
                    (&rows.entry_keys, Type::BYTEA_ARRAY),
                    (&rows.entry_ids, Type::BYTEA_ARRAY),
                ],
            ));
        }
        if !rows.global_names.is_empty() {
            ops.push((
                "import globals",
                &sql.put_globals,
                vec![
                    (&rows.global_names, Type::TEXT_ARRAY),
                    (&rows.global_values, Type::BYTEA_ARRAY),
                ],
            ));
        }
        if !rows.receipt_keys.is_empty() {
            ops.push((
                "import receipts",
                &sql.import_receipts,
                vec![
                    (&rows.receipt_keys, Type::BYTEA_ARRAY),
                    (&rows.receipt_ts, Type::INT8_ARRAY),
                    (&rows.receipt_bodies, Type::BYTEA_ARRAY),
                ],
            ));
        }
        if let Some(max_ts) = &max_ts {
            ops.push(("import max_ts", &sql.set_max_ts, vec![(max_ts, Type::INT8)]));
        }
        if ops.is_empty() {
            return Ok(());
        }

        let mut client = self.connection().await?;
        let tx = client.transaction().await.map_err(|e| pg("begin", ns, e))?;
        let done = futures::future::try_join_all(ops.iter().map(|(what, statement, params)| {
            let tx = &tx;
            async move {
                tx.execute_typed(statement, params)
                    .await
                    .map_err(|e| pg(what, ns, e))
            }
        }))
        .await?;
        if max_ts.is_some() && done.last() != Some(&1) {
            return Err(self.corrupted("the max_ts row is missing".into()));
        }
        tx.commit().await.map_err(|e| pg("commit", ns, e))
    }

    /// Reads one kind's rows for [`export_page_by_kind`] in one statement.
    async fn export_chunk(
        &self,
        after: ChunkAfter,
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<ExportChunk, StorageError> {
        let ns = &self.namespace;
        let kind = after.kind();
        let rows_max = i64::try_from(max_rows).unwrap_or(i64::MAX);
        let selected_max = rows_max.saturating_add(1);
        let bytes_max = i64::try_from(max_bytes).unwrap_or(i64::MAX);
        let mut params: Vec<(&(dyn ToSql + Sync), Type)> = vec![
            (&rows_max, Type::INT8),
            (&selected_max, Type::INT8),
            (&bytes_max, Type::INT8),
        ];
        let is_after = match &after {
            ChunkAfter::Start(_) => false,
            ChunkAfter::Key(_, key) => {
                params.push((key, Type::BYTEA));
                true
            }
            ChunkAfter::Entry(index, key) => {
                params.push((index, Type::INT8));
                params.push((key, Type::BYTEA));
                true
            }
            ChunkAfter::Name(name) => {
                params.push((name, Type::TEXT));
                true
            }
        };
        let statement = self.sql.export(kind, is_after);
        let client = self.connection().await?;
        let rows = client
            .query_typed(&statement, &params)
            .await
            .map_err(|e| pg("export", ns, e))?;
        let get = |e| pg("export", ns, e);
        let mut chunk = ExportChunk::default();
        let mut selected = 0i64;
        for row in &rows {
            let exported = match kind {
                ExportKind::Documents => {
                    selected = row.try_get(4).map_err(get)?;
                    ExportedRow::Document(self.document(row, 0)?)
                }
                ExportKind::IndexEntries => {
                    selected = row.try_get(3).map_err(get)?;
                    let index: i64 = row.try_get(0).map_err(get)?;
                    let id: Vec<u8> = row.try_get(2).map_err(get)?;
                    ExportedRow::IndexEntry {
                        index: IndexNumber(
                            u32::try_from(index)
                                .map_err(|_| self.corrupted(format!("index number {index}")))?,
                        ),
                        key: row.try_get(1).map_err(get)?,
                        id: decode_document_id(&id)
                            .ok_or_else(|| self.corrupted("document id is not 20 bytes".into()))?,
                    }
                }
                ExportKind::Globals => {
                    selected = row.try_get(2).map_err(get)?;
                    ExportedRow::Global {
                        name: row.try_get(0).map_err(get)?,
                        value: row.try_get(1).map_err(get)?,
                    }
                }
                ExportKind::Receipts => {
                    selected = row.try_get(3).map_err(get)?;
                    let ts: i64 = row.try_get(1).map_err(get)?;
                    ExportedRow::Receipt {
                        key: row.try_get(0).map_err(get)?,
                        ts: Timestamp(
                            u64::try_from(ts)
                                .map_err(|_| self.corrupted(format!("timestamp {ts}")))?,
                        ),
                        body: row.try_get(2).map_err(get)?,
                    }
                }
            };
            chunk.rows.push(exported);
        }
        // Every row selected was returned: nothing of this kind follows. (No row at all:
        // none was selected, since the first always comes.)
        chunk.exhausted = usize::try_from(selected).is_ok_and(|n| n <= chunk.rows.len());
        Ok(chunk)
    }

    async fn scan_index(
        &self,
        index: IndexNumber,
        range: KeyRange,
        order: ScanOrder,
        limit: usize,
    ) -> Result<IndexScan, StorageError> {
        let ns = &self.namespace;
        let index = i64::from(index.0);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut bounds = String::new();
        let mut keys: Vec<&[u8]> = Vec::new();
        for (bound, included, excluded) in [(&range.start, ">=", ">"), (&range.end, "<=", "<")] {
            let (op, key) = match bound {
                Bound::Included(key) => (included, key),
                Bound::Excluded(key) => (excluded, key),
                Bound::Unbounded => continue,
            };
            keys.push(key);
            bounds.push_str(&format!(" AND e.key {op} ${}", keys.len() + 1));
        }
        let statement =
            self.sql
                .scan_index(&bounds, order == ScanOrder::Descending, keys.len() + 2);
        let mut params: Vec<(&(dyn ToSql + Sync), Type)> = vec![(&index, Type::INT8)];
        for key in &keys {
            params.push((key, Type::BYTEA));
        }
        params.push((&limit, Type::INT8));
        let client = self.connection().await?;
        let rows = client
            .query_typed(&statement, &params)
            .await
            .map_err(|e| pg("scan index", ns, e))?;
        let mut scan = IndexScan::default();
        for row in &rows {
            let get = |e| pg("scan index", ns, e);
            let ts: i64 = row.try_get(0).map_err(get)?;
            scan.ts =
                Timestamp(u64::try_from(ts).map_err(|_| self.corrupted(format!("max_ts {ts}")))?);
            // The meta row joined to an empty range: one row of NULLs.
            let key: Option<Vec<u8>> = row.try_get(1).map_err(get)?;
            if let Some(key) = key {
                scan.entries.push((key, self.document(row, 2)?));
            }
        }
        if rows.is_empty() {
            return Err(self.corrupted("the max_ts row is missing".into()));
        }
        Ok(scan)
    }

    /// Streams one table's documents into `pages` from a cursor (one snapshot), a page at
    /// a time, until the table ends or the receiver is gone.
    async fn scan_table(
        &self,
        table: TableNumber,
        pages: &tokio::sync::mpsc::Sender<Result<Vec<StoredDocument>, StorageError>>,
    ) -> Result<(), StorageError> {
        let ns = &self.namespace;
        // Each step waiting on Postgres is bounded on its own; waiting for the caller to
        // take a page is not (it is not Postgres that is slow then).
        let mut client = self.bounded(self.connection()).await?;
        let tx = self
            .bounded(async {
                client
                    .transaction()
                    .await
                    .map_err(|e| pg("begin scan", ns, e))
            })
            .await?;
        self.bounded(async {
            tx.batch_execute(&self.sql.declare_table_cursor("nimbus_scan", table.0))
                .await
                .map_err(|e| pg("scan table", ns, e))
        })
        .await?;
        let fetch = format!("FETCH {SCAN_PAGE_ROWS} FROM nimbus_scan");
        loop {
            let rows = self
                .bounded(async {
                    tx.query_typed(&fetch, &[])
                        .await
                        .map_err(|e| pg("scan table", ns, e))
                })
                .await?;
            if rows.is_empty() {
                return Ok(());
            }
            let page = rows
                .iter()
                .map(|row| self.document(row, 0))
                .collect::<Result<Vec<_>, _>>()?;
            if pages.send(Ok(page)).await.is_err() {
                return Ok(()); // the caller stopped early
            }
        }
    }
}

impl TenantStore for PostgresStore {
    fn write(&self, batch: &WriteBatch) -> Result<(), StorageError> {
        let batch = batch.clone();
        self.with(|inner| async move { inner.write(batch).await })
    }

    fn export_page(
        &self,
        from: &ExportPosition,
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<ExportPage, StorageError> {
        export_page_by_kind(from, max_rows, max_bytes, &mut |cursor, rows, bytes| {
            let after = ChunkAfter::new(cursor);
            self.with(|inner| async move { inner.export_chunk(after, rows, bytes).await })
        })
    }

    fn import(&self, rows: &[ExportedRow], max_ts: Option<Timestamp>) -> Result<(), StorageError> {
        let rows = rows.to_vec();
        self.with(|inner| async move { inner.import(rows, max_ts).await })
    }

    fn max_ts(&self) -> Result<Timestamp, StorageError> {
        self.with(|inner| async move {
            let client = inner.connection().await?;
            let ts: i64 = client
                .query_typed_one(&inner.sql.max_ts, &[])
                .await
                .and_then(|row| row.try_get(0))
                .map_err(|e| pg("read max_ts", &inner.namespace, e))?;
            u64::try_from(ts)
                .map(Timestamp)
                .map_err(|_| inner.corrupted(format!("max_ts {ts}")))
        })
    }

    fn get_global(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let name = name.to_string();
        self.with(|inner| async move {
            let client = inner.connection().await?;
            let row = client
                .query_typed_opt(&inner.sql.get_global, &[(&name, Type::TEXT)])
                .await
                .map_err(|e| pg("read global", &inner.namespace, e))?;
            row.map(|row| row.try_get(0))
                .transpose()
                .map_err(|e| pg("read global", &inner.namespace, e))
        })
    }

    fn get_document(&self, id: &DocumentId) -> Result<Option<StoredDocument>, StorageError> {
        let id = encode_document_id(id);
        self.with(|inner| async move {
            let client = inner.connection().await?;
            let row = client
                .query_typed_opt(&inner.sql.get_document, &[(&&id[..], Type::BYTEA)])
                .await
                .map_err(|e| pg("read document", &inner.namespace, e))?;
            row.map(|row| inner.document(&row, 0)).transpose()
        })
    }

    fn scan_table(
        &self,
        table: TableNumber,
        visit: &mut dyn FnMut(StoredDocument) -> bool,
    ) -> Result<(), StorageError> {
        let (pages_tx, mut pages) = tokio::sync::mpsc::channel(1);
        let inner = self.inner.clone();
        let abandoned = Arc::new(AtomicBool::new(false));
        self.bridge.spawn(ABANDONED.scope(abandoned, async move {
            if let Err(e) = inner.scan_table(table, &pages_tx).await {
                let _ = pages_tx.send(Err(e)).await;
            }
        }))?;
        // A plain executor wait, not `blocking_recv`: sound on any thread.
        while let Some(page) = futures::executor::block_on(pages.recv()) {
            for doc in page? {
                if !visit(doc) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn scan_index(
        &self,
        index: IndexNumber,
        range: &KeyRange,
        order: ScanOrder,
        limit: usize,
    ) -> Result<IndexScan, StorageError> {
        let range = range.clone();
        self.with(|inner| async move { inner.scan_index(index, range, order, limit).await })
    }

    fn stats(&self) -> Result<NamespaceStats, StorageError> {
        self.with(|inner| async move {
            let client = inner.connection().await?;
            let row = client
                .query_typed_one(&inner.sql.stats, &[])
                .await
                .map_err(|e| pg("stats", &inner.namespace, e))?;
            let get = |e| pg("stats", &inner.namespace, e);
            let documents: i64 = row.try_get(0).map_err(get)?;
            let bytes: i64 = row.try_get(1).map_err(get)?;
            Ok(NamespaceStats {
                documents: u64::try_from(documents).unwrap_or(0),
                body_bytes: u64::try_from(bytes).unwrap_or(0),
            })
        })
    }

    fn table_counts(&self) -> Result<Vec<(TableNumber, u64)>, StorageError> {
        self.with(|inner| async move {
            let client = inner.connection().await?;
            let rows = client
                .query_typed(&inner.sql.table_counts, &[])
                .await
                .map_err(|e| pg("table counts", &inner.namespace, e))?;
            rows.iter()
                .map(|row| {
                    let get = |e| pg("table counts", &inner.namespace, e);
                    let table: i64 = row.try_get(0).map_err(get)?;
                    let count: i64 = row.try_get(1).map_err(get)?;
                    let table = u32::try_from(table)
                        .map_err(|_| inner.corrupted(format!("table number {table}")))?;
                    Ok((TableNumber(table), u64::try_from(count).unwrap_or(0)))
                })
                .collect()
        })
    }

    fn get_receipt(&self, key: &[u8]) -> Result<Option<(Timestamp, Vec<u8>)>, StorageError> {
        let key = key.to_vec();
        self.with(|inner| async move {
            let client = inner.connection().await?;
            let row = client
                .query_typed_opt(&inner.sql.get_receipt, &[(&key, Type::BYTEA)])
                .await
                .map_err(|e| pg("read receipt", &inner.namespace, e))?;
            let Some(row) = row else { return Ok(None) };
            let get = |e| pg("read receipt", &inner.namespace, e);
            let ts: i64 = row.try_get(0).map_err(get)?;
            let body: Vec<u8> = row.try_get(1).map_err(get)?;
            Ok(Some((Timestamp(u64::try_from(ts).unwrap_or(0)), body)))
        })
    }
}

fn i64_timestamp(ns: &str, ts: Timestamp) -> Result<i64, StorageError> {
    i64::try_from(ts.0).map_err(|_| StorageError::Io(format!("{ns}: timestamp {ts} too large")))
}

/// An [`ExportCursor`] as the runtime task takes it (owned), with the key as bound.
enum ChunkAfter {
    /// From the kind's first row.
    Start(ExportKind),
    /// After a document ID (encoded) or a receipt key.
    Key(ExportKind, Vec<u8>),
    /// After an index entry.
    Entry(i64, Vec<u8>),
    /// After a global.
    Name(String),
}

impl ChunkAfter {
    fn new(cursor: ExportCursor<'_>) -> ChunkAfter {
        match cursor {
            ExportCursor::Documents(Some(id)) => {
                ChunkAfter::Key(ExportKind::Documents, encode_document_id(id).to_vec())
            }
            ExportCursor::IndexEntries(Some((index, key))) => {
                ChunkAfter::Entry(i64::from(index.0), key.to_vec())
            }
            ExportCursor::Globals(Some(name)) => ChunkAfter::Name(name.to_string()),
            ExportCursor::Receipts(Some(key)) => {
                ChunkAfter::Key(ExportKind::Receipts, key.to_vec())
            }
            ExportCursor::Documents(None)
            | ExportCursor::IndexEntries(None)
            | ExportCursor::Globals(None)
            | ExportCursor::Receipts(None) => ChunkAfter::Start(cursor.kind()),
        }
    }

    fn kind(&self) -> ExportKind {
        match self {
            ChunkAfter::Start(kind) | ChunkAfter::Key(kind, _) => *kind,
            ChunkAfter::Entry(..) => ExportKind::IndexEntries,
            ChunkAfter::Name(_) => ExportKind::Globals,
        }
    }
}

/// Exported rows as the arrays the import statements take: only the last row of each key
/// (one `INSERT ... ON CONFLICT` may not touch a row twice).
struct ImportRows<'a> {
    doc_ids: Vec<Vec<u8>>,
    doc_tables: Vec<i64>,
    doc_ts: Vec<i64>,
    doc_bodies: Vec<&'a [u8]>,
    entry_indexes: Vec<i64>,
    entry_keys: Vec<&'a [u8]>,
    entry_ids: Vec<Vec<u8>>,
    global_names: Vec<&'a str>,
    global_values: Vec<&'a [u8]>,
    receipt_keys: Vec<&'a [u8]>,
    receipt_ts: Vec<i64>,
    receipt_bodies: Vec<&'a [u8]>,
}

impl<'a> ImportRows<'a> {
    fn new(ns: &str, rows: &'a [ExportedRow]) -> Result<ImportRows<'a>, StorageError> {
        let mut documents: BTreeMap<[u8; 20], (i64, i64, &[u8])> = BTreeMap::new();
        let mut entries: BTreeMap<(i64, &[u8]), [u8; 20]> = BTreeMap::new();
        let mut globals: BTreeMap<&str, &[u8]> = BTreeMap::new();
        let mut receipts: BTreeMap<&[u8], (i64, &[u8])> = BTreeMap::new();
        for row in rows {
            match row {
                ExportedRow::Document(doc) => {
                    let value = (
                        i64::from(doc.table.0),
                        i64_timestamp(ns, doc.ts)?,
                        &doc.body[..],
                    );
                    documents.insert(encode_document_id(&doc.id), value);
                }
                ExportedRow::IndexEntry { index, key, id } => {
                    entries.insert((i64::from(index.0), key), encode_document_id(id));
                }
                ExportedRow::Global { name, value } => {
                    globals.insert(name, value);
                }
                ExportedRow::Receipt { key, ts, body } => {
                    receipts.insert(key, (i64_timestamp(ns, *ts)?, body));
                }
            }
        }
        let mut out = ImportRows {
            doc_ids: Vec::with_capacity(documents.len()),
            doc_tables: Vec::with_capacity(documents.len()),
            doc_ts: Vec::with_capacity(documents.len()),
            doc_bodies: Vec::with_capacity(documents.len()),
            entry_indexes: Vec::with_capacity(entries.len()),
            entry_keys: Vec::with_capacity(entries.len()),
            entry_ids: Vec::with_capacity(entries.len()),
            global_names: globals.keys().copied().collect(),
            global_values: globals.values().copied().collect(),
            receipt_keys: Vec::with_capacity(receipts.len()),
            receipt_ts: Vec::with_capacity(receipts.len()),
            receipt_bodies: Vec::with_capacity(receipts.len()),
        };
        for (id, (table, ts, body)) in documents {
            out.doc_ids.push(id.to_vec());
            out.doc_tables.push(table);
            out.doc_ts.push(ts);
            out.doc_bodies.push(body);
        }
        for ((index, key), id) in entries {
            out.entry_indexes.push(index);
            out.entry_keys.push(key);
            out.entry_ids.push(id.to_vec());
        }
        for (key, (ts, body)) in receipts {
            out.receipt_keys.push(key);
            out.receipt_ts.push(ts);
            out.receipt_bodies.push(body);
        }
        Ok(out)
    }
}

/// A batch as the arrays its statements take: only the last write of each key (one
/// `INSERT ... ON CONFLICT` may not touch a row twice), index writes coalesced per key
/// between drops (a drop applies after the writes before it and before those after it).
struct BatchRows<'a> {
    put_ids: Vec<Vec<u8>>,
    put_tables: Vec<i64>,
    put_bodies: Vec<&'a [u8]>,
    deleted_ids: Vec<Vec<u8>>,
    index_steps: Vec<IndexStep<'a>>,
    put_names: Vec<&'a str>,
    put_values: Vec<&'a [u8]>,
    deleted_names: Vec<&'a str>,
    receipt_keys: Vec<&'a [u8]>,
    receipt_bodies: Vec<&'a [u8]>,
    expire_before: Option<i64>,
}

impl<'a> BatchRows<'a> {
    fn new(batch: &'a WriteBatch) -> BatchRows<'a> {
        let mut documents: BTreeMap<[u8; 20], Option<(i64, &[u8])>> = BTreeMap::new();
        for doc in &batch.documents {
            let value = doc
                .body
                .as_deref()
                .map(|body| (i64::from(doc.table.0), body));
            documents.insert(encode_document_id(&doc.id), value);
        }
        let (mut put_ids, mut put_tables, mut put_bodies, mut deleted_ids) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (id, value) in documents {
            match value {
                Some((table, body)) => {
                    put_ids.push(id.to_vec());
                    put_tables.push(table);
                    put_bodies.push(body);
                }
                None => deleted_ids.push(id.to_vec()),
            }
        }

        let mut index_steps = Vec::new();
        let mut pending: BTreeMap<(i64, &[u8]), Option<[u8; 20]>> = BTreeMap::new();
        for write in &batch.indexes {
            match write {
                IndexWrite::Insert { index, key, id } => {
                    pending.insert((i64::from(index.0), key), Some(encode_document_id(id)));
                }
                IndexWrite::Delete { index, key } => {
                    pending.insert((i64::from(index.0), key), None);
                }
                IndexWrite::DropIndex { index } => {
                    let before = std::mem::take(&mut pending);
                    index_steps.push(IndexStep::Entries(EntryRows::from_pending(before)));
                    index_steps.push(IndexStep::Drop(i64::from(index.0)));
                }
                IndexWrite::DropIndexChunk { index, max_entries } => {
                    let before = std::mem::take(&mut pending);
                    index_steps.push(IndexStep::Entries(EntryRows::from_pending(before)));
                    let limit = i64::try_from(*max_entries).unwrap_or(i64::MAX);
                    index_steps.push(IndexStep::DropChunk(i64::from(index.0), limit));
                }
            }
        }
        index_steps.push(IndexStep::Entries(EntryRows::from_pending(pending)));

        let mut globals: BTreeMap<&str, Option<&[u8]>> = BTreeMap::new();
        for (name, value) in &batch.globals {
            globals.insert(name, value.as_deref());
        }
        let (mut put_names, mut put_values, mut deleted_names) =
            (Vec::new(), Vec::new(), Vec::new());
        for (name, value) in globals {
            match value {
                Some(value) => {
                    put_names.push(name);
                    put_values.push(value);
                }
                None => deleted_names.push(name),
            }
        }

        let mut receipts: BTreeMap<&[u8], &[u8]> = BTreeMap::new();
        for receipt in &batch.receipts {
            receipts.insert(&receipt.key, &receipt.body);
        }
        BatchRows {
            put_ids,
            put_tables,
            put_bodies,
            deleted_ids,
            index_steps,
            put_names,
            put_values,
            deleted_names,
            receipt_keys: receipts.keys().copied().collect(),
            receipt_bodies: receipts.values().copied().collect(),
            expire_before: batch
                .expire_receipts_before
                .map(|before| i64::try_from(before.0).unwrap_or(i64::MAX)),
        }
    }
}

enum IndexStep<'a> {
    Entries(EntryRows<'a>),
    Drop(i64),
    DropChunk(i64, i64),
}

#[derive(Default)]
struct EntryRows<'a> {
    put_indexes: Vec<i64>,
    put_keys: Vec<&'a [u8]>,
    put_ids: Vec<Vec<u8>>,
    del_indexes: Vec<i64>,
    del_keys: Vec<&'a [u8]>,
}

impl<'a> EntryRows<'a> {
    fn from_pending(pending: BTreeMap<(i64, &'a [u8]), Option<[u8; 20]>>) -> EntryRows<'a> {
        let mut rows = EntryRows::default();
        for ((index, key), id) in pending {
            match id {
                Some(id) => {
                    rows.put_indexes.push(index);
                    rows.put_keys.push(key);
                    rows.put_ids.push(id.to_vec());
                }
                None => {
                    rows.del_indexes.push(index);
                    rows.del_keys.push(key);
                }
            }
        }
        rows
    }
}

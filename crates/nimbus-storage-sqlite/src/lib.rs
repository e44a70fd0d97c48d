//! The SQLite storage backend: one database file per tenant namespace.
//!
//! Layout: `<root>/tenants/<namespace>.sqlite3` with tables
//! - `documents(id BLOB PRIMARY KEY, table_number, ts, body)` — `id` is the table number
//!   (4 bytes, big-endian) followed by the 16 internal bytes, so a table is contiguous,
//! - `index_entries(index_number, key, id)` keyed by `(index_number, key)`,
//! - `globals(name, value)` and `meta(name, value)` (`max_ts`, `format_version`),
//! - `receipts(key, ts, body)` with an index on `ts` (for expiry); added after format 1
//!   came out, so it is created when missing whenever a namespace is opened.
//!
//! Durability: WAL with `synchronous = FULL`; each [`TenantStore::write`] is one
//! transaction, so one fsync covers a whole group commit. [`TenantStore::write_unsynced`]
//! commits under `synchronous = NORMAL` (no sync; checkpoints still sync), and
//! [`TenantStore::sync`] makes those durable with one small `FULL` commit. Concurrency: one writer
//! connection (only the tenant's committer writes) and a bounded pool of reader
//! connections; when every reader is busy, a read waits for one to come back.
//!
//! Copying: [`TenantStore::export_page`] runs on a reader, one keyset query
//! (`WHERE key > ? ORDER BY key LIMIT ?`) per kind of row it reaches, stepping no further
//! than the page's bounds; [`TenantStore::import`] is one transaction on the writer, like a
//! batch.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nimbus_storage::{
    decode_document_id, encode_document_id, export_page_by_kind, ExportChunk, ExportCursor,
    ExportPage, ExportPosition, ExportedRow, IndexNumber, IndexScan, IndexWrite, KeyRange,
    NamespaceStats, ScanOrder, StorageBackend, StorageError, StoredDocument, TenantStore,
    WriteBatch,
};
use nimbus_types::{DocumentId, TableNumber, Timestamp};
use parking_lot::{Condvar, Mutex};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

/// On-disk format written by this version.
const FORMAT_VERSION: i64 = 1;

/// The receipts table, created by `create_namespace` and, for namespaces created before it
/// existed, by `open_namespace`.
const RECEIPTS_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS receipts (key BLOB PRIMARY KEY, \
     ts INTEGER NOT NULL, body BLOB NOT NULL) WITHOUT ROWID;
     CREATE INDEX IF NOT EXISTS receipts_by_ts ON receipts (ts);";

/// Tunables of the backend.
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    /// Reader connections per open namespace (the bound of concurrent reads; more
    /// readers wait).
    pub read_connections: usize,
    /// SQLite page cache per connection, in KiB: the "cache over storage" of paged
    /// tenants.
    pub cache_kib: usize,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        SqliteConfig {
            read_connections: 4,
            cache_kib: 8 * 1024,
        }
    }
}

/// Many namespaces under one root directory.
#[derive(Clone)]
pub struct SqliteBackend {
    dir: PathBuf,
    config: SqliteConfig,
}

fn io(context: &str, namespace: &str, e: rusqlite::Error) -> StorageError {
    if let rusqlite::Error::SqliteFailure(f, _) = &e {
        match f.code {
            rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked => {
                return StorageError::Busy(format!("{namespace}: {context}: {e}"))
            }
            rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase => {
                return StorageError::Corrupted {
                    namespace: namespace.to_string(),
                    detail: format!("{context}: {e}"),
                }
            }
            _ => {}
        }
    }
    StorageError::Io(format!("{namespace}: {context}: {e}"))
}

fn check_name(namespace: &str) -> Result<(), StorageError> {
    let ok = !namespace.is_empty()
        && namespace.len() <= 63
        && namespace
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(StorageError::Io(format!(
            "invalid namespace name {namespace:?}"
        )))
    }
}

/// Makes a file or directory private to the server's user (0600 / 0700): tenants' data is
/// never readable by other local users, whatever the process umask.
pub fn make_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = if path.is_dir() { 0o700 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Creates an empty file with mode 0600 unless it exists. SQLite gives a database's `-wal`
/// and `-shm` files the mode of the database file, so they come out private too.
pub fn create_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

impl SqliteBackend {
    /// Opens the root directory, creating `tenants/` (private to the server's user) and
    /// removing leftovers of interrupted deletions.
    pub fn new(root: PathBuf, config: SqliteConfig) -> Result<Self, StorageError> {
        let dir = root.join("tenants");
        std::fs::create_dir_all(&dir)
            .and_then(|()| make_private(&dir))
            .map_err(|e| StorageError::Io(format!("creating {}: {e}", dir.display())))?;
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| StorageError::Io(format!("reading {}: {e}", dir.display())))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with(".deleted-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(SqliteBackend { dir, config })
    }

    fn path(&self, namespace: &str) -> PathBuf {
        self.dir.join(format!("{namespace}.sqlite3"))
    }
}

fn sidecars(path: &Path) -> [PathBuf; 3] {
    let base = path.to_string_lossy().to_string();
    [
        PathBuf::from(format!("{base}-wal")),
        PathBuf::from(format!("{base}-shm")),
        PathBuf::from(format!("{base}-journal")),
    ]
}

fn open_connection(
    path: &Path,
    namespace: &str,
    create: bool,
    cache_kib: usize,
) -> Result<Connection, StorageError> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags).map_err(|e| io("open", namespace, e))?;
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA busy_timeout = 5000;
         PRAGMA cache_size = -{cache_kib};"
    ))
    .map_err(|e| io("configure", namespace, e))?;
    Ok(conn)
}

impl StorageBackend for SqliteBackend {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn create_namespace(&self, namespace: &str) -> Result<(), StorageError> {
        check_name(namespace)?;
        let path = self.path(namespace);
        if path.exists() {
            return Err(StorageError::NamespaceExists(namespace.to_string()));
        }
        create_private_file(&path)
            .map_err(|e| StorageError::Io(format!("{namespace}: create: {e}")))?;
        let conn = open_connection(&path, namespace, true, self.config.cache_kib)?;
        conn.execute_batch(&format!(
            "BEGIN;
             CREATE TABLE documents (id BLOB PRIMARY KEY, table_number INTEGER NOT NULL,
                 ts INTEGER NOT NULL, body BLOB NOT NULL) WITHOUT ROWID;
             CREATE TABLE index_entries (index_number INTEGER NOT NULL, key BLOB NOT NULL,
                 id BLOB NOT NULL, PRIMARY KEY (index_number, key)) WITHOUT ROWID;
             CREATE TABLE globals (name TEXT PRIMARY KEY, value BLOB NOT NULL);
             CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
             {RECEIPTS_SCHEMA}
             INSERT INTO meta VALUES ('format_version', {FORMAT_VERSION}), ('max_ts', 0);
             COMMIT;"
        ))
        .map_err(|e| io("create schema", namespace, e))?;
        Ok(())
    }

    fn open_namespace(&self, namespace: &str) -> Result<Arc<dyn TenantStore>, StorageError> {
        check_name(namespace)?;
        let path = self.path(namespace);
        if !path.exists() {
            return Err(StorageError::NamespaceNotFound(namespace.to_string()));
        }
        // Files written by versions that did not make them private.
        for file in std::iter::once(path.clone()).chain(sidecars(&path)) {
            if file.exists() {
                make_private(&file)
                    .map_err(|e| StorageError::Io(format!("{namespace}: chmod: {e}")))?;
            }
        }
        let writer = open_connection(&path, namespace, false, self.config.cache_kib)?;
        let version: i64 = writer
            .query_row(
                "SELECT value FROM meta WHERE name = 'format_version'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| io("read format version", namespace, e))?;
        if version > FORMAT_VERSION {
            return Err(StorageError::Corrupted {
                namespace: namespace.to_string(),
                detail: format!(
                    "format version {version} is newer than this Nimbus ({FORMAT_VERSION})"
                ),
            });
        }
        writer
            .execute_batch(RECEIPTS_SCHEMA)
            .map_err(|e| io("create receipts", namespace, e))?;
        let mut readers = Vec::with_capacity(self.config.read_connections.max(1));
        for _ in 0..self.config.read_connections.max(1) {
            readers.push(open_connection(
                &path,
                namespace,
                false,
                self.config.cache_kib,
            )?);
        }
        Ok(Arc::new(SqliteStore {
            namespace: namespace.to_string(),
            path,
            cache_kib: self.config.cache_kib,
            writer: Mutex::new(Writer {
                conn: writer,
                full: true,
                unsynced: false,
            }),
            readers: Mutex::new(readers),
            reader_returned: Condvar::new(),
        }))
    }

    fn delete_namespace(&self, namespace: &str) -> Result<(), StorageError> {
        check_name(namespace)?;
        let path = self.path(namespace);
        if !path.exists() {
            return Err(StorageError::NamespaceNotFound(namespace.to_string()));
        }
        // Rename first: the namespace disappears in one step, and a crash before the
        // removals below leaves only a tombstone that the next start deletes.
        let tombstone = self.dir.join(format!(
            ".deleted-{namespace}-{}.sqlite3",
            std::process::id()
        ));
        std::fs::rename(&path, &tombstone)
            .map_err(|e| StorageError::Io(format!("{namespace}: delete: {e}")))?;
        for (from, to) in sidecars(&path).iter().zip(sidecars(&tombstone).iter()) {
            if from.exists() {
                let _ = std::fs::rename(from, to);
            }
        }
        for file in std::iter::once(tombstone.clone()).chain(sidecars(&tombstone)) {
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(StorageError::Io(format!(
                        "{namespace}: delete {}: {e}",
                        file.display()
                    )))
                }
            }
        }
        Ok(())
    }

    fn namespace_exists(&self, namespace: &str) -> Result<bool, StorageError> {
        check_name(namespace)?;
        Ok(self.path(namespace).exists())
    }
}

/// One open namespace.
struct SqliteStore {
    namespace: String,
    path: PathBuf,
    cache_kib: usize,
    writer: Mutex<Writer>,
    readers: Mutex<Vec<Connection>>,
    reader_returned: Condvar,
}

/// The writer connection and what it has left unsynced.
struct Writer {
    conn: Connection,
    /// The connection's `synchronous` setting: `FULL` (every commit syncs the WAL) or
    /// `NORMAL` (commits do not sync; checkpoints still sync before and after copying).
    full: bool,
    /// Commits made under `NORMAL` since the last sync.
    unsynced: bool,
}

impl Writer {
    fn set_full(&mut self, full: bool, ns: &str) -> Result<(), StorageError> {
        if self.full != full {
            let mode = if full { "FULL" } else { "NORMAL" };
            self.conn
                .execute_batch(&format!("PRAGMA synchronous = {mode}"))
                .map_err(|e| io("set synchronous", ns, e))?;
            self.full = full;
        }
        Ok(())
    }
}

/// A reader connection borrowed from the pool; returned on drop.
struct Reader<'a> {
    store: &'a SqliteStore,
    conn: Option<Connection>,
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.store.readers.lock().push(conn);
            self.store.reader_returned.notify_one();
        }
    }
}

impl Reader<'_> {
    fn conn(&mut self) -> Result<&mut Connection, StorageError> {
        // `conn` is only taken in `drop`.
        self.conn
            .as_mut()
            .ok_or_else(|| StorageError::Io("reader connection missing".into()))
    }
}

impl SqliteStore {
    fn reader(&self) -> Reader<'_> {
        let mut pool = self.readers.lock();
        loop {
            if let Some(conn) = pool.pop() {
                return Reader {
                    store: self,
                    conn: Some(conn),
                };
            }
            self.reader_returned.wait(&mut pool);
        }
    }

    fn corrupted(&self, detail: String) -> StorageError {
        StorageError::Corrupted {
            namespace: self.namespace.clone(),
            detail,
        }
    }

    fn row_document(
        &self,
        id: Vec<u8>,
        table: i64,
        ts: i64,
        body: Vec<u8>,
    ) -> Result<StoredDocument, StorageError> {
        let id = decode_document_id(&id)
            .ok_or_else(|| self.corrupted("document id is not 20 bytes".into()))?;
        Ok(StoredDocument {
            id,
            table: TableNumber(table as u32),
            ts: Timestamp(ts as u64),
            body,
        })
    }
}

/// The rows of one batch, inside the writer's open transaction.
fn write_rows(tx: &Connection, ns: &str, batch: &WriteBatch) -> Result<(), StorageError> {
    let max_ts: i64 = tx
        .prepare_cached("SELECT value FROM meta WHERE name = 'max_ts'")
        .and_then(|mut read| read.query_row([], |r| r.get(0)))
        .map_err(|e| io("read max_ts", ns, e))?;
    if batch.ts.0 as i64 <= max_ts {
        return Err(StorageError::Io(format!(
            "{ns}: batch timestamp {} is not after the last one ({max_ts})",
            batch.ts
        )));
    }
    let mut put_doc = tx
        .prepare_cached(
            "INSERT OR REPLACE INTO documents (id, table_number, ts, body) VALUES (?1, ?2, ?3, ?4)",
        )
        .map_err(|e| io("prepare", ns, e))?;
    let mut del_doc = tx
        .prepare_cached("DELETE FROM documents WHERE id = ?1")
        .map_err(|e| io("prepare", ns, e))?;
    for doc in &batch.documents {
        let id = encode_document_id(&doc.id);
        match &doc.body {
            Some(body) => put_doc.execute(params![
                &id[..],
                doc.table.0 as i64,
                batch.ts.0 as i64,
                body
            ]),
            None => del_doc.execute(params![&id[..]]),
        }
        .map_err(|e| io("write document", ns, e))?;
    }
    let mut put_entry = tx
        .prepare_cached(
            "INSERT OR REPLACE INTO index_entries (index_number, key, id) VALUES (?1, ?2, ?3)",
        )
        .map_err(|e| io("prepare", ns, e))?;
    let mut del_entry = tx
        .prepare_cached("DELETE FROM index_entries WHERE index_number = ?1 AND key = ?2")
        .map_err(|e| io("prepare", ns, e))?;
    let mut drop_index = tx
        .prepare_cached("DELETE FROM index_entries WHERE index_number = ?1")
        .map_err(|e| io("prepare", ns, e))?;
    for write in &batch.indexes {
        match write {
            IndexWrite::Insert { index, key, id } => {
                put_entry.execute(params![index.0 as i64, key, &encode_document_id(id)[..]])
            }
            IndexWrite::Delete { index, key } => del_entry.execute(params![index.0 as i64, key]),
            IndexWrite::DropIndex { index } => drop_index.execute(params![index.0 as i64]),
            IndexWrite::DropIndexChunk { index, max_entries } => tx
                .prepare_cached(
                    "DELETE FROM index_entries WHERE index_number = ?1 AND key IN \
                     (SELECT key FROM index_entries WHERE index_number = ?1 LIMIT ?2)",
                )
                .and_then(|mut chunk| {
                    chunk.execute(params![
                        index.0 as i64,
                        i64::try_from(*max_entries).unwrap_or(i64::MAX)
                    ])
                }),
        }
        .map_err(|e| io("write index entry", ns, e))?;
    }
    let mut put_global = tx
        .prepare_cached("INSERT OR REPLACE INTO globals (name, value) VALUES (?1, ?2)")
        .map_err(|e| io("prepare", ns, e))?;
    let mut del_global = tx
        .prepare_cached("DELETE FROM globals WHERE name = ?1")
        .map_err(|e| io("prepare", ns, e))?;
    for (name, value) in &batch.globals {
        match value {
            Some(value) => put_global.execute(params![name, value]),
            None => del_global.execute(params![name]),
        }
        .map_err(|e| io("write global", ns, e))?;
    }
    if !batch.receipts.is_empty() {
        let mut put_receipt = tx
            .prepare_cached("INSERT OR REPLACE INTO receipts (key, ts, body) VALUES (?1, ?2, ?3)")
            .map_err(|e| io("prepare", ns, e))?;
        for receipt in &batch.receipts {
            put_receipt
                .execute(params![receipt.key, batch.ts.0 as i64, receipt.body])
                .map_err(|e| io("write receipt", ns, e))?;
        }
    }
    if let Some(before) = batch.expire_receipts_before {
        tx.prepare_cached("DELETE FROM receipts WHERE ts < ?1")
            .and_then(|mut expire| expire.execute(params![before.0 as i64]))
            .map_err(|e| io("expire receipts", ns, e))?;
    }
    tx.prepare_cached("UPDATE meta SET value = ?1 WHERE name = 'max_ts'")
        .and_then(|mut update| update.execute(params![batch.ts.0 as i64]))
        .map_err(|e| io("write max_ts", ns, e))?;
    Ok(())
}

impl SqliteStore {
    /// Runs `rows` in one transaction on the writer connection and commits it (durable on
    /// return when `durable`), or rolls it back when anything fails.
    fn in_write_transaction(
        &self,
        durable: bool,
        rows: impl FnOnce(&Connection, &str) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let ns = &self.namespace;
        let mut writer = self.writer.lock();
        writer.set_full(durable, ns)?;
        let written = Self::commit_rows(&mut writer.conn, ns, rows);
        match (&written, durable) {
            // A durable commit syncs the WAL, and with it every commit before it.
            (Ok(()), true) => writer.unsynced = false,
            (Ok(()), false) => writer.unsynced = true,
            (Err(_), _) => {}
        }
        if written.is_err() && !writer.conn.is_autocommit() {
            // Nothing of a failed transaction may stay pending on the writer connection (after
            // a failed batch the committer refuses writes until it reopens the storage either
            // way). A connection that
            // cannot even roll back (a full disk, an I/O error) is replaced, so it holds no
            // lock that would block the reopened store's writer.
            if writer.conn.execute_batch("ROLLBACK").is_err() {
                match open_connection(&self.path, ns, false, self.cache_kib) {
                    Ok(fresh) => {
                        writer.conn = fresh;
                        writer.full = true;
                    }
                    Err(e) => {
                        tracing::warn!(namespace = %ns, error = %e, "cannot replace a failed writer connection")
                    }
                }
            }
        }
        written
    }

    /// `BEGIN IMMEDIATE`, `rows`, `COMMIT` on the writer connection.
    fn commit_rows(
        conn: &mut Connection,
        ns: &str,
        rows: impl FnOnce(&Connection, &str) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        // Every statement of a batch, BEGIN and COMMIT included, is a cached prepared
        // statement: a group commit parses no SQL (rusqlite's `Transaction` would send
        // BEGIN and COMMIT as text each time).
        conn.prepare_cached("BEGIN IMMEDIATE")
            .and_then(|mut begin| begin.execute([]))
            .map_err(|e| io("begin", ns, e))?;
        rows(conn, ns).and_then(|()| {
            conn.prepare_cached("COMMIT")
                .and_then(|mut commit| commit.execute([]))
                .map(|_| ())
                .map_err(|e| io("commit", ns, e))
        })
    }

    /// Reads one kind's rows for [`export_page_by_kind`]: one more row than asked for is
    /// selected, and stepping stops at the first row the page has no room for, so no row
    /// beyond the page is decoded.
    fn export_chunk(
        &self,
        conn: &Connection,
        cursor: ExportCursor<'_>,
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<ExportChunk, StorageError> {
        let ns = &self.namespace;
        let (sql, after): (&str, Vec<rusqlite::types::Value>) = match cursor {
            ExportCursor::Documents(None) => (
                "SELECT id, table_number, ts, body FROM documents ORDER BY id LIMIT ?1",
                vec![],
            ),
            ExportCursor::Documents(Some(id)) => (
                "SELECT id, table_number, ts, body FROM documents WHERE id > ?2 \
                 ORDER BY id LIMIT ?1",
                vec![encode_document_id(id).to_vec().into()],
            ),
            ExportCursor::IndexEntries(None) => (
                "SELECT index_number, key, id FROM index_entries \
                 ORDER BY index_number, key LIMIT ?1",
                vec![],
            ),
            ExportCursor::IndexEntries(Some((index, key))) => (
                "SELECT index_number, key, id FROM index_entries \
                 WHERE (index_number, key) > (?2, ?3) ORDER BY index_number, key LIMIT ?1",
                vec![i64::from(index.0).into(), key.to_vec().into()],
            ),
            // `globals.name` has SQLite's default collation, BINARY: the bytes of the name.
            ExportCursor::Globals(None) => (
                "SELECT name, value FROM globals ORDER BY name LIMIT ?1",
                vec![],
            ),
            ExportCursor::Globals(Some(name)) => (
                "SELECT name, value FROM globals WHERE name > ?2 ORDER BY name LIMIT ?1",
                vec![name.to_string().into()],
            ),
            ExportCursor::Receipts(None) => (
                "SELECT key, ts, body FROM receipts ORDER BY key LIMIT ?1",
                vec![],
            ),
            ExportCursor::Receipts(Some(key)) => (
                "SELECT key, ts, body FROM receipts WHERE key > ?2 ORDER BY key LIMIT ?1",
                vec![key.to_vec().into()],
            ),
        };
        let limit = i64::try_from(max_rows.saturating_add(1)).unwrap_or(i64::MAX);
        let mut values: Vec<rusqlite::types::Value> = vec![limit.into()];
        values.extend(after);
        let mut statement = conn
            .prepare_cached(sql)
            .map_err(|e| io("prepare export", ns, e))?;
        let mut selected = statement
            .query(rusqlite::params_from_iter(values))
            .map_err(|e| io("export", ns, e))?;
        let mut chunk = ExportChunk::default();
        let mut bytes = 0usize;
        while let Some(row) = selected.next().map_err(|e| io("export", ns, e))? {
            if chunk.rows.len() >= max_rows || (!chunk.rows.is_empty() && bytes >= max_bytes) {
                return Ok(chunk);
            }
            let exported = self.exported_row(cursor, row)?;
            bytes = bytes.saturating_add(exported.size_bytes());
            chunk.rows.push(exported);
        }
        chunk.exhausted = true;
        Ok(chunk)
    }

    /// A row of [`SqliteStore::export_chunk`]'s query for `cursor`.
    fn exported_row(
        &self,
        cursor: ExportCursor<'_>,
        row: &rusqlite::Row<'_>,
    ) -> Result<ExportedRow, StorageError> {
        let ns = &self.namespace;
        let get = |e| io("export", ns, e);
        let timestamp = |ts: i64| {
            u64::try_from(ts)
                .map(Timestamp)
                .map_err(|_| self.corrupted(format!("timestamp {ts}")))
        };
        Ok(match cursor {
            ExportCursor::Documents(_) => ExportedRow::Document(self.row_document(
                row.get(0).map_err(get)?,
                row.get(1).map_err(get)?,
                row.get(2).map_err(get)?,
                row.get(3).map_err(get)?,
            )?),
            ExportCursor::IndexEntries(_) => {
                let index: i64 = row.get(0).map_err(get)?;
                let id: Vec<u8> = row.get(2).map_err(get)?;
                ExportedRow::IndexEntry {
                    index: IndexNumber(
                        u32::try_from(index)
                            .map_err(|_| self.corrupted(format!("index number {index}")))?,
                    ),
                    key: row.get(1).map_err(get)?,
                    id: decode_document_id(&id)
                        .ok_or_else(|| self.corrupted("document id is not 20 bytes".into()))?,
                }
            }
            ExportCursor::Globals(_) => ExportedRow::Global {
                name: row.get(0).map_err(get)?,
                value: row.get(1).map_err(get)?,
            },
            ExportCursor::Receipts(_) => ExportedRow::Receipt {
                key: row.get(0).map_err(get)?,
                ts: timestamp(row.get(1).map_err(get)?)?,
                body: row.get(2).map_err(get)?,
            },
        })
    }
}

/// An exported row written back as it is, inside the writer's open transaction.
fn import_row(tx: &Connection, ns: &str, row: &ExportedRow) -> Result<(), StorageError> {
    let ts_value = |ts: Timestamp| {
        i64::try_from(ts.0).map_err(|_| StorageError::Io(format!("{ns}: timestamp {ts} too large")))
    };
    match row {
        ExportedRow::Document(doc) => {
            let ts = ts_value(doc.ts)?;
            tx.prepare_cached(
                "INSERT OR REPLACE INTO documents (id, table_number, ts, body) \
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut put| {
                put.execute(params![
                    &encode_document_id(&doc.id)[..],
                    i64::from(doc.table.0),
                    ts,
                    doc.body
                ])
            })
            .map(|_| ())
            .map_err(|e| io("import document", ns, e))
        }
        ExportedRow::IndexEntry { index, key, id } => tx
            .prepare_cached(
                "INSERT OR REPLACE INTO index_entries (index_number, key, id) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut put| {
                put.execute(params![
                    i64::from(index.0),
                    key,
                    &encode_document_id(id)[..]
                ])
            })
            .map(|_| ())
            .map_err(|e| io("import index entry", ns, e)),
        ExportedRow::Global { name, value } => tx
            .prepare_cached("INSERT OR REPLACE INTO globals (name, value) VALUES (?1, ?2)")
            .and_then(|mut put| put.execute(params![name, value]))
            .map(|_| ())
            .map_err(|e| io("import global", ns, e)),
        ExportedRow::Receipt { key, ts, body } => {
            let ts = ts_value(*ts)?;
            tx.prepare_cached("INSERT OR REPLACE INTO receipts (key, ts, body) VALUES (?1, ?2, ?3)")
                .and_then(|mut put| put.execute(params![key, ts, body]))
                .map(|_| ())
                .map_err(|e| io("import receipt", ns, e))
        }
    }
}

impl TenantStore for SqliteStore {
    fn write(&self, batch: &WriteBatch) -> Result<(), StorageError> {
        self.in_write_transaction(true, |tx, ns| write_rows(tx, ns, batch))
    }

    fn write_unsynced(&self, batch: &WriteBatch) -> Result<(), StorageError> {
        self.in_write_transaction(false, |tx, ns| write_rows(tx, ns, batch))
    }

    /// A commit under `synchronous = FULL` syncs the WAL file, which holds every unsynced
    /// commit before it (a checkpoint in between synced what it copied): so a sync is one
    /// small durable commit, and nothing when nothing is unsynced.
    fn sync(&self) -> Result<(), StorageError> {
        if !self.writer.lock().unsynced {
            return Ok(());
        }
        self.in_write_transaction(true, |tx, ns| {
            // A row that really changes, so the commit has a page to write and sync.
            tx.prepare_cached(
                "INSERT OR REPLACE INTO meta (name, value) VALUES ('syncs', \
                 COALESCE((SELECT value FROM meta WHERE name = 'syncs'), 0) + 1)",
            )
            .and_then(|mut touch| touch.execute([]))
            .map(|_| ())
            .map_err(|e| io("sync", ns, e))
        })
    }

    fn export_page(
        &self,
        from: &ExportPosition,
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<ExportPage, StorageError> {
        let mut reader = self.reader();
        let conn = reader.conn()?;
        export_page_by_kind(from, max_rows, max_bytes, &mut |cursor, rows, bytes| {
            self.export_chunk(conn, cursor, rows, bytes)
        })
    }

    fn import(&self, rows: &[ExportedRow], max_ts: Option<Timestamp>) -> Result<(), StorageError> {
        self.in_write_transaction(true, |tx, ns| {
            for row in rows {
                import_row(tx, ns, row)?;
            }
            let Some(max_ts) = max_ts else { return Ok(()) };
            let value = i64::try_from(max_ts.0)
                .map_err(|_| StorageError::Io(format!("{ns}: max_ts {max_ts} too large")))?;
            let changed = tx
                .prepare_cached("UPDATE meta SET value = ?1 WHERE name = 'max_ts'")
                .and_then(|mut update| update.execute(params![value]))
                .map_err(|e| io("import max_ts", ns, e))?;
            if changed != 1 {
                return Err(self.corrupted("the max_ts row is missing".into()));
            }
            Ok(())
        })
    }

    fn max_ts(&self) -> Result<Timestamp, StorageError> {
        let mut reader = self.reader();
        let ts: i64 = reader
            .conn()?
            .query_row("SELECT value FROM meta WHERE name = 'max_ts'", [], |r| {
                r.get(0)
            })
            .map_err(|e| io("read max_ts", &self.namespace, e))?;
        Ok(Timestamp(ts as u64))
    }

    fn get_global(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let mut reader = self.reader();
        reader
            .conn()?
            .query_row(
                "SELECT value FROM globals WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| io("read global", &self.namespace, e))
    }

    fn get_document(&self, id: &DocumentId) -> Result<Option<StoredDocument>, StorageError> {
        let mut reader = self.reader();
        let conn = reader.conn()?;
        let mut statement = conn
            .prepare_cached("SELECT id, table_number, ts, body FROM documents WHERE id = ?1")
            .map_err(|e| io("prepare", &self.namespace, e))?;
        let row = statement
            .query_row(params![&encode_document_id(id)[..]], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()
            .map_err(|e| io("read document", &self.namespace, e))?;
        match row {
            Some((id, table, ts, body)) => Ok(Some(self.row_document(id, table, ts, body)?)),
            None => Ok(None),
        }
    }

    fn scan_table(
        &self,
        table: TableNumber,
        visit: &mut dyn FnMut(StoredDocument) -> bool,
    ) -> Result<(), StorageError> {
        let mut reader = self.reader();
        let conn = reader.conn()?;
        let mut statement = conn
            .prepare_cached("SELECT id, table_number, ts, body FROM documents WHERE table_number = ?1 ORDER BY id")
            .map_err(|e| io("prepare", &self.namespace, e))?;
        let mut rows = statement
            .query(params![table.0 as i64])
            .map_err(|e| io("scan table", &self.namespace, e))?;
        while let Some(row) = rows
            .next()
            .map_err(|e| io("scan table", &self.namespace, e))?
        {
            let doc = self.row_document(
                row.get(0)
                    .map_err(|e| io("scan table", &self.namespace, e))?,
                row.get(1)
                    .map_err(|e| io("scan table", &self.namespace, e))?,
                row.get(2)
                    .map_err(|e| io("scan table", &self.namespace, e))?,
                row.get(3)
                    .map_err(|e| io("scan table", &self.namespace, e))?,
            )?;
            if !visit(doc) {
                break;
            }
        }
        Ok(())
    }

    fn scan_index(
        &self,
        index: nimbus_storage::IndexNumber,
        range: &KeyRange,
        order: ScanOrder,
        limit: usize,
    ) -> Result<IndexScan, StorageError> {
        let ns = &self.namespace;
        let mut reader = self.reader();
        let conn = reader.conn()?;
        // One read transaction: entries, documents and max_ts from one consistent state.
        let tx = conn.transaction().map_err(|e| io("begin read", ns, e))?;
        let ts: i64 = tx
            .query_row("SELECT value FROM meta WHERE name = 'max_ts'", [], |r| {
                r.get(0)
            })
            .map_err(|e| io("read max_ts", ns, e))?;
        let mut sql = String::from(
            "SELECT e.key, d.id, d.table_number, d.ts, d.body FROM index_entries e \
             JOIN documents d ON d.id = e.id WHERE e.index_number = ?1",
        );
        let mut bounds: Vec<Vec<u8>> = Vec::new();
        for (bound, incl, excl) in [(&range.start, ">=", ">"), (&range.end, "<=", "<")] {
            match bound {
                Bound::Included(k) => {
                    bounds.push(k.clone());
                    sql.push_str(&format!(" AND e.key {incl} ?{}", bounds.len() + 1));
                }
                Bound::Excluded(k) => {
                    bounds.push(k.clone());
                    sql.push_str(&format!(" AND e.key {excl} ?{}", bounds.len() + 1));
                }
                Bound::Unbounded => {}
            }
        }
        sql.push_str(match order {
            ScanOrder::Ascending => " ORDER BY e.key ASC",
            ScanOrder::Descending => " ORDER BY e.key DESC",
        });
        sql.push_str(&format!(" LIMIT ?{}", bounds.len() + 2));
        let mut entries = Vec::new();
        {
            let mut statement = tx
                .prepare_cached(&sql)
                .map_err(|e| io("prepare scan", ns, e))?;
            let mut values: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(bounds.len() + 2);
            let index_number = index.0 as i64;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            values.push(&index_number);
            for b in &bounds {
                values.push(b);
            }
            values.push(&limit);
            let mut rows = statement
                .query(values.as_slice())
                .map_err(|e| io("scan index", ns, e))?;
            while let Some(row) = rows.next().map_err(|e| io("scan index", ns, e))? {
                let get = |e| io("scan index", ns, e);
                let key: Vec<u8> = row.get(0).map_err(get)?;
                let doc = self.row_document(
                    row.get(1).map_err(get)?,
                    row.get(2).map_err(get)?,
                    row.get(3).map_err(get)?,
                    row.get(4).map_err(get)?,
                )?;
                entries.push((key, doc));
            }
        }
        tx.commit().map_err(|e| io("end read", ns, e))?;
        Ok(IndexScan {
            ts: Timestamp(ts as u64),
            entries,
        })
    }

    fn stats(&self) -> Result<NamespaceStats, StorageError> {
        let mut reader = self.reader();
        let (documents, bytes): (i64, i64) = reader
            .conn()?
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM documents",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| io("stats", &self.namespace, e))?;
        Ok(NamespaceStats {
            documents: documents as u64,
            body_bytes: bytes as u64,
        })
    }

    fn get_receipt(&self, key: &[u8]) -> Result<Option<(Timestamp, Vec<u8>)>, StorageError> {
        let mut reader = self.reader();
        reader
            .conn()?
            .prepare_cached("SELECT ts, body FROM receipts WHERE key = ?1")
            .and_then(|mut read| {
                read.query_row(params![key], |r| {
                    Ok((Timestamp(r.get::<_, i64>(0)? as u64), r.get(1)?))
                })
                .optional()
            })
            .map_err(|e| io("read receipt", &self.namespace, e))
    }

    fn table_counts(&self) -> Result<Vec<(TableNumber, u64)>, StorageError> {
        let mut reader = self.reader();
        let conn = reader.conn()?;
        let mut statement = conn
            .prepare_cached("SELECT table_number, COUNT(*) FROM documents GROUP BY table_number")
            .map_err(|e| io("prepare", &self.namespace, e))?;
        let rows = statement
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
            .map_err(|e| io("table counts", &self.namespace, e))?;
        rows.map(|row| {
            row.map(|(table, count)| (TableNumber(table as u32), count as u64))
                .map_err(|e| io("table counts", &self.namespace, e))
        })
        .collect()
    }
}

/// Used by tests to peek at the per-namespace files.
pub fn namespace_files(root: &Path, namespace: &str) -> Vec<PathBuf> {
    let path = root.join("tenants").join(format!("{namespace}.sqlite3"));
    let mut files = vec![path.clone()];
    files.extend(sidecars(&path));
    files
}

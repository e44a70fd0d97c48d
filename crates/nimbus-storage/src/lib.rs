//! The boundary between the engine and a storage backend.
//!
//! A backend stores many tenants, each in its own **namespace** (an SQLite or redb file, a
//! Postgres schema or database, a MySQL database, a libSQL namespace). Nothing in this
//! trait lets one namespace name another, so cross-tenant reads are impossible by
//! construction, and deleting a namespace removes the tenant as a unit.
//!
//! Backends know nothing about values, schemas or tenancy rules: they store
//! - **documents**: `DocumentId` → (table number, commit timestamp, body bytes),
//! - **index entries**: (index number, key bytes) → `DocumentId`, keys being the
//!   order-preserving encoding of `nimbus_types::index_key`, so a backend serves an index
//!   range with a plain ordered range scan,
//! - **globals**: small named blobs (the catalog of tables and indexes, pushed code and
//!   schema, the last commit timestamp),
//! - **receipts**: the answers of mutations that must run exactly once (key → body,
//!   stamped with the commit timestamp), written in the same batch as the mutation's own
//!   writes and expired by age.
//!
//! **Architecture invariant:** only the tenant's committer calls [`TenantStore::write`],
//! one batch at a time; readers may call the read methods concurrently from any thread.
//! A `write` returns only after the batch is durable (fsync or the backend's equivalent),
//! and a batch is applied entirely or not at all.
//!
//! **Copying a namespace** (moving a live tenant to another backend or server):
//! [`TenantStore::export_page`] reads every stored row a page at a time (keyset pages, so
//! each page is one short read and a tenant keeps running meanwhile), and
//! [`TenantStore::import`] writes pages into a new namespace as they are, documents and
//! receipts keeping their timestamps. Pages are not one consistent state; the caller
//! replays every batch written since before the first page on top of the copy, which
//! converges because each write sets a key to a value or removes it. `import` is not the
//! committer's path: it fills a namespace that no committer writes to yet.

use std::fmt;
use std::sync::Arc;

pub use nimbus_types::index_key::KeyRange;

mod batch_codec;
pub use batch_codec::{decode_batch, encode_batch};
use nimbus_types::{DocumentId, TableNumber, Timestamp};

/// Identifies an index inside one tenant (allocated by the engine's catalog).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IndexNumber(pub u32);

impl fmt::Display for IndexNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Scan direction of an index range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanOrder {
    Ascending,
    Descending,
}

/// One document as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDocument {
    pub id: DocumentId,
    pub table: TableNumber,
    /// Commit timestamp of the write that produced this version.
    pub ts: Timestamp,
    /// The engine's serialized document (opaque to the backend).
    pub body: Vec<u8>,
}

/// A change to one document: `body: None` deletes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentWrite {
    pub id: DocumentId,
    pub table: TableNumber,
    pub body: Option<Vec<u8>>,
}

/// A change to one index entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexWrite {
    Insert {
        index: IndexNumber,
        key: Vec<u8>,
        id: DocumentId,
    },
    Delete {
        index: IndexNumber,
        key: Vec<u8>,
    },
    /// Drops every entry of an index (the index was removed from the schema).
    DropIndex {
        index: IndexNumber,
    },
    /// Drops up to `max_entries` entries of an index (a dropped index is deleted in
    /// chunks, so no batch holds the writer for long).
    DropIndexChunk {
        index: IndexNumber,
        max_entries: usize,
    },
}

/// A mutation's answer, remembered so a re-sent copy of the mutation is answered with it
/// instead of running again. Stored with the batch's `ts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub key: Vec<u8>,
    pub body: Vec<u8>,
}

/// Everything one group commit writes, applied atomically and durably.
///
/// **Invariant:** `ts` is greater than the `ts` of every earlier batch of the namespace.
/// Within a batch, writes apply in order (a later write to the same key wins).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    pub ts: Timestamp,
    pub documents: Vec<DocumentWrite>,
    pub indexes: Vec<IndexWrite>,
    /// `(name, Some(value))` sets a global, `(name, None)` removes it.
    pub globals: Vec<(String, Option<Vec<u8>>)>,
    pub receipts: Vec<Receipt>,
    /// Removes every receipt stored with a `ts` before this one.
    pub expire_receipts_before: Option<Timestamp>,
}

impl WriteBatch {
    pub fn is_empty(&self) -> bool {
        self.documents.is_empty()
            && self.indexes.is_empty()
            && self.globals.is_empty()
            && self.receipts.is_empty()
            && self.expire_receipts_before.is_none()
    }
}

/// One stored row of a namespace, as [`TenantStore::export_page`] reads it and
/// [`TenantStore::import`] writes it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportedRow {
    /// A document with the `ts` of the batch that wrote it (kept by `import`).
    Document(StoredDocument),
    IndexEntry {
        index: IndexNumber,
        key: Vec<u8>,
        id: DocumentId,
    },
    Global {
        name: String,
        value: Vec<u8>,
    },
    /// A receipt with the `ts` of the batch that wrote it (kept by `import`).
    Receipt {
        key: Vec<u8>,
        ts: Timestamp,
        body: Vec<u8>,
    },
}

impl ExportedRow {
    /// What the row counts for against an export page's `max_bytes`: the bytes of its
    /// keys and values. A document is 32 + its body (ID 20, table 4, ts 8), an index entry
    /// 24 + its key (index 4, document ID 20), a global its name + its value, a receipt
    /// 8 + its key + its body. Backends that count in SQL use the same sums.
    pub fn size_bytes(&self) -> usize {
        match self {
            ExportedRow::Document(doc) => 32 + doc.body.len(),
            ExportedRow::IndexEntry { key, .. } => 24 + key.len(),
            ExportedRow::Global { name, value } => name.len() + value.len(),
            ExportedRow::Receipt { key, body, .. } => 8 + key.len() + body.len(),
        }
    }

    /// The position just after this row: an export from it continues with the next row.
    pub fn position(&self) -> ExportPosition {
        match self {
            ExportedRow::Document(doc) => ExportPosition::Documents { after: doc.id },
            ExportedRow::IndexEntry { index, key, .. } => ExportPosition::IndexEntries {
                after: (*index, key.clone()),
            },
            ExportedRow::Global { name, .. } => ExportPosition::Globals {
                after: name.clone(),
            },
            ExportedRow::Receipt { key, .. } => ExportPosition::Receipts { after: key.clone() },
        }
    }
}

/// Where an export continues: the kind of row and the key of the last row read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportPosition {
    /// The beginning (the first document).
    Start,
    Documents {
        after: DocumentId,
    },
    IndexEntries {
        after: (IndexNumber, Vec<u8>),
    },
    Globals {
        after: String,
    },
    Receipts {
        after: Vec<u8>,
    },
}

impl ExportPosition {
    /// The position's place in the export order: the kind's rank, then the key as the
    /// bytes the backends compare (see [`ExportCursor`]).
    fn order_key(&self) -> (u8, Vec<u8>) {
        match self {
            ExportPosition::Start => (0, Vec::new()),
            ExportPosition::Documents { after } => (1, encode_document_id(after).to_vec()),
            ExportPosition::IndexEntries {
                after: (index, key),
            } => {
                let mut bytes = index.0.to_be_bytes().to_vec();
                bytes.extend_from_slice(key);
                (2, bytes)
            }
            ExportPosition::Globals { after } => (3, after.as_bytes().to_vec()),
            ExportPosition::Receipts { after } => (4, after.clone()),
        }
    }
}

/// One page of an export.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportPage {
    pub rows: Vec<ExportedRow>,
    /// Where the next page starts; `None` when the export is complete.
    pub next: Option<ExportPosition>,
}

/// The kinds of stored rows, in export order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportKind {
    Documents,
    IndexEntries,
    Globals,
    Receipts,
}

impl ExportKind {
    fn next(self) -> Option<ExportKind> {
        match self {
            ExportKind::Documents => Some(ExportKind::IndexEntries),
            ExportKind::IndexEntries => Some(ExportKind::Globals),
            ExportKind::Globals => Some(ExportKind::Receipts),
            ExportKind::Receipts => None,
        }
    }
}

/// What a backend reads for [`export_page_by_kind`]: rows of one kind strictly after a
/// key, or from the kind's first row (`None`). Keys are ordered as bytes: documents by
/// [`encode_document_id`], index entries by index number then key, globals by the UTF-8
/// bytes of the name, receipts by key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportCursor<'a> {
    Documents(Option<&'a DocumentId>),
    IndexEntries(Option<(IndexNumber, &'a [u8])>),
    Globals(Option<&'a str>),
    Receipts(Option<&'a [u8]>),
}

impl ExportCursor<'_> {
    pub fn kind(&self) -> ExportKind {
        match self {
            ExportCursor::Documents(_) => ExportKind::Documents,
            ExportCursor::IndexEntries(_) => ExportKind::IndexEntries,
            ExportCursor::Globals(_) => ExportKind::Globals,
            ExportCursor::Receipts(_) => ExportKind::Receipts,
        }
    }

    fn first(kind: ExportKind) -> ExportCursor<'static> {
        match kind {
            ExportKind::Documents => ExportCursor::Documents(None),
            ExportKind::IndexEntries => ExportCursor::IndexEntries(None),
            ExportKind::Globals => ExportCursor::Globals(None),
            ExportKind::Receipts => ExportCursor::Receipts(None),
        }
    }

    fn from_position(position: &ExportPosition) -> ExportCursor<'_> {
        match position {
            ExportPosition::Start => ExportCursor::Documents(None),
            ExportPosition::Documents { after } => ExportCursor::Documents(Some(after)),
            ExportPosition::IndexEntries {
                after: (index, key),
            } => ExportCursor::IndexEntries(Some((*index, key))),
            ExportPosition::Globals { after } => ExportCursor::Globals(Some(after)),
            ExportPosition::Receipts { after } => ExportCursor::Receipts(Some(after)),
        }
    }
}

/// Rows of one kind that a backend read for [`export_page_by_kind`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportChunk {
    pub rows: Vec<ExportedRow>,
    /// No row of the kind follows the last one in `rows` (or the cursor, if none).
    pub exhausted: bool,
}

/// [`TenantStore::export_page`] from keyset reads of one kind at a time, so every backend
/// pages, orders and counts bytes alike. `read_chunk(cursor, max_rows, max_bytes)`
/// returns the rows of the cursor's kind after it, in key order: at most `max_rows`
/// (at least 1), each only while the rows before it in the chunk total less than
/// `max_bytes` (at least 1) by [`ExportedRow::size_bytes`], so the first always comes.
///
/// A page holds at most `max_rows` rows; every row but its last starts below
/// `max_bytes`. A backend's rows out of key order, of another kind, beyond the budget, or
/// missing (none, yet not exhausted) fail the page instead of skipping or repeating rows.
pub fn export_page_by_kind(
    from: &ExportPosition,
    max_rows: usize,
    max_bytes: usize,
    read_chunk: &mut dyn FnMut(ExportCursor<'_>, usize, usize) -> Result<ExportChunk, StorageError>,
) -> Result<ExportPage, StorageError> {
    let (max_rows, max_bytes) = (max_rows.max(1), max_bytes.max(1));
    let mut rows: Vec<ExportedRow> = Vec::new();
    let mut bytes = 0usize;
    let mut last = from.order_key();
    let mut cursor = ExportCursor::from_position(from);
    loop {
        let kind = cursor.kind();
        let (rows_left, bytes_left) = (max_rows - rows.len(), max_bytes.saturating_sub(bytes));
        let chunk = read_chunk(cursor, rows_left, bytes_left)?;
        if chunk.rows.len() > rows_left {
            return Err(export_bug(kind, "more rows than asked for"));
        }
        let mut chunk_bytes = 0usize;
        for row in &chunk.rows {
            if chunk_bytes >= bytes_left {
                return Err(export_bug(kind, "more bytes than asked for"));
            }
            let key = row.position().order_key();
            if key.0 != kind_rank(kind) || key <= last {
                return Err(export_bug(kind, "a row out of order or of another kind"));
            }
            last = key;
            chunk_bytes = chunk_bytes.saturating_add(row.size_bytes());
        }
        bytes = bytes.saturating_add(chunk_bytes);
        rows.extend(chunk.rows);
        let Some(last_row) = rows.last() else {
            // Nothing read yet: the kind must be empty.
            if !chunk.exhausted {
                return Err(export_bug(kind, "no row, yet not exhausted"));
            }
            match kind.next() {
                Some(next) => {
                    cursor = ExportCursor::first(next);
                    continue;
                }
                None => return Ok(ExportPage { rows, next: None }),
            }
        };
        let full = rows.len() >= max_rows || bytes >= max_bytes;
        match kind.next() {
            None if chunk.exhausted => return Ok(ExportPage { rows, next: None }),
            Some(next) if chunk.exhausted && !full => cursor = ExportCursor::first(next),
            // Full, or more of this kind to come: the next page reads on after the last
            // row (and finds the kind exhausted, if it is).
            _ => {
                let next = Some(last_row.position());
                return Ok(ExportPage { rows, next });
            }
        }
    }
}

fn kind_rank(kind: ExportKind) -> u8 {
    match kind {
        ExportKind::Documents => 1,
        ExportKind::IndexEntries => 2,
        ExportKind::Globals => 3,
        ExportKind::Receipts => 4,
    }
}

fn export_bug(kind: ExportKind, what: &str) -> StorageError {
    StorageError::Io(format!("export of {kind:?}: the backend read {what}"))
}

/// Failures of a backend. After a `write` fails, the engine stops accepting writes for
/// that tenant until it is reopened (the batch may or may not have become durable).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The namespace does not exist.
    #[error("storage namespace {0:?} does not exist")]
    NamespaceNotFound(String),
    /// The namespace already exists.
    #[error("storage namespace {0:?} already exists")]
    NamespaceExists(String),
    /// Stored data that cannot be decoded: a bug or outside tampering.
    #[error("corrupted data in namespace {namespace:?}: {detail}")]
    Corrupted { namespace: String, detail: String },
    /// The backend's I/O or driver failed.
    #[error("storage I/O failed: {0}")]
    Io(String),
    /// A bound of the backend was reached (connections, pool); retry later.
    #[error("storage is busy: {0}")]
    Busy(String),
}

/// A storage backend holding many tenant namespaces.
pub trait StorageBackend: Send + Sync + 'static {
    /// Short name for logs and diagnostics (`"sqlite"`).
    fn name(&self) -> &'static str;
    /// Creates an empty namespace; [`StorageError::NamespaceExists`] if it exists.
    fn create_namespace(&self, namespace: &str) -> Result<(), StorageError>;
    /// Opens an existing namespace.
    fn open_namespace(&self, namespace: &str) -> Result<Arc<dyn TenantStore>, StorageError>;
    /// Removes a namespace and all its data as a unit. Callers close every handle first.
    fn delete_namespace(&self, namespace: &str) -> Result<(), StorageError>;
    /// Whether the namespace exists.
    fn namespace_exists(&self, namespace: &str) -> Result<bool, StorageError>;
}

/// One tenant's namespace.
pub trait TenantStore: Send + Sync + 'static {
    /// Applies a batch atomically; returns once it is durable. Committer only. A batch whose
    /// `ts` is not after [`TenantStore::max_ts`] is refused and writes nothing.
    fn write(&self, batch: &WriteBatch) -> Result<(), StorageError>;
    /// Applies a batch atomically like [`TenantStore::write`] (readers see it on return),
    /// but need not make it durable: for a caller that holds the batch durably elsewhere (a
    /// journal) and calls [`TenantStore::sync`] later. A crash may lose any suffix of
    /// the unsynced batches, never part of one. Committer only.
    fn write_unsynced(&self, batch: &WriteBatch) -> Result<(), StorageError> {
        self.write(batch)
    }
    /// Makes every batch written so far durable.
    fn sync(&self) -> Result<(), StorageError> {
        Ok(())
    }
    /// The `ts` of the last durable batch (0 for a new namespace).
    fn max_ts(&self) -> Result<Timestamp, StorageError>;
    /// Reads a global.
    fn get_global(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError>;
    /// Reads one document.
    fn get_document(&self, id: &DocumentId) -> Result<Option<StoredDocument>, StorageError>;
    /// Visits every document of a table in ID order; stops early when `visit` returns false.
    fn scan_table(
        &self,
        table: TableNumber,
        visit: &mut dyn FnMut(StoredDocument) -> bool,
    ) -> Result<(), StorageError>;
    /// Reads up to `limit` entries of an index range in key order, with the documents
    /// they point to, from one consistent state; also returns that state's `max_ts`.
    fn scan_index(
        &self,
        index: IndexNumber,
        range: &KeyRange,
        order: ScanOrder,
        limit: usize,
    ) -> Result<IndexScan, StorageError>;
    /// Number of documents and their total body bytes (for memory budgeting).
    fn stats(&self) -> Result<NamespaceStats, StorageError>;
    /// Documents per table, for tables that have any.
    fn table_counts(&self) -> Result<Vec<(TableNumber, u64)>, StorageError>;
    /// A receipt and the `ts` of the batch that wrote it, unless absent or expired.
    fn get_receipt(&self, key: &[u8]) -> Result<Option<(Timestamp, Vec<u8>)>, StorageError>;
    /// Reads the next rows of a full copy of the namespace from `from` on, in a fixed
    /// order: documents, index entries, globals, receipts (every one stored, expired or
    /// not), each kind in key order (see [`ExportCursor`]). At most `max_rows` rows, and
    /// about `max_bytes` by [`ExportedRow::size_bytes`] (every row but the last starts
    /// below it), and at least one row if any remain. The `max_ts` is not a row: the caller
    /// decides it. Pages need not be one consistent state: the caller replays every batch
    /// written since before the first page on top of the copy (each write sets a key to a
    /// value or removes it, so the replay converges). Backends build it with
    /// [`export_page_by_kind`].
    fn export_page(
        &self,
        from: &ExportPosition,
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<ExportPage, StorageError>;
    /// Writes exported rows as they are (a document or receipt keeps its `ts`; an existing
    /// key is overwritten; of two rows with one key the later wins), durably, in one
    /// transaction, and, when `max_ts` is given, sets the namespace's [`TenantStore::max_ts`]
    /// to it in the same transaction, backwards or forwards. Only for filling a new
    /// namespace that no committer writes to yet; later batches must still be after
    /// `max_ts`.
    fn import(&self, rows: &[ExportedRow], max_ts: Option<Timestamp>) -> Result<(), StorageError>;
}

/// A document ID as backends store it: the table number (4 bytes, big-endian), then the 16
/// internal bytes, so one table's documents are one contiguous range of keys.
pub fn encode_document_id(id: &DocumentId) -> [u8; 20] {
    let mut out = [0u8; 20];
    out[..4].copy_from_slice(&id.table.0.to_be_bytes());
    out[4..].copy_from_slice(&id.internal);
    out
}

/// The inverse of [`encode_document_id`]; `None` unless `bytes` is 20 bytes long.
pub fn decode_document_id(bytes: &[u8]) -> Option<DocumentId> {
    let table: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
    let internal: [u8; 16] = bytes.get(4..)?.try_into().ok()?;
    (bytes.len() == 20).then_some(DocumentId {
        table: TableNumber(u32::from_be_bytes(table)),
        internal,
    })
}

/// Result of [`TenantStore::scan_index`].
#[derive(Debug, Clone, Default)]
pub struct IndexScan {
    /// The `max_ts` of the state the scan read.
    pub ts: Timestamp,
    /// `(key, document)` pairs in scan order.
    pub entries: Vec<(Vec<u8>, StoredDocument)>,
}

/// Size of a namespace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NamespaceStats {
    pub documents: u64,
    pub body_bytes: u64,
}

#[cfg(feature = "conformance")]
pub mod conformance;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_ids_round_trip_and_keep_tables_contiguous() {
        let id = DocumentId {
            table: TableNumber(0x0102_0304),
            internal: [7; 16],
        };
        let encoded = encode_document_id(&id);
        assert_eq!(&encoded[..4], &[1, 2, 3, 4]);
        assert_eq!(decode_document_id(&encoded), Some(id));
        assert_eq!(decode_document_id(&encoded[..19]), None);
        assert_eq!(decode_document_id(&[0; 21]), None);
        let next_table = DocumentId {
            table: TableNumber(0x0102_0305),
            internal: [0; 16],
        };
        assert!(encode_document_id(&next_table) > encode_document_id(&id));
    }

    /// Rows of every kind, in export order.
    fn stored_rows() -> Vec<ExportedRow> {
        let doc = |n: u8| {
            ExportedRow::Document(StoredDocument {
                id: DocumentId {
                    table: TableNumber(1),
                    internal: [n; 16],
                },
                table: TableNumber(1),
                ts: Timestamp(1),
                body: vec![n; 10],
            })
        };
        let entry = |index: u32, key: &[u8]| ExportedRow::IndexEntry {
            index: IndexNumber(index),
            key: key.to_vec(),
            id: DocumentId {
                table: TableNumber(1),
                internal: [1; 16],
            },
        };
        vec![
            doc(1),
            doc(2),
            entry(1, &[0xff]),
            entry(2, &[0x00]),
            ExportedRow::Global {
                name: "a".into(),
                value: vec![],
            },
            ExportedRow::Receipt {
                key: vec![],
                ts: Timestamp(1),
                body: vec![],
            },
        ]
    }

    /// A backend's chunk read over `rows`, following the contract of
    /// [`export_page_by_kind`].
    fn read_from(
        rows: &[ExportedRow],
    ) -> impl FnMut(ExportCursor<'_>, usize, usize) -> Result<ExportChunk, StorageError> + '_ {
        move |cursor, max_rows, max_bytes| {
            let start = match cursor {
                ExportCursor::Documents(Some(id)) => ExportPosition::Documents { after: *id },
                ExportCursor::IndexEntries(Some((index, key))) => ExportPosition::IndexEntries {
                    after: (index, key.to_vec()),
                },
                ExportCursor::Globals(Some(name)) => ExportPosition::Globals {
                    after: name.to_string(),
                },
                ExportCursor::Receipts(Some(key)) => ExportPosition::Receipts {
                    after: key.to_vec(),
                },
                _ => ExportPosition::Start,
            };
            let rank = kind_rank(cursor.kind());
            let mut chunk = ExportChunk {
                rows: Vec::new(),
                exhausted: true,
            };
            let mut bytes = 0;
            for row in rows {
                let key = row.position().order_key();
                if key.0 != rank || key <= start.order_key() {
                    continue;
                }
                if chunk.rows.len() == max_rows || (!chunk.rows.is_empty() && bytes >= max_bytes) {
                    chunk.exhausted = false;
                    break;
                }
                bytes += row.size_bytes();
                chunk.rows.push(row.clone());
            }
            Ok(chunk)
        }
    }

    fn all_pages(rows: &[ExportedRow], max_rows: usize, max_bytes: usize) -> Vec<ExportPage> {
        let mut read = read_from(rows);
        let mut pages: Vec<ExportPage> = Vec::new();
        let mut from = ExportPosition::Start;
        loop {
            let page = export_page_by_kind(&from, max_rows, max_bytes, &mut read)
                .unwrap_or_else(|e| panic!("{e}"));
            let next = page.next.clone();
            pages.push(page);
            match next {
                Some(next) => from = next,
                None => return pages,
            }
        }
    }

    #[test]
    fn export_pages_cross_kinds_and_respect_their_bounds() {
        let rows = stored_rows();
        let sizes: Vec<Vec<usize>> = all_pages(&rows, 4, usize::MAX)
            .iter()
            .map(|p| p.rows.iter().map(ExportedRow::size_bytes).collect())
            .collect();
        assert_eq!(sizes, vec![vec![42, 42, 25, 25], vec![1, 8]]);
        // A page that ends exactly where the rows end still names a next page: empty.
        let lengths =
            |pages: Vec<ExportPage>| pages.iter().map(|p| p.rows.len()).collect::<Vec<_>>();
        assert_eq!(lengths(all_pages(&rows[..2], 2, usize::MAX)), [2, 0]);
        assert_eq!(lengths(all_pages(&rows, 3, usize::MAX)), [3, 3]);
        // Bytes: a row comes while the page holds less than the budget.
        assert_eq!(lengths(all_pages(&rows, 100, 43)), [2, 2, 2]);
        for (max_rows, max_bytes) in [(1, 1), (0, 0), (2, 50), (100, usize::MAX)] {
            let copied: Vec<ExportedRow> = all_pages(&rows, max_rows, max_bytes)
                .into_iter()
                .flat_map(|p| p.rows)
                .collect();
            assert_eq!(copied, rows, "{max_rows} rows, {max_bytes} bytes");
        }
        let empty = all_pages(&[], 10, 10);
        assert_eq!(empty, vec![ExportPage::default()]);
    }

    #[test]
    fn a_backend_out_of_contract_fails_the_page() {
        let rows = stored_rows();
        let mut backwards = |_: ExportCursor<'_>, _: usize, _: usize| {
            Ok(ExportChunk {
                rows: vec![rows[1].clone(), rows[0].clone()],
                exhausted: false,
            })
        };
        assert!(export_page_by_kind(&ExportPosition::Start, 10, 1000, &mut backwards).is_err());
        let mut stuck = |_: ExportCursor<'_>, _: usize, _: usize| Ok(ExportChunk::default());
        assert!(export_page_by_kind(&ExportPosition::Start, 10, 1000, &mut stuck).is_err());
        let mut wrong_kind = |_: ExportCursor<'_>, _: usize, _: usize| {
            Ok(ExportChunk {
                rows: vec![rows[4].clone()],
                exhausted: true,
            })
        };
        assert!(export_page_by_kind(&ExportPosition::Start, 10, 1000, &mut wrong_kind).is_err());
        let mut too_many = |_: ExportCursor<'_>, _: usize, _: usize| {
            Ok(ExportChunk {
                rows: rows[..2].to_vec(),
                exhausted: true,
            })
        };
        assert!(export_page_by_kind(&ExportPosition::Start, 1, 1000, &mut too_many).is_err());
    }
}

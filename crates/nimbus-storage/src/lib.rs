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

use std::fmt;
use std::sync::Arc;

pub use nimbus_types::index_key::KeyRange;
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
}

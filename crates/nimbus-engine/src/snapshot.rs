//! Serving snapshots: a tenant's documents and indexes at one commit timestamp.
//!
//! Two sources, one interface ([`Snapshot::scan`], [`Snapshot::get`]):
//! - **Resident** (the tenant fits its memory budget): persistent, structurally shared
//!   maps of every document and index entry. Publishing a new version after a commit
//!   costs O(changes · log n); a reader holding an old `Arc<Snapshot>` keeps its version.
//! - **Paged** (the tenant is larger than its budget): reads go to storage, which holds
//!   only the latest state; rows written after the snapshot are replaced by their
//!   pre-images from the [`UndoLog`], so the reader still sees exactly the state at `ts`.
//!   Storage's own page cache is the cache; memory per tenant stays bounded.
//!
//! Either way readers never wait for the committer.

use std::ops::Bound;
use std::sync::Arc;

use imbl::{HashMap as PHashMap, OrdMap};
use nimbus_storage::{IndexNumber, IndexWrite, KeyRange, ScanOrder, TenantStore};
use nimbus_types::index_key::document_key;
use nimbus_types::{Document, DocumentId, IdCodec, TableNumber, Timestamp};

use crate::catalog::{Catalog, IndexInfo};
use crate::codec::decode_document;
use crate::error::EngineError;
use crate::undo_log::{AtSnapshot, UndoLog};

/// One index's entries: encoded key → document.
/// Keys are shared slices: a commit path-copies the map's nodes, and cloning a node then
/// bumps reference counts instead of allocating and copying every key in it.
pub(crate) type IndexMap = OrdMap<Arc<[u8]>, (DocumentId, Document)>;

/// An entry returned by a scan: key, document ID, document.
pub type ScanEntry = (Vec<u8>, DocumentId, Document);

#[derive(Clone)]
struct Resident {
    docs: PHashMap<DocumentId, Document>,
    indexes: PHashMap<IndexNumber, IndexMap>,
    /// Approximate bytes of the documents and entries above.
    bytes: usize,
}

#[derive(Clone)]
struct Paged {
    store: Arc<dyn TenantStore>,
    undo: Arc<UndoLog>,
}

#[derive(Clone)]
enum Source {
    Resident(Resident),
    Paged(Paged),
}

/// A consistent, immutable view of one tenant at `ts`.
#[derive(Clone)]
pub struct Snapshot {
    pub ts: Timestamp,
    pub catalog: Arc<Catalog>,
    pub id_codec: IdCodec,
    /// The deployment (code, schema) in force at `ts`: it changes only in the commit that
    /// changes the catalog for it (see [`crate::DeploymentHandle`]).
    pub deployment: crate::DeploymentHandle,
    /// Documents per table at `ts` (kept by every write, so `count` reads no documents).
    counts: PHashMap<TableNumber, u64>,
    source: Source,
}

impl Snapshot {
    pub(crate) fn empty_resident(id_codec: IdCodec) -> Self {
        Snapshot {
            ts: Timestamp::ZERO,
            catalog: Arc::new(Catalog::default()),
            id_codec,
            deployment: Arc::new(()),
            counts: PHashMap::new(),
            source: Source::Resident(Resident {
                docs: PHashMap::new(),
                indexes: PHashMap::new(),
                bytes: 0,
            }),
        }
    }

    /// A snapshot served from storage; `counts` are the documents per table at `ts`.
    pub(crate) fn paged(
        ts: Timestamp,
        catalog: Arc<Catalog>,
        id_codec: IdCodec,
        counts: impl IntoIterator<Item = (TableNumber, u64)>,
        store: Arc<dyn TenantStore>,
        undo: Arc<UndoLog>,
    ) -> Self {
        Snapshot {
            ts,
            catalog,
            id_codec,
            deployment: Arc::new(()),
            counts: counts.into_iter().collect(),
            source: Source::Paged(Paged { store, undo }),
        }
    }

    /// Documents of `table` at this snapshot.
    pub fn table_count(&self, table: TableNumber) -> u64 {
        self.counts.get(&table).copied().unwrap_or(0)
    }

    /// Whether this snapshot is served from memory.
    pub fn is_resident(&self) -> bool {
        matches!(self.source, Source::Resident(_))
    }

    /// Approximate bytes held in memory for documents (0 when paged).
    pub fn resident_bytes(&self) -> usize {
        match &self.source {
            Source::Resident(r) => r.bytes,
            Source::Paged(_) => 0,
        }
    }

    /// Documents held in memory (0 when paged).
    pub fn resident_documents(&self) -> usize {
        match &self.source {
            Source::Resident(r) => r.docs.len(),
            Source::Paged(_) => 0,
        }
    }

    /// Reads one document at this snapshot.
    pub fn get(&self, id: &DocumentId) -> Result<Option<Document>, EngineError> {
        match &self.source {
            Source::Resident(r) => Ok(r.docs.get(id).cloned()),
            Source::Paged(p) => {
                // Storage first, then the undo log: the committer logs a pre-image before
                // the write it describes reaches storage, so a row seen newer than the
                // snapshot always has its pre-image by the time the log is read.
                let stored = p.store.get_document(id)?;
                if let Some(stored) = &stored {
                    if stored.ts <= self.ts {
                        return Ok(Some(Arc::new(decode_document(&stored.body)?)));
                    }
                }
                match p.undo.at(id, self.ts) {
                    None => Err(undo_window_passed()),
                    Some(AtSnapshot::Was(before)) => Ok(before),
                    Some(AtSnapshot::Unchanged) if stored.is_none() => Ok(None),
                    Some(AtSnapshot::Unchanged) => Err(EngineError::Conflict(
                        "a document newer than the snapshot has no pre-image".into(),
                    )),
                }
            }
        }
    }

    /// Up to `limit` entries of `index` inside `range`, strictly after `after` in scan
    /// order.
    pub fn scan(
        &self,
        index: IndexNumber,
        range: &KeyRange,
        order: ScanOrder,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<ScanEntry>, EngineError> {
        let bounded = narrowed(range, order, after);
        match &self.source {
            Source::Resident(r) => {
                let Some(map) = r.indexes.get(&index) else {
                    return Ok(Vec::new());
                };
                let bounds = (as_slice_bound(&bounded.start), as_slice_bound(&bounded.end));
                let iter = map.range::<_, [u8]>(bounds);
                let pick = |(key, (id, doc)): (&Arc<[u8]>, &(DocumentId, Document))| {
                    (key.to_vec(), *id, doc.clone())
                };
                Ok(match order {
                    ScanOrder::Ascending => iter.take(limit).map(pick).collect(),
                    ScanOrder::Descending => iter.rev().take(limit).map(pick).collect(),
                })
            }
            Source::Paged(p) => self.scan_paged(p, index, &bounded, order, limit),
        }
    }

    /// A scan of a tenant served from storage, at this snapshot's `ts`.
    ///
    /// Storage holds only the latest state and moves on while the scan runs; the undo log
    /// holds the state at `ts` of every document written since. Storage is read *first*
    /// and the log *after*: the committer logs a batch's pre-images before the batch
    /// reaches storage, so every document changed after `ts` that the storage pages
    /// reflect is in the log as read afterwards. Every document the log names is then
    /// taken from the log (its state at `ts`, or absent), never from storage, whatever
    /// state of it the storage pages showed; the other rows from storage are unchanged
    /// since `ts`. (Reading the log first missed a commit landing between the two reads:
    /// its row was skipped as too new and its pre-image was not in the log read earlier.)
    fn scan_paged(
        &self,
        paged: &Paged,
        index: IndexNumber,
        bounded: &KeyRange,
        order: ScanOrder,
        limit: usize,
    ) -> Result<Vec<ScanEntry>, EngineError> {
        let Some(info) = self.catalog.index(index) else {
            return Ok(Vec::new());
        };
        let before = |a: &[u8], b: &[u8]| match order {
            ScanOrder::Ascending => a < b,
            ScanOrder::Descending => a > b,
        };
        // Storage rows fetched so far, and whether the range is exhausted.
        let mut rows: Vec<(Vec<u8>, nimbus_storage::StoredDocument)> = Vec::new();
        let mut exhausted = false;
        let mut want = limit.max(1);
        loop {
            let range = match rows.last() {
                Some((last, _)) => narrowed(bounded, order, Some(last)),
                None => bounded.clone(),
            };
            if !exhausted {
                let fetch = want.saturating_sub(rows.len()).max(1);
                let scan = paged.store.scan_index(index, &range, order, fetch)?;
                exhausted = scan.entries.len() < fetch;
                rows.extend(scan.entries);
            }
            let changed = paged
                .undo
                .changed_since(info.table, self.ts)
                .ok_or_else(undo_window_passed)?;
            let mut entries: Vec<ScanEntry> = Vec::with_capacity(rows.len().min(limit));
            for (key, stored) in &rows {
                if changed.contains_key(&stored.id) {
                    continue;
                }
                debug_assert!(
                    stored.ts <= self.ts,
                    "a row newer than the snapshot has no pre-image"
                );
                if stored.ts > self.ts {
                    return Err(EngineError::Conflict(
                        "a document newer than the snapshot has no pre-image".into(),
                    ));
                }
                entries.push((
                    key.clone(),
                    stored.id,
                    Arc::new(decode_document(&stored.body)?),
                ));
            }
            for (id, state) in &changed {
                if let Some(doc) = state {
                    let key = document_key(&info.fields, doc);
                    if bounded.contains(&key) {
                        entries.push((key, *id, doc.clone()));
                    }
                }
            }
            entries.sort_by(|a, b| match order {
                ScanOrder::Ascending => a.0.cmp(&b.0),
                ScanOrder::Descending => b.0.cmp(&a.0),
            });
            // Entries up to the last storage row fetched are complete; beyond it only when
            // storage has no more rows in the range.
            let complete = match (exhausted, rows.last()) {
                (true, _) | (false, None) => entries.len(),
                (false, Some((last, _))) => entries
                    .iter()
                    .take_while(|(key, _, _)| !before(last, key))
                    .count(),
            };
            if complete >= limit || exhausted {
                entries.truncate(complete.min(limit));
                return Ok(entries);
            }
            // Rows the log replaced thinned the page out: fetch more.
            want = rows.len() + (limit - complete).max(changed.len()).max(8);
        }
    }

    /// Applies one document write. `old` is the document's current state (the committer
    /// knows it: every write of an existing document was preceded by a read that the
    /// conflict check validated). Returns the index writes storage needs (an entry whose
    /// key did not change is not rewritten) and adds every key the write touched, changed
    /// or not, to `touched` (the write log: a query that read the document through an
    /// unchanged key must still see the change) when given one.
    pub(crate) fn apply_write(
        &mut self,
        id: DocumentId,
        table: TableNumber,
        old: Option<&Document>,
        new: Option<Document>,
        mut touched: Option<&mut Vec<(IndexNumber, Vec<u8>)>>,
    ) -> Vec<IndexWrite> {
        let mut touch = |index: IndexNumber, key: &Vec<u8>| {
            if let Some(touched) = touched.as_deref_mut() {
                touched.push((index, key.clone()));
            }
        };
        match (old.is_some(), new.is_some()) {
            (false, true) => *self.counts.entry(table).or_insert(0) += 1,
            (true, false) => {
                let count = self.counts.entry(table).or_insert(0);
                debug_assert!(*count > 0, "a delete from an empty table");
                *count = count.saturating_sub(1);
            }
            _ => {}
        }
        let index_infos: Vec<IndexInfo> = self.catalog.table_indexes(table).cloned().collect();
        let mut writes = Vec::with_capacity(index_infos.len() * 2);
        // Unchanged keys: the resident map must point at the new body, storage keeps them.
        let mut rewritten = Vec::new();
        for info in &index_infos {
            let old_key = old.map(|d| document_key(&info.fields, d));
            let new_key = new.as_ref().map(|d| document_key(&info.fields, d));
            match (old_key, new_key) {
                (Some(old_key), Some(new_key)) if old_key == new_key => {
                    touch(info.number, &new_key);
                    rewritten.push(IndexWrite::Insert {
                        index: info.number,
                        key: new_key,
                        id,
                    });
                }
                (old_key, new_key) => {
                    if let Some(key) = old_key {
                        touch(info.number, &key);
                        writes.push(IndexWrite::Delete {
                            index: info.number,
                            key,
                        });
                    }
                    if let Some(key) = new_key {
                        touch(info.number, &key);
                        writes.push(IndexWrite::Insert {
                            index: info.number,
                            key,
                            id,
                        });
                    }
                }
            }
        }
        if let Source::Resident(r) = &mut self.source {
            for write in writes.iter().chain(&rewritten) {
                let map = match write {
                    IndexWrite::Insert { index, .. } | IndexWrite::Delete { index, .. } => {
                        r.indexes.entry(*index).or_default()
                    }
                    IndexWrite::DropIndex { .. } | IndexWrite::DropIndexChunk { .. } => continue,
                };
                match write {
                    IndexWrite::Insert { key, .. } => {
                        if let Some(doc) = &new {
                            map.insert(Arc::from(key.as_slice()), (id, doc.clone()));
                        }
                    }
                    IndexWrite::Delete { key, .. } => {
                        map.remove(key.as_slice());
                    }
                    IndexWrite::DropIndex { .. } | IndexWrite::DropIndexChunk { .. } => {}
                }
            }
            if let Some(previous) = r.docs.get(&id) {
                r.bytes = r
                    .bytes
                    .saturating_sub(doc_size(previous, index_infos.len()));
            }
            match &new {
                Some(doc) => {
                    r.bytes += doc_size(doc, index_infos.len());
                    r.docs.insert(id, doc.clone());
                }
                None => {
                    r.docs.remove(&id);
                }
            }
        }
        writes
    }

    /// Builds a new index from the documents of its table; returns its entries.
    pub(crate) fn backfill_index(
        &mut self,
        info: &IndexInfo,
    ) -> Result<Vec<IndexWrite>, EngineError> {
        let mut writes = Vec::new();
        match &mut self.source {
            Source::Resident(r) => {
                let mut map = IndexMap::new();
                for (id, doc) in r.docs.iter().filter(|(id, _)| id.table == info.table) {
                    let key = document_key(&info.fields, doc);
                    map.insert(Arc::from(key.as_slice()), (*id, doc.clone()));
                    writes.push(IndexWrite::Insert {
                        index: info.number,
                        key,
                        id: *id,
                    });
                }
                r.indexes.insert(info.number, map);
            }
            Source::Paged(p) => {
                // The deploy runs in the committer, so storage is exactly this snapshot.
                let mut failure = None;
                p.store.scan_table(
                    info.table,
                    &mut |stored| match decode_document(&stored.body) {
                        Ok(doc) => {
                            let key = document_key(&info.fields, &doc);
                            writes.push(IndexWrite::Insert {
                                index: info.number,
                                key,
                                id: stored.id,
                            });
                            true
                        }
                        Err(e) => {
                            failure = Some(e);
                            false
                        }
                    },
                )?;
                if let Some(e) = failure {
                    return Err(e);
                }
            }
        }
        Ok(writes)
    }

    /// Adds one entry to a (building) index of a resident snapshot; storage is the caller's.
    pub(crate) fn insert_index_entry(
        &mut self,
        index: IndexNumber,
        key: &[u8],
        id: DocumentId,
        doc: &Document,
    ) {
        if let Source::Resident(r) = &mut self.source {
            let replaced = r
                .indexes
                .entry(index)
                .or_default()
                .insert(Arc::from(key), (id, doc.clone()));
            if replaced.is_none() {
                // What `doc_size` counts per index of a document.
                r.bytes += 144 + key.len();
            }
        }
    }

    pub(crate) fn drop_index(&mut self, index: IndexNumber) {
        if let Source::Resident(r) = &mut self.source {
            r.indexes.remove(&index);
        }
    }

    pub(crate) fn set_catalog(&mut self, catalog: Arc<Catalog>) {
        self.catalog = catalog;
    }

    /// Loads a document at open time (no write log, no storage writes).
    pub(crate) fn load_document(&mut self, id: DocumentId, table: TableNumber, doc: Document) {
        let _ = self.apply_write(id, table, None, Some(doc), None);
    }

    /// Switches to paged serving (the tenant outgrew its memory budget).
    pub(crate) fn into_paged(self, store: Arc<dyn TenantStore>, undo: Arc<UndoLog>) -> Snapshot {
        let mut paged = Snapshot::paged(
            self.ts,
            self.catalog,
            self.id_codec,
            self.counts,
            store,
            undo,
        );
        paged.deployment = self.deployment;
        paged
    }

    /// The same paged snapshot, read from another store holding the same state (a tenant
    /// moved to another namespace, see `relocate.rs`); a resident one is returned as is.
    pub(crate) fn repoint(mut self, store: Arc<dyn TenantStore>, undo: Arc<UndoLog>) -> Snapshot {
        if let Source::Paged(paged) = &mut self.source {
            *paged = Paged { store, undo };
        }
        self
    }
}

fn undo_window_passed() -> EngineError {
    EngineError::Conflict("the snapshot is older than the undo log window".into())
}

/// Memory accounting for one document: its Convex size plus a rough per-entry overhead for
/// the persistent maps' nodes and each index entry's key. An estimate, not a measurement.
fn doc_size(doc: &Document, indexes: usize) -> usize {
    const ENTRY_OVERHEAD: usize = 96;
    let size = 2 + doc
        .iter()
        .map(|(k, v)| k.len() + 1 + v.size())
        .sum::<usize>();
    size + ENTRY_OVERHEAD * (1 + indexes) + 48 * indexes
}

fn as_slice_bound(bound: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match bound {
        Bound::Included(v) => Bound::Included(v.as_slice()),
        Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// `range` narrowed to the part strictly after `after` in scan order. `after` is always
/// a key inside `range` (cursors only hold keys they read from it).
pub(crate) fn narrowed(range: &KeyRange, order: ScanOrder, after: Option<&[u8]>) -> KeyRange {
    let mut narrowed = range.clone();
    if let Some(after) = after {
        match order {
            ScanOrder::Ascending => narrowed.start = Bound::Excluded(after.to_vec()),
            ScanOrder::Descending => narrowed.end = Bound::Excluded(after.to_vec()),
        }
    }
    narrowed
}

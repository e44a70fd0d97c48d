//! Serving snapshots: a tenant's documents and indexes at one commit timestamp.
//!
//! Two sources, one interface ([`Snapshot::scan`], [`Snapshot::get`]):
//! - **Resident** (the tenant fits its memory budget): persistent, structurally shared
//!   maps of every document and index entry. Publishing a new version after a commit
//!   costs O(changes · log n); a reader holding an old `Arc<Snapshot>` keeps its version.
//!   Each document is held once, as its compact encoding (`compact.rs`), in its table's
//!   map, which is also the table's `by_id` index; every other index holds only its keys,
//!   without their `_id` tail (`resident.rs`). Reads decode the documents they return.
//! - **Paged** (the tenant is larger than its budget): reads go to storage, which holds
//!   only the latest state; rows written after the snapshot are replaced by their
//!   pre-images from the [`UndoLog`], so the reader still sees exactly the state at `ts`.
//!   Storage's own page cache is the cache; memory per tenant stays bounded.
//!
//! Either way readers never wait for the committer.

use std::ops::Bound;
use std::sync::Arc;

use imbl::{HashMap as PHashMap, OrdMap};
use nimbus_storage::{IndexNumber, IndexWrite, KeyRange, ScanOrder, StorageError, TenantStore};
use nimbus_types::index_key::document_key;
use nimbus_types::{Document, DocumentId, IdCodec, Object, TableNumber, Timestamp};

use crate::catalog::{Catalog, IndexInfo};
use crate::codec::decode_document;
use crate::compact;
use crate::error::EngineError;
use crate::resident::{self, BoundKey, IdKey, Key, Prefix};
use crate::undo_log::{AtSnapshot, UndoLog};

/// One table's documents, in ID order: ID → compact encoding. Also the table's `by_id`
/// index (its keys are the IDs' text, which sorts as the IDs do).
type TableMap = OrdMap<IdKey, Arc<[u8]>>;

/// One index's entries (other than `by_id`): key without its `_id` tail → nothing; the
/// document is in its table's [`TableMap`].
#[derive(Clone)]
struct IndexMap {
    table: TableNumber,
    entries: OrdMap<Key, ()>,
    /// What the entries are charged in [`Resident::bytes`].
    bytes: usize,
}

impl IndexMap {
    fn new(table: TableNumber) -> IndexMap {
        IndexMap {
            table,
            entries: OrdMap::new(),
            bytes: 0,
        }
    }
}

/// An index whose key for a document changed in a write: the index, old key, new key.
type ChangedEntry<'a> = (&'a IndexInfo, Option<Vec<u8>>, Option<Vec<u8>>);

/// An entry returned by a scan: key, document ID, document.
pub type ScanEntry = (Vec<u8>, DocumentId, Document);

#[derive(Clone)]
struct Resident {
    tables: PHashMap<TableNumber, TableMap>,
    indexes: PHashMap<IndexNumber, IndexMap>,
    /// Approximate bytes of the documents and entries above (`resident.rs` charges).
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
                tables: PHashMap::new(),
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
            Source::Resident(r) => r.tables.values().map(OrdMap::len).sum(),
            Source::Paged(_) => 0,
        }
    }

    /// Reads one document at this snapshot.
    pub fn get(&self, id: &DocumentId) -> Result<Option<Document>, EngineError> {
        match &self.source {
            Source::Resident(r) => {
                let Some(body) = r
                    .tables
                    .get(&id.table)
                    .and_then(|docs| docs.get(&IdKey::Entry(id.internal)))
                else {
                    return Ok(None);
                };
                let text = self.id_codec.encode(*id);
                Ok(Some(Arc::new(decode_body(body, &text)?)))
            }
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
            Source::Resident(r) => self.scan_resident(r, index, &bounded, order, limit),
            Source::Paged(p) => self.scan_paged(p, index, &bounded, order, limit),
        }
    }

    /// A scan of a resident snapshot: `by_id` walks the table's documents, any other index
    /// its keys, each looked up in the table's documents.
    fn scan_resident(
        &self,
        r: &Resident,
        index: IndexNumber,
        bounded: &KeyRange,
        order: ScanOrder,
        limit: usize,
    ) -> Result<Vec<ScanEntry>, EngineError> {
        let by_id = self.catalog.index(index).filter(|info| is_by_id(info));
        let mut entries = Vec::new();
        if let Some(info) = by_id {
            let Some(docs) = r.tables.get(&info.table) else {
                return Ok(entries);
            };
            let bounds = key_bounds(bounded, info.table, self.id_codec, IdKey::Bound);
            let mut pick = |(key, body): (&IdKey, &Arc<[u8]>)| -> Result<(), EngineError> {
                let IdKey::Entry(internal) = key else {
                    return Err(corrupted("a bound stored as a document's key"));
                };
                let id = DocumentId {
                    table: info.table,
                    internal: *internal,
                };
                let text = self.id_codec.encode(id);
                let doc = decode_body(body, &text)?;
                entries.push((resident::id_tail(&text), id, Arc::new(doc)));
                Ok(())
            };
            let iter = docs.range(bounds);
            match order {
                ScanOrder::Ascending => iter.take(limit).try_for_each(&mut pick)?,
                ScanOrder::Descending => iter.rev().take(limit).try_for_each(&mut pick)?,
            }
            return Ok(entries);
        }
        let Some(map) = r.indexes.get(&index) else {
            return Ok(entries);
        };
        let docs = r.tables.get(&map.table);
        let bounds = key_bounds(bounded, map.table, self.id_codec, Key::Bound);
        let mut pick = |(key, ()): (&Key, &())| -> Result<(), EngineError> {
            let Key::Entry { prefix, internal } = key else {
                return Err(corrupted("a bound stored as an index entry"));
            };
            let id = DocumentId {
                table: map.table,
                internal: *internal,
            };
            let body = docs
                .and_then(|docs| docs.get(&IdKey::Entry(*internal)))
                .ok_or_else(|| corrupted("an index entry names a document the snapshot lacks"))?;
            let text = self.id_codec.encode(id);
            let doc = decode_body(body, &text)?;
            let key = resident::full_key(prefix.as_slice(), &resident::id_tail(&text));
            entries.push((key, id, Arc::new(doc)));
            Ok(())
        };
        let iter = map.entries.range(bounds);
        match order {
            ScanOrder::Ascending => iter.take(limit).try_for_each(&mut pick)?,
            ScanOrder::Descending => iter.rev().take(limit).try_for_each(&mut pick)?,
        }
        Ok(entries)
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
        // Entries whose key changed: (index, old key, new key). An unchanged key needs
        // nothing in memory either: entries hold no document.
        let mut changed: Vec<ChangedEntry<'_>> = Vec::new();
        for info in &index_infos {
            let old_key = old.map(|d| document_key(&info.fields, d));
            let new_key = new.as_ref().map(|d| document_key(&info.fields, d));
            match (old_key, new_key) {
                (Some(old_key), Some(new_key)) if old_key == new_key => {
                    touch(info.number, &new_key);
                }
                (old_key, new_key) => {
                    if let Some(key) = &old_key {
                        touch(info.number, key);
                        writes.push(IndexWrite::Delete {
                            index: info.number,
                            key: key.clone(),
                        });
                    }
                    if let Some(key) = &new_key {
                        touch(info.number, key);
                        writes.push(IndexWrite::Insert {
                            index: info.number,
                            key: key.clone(),
                            id,
                        });
                    }
                    changed.push((info, old_key, new_key));
                }
            }
        }
        if let Source::Resident(r) = &mut self.source {
            let text = self.id_codec.encode(id);
            let tail = resident::id_tail(&text);
            for (info, old_key, new_key) in changed {
                if is_by_id(info) {
                    continue; // the table's documents are this index
                }
                let map = r
                    .indexes
                    .entry(info.number)
                    .or_insert_with(|| IndexMap::new(table));
                if let Some(key) = old_key {
                    let prefix = key_prefix(&key, &tail, info, old.map(|d| &**d));
                    if map.entries.remove(&entry_key(&prefix, id)).is_some() {
                        let charge = resident::index_entry_charge(prefix.len());
                        map.bytes = map.bytes.saturating_sub(charge);
                        r.bytes = r.bytes.saturating_sub(charge);
                    }
                }
                if let Some(key) = new_key {
                    let prefix = key_prefix(&key, &tail, info, new.as_deref());
                    if map.entries.insert(entry_key(&prefix, id), ()).is_none() {
                        let charge = resident::index_entry_charge(prefix.len());
                        map.bytes += charge;
                        r.bytes += charge;
                    }
                }
            }
            let docs = r.tables.entry(table).or_default();
            let previous = match &new {
                Some(doc) => {
                    let body: Arc<[u8]> = compact::encode_document(doc, &text).into();
                    r.bytes += resident::document_charge(body.len());
                    docs.insert(IdKey::Entry(id.internal), body)
                }
                None => docs.remove(&IdKey::Entry(id.internal)),
            };
            if let Some(previous) = previous {
                r.bytes = r
                    .bytes
                    .saturating_sub(resident::document_charge(previous.len()));
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
        let codec = self.id_codec;
        match &mut self.source {
            Source::Resident(r) => {
                let mut map = IndexMap::new(info.table);
                let docs = r.tables.get(&info.table).cloned().unwrap_or_default();
                for (key, body) in docs.iter() {
                    let IdKey::Entry(internal) = key else {
                        return Err(corrupted("a bound stored as a document's key"));
                    };
                    let id = DocumentId {
                        table: info.table,
                        internal: *internal,
                    };
                    let text = codec.encode(id);
                    let doc = decode_body(body, &text)?;
                    let key = document_key(&info.fields, &doc);
                    if !is_by_id(info) {
                        let prefix = key_prefix(&key, &resident::id_tail(&text), info, Some(&doc));
                        if map.entries.insert(entry_key(&prefix, id), ()).is_none() {
                            map.bytes += resident::index_entry_charge(prefix.len());
                        }
                    }
                    writes.push(IndexWrite::Insert {
                        index: info.number,
                        key,
                        id,
                    });
                }
                if !is_by_id(info) {
                    r.bytes += map.bytes;
                    if let Some(replaced) = r.indexes.insert(info.number, map) {
                        r.bytes = r.bytes.saturating_sub(replaced.bytes);
                    }
                }
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
        let Some(info) = self.catalog.index(index).cloned() else {
            return;
        };
        if is_by_id(&info) {
            return; // the table's documents are this index
        }
        let tail = resident::id_tail(&self.id_codec.encode(id));
        if let Source::Resident(r) = &mut self.source {
            let prefix = key_prefix(key, &tail, &info, Some(&**doc));
            let map = r
                .indexes
                .entry(index)
                .or_insert_with(|| IndexMap::new(id.table));
            if map.entries.insert(entry_key(&prefix, id), ()).is_none() {
                let charge = resident::index_entry_charge(prefix.len());
                map.bytes += charge;
                r.bytes += charge;
            }
        }
    }

    pub(crate) fn drop_index(&mut self, index: IndexNumber) {
        if let Source::Resident(r) = &mut self.source {
            if let Some(dropped) = r.indexes.remove(&index) {
                r.bytes = r.bytes.saturating_sub(dropped.bytes);
            }
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

/// Whether `info` is a table's `by_id` index, which a resident snapshot serves from the
/// table's documents.
fn is_by_id(info: &IndexInfo) -> bool {
    info.fields.len() == 1 && info.fields[0] == "_id"
}

fn entry_key(prefix: &[u8], id: DocumentId) -> Key {
    Key::Entry {
        prefix: Prefix::new(prefix),
        internal: id.internal,
    }
}

/// `key` (a document's full key in `info`) without its `_id` tail. The tail is always there
/// (see `resident.rs`); were it not (a document whose `_id` is not its ID's text), the
/// prefix is made from the fields before `_id`, so memory stays ordered by the ID.
fn key_prefix(key: &[u8], tail: &[u8], info: &IndexInfo, doc: Option<&Object>) -> Vec<u8> {
    if let Some(prefix) = key.strip_suffix(tail) {
        return prefix.to_vec();
    }
    debug_assert!(false, "an index key without its document's _id tail");
    tracing::error!(index = %info.number, "an index key without its document's _id tail");
    let fields = info
        .fields
        .split_last()
        .map_or(&[][..], |(_, before)| before);
    doc.map_or_else(Vec::new, |doc| document_key(fields, doc))
}

/// Byte bounds as bounds on a resident map's keys.
fn key_bounds<K>(
    range: &KeyRange,
    table: TableNumber,
    codec: IdCodec,
    bound: fn(Arc<BoundKey>) -> K,
) -> (Bound<K>, Bound<K>) {
    let convert = |b: &Bound<Vec<u8>>| {
        let key = |bytes: &Vec<u8>| {
            bound(Arc::new(BoundKey {
                bytes: bytes.clone(),
                table,
                codec,
            }))
        };
        match b {
            Bound::Included(bytes) => Bound::Included(key(bytes)),
            Bound::Excluded(bytes) => Bound::Excluded(key(bytes)),
            Bound::Unbounded => Bound::Unbounded,
        }
    };
    (convert(&range.start), convert(&range.end))
}

fn corrupted(detail: &str) -> EngineError {
    EngineError::Storage(StorageError::Corrupted {
        namespace: String::new(),
        detail: format!("resident snapshot: {detail}"),
    })
}

fn decode_body(body: &[u8], id_text: &str) -> Result<Object, EngineError> {
    compact::decode_document(body, id_text).map_err(|e| corrupted(&e.to_string()))
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use nimbus_types::Value;

    use super::*;

    /// A resident snapshot with table `t` (and its built-ins) and `by_s` on `s`, plus the
    /// index numbers of `by_id`, `by_creation_time` and `by_s`.
    fn snapshot() -> (Snapshot, [IndexNumber; 3]) {
        let mut snapshot = Snapshot::empty_resident(IdCodec::new(0x5a5a));
        let mut catalog = Catalog::default();
        catalog.create_table("t");
        let by_s = catalog.add_index("t", "by_s", &["s".to_string()]);
        let number = |name: &str| catalog.resolve_index("t", name).unwrap().number;
        let numbers = [number("by_id"), number("by_creation_time"), by_s];
        snapshot.set_catalog(Arc::new(catalog));
        (snapshot, numbers)
    }

    fn doc(snapshot: &Snapshot, id: DocumentId, n: u8, s: Value) -> Document {
        let mut fields = Object::new();
        fields.insert("_id".into(), Value::String(snapshot.id_codec.encode(id)));
        fields.insert("_creationTime".into(), Value::Float64(f64::from(n)));
        fields.insert("s".into(), s);
        Arc::new(fields)
    }

    /// What every scan must answer: the documents' full keys in byte order.
    fn expected(
        snapshot: &Snapshot,
        model: &BTreeMap<DocumentId, Document>,
        index: IndexNumber,
    ) -> Vec<(Vec<u8>, DocumentId)> {
        let info = snapshot.catalog.index(index).unwrap();
        let mut entries: Vec<_> = model
            .iter()
            .map(|(id, doc)| (document_key(&info.fields, doc), *id))
            .collect();
        entries.sort();
        entries
    }

    fn check(
        snapshot: &Snapshot,
        model: &BTreeMap<DocumentId, Document>,
        indexes: [IndexNumber; 3],
    ) {
        for (id, doc) in model {
            assert_eq!(snapshot.get(id).unwrap().as_ref(), Some(doc));
        }
        assert_eq!(snapshot.resident_documents(), model.len());
        for index in indexes {
            let want = expected(snapshot, model, index);
            let all = snapshot
                .scan(
                    index,
                    &KeyRange::all(),
                    ScanOrder::Ascending,
                    None,
                    usize::MAX,
                )
                .unwrap();
            let got: Vec<_> = all.iter().map(|(k, id, _)| (k.clone(), *id)).collect();
            assert_eq!(got, want);
            for (_, id, doc) in &all {
                assert_eq!(Some(doc), model.get(id));
            }
            let mut reversed = snapshot
                .scan(
                    index,
                    &KeyRange::all(),
                    ScanOrder::Descending,
                    None,
                    usize::MAX,
                )
                .unwrap();
            reversed.reverse();
            assert_eq!(reversed.len(), want.len());
            // Cursors and bounds cut anywhere inside real keys land where bytes say.
            for (key, _) in want.iter().step_by(3) {
                for cut in [key.len(), key.len() - 1, key.len() / 2, 1] {
                    let bound = key[..cut].to_vec();
                    let after = snapshot
                        .scan(
                            index,
                            &KeyRange::all(),
                            ScanOrder::Ascending,
                            Some(&bound),
                            5,
                        )
                        .unwrap();
                    let want_after: Vec<_> = want
                        .iter()
                        .filter(|(k, _)| *k > bound)
                        .take(5)
                        .map(|(k, _)| k.clone())
                        .collect();
                    let got_after: Vec<_> = after.into_iter().map(|(k, _, _)| k).collect();
                    assert_eq!(got_after, want_after);
                    let range = KeyRange::prefix(bound.clone());
                    let inside = snapshot
                        .scan(index, &range, ScanOrder::Descending, None, usize::MAX)
                        .unwrap();
                    let want_inside = want.iter().filter(|(k, _)| range.contains(k)).count();
                    assert_eq!(inside.len(), want_inside);
                }
            }
        }
    }

    #[test]
    fn resident_maps_answer_like_a_model_and_keep_old_versions() {
        let (mut snapshot, indexes) = snapshot();
        let table = snapshot.catalog.resolve_index("t", "by_id").unwrap().table;
        let mut model = BTreeMap::new();
        let values = [
            Value::String("a".into()),
            Value::String("long ".repeat(10)),
            Value::Float64(-0.0),
            Value::Null,
        ];
        for n in 0..40u8 {
            let id = DocumentId::new_time_ordered(table, 1000 - u64::from(n), [n; 10]);
            let doc = doc(&snapshot, id, n, values[usize::from(n) % 4].clone());
            snapshot.apply_write(id, table, None, Some(doc.clone()), None);
            model.insert(id, doc);
        }
        check(&snapshot, &model, indexes);
        let before = snapshot.clone();
        let model_before = model.clone();
        // Updates that change the indexed field and ones that do not; deletes.
        let ids: Vec<DocumentId> = model.keys().copied().collect();
        for (i, id) in ids.iter().enumerate() {
            let old = model.get(id).cloned();
            let new = match i % 3 {
                0 => None,
                1 => Some(doc(&snapshot, *id, i as u8, Value::String("z".into()))),
                _ => Some(doc(&snapshot, *id, i as u8, values[i % 4].clone())),
            };
            snapshot.apply_write(*id, table, old.as_ref(), new.clone(), None);
            match new {
                Some(doc) => model.insert(*id, doc),
                None => model.remove(id),
            };
        }
        check(&snapshot, &model, indexes);
        check(&before, &model_before, indexes);
        // Deleting everything gives back every byte charged.
        for (id, doc) in std::mem::take(&mut model) {
            snapshot.apply_write(id, table, Some(&doc), None, None);
        }
        check(&snapshot, &model, indexes);
        assert_eq!(snapshot.resident_bytes(), 0);
        assert!(before.resident_bytes() > 0);
    }

    #[test]
    fn built_and_dropped_indexes_are_charged_and_refunded() {
        let (mut snapshot, _) = snapshot();
        let table = snapshot.catalog.resolve_index("t", "by_id").unwrap().table;
        for n in 0..10u8 {
            let id = DocumentId::new_time_ordered(table, u64::from(n), [n; 10]);
            let doc = doc(&snapshot, id, n, Value::Int64(i64::from(n)));
            snapshot.apply_write(id, table, None, Some(doc), None);
        }
        let without = snapshot.resident_bytes();
        let mut catalog = (*snapshot.catalog).clone();
        let by_n = catalog.add_index("t", "by_n", &["s".to_string()]);
        snapshot.set_catalog(Arc::new(catalog));
        let info = snapshot.catalog.index(by_n).unwrap().clone();
        let writes = snapshot.backfill_index(&info).unwrap();
        assert_eq!(writes.len(), 10);
        assert_eq!(
            snapshot.resident_bytes(),
            without + 10 * resident::index_entry_charge(9 + 9)
        );
        let scanned = snapshot
            .scan(
                by_n,
                &KeyRange::all(),
                ScanOrder::Ascending,
                None,
                usize::MAX,
            )
            .unwrap();
        let keys: Vec<Vec<u8>> = writes
            .iter()
            .filter_map(|w| match w {
                IndexWrite::Insert { key, .. } => Some(key.clone()),
                _ => None,
            })
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(
            scanned.into_iter().map(|(k, _, _)| k).collect::<Vec<_>>(),
            sorted
        );
        snapshot.drop_index(by_n);
        assert_eq!(snapshot.resident_bytes(), without);
    }

    #[test]
    fn a_corrupt_body_is_an_error() {
        let (mut snapshot, [by_id, _, by_s]) = snapshot();
        let table = snapshot.catalog.resolve_index("t", "by_id").unwrap().table;
        let id = DocumentId::new_time_ordered(table, 1, [1; 10]);
        let doc = doc(&snapshot, id, 1, Value::Null);
        snapshot.apply_write(id, table, None, Some(doc), None);
        if let Source::Resident(r) = &mut snapshot.source {
            let docs = r.tables.get_mut(&table).unwrap();
            docs.insert(
                IdKey::Entry(id.internal),
                Arc::from(&[1u8, 1, b'a', 42][..]),
            );
        }
        assert!(snapshot.get(&id).is_err());
        for index in [by_id, by_s] {
            let scan = snapshot.scan(index, &KeyRange::all(), ScanOrder::Ascending, None, 10);
            assert!(scan.is_err());
        }
    }
}

//! The undo log: pre-images of recently written documents, for paged reads.
//!
//! A tenant whose data exceeds its memory budget is served from storage ("paged"). Storage
//! only holds the latest state, and it moves on while a reader works at an older snapshot
//! timestamp `T`. Every stored document carries the timestamp of the batch that wrote it,
//! so a reader can tell which rows are newer than `T`; for those (and for documents deleted
//! after `T`) it takes the document's state at `T` from this log.
//!
//! **Invariant:** the committer appends a batch's pre-images *before* writing the batch to
//! storage, so any storage row newer than a published snapshot has its pre-image here.
//! The log is bounded (entries and age); a reader whose snapshot is older than the
//! oldest retained entry gets [`crate::EngineError::Conflict`] and retries on a fresh
//! snapshot.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use nimbus_types::{Document, DocumentId, TableNumber, Timestamp};
use parking_lot::RwLock;

/// One document's state before a write at `ts`.
#[derive(Clone)]
pub(crate) struct PreImage {
    pub ts: Timestamp,
    pub id: DocumentId,
    pub table: TableNumber,
    /// `None`: the document did not exist before `ts`.
    pub before: Option<Document>,
}

struct Inner {
    entries: VecDeque<(PreImage, Instant)>,
    /// Every write with `ts > floor` is in `entries`.
    floor: Timestamp,
}

pub(crate) struct UndoLog {
    inner: RwLock<Inner>,
    max_entries: usize,
    max_age: Duration,
}

/// What the undo log says about a document at a snapshot.
pub(crate) enum AtSnapshot {
    /// Not written after the snapshot: storage's version is the snapshot's.
    Unchanged,
    /// Written after the snapshot: this was its state at the snapshot.
    Was(Option<Document>),
}

impl UndoLog {
    pub fn new(start: Timestamp, max_entries: usize, max_age: Duration) -> Self {
        UndoLog {
            inner: RwLock::new(Inner {
                entries: VecDeque::new(),
                floor: start,
            }),
            max_entries,
            max_age,
        }
    }

    pub fn append(&self, images: Vec<PreImage>) {
        let now = Instant::now();
        let mut inner = self.inner.write();
        inner
            .entries
            .extend(images.into_iter().map(|image| (image, now)));
        while let Some((front, at)) = inner.entries.front() {
            if inner.entries.len() > self.max_entries || now.duration_since(*at) > self.max_age {
                let ts = front.ts;
                inner.floor = inner.floor.max(ts);
                inner.entries.pop_front();
            } else {
                break;
            }
        }
    }

    /// The state of `id` at snapshot `ts`, as far as the log knows; `None` when the log no
    /// longer reaches back to `ts` (checked under the same lock as the lookup, so entries
    /// dropped meanwhile cannot go unnoticed).
    pub fn at(&self, id: &DocumentId, ts: Timestamp) -> Option<AtSnapshot> {
        let inner = self.inner.read();
        if ts < inner.floor {
            return None;
        }
        // The earliest write after `ts` holds the state at `ts`. Newest entries are at the
        // back and readers are usually at the latest snapshot, so scan backwards.
        let mut found = None;
        for (image, _) in inner.entries.iter().rev() {
            if image.ts <= ts {
                break;
            }
            if image.id == *id {
                found = Some(image.before.clone());
            }
        }
        Some(match found {
            Some(before) => AtSnapshot::Was(before),
            None => AtSnapshot::Unchanged,
        })
    }

    /// Documents of `table` written after `ts`, each with its state at `ts`; `None` when
    /// the log no longer reaches back to `ts` (checked under the lock of the read).
    pub fn changed_since(
        &self,
        table: TableNumber,
        ts: Timestamp,
    ) -> Option<std::collections::HashMap<DocumentId, Option<Document>>> {
        let inner = self.inner.read();
        if ts < inner.floor {
            return None;
        }
        let mut states: std::collections::HashMap<DocumentId, Option<Document>> =
            std::collections::HashMap::new();
        for (image, _) in inner.entries.iter().rev() {
            if image.ts <= ts {
                break;
            }
            if image.table == table {
                // Iterating newest first: the last one seen is the earliest after `ts`.
                states.insert(image.id, image.before.clone());
            }
        }
        Some(states)
    }
}

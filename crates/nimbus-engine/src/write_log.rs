//! The write log: index keys written by recent commits, for conflict checks.
//!
//! Bounded by `max_entries` and `max_age`; everything committed after `floor_ts` is in the
//! log. A transaction whose snapshot is older than the floor cannot be checked and is
//! treated as a conflict (the caller retries on a fresh snapshot).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use nimbus_storage::IndexNumber;
use nimbus_types::Timestamp;

use crate::read_set::ReadSet;

/// Index keys written by one commit batch.
pub(crate) struct LogEntry {
    pub ts: Timestamp,
    pub keys: Vec<(IndexNumber, Vec<u8>)>,
    pub catalog_changed: bool,
    at: Instant,
}

pub(crate) struct WriteLog {
    entries: VecDeque<LogEntry>,
    floor_ts: Timestamp,
    max_entries: usize,
    max_age: Duration,
}

impl WriteLog {
    pub fn new(start_ts: Timestamp, max_entries: usize, max_age: Duration) -> Self {
        WriteLog {
            entries: VecDeque::new(),
            floor_ts: start_ts,
            max_entries,
            max_age,
        }
    }

    pub fn append(
        &mut self,
        ts: Timestamp,
        keys: Vec<(IndexNumber, Vec<u8>)>,
        catalog_changed: bool,
    ) {
        debug_assert!(
            self.entries.back().is_none_or(|e| e.ts < ts),
            "write log ts must increase"
        );
        self.entries.push_back(LogEntry {
            ts,
            keys,
            catalog_changed,
            at: Instant::now(),
        });
        let now = Instant::now();
        while let Some(front) = self.entries.front() {
            if self.entries.len() > self.max_entries || now.duration_since(front.at) > self.max_age
            {
                self.floor_ts = front.ts;
                self.entries.pop_front();
            } else {
                break;
            }
        }
    }

    /// Forgets everything: only transactions at `ts` or later can be checked (the tenant
    /// was reloaded from storage at `ts`).
    pub fn restart_at(&mut self, ts: Timestamp) {
        self.entries.clear();
        self.floor_ts = ts;
    }

    /// Why a transaction at `snapshot_ts` with `read_set` must not commit, if it must not.
    pub fn conflict(&self, snapshot_ts: Timestamp, read_set: &ReadSet) -> Option<String> {
        if snapshot_ts < self.floor_ts {
            return Some("the transaction's snapshot is older than the write log".into());
        }
        for entry in self.entries.iter().rev() {
            if entry.ts <= snapshot_ts {
                break;
            }
            if entry.catalog_changed && read_set.catalog_version.is_some() {
                return Some("the schema or table list changed".into());
            }
            if let Some((index, _)) = entry
                .keys
                .iter()
                .find(|(index, key)| read_set.intersects(*index, key))
            {
                return Some(format!("a document read through index {index} was written"));
            }
        }
        None
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

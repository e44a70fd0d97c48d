//! Per-tenant cache of query results, validated by read sets.
//!
//! A query is deterministic given its code, arguments and the documents it read. Its
//! transaction recorded exactly which index ranges it read (the read set), so a cached
//! result taken at timestamp `ts` is still correct at the latest snapshot when no commit
//! after `ts` wrote a key inside those ranges — which the engine's write log answers.
//! Hits skip JavaScript entirely. Entries are keyed by code generation, function and
//! canonical arguments, bounded in number (LRU) and in result size.
//!
//! As in Convex, a query that reads `Date.now()` or `Math.random()` is cached like any
//! other: its result is reused until the data it read changes.

use std::collections::HashMap;
use std::sync::Arc;

use nimbus_engine::ReadSet;
use nimbus_types::json::SharedValue;
use nimbus_types::Timestamp;

#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct CacheKey {
    pub generation: u64,
    pub module: String,
    pub export: String,
    /// convex-JSON text of the arguments.
    pub args: String,
}

struct Entry {
    /// The result is known correct at this timestamp.
    ts: Timestamp,
    read_set: Arc<ReadSet>,
    /// Shared with the responses serving it, which render its JSON once.
    value: Arc<SharedValue>,
    last_used: u64,
}

pub(crate) struct QueryCache {
    entries: HashMap<CacheKey, Entry>,
    capacity: usize,
    max_result_bytes: usize,
    clock: u64,
}

impl QueryCache {
    pub fn new(capacity: usize, max_result_bytes: usize) -> Self {
        QueryCache {
            entries: HashMap::new(),
            capacity,
            max_result_bytes,
            clock: 0,
        }
    }

    /// A cached result still valid at `latest` (checked with `unchanged`), if any.
    pub fn get(
        &mut self,
        key: &CacheKey,
        latest: Timestamp,
        unchanged: impl FnOnce(Timestamp, &ReadSet) -> bool,
    ) -> Option<Arc<SharedValue>> {
        self.clock += 1;
        let entry = self.entries.get_mut(key)?;
        if entry.ts < latest && !unchanged(entry.ts, &entry.read_set) {
            self.entries.remove(key);
            return None;
        }
        entry.ts = entry.ts.max(latest);
        entry.last_used = self.clock;
        Some(entry.value.clone())
    }

    pub fn insert(
        &mut self,
        key: CacheKey,
        ts: Timestamp,
        read_set: ReadSet,
        value: Arc<SharedValue>,
    ) {
        if self.capacity == 0 || value.value().size() > self.max_result_bytes {
            return;
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        self.clock += 1;
        self.entries.insert(
            key,
            Entry {
                ts,
                read_set: Arc::new(read_set),
                value,
                last_used: self.clock,
            },
        );
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

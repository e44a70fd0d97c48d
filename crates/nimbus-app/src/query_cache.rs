//! Per-tenant cache of query results, validated by read sets.
//!
//! A query is deterministic given its code, arguments and the documents it read. Its
//! transaction recorded exactly which index ranges it read (the read set), so a cached
//! result taken at timestamp `ts` is still correct at a later snapshot when no commit
//! after `ts` wrote a key inside those ranges — which the engine's write log answers.
//! Hits skip JavaScript entirely.
//!
//! **Bounds.** Entries are keyed by a SHA-256 of (code identity, function, canonical
//! arguments): the arguments themselves are never kept, so a client sending large distinct
//! arguments makes the cache hold 32 bytes of key per entry, not its arguments. The cache
//! is bounded in entries and in bytes (results, read sets and keys, estimated); the least
//! recently used entries are evicted to make room, and a result larger than
//! `max_result_bytes` is not cached at all.
//!
//! As in Convex, a query that reads `Date.now()` or `Math.random()` is cached like any
//! other: its result is reused until the data it read changes.

use std::collections::HashMap;
use std::sync::Arc;

use nimbus_engine::ReadSet;
use nimbus_runtime::CodeId;
use nimbus_types::json::SharedValue;
use nimbus_types::{Timestamp, Value};
use sha2::{Digest, Sha256};

/// Identifies a query result: a hash of the code, the function and the arguments.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct CacheKey([u8; 32]);

impl CacheKey {
    /// `identity`: the caller's user identity (its canonical text), so a result computed
    /// for one user is never served to another, or to an anonymous caller.
    pub fn new(
        code: CodeId,
        module: &str,
        export: &str,
        args: &Value,
        identity: Option<&str>,
    ) -> CacheKey {
        let mut hasher = Sha256::new();
        hasher.update(code.0.to_be_bytes());
        // Lengths first, so no two (module, export) pairs hash the same bytes.
        for part in [module, export] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        let args = nimbus_types::json::encode_text(args);
        hasher.update((args.len() as u64).to_be_bytes());
        hasher.update(args.as_bytes());
        match identity {
            None => hasher.update([0u8]),
            Some(text) => {
                hasher.update([1u8]);
                hasher.update(text.as_bytes());
            }
        }
        CacheKey(hasher.finalize().into())
    }
}

/// Estimated bytes of one entry beyond its result: key, map slot, timestamps, `Arc`s.
const ENTRY_OVERHEAD: usize = 160;
/// Estimated bytes of one read-set range beyond its two bound keys.
const RANGE_OVERHEAD: usize = 64;

struct Entry {
    /// The result is known correct at this timestamp (and at every later one until a
    /// commit writes into `read_set`).
    ts: Timestamp,
    read_set: Arc<ReadSet>,
    /// Shared with the responses serving it, which render its JSON once.
    value: Arc<SharedValue>,
    /// What this entry counts against the byte bound.
    bytes: usize,
    last_used: u64,
}

pub(crate) struct QueryCache {
    entries: HashMap<CacheKey, Entry>,
    capacity: usize,
    max_bytes: usize,
    max_result_bytes: usize,
    bytes: usize,
    clock: u64,
}

fn read_set_bytes(read_set: &ReadSet) -> usize {
    read_set
        .ranges()
        .map(|(_, range)| RANGE_OVERHEAD + range.key_bytes())
        .sum()
}

impl QueryCache {
    pub fn new(capacity: usize, max_bytes: usize, max_result_bytes: usize) -> Self {
        QueryCache {
            entries: HashMap::new(),
            capacity,
            max_bytes,
            max_result_bytes,
            bytes: 0,
            clock: 0,
        }
    }

    /// A cached result valid at the reader's snapshot `at`, if any: one computed at or
    /// before `at` that `unchanged` says no later commit invalidated. A result computed
    /// after `at` is newer than what the reader may see, so it is not a hit.
    pub fn get(
        &mut self,
        key: &CacheKey,
        at: Timestamp,
        unchanged: impl FnOnce(Timestamp, &ReadSet) -> bool,
    ) -> Option<Arc<SharedValue>> {
        self.clock += 1;
        let entry = self.entries.get_mut(key)?;
        if entry.ts > at {
            return None;
        }
        if entry.ts < at && !unchanged(entry.ts, &entry.read_set) {
            self.remove(key);
            return None;
        }
        entry.ts = at;
        entry.last_used = self.clock;
        Some(entry.value.clone())
    }

    /// Caches a result computed at `ts`, unless a result of a later snapshot is cached
    /// already.
    pub fn insert(
        &mut self,
        key: CacheKey,
        ts: Timestamp,
        read_set: ReadSet,
        value: Arc<SharedValue>,
    ) {
        let result_bytes = value.value().size();
        if self.capacity == 0 || result_bytes > self.max_result_bytes {
            return;
        }
        if self.entries.get(&key).is_some_and(|e| e.ts > ts) {
            return;
        }
        let bytes = ENTRY_OVERHEAD + result_bytes + read_set_bytes(&read_set);
        if bytes > self.max_bytes {
            return;
        }
        self.remove(&key);
        while !self.entries.is_empty()
            && (self.entries.len() >= self.capacity || self.bytes + bytes > self.max_bytes)
        {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| *k);
            match oldest {
                Some(oldest) => self.remove(&oldest),
                None => break,
            }
        }
        self.clock += 1;
        self.bytes += bytes;
        self.entries.insert(
            key,
            Entry {
                ts,
                read_set: Arc::new(read_set),
                value,
                bytes,
                last_used: self.clock,
            },
        );
        debug_assert!(
            self.bytes <= self.max_bytes,
            "the cache outgrew its byte bound"
        );
    }

    fn remove(&mut self, key: &CacheKey) {
        if let Some(entry) = self.entries.remove(key) {
            self.bytes -= entry.bytes;
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Bytes the cache counts against its bound.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_storage::{IndexNumber, KeyRange};

    fn value(text: &str) -> Arc<SharedValue> {
        Arc::new(SharedValue::new(Value::String(text.to_string())))
    }

    fn key(args: &str) -> CacheKey {
        let mut object = nimbus_types::Object::new();
        object.insert("s".into(), Value::String(args.to_string()));
        CacheKey::new(CodeId(7), "q.js", "default", &Value::Object(object), None)
    }

    #[test]
    fn keys_hold_no_arguments_and_bytes_are_bounded() {
        let mut cache = QueryCache::new(1024, 64 << 10, 16 << 10);
        let big = "x".repeat(64 << 10);
        for i in 0..200 {
            // 64 KiB of distinct arguments per entry: only its hash is kept.
            cache.insert(
                key(&format!("{i}{big}")),
                Timestamp(1),
                ReadSet::default(),
                value(&"r".repeat(1000)),
            );
            assert!(cache.bytes() <= 64 << 10, "{} bytes", cache.bytes());
        }
        assert!(
            cache.len() < 200 && cache.len() > 10,
            "{} entries",
            cache.len()
        );
        let mut read_set = ReadSet::default();
        read_set.record(IndexNumber(1), KeyRange::prefix(vec![7; 30_000]));
        cache.insert(key("huge read set"), Timestamp(1), read_set, value("r"));
        assert!(cache.bytes() <= 64 << 10);
    }

    #[test]
    fn a_reader_never_gets_a_result_newer_than_its_snapshot() {
        let mut cache = QueryCache::new(16, 1 << 20, 1 << 20);
        cache.insert(key("a"), Timestamp(20), ReadSet::default(), value("at 20"));
        assert!(cache.get(&key("a"), Timestamp(10), |_, _| true).is_none());
        // An older result does not replace a newer one.
        cache.insert(key("a"), Timestamp(10), ReadSet::default(), value("at 10"));
        let hit = cache.get(&key("a"), Timestamp(30), |since, _| since == Timestamp(20));
        assert_eq!(
            hit.map(|v| v.value().clone()),
            Some(Value::String("at 20".into()))
        );
    }

    #[test]
    fn code_and_identity_are_part_of_the_key() {
        let args = Value::Object(Default::default());
        let key = |code, module, export, identity| {
            CacheKey::new(CodeId(code), module, export, &args, identity)
        };
        assert!(key(1, "a.js", "f", None) != key(2, "a.js", "f", None));
        assert!(key(1, "a.js", "bf", None) != key(1, "a.jsb", "f", None));
        assert!(key(1, "a.js", "f", None) != key(1, "a.js", "f", Some("{}")));
        assert!(
            key(1, "a.js", "f", Some(r#"{"subject":"a"}"#))
                != key(1, "a.js", "f", Some(r#"{"subject":"b"}"#))
        );
        assert!(key(1, "a.js", "f", Some("x")) == key(1, "a.js", "f", Some("x")));
    }
}

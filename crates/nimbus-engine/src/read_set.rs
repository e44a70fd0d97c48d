//! Read sets: what a transaction or query observed, as index key ranges.
//!
//! A query records the part of its index range it actually covered (up to the last key
//! it read when a limit stopped it early), and `get` records the one `by_id` key it read.
//! The committer checks a mutation's read set against the keys written since its
//! snapshot (optimistic concurrency), and live queries (a later subsystem) re-run a
//! subscription only when a commit writes a key inside its read set.

use std::collections::BTreeMap;

use nimbus_storage::{IndexNumber, KeyRange};

/// Index ranges read, grouped by index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadSet {
    ranges: BTreeMap<IndexNumber, Vec<KeyRange>>,
    /// Set when the reader depended on the catalog (table/index existence).
    pub catalog_version: Option<u64>,
}

impl ReadSet {
    pub fn record(&mut self, index: IndexNumber, range: KeyRange) {
        if range.is_empty() {
            return;
        }
        self.ranges.entry(index).or_default().push(range);
    }

    /// True if a write of `key` in `index` would change what was read.
    pub fn intersects(&self, index: IndexNumber, key: &[u8]) -> bool {
        self.ranges
            .get(&index)
            .is_some_and(|ranges| ranges.iter().any(|r| r.contains(key)))
    }

    /// All recorded ranges.
    pub fn ranges(&self) -> impl Iterator<Item = (IndexNumber, &KeyRange)> {
        self.ranges
            .iter()
            .flat_map(|(index, ranges)| ranges.iter().map(|r| (*index, r)))
    }

    pub fn len(&self) -> usize {
        self.ranges.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

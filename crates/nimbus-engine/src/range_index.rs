//! An index over registered key ranges: which ranges contain a given key.
//!
//! Live queries register the ranges of their read sets here; for each key a commit
//! writes, [`RangeIndex::stab`] finds the subscriptions to re-run. The cost of a lookup
//! grows with the number of ranges that contain the key (times a logarithm of the total),
//! not with the total: per index, ranges live in a treap ordered by start key and
//! augmented with the largest end key of each subtree, so subtrees that end before the
//! key, and everything starting after it, are skipped.
//!
//! Bounds of a [`KeyRange`] are normalized to half-open `[start, end)` byte strings: for
//! byte strings, `Excluded(x)` as a start is the same set as `Included(x ++ [0])`, and
//! `Included(x)` as an end is `Excluded(x ++ [0])`. An empty start is "from the first
//! key"; `None` as an end is "to the last".

use std::cmp::Ordering;
use std::collections::HashMap;
use std::ops::Bound;

use nimbus_storage::{IndexNumber, KeyRange};

/// Identifies one registered range, for [`RangeIndex::remove`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeHandle {
    index: IndexNumber,
    start: Vec<u8>,
    seq: u64,
}

/// Ranges per index, each carrying a value (a subscription's token).
pub struct RangeIndex<V> {
    trees: HashMap<IndexNumber, Option<Box<Node<V>>>>,
    next_seq: u64,
    len: usize,
}

struct Node<V> {
    start: Vec<u8>,
    seq: u64,
    /// `None`: unbounded.
    end: Option<Vec<u8>>,
    /// The largest `end` in this subtree (`None` is the largest of all).
    max_end: Option<Vec<u8>>,
    priority: u64,
    value: V,
    left: Option<Box<Node<V>>>,
    right: Option<Box<Node<V>>>,
}

/// `a < b` for end keys where `None` means "after every key".
fn end_less(a: &Option<Vec<u8>>, b: &Option<Vec<u8>>) -> bool {
    match (a, b) {
        (_, None) => a.is_some(),
        (None, Some(_)) => false,
        (Some(a), Some(b)) => a < b,
    }
}

/// True if a range ending at `end` (exclusive) reaches past `key`.
fn ends_after(end: &Option<Vec<u8>>, key: &[u8]) -> bool {
    end.as_deref().is_none_or(|end| key < end)
}

fn with_zero(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 1);
    out.extend_from_slice(bytes);
    out.push(0);
    out
}

/// `[start, end)` of a range; `None` when it holds no key.
fn normalize(range: &KeyRange) -> Option<(Vec<u8>, Option<Vec<u8>>)> {
    let start = match &range.start {
        Bound::Unbounded => Vec::new(),
        Bound::Included(s) => s.clone(),
        Bound::Excluded(s) => with_zero(s),
    };
    let end = match &range.end {
        Bound::Unbounded => None,
        Bound::Excluded(e) => Some(e.clone()),
        Bound::Included(e) => Some(with_zero(e)),
    };
    match &end {
        Some(end) if *end <= start => None,
        _ => Some((start, end)),
    }
}

impl<V> Node<V> {
    fn key_cmp(&self, start: &[u8], seq: u64) -> Ordering {
        (self.start.as_slice(), self.seq).cmp(&(start, seq))
    }

    /// Recomputes `max_end` from this node and its children.
    fn update(&mut self) {
        let mut max = self.end.clone();
        for child in [&self.left, &self.right].into_iter().flatten() {
            if end_less(&max, &child.max_end) {
                max = child.max_end.clone();
            }
        }
        self.max_end = max;
    }
}

type Tree<V> = Option<Box<Node<V>>>;

/// Splits `tree` into keys `< (start, seq)` and keys `>= (start, seq)`.
fn split<V>(tree: Tree<V>, start: &[u8], seq: u64) -> (Tree<V>, Tree<V>) {
    match tree {
        None => (None, None),
        Some(mut node) => {
            if node.key_cmp(start, seq) == Ordering::Less {
                let (left, right) = split(node.right.take(), start, seq);
                node.right = left;
                node.update();
                (Some(node), right)
            } else {
                let (left, right) = split(node.left.take(), start, seq);
                node.left = right;
                node.update();
                (left, Some(node))
            }
        }
    }
}

/// Joins two trees where every key of `a` is below every key of `b`.
fn merge<V>(a: Tree<V>, b: Tree<V>) -> Tree<V> {
    match (a, b) {
        (None, b) => b,
        (a, None) => a,
        (Some(mut a), Some(mut b)) => {
            if a.priority >= b.priority {
                a.right = merge(a.right.take(), Some(b));
                a.update();
                Some(a)
            } else {
                b.left = merge(Some(a), b.left.take());
                b.update();
                Some(b)
            }
        }
    }
}

/// Removes the node `(start, seq)`, returning its value.
fn remove_node<V>(tree: &mut Tree<V>, start: &[u8], seq: u64) -> Option<V> {
    let order = tree.as_ref()?.key_cmp(start, seq);
    if order == Ordering::Equal {
        let mut owned = tree.take()?;
        *tree = merge(owned.left.take(), owned.right.take());
        return Some(owned.value);
    }
    let node = tree.as_mut()?;
    let removed = match order {
        Ordering::Greater => remove_node(&mut node.left, start, seq),
        _ => remove_node(&mut node.right, start, seq),
    };
    if removed.is_some() {
        node.update();
    }
    removed
}

fn stab_node<'a, V>(tree: &'a Tree<V>, key: &[u8], visit: &mut impl FnMut(&'a V)) {
    let Some(node) = tree else { return };
    if !ends_after(&node.max_end, key) {
        return; // every range below ends at or before the key
    }
    stab_node(&node.left, key, visit);
    if node.start.as_slice() <= key {
        if ends_after(&node.end, key) {
            visit(&node.value);
        }
        stab_node(&node.right, key, visit);
    }
    // Otherwise this node and its right subtree all start after the key.
}

impl<V> Default for RangeIndex<V> {
    fn default() -> Self {
        RangeIndex {
            trees: HashMap::new(),
            next_seq: 0,
            len: 0,
        }
    }
}

impl<V> RangeIndex<V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `range` of `index` with `value`. An empty range registers nothing and
    /// returns `None`.
    pub fn insert(
        &mut self,
        index: IndexNumber,
        range: &KeyRange,
        value: V,
    ) -> Option<RangeHandle> {
        let (start, end) = normalize(range)?;
        let seq = self.next_seq;
        self.next_seq += 1;
        let node = Box::new(Node {
            start: start.clone(),
            seq,
            max_end: end.clone(),
            end,
            priority: rand::random(),
            value,
            left: None,
            right: None,
        });
        let tree = self.trees.entry(index).or_default();
        let (left, right) = split(tree.take(), &start, seq);
        *tree = merge(merge(left, Some(node)), right);
        self.len += 1;
        Some(RangeHandle { index, start, seq })
    }

    /// Unregisters a range; returns its value if it was registered.
    pub fn remove(&mut self, handle: &RangeHandle) -> Option<V> {
        let tree = self.trees.get_mut(&handle.index)?;
        let removed = remove_node(tree, &handle.start, handle.seq);
        if tree.is_none() {
            self.trees.remove(&handle.index);
        }
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    /// Calls `visit` with the value of every range of `index` that contains `key`.
    pub fn stab<'a>(&'a self, index: IndexNumber, key: &[u8], mut visit: impl FnMut(&'a V)) {
        if let Some(tree) = self.trees.get(&index) {
            stab_node(tree, key, &mut visit);
        }
    }

    /// Registered ranges.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn key(n: u32) -> Vec<u8> {
        n.to_be_bytes().to_vec()
    }

    fn random_range(rng: &mut impl Rng) -> KeyRange {
        let a = rng.gen_range(0..200u32);
        let b = rng.gen_range(a..=200);
        let start = match rng.gen_range(0..4) {
            0 => Bound::Unbounded,
            1 => Bound::Excluded(key(a)),
            _ => Bound::Included(key(a)),
        };
        let end = match rng.gen_range(0..4) {
            0 => Bound::Unbounded,
            1 => Bound::Included(key(b)),
            _ => Bound::Excluded(key(b)),
        };
        KeyRange { start, end }
    }

    /// Random inserts, removals and lookups agree with checking every range.
    #[test]
    fn stab_matches_a_linear_scan() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut index = RangeIndex::new();
        let mut live: Vec<(RangeHandle, KeyRange, u32)> = Vec::new();
        for step in 0..4_000u32 {
            if live.is_empty() || rng.gen_bool(0.6) {
                let range = random_range(&mut rng);
                let which = IndexNumber(rng.gen_range(0..3));
                if let Some(handle) = index.insert(which, &range, step) {
                    live.push((handle, range, step));
                } else {
                    assert!(range.is_empty() || normalize(&range).is_none());
                }
            } else {
                let at = rng.gen_range(0..live.len());
                let (handle, _, value) = live.swap_remove(at);
                assert_eq!(index.remove(&handle), Some(value));
                assert_eq!(index.remove(&handle), None, "removed twice");
            }
            assert_eq!(index.len(), live.len());
            let probe = key(rng.gen_range(0..=201));
            let probe_index = IndexNumber(rng.gen_range(0..3));
            let mut found = Vec::new();
            index.stab(probe_index, &probe, |v| found.push(*v));
            found.sort_unstable();
            let mut expected: Vec<u32> = live
                .iter()
                .filter(|(h, r, _)| h.index == probe_index && r.contains(&probe))
                .map(|(_, _, v)| *v)
                .collect();
            expected.sort_unstable();
            assert_eq!(found, expected, "step {step}, probe {probe:?}");
        }
    }

    /// Keys between a key and its successor with a zero byte are handled exactly.
    #[test]
    fn exclusive_and_inclusive_bounds_at_byte_level() {
        let mut index = RangeIndex::new();
        let range = KeyRange {
            start: Bound::Excluded(vec![5]),
            end: Bound::Included(vec![9]),
        };
        index.insert(IndexNumber(1), &range, ());
        let hits = |k: &[u8]| {
            let mut n = 0;
            index.stab(IndexNumber(1), k, |_| n += 1);
            n
        };
        assert_eq!(hits(&[5]), 0);
        assert_eq!(hits(&[5, 0]), 1);
        assert_eq!(hits(&[9]), 1);
        assert_eq!(hits(&[9, 0]), 0);
        assert_eq!(hits(&[10]), 0);
    }
}

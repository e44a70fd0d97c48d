//! Keys of a resident snapshot's persistent maps, and what each entry is charged.
//!
//! Every index key ends with the document's `_id` (catalog: by_id is `[_id]`, every other
//! index `[.., _creationTime, _id]`), and the `_id` of a document is its ID's text, which
//! [`IdCodec`] makes from the [`DocumentId`] (the transaction sets it at insert; replace
//! and patch keep it). So a resident entry stores the key *without* that tail, as
//! `(prefix, the ID's 16 internal bytes)`, and the tail is made again when a scan returns
//! the key. That halves a small document's index entries and needs no allocation per
//! entry: prefixes up to [`INLINE`] bytes sit inside the key.
//!
//! **Order.** The full key is `prefix ‖ tail(id)`. The prefix is a concatenation of
//! self-delimiting encoded values, so two different prefixes of one index never are one a
//! proper prefix of the other, and the first differing byte decides both orders; with equal
//! prefixes, the tails of one table's IDs compare as the IDs' internal bytes do (same table
//! number in front, same length, and Crockford base32 keeps byte order). So ordering
//! entries by `(prefix, internal)` is exactly the bytewise order of their full keys.
//! A range bound is a byte string, not an entry: [`Key::Bound`] compares with entries by
//! making the tail only when the prefix alone cannot decide.

use std::cmp::Ordering;
use std::sync::Arc;

use nimbus_types::index_key::encode_value;
use nimbus_types::{DocumentId, IdCodec, TableNumber, Value};

/// Prefix bytes kept inside a key; longer ones get an allocation of their own.
pub(crate) const INLINE: usize = 22;

/// Bytes an index entry is charged besides a long prefix: its slot in a B-tree leaf (40)
/// over the leaves' typical fill (imbl splits full 16-slot leaves; appends leave them
/// about 9/16 full), plus its share of the branch nodes above.
pub(crate) const INDEX_ENTRY_BYTES: usize = 80;
/// Bytes a document is charged besides its encoding: its slot (a 24-byte key and a
/// 16-byte `Arc<[u8]>`) over the leaves' fill, the `Arc`'s counts and the allocator's
/// header and rounding.
pub(crate) const DOCUMENT_BYTES: usize = 112;

/// What an index entry with a prefix of `prefix_len` bytes is charged.
pub(crate) fn index_entry_charge(prefix_len: usize) -> usize {
    INDEX_ENTRY_BYTES + if prefix_len > INLINE { prefix_len } else { 0 }
}

/// What a document whose encoding is `body_len` bytes is charged.
pub(crate) fn document_charge(body_len: usize) -> usize {
    DOCUMENT_BYTES + body_len
}

/// An index key's bytes before the `_id` tail.
#[derive(Clone)]
pub(crate) enum Prefix {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<[u8]>),
}

impl Prefix {
    pub(crate) fn new(bytes: &[u8]) -> Prefix {
        if bytes.len() <= INLINE {
            let mut inline = [0u8; INLINE];
            inline[..bytes.len()].copy_from_slice(bytes);
            Prefix::Inline {
                len: bytes.len() as u8,
                bytes: inline,
            }
        } else {
            Prefix::Heap(bytes.into())
        }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Prefix::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Prefix::Heap(bytes) => bytes,
        }
    }
}

/// A range bound: full key bytes, and what makes an entry's tail.
pub(crate) struct BoundKey {
    pub bytes: Vec<u8>,
    pub table: TableNumber,
    pub codec: IdCodec,
}

/// The key of an index entry, or a bound to look entries up by.
#[derive(Clone)]
pub(crate) enum Key {
    Entry { prefix: Prefix, internal: [u8; 16] },
    Bound(Arc<BoundKey>),
}

/// The key of a document in its table's map (the `by_id` index: its prefix is empty).
#[derive(Clone)]
pub(crate) enum IdKey {
    Entry([u8; 16]),
    Bound(Arc<BoundKey>),
}

/// Either key, seen the same way.
enum Parts<'a> {
    Entry(&'a [u8], &'a [u8; 16]),
    Bound(&'a BoundKey),
}

impl Key {
    fn parts(&self) -> Parts<'_> {
        match self {
            Key::Entry { prefix, internal } => Parts::Entry(prefix.as_slice(), internal),
            Key::Bound(bound) => Parts::Bound(bound),
        }
    }
}

impl IdKey {
    fn parts(&self) -> Parts<'_> {
        match self {
            IdKey::Entry(internal) => Parts::Entry(&[], internal),
            IdKey::Bound(bound) => Parts::Bound(bound),
        }
    }
}

/// The `_id` tail of every index key of a document: the encoded ID text.
pub(crate) fn id_tail(id_text: &str) -> Vec<u8> {
    let mut tail = Vec::with_capacity(id_text.len() + 3);
    if id_text.bytes().any(|b| b == 0) {
        // Never for an ID's text (base32); the index-key encoding escapes it.
        encode_value(&Value::String(id_text.to_string()), &mut tail);
        return tail;
    }
    // The index-key encoding of a string without NUL bytes: tag, bytes, 0x00 0x00.
    tail.push(ID_TAIL_TAG);
    tail.extend_from_slice(id_text.as_bytes());
    tail.extend_from_slice(&[0, 0]);
    tail
}

/// The index-key tag of a string.
const ID_TAIL_TAG: u8 = 0x05;

/// The full key of an entry: `prefix ‖ tail`.
pub(crate) fn full_key(prefix: &[u8], tail: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + tail.len());
    key.extend_from_slice(prefix);
    key.extend_from_slice(tail);
    key
}

/// `prefix ‖ tail(id)` against `bytes`, bytewise.
fn cmp_entry_bound(prefix: &[u8], internal: &[u8; 16], bound: &BoundKey) -> Ordering {
    let bytes = bound.bytes.as_slice();
    let shared = prefix.len().min(bytes.len());
    match prefix[..shared].cmp(&bytes[..shared]) {
        Ordering::Equal if bytes.len() < prefix.len() => Ordering::Greater,
        Ordering::Equal => {
            let id = DocumentId {
                table: bound.table,
                internal: *internal,
            };
            let tail = id_tail(&bound.codec.encode(id));
            tail.as_slice().cmp(&bytes[prefix.len()..])
        }
        decided => decided,
    }
}

fn cmp_parts(a: Parts<'_>, b: Parts<'_>) -> Ordering {
    match (a, b) {
        // As one big-endian integer: the bytes' order, without a call to `memcmp`.
        (Parts::Entry(pa, ia), Parts::Entry(pb, ib)) => pa
            .cmp(pb)
            .then_with(|| u128::from_be_bytes(*ia).cmp(&u128::from_be_bytes(*ib))),
        (Parts::Entry(prefix, internal), Parts::Bound(bound)) => {
            cmp_entry_bound(prefix, internal, bound)
        }
        (Parts::Bound(bound), Parts::Entry(prefix, internal)) => {
            cmp_entry_bound(prefix, internal, bound).reverse()
        }
        (Parts::Bound(a), Parts::Bound(b)) => a.bytes.cmp(&b.bytes),
    }
}

macro_rules! ordered_by_parts {
    ($key:ty) => {
        impl Ord for $key {
            fn cmp(&self, other: &Self) -> Ordering {
                cmp_parts(self.parts(), other.parts())
            }
        }
        impl PartialOrd for $key {
            fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
                Some(self.cmp(other))
            }
        }
        impl PartialEq for $key {
            fn eq(&self, other: &Self) -> bool {
                self.cmp(other) == Ordering::Equal
            }
        }
        impl Eq for $key {}
    };
}

ordered_by_parts!(Key);
ordered_by_parts!(IdKey);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use nimbus_types::index_key::encode_value;

    #[test]
    fn keys_stay_small() {
        assert!(
            std::mem::size_of::<Key>() <= 40,
            "{}",
            std::mem::size_of::<Key>()
        );
        assert!(
            std::mem::size_of::<IdKey>() <= 24,
            "{}",
            std::mem::size_of::<IdKey>()
        );
    }

    /// Entries order as their full keys do, and bounds (any byte strings) fall where their
    /// bytes say, for short and long prefixes, equal prefixes and tails cut anywhere.
    #[test]
    fn order_is_the_full_keys_order() {
        let codec = IdCodec::new(0xbeef);
        let table = TableNumber(300);
        let mut prefixes: Vec<Vec<u8>> = vec![vec![]];
        for value in [
            Value::Null,
            Value::Float64(-1.5),
            Value::Float64(2.0),
            Value::String("a".into()),
            Value::String("ab".into()),
            Value::String("x".repeat(40)),
        ] {
            let mut p = Vec::new();
            encode_value(&value, &mut p);
            encode_value(&Value::Float64(1_764_000_000_000.5), &mut p);
            prefixes.push(p);
        }
        let internals: Vec<[u8; 16]> = [[0u8; 16], [1; 16], [0x7f; 16], [0xff; 16]]
            .into_iter()
            .chain((0..6u8).map(|i| {
                let mut internal = [0x33; 16];
                internal[15] = i * 40;
                internal[3] = i;
                internal
            }))
            .collect();
        let mut entries: Vec<(Vec<u8>, Key)> = Vec::new();
        for prefix in prefixes.iter().skip(1) {
            for internal in &internals {
                let id = DocumentId {
                    table,
                    internal: *internal,
                };
                let full = full_key(prefix, &id_tail(&codec.encode(id)));
                let key = Key::Entry {
                    prefix: Prefix::new(prefix),
                    internal: *internal,
                };
                entries.push((full, key));
            }
        }
        for (fa, ka) in &entries {
            for (fb, kb) in &entries {
                assert_eq!(ka.cmp(kb), fa.cmp(fb));
            }
        }
        // Bounds: every full key, every cut of it, and each with a byte added.
        let mut bounds: Vec<Vec<u8>> = Vec::new();
        for (full, _) in &entries {
            for cut in 0..=full.len() {
                bounds.push(full[..cut].to_vec());
            }
            let mut more = full.clone();
            more.push(0);
            bounds.push(more);
            let mut less = full.clone();
            if let Some(last) = less.last_mut() {
                *last = last.wrapping_sub(1);
            }
            bounds.push(less);
        }
        for bytes in bounds {
            let bound = Key::Bound(Arc::new(BoundKey {
                bytes: bytes.clone(),
                table,
                codec,
            }));
            for (full, key) in &entries {
                assert_eq!(key.cmp(&bound), full.as_slice().cmp(&bytes), "{bytes:?}");
                assert_eq!(bound.cmp(key), bytes.as_slice().cmp(full));
            }
        }
        // The by_id form: an empty prefix.
        for a in &internals {
            let ta = id_tail(&codec.encode(DocumentId {
                table,
                internal: *a,
            }));
            for b in &internals {
                let tb = id_tail(&codec.encode(DocumentId {
                    table,
                    internal: *b,
                }));
                assert_eq!(IdKey::Entry(*a).cmp(&IdKey::Entry(*b)), ta.cmp(&tb));
                let bound = IdKey::Bound(Arc::new(BoundKey {
                    bytes: tb[..tb.len() - 1].to_vec(),
                    table,
                    codec,
                }));
                assert_eq!(
                    IdKey::Entry(*a).cmp(&bound),
                    ta.as_slice().cmp(&tb[..tb.len() - 1])
                );
            }
        }
    }

    #[test]
    fn id_tail_is_the_index_key_encoding() {
        for text in ["", "jd7abc", "a\0b"] {
            let mut expected = Vec::new();
            encode_value(&Value::String(text.to_string()), &mut expected);
            assert_eq!(id_tail(text), expected);
        }
    }

    #[test]
    fn prefixes_keep_their_bytes() {
        for len in [0, 1, INLINE - 1, INLINE, INLINE + 1, 200] {
            let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
            assert_eq!(Prefix::new(&bytes).as_slice(), bytes.as_slice());
            let heap = matches!(Prefix::new(&bytes), Prefix::Heap(_));
            assert_eq!(heap, len > INLINE);
        }
    }
}

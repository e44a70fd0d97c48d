//! Order-preserving byte encoding of index keys.
//!
//! `encode(a) < encode(b)` (bytewise) exactly when `a < b` in the total order of
//! [`crate::value`], with a missing field ("undefined") first. Every encoded value is
//! self-delimiting and no encoding is a prefix of another, so a key made of several
//! values compares field by field, and "every key whose first fields equal P" is the byte
//! range `[P, successor(P))`.
//!
//! Tags: 0x00 undefined, 0x01 null, 0x02 int64, 0x03 float64, 0x04 boolean, 0x05 string,
//! 0x06 bytes, 0x07 array, 0x08 object. Strings and bytes escape 0x00 as 0x00 0xFF and end
//! with 0x00 0x00; arrays and objects end with 0x00 (less than every element tag).

use std::ops::Bound;

use crate::value::Value;

const TAG_UNDEFINED: u8 = 0x00;
const TAG_NULL: u8 = 0x01;
const TAG_INT64: u8 = 0x02;
const TAG_FLOAT64: u8 = 0x03;
const TAG_BOOLEAN: u8 = 0x04;
const TAG_STRING: u8 = 0x05;
const TAG_BYTES: u8 = 0x06;
const TAG_ARRAY: u8 = 0x07;
const TAG_OBJECT: u8 = 0x08;
const FIELD_MARK: u8 = 0x01;
const END: u8 = 0x00;

/// Appends the encoding of a possibly-missing value.
pub fn encode_optional(value: Option<&Value>, out: &mut Vec<u8>) {
    match value {
        None => out.push(TAG_UNDEFINED),
        Some(v) => encode_value(v, out),
    }
}

/// Appends the encoding of one value.
pub fn encode_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.push(TAG_NULL),
        Value::Int64(i) => {
            out.push(TAG_INT64);
            out.extend_from_slice(&((*i as u64) ^ (1 << 63)).to_be_bytes());
        }
        Value::Float64(f) => {
            out.push(TAG_FLOAT64);
            let bits = f.to_bits();
            // Flip all bits of negatives and only the sign bit of positives: the unsigned
            // order of the result is f64::total_cmp, which is the Convex float order.
            let ordered = if bits >> 63 == 1 {
                !bits
            } else {
                bits | (1 << 63)
            };
            out.extend_from_slice(&ordered.to_be_bytes());
        }
        Value::Boolean(b) => {
            out.push(TAG_BOOLEAN);
            out.push(u8::from(*b));
        }
        Value::String(s) => {
            out.push(TAG_STRING);
            escape_bytes(s.as_bytes(), out);
        }
        Value::Bytes(b) => {
            out.push(TAG_BYTES);
            escape_bytes(b, out);
        }
        Value::Array(items) => {
            out.push(TAG_ARRAY);
            for item in items {
                encode_value(item, out);
            }
            out.push(END);
        }
        Value::Object(fields) => {
            out.push(TAG_OBJECT);
            for (name, item) in fields {
                out.push(FIELD_MARK);
                escape_bytes(name.as_bytes(), out);
                encode_value(item, out);
            }
            out.push(END);
        }
    }
}

fn escape_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    for byte in bytes {
        out.push(*byte);
        if *byte == 0 {
            out.push(0xff);
        }
    }
    out.push(0);
    out.push(0);
}

/// The smallest byte string greater than every string that starts with `prefix`, or
/// `None` when no such string exists (the prefix is empty or all 0xFF).
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut out = prefix.to_vec();
    while let Some(last) = out.pop() {
        if last < 0xff {
            out.push(last + 1);
            return Some(out);
        }
    }
    None
}

/// A range of encoded keys, as byte bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    pub start: Bound<Vec<u8>>,
    pub end: Bound<Vec<u8>>,
}

impl KeyRange {
    pub fn all() -> Self {
        KeyRange {
            start: Bound::Unbounded,
            end: Bound::Unbounded,
        }
    }

    /// Every key starting with `prefix`.
    pub fn prefix(prefix: Vec<u8>) -> Self {
        let end = match prefix_successor(&prefix) {
            Some(succ) => Bound::Excluded(succ),
            None => Bound::Unbounded,
        };
        let start = if prefix.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Included(prefix)
        };
        KeyRange { start, end }
    }

    /// Bytes of the bound keys (for memory accounting).
    pub fn key_bytes(&self) -> usize {
        [&self.start, &self.end]
            .into_iter()
            .map(|bound| match bound {
                Bound::Included(k) | Bound::Excluded(k) => k.len(),
                Bound::Unbounded => 0,
            })
            .sum()
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        let after_start = match &self.start {
            Bound::Unbounded => true,
            Bound::Included(s) => key >= s.as_slice(),
            Bound::Excluded(s) => key > s.as_slice(),
        };
        let before_end = match &self.end {
            Bound::Unbounded => true,
            Bound::Included(e) => key <= e.as_slice(),
            Bound::Excluded(e) => key < e.as_slice(),
        };
        after_start && before_end
    }

    /// True when no key can be in the range.
    pub fn is_empty(&self) -> bool {
        match (&self.start, &self.end) {
            (Bound::Included(s), Bound::Excluded(e)) => s >= e,
            (Bound::Included(s), Bound::Included(e)) => s > e,
            (Bound::Excluded(s), Bound::Excluded(e) | Bound::Included(e)) => s >= e,
            _ => false,
        }
    }
}

/// The key of a document in an index with the given full field list: the concatenated
/// encodings of each field's value (a missing field encodes as undefined). Dotted paths
/// read nested objects.
pub fn document_key(index_fields: &[String], doc: &crate::value::Object) -> Vec<u8> {
    let mut key = Vec::with_capacity(16 * index_fields.len());
    for field in index_fields {
        let mut parts = field.split('.');
        let value = parts
            .next()
            .and_then(|first| doc.get(first))
            .and_then(|mut current| {
                for part in parts {
                    current = current.as_object()?.get(part)?;
                }
                Some(current)
            });
        encode_optional(value, &mut key);
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Object;

    fn enc(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        encode_value(v, &mut out);
        out
    }

    #[test]
    fn encoding_preserves_order() {
        let mut obj_a = Object::new();
        obj_a.insert("a".into(), Value::Int64(1));
        let mut obj_b = Object::new();
        obj_b.insert("a".into(), Value::Int64(2));
        let values = vec![
            Value::Null,
            Value::Int64(i64::MIN),
            Value::Int64(-1),
            Value::Int64(0),
            Value::Int64(i64::MAX),
            Value::Float64(-f64::NAN),
            Value::Float64(f64::NEG_INFINITY),
            Value::Float64(-1.0),
            Value::Float64(-0.0),
            Value::Float64(0.0),
            Value::Float64(1e-300),
            Value::Float64(f64::INFINITY),
            Value::Float64(f64::NAN),
            Value::Boolean(false),
            Value::Boolean(true),
            Value::String("".into()),
            Value::String("a".into()),
            Value::String("a\0".into()),
            Value::String("a\u{1}".into()),
            Value::String("ab".into()),
            Value::Bytes(vec![]),
            Value::Bytes(vec![0, 0]),
            Value::Array(vec![]),
            Value::Array(vec![Value::Null]),
            Value::Array(vec![Value::Null, Value::Null]),
            Value::Array(vec![Value::Int64(1)]),
            Value::Object(Object::new()),
            Value::Object(obj_a),
            Value::Object(obj_b),
        ];
        for (i, a) in values.iter().enumerate() {
            for b in &values[i + 1..] {
                assert!(a < b, "value order {a:?} < {b:?}");
                assert!(enc(a) < enc(b), "encoded order {a:?} < {b:?}");
            }
        }
        let mut undefined = Vec::new();
        encode_optional(None, &mut undefined);
        assert!(undefined < enc(&Value::Null));
    }

    #[test]
    fn prefix_ranges() {
        let range = KeyRange::prefix(enc(&Value::String("shop1".into())));
        let mut inside = enc(&Value::String("shop1".into()));
        encode_value(&Value::Int64(5), &mut inside);
        let outside = enc(&Value::String("shop10".into()));
        assert!(range.contains(&inside));
        assert!(!range.contains(&outside));
        assert_eq!(prefix_successor(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_successor(&[0xff]), None);
    }
}

//! How a resident snapshot holds a document in memory: one compact byte string, decoded
//! into a [`Document`](nimbus_types::Document) on every read.
//!
//! A document held as a tree of `Value`s costs about ten times its convex-JSON text (a
//! `String` and a map node per field); this encoding costs less than the text itself.
//!
//! Layout: a document is its fields, `varint(count)` then each field as
//! `varint(name length) ‖ name ‖ value`, in the `BTreeMap`'s order (strictly increasing
//! names). A value is one tag byte and its payload:
//!
//! | tag | value | payload |
//! |---|---|---|
//! | 0 | null | — |
//! | 1, 2 | false, true | — |
//! | 3 | int64 | zigzag varint |
//! | 4 | float64 | its 8 bytes, little-endian (every bit pattern: -0.0, NaN payloads) |
//! | 5 | float64 holding an integer of magnitude below 2^53, not -0.0 | zigzag varint |
//! | 6 | string | `varint(length) ‖ UTF-8` |
//! | 7 | bytes | `varint(length) ‖ bytes` |
//! | 8 | array | `varint(count) ‖ values` |
//! | 9 | object | fields, as a document's |
//! | 10 | the string that is this document's own ID text | — |
//!
//! Tag 10 replaces the top-level `_id`, which the reader knows from the key it looked the
//! document up by (about a fifth of a small document). Varints are LEB128, at most 10 bytes.
//!
//! Decoding checks everything (tags, lengths, UTF-8, field order, depth, trailing bytes)
//! and answers [`CompactError`] for any byte string that is not an encoding: memory is
//! trusted, but a bug must surface as an error, never as a panic or a wrong document.

use std::fmt;

use nimbus_types::value::MAX_VALUE_DEPTH;
use nimbus_types::wire::{self, write_bytes, write_varint};
use nimbus_types::{Object, Value};

const NULL: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
const INT64: u8 = 3;
const FLOAT64: u8 = 4;
const FLOAT_INTEGRAL: u8 = 5;
const STRING: u8 = 6;
const BYTES: u8 = 7;
const ARRAY: u8 = 8;
const OBJECT: u8 = 9;
const SELF_ID: u8 = 10;

/// Integral float64s below this magnitude are exact as an i64 and back.
const FLOAT_INTEGRAL_MAX: f64 = 9_007_199_254_740_992.0; // 2^53

/// A byte string that is not a compact encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CompactError {
    /// Offset of the byte that could not be read.
    pub at: usize,
    pub what: &'static str,
}

impl fmt::Display for CompactError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "resident document encoding at byte {}: {}",
            self.at, self.what
        )
    }
}

/// Encodes a document's fields; a top-level `_id` equal to `self_id` becomes tag 10.
pub(crate) fn encode_document(doc: &Object, self_id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(Value::object_size(doc));
    write_varint(doc.len() as u64, &mut out);
    for (name, value) in doc {
        write_bytes(name.as_bytes(), &mut out);
        match value {
            Value::String(s) if name == "_id" && s == self_id => out.push(SELF_ID),
            other => write_value(other, &mut out),
        }
    }
    out
}

/// Decodes what [`encode_document`] wrote; `self_id` is the document's ID text.
pub(crate) fn decode_document(bytes: &[u8], self_id: &str) -> Result<Object, CompactError> {
    let mut reader = Reader {
        wire: wire::Reader::new(bytes),
        self_id,
    };
    let fields = reader.fields(1)?;
    if !reader.wire.is_at_end() {
        return Err(reader.error("trailing bytes"));
    }
    Ok(fields)
}

fn write_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.push(NULL),
        Value::Boolean(false) => out.push(FALSE),
        Value::Boolean(true) => out.push(TRUE),
        Value::Int64(i) => {
            out.push(INT64);
            write_varint(zigzag(*i), out);
        }
        Value::Float64(f) => match integral(*f) {
            Some(i) => {
                out.push(FLOAT_INTEGRAL);
                write_varint(zigzag(i), out);
            }
            None => {
                out.push(FLOAT64);
                out.extend_from_slice(&f.to_bits().to_le_bytes());
            }
        },
        Value::String(s) => {
            out.push(STRING);
            write_bytes(s.as_bytes(), out);
        }
        Value::Bytes(b) => {
            out.push(BYTES);
            write_bytes(b, out);
        }
        Value::Array(items) => {
            out.push(ARRAY);
            write_varint(items.len() as u64, out);
            for item in items {
                write_value(item, out);
            }
        }
        Value::Object(fields) => {
            out.push(OBJECT);
            write_varint(fields.len() as u64, out);
            for (name, item) in fields {
                write_bytes(name.as_bytes(), out);
                write_value(item, out);
            }
        }
    }
}

/// The integer a float64 holds exactly, when it is one below 2^53 and not -0.0 (whose sign
/// an integer cannot carry).
fn integral(f: f64) -> Option<i64> {
    let exact =
        f.fract() == 0.0 && f.abs() < FLOAT_INTEGRAL_MAX && !(f == 0.0 && f.is_sign_negative());
    exact.then_some(f as i64)
}

fn zigzag(i: i64) -> u64 {
    ((i << 1) ^ (i >> 63)) as u64
}

fn unzigzag(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

struct Reader<'a> {
    wire: wire::Reader<'a>,
    self_id: &'a str,
}

impl From<wire::WireError> for CompactError {
    fn from(e: wire::WireError) -> CompactError {
        CompactError {
            at: e.at,
            what: e.what,
        }
    }
}

impl<'a> Reader<'a> {
    fn error(&self, what: &'static str) -> CompactError {
        CompactError {
            at: self.wire.pos(),
            what,
        }
    }

    fn string(&mut self) -> Result<String, CompactError> {
        let len = self.wire.count(1)?;
        let at = self.wire.pos();
        let bytes = self.wire.take(len)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_string()),
            Err(_) => Err(CompactError {
                at,
                what: "a string is not UTF-8",
            }),
        }
    }

    fn fields(&mut self, depth: usize) -> Result<Object, CompactError> {
        if depth > MAX_VALUE_DEPTH {
            return Err(self.error("nested deeper than values may be"));
        }
        let count = self.wire.count(1)?;
        let mut fields = Object::new();
        for _ in 0..count {
            let at = self.wire.pos();
            let name = self.string()?;
            if fields
                .last_key_value()
                .is_some_and(|(last, _)| *last >= name)
            {
                return Err(CompactError {
                    at,
                    what: "field names out of order",
                });
            }
            let value = self.value(depth)?;
            fields.insert(name, value);
        }
        Ok(fields)
    }

    /// A value inside a container at `depth`.
    fn value(&mut self, depth: usize) -> Result<Value, CompactError> {
        let tag = self.wire.byte()?;
        Ok(match tag {
            NULL => Value::Null,
            FALSE => Value::Boolean(false),
            TRUE => Value::Boolean(true),
            INT64 => Value::Int64(unzigzag(self.wire.varint()?)),
            FLOAT64 => Value::Float64(f64::from_bits(self.wire.u64_le()?)),
            FLOAT_INTEGRAL => {
                let i = unzigzag(self.wire.varint()?);
                let f = i as f64;
                if f.abs() >= FLOAT_INTEGRAL_MAX {
                    return Err(self.error("an integral float64 out of range"));
                }
                Value::Float64(f)
            }
            STRING => Value::String(self.string()?),
            BYTES => Value::Bytes(self.wire.bytes()?.to_vec()),
            ARRAY => {
                if depth + 1 > MAX_VALUE_DEPTH {
                    return Err(self.error("nested deeper than values may be"));
                }
                let count = self.wire.count(1)?;
                let mut items = Vec::with_capacity(count);
                for _ in 0..count {
                    items.push(self.value(depth + 1)?);
                }
                Value::Array(items)
            }
            OBJECT => Value::Object(self.fields(depth + 1)?),
            SELF_ID => Value::String(self.self_id.to_string()),
            _ => {
                return Err(CompactError {
                    at: self.wire.pos() - 1,
                    what: "unknown tag",
                })
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const ID: &str = "jd7abcdefghjkmnpqrstvwxyz012345";

    fn obj(pairs: Vec<(&str, Value)>) -> Object {
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// Equal values and equal bit patterns of every float (`Value`'s order treats them so
    /// too, but say it outright: -0.0 and NaN payloads must survive).
    fn identical(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Float64(x), Value::Float64(y)) => x.to_bits() == y.to_bits(),
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(a, b)| identical(a, b))
            }
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len()
                    && x.iter()
                        .zip(y)
                        .all(|((ka, a), (kb, b))| ka == kb && identical(a, b))
            }
            _ => a == b,
        }
    }

    fn round_trip(doc: &Object) -> Vec<u8> {
        let bytes = encode_document(doc, ID);
        let back = decode_document(&bytes, ID).unwrap();
        assert!(
            identical(&Value::Object(doc.clone()), &Value::Object(back.clone())),
            "{doc:?} came back as {back:?}"
        );
        bytes
    }

    fn edge_values() -> Vec<Value> {
        let mut values = vec![
            Value::Null,
            Value::Boolean(false),
            Value::Boolean(true),
            Value::String(String::new()),
            Value::String("é\0\u{10ffff}".into()),
            Value::String("x".repeat(300)),
            Value::Bytes(vec![]),
            Value::Bytes((0..=255).collect()),
            Value::Array(vec![]),
            Value::Object(Object::new()),
        ];
        for i in [
            0,
            1,
            -1,
            63,
            64,
            -64,
            -65,
            i64::MAX,
            i64::MIN,
            1 << 53,
            -(1 << 53),
        ] {
            values.push(Value::Int64(i));
        }
        for f in [
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.5,
            123.45,
            1_764_000_000_000.123,
            9_007_199_254_740_991.0,
            9_007_199_254_740_992.0,
            -9_007_199_254_740_992.0,
            1e300,
            f64::MIN_POSITIVE,
            5e-324,
            f64::MAX,
            f64::MIN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            -f64::NAN,
            f64::from_bits(0x7ff0_0000_0000_0001),
            f64::from_bits(0xfff8_0000_dead_beef),
        ] {
            values.push(Value::Float64(f));
        }
        values
    }

    #[test]
    fn round_trips_every_kind_of_value() {
        let values = edge_values();
        for (i, value) in values.iter().enumerate() {
            round_trip(&obj(vec![("v", value.clone())]));
            round_trip(&obj(vec![(
                "nested",
                Value::Array(vec![
                    value.clone(),
                    Value::Object(obj(vec![("v", value.clone())])),
                ]),
            )]));
            let _ = i;
        }
        let all: Object = values
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("f{i:03}"), v.clone()))
            .collect();
        round_trip(&all);
    }

    #[test]
    fn own_id_is_one_byte_and_other_ids_are_kept() {
        let doc = obj(vec![
            ("_id", Value::String(ID.into())),
            ("other", Value::String(ID.into())),
            ("_creationTime", Value::Float64(1_764_000_000_000.5)),
        ]);
        let bytes = round_trip(&doc);
        assert_eq!(bytes.iter().filter(|b| **b == SELF_ID).count(), 1);
        // Another document's `_id` (not this one's) is written out.
        let foreign = obj(vec![("_id", Value::String("somethingelse".into()))]);
        let bytes = round_trip(&foreign);
        assert!(!bytes.contains(&SELF_ID));
        // Decoded with another self ID, tag 10 reads as that ID: the reader must pass the
        // ID the document was found under.
        let decoded = decode_document(&encode_document(&doc, ID), "x").unwrap();
        assert_eq!(decoded.get("_id"), Some(&Value::String("x".into())));
    }

    #[test]
    fn deep_nesting_round_trips_up_to_the_limit_and_no_further() {
        let mut value = Value::Null;
        // The document's fields are depth 1, so the deepest value sits at depth 64.
        for _ in 0..(MAX_VALUE_DEPTH - 1) {
            value = Value::Array(vec![value]);
        }
        round_trip(&obj(vec![("deep", value.clone())]));
        let too_deep = obj(vec![("deep", Value::Array(vec![value]))]);
        let bytes = encode_document(&too_deep, ID);
        assert!(decode_document(&bytes, ID).is_err());
    }

    #[test]
    fn smaller_than_json() {
        let doc = obj(vec![
            ("_id", Value::String(ID.into())),
            ("_creationTime", Value::Float64(1_764_000_000_000.123)),
            ("customer", Value::String("cust-00012".into())),
            ("items", Value::Int64(3)),
            ("note", Value::String("note 12".into())),
            ("status", Value::String("paid".into())),
            ("total", Value::Float64(123.45)),
        ]);
        let compact = round_trip(&doc).len();
        let json = nimbus_types::json::encode_object_text(&doc).len();
        assert!(compact * 3 < json * 2, "{compact} bytes vs {json} of JSON");
    }

    #[test]
    fn refuses_corrupt_input_without_panicking() {
        let doc = obj(vec![
            ("_id", Value::String(ID.into())),
            ("a", Value::Array(edge_values())),
            ("b", Value::Object(obj(vec![("x", Value::Int64(-7))]))),
            ("s", Value::String("text".into())),
        ]);
        let bytes = encode_document(&doc, ID);
        // Every truncation is an error.
        for len in 0..bytes.len() {
            assert!(
                decode_document(&bytes[..len], ID).is_err(),
                "truncated at {len}"
            );
        }
        // Every single-byte change decodes or errors; none panics.
        for at in 0..bytes.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut bad = bytes.clone();
                bad[at] ^= flip;
                let _ = decode_document(&bad, ID);
            }
        }
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "truncated"),
            (vec![1, 1, b'a', 42], "unknown tag"),
            (vec![1, 1, b'a', NULL, 0], "trailing bytes"),
            (
                vec![2, 1, b'b', NULL, 1, b'a', NULL],
                "field names out of order",
            ),
            (
                vec![2, 1, b'a', NULL, 1, b'a', NULL],
                "field names out of order",
            ),
            (
                vec![1, 1, b'a', STRING, 2, 0xc3, 0x28],
                "a string is not UTF-8",
            ),
            (vec![1, 1, 0xff, NULL], "a string is not UTF-8"),
            (
                vec![1, 1, b'a', STRING, 9, b'x'],
                "a count exceeds the bytes left",
            ),
            (
                vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
                "varint overflows 64 bits",
            ),
            (
                vec![
                    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00,
                ],
                "varint longer than 10 bytes",
            ),
            (
                vec![1, 1, b'a', FLOAT64, 0, 0, 0],
                "a length runs past the end",
            ),
            (
                vec![
                    1,
                    1,
                    b'a',
                    FLOAT_INTEGRAL,
                    0x80,
                    0x80,
                    0x80,
                    0x80,
                    0x80,
                    0x80,
                    0x80,
                    0x80,
                    0x40,
                ],
                "an integral float64 out of range",
            ),
            (
                vec![1, 1, b'a', ARRAY, 100],
                "a count exceeds the bytes left",
            ),
        ];
        for (bytes, what) in cases {
            match decode_document(&bytes, ID) {
                Err(e) => assert_eq!(e.what, what, "{bytes:?}"),
                Ok(doc) => panic!("{bytes:?} decoded as {doc:?}"),
            }
        }
    }
}

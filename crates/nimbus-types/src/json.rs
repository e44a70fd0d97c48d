//! convex-JSON: the JSON form of [`Value`] on the wire (compat spec §1.1), plus the lossy
//! "clean JSON" form used when a request asks for `format: "json"` (§1.5).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{Map, Number, Value as Json};

use crate::error::TypesError;
use crate::value::{check_field_name, Object, Value, MAX_VALUE_DEPTH};

/// Decodes a convex-JSON value. Rejects `$undefined` (use [`decode_optional`] where a
/// missing value is allowed), legacy `$set`/`$map`, bad base64 and nesting deeper than
/// [`MAX_VALUE_DEPTH`].
pub fn decode(json: &Json) -> Result<Value, TypesError> {
    decode_at(json, 1)
}

/// Like [`decode`], but `{"$undefined": null}` decodes to `None` (filter literals, index
/// range values and patch fields use it to mean "missing").
pub fn decode_optional(json: &Json) -> Result<Option<Value>, TypesError> {
    if is_undefined(json) {
        return Ok(None);
    }
    decode(json).map(Some)
}

/// True for `{"$undefined": null}`.
pub fn is_undefined(json: &Json) -> bool {
    matches!(json, Json::Object(m) if m.len() == 1 && m.contains_key("$undefined"))
}

fn decode_at(json: &Json, depth: usize) -> Result<Value, TypesError> {
    if depth > MAX_VALUE_DEPTH {
        return Err(TypesError::TooDeep {
            max: MAX_VALUE_DEPTH,
        });
    }
    Ok(match json {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => match n.as_f64() {
            Some(f) => Value::Float64(f),
            None => {
                return Err(TypesError::InvalidValue(format!(
                    "number {n} is not a float64"
                )))
            }
        },
        Json::String(s) => Value::String(s.clone()),
        Json::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| decode_at(item, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Json::Object(map) => {
            if map.len() == 1 {
                if let Some((key, inner)) = map.iter().next() {
                    if key.starts_with('$') {
                        return decode_special(key, inner);
                    }
                }
            }
            let mut object = Object::new();
            for (key, inner) in map {
                check_field_name(key)?;
                object.insert(key.clone(), decode_at(inner, depth + 1)?);
            }
            Value::Object(object)
        }
    })
}

fn decode_special(key: &str, inner: &Json) -> Result<Value, TypesError> {
    let text = || {
        inner
            .as_str()
            .ok_or_else(|| TypesError::InvalidValue(format!("{key} must hold a base64 string")))
    };
    match key {
        "$integer" => {
            let bytes = decode_base64(text()?)?;
            let array: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
                TypesError::InvalidValue(format!("$integer must be 8 bytes, got {}", bytes.len()))
            })?;
            Ok(Value::Int64(i64::from_le_bytes(array)))
        }
        "$float" => {
            let bytes = decode_base64(text()?)?;
            let array: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
                TypesError::InvalidValue(format!("$float must be 8 bytes, got {}", bytes.len()))
            })?;
            let f = f64::from_le_bytes(array);
            if f.is_finite() && !(f == 0.0 && f.is_sign_negative()) {
                return Err(TypesError::InvalidValue(format!(
                    "$float holds the ordinary number {f}; send it as a JSON number"
                )));
            }
            Ok(Value::Float64(f))
        }
        "$bytes" => Ok(Value::Bytes(decode_base64(text()?)?)),
        "$undefined" => Err(TypesError::InvalidValue(
            "undefined is not a valid Convex value".into(),
        )),
        "$set" | "$map" => Err(TypesError::InvalidValue(format!(
            "{key} is a legacy type that Nimbus does not accept"
        ))),
        other => Err(TypesError::InvalidFieldName {
            name: other.to_string(),
            reason: "field names must not start with '$'",
        }),
    }
}

fn decode_base64(text: &str) -> Result<Vec<u8>, TypesError> {
    // The JS decoder accepts the URL-safe alphabet too.
    let normalized: String = text
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    let padded = match normalized.len() % 4 {
        2 => normalized + "==",
        3 => normalized + "=",
        _ => normalized,
    };
    STANDARD
        .decode(padded)
        .map_err(|e| TypesError::InvalidValue(format!("bad base64: {e}")))
}

/// Encodes a value as convex-JSON.
pub fn encode(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Boolean(b) => Json::Bool(*b),
        Value::Int64(i) => special("$integer", STANDARD.encode(i.to_le_bytes())),
        Value::Float64(f) => match Number::from_f64(*f) {
            Some(n) if !(*f == 0.0 && f.is_sign_negative()) => Json::Number(n),
            _ => special("$float", STANDARD.encode(f.to_le_bytes())),
        },
        Value::String(s) => Json::String(s.clone()),
        Value::Bytes(b) => special("$bytes", STANDARD.encode(b)),
        Value::Array(items) => Json::Array(items.iter().map(encode).collect()),
        Value::Object(fields) => {
            Json::Object(fields.iter().map(|(k, v)| (k.clone(), encode(v))).collect())
        }
    }
}

/// Encodes an object as convex-JSON.
pub fn encode_object(fields: &Object) -> Json {
    Json::Object(fields.iter().map(|(k, v)| (k.clone(), encode(v))).collect())
}

fn special(key: &str, text: String) -> Json {
    let mut map = Map::new();
    map.insert(key.to_string(), Json::String(text));
    Json::Object(map)
}

/// Encodes a value in the lossy readable form ("clean JSON"): int64 as a decimal string,
/// NaN/±Infinity as strings, bytes as base64 text.
pub fn encode_clean(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Boolean(b) => Json::Bool(*b),
        Value::Int64(i) => Json::String(i.to_string()),
        Value::Float64(f) => match Number::from_f64(*f) {
            Some(n) => Json::Number(n),
            None if f.is_nan() => Json::String("NaN".into()),
            None if *f > 0.0 => Json::String("Infinity".into()),
            None => Json::String("-Infinity".into()),
        },
        Value::String(s) => Json::String(s.clone()),
        Value::Bytes(b) => Json::String(STANDARD.encode(b)),
        Value::Array(items) => Json::Array(items.iter().map(encode_clean).collect()),
        Value::Object(fields) => Json::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), encode_clean(v)))
                .collect(),
        ),
    }
}

/// Serializes a value as convex-JSON straight to a writer: the same text as
/// `encode(value).to_string()`, without building the intermediate JSON tree (results are
/// written once per response; the tree cost an allocation per field).
pub struct Encoded<'a>(pub &'a Value);

/// Serializes a value as clean JSON straight to a writer (see [`Encoded`]; the same text as
/// `encode_clean(value).to_string()`).
pub struct Clean<'a>(pub &'a Value);

impl serde::Serialize for Encoded<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        let special = |serializer: S, key: &str, text: String| {
            let mut map = serializer.serialize_map(Some(1))?;
            map.serialize_entry(key, &text)?;
            map.end()
        };
        match self.0 {
            Value::Null => serializer.serialize_unit(),
            Value::Boolean(b) => serializer.serialize_bool(*b),
            Value::Int64(i) => special(serializer, "$integer", STANDARD.encode(i.to_le_bytes())),
            Value::Float64(f) if f.is_finite() && !(*f == 0.0 && f.is_sign_negative()) => {
                serializer.serialize_f64(*f)
            }
            Value::Float64(f) => special(serializer, "$float", STANDARD.encode(f.to_le_bytes())),
            Value::String(text) => serializer.serialize_str(text),
            Value::Bytes(b) => special(serializer, "$bytes", STANDARD.encode(b)),
            Value::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&Encoded(item))?;
                }
                seq.end()
            }
            Value::Object(fields) => EncodedObject(fields).serialize(serializer),
        }
    }
}

/// Serializes an object's fields as convex-JSON (see [`Encoded`]): documents are stored
/// in this form.
pub struct EncodedObject<'a>(pub &'a Object);

impl serde::Serialize for EncodedObject<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in self.0 {
            map.serialize_entry(key, &Encoded(value))?;
        }
        map.end()
    }
}

/// The convex-JSON text of a value: `encode(value).to_string()` without the tree.
pub fn encode_text(value: &Value) -> String {
    // Writing a `Value` cannot fail (keys are strings, non-finite floats are specials);
    // the tree is the fallback that can never be wrong.
    serde_json::to_string(&Encoded(value)).unwrap_or_else(|_| encode(value).to_string())
}

/// The convex-JSON text of an object: `encode_object(fields).to_string()` without the tree.
pub fn encode_object_text(fields: &Object) -> String {
    serde_json::to_string(&EncodedObject(fields))
        .unwrap_or_else(|_| encode_object(fields).to_string())
}

/// The clean JSON text of a value: `encode_clean(value).to_string()` without the tree.
pub fn clean_text(value: &Value) -> String {
    serde_json::to_string(&Clean(value)).unwrap_or_else(|_| encode_clean(value).to_string())
}

impl serde::Serialize for Clean<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self.0 {
            Value::Null => serializer.serialize_unit(),
            Value::Boolean(b) => serializer.serialize_bool(*b),
            Value::Int64(i) => serializer.collect_str(i),
            Value::Float64(f) if f.is_finite() => serializer.serialize_f64(*f),
            Value::Float64(f) if f.is_nan() => serializer.serialize_str("NaN"),
            Value::Float64(f) if *f > 0.0 => serializer.serialize_str("Infinity"),
            Value::Float64(_) => serializer.serialize_str("-Infinity"),
            Value::String(text) => serializer.serialize_str(text),
            Value::Bytes(b) => serializer.serialize_str(&STANDARD.encode(b)),
            Value::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&Clean(item))?;
                }
                seq.end()
            }
            Value::Object(fields) => {
                let mut map = serializer.serialize_map(Some(fields.len()))?;
                for (key, value) in fields {
                    map.serialize_entry(key, &Clean(value))?;
                }
                map.end()
            }
        }
    }
}

/// A function result shared by every response that serves it (a cached query result is
/// served many times): the value, and its JSON texts, each rendered on first use.
#[derive(Debug)]
pub struct SharedValue {
    value: Value,
    encoded: std::sync::OnceLock<Box<str>>,
    clean: std::sync::OnceLock<Box<str>>,
}

impl SharedValue {
    pub fn new(value: Value) -> SharedValue {
        SharedValue {
            value,
            encoded: std::sync::OnceLock::new(),
            clean: std::sync::OnceLock::new(),
        }
    }

    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The convex-JSON text (as [`Encoded`]).
    pub fn encoded_json(&self) -> &str {
        self.encoded
            .get_or_init(|| encode_text(&self.value).into_boxed_str())
    }

    /// The clean JSON text (as [`Clean`]).
    pub fn clean_json(&self) -> &str {
        self.clean
            .get_or_init(|| clean_text(&self.value).into_boxed_str())
    }
}

impl PartialEq for SharedValue {
    fn eq(&self, other: &SharedValue) -> bool {
        self.value == other.value
    }
}

/// Encodes a u64 the way the sync protocol and `/api/query_ts` carry timestamps.
pub fn encode_u64(ts: u64) -> String {
    STANDARD.encode(ts.to_le_bytes())
}

/// Decodes a u64 written by [`encode_u64`].
pub fn decode_u64(text: &str) -> Result<u64, TypesError> {
    let bytes = decode_base64(text)?;
    let array: [u8; 8] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| TypesError::InvalidValue("timestamp must be 8 bytes".into()))?;
    Ok(u64::from_le_bytes(array))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn direct_serialization_writes_the_same_text_as_the_json_tree() {
        let mut object = Object::new();
        object.insert("b".into(), Value::Float64(1.0));
        object.insert("a".into(), Value::String("quote \" and \u{1F600}".into()));
        object.insert("_id".into(), Value::Int64(-7));
        let samples = vec![
            Value::Null,
            Value::Boolean(true),
            Value::Int64(i64::MIN),
            Value::Float64(0.1),
            Value::Float64(-0.0),
            Value::Float64(1e300),
            Value::Float64(f64::NAN),
            Value::Float64(f64::INFINITY),
            Value::Float64(f64::NEG_INFINITY),
            Value::String(String::new()),
            Value::Bytes(vec![0, 1, 255]),
            Value::Array(vec![]),
            Value::Object(Object::new()),
            Value::Array(vec![Value::Object(object.clone()), Value::Null]),
            Value::Object(object),
        ];
        for value in samples {
            let shared = SharedValue::new(value.clone());
            assert_eq!(
                shared.encoded_json(),
                encode(&value).to_string(),
                "{value:?}"
            );
            assert_eq!(
                shared.clean_json(),
                encode_clean(&value).to_string(),
                "{value:?}"
            );
            assert_eq!(shared.value(), &value);
            if let Value::Object(fields) = &value {
                assert_eq!(
                    encode_object_text(fields),
                    encode_object(fields).to_string()
                );
            }
        }
    }

    #[test]
    fn integers_round_trip_as_documented() {
        assert_eq!(
            encode(&Value::Int64(1)),
            json!({"$integer": "AQAAAAAAAAA="})
        );
        assert_eq!(
            encode(&Value::Int64(-1)),
            json!({"$integer": "//////////8="})
        );
        assert_eq!(
            decode(&json!({"$integer": "ewAAAAAAAAA="})),
            Ok(Value::Int64(123))
        );
    }

    #[test]
    fn special_floats() {
        assert_eq!(
            encode(&Value::Float64(f64::NAN)),
            json!({"$float": "AAAAAAAA+H8="})
        );
        assert_eq!(
            encode(&Value::Float64(-0.0)),
            json!({"$float": "AAAAAAAAAIA="})
        );
        assert!(
            decode(&json!({"$float": "AAAAAAAA8D8="})).is_err(),
            "1.0 must not use $float"
        );
        assert_eq!(encode(&Value::Float64(2.5)), json!(2.5));
    }

    #[test]
    fn rejects_dollar_fields_and_deep_values() {
        assert!(decode(&json!({"$x": 1, "y": 2})).is_err());
        let mut deep = json!(1);
        for _ in 0..70 {
            deep = json!([deep]);
        }
        assert_eq!(
            decode(&deep),
            Err(TypesError::TooDeep {
                max: MAX_VALUE_DEPTH
            })
        );
    }

    #[test]
    fn clean_json() {
        assert_eq!(encode_clean(&Value::Int64(42)), json!("42"));
        assert_eq!(
            encode_clean(&Value::Float64(f64::INFINITY)),
            json!("Infinity")
        );
    }

    #[test]
    fn u64_form() {
        assert_eq!(encode_u64(1000), "6AMAAAAAAAA=");
        assert_eq!(decode_u64("6AMAAAAAAAA="), Ok(1000));
    }

    /// Every float reaches the engine as the double its text names: JSON text comes from
    /// clients, from QuickJS (syscall arguments, results) and from storage. Parsed one ULP
    /// off, `gt(_creationTime)` of a row matched the row itself (seen in the e2e suite).
    #[test]
    #[allow(clippy::unwrap_used)]
    fn floats_parse_to_the_nearest_double() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Shaped like creation times (ms since the epoch, sub-ms digits), then any bits.
            let time = 1.796e12 + (x % 1_000_000_000) as f64 / 1000.0 + (x >> 40) as f64 * 1e-7;
            for v in [time, f64::from_bits(x >> 2)] {
                let text = serde_json::to_string(&v).unwrap();
                let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_eq!(parsed.as_f64().unwrap().to_bits(), v.to_bits(), "{text}");
                let Value::Float64(back) = decode(&parsed).unwrap() else {
                    panic!("{text} did not decode to a float");
                };
                assert_eq!(back.to_bits(), v.to_bits(), "{text}");
            }
        }
    }
}

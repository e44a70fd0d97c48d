//! The Convex value model and its total order.
//!
//! Order of types (smallest first): null < int64 < float64 < boolean < string < bytes <
//! array < object. A missing field ("undefined") sorts before all of them; it is not a
//! [`Value`] but appears as `Option::None` where fields are read. An int64 never equals a
//! float64, so `1n != 1`.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::TypesError;

/// Values nest at most this deep (an object holding an object is depth 2).
pub const MAX_VALUE_DEPTH: usize = 64;
/// Documents nest at most this deep.
pub const MAX_DOCUMENT_DEPTH: usize = 16;
/// Largest document, as measured by [`Value::size`].
pub const MAX_DOCUMENT_SIZE: usize = 1 << 20;
/// Most elements in one array.
pub const MAX_ARRAY_LEN: usize = 8192;
/// Most fields in one object.
pub const MAX_OBJECT_FIELDS: usize = 1024;
/// Longest field name, in bytes.
pub const MAX_FIELD_NAME_LEN: usize = 1024;

/// An object: fields sorted by name (the order objects compare in).
pub type Object = BTreeMap<String, Value>;

/// One Convex value.
#[derive(Debug, Clone)]
pub enum Value {
    Null,
    Int64(i64),
    Float64(f64),
    Boolean(bool),
    String(String),
    Bytes(Vec<u8>),
    Array(Vec<Value>),
    Object(Object),
}

impl Value {
    /// Rank of the type in the total order; `undefined` (missing) would be 0.
    pub fn type_rank(&self) -> u8 {
        match self {
            Value::Null => 1,
            Value::Int64(_) => 2,
            Value::Float64(_) => 3,
            Value::Boolean(_) => 4,
            Value::String(_) => 5,
            Value::Bytes(_) => 6,
            Value::Array(_) => 7,
            Value::Object(_) => 8,
        }
    }

    /// Name of the type as Convex error messages spell it.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Int64(_) => "bigint",
            Value::Float64(_) => "number",
            Value::Boolean(_) => "boolean",
            Value::String(_) => "string",
            Value::Bytes(_) => "bytes",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }

    /// Size as Convex measures it (limits and bandwidth), see the compat spec §1.2.
    pub fn size(&self) -> usize {
        match self {
            Value::Null | Value::Boolean(_) => 1,
            Value::Int64(_) | Value::Float64(_) => 9,
            Value::String(s) => 2 + s.len(),
            Value::Bytes(b) => 2 + b.len(),
            Value::Array(items) => 2 + items.iter().map(Value::size).sum::<usize>(),
            Value::Object(fields) => Value::object_size(fields),
        }
    }

    /// Size of an object's fields as Convex measures it ([`Value::size`] of the object).
    pub fn object_size(fields: &Object) -> usize {
        2 + fields
            .iter()
            .map(|(k, v)| k.len() + 1 + v.size())
            .sum::<usize>()
    }

    /// Nesting depth: 1 for scalars, 1 + the deepest child for arrays and objects.
    pub fn depth(&self) -> usize {
        match self {
            Value::Array(items) => 1 + items.iter().map(Value::depth).max().unwrap_or(0),
            Value::Object(fields) => 1 + fields.values().map(Value::depth).max().unwrap_or(0),
            _ => 1,
        }
    }

    /// Reads a dotted field path (`"a.b"`); `None` when any step is missing or not an object.
    pub fn get_path(&self, path: &str) -> Option<&Value> {
        let mut current = self;
        for part in path.split('.') {
            match current {
                Value::Object(fields) => current = fields.get(part)?,
                _ => return None,
            }
        }
        Some(current)
    }

    pub fn as_object(&self) -> Option<&Object> {
        match self {
            Value::Object(o) => Some(o),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}

/// Total order on float64 as Convex defines it: negative NaNs first, then -inf .. -0 < +0 ..
/// +inf, then positive NaNs. Equal bit patterns are equal.
pub fn total_cmp_f64(a: f64, b: f64) -> Ordering {
    a.total_cmp(&b)
}

impl Ord for Value {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Value::Null, Value::Null) => Ordering::Equal,
            (Value::Int64(a), Value::Int64(b)) => a.cmp(b),
            (Value::Float64(a), Value::Float64(b)) => total_cmp_f64(*a, *b),
            (Value::Boolean(a), Value::Boolean(b)) => a.cmp(b),
            (Value::String(a), Value::String(b)) => a.as_bytes().cmp(b.as_bytes()),
            (Value::Bytes(a), Value::Bytes(b)) => a.cmp(b),
            (Value::Array(a), Value::Array(b)) => a.cmp(b),
            (Value::Object(a), Value::Object(b)) => a.iter().cmp(b.iter()),
            _ => self.type_rank().cmp(&other.type_rank()),
        }
    }
}

impl PartialOrd for Value {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Value {}

/// Compares two possibly-missing values: missing (undefined) sorts first.
pub fn cmp_optional(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(a), Some(b)) => a.cmp(b),
    }
}

/// A stored document: its fields, including `_id` (string) and `_creationTime` (float64).
/// Shared between snapshots by reference counting, never mutated in place.
pub type Document = Arc<Object>;

/// Checks a field name against the Convex rule: at most 1024 bytes, printable ASCII, not
/// starting with `$`. Top-level user fields must also not start with `_` (checked by
/// [`check_document_fields`]).
pub fn check_field_name(name: &str) -> Result<(), TypesError> {
    let reason = if name.len() > MAX_FIELD_NAME_LEN {
        Some("longer than 1024 characters")
    } else if name.starts_with('$') {
        Some("field names must not start with '$'")
    } else if !name.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        Some("field names must be printable ASCII")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(TypesError::InvalidFieldName {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Checks the top-level fields a user writes into a document: no system fields other
/// than the given ones, and the document limits (depth, size, array and object lengths).
pub fn check_user_document(fields: &Object) -> Result<(), TypesError> {
    for name in fields.keys() {
        if name.starts_with('_') {
            return Err(TypesError::InvalidFieldName {
                name: name.clone(),
                reason: "top-level fields starting with '_' are reserved for system fields",
            });
        }
    }
    let value = Value::Object(fields.clone());
    check_limits(&value, MAX_DOCUMENT_DEPTH)?;
    let size = value.size();
    if size > MAX_DOCUMENT_SIZE {
        return Err(TypesError::TooLarge {
            what: "document",
            size,
            max: MAX_DOCUMENT_SIZE,
        });
    }
    Ok(())
}

/// Checks depth, array length and object width limits of a value.
pub fn check_limits(value: &Value, max_depth: usize) -> Result<(), TypesError> {
    fn walk(value: &Value, depth: usize, max_depth: usize) -> Result<(), TypesError> {
        if depth > max_depth {
            return Err(TypesError::TooDeep { max: max_depth });
        }
        match value {
            Value::Array(items) => {
                if items.len() > MAX_ARRAY_LEN {
                    return Err(TypesError::TooLarge {
                        what: "array",
                        size: items.len(),
                        max: MAX_ARRAY_LEN,
                    });
                }
                items.iter().try_for_each(|v| walk(v, depth + 1, max_depth))
            }
            Value::Object(fields) => {
                if fields.len() > MAX_OBJECT_FIELDS {
                    return Err(TypesError::TooLarge {
                        what: "object (fields)",
                        size: fields.len(),
                        max: MAX_OBJECT_FIELDS,
                    });
                }
                fields
                    .values()
                    .try_for_each(|v| walk(v, depth + 1, max_depth))
            }
            _ => Ok(()),
        }
    }
    walk(value, 1, max_depth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_order_is_convex_order() {
        let ordered = vec![
            Value::Null,
            Value::Int64(-5),
            Value::Int64(7),
            Value::Float64(f64::NEG_INFINITY),
            Value::Float64(-0.0),
            Value::Float64(0.0),
            Value::Float64(1.5),
            Value::Float64(f64::NAN),
            Value::Boolean(false),
            Value::Boolean(true),
            Value::String("a".into()),
            Value::String("ab".into()),
            Value::String("b".into()),
            Value::Bytes(vec![0]),
            Value::Array(vec![]),
            Value::Array(vec![Value::Null]),
            Value::Object(Object::new()),
        ];
        for pair in ordered.windows(2) {
            assert!(pair[0] < pair[1], "{:?} < {:?}", pair[0], pair[1]);
        }
        assert_ne!(Value::Int64(1), Value::Float64(1.0));
    }

    #[test]
    fn size_formula() {
        let mut o = Object::new();
        o.insert("ab".into(), Value::String("xyz".into()));
        // 2 + (2 + 1 + (2 + 3))
        assert_eq!(Value::Object(o).size(), 10);
    }
}

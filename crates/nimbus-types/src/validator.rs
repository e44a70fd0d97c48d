//! Validators: the JSON form of `v.*` builders (compat spec §8.4) and checking values
//! against them, for function arguments, return values and schema documents.

use std::collections::BTreeMap;

use serde_json::Value as Json;

use crate::error::TypesError;
use crate::json::decode;
use crate::value::{check_field_name, Object, Value};

/// Validation of `v.id("table")` needs the tenant's IDs and tables.
pub trait IdCheck {
    fn is_id_of_table(&self, id: &str, table: &str) -> bool;
}

/// One object field's validator.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldValidator {
    pub validator: Validator,
    pub optional: bool,
}

/// A parsed validator.
#[derive(Debug, Clone, PartialEq)]
pub enum Validator {
    Null,
    Number,
    BigInt,
    Boolean,
    String,
    Bytes,
    Any,
    CommitTs,
    Literal(Value),
    Id {
        table: String,
    },
    Array(Box<Validator>),
    Object(BTreeMap<String, FieldValidator>),
    Record {
        keys: Box<Validator>,
        values: Box<Validator>,
    },
    Union(Vec<Validator>),
}

/// Validators nest at most this deep.
const MAX_VALIDATOR_DEPTH: usize = 64;

fn bad(message: impl Into<String>) -> TypesError {
    TypesError::InvalidValidator(message.into())
}

impl Validator {
    pub fn parse_text(text: &str) -> Result<Validator, TypesError> {
        let json: Json = serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
        Validator::parse(&json)
    }

    pub fn parse(json: &Json) -> Result<Validator, TypesError> {
        parse_at(json, 0)
    }

    /// How `v.*` spells this validator, for messages.
    pub fn describe(&self) -> String {
        match self {
            Validator::Null => "v.null()".into(),
            Validator::Number => "v.float64()".into(),
            Validator::BigInt => "v.int64()".into(),
            Validator::Boolean => "v.boolean()".into(),
            Validator::String => "v.string()".into(),
            Validator::Bytes => "v.bytes()".into(),
            Validator::Any => "v.any()".into(),
            Validator::CommitTs => "v.commitTs()".into(),
            Validator::Literal(value) => {
                format!("v.literal({})", crate::json::encode(value))
            }
            Validator::Id { table } => format!("v.id(\"{table}\")"),
            Validator::Array(inner) => format!("v.array({})", inner.describe()),
            Validator::Object(fields) => {
                let inner: Vec<String> = fields
                    .iter()
                    .map(|(name, f)| {
                        if f.optional {
                            format!("{name}: v.optional({})", f.validator.describe())
                        } else {
                            format!("{name}: {}", f.validator.describe())
                        }
                    })
                    .collect();
                format!("v.object({{{}}})", inner.join(", "))
            }
            Validator::Record { keys, values } => {
                format!("v.record({}, {})", keys.describe(), values.describe())
            }
            Validator::Union(members) => {
                let inner: Vec<String> = members.iter().map(Validator::describe).collect();
                format!("v.union({})", inner.join(", "))
            }
        }
    }

    /// Checks `value`; the error names the path and both sides.
    pub fn check(&self, value: &Value, ids: &dyn IdCheck) -> Result<(), TypesError> {
        check_at(self, value, ids, &mut String::new()).map_err(TypesError::ValidationFailed)
    }
}

fn parse_at(json: &Json, depth: usize) -> Result<Validator, TypesError> {
    if depth > MAX_VALIDATOR_DEPTH {
        return Err(bad("validator nested too deeply"));
    }
    let Some(kind) = json.get("type").and_then(Json::as_str) else {
        return Err(bad(format!("missing \"type\" in {json}")));
    };
    let value = json.get("value");
    Ok(match kind {
        "null" => Validator::Null,
        "number" => Validator::Number,
        "bigint" => Validator::BigInt,
        "boolean" => Validator::Boolean,
        "string" => Validator::String,
        "bytes" => Validator::Bytes,
        "any" => Validator::Any,
        "commitTs" => Validator::CommitTs,
        "literal" => {
            let value = value.ok_or_else(|| bad("literal without value"))?;
            Validator::Literal(decode(value).map_err(|e| bad(format!("literal: {e}")))?)
        }
        "id" => {
            let table = json
                .get("tableName")
                .and_then(Json::as_str)
                .ok_or_else(|| bad("id without tableName"))?;
            Validator::Id {
                table: table.to_string(),
            }
        }
        "array" => {
            let inner = value.ok_or_else(|| bad("array without value"))?;
            Validator::Array(Box::new(parse_at(inner, depth + 1)?))
        }
        "object" => {
            let Some(Json::Object(map)) = value else {
                return Err(bad("object without value"));
            };
            let mut fields = BTreeMap::new();
            for (name, field) in map {
                fields.insert(name.clone(), parse_field(field, depth)?);
            }
            Validator::Object(fields)
        }
        "record" => {
            let keys = json.get("keys").ok_or_else(|| bad("record without keys"))?;
            let values = json
                .get("values")
                .ok_or_else(|| bad("record without values"))?;
            let values = match values.get("fieldType") {
                Some(inner) => parse_at(inner, depth + 1)?,
                None => parse_at(values, depth + 1)?,
            };
            Validator::Record {
                keys: Box::new(parse_at(keys, depth + 1)?),
                values: Box::new(values),
            }
        }
        "union" => {
            let Some(Json::Array(members)) = value else {
                return Err(bad("union without value"));
            };
            Validator::Union(
                members
                    .iter()
                    .map(|m| parse_at(m, depth + 1))
                    .collect::<Result<_, _>>()?,
            )
        }
        other => return Err(bad(format!("unknown validator type {other:?}"))),
    })
}

fn parse_field(json: &Json, depth: usize) -> Result<FieldValidator, TypesError> {
    let field_type = json
        .get("fieldType")
        .ok_or_else(|| bad("object field without fieldType"))?;
    Ok(FieldValidator {
        validator: parse_at(field_type, depth + 1)?,
        optional: json
            .get("optional")
            .and_then(Json::as_bool)
            .unwrap_or(false),
    })
}

fn show(value: &Value) -> String {
    let text = crate::json::encode_text(value);
    if text.len() > 200 {
        format!(
            "{}...",
            &text[..text.char_indices().nth(200).map_or(text.len(), |(i, _)| i)]
        )
    } else {
        text
    }
}

fn mismatch(validator: &Validator, value: &Value, path: &str) -> String {
    let path = if path.is_empty() { "(root)" } else { path };
    format!(
        "Value does not match validator.\nPath: {path}\nValue: {}\nValidator: {}",
        show(value),
        validator.describe()
    )
}

fn check_at(
    validator: &Validator,
    value: &Value,
    ids: &dyn IdCheck,
    path: &mut String,
) -> Result<(), String> {
    let ok = match (validator, value) {
        (Validator::Any, _) => true,
        (Validator::Null, Value::Null) => true,
        (Validator::Number, Value::Float64(_)) => true,
        (Validator::BigInt | Validator::CommitTs, Value::Int64(_)) => true,
        (Validator::Boolean, Value::Boolean(_)) => true,
        (Validator::String, Value::String(_)) => true,
        (Validator::Bytes, Value::Bytes(_)) => true,
        (Validator::Literal(expected), actual) => expected == actual,
        (Validator::Id { table }, Value::String(id)) => ids.is_id_of_table(id, table),
        (Validator::Array(inner), Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                check_at(inner, item, ids, path)?;
                path.truncate(len);
            }
            true
        }
        (Validator::Object(fields), Value::Object(object)) => {
            return check_object(fields, object, ids, path);
        }
        (Validator::Record { keys, values }, Value::Object(object)) => {
            for (key, item) in object {
                let key_value = Value::String(key.clone());
                if check_field_name(key).is_err()
                    || check_at(keys, &key_value, ids, &mut path.clone()).is_err()
                {
                    return Err(format!(
                        "Record key {key:?} at {} does not match {}",
                        if path.is_empty() { "(root)" } else { path },
                        keys.describe()
                    ));
                }
                let len = path.len();
                path.push('.');
                path.push_str(key);
                check_at(values, item, ids, path)?;
                path.truncate(len);
            }
            true
        }
        (Validator::Union(members), _) => members
            .iter()
            .any(|m| check_at(m, value, ids, &mut path.clone()).is_ok()),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(mismatch(validator, value, path))
    }
}

fn check_object(
    fields: &BTreeMap<String, FieldValidator>,
    object: &Object,
    ids: &dyn IdCheck,
    path: &mut String,
) -> Result<(), String> {
    let at = |path: &str| {
        if path.is_empty() {
            "(root)".to_string()
        } else {
            path.to_string()
        }
    };
    for (name, field) in fields {
        match object.get(name) {
            None if field.optional => {}
            None => {
                return Err(format!(
                    "Object is missing the required field `{name}`. Consider wrapping the field \
                     validator in `v.optional(...)` if this is expected.\nPath: {}\nValidator: {}",
                    at(path),
                    field.validator.describe()
                ))
            }
            Some(value) => {
                let len = path.len();
                path.push('.');
                path.push_str(name);
                check_at(&field.validator, value, ids, path)?;
                path.truncate(len);
            }
        }
    }
    if let Some(extra) = object.keys().find(|k| !fields.contains_key(*k)) {
        return Err(format!(
            "Object contains extra field `{extra}` that is not in the validator.\nPath: {}",
            at(path)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct NoIds;
    impl IdCheck for NoIds {
        fn is_id_of_table(&self, id: &str, table: &str) -> bool {
            id.starts_with(table)
        }
    }

    fn v(json: Json) -> Validator {
        Validator::parse(&json).unwrap_or_else(|e| panic!("{e}"))
    }

    fn val(json: Json) -> Value {
        decode(&json).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn table_of_checks() {
        let obj = v(json!({"type":"object","value":{
            "a":{"fieldType":{"type":"string"},"optional":false},
            "n":{"fieldType":{"type":"bigint"},"optional":true},
            "items":{"fieldType":{"type":"array","value":{"type":"number"}},"optional":true},
            "k":{"fieldType":{"type":"union","value":[{"type":"literal","value":"x"},{"type":"null"}]},"optional":true},
            "ref":{"fieldType":{"type":"id","tableName":"shops"},"optional":true}}}));
        let cases: Vec<(Json, Option<&str>)> = vec![
            (json!({"a":"s"}), None),
            (json!({"a":"s","n":{"$integer":"AQAAAAAAAAA="}}), None),
            (json!({"a":"s","n":1}), Some("Path: .n")),
            (json!({}), Some("missing the required field `a`")),
            (json!({"a":"s","zzz":1}), Some("extra field `zzz`")),
            (json!({"a":"s","items":[1, "2"]}), Some("Path: .items[1]")),
            (json!({"a":"s","k":"x"}), None),
            (json!({"a":"s","k":"y"}), Some("Path: .k")),
            (json!({"a":"s","ref":"shops123"}), None),
            (json!({"a":"s","ref":"orders123"}), Some("v.id(\"shops\")")),
        ];
        for (input, expected) in cases {
            let result = obj.check(&val(input.clone()), &NoIds);
            match (expected, result) {
                (None, Ok(())) => {}
                (Some(fragment), Err(TypesError::ValidationFailed(m))) => {
                    assert!(
                        m.contains(fragment),
                        "{input}: {m:?} should contain {fragment:?}"
                    )
                }
                (expected, got) => panic!("{input}: expected {expected:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn records_and_literals_are_type_sensitive() {
        let rec = v(
            json!({"type":"record","keys":{"type":"string"},"values":{"fieldType":{"type":"number"},"optional":false}}),
        );
        assert!(rec.check(&val(json!({"a":1,"b":2})), &NoIds).is_ok());
        assert!(rec.check(&val(json!({"a":"x"})), &NoIds).is_err());
        let lit = v(json!({"type":"literal","value":{"$integer":"AQAAAAAAAAA="}}));
        assert!(lit.check(&Value::Int64(1), &NoIds).is_ok());
        assert!(lit.check(&Value::Float64(1.0), &NoIds).is_err());
        assert!(Validator::parse(&json!({"type":"nope"})).is_err());
    }
}

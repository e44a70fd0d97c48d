//! Schemas: the JSON that `schema.js`'s `default.export()` returns (compat spec §8.1).

use std::collections::BTreeMap;

use serde_json::Value as Json;

use crate::error::TypesError;
use crate::names::{check_identifier, check_user_table_name};
use crate::validator::Validator;

/// Most fields in one index.
pub const MAX_INDEX_FIELDS: usize = 16;

/// A database index of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexSchema {
    pub name: String,
    /// Declared fields (without the implicit `_creationTime`/`_id` tiebreakers).
    pub fields: Vec<String>,
}

/// A search or vector index: parsed and kept, not queryable yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherIndexSchema {
    pub name: String,
    pub kind: &'static str,
}

/// One table of a schema.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSchema {
    pub name: String,
    pub indexes: Vec<IndexSchema>,
    pub staged_indexes: Vec<IndexSchema>,
    pub other_indexes: Vec<OtherIndexSchema>,
    /// `None` when the table accepts any document.
    pub document_type: Option<Validator>,
}

/// A whole schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Schema {
    pub tables: BTreeMap<String, TableSchema>,
    pub schema_validation: bool,
}

fn bad(message: String) -> TypesError {
    TypesError::InvalidValidator(message)
}

impl Schema {
    /// Checks a document of `table` (with or without its system fields, which are not
    /// checked) against the table's validator; `Ok` when validation is off or the table
    /// has no validator.
    pub fn check_document(
        &self,
        table: &str,
        doc: &crate::Object,
        ids: &dyn crate::validator::IdCheck,
    ) -> Result<(), TypesError> {
        if !self.schema_validation {
            return Ok(());
        }
        let Some(validator) = self
            .tables
            .get(table)
            .and_then(|t| t.document_type.as_ref())
        else {
            return Ok(());
        };
        let fields: crate::Object = doc
            .iter()
            .filter(|(k, _)| k.as_str() != "_id" && k.as_str() != "_creationTime")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        validator.check(&crate::Value::Object(fields), ids)
    }

    pub fn parse_text(text: &str) -> Result<Schema, TypesError> {
        let json: Json =
            serde_json::from_str(text).map_err(|e| bad(format!("schema is not JSON: {e}")))?;
        Schema::parse(&json)
    }

    pub fn parse(json: &Json) -> Result<Schema, TypesError> {
        let Some(Json::Array(tables)) = json.get("tables") else {
            return Err(bad("schema without \"tables\"".into()));
        };
        let mut parsed = BTreeMap::new();
        for table in tables {
            let table = parse_table(table)?;
            if parsed.contains_key(&table.name) {
                return Err(bad(format!("table {:?} is defined twice", table.name)));
            }
            parsed.insert(table.name.clone(), table);
        }
        Ok(Schema {
            tables: parsed,
            schema_validation: json
                .get("schemaValidation")
                .and_then(Json::as_bool)
                .unwrap_or(true),
        })
    }
}

fn parse_table(json: &Json) -> Result<TableSchema, TypesError> {
    let name = json
        .get("tableName")
        .and_then(Json::as_str)
        .ok_or_else(|| bad("table without tableName".into()))?
        .to_string();
    check_user_table_name(&name)?;
    let indexes = parse_indexes(&name, json.get("indexes"))?;
    let staged_indexes = parse_indexes(&name, json.get("stagedDbIndexes"))?;
    let mut seen: Vec<&str> = Vec::new();
    let mut other_indexes = Vec::new();
    for (key, kind) in [
        ("searchIndexes", "search"),
        ("stagedSearchIndexes", "search"),
        ("vectorIndexes", "vector"),
        ("stagedVectorIndexes", "vector"),
    ] {
        if let Some(Json::Array(list)) = json.get(key) {
            for index in list {
                let index_name = index
                    .get("indexDescriptor")
                    .and_then(Json::as_str)
                    .ok_or_else(|| bad(format!("{name}: {kind} index without a name")))?;
                other_indexes.push(OtherIndexSchema {
                    name: index_name.to_string(),
                    kind,
                });
            }
        }
    }
    for index in indexes.iter().chain(&staged_indexes) {
        seen.push(&index.name);
    }
    for other in &other_indexes {
        seen.push(&other.name);
    }
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    if let Some(pair) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(bad(format!(
            "table {name:?} has two indexes named {:?}",
            pair[0]
        )));
    }
    let document_type = match json.get("documentType") {
        None | Some(Json::Null) => None,
        Some(doc) => match Validator::parse(doc)? {
            Validator::Any => None,
            v @ (Validator::Object(_) | Validator::Union(_)) => Some(v),
            other => {
                return Err(bad(format!(
                    "table {name:?}: documents must be objects, not {}",
                    other.describe()
                )))
            }
        },
    };
    Ok(TableSchema {
        name,
        indexes,
        staged_indexes,
        other_indexes,
        document_type,
    })
}

fn parse_indexes(table: &str, json: Option<&Json>) -> Result<Vec<IndexSchema>, TypesError> {
    let Some(json) = json else {
        return Ok(Vec::new());
    };
    let Json::Array(list) = json else {
        return Err(bad(format!("{table}: indexes must be a list")));
    };
    let mut out = Vec::with_capacity(list.len());
    for index in list {
        let name = index
            .get("indexDescriptor")
            .and_then(Json::as_str)
            .ok_or_else(|| bad(format!("{table}: index without indexDescriptor")))?;
        check_identifier("index", name)?;
        if name == "by_id" || name == "by_creation_time" || name.starts_with('_') {
            return Err(bad(format!(
                "{table}.{name}: the index name is reserved (by_id, by_creation_time and names \
                 starting with '_' are built in)"
            )));
        }
        let Some(Json::Array(fields)) = index.get("fields") else {
            return Err(bad(format!("{table}.{name}: index without fields")));
        };
        let fields: Vec<String> = fields
            .iter()
            .map(|f| f.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| bad(format!("{table}.{name}: index fields must be strings")))?;
        if fields.is_empty() || fields.len() > MAX_INDEX_FIELDS {
            return Err(bad(format!(
                "{table}.{name}: an index has 1 to {MAX_INDEX_FIELDS} fields, not {}",
                fields.len()
            )));
        }
        for (i, field) in fields.iter().enumerate() {
            if fields[..i].contains(field) {
                return Err(bad(format!(
                    "{table}.{name}: field {field:?} is listed twice"
                )));
            }
            if field == "_id" || (field == "_creationTime" && i + 1 != fields.len()) {
                return Err(bad(format!(
                    "{table}.{name}: {field:?} cannot be an index field here (indexes end with \
                     _creationTime and _id implicitly)"
                )));
            }
        }
        out.push(IndexSchema {
            name: name.to_string(),
            fields,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_observed_schema() {
        let text = r#"{"tables":[{"tableName":"messages","indexes":[{"indexDescriptor":"by_author","fields":["author"]}],"stagedDbIndexes":[],"searchIndexes":[{"indexDescriptor":"search_body","searchField":"body","filterFields":["author"]}],"stagedSearchIndexes":[],"vectorIndexes":[],"stagedVectorIndexes":[],"documentType":{"type":"object","value":{"author":{"fieldType":{"type":"string"},"optional":false},"body":{"fieldType":{"type":"string"},"optional":false},"n":{"fieldType":{"type":"bigint"},"optional":true}}}}],"schemaValidation":true}"#;
        let schema = Schema::parse_text(text).unwrap_or_else(|e| panic!("{e}"));
        let table = &schema.tables["messages"];
        assert_eq!(
            table.indexes,
            vec![IndexSchema {
                name: "by_author".into(),
                fields: vec!["author".into()]
            }]
        );
        assert!(table.document_type.is_some());
        assert!(schema.schema_validation);
    }

    #[test]
    fn rejects_bad_indexes() {
        for (fields, name) in [
            (r#"["a","a"]"#, "by_a"),
            (r#"[]"#, "by_a"),
            (r#"["a"]"#, "by_id"),
            (r#"["_id"]"#, "by_x"),
        ] {
            let text = format!(
                r#"{{"tables":[{{"tableName":"t","indexes":[{{"indexDescriptor":"{name}","fields":{fields}}}],"documentType":{{"type":"any"}}}}]}}"#
            );
            assert!(Schema::parse_text(&text).is_err(), "{text}");
        }
    }
}

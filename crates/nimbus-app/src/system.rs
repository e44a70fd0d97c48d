//! System queries: the `_system/...` functions the official Convex CLI reads a deployment
//! through (`npx convex data`, `function-spec`, `env list`, and the checks `export`,
//! `import` and `deploy` make first). Convex serves them from JavaScript bundled with the
//! backend; Nimbus answers them here, natively, against the same transaction a pushed query
//! would get, so they work over HTTP and as live subscriptions alike.
//!
//! Only the tenant admin may call them (`Authorization: Convex <admin key>`, or a socket
//! authenticated as admin); anyone else is told the function does not exist, as for an
//! internal function. Each is a query: bounded by the transaction's read limits, and a page
//! holds at most [`MAX_PAGE_DOCUMENTS`] documents.

use std::sync::Arc;

use nimbus_engine::{EngineError, Transaction};
use nimbus_types::query::{Order, QuerySource, SerializedQuery};
use nimbus_types::{Object, Value};

use crate::deployment::Deployment;
use crate::execute::FunctionFailure;
use crate::FunctionKind;

/// Most documents one `tableData` page returns; the CLI asks for more pages as it needs.
pub(crate) const MAX_PAGE_DOCUMENTS: usize = 1000;

/// A system query, by what it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SystemQuery {
    /// `_system/cli/tables`: the tenant's tables, as one page of `{name}`.
    Tables,
    /// `_system/cli/tableData`: a page of a table's documents by creation time.
    TableData,
    /// `_system/cli/tableSize`: a table's document count.
    TableSize,
    /// `_system/cli/modules:apiSpec`: every pushed function with its validators.
    ApiSpec,
    /// `_system/cli/convexUrl:cloudUrl`: the tenant's URL.
    CloudUrl,
    /// `_system/cli/queryEnvironmentVariables`: every variable, `[{name, value}]` by name.
    EnvironmentVariables,
    /// `_system/cli/queryEnvironmentVariables:get`: `{name, value}` of `name`, or `null`.
    EnvironmentVariable,
    /// `_system/cli/exports:getLatest`: `null`, no export has ever been made.
    LatestExport,
    /// `_system/cli/queryImport:list`: no imports.
    Imports,
    /// `_system/frontend/components:list`: no components (Nimbus has none).
    Components,
}

/// What can go wrong in a system query: the call's own failure (bad arguments), or the
/// engine's (a read limit is the user's; overload or a stale snapshot is the system's).
pub(crate) enum SystemError {
    Failure(FunctionFailure),
    Engine(EngineError),
}

impl From<EngineError> for SystemError {
    fn from(error: EngineError) -> Self {
        SystemError::Engine(error)
    }
}

fn bad_args(name: &str, message: impl std::fmt::Display) -> SystemError {
    SystemError::Failure(FunctionFailure {
        code: "ArgumentValidationError",
        message: format!("{name}: {message}"),
        data: None,
    })
}

impl SystemQuery {
    /// The system query at a canonical function path (`module.js`, export), if it is one.
    pub(crate) fn find(module: &str, export: &str) -> Option<SystemQuery> {
        let rest = module.strip_prefix("_system/")?;
        Some(match (rest, export) {
            ("cli/tables.js", "default") => SystemQuery::Tables,
            ("cli/tableData.js", "default") => SystemQuery::TableData,
            ("cli/tableSize.js", "default") => SystemQuery::TableSize,
            ("cli/modules.js", "apiSpec") => SystemQuery::ApiSpec,
            ("cli/convexUrl.js", "cloudUrl") => SystemQuery::CloudUrl,
            ("cli/queryEnvironmentVariables.js", "default") => SystemQuery::EnvironmentVariables,
            ("cli/queryEnvironmentVariables.js", "get") => SystemQuery::EnvironmentVariable,
            ("cli/exports.js", "getLatest") => SystemQuery::LatestExport,
            ("cli/queryImport.js", "list") => SystemQuery::Imports,
            ("frontend/components.js", "list") => SystemQuery::Components,
            _ => return None,
        })
    }

    /// Runs the query in `txn` (whose read set then covers what it read).
    pub(crate) fn run(
        self,
        name: &str,
        args: &Value,
        txn: &mut Transaction,
        deployment: &Deployment,
        tenant_url: &str,
    ) -> Result<Value, SystemError> {
        let empty = Object::new();
        let args = match args {
            Value::Object(fields) => fields,
            Value::Null => &empty,
            other => return Err(bad_args(name, format!("expected an object, got {other:?}"))),
        };
        match self {
            SystemQuery::Tables => {
                let page = txn
                    .table_names()
                    .into_iter()
                    .filter(|table| !table.starts_with('_'))
                    .map(|table| object([("name", Value::String(table))]))
                    .collect();
                Ok(page_value(page, true, "end".into()))
            }
            SystemQuery::TableData => table_data(name, args, txn),
            SystemQuery::TableSize => {
                let table = string_arg(name, args, "tableName")?;
                Ok(Value::Float64(txn.count(table)? as f64))
            }
            SystemQuery::ApiSpec => Ok(api_spec(deployment)),
            SystemQuery::CloudUrl => Ok(Value::String(tenant_url.to_string())),
            SystemQuery::EnvironmentVariables => Ok(Value::Array(
                deployment
                    .env
                    .iter()
                    .map(|(name, value)| env_entry(name, value))
                    .collect(),
            )),
            SystemQuery::EnvironmentVariable => {
                let wanted = string_arg(name, args, "name")?;
                Ok(deployment
                    .env
                    .get(wanted)
                    .map_or(Value::Null, |value| env_entry(wanted, value)))
            }
            SystemQuery::Imports | SystemQuery::Components => Ok(Value::Array(Vec::new())),
            SystemQuery::LatestExport => Ok(Value::Null),
        }
    }
}

fn env_entry(name: &str, value: &str) -> Value {
    object([
        ("name", Value::String(name.to_string())),
        ("value", Value::String(value.to_string())),
    ])
}

fn object<const N: usize>(fields: [(&str, Value); N]) -> Value {
    Value::Object(
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

fn page_value(page: Vec<Value>, is_done: bool, continue_cursor: String) -> Value {
    object([
        ("page", Value::Array(page)),
        ("isDone", Value::Boolean(is_done)),
        ("continueCursor", Value::String(continue_cursor)),
    ])
}

fn string_arg<'a>(name: &str, args: &'a Object, field: &str) -> Result<&'a str, SystemError> {
    match args.get(field) {
        Some(Value::String(s)) => Ok(s),
        other => Err(bad_args(
            name,
            format!("`{field}` must be a string, got {other:?}"),
        )),
    }
}

/// `{table, order?, paginationOpts: {cursor, numItems}}`: a page of the table by creation
/// time, newest first unless `order` is `"asc"`. A table that does not exist is empty.
fn table_data(name: &str, args: &Object, txn: &mut Transaction) -> Result<Value, SystemError> {
    let table = string_arg(name, args, "table")?;
    let order = match args.get("order") {
        None | Some(Value::Null) => Order::Desc,
        Some(Value::String(s)) if s == "desc" => Order::Desc,
        Some(Value::String(s)) if s == "asc" => Order::Asc,
        Some(other) => {
            return Err(bad_args(
                name,
                format!("`order` must be \"asc\" or \"desc\", got {other:?}"),
            ))
        }
    };
    let Some(Value::Object(pagination)) = args.get("paginationOpts") else {
        return Err(bad_args(name, "`paginationOpts` must be an object"));
    };
    let cursor = match pagination.get("cursor") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(other) => {
            return Err(bad_args(
                name,
                format!("`paginationOpts.cursor` must be a string or null, got {other:?}"),
            ))
        }
    };
    let wanted = match pagination.get("numItems") {
        Some(Value::Float64(n)) if n.is_finite() && *n >= 1.0 => *n as usize,
        Some(Value::Int64(n)) if *n >= 1 => usize::try_from(*n).unwrap_or(usize::MAX),
        other => {
            return Err(bad_args(
                name,
                format!("`paginationOpts.numItems` must be a number >= 1, got {other:?}"),
            ))
        }
    };
    if !txn.table_names().iter().any(|t| t == table) {
        return Ok(page_value(Vec::new(), true, "end".into()));
    }
    let query = SerializedQuery {
        source: QuerySource::FullTableScan {
            table: table.to_string(),
            order,
        },
        operators: Vec::new(),
    };
    let page = txn.page(&query, cursor, None, wanted.min(MAX_PAGE_DOCUMENTS))?;
    let documents = page
        .documents
        .iter()
        .map(|doc| Value::Object(Object::clone(doc)))
        .collect();
    Ok(page_value(documents, page.is_done, page.continue_cursor))
}

/// Every pushed function as Convex's `apiSpec` lists it: `functionType`, `identifier`
/// (`orders.js:create`), `visibility`, and the argument and return validators as JSON text.
fn api_spec(deployment: &Deployment) -> Value {
    let mut functions: Vec<_> = deployment.functions.values().map(Arc::clone).collect();
    functions.sort_by(|a, b| {
        (&a.info.module_path, &a.info.name).cmp(&(&b.info.module_path, &b.info.name))
    });
    let spec = functions
        .iter()
        .map(|f| {
            let function_type = match f.info.kind {
                FunctionKind::Query => "Query",
                FunctionKind::Mutation => "Mutation",
                FunctionKind::Action => "Action",
            };
            let visibility = if f.info.public { "public" } else { "internal" };
            object([
                ("functionType", Value::String(function_type.into())),
                (
                    "identifier",
                    Value::String(format!("{}:{}", f.info.module_path, f.info.name)),
                ),
                (
                    "visibility",
                    object([("kind", Value::String(visibility.into()))]),
                ),
                ("args", Value::String(f.info.args_json.clone())),
                (
                    "returns",
                    Value::String(
                        f.info
                            .returns_json
                            .clone()
                            .unwrap_or_else(|| r#"{"type":"any"}"#.into()),
                    ),
                ),
            ])
        })
        .collect();
    Value::Array(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_paths_are_found_only_under_system() {
        assert_eq!(
            SystemQuery::find("_system/cli/tables.js", "default"),
            Some(SystemQuery::Tables)
        );
        assert_eq!(
            SystemQuery::find("_system/cli/modules.js", "apiSpec"),
            Some(SystemQuery::ApiSpec)
        );
        assert_eq!(
            SystemQuery::find("_system/cli/queryEnvironmentVariables.js", "get"),
            Some(SystemQuery::EnvironmentVariable)
        );
        assert_eq!(SystemQuery::find("cli/tables.js", "default"), None);
        assert_eq!(SystemQuery::find("_system/cli/tables.js", "other"), None);
        assert_eq!(SystemQuery::find("_system/unknown.js", "default"), None);
    }
}

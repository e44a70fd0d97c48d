//! The endpoints the official Convex CLI calls with a tenant admin key (compat spec §7):
//! pushing code, its URLs and logs, and setting environment variables.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use nimbus_app::{EnvChange, FunctionKind, PushModule, PushRequest, StagedPush, StagedStatus};
use serde_json::{json, Value as Json};

use crate::{tenant_for_key, ApiError, AppState, Incoming};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn ok(body: Json) -> Result<Response, ApiError> {
    Ok(axum::Json(body).into_response())
}

pub(crate) async fn handle(
    state: &AppState,
    route_tenant: Option<&str>,
    incoming: &Incoming,
) -> Result<Response, ApiError> {
    let body = incoming.json()?;
    let tenant = tenant_for_key(
        state,
        incoming.client,
        route_tenant,
        incoming.admin_key(Some(&body)),
    )
    .await?;
    match incoming.path.as_str() {
        "/api/v1/get_canonical_urls" => {
            let url = state.nimbus.tenant_url(tenant.name());
            ok(json!({"convexCloudUrl": url, "convexSiteUrl": url}))
        }
        "/api/stream_function_logs" => {
            let first = incoming
                .query
                .as_deref()
                .is_some_and(|q| q.split('&').any(|p| p == "cursor=0"));
            if !first {
                // A long poll: no logs are streamed yet, so answer empty after a bounded wait.
                tokio::time::sleep(state.config.log_poll_wait.min(Duration::from_secs(30))).await;
            }
            ok(json!({"entries": [], "newCursor": now_ms()}))
        }
        "/api/get_config_hashes" => {
            let hashes: Vec<Json> = tenant
                .module_hashes()
                .into_iter()
                .map(|h| json!({"path": h.path, "hash": h.hash, "environment": h.environment}))
                .collect();
            ok(
                json!({"config": {"functions": "convex/"}, "moduleHashes": hashes, "nodeDependencies": [], "udfServerVersion": "1.48.0"}),
            )
        }
        "/api/update_environment_variables" => {
            let changes = environment_changes(&body)?;
            tenant.update_environment_variables(&changes).await?;
            ok(json!({}))
        }
        "/api/deploy2/evaluate_schema" => {
            ok(json!({"componentSchemaEvaluations": {}, "newComponentDefinitions": []}))
        }
        "/api/deploy2/evaluate_push" => {
            let staged = tenant.start_push(push_request(&body, true)?).await?;
            ok(json!({"schemaChange": schema_change(&staged)}))
        }
        "/api/deploy2/start_push" => {
            let dry_run = body.get("dryRun").and_then(Json::as_bool).unwrap_or(false);
            let staged = tenant.start_push(push_request(&body, dry_run)?).await?;
            ok(start_push_response(&staged))
        }
        "/api/deploy2/wait_for_schema" => {
            let token = body
                .pointer("/schemaChange/nimbusPushToken")
                .and_then(Json::as_str)
                .unwrap_or_default();
            match tenant.push_status(token).await? {
                StagedStatus::Ready => ok(json!({"type": "complete"})),
                StagedStatus::Failed { error, table } => ok(
                    json!({"type": "failed", "error": error, "componentPath": "", "tableName": table}),
                ),
            }
        }
        "/api/deploy2/finish_push" => {
            let token = body
                .pointer("/startPush/schemaChange/nimbusPushToken")
                .and_then(Json::as_str)
                .unwrap_or_default();
            let dry_run = body.get("dryRun").and_then(Json::as_bool).unwrap_or(false);
            tenant.finish_push(token, dry_run).await?;
            ok(json!({
                "authDiff": {"added": [], "removed": []},
                "definitionDiffs": {},
                "componentDiffs": {"": {
                    "diffType": {"type": "modify"},
                    "moduleDiff": {"added": [], "removed": []},
                    "udfConfigDiff": null,
                    "cronDiff": {"added": [], "updated": [], "deleted": []},
                    "indexDiff": {"added_indexes": [], "removed_indexes": []},
                    "schemaDiff": null,
                }},
            }))
        }
        "/api/deploy2/report_push_completed" => ok(json!({})),
        other => Err(ApiError::not_found(other)),
    }
}

/// `{"changes": [{"name": "KEY", "value": "v" | null}, ...]}`, as `npx convex env` sends it.
fn environment_changes(body: &Json) -> Result<Vec<EnvChange>, ApiError> {
    let Some(changes) = body.get("changes").and_then(Json::as_array) else {
        return Err(ApiError::bad_json(
            "expected {\"changes\": [{\"name\": \"<NAME>\", \"value\": \"<value>\" or null}]}",
        ));
    };
    changes
        .iter()
        .enumerate()
        .map(|(i, change)| {
            let name = change
                .get("name")
                .and_then(Json::as_str)
                .ok_or_else(|| ApiError::bad_json(format!("changes[{i}].name must be a string")))?;
            let value = match change.get("value") {
                None | Some(Json::Null) => None,
                Some(Json::String(value)) => Some(value.clone()),
                Some(_) => {
                    return Err(ApiError::bad_json(format!(
                        "changes[{i}].value must be a string, or null to remove {name}"
                    )))
                }
            };
            Ok(EnvChange {
                name: name.to_string(),
                value,
            })
        })
        .collect()
}

fn push_request(body: &Json, dry_run: bool) -> Result<PushRequest, ApiError> {
    if body
        .get("componentDefinitions")
        .and_then(Json::as_array)
        .is_some_and(|c| !c.is_empty())
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "UnsupportedComponents",
            "Convex components are not supported by Nimbus yet",
        ));
    }
    let app = body
        .get("appDefinition")
        .ok_or_else(|| ApiError::bad_json("missing appDefinition"))?;
    let mut modules = Vec::new();
    for module in app
        .get("changedModules")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
    {
        let field = |k: &str| module.get(k).and_then(Json::as_str).map(str::to_string);
        let (Some(path), Some(source)) = (field("path"), field("source")) else {
            return Err(ApiError::bad_json("a changed module needs path and source"));
        };
        modules.push(PushModule {
            path,
            source,
            source_map: field("sourceMap"),
            environment: field("environment").unwrap_or_else(|| "isolate".into()),
        });
    }
    let unchanged = app
        .get("unchangedModuleHashes")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("path").and_then(Json::as_str).map(str::to_string))
        .collect();
    let schema_source = app
        .pointer("/schema/source")
        .and_then(Json::as_str)
        .map(str::to_string);
    Ok(PushRequest {
        modules,
        unchanged,
        schema_source,
        dry_run,
    })
}

fn index_json(change: &nimbus_app::IndexChange) -> Json {
    json!({"name": format!("{}.{}", change.table, change.name), "type": "database", "fields": change.fields})
}

fn schema_change(staged: &StagedPush) -> Json {
    let added: Vec<Json> = staged
        .index_changes
        .iter()
        .filter(|c| c.added)
        .map(index_json)
        .collect();
    let removed: Vec<Json> = staged
        .index_changes
        .iter()
        .filter(|c| !c.added)
        .map(index_json)
        .collect();
    json!({
        "allocatedComponentIds": null,
        "schemaIds": null,
        "indexDiffs": {"": {"added_indexes": added, "removed_indexes": removed}},
        "nimbusPushToken": staged.token,
    })
}

fn start_push_response(staged: &StagedPush) -> Json {
    let mut modules: BTreeMap<String, Vec<Json>> = BTreeMap::new();
    for f in &staged.functions {
        let udf_type = match f.kind {
            FunctionKind::Query => "Query",
            FunctionKind::Mutation => "Mutation",
            FunctionKind::Action => "Action",
        };
        modules
            .entry(f.module_path.clone())
            .or_default()
            .push(json!({
                "name": f.name,
                "udfType": udf_type,
                "visibility": {"kind": if f.public { "public" } else { "internal" }},
                "args": f.args_json,
                "returns": f.returns_json,
            }));
    }
    let functions: serde_json::Map<String, Json> = modules
        .into_iter()
        .map(|(path, list)| (path, json!({"functions": list, "httpRoutes": null, "cronSpecs": null, "sourceMapped": null})))
        .collect();
    json!({
        "environmentVariables": staged.environment_variables.as_ref(),
        "externalDepsId": null,
        "componentDefinitionPackages": {},
        "appAuth": staged.auth.to_json(),
        "analysis": {"": {
            "definition": {"path": "", "definitionType": {"type": "app"}, "childComponents": [], "httpMounts": {}, "exports": {"type": "branch", "branch": []}},
            "schema": null,
            "functions": functions,
            "udfConfig": {"serverVersion": "1.48.0", "importPhaseRngSeed": {"$bytes": "AAAA"}, "importPhaseUnixTimestamp": {"$integer": "AAAAAAAAAAA="}},
        }},
        "app": {"definitionPath": "", "componentPath": "", "args": {}, "childComponents": {}, "httpRoutes": {"httpModuleRoutes": null, "mounts": []}, "exports": {}},
        "schemaChange": schema_change(staged),
    })
}

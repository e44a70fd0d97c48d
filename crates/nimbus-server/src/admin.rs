//! The instance admin API (`Authorization: Bearer <instance admin key>`).

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use nimbus_app::TenantInfo;
use serde_json::{json, Value as Json};

use crate::{ApiError, AppState, Incoming};

fn storage_json(health: &nimbus_app::StorageHealth) -> Json {
    json!({
        "state": health.state.as_str(),
        "lastError": health.last_error,
        "failedAt": health.failed_at_ms,
        "reopenAttempts": health.reopen_attempts,
        "recoveries": health.recoveries,
    })
}

/// How long `POST .../reopen` waits for the reopen attempt it asks for.
const REOPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn info_json(info: &TenantInfo) -> Json {
    json!({"name": info.name, "url": info.url, "createdAt": info.created_at_ms})
}

pub(crate) async fn handle(state: &AppState, incoming: &Incoming) -> Result<Response, ApiError> {
    state
        .authenticate_instance_admin(incoming, "the admin API")
        .await?;
    let segments: Vec<&str> = incoming.path.trim_matches('/').split('/').collect();
    match (&incoming.method, segments.as_slice()) {
        (&Method::POST, ["admin", "tenants"]) => {
            let body = incoming.json()?;
            let Some(name) = body.get("name").and_then(Json::as_str) else {
                return Err(ApiError::bad_json(
                    "expected a JSON body {\"name\": \"<tenant>\"}",
                ));
            };
            let created = state.nimbus.create_tenant(name).await?;
            let body =
                json!({"name": created.name, "url": created.url, "adminKey": created.admin_key});
            Ok((StatusCode::CREATED, axum::Json(body)).into_response())
        }
        (&Method::GET, ["admin", "tenants"]) => {
            let tenants = state.nimbus.list_tenants().await?;
            Ok(
                axum::Json(json!({"tenants": tenants.iter().map(info_json).collect::<Vec<_>>()}))
                    .into_response(),
            )
        }
        (&Method::GET, ["admin", "tenants", name]) => {
            Ok(axum::Json(info_json(&state.nimbus.tenant_info(name).await?)).into_response())
        }
        (&Method::GET, ["admin", "tenants", name, "stats"]) => {
            let stats = state.nimbus.tenant(name).await?.stats();
            let e = &stats.engine;
            Ok(axum::Json(json!({
                "name": name,
                "commits": e.commits, "commitBatches": e.batches, "conflicts": e.conflicts,
                "storageWriteMicros": e.write_micros, "rejectedOverload": e.rejected_overload,
                "commitQueueDepth": e.queue_depth, "commitQueueCapacity": e.queue_capacity,
                "residentDocuments": e.documents, "residentBytes": e.resident_bytes, "latestTs": e.latest_ts,
                "storage": storage_json(&e.storage), "memoryBytes": stats.memory_bytes,
                "inflightCalls": stats.inflight_calls, "inflightMax": stats.inflight_max,
                "rejectedCalls": stats.rejected_calls,
                "actionsRunning": stats.actions_running, "actionsMax": stats.actions_max,
                "rejectedActions": stats.rejected_actions, "deploymentGeneration": stats.deployment_generation,
                "functions": stats.functions, "cachedQueries": stats.cached_queries,
                "cachedQueryBytes": stats.cached_query_bytes,
                "live": {
                    "sessions": stats.live.sessions, "subscriptions": stats.live.subscriptions,
                    "subscriptionBytes": stats.live.subscription_bytes,
                    "liveQueries": stats.live.live_queries, "evaluations": stats.live.evaluations,
                    "rounds": stats.live.rounds, "commitsMatched": stats.live.commits_matched,
                    "lastRoundEvaluations": stats.live.last_round_evaluations,
                    "updatesSent": stats.live.updates_sent,
                    "droppedSessions": stats.live.dropped_sessions,
                    "publishedTs": stats.live.published_ts,
                },
            }))
            .into_response())
        }
        (&Method::POST, ["admin", "tenants", name, "reopen"]) => {
            let tenant = state.nimbus.tenant(name).await?;
            let health = tenant.engine_handle().reopen(REOPEN_WAIT).await;
            Ok(axum::Json(json!({"name": name, "storage": storage_json(&health)})).into_response())
        }
        (&Method::POST, ["admin", "tenants", name, "rotate-key"]) => {
            let admin_key = state.nimbus.rotate_tenant_admin_key(name).await?;
            Ok(axum::Json(json!({"name": name, "adminKey": admin_key})).into_response())
        }
        (&Method::POST, ["admin", "tenants", name, "disconnect"]) => {
            let closed = state.nimbus.tenant(name).await?.disconnect_live_sessions();
            Ok(axum::Json(json!({"sessions": closed})).into_response())
        }
        (&Method::DELETE, ["admin", "tenants", name]) => {
            state.nimbus.delete_tenant(name).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (
            _,
            ["admin", "tenants"]
            | ["admin", "tenants", _]
            | ["admin", "tenants", _, "stats" | "disconnect" | "reopen" | "rotate-key"],
        ) => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{} is not allowed on {}", incoming.method, incoming.path),
        )),
        _ => Err(ApiError::not_found(&incoming.path)),
    }
}

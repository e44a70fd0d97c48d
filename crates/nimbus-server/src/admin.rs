//! The instance admin API (`Authorization: Bearer <instance admin key>`).

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use nimbus_app::{Placement, TenantInfo};
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
    json!({
        "name": info.name,
        "url": info.url,
        "createdAt": info.created_at_ms,
        "storage": info.storage.name(),
        "server": info.server,
        "graduating": info.graduating,
    })
}

/// One tenant in full: its record, the limits in force, and which of them it overrides.
fn detail_json(info: &TenantInfo) -> Json {
    let mut json = info_json(info);
    json["limits"] = info.limits.to_json();
    json["limitOverrides"] = info.limit_overrides.to_json();
    json
}

/// `PATCH /admin/tenants/<t>`: `{"limits": {...}}` changes the tenant's limits. Anything
/// else in the body is refused, so a misspelt field is never silently ignored.
async fn patch_tenant(state: &AppState, incoming: &Incoming, name: &str) -> Result<Json, ApiError> {
    let body = incoming.json()?;
    let Some(fields) = body.as_object() else {
        return Err(ApiError::bad_json(
            "expected a JSON object such as {\"limits\": {\"inflight\": 100}}",
        ));
    };
    if let Some(other) = fields.keys().find(|key| key.as_str() != "limits") {
        return Err(ApiError::bad_json(format!(
            "unknown field {other:?}: a tenant's record can change only its \"limits\""
        )));
    }
    let Some(change) = fields.get("limits") else {
        return Err(ApiError::bad_json(
            "expected {\"limits\": {...}}: nothing to change",
        ));
    };
    let info = state.nimbus.set_tenant_limits(name, change).await?;
    Ok(detail_json(&info))
}

/// `?server=<name>` of a graduation; nothing else is accepted in the query.
fn graduation_server(incoming: &Incoming) -> Result<Option<String>, ApiError> {
    let mut server = None;
    // Server names are a-z, 0-9 and -, so nothing in a valid query needs decoding.
    for pair in incoming
        .query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "server" if server.is_none() && !value.is_empty() => server = Some(value.to_string()),
            "server" => {
                return Err(ApiError::bad_json(
                    "give ?server=<name> once, naming a Postgres server",
                ))
            }
            other => {
                return Err(ApiError::bad_json(format!(
                    "unknown query parameter {other:?}: a graduation takes only ?server=<name>"
                )))
            }
        }
    }
    Ok(server)
}

fn server_json(info: &nimbus_app::ServerInfo) -> Json {
    json!({
        "name": info.settings.name,
        "url": nimbus_app::redact_url(&info.settings.url),
        "poolerUrl": info.settings.pooler_url.as_deref().map(nimbus_app::redact_url),
        "maxConnections": info.max_connections,
        "origin": match info.origin {
            nimbus_app::ServerOrigin::Config => "config",
            nimbus_app::ServerOrigin::Api => "api",
        },
        "tenants": info.tenants,
    })
}

/// The body of `POST /admin/servers`: `name`, `url`, optional `poolerUrl` and
/// `maxConnections`; anything else is refused.
fn server_settings(body: &Json) -> Result<nimbus_app::ServerSettings, ApiError> {
    let Some(fields) = body.as_object() else {
        return Err(ApiError::bad_json(
            "expected {\"name\": ..., \"url\": \"postgres://...\"}",
        ));
    };
    if let Some(other) = fields
        .keys()
        .find(|k| !["name", "url", "poolerUrl", "maxConnections"].contains(&k.as_str()))
    {
        return Err(ApiError::bad_json(format!(
            "unknown field {other:?}: a server takes name, url, poolerUrl and maxConnections"
        )));
    }
    let text = |key: &str, required: bool| -> Result<Option<String>, ApiError> {
        match fields.get(key) {
            None | Some(Json::Null) if !required => Ok(None),
            Some(Json::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            _ => Err(ApiError::bad_json(format!(
                "\"{key}\" must be a non-empty string"
            ))),
        }
    };
    let max_connections = match fields.get("maxConnections") {
        None | Some(Json::Null) => None,
        Some(value) => Some(
            value
                .as_i64()
                .ok_or_else(|| ApiError::bad_json("\"maxConnections\" must be a whole number"))?,
        ),
    };
    let settings = nimbus_app::ServerSettings {
        name: text("name", true)?.unwrap_or_default(),
        url: text("url", true)?.unwrap_or_default(),
        pooler_url: text("poolerUrl", false)?,
        max_connections,
    };
    settings.check().map_err(ApiError::bad_json)?;
    Ok(settings)
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
            let storage = match body.get("storage") {
                None | Some(Json::Null) => None,
                Some(Json::String(storage)) => Some(Placement::parse(storage).ok_or_else(|| {
                    ApiError::bad_json(format!(
                        "unknown storage {storage:?}: one of \"sqlite\", \"postgres-shared\", \"postgres-dedicated\""
                    ))
                })?),
                Some(_) => {
                    return Err(ApiError::bad_json(
                        "\"storage\" must be a string such as \"postgres-shared\"",
                    ))
                }
            };
            let server = match body.get("server") {
                None | Some(Json::Null) => None,
                Some(Json::String(server)) => Some(server.as_str()),
                Some(_) => {
                    return Err(ApiError::bad_json(
                        "\"server\" must be a string naming a Postgres server",
                    ))
                }
            };
            if let Some(other) = body.as_object().and_then(|fields| {
                fields
                    .keys()
                    .find(|key| !["name", "storage", "server"].contains(&key.as_str()))
            }) {
                return Err(ApiError::bad_json(format!(
                    "unknown field {other:?}: a new tenant takes \"name\", \"storage\" and \"server\""
                )));
            }
            let created = state.nimbus.create_tenant_in(name, storage, server).await?;
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
            Ok(axum::Json(detail_json(&state.nimbus.tenant_info(name).await?)).into_response())
        }
        (&Method::PATCH, ["admin", "tenants", name]) => {
            Ok(axum::Json(patch_tenant(state, incoming, name).await?).into_response())
        }
        (&Method::GET, ["admin", "tenants", name, "diagnostics"]) => {
            Ok(axum::Json(tenant_diagnostics(state, name).await?).into_response())
        }
        (&Method::POST, ["admin", "tenants", name, "graduate"]) => {
            let server = graduation_server(incoming)?;
            let done = state
                .nimbus
                .graduate_tenant(name, server.as_deref())
                .await?;
            Ok(axum::Json(json!({
                "name": name,
                "from": {"storage": done.from.placement.name(), "server": done.from.server},
                "to": {"storage": done.to.placement.name(), "server": done.to.server},
                "copiedRows": done.copied_rows,
                "copiedBytes": done.copied_bytes,
                "caughtUpBatches": done.caught_up_batches,
                "finalBatches": done.final_batches,
                "pauseMs": done.pause.as_secs_f64() * 1000.0,
                "durationMs": done.duration.as_secs_f64() * 1000.0,
            }))
            .into_response())
        }
        (&Method::GET, ["admin", "servers"]) => {
            let (policy, servers) = state.nimbus.list_servers()?;
            Ok(axum::Json(json!({
                "placement": policy.name(),
                "servers": servers.iter().map(server_json).collect::<Vec<_>>(),
            }))
            .into_response())
        }
        (&Method::POST, ["admin", "servers"]) => {
            let settings = server_settings(&incoming.json()?)?;
            let added = state.nimbus.add_server(settings).await?;
            Ok((StatusCode::CREATED, axum::Json(server_json(&added))).into_response())
        }
        (&Method::DELETE, ["admin", "servers", name]) => {
            state.nimbus.remove_server(name).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (&Method::GET, ["admin", "capacity"]) => {
            Ok(axum::Json(state.nimbus.capacity().await?).into_response())
        }
        (&Method::GET, ["admin", "diagnostics"]) => {
            let mut tenants = state.nimbus.active_tenant_handles();
            let mut rows: Vec<(nimbus_app::TenantStats, Json)> = tenants
                .drain(..)
                .map(|tenant| {
                    let stats = tenant.stats();
                    let json = diagnostics_json(tenant.name(), &stats);
                    (stats, json)
                })
                .collect();
            // The tenant using the headroom first: most worker time over the last minute,
            // then the most calls in flight and queued commits.
            rows.sort_by(|(a, ja), (b, jb)| {
                b.cpu_last_minute
                    .cmp(&a.cpu_last_minute)
                    .then(
                        (b.inflight_calls + b.engine.queue_depth)
                            .cmp(&(a.inflight_calls + a.engine.queue_depth)),
                    )
                    .then_with(|| ja["name"].as_str().cmp(&jb["name"].as_str()))
            });
            let tenants: Vec<Json> = rows.into_iter().map(|(_, json)| json).collect();
            Ok(
                axum::Json(json!({"activeTenants": tenants.len(), "tenants": tenants}))
                    .into_response(),
            )
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
                "scheduler": scheduler_json(&stats.scheduler),
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

/// `GET /admin/tenants/<t>/diagnostics`: an active tenant's load against its limits, or
/// `state: "idle"` for a tenant that is not in memory (it is not activated to answer).
pub(crate) async fn tenant_diagnostics(state: &AppState, name: &str) -> Result<Json, ApiError> {
    match state.nimbus.active_tenant(name) {
        Some(tenant) => Ok(diagnostics_json(name, &tenant.stats())),
        None => {
            // 404 for a tenant that does not exist.
            state.nimbus.tenant_info(name).await?;
            Ok(json!({"name": name, "state": "idle"}))
        }
    }
}

/// A tenant's scheduled functions and cron runs: the backlog (pending, due or not), the
/// jobs running, when the next one is due, and outcomes since the tenant opened.
fn scheduler_json(stats: &nimbus_app::SchedulerStats) -> Json {
    json!({
        "pending": stats.pending, "running": stats.running,
        "nextDueMs": stats.next_due_ms,
        "succeeded": stats.succeeded, "failed": stats.failed,
    })
}

/// What an operator needs to see which tenant is using the headroom. Commits are durable
/// before they are applied to the serving snapshot, and acknowledged after both, so the
/// three journal positions of the committer are one timestamp; live queries follow behind
/// it (`liveQueriesTs`).
fn diagnostics_json(name: &str, stats: &nimbus_app::TenantStats) -> Json {
    let e = &stats.engine;
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let age_ms = |ts: u64| (ts > 0).then(|| now_ns.saturating_sub(ts) / 1_000_000);
    json!({
        "name": name,
        "state": "active",
        "admission": {"queueDepth": e.queue_depth, "queueCapacity": e.queue_capacity},
        "calls": {
            "running": stats.running_calls, "runningLimit": stats.running_max,
            "inflight": stats.inflight_calls, "inflightLimit": stats.inflight_max,
            "actions": stats.actions_running, "actionsLimit": stats.actions_max,
        },
        "rejections": {
            "commitQueue": e.rejected_overload, "inflight": stats.rejected_calls,
            "actions": stats.rejected_actions,
        },
        "cpuLastMinuteMs": stats.cpu_last_minute.as_secs_f64() * 1000.0,
        "scheduler": scheduler_json(&stats.scheduler),
        "journal": {
            "acknowledgedTs": e.latest_ts, "durableTs": e.latest_ts, "appliedTs": e.latest_ts,
            "commits": e.commits, "liveQueriesTs": stats.live.published_ts,
            "liveQueriesBehindMs": e.latest_ts.saturating_sub(stats.live.published_ts) / 1_000_000,
            "shared": stats.journal.map(|lag| json!({
                "unsyncedRecords": lag.records,
                "unsyncedBytes": lag.bytes,
                "oldestUnsyncedMs": lag.oldest.as_secs_f64() * 1000.0,
            })),
        },
        "serving": {
            "snapshotTs": e.latest_ts,
            "lastCommitAgeMs": age_ms(e.latest_ts),
            "residentDocuments": e.documents, "residentBytes": e.resident_bytes,
        },
        "live": {
            "sockets": stats.live.sessions, "socketsLimit": stats.limits.sockets,
            "subscriptions": stats.live.subscriptions,
            "subscriptionsLimit": stats.limits.subscriptions,
        },
        "limits": stats.limits.to_json(),
        "storage": storage_json(&e.storage),
        "memoryBytes": stats.memory_bytes,
    })
}

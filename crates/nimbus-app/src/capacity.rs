//! `GET /admin/capacity`: the Postgres connection budget, evaluated with live numbers.
//!
//! Postgres is process-per-connection, so a server's capacity is its `max_connections`
//! (less the superuser reserve and [`CONTROL_RESERVE`]). Two formulas take from it:
//! - **unpooled**: every active dedicated-tier tenant (and every active shared-tier tenant
//!   when there is no pooler) may hold `--postgres-connections-per-tenant` connections;
//! - **pooled**: PgBouncer opens at most `default_pool_size` server connections per
//!   database and user, and the shared tier is one database.
//!
//! The report shows both demands, their sum against the budget, the headroom, and what
//! is really connected now (`pg_stat_activity`, PgBouncer's `SHOW POOLS`).

use serde_json::{json, Value as Json};

use crate::error::AppError;
use crate::instance::Nimbus;
use std::sync::Arc;

use crate::placement::{redact_url, Placement, Server};

/// Connections kept for control operations (creating, deleting tenants), which open one
/// direct connection each, besides the runtime budget.
pub const CONTROL_RESERVE: i64 = 2;

impl Nimbus {
    /// The capacity report: one entry per Postgres server (none without Postgres).
    pub async fn capacity(&self) -> Result<Json, AppError> {
        let active_names: std::collections::HashSet<String> = self
            .active_tenant_handles()
            .iter()
            .map(|tenant| tenant.name().to_string())
            .collect();
        let rows = self.catalog_rows()?;
        let mut servers = Vec::new();
        for server in self.storage_backends().servers() {
            // [registered, active] per tier: shared, dedicated.
            let mut tiers = [[0i64; 2]; 2];
            for row in &rows {
                let Ok(location) = row.location() else {
                    continue;
                };
                if location.server.as_deref() != Some(server.name()) {
                    continue;
                }
                let tier = usize::from(location.placement == Placement::PostgresDedicated);
                tiers[tier][0] += 1;
                if active_names.contains(&row.name) {
                    tiers[tier][1] += 1;
                }
            }
            servers.push(server_report(&server, tiers).await?);
        }
        Ok(json!({
            "placement": self.storage_backends().policy().name(),
            "servers": servers,
        }))
    }
}

/// One server's figures and formulas; `tiers` holds [registered, active] for the shared
/// and the dedicated tier.
async fn server_report(server: &Arc<Server>, tiers: [[i64; 2]; 2]) -> Result<Json, AppError> {
    let postgres = server.shared.clone();
    let sampler = postgres.clone();
    let (sample, pooler) =
        tokio::task::spawn_blocking(move || (sampler.sample_server(), sampler.sample_pooler()))
            .await
            .map_err(|e| AppError::Internal(format!("capacity task: {e}")))?;
    let sample = match sample {
        Ok(sample) => sample,
        Err(e) => {
            // One unreachable server does not hide the others.
            return Ok(json!({
                "name": server.name(),
                "maxConnections": server.max_connections,
                "error": format!("sampling the Postgres server: {e}"),
                "ok": false,
            }));
        }
    };
    let [[shared_registered, shared_active], [dedicated_registered, dedicated_active]] = tiers;
    let per_tenant = i64::try_from(postgres.max_connections_per_namespace()).unwrap_or(i64::MAX);
    let max_connections = sample.max_connections;
    let budget = max_connections - sample.superuser_reserved - CONTROL_RESERVE;
    let (pooler_json, pool_size) = match &pooler {
        Ok(Some(sample)) => {
            let pools: Vec<Json> = sample
                .pools
                .iter()
                .map(|p| {
                    json!({
                        "database": p.database,
                        "user": p.user,
                        "clientActive": p.client_active,
                        "clientWaiting": p.client_waiting,
                        "serverActive": p.server_active,
                        "serverIdle": p.server_idle,
                        "serverUsed": p.server_used,
                        "maxWaitMs": p.max_wait_us as f64 / 1000.0,
                        "poolMode": p.pool_mode,
                    })
                })
                .collect();
            (
                json!({
                    "defaultPoolSize": sample.default_pool_size,
                    "serverIdleTimeoutSecs": sample.server_idle_timeout_secs,
                    "pools": pools,
                }),
                sample.default_pool_size,
            )
        }
        Ok(None) => (Json::Null, None),
        Err(e) => (json!({"error": e.to_string()}), None),
    };
    let pooled_through = pooler.as_ref().is_ok_and(|p| p.is_some());
    // Without a pooler, shared-tier tenants hold connections of their own too.
    let unpooled_tenants = dedicated_active + if pooled_through { 0 } else { shared_active };
    let unpooled = unpooled_tenants * per_tenant;
    let pooled = match pool_size {
        Some(size) if pooled_through => size,
        _ => 0,
    };
    let demand = unpooled + pooled;
    Ok(json!({
        "name": server.name(),
        "url": redact_url(&server.settings.url),
        "poolerUrl": server.settings.pooler_url.as_deref().map(redact_url),
        "database": postgres.shared_database(),
        "maxConnections": max_connections,
        "superuserReserved": sample.superuser_reserved,
        "controlReserve": CONTROL_RESERVE,
        "budget": budget,
        "clientBackends": sample.client_backends,
        "nimbusBackends": sample.nimbus_backends,
        "connectionsPerTenant": per_tenant,
        "tenants": {
            "shared": {"registered": shared_registered, "active": shared_active},
            "dedicated": {"registered": dedicated_registered, "active": dedicated_active},
        },
        "pgbouncer": pooler_json,
        "formulas": {
            "unpooled": {
                "formula": "active unpooled tenants × connections per tenant ≤ budget",
                "tenants": unpooled_tenants,
                "demand": unpooled,
                "ok": unpooled <= budget,
            },
            "pooled": {
                "formula": "shared-tier databases × PgBouncer default_pool_size ≤ budget",
                "databases": i64::from(pooled_through),
                "demand": pooled,
                "ok": pooled <= budget,
            },
        },
        "demand": demand,
        "headroom": budget - demand,
        "ok": demand <= budget && sample.client_backends <= budget,
    }))
}

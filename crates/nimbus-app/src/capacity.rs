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
use crate::placement::Placement;

/// Connections kept for control operations (creating, deleting tenants), which open one
/// direct connection each, besides the runtime budget.
pub const CONTROL_RESERVE: i64 = 2;

impl Nimbus {
    /// The capacity report; an empty list of servers without `--postgres-url`.
    pub async fn capacity(&self) -> Result<Json, AppError> {
        let Some(postgres) = self.storage_backends().postgres() else {
            return Ok(json!({"servers": []}));
        };
        let mut registered = [0i64; 3];
        let mut active = [0i64; 3];
        let active_names: std::collections::HashSet<String> = self
            .active_tenant_handles()
            .iter()
            .map(|tenant| tenant.name().to_string())
            .collect();
        for row in self.catalog_rows()? {
            let placement = row
                .storage
                .as_deref()
                .and_then(Placement::parse)
                .unwrap_or_default();
            let slot = Placement::ALL
                .iter()
                .position(|p| *p == placement)
                .unwrap_or(0);
            registered[slot] += 1;
            if active_names.contains(&row.name) {
                active[slot] += 1;
            }
        }
        let sampler = postgres.clone();
        let (server, pooler) =
            tokio::task::spawn_blocking(move || (sampler.sample_server(), sampler.sample_pooler()))
                .await
                .map_err(|e| AppError::Internal(format!("capacity task: {e}")))?;
        let server = server.map_err(|e| AppError::Unavailable {
            tenant: "(capacity)".into(),
            detail: format!("sampling the Postgres server: {e}"),
        })?;
        let per_tenant =
            i64::try_from(postgres.max_connections_per_namespace()).unwrap_or(i64::MAX);
        let (shared, dedicated) = (1, 2); // indexes into Placement::ALL
        let budget = server.max_connections - server.superuser_reserved - CONTROL_RESERVE;
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
        let unpooled_tenants = active[dedicated] + if pooled_through { 0 } else { active[shared] };
        let unpooled = unpooled_tenants * per_tenant;
        let pooled = match pool_size {
            Some(size) if pooled_through => size,
            _ => 0,
        };
        let demand = unpooled + pooled;
        let tier = |slot: usize| json!({"registered": registered[slot], "active": active[slot]});
        Ok(json!({
            "servers": [{
                "name": "default",
                "database": postgres.shared_database(),
                "maxConnections": server.max_connections,
                "superuserReserved": server.superuser_reserved,
                "controlReserve": CONTROL_RESERVE,
                "budget": budget,
                "clientBackends": server.client_backends,
                "nimbusBackends": server.nimbus_backends,
                "connectionsPerTenant": per_tenant,
                "tenants": {
                    "sqlite": tier(0),
                    "shared": tier(shared),
                    "dedicated": tier(dedicated),
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
                "ok": demand <= budget && server.client_backends <= budget,
            }],
        }))
    }
}

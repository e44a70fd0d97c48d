//! Live capacity signals of a Postgres server and of the pooler in front of it: what the
//! connection budget is measured against (`GET /admin/capacity`).

use nimbus_storage::StorageError;
use tokio_postgres::types::Type;
use tokio_postgres::{NoTls, SimpleQueryMessage};

use crate::error::pg;
use crate::PostgresBackend;

/// The server's side: its connection limit and what uses it now.
#[derive(Debug, Clone)]
pub struct ServerSample {
    pub max_connections: i64,
    /// `superuser_reserved_connections`: slots ordinary roles cannot take.
    pub superuser_reserved: i64,
    /// Client backends connected now (`pg_stat_activity`), every database included.
    pub client_backends: i64,
    /// Of those, the ones in databases named by this backend's prefix or its shared
    /// database.
    pub nimbus_backends: i64,
}

/// One PgBouncer pool (`SHOW POOLS`).
#[derive(Debug, Clone, Default)]
pub struct PoolerPool {
    pub database: String,
    pub user: String,
    pub client_active: i64,
    pub client_waiting: i64,
    pub server_active: i64,
    pub server_idle: i64,
    pub server_used: i64,
    pub max_wait_us: i64,
    pub pool_mode: String,
}

/// The pooler's side (its admin console).
#[derive(Debug, Clone, Default)]
pub struct PoolerSample {
    pub default_pool_size: Option<i64>,
    pub server_idle_timeout_secs: Option<i64>,
    pub pools: Vec<PoolerPool>,
}

impl PostgresBackend {
    /// Samples the server through a direct control connection.
    pub fn sample_server(&self) -> Result<ServerSample, StorageError> {
        let control = self.control.clone();
        let prefix = self.config.prefix.clone();
        let shared_database = control.get_dbname().unwrap_or("postgres").to_string();
        self.bridge.run(async move {
            let client = crate::connect(&control).await?;
            let setting = |name: &'static str| {
                let client = &client;
                async move {
                    client
                        .query_typed_one(
                            "SELECT setting::bigint FROM pg_settings WHERE name = $1",
                            &[(&name, Type::TEXT)],
                        )
                        .await
                        .and_then(|row| row.try_get::<_, i64>(0))
                        .map_err(|e| pg("read settings", "", e))
                }
            };
            let max_connections = setting("max_connections").await?;
            let superuser_reserved = setting("superuser_reserved_connections").await?;
            let row = client
                .query_typed_one(
                    "SELECT count(*)::bigint, \
                     count(*) FILTER (WHERE datname = $1 OR starts_with(datname, $2))::bigint \
                     FROM pg_stat_activity WHERE backend_type = 'client backend'",
                    &[(&shared_database, Type::TEXT), (&prefix, Type::TEXT)],
                )
                .await
                .map_err(|e| pg("read pg_stat_activity", "", e))?;
            let get = |i| {
                row.try_get::<_, i64>(i)
                    .map_err(|e| pg("read pg_stat_activity", "", e))
            };
            Ok(ServerSample {
                max_connections,
                superuser_reserved,
                client_backends: get(0)?,
                nimbus_backends: get(1)?,
            })
        })
    }

    /// Samples the pooler's admin console (`SHOW POOLS`, `SHOW CONFIG`); `None` when the
    /// shared tier connects directly.
    pub fn sample_pooler(&self) -> Result<Option<PoolerSample>, StorageError> {
        if self.config.pooler_url.is_none() {
            return Ok(None);
        }
        let mut console = self.pooler.clone();
        console.dbname("pgbouncer");
        self.bridge.run(async move {
            let (client, connection) = console
                .connect(NoTls)
                .await
                .map_err(|e| pg("connect to the pooler console", "", e))?;
            tokio::spawn(connection);
            let mut sample = PoolerSample::default();
            for message in client
                .simple_query("SHOW CONFIG")
                .await
                .map_err(|e| pg("SHOW CONFIG", "", e))?
            {
                if let SimpleQueryMessage::Row(row) = message {
                    let value = row.get("value").and_then(|v| v.parse::<i64>().ok());
                    match row.get("key") {
                        Some("default_pool_size") => sample.default_pool_size = value,
                        Some("server_idle_timeout") => sample.server_idle_timeout_secs = value,
                        _ => {}
                    }
                }
            }
            for message in client
                .simple_query("SHOW POOLS")
                .await
                .map_err(|e| pg("SHOW POOLS", "", e))?
            {
                if let SimpleQueryMessage::Row(row) = message {
                    let text = |name: &str| row.get(name).unwrap_or_default().to_string();
                    let number = |name: &str| {
                        row.get(name)
                            .and_then(|v| v.parse::<i64>().ok())
                            .unwrap_or(0)
                    };
                    sample.pools.push(PoolerPool {
                        database: text("database"),
                        user: text("user"),
                        client_active: number("cl_active"),
                        client_waiting: number("cl_waiting"),
                        server_active: number("sv_active"),
                        server_idle: number("sv_idle"),
                        server_used: number("sv_used"),
                        max_wait_us: number("maxwait") * 1_000_000 + number("maxwait_us"),
                        pool_mode: text("pool_mode"),
                    });
                }
            }
            Ok(Some(sample))
        })
    }

    /// The database that holds the shared tier's schemas.
    pub fn shared_database(&self) -> &str {
        self.control.get_dbname().unwrap_or("postgres")
    }

    /// Runtime connections one open namespace may hold.
    pub fn max_connections_per_namespace(&self) -> usize {
        self.config.max_connections_per_namespace.max(1)
    }
}

//! The Postgres server pool as the admin API shows and changes it (`/admin/servers`).
//!
//! Servers come from flags at start (`--postgres-url` is the server `default`,
//! `--postgres-server` adds others) or from `POST /admin/servers`, which connects to the
//! server before recording it in the catalog, so every listed server was reachable when it
//! was added. A server added through the API can be removed while no tenant lives on it;
//! a configured one changes only with the flags.

use std::sync::Arc;

use crate::error::AppError;
use crate::instance::Nimbus;
use crate::placement::{PlacementPolicy, Server, ServerOrigin, ServerSettings, DEFAULT_SERVER};

/// One server as listed.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub settings: ServerSettings,
    pub origin: ServerOrigin,
    pub max_connections: i64,
    /// Postgres tenants placed on it, in every state.
    pub tenants: i64,
}

/// Postgres servers one instance holds at most (the flags' and the admin API's together).
pub const MAX_SERVERS: usize = 64;

impl Nimbus {
    /// The placement policy and every server with its tenant count.
    pub fn list_servers(&self) -> Result<(PlacementPolicy, Vec<ServerInfo>), AppError> {
        let counts = self.catalog().tenants_per_server(DEFAULT_SERVER)?;
        let servers = self
            .storage_backends()
            .servers()
            .iter()
            .map(|server| info(server, counts.get(server.name()).copied().unwrap_or(0)))
            .collect();
        Ok((self.storage_backends().policy(), servers))
    }

    /// Connects to a new server and adds it to the pool durably (409 when the name is
    /// taken, 503 when it cannot be reached).
    pub async fn add_server(&self, settings: ServerSettings) -> Result<ServerInfo, AppError> {
        settings.check().map_err(AppError::BadRequest)?;
        let taken = || AppError::Conflict(format!("server {:?} exists already", settings.name));
        if self.storage_backends().server(&settings.name).is_some() {
            return Err(taken());
        }
        // Each server holds a runtime of its own (two threads per tier) and control
        // connections: the pool is bounded like everything else.
        if self.storage_backends().servers().len() >= MAX_SERVERS {
            return Err(AppError::Conflict(format!(
                "the pool holds its maximum of {MAX_SERVERS} Postgres servers; remove one first"
            )));
        }
        let nimbus = self
            .me()
            .ok_or_else(|| AppError::Internal("instance gone".into()))?;
        let opening = settings.clone();
        let server =
            tokio::task::spawn_blocking(move || nimbus.storage_backends().open_server(opening))
                .await
                .map_err(|e| AppError::Internal(format!("opening server task: {e}")))?
                .map_err(|detail| AppError::Unavailable {
                    tenant: "(server pool)".into(),
                    detail,
                })?;
        if !self.catalog().insert_server(&settings)? {
            return Err(taken());
        }
        if !self.storage_backends().insert_server(server.clone()) {
            return Err(taken());
        }
        tracing::info!(server = %settings.name, url = %crate::placement::redact_url(&settings.url), "Postgres server added");
        Ok(info(&server, 0))
    }

    /// Removes a server added through the API while no tenant lives on it.
    pub async fn remove_server(&self, name: &str) -> Result<(), AppError> {
        let Some(server) = self.storage_backends().server(name) else {
            return Err(AppError::NotFound(format!("no Postgres server {name:?}")));
        };
        if server.origin == ServerOrigin::Config {
            return Err(AppError::Conflict(format!(
                "server {name:?} comes from the flags this instance started with; \
                 remove it there"
            )));
        }
        if !self.catalog().remove_server(name, DEFAULT_SERVER)? {
            return Err(AppError::Conflict(format!(
                "server {name:?} still holds tenants; delete or move them first"
            )));
        }
        self.storage_backends().remove_server(name);
        tracing::info!(server = name, "Postgres server removed");
        Ok(())
    }
}

fn info(server: &Arc<Server>, tenants: i64) -> ServerInfo {
    ServerInfo {
        settings: server.settings.clone(),
        origin: server.origin,
        max_connections: server.max_connections,
        tenants,
    }
}

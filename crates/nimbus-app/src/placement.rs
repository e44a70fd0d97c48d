//! Where each tenant's namespace lives, and the storage backends this instance holds.
//!
//! The embedded SQLite backend is always there. With `--postgres-url` the instance also
//! holds the Postgres backend in both tiers: the shared tier (a schema per tenant, runtime
//! traffic through the pooler) and the dedicated tier (a database per tenant). New tenants
//! go where the instance's default says, or where their creation request names; the
//! catalog records each tenant's placement, and a tenant always reopens where it was made,
//! whatever the default is today.

use std::sync::Arc;

use nimbus_storage::StorageBackend;
use nimbus_storage_postgres::{PostgresBackend, PostgresConfig, Tier};
use nimbus_storage_sqlite::{SqliteBackend, SqliteConfig};

use crate::error::AppError;

/// A tenant's storage: backend and tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    #[default]
    Sqlite,
    PostgresShared,
    PostgresDedicated,
}

impl Placement {
    pub const ALL: [Placement; 3] = [
        Placement::Sqlite,
        Placement::PostgresShared,
        Placement::PostgresDedicated,
    ];

    /// The name in the catalog, the admin API and the `--storage` flag.
    pub fn name(self) -> &'static str {
        match self {
            Placement::Sqlite => "sqlite",
            Placement::PostgresShared => "postgres-shared",
            Placement::PostgresDedicated => "postgres-dedicated",
        }
    }

    /// Parses a name; `postgres` alone means the shared tier.
    pub fn parse(name: &str) -> Option<Placement> {
        match name {
            "postgres" => Some(Placement::PostgresShared),
            _ => Placement::ALL.into_iter().find(|p| p.name() == name),
        }
    }

    /// Parses what the catalog holds (`None`: a row from before placements, so SQLite).
    pub(crate) fn from_catalog(tenant: &str, stored: Option<&str>) -> Result<Placement, AppError> {
        match stored {
            None => Ok(Placement::Sqlite),
            Some(name) => Placement::parse(name).ok_or_else(|| {
                AppError::Internal(format!(
                    "tenant {tenant:?} has an unknown storage placement {name:?} in the catalog"
                ))
            }),
        }
    }
}

/// How to reach Postgres (`nimbus serve --postgres-url ...`).
#[derive(Debug, Clone)]
pub struct PostgresSettings {
    /// Direct URL: control connections, the dedicated tier, and the database that holds
    /// the shared tier's schemas (created when missing).
    pub url: String,
    /// The shared tier's runtime connections (PgBouncer in transaction mode); direct when
    /// absent.
    pub pooler_url: Option<String>,
    /// Runtime connections one active tenant may hold, per tier.
    pub max_connections_per_tenant: usize,
    /// Prepended to tenant names to name their schemas and databases.
    pub prefix: String,
}

impl PostgresSettings {
    pub fn new(url: impl Into<String>) -> PostgresSettings {
        PostgresSettings {
            url: url.into(),
            pooler_url: None,
            max_connections_per_tenant: 4,
            prefix: "nimbus_".into(),
        }
    }
}

/// The backends of one instance.
pub(crate) struct Backends {
    sqlite: Arc<dyn StorageBackend>,
    shared: Option<Arc<PostgresBackend>>,
    dedicated: Option<Arc<PostgresBackend>>,
}

impl Backends {
    pub(crate) fn open(
        data_dir: &std::path::Path,
        postgres: Option<&PostgresSettings>,
    ) -> Result<Backends, AppError> {
        let sqlite = SqliteBackend::new(data_dir.to_path_buf(), SqliteConfig::default())
            .map_err(|e| AppError::Internal(format!("opening SQLite storage: {e}")))?;
        let (mut shared, mut dedicated) = (None, None);
        if let Some(settings) = postgres {
            let open = |tier: Tier| -> Result<Arc<PostgresBackend>, AppError> {
                let mut config = PostgresConfig::new(settings.url.clone(), tier);
                config.pooler_url = settings.pooler_url.clone();
                config.max_connections_per_namespace = settings.max_connections_per_tenant;
                config.prefix = settings.prefix.clone();
                let backend = PostgresBackend::new(config).map_err(|e| {
                    AppError::Internal(format!(
                        "opening Postgres storage ({} tier): {e}",
                        tier.name()
                    ))
                })?;
                Ok(Arc::new(backend))
            };
            shared = Some(open(Tier::Shared)?);
            dedicated = Some(open(Tier::Dedicated)?);
        }
        Ok(Backends {
            sqlite: Arc::new(sqlite),
            shared,
            dedicated,
        })
    }

    /// The backend of a placement; the message says how to configure it when this instance
    /// was started without it.
    pub(crate) fn get(&self, placement: Placement) -> Result<Arc<dyn StorageBackend>, String> {
        let backend: Option<Arc<dyn StorageBackend>> = match placement {
            Placement::Sqlite => Some(self.sqlite.clone()),
            Placement::PostgresShared => self.shared.clone().map(|b| b as Arc<dyn StorageBackend>),
            Placement::PostgresDedicated => {
                self.dedicated.clone().map(|b| b as Arc<dyn StorageBackend>)
            }
        };
        backend.ok_or_else(|| {
            format!(
                "storage {:?} is not configured on this server: start it with --postgres-url",
                placement.name()
            )
        })
    }
}

impl Backends {
    /// Refuses a tenant name the placement cannot store (Postgres names are at most 63
    /// bytes, prefix included).
    pub(crate) fn check_name(&self, placement: Placement, name: &str) -> Result<(), String> {
        let postgres = match placement {
            Placement::Sqlite => return Ok(()),
            Placement::PostgresShared => self.shared.as_ref(),
            Placement::PostgresDedicated => self.dedicated.as_ref(),
        };
        match postgres {
            Some(backend) if name.len() > backend.max_namespace_len() => Err(format!(
                "tenant name {name:?} is too long for {}: at most {} characters there \
                 (Postgres names have 63 bytes, and --postgres-prefix comes first)",
                placement.name(),
                backend.max_namespace_len()
            )),
            _ => Ok(()),
        }
    }

    /// The Postgres backend of the shared tier, for capacity sampling (`None` without
    /// `--postgres-url`).
    pub(crate) fn postgres(&self) -> Option<Arc<PostgresBackend>> {
        self.shared.clone()
    }
}

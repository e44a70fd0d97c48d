//! Where each tenant's namespace lives, and the storage backends this instance holds.
//!
//! The embedded SQLite backend is always there. Postgres comes as a *pool of servers*:
//! each named server (from `--postgres-url`, which is the server `default`, from
//! `--postgres-server`, or added through `POST /admin/servers`) offers both tiers, the
//! shared tier (a schema per tenant, runtime traffic through its pooler) and the dedicated
//! tier (a database per tenant). A new Postgres tenant goes to the server its creation
//! names, or to the one the placement policy picks ([`PlacementPolicy`]); the catalog
//! records each tenant's placement and server, and a tenant always reopens where it was
//! made (or graduated to), whatever the defaults are today.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use nimbus_storage::StorageBackend;
use nimbus_storage_postgres::{PostgresBackend, PostgresConfig, Tier};
use nimbus_storage_sqlite::{SqliteBackend, SqliteConfig};
use parking_lot::RwLock;

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

    pub fn is_postgres(self) -> bool {
        self != Placement::Sqlite
    }
}

/// The server of a Postgres tenant whose catalog row names none: rows from before the
/// server pool, all made on the `--postgres-url` server.
pub const DEFAULT_SERVER: &str = "default";

/// Where exactly a tenant lives: its placement and, in Postgres, its server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub placement: Placement,
    /// `None` for SQLite.
    pub server: Option<String>,
}

impl Location {
    pub(crate) fn from_catalog(
        tenant: &str,
        storage: Option<&str>,
        server: Option<&str>,
    ) -> Result<Location, AppError> {
        let placement = Placement::from_catalog(tenant, storage)?;
        let server = placement
            .is_postgres()
            .then(|| server.unwrap_or(DEFAULT_SERVER).to_string());
        Ok(Location { placement, server })
    }
}

impl Location {
    /// Reads a catalog's `retired` value (`<placement>@<server>`, see `graduate.rs`).
    pub(crate) fn parse_retired(text: &str) -> Option<Location> {
        let (placement, server) = text.split_once('@')?;
        let placement = Placement::parse(placement)?;
        Some(Location {
            placement,
            server: placement.is_postgres().then(|| server.to_string()),
        })
    }
}

/// How new Postgres tenants are spread over the servers (`--placement`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlacementPolicy {
    /// The server with the fewest tenants per connection of its `max_connections`
    /// (ties: the first by name).
    #[default]
    LeastLoaded,
    /// Each server in turn, by name.
    RoundRobin,
}

impl PlacementPolicy {
    pub fn name(self) -> &'static str {
        match self {
            PlacementPolicy::LeastLoaded => "least-loaded",
            PlacementPolicy::RoundRobin => "round-robin",
        }
    }

    pub fn parse(name: &str) -> Option<PlacementPolicy> {
        [PlacementPolicy::LeastLoaded, PlacementPolicy::RoundRobin]
            .into_iter()
            .find(|p| p.name() == name)
    }
}

/// One Postgres server of the pool, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// `a-z`, `0-9` and `-`, at most 32 characters.
    pub name: String,
    /// Direct URL: control connections, the dedicated tier, and the database that holds
    /// the shared tier's schemas (created when missing).
    pub url: String,
    /// The shared tier's runtime connections (PgBouncer in transaction mode); direct when
    /// absent.
    pub pooler_url: Option<String>,
    /// The server's connection limit for placement and the capacity report; read from the
    /// server (`SHOW max_connections`) when absent.
    pub max_connections: Option<i64>,
}

impl ServerSettings {
    pub fn new(name: impl Into<String>, url: impl Into<String>) -> ServerSettings {
        ServerSettings {
            name: name.into(),
            url: url.into(),
            pooler_url: None,
            max_connections: None,
        }
    }

    /// Parses `--postgres-server`: space-separated `key=value` pairs, keys `name`, `url`,
    /// `pooler` and `max-connections`.
    pub fn parse_flag(text: &str) -> Result<ServerSettings, String> {
        let mut fields: HashMap<&str, &str> = HashMap::new();
        for pair in text.split_whitespace() {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(format!("expected key=value, found {pair:?}"));
            };
            if !["name", "url", "pooler", "max-connections"].contains(&key) {
                return Err(format!(
                    "unknown key {key:?}: one of name, url, pooler, max-connections"
                ));
            }
            if fields.insert(key, value).is_some() {
                return Err(format!("{key} is given twice"));
            }
        }
        let (Some(name), Some(url)) = (fields.get("name"), fields.get("url")) else {
            return Err("name=... and url=... are required".into());
        };
        let max_connections = match fields.get("max-connections") {
            None => None,
            Some(n) => Some(
                n.parse::<i64>()
                    .map_err(|_| format!("max-connections must be a number, not {n:?}"))?,
            ),
        };
        let settings = ServerSettings {
            name: name.to_string(),
            url: url.to_string(),
            pooler_url: fields.get("pooler").map(|p| p.to_string()),
            max_connections,
        };
        settings.check()?;
        Ok(settings)
    }

    /// Refuses a bad name or connection limit (URLs are checked when the server opens).
    pub fn check(&self) -> Result<(), String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 32
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            return Err(format!(
                "invalid server name {:?}: 1 to 32 of a-z, 0-9 and -",
                self.name
            ));
        }
        if let Some(n) = self.max_connections {
            if !(1..=1_000_000).contains(&n) {
                return Err(format!(
                    "max connections of server {:?} must be 1 to 1000000, not {n}",
                    self.name
                ));
            }
        }
        Ok(())
    }
}

/// How to reach Postgres (`nimbus serve --postgres-url ... --postgres-server ...`).
#[derive(Debug, Clone)]
pub struct PostgresSettings {
    /// The servers given at start (servers added through the admin API come from the
    /// catalog).
    pub servers: Vec<ServerSettings>,
    /// Runtime connections one active tenant may hold, per tier.
    pub max_connections_per_tenant: usize,
    /// Prepended to tenant names to name their schemas and databases.
    pub prefix: String,
    pub policy: PlacementPolicy,
    /// Bound on one storage call of a tenant (`PostgresConfig::operation_timeout`).
    pub operation_timeout: std::time::Duration,
}

impl Default for PostgresSettings {
    fn default() -> Self {
        PostgresSettings {
            servers: Vec::new(),
            max_connections_per_tenant: 4,
            prefix: "nimbus_".into(),
            policy: PlacementPolicy::default(),
            operation_timeout: std::time::Duration::from_secs(30),
        }
    }
}

impl PostgresSettings {
    /// One server, named [`DEFAULT_SERVER`].
    pub fn new(url: impl Into<String>) -> PostgresSettings {
        PostgresSettings {
            servers: vec![ServerSettings::new(DEFAULT_SERVER, url)],
            ..PostgresSettings::default()
        }
    }
}

/// Where a server's settings came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerOrigin {
    /// Flags at start.
    Config,
    /// `POST /admin/servers`, kept in the catalog.
    Api,
}

/// One open Postgres server: both tiers' backends.
pub struct Server {
    pub settings: ServerSettings,
    pub origin: ServerOrigin,
    /// `settings.max_connections`, or what the server said when it was opened.
    pub max_connections: i64,
    pub(crate) shared: Arc<PostgresBackend>,
    pub(crate) dedicated: Arc<PostgresBackend>,
}

impl Server {
    /// Connects to a server (blocking: call from a blocking thread) and opens both tiers.
    fn open(
        settings: ServerSettings,
        origin: ServerOrigin,
        common: &PostgresSettings,
    ) -> Result<Server, String> {
        settings.check()?;
        let open = |tier: Tier| -> Result<Arc<PostgresBackend>, String> {
            let mut config = PostgresConfig::new(settings.url.clone(), tier);
            config.pooler_url = settings.pooler_url.clone();
            config.max_connections_per_namespace = common.max_connections_per_tenant;
            config.prefix = common.prefix.clone();
            config.operation_timeout = common.operation_timeout;
            PostgresBackend::new(config).map(Arc::new).map_err(|e| {
                format!(
                    "opening Postgres server {:?} ({} tier): {e}",
                    settings.name,
                    tier.name()
                )
            })
        };
        let shared = open(Tier::Shared)?;
        let dedicated = open(Tier::Dedicated)?;
        let max_connections = match settings.max_connections {
            Some(n) => n,
            None => {
                shared
                    .sample_server()
                    .map_err(|e| {
                        format!(
                            "reading max_connections of Postgres server {:?}: {e}",
                            settings.name
                        )
                    })?
                    .max_connections
            }
        };
        Ok(Server {
            settings,
            origin,
            max_connections,
            shared,
            dedicated,
        })
    }

    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// The backend of one of this server's tiers.
    pub(crate) fn tier(&self, placement: Placement) -> Option<&Arc<PostgresBackend>> {
        match placement {
            Placement::Sqlite => None,
            Placement::PostgresShared => Some(&self.shared),
            Placement::PostgresDedicated => Some(&self.dedicated),
        }
    }
}

/// The backends of one instance.
pub(crate) struct Backends {
    sqlite: Arc<dyn StorageBackend>,
    common: PostgresSettings,
    servers: RwLock<BTreeMap<String, Arc<Server>>>,
    round_robin: AtomicUsize,
}

impl Backends {
    /// Opens SQLite and every configured Postgres server (`stored`: the servers added
    /// through the admin API earlier; a configured server of the same name wins).
    pub(crate) fn open(
        data_dir: &std::path::Path,
        postgres: Option<&PostgresSettings>,
        stored: Vec<ServerSettings>,
    ) -> Result<Backends, AppError> {
        let sqlite = SqliteBackend::new(data_dir.to_path_buf(), SqliteConfig::default())
            .map_err(|e| AppError::Internal(format!("opening SQLite storage: {e}")))?;
        let common = postgres.cloned().unwrap_or_default();
        let mut servers = BTreeMap::new();
        for settings in &common.servers {
            if servers.contains_key(&settings.name) {
                return Err(AppError::BadRequest(format!(
                    "Postgres server {:?} is configured twice",
                    settings.name
                )));
            }
            let server = Server::open(settings.clone(), ServerOrigin::Config, &common)
                .map_err(AppError::Internal)?;
            servers.insert(settings.name.clone(), Arc::new(server));
        }
        for settings in stored {
            if let Some(configured) = servers.get(&settings.name) {
                if configured.settings != settings {
                    tracing::warn!(server = %settings.name, "a configured Postgres server has the name of one added through the admin API; the configured one is used");
                }
                continue;
            }
            let name = settings.name.clone();
            let server =
                Server::open(settings, ServerOrigin::Api, &common).map_err(AppError::Internal)?;
            servers.insert(name, Arc::new(server));
        }
        Ok(Backends {
            sqlite: Arc::new(sqlite),
            common,
            servers: RwLock::new(servers),
            round_robin: AtomicUsize::new(0),
        })
    }

    /// The backend of a location; the message says how to configure it when this instance
    /// was started without it.
    pub(crate) fn get(&self, location: &Location) -> Result<Arc<dyn StorageBackend>, String> {
        let Some(server_name) = location.server.as_deref() else {
            return Ok(self.sqlite.clone());
        };
        let servers = self.servers.read();
        let Some(server) = servers.get(server_name) else {
            return Err(if servers.is_empty() {
                format!(
                    "storage {:?} is not configured on this server: start it with --postgres-url",
                    location.placement.name()
                )
            } else {
                format!("Postgres server {server_name:?} is not configured on this instance")
            });
        };
        match server.tier(location.placement) {
            Some(backend) => Ok(backend.clone() as Arc<dyn StorageBackend>),
            None => Ok(self.sqlite.clone()),
        }
    }

    /// Where a new tenant of `placement` goes: `server` when named, else the policy's
    /// choice. `tenants_per_server` counts the Postgres tenants each server holds now.
    pub(crate) fn choose(
        &self,
        placement: Placement,
        server: Option<&str>,
        tenants_per_server: &HashMap<String, i64>,
    ) -> Result<Location, String> {
        if !placement.is_postgres() {
            if let Some(server) = server {
                return Err(format!(
                    "server {server:?} was named, but storage \"sqlite\" is local to this instance"
                ));
            }
            return Ok(Location {
                placement,
                server: None,
            });
        }
        let servers = self.servers.read();
        if servers.is_empty() {
            return Err(format!(
                "storage {:?} is not configured on this server: start it with --postgres-url",
                placement.name()
            ));
        }
        let chosen = match server {
            Some(name) if servers.contains_key(name) => name.to_string(),
            Some(name) => {
                return Err(format!(
                    "unknown Postgres server {name:?}: one of {}",
                    servers.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            }
            None => match self.common.policy {
                PlacementPolicy::RoundRobin => {
                    let turn = self.round_robin.fetch_add(1, Ordering::Relaxed) % servers.len();
                    servers.keys().nth(turn).cloned().unwrap_or_default()
                }
                PlacementPolicy::LeastLoaded => servers
                    .values()
                    .min_by(|a, b| {
                        // tenants_a / max_a < tenants_b / max_b, compared without division
                        let load = |s: &Server| tenants_per_server.get(s.name()).copied();
                        let a_load =
                            i128::from(load(a).unwrap_or(0)) * i128::from(b.max_connections);
                        let b_load =
                            i128::from(load(b).unwrap_or(0)) * i128::from(a.max_connections);
                        a_load.cmp(&b_load)
                    })
                    .map(|s| s.name().to_string())
                    .unwrap_or_default(),
            },
        };
        Ok(Location {
            placement,
            server: Some(chosen),
        })
    }

    /// Refuses a tenant name the location cannot store (Postgres names are at most 63
    /// bytes, prefix included).
    pub(crate) fn check_name(&self, location: &Location, name: &str) -> Result<(), String> {
        let Some(server) = location.server.as_deref() else {
            return Ok(());
        };
        let servers = self.servers.read();
        let backend = servers.get(server).and_then(|s| s.tier(location.placement));
        match backend {
            Some(backend) if name.len() > backend.max_namespace_len() => Err(format!(
                "tenant name {name:?} is too long for {}: at most {} characters there \
                 (Postgres names have 63 bytes, and --postgres-prefix comes first)",
                location.placement.name(),
                backend.max_namespace_len()
            )),
            _ => Ok(()),
        }
    }

    /// The Postgres servers, by name.
    pub(crate) fn servers(&self) -> Vec<Arc<Server>> {
        self.servers.read().values().cloned().collect()
    }

    pub(crate) fn server(&self, name: &str) -> Option<Arc<Server>> {
        self.servers.read().get(name).cloned()
    }

    pub(crate) fn policy(&self) -> PlacementPolicy {
        self.common.policy
    }

    /// Connects to a new server and adds it to the pool (blocking). The caller has checked
    /// the name is free and records it durably.
    pub(crate) fn open_server(&self, settings: ServerSettings) -> Result<Arc<Server>, String> {
        Server::open(settings, ServerOrigin::Api, &self.common).map(Arc::new)
    }

    /// Adds an opened server; false when the name was taken meanwhile.
    pub(crate) fn insert_server(&self, server: Arc<Server>) -> bool {
        let mut servers = self.servers.write();
        if servers.contains_key(server.name()) {
            return false;
        }
        servers.insert(server.name().to_string(), server);
        true
    }

    pub(crate) fn remove_server(&self, name: &str) -> Option<Arc<Server>> {
        self.servers.write().remove(name)
    }
}

/// A URL with its password hidden, for reports.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn server_flags_parse_and_bad_ones_are_refused_clearly() {
        let s = ServerSettings::parse_flag(
            "name=b url=postgres://u@h:1/db pooler=postgres://u@h:2/db max-connections=50",
        )
        .unwrap();
        assert_eq!(s.name, "b");
        assert_eq!(s.url, "postgres://u@h:1/db");
        assert_eq!(s.pooler_url.as_deref(), Some("postgres://u@h:2/db"));
        assert_eq!(s.max_connections, Some(50));
        for (bad, says) in [
            ("url=postgres://h", "required"),
            ("name=b url=x colour=red", "unknown key"),
            ("name=B url=x", "invalid server name"),
            ("name=b url=x max-connections=0", "1 to 1000000"),
            ("name=b url=x max-connections=many", "must be a number"),
            ("name=b name=c url=x", "twice"),
            ("name=b url", "key=value"),
        ] {
            let error = ServerSettings::parse_flag(bad).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }

    #[test]
    fn passwords_are_hidden_in_reported_urls() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db?x=1"),
            "postgres://u:***@h:5432/db?x=1"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("host=h user=u"), "host=h user=u");
    }
}

//! The PostgreSQL storage backend: one schema per tenant namespace (the shared tier) or one
//! database per namespace (the dedicated tier).
//!
//! Layout of a namespace: schema `<prefix><namespace>` holding `documents`, `index_entries`,
//! `globals`, `meta` (`format_version`, `max_ts`) and `receipts` (see [`sql`]). In the
//! dedicated tier the schema of the same name lives in a database of that name, so both
//! tiers run the same statements.
//!
//! Two kinds of connection:
//! - **control** (creating, deleting and finding namespaces): always direct to Postgres,
//!   opened per operation and closed after it. Creating or dropping a schema runs in one
//!   transaction holding a transaction-scoped advisory lock on the name, so two Nimbus
//!   processes cannot race on it.
//! - **runtime** (a namespace's reads and writes): a bounded pool per open namespace
//!   (`max_connections_per_namespace`), to the pooler URL in the shared tier (PgBouncer in
//!   transaction mode) or direct to the namespace's database in the dedicated tier. A pool
//!   closes with its namespace, so a tenant that Nimbus released as idle holds no
//!   connection. When the pool is exhausted a caller waits up to `wait_timeout`, then gets
//!   [`StorageError::Busy`].
//!
//! Every runtime statement is correct under transaction pooling: schema-qualified names,
//! unnamed statements (`query_typed`), no `SET`, no session advisory locks, no `LISTEN`.
//! Durability is Postgres's: a batch is one transaction, acknowledged after `COMMIT`
//! returns (the server's `synchronous_commit` decides what that means; its default, `on`,
//! is a flushed WAL record).

mod bridge;
mod capacity;
mod error;
mod sql;
mod store;

use std::sync::Arc;
use std::time::Duration;

use nimbus_storage::{StorageBackend, StorageError, TenantStore};
use tokio_postgres::error::SqlState;
use tokio_postgres::{GenericClient, NoTls};

use crate::bridge::Bridge;
pub use crate::capacity::{PoolerPool, PoolerSample, ServerSample};
use crate::error::pg;
use crate::sql::ident;

/// Where a namespace lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// A schema in the shared database, reached through the pooler.
    Shared,
    /// A database of its own, reached directly.
    Dedicated,
}

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Tier::Shared => "shared",
            Tier::Dedicated => "dedicated",
        }
    }
}

/// Tunables of the backend.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// Direct connection URL (`postgres://user@host:port/database`). Control connections
    /// use it; in the shared tier its database holds the tenants' schemas (created if
    /// missing); in the dedicated tier it is where `CREATE DATABASE` runs.
    pub url: String,
    /// Runtime connections of the shared tier (a PgBouncer in transaction mode); `None`
    /// connects directly with `url`. Ignored by the dedicated tier.
    pub pooler_url: Option<String>,
    pub tier: Tier,
    /// Prepended to each namespace to name its schema (and database): lowercase letters,
    /// digits and `_`, at most 20 bytes.
    pub prefix: String,
    /// Runtime connections one open namespace may hold.
    pub max_connections_per_namespace: usize,
    /// How long a read or write waits for a pooled connection before failing as busy.
    pub wait_timeout: Duration,
    /// Bound on opening one connection.
    pub connect_timeout: Duration,
    /// Bound on one call of a namespace (waiting for a connection, connecting, and its
    /// statements): past it the call fails as busy and its connections are closed, so a
    /// server or pooler that stops answering (PgBouncer holds a client up to its
    /// `query_wait_timeout`, 120 s by default) never holds a request longer.
    pub operation_timeout: Duration,
}

impl PostgresConfig {
    pub fn new(url: impl Into<String>, tier: Tier) -> PostgresConfig {
        PostgresConfig {
            url: url.into(),
            pooler_url: None,
            tier,
            prefix: "nimbus_".into(),
            max_connections_per_namespace: 4,
            wait_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(30),
        }
    }
}

/// Postgres identifiers are cut at 63 bytes; a longer name would silently collide.
const MAX_IDENTIFIER: usize = 63;

/// Many namespaces in one Postgres server.
pub struct PostgresBackend {
    config: PostgresConfig,
    control: tokio_postgres::Config,
    pooler: tokio_postgres::Config,
    bridge: Arc<Bridge>,
}

fn parse_url(url: &str, what: &str) -> Result<tokio_postgres::Config, StorageError> {
    url.parse::<tokio_postgres::Config>()
        .map_err(|e| StorageError::Io(format!("invalid {what} {url:?}: {e}")))
}

impl PostgresBackend {
    /// Checks the configuration, connects once (creating the shared tier's database when
    /// it is missing) and removes what interrupted dedicated-tier creations left behind.
    pub fn new(config: PostgresConfig) -> Result<PostgresBackend, StorageError> {
        let prefix_ok = !config.prefix.is_empty()
            && config.prefix.len() <= 20
            && config
                .prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !prefix_ok {
            return Err(StorageError::Io(format!(
                "invalid postgres name prefix {:?}: 1 to 20 of a-z, 0-9 and _",
                config.prefix
            )));
        }
        let mut control = parse_url(&config.url, "postgres URL")?;
        control.connect_timeout(config.connect_timeout);
        if control.get_dbname().is_none() {
            control.dbname("postgres");
        }
        let mut pooler = match &config.pooler_url {
            Some(url) if config.tier == Tier::Shared => parse_url(url, "pooler URL")?,
            _ => control.clone(),
        };
        pooler.connect_timeout(config.connect_timeout);
        if pooler.get_dbname().is_none() {
            pooler.dbname(control.get_dbname().unwrap_or("postgres"));
        }
        let backend = PostgresBackend {
            bridge: Arc::new(Bridge::new(2)?),
            control,
            pooler,
            config,
        };
        let (control, prefix, tier) = (
            backend.control.clone(),
            backend.config.prefix.clone(),
            backend.config.tier,
        );
        backend.bridge.run(async move {
            let client = connect_creating_database(&control).await?;
            if tier == Tier::Dedicated {
                let leftovers = client
                    .query_typed(
                        "SELECT datname FROM pg_database WHERE starts_with(datname, $1)",
                        &[(&format!("{prefix}."), tokio_postgres::types::Type::TEXT)],
                    )
                    .await
                    .map_err(|e| pg("list leftovers", "", e))?;
                for row in leftovers {
                    let name: String = row.try_get(0).map_err(|e| pg("list leftovers", "", e))?;
                    tracing::info!(database = %name, "dropping what an interrupted namespace operation left");
                    client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", ident(&name)))
                        .await
                        .map_err(|e| pg("drop leftover", &name, e))?;
                }
            }
            Ok(())
        })?;
        Ok(backend)
    }

    /// The schema (and, in the dedicated tier, database) of a namespace.
    fn object_name(&self, namespace: &str) -> Result<String, StorageError> {
        let ok = !namespace.is_empty()
            && namespace
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let name = format!("{}{namespace}", self.config.prefix);
        if !ok || name.len() > MAX_IDENTIFIER {
            return Err(StorageError::Io(format!(
                "invalid namespace name {namespace:?}: a-z, 0-9 and -, at most {} bytes",
                MAX_IDENTIFIER - self.config.prefix.len()
            )));
        }
        Ok(name)
    }

    pub fn tier(&self) -> Tier {
        self.config.tier
    }

    /// The longest namespace name this backend takes: Postgres cuts identifiers at 63
    /// bytes, and the prefix comes first.
    pub fn max_namespace_len(&self) -> usize {
        MAX_IDENTIFIER - self.config.prefix.len()
    }
}

/// Opens one direct connection, its driver task on the current (the backend's) runtime.
async fn connect(config: &tokio_postgres::Config) -> Result<tokio_postgres::Client, StorageError> {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| pg("connect", config.get_dbname().unwrap_or(""), e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres control connection ended");
        }
    });
    Ok(client)
}

/// Connects to the configured database, creating it first when it does not exist.
async fn connect_creating_database(
    config: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, StorageError> {
    match config.connect(NoTls).await {
        Ok((client, connection)) => {
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok(client)
        }
        Err(e) if error::is(&e, &SqlState::INVALID_CATALOG_NAME) => {
            let name = config.get_dbname().unwrap_or("postgres").to_string();
            let mut maintenance = config.clone();
            maintenance.dbname("postgres");
            let admin = connect(&maintenance).await?;
            match create_database(&admin, &name).await {
                Ok(()) => tracing::info!(database = %name, "created the postgres database"),
                // Another process created it first.
                Err(StorageError::NamespaceExists(_)) => {}
                Err(e) => return Err(e),
            }
            connect(config).await
        }
        Err(e) => Err(pg("connect", config.get_dbname().unwrap_or(""), e)),
    }
}

/// `CREATE DATABASE` (see [`database_ddl`]).
async fn create_database(admin: &tokio_postgres::Client, name: &str) -> Result<(), StorageError> {
    let statement = format!("CREATE DATABASE {}", ident(name));
    database_ddl(admin, &statement, name, "create database").await
}

/// Runs a statement that creates or renames a database, retried while a database it needs
/// is in use: Postgres refuses to copy a template that another session is connected to (a
/// concurrent `CREATE DATABASE` is such a session), and to rename a database that has
/// sessions (a closed client's server process exits a moment after the client).
/// [`StorageError::NamespaceExists`] when the target name is taken.
async fn database_ddl(
    admin: &tokio_postgres::Client,
    statement: &str,
    namespace: &str,
    what: &str,
) -> Result<(), StorageError> {
    let mut waited = Duration::ZERO;
    loop {
        match admin.batch_execute(statement).await {
            Ok(()) => return Ok(()),
            // Two concurrent creations of one name: the loser may see the catalog's unique
            // index rather than the friendlier "already exists".
            Err(e)
                if error::is(&e, &SqlState::DUPLICATE_DATABASE)
                    || error::is(&e, &SqlState::UNIQUE_VIOLATION) =>
            {
                return Err(StorageError::NamespaceExists(namespace.to_string()))
            }
            Err(e) if error::is(&e, &SqlState::OBJECT_IN_USE) && waited < BUSY_RETRY => {
                tokio::time::sleep(BUSY_PAUSE).await;
                waited += BUSY_PAUSE;
            }
            Err(e) => return Err(pg(what, namespace, e)),
        }
    }
}

/// How long a control operation retries while a database it needs is in use.
const BUSY_RETRY: Duration = Duration::from_secs(10);
const BUSY_PAUSE: Duration = Duration::from_millis(20);

/// Whether a database exists and is usable (an interrupted `DROP DATABASE` leaves it
/// marked invalid with `datconnlimit = -2`; such a database only waits to be dropped).
async fn database_exists(client: &impl GenericClient, name: &str) -> Result<bool, StorageError> {
    let query = "SELECT 1 FROM pg_database WHERE datname = $1 AND datconnlimit <> -2";
    catalog_has(client, query, name, "find database").await
}

async fn schema_exists(client: &impl GenericClient, name: &str) -> Result<bool, StorageError> {
    let query = "SELECT 1 FROM pg_namespace WHERE nspname = $1";
    catalog_has(client, query, name, "find schema").await
}

/// Whether a query of the system catalogs by one name finds a row.
async fn catalog_has(
    client: &impl GenericClient,
    query: &str,
    name: &str,
    what: &str,
) -> Result<bool, StorageError> {
    let row = client
        .query_typed_opt(query, &[(&name, tokio_postgres::types::Type::TEXT)])
        .await
        .map_err(|e| pg(what, name, e))?;
    Ok(row.is_some())
}

/// Creates a schema and its tables in one transaction, under an advisory lock on the name.
async fn create_schema(
    client: &mut tokio_postgres::Client,
    namespace: &str,
    schema: &str,
) -> Result<(), StorageError> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| pg("begin", namespace, e))?;
    lock_name(&tx, namespace, schema).await?;
    if schema_exists(&tx, schema).await? {
        return Err(StorageError::NamespaceExists(namespace.to_string()));
    }
    tx.batch_execute(&sql::create_schema(schema))
        .await
        .map_err(|e| {
            if error::is(&e, &SqlState::DUPLICATE_SCHEMA) {
                StorageError::NamespaceExists(namespace.to_string())
            } else {
                pg("create schema", namespace, e)
            }
        })?;
    tx.commit().await.map_err(|e| pg("commit", namespace, e))
}

/// Serializes control operations on one name across Nimbus processes (released at the end
/// of the transaction, so it is safe even through a transaction pooler).
async fn lock_name(
    tx: &tokio_postgres::Transaction<'_>,
    namespace: &str,
    name: &str,
) -> Result<(), StorageError> {
    tx.execute_typed(
        "SELECT pg_advisory_xact_lock(hashtextextended('nimbus namespace ' || $1, 0))",
        &[(&name, tokio_postgres::types::Type::TEXT)],
    )
    .await
    .map_err(|e| pg("lock namespace", namespace, e))?;
    Ok(())
}

impl StorageBackend for PostgresBackend {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn create_namespace(&self, namespace: &str) -> Result<(), StorageError> {
        let name = self.object_name(namespace)?;
        let namespace = namespace.to_string();
        let control = self.control.clone();
        match self.config.tier {
            Tier::Shared => self.bridge.run(async move {
                let mut client = connect(&control).await?;
                create_schema(&mut client, &namespace, &name).await
            }),
            Tier::Dedicated => self.bridge.run(async move {
                let admin = connect(&control).await?;
                if database_exists(&admin, &name).await? {
                    return Err(StorageError::NamespaceExists(namespace));
                }
                // Built under a temporary name and renamed when complete, so the namespace
                // appears in one step; `new` drops temporaries a crash left behind.
                let building = format!(
                    "{}.creating.{:016x}",
                    &name[..name.len().min(30)],
                    rand_u64()
                );
                create_database(&admin, &building).await?;
                let built = async {
                    let mut inside = control.clone();
                    inside.dbname(&building);
                    let mut client = connect(&inside).await?;
                    create_schema(&mut client, &namespace, &name).await?;
                    drop(client);
                    let rename = format!(
                        "ALTER DATABASE {} RENAME TO {}",
                        ident(&building),
                        ident(&name)
                    );
                    database_ddl(&admin, &rename, &namespace, "rename database").await
                }
                .await;
                if built.is_err() {
                    let _ = admin
                        .batch_execute(&format!(
                            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                            ident(&building)
                        ))
                        .await;
                }
                built
            }),
        }
    }

    fn open_namespace(&self, namespace: &str) -> Result<Arc<dyn TenantStore>, StorageError> {
        let name = self.object_name(namespace)?;
        let mut runtime = self.pooler.clone();
        if self.config.tier == Tier::Dedicated {
            runtime.dbname(&name);
        }
        let store = store::PostgresStore::open(
            namespace,
            &name,
            runtime,
            &self.config,
            self.bridge.clone(),
        )?;
        Ok(Arc::new(store))
    }

    fn delete_namespace(&self, namespace: &str) -> Result<(), StorageError> {
        let name = self.object_name(namespace)?;
        let namespace = namespace.to_string();
        let control = self.control.clone();
        match self.config.tier {
            Tier::Shared => self.bridge.run(async move {
                let mut client = connect(&control).await?;
                let tx = client
                    .transaction()
                    .await
                    .map_err(|e| pg("begin", &namespace, e))?;
                lock_name(&tx, &namespace, &name).await?;
                if !schema_exists(&tx, &name).await? {
                    return Err(StorageError::NamespaceNotFound(namespace));
                }
                tx.batch_execute(&format!("DROP SCHEMA {} CASCADE", ident(&name)))
                    .await
                    .map_err(|e| pg("drop schema", &namespace, e))?;
                tx.commit().await.map_err(|e| pg("commit", &namespace, e))
            }),
            Tier::Dedicated => self.bridge.run(async move {
                let admin = connect(&control).await?;
                // Invalid databases too: an interrupted drop is finished here.
                let query = "SELECT 1 FROM pg_database WHERE datname = $1";
                if !catalog_has(&admin, query, &name, "find database").await? {
                    return Err(StorageError::NamespaceNotFound(namespace));
                }
                // FORCE ends the sessions of handles a caller still holds (their next
                // statement fails); DROP DATABASE is atomic from Postgres 15.4 on, and an
                // interrupted one leaves an invalid database that `namespace_exists` skips.
                admin
                    .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", ident(&name)))
                    .await
                    .map_err(|e| pg("drop database", &namespace, e))
            }),
        }
    }

    fn namespace_exists(&self, namespace: &str) -> Result<bool, StorageError> {
        let name = self.object_name(namespace)?;
        let control = self.control.clone();
        let tier = self.config.tier;
        self.bridge.run(async move {
            let client = connect(&control).await?;
            match tier {
                Tier::Shared => schema_exists(&client, &name).await,
                Tier::Dedicated => database_exists(&client, &name).await,
            }
        })
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded per process and per instance: unique enough for a temporary
    // name that also carries the namespace.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

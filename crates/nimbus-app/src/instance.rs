//! `Nimbus`: one server instance — the tenant catalog, the storage backend, the JS pool
//! and the active tenants.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use nimbus_engine::{EngineError, StoreOpener, TenantEngine};
use nimbus_runtime::JsPool;
use nimbus_storage::{StorageBackend, StorageError};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use crate::catalog::{TenantCatalog, TenantRow};
use crate::config::NimbusConfig;
use crate::error::AppError;
use crate::is_valid_tenant_name;
use crate::limits::LimitOverrides;
use crate::placement::{Backends, Location, Placement, DEFAULT_SERVER};
use crate::tenant::Tenant;

/// Held while a tenant graduates.
pub(crate) struct GraduationGuard<'a> {
    nimbus: &'a Nimbus,
    tenant: String,
}

impl Drop for GraduationGuard<'_> {
    fn drop(&mut self) {
        self.nimbus.graduating.lock().remove(&self.tenant);
    }
}

/// A tenant just created, with its admin key (shown once; only its hash is kept).
#[derive(Debug, Clone)]
pub struct CreatedTenant {
    pub name: String,
    pub url: String,
    pub admin_key: String,
}

/// A tenant as listed by the admin API.
#[derive(Debug, Clone)]
pub struct TenantInfo {
    pub name: String,
    pub url: String,
    pub created_at_ms: u64,
    /// Its limit overrides (set with `PATCH /admin/tenants/<t>`).
    pub limit_overrides: crate::limits::LimitOverrides,
    /// The limits in force: the overrides over the instance defaults.
    pub limits: crate::limits::TenantLimits,
    /// Where its namespace lives.
    pub storage: Placement,
    /// Its Postgres server (`None` for SQLite).
    pub server: Option<String>,
    /// Whether a graduation is moving it now (it cannot be deleted meanwhile).
    pub graduating: bool,
}

/// A tenant's place in the active map: empty while the tenant is being activated.
type Slot = Arc<OnceCell<Arc<Tenant>>>;

#[derive(Default)]
struct ActiveTenants {
    slots: HashMap<String, Slot>,
    /// Names whose deletion is under way: no slot may be added for them until it is done,
    /// so an activation can never start (or finish) over a namespace being removed.
    deleting: std::collections::HashSet<String>,
}

/// One Nimbus server instance.
pub struct Nimbus {
    config: NimbusConfig,
    admin_key_hash: String,
    admin_key_path: PathBuf,
    catalog: Arc<TenantCatalog>,
    storage: Backends,
    pool: Arc<JsPool>,
    /// Fetches auth providers' keys for every tenant, under the egress policy.
    key_fetcher: Arc<crate::auth::KeyFetcher>,
    fetcher: Arc<crate::fetch::Fetcher>,
    /// The journal SQLite tenants commit through (`--journal`), shared by all of them.
    journal: Option<Arc<nimbus_journal::Journal>>,
    /// Tenants being graduated (one graduation per tenant at a time).
    graduating: parking_lot::Mutex<std::collections::HashSet<String>>,
    /// Active tenants, tenants being activated, and tenants being deleted. The lock is held
    /// only to look up, insert or remove, never across an activation: opening one tenant
    /// (storage, documents, code) must not stall requests to tenants that are already
    /// active. A slot's cell makes concurrent requests to the same inactive tenant share
    /// one activation.
    active: parking_lot::Mutex<ActiveTenants>,
    /// Permits to open a tenant (`max_concurrent_activations`).
    activations: tokio::sync::Semaphore,
    /// Logical clock for least-recently-used eviction of idle tenants.
    clock: std::sync::atomic::AtomicU64,
    /// Held while a tenant's limits change, so changes apply in the order they are stored.
    limits_lock: tokio::sync::Mutex<()>,
    /// This instance, for its tenants' scheduler tasks (see [`Nimbus::current_tenant`]).
    me: std::sync::Weak<Nimbus>,
}

/// What an active tenant is counted at before it holds data: its engine, committer,
/// storage connections and their page caches, JS runtimes on its home workers, maps.
/// An estimate; [`Tenant::memory_bytes`] adds what it holds on top.
pub const TENANT_BASE_BYTES: usize = 4 << 20;

/// Shortest instance admin key accepted (a generated one has 61 characters).
pub const MIN_ADMIN_KEY_LEN: usize = 32;

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Constant-time comparison of two hex digests.
fn same_digest(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn random_secret() -> String {
    hex::encode(rand::random::<[u8; 24]>())
}

pub(crate) fn storage_error(tenant: &str, context: &str, e: StorageError) -> AppError {
    match e {
        // A networked backend that is unreachable or out of connections: retry later.
        StorageError::Busy(detail) => AppError::Unavailable {
            tenant: tenant.to_string(),
            detail: format!("{context}: storage is busy: {detail}"),
        },
        e => AppError::Internal(format!("{context}: {e}")),
    }
}

impl Nimbus {
    /// Opens (or initializes) the data directory and starts the shared JS pool.
    pub async fn open(config: NimbusConfig) -> Result<Arc<Nimbus>, AppError> {
        let private = |path: &std::path::Path| {
            nimbus_storage_sqlite::make_private(path).map_err(|e| {
                AppError::Internal(format!("cannot make {} private: {e}", path.display()))
            })
        };
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            AppError::Internal(format!(
                "cannot create data dir {}: {e}",
                config.data_dir.display()
            ))
        })?;
        private(&config.data_dir)?;
        let admin_key_path = config.data_dir.join("admin_key");
        let admin_key = match &config.admin_key {
            Some(key) if key.len() < MIN_ADMIN_KEY_LEN => {
                return Err(AppError::BadRequest(format!(
                    "the instance admin key is too short: it has {} characters, it needs at \
                     least {MIN_ADMIN_KEY_LEN} (for example 32 random hex digits)",
                    key.len()
                )))
            }
            Some(key) => key.clone(),
            None => load_or_create_admin_key(&admin_key_path)?,
        };
        let catalog_path = config.data_dir.join("nimbus.sqlite3");
        nimbus_storage_sqlite::create_private_file(&catalog_path)
            .map_err(|e| AppError::Internal(format!("creating {}: {e}", catalog_path.display())))?;
        for file in ["nimbus.sqlite3", "nimbus.sqlite3-wal", "nimbus.sqlite3-shm"] {
            let path = config.data_dir.join(file);
            if path.exists() {
                private(&path)?;
            }
        }
        let catalog = Arc::new(TenantCatalog::open(&catalog_path)?);
        let stored_servers = catalog.servers()?;
        let no_servers = config
            .postgres
            .as_ref()
            .is_none_or(|p| p.servers.is_empty())
            && stored_servers.is_empty();
        if config.default_storage != Placement::Sqlite && no_servers {
            return Err(AppError::BadRequest(format!(
                "--storage {} needs --postgres-url (or --postgres-server)",
                config.default_storage.name()
            )));
        }
        let storage = Backends::open(&config.data_dir, config.postgres.as_ref(), stored_servers)?;
        let journal = match &config.journal {
            None => None,
            Some(settings) => {
                let mut journal_config =
                    nimbus_journal::JournalConfig::new(config.data_dir.join("journal"));
                journal_config.max_disk_bytes = settings.max_disk_bytes;
                journal_config.segment_bytes = settings.segment_bytes;
                Some(Arc::new(
                    nimbus_journal::Journal::open(journal_config)
                        .map_err(|e| AppError::Internal(format!("opening the journal: {e}")))?,
                ))
            }
        };
        let pool = Arc::new(
            JsPool::new(config.pool.clone())
                .map_err(|e| AppError::Internal(format!("starting the JS pool: {e}")))?,
        );
        let egress = crate::egress::EgressPolicy::new(config.egress_allow.iter().cloned());
        let key_fetcher =
            Arc::new(crate::auth::KeyFetcher::new(egress.clone()).map_err(AppError::Internal)?);
        let fetcher = Arc::new(
            crate::fetch::Fetcher::new(egress, config.fetch.clone()).map_err(AppError::Internal)?,
        );
        let nimbus = Arc::new_cyclic(|me| Nimbus {
            me: me.clone(),
            key_fetcher,
            fetcher,
            admin_key_hash: sha256_hex(&admin_key),
            admin_key_path,
            catalog,
            storage,
            pool,
            active: parking_lot::Mutex::new(ActiveTenants::default()),
            activations: tokio::sync::Semaphore::new(config.max_concurrent_activations.max(1)),
            clock: std::sync::atomic::AtomicU64::new(0),
            limits_lock: tokio::sync::Mutex::new(()),
            graduating: parking_lot::Mutex::default(),
            journal,
            config,
        });
        nimbus.finish_interrupted()?;
        nimbus.finish_retired()?;
        let behind = nimbus.journaled_tenants_behind()?;
        if !behind.is_empty() {
            nimbus.catch_up_journal(behind).await;
        }
        tokio::spawn(run_waker(Arc::downgrade(&nimbus)));
        Ok(nimbus)
    }

    /// The backend an existing tenant lives in; unavailable (not a client error) when this
    /// server was started without that backend.
    fn backend(
        &self,
        tenant: &str,
        location: &Location,
    ) -> Result<Arc<dyn StorageBackend>, AppError> {
        self.storage
            .get(location)
            .map_err(|detail| AppError::Unavailable {
                tenant: tenant.to_string(),
                detail,
            })
    }

    /// Completes creations and deletions a crash interrupted: both end with the tenant
    /// gone (a creation never returned its key, so nobody can use it).
    fn finish_interrupted(&self) -> Result<(), AppError> {
        for (row, state) in self.catalog.unfinished()? {
            let name = row.name.clone();
            tracing::warn!(tenant = %name, %state, "removing a tenant left unfinished by a crash");
            let location = row.location()?;
            let Ok(storage) = self.backend(&name, &location) else {
                // Left for a start that has that backend; the tenant stays invisible
                // (not active) until then.
                tracing::warn!(tenant = %name, storage = location.placement.name(), server = ?location.server, "cannot finish this tenant's interrupted creation or deletion: its storage is not configured");
                continue;
            };
            if storage
                .namespace_exists(&name)
                .map_err(|e| storage_error(&name, "recovery", e))?
            {
                storage
                    .delete_namespace(&name)
                    .map_err(|e| storage_error(&name, "recovery", e))?;
            }
            self.catalog.remove(&name)?;
        }
        Ok(())
    }

    /// Deletes the namespaces that graduated tenants left where they were before, when a
    /// crash came between the switch and the deletion.
    fn finish_retired(&self) -> Result<(), AppError> {
        for row in self.catalog.retired()? {
            let Some(retired) = row.retired.as_deref() else {
                continue;
            };
            let name = row.name.as_str();
            let Some(location) = Location::parse_retired(retired) else {
                tracing::warn!(
                    tenant = name,
                    retired,
                    "unreadable retired location in the catalog; left alone"
                );
                continue;
            };
            let Ok(storage) = self.backend(name, &location) else {
                tracing::warn!(
                    tenant = name,
                    retired,
                    "cannot delete this tenant's retired namespace: its server is not configured"
                );
                continue;
            };
            tracing::info!(
                tenant = name,
                retired,
                "deleting the namespace a graduation left"
            );
            if storage
                .namespace_exists(name)
                .map_err(|e| storage_error(name, "recovery", e))?
            {
                storage
                    .delete_namespace(name)
                    .map_err(|e| storage_error(name, "recovery", e))?;
            }
            self.catalog.clear_retired(name)?;
        }
        Ok(())
    }

    /// The JavaScript workers' runtime caches (for metrics).
    pub fn js_cache_stats(&self) -> nimbus_runtime::CacheStats {
        self.pool.cache_stats()
    }

    /// This instance, for work handed to another thread.
    pub(crate) fn me(&self) -> Option<Arc<Nimbus>> {
        self.me.upgrade()
    }

    /// The catalog (graduation updates a tenant's location in it).
    pub(crate) fn catalog(&self) -> &Arc<TenantCatalog> {
        &self.catalog
    }

    /// The backend of a tenant's location (503 when this instance lacks it).
    pub(crate) fn backend_of(
        &self,
        tenant: &str,
        location: &Location,
    ) -> Result<Arc<dyn StorageBackend>, AppError> {
        self.backend(tenant, location)
    }

    /// The journal key of a tenant's records.
    fn journal_key(row: &TenantRow) -> nimbus_journal::TenantKey {
        nimbus_journal::TenantKey {
            name: row.name.clone(),
            incarnation: row.incarnation,
        }
    }

    /// Tenants with journal records their storage may not have applied (after a crash),
    /// to be caught up; records of tenants that no longer exist, or of an earlier tenant of
    /// the same name, are forgotten here.
    fn journaled_tenants_behind(&self) -> Result<Vec<TenantRow>, AppError> {
        let Some(journal) = &self.journal else {
            return Ok(Vec::new());
        };
        let mut open = Vec::new();
        for (key, _) in journal.tenants_behind() {
            match self.catalog.get(&key.name)? {
                Some(row)
                    if row.incarnation == key.incarnation
                        && row
                            .location()
                            .is_ok_and(|l| l.placement == Placement::Sqlite) =>
                {
                    open.push(row)
                }
                _ => {
                    tracing::info!(tenant = %key.name, incarnation = key.incarnation, "forgetting the journal records of a tenant that is gone");
                    journal.forget(&key);
                }
            }
        }
        Ok(open)
    }

    /// At start, before anything is served: brings the storage of each tenant in `rows`
    /// up to the journal (without activating it: only its namespace is opened), so the
    /// journal knows every tenant's applied position and can delete old segments again. A
    /// tenant that fails here catches up when it next opens; its records wait for it.
    async fn catch_up_journal(&self, rows: Vec<TenantRow>) {
        let Some(journal) = self.journal.clone() else {
            return;
        };
        let started = std::time::Instant::now();
        let count = rows.len();
        for row in rows {
            let name = row.name.clone();
            let backend = match row.location().and_then(|l| self.backend(&name, &l)) {
                Ok(backend) => backend,
                Err(error) => {
                    tracing::warn!(tenant = %name, %error, "cannot open a tenant to apply its journal records");
                    continue;
                }
            };
            let tenant = nimbus_engine::TenantJournal {
                journal: journal.clone(),
                key: Self::journal_key(&row),
            };
            let caught_up = tokio::task::spawn_blocking(move || {
                let store = backend
                    .open_namespace(&name)
                    .map_err(nimbus_engine::EngineError::from)?;
                tenant.catch_up(store.as_ref()).map(|lsn| (name, lsn))
            })
            .await;
            match caught_up {
                Ok(Ok((name, lsn))) => {
                    tracing::debug!(tenant = %name, applied = lsn.0, "caught up with the journal")
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, "a tenant could not apply its journal records at start; it will when it opens")
                }
                Err(join) => tracing::warn!(%join, "a journal catch-up task failed"),
            }
        }
        tracing::info!(
            tenants = count,
            ms = started.elapsed().as_millis() as u64,
            "tenants caught up with the journal"
        );
    }

    /// The shared journal's figures (`None` without `--journal`).
    pub fn journal_stats(&self) -> Option<nimbus_journal::JournalStats> {
        self.journal.as_ref().map(|j| j.stats())
    }

    /// Deletes the journal segments every tenant has applied (the waker calls it).
    fn truncate_journal(&self) {
        if let Some(journal) = &self.journal {
            if let Err(error) = journal.truncate() {
                tracing::warn!(%error, "deleting applied journal segments failed");
            }
        }
    }

    /// Marks a tenant as graduating until the guard drops; 409 when it already is.
    /// A tenant being deleted is not found. Lock order: `graduating`, then `active` (as in
    /// [`Nimbus::delete_tenant`]), so a graduation and a delete of one name never both
    /// start.
    pub(crate) fn graduation_lock(&self, tenant: &str) -> Result<GraduationGuard<'_>, AppError> {
        let mut graduating = self.graduating.lock();
        if self.active.lock().deleting.contains(tenant) {
            return Err(AppError::TenantNotFound(tenant.to_string()));
        }
        if !graduating.insert(tenant.to_string()) {
            return Err(AppError::Conflict(format!(
                "tenant {tenant:?} is already graduating"
            )));
        }
        drop(graduating);
        Ok(GraduationGuard {
            nimbus: self,
            tenant: tenant.to_string(),
        })
    }

    /// Whether a graduation is moving `tenant` now.
    pub fn is_graduating(&self, tenant: &str) -> bool {
        self.graduating.lock().contains(tenant)
    }

    /// Where the generated instance admin key is written.
    pub fn admin_key_path(&self) -> &std::path::Path {
        &self.admin_key_path
    }

    pub fn check_instance_admin_key(&self, presented: &str) -> Result<(), AppError> {
        if same_digest(&sha256_hex(presented), &self.admin_key_hash) {
            Ok(())
        } else {
            Err(AppError::Unauthenticated)
        }
    }

    pub fn tenant_url(&self, name: &str) -> String {
        format!("{}/t/{name}", self.config.public_url)
    }

    fn info(&self, row: &TenantRow) -> TenantInfo {
        let limit_overrides = LimitOverrides::from_stored(&row.name, row.limits.as_deref());
        TenantInfo {
            name: row.name.clone(),
            url: self.tenant_url(&row.name),
            created_at_ms: row.created_at_ms,
            limits: limit_overrides.resolve(&self.config),
            limit_overrides,
            storage: row
                .storage
                .as_deref()
                .and_then(Placement::parse)
                .unwrap_or_default(),
            server: row.location().ok().and_then(|l| l.server),
            graduating: self.is_graduating(&row.name),
        }
    }

    /// Changes a tenant's limit overrides (`PATCH /admin/tenants/<t>` with `limits`: a
    /// number sets a limit, `null` returns it to the instance default). The change is
    /// checked whole (400, nothing changed, on any bad entry), stored durably, and put in
    /// force at once if the tenant is active or opening; an inactive tenant gets it when
    /// it next opens. Changes are applied one at a time.
    pub async fn set_tenant_limits(
        &self,
        name: &str,
        change: &serde_json::Value,
    ) -> Result<TenantInfo, AppError> {
        let _one_at_a_time = self.limits_lock.lock().await;
        let Some(row) = self.catalog.get(name)? else {
            return Err(AppError::TenantNotFound(name.to_string()));
        };
        let overrides = LimitOverrides::from_stored(name, row.limits.as_deref()).patched(change)?;
        let stored = overrides.to_stored();
        if !self.catalog.set_limits(name, stored.as_deref())? {
            return Err(AppError::TenantNotFound(name.to_string()));
        }
        let limits = overrides.resolve(&self.config);
        // A slot added after the catalog changed reads the new overrides when it opens;
        // one there already is put right here (an opening one once it has opened). The
        // change is stored either way: an activation that fails now leaves it for the next.
        match self.current_tenant(name) {
            Some(crate::scheduler::Lookup::Active(tenant)) => tenant.set_limits(limits),
            Some(crate::scheduler::Lookup::Opening) => {
                if let Ok(tenant) = self.tenant(name).await {
                    tenant.set_limits(limits);
                }
            }
            None => {}
        }
        tracing::info!(tenant = name, limits = %overrides.to_json(), "tenant limits changed");
        Ok(TenantInfo {
            limit_overrides: overrides,
            limits,
            ..self.info(&row)
        })
    }

    /// Creates a tenant where the instance's default storage says.
    pub async fn create_tenant(&self, name: &str) -> Result<CreatedTenant, AppError> {
        self.create_tenant_in(name, None, None).await
    }

    /// Creates a tenant in `storage` (the instance's default when `None`), on `server`
    /// for Postgres (the placement policy's choice when `None`).
    pub async fn create_tenant_in(
        &self,
        name: &str,
        storage: Option<Placement>,
        server: Option<&str>,
    ) -> Result<CreatedTenant, AppError> {
        if !is_valid_tenant_name(name) {
            return Err(AppError::InvalidTenantName(name.to_string()));
        }
        let placement = storage.unwrap_or(self.config.default_storage);
        let load = if placement.is_postgres() && server.is_none() {
            self.catalog.tenants_per_server(DEFAULT_SERVER)?
        } else {
            HashMap::new()
        };
        let location = self
            .storage
            .choose(placement, server, &load)
            .map_err(AppError::BadRequest)?;
        let storage = self.storage.get(&location).map_err(AppError::BadRequest)?;
        self.storage
            .check_name(&location, name)
            .map_err(AppError::BadRequest)?;
        let admin_key = format!("{name}|{}", random_secret());
        let created_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let row = TenantRow {
            name: name.to_string(),
            created_at_ms,
            key_hash: sha256_hex(&admin_key),
            next_due_ms: None,
            limits: None,
            storage: Some(placement.name().to_string()),
            server: location.server.clone(),
            retired: None,
            incarnation: rand::random(),
        };
        self.catalog.insert_creating(&row)?;
        let namespace = name.to_string();
        let created = tokio::task::spawn_blocking(move || {
            if storage.namespace_exists(&namespace)? {
                // Left over from a tenant whose deletion was interrupted: start clean.
                storage.delete_namespace(&namespace)?;
            }
            storage.create_namespace(&namespace)
        })
        .await
        .map_err(|e| AppError::Internal(format!("create task: {e}")))?;
        if let Err(e) = created {
            self.catalog.remove(name)?;
            return Err(storage_error(name, "creating the tenant's storage", e));
        }
        self.catalog.set_active(name)?;
        tracing::info!(tenant = name, storage = placement.name(), server = ?location.server, "tenant created");
        Ok(CreatedTenant {
            name: name.to_string(),
            url: self.tenant_url(name),
            admin_key,
        })
    }

    /// Gives a tenant a new admin key and returns it. The old key stops working at once:
    /// every check reads the key's hash from the catalog, which this updates durably before
    /// returning. Sockets already authenticated with the old key keep their session.
    pub async fn rotate_tenant_admin_key(&self, name: &str) -> Result<String, AppError> {
        let admin_key = format!("{name}|{}", random_secret());
        if !self.catalog.set_key_hash(name, &sha256_hex(&admin_key))? {
            return Err(AppError::TenantNotFound(name.to_string()));
        }
        tracing::info!(tenant = name, "tenant admin key rotated");
        Ok(admin_key)
    }

    pub async fn list_tenants(&self) -> Result<Vec<TenantInfo>, AppError> {
        Ok(self
            .catalog
            .list()?
            .iter()
            .map(|row| self.info(row))
            .collect())
    }

    pub async fn tenant_info(&self, name: &str) -> Result<TenantInfo, AppError> {
        match self.catalog.get(name)? {
            Some(row) => Ok(self.info(&row)),
            None => Err(AppError::TenantNotFound(name.to_string())),
        }
    }

    /// Deletes a tenant: invisible at once; then any activation of it finishes and is
    /// closed, its committer stops after what it already accepted (later writes fail), its
    /// cached runtimes are dropped, and its namespace is removed as a unit. Refused (409)
    /// while a graduation moves the tenant.
    pub async fn delete_tenant(&self, name: &str) -> Result<(), AppError> {
        // First fence off new activations, then take the slot: an activation that already
        // looked the tenant up cannot add a slot after this point.
        // A graduation of this name refuses the delete: its failure cleanup and its drop of
        // the old namespace go by name, and must never meet a new tenant of that name.
        let removed = {
            let graduating = self.graduating.lock();
            if graduating.contains(name) {
                return Err(AppError::Conflict(format!(
                    "tenant {name:?} is graduating; delete it once the graduation has finished"
                )));
            }
            let mut active = self.active.lock();
            if !active.deleting.insert(name.to_string()) {
                return Err(AppError::TenantNotFound(name.to_string()));
            }
            active.slots.remove(name)
        };
        let result = self.delete_fenced(name, removed).await;
        self.active.lock().deleting.remove(name);
        result
    }

    async fn delete_fenced(&self, name: &str, removed: Option<Slot>) -> Result<(), AppError> {
        let Some(row) = self.catalog.get(name)? else {
            return Err(AppError::TenantNotFound(name.to_string()));
        };
        let storage = self.backend(name, &row.location()?)?;
        if !self.catalog.set_deleting(name)? {
            return Err(AppError::TenantNotFound(name.to_string()));
        }
        if let Some(slot) = removed {
            // An activation in flight finishes first (the cell serializes initializers), so
            // its tenant is closed here rather than left running over a deleted namespace.
            let activated = slot
                .get_or_try_init(|| async { Err(AppError::TenantNotFound(name.to_string())) })
                .await;
            if let Ok(tenant) = activated {
                tenant.close();
                tenant.engine().shutdown().await;
            }
        }
        self.pool.forget_tenant(name);
        if let Some(journal) = &self.journal {
            // Its records are dead: never replayed, and they pin no segment.
            journal.forget(&Self::journal_key(&row));
        }
        let namespace = name.to_string();
        tokio::task::spawn_blocking(move || storage.delete_namespace(&namespace))
            .await
            .map_err(|e| AppError::Internal(format!("delete task: {e}")))?
            .map_err(|e| storage_error(name, "deleting the tenant's storage", e))?;
        if let Some(location) = row.retired.as_deref().and_then(Location::parse_retired) {
            // What a graduation left behind goes with the tenant.
            if let Ok(retired) = self.backend(name, &location) {
                let namespace = name.to_string();
                let _ = tokio::task::spawn_blocking(move || {
                    if retired.namespace_exists(&namespace)? {
                        retired.delete_namespace(&namespace)?;
                    }
                    Ok::<(), StorageError>(())
                })
                .await;
            }
        }
        self.catalog.remove(name)?;
        tracing::info!(tenant = name, "tenant deleted");
        Ok(())
    }

    /// The active tenant, activating it if needed.
    pub async fn tenant(&self, name: &str) -> Result<Arc<Tenant>, AppError> {
        use std::sync::atomic::Ordering;
        let now = self.clock.fetch_add(1, Ordering::Relaxed) + 1;
        // Active, or being activated by another request: share its activation.
        let existing = self.active.lock().slots.get(name).cloned();
        let (slot, incarnation) = match existing {
            Some(slot) => (slot, None),
            None => {
                let (slot, row) = self.new_slot(name)?;
                (slot, Some(row))
            }
        };
        let tenant = slot
            .get_or_try_init(|| self.activate(name, &slot, incarnation))
            .await?;
        tenant.last_used.store(now, Ordering::Relaxed);
        tenant.touch();
        Ok(tenant.clone())
    }

    /// The slot of a registered tenant that is not active, added to the map (making room
    /// first), or the slot another request added meanwhile; with the catalog row seen (the
    /// activation checks the tenant is still that one once it is open).
    fn new_slot(&self, name: &str) -> Result<(Slot, TenantRow), AppError> {
        let Some(row) = self.catalog.get(name)? else {
            return Err(AppError::TenantNotFound(name.to_string()));
        };
        let mut active = self.active.lock();
        if active.deleting.contains(name) {
            return Err(AppError::TenantNotFound(name.to_string()));
        }
        if let Some(slot) = active.slots.get(name) {
            return Ok((slot.clone(), row));
        }
        let evicted = self.make_room(&mut active.slots, name)?;
        let slot = Slot::default();
        active.slots.insert(name.to_string(), slot.clone());
        drop(active);
        // Evicted tenants close outside the map's lock.
        drop(evicted);
        Ok((slot, row))
    }

    /// Keeps the active map within `max_active_tenants` and the instance's memory budget
    /// before `name` is added (counted at [`TENANT_BASE_BYTES`], what a tenant holds before
    /// it has data). It frees slots no request holds: ones whose activation failed, else
    /// the least recently used tenants nobody is using (each one's committer finishes what
    /// is queued, then its storage closes). Tenants being activated count towards the
    /// bounds and are never chosen. When nothing can be freed, the activation is shed with
    /// 503. Returns the freed slots, for the caller to drop after releasing the map's lock.
    fn make_room(
        &self,
        active: &mut HashMap<String, Slot>,
        name: &str,
    ) -> Result<Vec<Slot>, AppError> {
        use std::sync::atomic::Ordering;
        let memory = |active: &HashMap<String, Slot>| -> usize {
            active
                .values()
                .map(|slot| slot.get().map_or(TENANT_BASE_BYTES, |t| t.memory_bytes()))
                .sum::<usize>()
        };
        let mut used = memory(active);
        let mut freed = Vec::new();
        loop {
            let over_count = active.len() >= self.config.max_active_tenants.max(1);
            let over_memory = used + TENANT_BASE_BYTES > self.config.instance_memory_bytes;
            if !over_count && !over_memory {
                return Ok(freed);
            }
            let idle = active
                .iter()
                .filter(|(_, slot)| Arc::strong_count(slot) == 1)
                .filter_map(|(n, slot)| match slot.get() {
                    None => Some((n, 0)),
                    Some(t) if Arc::strong_count(t) == 1 => {
                        Some((n, t.last_used.load(Ordering::Relaxed)))
                    }
                    Some(_) => None,
                })
                .min_by_key(|(_, last_used)| *last_used)
                .map(|(n, _)| n.clone());
            let Some(evicted) = idle else {
                let detail = if over_count {
                    format!(
                        "all {} active tenants are busy; retry shortly",
                        self.config.max_active_tenants
                    )
                } else {
                    format!(
                        "the instance is at its memory budget ({} MiB in use by {} active \
                         tenants, all busy); retry shortly",
                        used >> 20,
                        active.len()
                    )
                };
                return Err(AppError::Unavailable {
                    tenant: name.to_string(),
                    detail,
                });
            };
            tracing::debug!(tenant = %evicted, over_count, over_memory, "closing an idle tenant to make room");
            if let Some(slot) = active.remove(&evicted) {
                used =
                    used.saturating_sub(slot.get().map_or(TENANT_BASE_BYTES, |t| t.memory_bytes()));
                freed.push(slot);
            }
        }
    }

    /// The memory budget of a tenant opening now: its own budget, or what is left of the
    /// instance's when that is less (a large tenant is then served from storage).
    fn engine_config_for_activation(&self) -> nimbus_engine::EngineConfig {
        let used: usize = self
            .active
            .lock()
            .slots
            .values()
            .map(|slot| slot.get().map_or(TENANT_BASE_BYTES, |t| t.memory_bytes()))
            .sum();
        let left = self.config.instance_memory_bytes.saturating_sub(used);
        let mut config = self.config.engine.clone();
        config.memory_budget_bytes = config.memory_budget_bytes.min(left);
        config
    }

    fn slot_is_current(&self, name: &str, slot: &Slot) -> bool {
        self.active
            .lock()
            .slots
            .get(name)
            .is_some_and(|s| Arc::ptr_eq(s, slot))
    }

    /// Opens a tenant's storage, engine and runtime for `slot`; runs inside the slot's cell,
    /// so one activation per slot runs at a time. A failure leaves the slot empty and the
    /// next request tries afresh. A slot that left the map (the tenant was deleted) is not
    /// activated, and a tenant opened while its slot left, or whose catalog row is no
    /// longer the one seen before opening (deleted, or deleted and created again), is
    /// closed again: deletion waits on the cell, so it never removes a namespace under a
    /// running activation.
    async fn activate(
        &self,
        name: &str,
        slot: &Slot,
        incarnation: Option<TenantRow>,
    ) -> Result<Arc<Tenant>, AppError> {
        if !self.slot_is_current(name, slot) {
            return Err(AppError::TenantNotFound(name.to_string()));
        }
        let permit = self
            .activations
            .acquire()
            .await
            .map_err(|_| AppError::Internal("the activation semaphore is closed".into()))?;
        // Deleted while waiting for a permit: nothing to open.
        if !self.slot_is_current(name, slot) {
            return Err(AppError::TenantNotFound(name.to_string()));
        }
        let tenant = self.open_tenant(name).await;
        drop(permit);
        let tenant = tenant?;
        let same_tenant = match (self.catalog.get(name)?, incarnation) {
            (Some(now), Some(seen)) => {
                now.created_at_ms == seen.created_at_ms && now.key_hash == seen.key_hash
            }
            (Some(_), None) => true,
            (None, _) => false,
        };
        if !same_tenant || !self.slot_is_current(name, slot) {
            tenant.close();
            tenant.engine().shutdown().await;
            return Err(AppError::TenantNotFound(name.to_string()));
        }
        Ok(tenant)
    }

    async fn open_tenant(&self, name: &str) -> Result<Arc<Tenant>, AppError> {
        let Some(placed) = self.catalog.get(name)? else {
            return Err(AppError::TenantNotFound(name.to_string()));
        };
        let location = placed.location()?;
        let storage = self.backend(name, &location)?;
        let namespace = name.to_string();
        let opener: StoreOpener = Arc::new(move || storage.open_namespace(&namespace));
        let mut engine_config = self.engine_config_for_activation();
        // SQLite tenants commit through the shared journal; Postgres keeps durability in
        // its own database (a commit there is a network round trip either way).
        if let (Some(journal), Placement::Sqlite) = (&self.journal, location.placement) {
            engine_config.journal = Some(nimbus_engine::TenantJournal {
                journal: journal.clone(),
                key: Self::journal_key(&placed),
            });
        }
        let engine = TenantEngine::open(
            name,
            opener,
            engine_config,
            crate::tenant::deployment_codec(),
        )
        .await
        .map_err(|e| match e {
            EngineError::Storage(e) => storage_error(name, "opening the tenant's storage", e),
            other => AppError::from_engine(name, other),
        })?;
        let Some(row) = self.catalog.get(name)? else {
            // Deleted while it opened (`activate` checks the incarnation too).
            engine.shutdown().await;
            return Err(AppError::TenantNotFound(name.to_string()));
        };
        // The code caches its push's first runtime made after a call, before any call.
        let v8 = self.config.pool.engine == nimbus_runtime::Engine::V8;
        crate::saved_code_cache::restore(&engine, v8).await;
        let recorded = row.next_due_ms;
        let due_record: Arc<dyn crate::scheduler::DueRecord> =
            Arc::new(crate::catalog::TenantDueRecord {
                catalog: self.catalog.clone(),
                created_at_ms: row.created_at_ms,
            });
        let me = self.me.clone();
        let lookup: crate::scheduler::TenantLookup =
            Arc::new(move |name: &str| me.upgrade().and_then(|n| n.current_tenant(name)));
        let scheduler = crate::scheduler::TenantScheduler::new(
            self.config.scheduler.clone(),
            Some(due_record),
            recorded,
            Some(lookup),
        );
        let limits = LimitOverrides::from_stored(name, row.limits.as_deref()).resolve(&self.config);
        let tenant = Tenant::activate(
            name,
            engine,
            self.pool.clone(),
            self.key_fetcher.clone(),
            self.fetcher.clone(),
            &self.config,
            limits,
            scheduler,
        );
        // Its scheduler's tables exist before any call can schedule; then it starts.
        if let Err(error) = tenant.start_scheduler().await {
            tenant.close();
            tenant.engine().shutdown().await;
            return Err(error);
        }
        // Dropped indexes whose entries a previous activation did not finish deleting.
        if tenant
            .engine()
            .snapshot()
            .catalog
            .garbage()
            .next()
            .is_some()
        {
            tenant.collect_garbage();
        }
        Ok(tenant)
    }

    /// Checks a tenant admin key (`<tenant>|<secret>`) for `tenant`.
    pub async fn check_tenant_admin_key(&self, tenant: &str, key: &str) -> Result<(), AppError> {
        let Some((key_tenant, _)) = key.split_once('|') else {
            return Err(AppError::Unauthenticated);
        };
        let valid_for_its_tenant = match self.catalog.get(key_tenant)? {
            Some(row) => same_digest(&sha256_hex(key), &row.key_hash),
            None => false,
        };
        if !valid_for_its_tenant {
            return Err(AppError::Unauthenticated);
        }
        if key_tenant != tenant {
            return Err(AppError::Forbidden(format!(
                "this admin key belongs to another tenant, not to {tenant:?}"
            )));
        }
        Ok(())
    }

    /// The tenant a tenant admin key belongs to (for CLI requests without a tenant route).
    pub async fn tenant_for_admin_key(&self, key: &str) -> Result<Arc<Tenant>, AppError> {
        let Some((name, _)) = key.split_once('|') else {
            return Err(AppError::Unauthenticated);
        };
        self.check_tenant_admin_key(name, key).await?;
        self.tenant(name).await
    }

    /// Drops every active tenant; committers finish what is queued.
    pub async fn shutdown(&self) {
        let slots: Vec<Slot> = self
            .active
            .lock()
            .slots
            .drain()
            .map(|(_, slot)| slot)
            .collect();
        for tenant in slots.iter().filter_map(|slot| slot.get()) {
            tenant.close();
        }
    }

    /// Closes tenants nobody has used for `idle_release` (see [`NimbusConfig`]): not held
    /// by any request, socket or running job (the map holds the only reference), and not
    /// touched since. Their cached JavaScript runtimes are dropped too. Returns how many.
    pub(crate) fn release_idle(&self) -> usize {
        let Some(idle_after) = self.config.idle_release else {
            return 0;
        };
        let released: Vec<(String, Slot)> = {
            let mut active = self.active.lock();
            let idle: Vec<String> = active
                .slots
                .iter()
                .filter(|(_, slot)| Arc::strong_count(slot) == 1)
                .filter(|(_, slot)| {
                    slot.get().is_some_and(|tenant| {
                        Arc::strong_count(tenant) == 1 && tenant.idle_for() >= idle_after
                    })
                })
                .map(|(name, _)| name.clone())
                .collect();
            idle.into_iter()
                .filter_map(|name| active.slots.remove(&name).map(|slot| (name, slot)))
                .collect()
        };
        for (name, slot) in &released {
            tracing::debug!(tenant = %name, "closing an idle tenant");
            if let Some(tenant) = slot.get() {
                tenant.close();
            }
            self.pool.forget_tenant(name);
        }
        released.len()
    }

    /// The tenants active in memory now, without activating any (for metrics).
    /// The storage backends (for the capacity report).
    pub(crate) fn storage_backends(&self) -> &Backends {
        &self.storage
    }

    /// Every catalog row (for the capacity report).
    pub(crate) fn catalog_rows(&self) -> Result<Vec<TenantRow>, AppError> {
        self.catalog.list()
    }

    pub fn active_tenant_handles(&self) -> Vec<Arc<Tenant>> {
        self.active
            .lock()
            .slots
            .values()
            .filter_map(|slot| slot.get().cloned())
            .collect()
    }

    /// For a tenant's scheduler task: the tenant as the active map holds it, looked up
    /// under the map's lock, where eviction and idle release decide too. So the task never
    /// works on a tenant already closed to make room (whose successor may be open on the
    /// same storage); `Opening` while its activation has not finished.
    pub(crate) fn current_tenant(&self, name: &str) -> Option<crate::scheduler::Lookup> {
        let active = self.active.lock();
        let slot = active.slots.get(name)?;
        Some(match slot.get() {
            Some(tenant) => crate::scheduler::Lookup::Active(tenant.clone()),
            None => crate::scheduler::Lookup::Opening,
        })
    }

    /// The tenant `name` if it is active in memory now, without activating it.
    pub fn active_tenant(&self, name: &str) -> Option<Arc<Tenant>> {
        self.active
            .lock()
            .slots
            .get(name)
            .and_then(|slot| slot.get().cloned())
    }

    /// Names of tenants active in memory.
    pub async fn active_tenants(&self) -> Vec<String> {
        self.active
            .lock()
            .slots
            .iter()
            .filter(|(_, slot)| slot.initialized())
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// How often the instance looks for inactive tenants with a job due.
const WAKER_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// Most tenants the waker opens per look.
const WAKER_BATCH: usize = 64;

/// Once a second: closes tenants idle for `idle_release`, and opens tenants that are not
/// active when a scheduled job or cron run of theirs is due (after a restart, or after
/// they were closed while idle); their scheduler takes it from there. Stops when the
/// instance is dropped.
async fn run_waker(nimbus: std::sync::Weak<Nimbus>) {
    let mut ticker = tokio::time::interval(WAKER_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(instance) = nimbus.upgrade() else {
            return;
        };
        let now = crate::execute::now_ms() as i64;
        let due = match instance.catalog.due_tenants(now, WAKER_BATCH) {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(%error, "looking for tenants with jobs due failed");
                Vec::new()
            }
        };
        for name in due {
            if instance.active_tenant(&name).is_some() {
                continue;
            }
            let instance = instance.clone();
            tokio::spawn(async move {
                if let Err(error) = instance.tenant(&name).await {
                    tracing::debug!(tenant = %name, %error, "opening a tenant for its due jobs failed; retrying");
                }
            });
        }
        // After the look for due tenants, not before: a tenant released here leaves its
        // exact next due time in the catalog as its scheduler stops (within milliseconds),
        // while the record it had may be earlier; the next look, a second later, sees the
        // exact one rather than reopening the tenant at once.
        instance.release_idle();
        instance.truncate_journal();
    }
}

/// Reads `<data>/admin_key`, or generates a key and writes it with mode 0600.
fn load_or_create_admin_key(path: &std::path::Path) -> Result<String, AppError> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(AppError::Internal(format!(
                "reading {}: {e}",
                path.display()
            )))
        }
    }
    let key = format!("nimbus-admin-{}", random_secret());
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| AppError::Internal(format!("writing {}: {e}", path.display())))?;
    file.write_all(format!("{key}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| AppError::Internal(format!("writing {}: {e}", path.display())))?;
    Ok(key)
}

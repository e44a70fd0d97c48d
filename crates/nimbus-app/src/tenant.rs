//! An active tenant: its engine, its deployed code, and its admission bounds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nimbus_engine::{DeploymentCodec, DeploymentHandle, Snapshot};
use nimbus_engine::{EngineStats, TenantEngine};
use nimbus_runtime::JsPool;
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::admission::{Gate, GatePass, Slots};
use crate::config::NimbusConfig;
use crate::deployment::{Deployment, ModuleHash, DEPLOYMENT_GLOBAL};
use crate::error::AppError;
use crate::limits::{Limit, TenantLimits};
use crate::push::StagedPushes;

/// The deployment a snapshot carries (every snapshot of a tenant engine carries one).
pub(crate) fn deployment_of(snapshot: &Snapshot) -> Arc<Deployment> {
    match snapshot.deployment.clone().downcast::<Deployment>() {
        Ok(deployment) => deployment,
        Err(_) => {
            // Only an engine opened without the app's codec could get here.
            tracing::error!("a snapshot carries no deployment; serving no functions");
            Arc::new(Deployment::empty())
        }
    }
}

/// How a tenant's engine stores and decodes its deployment.
pub(crate) fn deployment_codec() -> DeploymentCodec {
    DeploymentCodec {
        global: DEPLOYMENT_GLOBAL.to_string(),
        decode: Arc::new(|bytes| {
            let deployment = match bytes {
                Some(bytes) => Deployment::from_bytes(bytes).map_err(|e| e.to_string())?,
                None => Deployment::empty(),
            };
            Ok(Arc::new(deployment) as DeploymentHandle)
        }),
    }
}

/// One tenant, active in this process.
pub struct Tenant {
    name: Arc<str>,
    engine: Arc<TenantEngine>,
    pool: Arc<JsPool>,
    pub(crate) staged: Mutex<StagedPushes>,
    /// Held while a push is activated, so pushes activate one at a time, each on top of the
    /// one before (generations and the deployment they replace stay in order).
    pub(crate) activation_lock: tokio::sync::Mutex<()>,
    /// Calls admitted (running, waiting for a worker or for their commit); bounded per
    /// tenant, refused past it.
    inflight: Arc<Gate>,
    /// Calls holding a JS worker; bounded per tenant so one tenant cannot take them all.
    running: Slots,
    /// The limits in force (instance defaults under the tenant's overrides).
    limits: Mutex<TenantLimits>,
    max_attempts: usize,
    pub(crate) query_cache: Mutex<crate::query_cache::QueryCache>,
    /// Taken by mutations retrying after a conflict (see `run_mutation`).
    retry_lock: tokio::sync::Mutex<()>,
    rejected: AtomicU64,
    /// Function calls by kind: outcomes and latency (`GET /metrics`).
    pub(crate) requests: crate::metrics::RequestMetrics,
    /// Worker time its calls used over the last minute (diagnostics).
    pub(crate) cpu: crate::metrics::CpuWindow,
    /// Logical time of the last activation lookup (for idle eviction).
    pub(crate) last_used: AtomicU64,
    /// Wall-clock time (ms since the epoch) it was last used: a request, or a scheduled
    /// job started (for idle release).
    last_active_ms: AtomicU64,
    pub(crate) config: NimbusConfig,
    live: Arc<crate::live::LiveQueries>,
    /// Runs of mutations sent over live sessions, for copies re-sent meanwhile.
    pub(crate) in_flight: Mutex<crate::dedup::InFlight>,
    /// Set when the tenant is deleted or the server shuts down: live sessions close.
    closed: tokio::sync::watch::Sender<bool>,
    /// Bumped to make every live session of the tenant close (clients reconnect).
    disconnect: tokio::sync::watch::Sender<u64>,
    /// Its auth providers' key sets, and the instance's fetcher of them.
    pub(crate) auth_keys: crate::auth::KeyCache,
    pub(crate) key_fetcher: Arc<crate::auth::KeyFetcher>,
    /// Actions alive (running or waiting); bounded per tenant.
    actions: Arc<Gate>,
    rejected_actions: AtomicU64,
    /// Turns of actions' outbound requests, and the instance's client for them.
    fetch_permits: Arc<Semaphore>,
    fetcher: Arc<crate::fetch::Fetcher>,
    /// `CONVEX_CLOUD_URL` and `CONVEX_SITE_URL` of this tenant, for `process.env`.
    system_env: Arc<std::collections::BTreeMap<String, String>>,
    /// Its scheduled functions and crons (`scheduler/`).
    pub(crate) scheduler: Arc<crate::scheduler::TenantScheduler>,
}

/// The variables the server sets in a tenant's `process.env`: its API URL and, when HTTP
/// actions are served, its site URL (as Convex sets them).
fn system_env(name: &str, config: &NimbusConfig) -> std::collections::BTreeMap<String, String> {
    let mut env = std::collections::BTreeMap::new();
    env.insert(
        "CONVEX_CLOUD_URL".to_string(),
        format!("{}/t/{name}", config.public_url),
    );
    if let Some(site) = &config.site_url {
        env.insert("CONVEX_SITE_URL".to_string(), format!("{site}/t/{name}"));
    }
    env
}

/// Counters of one tenant for diagnostics.
#[derive(Debug, Clone)]
pub struct TenantStats {
    pub engine: EngineStats,
    pub inflight_calls: usize,
    pub inflight_max: usize,
    pub rejected_calls: u64,
    /// Calls holding a JS worker slot (executing or queued at a worker), and the limit.
    pub running_calls: usize,
    pub running_max: usize,
    /// JavaScript worker time used by its calls over the last minute.
    pub cpu_last_minute: std::time::Duration,
    /// Actions alive, their per-tenant limit, and actions refused at it.
    pub actions_running: usize,
    pub actions_max: usize,
    pub rejected_actions: u64,
    /// Scheduled functions and cron runs: backlog, running, next due time, outcomes.
    pub scheduler: crate::scheduler::SchedulerStats,
    pub deployment_generation: u64,
    pub functions: usize,
    pub cached_queries: usize,
    pub cached_query_bytes: usize,
    /// What the instance memory budget counts for this tenant ([`Tenant::memory_bytes`]).
    pub memory_bytes: usize,
    pub live: crate::live::LiveStats,
    /// The limits in force.
    pub limits: TenantLimits,
    /// Function calls by kind (in the order of [`crate::metrics::KINDS`]).
    pub requests: [crate::metrics::KindSnapshot; 3],
    /// Its records in the shared journal not yet applied to its storage (`None`: it does
    /// not commit through the journal).
    pub journal: Option<nimbus_journal::TenantLag>,
}

impl Tenant {
    // What the instance shares (pool, fetchers, config) and what is this tenant's own
    // (engine, limits, scheduler): bundling them would only move the list elsewhere.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn activate(
        name: &str,
        engine: Arc<TenantEngine>,
        pool: Arc<JsPool>,
        key_fetcher: Arc<crate::auth::KeyFetcher>,
        fetcher: Arc<crate::fetch::Fetcher>,
        config: &NimbusConfig,
        limits: TenantLimits,
        scheduler: crate::scheduler::TenantScheduler,
    ) -> Arc<Tenant> {
        let tenant = Arc::new(Tenant {
            name: Arc::from(name),
            engine,
            pool,
            staged: Mutex::new(StagedPushes::default()),
            activation_lock: tokio::sync::Mutex::new(()),
            inflight: Gate::new(limits.inflight),
            running: Slots::new(limits.executing),
            limits: Mutex::new(limits),
            max_attempts: config.max_mutation_attempts.max(1),
            retry_lock: tokio::sync::Mutex::new(()),
            query_cache: Mutex::new(crate::query_cache::QueryCache::new(
                config.query_cache_entries,
                config.query_cache_max_bytes,
                config.query_cache_max_result_bytes,
            )),
            rejected: AtomicU64::new(0),
            requests: crate::metrics::RequestMetrics::default(),
            cpu: crate::metrics::CpuWindow::default(),
            last_used: AtomicU64::new(0),
            last_active_ms: AtomicU64::new(crate::execute::now_ms() as u64),
            live: Arc::new(crate::live::LiveQueries::new(config.live)),
            in_flight: Mutex::new(crate::dedup::InFlight::default()),
            closed: tokio::sync::watch::channel(false).0,
            disconnect: tokio::sync::watch::channel(0).0,
            auth_keys: crate::auth::KeyCache::default(),
            key_fetcher,
            actions: Gate::new(limits.actions),
            rejected_actions: AtomicU64::new(0),
            fetch_permits: Arc::new(Semaphore::new(config.fetch.per_tenant.max(1))),
            fetcher,
            system_env: Arc::new(system_env(name, config)),
            scheduler: Arc::new(scheduler),
            config: config.clone(),
        });
        // The engine's admission queue and the live bounds start from the instance's;
        // this puts the tenant's own in force, as a later change would.
        tenant.set_limits(limits);
        tenant
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Notes that the tenant is in use now (it is not idle).
    pub(crate) fn touch(&self) {
        self.last_active_ms
            .store(crate::execute::now_ms() as u64, Ordering::Relaxed);
    }

    /// How long nobody has used the tenant.
    pub(crate) fn idle_for(&self) -> std::time::Duration {
        let last = self.last_active_ms.load(Ordering::Relaxed);
        std::time::Duration::from_millis((crate::execute::now_ms() as u64).saturating_sub(last))
    }

    pub(crate) fn name_arc(&self) -> Arc<str> {
        self.name.clone()
    }

    pub(crate) fn engine(&self) -> &Arc<TenantEngine> {
        &self.engine
    }

    pub(crate) fn pool(&self) -> &Arc<JsPool> {
        &self.pool
    }

    pub(crate) fn max_attempts(&self) -> usize {
        self.max_attempts
    }

    pub(crate) fn retry_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.retry_lock
    }

    /// The deployment of the latest snapshot. A call runs the deployment of the snapshot it
    /// reads ([`deployment_of`]), not this one, which may be newer by then.
    pub(crate) fn deployment(&self) -> Arc<Deployment> {
        deployment_of(&self.engine.snapshot())
    }

    pub(crate) fn live(&self) -> &Arc<crate::live::LiveQueries> {
        &self.live
    }

    /// Resolves to `true` once the tenant is closed (deleted, or the server stopping);
    /// long-lived connections watch it and end.
    pub fn closed_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closed.subscribe()
    }

    /// Changes when the operator asks every live session to close (see
    /// [`Tenant::disconnect_live_sessions`]).
    pub fn disconnect_signal(&self) -> tokio::sync::watch::Receiver<u64> {
        self.disconnect.subscribe()
    }

    /// Closes every live session of the tenant; clients reconnect and re-subscribe.
    /// Returns how many sessions were open.
    pub fn disconnect_live_sessions(&self) -> u64 {
        let open = self.live.stats().sessions;
        self.disconnect.send_modify(|n| *n += 1);
        open
    }

    /// Closes the tenant's live sessions and stops its live-query registry.
    pub(crate) fn close(&self) {
        self.closed.send_replace(true);
    }

    /// The engine, for transports that need commit notices (live queries).
    pub fn engine_handle(&self) -> Arc<TenantEngine> {
        self.engine.clone()
    }

    /// Timestamp of the latest committed state.
    pub fn latest_ts(&self) -> u64 {
        self.engine.latest_ts().0
    }

    /// Hashes of the deployed modules (`get_config_hashes`).
    pub fn module_hashes(&self) -> Vec<ModuleHash> {
        self.deployment().hashes()
    }

    /// Admits one call, or fails fast with 429 when the tenant has too many in flight.
    pub(crate) fn admit_call(&self) -> Result<GatePass, AppError> {
        self.inflight.try_enter().ok_or_else(|| {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            AppError::Overloaded {
                tenant: self.name.to_string(),
                detail: format!("more than {} calls in flight", self.inflight.limit()),
                retry_after_secs: 1,
                limit: Limit::Inflight.name(),
            }
        })
    }

    /// Admits one more action of this tenant, or refuses it at once (429).
    pub(crate) fn admit_action(&self) -> Result<GatePass, AppError> {
        self.actions.try_enter().ok_or_else(|| {
            self.rejected_actions.fetch_add(1, Ordering::Relaxed);
            AppError::Overloaded {
                tenant: self.name.to_string(),
                detail: format!("more than {} actions running", self.actions.limit()),
                retry_after_secs: 1,
                limit: Limit::Actions.name(),
            }
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> TenantLimits {
        *self.limits.lock()
    }

    /// What a call of this tenant may use in the JavaScript runtime.
    pub(crate) fn call_limits(&self) -> nimbus_runtime::CallLimits {
        let limits = self.limits();
        nimbus_runtime::CallLimits {
            cpu_time: limits.cpu_time,
            memory_bytes: limits.memory_bytes,
        }
    }

    /// Puts new limits in force, without a restart: each bound follows at once, and calls
    /// already admitted under an old, higher limit finish (see `admission.rs`). The CPU
    /// time and heap per call apply from the next call.
    pub(crate) fn set_limits(&self, limits: TenantLimits) {
        let mut current = self.limits.lock();
        self.inflight.set_limit(limits.inflight);
        self.actions.set_limit(limits.actions);
        self.running.set_limit(limits.executing);
        self.engine.set_admission_limit(limits.admission_queue);
        self.live
            .set_tenant_limits(limits.sockets, limits.subscriptions);
        *current = limits;
    }

    /// Waits for a turn to make an outbound request. Waiters are bounded by the actions
    /// alive times the operations each may have in flight.
    pub(crate) async fn fetch_turn(&self) -> Result<OwnedSemaphorePermit, String> {
        self.fetch_permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| "the tenant is shutting down".to_string())
    }

    pub(crate) fn system_env(&self) -> Arc<std::collections::BTreeMap<String, String>> {
        self.system_env.clone()
    }

    pub(crate) fn fetcher(&self) -> &crate::fetch::Fetcher {
        &self.fetcher
    }

    /// Waits for one of this tenant's JS worker slots.
    pub(crate) async fn acquire_worker(&self) -> Result<OwnedSemaphorePermit, AppError> {
        self.running
            .acquire()
            .await
            .map_err(|_| AppError::Unavailable {
                tenant: self.name.to_string(),
                detail: "shutting down".into(),
            })
    }

    /// Estimated memory the tenant holds: a base ([`crate::instance::TENANT_BASE_BYTES`])
    /// plus its resident documents, its code (sources, source maps, code caches: see
    /// [`Deployment::memory_bytes`]), cached query results and live subscriptions. What the
    /// instance's memory budget counts.
    pub fn memory_bytes(&self) -> usize {
        let snapshot = self.engine.snapshot();
        crate::instance::TENANT_BASE_BYTES
            + snapshot.resident_bytes()
            + deployment_of(&snapshot).memory_bytes()
            + self.query_cache.lock().bytes()
            + self.live.bytes()
    }

    pub fn stats(&self) -> TenantStats {
        let deployment = self.deployment();
        let (cached_queries, cached_query_bytes) = {
            let cache = self.query_cache.lock();
            (cache.len(), cache.bytes())
        };
        TenantStats {
            engine: self.engine.stats(),
            inflight_calls: self.inflight.held(),
            inflight_max: self.inflight.limit(),
            rejected_calls: self.rejected.load(Ordering::Relaxed),
            running_calls: self.running.in_use(),
            running_max: self.running.limit(),
            cpu_last_minute: self.cpu.last_minute(),
            actions_running: self.actions.held(),
            actions_max: self.actions.limit(),
            rejected_actions: self.rejected_actions.load(Ordering::Relaxed),
            scheduler: self.scheduler.stats(),
            deployment_generation: deployment.generation,
            functions: deployment.functions.len(),
            cached_queries,
            cached_query_bytes,
            memory_bytes: self.memory_bytes(),
            live: self.live.stats(),
            limits: self.limits(),
            requests: self.requests.snapshot(),
            journal: self.engine.journal_lag(),
        }
    }
}

//! Configuration of a Nimbus instance.

use std::path::PathBuf;
use std::time::Duration;

use nimbus_engine::EngineConfig;
use nimbus_runtime::PoolConfig;

/// Everything `nimbus serve` configures. Each bound says what happens when reached.
#[derive(Debug, Clone)]
pub struct NimbusConfig {
    /// Root of all data: `admin_key`, `nimbus.sqlite3` (tenant catalog), `tenants/`.
    pub data_dir: PathBuf,
    /// Base URL clients use, without a trailing slash (`http://127.0.0.1:3210`); tenant
    /// URLs are `<public_url>/t/<tenant>`.
    pub public_url: String,
    /// Base URL of the HTTP-actions listener (`--site-listen`), without a trailing slash;
    /// tenants' site URLs (`process.env.CONVEX_SITE_URL`) are `<site_url>/t/<tenant>`.
    pub site_url: Option<String>,
    /// Hosts (names, addresses or CIDR blocks) that outbound requests (actions' `fetch`,
    /// auth providers' keys) may reach even though they are loopback or private addresses;
    /// everything else must be on the public internet (see `egress.rs`).
    pub egress_allow: Vec<String>,
    /// Instance admin key; `None` = read `<data_dir>/admin_key` or generate it.
    pub admin_key: Option<String>,
    /// Per-tenant engine bounds.
    pub engine: EngineConfig,
    /// The JavaScript worker pool shared by all tenants.
    pub pool: PoolConfig,
    /// Most function calls of one tenant running or waiting for a JS worker at once;
    /// beyond it calls fail with 429 (`Overloaded`) for that tenant only.
    pub max_inflight_per_tenant: usize,
    /// Most calls of one tenant in the JS pool at once (running or waiting at a worker):
    /// two per home worker, so each home worker has the next call ready when one ends
    /// instead of idling through a hand-off, while a tenant stuck in slow code holds only
    /// its home workers and one queued call on each.
    pub max_running_per_tenant: usize,
    /// Most times a mutation is re-run after a write conflict before failing.
    pub max_mutation_attempts: usize,
    /// How long a staged (started, not finished) push is kept.
    pub staged_push_ttl: Duration,
    /// Most tenants active in memory at once (each holds its engine, committer task and
    /// storage connections). Activating one more first closes the least recently used
    /// idle tenant; if every active tenant is busy, the activation fails with 503.
    pub max_active_tenants: usize,
    /// A tenant nobody has used for this long (no request, no open socket, no scheduled
    /// job running) is closed: its snapshot memory, storage handles and cached JavaScript
    /// runtimes are released, and its next request opens it again. `None`: never.
    pub idle_release: Option<Duration>,
    /// Memory budget of all active tenants together, in bytes (each counted by
    /// [`crate::Tenant::memory_bytes`]). Activating a tenant first closes idle tenants to
    /// stay within it; when every active tenant is busy, the activation fails with 503. A
    /// tenant opening with less room left than its own budget is served from storage.
    pub instance_memory_bytes: usize,
    /// Tenants opened at once (storage, documents, code). Activations beyond it wait their
    /// turn, each holding its place in `max_active_tenants`, so a burst of first requests
    /// to idle tenants cannot take every core from the tenants already serving.
    pub max_concurrent_activations: usize,
    /// Query results cached per tenant (0 disables the cache); the least recently used
    /// entry is evicted when full.
    pub query_cache_entries: usize,
    /// Bytes of cached query results per tenant (results, read sets, keys; estimated); the
    /// least recently used entries are evicted to stay within it.
    pub query_cache_max_bytes: usize,
    /// Larger query results (by Convex size) are not cached.
    pub query_cache_max_result_bytes: usize,
    /// Bounds of live queries (subscriptions per connection and per tenant).
    pub live: crate::live::LiveLimits,
    /// Bounds of actions (wall time, per-tenant count, nesting). Their CPU time and heap
    /// are in `pool.limits`, the pool-wide count in `pool.max_actions`.
    pub actions: crate::action::ActionLimits,
    /// Scheduled functions and crons: concurrency, per-call limits, retention.
    pub scheduler: crate::scheduler::SchedulerConfig,
    /// Bounds of actions' outbound requests (`fetch`).
    pub fetch: crate::fetch::FetchLimits,
    /// Where new tenants are stored unless their creation names a placement.
    pub default_storage: crate::placement::Placement,
    /// The shared journal of SQLite tenants (`<data-dir>/journal`, `--journal`): `None`
    /// (the default) makes every commit sync the tenant's own file instead.
    pub journal: Option<JournalSettings>,
    /// The Postgres server, when tenants may be stored there.
    pub postgres: Option<crate::placement::PostgresSettings>,
}

/// Half the machine's memory (from /proc/meminfo), or 4 GiB when it cannot be read.
fn default_instance_memory() -> usize {
    let total_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<usize>()
                        .ok()
                })
        });
    match total_kib {
        Some(kib) => (kib << 10) / 2,
        None => 4 << 30,
    }
}

/// Half the cores, at least 2.
fn default_concurrent_activations() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (cores / 2).max(2)
}

impl NimbusConfig {
    /// Defaults for a data directory and public URL.
    pub fn new(data_dir: PathBuf, public_url: String) -> Self {
        let pool = PoolConfig::default();
        let workers = pool.workers;
        let mut config = NimbusConfig {
            data_dir,
            public_url,
            egress_allow: Vec::new(),
            site_url: None,
            admin_key: None,
            engine: EngineConfig::default(),
            max_inflight_per_tenant: 1024,
            // Derived from the workers below.
            max_running_per_tenant: 1,
            pool,
            max_mutation_attempts: 32,
            staged_push_ttl: Duration::from_secs(600),
            max_active_tenants: 1000,
            idle_release: Some(Duration::from_secs(300)),
            instance_memory_bytes: default_instance_memory(),
            max_concurrent_activations: default_concurrent_activations(),
            query_cache_entries: 1024,
            query_cache_max_bytes: 16 << 20,
            query_cache_max_result_bytes: 256 << 10,
            live: crate::live::LiveLimits::default(),
            actions: crate::action::ActionLimits::default(),
            scheduler: crate::scheduler::SchedulerConfig::default(),
            fetch: crate::fetch::FetchLimits::default(),
            default_storage: crate::placement::Placement::Sqlite,
            journal: None,
            postgres: None,
        };
        config.set_js_workers(workers);
        config
    }

    /// Sets the number of JavaScript workers and what derives from it: the default number
    /// of home workers per tenant, and the tenant's calls in the pool.
    pub fn set_js_workers(&mut self, workers: usize) {
        let workers = workers.max(1);
        self.pool.workers = workers;
        self.set_js_workers_per_tenant(nimbus_runtime::default_workers_per_tenant(workers));
    }

    /// Sets how many home workers each tenant has (at most all of them), and the tenant's
    /// calls in the pool with it (two per home worker).
    pub fn set_js_workers_per_tenant(&mut self, per_tenant: usize) {
        self.pool.workers_per_tenant = per_tenant.clamp(1, self.pool.workers.max(1));
        self.max_running_per_tenant = 2 * self.pool.workers_per_tenant;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_limits_derive_from_the_home_workers() {
        let mut config = NimbusConfig::new(PathBuf::from("/tmp/x"), "http://x".into());
        config.set_js_workers(4);
        assert_eq!(config.pool.workers_per_tenant, 2);
        assert_eq!(
            config.max_running_per_tenant, 4,
            "one running, one ready per home"
        );
        config.set_js_workers_per_tenant(3);
        assert_eq!(config.max_running_per_tenant, 6);
        config.set_js_workers_per_tenant(9);
        assert_eq!(config.pool.workers_per_tenant, 4, "at most every worker");
        config.set_js_workers(1);
        assert_eq!(
            (
                config.pool.workers_per_tenant,
                config.max_running_per_tenant
            ),
            (1, 2)
        );
    }
}

/// The shared journal's bounds (`nimbus serve --journal-max-mib`).
#[derive(Debug, Clone)]
pub struct JournalSettings {
    /// Bytes of segments on disk; past it commits of journaled tenants fail with 503 until
    /// tenants have applied their records and old segments are deleted.
    pub max_disk_bytes: u64,
    /// A segment is closed (and may be deleted once applied) past this many bytes.
    pub segment_bytes: u64,
}

impl Default for JournalSettings {
    fn default() -> Self {
        JournalSettings {
            max_disk_bytes: 4 << 30,
            segment_bytes: 64 << 20,
        }
    }
}

//! The `nimbus` binary: `nimbus serve` runs the server; `nimbus tenant ...` manages
//! tenants through the admin API of a running server.

mod fd_table;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use nimbus_app::{Nimbus, NimbusConfig};
use nimbus_server::ServerConfig;

#[derive(Parser)]
#[command(
    name = "nimbus",
    version,
    about = "A multi-tenant, Convex-compatible backend server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Manage tenants of a running server.
    Tenant {
        /// Server URL.
        #[arg(long, default_value = "http://127.0.0.1:3210", global = true)]
        url: String,
        /// Instance admin key (default: $NIMBUS_ADMIN_KEY, then <data-dir>/admin_key).
        #[arg(long, global = true)]
        admin_key: Option<String>,
        /// Data directory holding `admin_key`.
        #[arg(long, default_value = "./nimbus-data", global = true)]
        data_dir: PathBuf,
        #[command(subcommand)]
        action: TenantAction,
    },
}

/// `nimbus serve`: where to listen and store data, and every bound of the server.
#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3210")]
    listen: SocketAddr,
    /// Where tenants' data, the tenant catalog and the admin key live.
    #[arg(long, default_value = "./nimbus-data")]
    data_dir: PathBuf,
    /// Host-name routing: `<tenant>.<domain>` addresses a tenant.
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// Base URL clients use (default: http://<listen>).
    #[arg(long)]
    public_url: Option<String>,
    /// Address of a second listener for HTTP actions (`convex/http.ts` routes), as a
    /// Convex deployment's site URL: `http://<site-listen>/t/<tenant>/<route>` (or the
    /// host `<tenant>.<domain>`). Without it, HTTP actions are not served.
    #[arg(long)]
    site_listen: Option<SocketAddr>,
    /// Largest request body an HTTP action receives, in bytes (larger ones get 413).
    #[arg(long, default_value_t = 20 << 20)]
    site_max_request_bytes: usize,
    /// Hosts, addresses or CIDR blocks (comma-separated or repeated) that outbound
    /// requests (actions' `fetch`, auth providers' keys) may reach although they are
    /// loopback, private or link-local addresses. Without it only public addresses are.
    #[arg(long, value_delimiter = ',')]
    egress_allow: Vec<String>,
    /// Wall time limit of one action, waiting included, in seconds.
    #[arg(long, default_value_t = 600)]
    action_timeout_secs: u64,
    /// CPU time limit of one action over all its steps, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    action_cpu_ms: u64,
    /// Actions of one tenant alive at once; more are refused with 429.
    #[arg(long, default_value_t = 64)]
    max_actions_per_tenant: usize,
    /// Actions alive at once in the whole server (each has a JavaScript heap of its own,
    /// up to --function-memory-mib); more are refused with 429.
    #[arg(long, default_value_t = 256)]
    max_actions: usize,
    /// Outbound requests (`fetch`) one tenant's actions may have open at once; more wait.
    #[arg(long, default_value_t = 16)]
    fetch_concurrency_per_tenant: usize,
    /// Time limit of one outbound request, body included, in seconds.
    #[arg(long, default_value_t = 60)]
    fetch_timeout_secs: u64,
    /// Largest response body an action's `fetch` reads, in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    fetch_max_response_bytes: usize,
    /// Scheduled functions and cron runs of one tenant running at once (each is also one
    /// of the tenant's calls in flight); due jobs beyond wait, in due order.
    #[arg(long, default_value_t = 8)]
    scheduler_concurrency_per_tenant: usize,
    /// How long finished rows of `_scheduled_functions` are kept, in hours.
    #[arg(long, default_value_t = 7 * 24)]
    scheduled_retention_hours: u64,
    /// How long finished cron runs (`_cron_job_logs`) are kept, in minutes.
    #[arg(long, default_value_t = 60)]
    cron_run_retention_minutes: u64,
    /// Largest request body in bytes (larger ones get 413).
    #[arg(long, default_value_t = 8 << 20)]
    max_request_bytes: usize,
    /// Calls of one tenant in flight at once (executing, waiting for a worker or for
    /// their commit); more are refused with 429 (`limit: "inflight"`). A tenant's own
    /// limits (`PATCH /admin/tenants/<t>`) override this and the other per-tenant flags.
    #[arg(long, default_value_t = 1024)]
    max_inflight_per_tenant: usize,
    /// Commits of one tenant waiting for its committer; more are refused with 429
    /// (`limit: "admissionQueue"`). Values over 65,536 count as 65,536.
    #[arg(long, default_value_t = 4096)]
    admission_queue_per_tenant: usize,
    /// The engine tenants' functions run in: `v8` (Debian's libnode; the default when this
    /// build has it) or `quickjs` (every build has it). Startup prints the one in use.
    #[arg(long, env = "NIMBUS_JS_ENGINE", value_parser = parse_engine)]
    js_engine: Option<nimbus_app::JsEngine>,
    /// JavaScript worker threads (default: 2 × cores, at least 4).
    #[arg(long)]
    js_workers: Option<usize>,
    /// JavaScript workers one tenant's calls may run on, its "home" workers (default:
    /// half the workers, at least 2). A tenant's cached runtimes live on its homes only.
    #[arg(long)]
    js_workers_per_tenant: Option<usize>,
    /// Tenant runtimes each JavaScript worker keeps loaded (least recently used ones are
    /// dropped; a call whose runtime was dropped loads its tenant's code again). Each one
    /// holds its tenant's loaded modules and heap, up to --function-memory-mib; the cache
    /// is bounded in bytes too (--js-cache-mib-per-worker), whichever comes first.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=4096))]
    js_isolates_per_worker: u32,
    /// MiB of cached tenant runtimes each JavaScript worker keeps (their heaps, measured
    /// at load and every 32 calls); least recently used ones are dropped to stay under it.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(8..=65536))]
    js_cache_mib_per_worker: u32,
    /// CPU time limit of one function call, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    function_cpu_ms: u64,
    /// Memory limit of one tenant's JavaScript heap, in MiB.
    #[arg(long, default_value_t = 64)]
    function_memory_mib: usize,
    /// Memory budget per tenant for in-memory serving, in MiB; larger tenants are
    /// served from storage.
    #[arg(long, default_value_t = 256)]
    tenant_memory_mib: usize,
    /// Most tenants active in memory at once; idle ones beyond it are closed (LRU).
    #[arg(long, default_value_t = 1000)]
    max_active_tenants: usize,
    /// Seconds after which a tenant nobody uses (no request, open socket or running
    /// scheduled job) is closed, releasing its memory, storage handles and JavaScript
    /// runtimes; its next request reopens it. 0: never.
    #[arg(long, default_value_t = 300)]
    tenant_idle_secs: u64,
    /// Commit SQLite tenants through the shared journal (`<data-dir>/journal`), where the
    /// commits of all tenants share one sync, instead of a sync of each tenant's own file.
    /// Off by default: it pays where a sync is slow and many tenants commit at once; on a
    /// disk whose sync takes ~0.1 ms it costs more than it saves (BENCHMARKS.md).
    #[arg(long)]
    journal: bool,
    /// With --journal: most bytes its segments may hold on disk, in MiB; past it, commits of
    /// SQLite tenants fail with 503 until tenants have synced their records.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(64..=1_048_576))]
    journal_max_mib: u64,
    /// With --journal: the size of one segment file, in MiB; segments are deleted whole,
    /// once every tenant with records in them has synced them to its own storage.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    journal_segment_mib: u64,
    /// Memory budget of all active tenants together, in MiB (each counted as 4 MiB
    /// plus its resident data, cached results and subscriptions). Activations close idle
    /// tenants to stay within it, or get 503 when all are busy (default: half the
    /// machine's memory).
    #[arg(long)]
    max_memory_mib: Option<usize>,
    /// Tenants opened at once; further first requests to idle tenants wait their turn
    /// (default: half the cores, at least 2).
    #[arg(long)]
    max_concurrent_activations: Option<usize>,
    /// Query results cached per tenant (0 disables the query cache).
    #[arg(long, default_value_t = 1024)]
    query_cache_entries: usize,
    /// Memory for cached query results per tenant, in MiB (least recently used
    /// results are evicted).
    #[arg(long, default_value_t = 16)]
    query_cache_mib: usize,
    /// Most live WebSocket connections per tenant; further upgrades get 429.
    #[arg(long, default_value_t = 10_000)]
    max_connections_per_tenant: usize,
    /// Most live WebSocket connections per client address, across tenants; further
    /// upgrades get 429.
    #[arg(long, default_value_t = 1000)]
    max_connections_per_address: usize,
    /// Most live-query subscriptions one WebSocket connection may hold; adds beyond
    /// it fail with a TooManySubscriptions query error.
    #[arg(long, default_value_t = 4096)]
    max_subscriptions_per_connection: usize,
    /// Estimated memory of one connection's subscriptions, in KiB (function paths and
    /// arguments); adds beyond it fail with a SubscriptionsTooLarge query error.
    #[arg(long, default_value_t = 2048)]
    max_subscription_kib_per_connection: usize,
    /// Most live-query subscriptions the connections of one client address may hold
    /// in one tenant.
    #[arg(long, default_value_t = 10_000)]
    max_subscriptions_per_address: usize,
    /// Estimated memory of one client address's subscriptions in one tenant, in KiB.
    #[arg(long, default_value_t = 16 * 1024)]
    max_subscription_kib_per_address: usize,
    /// Most live-query subscriptions of one tenant across its connections.
    #[arg(long, default_value_t = 100_000)]
    max_subscriptions_per_tenant: usize,
    /// Estimated memory of one tenant's subscriptions, in KiB.
    #[arg(long, default_value_t = 64 * 1024)]
    max_subscription_kib_per_tenant: usize,
    /// Failed admin authentications one client address may make per minute; beyond,
    /// its admin requests get 429 until the minute is over.
    #[arg(long, default_value_t = 20)]
    max_auth_failures_per_minute: u32,
    /// Tenants with series of their own in `GET /metrics`, the busiest first; the other
    /// active tenants are summed under `tenant="_other"`.
    #[arg(long, default_value_t = 100)]
    metrics_max_tenants: usize,
    /// Seconds a WebSocket send may block (a client not reading) before the server
    /// closes that connection.
    #[arg(long, default_value_t = 30)]
    sync_send_timeout_secs: u64,
    /// Seconds a WebSocket client may stay silent (no message, no pong to the server's
    /// pings every 5 s) before the server closes the connection.
    #[arg(long, default_value_t = 120)]
    sync_idle_timeout_secs: u64,
    /// Where new tenants are stored: `sqlite` (a file each, embedded), `postgres-shared`
    /// (a schema each, through --postgres-pooler-url; `postgres` means this) or
    /// `postgres-dedicated` (a database each). A tenant stays where it was created;
    /// `POST /admin/tenants` may name another placement for one tenant.
    #[arg(long, default_value = "sqlite", value_parser = parse_placement)]
    storage: nimbus_app::Placement,
    /// Direct Postgres URL (`postgres://user@host:port/database`): control connections,
    /// the dedicated tier, and the database of the shared tier's schemas (created when
    /// missing). Without it, only SQLite is available.
    #[arg(long, env = "NIMBUS_POSTGRES_URL")]
    postgres_url: Option<String>,
    /// The shared tier's runtime connections, normally a PgBouncer in transaction mode in
    /// front of the same server (default: --postgres-url, direct).
    #[arg(long, env = "NIMBUS_POSTGRES_POOLER_URL")]
    postgres_pooler_url: Option<String>,
    /// Postgres connections one active tenant may hold (per tier); an idle tenant that is
    /// released (--tenant-idle-secs) holds none.
    #[arg(long, default_value_t = 4)]
    postgres_connections_per_tenant: usize,
    /// Prefix of the schemas and databases of tenants (a-z, 0-9, _; at most 20 bytes).
    #[arg(long, default_value = "nimbus_")]
    postgres_prefix: String,
    /// Bound on one storage call of a Postgres tenant (waiting for a connection,
    /// connecting, its statements), in seconds: past it the request fails with 503 and the
    /// connection is closed, so a stalled server or pooler never holds requests longer.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    postgres_operation_timeout_secs: u64,
    /// Another Postgres server of the placement pool (repeatable), as space-separated
    /// `key=value` pairs: `name=b url=postgres://... [pooler=postgres://...]
    /// [max-connections=N]`. --postgres-url is the server named `default`.
    #[arg(long = "postgres-server", value_parser = nimbus_app::ServerSettings::parse_flag)]
    postgres_servers: Vec<nimbus_app::ServerSettings>,
    /// How new Postgres tenants are spread over the servers: `least-loaded` (fewest
    /// tenants per connection of max_connections) or `round-robin`. Existing tenants stay
    /// where they are.
    #[arg(long, default_value = "least-loaded", value_parser = parse_policy)]
    placement: nimbus_app::PlacementPolicy,
}

fn parse_policy(name: &str) -> Result<nimbus_app::PlacementPolicy, String> {
    nimbus_app::PlacementPolicy::parse(name)
        .ok_or_else(|| format!("unknown placement {name:?}: least-loaded or round-robin"))
}

fn parse_placement(name: &str) -> Result<nimbus_app::Placement, String> {
    nimbus_app::Placement::parse(name).ok_or_else(|| {
        let names: Vec<&str> = nimbus_app::Placement::ALL
            .iter()
            .map(|p| p.name())
            .collect();
        format!("unknown storage {name:?}: one of {}", names.join(", "))
    })
}

#[derive(Subcommand)]
enum TenantAction {
    /// Create a tenant; prints its URL and admin key.
    Create {
        name: String,
        /// Where to store it (default: the server's --storage).
        #[arg(long, value_parser = parse_placement)]
        storage: Option<nimbus_app::Placement>,
        /// The Postgres server to put it on (default: the server's --placement policy).
        #[arg(long)]
        server: Option<String>,
    },
    /// List tenants.
    List,
    /// Delete a tenant and all its data.
    Delete { name: String },
    /// Move a shared-tier Postgres tenant into a database of its own, live.
    Graduate {
        name: String,
        /// The Postgres server of its new database (default: its current server).
        #[arg(long)]
        server: Option<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            // First, while this is the only thread (see fd_table.rs).
            let fd_slots = fd_table::presize();
            let ServeArgs {
                listen,
                data_dir,
                domain,
                public_url,
                site_listen,
                site_max_request_bytes,
                egress_allow,
                action_timeout_secs,
                action_cpu_ms,
                max_actions_per_tenant,
                max_actions,
                fetch_concurrency_per_tenant,
                fetch_timeout_secs,
                fetch_max_response_bytes,
                scheduler_concurrency_per_tenant,
                scheduled_retention_hours,
                cron_run_retention_minutes,
                max_request_bytes,
                max_inflight_per_tenant,
                admission_queue_per_tenant,
                js_engine,
                js_workers,
                js_workers_per_tenant,
                js_isolates_per_worker,
                js_cache_mib_per_worker,
                function_cpu_ms,
                function_memory_mib,
                tenant_memory_mib,
                query_cache_entries,
                query_cache_mib,
                max_active_tenants,
                tenant_idle_secs,
                journal,
                journal_max_mib,
                journal_segment_mib,
                max_memory_mib,
                max_concurrent_activations,
                max_connections_per_tenant,
                max_connections_per_address,
                max_subscriptions_per_connection,
                max_subscription_kib_per_connection,
                max_subscriptions_per_address,
                max_subscription_kib_per_address,
                max_subscriptions_per_tenant,
                max_subscription_kib_per_tenant,
                max_auth_failures_per_minute,
                metrics_max_tenants,
                sync_send_timeout_secs,
                sync_idle_timeout_secs,
                storage,
                postgres_url,
                postgres_pooler_url,
                postgres_connections_per_tenant,
                postgres_prefix,
                postgres_operation_timeout_secs,
                postgres_servers,
                placement,
            } = *args;
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .init();
            match fd_slots {
                Some(slots) => tracing::debug!(slots, "file descriptor table grown at start"),
                None => tracing::debug!("file descriptor table left as it is"),
            }
            let public_url = public_url
                .unwrap_or_else(|| format!("http://{listen}"))
                .trim_end_matches('/')
                .to_string();
            let mut config = NimbusConfig::new(data_dir.clone(), public_url.clone());
            config.egress_allow = egress_allow;
            config.default_storage = storage;
            let mut servers = Vec::new();
            if let Some(url) = postgres_url {
                let mut default = nimbus_app::ServerSettings::new(nimbus_app::DEFAULT_SERVER, url);
                default.pooler_url = postgres_pooler_url;
                servers.push(default);
            }
            servers.extend(postgres_servers);
            config.postgres = Some(nimbus_app::PostgresSettings {
                servers,
                max_connections_per_tenant: postgres_connections_per_tenant.max(1),
                prefix: postgres_prefix,
                policy: placement,
                operation_timeout: Duration::from_secs(postgres_operation_timeout_secs),
            });
            config.site_url = site_listen.map(|addr| format!("http://{addr}"));
            config.actions.timeout = Duration::from_secs(action_timeout_secs.max(1));
            config.actions.per_tenant = max_actions_per_tenant.max(1);
            config.pool.max_actions = max_actions.max(1);
            config.pool.limits.action_cpu_time = Duration::from_millis(action_cpu_ms.max(1));
            config.fetch.per_tenant = fetch_concurrency_per_tenant.max(1);
            config.fetch.timeout = Duration::from_secs(fetch_timeout_secs.max(1));
            config.fetch.max_response_bytes = fetch_max_response_bytes;
            config.scheduler.concurrency_per_tenant = scheduler_concurrency_per_tenant.max(1);
            config.scheduler.retention = Duration::from_secs(scheduled_retention_hours * 3600);
            config.scheduler.cron_run_retention =
                Duration::from_secs(cron_run_retention_minutes * 60);
            config.fetch.max_request_bytes = max_request_bytes;
            config.max_inflight_per_tenant = max_inflight_per_tenant.max(1);
            // The engine holds it to 65,536 (`ADMISSION_QUEUE_MAX`).
            config.engine.admission_queue = admission_queue_per_tenant.max(1);
            config.admin_key = std::env::var("NIMBUS_ADMIN_KEY")
                .ok()
                .filter(|k| !k.is_empty());
            if let Some(key) = &config.admin_key {
                if key.len() < nimbus_app::MIN_ADMIN_KEY_LEN {
                    bail!(
                        "NIMBUS_ADMIN_KEY is too short ({} characters): the instance admin key \
                         needs at least {} (e.g. `openssl rand -hex 16`), or unset it and the \
                         server generates one into <data-dir>/admin_key",
                        key.len(),
                        nimbus_app::MIN_ADMIN_KEY_LEN
                    );
                }
            }
            if let Some(engine) = js_engine {
                if !engine.is_available() {
                    bail!(
                        "--js-engine {engine}: this build of Nimbus has no V8 (libnode was not \
                         found when it was built; run scripts/libnode.sh and rebuild), use \
                         --js-engine quickjs"
                    );
                }
                config.pool.engine = engine;
            }
            if let Some(workers) = js_workers {
                config.set_js_workers(workers);
            }
            config.pool.isolates_per_worker = js_isolates_per_worker as usize;
            config.pool.cache_bytes_per_worker = (js_cache_mib_per_worker as usize) << 20;
            if let Some(per_tenant) = js_workers_per_tenant {
                config.set_js_workers_per_tenant(per_tenant);
            }
            config.pool.limits.cpu_time = Duration::from_millis(function_cpu_ms.max(1));
            config.pool.limits.memory_bytes = function_memory_mib.max(1) << 20;
            config.engine.memory_budget_bytes = tenant_memory_mib << 20;
            config.query_cache_entries = query_cache_entries;
            config.query_cache_max_bytes = query_cache_mib << 20;
            config.max_active_tenants = max_active_tenants.max(1);
            config.idle_release =
                (tenant_idle_secs > 0).then(|| Duration::from_secs(tenant_idle_secs));
            config.journal = journal.then_some(nimbus_app::JournalSettings {
                max_disk_bytes: journal_max_mib << 20,
                segment_bytes: journal_segment_mib << 20,
            });
            if let Some(mib) = max_memory_mib {
                config.instance_memory_bytes = mib.max(1) << 20;
            }
            if let Some(n) = max_concurrent_activations {
                config.max_concurrent_activations = n.max(1);
            }
            config.live = nimbus_app::LiveLimits {
                max_sessions: max_connections_per_tenant.max(1),
                max_subscriptions_per_session: max_subscriptions_per_connection,
                max_subscription_bytes_per_session: max_subscription_kib_per_connection << 10,
                max_subscriptions_per_address,
                max_subscription_bytes_per_address: max_subscription_kib_per_address << 10,
                max_subscriptions_per_tenant,
                max_subscription_bytes_per_tenant: max_subscription_kib_per_tenant << 10,
            };
            let server = ServerConfig {
                domain,
                max_request_bytes,
                max_connections_per_address: max_connections_per_address.max(1),
                max_auth_failures: max_auth_failures_per_minute.max(1),
                auth_failure_window: Duration::from_secs(60),
                metrics_max_tenants,
                sync: nimbus_server::SyncConfig {
                    max_message_bytes: max_request_bytes,
                    send_timeout: Duration::from_secs(sync_send_timeout_secs.max(1)),
                    idle_timeout: Duration::from_secs(sync_idle_timeout_secs.max(1)),
                    ..nimbus_server::SyncConfig::default()
                },
                ..ServerConfig::default()
            };
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(serve(
                    listen,
                    site_listen,
                    site_max_request_bytes,
                    config,
                    server,
                    public_url,
                ))
        }
        Command::Tenant {
            url,
            admin_key,
            data_dir,
            action,
        } => tenant_command(&url, admin_key, &data_dir, action),
    }
}

async fn serve(
    listen: SocketAddr,
    site_listen: Option<SocketAddr>,
    site_max_request_bytes: usize,
    config: NimbusConfig,
    server: ServerConfig,
    public_url: String,
) -> Result<()> {
    let data_dir = config.data_dir.clone();
    let from_env = config.admin_key.is_some();
    let engine = config.pool.engine;
    let site = nimbus_server::SiteConfig {
        domain: server.domain.clone(),
        max_request_bytes: site_max_request_bytes,
    };
    let nimbus = Nimbus::open(config)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let site_listener = match site_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr} (--site-listen)"))?,
        ),
        None => None,
    };
    println!("nimbus listening on http://{listen} (public URL {public_url})");
    println!("  data dir:  {}", data_dir.display());
    println!("  functions: {}", engine.describe());
    if from_env {
        println!("  admin key: from NIMBUS_ADMIN_KEY");
    } else {
        println!("  admin key: {}", nimbus.admin_key_path().display());
    }
    println!("  tenants:   {public_url}/t/<tenant>  (create one: nimbus tenant create <name>)");
    if let Some(addr) = site_listen {
        println!("  HTTP actions: http://{addr}/t/<tenant>/<route>");
    }
    println!("  stop with Ctrl-C or SIGTERM");
    // One signal stops both listeners.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    let until_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let router = nimbus_server::router(nimbus.clone(), server);
    let api = nimbus_server::serve(listener, router, until_stopped(stopped.clone()));
    match site_listener {
        Some(site_listener) => {
            let site_router = nimbus_server::site_router(nimbus.clone(), site);
            let site = nimbus_server::serve(site_listener, site_router, until_stopped(stopped));
            let (api, site) = tokio::join!(api, site);
            api.context("serving")?;
            site.context("serving HTTP actions")?;
        }
        None => api.await.context("serving")?,
    }
    nimbus.shutdown().await;
    println!("nimbus stopped");
    Ok(())
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}

fn admin_key(explicit: Option<String>, data_dir: &std::path::Path) -> Result<String> {
    if let Some(key) = explicit {
        return Ok(key);
    }
    if let Ok(key) = std::env::var("NIMBUS_ADMIN_KEY") {
        if !key.is_empty() {
            return Ok(key);
        }
    }
    let path = data_dir.join("admin_key");
    let key = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no --admin-key, no NIMBUS_ADMIN_KEY, and cannot read {}",
            path.display()
        )
    })?;
    Ok(key.trim().to_string())
}

fn tenant_command(
    url: &str,
    admin_key_arg: Option<String>,
    data_dir: &std::path::Path,
    action: TenantAction,
) -> Result<()> {
    let key = admin_key(admin_key_arg, data_dir)?;
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let base = url.trim_end_matches('/');
    let request = match &action {
        TenantAction::Create {
            name,
            storage,
            server,
        } => {
            let mut body = serde_json::json!({"name": name});
            if let Some(storage) = storage {
                body["storage"] = storage.name().into();
            }
            if let Some(server) = server {
                body["server"] = server.as_str().into();
            }
            client.post(format!("{base}/admin/tenants")).json(&body)
        }
        TenantAction::Graduate { name, server } => {
            let query = server
                .as_ref()
                .map(|s| format!("?server={s}"))
                .unwrap_or_default();
            // A graduation copies the whole tenant: allow it far longer than a plain call.
            client
                .post(format!("{base}/admin/tenants/{name}/graduate{query}"))
                .timeout(Duration::from_secs(3600))
        }
        TenantAction::List => client.get(format!("{base}/admin/tenants")),
        TenantAction::Delete { name } => client.delete(format!("{base}/admin/tenants/{name}")),
    };
    let response = request
        .bearer_auth(key)
        .send()
        .with_context(|| format!("cannot reach {base}"))?;
    let status = response.status();
    let text = response.text().unwrap_or_default();
    let body: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    if !status.is_success() {
        let code = body
            .get("code")
            .and_then(|c| c.as_str())
            .unwrap_or("HttpError");
        let message = body
            .get("message")
            .and_then(|c| c.as_str())
            .unwrap_or(&text);
        bail!("{code}: {message} (HTTP {status})");
    }
    match action {
        TenantAction::Create { .. } => {
            println!(
                "created tenant {}",
                body["name"].as_str().unwrap_or_default()
            );
            println!("  url:       {}", body["url"].as_str().unwrap_or_default());
            println!(
                "  admin key: {}",
                body["adminKey"].as_str().unwrap_or_default()
            );
            println!("  (the admin key is shown only once; push code with CONVEX_SELF_HOSTED_URL=<url> CONVEX_SELF_HOSTED_ADMIN_KEY=<key> npx convex deploy)");
        }
        TenantAction::List => {
            for tenant in body["tenants"].as_array().into_iter().flatten() {
                println!(
                    "{}\t{}",
                    tenant["name"].as_str().unwrap_or_default(),
                    tenant["url"].as_str().unwrap_or_default()
                );
            }
        }
        TenantAction::Delete { name } => println!("deleted tenant {name}"),
        TenantAction::Graduate { name, .. } => {
            println!(
                "graduated tenant {name} to its own database on server {}",
                body["to"]["server"].as_str().unwrap_or_default()
            );
            println!(
                "  copied {} rows, replayed {} batches; writes paused {:.1} ms of {:.0} ms",
                body["copiedRows"],
                body["caughtUpBatches"].as_u64().unwrap_or(0)
                    + body["finalBatches"].as_u64().unwrap_or(0),
                body["pauseMs"].as_f64().unwrap_or(0.0),
                body["durationMs"].as_f64().unwrap_or(0.0)
            );
        }
    }
    Ok(())
}

fn parse_engine(text: &str) -> Result<nimbus_app::JsEngine, String> {
    text.parse()
}

//! `nimbus-bench`: load generator, scenarios and baselines for Nimbus.
//!
//! Load (`http`, `noisy`, `cold`) goes over real HTTP to servers on this machine; each run
//! has a warm-up, a bounded duration and a progress line per second on stderr, and prints
//! one JSON object on stdout (documented in BENCHMARKS.md). Setup commands (`seed`,
//! `provision`, `pocketbase-setup`) write a targets file the load commands read. `sqlite`
//! is the in-process rusqlite baseline, `js-floor` the cost of a function call in the
//! JavaScript engines alone. `report` turns a directory of results into the
//! Markdown of BENCHMARKS.md; `check` fails if any result has errors or no requests.
//! Targets are 127.0.0.1 only; every loop stops by itself.

mod cold;
mod http1;
mod js_floor;
mod live;
mod load;
mod noisy;
mod provision;
mod report;
mod sqlite;
mod stats;
mod workload;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use serde_json::Value as Json;

use workload::{System, Target, TargetsFile, Workload};

#[derive(Parser)]
#[command(
    name = "nimbus-bench",
    about = "Nimbus load generator, scenarios and baselines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The timing options shared by load runs.
#[derive(clap::Args, Clone, Copy)]
struct Timing {
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// The measured window (1..600 s).
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
}

impl Timing {
    fn warmup(self) -> Duration {
        Duration::from_secs(self.warmup_secs.min(60))
    }
    fn duration(self) -> Duration {
        Duration::from_secs(self.duration_secs.clamp(1, 600))
    }
}

#[derive(Subcommand)]
enum Command {
    /// HTTP load against one or more seeded targets (Nimbus tenants or PocketBase).
    Http {
        /// Targets file (from `seed`, `provision` or `pocketbase-setup`).
        #[arg(long, conflicts_with = "url")]
        targets: Option<PathBuf>,
        /// Use only the first N targets of the file.
        #[arg(long)]
        tenants: Option<usize>,
        /// One tenant URL instead of a targets file, e.g. http://127.0.0.1:3210/t/bench
        #[arg(long, requires = "shop")]
        url: Option<String>,
        /// Shop ID (with --url).
        #[arg(long)]
        shop: Option<String>,
        /// Product IDs, comma-separated (with --url); each order picks one at random.
        #[arg(long, value_delimiter = ',')]
        product: Vec<String>,
        #[arg(long, value_enum, default_value_t = System::Nimbus)]
        system: System,
        #[arg(long, value_enum)]
        workload: Workload,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Open loop: total requests per second, spread evenly over the connections.
        /// Latency is measured from each request's intended send time, so a stall shows
        /// up in the percentiles instead of silently lowering the send rate. Without it the
        /// run is closed-loop (each connection sends as soon as its previous answer arrives).
        #[arg(long)]
        rate: Option<f64>,
        /// A name for the run (progress lines and JSON `label`).
        #[arg(long)]
        label: Option<String>,
        #[command(flatten)]
        timing: Timing,
    },
    /// Noisy neighbour: the first target's steady open-loop traffic alone, then while the
    /// second target floods the server.
    Noisy {
        #[arg(long)]
        targets: PathBuf,
        #[arg(long, value_enum, default_value_t = Workload::Query)]
        steady_workload: Workload,
        /// The steady tenant's requests per second (open loop).
        #[arg(long, default_value_t = 200.0)]
        steady_rate: f64,
        #[arg(long, default_value_t = 8)]
        steady_connections: usize,
        #[arg(long, value_enum, default_value_t = Workload::Mutation)]
        neighbour_workload: Workload,
        /// The neighbour's connections (closed loop).
        #[arg(long, default_value_t = 64)]
        neighbour_connections: usize,
        /// Sets the neighbour's `inflight` limit first (`PATCH /admin/tenants/<t>`, with
        /// the instance key `--admin-key`), so what it sends beyond it is shed with 429s.
        #[arg(long)]
        neighbour_inflight: Option<u64>,
        /// The instance admin key (for `--neighbour-inflight`).
        #[arg(long, env = "NIMBUS_ADMIN_KEY", hide_env_values = true)]
        admin_key: Option<String>,
        #[command(flatten)]
        timing: Timing,
    },
    /// Subscription fan-out over WebSockets: one `products:get` subscription per seeded
    /// product of every target tenant, while an open-loop writer restocks random products;
    /// reports commit → notification latency and evaluations per commit.
    Live {
        #[arg(long)]
        targets: PathBuf,
        /// Server base URL, e.g. http://127.0.0.1:3210 (for the tenants' counters).
        #[arg(long)]
        base: String,
        /// Instance admin key (default: $NIMBUS_ADMIN_KEY).
        #[arg(long, env = "NIMBUS_ADMIN_KEY")]
        admin_key: String,
        /// Sockets per tenant; the tenant's subscriptions are spread over them.
        #[arg(long, default_value_t = 1)]
        connections_per_tenant: usize,
        /// Commits per second (open loop), each into one subscription's range.
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        #[command(flatten)]
        timing: Timing,
    },
    /// Seeds one tenant that has examples/pos and writes a targets file.
    Seed {
        /// Tenant URL, e.g. http://127.0.0.1:3210/t/bench
        #[arg(long)]
        url: String,
        #[arg(long, default_value = "bench")]
        name: String,
        #[arg(long, default_value_t = 1000)]
        products: usize,
        /// Open orders created so `orders:listOpen` reads a full page of 10.
        #[arg(long, default_value_t = 20)]
        open_orders: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        #[arg(long)]
        out: PathBuf,
    },
    /// Creates tenants `<prefix>000..` through the admin API (progress on stderr), pushes
    /// code to the first ones by replaying a start_push request the official CLI wrote, and
    /// seeds them. Writes a targets file; prints a JSON summary with the timings.
    Provision {
        /// Server URL, e.g. http://127.0.0.1:3299
        #[arg(long)]
        base: String,
        /// The instance admin key.
        #[arg(long, env = "NIMBUS_ADMIN_KEY", hide_env_values = true)]
        admin_key: String,
        #[arg(long, default_value = "t")]
        prefix: String,
        #[arg(long)]
        count: usize,
        /// Requests in flight while creating, pushing and seeding.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// The body `npx convex deploy --push-all-modules --write-push-request P` wrote to
        /// `P.json`.
        #[arg(long, requires = "push_count")]
        push_request: Option<PathBuf>,
        /// How many of the new tenants get the code (and are seeded).
        #[arg(long)]
        push_count: Option<usize>,
        #[arg(long, default_value_t = 20)]
        products: usize,
        #[arg(long, default_value_t = 20)]
        open_orders: usize,
        #[arg(long)]
        out: PathBuf,
    },
    /// Cold activation: first-request latency to registered but inactive tenants, and the
    /// server's resident memory.
    Cold {
        #[arg(long)]
        base: String,
        #[arg(long, env = "NIMBUS_ADMIN_KEY", hide_env_values = true)]
        admin_key: String,
        /// Targets file from `provision` (pushed tenants first).
        #[arg(long)]
        targets: PathBuf,
        /// The server's process ID, to read its resident memory.
        #[arg(long)]
        server_pid: Option<u32>,
        /// Tenants with code queried one at a time (each twice).
        #[arg(long, default_value_t = 200)]
        pushed_sequential: usize,
        /// Tenants without code activated one at a time (each twice).
        #[arg(long, default_value_t = 500)]
        sequential: usize,
        /// Further tenants with code queried `connections` at a time.
        #[arg(long, default_value_t = 800)]
        pushed_concurrent: usize,
        /// Further tenants without code activated `connections` at a time.
        #[arg(long, default_value_t = 2000)]
        concurrent: usize,
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// The server's --max-active-tenants, recorded in the JSON.
        #[arg(long)]
        max_active_tenants: Option<u64>,
        /// How long the restarted server took to become healthy, recorded in the JSON.
        #[arg(long)]
        restart_ms: Option<f64>,
        /// Queries/s sent open-loop to one already active tenant with code (the last one of
        /// the targets file) during every phase, to see what activations cost a tenant
        /// that is serving; 0 turns the probe off.
        #[arg(long, default_value_t = 50.0)]
        active_rate: f64,
    },
    /// Sets up PocketBase collections equivalent to examples/pos, seeds them and writes a
    /// targets file. Needs a superuser (`pocketbase superuser upsert EMAIL PASS`).
    PocketbaseSetup {
        /// PocketBase URL, e.g. http://127.0.0.1:3390
        #[arg(long)]
        url: String,
        #[arg(long)]
        email: String,
        #[arg(long, env = "POCKETBASE_PASSWORD", hide_env_values = true)]
        password: String,
        #[arg(long, default_value_t = 1000)]
        products: usize,
        #[arg(long, default_value_t = 20)]
        open_orders: usize,
        #[arg(long)]
        out: PathBuf,
    },
    /// The JavaScript floor: `examples/pos` calls in the JavaScript engine alone (V8 and
    /// QuickJS, each this build has), against a host that answers every syscall at once
    /// (no HTTP, engine or storage).
    JsFloor {
        /// A push request written by `npx convex deploy --write-push-request` for examples/pos.
        #[arg(long)]
        push_request: PathBuf,
        /// Measured calls per function.
        #[arg(long, default_value_t = 2000)]
        calls: usize,
        /// Only the functions whose label or name contains this text (all by default).
        #[arg(long)]
        only: Option<String>,
        /// Only this engine (`v8` or `quickjs`; both by default, where built in).
        #[arg(long)]
        engine: Option<nimbus_runtime::Engine>,
    },
    /// The same durable writes and indexed reads in-process with rusqlite.
    Sqlite {
        #[arg(long, default_value_t = 5)]
        duration_secs: u64,
        /// Rows per transaction in the grouped-write run.
        #[arg(long, default_value_t = 64)]
        group: usize,
        /// Reader threads for the indexed-read run.
        #[arg(long, default_value_t = 2)]
        readers: usize,
    },
    /// Prints the Markdown results section of BENCHMARKS.md from a results directory.
    Report {
        #[arg(long)]
        dir: PathBuf,
        /// The command that produced the results (shown in the report).
        #[arg(long)]
        command: String,
        /// A sentence added under the machine description.
        #[arg(long)]
        note: Option<String>,
    },
    /// Fails unless every result in the directory has requests and no errors.
    Check {
        #[arg(long)]
        dir: PathBuf,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn print(value: &Json) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn read_targets(path: &std::path::Path, limit: Option<usize>) -> Result<(System, Vec<Target>)> {
    let file = TargetsFile::read(path)?;
    let mut targets: Vec<Target> = file
        .targets
        .into_iter()
        .filter(|t| t.shop.is_some())
        .collect();
    if let Some(n) = limit {
        if targets.len() < n {
            bail!(
                "{} has {} seeded targets, {n} wanted",
                path.display(),
                targets.len()
            );
        }
        targets.truncate(n);
    }
    Ok((file.system, targets))
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Http {
            targets,
            tenants,
            url,
            shop,
            product,
            system,
            workload,
            connections,
            rate,
            label,
            timing,
        } => {
            let (system, targets) = match (targets, url) {
                (Some(path), None) => read_targets(&path, tenants)?,
                (None, Some(url)) => (
                    system,
                    vec![Target {
                        name: url.rsplit('/').next().unwrap_or("tenant").to_string(),
                        url,
                        admin_key: None,
                        shop,
                        products: product,
                    }],
                ),
                _ => bail!("give --targets FILE or --url"),
            };
            let label = label.unwrap_or_else(|| format!("{} {}", system.name(), workload.name()));
            let result = runtime()?.block_on(load::run(load::LoadSpec {
                label,
                system,
                workload,
                targets,
                connections,
                rate: rate.filter(|r| r.is_finite() && *r > 0.0),
                warmup: timing.warmup(),
                duration: timing.duration(),
            }))?;
            print(&result)
        }
        Command::Noisy {
            targets,
            steady_workload,
            steady_rate,
            steady_connections,
            neighbour_workload,
            neighbour_connections,
            neighbour_inflight,
            admin_key,
            timing,
        } => {
            let (_, targets) = read_targets(&targets, Some(2))?;
            let mut targets = targets.into_iter();
            let (Some(steady), Some(neighbour)) = (targets.next(), targets.next()) else {
                bail!("noisy needs two seeded tenants");
            };
            if !(steady_rate.is_finite() && steady_rate > 0.0) {
                bail!("--steady-rate must be positive");
            }
            let result = runtime()?.block_on(noisy::run(noisy::Noisy {
                steady,
                neighbour,
                steady_workload,
                steady_rate,
                steady_connections: steady_connections.max(1),
                neighbour_workload,
                neighbour_connections: neighbour_connections.max(1),
                neighbour_inflight: match (neighbour_inflight, admin_key) {
                    (Some(inflight), Some(key)) => Some((inflight, key)),
                    (Some(_), None) => bail!("--neighbour-inflight needs --admin-key"),
                    (None, _) => None,
                },
                warmup: timing.warmup(),
                duration: timing.duration(),
            }))?;
            print(&result)
        }
        Command::Live {
            targets,
            base,
            admin_key,
            connections_per_tenant,
            rate,
            timing,
        } => {
            let (_, targets) = read_targets(&targets, None)?;
            if !(rate.is_finite() && rate > 0.0) {
                bail!("--rate must be positive");
            }
            let result = runtime()?.block_on(live::run(live::LiveOptions {
                base: base.trim_end_matches('/').to_string(),
                admin_key,
                targets,
                connections_per_tenant: connections_per_tenant.max(1),
                rate,
                warmup: timing.warmup(),
                duration: timing.duration(),
            }))?;
            print(&result)
        }
        Command::Seed {
            url,
            name,
            products,
            open_orders,
            concurrency,
            out,
        } => {
            let target = Target {
                name,
                url,
                admin_key: None,
                shop: None,
                products: Vec::new(),
            };
            let seeded = runtime()?.block_on(async {
                let client = provision::client()?;
                provision::seed(&client, target, products, open_orders, concurrency).await
            })?;
            TargetsFile::new(System::Nimbus, vec![seeded]).write(&out)
        }
        Command::Provision {
            base,
            admin_key,
            prefix,
            count,
            concurrency,
            push_request,
            push_count,
            products,
            open_orders,
            out,
        } => {
            let push = match (push_request, push_count) {
                (Some(path), Some(n)) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    let body: Json = serde_json::from_str(&text)
                        .with_context(|| format!("{} is not JSON", path.display()))?;
                    Some((body, n))
                }
                _ => None,
            };
            let (targets, summary) =
                runtime()?.block_on(provision::provision(provision::Provision {
                    base,
                    admin_key,
                    prefix,
                    count,
                    concurrency: concurrency.max(1),
                    push,
                    products,
                    open_orders,
                }))?;
            TargetsFile::new(System::Nimbus, targets).write(&out)?;
            print(&summary)
        }
        Command::Cold {
            base,
            admin_key,
            targets,
            server_pid,
            pushed_sequential,
            sequential,
            pushed_concurrent,
            concurrent,
            connections,
            max_active_tenants,
            restart_ms,
            active_rate,
        } => {
            let file = TargetsFile::read(&targets)?;
            let connections = connections.max(1);
            let phase = |name, with_code, tenants, concurrency| cold::Phase {
                name,
                with_code,
                tenants,
                concurrency,
            };
            let phases = vec![
                phase(
                    "first query, tenants with code, one at a time",
                    true,
                    pushed_sequential,
                    1,
                ),
                phase(
                    "activation, tenants without code, one at a time",
                    false,
                    sequential,
                    1,
                ),
                phase(
                    "first query, tenants with code, concurrently",
                    true,
                    pushed_concurrent,
                    connections,
                ),
                phase(
                    "activation, tenants without code, concurrently",
                    false,
                    concurrent,
                    connections,
                ),
            ];
            let result = runtime()?.block_on(cold::run(cold::Cold {
                base,
                admin_key,
                targets: file.targets,
                server_pid,
                phases,
                max_active_tenants,
                restart_ms,
                active_rate,
            }))?;
            print(&result)
        }
        Command::PocketbaseSetup {
            url,
            email,
            password,
            products,
            open_orders,
            out,
        } => {
            let target = runtime()?.block_on(provision::pocketbase_setup(
                &url,
                &email,
                &password,
                products,
                open_orders,
            ))?;
            TargetsFile::new(System::Pocketbase, vec![target]).write(&out)
        }
        Command::JsFloor {
            push_request,
            calls,
            only,
            engine,
        } => {
            let result = runtime()?.block_on(js_floor::run(
                &push_request,
                calls.clamp(10, 1_000_000),
                only.as_deref(),
                engine,
            ))?;
            print(&result)
        }
        Command::Sqlite {
            duration_secs,
            group,
            readers,
        } => {
            let result = sqlite::baseline(
                Duration::from_secs(duration_secs.clamp(1, 600)),
                group.max(1),
                readers.max(1),
            )?;
            print(&result)
        }
        Command::Report { dir, command, note } => {
            print!("{}", report::render(&dir, &command, note.as_deref())?);
            Ok(())
        }
        Command::Check { dir } => report::check(&dir),
    }
}

//! `nimbus-bench`: load generator and baselines for Nimbus.
//!
//! - `http`: load against one tenant over HTTP for a bounded time after a warm-up, over C
//!   connections: closed-loop (each connection sends as soon as its previous answer
//!   arrives) or, with `--rate`, open-loop (a fixed schedule; latency counted from each
//!   request's intended send time, so coordinated omission cannot hide stalls). Latency per request goes into an HdrHistogram. Any non-success answer is
//!   counted by kind and fails the run's `errors` check.
//! - `sqlite`: the same durable work done in-process with rusqlite (WAL,
//!   `synchronous=FULL`): single-row transactions (one fsync each), grouped
//!   transactions (N rows per fsync, what group commit does), and indexed range reads of
//!   10 rows. The ceiling of the SQLite backend on this machine.
//!
//! Both print one JSON object on stdout (documented in BENCHMARKS.md) and a progress
//! line per second on stderr. Targets are 127.0.0.1 only; every loop stops by itself.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::{json, Value as Json};

#[derive(Parser)]
#[command(name = "nimbus-bench", about = "Nimbus load generator and baselines")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum Workload {
    /// `orders:create` with one line item (a durable mutation: 1 read, 1 patch, 2 inserts).
    Mutation,
    /// `orders:listOpen` with limit 10 (an indexed range query on the composite index).
    Query,
}

#[derive(Subcommand)]
enum Command {
    /// Closed-loop HTTP load against a tenant with examples/pos pushed and seeded.
    Http {
        /// Tenant URL, e.g. http://127.0.0.1:3210/t/bench
        #[arg(long)]
        url: String,
        #[arg(long, value_enum)]
        workload: Workload,
        /// Shop ID (from the seeding step).
        #[arg(long)]
        shop: String,
        /// Product IDs, comma-separated; each order picks one at random, as a shop's
        /// orders spread over its catalogue (one hot product would serialize every order).
        #[arg(long, value_delimiter = ',')]
        product: Vec<String>,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Open loop: total requests per second, spread evenly over the connections.
        /// Latency is measured from each request's intended send time, so a stall shows
        /// up in the percentiles instead of silently lowering the send rate. Without it the
        /// run is closed-loop (each connection sends as soon as its previous answer arrives).
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long, default_value_t = 2)]
        warmup_secs: u64,
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
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
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Http {
            url,
            workload,
            shop,
            product,
            connections,
            rate,
            warmup_secs,
            duration_secs,
        } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let result = runtime.block_on(http_load(HttpRun {
                url,
                workload,
                shop,
                product,
                connections: connections.max(1),
                rate: rate.filter(|r| r.is_finite() && *r > 0.0),
                warmup: Duration::from_secs(warmup_secs),
                duration: Duration::from_secs(duration_secs.clamp(1, 600)),
            }))?;
            println!("{}", serde_json::to_string_pretty(&result)?);
            Ok(())
        }
        Command::Sqlite {
            duration_secs,
            group,
            readers,
        } => {
            let result = sqlite_baseline(
                Duration::from_secs(duration_secs.clamp(1, 600)),
                group.max(1),
                readers.max(1),
            )?;
            println!("{}", serde_json::to_string_pretty(&result)?);
            Ok(())
        }
    }
}

struct HttpRun {
    url: String,
    workload: Workload,
    shop: String,
    product: Vec<String>,
    connections: usize,
    rate: Option<f64>,
    warmup: Duration,
    duration: Duration,
}

fn summary(histogram: &Histogram<u64>, count: u64, elapsed: Duration) -> Json {
    let ms = |micros: u64| micros as f64 / 1000.0;
    json!({
        "requests": count,
        "throughput_per_sec": (count as f64 / elapsed.as_secs_f64()).round(),
        "latency_ms": {
            "p50": ms(histogram.value_at_quantile(0.50)),
            "p95": ms(histogram.value_at_quantile(0.95)),
            "p99": ms(histogram.value_at_quantile(0.99)),
            "max": ms(histogram.max()),
        },
    })
}

fn new_histogram() -> Result<Histogram<u64>> {
    // Microseconds, 1 µs .. 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).context("histogram")
}

async fn http_load(run: HttpRun) -> Result<Json> {
    if !run.url.starts_with("http://127.") && !run.url.starts_with("http://localhost") {
        bail!(
            "load tests target this machine only (http://127.x or http://localhost), not {}",
            run.url
        );
    }
    if run.workload == Workload::Mutation && run.product.is_empty() {
        bail!("the mutation workload needs --product");
    }
    let endpoint = match run.workload {
        Workload::Mutation => "mutation",
        Workload::Query => "query",
    };
    // Request bodies prepared up front: the generator shares the CPU with the server.
    let bodies: Vec<Vec<u8>> = match run.workload {
        Workload::Mutation => run
            .product
            .iter()
            .map(|product| {
                serde_json::to_vec(
                    &json!({"path": "orders:create", "format": "convex_encoded_json",
                    "args": [{"shopId": run.shop, "items": [{"productId": product, "qty": 1.0}]}]}),
                )
            })
            .collect::<Result<_, _>>()?,
        Workload::Query => vec![serde_json::to_vec(
            &json!({"path": "orders:listOpen", "format": "convex_encoded_json",
            "args": [{"shopId": run.shop, "limit": 10.0}]}),
        )?],
    };
    let target = format!("{}/api/{endpoint}", run.url.trim_end_matches('/'));
    let bodies = Arc::new(bodies);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(run.connections)
        .timeout(Duration::from_secs(30))
        .build()?;
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(run.connections);
    // Open loop: each connection sends every `interval`, staggered across connections.
    let interval = run
        .rate
        .map(|rate| Duration::from_secs_f64(run.connections as f64 / rate));
    let schedule_start = tokio::time::Instant::now();
    let connections_f64 = run.connections as f64;
    for connection in 0..run.connections {
        let (client, target, bodies) = (client.clone(), target.clone(), bodies.clone());
        let (measuring, stop, completed) = (measuring.clone(), stop.clone(), completed.clone());
        tasks.push(tokio::spawn(async move {
            let mut histogram = new_histogram()?;
            let mut errors: std::collections::BTreeMap<String, u64> = Default::default();
            let mut count = 0u64;
            let mut next = connection.wrapping_mul(7919);
            let mut intended = interval
                .map(|every| schedule_start + every.mul_f64(connection as f64 / connections_f64));
            while !stop.load(Ordering::Relaxed) {
                let scheduled = match (&mut intended, interval) {
                    (Some(at), Some(every)) => {
                        let this = *at;
                        *at += every;
                        // A late request goes out at once; its latency still counts from
                        // when it should have been sent.
                        tokio::time::sleep_until(this).await;
                        Some(this.into_std())
                    }
                    _ => None,
                };
                // A cheap deterministic spread over the bodies (products).
                next = next.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                let body = &bodies[(next >> 8) % bodies.len()];
                let started = scheduled.unwrap_or_else(Instant::now);
                let outcome = client
                    .post(&target)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                let kind = match outcome {
                    Ok(response) if response.status().is_success() => {
                        let text = response.bytes().await.unwrap_or_default();
                        match serde_json::from_slice::<Json>(&text) {
                            Ok(v) if v["status"] == "success" => None,
                            Ok(v) => Some(format!(
                                "function:{}",
                                v["errorCode"].as_str().unwrap_or("unknown")
                            )),
                            Err(_) => Some("bad-json".to_string()),
                        }
                    }
                    Ok(response) => Some(format!("http-{}", response.status().as_u16())),
                    Err(e) if e.is_timeout() => Some("timeout".into()),
                    Err(_) => Some("connection".into()),
                };
                if measuring.load(Ordering::Relaxed) {
                    let micros = u64::try_from(started.elapsed().as_micros())
                        .unwrap_or(u64::MAX)
                        .max(1);
                    histogram.record(micros.min(60_000_000))?;
                    count += 1;
                    completed.fetch_add(1, Ordering::Relaxed);
                    if let Some(kind) = kind {
                        *errors.entry(kind).or_default() += 1;
                    }
                }
            }
            anyhow::Ok((histogram, count, errors))
        }));
    }
    tokio::time::sleep(run.warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let mut last = 0;
    while started.elapsed() < run.duration {
        tokio::time::sleep(
            Duration::from_secs(1).min(
                run.duration
                    .saturating_sub(started.elapsed())
                    .max(Duration::from_millis(1)),
            ),
        )
        .await;
        let now = completed.load(Ordering::Relaxed);
        eprintln!(
            "[{:>3}s] {:?}: {} req/s",
            started.elapsed().as_secs(),
            run.workload,
            now - last
        );
        last = now;
    }
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut histogram = new_histogram()?;
    let mut count = 0;
    let mut errors: std::collections::BTreeMap<String, u64> = Default::default();
    for task in tasks {
        let (h, c, e) = task.await??;
        histogram.add(&h)?;
        count += c;
        for (k, v) in e {
            *errors.entry(k).or_default() += v;
        }
    }
    let mut result = summary(&histogram, count, elapsed);
    result["schema_version"] = json!(1);
    result["kind"] = json!("http");
    result["workload"] = json!(format!("{:?}", run.workload).to_lowercase());
    result["connections"] = json!(run.connections);
    result["mode"] = json!(if run.rate.is_some() { "open" } else { "closed" });
    result["target_rate_per_sec"] = json!(run.rate);
    result["duration_secs"] = json!(elapsed.as_secs_f64());
    result["errors"] = json!(errors);
    Ok(result)
}

fn open_db(path: &std::path::Path) -> Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;
         CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, shop TEXT NOT NULL,
             status TEXT NOT NULL, created_at REAL NOT NULL, body TEXT NOT NULL);
         CREATE INDEX IF NOT EXISTS by_shop_status_created ON orders (shop, status, created_at);",
    )?;
    Ok(conn)
}

/// Writes rows of the same shape as a Nimbus order for `duration`, `rows_per_txn` rows per
/// durable transaction, from one thread.
fn write_run(conn: &rusqlite::Connection, duration: Duration, rows_per_txn: usize) -> Result<Json> {
    let mut histogram = new_histogram()?;
    let started = Instant::now();
    let mut rows = 0u64;
    let mut txns = 0u64;
    let body = r#"{"shopId":"k57a0f3y1t2xq9s8w6e4r5t7y9u1i3o5","status":"open","totalCents":1299,"createdAt":1764032400000}"#;
    while started.elapsed() < duration {
        let t0 = Instant::now();
        let tx = conn.unchecked_transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO orders (shop, status, created_at, body) VALUES (?1, 'open', ?2, ?3)",
            )?;
            for _ in 0..rows_per_txn {
                insert.execute(rusqlite::params![
                    format!("shop{}", rows % 10),
                    rows as f64,
                    body
                ])?;
                rows += 1;
            }
        }
        tx.commit()?;
        txns += 1;
        histogram.record(
            u64::try_from(t0.elapsed().as_micros())
                .unwrap_or(u64::MAX)
                .clamp(1, 60_000_000),
        )?;
    }
    let elapsed = started.elapsed();
    let mut out = summary(&histogram, txns, elapsed);
    out["rows_per_txn"] = json!(rows_per_txn);
    out["rows_per_sec"] = json!((rows as f64 / elapsed.as_secs_f64()).round());
    Ok(out)
}

fn sqlite_baseline(duration: Duration, group: usize, readers: usize) -> Result<Json> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("baseline.sqlite3");
    let conn = open_db(&path)?;
    eprintln!("rusqlite: single-row durable transactions for {duration:?}");
    let single = write_run(&conn, duration, 1)?;
    eprintln!("rusqlite: {group} rows per durable transaction for {duration:?}");
    let grouped = write_run(&conn, duration, group)?;
    eprintln!("rusqlite: indexed reads of 10 rows, {readers} threads, for {duration:?}");
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for reader in 0..readers {
        let (path, stop) = (path.clone(), stop.clone());
        threads.push(std::thread::spawn(move || -> Result<(Histogram<u64>, u64)> {
            let conn = open_db(&path)?;
            let mut histogram = new_histogram()?;
            let mut count = 0u64;
            let mut statement = conn.prepare(
                "SELECT body FROM orders WHERE shop = ?1 AND status = 'open' ORDER BY created_at DESC LIMIT 10",
            )?;
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let shop = format!("shop{}", (count as usize + reader) % 10);
                let rows: Vec<String> = statement
                    .query_map([shop], |r| r.get(0))?
                    .collect::<std::result::Result<_, _>>()?;
                if rows.len() != 10 {
                    bail!("expected 10 rows, got {}", rows.len());
                }
                histogram.record(u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX).clamp(1, 60_000_000))?;
                count += 1;
            }
            Ok((histogram, count))
        }));
    }
    let started = Instant::now();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let mut histogram = new_histogram()?;
    let mut count = 0;
    for thread in threads {
        let (h, c) = thread
            .join()
            .map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
        histogram.add(&h)?;
        count += c;
    }
    Ok(json!({
        "schema_version": 1,
        "kind": "sqlite-baseline",
        "single_row_txns": single,
        "grouped_txns": grouped,
        "indexed_reads": summary(&histogram, count, elapsed),
    }))
}

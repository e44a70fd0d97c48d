//! The HTTP load generator: C connections against one or more targets for a bounded time
//! after a warm-up, closed-loop (each connection sends as soon as its previous answer
//! arrives) or open-loop (`rate`: a fixed schedule; latency counted from each request's
//! intended send time, so coordinated omission cannot hide stalls). Requests rotate over the
//! targets, so every target gets the same share. Latency goes into HdrHistograms, in total
//! and per target.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use hdrhistogram::Histogram;
use serde_json::{json, Value as Json};

use crate::http1::{Connection, TimedOut, Url};
use crate::stats::{self, Errors};
use crate::workload::{classify, order_id, Method, Plan, System, Target, Workload};

/// A request without a complete answer after this long counts as a `timeout` error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A load run.
pub(crate) struct LoadSpec {
    /// Shown on the progress lines and recorded in the JSON.
    pub(crate) label: String,
    pub(crate) system: System,
    pub(crate) workload: Workload,
    pub(crate) targets: Vec<Target>,
    pub(crate) connections: usize,
    /// Open loop: total requests per second over all connections.
    pub(crate) rate: Option<f64>,
    pub(crate) warmup: Duration,
    pub(crate) duration: Duration,
}

/// What a connection (or a target) has seen in the measured window.
struct Tally {
    histogram: Histogram<u64>,
    count: u64,
    /// Successful requests alone (a refused request is fast, and would pull the
    /// percentiles of what was served down).
    accepted: Histogram<u64>,
    accepted_count: u64,
    errors: Errors,
}

impl Tally {
    fn new() -> Result<Tally> {
        Ok(Tally {
            histogram: stats::new_histogram()?,
            count: 0,
            accepted: stats::new_histogram()?,
            accepted_count: 0,
            errors: Errors::new(),
        })
    }

    fn add(&mut self, latency: Duration, error: Option<&str>) -> Result<()> {
        stats::record(&mut self.histogram, latency)?;
        self.count += 1;
        match error {
            Some(kind) => *self.errors.entry(kind.to_string()).or_default() += 1,
            None => {
                stats::record(&mut self.accepted, latency)?;
                self.accepted_count += 1;
            }
        }
        Ok(())
    }

    fn merge(&mut self, other: &Tally) -> Result<()> {
        self.histogram
            .add(&other.histogram)
            .map_err(|e| anyhow!("merging histograms: {e:?}"))?;
        self.count += other.count;
        self.accepted
            .add(&other.accepted)
            .map_err(|e| anyhow!("merging histograms: {e:?}"))?;
        self.accepted_count += other.accepted_count;
        stats::merge_errors(&mut self.errors, &other.errors);
        Ok(())
    }

    fn summary(&self, elapsed: Duration) -> Json {
        let mut out = stats::summary(&self.histogram, self.count, elapsed);
        out["errors"] = json!(self.errors);
        let accepted = stats::summary(&self.accepted, self.accepted_count, elapsed);
        out["accepted"] = json!({
            "count": self.accepted_count,
            "latency_ms": accepted["latency_ms"],
            // Microseconds in the histogram.
            "mean_ms": self.accepted.mean() / 1000.0,
        });
        out
    }
}

/// State shared by the connections of a run.
struct Shared {
    plans: Vec<Plan>,
    /// Each plan's URL, parsed once.
    urls: Vec<Url>,
    per_target: Option<Vec<Mutex<Tally>>>,
    next_target: AtomicUsize,
    measuring: AtomicBool,
    stop: AtomicBool,
    completed: AtomicU64,
    failed: AtomicU64,
    /// Makes PocketBase order IDs unique to this run.
    run_id: u64,
    system: System,
}

/// Runs the load and returns its JSON result (`kind: "http"`).
pub(crate) async fn run(spec: LoadSpec) -> Result<Json> {
    if spec.targets.is_empty() {
        return Err(anyhow!("{}: no targets", spec.label));
    }
    let connections = spec.connections.max(1);
    let plans = spec
        .targets
        .iter()
        .map(|t| Plan::new(spec.system, spec.workload, t))
        .collect::<Result<Vec<_>>>()?;
    let per_target = if spec.targets.len() > 1 {
        Some(
            (0..spec.targets.len())
                .map(|_| Tally::new().map(Mutex::new))
                .collect::<Result<Vec<_>>>()?,
        )
    } else {
        None
    };
    let urls = plans
        .iter()
        .map(|plan| Url::parse(plan.url()))
        .collect::<Result<Vec<_>>>()?;
    let shared = Arc::new(Shared {
        plans,
        urls,
        per_target,
        next_target: AtomicUsize::new(0),
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        completed: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        run_id: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
        system: spec.system,
    });
    // Open loop: each connection sends every `interval`, staggered across connections.
    let interval = spec
        .rate
        .map(|rate| Duration::from_secs_f64(connections as f64 / rate));
    let schedule_start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(connections);
    for connection in 0..connections {
        let shared = shared.clone();
        let first = interval
            .map(|every| schedule_start + every.mul_f64(connection as f64 / connections as f64));
        tasks.push(tokio::spawn(async move {
            connection_loop(&shared, connection, first, interval).await
        }));
    }
    if !spec.warmup.is_zero() {
        eprintln!("{}: warming up for {:?}", spec.label, spec.warmup);
    }
    tokio::time::sleep(spec.warmup).await;
    shared.measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let (mut last_done, mut last_failed) = (0, 0);
    while started.elapsed() < spec.duration {
        let left = spec.duration.saturating_sub(started.elapsed());
        tokio::time::sleep(Duration::from_secs(1).min(left.max(Duration::from_millis(1)))).await;
        let (done, failed) = (
            shared.completed.load(Ordering::Relaxed),
            shared.failed.load(Ordering::Relaxed),
        );
        eprintln!(
            "[{:>3}s] {}: {} req/s, {} errors",
            started.elapsed().as_secs(),
            spec.label,
            done - last_done,
            failed - last_failed
        );
        (last_done, last_failed) = (done, failed);
    }
    shared.measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    shared.stop.store(true, Ordering::Relaxed);
    let mut total = Tally::new()?;
    for task in tasks {
        total.merge(&task.await??)?;
    }
    let mut result = total.summary(elapsed);
    result["schema_version"] = json!(stats::SCHEMA_VERSION);
    result["kind"] = json!("http");
    result["label"] = json!(spec.label);
    result["system"] = json!(spec.system.name());
    result["workload"] = json!(spec.workload.name());
    result["connections"] = json!(connections);
    result["mode"] = json!(if spec.rate.is_some() {
        "open"
    } else {
        "closed"
    });
    result["target_rate_per_sec"] = json!(spec.rate);
    result["warmup_secs"] = json!(spec.warmup.as_secs_f64());
    result["duration_secs"] = json!(elapsed.as_secs_f64());
    result["tenants"] = json!(spec.targets.len());
    if let Some(per_target) = &shared.per_target {
        let mut rows = Vec::with_capacity(per_target.len());
        for (target, tally) in spec.targets.iter().zip(per_target) {
            let tally = tally
                .lock()
                .map_err(|_| anyhow!("a tally lock was poisoned"))?;
            let mut row = tally.summary(elapsed);
            row["tenant"] = json!(target.name);
            rows.push(row);
        }
        let field = |row: &Json, path: &str| row.pointer(path).and_then(Json::as_f64);
        let spread_of =
            |path: &str| stats::spread(rows.iter().filter_map(|r| field(r, path)).collect());
        result["per_tenant_spread"] = json!({
            "throughput_per_sec": spread_of("/throughput_per_sec"),
            "p50_ms": spread_of("/latency_ms/p50"),
            "p99_ms": spread_of("/latency_ms/p99"),
            "max_ms": spread_of("/latency_ms/max"),
        });
        result["per_tenant"] = json!(rows);
    }
    Ok(result)
}

/// How long a closed-loop connection waits after a 429 before its next request.
pub(crate) const OVERLOAD_BACKOFF: Duration = Duration::from_millis(100);

async fn connection_loop(
    shared: &Shared,
    connection: usize,
    mut intended: Option<tokio::time::Instant>,
    interval: Option<Duration>,
) -> Result<Tally> {
    let mut tally = Tally::new()?;
    let mut random = (connection as u64).wrapping_mul(7919) | 1;
    let mut seq = 0u64;
    let mut connections: Vec<(String, Connection)> = Vec::new();
    while !shared.stop.load(Ordering::Relaxed) {
        let scheduled = match (&mut intended, interval) {
            (Some(at), Some(every)) => {
                let this = *at;
                *at += every;
                // A late request goes out at once; its latency still counts from when it
                // should have been sent.
                tokio::time::sleep_until(this).await;
                Some(this.into_std())
            }
            _ => None,
        };
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        // xorshift: a cheap spread over products.
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        seq += 1;
        let target = shared.next_target.fetch_add(1, Ordering::Relaxed) % shared.plans.len();
        let id = order_id(shared.run_id, connection, seq);
        let request = shared.plans[target].request((random >> 8) as usize, &id)?;
        let started = scheduled.unwrap_or_else(Instant::now);
        let url = &shared.urls[target];
        // One keep-alive connection per server; the targets of a run share one server.
        let index = match connections.iter().position(|c| c.0 == url.authority) {
            Some(i) => i,
            None => {
                connections.push((
                    url.authority.clone(),
                    Connection::new(&url.authority, REQUEST_TIMEOUT),
                ));
                connections.len() - 1
            }
        };
        let (method, body) = match request.method {
            Method::Get => ("GET", None),
            Method::Post => ("POST", Some(&*request.body)),
        };
        let error = match connections[index].1.send(method, &url.path, body).await {
            Ok(response) => classify(shared.system, response.status, response.body),
            Err(e) if e.is::<TimedOut>() => Some("timeout".into()),
            Err(_) => Some("connection".into()),
        };
        if shared.measuring.load(Ordering::Relaxed) {
            let latency = started.elapsed();
            tally.add(latency, error.as_deref())?;
            if let Some(per_target) = &shared.per_target {
                per_target[target]
                    .lock()
                    .map_err(|_| anyhow!("a tally lock was poisoned"))?
                    .add(latency, error.as_deref())?;
            }
            shared.completed.fetch_add(1, Ordering::Relaxed);
            if error.is_some() {
                shared.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        // A closed loop refused for load backs off briefly, as a client honouring
        // `Retry-After` would, instead of turning the refusals into a flood of their own.
        if interval.is_none() && error.as_deref() == Some("http-429") {
            tokio::time::sleep(OVERLOAD_BACKOFF).await;
        }
    }
    Ok(tally)
}

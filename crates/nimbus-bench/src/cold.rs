//! Cold activation: the first request to tenants that are registered but not active (the
//! server was restarted after creating them), and the server's resident memory as more of
//! them become active.
//!
//! Phases run in order, each over tenants not touched before, one at a time (then a second,
//! warm request to the same tenant) or C at a time (each tenant once):
//! - tenants with `examples/pos` pushed and seeded get `orders:listOpen`, which opens the
//!   tenant's storage, loads its documents and code and creates its JavaScript runtime;
//! - tenants without code get `GET /admin/tenants/<name>/stats`, which activates the tenant
//!   (opens its storage and engine) and answers its counters; no function runs.
//!
//! Beyond `--max-active-tenants` the server closes the least recently used idle tenants.
//! Resident memory is `VmRSS` of the server process from `/proc/<pid>/status`, read after
//! each phase.
//!
//! Throughout, one tenant with code that is already active (the last of the targets file,
//! kept out of the phases) is queried open-loop at `active_rate`: its latency alone, then
//! during each phase, shows whether activating other tenants stalls a serving one.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::{json, Value as Json};

use crate::provision::bounded;
use crate::stats::{self, Errors, SCHEMA_VERSION};
use crate::workload::{check_local, classify, System, Target};

/// One phase: `tenants` tenants not touched before, `concurrency` at a time.
pub(crate) struct Phase {
    pub(crate) name: &'static str,
    /// Tenants with code get `orders:listOpen`; the others the stats request.
    pub(crate) with_code: bool,
    pub(crate) tenants: usize,
    pub(crate) concurrency: usize,
}

pub(crate) struct Cold {
    pub(crate) base: String,
    pub(crate) admin_key: String,
    pub(crate) targets: Vec<Target>,
    pub(crate) server_pid: Option<u32>,
    pub(crate) phases: Vec<Phase>,
    /// Recorded in the JSON only (the server's setting).
    pub(crate) max_active_tenants: Option<u64>,
    /// Recorded in the JSON only: how long the restarted server took to answer /health.
    pub(crate) restart_ms: Option<f64>,
    /// Queries/s to the already active tenant during each phase (0: no probe).
    pub(crate) active_rate: f64,
}

/// How long the active tenant is probed alone, before the phases.
const ACTIVE_ALONE: Duration = Duration::from_secs(3);

/// `(VmRSS, VmHWM)` of a process in KiB.
pub(crate) fn memory_kib(pid: u32) -> Result<(u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| anyhow!("{path}: no {name}"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// One request's latency and error kind.
type Outcome = (Duration, Option<String>);

async fn timed(request: reqwest::RequestBuilder, function_call: bool) -> Outcome {
    let started = Instant::now();
    let error = match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            match response.bytes().await {
                Ok(body) if function_call => classify(System::Nimbus, status, &body),
                Ok(body) => classify_admin(status, &body),
                Err(_) => Some("connection".into()),
            }
        }
        Err(e) if e.is_timeout() => Some("timeout".into()),
        Err(_) => Some("connection".into()),
    };
    (started.elapsed(), error)
}

/// An admin API answer: a 2xx JSON object.
fn classify_admin(status: u16, body: &[u8]) -> Option<String> {
    if !(200..300).contains(&status) {
        return Some(format!("http-{status}"));
    }
    match serde_json::from_slice::<Json>(body) {
        Ok(Json::Object(_)) => None,
        _ => Some("bad-json".into()),
    }
}

/// The request of each phase, as a builder for target `t`.
#[derive(Clone)]
enum Probe {
    Query,
    Stats { base: String, admin_key: String },
}

impl Probe {
    fn request(&self, client: &reqwest::Client, t: &Target) -> Result<reqwest::RequestBuilder> {
        Ok(match self {
            Probe::Query => {
                let shop = t
                    .shop
                    .as_deref()
                    .ok_or_else(|| anyhow!("{} was not seeded", t.name))?;
                client
                    .post(format!("{}/api/query", t.url.trim_end_matches('/')))
                    .json(
                        &json!({"path": "orders:listOpen", "format": "convex_encoded_json",
                        "args": [{"shopId": shop, "limit": 10.0}]}),
                    )
            }
            Probe::Stats { base, admin_key } => client
                .get(format!("{base}/admin/tenants/{}/stats", t.name))
                .header("authorization", format!("Bearer {admin_key}")),
        })
    }
}

/// A summary (latency percentiles, throughput over `elapsed`, errors by kind).
fn summarize(outcomes: &[&Outcome], elapsed: Duration) -> Result<Json> {
    let mut histogram = stats::new_histogram()?;
    let mut errors = Errors::new();
    for (latency, error) in outcomes {
        stats::record(&mut histogram, *latency)?;
        if let Some(kind) = error {
            *errors.entry(kind.clone()).or_default() += 1;
        }
    }
    let mut out = stats::summary(&histogram, outcomes.len() as u64, elapsed);
    out["errors"] = json!(errors);
    Ok(out)
}

/// Queries `target` open-loop at `rate` until `stop` turns true; latency runs from each
/// query's intended send time, so a stall shows however long it lasts.
async fn probe_active(
    client: reqwest::Client,
    target: Target,
    rate: f64,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Json> {
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.1));
    let started = Instant::now();
    let mut next = started;
    let mut in_flight = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => break,
            _ = tokio::time::sleep_until(next.into()) => {}
        }
        let intended = next;
        next += interval;
        let request = Probe::Query.request(&client, &target)?;
        in_flight.spawn(async move {
            let (_, error) = timed(request, true).await;
            (intended.elapsed(), error)
        });
    }
    let elapsed = started.elapsed();
    let mut outcomes = Vec::new();
    while let Some(done) = in_flight.join_next().await {
        outcomes.push(done?);
    }
    summarize(&outcomes.iter().collect::<Vec<_>>(), elapsed)
}

/// Runs `work` while probing the active tenant (if any); returns both results.
async fn with_active_probe<T>(
    client: &reqwest::Client,
    active: Option<&Target>,
    rate: f64,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<(T, Option<Json>)> {
    let Some(target) = active else {
        return Ok((work.await?, None));
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let probe = tokio::spawn(probe_active(client.clone(), target.clone(), rate, stop_rx));
    let result = work.await;
    let _ = stop_tx.send(true);
    let probed = probe
        .await
        .map_err(|e| anyhow!("the active-tenant probe failed: {e}"))??;
    Ok((result?, Some(probed)))
}

/// `{tenants, first_request: {...}, second_request?: {...}}` for one phase.
async fn phase(
    label: &str,
    client: &reqwest::Client,
    probe: Probe,
    targets: Vec<Target>,
    concurrency: usize,
    twice: bool,
) -> Result<Json> {
    let n = targets.len();
    let started = Instant::now();
    let (client, targets) = (client.clone(), std::sync::Arc::new(targets));
    let outcomes = bounded(label, n, concurrency, move |i| {
        let (client, targets, probe) = (client.clone(), targets.clone(), probe.clone());
        async move {
            let target = &targets[i];
            let call = matches!(probe, Probe::Query);
            let first = timed(probe.request(&client, target)?, call).await;
            let second = if twice {
                Some(timed(probe.request(&client, target)?, call).await)
            } else {
                None
            };
            anyhow::Ok((first, second))
        }
    })
    .await?;
    let elapsed = started.elapsed();
    let summarize = |outcomes: Vec<&Outcome>| summarize(&outcomes, elapsed);
    let mut out = json!({
        "tenants": n,
        "concurrency": concurrency,
        "elapsed_secs": elapsed.as_secs_f64(),
        "first_request": summarize(outcomes.iter().map(|(first, _)| first).collect())?,
    });
    if twice {
        out["second_request"] =
            summarize(outcomes.iter().filter_map(|(_, s)| s.as_ref()).collect())?;
    }
    Ok(out)
}

pub(crate) async fn run(c: Cold) -> Result<Json> {
    check_local(&c.base)?;
    let base = c.base.trim_end_matches('/').to_string();
    let most = c.phases.iter().map(|p| p.concurrency).max().unwrap_or(1);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(most.max(1))
        .timeout(Duration::from_secs(30))
        .build()?;
    let memory = |when: &str| -> Result<Option<(u64, u64)>> {
        match c.server_pid {
            Some(pid) => {
                let (rss, peak) = memory_kib(pid)?;
                eprintln!("server resident memory {when}: {} MiB", rss / 1024);
                Ok(Some((rss, peak)))
            }
            None => Ok(None),
        }
    };
    // Tenants with code come first in the targets file; each phase takes the next unused ones.
    let mut with_code: Vec<Target> = c
        .targets
        .iter()
        .take_while(|t| t.shop.is_some())
        .cloned()
        .collect();
    let registered_with_code = with_code.len();
    let active = if c.active_rate > 0.0 {
        Some(
            with_code
                .pop()
                .ok_or_else(|| anyhow!("the active-tenant probe needs a tenant with code"))?,
        )
    } else {
        None
    };
    let without_code: Vec<Target> = c.targets[registered_with_code..].to_vec();
    let (mut next_with, mut next_without) = (0, 0);
    for p in &c.phases {
        if p.with_code {
            next_with += p.tenants;
        } else {
            next_without += p.tenants;
        }
    }
    if next_with > with_code.len() || next_without > without_code.len() {
        bail!(
            "the phases need {next_with} tenants with code and {next_without} without; the targets file has {} and {}",
            with_code.len(),
            without_code.len()
        );
    }
    let mut active_alone = None;
    if let Some(target) = &active {
        // Activate it, then measure it alone.
        for _ in 0..3 {
            let (_, error) = timed(Probe::Query.request(&client, target)?, true).await;
            if let Some(error) = error {
                bail!("the active tenant {} failed: {error}", target.name);
            }
        }
        let (_, alone) = with_active_probe(&client, Some(target), c.active_rate, async {
            tokio::time::sleep(ACTIVE_ALONE).await;
            Ok(())
        })
        .await?;
        active_alone = alone;
    }
    let (mut next_with, mut next_without, mut activated) = (0, 0, 0);
    let mut last = memory("before any request")?;
    let before = last.map(|(rss, _)| rss);
    let mut phases = Vec::new();
    for p in c.phases.iter().filter(|p| p.tenants > 0) {
        let (probe, targets) = if p.with_code {
            next_with += p.tenants;
            (
                Probe::Query,
                with_code[next_with - p.tenants..next_with].to_vec(),
            )
        } else {
            next_without += p.tenants;
            (
                Probe::Stats {
                    base: base.clone(),
                    admin_key: c.admin_key.clone(),
                },
                without_code[next_without - p.tenants..next_without].to_vec(),
            )
        };
        let one_at_a_time = p.concurrency <= 1;
        let (mut out, probed) = with_active_probe(
            &client,
            active.as_ref(),
            c.active_rate,
            phase(
                p.name,
                &client,
                probe,
                targets,
                p.concurrency,
                one_at_a_time,
            ),
        )
        .await?;
        if let Some(probed) = probed {
            out["active_tenant"] = probed;
        }
        activated += p.tenants;
        let now = memory(&format!("after {}", p.name))?;
        out["name"] = json!(p.name);
        out["with_code"] = json!(p.with_code);
        out["request"] = json!(if p.with_code {
            "POST /t/<name>/api/query orders:listOpen"
        } else {
            "GET /admin/tenants/<name>/stats"
        });
        out["activated_so_far"] = json!(activated);
        if let (Some((rss, peak)), Some((rss_before, _))) = (now, last) {
            out["rss_kib_after"] = json!(rss);
            out["peak_kib_after"] = json!(peak);
            out["rss_kib_delta_per_tenant"] =
                json!(((rss as f64 - rss_before as f64) / p.tenants.max(1) as f64).round());
        }
        last = now;
        phases.push(out);
    }
    Ok(json!({
        "schema_version": SCHEMA_VERSION,
        "kind": "cold-activation",
        "registered_tenants": c.targets.len(),
        "registered_with_code": registered_with_code,
        "active_tenant": active.as_ref().map(|t| t.name.clone()),
        "active_rate": if active.is_some() { json!(c.active_rate) } else { json!(null) },
        "active_alone": active_alone,
        "max_active_tenants": c.max_active_tenants,
        "restart_ms": c.restart_ms,
        "rss_kib_before": before,
        "phases": phases,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn admin_answers() {
        assert_eq!(classify_admin(200, br#"{"commits":1}"#), None);
        assert_eq!(classify_admin(404, b"{}").as_deref(), Some("http-404"));
        assert_eq!(classify_admin(200, b"[]").as_deref(), Some("bad-json"));
    }

    #[test]
    fn reads_own_memory() {
        let (rss, peak) = memory_kib(std::process::id()).unwrap();
        assert!(rss > 0 && peak >= rss);
    }
}

//! `GET /metrics`: Prometheus text format (version 0.0.4), for the instance admin
//! (`Authorization: Bearer <instance admin key>`).
//!
//! Process-wide series, and per-tenant series for the tenants active now (an inactive tenant
//! has no series; its counters start again from zero when it is activated, which Prometheus
//! reads as a counter reset). Label cardinality is bounded: at most
//! [`crate::ServerConfig::metrics_max_tenants`] tenants get series of their own, those with
//! the most calls; the others are summed under `tenant="_other"` (no tenant name starts with
//! an underscore), and `nimbus_metrics_tenants_folded` says how many were.

use std::fmt::Write as _;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use nimbus_app::metrics::{CallOutcome, KindSnapshot, KINDS, LATENCY_BUCKETS_SECONDS};
use nimbus_app::{FunctionKind, TenantStats};

use crate::{ApiError, AppState, Incoming};

/// The label of the tenants folded together past the bound.
const OTHER: &str = "_other";

pub(crate) async fn handle(state: &AppState, incoming: &Incoming) -> Result<Response, ApiError> {
    state
        .authenticate_instance_admin(incoming, "/metrics")
        .await?;
    if incoming.method != axum::http::Method::GET {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "/metrics takes GET",
        ));
    }
    let mut tenants: Vec<(String, TenantStats)> = state
        .nimbus
        .active_tenant_handles()
        .iter()
        .map(|tenant| (tenant.name().to_string(), tenant.stats()))
        .collect();
    // The busiest first; ties by name, so the set shown is stable between scrapes.
    tenants.sort_by(|(a_name, a), (b_name, b)| {
        calls(b).cmp(&calls(a)).then_with(|| a_name.cmp(b_name))
    });
    let active_tenants = tenants.len();
    let limit = state.config.metrics_max_tenants;
    let folded = tenants.len().saturating_sub(limit);
    let mut shown: Vec<(String, TenantStats)> = Vec::with_capacity(tenants.len().min(limit + 1));
    let mut rest = tenants.into_iter();
    shown.extend(rest.by_ref().take(limit));
    let mut other: Option<TenantStats> = None;
    for (_, stats) in rest {
        match &mut other {
            Some(sum) => add_stats(sum, &stats),
            None => other = Some(stats),
        }
    }
    if let Some(sum) = other {
        shown.push((OTHER.to_string(), sum));
    }
    let process = Process {
        active_tenants,
        folded,
        connections: state.connections.open_total(),
        resident_bytes: resident_bytes(),
        uptime_seconds: state.started.elapsed().as_secs_f64(),
        js_cache: state.nimbus.js_cache_stats(),
        code_caches: nimbus_app::saved_code_cache_stats(),
        journal: state.nimbus.journal_stats(),
    };
    let body = render(&process, &shown);
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

fn calls(stats: &TenantStats) -> u64 {
    stats.requests.iter().map(KindSnapshot::count).sum()
}

/// Sums `other` into `sum` (the `_other` row): counters and gauges alike add up.
fn add_stats(sum: &mut TenantStats, other: &TenantStats) {
    let (e, o) = (&mut sum.engine, &other.engine);
    e.commits += o.commits;
    e.batches += o.batches;
    e.conflicts += o.conflicts;
    e.rejected_overload += o.rejected_overload;
    e.queue_depth += o.queue_depth;
    e.queue_capacity += o.queue_capacity;
    e.documents += o.documents;
    sum.inflight_calls += other.inflight_calls;
    sum.inflight_max += other.inflight_max;
    sum.rejected_calls += other.rejected_calls;
    sum.rejected_actions += other.rejected_actions;
    sum.actions_running += other.actions_running;
    sum.scheduler.pending += other.scheduler.pending;
    sum.scheduler.running += other.scheduler.running;
    sum.scheduler.succeeded += other.scheduler.succeeded;
    sum.scheduler.failed += other.scheduler.failed;
    sum.actions_max += other.actions_max;
    sum.cached_queries += other.cached_queries;
    sum.memory_bytes += other.memory_bytes;
    sum.live.sessions += other.live.sessions;
    sum.live.subscriptions += other.live.subscriptions;
    if let Some(lag) = other.journal {
        let folded = sum.journal.get_or_insert_with(Default::default);
        folded.records += lag.records;
        folded.bytes += lag.bytes;
        folded.oldest = folded.oldest.max(lag.oldest);
    }
    for (a, b) in sum.requests.iter_mut().zip(&other.requests) {
        a.add(b);
    }
}

struct Process {
    active_tenants: usize,
    folded: usize,
    connections: usize,
    resident_bytes: Option<u64>,
    uptime_seconds: f64,
    js_cache: nimbus_app::JsCacheStats,
    code_caches: nimbus_app::SavedCodeCacheStats,
    journal: Option<nimbus_app::JournalStats>,
}

/// The process's resident memory, from `/proc/self/statm` (Linux).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn kind_label(kind: FunctionKind) -> &'static str {
    match kind {
        FunctionKind::Query => "query",
        FunctionKind::Mutation => "mutation",
        FunctionKind::Action => "action",
    }
}

/// Writes `# HELP` and `# TYPE` for a family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One gauge or counter per tenant.
fn per_tenant(
    out: &mut String,
    tenants: &[(String, TenantStats)],
    name: &str,
    kind: &str,
    help: &str,
    value: impl Fn(&TenantStats) -> f64,
) {
    family(out, name, kind, help);
    for (tenant, stats) in tenants {
        let _ = writeln!(out, "{name}{{tenant=\"{tenant}\"}} {}", value(stats));
    }
}

fn render(process: &Process, tenants: &[(String, TenantStats)]) -> String {
    let mut out = String::with_capacity(4096 + tenants.len() * 4096);
    family(
        &mut out,
        "nimbus_active_tenants",
        "gauge",
        "Tenants active in memory.",
    );
    let _ = writeln!(out, "nimbus_active_tenants {}", process.active_tenants);
    family(
        &mut out,
        "nimbus_metrics_tenants_folded",
        "gauge",
        "Active tenants past the label bound (--metrics-max-tenants), summed under tenant=\"_other\".",
    );
    let _ = writeln!(out, "nimbus_metrics_tenants_folded {}", process.folded);
    family(
        &mut out,
        "nimbus_sync_connections",
        "gauge",
        "Open WebSocket sync connections, across tenants.",
    );
    let _ = writeln!(out, "nimbus_sync_connections {}", process.connections);
    if let Some(bytes) = process.resident_bytes {
        family(
            &mut out,
            "nimbus_process_resident_memory_bytes",
            "gauge",
            "Resident memory of the process.",
        );
        let _ = writeln!(out, "nimbus_process_resident_memory_bytes {bytes}");
    }
    family(
        &mut out,
        "nimbus_uptime_seconds",
        "gauge",
        "Seconds since the server started.",
    );
    let _ = writeln!(out, "nimbus_uptime_seconds {:.3}", process.uptime_seconds);
    for (name, kind, help, value) in [
        (
            "nimbus_js_cached_runtimes",
            "gauge",
            "Tenant JavaScript runtimes cached on the workers (--js-isolates-per-worker).",
            process.js_cache.runtimes as u64,
        ),
        (
            "nimbus_js_cached_runtime_bytes",
            "gauge",
            "Heap bytes of the cached runtimes, as last measured (--js-cache-mib-per-worker).",
            process.js_cache.bytes as u64,
        ),
        (
            "nimbus_js_runtime_cache_evictions_total",
            "counter",
            "Cached runtimes dropped to stay within the cache's bounds.",
            process.js_cache.evictions,
        ),
        (
            "nimbus_js_code_caches_saved_total",
            "counter",
            "V8 code caches a push's first runtime made after its first call, saved with the tenant.",
            process.code_caches.saved,
        ),
        (
            "nimbus_js_code_caches_restored_total",
            "counter",
            "Tenant activations that got their push's saved V8 code caches back.",
            process.code_caches.restored,
        ),
    ] {
        family(&mut out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }

    if let Some(journal) = &process.journal {
        for (name, kind, help, value) in [
            (
                "nimbus_journal_disk_bytes",
                "gauge",
                "Bytes of the shared journal's segments on disk (--journal-max-mib).",
                journal.disk_bytes,
            ),
            (
                "nimbus_journal_segments",
                "gauge",
                "Segment files of the shared journal.",
                journal.segments,
            ),
            (
                "nimbus_journal_syncs_total",
                "counter",
                "Rounds the shared journal wrote, each one sync, since the start.",
                journal.rounds,
            ),
            (
                "nimbus_journal_records_total",
                "counter",
                "Commit records appended to the shared journal since the start.",
                journal.records,
            ),
            (
                "nimbus_journal_tenants_behind",
                "gauge",
                "Tenants with journal records not yet synced to their own storage.",
                journal.tenants_behind,
            ),
        ] {
            family(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
    }
    per_tenant(
        &mut out,
        tenants,
        "nimbus_tenant_journal_unsynced_records",
        "gauge",
        "Journal records of the tenant applied to its storage but not yet synced there (0 when it does not commit through the journal).",
        |s| s.journal.map_or(0.0, |lag| lag.records as f64),
    );
    per_tenant(
        &mut out,
        tenants,
        "nimbus_tenant_commits_total",
        "counter",
        "Transactions committed.",
        |s| s.engine.commits as f64,
    );
    per_tenant(
        &mut out,
        tenants,
        "nimbus_tenant_commit_batches_total",
        "counter",
        "Group commits (storage writes).",
        |s| s.engine.batches as f64,
    );
    per_tenant(
        &mut out,
        tenants,
        "nimbus_tenant_conflicts_total",
        "counter",
        "Optimistic-concurrency conflicts (each re-runs a mutation).",
        |s| s.engine.conflicts as f64,
    );
    family(&mut out, "nimbus_tenant_rejected_total", "counter",
        "Requests refused with 429, by the limit hit: commit_queue (the admission queue is full), inflight (too many calls in flight) or actions (too many actions running).");
    for (tenant, s) in tenants {
        let _ = writeln!(
            out,
            "nimbus_tenant_rejected_total{{tenant=\"{tenant}\",reason=\"commit_queue\"}} {}",
            s.engine.rejected_overload
        );
        let _ = writeln!(
            out,
            "nimbus_tenant_rejected_total{{tenant=\"{tenant}\",reason=\"inflight\"}} {}",
            s.rejected_calls
        );
        let _ = writeln!(
            out,
            "nimbus_tenant_rejected_total{{tenant=\"{tenant}\",reason=\"actions\"}} {}",
            s.rejected_actions
        );
    }
    per_tenant(
        &mut out,
        tenants,
        "nimbus_tenant_commit_queue_depth",
        "gauge",
        "Transactions waiting in the admission queue.",
        |s| s.engine.queue_depth as f64,
    );
    per_tenant(
        &mut out,
        tenants,
        "nimbus_tenant_commit_queue_capacity",
        "gauge",
        "Capacity of the admission queue.",
        |s| s.engine.queue_capacity as f64,
    );
    per_tenant(
        &mut out,
        tenants,
        "nimbus_tenant_inflight_calls",
        "gauge",
        "Function calls executing or waiting for their commit.",
        |s| s.inflight_calls as f64,
    );
    per_tenant(
        &mut out,
        tenants,
        "nimbus_tenant_inflight_limit",
        "gauge",
        "Most function calls in flight before new ones get 429.",
        |s| s.inflight_max as f64,
    );
    per_tenant(
        &mut out,
        tenants,
        "nimbus_tenant_actions_running",
        "gauge",
        "Actions alive (running or waiting on their operations).",
        |s| s.actions_running as f64,
    );
    per_tenant(
        &mut out,
        tenants,
        "nimbus_tenant_scheduled_pending",
        "gauge",
        "Scheduled functions and cron runs waiting to run, due or not.",
        |s| s.scheduler.pending as f64,
    );
    per_tenant(
        &mut out,
        tenants,
        "nimbus_tenant_scheduled_running",
        "gauge",
        "Scheduled functions and cron runs running now.",
        |s| s.scheduler.running as f64,
    );
    per_tenant(
        &mut out,
        tenants,
        "nimbus_tenant_memory_bytes",
        "gauge",
        "Memory the instance budget counts for the tenant.",
        |s| s.memory_bytes as f64,
    );
    per_tenant(
        &mut out,
        tenants,
        "nimbus_tenant_documents",
        "gauge",
        "Documents resident in the serving snapshot.",
        |s| s.engine.documents as f64,
    );
    per_tenant(
        &mut out,
        tenants,
        "nimbus_tenant_cached_queries",
        "gauge",
        "Entries of the query cache.",
        |s| s.cached_queries as f64,
    );
    per_tenant(
        &mut out,
        tenants,
        "nimbus_tenant_sync_sessions",
        "gauge",
        "Open sync sessions (sockets).",
        |s| s.live.sessions as f64,
    );
    per_tenant(
        &mut out,
        tenants,
        "nimbus_tenant_subscriptions",
        "gauge",
        "Live query subscriptions.",
        |s| s.live.subscriptions as f64,
    );

    family(&mut out, "nimbus_tenant_calls_total", "counter",
        "Function calls over HTTP and the socket, by kind and outcome: success, failure (the function failed), error (the request failed: overload, unavailable, internal).");
    for (tenant, s) in tenants {
        for (kind, snapshot) in KINDS.iter().zip(&s.requests) {
            for outcome in CallOutcome::ALL {
                let _ = writeln!(
                    out,
                    "nimbus_tenant_calls_total{{tenant=\"{tenant}\",kind=\"{}\",outcome=\"{}\"}} {}",
                    kind_label(*kind),
                    outcome.as_str(),
                    snapshot.outcomes[outcome as usize]
                );
            }
        }
    }
    family(&mut out, "nimbus_request_duration_seconds", "histogram",
        "Time from a function call's arrival to its answer (queueing and commit included), by tenant and kind.");
    for (tenant, s) in tenants {
        for (kind, snapshot) in KINDS.iter().zip(&s.requests) {
            let labels = format!("tenant=\"{tenant}\",kind=\"{}\"", kind_label(*kind));
            for (bound, count) in LATENCY_BUCKETS_SECONDS.iter().zip(&snapshot.cumulative) {
                let _ = writeln!(
                    out,
                    "nimbus_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "nimbus_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                snapshot.count()
            );
            let _ = writeln!(
                out,
                "nimbus_request_duration_seconds_sum{{{labels}}} {}",
                snapshot.sum_seconds
            );
            let _ = writeln!(
                out,
                "nimbus_request_duration_seconds_count{{{labels}}} {}",
                snapshot.count()
            );
        }
    }
    out
}

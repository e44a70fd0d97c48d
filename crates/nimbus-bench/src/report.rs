//! The Markdown of BENCHMARKS.md's results section, rendered from a results directory that
//! `scripts/bench.sh` fills (file names below), and the smoke check over the same files.
//! A missing file leaves its rows out, so a partial run still renders.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context as _, Result};
use serde_json::Value as Json;

use crate::stats::error_total;

/// Result files of a full run, as `scripts/bench.sh` names them.
pub(crate) mod files {
    pub(crate) const HOT_MUTATION: &str = "hot-mutation.json";
    /// The one-insert mutation (`orders:open`).
    pub(crate) const HOT_INSERT: &str = "hot-insert.json";
    pub(crate) const HOT_QUERY: &str = "hot-query.json";
    pub(crate) const HOT_QUERY_UNCACHED: &str = "hot-query-uncached.json";
    /// The cached queries open-loop at the foundation issue's target rate.
    pub(crate) const HOT_QUERY_AT_TARGET: &str = "hot-query-target.json";
    pub(crate) const HOT_STATS_BEFORE: &str = "hot-stats-before.json";
    pub(crate) const HOT_STATS_AFTER: &str = "hot-stats-after.json";
    pub(crate) const TENANTS_MUTATION: &str = "tenants-mutation.json";
    pub(crate) const TENANTS_QUERY: &str = "tenants-query.json";
    pub(crate) const NOISY_QUERY: &str = "noisy-query.json";
    pub(crate) const NOISY_MUTATION: &str = "noisy-mutation.json";
    pub(crate) const NOISY_QUERY_CPU: &str = "noisy-query-cpu.json";
    pub(crate) const NOISY_MUTATION_CPU: &str = "noisy-mutation-cpu.json";
    pub(crate) const COLD_PROVISION: &str = "cold-provision.json";
    pub(crate) const COLD: &str = "cold.json";
    pub(crate) const LIVE: &str = "live.json";
    pub(crate) const POCKETBASE_MUTATION: &str = "pocketbase-mutation.json";
    pub(crate) const POCKETBASE_QUERY: &str = "pocketbase-query.json";
    pub(crate) const POCKETBASE_INSERT: &str = "pocketbase-insert.json";
    /// Text: why PocketBase was not measured.
    pub(crate) const POCKETBASE_SKIPPED: &str = "pocketbase-skipped.txt";
    /// Text: `pocketbase --version`.
    pub(crate) const POCKETBASE_VERSION: &str = "pocketbase-version.txt";
    pub(crate) const SQLITE: &str = "sqlite.json";
    pub(crate) const JS_FLOOR: &str = "js-floor.json";
    /// The cold phases again on QuickJS (`cold.json` is the default engine, V8).
    pub(crate) const QUICKJS_COLD: &str = "quickjs-cold.json";
    /// `engine-<engine>-<run>.json`: the engines back to back on the hot tenant.
    pub(crate) fn engine_run(engine: &str, run: &str) -> String {
        format!("engine-{engine}-{run}.json")
    }
}

fn read_json(dir: &Path, name: &str) -> Result<Option<Json>> {
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            Ok(Some(serde_json::from_str(&text).with_context(|| {
                format!("{} is not JSON", path.display())
            })?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn read_text(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(name))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn num(v: &Json, pointer: &str) -> Option<f64> {
    v.pointer(pointer).and_then(Json::as_f64)
}

/// A number as the tables show it: integers without decimals, others with up to 3.
fn fmt(x: Option<f64>) -> String {
    match x {
        Some(x) if x.fract() == 0.0 && x.abs() < 1e15 => format!("{}", x as i64),
        Some(x) => format!("{}", (x * 1000.0).round() / 1000.0),
        None => "—".into(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a / b < 0.095 => format!("{:.3}", a / b),
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "—".into(),
    }
}

fn latencies(r: &Json) -> String {
    ["p50", "p95", "p99", "max"]
        .iter()
        .map(|p| fmt(num(r, &format!("/latency_ms/{p}"))))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn errors(r: &Json) -> String {
    let list: Vec<String> = r["errors"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k}: {v}")).collect())
        .unwrap_or_default();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

fn throughput(r: &Json) -> String {
    format!("{}/s", fmt(num(r, "/throughput_per_sec")))
}

/// `Measured DATE on CPU, N cores, M GiB, Linux X`.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or("?".into(), |kib| format!("{:.0}", kib / 1024.0 / 1024.0));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400);
    format!(
        "Measured {} on {cpu}, {cores} cores, {gib} GiB, Linux {kernel}",
        civil_date(days)
    )
}

/// `YYYY-MM-DD` of a day number since 1970-01-01 (proleptic Gregorian calendar).
fn civil_date(days: u64) -> String {
    let (year, month, day) = nimbus_types::timestamp::civil_date(days as i64);
    format!("{year:04}-{month:02}-{day:02}")
}

/// The results section, between the `results` markers.
pub(crate) fn render(dir: &Path, command: &str, note: Option<&str>) -> Result<String> {
    let mut out = String::from("<!-- results:start -->\n");
    writeln!(
        out,
        "{}; load generator on the same machine.{}",
        machine(),
        note.map(|n| format!(" {n}")).unwrap_or_default()
    )?;
    writeln!(out, "Command: `{command}`.")?;
    hot_section(dir, &mut out)?;
    js_floor_section(dir, &mut out)?;
    engines_section(dir, &mut out)?;
    tenants_section(dir, &mut out)?;
    noisy_section(dir, &mut out)?;
    live_section(dir, &mut out)?;
    cold_section(dir, &mut out)?;
    out.push_str("<!-- results:end -->\n");
    Ok(out)
}

fn hot_section(dir: &Path, out: &mut String) -> Result<()> {
    use files::*;
    let m = read_json(dir, HOT_MUTATION)?;
    let i = read_json(dir, HOT_INSERT)?;
    let q = read_json(dir, HOT_QUERY)?;
    let u = read_json(dir, HOT_QUERY_UNCACHED)?;
    let qt = read_json(dir, HOT_QUERY_AT_TARGET)?;
    let pm = read_json(dir, POCKETBASE_MUTATION)?;
    let pq = read_json(dir, POCKETBASE_QUERY)?;
    let pi = read_json(dir, POCKETBASE_INSERT)?;
    let s = read_json(dir, SQLITE)?;
    let skipped = read_text(dir, POCKETBASE_SKIPPED);
    if [&m, &i, &q, &u, &pm, &pi, &pq, &s]
        .iter()
        .all(|r| r.is_none())
        && skipped.is_none()
    {
        return Ok(());
    }
    let pb = read_text(dir, POCKETBASE_VERSION).unwrap_or_else(|| "PocketBase".into());
    let pb = pb.replace("pocketbase version ", "PocketBase ");
    writeln!(
        out,
        "\n### One hot tenant, beside PocketBase and raw rusqlite\n"
    )?;
    writeln!(
        out,
        "| run | throughput | p50 / p95 / p99 / max (ms) | errors |"
    )?;
    writeln!(out, "|---|---|---|---|")?;
    let conns = |r: &Json| fmt(num(r, "/connections"));
    let at_rate = qt
        .as_ref()
        .map(|r| fmt(num(r, "/target_rate_per_sec")))
        .unwrap_or_default();
    let rows: [(&Option<Json>, String); 8] = [
        (&m, "Nimbus: durable mutations (`orders:create`: read a product, patch its stock, insert the order and its item; fsynced)".into()),
        (&i, "Nimbus: the smallest durable mutation (`orders:open`: insert one order; fsynced)".into()),
        (&q, "Nimbus: indexed queries (`orders:listOpen`, 10 rows), query cache on (the default; repeated query, so hits)".into()),
        (&qt, format!("Nimbus: the same cached queries, open loop at {at_rate}/s (the foundation issue's target rate; latency from each request's intended send time)")),
        (&u, "Nimbus: the same queries with `--query-cache-entries 0` (every call runs the function in the JavaScript engine)".into()),
        (&pm, format!("{pb}: the same write as one `/api/batch` transaction (stock decrement, order, item; **not fsynced**, see below)")),
        (&pi, format!("{pb}: the same one-order insert, one record created (**not fsynced**)")),
        (&pq, format!("{pb}: list of a shop's 10 newest open orders (filter + sort on a composite index, `skipTotal`)")),
    ];
    for (result, what) in rows {
        if let Some(r) = result {
            writeln!(
                out,
                "| {what}, HTTP, {} connections | {} | {} | {} |",
                conns(r),
                throughput(r),
                latencies(r),
                errors(r)
            )?;
        }
    }
    if let Some(s) = &s {
        writeln!(
            out,
            "| rusqlite: 1-row durable transactions (fsync each), 1 thread | {} | {} | — |",
            throughput(&s["single_row_txns"]),
            latencies(&s["single_row_txns"])
        )?;
        writeln!(
            out,
            "| rusqlite: {}-row durable transactions, 1 thread | {} rows/s ({} txns/s) | {} | — |",
            fmt(num(s, "/grouped_txns/rows_per_txn")),
            fmt(num(s, "/grouped_txns/rows_per_sec")),
            fmt(num(s, "/grouped_txns/throughput_per_sec")),
            latencies(&s["grouped_txns"])
        )?;
        writeln!(
            out,
            "| rusqlite: indexed reads of 10 rows, {} threads | {} | {} | — |",
            fmt(num(s, "/readers")),
            throughput(&s["indexed_reads"]),
            latencies(&s["indexed_reads"])
        )?;
    }
    if let (Some(before), Some(after)) = (
        read_json(dir, HOT_STATS_BEFORE)?,
        read_json(dir, HOT_STATS_AFTER)?,
    ) {
        let delta = |k: &str| {
            num(&after, &format!("/{k}")).unwrap_or(0.0)
                - num(&before, &format!("/{k}")).unwrap_or(0.0)
        };
        let (commits, batches, conflicts) =
            (delta("commits"), delta("commitBatches"), delta("conflicts"));
        writeln!(
            out,
            "\nDuring the Nimbus mutation run the tenant committed {} mutations in {} storage batches (fsyncs), {:.1} per batch on average, with {} write conflicts retried.",
            fmt(Some(commits)),
            fmt(Some(batches)),
            commits / batches.max(1.0),
            fmt(Some(conflicts))
        )?;
    }
    let tp = |r: &Option<Json>| r.as_ref().and_then(|r| num(r, "/throughput_per_sec"));
    let p99 = |r: &Option<Json>| r.as_ref().and_then(|r| num(r, "/latency_ms/p99"));
    if pm.is_some() || pq.is_some() {
        writeln!(
            out,
            "\nNimbus / PocketBase, same run, same client and connections: mutations {} × the throughput at {} × the p99; queries {} × (cached) and {} × (uncached) the throughput at {} × and {} × the p99.",
            ratio(tp(&m), tp(&pm)),
            ratio(p99(&m), p99(&pm)),
            ratio(tp(&q), tp(&pq)),
            ratio(tp(&u), tp(&pq)),
            ratio(p99(&q), p99(&pq)),
            ratio(p99(&u), p99(&pq)),
        )?;
        if i.is_some() && pi.is_some() {
            writeln!(
                out,
                "One-order inserts: Nimbus {} × PocketBase's throughput at {} × the p99.",
                ratio(tp(&i), tp(&pi)),
                ratio(p99(&i), p99(&pi)),
            )?;
        }
        writeln!(
            out,
            "PocketBase keeps SQLite in WAL mode with `synchronous=NORMAL`: a commit is written to the WAL but not fsynced (only checkpoints are), so an acknowledged write can be lost on power failure. Nimbus and the rusqlite rows acknowledge a write only after fsync."
        )?;
    }
    if let Some(reason) = skipped {
        writeln!(out, "\nPocketBase was not measured in this run: {reason}")?;
    }
    if let Some(s) = &s {
        let at = |p: &str| num(s, p);
        writeln!(
            out,
            "\nNimbus / rusqlite: mutations {} × the 1-row durable transactions and {} × the grouped rows, one-order inserts {} × and {} ×; queries {} × (cached) and {} × (uncached) the indexed reads.",
            ratio(tp(&m), at("/single_row_txns/throughput_per_sec")),
            ratio(tp(&m), at("/grouped_txns/rows_per_sec")),
            ratio(tp(&i), at("/single_row_txns/throughput_per_sec")),
            ratio(tp(&i), at("/grouped_txns/rows_per_sec")),
            ratio(tp(&q), at("/indexed_reads/throughput_per_sec")),
            ratio(tp(&u), at("/indexed_reads/throughput_per_sec")),
        )?;
    }
    Ok(())
}

fn tenants_section(dir: &Path, out: &mut String) -> Result<()> {
    use files::*;
    let runs = [
        (
            read_json(dir, TENANTS_MUTATION)?,
            read_json(dir, HOT_MUTATION)?,
            "durable mutations (`orders:create`)",
        ),
        (
            read_json(dir, TENANTS_QUERY)?,
            read_json(dir, HOT_QUERY)?,
            "indexed queries (`orders:listOpen`, cache on)",
        ),
    ];
    if runs.iter().all(|(r, _, _)| r.is_none()) {
        return Ok(());
    }
    let n = runs
        .iter()
        .find_map(|(r, _, _)| r.as_ref().and_then(|r| num(r, "/tenants")))
        .unwrap_or(0.0);
    writeln!(out, "\n### {} tenants evenly loaded\n", fmt(Some(n)))?;
    writeln!(out, "Requests rotate over the tenants; per-tenant figures are summarized as min / median / max over the tenants.\n")?;
    writeln!(out, "| run | throughput, total | p50 / p95 / p99 / max (ms), total | per-tenant throughput | per-tenant p99 (ms) | errors | throughput vs one hot tenant |")?;
    writeln!(out, "|---|---|---|---|---|---|---|")?;
    for (r, hot, what) in &runs {
        let Some(r) = r else { continue };
        let spread = |field: &str, unit: &str| {
            ["min", "median", "max"]
                .iter()
                .map(|k| fmt(num(r, &format!("/per_tenant_spread/{field}/{k}"))) + unit)
                .collect::<Vec<_>>()
                .join(" / ")
        };
        writeln!(
            out,
            "| {what}, {} connections | {} | {} | {} | {} | {} | {} |",
            fmt(num(r, "/connections")),
            throughput(r),
            latencies(r),
            spread("throughput_per_sec", "/s"),
            spread("p99_ms", ""),
            errors(r),
            ratio(
                num(r, "/throughput_per_sec"),
                hot.as_ref().and_then(|h| num(h, "/throughput_per_sec"))
            ),
        )?;
    }
    Ok(())
}

fn noisy_section(dir: &Path, out: &mut String) -> Result<()> {
    use files::*;
    let runs: Vec<Json> = [
        NOISY_QUERY,
        NOISY_MUTATION,
        NOISY_QUERY_CPU,
        NOISY_MUTATION_CPU,
    ]
    .iter()
    .map(|f| read_json(dir, f))
    .collect::<Result<Vec<_>>>()?
    .into_iter()
    .flatten()
    .collect();
    if runs.is_empty() {
        return Ok(());
    }
    writeln!(out, "\n### Noisy neighbour\n")?;
    writeln!(out, "A steady tenant sends open-loop traffic, first alone, then while a second tenant floods the same server in a closed loop, with an in-flight limit that sheds its excess (429; a refused connection backs off 100 ms). The neighbour floods either durable mutations (`orders:create`) or CPU-only queries (`load:burn`, about 50 ms each). The neighbour's accepted calls have a mean latency of at most its in-flight limit divided by its accepted throughput (Little's law, `docs/limits.md`); its p99 is shown beside that bound. Target for every ratio: at most 1.25.\n")?;
    writeln!(out, "| steady tenant (open loop) | alone: throughput, p50 / p99 (ms) | with the neighbour: throughput, p50 / p99 (ms) | p99 with / alone | neighbour (closed loop): accepted/s, accepted mean / p99 (ms), bound on the mean (ms) | neighbour shed | steady errors |")?;
    writeln!(out, "|---|---|---|---|---|---|---|")?;
    for r in &runs {
        let (a, w, n) = (&r["alone"], &r["with_neighbour"], &r["neighbour"]);
        let brief = |x: &Json| {
            format!(
                "{}, {} / {}",
                throughput(x),
                fmt(num(x, "/latency_ms/p50")),
                fmt(num(x, "/latency_ms/p99"))
            )
        };
        let accepted = &n["accepted"];
        let accepted_count = num(accepted, "/count");
        let seconds = num(n, "/duration_secs");
        let accepted_rate = match (accepted_count, seconds) {
            (Some(c), Some(s)) if s > 0.0 => Some(c / s),
            _ => None,
        };
        let bound_ms = match (num(r, "/neighbour_inflight_limit"), accepted_rate) {
            (Some(limit), Some(rate)) if rate > 0.0 => Some(1000.0 * limit / rate),
            _ => None,
        };
        let steady_errs: Vec<String> = [("alone", a), ("with", w)]
            .iter()
            .filter(|(_, x)| error_total(&x["errors"]) > 0)
            .map(|(k, x)| format!("{k}: {}", errors(x)))
            .collect();
        writeln!(
            out,
            "| {} at {}/s, {} connections | {} | {} | **{}** | {} with {} connections: {}/s, {} / {}, {} | {} | {} |",
            a["workload"].as_str().unwrap_or("?"),
            fmt(num(a, "/target_rate_per_sec")),
            fmt(num(a, "/connections")),
            brief(a),
            brief(w),
            ratio(num(w, "/latency_ms/p99"), num(a, "/latency_ms/p99")),
            n["workload"].as_str().unwrap_or("?"),
            fmt(num(n, "/connections")),
            fmt(accepted_rate.map(f64::round)),
            fmt(num(accepted, "/mean_ms").map(|m| (m * 10.0).round() / 10.0)),
            fmt(num(accepted, "/latency_ms/p99")),
            fmt(bound_ms.map(f64::round)),
            if error_total(&n["errors"]) > 0 { errors(n) } else { "none".into() },
            if steady_errs.is_empty() { "none".into() } else { steady_errs.join("; ") },
        )?;
    }
    Ok(())
}

/// Subscription fan-out (`nimbus-bench live`): latencies are in microseconds in the JSON and
/// shown in milliseconds.
/// V8 against QuickJS from this run, with the targets of issue 12 for V8.
fn engines_section(dir: &Path, out: &mut String) -> Result<()> {
    use files::*;
    let run = |engine: &str, name: &str| read_json(dir, &engine_run(engine, name));
    let (v8_create, qjs_create) = (run("v8", "mutation")?, run("quickjs", "mutation")?);
    let (v8_open, qjs_open) = (run("v8", "insert")?, run("quickjs", "insert")?);
    let (v8_list, qjs_list) = (
        run("v8", "query-uncached")?,
        run("quickjs", "query-uncached")?,
    );
    let (v8_cold, qjs_cold) = (read_json(dir, COLD)?, read_json(dir, QUICKJS_COLD)?);
    let floor = read_json(dir, JS_FLOOR)?;
    if v8_create.is_none() && qjs_create.is_none() && qjs_cold.is_none() {
        return Ok(());
    }
    writeln!(
        out,
        "
### V8 and QuickJS, same run
"
    )?;
    writeln!(
        out,
        "The HTTP rows ran back to back on the hot tenant's data after the runs above (V8, then QuickJS; {} connections each; uncached queries with `--query-cache-entries 0`). The first-request rows are the cold activation's first phase (tenants with code, one at a time, after a restart), once per engine. Targets are issue 12's, for V8, on this 2-core machine with the load generator on it.\n",
        v8_create
            .as_ref()
            .map(|r| fmt(num(r, "/connections")))
            .unwrap_or_else(|| "—".into())
    )?;
    writeln!(out, "| measure | QuickJS | V8 | target (V8) |")?;
    writeln!(out, "|---|---|---|---|")?;
    let met = |ok: Option<bool>| match ok {
        Some(true) => "met",
        Some(false) => "missed",
        None => "—",
    };
    // The JavaScript floor of a Convex function (mean µs), per engine.
    let floor_of = |engine: &str, function: &str| -> Option<f64> {
        floor.as_ref()?["results"]
            .as_array()?
            .iter()
            .find(|r| {
                r["engine"].as_str() == Some(engine)
                    && r["function"].as_str() == Some(function)
                    && r["label"]
                        .as_str()
                        .is_some_and(|l| l.contains("Convex library"))
            })
            .and_then(|r| num(r, "/mean_us"))
    };
    for function in ["orders:create", "orders:listOpen"] {
        let (q, v) = (floor_of("quickjs", function), floor_of("v8", function));
        let times = q.zip(v).map(|(q, v)| q / v);
        writeln!(
            out,
            "| JavaScript floor, `{function}` (mean) | {} µs | {} µs ({} lower) | ≥ 4× lower: {} |",
            fmt(q.map(f64::round)),
            fmt(v.map(f64::round)),
            times.map_or("—".into(), |t| format!("{t:.1}×")),
            met(times.map(|t| t >= 4.0)),
        )?;
    }
    let http = |r: &Option<Json>| match r {
        Some(r) => format!(
            "{}, p99 {} ms",
            throughput(r),
            fmt(num(r, "/latency_ms/p99"))
        ),
        None => "—".into(),
    };
    let rate_met = |r: &Option<Json>, rate: f64, p99: Option<f64>| {
        r.as_ref().map(|r| {
            num(r, "/throughput_per_sec").is_some_and(|t| t >= rate)
                && p99.is_none_or(|limit| num(r, "/latency_ms/p99").is_some_and(|p| p < limit))
                && error_total(&r["errors"]) == 0
        })
    };
    let rows = [
        (
            "`orders:create` over HTTP, fsynced",
            &qjs_create,
            &v8_create,
            "≥ 7,000/s, p99 < 15 ms",
            rate_met(&v8_create, 7000.0, Some(15.0)),
        ),
        (
            "`orders:open` over HTTP, fsynced",
            &qjs_open,
            &v8_open,
            "≥ 12,000/s, p99 < 15 ms",
            rate_met(&v8_open, 12000.0, Some(15.0)),
        ),
        (
            "uncached `orders:listOpen` over HTTP",
            &qjs_list,
            &v8_list,
            "≥ 8,000/s",
            rate_met(&v8_list, 8000.0, None),
        ),
    ];
    for (what, q, v, target, ok) in rows {
        writeln!(
            out,
            "| {what} | {} | {} | {target}: {} |",
            http(q),
            http(v),
            met(ok)
        )?;
    }
    let first_phase = |c: &Option<Json>| c.as_ref().and_then(|c| c["phases"].get(0).cloned());
    let (q0, v0) = (first_phase(&qjs_cold), first_phase(&v8_cold));
    let first = |p: &Option<Json>| match p {
        Some(p) => format!(
            "{} / {} ms",
            fmt(num(p, "/first_request/latency_ms/p50")),
            fmt(num(p, "/first_request/latency_ms/p99"))
        ),
        None => "—".into(),
    };
    writeln!(
        out,
        "| first request to a tenant with code, one at a time ({} tenants): p50 / p99 | {} | {} | p99 ≤ 10 ms: {} |",
        v0.as_ref()
            .map(|p| fmt(num(p, "/tenants")))
            .unwrap_or_else(|| "—".into()),
        first(&q0),
        first(&v0),
        met(v0
            .as_ref()
            .and_then(|p| num(p, "/first_request/latency_ms/p99"))
            .map(|p| p <= 10.0)),
    )?;
    let rss = |p: &Option<Json>| {
        p.as_ref()
            .and_then(|p| num(p, "/rss_kib_delta_per_tenant"))
            .map_or("—".into(), |k| format!("{} KiB", fmt(Some(k.round()))))
    };
    writeln!(
        out,
        "| resident memory per active tenant with code (VmRSS growth over that phase) | {} | {} | ≤ 3 MiB: {} |",
        rss(&q0),
        rss(&v0),
        met(v0
            .as_ref()
            .and_then(|p| num(p, "/rss_kib_delta_per_tenant"))
            .map(|k| k <= 3072.0)),
    )?;
    Ok(())
}

fn js_floor_section(dir: &Path, out: &mut String) -> Result<()> {
    let Some(j) = read_json(dir, files::JS_FLOOR)? else {
        return Ok(());
    };
    let results: Vec<&Json> = j["results"].as_array().into_iter().flatten().collect();
    // Results name their engine; older ones (QuickJS only) do not.
    let engine_of = |r: &Json| r["engine"].as_str().unwrap_or("quickjs").to_string();
    let mut engines: Vec<String> = Vec::new();
    for r in &results {
        let engine = engine_of(r);
        if !engines.contains(&engine) {
            engines.push(engine);
        }
    }
    let title = |e: &str| {
        match e {
            "v8" => "V8",
            "quickjs" => "QuickJS",
            other => other,
        }
        .to_string()
    };
    let names: Vec<String> = engines.iter().map(|e| title(e)).collect();
    writeln!(
        out,
        "\n### The JavaScript floor: one call in {}, nothing else\n",
        names.join(" and in ")
    )?;
    writeln!(
        out,
        "The pushed `examples/pos` bundle run by Nimbus's runtime on one worker thread, {} calls each, against a host that answers every syscall at once (`nimbus-bench js-floor`): no HTTP, engine or storage. Calls/s per core is the most one core can serve if it did nothing but run JavaScript.\n",
        fmt(num(&j, "/calls"))
    )?;
    let mut header = "| function |".to_string();
    let mut rule = "|---|".to_string();
    for name in &names {
        header.push_str(&format!(
            " {name}: µs per call, mean / p50 / p99 | {name}: calls/s per core |"
        ));
        rule.push_str("---|---|");
    }
    if engines.len() == 2 {
        header.push_str(&format!(" {} ÷ {} (mean) |", names[1], names[0]));
        rule.push_str("---|");
    }
    writeln!(out, "{header}")?;
    writeln!(out, "{rule}")?;
    let mut functions: Vec<(String, String)> = Vec::new();
    for r in &results {
        let key = (
            r["function"].as_str().unwrap_or("?").to_string(),
            r["label"].as_str().unwrap_or("?").to_string(),
        );
        if !functions.contains(&key) {
            functions.push(key);
        }
    }
    for (function, label) in functions {
        let mut row = format!("| `{function}`: {label} |");
        let mut means = Vec::new();
        for engine in &engines {
            let r = results.iter().find(|r| {
                engine_of(r) == *engine
                    && r["function"].as_str() == Some(function.as_str())
                    && r["label"].as_str() == Some(label.as_str())
            });
            match r {
                Some(r) => {
                    let us =
                        |p: &str| fmt(num(r, &format!("/latency_ms/{p}")).map(|ms| ms * 1000.0));
                    row.push_str(&format!(
                        " {} / {} / {} | {} |",
                        fmt(num(r, "/mean_us").map(f64::round)),
                        us("p50"),
                        us("p99"),
                        fmt(num(r, "/calls_per_core_sec").map(f64::round)),
                    ));
                    means.push(num(r, "/mean_us"));
                }
                None => row.push_str(" - | - |"),
            }
        }
        if let [Some(first), Some(second)] = means[..] {
            row.push_str(&format!(" {:.1}× |", second / first));
        } else if engines.len() == 2 {
            row.push_str(" - |");
        }
        writeln!(out, "{row}")?;
    }
    Ok(())
}

fn live_section(dir: &Path, out: &mut String) -> Result<()> {
    use files::*;
    let Some(l) = read_json(dir, LIVE)? else {
        return Ok(());
    };
    let ms = |v: &Json, p: &str| fmt(num(v, &format!("/{p}_us")).map(|us| us / 1000.0));
    let row = |name: &str, h: &Json| {
        format!(
            "| {name} | {} | {} / {} / {} / {} |",
            fmt(num(h, "/count")),
            ms(h, "p50"),
            ms(h, "p95"),
            ms(h, "p99"),
            ms(h, "max")
        )
    };
    writeln!(
        out,
        "\n### Live queries: {} subscriptions across {} tenants\n",
        fmt(num(&l, "/subscriptions")),
        fmt(num(&l, "/tenants"))
    )?;
    writeln!(
        out,
        "{} WebSockets speaking the Convex sync protocol, one `products:get` subscription per product (each commit intersects exactly one) and one `dashboard:summary` per tenant ({} in all; it reads orders, which no restock writes); an open-loop writer restocks random products at {} commits/s over HTTP. Subscribing everything took {} ms. Over {} s: {} commits sent, {} errors; the tenants' counters saw {} evaluations for {} matched commits: **{} evaluations per commit** (target: exactly 1); dashboard updates after their first result: {} (target: 0). {} updates arrived before their mutation's acknowledgement; {} commits were never seen notified.\n",
        fmt(num(&l, "/sockets")),
        fmt(num(&l, "/dashboard_subscriptions")),
        fmt(num(&l, "/rate")),
        fmt(num(&l, "/subscribe_ms").map(f64::round)),
        fmt(num(&l, "/measured_secs").map(|s| (s * 10.0).round() / 10.0)),
        fmt(num(&l, "/commits_sent")),
        fmt(num(&l, "/errors")),
        fmt(num(&l, "/evaluations")),
        fmt(num(&l, "/commits_matched_by_server")),
        fmt(num(&l, "/evaluations_per_commit")),
        fmt(num(&l, "/dashboard_updates")),
        fmt(num(&l, "/notified_before_ack")),
        fmt(num(&l, "/unmatched_commits")),
    )?;
    writeln!(out, "| latency | updates | p50 / p95 / p99 / max (ms) |")?;
    writeln!(out, "|---|---|---|")?;
    writeln!(
        out,
        "{}",
        row(
            "mutation acknowledged → subscriber notified (target p99 < 10 ms)",
            &l["ack_to_notify"]
        )
    )?;
    writeln!(
        out,
        "{}",
        row(
            "mutation's intended send → subscriber notified (includes the durable commit)",
            &l["send_to_notify"]
        )
    )?;
    Ok(())
}

fn cold_section(dir: &Path, out: &mut String) -> Result<()> {
    use files::*;
    let Some(c) = read_json(dir, COLD)? else {
        return Ok(());
    };
    let registered = fmt(num(&c, "/registered_tenants"));
    writeln!(
        out,
        "\n### Cold activation across {registered} registered tenants\n"
    )?;
    if let Some(p) = read_json(dir, COLD_PROVISION)? {
        writeln!(
            out,
            "Creating {} tenants through the admin API (`POST /admin/tenants`, {} requests in flight) took {} s ({}/s). {} of them got `examples/pos` (the official CLI's push request, replayed) and a shop with {} products.",
            fmt(num(&p, "/tenants_created")),
            fmt(num(&p, "/create_concurrency")),
            fmt(num(&p, "/create_secs").map(|s| (s * 10.0).round() / 10.0)),
            fmt(num(&p, "/create_per_sec")),
            fmt(num(&p, "/pushed")),
            fmt(num(&p, "/products_per_tenant")),
        )?;
    }
    writeln!(
        out,
        "Then the server was restarted (healthy after {} ms; no tenant active; `--max-active-tenants {}`: beyond it the least recently used idle tenant is closed). Each phase below goes to tenants not touched since, one at a time (then a second, warm request to the same tenant) or many at once (each tenant once).",
        fmt(num(&c, "/restart_ms").map(|s| s.round())),
        fmt(num(&c, "/max_active_tenants")),
    )?;
    writeln!(
        out,
        "Server resident memory (VmRSS) right after the restart: {} MiB. Requests to tenants with code run `orders:listOpen` (the first one opens the tenant's storage, loads its documents and code and creates its JavaScript runtime: a V8 isolate by default); requests to tenants without code are `GET /admin/tenants/<name>/stats`, which activates the tenant (storage and engine) and runs no function.\n",
        fmt(num(&c, "/rss_kib_before").map(|k| (k / 1024.0).round())),
    )?;
    let probed = !c["active_alone"].is_null();
    if probed {
        writeln!(
            out,
            "Throughout, tenant `{}` (with code, already active) is queried open-loop at {}/s; alone, before the phases: p50 / p99 / max {} / {} / {} ms. Its latency during each phase is in the last column.\n",
            c["active_tenant"].as_str().unwrap_or("?"),
            fmt(num(&c, "/active_rate")),
            fmt(num(&c, "/active_alone/latency_ms/p50")),
            fmt(num(&c, "/active_alone/latency_ms/p99")),
            fmt(num(&c, "/active_alone/latency_ms/max")),
        )?;
    }
    writeln!(out, "| phase | tenants | first request: p50 / p95 / p99 / max (ms) | tenants/s over the phase | second request: p50 / p99 (ms) | VmRSS after (MiB) | VmRSS growth per tenant (KiB) | errors |{}", if probed { " active tenant meanwhile: p50 / p99 / max (ms) |" } else { "" })?;
    writeln!(
        out,
        "|---|---|---|---|---|---|---|---|{}",
        if probed { "---|" } else { "" }
    )?;
    for phase in c["phases"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let first = &phase["first_request"];
        let second = &phase["second_request"];
        let second = if second.is_null() {
            "—".to_string()
        } else {
            format!(
                "{} / {}",
                fmt(num(second, "/latency_ms/p50")),
                fmt(num(second, "/latency_ms/p99"))
            )
        };
        let mut errs = errors(first);
        if error_total(&phase["second_request"]["errors"]) > 0 {
            errs = format!("{errs}; second: {}", errors(&phase["second_request"]));
        }
        let a = &phase["active_tenant"];
        if error_total(&a["errors"]) > 0 {
            errs = format!("{errs}; active tenant: {}", errors(a));
        }
        let active = if probed {
            format!(
                " {} / {} / {} |",
                fmt(num(a, "/latency_ms/p50")),
                fmt(num(a, "/latency_ms/p99")),
                fmt(num(a, "/latency_ms/max"))
            )
        } else {
            String::new()
        };
        writeln!(
            out,
            "| {}{} | {} | {} | {} | {second} | {} | {} | {errs} |{active}",
            phase["name"].as_str().unwrap_or("?"),
            if num(phase, "/concurrency").unwrap_or(1.0) > 1.0 {
                format!(" ({} in flight)", fmt(num(phase, "/concurrency")))
            } else {
                String::new()
            },
            fmt(num(phase, "/tenants")),
            latencies(first),
            fmt(num(first, "/throughput_per_sec")),
            fmt(num(phase, "/rss_kib_after").map(|k| (k / 1024.0).round())),
            fmt(num(phase, "/rss_kib_delta_per_tenant")),
        )?;
    }
    Ok(())
}

/// Every object in the directory's JSON files that has `requests` and `errors` must have
/// at least one request and no errors.
pub(crate) fn check(dir: &Path) -> Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    let mut failures = Vec::new();
    for name in &names {
        let Some(value) = read_json(dir, name)? else {
            continue;
        };
        let mut found = Vec::new();
        collect_results(&value, String::new(), &mut found);
        let requests: u64 = found
            .iter()
            .map(|(_, r)| r["requests"].as_u64().unwrap_or(0))
            .sum();
        let errors: u64 = found.iter().map(|(_, r)| error_total(&r["errors"])).sum();
        if !found.is_empty() {
            println!(
                "{name}: {} results, {requests} requests, {errors} errors",
                found.len()
            );
        }
        let shedding = value["kind"] == "noisy-neighbour";
        for (pointer, r) in found {
            // A noisy neighbour is flooded past its in-flight limit on purpose: its 429s
            // are the shedding being measured, but it must also have been served.
            if shedding && pointer == "/neighbour" {
                let shed = r["errors"]["http-429"].as_u64().unwrap_or(0);
                let served = r["requests"].as_u64().unwrap_or(0).saturating_sub(shed);
                if served == 0 || error_total(&r["errors"]) > shed {
                    failures.push(format!(
                        "{name}{pointer}: {} requests, errors {} (only 429s are expected)",
                        r["requests"], r["errors"]
                    ));
                }
                continue;
            }
            if r["requests"].as_u64().unwrap_or(0) == 0 || error_total(&r["errors"]) > 0 {
                failures.push(format!(
                    "{name}{pointer}: {} requests, errors {}",
                    r["requests"], r["errors"]
                ));
            }
        }
    }
    if !failures.is_empty() {
        bail!(
            "results with errors or no requests:\n  {}",
            failures.join("\n  ")
        );
    }
    Ok(())
}

fn collect_results<'a>(value: &'a Json, pointer: String, found: &mut Vec<(String, &'a Json)>) {
    match value {
        Json::Object(map) => {
            if map.contains_key("requests") && map.get("errors").is_some_and(Json::is_object) {
                found.push((pointer.clone(), value));
            }
            for (k, v) in map {
                collect_results(v, format!("{pointer}/{k}"), found);
            }
        }
        Json::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                collect_results(v, format!("{pointer}/{i}"), found);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(19_723), "2024-01-01");
        assert_eq!(civil_date(11_016), "2000-02-29");
    }

    #[test]
    fn numbers() {
        assert_eq!(fmt(Some(12.0)), "12");
        assert_eq!(fmt(Some(1.23456)), "1.235");
        assert_eq!(fmt(None), "—");
        assert_eq!(ratio(Some(1.0), Some(4.0)), "0.25");
        assert_eq!(ratio(Some(1.0), Some(0.0)), "—");
        assert_eq!(ratio(Some(1.0), Some(400.0)), "0.003");
    }

    fn http(requests: u64, errors: Json) -> Json {
        json!({"kind": "http", "requests": requests, "throughput_per_sec": requests as f64,
               "connections": 4, "tenants": 3, "workload": "query", "target_rate_per_sec": 50.0,
               "latency_ms": {"p50": 1.0, "p95": 2.0, "p99": 3.5, "max": 9.0}, "errors": errors,
               "per_tenant_spread": {"throughput_per_sec": {"min": 1.0, "median": 2.0, "max": 3.0},
                                     "p99_ms": {"min": 1.0, "median": 2.0, "max": 3.0}}})
    }

    /// The engines table: both engines' figures, and each V8 target judged met or missed.
    #[test]
    fn engines_table_compares_and_judges_targets() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, v: Json| std::fs::write(dir.path().join(name), v.to_string());
        write(&files::engine_run("v8", "mutation"), http(7500, json!({}))).unwrap();
        write(
            &files::engine_run("quickjs", "mutation"),
            http(4000, json!({})),
        )
        .unwrap();
        write(&files::engine_run("v8", "insert"), http(9000, json!({}))).unwrap();
        let phase = |p99: f64, rss: f64| {
            json!({"phases": [{"tenants": 200, "rss_kib_delta_per_tenant": rss,
                "first_request": {"latency_ms": {"p50": 5.0, "p99": p99}}}]})
        };
        write(files::COLD, phase(9.5, 3500.0)).unwrap();
        write(files::QUICKJS_COLD, phase(14.0, 1500.0)).unwrap();
        let floor = |engine: &str, function: &str, mean: f64| {
            json!({"engine": engine, "function": function, "mean_us": mean,
                   "label": "x (Convex library)"})
        };
        write(
            files::JS_FLOOR,
            json!({"results": [floor("v8", "orders:create", 25.0), floor("quickjs", "orders:create", 120.0),
                               floor("v8", "orders:listOpen", 100.0), floor("quickjs", "orders:listOpen", 300.0)]}),
        )
        .unwrap();
        let mut out = String::new();
        engines_section(dir.path(), &mut out).unwrap();
        let row = |start: &str| {
            out.lines()
                .find(|l| l.starts_with(start))
                .unwrap_or_else(|| panic!("no row {start} in {out}"))
                .to_string()
        };
        assert!(
            row("| JavaScript floor, `orders:create`").ends_with("4.8× lower) | ≥ 4× lower: met |")
        );
        assert!(row("| JavaScript floor, `orders:listOpen`")
            .contains("3.0× lower) | ≥ 4× lower: missed"));
        // 7,500/s with p99 3.5 ms: met; 9,000/s inserts: missed; no uncached runs: unjudged.
        assert!(row("| `orders:create`").ends_with(
            "| 4000/s, p99 3.5 ms | 7500/s, p99 3.5 ms | ≥ 7,000/s, p99 < 15 ms: met |"
        ));
        assert!(row("| `orders:open`").ends_with("missed |"));
        assert!(row("| uncached").ends_with("| — | — | ≥ 8,000/s: — |"));
        assert!(row("| first request").contains("| 5 / 14 ms | 5 / 9.5 ms | p99 ≤ 10 ms: met |"));
        assert!(row("| resident memory").ends_with("| 1500 KiB | 3500 KiB | ≤ 3 MiB: missed |"));
    }

    #[test]
    fn check_finds_errors_anywhere() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.json"), http(5, json!({})).to_string()).unwrap();
        std::fs::write(
            dir.path().join("t.json"),
            json!({"kind": "targets"}).to_string(),
        )
        .unwrap();
        check(dir.path()).unwrap();
        let nested = json!({"alone": http(5, json!({})), "with": http(5, json!({"http-429": 1}))});
        std::fs::write(dir.path().join("b.json"), nested.to_string()).unwrap();
        let e = check(dir.path()).unwrap_err().to_string();
        assert!(e.contains("b.json/with"), "{e}");
        std::fs::remove_file(dir.path().join("b.json")).unwrap();
        std::fs::write(dir.path().join("c.json"), http(0, json!({})).to_string()).unwrap();
        assert!(check(dir.path()).is_err());
        std::fs::remove_file(dir.path().join("c.json")).unwrap();
        // A noisy neighbour's 429s are its shedding, as long as some requests were served;
        // the steady tenant may have none, and the neighbour no other errors.
        let noisy = |steady: Json, neighbour: Json| {
            json!({"kind": "noisy-neighbour", "alone": http(5, json!({})),
                   "with_neighbour": steady, "neighbour": neighbour})
            .to_string()
        };
        let path = dir.path().join("noisy.json");
        std::fs::write(
            &path,
            noisy(http(5, json!({})), http(9, json!({"http-429": 8}))),
        )
        .unwrap();
        check(dir.path()).unwrap();
        for (steady, neighbour) in [
            (http(5, json!({})), http(9, json!({"http-429": 9}))),
            (
                http(5, json!({})),
                http(9, json!({"http-429": 2, "timeout": 1})),
            ),
            (http(5, json!({"http-429": 1})), http(9, json!({}))),
        ] {
            std::fs::write(&path, noisy(steady, neighbour)).unwrap();
            assert!(check(dir.path()).is_err());
        }
    }

    #[test]
    fn renders_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let report = render(dir.path(), "bash scripts/bench.sh", None).unwrap();
        assert!(report.starts_with("<!-- results:start -->\n"));
        assert!(report.ends_with("<!-- results:end -->\n"));
        std::fs::write(
            dir.path().join(files::HOT_QUERY),
            http(100, json!({})).to_string(),
        )
        .unwrap();
        std::fs::write(
            dir.path().join(files::TENANTS_QUERY),
            http(50, json!({})).to_string(),
        )
        .unwrap();
        std::fs::write(
            dir.path().join(files::NOISY_QUERY),
            json!({"alone": http(10, json!({})), "with_neighbour": http(10, json!({})),
                   "neighbour": http(90, json!({"http-429": 2}))})
            .to_string(),
        )
        .unwrap();
        std::fs::write(
            dir.path().join(files::HOT_QUERY_AT_TARGET),
            http(100, json!({})).to_string(),
        )
        .unwrap();
        std::fs::write(dir.path().join(files::POCKETBASE_SKIPPED), "no network\n").unwrap();
        let report = render(dir.path(), "bash scripts/bench.sh", Some("Shared machine.")).unwrap();
        assert!(report.contains("Shared machine."), "{report}");
        assert!(
            report.contains("| 100/s | 1 / 2 / 3.5 / 9 | none |"),
            "{report}"
        );
        assert!(
            report
                .contains("cached queries, open loop at 50/s (the foundation issue's target rate"),
            "{report}"
        );
        assert!(report.contains("### 3 tenants evenly loaded"), "{report}");
        assert!(
            report.contains("| 1/s / 2/s / 3/s | 1 / 2 / 3 | none | 0.50 |"),
            "{report}"
        );
        assert!(report.contains("**1.00**"), "{report}");
        assert!(
            report.contains("| http-429: 2 | none |"),
            "the neighbour's refusals are its shed column: {report}"
        );
        assert!(
            report.contains("PocketBase was not measured in this run: no network"),
            "{report}"
        );
        assert!(!report.contains("Cold activation"), "{report}");
        assert!(!report.contains("Live queries"), "{report}");
        assert!(!report.contains("JavaScript floor"), "{report}");
        let mut floor = http(500, json!({}));
        floor["label"] = json!("orders:create (Convex library)");
        floor["function"] = json!("orders:create");
        floor["mean_us"] = json!(250.4);
        floor["calls_per_core_sec"] = json!(3993.6);
        std::fs::write(
            dir.path().join(files::JS_FLOOR),
            json!({"kind": "js-floor", "calls": 500, "results": [floor]}).to_string(),
        )
        .unwrap();
        let report = render(dir.path(), "x", None).unwrap();
        assert!(
            report.contains(
                "| `orders:create`: orders:create (Convex library) | 250 / 1000 / 3500 | 3994 |"
            ),
            "{report}"
        );
        // Both engines side by side, with the ratio of their means.
        let mut on_v8 = floor.clone();
        on_v8["engine"] = json!("v8");
        on_v8["mean_us"] = json!(50.0);
        std::fs::write(
            dir.path().join(files::JS_FLOOR),
            json!({"kind": "js-floor", "calls": 500, "results": [on_v8, floor]}).to_string(),
        )
        .unwrap();
        let report = render(dir.path(), "x", None).unwrap();
        assert!(
            report.contains("one call in V8 and in QuickJS, nothing else"),
            "{report}"
        );
        assert!(
            report.contains(
                "| `orders:create`: orders:create (Convex library) | 50 / 1000 / 3500 | 3994 | 250 / 1000 / 3500 | 3994 | 5.0× |"
            ),
            "{report}"
        );
        let hist =
            json!({"count": 400, "p50_us": 350, "p95_us": 2000, "p99_us": 5200, "max_us": 9000});
        std::fs::write(
            dir.path().join(files::LIVE),
            json!({"schema_version": 2, "kind": "live", "tenants": 100, "sockets": 100,
                   "subscriptions": 10000, "subscribe_ms": 812.4, "rate": 200.0,
                   "measured_secs": 10.02, "commits_sent": 2000, "errors": 0,
                   "commits_matched_by_server": 2000, "evaluations": 2000,
                   "evaluations_per_commit": 1.0, "send_to_notify": hist.clone(),
                   "ack_to_notify": hist, "notified_before_ack": 3, "unmatched_commits": 0,
                   "dashboard_subscriptions": 100, "dashboard_updates": 0})
            .to_string(),
        )
        .unwrap();
        let report = render(dir.path(), "x", None).unwrap();
        assert!(
            report.contains("### Live queries: 10000 subscriptions across 100 tenants"),
            "{report}"
        );
        assert!(report.contains("**1 evaluations per commit**"), "{report}");
        assert!(
            report.contains("after their first result: 0 (target: 0)"),
            "{report}"
        );
        assert!(report.contains("| 400 | 0.35 / 2 / 5.2 / 9 |"), "{report}");
        let phase = |name: &str, concurrency: u64| {
            json!({"name": name, "tenants": 10, "concurrency": concurrency,
                   "first_request": http(10, json!({})), "rss_kib_after": 20480,
                   "rss_kib_delta_per_tenant": 512, "active_tenant": http(50, json!({}))})
        };
        std::fs::write(
            dir.path().join(files::COLD),
            json!({"registered_tenants": 50, "max_active_tenants": 1000, "restart_ms": 12.4,
                   "rss_kib_before": 8192, "phases": [phase("one", 1), phase("many", 16)],
                   "active_tenant": "c0049", "active_rate": 50.0, "active_alone": http(150, json!({}))})
            .to_string(),
        )
        .unwrap();
        let report = render(dir.path(), "x", None).unwrap();
        assert!(
            report.contains("### Cold activation across 50 registered tenants"),
            "{report}"
        );
        assert!(
            report.contains("tenant `c0049` (with code, already active) is queried open-loop at 50/s; alone, before the phases: p50 / p99 / max 1 / 3.5 / 9 ms"),
            "{report}"
        );
        assert!(
            report.contains(
                "| many (16 in flight) | 10 | 1 / 2 / 3.5 / 9 | 10 | — | 20 | 512 | none | 1 / 3.5 / 9 |"
            ),
            "{report}"
        );
    }
}

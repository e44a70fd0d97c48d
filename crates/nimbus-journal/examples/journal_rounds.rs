//! How much one shared journal saves over a file synced per tenant: N threads ("tenants")
//! each append a record and wait until it is durable, in a loop, for a fixed time.
//!
//! `cargo run --release -p nimbus-journal --example journal_rounds -- [tenants] [seconds]
//! [payload bytes] [dir]` runs both: the journal (records of every tenant share a sync per
//! round) and, as today's baseline, one file per tenant appended and `fdatasync`ed per
//! record (what a SQLite commit with `synchronous=FULL` costs at least). Prints appends/s,
//! syncs/s, records per sync and the append latency percentiles.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nimbus_journal::{Journal, JournalConfig, TenantKey};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tenants: usize = args.first().map_or(100, |a| a.parse().unwrap());
    let seconds: u64 = args.get(1).map_or(5, |a| a.parse().unwrap());
    let payload: usize = args.get(2).map_or(400, |a| a.parse().unwrap());
    let base = args
        .get(3)
        .map_or_else(std::env::temp_dir, std::path::PathBuf::from);
    let dir = tempfile::tempdir_in(base).unwrap();
    let run_for = Duration::from_secs(seconds);

    let journal = Arc::new(Journal::open(JournalConfig::new(dir.path().join("journal"))).unwrap());
    let (count, latencies) = drive(tenants, run_for, {
        let journal = journal.clone();
        move |t| {
            let key = TenantKey {
                name: format!("t{t}"),
                incarnation: 1,
            };
            let journal = journal.clone();
            let record = vec![7u8; payload];
            Box::new(move || {
                journal.append(&key, &record).unwrap();
            })
        }
    });
    let stats = journal.stats();
    report("journal", tenants, run_for, count, stats.rounds, latencies);

    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    let (count, latencies) = drive(tenants, run_for, move |t| {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(files.join(format!("t{t}")))
            .unwrap();
        let record = vec![7u8; payload];
        Box::new(move || {
            file.write_all(&record).unwrap();
            file.sync_data().unwrap();
        })
    });
    report("file per tenant", tenants, run_for, count, count, latencies);
}

type Append = Box<dyn FnMut() + Send>;

/// Runs `tenants` threads, each calling its append in a loop; appends done and every
/// append's latency in µs.
fn drive(tenants: usize, run_for: Duration, make: impl Fn(usize) -> Append) -> (u64, Vec<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..tenants)
        .map(|t| {
            let mut append = make(t);
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    append();
                    latencies.push(started.elapsed().as_micros() as u64);
                }
                latencies
            })
        })
        .collect();
    std::thread::sleep(run_for);
    stop.store(true, Ordering::Relaxed);
    let mut all: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    all.sort_unstable();
    (all.len() as u64, all)
}

fn report(
    what: &str,
    tenants: usize,
    run_for: Duration,
    appends: u64,
    syncs: u64,
    latencies: Vec<u64>,
) {
    let secs = run_for.as_secs_f64();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{what:>16}: {tenants} tenants, {:>8.0} appends/s, {:>7.0} syncs/s, {:>6.1} records per sync, latency p50 {} µs, p99 {} µs",
        appends as f64 / secs,
        syncs as f64 / secs,
        appends as f64 / syncs.max(1) as f64,
        at(0.50),
        at(0.99),
    );
}

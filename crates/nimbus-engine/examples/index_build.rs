//! How long writes stall while a push adds indexes to a large table.
//!
//! ```sh
//! cargo run --release -p nimbus-engine --example index_build -- [DOCS] [MODE]
//! ```
//!
//! Seeds `DOCS` documents (default 1,000,000) into one tenant on SQLite (in a temporary
//! directory), then keeps one writer committing small transactions (an insert and an
//! update, like a mutation) while two indexes are added, and reports the writer's commit
//! latencies before and during the build and how long the build took. `MODE` is `staged`
//! (default: the index is built in the background, as a push does) or `inline` (the whole
//! build inside the committer, as before: what the staged build replaces); `paged` serves
//! the tenant from storage (its memory budget 0) instead of memory; `chunk=N` sets the
//! documents per backfill commit (default 1024, as pushes use). Prints one JSON object.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nimbus_engine::{
    DeployRequest, DeploymentCodec, EngineConfig, EngineError, StageRequest, StoreOpener,
    TenantEngine, WantedIndexes,
};
use nimbus_storage::StorageBackend;
use nimbus_storage_sqlite::{SqliteBackend, SqliteConfig};
use nimbus_types::{Object, Value};

fn doc(n: i64) -> Object {
    [
        ("n".to_string(), Value::Int64(n)),
        (
            "shop".to_string(),
            Value::String(format!("shop{}", n % 100)),
        ),
        (
            "status".to_string(),
            Value::String(["open", "paid", "void"][(n % 3) as usize].to_string()),
        ),
        ("total".to_string(), Value::Float64((n % 997) as f64)),
    ]
    .into_iter()
    .collect()
}

fn wanted() -> WantedIndexes {
    let mut tables = BTreeMap::new();
    let mut indexes = BTreeMap::new();
    indexes.insert(
        "by_shop_status".to_string(),
        vec!["shop".to_string(), "status".to_string()],
    );
    indexes.insert("by_total".to_string(), vec!["total".to_string()]);
    tables.insert("orders".to_string(), indexes);
    tables
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[at].as_secs_f64() * 1000.0
}

fn summary(latencies: &mut [Duration]) -> serde_json::Value {
    latencies.sort();
    serde_json::json!({
        "commits": latencies.len(),
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let docs: i64 = args
        .first()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let staged = !args.iter().any(|a| a == "inline");
    let paged = args.iter().any(|a| a == "paged");
    // Documents per backfill commit; `nimbus-app` uses 1024.
    let chunk: usize = args
        .iter()
        .find_map(|a| a.strip_prefix("chunk=")?.parse().ok())
        .unwrap_or(1024);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(docs, staged, paged, chunk))
}

async fn run(
    docs: i64,
    staged: bool,
    paged: bool,
    chunk: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let backend = SqliteBackend::new(dir.path().to_path_buf(), SqliteConfig::default())?;
    backend.create_namespace("bench")?;
    let opener: StoreOpener = Arc::new(move || backend.open_namespace("bench"));
    let config = EngineConfig {
        memory_budget_bytes: if paged { 0 } else { 16 << 30 },
        ..EngineConfig::default()
    };
    let engine = TenantEngine::open("bench", opener, config, DeploymentCodec::none()).await?;
    let seeding = Instant::now();
    for start in (0..docs).step_by(10_000) {
        let mut txn = engine.begin();
        for n in start..(start + 10_000).min(docs) {
            txn.insert("orders", doc(n))?;
        }
        engine.commit(txn.finish()).await?;
    }
    eprintln!(
        "seeded {docs} documents in {:.1} s",
        seeding.elapsed().as_secs_f64()
    );

    // The writer: one small mutation after another, each commit timed.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let engine = engine.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            // (start, end) of every write.
            let mut writes = Vec::new();
            let mut n = docs;
            while !stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                // A transaction begun before a catalog change (stage, switch) conflicts and
                // runs again, as a mutation does; the latency counts both runs.
                loop {
                    let mut txn = engine.begin();
                    txn.insert("orders", doc(n))?;
                    match engine.commit(txn.finish()).await {
                        Ok(_) => break,
                        Err(EngineError::Conflict(_)) => continue,
                        Err(e) => return Err(e),
                    }
                }
                writes.push((started, Instant::now()));
                n += 1;
            }
            Ok::<_, EngineError>(writes)
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let build = Instant::now();
    if staged {
        let stage = engine
            .stage_deploy(StageRequest {
                indexes: wanted(),
                check: None,
            })
            .await?;
        engine.backfill_staged(&stage, chunk).await?;
    }
    engine
        .deploy(DeployRequest {
            indexes: wanted(),
            globals: vec![],
            check: None,
            deployment: None,
        })
        .await?;
    let built = Instant::now();
    let build_secs = (built - build).as_secs_f64();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    // A write overlapping the build counts as during it.
    let (mut before, mut during): (Vec<Duration>, Vec<Duration>) = (Vec::new(), Vec::new());
    let writes = writer.await??;
    let mut slowest: Vec<_> = writes
        .iter()
        .filter(|(started, ended)| *ended >= build && *started < built)
        .map(|(started, ended)| (*ended - *started, started.saturating_duration_since(build)))
        .collect();
    slowest.sort();
    for (took, at) in slowest.iter().rev().take(5) {
        eprintln!(
            "slow write: {:.1} ms, started {:.2} s into the build",
            took.as_secs_f64() * 1000.0,
            at.as_secs_f64()
        );
    }
    for (started, ended) in writes {
        if ended < build {
            before.push(ended - started);
        } else if started < built {
            during.push(ended - started);
        }
    }
    let report = serde_json::json!({
        "kind": "index-build",
        "documents": docs,
        "mode": if staged { "staged" } else { "inline" },
        "chunk": chunk,
        "serving": if paged { "paged" } else { "resident" },
        "indexes_added": 2,
        "build_secs": build_secs,
        "writes_before": summary(&mut before),
        "writes_during": summary(&mut during),
    });
    println!("{report}");
    Ok(())
}

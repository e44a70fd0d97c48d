//! What a resident snapshot costs in memory and in reads.
//!
//! ```sh
//! cargo run --release -p nimbus-engine --example snapshot_memory -- [DOCS]
//! ```
//!
//! `DOCS` (default 100,000; or the `SNAPSHOT_DOCS` environment variable) orders documents
//! (`{customer, status, total, items, note}`, about 180 bytes of convex-JSON each) go into
//! one resident tenant on SQLite (in a temporary directory), 1,000 per commit, with the
//! built-in indexes plus `by_status` (a string) and `by_total` (a number). Then 100 small
//! commits follow (a patch each), so the window of recent snapshots holds only versions
//! that share nearly everything with the latest, as it does in steady state.
//!
//! Two measurements of memory, each `VmRSS` after minus before:
//! - `seeding`: in this process, from before the engine opened to after the commits (what
//!   a tenant that was written to live costs, including the allocator's leftovers);
//! - `loaded`: in a fresh child process, from before the engine opened to after it loaded
//!   the tenant from storage (the steady-state cost of the resident snapshot alone).
//!
//! Both are compared with the documents' encoded size (their convex-JSON text, what storage
//! holds) and with the engine's own estimate (`resident_bytes`, which drives the memory
//! budget). The child also times point `get`s of random IDs and full scans of `by_id` and
//! `by_status`. SQLite's page cache is set to 256 KiB per connection so it hardly counts.
//! Prints one JSON object.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use nimbus_engine::{DeployRequest, DeploymentCodec, EngineConfig, StoreOpener, TenantEngine};
use nimbus_storage::{KeyRange, ScanOrder, StorageBackend};
use nimbus_storage_sqlite::{SqliteBackend, SqliteConfig};
use nimbus_types::{DocumentId, Object, Value};
use rand::Rng;

const NAMESPACE: &str = "bench";
const BATCH: usize = 1000;
const GETS: usize = 200_000;
const SCAN_PAGE: usize = 1024;

type Error = Box<dyn std::error::Error>;

fn doc(n: usize) -> Object {
    [
        (
            "customer".to_string(),
            Value::String(format!("cust-{:05}", n % 20_000)),
        ),
        (
            "status".to_string(),
            Value::String(["open", "paid", "shipped", "void"][n % 4].to_string()),
        ),
        (
            "total".to_string(),
            Value::Float64((n % 99_991) as f64 / 100.0),
        ),
        ("items".to_string(), Value::Int64((n % 7) as i64 + 1)),
        (
            "note".to_string(),
            Value::String(format!("note {}", n % 1000)),
        ),
    ]
    .into_iter()
    .collect()
}

fn indexes() -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut orders = BTreeMap::new();
    orders.insert("by_status".to_string(), vec!["status".to_string()]);
    orders.insert("by_total".to_string(), vec!["total".to_string()]);
    let mut tables = BTreeMap::new();
    tables.insert("orders".to_string(), orders);
    tables
}

/// `VmRSS` of this process, in bytes.
fn rss_bytes() -> Result<u64, Error> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or("no VmRSS in /proc/self/status")?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib * 1024)
}

fn backend(dir: &Path) -> Result<SqliteBackend, Error> {
    let config = SqliteConfig {
        cache_kib: 256,
        ..SqliteConfig::default()
    };
    Ok(SqliteBackend::new(dir.to_path_buf(), config)?)
}

async fn open(backend: &SqliteBackend) -> Result<Arc<TenantEngine>, Error> {
    let backend = backend.clone();
    let opener: StoreOpener = Arc::new(move || backend.open_namespace(NAMESPACE));
    let config = EngineConfig {
        memory_budget_bytes: 16 << 30,
        ..EngineConfig::default()
    };
    Ok(TenantEngine::open(NAMESPACE, opener, config, DeploymentCodec::none()).await?)
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if args.first().map(String::as_str) == Some("--load") {
        let dir = args.get(1).ok_or("--load needs a directory")?;
        return runtime.block_on(load(Path::new(dir)));
    }
    let docs: usize = match args.first() {
        Some(n) => n.parse()?,
        None => match std::env::var("SNAPSHOT_DOCS") {
            Ok(n) => n.parse()?,
            Err(_) => 100_000,
        },
    };
    runtime.block_on(seed(docs))
}

/// Seeds the tenant, measures this process, then measures a fresh load in a child.
async fn seed(docs: usize) -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let backend = backend(dir.path())?;
    backend.create_namespace(NAMESPACE)?;
    let before = rss_bytes()?;
    let engine = open(&backend).await?;
    engine
        .deploy(DeployRequest {
            indexes: indexes(),
            globals: vec![],
            check: None,
            deployment: None,
        })
        .await?;
    let started = Instant::now();
    let mut first = None;
    for start in (0..docs).step_by(BATCH) {
        let mut txn = engine.begin();
        for n in start..(start + BATCH).min(docs) {
            let id = txn.insert("orders", doc(n))?;
            first.get_or_insert(id);
        }
        engine.commit(txn.finish()).await?;
    }
    let seed_secs = started.elapsed().as_secs_f64();
    let first = first.ok_or("no documents")?;
    for round in 0..100 {
        let mut txn = engine.begin();
        let mut changes = BTreeMap::new();
        changes.insert("note".to_string(), Some(Value::String(format!("r{round}"))));
        txn.patch(&first, changes)?;
        engine.commit(txn.finish()).await?;
    }
    let after = rss_bytes()?;
    let resident_bytes = engine.snapshot().resident_bytes();
    let (documents, encoded) = encoded_bytes(&engine)?;
    engine.shutdown().await;
    drop(engine);

    let child = std::process::Command::new(std::env::current_exe()?)
        .arg("--load")
        .arg(dir.path())
        .output()?;
    if !child.status.success() {
        return Err(format!(
            "the load process failed: {}",
            String::from_utf8_lossy(&child.stderr)
        )
        .into());
    }
    let loaded: serde_json::Value = serde_json::from_slice(&child.stdout)?;
    let rss_delta = after.saturating_sub(before);
    let report = serde_json::json!({
        "kind": "snapshot-memory",
        "documents": documents,
        "encoded_bytes": encoded,
        "encoded_bytes_per_doc": encoded as f64 / documents as f64,
        "seed_secs": seed_secs,
        "seeding": {
            "rss_delta_bytes": rss_delta,
            "rss_bytes_per_doc": rss_delta as f64 / documents as f64,
            "rss_to_encoded": rss_delta as f64 / encoded as f64,
            "resident_bytes": resident_bytes,
            "resident_to_encoded": resident_bytes as f64 / encoded as f64,
        },
        "loaded": loaded,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// Documents of `orders` and the sum of their convex-JSON lengths.
fn encoded_bytes(engine: &TenantEngine) -> Result<(usize, usize), Error> {
    let snapshot = engine.snapshot();
    let by_id = snapshot.catalog.resolve_index("orders", "by_id")?.number;
    let mut after: Option<Vec<u8>> = None;
    let (mut documents, mut bytes) = (0, 0);
    loop {
        let page = snapshot.scan(
            by_id,
            &KeyRange::all(),
            ScanOrder::Ascending,
            after.as_deref(),
            SCAN_PAGE,
        )?;
        for (_, _, doc) in &page {
            documents += 1;
            bytes += nimbus_types::json::encode_object_text(doc).len();
        }
        match page.last() {
            Some((key, _, _)) if page.len() == SCAN_PAGE => after = Some(key.clone()),
            _ => return Ok((documents, bytes)),
        }
    }
}

/// The child: loads the tenant, measures memory, times reads; prints one JSON object.
async fn load(dir: &Path) -> Result<(), Error> {
    let backend = backend(dir)?;
    let before = rss_bytes()?;
    let started = Instant::now();
    let engine = open(&backend).await?;
    let load_secs = started.elapsed().as_secs_f64();
    let after = rss_bytes()?;
    let snapshot = engine.snapshot();
    let documents = snapshot.resident_documents();
    let resident_bytes = snapshot.resident_bytes();

    let by_id = snapshot.catalog.resolve_index("orders", "by_id")?.number;
    let by_status = snapshot
        .catalog
        .resolve_index("orders", "by_status")?
        .number;
    let mut ids: Vec<DocumentId> = Vec::with_capacity(documents);
    let (scan_by_id_ns, _) = full_scan(&snapshot, by_id, Some(&mut ids))?;
    let (scan_by_status_ns, scanned) = full_scan(&snapshot, by_status, None)?;
    if ids.is_empty() || scanned != ids.len() {
        return Err(format!("scans disagree: {} and {scanned}", ids.len()).into());
    }
    let mut rng = rand::thread_rng();
    let picks: Vec<DocumentId> = (0..GETS)
        .map(|_| ids[rng.gen_range(0..ids.len())])
        .collect();
    let started = Instant::now();
    let mut found = 0usize;
    for id in &picks {
        if let Some(doc) = snapshot.get(id)? {
            found += doc.len();
        }
    }
    let get_ns = started.elapsed().as_nanos() as f64 / GETS as f64;
    if found == 0 {
        return Err("no document found".into());
    }
    let rss_delta = after.saturating_sub(before);
    let report = serde_json::json!({
        "documents": documents,
        "load_secs": load_secs,
        "rss_delta_bytes": rss_delta,
        "rss_bytes_per_doc": rss_delta as f64 / documents as f64,
        "resident_bytes": resident_bytes,
        "resident_bytes_per_doc": resident_bytes as f64 / documents as f64,
        "get_ns": get_ns,
        "scan_by_id_ns_per_doc": scan_by_id_ns,
        "scan_by_status_ns_per_doc": scan_by_status_ns,
    });
    println!("{report}");
    Ok(())
}

/// Scans all of `index` in pages, as queries do; returns ns per entry and the entries.
fn full_scan(
    snapshot: &nimbus_engine::Snapshot,
    index: nimbus_storage::IndexNumber,
    mut ids: Option<&mut Vec<DocumentId>>,
) -> Result<(f64, usize), Error> {
    let started = Instant::now();
    let mut after: Option<Vec<u8>> = None;
    let mut entries = 0usize;
    loop {
        let page = snapshot.scan(
            index,
            &KeyRange::all(),
            ScanOrder::Ascending,
            after.as_deref(),
            SCAN_PAGE,
        )?;
        entries += page.len();
        if let Some(ids) = ids.as_deref_mut() {
            ids.extend(page.iter().map(|(_, id, _)| *id));
        }
        match page.last() {
            Some((key, _, _)) if page.len() == SCAN_PAGE => after = Some(key.clone()),
            _ => break,
        }
    }
    let ns = started.elapsed().as_nanos() as f64 / entries.max(1) as f64;
    Ok((ns, entries))
}

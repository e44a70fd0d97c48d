//! Moving a live tenant to another namespace (`relocate.rs`) over real SQLite storage:
//! every acknowledged write survives a move made while writes go on, and a move that fails
//! at its switch leaves the tenant where it was, still writable, nothing lost.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nimbus_engine::{DeploymentCodec, EngineConfig, Relocation, StoreOpener, Switch, TenantEngine};
use nimbus_storage::{ExportPosition, StorageBackend, TenantStore};
use nimbus_storage_sqlite::{SqliteBackend, SqliteConfig};
use nimbus_types::{DocumentId, Object, Value};

fn backend(dir: &tempfile::TempDir) -> SqliteBackend {
    SqliteBackend::new(dir.path().to_path_buf(), SqliteConfig::default())
        .unwrap_or_else(|e| panic!("backend: {e}"))
}

fn opener(backend: &SqliteBackend, name: &str) -> StoreOpener {
    let backend = backend.clone();
    let namespace = name.to_string();
    Arc::new(move || backend.open_namespace(&namespace))
}

async fn open(backend: &SqliteBackend, name: &str) -> Arc<TenantEngine> {
    if !backend.namespace_exists(name).unwrap_or(false) {
        backend
            .create_namespace(name)
            .unwrap_or_else(|e| panic!("create: {e}"));
    }
    TenantEngine::open(
        name,
        opener(backend, name),
        EngineConfig::default(),
        DeploymentCodec::none(),
    )
    .await
    .unwrap_or_else(|e| panic!("engine: {e}"))
}

fn doc(n: u64) -> Object {
    [("n".to_string(), Value::Float64(n as f64))]
        .into_iter()
        .collect()
}

/// Every `n` in table `items`, and their IDs.
fn contents(engine: &TenantEngine) -> (BTreeSet<u64>, Vec<DocumentId>) {
    let query = nimbus_types::query::SerializedQuery::parse(
        &serde_json::json!({"source": {"type": "FullTableScan", "tableName": "items", "order": "asc"}, "operators": []}),
    )
    .unwrap_or_else(|e| panic!("query: {e}"));
    let mut txn = engine.begin();
    let id = txn
        .open_query(&query)
        .unwrap_or_else(|e| panic!("open: {e}"));
    let (mut values, mut ids) = (BTreeSet::new(), Vec::new());
    while let Some(found) = txn
        .next_in_query(id)
        .unwrap_or_else(|e| panic!("next: {e}"))
    {
        match found.get("n") {
            Some(Value::Float64(n)) => values.insert(*n as u64),
            other => panic!("unexpected n: {other:?}"),
        };
        let text = match found.get("_id") {
            Some(Value::String(text)) => text.clone(),
            other => panic!("unexpected _id: {other:?}"),
        };
        ids.push(txn.decode_id(&text).unwrap_or_else(|e| panic!("id: {e}")));
    }
    (values, ids)
}

/// Inserts one document per commit until stopped; returns the acknowledged values.
fn spawn_writer(
    engine: Arc<TenantEngine>,
    first: u64,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<BTreeSet<u64>> {
    tokio::spawn(async move {
        let mut acknowledged = BTreeSet::new();
        let mut n = first;
        while !stop.load(Ordering::SeqCst) {
            let mut txn = engine.begin();
            txn.insert("items", doc(n))
                .unwrap_or_else(|e| panic!("insert: {e}"));
            if engine.commit(txn.finish()).await.is_ok() {
                acknowledged.insert(n);
            }
            n += 1;
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        acknowledged
    })
}

/// Copies the source into `target` in small pages, replaying what was mirrored after
/// each page (the app does the same), with pauses so writes interleave.
async fn copy_and_catch_up(relocation: &Relocation, target: &Arc<dyn TenantStore>) -> usize {
    let mut position = ExportPosition::Start;
    let mut pages = 0;
    loop {
        let page = relocation
            .source()
            .export_page(&position, 20, 1 << 20)
            .unwrap_or_else(|e| panic!("export: {e}"));
        // The first page sets the copy's max_ts; replayed batches move it on.
        target
            .import(&page.rows, (pages == 0).then(|| relocation.start()))
            .unwrap_or_else(|e| panic!("import: {e}"));
        pages += 1;
        for batch in relocation
            .take_written()
            .unwrap_or_else(|e| panic!("mirror: {e}"))
        {
            target
                .write(&batch)
                .unwrap_or_else(|e| panic!("replay: {e}"));
        }
        match page.next {
            Some(next) => position = next,
            None => return pages,
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_moved_while_writing_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let backend = backend(&dir);
    let engine = open(&backend, "src").await;
    // Some data before the move, part of it deleted while the copy runs.
    for n in 0..200 {
        let mut txn = engine.begin();
        txn.insert("items", doc(n))
            .unwrap_or_else(|e| panic!("{e}"));
        engine
            .commit(txn.finish())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let (_, early_ids) = contents(&engine);

    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(engine.clone(), 1_000, stop.clone());
    backend
        .create_namespace("dst")
        .unwrap_or_else(|e| panic!("{e}"));
    let target = backend
        .open_namespace("dst")
        .unwrap_or_else(|e| panic!("{e}"));
    let relocation = engine
        .start_relocation()
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    assert!(
        engine.start_relocation().await.is_err(),
        "one move at a time"
    );
    // Delete every third early document while the copy is under way.
    let deleter = {
        let engine = engine.clone();
        let ids = early_ids.clone();
        tokio::spawn(async move {
            for id in ids.iter().step_by(3) {
                let mut txn = engine.begin();
                txn.delete(id).unwrap_or_else(|e| panic!("delete: {e}"));
                engine
                    .commit(txn.finish())
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                tokio::task::yield_now().await;
            }
        })
    };
    let pages = copy_and_catch_up(&relocation, &target).await;
    assert!(pages > 3, "the copy took several pages ({pages})");
    deleter.await.unwrap_or_else(|e| panic!("{e}"));

    let switched = Arc::new(AtomicBool::new(false));
    let flag = switched.clone();
    let switch: Switch = Box::new(move || {
        flag.store(true, Ordering::SeqCst);
        Ok(())
    });
    let outcome = engine
        .finish_relocation(relocation, target.clone(), opener(&backend, "dst"), switch)
        .await
        .unwrap_or_else(|e| panic!("finish: {e}"));
    assert!(switched.load(Ordering::SeqCst));
    let source_ts_at_switch = backend
        .open_namespace("src")
        .and_then(|s| s.max_ts())
        .unwrap_or_else(|e| panic!("{e}"));
    // Writes go on, now into the target.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    stop.store(true, Ordering::SeqCst);
    let acknowledged = writer.await.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        acknowledged.len() > 10,
        "the writer kept writing ({} acknowledged, {} batches at the switch)",
        acknowledged.len(),
        outcome.final_batches
    );

    let deleted: BTreeSet<u64> = (0..200).step_by(3).collect();
    let mut expected: BTreeSet<u64> = (0..200).filter(|n| !deleted.contains(n)).collect();
    expected.extend(&acknowledged);
    assert_eq!(contents(&engine).0, expected, "served after the move");
    engine.shutdown().await;
    drop(engine);
    drop(target);
    let source_after = backend
        .open_namespace("src")
        .and_then(|s| s.max_ts())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        source_after, source_ts_at_switch,
        "nothing is written to the source after the switch"
    );
    let reopened = open(&backend, "dst").await;
    assert_eq!(
        contents(&reopened).0,
        expected,
        "every acknowledged write is durable in the target"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_whose_switch_fails_leaves_the_tenant_where_it_was() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let backend = backend(&dir);
    let engine = open(&backend, "src").await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(engine.clone(), 0, stop.clone());
    backend
        .create_namespace("dst")
        .unwrap_or_else(|e| panic!("{e}"));
    let target = backend
        .open_namespace("dst")
        .unwrap_or_else(|e| panic!("{e}"));
    let relocation = engine
        .start_relocation()
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    copy_and_catch_up(&relocation, &target).await;
    let switch: Switch = Box::new(|| Err("the catalog refused".into()));
    let failed = engine
        .finish_relocation(relocation, target.clone(), opener(&backend, "dst"), switch)
        .await;
    assert!(
        failed
            .as_ref()
            .is_err_and(|e| e.to_string().contains("the catalog refused")),
        "{:?}",
        failed.map(|o| o.final_batches)
    );
    // Still on the source, still writable; a new move may start.
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    stop.store(true, Ordering::SeqCst);
    let acknowledged = writer.await.unwrap_or_else(|e| panic!("{e}"));
    let dst_ts = target.max_ts().unwrap_or_else(|e| panic!("{e}"));
    let relocation = engine
        .start_relocation()
        .await
        .unwrap_or_else(|e| panic!("a second move starts: {e}"));
    drop(relocation);
    engine.shutdown().await;
    drop(engine);
    assert_eq!(
        target.max_ts().unwrap_or_else(|e| panic!("{e}")),
        dst_ts,
        "the failed target receives nothing more"
    );
    let reopened = open(&backend, "src").await;
    assert_eq!(
        contents(&reopened).0,
        acknowledged,
        "nothing lost on the source"
    );
}

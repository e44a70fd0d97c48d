//! Staged deploys (see `deploy.rs`): indexes built in the background from a snapshot while
//! writes go on, then switched in; schema violations written meanwhile fail the switch;
//! dropped indexes' entries deleted in chunks. Over real SQLite, resident and paged.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nimbus_engine::{
    DeployRequest, DeploymentCodec, DocumentCheck, EngineConfig, EngineError, StageRequest,
    StoreOpener, TenantEngine,
};
use nimbus_storage::{KeyRange, ScanOrder, StorageBackend, TenantStore};
use nimbus_storage_sqlite::{SqliteBackend, SqliteConfig};
use nimbus_types::index_key::document_key;
use nimbus_types::{DocumentId, Object, Value};

struct Tenant {
    engine: Arc<TenantEngine>,
    store: Arc<dyn TenantStore>,
    _dir: tempfile::TempDir,
}

async fn tenant(paged: bool) -> Tenant {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let backend = SqliteBackend::new(dir.path().to_path_buf(), SqliteConfig::default())
        .unwrap_or_else(|e| panic!("{e}"));
    backend
        .create_namespace("t")
        .unwrap_or_else(|e| panic!("{e}"));
    let store = backend
        .open_namespace("t")
        .unwrap_or_else(|e| panic!("{e}"));
    let opener: StoreOpener = Arc::new(move || backend.open_namespace("t"));
    let config = EngineConfig {
        memory_budget_bytes: if paged { 0 } else { 256 << 20 },
        ..EngineConfig::default()
    };
    let engine = TenantEngine::open("t", opener, config, DeploymentCodec::none())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    Tenant {
        engine,
        store,
        _dir: dir,
    }
}

fn item(n: i64, color: &str) -> Object {
    [
        ("n".to_string(), Value::Int64(n)),
        ("color".to_string(), Value::String(color.to_string())),
    ]
    .into_iter()
    .collect()
}

fn wanted(fields: &[&str]) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut indexes = BTreeMap::new();
    if !fields.is_empty() {
        indexes.insert(
            "items".to_string(),
            [(
                "by_color".to_string(),
                fields.iter().map(|f| f.to_string()).collect(),
            )]
            .into_iter()
            .collect::<BTreeMap<_, _>>(),
        );
    }
    indexes
}

/// Step 3 of a deploy wanting `by_color` on `fields` (or no index), no code change.
fn switch_to(fields: &[&str]) -> DeployRequest {
    DeployRequest {
        indexes: wanted(fields),
        globals: vec![],
        check: None,
        deployment: None,
    }
}

/// Step 1 of a deploy wanting `by_color` on `color`.
async fn stage_color(engine: &TenantEngine, check: Option<DocumentCheck>) -> nimbus_engine::Staged {
    engine
        .stage_deploy(StageRequest {
            indexes: wanted(&["color"]),
            check,
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn insert_items(engine: &TenantEngine, from: i64, count: i64) -> Vec<DocumentId> {
    let mut txn = engine.begin();
    let ids = (from..from + count)
        .map(|n| txn.insert("items", item(n, if n % 2 == 0 { "red" } else { "blue" })))
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| panic!("{e}"));
    engine
        .commit(txn.finish())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    ids
}

/// Backfills every building index from the staged snapshot, `chunk` documents at a time.
async fn backfill_all(engine: &TenantEngine, staged: &nimbus_engine::Staged, chunk: usize) {
    let by_id = staged
        .snapshot
        .catalog
        .resolve_index("items", "by_id")
        .unwrap_or_else(|e| panic!("{e}"))
        .number;
    let building: Vec<_> = staged.building.iter().map(|i| i.number).collect();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = staged
            .snapshot
            .scan(
                by_id,
                &KeyRange::all(),
                ScanOrder::Ascending,
                after.as_deref(),
                chunk,
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let Some((last, _, _)) = page.last() else {
            break;
        };
        after = Some(last.clone());
        let full = page.len() == chunk;
        engine
            .backfill(
                building.clone(),
                page.into_iter().map(|(_, id, _)| id).collect(),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        if !full {
            break;
        }
    }
}

/// The index read back from storage and from the latest snapshot must both be exactly the
/// index a fresh build from the latest documents would give.
fn assert_index_is_exact(t: &Tenant, what: &str) {
    let snapshot = t.engine.snapshot();
    let info = snapshot
        .catalog
        .resolve_index("items", "by_color")
        .unwrap_or_else(|e| panic!("{what}: {e}"))
        .clone();
    let by_id = snapshot
        .catalog
        .resolve_index("items", "by_id")
        .unwrap_or_else(|e| panic!("{e}"))
        .number;
    let docs = snapshot
        .scan(
            by_id,
            &KeyRange::all(),
            ScanOrder::Ascending,
            None,
            usize::MAX,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let mut expected: Vec<(Vec<u8>, DocumentId)> = docs
        .iter()
        .map(|(_, id, doc)| (document_key(&info.fields, doc), *id))
        .collect();
    expected.sort();
    let from_snapshot: Vec<(Vec<u8>, DocumentId)> = snapshot
        .scan(
            info.number,
            &KeyRange::all(),
            ScanOrder::Ascending,
            None,
            usize::MAX,
        )
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|(key, id, _)| (key, id))
        .collect();
    assert_eq!(
        from_snapshot.len(),
        expected.len(),
        "{what}: snapshot entries"
    );
    assert!(
        from_snapshot == expected,
        "{what}: the snapshot's index differs"
    );
    let from_storage: Vec<(Vec<u8>, DocumentId)> = t
        .store
        .scan_index(
            info.number,
            &KeyRange::all(),
            ScanOrder::Ascending,
            usize::MAX,
        )
        .unwrap_or_else(|e| panic!("{e}"))
        .entries
        .into_iter()
        .map(|(key, doc)| (key, doc.id))
        .collect();
    assert!(
        from_storage == expected,
        "{what}: storage's index differs ({} entries, {} expected)",
        from_storage.len(),
        expected.len()
    );
}

/// The review's finding 3: an index build ran inside the committer, so writes waited for
/// the whole backfill. Now a push stages the index, backfills it in chunks while writes go
/// on (inserts, updates that move documents between keys, deletes), and switches; the
/// index must come out exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_built_while_writes_go_on_is_exact() {
    for paged in [false, true] {
        let t = tenant(paged).await;
        let mut ids = Vec::new();
        for batch in 0..5 {
            ids.extend(insert_items(&t.engine, batch * 1000, 1000).await);
        }
        let staged = stage_color(&t.engine, None).await;
        assert_eq!(staged.building.len(), 1);
        assert!(
            staged
                .snapshot
                .catalog
                .resolve_index("items", "by_color")
                .is_err(),
            "a building index is not visible to queries"
        );
        // Writers change documents throughout the backfill.
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let engine = t.engine.clone();
            let stop = stop.clone();
            let ids = ids.clone();
            tokio::spawn(async move {
                let mut round = 0i64;
                while !stop.load(Ordering::SeqCst) {
                    let mut txn = engine.begin();
                    let id = ids[(round as usize * 37) % ids.len()];
                    let result = (|| -> Result<(), EngineError> {
                        txn.insert("items", item(100_000 + round, "green"))?;
                        if txn.get(&id)?.is_some() {
                            if round % 3 == 0 {
                                txn.delete(&id)?;
                            } else {
                                let mut changes = BTreeMap::new();
                                changes.insert(
                                    "color".to_string(),
                                    Some(Value::String(format!("c{}", round % 5))),
                                );
                                txn.patch(&id, changes)?;
                            }
                        }
                        Ok(())
                    })();
                    result.unwrap_or_else(|e| panic!("{e}"));
                    match engine.commit(txn.finish()).await {
                        Ok(_) | Err(EngineError::Conflict(_)) => {}
                        Err(e) => panic!("{e}"),
                    }
                    round += 1;
                    tokio::task::yield_now().await;
                }
                round
            })
        };
        backfill_all(&t.engine, &staged, 300).await;
        stop.store(true, Ordering::SeqCst);
        let writes = writer.await.unwrap_or_else(|e| panic!("{e}"));
        assert!(
            writes > 5,
            "paged={paged}: only {writes} writes ran during the backfill"
        );
        let outcome = t
            .engine
            .deploy(switch_to(&["color"]))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(outcome.added_indexes, vec!["items.by_color".to_string()]);
        assert_index_is_exact(&t, &format!("paged={paged}, after the switch"));
        // Writes after the switch keep it exact.
        insert_items(&t.engine, 200_000, 10).await;
        assert_index_is_exact(&t, &format!("paged={paged}, after more writes"));
    }
}

/// CI found it (1 run in many of the test above): a backfill chunk committed in the same
/// group as a write to one of its documents read that document from storage, which for a
/// tenant served from storage does not hold the group's earlier writes yet. A patch left the
/// old key behind as a ghost entry, a delete left an entry for a missing document. Here the
/// writes and the chunk are queued together (joined futures are polled in order, before the
/// committer wakes), so they share one group every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_grouped_behind_writes_to_its_documents_indexes_their_new_state() {
    for paged in [false, true] {
        let t = tenant(paged).await;
        let ids = insert_items(&t.engine, 0, 4).await;
        let staged = stage_color(&t.engine, None).await;
        let building: Vec<_> = staged.building.iter().map(|i| i.number).collect();
        let mut txn = t.engine.begin();
        txn.delete(&ids[0]).unwrap_or_else(|e| panic!("{e}"));
        let mut changes = BTreeMap::new();
        changes.insert("color".to_string(), Some(Value::String("green".into())));
        txn.patch(&ids[1], changes)
            .unwrap_or_else(|e| panic!("{e}"));
        let (committed, backfilled) = tokio::join!(
            t.engine.commit(txn.finish()),
            t.engine.backfill(building, ids.clone())
        );
        committed.unwrap_or_else(|e| panic!("{e}"));
        backfilled.unwrap_or_else(|e| panic!("{e}"));
        t.engine
            .deploy(switch_to(&["color"]))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_index_is_exact(&t, &format!("paged={paged}"));
    }
}

/// A document written while a push is staged that breaks the new schema fails the switch,
/// and the staging is abandoned (the building index is dropped, nothing else changes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_violation_written_while_staged_fails_the_switch() {
    let t = tenant(false).await;
    insert_items(&t.engine, 0, 10).await;
    let check: DocumentCheck =
        Arc::new(
            |table: &str, doc: &nimbus_types::Document| match (table, doc.get("color")) {
                ("items", Some(Value::String(c))) if c == "purple" => {
                    Err("color must not be purple".to_string())
                }
                _ => Ok(()),
            },
        );
    stage_color(&t.engine, Some(check)).await;
    let mut txn = t.engine.begin();
    txn.insert("items", item(99, "purple"))
        .unwrap_or_else(|e| panic!("{e}"));
    t.engine
        .commit(txn.finish())
        .await
        .unwrap_or_else(|e| panic!("the old schema still allows it: {e}"));
    let switched = t.engine.deploy(switch_to(&["color"])).await;
    match switched {
        Err(EngineError::User(message)) => assert!(message.contains("purple"), "{message}"),
        other => panic!("expected the switch to fail, got {other:?}"),
    }
    let catalog = t.engine.snapshot().catalog.clone();
    assert!(catalog.resolve_index("items", "by_color").is_err());
    assert_eq!(catalog.building().count(), 0, "the staging was abandoned");
    assert_eq!(catalog.garbage().count(), 1, "its index is garbage");
}

/// A dropped index's entries are deleted in chunks, then the index is forgotten.
#[tokio::test]
async fn dropped_index_entries_are_deleted_in_chunks() {
    let t = tenant(false).await;
    insert_items(&t.engine, 0, 500).await;
    t.engine
        .deploy(switch_to(&["color"]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let number = t
        .engine
        .snapshot()
        .catalog
        .resolve_index("items", "by_color")
        .unwrap_or_else(|e| panic!("{e}"))
        .number;
    t.engine
        .deploy(switch_to(&[]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let left = |t: &Tenant| {
        t.store
            .scan_index(number, &KeyRange::all(), ScanOrder::Ascending, usize::MAX)
            .map(|s| s.entries.len())
            .unwrap_or(0)
    };
    assert_eq!(left(&t), 500, "the entries stay until collected");
    assert_eq!(
        t.engine.snapshot().catalog.garbage().collect::<Vec<_>>(),
        vec![number]
    );
    t.engine
        .collect_garbage(64)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(left(&t), 0);
    assert_eq!(
        t.engine.snapshot().catalog.garbage().count(),
        0,
        "forgotten"
    );
}

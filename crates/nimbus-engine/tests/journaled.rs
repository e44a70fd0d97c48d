//! Commits through the shared journal: acknowledged once journaled, applied to storage
//! without its own sync, and put back from the journal when storage lost them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;

use nimbus_engine::{DeploymentCodec, EngineConfig, StoreOpener, TenantEngine, TenantJournal};
use nimbus_journal::{Journal, JournalConfig, Lsn, TenantKey};
use nimbus_storage::StorageBackend;
use nimbus_storage_sqlite::{SqliteBackend, SqliteConfig};
use nimbus_types::Value;

const TENANT: &str = "j";

fn key() -> TenantKey {
    TenantKey {
        name: TENANT.into(),
        incarnation: 42,
    }
}

async fn open(dir: &Path, journal: &Arc<Journal>) -> Arc<TenantEngine> {
    let backend = SqliteBackend::new(dir.join("data"), SqliteConfig::default()).unwrap();
    if !backend.namespace_exists(TENANT).unwrap() {
        backend.create_namespace(TENANT).unwrap();
    }
    let opener: StoreOpener = Arc::new(move || backend.open_namespace(TENANT));
    let config = EngineConfig {
        journal: Some(TenantJournal {
            journal: journal.clone(),
            key: key(),
        }),
        ..EngineConfig::default()
    };
    TenantEngine::open(TENANT, opener, config, DeploymentCodec::none())
        .await
        .unwrap()
}

async fn insert(engine: &TenantEngine, n: i64) {
    let mut txn = engine.begin();
    let mut doc = nimbus_types::Object::new();
    doc.insert("n".into(), Value::Int64(n));
    txn.insert("items", doc).unwrap();
    engine.commit(txn.finish()).await.unwrap();
}

fn numbers(engine: &TenantEngine) -> Vec<i64> {
    let mut txn = engine.begin();
    let query = nimbus_types::query::SerializedQuery::parse(&serde_json::json!({
        "source": {"type": "FullTableScan", "tableName": "items", "order": "asc"},
        "operators": []
    }))
    .unwrap();
    let id = txn.open_query(&query).unwrap();
    let mut found = Vec::new();
    while let Some(doc) = txn.next_in_query(id).unwrap() {
        match doc.get("n") {
            Some(Value::Int64(n)) => found.push(*n),
            other => panic!("unexpected n: {other:?}"),
        }
    }
    found.sort_unstable();
    found
}

fn journal(dir: &Path) -> Arc<Journal> {
    Arc::new(Journal::open(JournalConfig::new(dir.join("journal"))).unwrap())
}

/// Copies the tenant's SQLite files (database, WAL) aside, or back.
fn copy_files(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(to).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

#[tokio::test]
async fn commits_lost_by_storage_come_back_from_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("data").join("tenants");
    let aside = dir.path().join("aside");

    let j = journal(dir.path());
    let engine = open(dir.path(), &j).await;
    for n in 0..10 {
        insert(&engine, n).await;
    }
    engine.shutdown().await;
    drop(engine);
    // Stopping synced the storage and told the journal.
    assert_eq!(j.lag(&key()).records, 0);
    assert!(j.lag(&key()).applied_known);
    copy_files(&tenants, &aside);

    let engine = open(dir.path(), &j).await;
    for n in 10..30 {
        insert(&engine, n).await;
    }
    assert_eq!(numbers(&engine), (0..30).collect::<Vec<_>>());
    engine.shutdown().await;
    drop(engine);
    drop(j);

    // The storage as it was after the first 10: what a crash leaves when the later
    // writes were never synced there. The journal has them.
    copy_files(&aside, &tenants);
    let j = journal(dir.path());
    assert_eq!(
        j.tenants_behind()
            .into_iter()
            .map(|(k, _)| k)
            .collect::<Vec<_>>(),
        vec![key()]
    );
    let engine = open(dir.path(), &j).await;
    assert_eq!(numbers(&engine), (0..30).collect::<Vec<_>>());
    assert!(
        j.tenants_behind().is_empty(),
        "the open caught up and said so"
    );
    // Commits go on after the replayed ones.
    insert(&engine, 30).await;
    assert_eq!(numbers(&engine).len(), 31);
    engine.shutdown().await;
    drop(engine);
    // Everything is applied: truncation may take every segment but the last.
    j.truncate().unwrap();
    assert_eq!(j.stats().segments, 1);
    assert_eq!(j.lag(&key()).records, 0);
}

#[tokio::test]
async fn commits_share_journal_rounds_and_storage_syncs_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    let j = journal(dir.path());
    let engine = open(dir.path(), &j).await;
    insert(&engine, -1).await; // creates the table, which concurrent first inserts race for
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let engine = engine.clone();
            tokio::spawn(async move {
                for i in 0..20 {
                    insert(&engine, w * 100 + i).await;
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    assert_eq!(numbers(&engine).len(), 321);
    // Concurrent commits of the tenant share group commits: one record each.
    let stats = j.stats();
    assert!(stats.records >= 2 && stats.records <= 321, "{stats:?}");
    println!("321 commits in {} journal records", stats.records);
    // Unsynced writes are synced within the sync interval (10 s after the first) with no
    // more commits.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while j.lag(&key()).records > 0 {
        assert!(std::time::Instant::now() < deadline, "{:?}", j.lag(&key()));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let applied = {
        let backend = SqliteBackend::new(dir.path().join("data"), SqliteConfig::default()).unwrap();
        let store = backend.open_namespace(TENANT).unwrap();
        let bytes = store
            .get_global(nimbus_engine::APPLIED_GLOBAL)
            .unwrap()
            .unwrap();
        Lsn(u64::from_le_bytes(bytes.try_into().unwrap()))
    };
    assert_eq!(
        applied.0,
        stats.next_lsn - 1,
        "storage applied the last record"
    );
    engine.shutdown().await;
}

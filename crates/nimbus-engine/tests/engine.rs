//! Engine behaviour over real SQLite storage: commits, conflicts, read-your-writes,
//! pagination, deploys, restart, and paged serving (a tenant over its memory budget)
//! answering exactly like resident serving.

use std::collections::BTreeMap;
use std::sync::Arc;

use nimbus_engine::{
    DeployRequest, DeploymentCodec, EngineConfig, EngineError, StoreOpener, TenantEngine,
};
use nimbus_storage::StorageBackend;
use nimbus_storage_sqlite::{SqliteBackend, SqliteConfig};
use nimbus_types::query::SerializedQuery;
use nimbus_types::{Object, Value};
use serde_json::json;

fn backend(dir: &tempfile::TempDir) -> SqliteBackend {
    match SqliteBackend::new(dir.path().to_path_buf(), SqliteConfig::default()) {
        Ok(b) => b,
        Err(e) => panic!("backend: {e}"),
    }
}

async fn open(backend: &SqliteBackend, name: &str, config: EngineConfig) -> Arc<TenantEngine> {
    if !backend.namespace_exists(name).unwrap_or(false) {
        backend
            .create_namespace(name)
            .unwrap_or_else(|e| panic!("create: {e}"));
    }
    let backend = backend.clone();
    let namespace = name.to_string();
    let opener: StoreOpener = Arc::new(move || backend.open_namespace(&namespace));
    TenantEngine::open(name, opener, config, DeploymentCodec::none())
        .await
        .unwrap_or_else(|e| panic!("engine: {e}"))
}

fn obj(pairs: &[(&str, Value)]) -> Object {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn query(json: serde_json::Value) -> SerializedQuery {
    SerializedQuery::parse(&json).unwrap_or_else(|e| panic!("query: {e}"))
}

async fn deploy_index(engine: &TenantEngine, table: &str, index: &str, fields: &[&str]) {
    let mut indexes = BTreeMap::new();
    let mut table_indexes = BTreeMap::new();
    table_indexes.insert(
        index.to_string(),
        fields.iter().map(|f| f.to_string()).collect(),
    );
    indexes.insert(table.to_string(), table_indexes);
    engine
        .deploy(DeployRequest {
            indexes,
            globals: vec![],
            check: None,
            deployment: None,
        })
        .await
        .unwrap_or_else(|e| panic!("deploy: {e}"));
}

async fn insert_orders(engine: &TenantEngine, n: usize) {
    let mut txn = engine.begin();
    for i in 0..n {
        let shop = format!("shop{}", i % 10);
        txn.insert(
            "orders",
            obj(&[
                ("shop", Value::String(shop)),
                ("n", Value::Float64(i as f64)),
            ]),
        )
        .unwrap_or_else(|e| panic!("insert: {e}"));
    }
    engine
        .commit(txn.finish())
        .await
        .unwrap_or_else(|e| panic!("commit: {e}"));
}

fn collect(engine: &TenantEngine, q: &SerializedQuery) -> (Vec<f64>, u64) {
    let mut txn = engine.begin();
    let id = txn.open_query(q).unwrap_or_else(|e| panic!("open: {e}"));
    let mut out = Vec::new();
    while let Some(doc) = txn
        .next_in_query(id)
        .unwrap_or_else(|e| panic!("next: {e}"))
    {
        match doc.get("n") {
            Some(Value::Float64(n)) => out.push(*n),
            other => panic!("unexpected n: {other:?}"),
        }
    }
    (out, txn.stats().documents_scanned)
}

#[tokio::test]
async fn index_range_reads_only_its_range_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let backend = backend(&dir);
    let engine = open(&backend, "acme", EngineConfig::default()).await;
    insert_orders(&engine, 1).await; // creates the table
    deploy_index(&engine, "orders", "by_shop_n", &["shop", "n"]).await;
    insert_orders(&engine, 1000).await;
    let q = query(
        json!({"source": {"type": "IndexRange", "indexName": "orders.by_shop_n",
        "range": [{"type": "Eq", "fieldPath": "shop", "value": "shop3"},
                  {"type": "Gte", "fieldPath": "n", "value": 500.0}], "order": "desc"},
        "operators": [{"limit": 10}]}),
    );
    let (values, scanned) = collect(&engine, &q);
    assert_eq!(
        values,
        vec![993.0, 983.0, 973.0, 963.0, 953.0, 943.0, 933.0, 923.0, 913.0, 903.0]
    );
    assert_eq!(
        scanned, 10,
        "a limited index range scans only what it returns"
    );
    drop(engine);
    let engine = open(&backend, "acme", EngineConfig::default()).await;
    assert_eq!(
        collect(&engine, &q).0.len(),
        10,
        "data and indexes survive a reopen"
    );
}

#[tokio::test]
async fn conflicting_mutations_are_rejected_and_disjoint_ones_commit() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let backend = backend(&dir);
    let engine = open(&backend, "acme", EngineConfig::default()).await;
    let mut setup = engine.begin();
    let counter = setup
        .insert("counters", obj(&[("v", Value::Float64(0.0))]))
        .unwrap_or_else(|e| panic!("{e}"));
    let other = setup
        .insert("counters", obj(&[("v", Value::Float64(0.0))]))
        .unwrap_or_else(|e| panic!("{e}"));
    engine
        .commit(setup.finish())
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // Two transactions read and write the same counter from the same snapshot.
    let mut a = engine.begin();
    let mut b = engine.begin();
    let mut c = engine.begin();
    for txn in [&mut a, &mut b] {
        let doc = txn.get(&counter).unwrap_or_else(|e| panic!("{e}"));
        assert!(doc.is_some());
        let mut changes = BTreeMap::new();
        changes.insert("v".to_string(), Some(Value::Float64(1.0)));
        txn.patch(&counter, changes)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let mut changes = BTreeMap::new();
    changes.insert("v".to_string(), Some(Value::Float64(7.0)));
    c.patch(&other, changes).unwrap_or_else(|e| panic!("{e}"));
    let first = engine.commit(a.finish()).await;
    let second = engine.commit(b.finish()).await;
    let third = engine.commit(c.finish()).await;
    assert!(first.is_ok(), "{first:?}");
    assert!(
        matches!(second, Err(EngineError::Conflict(_))),
        "{second:?}"
    );
    assert!(
        third.is_ok(),
        "a transaction touching another document commits: {third:?}"
    );
}

#[tokio::test]
async fn read_your_own_writes_inside_a_transaction() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let backend = backend(&dir);
    let engine = open(&backend, "acme", EngineConfig::default()).await;
    insert_orders(&engine, 5).await;
    let mut txn = engine.begin();
    txn.insert(
        "orders",
        obj(&[
            ("shop", Value::String("x".into())),
            ("n", Value::Float64(99.0)),
        ]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let q = query(
        json!({"source": {"type": "FullTableScan", "tableName": "orders", "order": null}, "operators": []}),
    );
    let id = txn.open_query(&q).unwrap_or_else(|e| panic!("{e}"));
    let mut seen = Vec::new();
    while let Some(doc) = txn.next_in_query(id).unwrap_or_else(|e| panic!("{e}")) {
        seen.push(doc.get("n").cloned());
    }
    assert_eq!(seen.len(), 6);
    assert_eq!(
        seen.last(),
        Some(&Some(Value::Float64(99.0))),
        "own insert is newest by creation time"
    );
    assert_eq!(txn.count("orders").unwrap_or_else(|e| panic!("{e}")), 6);
}

#[tokio::test]
async fn pagination_is_gapless_and_cursors_are_authenticated() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let backend = backend(&dir);
    let engine = open(&backend, "acme", EngineConfig::default()).await;
    insert_orders(&engine, 95).await;
    let q = query(
        json!({"source": {"type": "FullTableScan", "tableName": "orders", "order": "asc"}, "operators": []}),
    );
    let mut cursor: Option<String> = None;
    let mut all = Vec::new();
    loop {
        let mut txn = engine.begin();
        let page = txn
            .page(&q, cursor.as_deref(), None, 10)
            .unwrap_or_else(|e| panic!("{e}"));
        all.extend(page.documents.iter().map(|d| d.get("n").cloned()));
        if page.is_done {
            break;
        }
        cursor = Some(page.continue_cursor);
    }
    assert_eq!(all.len(), 95);
    let expected: Vec<_> = (0..95).map(|i| Some(Value::Float64(i as f64))).collect();
    assert_eq!(all, expected);
    let mut txn = engine.begin();
    let forged = txn.page(&q, Some("AQID.0000000000000000"), None, 10);
    assert!(
        matches!(forged, Err(EngineError::User(ref m)) if m.starts_with("InvalidCursor")),
        "{:?}",
        forged.err()
    );
}

/// Spec §4.6 (the review's finding 11.10): a page with an end cursor holds every row up to
/// it and continues exactly at it, also when the range ends before it (the page used to
/// answer `isDone` with the range's end instead of the end cursor); and a journal pins the
/// first page's end across re-runs.
#[tokio::test]
async fn an_end_cursor_is_where_the_page_continues() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let backend = backend(&dir);
    let engine = open(&backend, "acme", EngineConfig::default()).await;
    insert_orders(&engine, 30).await;
    let q = query(
        json!({"source": {"type": "FullTableScan", "tableName": "orders", "order": "asc"}, "operators": []}),
    );
    let mut txn = engine.begin();
    let first = txn
        .page(&q, None, None, 10)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        txn.page_end(),
        Some(first.continue_cursor.as_str()),
        "the journal"
    );
    // Rows 10..30 deleted: the range ends before the end cursor.
    let mut delete = engine.begin();
    let page = delete
        .page(&q, None, None, 30)
        .unwrap_or_else(|e| panic!("{e}"));
    let victims: Vec<_> = page.documents[10..]
        .iter()
        .filter_map(|d| d.get("_id").and_then(Value::as_str).map(str::to_string))
        .collect();
    for id in victims {
        let id = delete.decode_id(&id).unwrap_or_else(|e| panic!("{e}"));
        delete.delete(&id).unwrap_or_else(|e| panic!("{e}"));
    }
    engine
        .commit(delete.finish())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut txn = engine.begin();
    let pinned = txn
        .page(&q, None, Some(&first.continue_cursor), 1)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        pinned.documents.len(),
        10,
        "every row up to the end cursor, whatever numItems says"
    );
    assert_eq!(
        pinned.continue_cursor, first.continue_cursor,
        "continues at the end cursor"
    );
    assert!(
        !pinned.is_done,
        "the end cursor is not the end of the query"
    );
    // A journal (a live query's) pins the page when the caller gives no end cursor.
    let mut txn = engine.begin();
    txn.set_journal(Some(first.continue_cursor.clone()));
    let journaled = txn
        .page(&q, None, None, 3)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(journaled.documents.len(), 10);
    assert_eq!(journaled.continue_cursor, first.continue_cursor);
}

#[tokio::test]
async fn paged_serving_answers_like_resident_serving() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let backend = backend(&dir);
    let resident = open(&backend, "big", EngineConfig::default()).await;
    insert_orders(&resident, 1).await;
    deploy_index(&resident, "orders", "by_shop_n", &["shop", "n"]).await;
    insert_orders(&resident, 2000).await;
    let queries = [
        json!({"source": {"type": "IndexRange", "indexName": "orders.by_shop_n", "range": [{"type": "Eq", "fieldPath": "shop", "value": "shop4"}], "order": "asc"}, "operators": [{"limit": 25}]}),
        json!({"source": {"type": "IndexRange", "indexName": "orders.by_shop_n", "range": [{"type": "Eq", "fieldPath": "shop", "value": "shop7"}, {"type": "Lt", "fieldPath": "n", "value": 1000.0}], "order": "desc"}, "operators": []}),
        json!({"source": {"type": "FullTableScan", "tableName": "orders", "order": "desc"}, "operators": [{"filter": {"$gt": [{"$field": "n"}, {"$literal": 1990.0}]}}]}),
    ];
    let expected: Vec<Vec<f64>> = queries
        .iter()
        .map(|q| collect(&resident, &query(q.clone())).0)
        .collect();
    drop(resident);

    let config = EngineConfig {
        memory_budget_bytes: 1024,
        ..EngineConfig::default()
    };
    let paged = open(&backend, "big", config).await;
    assert_eq!(
        paged.stats().resident_bytes,
        0,
        "a tenant over budget is not loaded into memory"
    );
    for (q, want) in queries.iter().zip(&expected) {
        assert_eq!(&collect(&paged, &query(q.clone())).0, want, "query {q}");
    }
    // A reader at an older snapshot keeps seeing it while writes land (undo log).
    let before = paged.begin();
    let old_snapshot = before.snapshot().clone();
    let mut writer = paged.begin();
    let qid = writer
        .open_query(&query(queries[0].clone()))
        .unwrap_or_else(|e| panic!("{e}"));
    let first = writer
        .next_in_query(qid)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("no row"));
    let first_id = match first.get("_id") {
        Some(Value::String(s)) => writer.decode_id(s).unwrap_or_else(|e| panic!("{e}")),
        other => panic!("{other:?}"),
    };
    writer.delete(&first_id).unwrap_or_else(|e| panic!("{e}"));
    paged
        .commit(writer.finish())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut old_reader = paged.begin_at(old_snapshot);
    let qid = old_reader
        .open_query(&query(queries[0].clone()))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut count = 0;
    while old_reader
        .next_in_query(qid)
        .unwrap_or_else(|e| panic!("{e}"))
        .is_some()
    {
        count += 1;
    }
    assert_eq!(count, 25, "the old snapshot still sees the deleted row");
    assert_eq!(collect(&paged, &query(queries[0].clone())).0.len(), 25);
    assert_eq!(
        collect(&paged, &query(queries[0].clone())).0[0],
        expected[0][1],
        "the latest snapshot does not"
    );
}

/// System tables (the scheduler's `_scheduled_functions`) are created with their indexes by
/// `ensure_system_tables`, once; a deploy, whose schema cannot name them, leaves their
/// indexes alone; a user-style insert cannot create one; and all of it survives a restart.
#[tokio::test]
async fn system_tables_are_created_once_and_deploys_leave_them_alone() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let backend = backend(&dir);
    let wanted = || {
        BTreeMap::from([(
            "_jobs".to_string(),
            BTreeMap::from([("by_due".to_string(), vec!["due".to_string()])]),
        )])
    };
    {
        let engine = open(&backend, "sys", EngineConfig::default()).await;
        // A user-style insert may not create a table whose name starts with `_`.
        let mut txn = engine.begin();
        assert!(txn.insert("_other", Object::new()).is_err());
        assert!(engine
            .ensure_system_tables(wanted())
            .await
            .unwrap_or_else(|e| panic!("ensure: {e}")));
        assert!(!engine
            .ensure_system_tables(wanted())
            .await
            .unwrap_or_else(|e| panic!("ensure again: {e}")));
        let mut txn = engine.begin();
        for due in [3.0, 1.0, 2.0] {
            txn.insert("_jobs", obj(&[("due", Value::Float64(due))]))
                .unwrap_or_else(|e| panic!("insert: {e}"));
        }
        engine
            .commit(txn.finish())
            .await
            .unwrap_or_else(|e| panic!("commit: {e}"));
        // A deploy that wants only a user index keeps the system index.
        deploy_index(&engine, "orders", "by_shop", &["shop"]).await;
        let refused = engine
            .ensure_system_tables(BTreeMap::from([("orders".to_string(), BTreeMap::new())]))
            .await;
        assert!(refused.is_err(), "a user table is not a system table");
    }
    let engine = open(&backend, "sys", EngineConfig::default()).await;
    let by_due = query(json!({
        "source": {"type": "IndexRange", "indexName": "_jobs.by_due", "range": [], "order": "asc"},
        "operators": []
    }));
    let mut txn = engine.begin();
    let id = txn
        .open_query(&by_due)
        .unwrap_or_else(|e| panic!("the system index must survive the deploy: {e}"));
    let mut dues = Vec::new();
    while let Some(doc) = txn
        .next_in_query(id)
        .unwrap_or_else(|e| panic!("next: {e}"))
    {
        dues.push(doc.get("due").cloned());
    }
    assert_eq!(
        dues,
        [1.0, 2.0, 3.0].map(|d| Some(Value::Float64(d))).to_vec()
    );
}

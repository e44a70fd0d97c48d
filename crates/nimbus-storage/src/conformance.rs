//! The conformance suite every storage backend runs (`run_conformance_suite!`).
//!
//! Each check takes a constructor that opens the backend at a root directory, so it can
//! also drop the backend and reopen the same root (persistence). Checks panic on failure:
//! they are tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;

use nimbus_types::{DocumentId, TableNumber, Timestamp};

use crate::{
    DocumentWrite, IndexNumber, IndexWrite, KeyRange, ScanOrder, StorageBackend, StorageError,
    WriteBatch,
};

/// Opens a backend at a root directory.
pub type Constructor<'a> = &'a dyn Fn(&Path) -> Box<dyn StorageBackend>;

fn id(table: u32, n: u8) -> DocumentId {
    DocumentId {
        table: TableNumber(table),
        internal: [n; 16],
    }
}

fn put(table: u32, n: u8, body: &str) -> DocumentWrite {
    DocumentWrite {
        id: id(table, n),
        table: TableNumber(table),
        body: Some(body.as_bytes().to_vec()),
    }
}

fn batch(ts: u64) -> WriteBatch {
    WriteBatch {
        ts: Timestamp(ts),
        ..WriteBatch::default()
    }
}

fn keys(scan: &crate::IndexScan) -> Vec<Vec<u8>> {
    scan.entries.iter().map(|(k, _)| k.clone()).collect()
}

pub fn namespaces(make: Constructor, root: &Path) {
    let backend = make(root);
    assert!(!backend.namespace_exists("a").unwrap());
    backend.create_namespace("a").unwrap();
    assert!(backend.namespace_exists("a").unwrap());
    assert!(matches!(
        backend.create_namespace("a"),
        Err(StorageError::NamespaceExists(_))
    ));
    assert!(matches!(
        backend.open_namespace("zz"),
        Err(StorageError::NamespaceNotFound(_))
    ));
    backend.delete_namespace("a").unwrap();
    assert!(!backend.namespace_exists("a").unwrap());
    assert!(matches!(
        backend.delete_namespace("a"),
        Err(StorageError::NamespaceNotFound(_))
    ));
    backend.create_namespace("a").unwrap();
    let store = backend.open_namespace("a").unwrap();
    assert_eq!(
        store.max_ts().unwrap(),
        Timestamp(0),
        "a recreated namespace starts empty"
    );
}

pub fn documents_and_globals(make: Constructor, root: &Path) {
    let backend = make(root);
    backend.create_namespace("t").unwrap();
    let store = backend.open_namespace("t").unwrap();
    let mut b = batch(10);
    b.documents = vec![put(1, 1, "one"), put(1, 2, "two"), put(2, 1, "other table")];
    b.globals = vec![("g".into(), Some(b"v1".to_vec()))];
    store.write(&b).unwrap();
    let doc = store.get_document(&id(1, 1)).unwrap().unwrap();
    assert_eq!(
        (doc.body.as_slice(), doc.ts, doc.table),
        (&b"one"[..], Timestamp(10), TableNumber(1))
    );
    let mut b = batch(11);
    b.documents = vec![
        put(1, 1, "one v2"),
        DocumentWrite {
            id: id(1, 2),
            table: TableNumber(1),
            body: None,
        },
    ];
    b.globals = vec![("g".into(), None), ("h".into(), Some(b"x".to_vec()))];
    store.write(&b).unwrap();
    assert_eq!(
        store.get_document(&id(1, 1)).unwrap().unwrap().body,
        b"one v2"
    );
    assert!(store.get_document(&id(1, 2)).unwrap().is_none());
    assert_eq!(store.get_global("g").unwrap(), None);
    assert_eq!(store.get_global("h").unwrap(), Some(b"x".to_vec()));
    let mut seen = Vec::new();
    store
        .scan_table(TableNumber(1), &mut |d| {
            seen.push(d.id);
            true
        })
        .unwrap();
    assert_eq!(seen, vec![id(1, 1)]);
    assert_eq!(store.stats().unwrap().documents, 2);
    let mut counts = store.table_counts().unwrap();
    counts.sort();
    assert_eq!(
        counts.iter().map(|(_, n)| n).sum::<u64>(),
        2,
        "table counts add up to the documents: {counts:?}"
    );
    assert_eq!(
        counts
            .iter()
            .find(|(t, _)| *t == TableNumber(1))
            .map(|(_, n)| *n),
        Some(1)
    );
    assert!(
        store.write(&batch(11)).is_err(),
        "a batch must be newer than the last one"
    );
    drop(store);
    drop(backend);
    let store = make(root).open_namespace("t").unwrap();
    assert_eq!(
        store.max_ts().unwrap(),
        Timestamp(11),
        "max_ts survives a reopen"
    );
    assert_eq!(
        store.get_document(&id(2, 1)).unwrap().unwrap().body,
        b"other table"
    );
}

pub fn index_ranges(make: Constructor, root: &Path) {
    let backend = make(root);
    backend.create_namespace("t").unwrap();
    let store = backend.open_namespace("t").unwrap();
    let index = IndexNumber(7);
    let mut b = batch(5);
    for n in 0..10u8 {
        b.documents.push(put(1, n, &format!("doc{n}")));
        b.indexes.push(IndexWrite::Insert {
            index,
            key: vec![n * 10],
            id: id(1, n),
        });
        b.indexes.push(IndexWrite::Insert {
            index: IndexNumber(8),
            key: vec![n],
            id: id(1, n),
        });
    }
    store.write(&b).unwrap();
    let scan = |start, end, order, limit| {
        store
            .scan_index(index, &KeyRange { start, end }, order, limit)
            .unwrap()
    };
    let s = scan(
        Bound::Included(vec![20]),
        Bound::Excluded(vec![50]),
        ScanOrder::Ascending,
        100,
    );
    assert_eq!(keys(&s), vec![vec![20], vec![30], vec![40]]);
    assert_eq!(s.ts, Timestamp(5));
    let s = scan(
        Bound::Excluded(vec![20]),
        Bound::Included(vec![50]),
        ScanOrder::Descending,
        2,
    );
    assert_eq!(keys(&s), vec![vec![50], vec![40]]);
    let s = scan(Bound::Unbounded, Bound::Unbounded, ScanOrder::Ascending, 3);
    assert_eq!(keys(&s), vec![vec![0], vec![10], vec![20]]);
    assert_eq!(s.entries[1].1.body, b"doc1");
    let mut b = batch(6);
    b.indexes = vec![
        IndexWrite::Delete {
            index,
            key: vec![0],
        },
        IndexWrite::DropIndex {
            index: IndexNumber(8),
        },
    ];
    store.write(&b).unwrap();
    assert_eq!(
        scan(
            Bound::Unbounded,
            Bound::Unbounded,
            ScanOrder::Ascending,
            100
        )
        .entries
        .len(),
        9
    );
    let other = store
        .scan_index(IndexNumber(8), &KeyRange::all(), ScanOrder::Ascending, 100)
        .unwrap();
    assert!(
        other.entries.is_empty(),
        "DropIndex removes every entry of the index"
    );
}

pub fn namespaces_are_isolated(make: Constructor, root: &Path) {
    let backend = make(root);
    backend.create_namespace("a").unwrap();
    backend.create_namespace("b").unwrap();
    let a = backend.open_namespace("a").unwrap();
    let b = backend.open_namespace("b").unwrap();
    let mut w = batch(1);
    w.documents = vec![put(1, 1, "A's")];
    w.indexes = vec![IndexWrite::Insert {
        index: IndexNumber(1),
        key: vec![1],
        id: id(1, 1),
    }];
    a.write(&w).unwrap();
    assert!(b.get_document(&id(1, 1)).unwrap().is_none());
    assert!(b
        .scan_index(IndexNumber(1), &KeyRange::all(), ScanOrder::Ascending, 10)
        .unwrap()
        .entries
        .is_empty());
    backend.delete_namespace("b").unwrap();
    assert_eq!(a.get_document(&id(1, 1)).unwrap().unwrap().body, b"A's");
}

/// Batches of two documents that must always be seen together by a concurrent reader.
pub fn batches_are_atomic_for_readers(make: Constructor, root: &Path) {
    let backend = make(root);
    backend.create_namespace("t").unwrap();
    let store = backend.open_namespace("t").unwrap();
    let reader = store.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_reader = stop.clone();
    let handle = std::thread::spawn(move || {
        let mut checks = 0;
        while !stop_reader.load(std::sync::atomic::Ordering::Relaxed) {
            let scan = reader
                .scan_index(IndexNumber(1), &KeyRange::all(), ScanOrder::Ascending, 1000)
                .unwrap();
            assert_eq!(scan.entries.len() % 2, 0, "a reader saw half a batch");
            checks += 1;
        }
        checks
    });
    for n in 0..100u8 {
        let mut b = batch(u64::from(n) + 1);
        for k in [2 * n, 2 * n + 1] {
            b.documents.push(put(1, k, "x"));
            b.indexes.push(IndexWrite::Insert {
                index: IndexNumber(1),
                key: vec![k],
                id: id(1, k),
            });
        }
        store.write(&b).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let checks = handle.join().unwrap();
    assert!(checks > 0);
}

/// A batch that is refused (here: its timestamp is not after the last one) writes none of
/// its rows, and leaves nothing behind that a later batch could carry in with it.
pub fn a_refused_batch_writes_nothing(make: Constructor, root: &Path) {
    let backend = make(root);
    backend.create_namespace("t").unwrap();
    let store = backend.open_namespace("t").unwrap();
    let mut first = batch(5);
    first.documents.push(put(1, 1, "kept"));
    store.write(&first).unwrap();

    let mut refused = batch(5);
    refused.documents.push(put(1, 2, "refused"));
    refused.indexes.push(IndexWrite::Insert {
        index: IndexNumber(1),
        key: vec![2],
        id: id(1, 2),
    });
    refused
        .globals
        .push(("g".into(), Some(b"refused".to_vec())));
    assert!(
        store.write(&refused).is_err(),
        "a batch at the same ts is refused"
    );
    assert_eq!(store.max_ts().unwrap(), Timestamp(5));
    assert!(store.get_document(&id(1, 2)).unwrap().is_none());

    let mut next = batch(6);
    next.documents.push(put(1, 3, "next"));
    store.write(&next).unwrap();
    assert_eq!(store.max_ts().unwrap(), Timestamp(6));
    assert!(store.get_document(&id(1, 3)).unwrap().is_some());
    assert!(
        store.get_document(&id(1, 2)).unwrap().is_none(),
        "the refused rows came in with the next batch"
    );
    assert_eq!(store.get_global("g").unwrap(), None);
    let scan = store
        .scan_index(IndexNumber(1), &KeyRange::all(), ScanOrder::Ascending, 10)
        .unwrap();
    assert!(scan.entries.is_empty());
    drop(store);
    drop(backend);
    let store = make(root).open_namespace("t").unwrap();
    assert_eq!(store.max_ts().unwrap(), Timestamp(6));
    assert!(store.get_document(&id(1, 2)).unwrap().is_none());
}

/// Receipts are written with their batch (atomically, durably), read back with its `ts`,
/// replaced by a later write of the same key, and expired by `ts`.
pub fn receipts(make: Constructor, root: &Path) {
    use crate::Receipt;
    let backend = make(root);
    backend.create_namespace("t").unwrap();
    let store = backend.open_namespace("t").unwrap();
    let receipt = |key: &str, body: &str| Receipt {
        key: key.as_bytes().to_vec(),
        body: body.as_bytes().to_vec(),
    };
    let mut first = batch(10);
    first.documents.push(put(1, 1, "with a receipt"));
    first.receipts.push(receipt("s1/0", "answer 0"));
    store.write(&first).unwrap();
    let mut second = batch(20);
    second.receipts.push(receipt("s1/1", "answer 1"));
    store.write(&second).unwrap();
    assert_eq!(
        store.get_receipt(b"s1/0").unwrap(),
        Some((Timestamp(10), b"answer 0".to_vec()))
    );
    assert_eq!(store.get_receipt(b"nope").unwrap(), None);
    // A refused batch writes no receipt.
    let mut refused = batch(20);
    refused.receipts.push(receipt("s1/2", "refused"));
    assert!(store.write(&refused).is_err());
    assert_eq!(store.get_receipt(b"s1/2").unwrap(), None);
    // Expiry removes receipts older than the cutoff only.
    let mut expire = batch(30);
    expire.expire_receipts_before = Some(Timestamp(15));
    store.write(&expire).unwrap();
    assert_eq!(store.get_receipt(b"s1/0").unwrap(), None);
    assert_eq!(
        store.get_receipt(b"s1/1").unwrap(),
        Some((Timestamp(20), b"answer 1".to_vec()))
    );
    drop(store);
    drop(backend);
    let store = make(root).open_namespace("t").unwrap();
    assert_eq!(
        store.get_receipt(b"s1/1").unwrap(),
        Some((Timestamp(20), b"answer 1".to_vec())),
        "receipts are durable"
    );
}

/// A dropped index is deleted a chunk at a time: each chunk removes at most its share,
/// only of that index.
pub fn index_chunks_are_dropped(make: Constructor, root: &Path) {
    let backend = make(root);
    backend.create_namespace("t").unwrap();
    let store = backend.open_namespace("t").unwrap();
    let mut fill = batch(1);
    for n in 0..10u8 {
        // Scans return entries with their documents.
        fill.documents.push(put(1, n, "doc"));
        for index in [1, 2] {
            fill.indexes.push(IndexWrite::Insert {
                index: IndexNumber(index),
                key: vec![n],
                id: id(1, n),
            });
        }
    }
    store.write(&fill).unwrap();
    let count = |index: u32| {
        store
            .scan_index(
                IndexNumber(index),
                &KeyRange::all(),
                ScanOrder::Ascending,
                100,
            )
            .unwrap()
            .entries
            .len()
    };
    let mut chunk = batch(2);
    chunk.indexes.push(IndexWrite::DropIndexChunk {
        index: IndexNumber(1),
        max_entries: 4,
    });
    store.write(&chunk).unwrap();
    assert_eq!(count(1), 6);
    assert_eq!(count(2), 10, "another index is untouched");
    let mut rest = batch(3);
    rest.indexes.push(IndexWrite::DropIndexChunk {
        index: IndexNumber(1),
        max_entries: 100,
    });
    store.write(&rest).unwrap();
    assert_eq!(count(1), 0);
    assert_eq!(count(2), 10);
}

/// Random operations checked against a `BTreeMap` model.
pub fn model_based(make: Constructor, root: &Path) {
    let backend = make(root);
    backend.create_namespace("t").unwrap();
    let store = backend.open_namespace("t").unwrap();
    let mut model: BTreeMap<Vec<u8>, (u8, String)> = BTreeMap::new();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let index = IndexNumber(3);
    for round in 0..400u64 {
        let mut b = batch(round + 1);
        for _ in 0..5 {
            let n = (next() % 64) as u8;
            let key = vec![(next() % 32) as u8, n];
            if next() % 3 == 0 {
                b.indexes.push(IndexWrite::Delete {
                    index,
                    key: key.clone(),
                });
                model.remove(&key);
            } else {
                let body = format!("r{round}");
                b.documents.push(put(1, n, &body));
                b.indexes.push(IndexWrite::Insert {
                    index,
                    key: key.clone(),
                    id: id(1, n),
                });
                model.insert(key, (n, body));
            }
        }
        // Bodies changed for every id written; refresh the model's bodies to match.
        for doc in &b.documents {
            let n = doc.id.internal[0];
            let body = String::from_utf8(doc.body.clone().unwrap()).unwrap();
            for value in model.values_mut() {
                if value.0 == n {
                    value.1 = body.clone();
                }
            }
        }
        store.write(&b).unwrap();
        let (a, b2) = ((next() % 32) as u8, (next() % 32) as u8 + 1);
        let (lo, hi) = (vec![a.min(b2)], vec![a.max(b2)]);
        let range = KeyRange {
            start: Bound::Included(lo.clone()),
            end: Bound::Excluded(hi.clone()),
        };
        let scan = store
            .scan_index(index, &range, ScanOrder::Descending, 7)
            .unwrap();
        let expected: Vec<(Vec<u8>, String)> = model
            .range(lo..hi)
            .rev()
            .take(7)
            .map(|(k, (_, body))| (k.clone(), body.clone()))
            .collect();
        let actual: Vec<(Vec<u8>, String)> = scan
            .entries
            .iter()
            .map(|(k, d)| (k.clone(), String::from_utf8(d.body.clone()).unwrap()))
            .collect();
        assert_eq!(actual, expected, "round {round}");
    }
}

/// Expands into one `#[test]` per conformance check. `$make` is an expression of type
/// `impl Fn(&Path) -> Box<dyn StorageBackend>`.
#[macro_export]
macro_rules! run_conformance_suite {
    ($make:expr) => {
        $crate::run_conformance_suite!(@tests $make;
            namespaces, documents_and_globals, index_ranges, namespaces_are_isolated,
            batches_are_atomic_for_readers, a_refused_batch_writes_nothing, receipts,
            index_chunks_are_dropped, model_based);
    };
    (@tests $make:expr; $($name:ident),*) => {
        $(
            #[test]
            fn $name() {
                let dir = tempfile::tempdir().expect("tempdir");
                let make = $make;
                $crate::conformance::$name(&make, dir.path());
            }
        )*
    };
}

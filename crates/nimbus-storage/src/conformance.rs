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
    DocumentWrite, ExportPosition, ExportedRow, IndexNumber, IndexWrite, KeyRange, Receipt,
    ScanOrder, StorageBackend, StorageError, StoredDocument, TenantStore, WriteBatch,
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

fn delete(table: u32, n: u8) -> DocumentWrite {
    DocumentWrite {
        id: id(table, n),
        table: TableNumber(table),
        body: None,
    }
}

fn entry(index: u32, key: &[u8], doc: DocumentId) -> IndexWrite {
    IndexWrite::Insert {
        index: IndexNumber(index),
        key: key.to_vec(),
        id: doc,
    }
}

fn receipt(key: &[u8], body: &str) -> Receipt {
    Receipt {
        key: key.to_vec(),
        body: body.as_bytes().to_vec(),
    }
}

/// Index keys with the bytes an encoding may hold at its edges (0x00, 0xff, prefixes).
const EDGE_KEYS: [&[u8]; 7] = [
    &[0x00],
    &[0x00, 0x00],
    &[0x00, 0xff],
    &[0x7f],
    &[0xff],
    &[0xff, 0x00],
    &[0xff, 0xff, 0xff],
];

/// Global names whose bytewise order differs from most collations' (case, accents).
const GLOBAL_NAMES: [&str; 5] = ["Zed", "_catalog", "alpha", "code", "\u{e9}t\u{e9}"];

/// Three batches, from `first_ts` on, over two tables, two indexes, globals and receipts;
/// something deleted, overwritten and expired.
fn fill_for_export(store: &dyn TenantStore, first_ts: u64) {
    let mut b = batch(first_ts);
    for n in 1..=6u8 {
        b.documents.push(put(1, n, &format!("table one, doc {n}")));
    }
    for n in [0u8, 1, 0xff] {
        b.documents.push(put(2, n, &"x".repeat(usize::from(n) + 1)));
    }
    for (k, key) in EDGE_KEYS.iter().enumerate() {
        b.indexes.push(entry(1, key, id(1, k as u8 % 6 + 1)));
        b.indexes.push(entry(2, key, id(2, [0, 1, 0xff][k % 3])));
    }
    for name in GLOBAL_NAMES {
        b.globals
            .push((name.into(), Some(format!("value of {name}").into_bytes())));
    }
    b.receipts.push(receipt(b"s1/0", "answer 0"));
    b.receipts.push(receipt(&[0x00], "binary key"));
    store.write(&b).unwrap();

    let mut b = batch(first_ts + 1);
    b.documents.push(put(1, 2, "table one, doc 2, again"));
    b.documents.push(delete(1, 3));
    b.indexes.push(IndexWrite::Delete {
        index: IndexNumber(1),
        key: EDGE_KEYS[2].to_vec(),
    });
    b.globals.push(("code".into(), None));
    b.globals
        .push(("".into(), Some(b"the empty name".to_vec())));
    b.receipts.push(receipt(b"s1/1", "answer 1"));
    b.receipts
        .push(receipt(&[0xff, 0x00], "another binary key"));
    store.write(&b).unwrap();

    let mut b = batch(first_ts + 2);
    b.documents.push(put(2, 7, "late"));
    b.indexes.push(entry(2, &[0x80], id(2, 7)));
    b.receipts.push(receipt(b"s2/0", "answer 2"));
    b.expire_receipts_before = Some(Timestamp(first_ts + 1));
    store.write(&b).unwrap();
}

/// Every page of a full export, checking each page's bounds on the way.
fn export_pages(
    store: &dyn TenantStore,
    max_rows: usize,
    max_bytes: usize,
) -> Vec<crate::ExportPage> {
    let mut pages: Vec<crate::ExportPage> = Vec::new();
    let mut from = ExportPosition::Start;
    loop {
        assert!(pages.len() < 10_000, "the export does not end");
        let page = store.export_page(&from, max_rows, max_bytes).unwrap();
        assert!(
            page.rows.len() <= max_rows.max(1),
            "{} rows in a page of {max_rows}",
            page.rows.len()
        );
        let before_last: usize = page
            .rows
            .iter()
            .rev()
            .skip(1)
            .map(ExportedRow::size_bytes)
            .sum();
        assert!(
            page.rows.len() <= 1 || before_last < max_bytes,
            "a page of {max_bytes} bytes holds {before_last} before its last row"
        );
        let next = page.next.clone();
        if next.is_some() {
            assert!(
                !page.rows.is_empty(),
                "an unfinished export made no progress"
            );
        }
        pages.push(page);
        match next {
            Some(next) => from = next,
            None => return pages,
        }
    }
}

fn export_rows(store: &dyn TenantStore, max_rows: usize, max_bytes: usize) -> Vec<ExportedRow> {
    export_pages(store, max_rows, max_bytes)
        .into_iter()
        .flat_map(|page| page.rows)
        .collect()
}

/// Copies `from` into `to` a page at a time, setting `max_ts` with the last page.
fn copy_namespace(from: &dyn TenantStore, to: &dyn TenantStore, max_ts: Timestamp) {
    let pages = export_pages(from, 3, usize::MAX);
    let last = pages.len() - 1;
    for (n, page) in pages.iter().enumerate() {
        to.import(&page.rows, (n == last).then_some(max_ts))
            .unwrap();
    }
}

/// Everything the read methods show of a namespace, for comparing two of them.
#[derive(Debug, PartialEq, Eq)]
struct Contents {
    max_ts: Timestamp,
    stats: crate::NamespaceStats,
    table_counts: Vec<(TableNumber, u64)>,
    documents: Vec<Option<StoredDocument>>,
    tables: Vec<Vec<StoredDocument>>,
    indexes: Vec<IndexContents>,
    globals: Vec<Option<Vec<u8>>>,
    receipts: Vec<Option<(Timestamp, Vec<u8>)>>,
    rows: Vec<ExportedRow>,
}

/// One index scanned whole, ascending and descending, and the `ts` of the scan.
#[derive(Debug, PartialEq, Eq)]
struct IndexContents {
    ascending: Vec<(Vec<u8>, StoredDocument)>,
    descending: Vec<(Vec<u8>, StoredDocument)>,
    ts: Timestamp,
}

fn contents(store: &dyn TenantStore) -> Contents {
    let mut table_counts = store.table_counts().unwrap();
    table_counts.sort();
    let doc_ids = (1..=2).flat_map(|t| (0..=255u8).map(move |n| id(t, n)));
    let tables = (1..=2)
        .map(|t| {
            let mut docs = Vec::new();
            store
                .scan_table(TableNumber(t), &mut |d| {
                    docs.push(d);
                    true
                })
                .unwrap();
            docs
        })
        .collect();
    let indexes = (1..=2)
        .map(|index| {
            let scan = |order| {
                store
                    .scan_index(IndexNumber(index), &KeyRange::all(), order, 1000)
                    .unwrap()
            };
            let (up, down) = (scan(ScanOrder::Ascending), scan(ScanOrder::Descending));
            IndexContents {
                ascending: up.entries,
                descending: down.entries,
                ts: up.ts,
            }
        })
        .collect();
    let receipt_keys: [&[u8]; 6] = [b"s1/0", b"s1/1", b"s2/0", &[0x00], &[0xff, 0x00], b"s3/0"];
    Contents {
        max_ts: store.max_ts().unwrap(),
        stats: store.stats().unwrap(),
        table_counts,
        documents: doc_ids.map(|d| store.get_document(&d).unwrap()).collect(),
        tables,
        indexes,
        globals: GLOBAL_NAMES
            .iter()
            .chain(["", "missing", "added"].iter())
            .map(|name| store.get_global(name).unwrap())
            .collect(),
        receipts: receipt_keys
            .iter()
            .map(|key| store.get_receipt(key).unwrap())
            .collect(),
        rows: export_rows(store, usize::MAX, usize::MAX),
    }
}

/// A namespace exported a few rows at a time and imported into another reads the same
/// through every read method, and survives a reopen; a page's bounds never stop progress.
pub fn export_round_trip(make: Constructor, root: &Path) {
    let backend = make(root);
    backend.create_namespace("a").unwrap();
    backend.create_namespace("b").unwrap();
    let a = backend.open_namespace("a").unwrap();
    let b = backend.open_namespace("b").unwrap();
    let empty = b.export_page(&ExportPosition::Start, 3, 1).unwrap();
    assert_eq!(
        empty,
        crate::ExportPage::default(),
        "an empty namespace exports nothing"
    );
    fill_for_export(a.as_ref(), 10);

    let rows = export_rows(a.as_ref(), usize::MAX, usize::MAX);
    assert_eq!(export_pages(a.as_ref(), usize::MAX, usize::MAX).len(), 1);
    let count = |kind: fn(&ExportedRow) -> bool| rows.iter().filter(|r| kind(r)).count();
    assert_eq!(count(|r| matches!(r, ExportedRow::Document(_))), 9);
    assert_eq!(count(|r| matches!(r, ExportedRow::IndexEntry { .. })), 14);
    assert_eq!(count(|r| matches!(r, ExportedRow::Global { .. })), 5);
    assert_eq!(count(|r| matches!(r, ExportedRow::Receipt { .. })), 3);
    // Fixed order: kinds in turn, each by key as bytes (a name's UTF-8 bytes, too).
    let positions: Vec<_> = rows.iter().map(|r| r.position().order_key()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{rows:#?}");
    assert!(rows.contains(&ExportedRow::Receipt {
        key: vec![0xff, 0x00],
        ts: Timestamp(11),
        body: b"another binary key".to_vec(),
    }));

    for (max_rows, max_bytes) in [(3, usize::MAX), (1000, 1), (3, 0), (0, 100), (5, 60)] {
        assert_eq!(
            export_rows(a.as_ref(), max_rows, max_bytes),
            rows,
            "pages of {max_rows} rows and {max_bytes} bytes"
        );
    }
    let one_byte = export_pages(a.as_ref(), 1000, 1);
    assert!(one_byte.iter().all(|page| page.rows.len() <= 1));

    copy_namespace(a.as_ref(), b.as_ref(), a.max_ts().unwrap());
    let expected = contents(a.as_ref());
    assert_eq!(contents(b.as_ref()), expected);
    drop((a, b));
    drop(backend);
    let b = make(root).open_namespace("b").unwrap();
    assert_eq!(contents(b.as_ref()), expected, "an import is durable");
}

/// An import sets `max_ts` backwards or forwards; batches after it are written as usual,
/// and a batch not after it is refused as before. Imported rows overwrite and keep their
/// timestamps.
pub fn import_then_write(make: Constructor, root: &Path) {
    let backend = make(root);
    backend.create_namespace("t").unwrap();
    let store = backend.open_namespace("t").unwrap();
    let mut first = batch(100);
    first.documents.push(put(1, 1, "written"));
    first.documents.push(put(1, 2, "written, stays"));
    store.write(&first).unwrap();

    let imported = |n: u8, ts: u64| StoredDocument {
        id: id(1, n),
        table: TableNumber(1),
        ts: Timestamp(ts),
        body: format!("imported {n}").into_bytes(),
    };
    let rows = vec![
        ExportedRow::Document(imported(1, 5)),
        ExportedRow::Document(imported(3, 40)),
        ExportedRow::IndexEntry {
            index: IndexNumber(1),
            key: vec![0xff],
            id: id(1, 3),
        },
        ExportedRow::Global {
            name: "g".into(),
            value: b"first".to_vec(),
        },
        ExportedRow::Global {
            name: "g".into(),
            value: b"second".to_vec(),
        },
        ExportedRow::Receipt {
            key: b"r".to_vec(),
            ts: Timestamp(30),
            body: b"answer".to_vec(),
        },
    ];
    store.import(&rows, Some(Timestamp(50))).unwrap();
    assert_eq!(
        store.max_ts().unwrap(),
        Timestamp(50),
        "max_ts moves backwards"
    );
    assert_eq!(
        store.get_document(&id(1, 1)).unwrap(),
        Some(imported(1, 5)),
        "an imported row overwrites, with its own ts"
    );
    assert_eq!(
        store.get_document(&id(1, 2)).unwrap().unwrap().ts,
        Timestamp(100)
    );
    assert_eq!(
        store.get_global("g").unwrap(),
        Some(b"second".to_vec()),
        "the later row wins"
    );
    assert_eq!(
        store.get_receipt(b"r").unwrap(),
        Some((Timestamp(30), b"answer".to_vec()))
    );
    let scan = store
        .scan_index(IndexNumber(1), &KeyRange::all(), ScanOrder::Ascending, 10)
        .unwrap();
    assert_eq!(scan.ts, Timestamp(50));
    assert_eq!(keys(&scan), vec![vec![0xff]]);
    assert_eq!(scan.entries[0].1.ts, Timestamp(40));

    let mut refused = batch(50);
    refused.documents.push(put(1, 9, "refused"));
    assert!(
        store.write(&refused).is_err(),
        "a batch at the imported max_ts is refused"
    );
    assert!(store.get_document(&id(1, 9)).unwrap().is_none());
    store.import(&[], None).unwrap();
    assert_eq!(
        store.max_ts().unwrap(),
        Timestamp(50),
        "no max_ts, no change"
    );

    let mut next = batch(51);
    next.documents.push(put(1, 3, "written after"));
    next.receipts.push(receipt(b"r2", "after"));
    store.write(&next).unwrap();
    assert_eq!(store.max_ts().unwrap(), Timestamp(51));
    assert_eq!(
        store.get_document(&id(1, 3)).unwrap().unwrap().ts,
        Timestamp(51)
    );
    store.import(&[], Some(Timestamp(200))).unwrap();
    assert_eq!(
        store.max_ts().unwrap(),
        Timestamp(200),
        "max_ts moves forwards"
    );
    assert!(store.write(&batch(150)).is_err());
    store.write(&batch(201)).unwrap();
    drop(store);
    drop(backend);
    let store = make(root).open_namespace("t").unwrap();
    assert_eq!(store.max_ts().unwrap(), Timestamp(201));
    assert_eq!(
        store.get_receipt(b"r").unwrap().map(|(ts, _)| ts),
        Some(Timestamp(30))
    );
}

/// An export taken while the namespace is written, imported with the `max_ts` from before
/// those writes, then the writes' batches replayed on top: the copy equals the original.
pub fn export_replay_converges(make: Constructor, root: &Path) {
    let backend = make(root);
    backend.create_namespace("a").unwrap();
    backend.create_namespace("b").unwrap();
    let a = backend.open_namespace("a").unwrap();
    let b = backend.open_namespace("b").unwrap();
    fill_for_export(a.as_ref(), 10);
    let before = a.max_ts().unwrap();
    let first = a
        .export_page(&ExportPosition::Start, 3, usize::MAX)
        .unwrap();
    assert_eq!(first.rows.len(), 3);
    let exported_ids: Vec<DocumentId> = first
        .rows
        .iter()
        .map(|row| match row {
            ExportedRow::Document(doc) => doc.id,
            other => panic!("documents come first: {other:?}"),
        })
        .collect();
    assert_eq!(exported_ids, vec![id(1, 1), id(1, 2), id(1, 4)]);

    // Written while the export runs: the caller keeps these batches to replay them.
    let mut replay = Vec::new();
    let mut w = batch(before.0 + 1);
    w.documents.push(put(1, 1, "overwritten after its export"));
    w.documents.push(delete(1, 2));
    w.indexes.push(IndexWrite::Delete {
        index: IndexNumber(1),
        key: EDGE_KEYS[1].to_vec(),
    });
    w.indexes.push(entry(1, &[0x00, 0x01], id(1, 1)));
    w.globals.push(("added".into(), Some(b"new".to_vec())));
    w.globals.push(("alpha".into(), None));
    w.receipts.push(receipt(b"s3/0", "answer 3"));
    replay.push(w);
    let mut w = batch(before.0 + 5);
    w.documents
        .push(put(2, 0xff, "overwritten before its export"));
    w.documents.push(put(1, 2, "back again"));
    w.indexes.push(IndexWrite::DropIndex {
        index: IndexNumber(2),
    });
    w.indexes.push(entry(2, &[0x42], id(2, 0xff)));
    w.expire_receipts_before = Some(Timestamp(before.0));
    replay.push(w);
    for w in &replay {
        a.write(w).unwrap();
    }

    let mut rows = first.rows.clone();
    let mut from = first.next.clone().unwrap();
    loop {
        let page = a.export_page(&from, 3, usize::MAX).unwrap();
        rows.extend(page.rows);
        match page.next {
            Some(next) => from = next,
            None => break,
        }
    }
    b.import(&rows, Some(before)).unwrap();
    assert_eq!(b.max_ts().unwrap(), before);
    for w in &replay {
        b.write(w).unwrap();
    }
    assert_eq!(contents(b.as_ref()), contents(a.as_ref()));
}

/// `write_unsynced` is a write like any other for readers, ordering and refusals; `sync`
/// (with or without anything unsynced) loses nothing; a reopened namespace has it all.
pub fn unsynced_writes_then_sync(make: Constructor, root: &Path) {
    let backend = make(root);
    backend.create_namespace("u").unwrap();
    let store = backend.open_namespace("u").unwrap();
    store.sync().unwrap();
    let mut b = batch(10);
    b.documents = vec![put(1, 1, "one")];
    b.globals = vec![("applied".into(), Some(b"1".to_vec()))];
    store.write_unsynced(&b).unwrap();
    assert_eq!(store.get_document(&id(1, 1)).unwrap().unwrap().body, b"one");
    assert_eq!(store.max_ts().unwrap(), Timestamp(10));
    // Refused like a write: not after max_ts.
    let mut stale = batch(10);
    stale.documents = vec![put(1, 2, "stale")];
    assert!(store.write_unsynced(&stale).is_err());
    assert!(store.get_document(&id(1, 2)).unwrap().is_none());
    // Unsynced, then synced, then unsynced again, interleaved.
    let mut b = batch(11);
    b.documents = vec![put(1, 2, "two")];
    store.write(&b).unwrap();
    let mut b = batch(12);
    b.documents = vec![put(1, 3, "three")];
    b.globals = vec![("applied".into(), Some(b"3".to_vec()))];
    store.write_unsynced(&b).unwrap();
    store.sync().unwrap();
    store.sync().unwrap();
    drop(store);
    let store = backend.open_namespace("u").unwrap();
    assert_eq!(store.max_ts().unwrap(), Timestamp(12));
    for (n, body) in [(1, "one"), (2, "two"), (3, "three")] {
        assert_eq!(
            store.get_document(&id(1, n)).unwrap().unwrap().body,
            body.as_bytes()
        );
    }
    assert_eq!(store.get_global("applied").unwrap(), Some(b"3".to_vec()));
    // Nothing of a sync shows as data.
    let page = store
        .export_page(&crate::ExportPosition::Start, 1000, 1 << 20)
        .unwrap();
    assert_eq!(
        page.rows.len(),
        3 + 1,
        "three documents and one global: {:?}",
        page.rows
    );
}

/// Expands into one `#[test]` per conformance check. `$make` is an expression of type
/// `impl Fn(&Path) -> Box<dyn StorageBackend>`.
#[macro_export]
macro_rules! run_conformance_suite {
    ($make:expr) => {
        $crate::run_conformance_suite!(@tests $make;
            namespaces, documents_and_globals, index_ranges, namespaces_are_isolated,
            batches_are_atomic_for_readers, a_refused_batch_writes_nothing, receipts,
            index_chunks_are_dropped, model_based, export_round_trip, import_then_write,
            export_replay_converges, unsynced_writes_then_sync);
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

//! The raw rusqlite baseline: the same durable writes and indexed reads as the Nimbus
//! workload, in-process (WAL, `synchronous=FULL`): single-row transactions (one fsync
//! each), grouped transactions (N rows per fsync, what group commit does), and indexed range
//! reads of 10 rows. The ceiling of the SQLite backend on this machine.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use hdrhistogram::Histogram;
use serde_json::{json, Value as Json};

use crate::stats::{new_histogram, record, summary, SCHEMA_VERSION};

fn open_db(path: &std::path::Path) -> Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;
         CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, shop TEXT NOT NULL,
             status TEXT NOT NULL, created_at REAL NOT NULL, body TEXT NOT NULL);
         CREATE INDEX IF NOT EXISTS by_shop_status_created ON orders (shop, status, created_at);",
    )?;
    Ok(conn)
}

/// Writes rows of the same shape as a Nimbus order for `duration`, `rows_per_txn` rows per
/// durable transaction, from one thread.
fn write_run(conn: &rusqlite::Connection, duration: Duration, rows_per_txn: usize) -> Result<Json> {
    let mut histogram = new_histogram()?;
    let started = Instant::now();
    let mut rows = 0u64;
    let mut txns = 0u64;
    let body = r#"{"shopId":"k57a0f3y1t2xq9s8w6e4r5t7y9u1i3o5","status":"open","totalCents":1299,"createdAt":1764032400000}"#;
    while started.elapsed() < duration {
        let t0 = Instant::now();
        let tx = conn.unchecked_transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO orders (shop, status, created_at, body) VALUES (?1, 'open', ?2, ?3)",
            )?;
            for _ in 0..rows_per_txn {
                insert.execute(rusqlite::params![
                    format!("shop{}", rows % 10),
                    rows as f64,
                    body
                ])?;
                rows += 1;
            }
        }
        tx.commit()?;
        txns += 1;
        record(&mut histogram, t0.elapsed())?;
    }
    let elapsed = started.elapsed();
    let mut out = summary(&histogram, txns, elapsed);
    out["rows_per_txn"] = json!(rows_per_txn);
    out["rows_per_sec"] = json!((rows as f64 / elapsed.as_secs_f64()).round());
    Ok(out)
}

pub(crate) fn baseline(duration: Duration, group: usize, readers: usize) -> Result<Json> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("baseline.sqlite3");
    let conn = open_db(&path)?;
    eprintln!("rusqlite: single-row durable transactions for {duration:?}");
    let single = write_run(&conn, duration, 1)?;
    eprintln!("rusqlite: {group} rows per durable transaction for {duration:?}");
    let grouped = write_run(&conn, duration, group)?;
    eprintln!("rusqlite: indexed reads of 10 rows, {readers} threads, for {duration:?}");
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for reader in 0..readers {
        let (path, stop) = (path.clone(), stop.clone());
        threads.push(std::thread::spawn(move || -> Result<(Histogram<u64>, u64)> {
            let conn = open_db(&path)?;
            let mut histogram = new_histogram()?;
            let mut count = 0u64;
            let mut statement = conn.prepare(
                "SELECT body FROM orders WHERE shop = ?1 AND status = 'open' ORDER BY created_at DESC LIMIT 10",
            )?;
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let shop = format!("shop{}", (count as usize + reader) % 10);
                let rows: Vec<String> = statement
                    .query_map([shop], |r| r.get(0))?
                    .collect::<std::result::Result<_, _>>()?;
                if rows.len() != 10 {
                    bail!("expected 10 rows, got {}", rows.len());
                }
                record(&mut histogram, t0.elapsed())?;
                count += 1;
            }
            Ok((histogram, count))
        }));
    }
    let started = Instant::now();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let mut histogram = new_histogram()?;
    let mut count = 0;
    for thread in threads {
        let (h, c) = thread
            .join()
            .map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
        histogram.add(&h)?;
        count += c;
    }
    Ok(json!({
        "schema_version": SCHEMA_VERSION,
        "kind": "sqlite-baseline",
        "readers": readers,
        "single_row_txns": single,
        "grouped_txns": grouped,
        "indexed_reads": summary(&histogram, count, elapsed),
    }))
}

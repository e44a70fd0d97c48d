//! The storage conformance suite against a real Postgres, in three setups:
//! - `shared`: a schema per namespace, direct connections;
//! - `shared_pgbouncer`: the same through PgBouncer in transaction mode (the shared tier
//!   as deployed), from `NIMBUS_TEST_PGBOUNCER_URL` (`scripts/pgbouncer.sh` starts one);
//! - `dedicated`: a database per namespace.
//!
//! `NIMBUS_TEST_POSTGRES_URL` names the server (default: the local one, trust auth). Each
//! test works under a prefix of its own and drops everything under it when it ends.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Mutex;

use nimbus_storage::StorageBackend;
use nimbus_storage_postgres::{PostgresBackend, PostgresConfig, Tier};

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/nimbus_conformance";

fn url() -> String {
    std::env::var("NIMBUS_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.into())
}

/// The PgBouncer URL; without one, the pooler suite fails under CI and is skipped (with a
/// message) elsewhere.
fn pgbouncer_url() -> Option<String> {
    match std::env::var("NIMBUS_TEST_PGBOUNCER_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!("CI must run the PgBouncer suite: set NIMBUS_TEST_PGBOUNCER_URL (scripts/pgbouncer.sh)")
        }
        _ => {
            eprintln!(
                "skipped: NIMBUS_TEST_PGBOUNCER_URL is not set (scripts/pgbouncer.sh starts one)"
            );
            None
        }
    }
}

/// Hands out backends, one name prefix per test root, and drops every schema and database
/// under those prefixes when the test ends (passed or failed).
struct Fixture {
    tag: &'static str,
    tier: Tier,
    pooler: Option<String>,
    prefixes: Mutex<Vec<String>>,
}

impl Fixture {
    fn new(tag: &'static str, tier: Tier, pooler: Option<String>) -> Fixture {
        Fixture {
            tag,
            tier,
            pooler,
            prefixes: Mutex::new(Vec::new()),
        }
    }

    fn backend(&self, root: &Path) -> Box<dyn StorageBackend> {
        self.backend_with(root, |_| {})
    }

    fn backend_with(
        &self,
        root: &Path,
        adjust: impl FnOnce(&mut PostgresConfig),
    ) -> Box<dyn StorageBackend> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        root.hash(&mut h);
        let prefix = format!("{}{:08x}_", self.tag, h.finish() as u32);
        let mut prefixes = self.prefixes.lock().unwrap();
        if !prefixes.contains(&prefix) {
            prefixes.push(prefix.clone());
        }
        let mut config = PostgresConfig::new(url(), self.tier);
        config.pooler_url = self.pooler.clone();
        config.prefix = prefix;
        // Tests run in parallel against one server of 100 connections.
        config.max_connections_per_namespace = 2;
        adjust(&mut config);
        Box::new(PostgresBackend::new(config).expect("postgres backend"))
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Never panics: this runs while a failed test unwinds.
        let prefixes = std::mem::take(
            &mut *self
                .prefixes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async {
            let Ok((client, connection)) =
                tokio_postgres::connect(&url(), tokio_postgres::NoTls).await
            else {
                return;
            };
            tokio::spawn(connection);
            for prefix in prefixes {
                for (query, kind) in [
                    (
                        "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, $1)",
                        "SCHEMA",
                    ),
                    (
                        "SELECT datname FROM pg_database WHERE starts_with(datname, $1)",
                        "DATABASE",
                    ),
                ] {
                    let rows = client.query(query, &[&prefix]).await.unwrap_or_default();
                    for row in rows {
                        let name: String = row.get(0);
                        let tail = if kind == "SCHEMA" {
                            " CASCADE"
                        } else {
                            " WITH (FORCE)"
                        };
                        let _ = client
                            .batch_execute(&format!("DROP {kind} IF EXISTS \"{name}\"{tail}"))
                            .await;
                    }
                }
            }
        });
    }
}

mod shared {
    use super::*;
    nimbus_storage::run_conformance_suite!({
        let fixture = Fixture::new("cs", Tier::Shared, None);
        move |root: &Path| fixture.backend(root)
    });
}

mod dedicated {
    use super::*;
    nimbus_storage::run_conformance_suite!({
        let fixture = Fixture::new("cd", Tier::Dedicated, None);
        move |root: &Path| fixture.backend(root)
    });
}

/// Through PgBouncer: the pooler checks that nothing relies on session state.
mod shared_pgbouncer {
    use super::*;

    macro_rules! through_pgbouncer {
        ($($name:ident),*) => {
            $(
                #[test]
                fn $name() {
                    let Some(pooler) = pgbouncer_url() else { return };
                    let dir = tempfile::tempdir().expect("tempdir");
                    let fixture = Fixture::new("cb", Tier::Shared, Some(pooler));
                    let make = move |root: &Path| fixture.backend(root);
                    nimbus_storage::conformance::$name(&make, dir.path());
                }
            )*
        };
    }

    through_pgbouncer!(
        namespaces,
        documents_and_globals,
        index_ranges,
        namespaces_are_isolated,
        batches_are_atomic_for_readers,
        a_refused_batch_writes_nothing,
        receipts,
        index_chunks_are_dropped,
        model_based,
        export_round_trip,
        import_then_write,
        export_replay_converges,
        unsynced_writes_then_sync
    );
}

/// A call that Postgres does not answer fails as busy after the operation timeout, and its
/// connection is closed rather than pooled: with one connection per namespace, the next
/// call gets a fresh one instead of queueing behind the abandoned statement.
#[test]
fn an_unanswered_call_times_out_and_its_connection_is_not_reused() {
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use nimbus_storage::{StorageError, WriteBatch};
    use nimbus_types::Timestamp;

    let dir = tempfile::tempdir().expect("tempdir");
    let fixture = Fixture::new("ct", Tier::Shared, None);
    let backend = fixture.backend_with(dir.path(), |config| {
        config.max_connections_per_namespace = 1;
        config.operation_timeout = Duration::from_secs(1);
    });
    backend.create_namespace("slow").expect("create");
    let store = backend.open_namespace("slow").expect("open");
    let global = |ts: u64, value: &[u8]| WriteBatch {
        ts: Timestamp(ts),
        globals: vec![("g".into(), Some(value.to_vec()))],
        ..WriteBatch::default()
    };
    store.write(&global(1, b"one")).expect("first write");

    // Another session holds the row every write updates first.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let schema: String = runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
            .await
            .expect("connect");
        let task = tokio::spawn(connection);
        let rows = client
            .query(
                "SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname, 'ct') \
                 AND nspname LIKE '%slow'",
                &[],
            )
            .await
            .expect("schema");
        assert_eq!(rows.len(), 1, "one schema for the namespace");
        let schema: String = rows[0].get(0);
        drop(client);
        let _ = task.await;
        schema
    });
    let (locker, connection) = runtime
        .block_on(tokio_postgres::connect(&url(), tokio_postgres::NoTls))
        .expect("connect");
    let connection = runtime.spawn(connection);
    runtime
        .block_on(locker.batch_execute(&format!(
            "BEGIN; SELECT value FROM \"{schema}\".meta WHERE name = 'max_ts' FOR UPDATE"
        )))
        .expect("lock max_ts");

    // The write waits for the lock; without a bound it would wait for ever.
    let (done, answer) = mpsc::channel();
    let writer = store.clone();
    let started = Instant::now();
    std::thread::spawn(move || {
        let _ = done.send(writer.write(&global(2, b"two")));
    });
    let result = answer
        .recv_timeout(Duration::from_secs(20))
        .expect("the blocked write returned");
    assert!(
        matches!(&result, Err(StorageError::Busy(message)) if message.contains("did not answer within 1 s")),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // The lock is still held: a read on a pooled connection behind the abandoned write
    // would wait for it too.
    let (done, answer) = mpsc::channel();
    let reader = store.clone();
    std::thread::spawn(move || {
        let _ = done.send(reader.get_global("g"));
    });
    let read = answer
        .recv_timeout(Duration::from_secs(20))
        .expect("the read returned");
    assert_eq!(read.expect("read"), Some(b"one".to_vec()));

    // Once the lock goes, writes go through (the abandoned one never committed).
    runtime
        .block_on(locker.batch_execute("ROLLBACK"))
        .expect("unlock");
    drop(locker);
    let _ = runtime.block_on(connection);
    store
        .write(&global(3, b"three"))
        .expect("write after the lock");
    assert_eq!(
        store.get_global("g").expect("read"),
        Some(b"three".to_vec())
    );
    assert_eq!(store.max_ts().expect("max_ts"), Timestamp(3));
}

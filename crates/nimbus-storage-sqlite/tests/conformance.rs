//! The shared storage conformance suite, run against SQLite.
#![allow(clippy::expect_used)]

use nimbus_storage::StorageBackend;
use nimbus_storage_sqlite::{SqliteBackend, SqliteConfig};

nimbus_storage::run_conformance_suite!(|root: &std::path::Path| -> Box<dyn StorageBackend> {
    Box::new(SqliteBackend::new(root.to_path_buf(), SqliteConfig::default()).expect("backend"))
});

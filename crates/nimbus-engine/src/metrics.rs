//! Counters of one tenant's engine (read by diagnostics and `/metrics`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Default)]
pub struct EngineMetrics {
    /// Mutations committed.
    pub commits: AtomicU64,
    /// Storage batches written (each one fsync).
    pub batches: AtomicU64,
    /// Transactions rejected for conflicts (retried by the caller).
    pub conflicts: AtomicU64,
    /// Total time spent in storage writes, in microseconds.
    pub write_micros: AtomicU64,
    /// Requests rejected because the admission queue was full.
    pub rejected_overload: AtomicU64,
}

impl EngineMetrics {
    pub(crate) fn record_write(&self, elapsed: Duration, commits: u64) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.commits.fetch_add(commits, Ordering::Relaxed);
        self.write_micros.fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

/// Whether the tenant's storage accepts writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StorageState {
    /// Writes are accepted.
    #[default]
    Ok,
    /// A write failed; writes are refused (503) and the storage is reopened with backoff.
    Failed,
    /// A reopen is in progress.
    Recovering,
}

impl StorageState {
    pub fn as_str(self) -> &'static str {
        match self {
            StorageState::Ok => "ok",
            StorageState::Failed => "failed",
            StorageState::Recovering => "recovering",
        }
    }
}

/// The storage's health, as the committer last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageHealth {
    pub state: StorageState,
    /// The error of the last failed write or reopen, until a reopen succeeds.
    pub last_error: Option<String>,
    /// When the storage last failed (milliseconds since the Unix epoch).
    pub failed_at_ms: Option<u64>,
    /// Reopen attempts since the last failure.
    pub reopen_attempts: u64,
    /// Failures recovered from since the tenant was activated.
    pub recoveries: u64,
}

/// A point-in-time copy of the counters plus gauges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub commits: u64,
    pub batches: u64,
    pub conflicts: u64,
    pub write_micros: u64,
    pub rejected_overload: u64,
    pub queue_depth: usize,
    pub queue_capacity: usize,
    pub documents: usize,
    pub resident_bytes: usize,
    pub latest_ts: u64,
    pub storage: StorageHealth,
}

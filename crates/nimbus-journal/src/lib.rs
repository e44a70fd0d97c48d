//! The durable mutation journal shared by many tenants: their commits share one append and
//! one `fdatasync` per round.
//!
//! Logically each tenant has a journal of its own — its records, in LSN order, and its
//! *applied* position (how far its storage has durably caught up). Physically the records
//! of every tenant go into one sequence of segment files (`<dir>/<first LSN>.journal`, see
//! [`format`] for the bytes), tagged with the tenant's [`TenantKey`]: its name and its
//! *incarnation*, so that records of a deleted tenant are never taken for records of a new
//! tenant of the same name.
//!
//! - **Append** ([`Journal::append`]): the caller's record joins the round the writer
//!   thread takes next; the writer writes every record of the round, syncs the segment
//!   once, and answers each caller with its LSN. A record is durable when `append`
//!   returns `Ok`. Records waiting for a round are bounded in bytes (callers wait for
//!   room); the journal's disk use is bounded too ([`JournalError::Full`]).
//! - **Recovery** ([`Journal::open`]): segments are scanned in order; the valid prefix of
//!   the last one is kept and a torn tail (a crash mid-append) is cut off. A damaged
//!   segment before the last is not something a crash leaves, and refuses the open.
//!   [`Journal::replay`] then gives a tenant its records past its applied position.
//! - **Truncation** ([`Journal::truncate`]): the oldest segments are deleted once no live
//!   tenant needs them, i.e. every tenant with records in them has applied those records
//!   ([`Journal::set_applied`]) or is dead ([`Journal::forget`]). A tenant whose applied
//!   position is not known since the open pins every segment holding its records.
//!
//! **Invariants:** LSNs are contiguous across segments, each record's LSN one more than
//! the previous record's; a segment is synced before the next is created, so every
//! segment but the last is whole; a record is acknowledged only after the sync that covers
//! it; segments are deleted oldest first, so what remains is always contiguous.

mod error;
pub mod format;
mod recover;
mod state;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use error::JournalError;
pub use format::{Record, MAX_TENANT_NAME_BYTES};
pub use state::{JournalStats, TenantLag};
pub use writer::fault;

/// Log sequence number: a record's place in the journal. The first record is 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

/// Whose a record is: a tenant's name and its incarnation (chosen when the tenant is
/// created, never reused), so a deleted tenant's records never reach a new tenant of the
/// same name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TenantKey {
    pub name: String,
    pub incarnation: u64,
}

/// Bounds and placement of a journal.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    pub dir: PathBuf,
    /// A segment is closed and a new one started once it holds this many bytes (one round
    /// may take it past).
    pub segment_bytes: u64,
    /// Bytes of records waiting for the writer; an append past it waits for room.
    pub max_pending_bytes: usize,
    /// Bytes one round writes at most before its sync (the rest waits for the next); a
    /// larger record is a round of its own.
    pub max_round_bytes: usize,
    /// Largest record (header and tenant name included).
    pub max_record_bytes: usize,
    /// Bytes of segments on disk; past it appends fail with [`JournalError::Full`].
    pub max_disk_bytes: u64,
    /// Whether a round is synced. Only tests and benchmarks of everything but the disk
    /// turn it off; nothing is durable then.
    pub sync: bool,
}

impl JournalConfig {
    pub fn new(dir: impl Into<PathBuf>) -> JournalConfig {
        JournalConfig {
            dir: dir.into(),
            segment_bytes: 64 << 20,
            max_pending_bytes: 64 << 20,
            max_round_bytes: 16 << 20,
            max_record_bytes: 32 << 20,
            max_disk_bytes: 4 << 30,
            sync: true,
        }
    }
}

/// The journal of an instance. Dropping it stops the writer after the records already
/// waiting.
pub struct Journal {
    shared: Arc<state::Shared>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Journal {
    /// Opens (or creates) the journal in `config.dir`, recovering what a crash left: see
    /// the crate docs. Appends go to a new segment.
    pub fn open(config: JournalConfig) -> Result<Journal, JournalError> {
        if config.max_record_bytes > config.max_pending_bytes {
            // Such a record could never be queued.
            return Err(JournalError::Refused(
                "max_record_bytes must fit in max_pending_bytes".into(),
            ));
        }
        std::fs::create_dir_all(&config.dir).map_err(|e| error::io("creating its directory", e))?;
        let recovered = recover::recover(&config.dir)?;
        let shared = Arc::new(state::Shared::new(config, recovered)?);
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("nimbus-journal".into())
            .spawn(move || writer::run(&writer_shared))
            .map_err(|e| error::io("starting the writer thread", e))?;
        Ok(Journal {
            shared,
            writer: Some(writer),
        })
    }

    /// Appends one record of `tenant` and waits until it is durable; its LSN.
    pub fn append(&self, tenant: &TenantKey, payload: &[u8]) -> Result<Lsn, JournalError> {
        self.shared.append(tenant, payload)
    }

    /// Visits `tenant`'s durable records with an LSN after `after`, in order, until
    /// `visit` returns false.
    pub fn replay(
        &self,
        tenant: &TenantKey,
        after: Lsn,
        visit: &mut dyn FnMut(Record) -> bool,
    ) -> Result<(), JournalError> {
        self.shared.replay(tenant, after, visit)
    }

    /// Records that `tenant`'s storage has durably applied every record up to `lsn`.
    pub fn set_applied(&self, tenant: &TenantKey, lsn: Lsn) {
        self.shared.set_applied(tenant, lsn);
    }

    /// Marks every record of `tenant` dead (the tenant was deleted): they pin nothing and
    /// are never replayed.
    pub fn forget(&self, tenant: &TenantKey) {
        self.shared.forget(tenant);
    }

    /// Tenants with live records whose applied position is unknown or behind their last
    /// record, with that last LSN: after an open, the tenants to recover.
    pub fn tenants_behind(&self) -> Vec<(TenantKey, Lsn)> {
        self.shared.tenants_behind()
    }

    /// Deletes the oldest segments no live tenant needs; how many.
    pub fn truncate(&self) -> Result<usize, JournalError> {
        self.shared.truncate()
    }

    /// What `tenant` has not applied yet.
    pub fn lag(&self, tenant: &TenantKey) -> TenantLag {
        self.shared.lag(tenant)
    }

    pub fn stats(&self) -> JournalStats {
        self.shared.stats()
    }

    pub fn dir(&self) -> &Path {
        &self.shared.config.dir
    }

    /// How long the oldest record waiting for a round has waited (zero when none).
    pub fn oldest_pending(&self) -> Duration {
        self.shared.oldest_pending()
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.shared.close();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

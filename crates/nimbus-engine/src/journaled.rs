//! Commits through the shared journal (`nimbus-journal`), for tenants whose storage is
//! embedded (one file each): their commits then share one sync across tenants instead of
//! paying one each.
//!
//! With a [`TenantJournal`], the committer makes a group durable by appending its batch to
//! the journal; it then applies the batch to the tenant's storage without a sync of its
//! own ([`TenantStore::write_unsynced`]), with the journal position it came from in the
//! same transaction (the global [`APPLIED_GLOBAL`]), and only then publishes and answers —
//! so storage holds every published commit, as without a journal, and readers served from
//! storage see nothing new. [`SYNC_EVERY`] after the first unsynced batch, and when the
//! committer stops, [`TenantStore::sync`] makes the applied batches durable in storage and
//! the journal is told the tenant's applied position, which lets it delete old segments.
//! Syncing sooner would cost a tenant that commits about once a second a second sync per
//! commit (measured: it doubled the p99 of 1,000 such tenants); later only keeps more
//! journal on disk and more to apply after a crash.
//!
//! Opening the tenant (and reopening it after a storage failure) first *catches up*: every
//! journal record of this tenant past the applied position stored in its namespace is
//! applied to storage, in order, and synced. A crash can lose unsynced storage writes, never
//! a journaled one.
//!
//! **Invariants:** a commit is answered only after its journal record is durable; a
//! tenant's records are appended in commit order (one committer), so LSN order is `ts`
//! order; storage's applied position moves only with the batch it describes.

use std::sync::Arc;
use std::time::Duration;

use nimbus_journal::{Journal, Lsn, TenantKey};
use nimbus_storage::{decode_batch, encode_batch, StorageError, TenantStore, WriteBatch};

use crate::error::EngineError;

/// The global holding the last journal LSN applied to a tenant's storage.
pub const APPLIED_GLOBAL: &str = "nimbus.journal.applied";

/// The longest a tenant's applied batches stay unsynced in its storage.
pub(crate) const SYNC_EVERY: Duration = Duration::from_secs(10);

/// A tenant's place in the shared journal: the journal and the key its records carry.
#[derive(Clone)]
pub struct TenantJournal {
    pub journal: Arc<Journal>,
    pub key: TenantKey,
}

impl std::fmt::Debug for TenantJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantJournal")
            .field("dir", &self.journal.dir())
            .field("key", &self.key)
            .finish()
    }
}

impl TenantJournal {
    /// Appends `batch` durably; its LSN. A journal failure is a storage failure of the
    /// tenant (it refuses writes until its storage is reopened).
    pub(crate) fn append(&self, batch: &WriteBatch) -> Result<Lsn, StorageError> {
        self.journal
            .append(&self.key, &encode_batch(batch))
            .map_err(|e| match e {
                nimbus_journal::JournalError::Full(detail) => {
                    StorageError::Busy(format!("journal full: {detail}"))
                }
                other => StorageError::Io(other.to_string()),
            })
    }

    /// Applies every record past the applied position stored in `store`, synced; the
    /// applied LSN afterwards (also reported to the journal). Blocking. The caller makes
    /// sure nothing else writes to the store meanwhile (a tenant's open does it; so does a
    /// start before it serves).
    pub fn catch_up(&self, store: &dyn TenantStore) -> Result<Lsn, EngineError> {
        let mut applied = applied(store)?;
        let from = applied;
        let mut failure: Option<EngineError> = None;
        self.journal
            .replay(&self.key, applied, &mut |record| {
                let mut batch = match decode_batch(&record.payload) {
                    Ok(batch) => batch,
                    Err(e) => {
                        failure = Some(e.into());
                        return false;
                    }
                };
                batch.globals.push(applied_global(record.lsn));
                // A refusal here (a batch not after the stored `max_ts`) would mean the
                // store holds a commit its applied position does not: never by the
                // invariants, so it stops the open rather than skip a record.
                if let Err(e) = store.write_unsynced(&batch) {
                    failure = Some(EngineError::Storage(e));
                    return false;
                }
                applied = record.lsn;
                nimbus_journal::fault("during-catch-up");
                true
            })
            .map_err(|e| EngineError::Storage(StorageError::Io(format!("journal replay: {e}"))))?;
        if let Some(failure) = failure {
            return Err(failure);
        }
        if applied > from {
            store.sync()?;
            tracing::info!(
                tenant = %self.key.name,
                from = from.0,
                to = applied.0,
                "applied journal records the tenant's storage had not synced"
            );
        }
        self.journal.set_applied(&self.key, applied);
        Ok(applied)
    }
}

/// The `(name, value)` that records `lsn` as applied, written with the batch of `lsn`.
pub(crate) fn applied_global(lsn: Lsn) -> (String, Option<Vec<u8>>) {
    (
        APPLIED_GLOBAL.to_string(),
        Some(lsn.0.to_le_bytes().to_vec()),
    )
}

/// The applied position stored in `store` (0: none yet).
pub(crate) fn applied(store: &dyn TenantStore) -> Result<Lsn, EngineError> {
    match store.get_global(APPLIED_GLOBAL)? {
        None => Ok(Lsn(0)),
        Some(bytes) => {
            let word: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
                EngineError::Storage(StorageError::Corrupted {
                    namespace: String::new(),
                    detail: format!("{APPLIED_GLOBAL} of {} bytes", bytes.len()),
                })
            })?;
            Ok(Lsn(u64::from_le_bytes(word)))
        }
    }
}

//! The per-tenant committer: one task that serializes every write of a tenant.
//!
//! Requests arrive through a bounded queue (the tenant's admission queue). The committer
//! takes everything waiting (up to `max_batch`), checks each transaction's read set
//! against the write log (optimistic concurrency), applies the survivors to a copy of the
//! latest snapshot, writes them to storage as ONE batch (one fsync for the whole group),
//! and only then publishes the new snapshot and answers the callers. While a batch is
//! being made durable, new requests queue up and form the next group: that is group
//! commit, and it is where write throughput comes from.
//!
//! **Invariants:** a caller is answered `Ok` only after its writes are durable; a
//! snapshot is published only after the batch that produced it is durable. After a
//! storage failure the batch may or may not be on disk, so the committer refuses every
//! request (503) until it has reopened the storage and reloaded the tenant from what is
//! durable there: it retries by itself with backoff (and at once when an operator asks),
//! and publishes the reloaded state as a new snapshot that every older transaction
//! conflicts with.

use std::collections::BTreeMap;
use std::sync::Arc;

use nimbus_storage::{DocumentWrite, IndexNumber, IndexWrite, TenantStore, WriteBatch};
use nimbus_types::{DocumentId, Timestamp};
use parking_lot::RwLock;
use tokio::sync::{mpsc, oneshot, watch};

use crate::catalog::{Catalog, CATALOG_GLOBAL};
use crate::deploy::{
    apply_backfill, apply_deploy, apply_stage, apply_system_tables, apply_unstage,
    check_staged_writes, DeployOutcome, DeployRequest, StageRequest, Staged, Staging,
};
use crate::error::EngineError;
use crate::snapshot::Snapshot;
use crate::transaction::FinishedTransaction;
use crate::write_log::WriteLog;

pub(crate) enum CommitterMessage {
    Commit {
        txn: Box<FinishedTransaction>,
        reply: oneshot::Sender<Result<Timestamp, EngineError>>,
    },
    Deploy {
        request: DeployRequest,
        reply: oneshot::Sender<Result<DeployOutcome, EngineError>>,
    },
    /// Step 1 of a deploy (see `deploy.rs`).
    Stage {
        request: StageRequest,
        reply: oneshot::Sender<Result<Staged, EngineError>>,
    },
    /// Abandons a staged deploy.
    Unstage {
        reply: oneshot::Sender<Result<Timestamp, EngineError>>,
    },
    /// Step 2 of a deploy: index these documents into the building indexes.
    Backfill {
        indexes: Vec<IndexNumber>,
        ids: Vec<DocumentId>,
        reply: oneshot::Sender<Result<Timestamp, EngineError>>,
    },
    /// Deletes up to `max_entries` entries of a garbage index; forgets it once empty.
    CollectGarbage {
        index: IndexNumber,
        max_entries: usize,
        reply: oneshot::Sender<Result<bool, EngineError>>,
    },
    SetGlobals {
        globals: Vec<(String, Option<Vec<u8>>)>,
        reply: oneshot::Sender<Result<Timestamp, EngineError>>,
    },
    /// Creates missing system tables and their indexes (see `deploy.rs`).
    SystemTables {
        wanted: crate::deploy::WantedIndexes,
        reply: oneshot::Sender<Result<bool, EngineError>>,
    },
    /// A step of moving the tenant to another namespace (`relocate.rs`).
    Relocate(crate::relocate::RelocationStep),
    /// Stop after everything queued before it; see [`crate::TenantEngine::shutdown`].
    Shutdown { reply: oneshot::Sender<()> },
}

impl CommitterMessage {
    /// Messages committed alone, in a group of their own: a deploy reads the whole state
    /// (backfills, schema checks), which for a tenant served from storage is only true
    /// once the writes before it are durable; and a shutdown must follow them.
    fn is_barrier(&self) -> bool {
        matches!(
            self,
            CommitterMessage::Deploy { .. }
                | CommitterMessage::Stage { .. }
                | CommitterMessage::Unstage { .. }
                | CommitterMessage::CollectGarbage { .. }
                | CommitterMessage::SystemTables { .. }
                | CommitterMessage::Relocate(_)
                | CommitterMessage::Shutdown { .. }
        )
    }
}

/// Committed change notification (for live queries and diagnostics).
#[derive(Debug, Clone)]
pub struct CommitNotice {
    pub ts: Timestamp,
    /// Index keys written (old and new keys of every written document).
    pub keys: Arc<Vec<(IndexNumber, Vec<u8>)>>,
    /// Tables, indexes or the schema changed (readers of the catalog must re-run).
    pub catalog_changed: bool,
}

/// The last published snapshots, newest last, bounded by count and age.
pub(crate) struct RecentSnapshots {
    entries: std::collections::VecDeque<(std::time::Instant, Arc<Snapshot>)>,
    max: usize,
    max_age: std::time::Duration,
}

impl RecentSnapshots {
    pub fn new(max: usize, max_age: std::time::Duration) -> Self {
        RecentSnapshots {
            entries: std::collections::VecDeque::new(),
            max: max.max(1),
            max_age,
        }
    }

    pub fn push(&mut self, snapshot: Arc<Snapshot>) {
        let now = std::time::Instant::now();
        self.entries.push_back((now, snapshot));
        while self.entries.len() > self.max
            || self
                .entries
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > self.max_age)
        {
            self.entries.pop_front();
        }
    }

    /// Forgets every snapshot but `snapshot` (the tenant was reloaded from storage).
    pub fn restart_with(&mut self, snapshot: Arc<Snapshot>) {
        self.entries.clear();
        self.push(snapshot);
    }

    /// The newest snapshot at or before `ts`, if the window reaches back that far.
    pub fn at(&self, ts: Timestamp) -> Option<Arc<Snapshot>> {
        self.entries
            .iter()
            .rev()
            .map(|(_, s)| s)
            .find(|s| s.ts <= ts)
            .cloned()
    }
}

pub(crate) struct CommitterState {
    pub store: Arc<RwLock<Arc<dyn TenantStore>>>,
    /// Reloads the tenant after a storage failure.
    pub loader: crate::engine::Loader,
    pub health: watch::Sender<crate::metrics::StorageHealth>,
    /// Notified by an operator's reopen request.
    pub reopen_now: Arc<tokio::sync::Notify>,
    pub receipt_ttl: std::time::Duration,
    /// When expired receipts were last removed.
    pub last_expiry: std::time::Instant,
    /// A deploy between its stage and its switch (see `deploy.rs`).
    pub staging: Option<Staging>,
    pub published: Arc<RwLock<Arc<Snapshot>>>,
    pub write_log: Arc<parking_lot::Mutex<WriteLog>>,
    pub max_batch: usize,
    pub ts_sender: watch::Sender<Timestamp>,
    pub notices: tokio::sync::broadcast::Sender<CommitNotice>,
    pub metrics: Arc<crate::metrics::EngineMetrics>,
    pub undo: Arc<crate::undo_log::UndoLog>,
    /// Above this many resident bytes the tenant switches to paged serving.
    pub memory_budget: usize,
    pub recent: Arc<parking_lot::Mutex<RecentSnapshots>>,
    /// While the tenant is being moved: a copy of every batch written (`relocate.rs`).
    pub mirror: Option<crate::relocate::SharedMirror>,
    /// Commits go through the shared journal (`journaled.rs`). Shared, so a group commit
    /// hands it to its blocking task without copying the tenant's key.
    pub journal: Option<Arc<crate::journaled::TenantJournal>>,
    /// The last journal record applied to storage but not yet synced there, and when the
    /// first of those unsynced records was applied.
    pub unsynced: Option<nimbus_journal::Lsn>,
    pub unsynced_since: std::time::Instant,
}

/// How a message is answered once its group is published, or when the group fails.
type Reply = Box<dyn FnOnce(Result<&Arc<Snapshot>, &str>) + Send>;

/// First wait after a storage failure before reopening; doubles up to [`REOPEN_MAX`].
const REOPEN_FIRST: std::time::Duration = std::time::Duration::from_millis(100);
const REOPEN_MAX: std::time::Duration = std::time::Duration::from_secs(5);
/// How often a batch also removes expired receipts.
const RECEIPT_EXPIRY_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

pub(crate) async fn run(mut rx: mpsc::Receiver<CommitterMessage>, mut state: CommitterState) {
    let mut batch = Vec::with_capacity(state.max_batch);
    // A barrier taken from the queue while a group was being formed: it starts the next.
    let mut carried: Option<CommitterMessage> = None;
    let mut backoff = REOPEN_FIRST;
    loop {
        if state.health.borrow().state != crate::metrics::StorageState::Ok {
            // Failed: refuse what arrives, and reopen when the backoff ends (or at once
            // when asked).
            let reason = state.health.borrow().last_error.clone().unwrap_or_default();
            if let Some(message) = carried.take() {
                if refuse_or_stop(message, &reason) {
                    break;
                }
            }
            tokio::select! {
                message = rx.recv() => match message {
                    Some(message) => {
                        if refuse_or_stop(message, &reason) {
                            break;
                        }
                        continue;
                    }
                    None => break,
                },
                _ = tokio::time::sleep(backoff) => {}
                _ = state.reopen_now.notified() => {}
            }
            if recover(&mut state).await {
                backoff = REOPEN_FIRST;
            } else {
                backoff = (backoff * 2).min(REOPEN_MAX);
            }
            continue;
        }
        batch.clear();
        let first = match carried.take() {
            Some(message) => message,
            None => {
                // Journaled writes left unsynced are synced once they are due, even when
                // nothing more arrives.
                let due = state
                    .unsynced
                    .map(|_| state.unsynced_since + crate::journaled::SYNC_EVERY);
                let received = match due {
                    Some(due) => tokio::select! {
                        message = rx.recv() => message,
                        _ = tokio::time::sleep_until(due.into()) => {
                            sync_storage(&mut state).await;
                            continue;
                        }
                    },
                    None => rx.recv().await,
                };
                match received {
                    Some(message) => message,
                    None => {
                        sync_storage(&mut state).await;
                        break;
                    }
                }
            }
        };
        let first = match first {
            CommitterMessage::Shutdown { reply } => {
                sync_storage(&mut state).await;
                let _ = reply.send(());
                break;
            }
            CommitterMessage::Relocate(step) => {
                crate::relocate::handle(step, &mut state).await;
                continue;
            }
            other => other,
        };
        let alone = first.is_barrier();
        batch.push(first);
        while !alone && batch.len() < state.max_batch {
            match rx.try_recv() {
                Ok(message) if message.is_barrier() => {
                    carried = Some(message);
                    break;
                }
                Ok(message) => batch.push(message),
                Err(_) => break,
            }
        }
        debug_assert!(
            batch.len() == 1 || !batch.iter().any(CommitterMessage::is_barrier),
            "a barrier shares its group"
        );
        if process_batch(&mut batch, &mut state).await.is_err() {
            backoff = REOPEN_FIRST;
        } else if state.unsynced.is_some()
            && state.unsynced_since.elapsed() >= crate::journaled::SYNC_EVERY
        {
            sync_storage(&mut state).await;
        }
    }
}

/// Makes the journaled batches applied to storage durable there, and tells the journal
/// (which may then delete the segments holding them). A failure is a storage failure.
async fn sync_storage(state: &mut CommitterState) {
    let (Some(lsn), Some(journal)) = (state.unsynced, state.journal.clone()) else {
        return;
    };
    let store = state.store.read().clone();
    let synced = tokio::task::spawn_blocking(move || store.sync()).await;
    match synced {
        Ok(Ok(())) => {
            journal.journal.set_applied(&journal.key, lsn);
            state.unsynced = None;
        }
        Ok(Err(e)) => fail_storage(state, e.to_string()),
        Err(join) => fail_storage(state, format!("storage sync task failed: {join}")),
    }
}

/// Marks the storage failed: the tenant refuses writes until it is reopened.
fn fail_storage(state: &mut CommitterState, reason: String) {
    tracing::error!(%reason, "storage write failed; the tenant refuses writes until its storage is reopened");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    state.health.send_modify(|health| {
        health.state = crate::metrics::StorageState::Failed;
        health.last_error = Some(reason);
        health.failed_at_ms = Some(now_ms);
        health.reopen_attempts = 0;
    });
}

/// Refuses `message` while the storage is failed; true for a shutdown (stop the loop).
fn refuse_or_stop(message: CommitterMessage, reason: &str) -> bool {
    let stop = matches!(message, CommitterMessage::Shutdown { .. });
    refuse(message, EngineError::Poisoned(reason.to_string()));
    stop
}

/// Reopens the storage and reloads the tenant from what is durable there. A probe write
/// first proves the storage takes writes again (a disk still full fails it). On success the
/// reloaded state is published as a new snapshot; every transaction begun before it
/// conflicts (the write log restarts there) and live queries re-run. Returns whether the
/// tenant is healthy again.
async fn recover(state: &mut CommitterState) -> bool {
    use crate::metrics::StorageState;
    state.health.send_modify(|health| {
        health.state = StorageState::Recovering;
        health.reopen_attempts += 1;
    });
    let loader = state.loader.clone();
    let reloaded = tokio::task::spawn_blocking(move || {
        let store = (loader.opener)()?;
        // Journaled commits the storage lost go back in before the probe: its `ts` is
        // after theirs.
        if let Some(journal) = &loader.journal {
            journal.catch_up(store.as_ref())?;
        }
        let probe = store.max_ts()?.next_after(Timestamp::wall_clock_ns());
        store.write(&WriteBatch {
            ts: probe,
            ..WriteBatch::default()
        })?;
        drop(store);
        loader.load()
    })
    .await;
    let (store, snapshot, undo) = match reloaded {
        Ok(Ok(loaded)) => (loaded.store, loaded.snapshot, loaded.undo),
        Ok(Err(e)) => return reopen_failed(state, e.to_string()),
        Err(join) => return reopen_failed(state, format!("reopen task failed: {join}")),
    };
    let ts = snapshot.ts;
    debug_assert!(
        ts > state.published.read().ts,
        "a reloaded snapshot is newer than anything published"
    );
    *state.store.write() = store;
    state.undo = undo;
    // The reload caught up with the journal and synced.
    state.unsynced = None;
    let published = Arc::new(snapshot);
    state.write_log.lock().restart_at(ts);
    state.recent.lock().restart_with(published.clone());
    *state.published.write() = published;
    let _ = state.ts_sender.send(ts);
    let _ = state.notices.send(CommitNotice {
        ts,
        keys: Arc::new(Vec::new()),
        catalog_changed: true,
    });
    tracing::warn!(%ts, "storage reopened after a failure; the tenant accepts writes again");
    state.health.send_modify(|health| {
        health.state = StorageState::Ok;
        health.last_error = None;
        health.recoveries += 1;
    });
    true
}

fn reopen_failed(state: &CommitterState, error: String) -> bool {
    tracing::warn!(%error, "reopening the storage failed; retrying with backoff");
    state.health.send_modify(|health| {
        health.state = crate::metrics::StorageState::Failed;
        health.last_error = Some(error);
    });
    false
}

fn refuse(message: CommitterMessage, error: EngineError) {
    match message {
        CommitterMessage::Commit { reply, .. }
        | CommitterMessage::SetGlobals { reply, .. }
        | CommitterMessage::Unstage { reply }
        | CommitterMessage::Backfill { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        CommitterMessage::Deploy { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        CommitterMessage::Stage { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        CommitterMessage::CollectGarbage { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        CommitterMessage::SystemTables { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        CommitterMessage::Relocate(step) => step.refuse(error),
        CommitterMessage::Shutdown { reply } => {
            let _ = reply.send(());
        }
    }
}

/// Processes one group. Returns `Err(reason)` when storage failed (the health is then
/// failed: the tenant refuses writes until it is reopened).
async fn process_batch(
    batch: &mut Vec<CommitterMessage>,
    state: &mut CommitterState,
) -> Result<(), String> {
    let base = state.published.read().clone();
    let ts = base.ts.next_after(Timestamp::wall_clock_ns());
    let mut working: Snapshot = (*base).clone();
    let mut storage = WriteBatch {
        ts,
        ..WriteBatch::default()
    };
    let mut touched: Vec<(IndexNumber, Vec<u8>)> = Vec::new();
    let mut catalog_changed = false;
    let mut replies: Vec<Reply> = Vec::with_capacity(batch.len());
    let mut commits = 0u64;
    let mut pre_images: Vec<crate::undo_log::PreImage> = Vec::new();
    for message in batch.drain(..) {
        match message {
            CommitterMessage::Commit { txn, reply } => {
                if let Some(reason) = conflict(&txn, &working, state, &touched) {
                    state
                        .metrics
                        .conflicts
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let _ = reply.send(Err(EngineError::Conflict(reason)));
                    continue;
                }
                if !txn.created_tables.is_empty() {
                    let mut catalog = (*working.catalog).clone();
                    for table in &txn.created_tables {
                        catalog.create_table(table);
                    }
                    catalog.version += 1;
                    catalog_changed = true;
                    match catalog.to_bytes() {
                        Ok(bytes) => storage
                            .globals
                            .push((CATALOG_GLOBAL.to_string(), Some(bytes))),
                        Err(e) => {
                            let _ = reply.send(Err(e));
                            continue;
                        }
                    }
                    working.set_catalog(Arc::new(catalog));
                }
                apply_writes(
                    &mut working,
                    &txn.writes,
                    ts,
                    &mut storage,
                    &mut touched,
                    &mut pre_images,
                );
                check_staged_writes(
                    &mut state.staging,
                    &working,
                    txn.writes
                        .iter()
                        .filter_map(|(id, write)| Some((id, write.new.as_ref()?))),
                );
                storage.receipts.extend(txn.receipt);
                commits += 1;
                replies.push(reply_with(reply, |published| published.ts));
            }
            CommitterMessage::SetGlobals { globals, reply } => {
                storage.globals.extend(globals);
                replies.push(reply_with(reply, |published| published.ts));
            }
            CommitterMessage::Shutdown { reply } => {
                // Only ever first in a group, where `run` takes it.
                let _ = reply.send(());
            }
            CommitterMessage::Relocate(step) => {
                // Likewise a barrier that `run` takes.
                step.refuse(EngineError::Relocation("out of order".into()));
            }
            CommitterMessage::Deploy { request, reply } => {
                match apply_deploy(request, &mut working, &mut storage, &mut state.staging) {
                    Ok(mut outcome) => {
                        catalog_changed = true;
                        replies.push(reply_with(reply, move |published| {
                            outcome.ts = published.ts;
                            outcome
                        }));
                    }
                    Err(failure) if failure.publish => {
                        // The staging is abandoned (a catalog change), then the error told.
                        catalog_changed = true;
                        let error = failure.error;
                        replies.push(Box::new(move |_| {
                            let _ = reply.send(Err(error));
                        }));
                    }
                    Err(failure) => {
                        let _ = reply.send(Err(failure.error));
                    }
                }
            }
            CommitterMessage::Stage { request, reply } => {
                match apply_stage(request, &mut working, &mut storage, &mut state.staging) {
                    Ok(building) => {
                        catalog_changed = true;
                        replies.push(reply_with(reply, move |published| Staged {
                            snapshot: published.clone(),
                            building,
                        }));
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                }
            }
            CommitterMessage::Unstage { reply } => {
                match apply_unstage(&mut working, &mut storage, &mut state.staging) {
                    Ok(()) => {
                        catalog_changed = true;
                        replies.push(reply_with(reply, |published| published.ts));
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                }
            }
            CommitterMessage::Backfill {
                indexes,
                ids,
                reply,
            } => match apply_backfill(&indexes, &ids, &mut working, &mut storage) {
                Ok(_) => replies.push(reply_with(reply, |published| published.ts)),
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            },
            CommitterMessage::SystemTables { wanted, reply } => {
                match apply_system_tables(&wanted, &mut working, &mut storage) {
                    Ok(changed) => {
                        catalog_changed |= changed;
                        replies.push(reply_with(reply, move |_| changed));
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                }
            }
            CommitterMessage::CollectGarbage {
                index,
                max_entries,
                reply,
            } => match collect_garbage(index, max_entries, &mut working, &mut storage, state) {
                Ok(done) => replies.push(reply_with(reply, move |_| done)),
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            },
        }
    }
    if replies.is_empty() {
        return Ok(());
    }
    if !storage.is_empty() {
        if state.last_expiry.elapsed() >= RECEIPT_EXPIRY_EVERY {
            state.last_expiry = std::time::Instant::now();
            let ttl_ns = u64::try_from(state.receipt_ttl.as_nanos()).unwrap_or(u64::MAX);
            storage.expire_receipts_before = Some(Timestamp(ts.0.saturating_sub(ttl_ns)));
        }
        // Pre-images go in before the rows they describe become visible in storage, so a
        // paged reader never sees a newer row without its pre-image.
        if !working.is_resident() && !pre_images.is_empty() {
            state.undo.append(std::mem::take(&mut pre_images));
        }
        let store = state.store.read().clone();
        let journal = state.journal.clone();
        let started = std::time::Instant::now();
        let write = tokio::task::spawn_blocking(move || match journal {
            None => store.write(&storage).map(|()| (storage, None)),
            Some(journal) => {
                // Durable once journaled; applied to storage before it is published.
                let lsn = journal.append(&storage)?;
                storage.globals.push(crate::journaled::applied_global(lsn));
                store
                    .write_unsynced(&storage)
                    .map(|()| (storage, Some(lsn)))
            }
        })
        .await;
        state.metrics.record_write(started.elapsed(), commits);
        let failure = match write {
            Ok(Ok((written, lsn))) => {
                if lsn.is_some() {
                    if state.unsynced.is_none() {
                        state.unsynced_since = std::time::Instant::now();
                    }
                    state.unsynced = lsn;
                }
                keep_mirrored(state, written);
                None
            }
            Ok(Err(e)) => Some(e.to_string()),
            Err(join) => Some(format!("storage writer task failed: {join}")),
        };
        if let Some(reason) = failure {
            if let Some(mirror) = state.mirror.take() {
                mirror
                    .lock()
                    .break_with(format!("a storage write failed during the move: {reason}"));
            }
            // Failed before anyone hears of it: a caller told "unavailable" finds the tenant
            // failed.
            fail_storage(state, reason.clone());
            let answer = format!(
                "{reason} (the write may or may not have been applied; a mutation re-sent with \
                 the same session and request ID after recovery is answered exactly once)"
            );
            for reply in replies {
                reply(Err(&answer));
            }
            return Err(reason);
        }
    }
    working.ts = ts;
    if working.is_resident() && working.resident_bytes() > state.memory_budget {
        tracing::info!(
            resident_bytes = working.resident_bytes(),
            budget = state.memory_budget,
            "tenant outgrew its memory budget; serving it from storage from now on"
        );
        working = working.into_paged(state.store.read().clone(), state.undo.clone());
    }
    let keys = Arc::new(touched);
    state
        .write_log
        .lock()
        .append(ts, keys.as_ref().clone(), catalog_changed);
    let published = Arc::new(working);
    state.recent.lock().push(published.clone());
    *state.published.write() = published.clone();
    let _ = state.ts_sender.send(ts);
    let _ = state.notices.send(CommitNotice {
        ts,
        keys,
        catalog_changed,
    });
    for reply in replies {
        reply(Ok(&published));
    }
    Ok(())
}

/// Deletes up to `max_entries` of a garbage index's entries; once none are left, forgets
/// the index (a catalog change that moves no version: nothing visible changes). Returns
/// whether the index is gone.
fn collect_garbage(
    index: IndexNumber,
    max_entries: usize,
    working: &mut Snapshot,
    storage: &mut WriteBatch,
    state: &CommitterState,
) -> Result<bool, EngineError> {
    if !working.catalog.garbage().any(|g| g == index) {
        return Ok(true);
    }
    let store = state.store.read().clone();
    let left = store.scan_index(
        index,
        &nimbus_storage::KeyRange::all(),
        nimbus_storage::ScanOrder::Ascending,
        1,
    )?;
    if left.entries.is_empty() {
        let mut catalog: Catalog = (*working.catalog).clone();
        catalog.forget_garbage(index);
        storage
            .globals
            .push((CATALOG_GLOBAL.to_string(), Some(catalog.to_bytes()?)));
        working.set_catalog(Arc::new(catalog));
        return Ok(true);
    }
    storage
        .indexes
        .push(IndexWrite::DropIndexChunk { index, max_entries });
    Ok(false)
}

/// Hands a durable batch to a move in progress; lets an abandoned move's mirror go.
fn keep_mirrored(state: &mut CommitterState, written: WriteBatch) {
    if let Some(mirror) = &state.mirror {
        if Arc::strong_count(mirror) == 1 {
            state.mirror = None;
        } else {
            mirror.lock().push(written);
        }
    }
}

fn conflict(
    txn: &FinishedTransaction,
    working: &Snapshot,
    state: &CommitterState,
    touched_in_batch: &[(IndexNumber, Vec<u8>)],
) -> Option<String> {
    if txn.snapshot.catalog.version != working.catalog.version {
        return Some("the schema or table list changed".into());
    }
    if let Some(reason) = state
        .write_log
        .lock()
        .conflict(txn.snapshot.ts, &txn.read_set)
    {
        return Some(reason);
    }
    // Earlier transactions of this same group are not in the write log yet.
    if touched_in_batch
        .iter()
        .any(|(index, key)| txn.read_set.intersects(*index, key))
    {
        return Some("a document read by this mutation was written concurrently".into());
    }
    None
}

/// A reply that sends what `answer` makes of the published snapshot, or the failure.
fn reply_with<T: Send + 'static>(
    sender: oneshot::Sender<Result<T, EngineError>>,
    answer: impl FnOnce(&Arc<Snapshot>) -> T + Send + 'static,
) -> Reply {
    Box::new(move |published| {
        let _ = sender.send(
            published
                .map(answer)
                .map_err(|reason| EngineError::Poisoned(reason.to_string())),
        );
    })
}

fn apply_writes(
    working: &mut Snapshot,
    writes: &BTreeMap<DocumentId, crate::transaction::PendingWrite>,
    ts: Timestamp,
    storage: &mut WriteBatch,
    touched: &mut Vec<(IndexNumber, Vec<u8>)>,
    pre_images: &mut Vec<crate::undo_log::PreImage>,
) {
    for (id, write) in writes {
        let body = write.new.as_ref().map(crate::codec::serialize_document);
        storage.documents.push(DocumentWrite {
            id: *id,
            table: write.table,
            body,
        });
        if !working.is_resident() {
            pre_images.push(crate::undo_log::PreImage {
                ts,
                id: *id,
                table: write.table,
                before: write.old.clone(),
            });
        }
        let index_writes = working.apply_write(
            *id,
            write.table,
            write.old.as_ref(),
            write.new.clone(),
            Some(touched),
        );
        storage.indexes.extend(index_writes);
    }
}

//! `TenantEngine`: one tenant's snapshots, transactions and committer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nimbus_storage::{IndexNumber, StorageError, TenantStore, WriteBatch};
use nimbus_types::{Document, DocumentId, IdCodec, TableNumber, Timestamp};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::catalog::{Catalog, CATALOG_GLOBAL};
use crate::committer::{self, CommitNotice, CommitterMessage, CommitterState};
use crate::cursor::CursorCodec;
use crate::deploy::{DeployOutcome, DeployRequest, StageRequest, Staged};
use crate::error::EngineError;
use crate::metrics::{EngineMetrics, EngineStats, StorageHealth, StorageState};
use crate::read_set::ReadSet;
use crate::snapshot::Snapshot;
use crate::transaction::{FinishedTransaction, Transaction, TransactionLimits};
use crate::undo_log::UndoLog;
use crate::write_log::WriteLog;

/// Global holding the tenant's ID salt and cursor secret.
const SECRETS_GLOBAL: &str = "engine_secrets";

/// The largest admission queue a tenant may be given: the capacity of the committer's
/// channel, which holds only what is queued (its blocks are allocated as it fills).
pub const ADMISSION_QUEUE_MAX: usize = 65_536;

/// Bounds and knobs of one tenant's engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Admission queue: commits waiting for the committer. When full, a commit fails at
    /// once with [`EngineError::Overloaded`] (HTTP 429) instead of waiting.
    pub admission_queue: usize,
    /// Most commits grouped into one storage write (one fsync).
    pub max_batch: usize,
    /// Write log bounds (conflict detection window): entries and age. A transaction
    /// older than the window conflicts and is retried.
    pub write_log_entries: usize,
    pub write_log_age: Duration,
    /// Per-transaction bounds.
    pub transaction: TransactionLimits,
    /// Capacity of the commit-notice channel; a lagging subscriber is told it lagged.
    pub notice_capacity: usize,
    /// Recent published snapshots kept for reads at a past timestamp (`query_at_ts`):
    /// at most this many, and none older than `write_log_age`.
    pub recent_snapshots: usize,
    /// Memory budget for a tenant's resident data, in bytes. A tenant whose data is
    /// larger is served from storage (paged) instead, with bounded memory.
    pub memory_budget_bytes: usize,
    /// Undo log bounds (paged tenants): pre-images kept, and their age. A paged read at
    /// a snapshot older than the window is retried on a fresh snapshot.
    pub undo_log_entries: usize,
    pub undo_log_age: Duration,
    /// How long a mutation's receipt (its answer, for re-sent copies) is kept.
    pub receipt_ttl: Duration,
    /// Commit through the shared journal (`journaled.rs`) instead of a sync of the
    /// tenant's own storage per group.
    pub journal: Option<crate::journaled::TenantJournal>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            admission_queue: 4096,
            max_batch: 1024,
            write_log_entries: 100_000,
            write_log_age: Duration::from_secs(30),
            transaction: TransactionLimits::default(),
            notice_capacity: 1024,
            recent_snapshots: 64,
            memory_budget_bytes: 256 << 20,
            undo_log_entries: 200_000,
            undo_log_age: Duration::from_secs(30),
            receipt_ttl: Duration::from_secs(3600),
            journal: None,
        }
    }
}

/// What the layer above deploys (code, schema, function table): opaque to the engine, and
/// published with every snapshot, so a transaction always runs the code that belongs to the
/// catalog it reads, and a deploy switches code, schema and indexes in one step.
pub type DeploymentHandle = Arc<dyn std::any::Any + Send + Sync>;

/// Opens the tenant's storage namespace: at start, and again to recover after a storage
/// failure.
pub type StoreOpener = Arc<dyn Fn() -> Result<Arc<dyn TenantStore>, StorageError> + Send + Sync>;

/// Decodes the stored deployment (`None`: the tenant never deployed).
pub type DeploymentDecoder =
    Arc<dyn Fn(Option<&[u8]>) -> Result<DeploymentHandle, String> + Send + Sync>;

/// How the deployment is stored: the global holding it, and how to decode it.
#[derive(Clone)]
pub struct DeploymentCodec {
    pub global: String,
    pub decode: DeploymentDecoder,
}

impl DeploymentCodec {
    /// A codec for engines without deployments (tests, tools): every snapshot carries `()`.
    pub fn none() -> DeploymentCodec {
        DeploymentCodec {
            global: "deployment".to_string(),
            decode: Arc::new(|_| Ok(Arc::new(()) as DeploymentHandle)),
        }
    }
}

/// One tenant's engine. Cheap to share (`Arc`); [`TenantEngine::shutdown`] stops the
/// committer after it finishes the requests already queued (dropping the last handle does
/// the same, without waiting).
pub struct TenantEngine {
    name: String,
    store: Arc<RwLock<Arc<dyn TenantStore>>>,
    published: Arc<RwLock<Arc<Snapshot>>>,
    sender: mpsc::Sender<CommitterMessage>,
    ts_receiver: watch::Receiver<Timestamp>,
    notices: broadcast::Sender<CommitNotice>,
    metrics: Arc<EngineMetrics>,
    config: EngineConfig,
    cursor_codec: CursorCodec,
    /// The admission queue's capacity in force (see [`TenantEngine::set_admission_limit`]).
    admission_limit: AtomicUsize,
    write_log: Arc<Mutex<WriteLog>>,
    recent: Arc<Mutex<crate::committer::RecentSnapshots>>,
    health: watch::Receiver<StorageHealth>,
    reopen_now: Arc<tokio::sync::Notify>,
}

/// How the committer reloads a tenant after a storage failure.
#[derive(Clone)]
pub(crate) struct Loader {
    pub opener: StoreOpener,
    pub codec: DeploymentCodec,
    pub memory_budget: usize,
    pub undo_entries: usize,
    pub undo_age: Duration,
    pub journal: Option<crate::journaled::TenantJournal>,
}

/// A tenant as loaded from its storage.
pub(crate) struct Loaded {
    pub store: Arc<dyn TenantStore>,
    pub snapshot: Snapshot,
    pub cursor_secret: [u8; 32],
    pub undo: Arc<UndoLog>,
}

impl Loader {
    /// Opens the store and loads the tenant from it (blocking).
    pub fn load(&self) -> Result<Loaded, EngineError> {
        let store = (self.opener)()?;
        if let Some(journal) = &self.journal {
            journal.catch_up(store.as_ref())?;
        }
        let (snapshot, cursor_secret, undo) = load(
            store.clone(),
            self.memory_budget,
            (self.undo_entries, self.undo_age),
            &self.codec,
        )?;
        Ok(Loaded {
            store,
            snapshot,
            cursor_secret,
            undo,
        })
    }
}

impl TenantEngine {
    /// Opens the tenant's storage, loads it and starts its committer. Blocking I/O runs on
    /// the blocking pool.
    pub async fn open(
        name: &str,
        opener: StoreOpener,
        config: EngineConfig,
        codec: DeploymentCodec,
    ) -> Result<Arc<TenantEngine>, EngineError> {
        let loader = Loader {
            opener,
            codec,
            memory_budget: config.memory_budget_bytes,
            undo_entries: config.undo_log_entries,
            undo_age: config.undo_log_age,
            journal: config.journal.clone(),
        };
        let first_load = loader.clone();
        let Loaded {
            store,
            snapshot,
            cursor_secret,
            undo,
        } = tokio::task::spawn_blocking(move || first_load.load())
            .await
            .map_err(|e| EngineError::User(format!("loading failed: {e}")))??;
        let store = Arc::new(RwLock::new(store));
        let start_ts = snapshot.ts;
        let snapshot = Arc::new(snapshot);
        let recent = Arc::new(Mutex::new(crate::committer::RecentSnapshots::new(
            config.recent_snapshots,
            config.write_log_age,
        )));
        recent.lock().push(snapshot.clone());
        let published = Arc::new(RwLock::new(snapshot));
        // The channel is sized for the largest limit an operator may set; the limit in force
        // is `admission_limit`, checked as commits are admitted, so it can change live.
        let (sender, receiver) = mpsc::channel(ADMISSION_QUEUE_MAX);
        let admission_limit =
            AtomicUsize::new(config.admission_queue.clamp(1, ADMISSION_QUEUE_MAX));
        let (ts_sender, ts_receiver) = watch::channel(start_ts);
        let (notices, _) = broadcast::channel(config.notice_capacity.max(1));
        let metrics = Arc::new(EngineMetrics::default());
        let write_log = Arc::new(Mutex::new(WriteLog::new(
            start_ts,
            config.write_log_entries,
            config.write_log_age,
        )));
        let (health_sender, health) = watch::channel(StorageHealth::default());
        let reopen_now = Arc::new(tokio::sync::Notify::new());
        let state = CommitterState {
            store: store.clone(),
            published: published.clone(),
            write_log: write_log.clone(),
            max_batch: config.max_batch.max(1),
            ts_sender,
            notices: notices.clone(),
            metrics: metrics.clone(),
            undo,
            memory_budget: config.memory_budget_bytes,
            recent: recent.clone(),
            loader,
            health: health_sender,
            reopen_now: reopen_now.clone(),
            receipt_ttl: config.receipt_ttl,
            last_expiry: std::time::Instant::now(),
            staging: None,
            mirror: None,
            journal: config.journal.clone().map(Arc::new),
            unsynced: None,
            unsynced_since: std::time::Instant::now(),
        };
        tokio::spawn(committer::run(receiver, state));
        Ok(Arc::new(TenantEngine {
            name: name.to_string(),
            store,
            published,
            sender,
            ts_receiver,
            notices,
            metrics,
            cursor_codec: CursorCodec::new(cursor_secret),
            admission_limit,
            config,
            write_log,
            recent,
            health,
            reopen_now,
        }))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// What this tenant has not applied from the shared journal (`None` when it does not
    /// commit through one).
    pub fn journal_lag(&self) -> Option<nimbus_journal::TenantLag> {
        let journal = self.config.journal.as_ref()?;
        Some(journal.journal.lag(&journal.key))
    }

    /// The latest published snapshot. Never waits for the committer.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.published.read().clone()
    }

    /// The snapshot as of `ts` (the newest one at or before it), if `ts` is within the
    /// window of recent snapshots and not after the latest.
    pub fn snapshot_at(&self, ts: Timestamp) -> Option<Arc<Snapshot>> {
        let latest = self.snapshot();
        if ts == latest.ts {
            return Some(latest);
        }
        if ts > latest.ts {
            return None;
        }
        self.recent.lock().at(ts)
    }

    /// Timestamp of the latest published snapshot.
    pub fn latest_ts(&self) -> Timestamp {
        *self.ts_receiver.borrow()
    }

    /// A watch on the latest timestamp.
    pub fn watch_ts(&self) -> watch::Receiver<Timestamp> {
        self.ts_receiver.clone()
    }

    /// Commit notices, for live queries.
    pub fn subscribe(&self) -> broadcast::Receiver<CommitNotice> {
        self.notices.subscribe()
    }

    /// A transaction at the latest snapshot.
    pub fn begin(&self) -> Transaction {
        self.begin_at(self.snapshot())
    }

    /// A transaction at the latest snapshot for the server's own bookkeeping (the
    /// scheduler counting a backlog): no bound on what it reads, which a function's call
    /// has; what it writes is bounded as usual.
    pub fn begin_internal(&self) -> Transaction {
        let limits = crate::TransactionLimits {
            max_documents_read: usize::MAX,
            max_bytes_read: usize::MAX,
            ..self.config.transaction.clone()
        };
        Transaction::new(self.snapshot(), limits, self.cursor_codec.clone())
    }

    /// A transaction at a given snapshot.
    pub fn begin_at(&self, snapshot: Arc<Snapshot>) -> Transaction {
        Transaction::new(
            snapshot,
            self.config.transaction.clone(),
            self.cursor_codec.clone(),
        )
    }

    /// Sends a finished transaction to the committer; resolves once it is durable.
    /// A transaction without writes commits trivially at its snapshot timestamp.
    pub async fn commit(&self, txn: FinishedTransaction) -> Result<Timestamp, EngineError> {
        if txn.writes.is_empty() && txn.created_tables.is_empty() {
            return Ok(txn.snapshot.ts);
        }
        let (reply, answer) = oneshot::channel();
        self.admit(CommitterMessage::Commit {
            txn: Box::new(txn),
            reply,
        })?;
        answer.await.map_err(|_| EngineError::ShutDown)?
    }

    /// Applies a schema/code change atomically (the switch of a staged deploy, or a whole
    /// deploy; see `deploy.rs`).
    pub async fn deploy(&self, request: DeployRequest) -> Result<DeployOutcome, EngineError> {
        let (reply, answer) = oneshot::channel();
        self.admit_waiting(CommitterMessage::Deploy { request, reply })
            .await?;
        answer.await.map_err(|_| EngineError::ShutDown)?
    }

    /// Creates the system tables and indexes of `wanted` that are missing, in one commit
    /// of its own; answers at once when all exist. Returns whether anything was created.
    pub async fn ensure_system_tables(
        &self,
        wanted: crate::deploy::WantedIndexes,
    ) -> Result<bool, EngineError> {
        if let Some(table) = wanted.keys().find(|t| !crate::deploy::is_system_table(t)) {
            return Err(EngineError::User(format!(
                "{table:?} is not a system table name"
            )));
        }
        let catalog = self.snapshot().catalog.clone();
        let present = wanted.iter().all(|(table, indexes)| {
            catalog
                .table(table)
                .is_some_and(|t| indexes.keys().all(|name| t.indexes.contains_key(name)))
        });
        if present {
            return Ok(false);
        }
        let (reply, answer) = oneshot::channel();
        self.admit_waiting(CommitterMessage::SystemTables { wanted, reply })
            .await?;
        answer.await.map_err(|_| EngineError::ShutDown)?
    }

    /// Step 1 of a deploy: starts building the wanted indexes and checking written
    /// documents against the new schema; answers the snapshot to check and backfill from.
    pub async fn stage_deploy(&self, request: StageRequest) -> Result<Staged, EngineError> {
        let (reply, answer) = oneshot::channel();
        self.admit_waiting(CommitterMessage::Stage { request, reply })
            .await?;
        answer.await.map_err(|_| EngineError::ShutDown)?
    }

    /// Abandons a staged deploy (its building indexes become garbage).
    pub async fn unstage_deploy(&self) -> Result<(), EngineError> {
        let (reply, answer) = oneshot::channel();
        self.admit_waiting(CommitterMessage::Unstage { reply })
            .await?;
        answer.await.map_err(|_| EngineError::ShutDown)?.map(|_| ())
    }

    /// Step 2 of a deploy: indexes `ids` (read from the staged snapshot) into the building
    /// `indexes`, from each document's current state. Durable when it returns.
    pub async fn backfill(
        &self,
        indexes: Vec<IndexNumber>,
        ids: Vec<DocumentId>,
    ) -> Result<(), EngineError> {
        let (reply, answer) = oneshot::channel();
        self.admit_waiting(CommitterMessage::Backfill {
            indexes,
            ids,
            reply,
        })
        .await?;
        answer.await.map_err(|_| EngineError::ShutDown)?.map(|_| ())
    }

    /// Step 2 of a deploy, whole: backfills every index `staged` is building, `chunk`
    /// documents per commit. The documents of the staged snapshot are sorted by each index's
    /// key first, so each commit inserts a run of neighbouring keys (a few storage pages)
    /// instead of keys spread over the whole index: inserting in document order rewrote
    /// most of the index's pages in every commit, and writes queued behind each one for
    /// tens of milliseconds. The sort holds each document's key and ID (the table's size in
    /// keys), for the duration of one index's build.
    pub async fn backfill_staged(&self, staged: &Staged, chunk: usize) -> Result<(), EngineError> {
        let chunk = chunk.max(1);
        for info in &staged.building {
            let snapshot = staged.snapshot.clone();
            let store = self.store.read().clone();
            let info = info.clone();
            let index = info.number;
            let ordered = tokio::task::spawn_blocking(move || {
                // Keys side by side in one buffer, not one allocation each: a million small
                // allocations freed at once stalled the allocator for other threads
                // (the committer among them) for a couple of hundred milliseconds.
                let mut keys: Vec<u8> = Vec::new();
                let mut entries: Vec<(usize, usize, DocumentId)> = Vec::new();
                visit_documents(&snapshot, &store, info.table, &mut |id, doc| {
                    let key = nimbus_types::index_key::document_key(&info.fields, doc);
                    entries.push((keys.len(), key.len(), id));
                    keys.extend_from_slice(&key);
                    Ok(())
                })?;
                entries.sort_unstable_by(|a, b| {
                    keys[a.0..a.0 + a.1]
                        .cmp(&keys[b.0..b.0 + b.1])
                        .then(a.2.cmp(&b.2))
                });
                Ok::<_, EngineError>(entries.into_iter().map(|(_, _, id)| id).collect::<Vec<_>>())
            })
            .await
            .map_err(|e| EngineError::User(format!("backfill task failed: {e}")))??;
            for ids in ordered.chunks(chunk) {
                self.backfill(vec![index], ids.to_vec()).await?;
            }
        }
        Ok(())
    }

    /// Visits every document of `table` (blocking): as of `staged` for a tenant in memory;
    /// for one served from storage, as storage holds it now (a scan of a large table
    /// outlasts the undo log that reconstructs an old snapshot, and a staged deploy only
    /// needs every document that existed at the staged snapshot, or a later state of it:
    /// later writes are checked and indexed by the committer anyway). `visit` may stop the
    /// walk with an error.
    pub fn visit_documents(
        &self,
        staged: &Snapshot,
        table: TableNumber,
        visit: &mut dyn FnMut(DocumentId, &Document) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        let store = self.store.read().clone();
        visit_documents(staged, &store, table, visit)
    }

    /// Deletes the entries of dropped indexes, `chunk` at a time (each chunk a batch of
    /// its own, so writes never wait long behind it), until none is left.
    pub async fn collect_garbage(&self, chunk: usize) -> Result<(), EngineError> {
        let garbage: Vec<IndexNumber> = self.snapshot().catalog.garbage().collect();
        for index in garbage {
            loop {
                let (reply, answer) = oneshot::channel();
                self.admit_waiting(CommitterMessage::CollectGarbage {
                    index,
                    max_entries: chunk.max(1),
                    reply,
                })
                .await?;
                if answer.await.map_err(|_| EngineError::ShutDown)?? {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Queues a message, waiting for room (deploy steps are not shed like commits).
    async fn admit_waiting(&self, message: CommitterMessage) -> Result<(), EngineError> {
        self.sender
            .send(message)
            .await
            .map_err(|_| EngineError::ShutDown)
    }

    /// Writes globals through the committer (durable, ordered with commits).
    pub async fn set_globals(
        &self,
        globals: Vec<(String, Option<Vec<u8>>)>,
    ) -> Result<Timestamp, EngineError> {
        let (reply, answer) = oneshot::channel();
        self.admit(CommitterMessage::SetGlobals { globals, reply })?;
        answer.await.map_err(|_| EngineError::ShutDown)?
    }

    /// Queues a message for the committer, or refuses it at once when the admission queue
    /// holds its limit. The check and the send are two steps, so callers admitting at the
    /// same instant can pass the limit by as many as they are (never the channel's size).
    fn admit(&self, message: CommitterMessage) -> Result<(), EngineError> {
        let limit = self.admission_limit();
        let overloaded = || {
            self.metrics
                .rejected_overload
                .fetch_add(1, Ordering::Relaxed);
            EngineError::Overloaded { capacity: limit }
        };
        if self.queue_depth() >= limit {
            return Err(overloaded());
        }
        match self.sender.try_send(message) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(overloaded()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(EngineError::ShutDown),
        }
    }

    /// Commits waiting for the committer.
    fn queue_depth(&self) -> usize {
        self.sender.max_capacity() - self.sender.capacity()
    }

    /// The admission queue's capacity in force.
    pub fn admission_limit(&self) -> usize {
        self.admission_limit.load(Ordering::Relaxed)
    }

    /// Changes the admission queue's capacity, at once (clamped to
    /// 1..=[`ADMISSION_QUEUE_MAX`]). Commits already queued beyond a lowered limit stay
    /// queued; new ones are refused until the queue is below it.
    pub fn set_admission_limit(&self, limit: usize) {
        self.admission_limit
            .store(limit.clamp(1, ADMISSION_QUEUE_MAX), Ordering::Relaxed);
    }

    /// Reads a global from storage (blocking; call from a blocking context or rarely).
    pub fn get_global(&self, name: &str) -> Result<Option<Vec<u8>>, EngineError> {
        let store = self.store.read().clone();
        Ok(store.get_global(name)?)
    }

    /// Stops the committer once the requests queued before this call are done (their
    /// callers are answered as usual), and waits for it. Later commits fail with
    /// [`EngineError::ShutDown`]. Used before a tenant's storage is deleted, so nothing can
    /// be acknowledged into a namespace that is going away.
    pub async fn shutdown(&self) {
        let (reply, answer) = oneshot::channel();
        // Waits for room in the queue: the shutdown must get in line even when it is full.
        if self
            .sender
            .send(CommitterMessage::Shutdown { reply })
            .await
            .is_ok()
        {
            let _ = answer.await;
        }
    }

    /// Queues a control message (a move's steps), waiting for room in the queue rather
    /// than failing when it is full: an operator's request gets in line behind the load.
    pub(crate) async fn send_control(&self, message: CommitterMessage) -> Result<(), EngineError> {
        self.sender
            .send(message)
            .await
            .map_err(|_| EngineError::ShutDown)
    }

    /// Counters and gauges.
    pub fn stats(&self) -> EngineStats {
        let snapshot = self.snapshot();
        let m = &self.metrics;
        EngineStats {
            commits: m.commits.load(Ordering::Relaxed),
            batches: m.batches.load(Ordering::Relaxed),
            conflicts: m.conflicts.load(Ordering::Relaxed),
            write_micros: m.write_micros.load(Ordering::Relaxed),
            rejected_overload: m.rejected_overload.load(Ordering::Relaxed),
            queue_capacity: self.admission_limit(),
            queue_depth: self.queue_depth(),
            documents: snapshot.resident_documents(),
            resident_bytes: snapshot.resident_bytes(),
            latest_ts: snapshot.ts.0,
            storage: self.health.borrow().clone(),
        }
    }

    /// The storage's health.
    pub fn storage_health(&self) -> StorageHealth {
        self.health.borrow().clone()
    }

    /// Asks the committer to reopen failed storage now instead of at its next backoff, and
    /// waits (up to `wait`) for that attempt; answers the health after it. A healthy tenant
    /// is left alone.
    pub async fn reopen(&self, wait: Duration) -> StorageHealth {
        let mut health = self.health.clone();
        let before = {
            let current = health.borrow_and_update();
            if current.state == StorageState::Ok {
                return current.clone();
            }
            current.reopen_attempts
        };
        self.reopen_now.notify_one();
        let _ = tokio::time::timeout(
            wait,
            // An attempt counts once it is over (it is counted when it starts).
            health.wait_for(|h| {
                h.state == StorageState::Ok
                    || (h.reopen_attempts > before && h.state != StorageState::Recovering)
            }),
        )
        .await;
        let current = health.borrow().clone();
        current
    }

    /// The receipt stored under `key` (a mutation's answer, see [`nimbus_storage::Receipt`])
    /// and the timestamp of the commit that wrote it. Refused while the storage is failed:
    /// whether the failed batch became durable is known only once it is reopened.
    pub async fn receipt(&self, key: Vec<u8>) -> Result<Option<(Timestamp, Vec<u8>)>, EngineError> {
        let health = self.storage_health();
        if health.state != StorageState::Ok {
            return Err(EngineError::Poisoned(
                health
                    .last_error
                    .unwrap_or_else(|| "the storage is being reopened".into()),
            ));
        }
        let store = self.store.read().clone();
        tokio::task::spawn_blocking(move || store.get_receipt(&key))
            .await
            .map_err(|e| EngineError::Storage(StorageError::Io(format!("receipt read: {e}"))))?
            .map_err(EngineError::from)
    }

    /// Whether nothing committed after `ts` touched `read_set` (so a query result read at
    /// `ts` is still the result at the latest snapshot). `false` when the write log no
    /// longer reaches back to `ts`.
    pub fn unchanged_since(&self, ts: Timestamp, read_set: &ReadSet) -> bool {
        self.write_log.lock().conflict(ts, read_set).is_none()
    }

    /// Number of write-log entries retained (diagnostics).
    pub fn write_log_len(&self) -> usize {
        self.write_log.lock().len()
    }
}

/// See [`TenantEngine::visit_documents`].
fn visit_documents(
    staged: &Snapshot,
    store: &Arc<dyn TenantStore>,
    table: TableNumber,
    visit: &mut dyn FnMut(DocumentId, &Document) -> Result<(), EngineError>,
) -> Result<(), EngineError> {
    const PAGE: usize = 4096;
    let Some(by_id) = staged
        .catalog
        .table_name(table)
        .and_then(|name| {
            staged
                .catalog
                .resolve_index(name, crate::catalog::BY_ID)
                .ok()
        })
        .map(|info| info.number)
    else {
        return Ok(());
    };
    let all = nimbus_storage::KeyRange::all();
    let ascending = nimbus_storage::ScanOrder::Ascending;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let (count, last) = if staged.is_resident() {
            let page = staged.scan(by_id, &all, ascending, after.as_deref(), PAGE)?;
            for (_, id, doc) in &page {
                visit(*id, doc)?;
            }
            (page.len(), page.last().map(|(key, _, _)| key.clone()))
        } else {
            let range = crate::snapshot::narrowed(&all, ascending, after.as_deref());
            let page = store.scan_index(by_id, &range, ascending, PAGE)?;
            for (_, stored) in &page.entries {
                let doc = crate::codec::decode_document(&stored.body)?;
                visit(stored.id, &Arc::new(doc))?;
            }
            (
                page.entries.len(),
                page.entries.last().map(|(key, _)| key.clone()),
            )
        };
        if count < PAGE {
            return Ok(());
        }
        after = last;
    }
}

/// Reads the catalog and the deployment, and every document if they fit the memory budget.
pub(crate) fn load(
    store: Arc<dyn TenantStore>,
    budget: usize,
    (undo_entries, undo_age): (usize, Duration),
    codec: &DeploymentCodec,
) -> Result<(Snapshot, [u8; 32], Arc<UndoLog>), EngineError> {
    let (salt, cursor_secret) = match store.get_global(SECRETS_GLOBAL)? {
        Some(bytes) if bytes.len() == 34 => {
            let salt = u16::from_le_bytes([bytes[0], bytes[1]]);
            let mut secret = [0u8; 32];
            secret.copy_from_slice(&bytes[2..]);
            (salt, secret)
        }
        Some(_) => {
            return Err(EngineError::User(
                "stored engine secrets are malformed".into(),
            ));
        }
        None => {
            // First open: choose the tenant's ID salt and cursor secret once, durably.
            let salt: u16 = rand::random();
            let secret: [u8; 32] = rand::random();
            let mut bytes = salt.to_le_bytes().to_vec();
            bytes.extend_from_slice(&secret);
            let ts = store.max_ts()?.next_after(Timestamp::wall_clock_ns());
            store.write(&WriteBatch {
                ts,
                globals: vec![(SECRETS_GLOBAL.to_string(), Some(bytes))],
                ..WriteBatch::default()
            })?;
            (salt, secret)
        }
    };
    let max_ts = store.max_ts()?;
    let undo = Arc::new(UndoLog::new(max_ts, undo_entries, undo_age));
    let mut snapshot = Snapshot::empty_resident(IdCodec::new(salt));
    let catalog = match store.get_global(CATALOG_GLOBAL)? {
        Some(bytes) => Catalog::from_bytes(&bytes).map_err(|detail| {
            EngineError::Storage(nimbus_storage::StorageError::Corrupted {
                namespace: String::new(),
                detail,
            })
        })?,
        None => Catalog::default(),
    };
    // A build interrupted by a restart is abandoned: its entries are garbage.
    let mut catalog = catalog;
    catalog.abandon_building();
    let tables: Vec<_> = catalog.tables().map(|t| t.number).collect();
    let catalog = Arc::new(catalog);
    snapshot.set_catalog(catalog.clone());
    let stored_deployment = store.get_global(&codec.global)?;
    snapshot.deployment = (codec.decode)(stored_deployment.as_deref()).map_err(|detail| {
        EngineError::Storage(nimbus_storage::StorageError::Corrupted {
            namespace: String::new(),
            detail: format!("the stored deployment cannot be read: {detail}"),
        })
    })?;
    let stats = store.stats()?;
    // Stored bodies are JSON text; in memory a document (compactly encoded) with its index
    // entries is charged about 2.5 times that (`resident.rs`; measured 2.45× for small
    // documents with three indexes), so compare that with the budget: a tenant that opens
    // resident does not go over it at its first commit.
    if (stats.body_bytes as usize).saturating_mul(5) / 2 > budget {
        tracing::info!(
            documents = stats.documents,
            body_bytes = stats.body_bytes,
            budget,
            "tenant is larger than its memory budget; serving it from storage"
        );
        let mut paged = Snapshot::paged(
            max_ts,
            catalog,
            snapshot.id_codec,
            store.table_counts()?,
            store.clone(),
            undo.clone(),
        );
        paged.deployment = snapshot.deployment.clone();
        return Ok((paged, cursor_secret, undo));
    }
    let mut failure: Option<EngineError> = None;
    for table in tables {
        store.scan_table(
            table,
            &mut |stored| match crate::codec::decode_document(&stored.body) {
                Ok(doc) => {
                    snapshot.load_document(stored.id, stored.table, Arc::new(doc));
                    true
                }
                Err(e) => {
                    failure = Some(e);
                    false
                }
            },
        )?;
        if let Some(e) = failure.take() {
            return Err(e);
        }
    }
    snapshot.ts = max_ts;
    Ok((snapshot, cursor_secret, undo))
}

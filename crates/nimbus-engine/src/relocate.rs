//! Moving a live tenant to another storage namespace (graduation: from a shared Postgres
//! schema to a database of its own, possibly on another server).
//!
//! The move copies while the tenant keeps taking writes, and pauses writes only for the
//! final switch:
//! 1. [`TenantEngine::start_relocation`] (a barrier in the committer) starts a *mirror*:
//!    from then on the committer keeps a copy of every batch it writes durably, in order,
//!    and answers with the current store and the timestamp `start` of the last batch
//!    before the mirror.
//! 2. The caller copies the source namespace into the target, page by page, while writes go
//!    on (the pages need not be one consistent state), sets the target's `max_ts` to
//!    `start`, and replays the mirrored batches onto the target with
//!    [`Relocation::take_written`] as often as it likes. Every write in a batch sets one
//!    key to a value or removes it, so replaying, in order, every batch after `start`
//!    onto such a copy ends in exactly the source's state: a key no batch touched was
//!    copied as it was at `start`, and a key some batch touched ends as the last such
//!    batch left it.
//! 3. [`TenantEngine::finish_relocation`] (a barrier: writes wait in the admission queue
//!    meanwhile) writes the batches still mirrored to the target, runs the caller's
//!    `switch` (which records the new location durably, so a restart opens the target),
//!    and then makes the target the tenant's store. A failure before `switch` succeeds
//!    leaves the tenant where it was, with nothing lost: the source was never touched.
//!
//! The mirror is bounded ([`MIRROR_MAX_BYTES`]): a tenant that writes faster than the copy
//! proceeds breaks it, and the move fails with a clear error rather than holding the
//! memory. A storage failure during the move breaks it too. Dropping the [`Relocation`]
//! abandons the mirror; the committer lets it go at its next write.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nimbus_storage::{IndexWrite, TenantStore, WriteBatch};
use nimbus_types::Timestamp;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::committer::{CommitterMessage, CommitterState};
use crate::engine::{StoreOpener, TenantEngine};
use crate::error::EngineError;

/// The most bytes of written batches a mirror holds before it breaks (the caller drains
/// it while copying, so this bounds how far writes may run ahead of the copy).
pub const MIRROR_MAX_BYTES: usize = 64 << 20;

/// Batches the committer wrote durably since the mirror started, oldest first.
#[derive(Default)]
pub(crate) struct Mirror {
    batches: VecDeque<WriteBatch>,
    bytes: usize,
    /// Why the mirror can no longer be trusted; the move fails with it.
    broken: Option<String>,
}

impl Mirror {
    /// Keeps a copy of a batch the source has made durable.
    pub(crate) fn push(&mut self, batch: WriteBatch) {
        if self.broken.is_some() {
            return;
        }
        let size = batch_bytes(&batch);
        if self.bytes + size > MIRROR_MAX_BYTES {
            self.break_with(format!(
                "the tenant wrote more than {} MiB during the copy, faster than it could be \
                 moved; retry when it is less busy",
                MIRROR_MAX_BYTES >> 20
            ));
            return;
        }
        self.bytes += size;
        self.batches.push_back(batch);
    }

    pub(crate) fn break_with(&mut self, reason: String) {
        if self.broken.is_none() {
            self.broken = Some(reason);
        }
        self.batches.clear();
        self.bytes = 0;
    }

    fn take(&mut self) -> Result<Vec<WriteBatch>, EngineError> {
        if let Some(reason) = &self.broken {
            return Err(EngineError::Relocation(reason.clone()));
        }
        self.bytes = 0;
        Ok(self.batches.drain(..).collect())
    }
}

/// Approximate memory a batch holds (bodies and keys, plus a little per entry).
fn batch_bytes(batch: &WriteBatch) -> usize {
    const ENTRY: usize = 64;
    let documents: usize = batch
        .documents
        .iter()
        .map(|d| ENTRY + d.body.as_ref().map_or(0, Vec::len))
        .sum();
    let indexes: usize = batch
        .indexes
        .iter()
        .map(|w| match w {
            IndexWrite::Insert { key, .. } | IndexWrite::Delete { key, .. } => ENTRY + key.len(),
            _ => ENTRY,
        })
        .sum();
    let globals: usize = batch
        .globals
        .iter()
        .map(|(name, value)| ENTRY + name.len() + value.as_ref().map_or(0, Vec::len))
        .sum();
    let receipts: usize = batch
        .receipts
        .iter()
        .map(|r| ENTRY + r.key.len() + r.body.len())
        .sum();
    ENTRY + documents + indexes + globals + receipts
}

pub(crate) type SharedMirror = Arc<Mutex<Mirror>>;

/// A move in progress (step 2 of the module docs).
pub struct Relocation {
    source: Arc<dyn TenantStore>,
    start: Timestamp,
    mirror: SharedMirror,
}

impl Relocation {
    /// The store being moved from, to copy.
    pub fn source(&self) -> &Arc<dyn TenantStore> {
        &self.source
    }

    /// The last timestamp before the mirror: the copy's `max_ts`.
    pub fn start(&self) -> Timestamp {
        self.start
    }

    /// Takes the batches mirrored so far, oldest first; an error once the mirror broke.
    pub fn take_written(&self) -> Result<Vec<WriteBatch>, EngineError> {
        self.mirror.lock().take()
    }
}

/// What [`TenantEngine::finish_relocation`] did.
#[derive(Debug, Clone, Copy)]
pub struct RelocationOutcome {
    /// Batches written to the target while writes were paused.
    pub final_batches: usize,
    /// How long writes were paused (the switch, from the committer's view).
    pub pause: Duration,
}

/// Records the new location durably; runs on a blocking thread while writes are paused.
pub type Switch = Box<dyn FnOnce() -> Result<(), String> + Send>;

/// The committer's messages of a move.
pub(crate) enum RelocationStep {
    Start {
        reply: oneshot::Sender<Result<Relocation, EngineError>>,
    },
    Finish {
        mirror: SharedMirror,
        target: Arc<dyn TenantStore>,
        opener: StoreOpener,
        switch: Switch,
        reply: oneshot::Sender<Result<RelocationOutcome, EngineError>>,
    },
}

impl RelocationStep {
    pub(crate) fn refuse(self, error: EngineError) {
        match self {
            RelocationStep::Start { reply } => {
                let _ = reply.send(Err(error));
            }
            RelocationStep::Finish { reply, .. } => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

impl TenantEngine {
    /// Starts moving this tenant's storage (see the module docs). One move at a time.
    pub async fn start_relocation(&self) -> Result<Relocation, EngineError> {
        let (reply, answer) = oneshot::channel();
        self.send_control(CommitterMessage::Relocate(RelocationStep::Start { reply }))
            .await?;
        answer.await.map_err(|_| EngineError::ShutDown)?
    }

    /// Ends a move: pauses writes, writes what is still mirrored to `target`, runs
    /// `switch`, and from then on writes to `target` (and reopens it with `opener` after a
    /// storage failure). On error the tenant stays on its source store.
    pub async fn finish_relocation(
        &self,
        relocation: Relocation,
        target: Arc<dyn TenantStore>,
        opener: StoreOpener,
        switch: Switch,
    ) -> Result<RelocationOutcome, EngineError> {
        let (reply, answer) = oneshot::channel();
        self.send_control(CommitterMessage::Relocate(RelocationStep::Finish {
            mirror: relocation.mirror.clone(),
            target,
            opener,
            switch,
            reply,
        }))
        .await?;
        answer.await.map_err(|_| EngineError::ShutDown)?
    }
}

/// Runs a step in the committer, alone (no other message is in flight).
pub(crate) async fn handle(step: RelocationStep, state: &mut CommitterState) {
    match step {
        RelocationStep::Start { reply } => {
            if state.journal.is_some() {
                // Its storage may be behind its journal, which the copy would not see.
                let _ = reply.send(Err(EngineError::Relocation(
                    "a tenant that commits through the journal cannot be moved".into(),
                )));
                return;
            }
            if state
                .mirror
                .as_ref()
                .is_some_and(|m| Arc::strong_count(m) > 1)
            {
                let _ = reply.send(Err(EngineError::Relocation(
                    "the tenant is already being moved".into(),
                )));
                return;
            }
            let mirror: SharedMirror = Arc::default();
            state.mirror = Some(mirror.clone());
            let _ = reply.send(Ok(Relocation {
                source: state.store.read().clone(),
                start: state.published.read().ts,
                mirror,
            }));
        }
        RelocationStep::Finish {
            mirror,
            target,
            opener,
            switch,
            reply,
        } => {
            let paused = Instant::now();
            let result = finish(mirror, target, opener, switch, state).await;
            let _ = reply.send(result.map(|final_batches| RelocationOutcome {
                final_batches,
                pause: paused.elapsed(),
            }));
        }
    }
}

async fn finish(
    mirror: SharedMirror,
    target: Arc<dyn TenantStore>,
    opener: StoreOpener,
    switch: Switch,
    state: &mut CommitterState,
) -> Result<usize, EngineError> {
    let current = state
        .mirror
        .take()
        .filter(|current| Arc::ptr_eq(current, &mirror));
    if current.is_none() {
        return Err(EngineError::Relocation(
            "the move was abandoned (the tenant's storage was reopened meanwhile)".into(),
        ));
    }
    let batches = mirror.lock().take()?;
    let count = batches.len();
    let writer = target.clone();
    tokio::task::spawn_blocking(move || -> Result<(), EngineError> {
        for batch in &batches {
            writer.write(batch)?;
        }
        switch().map_err(EngineError::Relocation)
    })
    .await
    .map_err(|e| EngineError::Relocation(format!("the switch task failed: {e}")))??;
    // Durably switched: from here on the tenant lives in the target.
    *state.store.write() = target.clone();
    state.loader.opener = opener;
    let published = state.published.read().clone();
    if !published.is_resident() {
        // A paged snapshot reads the store it was made with; serve the next ones from the
        // target (the source is deleted after the move).
        let paged = Arc::new((*published).clone().repoint(target, state.undo.clone()));
        state.recent.lock().restart_with(paged.clone());
        *state.published.write() = paged;
    }
    Ok(count)
}

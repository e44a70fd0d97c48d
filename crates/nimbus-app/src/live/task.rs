//! The registry task of one tenant: follows the engine's commit notices, starts the
//! evaluations a round makes due, and applies their results as they complete.
//!
//! A round at snapshot `S` matches the commits since the last round against the live
//! queries' read sets, starts an evaluation at `S` for each query they touched (and each
//! new or retried one), and declares every other query valid through `S` at once. It does
//! not wait for its evaluations: each result is applied when it arrives, so a slow query
//! holds back only the sessions subscribed to it (see `registry.rs` on consistency), never
//! the next round nor other sessions' mutations.

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use nimbus_engine::Snapshot;
use tokio::sync::{broadcast, mpsc, watch};

use super::registry::{QueryKey, Token};
use super::{LiveQueries, LiveResult};
use crate::error::AppError;
use crate::execute::LiveEvaluation;
use crate::tenant::Tenant;

/// How long a round waits for the commit notice of a published snapshot before it
/// re-runs everything instead (the notice normally follows within microseconds).
const NOTICE_WAIT: Duration = Duration::from_secs(1);
/// Wait before re-evaluating a query whose evaluation failed for lack of resources (not
/// by its own fault); doubles with each failure in a row, up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// A finished evaluation, sent back to the registry task.
struct Completed {
    token: Token,
    /// The snapshot it read.
    ts: u64,
    outcome: Result<LiveEvaluation, AppError>,
}

/// What the commits since the last round touched.
#[derive(Default)]
struct Changes {
    keys: Vec<(nimbus_storage::IndexNumber, Vec<u8>)>,
    /// Re-run everything (schema change, lost notices, a reloaded tenant).
    everything: bool,
    commits: u64,
}

impl Changes {
    fn absorb(&mut self, notice: &nimbus_engine::CommitNotice, after: u64) {
        if notice.ts.0 <= after {
            return; // already reflected by the published state
        }
        self.commits += 1;
        if notice.catalog_changed {
            self.everything = true;
        } else if !self.everything {
            self.keys.extend(notice.keys.iter().cloned());
        }
    }
}

pub(super) async fn run(
    tenant: Weak<Tenant>,
    live: Arc<LiveQueries>,
    mut notices: broadcast::Receiver<nimbus_engine::CommitNotice>,
    mut closed: watch::Receiver<bool>,
) {
    // Unbounded, yet bounded: at most one evaluation per live query is in flight.
    let (done_sender, mut done) = mpsc::unbounded_channel::<Completed>();
    let mut last_notice = live.registry.lock().published_ts;
    loop {
        let mut changes = Changes::default();
        let published = live.registry.lock().published_ts;
        let next_retry = live.next_retry();
        tokio::select! {
            biased;
            _ = closed.wait_for(|closed| *closed) => return,
            Some(completed) = done.recv() => {
                let Some(tenant) = tenant.upgrade() else {
                    return;
                };
                apply(&live, tenant.engine(), completed);
                continue;
            }
            notice = notices.recv() => match notice {
                Ok(notice) => {
                    last_notice = notice.ts.0;
                    changes.absorb(&notice, published);
                }
                Err(broadcast::error::RecvError::Lagged(_)) => changes.everything = true,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = live.wake.notified() => {}
            _ = sleep_until(next_retry) => {}
        }
        let Some(tenant) = tenant.upgrade() else {
            return;
        };
        let snapshot = tenant.engine().snapshot();
        // Take every notice up to the snapshot, so the round reflects all of its commits.
        while last_notice < snapshot.ts.0 {
            match tokio::time::timeout(NOTICE_WAIT, notices.recv()).await {
                Ok(Ok(notice)) => {
                    last_notice = notice.ts.0;
                    changes.absorb(&notice, published);
                }
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => changes.everything = true,
                Ok(Err(broadcast::error::RecvError::Closed)) => return,
                Err(_) => {
                    tracing::warn!(
                        tenant = tenant.name(),
                        "no commit notice for a published snapshot; re-running every live query"
                    );
                    changes.everything = true;
                    last_notice = snapshot.ts.0;
                }
            }
        }
        round(&tenant, &live, snapshot, changes, &done_sender);
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Matches `changes` at `snapshot`, starts the evaluations due, and publishes the round.
fn round(
    tenant: &Arc<Tenant>,
    live: &Arc<LiveQueries>,
    snapshot: Arc<Snapshot>,
    changes: Changes,
    done: &mpsc::UnboundedSender<Completed>,
) {
    let ts = snapshot.ts.0;
    let code = crate::tenant::deployment_of(&snapshot).code_id;
    let now = Instant::now();
    let mut start: Vec<(Token, Arc<QueryKey>, Option<String>)> = Vec::new();
    {
        let mut guard = live.registry.lock();
        let registry = &mut *guard;
        let mut touched: HashSet<Token> = HashSet::new();
        if changes.everything || registry.code != code {
            touched.extend(registry.queries.keys().copied());
        } else {
            for (index, key) in &changes.keys {
                registry.ranges.stab(*index, key, |token| {
                    touched.insert(*token);
                });
            }
        }
        registry.code = code;
        for token in touched {
            if let Some(query) = registry.queries.get_mut(&token) {
                if query.evaluating {
                    query.touched_while_evaluating = true;
                } else {
                    registry.due.insert(token);
                }
            }
        }
        let due: Vec<Token> = registry.due.iter().copied().collect();
        for token in due {
            let Some(query) = registry.queries.get_mut(&token) else {
                registry.due.remove(&token);
                continue;
            };
            if query.evaluating {
                query.touched_while_evaluating = true;
                registry.due.remove(&token);
                continue;
            }
            if query.retry_at.is_some_and(|at| at > now) {
                continue; // waiting out a transient failure
            }
            registry.due.remove(&token);
            query.evaluating = true;
            query.retry_at = None;
            start.push((token, query.key.clone(), query.journal.clone()));
        }
        // Every query neither due nor being evaluated holds through this round.
        for (token, query) in registry.queries.iter_mut() {
            if !query.evaluating && !registry.due.contains(token) {
                query.valid_ts = query.valid_ts.max(ts);
            }
        }
        registry.published_ts = registry.published_ts.max(ts);
        live.published.send_replace(registry.published_ts);
    }
    let c = &live.counters;
    c.rounds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    c.commits_matched
        .fetch_add(changes.commits, std::sync::atomic::Ordering::Relaxed);
    c.last_round_evaluations
        .store(start.len() as u64, std::sync::atomic::Ordering::Relaxed);
    for (token, key, journal) in start {
        let tenant = tenant.clone();
        let snapshot = snapshot.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let outcome = match crate::execute::decode_args_text(&key.args) {
                Ok(args) => {
                    tenant
                        .evaluate_live(&key.path, &args, &key.caller, journal, snapshot)
                        .await
                }
                Err(error) => Err(error),
            };
            let _ = done.send(Completed { token, ts, outcome });
        });
    }
}

/// Applies a finished evaluation: its read set, its result if it changed, and how long it
/// holds. A failure that is not the function's own (overload, a stale snapshot, shutting
/// down) keeps the last result and retries later, with backoff: subscribers never see an
/// error that is not their query's.
///
/// How long it holds: through the latest round, unless a commit since the evaluation's
/// snapshot wrote into what it read. Rounds only see commits through the ranges registered
/// before the evaluation (none for a new query, the previous read set for an old one), so
/// the evaluation's own read set is checked against the write log too.
fn apply(live: &LiveQueries, engine: &nimbus_engine::TenantEngine, completed: Completed) {
    let Completed { token, ts, outcome } = completed;
    live.counters
        .evaluations
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut guard = live.registry.lock();
    let registry = &mut *guard;
    let published_ts = registry.published_ts;
    let Some(query) = registry.queries.get_mut(&token) else {
        return; // unsubscribed meanwhile
    };
    query.evaluating = false;
    let evaluation = match outcome {
        Ok(evaluation) => evaluation,
        Err(error) => {
            query.failures += 1;
            let wait = RETRY_FIRST
                .saturating_mul(1 << query.failures.min(16).saturating_sub(1))
                .min(RETRY_MAX);
            query.retry_at = Some(Instant::now() + wait);
            query.touched_while_evaluating = false;
            registry.due.insert(token);
            tracing::debug!(%error, retry_ms = wait.as_millis() as u64, "live query evaluation failed; retrying");
            return;
        }
    };
    query.failures = 0;
    let changed_since = !engine.unchanged_since(nimbus_types::Timestamp(ts), &evaluation.read_set);
    for handle in query.ranges.drain(..) {
        registry.ranges.remove(&handle);
    }
    for (index, range) in evaluation.read_set.ranges() {
        if let Some(handle) = registry.ranges.insert(index, range, token) {
            query.ranges.push(handle);
        }
    }
    if let Some(end) = evaluation.page_end {
        query.journal = Some(end);
    }
    let result = LiveResult::new(
        evaluation.result,
        evaluation.log_lines,
        query.journal.clone(),
    );
    if query.result.as_deref() != Some(&result) {
        let result = Arc::new(result);
        query.result = Some(result.clone());
        query.computed_ts = ts;
        for (session, query_id) in &query.subscribers {
            if let Some(state) = registry.sessions.get_mut(session) {
                state.pending.insert(*query_id, result.clone());
            }
        }
    }
    if query.touched_while_evaluating || changed_since {
        // A commit after `ts` touched it: correct at `ts` only, and due again.
        query.touched_while_evaluating = false;
        query.valid_ts = ts;
        registry.due.insert(token);
        live.wake.notify_one();
    } else {
        query.valid_ts = published_ts.max(ts);
    }
    // Its subscribers may be able to move on now, with or without a new result.
    for (session, _) in &query.subscribers {
        if let Some(state) = registry.sessions.get(session) {
            state.notify.notify_one();
        }
    }
}

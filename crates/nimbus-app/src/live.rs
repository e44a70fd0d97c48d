//! Live queries of one tenant: subscriptions re-run only when a commit writes into what
//! they read.
//!
//! Each distinct query (function, arguments, caller) is one *live query*, shared by every
//! subscriber. Its last evaluation left a read set (index key ranges); those ranges are
//! registered in a [`RangeIndex`]. The tenant's registry task follows the engine's commit
//! notices: for every key a commit wrote it looks up the ranges containing it, and
//! re-evaluates just those live queries — all at one snapshot — then publishes the new
//! results to their subscribers. Cost per commit therefore grows with the number of
//! intersecting queries, not with the number of subscriptions.
//!
//! **Consistency.** The registry publishes rounds: after a round at snapshot `ts`, every
//! live query's current result is its result at `ts` (`published_ts`). Subscribers read
//! their pending updates and `published_ts` under the same lock the registry publishes
//! under, so what a session drains is always one consistent snapshot.
//!
//! **Bounds.** Subscriptions per session and per tenant are capped (an add beyond a cap
//! fails that query with a clear message). A session's undelivered updates are coalesced
//! per query — a slow consumer holds at most one pending result per subscription, never
//! an unbounded queue. Evaluations run on the tenant's bounded JS worker slots.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use nimbus_engine::{RangeHandle, RangeIndex, Snapshot};
use nimbus_types::Value;
use parking_lot::Mutex;
use tokio::sync::{broadcast, watch, Notify};

use crate::execute::{Caller, FunctionFailure};
use crate::tenant::Tenant;

/// The registry's name for one distinct live query.
type Token = u64;
/// One subscriber session (a WebSocket).
type SessionId = u64;
/// A session's own name for one of its subscriptions (the protocol's `queryId`).
pub type QueryId = u32;

/// How long a query that failed for lack of resources (not by its own fault) waits
/// before it is evaluated again.
const RETRY_AFTER: Duration = Duration::from_millis(200);
/// How long a round waits for the commit notice of a published snapshot before it
/// re-runs everything instead (the notice normally follows within microseconds).
const NOTICE_WAIT: Duration = Duration::from_secs(1);

/// Bounds of live queries.
#[derive(Debug, Clone)]
pub struct LiveLimits {
    /// Subscriptions one session (connection) may hold; further adds fail.
    pub max_subscriptions_per_session: usize,
    /// Subscriptions all sessions of one tenant may hold together; further adds fail.
    pub max_subscriptions_per_tenant: usize,
}

impl Default for LiveLimits {
    fn default() -> Self {
        LiveLimits {
            max_subscriptions_per_session: 4096,
            max_subscriptions_per_tenant: 100_000,
        }
    }
}

/// A query result as subscribers see it.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveResult {
    pub result: Result<Value, FunctionFailure>,
    pub log_lines: Vec<String>,
}

/// Counters of a tenant's live queries.
#[derive(Debug, Clone, Default)]
pub struct LiveStats {
    /// Open sessions (connections).
    pub sessions: u64,
    /// Subscriptions across sessions.
    pub subscriptions: u64,
    /// Distinct live queries (identical subscriptions share one).
    pub live_queries: u64,
    /// Query evaluations done for subscriptions, in total.
    pub evaluations: u64,
    /// Registry rounds (each covers one or more commits, or new subscriptions).
    pub rounds: u64,
    /// Commits whose write sets were matched against subscriptions.
    pub commits_matched: u64,
    /// Evaluations in the last round.
    pub last_round_evaluations: u64,
    /// Query results sent to clients.
    pub updates_sent: u64,
    /// Sessions closed by the server (slow consumer, protocol error, tenant deleted).
    pub dropped_sessions: u64,
    /// Timestamp every live query's result is current at.
    pub published_ts: u64,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct QueryKey {
    path: String,
    /// convex-JSON text of the arguments.
    args: String,
    caller: Caller,
}

struct LiveQuery {
    key: QueryKey,
    args: Value,
    /// `None` until the first evaluation is published.
    result: Option<Arc<LiveResult>>,
    ranges: Vec<RangeHandle>,
    subscribers: HashSet<(SessionId, QueryId)>,
}

struct SessionState {
    subscriptions: HashMap<QueryId, Token>,
    /// Results not yet taken by the session, newest per query.
    pending: BTreeMap<QueryId, Arc<LiveResult>>,
    notify: Arc<Notify>,
}

#[derive(Default)]
struct Registry {
    published_ts: u64,
    /// The code the live results were computed with; new code re-runs every query.
    code: nimbus_runtime::CodeId,
    queries: HashMap<Token, LiveQuery>,
    by_key: HashMap<QueryKey, Token>,
    ranges: RangeIndex<Token>,
    /// Live queries waiting for their first evaluation or a retry.
    unevaluated: HashSet<Token>,
    sessions: HashMap<SessionId, SessionState>,
    subscriptions: usize,
    next_token: Token,
    next_session: SessionId,
}

#[derive(Default)]
struct Counters {
    evaluations: AtomicU64,
    rounds: AtomicU64,
    commits_matched: AtomicU64,
    last_round_evaluations: AtomicU64,
    updates_sent: AtomicU64,
    dropped_sessions: AtomicU64,
}

/// The live queries of one tenant.
pub struct LiveQueries {
    registry: Mutex<Registry>,
    limits: LiveLimits,
    /// Wakes the registry task: new subscriptions or new code.
    wake: Notify,
    /// `published_ts` after each round, for sessions waiting for a commit to be reflected.
    published: watch::Sender<u64>,
    started: std::sync::Once,
    counters: Counters,
}

/// Why a subscription could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error("query ID {0} is already in use on this connection")]
    DuplicateQueryId(QueryId),
    #[error(
        "TooManySubscriptions: this connection already has {0} subscriptions, the most one \
         connection may hold"
    )]
    SessionFull(usize),
    #[error(
        "TooManySubscriptions: the tenant already has {0} subscriptions across its \
         connections, the most it may hold"
    )]
    TenantFull(usize),
}

impl LiveQueries {
    pub(crate) fn new(limits: LiveLimits) -> Self {
        LiveQueries {
            registry: Mutex::new(Registry::default()),
            limits,
            wake: Notify::new(),
            published: watch::channel(0).0,
            started: std::sync::Once::new(),
            counters: Counters::default(),
        }
    }

    pub fn stats(&self) -> LiveStats {
        let registry = self.registry.lock();
        let c = &self.counters;
        LiveStats {
            sessions: registry.sessions.len() as u64,
            subscriptions: registry.subscriptions as u64,
            live_queries: registry.queries.len() as u64,
            evaluations: c.evaluations.load(Ordering::Relaxed),
            rounds: c.rounds.load(Ordering::Relaxed),
            commits_matched: c.commits_matched.load(Ordering::Relaxed),
            last_round_evaluations: c.last_round_evaluations.load(Ordering::Relaxed),
            updates_sent: c.updates_sent.load(Ordering::Relaxed),
            dropped_sessions: c.dropped_sessions.load(Ordering::Relaxed),
            published_ts: registry.published_ts,
        }
    }
}

impl Tenant {
    /// Opens a live session (one per connection), starting the tenant's registry task on
    /// first use.
    pub fn live_session(self: &Arc<Self>) -> LiveSession {
        let live = self.live().clone();
        live.started.call_once(|| {
            let notices = self.engine().subscribe();
            let start = self.engine().snapshot();
            {
                let mut registry = live.registry.lock();
                registry.published_ts = start.ts.0;
                registry.code = crate::tenant::deployment_of(&start).code_id;
            }
            live.published.send_replace(start.ts.0);
            tokio::spawn(run_registry(
                Arc::downgrade(self),
                live.clone(),
                notices,
                self.closed_signal(),
            ));
        });
        let notify = Arc::new(Notify::new());
        let id = {
            let mut registry = live.registry.lock();
            let id = registry.next_session;
            registry.next_session += 1;
            registry.sessions.insert(
                id,
                SessionState {
                    subscriptions: HashMap::new(),
                    pending: BTreeMap::new(),
                    notify: notify.clone(),
                },
            );
            id
        };
        LiveSession {
            live,
            id,
            notify,
            published: self.live().published.subscribe(),
        }
    }
}

/// What a session takes from the registry: results at one consistent timestamp.
#[derive(Debug, Default)]
pub struct Drained {
    /// Every subscription of the session is current at this timestamp.
    pub ts: u64,
    pub updates: Vec<(QueryId, Arc<LiveResult>)>,
}

/// One subscriber (a WebSocket connection): its subscriptions and undelivered results.
/// Dropping it removes its subscriptions.
pub struct LiveSession {
    live: Arc<LiveQueries>,
    id: SessionId,
    notify: Arc<Notify>,
    published: watch::Receiver<u64>,
}

impl LiveSession {
    /// Subscribes `query_id` to a query. Its first result arrives through
    /// [`LiveSession::drain`] (at once if an identical query is already live).
    pub fn add(
        &self,
        query_id: QueryId,
        path: &str,
        args: Value,
        caller: Caller,
    ) -> Result<(), SubscribeError> {
        let key = QueryKey {
            path: path.trim().to_string(),
            args: nimbus_types::json::encode_text(&args),
            caller,
        };
        let mut guard = self.live.registry.lock();
        let registry = &mut *guard;
        let Some(session) = registry.sessions.get(&self.id) else {
            return Ok(()); // unreachable while the session exists
        };
        if session.subscriptions.contains_key(&query_id) {
            return Err(SubscribeError::DuplicateQueryId(query_id));
        }
        if session.subscriptions.len() >= self.live.limits.max_subscriptions_per_session {
            return Err(SubscribeError::SessionFull(
                self.live.limits.max_subscriptions_per_session,
            ));
        }
        if registry.subscriptions >= self.live.limits.max_subscriptions_per_tenant {
            return Err(SubscribeError::TenantFull(
                self.live.limits.max_subscriptions_per_tenant,
            ));
        }
        let token = match registry.by_key.get(&key) {
            Some(token) => *token,
            None => {
                let token = registry.next_token;
                registry.next_token += 1;
                registry.by_key.insert(key.clone(), token);
                registry.queries.insert(
                    token,
                    LiveQuery {
                        key,
                        args,
                        result: None,
                        ranges: Vec::new(),
                        subscribers: HashSet::new(),
                    },
                );
                registry.unevaluated.insert(token);
                self.live.wake.notify_one();
                token
            }
        };
        let query = registry.queries.get_mut(&token);
        let current = query.and_then(|q| {
            q.subscribers.insert((self.id, query_id));
            q.result.clone()
        });
        registry.subscriptions += 1;
        if let Some(session) = registry.sessions.get_mut(&self.id) {
            session.subscriptions.insert(query_id, token);
            if let Some(result) = current {
                // Current at `published_ts`, like everything else the session drains.
                session.pending.insert(query_id, result);
                self.notify.notify_one();
            }
        }
        Ok(())
    }

    /// Unsubscribes `query_id`; false if it was not subscribed.
    pub fn remove(&self, query_id: QueryId) -> bool {
        let mut registry = self.live.registry.lock();
        registry.unsubscribe(self.id, query_id)
    }

    /// Takes the session's undelivered results, all current at the returned timestamp.
    pub fn drain(&self) -> Drained {
        let mut registry = self.live.registry.lock();
        let ts = registry.published_ts;
        let updates = registry
            .sessions
            .get_mut(&self.id)
            .map(|s| std::mem::take(&mut s.pending).into_iter().collect())
            .unwrap_or_default();
        Drained { ts, updates }
    }

    /// Notified when the session may have something to drain.
    pub fn notifier(&self) -> Arc<Notify> {
        self.notify.clone()
    }

    /// The timestamp every live query is current at, as it advances (a commit at `ts` is
    /// reflected in every subscription once this reaches `ts`).
    pub fn published_watch(&self) -> watch::Receiver<u64> {
        self.published.clone()
    }

    /// Timestamp every live query is current at.
    pub fn published_ts(&self) -> u64 {
        *self.published.borrow()
    }

    /// Counts results sent to the client.
    pub fn record_sent(&self, updates: usize) {
        self.live
            .counters
            .updates_sent
            .fetch_add(updates as u64, Ordering::Relaxed);
    }

    /// Counts a connection the server closed (slow consumer, protocol error, ...).
    pub fn record_dropped(&self) {
        self.live
            .counters
            .dropped_sessions
            .fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for LiveSession {
    fn drop(&mut self) {
        let mut registry = self.live.registry.lock();
        let ids: Vec<QueryId> = registry
            .sessions
            .get(&self.id)
            .map(|s| s.subscriptions.keys().copied().collect())
            .unwrap_or_default();
        for query_id in ids {
            registry.unsubscribe(self.id, query_id);
        }
        registry.sessions.remove(&self.id);
    }
}

impl Registry {
    fn unsubscribe(&mut self, session: SessionId, query_id: QueryId) -> bool {
        let Some(state) = self.sessions.get_mut(&session) else {
            return false;
        };
        state.pending.remove(&query_id);
        let Some(token) = state.subscriptions.remove(&query_id) else {
            return false;
        };
        self.subscriptions -= 1;
        let orphaned = match self.queries.get_mut(&token) {
            Some(query) => {
                query.subscribers.remove(&(session, query_id));
                query.subscribers.is_empty()
            }
            None => false,
        };
        if orphaned {
            if let Some(query) = self.queries.remove(&token) {
                for handle in &query.ranges {
                    self.ranges.remove(handle);
                }
                self.by_key.remove(&query.key);
            }
            self.unevaluated.remove(&token);
        }
        true
    }
}

/// What the commits since the last round touched.
#[derive(Default)]
struct Changes {
    keys: Vec<(nimbus_storage::IndexNumber, Vec<u8>)>,
    /// Re-run everything (schema change, lost notices).
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

async fn run_registry(
    tenant: Weak<Tenant>,
    live: Arc<LiveQueries>,
    mut notices: broadcast::Receiver<nimbus_engine::CommitNotice>,
    mut closed: watch::Receiver<bool>,
) {
    let mut last_notice = live.registry.lock().published_ts;
    loop {
        let mut changes = Changes::default();
        let published = live.registry.lock().published_ts;
        tokio::select! {
            biased;
            _ = closed.wait_for(|closed| *closed) => return,
            notice = notices.recv() => match notice {
                Ok(notice) => {
                    last_notice = notice.ts.0;
                    changes.absorb(&notice, published);
                }
                Err(broadcast::error::RecvError::Lagged(_)) => changes.everything = true,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = live.wake.notified() => {}
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
        round(&tenant, &live, snapshot, changes).await;
    }
}

/// Re-evaluates the live queries `changes` intersect (and new ones) at `snapshot`, then
/// publishes every result at once.
async fn round(
    tenant: &Arc<Tenant>,
    live: &Arc<LiveQueries>,
    snapshot: Arc<Snapshot>,
    changes: Changes,
) {
    let code = crate::tenant::deployment_of(&snapshot).code_id;
    let dirty: Vec<(Token, String, Value, Caller)> = {
        let mut registry = live.registry.lock();
        let mut dirty: HashSet<Token> = std::mem::take(&mut registry.unevaluated);
        if changes.everything || registry.code != code {
            dirty.extend(registry.queries.keys().copied());
        } else {
            for (index, key) in &changes.keys {
                registry.ranges.stab(*index, key, |token| {
                    dirty.insert(*token);
                });
            }
        }
        registry.code = code;
        dirty
            .into_iter()
            .filter_map(|token| {
                let q = registry.queries.get(&token)?;
                Some((token, q.key.path.clone(), q.args.clone(), q.key.caller))
            })
            .collect()
    };
    let mut evaluations = tokio::task::JoinSet::new();
    for (token, path, args, caller) in dirty {
        let tenant = tenant.clone();
        let snapshot = snapshot.clone();
        evaluations.spawn(async move {
            let outcome = tenant.evaluate_live(&path, &args, caller, snapshot).await;
            (token, outcome)
        });
    }
    let mut results = Vec::new();
    while let Some(joined) = evaluations.join_next().await {
        match joined {
            Ok(result) => results.push(result),
            Err(e) => tracing::error!(
                tenant = tenant.name(),
                "live query evaluation task failed: {e}"
            ),
        }
    }
    let evaluated = results.len() as u64;
    let mut retry = false;
    let mut notify: Vec<Arc<Notify>> = Vec::new();
    {
        let mut guard = live.registry.lock();
        let registry = &mut *guard;
        for (token, outcome) in results {
            let Some(query) = registry.queries.get_mut(&token) else {
                continue; // unsubscribed meanwhile
            };
            let evaluation = match outcome {
                Ok(evaluation) => evaluation,
                Err(error) => {
                    // Not the query's fault (overload, shutdown): keep it due for another
                    // evaluation; its subscribers are told why meanwhile.
                    tracing::debug!(tenant = tenant.name(), %error, "live query evaluation failed; retrying");
                    registry.unevaluated.insert(token);
                    retry = true;
                    crate::execute::LiveEvaluation {
                        result: Err(FunctionFailure {
                            code: error.code(),
                            message: error.to_string(),
                            data: None,
                        }),
                        log_lines: Vec::new(),
                        read_set: nimbus_engine::ReadSet::default(),
                    }
                }
            };
            for handle in query.ranges.drain(..) {
                registry.ranges.remove(&handle);
            }
            for (index, range) in evaluation.read_set.ranges() {
                if let Some(handle) = registry.ranges.insert(index, range, token) {
                    query.ranges.push(handle);
                }
            }
            let result = LiveResult {
                result: evaluation.result,
                log_lines: evaluation.log_lines,
            };
            if query.result.as_deref() == Some(&result) {
                continue;
            }
            let result = Arc::new(result);
            query.result = Some(result.clone());
            for (session, query_id) in &query.subscribers {
                if let Some(state) = registry.sessions.get_mut(session) {
                    state.pending.insert(*query_id, result.clone());
                    notify.push(state.notify.clone());
                }
            }
        }
        registry.published_ts = registry.published_ts.max(snapshot.ts.0);
        live.published.send_replace(registry.published_ts);
    }
    for n in notify {
        n.notify_one();
    }
    let c = &live.counters;
    c.rounds.fetch_add(1, Ordering::Relaxed);
    c.commits_matched
        .fetch_add(changes.commits, Ordering::Relaxed);
    c.evaluations.fetch_add(evaluated, Ordering::Relaxed);
    c.last_round_evaluations.store(evaluated, Ordering::Relaxed);
    if retry {
        let live = live.clone();
        tokio::spawn(async move {
            tokio::time::sleep(RETRY_AFTER).await;
            live.wake.notify_one();
        });
    }
}

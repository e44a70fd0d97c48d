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
//! **Bounds.** Sessions per tenant are capped ([`LiveLimits::max_sessions`]). Subscriptions
//! are capped in number and in estimated bytes per session, per client address and per
//! tenant: an add beyond a cap fails that query with a clear message and is not kept. A
//! subscription's estimated cost is [`subscription_cost`]: its key is held once (shared by
//! identical subscriptions), and its read set's bounds usually repeat its arguments. A
//! session's undelivered updates are coalesced per query — a slow consumer holds at most
//! one pending result per subscription, never an unbounded queue. Evaluations run on the
//! tenant's bounded JS worker slots.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
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

/// Bounds of live queries. Bytes are estimated with [`subscription_cost`].
#[derive(Debug, Clone)]
pub struct LiveLimits {
    /// Sessions (connections) one tenant may have open; further ones are refused.
    pub max_sessions: usize,
    /// Subscriptions one session (connection) may hold; further adds fail.
    pub max_subscriptions_per_session: usize,
    pub max_subscription_bytes_per_session: usize,
    /// Subscriptions the sessions from one client address may hold in one tenant, so one
    /// client cannot take the whole tenant's allowance from the others.
    pub max_subscriptions_per_address: usize,
    pub max_subscription_bytes_per_address: usize,
    /// Subscriptions all sessions of one tenant may hold together; further adds fail.
    pub max_subscriptions_per_tenant: usize,
    pub max_subscription_bytes_per_tenant: usize,
}

impl Default for LiveLimits {
    fn default() -> Self {
        LiveLimits {
            max_sessions: 10_000,
            max_subscriptions_per_session: 4096,
            max_subscription_bytes_per_session: 2 << 20,
            max_subscriptions_per_address: 10_000,
            max_subscription_bytes_per_address: 16 << 20,
            max_subscriptions_per_tenant: 100_000,
            max_subscription_bytes_per_tenant: 64 << 20,
        }
    }
}

/// Estimated bytes one subscription makes the server hold: the key (path and arguments)
/// once, their usual echo in the read set's range bounds twice, and the maps' entries.
pub fn subscription_cost(path: &str, args_json: &str) -> usize {
    const ENTRIES: usize = 256;
    ENTRIES + path.len() + 3 * args_json.len()
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
    /// Their estimated bytes ([`subscription_cost`]).
    pub subscription_bytes: u64,
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

/// What makes two subscriptions the same live query. Held once per live query (the
/// registry's maps share it); the arguments are kept only as text and decoded for each
/// evaluation.
#[derive(Clone, PartialEq, Eq, Hash)]
struct QueryKey {
    path: String,
    /// convex-JSON text of the arguments.
    args: String,
    caller: Caller,
}

struct LiveQuery {
    key: Arc<QueryKey>,
    /// `None` until the first evaluation is published.
    result: Option<Arc<LiveResult>>,
    ranges: Vec<RangeHandle>,
    subscribers: HashSet<(SessionId, QueryId)>,
}

/// What one client address holds in a tenant.
#[derive(Default, Clone, Copy)]
struct Usage {
    subscriptions: usize,
    bytes: usize,
}

struct SessionState {
    address: IpAddr,
    /// Each subscription's live query and estimated cost.
    subscriptions: HashMap<QueryId, (Token, usize)>,
    bytes: usize,
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
    by_key: HashMap<Arc<QueryKey>, Token>,
    ranges: RangeIndex<Token>,
    /// Live queries waiting for their first evaluation or a retry.
    unevaluated: HashSet<Token>,
    sessions: HashMap<SessionId, SessionState>,
    /// Per client address; an entry exists while the address holds a subscription.
    addresses: HashMap<IpAddr, Usage>,
    subscriptions: usize,
    bytes: usize,
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
        "SubscriptionsTooLarge: this connection's subscriptions would hold more than {0} \
         bytes (their function paths and arguments); remove some or send smaller arguments"
    )]
    SessionTooLarge(usize),
    #[error(
        "TooManySubscriptions: connections from this client address already hold {0} \
         subscriptions to this tenant, the most one address may hold"
    )]
    AddressFull(usize),
    #[error(
        "SubscriptionsTooLarge: connections from this client address would hold more than \
         {0} bytes of subscriptions to this tenant"
    )]
    AddressTooLarge(usize),
    #[error(
        "TooManySubscriptions: the tenant already has {0} subscriptions across its \
         connections, the most it may hold"
    )]
    TenantFull(usize),
    #[error(
        "SubscriptionsTooLarge: the tenant's subscriptions would hold more than {0} bytes \
         across its connections"
    )]
    TenantTooLarge(usize),
}

/// Why a live session could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("TooManyConnections: the tenant already has {0} live connections, the most it may have")]
pub struct TooManySessions(pub usize);

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

    /// Estimated bytes of the tenant's subscriptions.
    pub fn bytes(&self) -> usize {
        self.registry.lock().bytes
    }

    pub fn stats(&self) -> LiveStats {
        let registry = self.registry.lock();
        let c = &self.counters;
        LiveStats {
            sessions: registry.sessions.len() as u64,
            subscriptions: registry.subscriptions as u64,
            subscription_bytes: registry.bytes as u64,
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
    /// Opens a live session (one per connection) for a client at `address`, starting the
    /// tenant's registry task on first use.
    pub fn live_session(self: &Arc<Self>, address: IpAddr) -> Result<LiveSession, TooManySessions> {
        let live = self.live().clone();
        if live.registry.lock().sessions.len() >= live.limits.max_sessions {
            return Err(TooManySessions(live.limits.max_sessions));
        }
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
                    address,
                    subscriptions: HashMap::new(),
                    bytes: 0,
                    pending: BTreeMap::new(),
                    notify: notify.clone(),
                },
            );
            id
        };
        Ok(LiveSession {
            live,
            id,
            notify,
            published: self.live().published.subscribe(),
        })
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
    /// [`LiveSession::drain`] (at once if an identical query is already live). A refused
    /// subscription leaves nothing behind.
    pub fn add(
        &self,
        query_id: QueryId,
        path: &str,
        args: &Value,
        caller: Caller,
    ) -> Result<(), SubscribeError> {
        let key = QueryKey {
            path: path.trim().to_string(),
            args: nimbus_types::json::encode_text(args),
            caller,
        };
        let mut registry = self.live.registry.lock();
        registry.subscribe(&self.live, self.id, query_id, key)
    }

    /// Re-subscribes every subscription of the session under a new identity (every query
    /// re-runs); returns the ones refused (they are dropped).
    pub fn resubscribe_all(&self, caller: Caller) -> Vec<(QueryId, SubscribeError)> {
        let mut guard = self.live.registry.lock();
        let registry = &mut *guard;
        let current: Vec<(QueryId, Arc<QueryKey>)> = registry
            .sessions
            .get(&self.id)
            .map(|s| {
                s.subscriptions
                    .iter()
                    .filter_map(|(query_id, (token, _))| {
                        Some((*query_id, registry.queries.get(token)?.key.clone()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut refused = Vec::new();
        for (query_id, key) in current {
            registry.unsubscribe(self.id, query_id);
            let key = QueryKey {
                caller,
                ..(*key).clone()
            };
            if let Err(error) = registry.subscribe(&self.live, self.id, query_id, key) {
                refused.push((query_id, error));
            }
        }
        refused
    }

    /// The query IDs subscribed on this session.
    pub fn query_ids(&self) -> Vec<QueryId> {
        self.live
            .registry
            .lock()
            .sessions
            .get(&self.id)
            .map(|s| s.subscriptions.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Whether `query_id` is subscribed on this session.
    pub fn has(&self, query_id: QueryId) -> bool {
        self.live
            .registry
            .lock()
            .sessions
            .get(&self.id)
            .is_some_and(|s| s.subscriptions.contains_key(&query_id))
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
    fn subscribe(
        &mut self,
        live: &LiveQueries,
        session: SessionId,
        query_id: QueryId,
        key: QueryKey,
    ) -> Result<(), SubscribeError> {
        let limits = &live.limits;
        let cost = subscription_cost(&key.path, &key.args);
        let Some(state) = self.sessions.get(&session) else {
            return Ok(()); // unreachable while the session exists
        };
        if state.subscriptions.contains_key(&query_id) {
            return Err(SubscribeError::DuplicateQueryId(query_id));
        }
        if state.subscriptions.len() >= limits.max_subscriptions_per_session {
            return Err(SubscribeError::SessionFull(
                limits.max_subscriptions_per_session,
            ));
        }
        if state.bytes + cost > limits.max_subscription_bytes_per_session {
            return Err(SubscribeError::SessionTooLarge(
                limits.max_subscription_bytes_per_session,
            ));
        }
        let address = state.address;
        let usage = self.addresses.get(&address).copied().unwrap_or_default();
        if usage.subscriptions >= limits.max_subscriptions_per_address {
            return Err(SubscribeError::AddressFull(
                limits.max_subscriptions_per_address,
            ));
        }
        if usage.bytes + cost > limits.max_subscription_bytes_per_address {
            return Err(SubscribeError::AddressTooLarge(
                limits.max_subscription_bytes_per_address,
            ));
        }
        if self.subscriptions >= limits.max_subscriptions_per_tenant {
            return Err(SubscribeError::TenantFull(
                limits.max_subscriptions_per_tenant,
            ));
        }
        if self.bytes + cost > limits.max_subscription_bytes_per_tenant {
            return Err(SubscribeError::TenantTooLarge(
                limits.max_subscription_bytes_per_tenant,
            ));
        }
        let token = match self.by_key.get(&key) {
            Some(token) => *token,
            None => {
                let token = self.next_token;
                self.next_token += 1;
                let key = Arc::new(key);
                self.by_key.insert(key.clone(), token);
                self.queries.insert(
                    token,
                    LiveQuery {
                        key,
                        result: None,
                        ranges: Vec::new(),
                        subscribers: HashSet::new(),
                    },
                );
                self.unevaluated.insert(token);
                live.wake.notify_one();
                token
            }
        };
        let current = self.queries.get_mut(&token).and_then(|q| {
            q.subscribers.insert((session, query_id));
            q.result.clone()
        });
        self.subscriptions += 1;
        self.bytes += cost;
        let usage = self.addresses.entry(address).or_default();
        usage.subscriptions += 1;
        usage.bytes += cost;
        if let Some(state) = self.sessions.get_mut(&session) {
            state.subscriptions.insert(query_id, (token, cost));
            state.bytes += cost;
            if let Some(result) = current {
                // Current at `published_ts`, like everything else the session drains.
                state.pending.insert(query_id, result);
                state.notify.notify_one();
            }
        }
        Ok(())
    }

    fn unsubscribe(&mut self, session: SessionId, query_id: QueryId) -> bool {
        let Some(state) = self.sessions.get_mut(&session) else {
            return false;
        };
        state.pending.remove(&query_id);
        let Some((token, cost)) = state.subscriptions.remove(&query_id) else {
            return false;
        };
        state.bytes -= cost;
        let address = state.address;
        self.subscriptions -= 1;
        self.bytes -= cost;
        if let Some(usage) = self.addresses.get_mut(&address) {
            usage.subscriptions -= 1;
            usage.bytes -= cost;
            if usage.subscriptions == 0 {
                self.addresses.remove(&address);
            }
        }
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
                self.by_key.remove(&*query.key);
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
    let dirty: Vec<(Token, Arc<QueryKey>)> = {
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
            .filter_map(|token| Some((token, registry.queries.get(&token)?.key.clone())))
            .collect()
    };
    let mut evaluations = tokio::task::JoinSet::new();
    for (token, key) in dirty {
        let tenant = tenant.clone();
        let snapshot = snapshot.clone();
        evaluations.spawn(async move {
            let outcome = match crate::execute::decode_args_text(&key.args) {
                Ok(args) => {
                    tenant
                        .evaluate_live(&key.path, &args, key.caller, snapshot)
                        .await
                }
                Err(error) => Err(error),
            };
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

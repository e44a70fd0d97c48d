//! Live queries of one tenant: subscriptions re-run only when a commit writes into what
//! they read.
//!
//! Each distinct query (function, arguments, caller, journal) is one *live query*, shared
//! by every subscriber. Its last evaluation left a read set (index key ranges); those
//! ranges are registered in a [`nimbus_engine::RangeIndex`]. The tenant's registry task
//! (`task.rs`) follows the engine's commit notices: for every key a commit wrote it looks up
//! the ranges containing it and re-evaluates just those live queries, at the round's
//! snapshot; everything else is declared current through that snapshot at once. Cost per
//! commit therefore grows with the number of intersecting queries, not with the number of
//! subscriptions, and a slow query delays only its own subscribers.
//!
//! **Consistency.** Every Transition a session sends shows one snapshot: its results are
//! all correct at its timestamp (`registry.rs` says how, with each query's validity).
//!
//! **Pagination.** A paginated query's page keeps its end across re-runs: the end cursor of
//! its first evaluation becomes its journal (sent to the client with each result, and back
//! in `Add` on reconnect), and every later evaluation pages up to it.
//!
//! **Bounds.** Sessions per tenant are capped ([`LiveLimits::max_sessions`]). Subscriptions
//! are capped in number and in estimated bytes per session, per client address and per
//! tenant: an add beyond a cap fails that query with a clear message and is not kept. A
//! subscription's estimated cost is [`subscription_cost`]: its key is held once (shared by
//! identical subscriptions), and its read set's bounds usually repeat its arguments. A
//! session's undelivered updates are coalesced per query — a slow consumer holds at most
//! one pending result per subscription, never an unbounded queue. Evaluations run on the
//! tenant's bounded JS worker slots, at most one per live query at a time.

mod registry;
mod task;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nimbus_types::Value;
use parking_lot::Mutex;
use tokio::sync::{watch, Notify};

use crate::execute::{Caller, FunctionFailure};
use crate::tenant::Tenant;
pub use registry::Drained;
use registry::{QueryKey, Registry, SessionId, SessionState};

/// A session's own name for one of its subscriptions (the protocol's `queryId`).
pub type QueryId = u32;

/// Bounds of live queries. Bytes are estimated with [`subscription_cost`].
#[derive(Debug, Clone, Copy)]
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
#[derive(Debug, Clone)]
pub struct LiveResult {
    pub result: Result<Value, FunctionFailure>,
    pub log_lines: Vec<String>,
    /// The journal to send with it (a paginated query's end cursor), if any.
    pub journal: Option<String>,
    /// The value's convex-JSON, rendered by the first subscriber's send and reused by the
    /// others (`None` inside: it could not be rendered as raw JSON; each renders its own).
    rendered: std::sync::OnceLock<Option<Box<serde_json::value::RawValue>>>,
}

impl PartialEq for LiveResult {
    fn eq(&self, other: &Self) -> bool {
        self.result == other.result
            && self.log_lines == other.log_lines
            && self.journal == other.journal
    }
}

impl LiveResult {
    pub fn new(
        result: Result<Value, FunctionFailure>,
        log_lines: Vec<String>,
        journal: Option<String>,
    ) -> LiveResult {
        LiveResult {
            result,
            log_lines,
            journal,
            rendered: std::sync::OnceLock::new(),
        }
    }

    /// The value as convex-JSON text, rendered once however many subscribers it goes to;
    /// `None` for a failure.
    pub fn value_json(&self) -> Option<&serde_json::value::RawValue> {
        let value = self.result.as_ref().ok()?;
        self.rendered
            .get_or_init(|| {
                serde_json::value::RawValue::from_string(nimbus_types::json::encode_text(value))
                    .ok()
            })
            .as_deref()
    }
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
    /// Evaluations started by the last round.
    pub last_round_evaluations: u64,
    /// Query results sent to clients.
    pub updates_sent: u64,
    /// Sessions closed by the server (slow consumer, protocol error, tenant deleted).
    pub dropped_sessions: u64,
    /// Timestamp of the latest round: every commit up to it was matched against the
    /// subscriptions (a query still being evaluated is current at an earlier one).
    pub published_ts: u64,
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
    /// Its bounds; the tenant-wide ones change with the tenant's limits.
    limits: Mutex<LiveLimits>,
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
            limits: Mutex::new(limits),
            wake: Notify::new(),
            published: watch::channel(0).0,
            started: std::sync::Once::new(),
            counters: Counters::default(),
        }
    }

    fn limits(&self) -> LiveLimits {
        *self.limits.lock()
    }

    /// Changes the tenant-wide bounds: live connections, and subscriptions over all of
    /// them. Connections and subscriptions already open stay; new ones are refused while
    /// the tenant is at or over a lowered bound.
    pub(crate) fn set_tenant_limits(&self, sessions: usize, subscriptions: usize) {
        let mut limits = self.limits.lock();
        limits.max_sessions = sessions.max(1);
        limits.max_subscriptions_per_tenant = subscriptions.max(1);
    }

    /// When the next query waiting out a transient failure is due.
    fn next_retry(&self) -> Option<std::time::Instant> {
        let registry = self.registry.lock();
        registry
            .due
            .iter()
            .filter_map(|token| registry.queries.get(token)?.retry_at)
            .min()
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
        let max_sessions = live.limits().max_sessions;
        if live.registry.lock().sessions.len() >= max_sessions {
            return Err(TooManySessions(max_sessions));
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
            tokio::spawn(task::run(
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
            let delivered_ts = registry.published_ts;
            registry.sessions.insert(
                id,
                SessionState {
                    address,
                    subscriptions: HashMap::new(),
                    bytes: 0,
                    pending: BTreeMap::new(),
                    delivered_ts,
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

/// One subscriber (a WebSocket connection): its subscriptions and undelivered results.
/// Dropping it removes its subscriptions.
pub struct LiveSession {
    live: Arc<LiveQueries>,
    id: SessionId,
    notify: Arc<Notify>,
    published: watch::Receiver<u64>,
}

impl LiveSession {
    /// Subscribes `query_id` to a query (with the client's journal, for a paginated one).
    /// Its first result arrives through [`LiveSession::drain`] (at once if an identical
    /// query is already live). A refused subscription leaves nothing behind.
    pub fn add(
        &self,
        query_id: QueryId,
        path: &str,
        args: &Value,
        caller: Caller,
        journal: Option<String>,
    ) -> Result<(), SubscribeError> {
        let key = QueryKey {
            path: path.trim().to_string(),
            args: nimbus_types::json::encode_text(args),
            caller,
            journal,
        };
        let mut registry = self.live.registry.lock();
        registry.subscribe(&self.live.limits(), &self.live.wake, self.id, query_id, key)
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
                caller: caller.clone(),
                ..(*key).clone()
            };
            if let Err(error) =
                registry.subscribe(&self.live.limits(), &self.live.wake, self.id, query_id, key)
            {
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

    /// Takes the session's undelivered results, all correct at the returned timestamp; or
    /// none, with the timestamp delivered last, while some of them cannot be shown at one
    /// timestamp yet (a query the session subscribes to is still being evaluated).
    pub fn drain(&self) -> Drained {
        self.live.registry.lock().drain(self.id)
    }

    /// Notified when the session may have something to drain.
    pub fn notifier(&self) -> Arc<Notify> {
        self.notify.clone()
    }

    /// Changes with every round (a commit at `ts` can be reflected in a session once a
    /// round reached `ts`; [`LiveSession::drain`] says when it is).
    pub fn published_watch(&self) -> watch::Receiver<u64> {
        self.published.clone()
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

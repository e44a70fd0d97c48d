//! The registry of one tenant's live queries: who subscribes to what, what each query last
//! returned and until when that result is known to hold, and what each session has not
//! taken yet. Everything here runs under the registry's lock; nothing here waits.
//!
//! **Validity.** A live query's result was computed at `computed_ts` and is known correct
//! through `valid_ts`: every commit up to `valid_ts` was matched against its read set and
//! none touched it. A query not being (re-)evaluated is valid through the latest round's
//! timestamp; one being evaluated stays valid only through the round before the commit that
//! made it dirty.
//!
//! **Consistency.** A session may show the client a new timestamp `T` only if every result
//! the client will then hold is correct at `T`: `T` is at most the `valid_ts` of each of its
//! subscriptions, and at least the `computed_ts` of each result it delivers. So a session
//! delivers its pending results all together, at `T` = the least `valid_ts` of its
//! subscriptions, once every pending result was computed at or before that `T`; until then
//! it holds them. A slow evaluation therefore delays only the sessions subscribed to it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use nimbus_engine::{RangeHandle, RangeIndex};
use tokio::sync::Notify;

use super::{subscription_cost, LiveLimits, LiveResult, QueryId, SubscribeError};
use crate::execute::Caller;

/// The registry's name for one distinct live query.
pub(super) type Token = u64;
/// One subscriber session (a WebSocket).
pub(super) type SessionId = u64;

/// What makes two subscriptions the same live query. Held once per live query (the
/// registry's maps share it); the arguments are kept only as text and decoded for each
/// evaluation.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) struct QueryKey {
    pub path: String,
    /// convex-JSON text of the arguments.
    pub args: String,
    pub caller: Caller,
    /// The journal the client subscribed with (a paginated query's end cursor).
    pub journal: Option<String>,
}

pub(super) struct LiveQuery {
    pub key: Arc<QueryKey>,
    /// The journal the next evaluation uses: the subscription's, then the first page's end
    /// (so the page keeps its boundary as rows come and go).
    pub journal: Option<String>,
    /// `None` until the first evaluation is published.
    pub result: Option<Arc<LiveResult>>,
    pub computed_ts: u64,
    pub valid_ts: u64,
    pub ranges: Vec<RangeHandle>,
    pub subscribers: HashSet<(SessionId, QueryId)>,
    /// An evaluation is running (its result arrives through the registry task).
    pub evaluating: bool,
    /// A commit touched the query while it was being evaluated: evaluate again.
    pub touched_while_evaluating: bool,
    /// Transient failures in a row (overload, a stale snapshot): the retry waits longer.
    pub failures: u32,
    /// Not evaluated again before this (after a transient failure).
    pub retry_at: Option<std::time::Instant>,
}

/// What one client address holds in a tenant.
#[derive(Default, Clone, Copy)]
pub(super) struct Usage {
    pub subscriptions: usize,
    pub bytes: usize,
}

pub(super) struct SessionState {
    pub address: IpAddr,
    /// Each subscription's live query and estimated cost.
    pub subscriptions: HashMap<QueryId, (Token, usize)>,
    pub bytes: usize,
    /// Results not yet taken by the session, newest per query.
    pub pending: BTreeMap<QueryId, Arc<LiveResult>>,
    /// The timestamp of what the session delivered last.
    pub delivered_ts: u64,
    pub notify: Arc<Notify>,
}

#[derive(Default)]
pub(super) struct Registry {
    /// The timestamp of the latest round: every commit up to it was matched.
    pub published_ts: u64,
    /// The code the live results were computed with; new code re-runs every query.
    pub code: nimbus_runtime::CodeId,
    pub queries: HashMap<Token, LiveQuery>,
    pub by_key: HashMap<Arc<QueryKey>, Token>,
    pub ranges: RangeIndex<Token>,
    /// Live queries due for an evaluation (new, retried, or touched while evaluating).
    pub due: HashSet<Token>,
    pub sessions: HashMap<SessionId, SessionState>,
    /// Per client address; an entry exists while the address holds a subscription.
    pub addresses: HashMap<IpAddr, Usage>,
    pub subscriptions: usize,
    pub bytes: usize,
    pub next_token: Token,
    pub next_session: SessionId,
}

/// What a session takes from the registry: results at one consistent timestamp.
#[derive(Debug, Default)]
pub struct Drained {
    /// Every subscription of the session is current at this timestamp.
    pub ts: u64,
    pub updates: Vec<(QueryId, Arc<LiveResult>)>,
}

impl Registry {
    pub fn subscribe(
        &mut self,
        limits: &LiveLimits,
        wake: &Notify,
        session: SessionId,
        query_id: QueryId,
        key: QueryKey,
    ) -> Result<(), SubscribeError> {
        let cost =
            subscription_cost(&key.path, &key.args) + key.journal.as_ref().map_or(0, String::len);
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
                        journal: key.journal.clone(),
                        key,
                        result: None,
                        computed_ts: 0,
                        valid_ts: 0,
                        ranges: Vec::new(),
                        subscribers: HashSet::new(),
                        evaluating: false,
                        touched_while_evaluating: false,
                        failures: 0,
                        retry_at: None,
                    },
                );
                self.due.insert(token);
                wake.notify_one();
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
                state.pending.insert(query_id, result);
                state.notify.notify_one();
            }
        }
        Ok(())
    }

    pub fn unsubscribe(&mut self, session: SessionId, query_id: QueryId) -> bool {
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
            self.due.remove(&token);
        }
        true
    }

    /// Takes the session's pending results if they can all be shown at one timestamp (see
    /// the module doc); otherwise leaves them and answers the last timestamp delivered.
    pub fn drain(&mut self, session: SessionId) -> Drained {
        let published_ts = self.published_ts;
        let queries = &self.queries;
        let Some(state) = self.sessions.get_mut(&session) else {
            return Drained::default();
        };
        // The latest timestamp every result the client holds or will hold is correct at.
        let mut ts = published_ts;
        for (token, _) in state.subscriptions.values() {
            if let Some(query) = queries.get(token) {
                if query.result.is_some() {
                    ts = ts.min(query.valid_ts);
                }
            }
        }
        let deliverable = ts >= state.delivered_ts
            && state.pending.keys().all(|query_id| {
                state
                    .subscriptions
                    .get(query_id)
                    .and_then(|(token, _)| queries.get(token))
                    .is_some_and(|query| query.computed_ts <= ts)
            });
        if !deliverable {
            return Drained {
                ts: state.delivered_ts,
                updates: Vec::new(),
            };
        }
        state.delivered_ts = ts;
        Drained {
            ts,
            updates: std::mem::take(&mut state.pending).into_iter().collect(),
        }
    }
}

//! Subscription fan-out: many subscriptions across many tenants over real WebSockets,
//! speaking the Convex sync protocol, while an open-loop writer commits into them.
//!
//! Every tenant of the targets file gets `connections` sockets; each seeded product gets one
//! `products:get` subscription (distinct ranges: each commit intersects exactly one), and
//! the tenant's first socket also subscribes to its shop's `dashboard:summary` (orders by
//! status), which no restock touches: it must never be re-evaluated. The
//! writer restocks random products at `rate` commits/s over HTTP. Latency is matched per
//! commit by the new stock value the mutation returns and the subscription update carries:
//! from the mutation's intended send time (open loop) to the update's arrival, and from the
//! mutation's acknowledgement to the update's arrival (0 when the update came first).
//! Evaluations per commit come from the tenants' own counters (`/admin/.../stats`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::{json, Value as Json};
use tokio_tungstenite::tungstenite::Message;

use crate::workload::Target;

/// (tenant index, product index, stock after the commit)
type CommitKey = (usize, usize, i64);

#[derive(Default)]
struct Matcher {
    /// Commits acknowledged, waiting for their update: (intended send, acknowledged).
    sent: HashMap<CommitKey, (Instant, Instant)>,
    /// Updates that arrived before their commit's acknowledgement.
    arrived: HashMap<CommitKey, Instant>,
    send_to_notify: Option<Histogram<u64>>,
    ack_to_notify: Option<Histogram<u64>>,
    notified_before_ack: u64,
    measuring: bool,
}

impl Matcher {
    fn record(&mut self, intended: Instant, acked: Instant, arrived: Instant) {
        if !self.measuring {
            return;
        }
        let us = |d: Duration| (d.as_micros() as u64).max(1);
        if let Some(h) = &mut self.send_to_notify {
            let _ = h.record(us(arrived.saturating_duration_since(intended)));
        }
        if arrived < acked {
            self.notified_before_ack += 1;
        }
        if let Some(h) = &mut self.ack_to_notify {
            let _ = h.record(us(arrived.saturating_duration_since(acked)));
        }
    }

    fn on_ack(&mut self, key: CommitKey, intended: Instant, acked: Instant) {
        match self.arrived.remove(&key) {
            Some(arrived) => self.record(intended, acked, arrived),
            None => {
                self.sent.insert(key, (intended, acked));
            }
        }
    }

    fn on_update(&mut self, key: CommitKey, arrived: Instant) {
        match self.sent.remove(&key) {
            Some((intended, acked)) => self.record(intended, acked, arrived),
            None => {
                self.arrived.insert(key, arrived);
            }
        }
    }
}

pub(crate) struct LiveOptions {
    pub(crate) base: String,
    pub(crate) admin_key: String,
    pub(crate) targets: Vec<Target>,
    pub(crate) connections_per_tenant: usize,
    pub(crate) rate: f64,
    pub(crate) warmup: Duration,
    pub(crate) duration: Duration,
}

async fn tenant_stats(client: &reqwest::Client, o: &LiveOptions, tenant: &str) -> Result<Json> {
    let response = client
        .get(format!("{}/admin/tenants/{tenant}/stats", o.base))
        .bearer_auth(&o.admin_key)
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("stats of {tenant}: {}", response.status());
    }
    Ok(response.json::<Json>().await?["live"].clone())
}

async fn live_totals(client: &reqwest::Client, o: &LiveOptions) -> Result<(u64, u64, u64)> {
    let (mut evaluations, mut commits, mut subscriptions) = (0, 0, 0);
    for t in &o.targets {
        let s = tenant_stats(client, o, &t.name).await?;
        evaluations += s["evaluations"].as_u64().unwrap_or(0);
        commits += s["commitsMatched"].as_u64().unwrap_or(0);
        subscriptions += s["subscriptions"].as_u64().unwrap_or(0);
    }
    Ok((evaluations, commits, subscriptions))
}

fn stock_of(value: &Json) -> Option<i64> {
    value.get("stock").and_then(Json::as_f64).map(|s| s as i64)
}

/// The query ID of a socket's dashboard subscription (product subscriptions use the
/// product's index, always smaller).
const DASHBOARD_QUERY_ID: u32 = u32::MAX;

/// One socket's subscriptions.
struct SocketPlan {
    url: String,
    tenant: usize,
    /// (query ID, product index)
    products: Vec<(u32, usize)>,
    /// The shop whose dashboard this socket subscribes to.
    dashboard_shop: Option<String>,
}

/// Opens one socket, subscribes as planned, and feeds updates to the matcher. Dashboard
/// updates after the first result are counted in `dashboard_updates`.
async fn subscriber(
    plan: SocketPlan,
    matcher: Arc<Mutex<Matcher>>,
    ready: tokio::sync::mpsc::Sender<()>,
    deadline: Instant,
    product_ids: Arc<Vec<Vec<String>>>,
    dashboard_updates: Arc<std::sync::atomic::AtomicU64>,
) -> Result<u64> {
    let SocketPlan {
        url,
        tenant,
        products,
        dashboard_shop,
    } = plan;
    let ws_url = format!("{}/api/1.48.0/sync", url.replacen("http", "ws", 1));
    let (mut socket, _) = tokio_tungstenite::connect_async(&ws_url)
        .await
        .with_context(|| format!("connecting to {ws_url}"))?;
    let connect = json!({"type": "Connect", "sessionId": format!("00000000-0000-4000-8000-{:012x}", rand::random::<u32>()),
        "connectionCount": 0, "lastCloseReason": null, "clientTs": 0});
    socket.send(Message::text(connect.to_string())).await?;
    let mut adds: Vec<Json> = products
        .iter()
        .map(|(query_id, p)| {
            json!({"type": "Add", "queryId": query_id, "udfPath": "products:get",
            "args": [{"productId": product_ids[tenant][*p]}]})
        })
        .collect();
    if let Some(shop) = &dashboard_shop {
        adds.push(json!({"type": "Add", "queryId": DASHBOARD_QUERY_ID,
            "udfPath": "dashboard:summary", "args": [{"shopId": shop}]}));
    }
    socket
        .send(Message::text(
            json!({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": adds}).to_string(),
        ))
        .await?;
    let by_query: HashMap<u64, usize> = products.iter().map(|(q, p)| (u64::from(*q), *p)).collect();
    let mut initialized = false;
    let mut updates = 0u64;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = match tokio::time::timeout(left, socket.next()).await {
            Err(_) => break,
            Ok(None) => bail!("the server closed a subscriber socket"),
            Ok(Some(m)) => m?,
        };
        let Message::Text(text) = message else {
            continue;
        };
        let arrived = Instant::now();
        let message: Json = serde_json::from_str(text.as_str())?;
        match message["type"].as_str() {
            Some("Transition") => {
                let first_results = !initialized;
                if !initialized && message["endVersion"]["querySet"] == 1 {
                    initialized = true;
                    let _ = ready.send(()).await;
                }
                let mut m = matcher.lock();
                for modification in message["modifications"].as_array().into_iter().flatten() {
                    if modification["queryId"].as_u64() == Some(u64::from(DASHBOARD_QUERY_ID)) {
                        match modification["type"].as_str() {
                            Some("QueryFailed") => {
                                bail!("the dashboard subscription failed: {modification}")
                            }
                            Some("QueryUpdated") if !first_results => {
                                dashboard_updates
                                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            _ => {}
                        }
                        continue;
                    }
                    let Some(product) = modification["queryId"]
                        .as_u64()
                        .and_then(|q| by_query.get(&q))
                    else {
                        continue;
                    };
                    match modification["type"].as_str() {
                        Some("QueryUpdated") => {
                            updates += 1;
                            if let Some(stock) = stock_of(&modification["value"]) {
                                m.on_update((tenant, *product, stock), arrived);
                            }
                        }
                        Some("QueryFailed") => bail!("a subscription failed: {modification}"),
                        _ => {}
                    }
                }
            }
            Some("FatalError") => bail!("FatalError from the server: {message}"),
            _ => {}
        }
    }
    let _ = socket.close(None).await;
    Ok(updates)
}

pub(crate) async fn run(o: LiveOptions) -> Result<Json> {
    if o.targets.is_empty() {
        bail!("no targets");
    }
    let product_ids: Arc<Vec<Vec<String>>> =
        Arc::new(o.targets.iter().map(|t| t.products.clone()).collect());
    let subscriptions: usize = product_ids.iter().map(Vec::len).sum();
    if subscriptions == 0 {
        bail!("the targets have no products to subscribe to (provision with --products)");
    }
    let client = crate::provision::client()?;
    let matcher = Arc::new(Mutex::new(Matcher {
        send_to_notify: Some(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        ack_to_notify: Some(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        ..Matcher::default()
    }));
    let total = o.warmup + o.duration;
    let socket_deadline =
        Instant::now() + Duration::from_secs(120) + total + Duration::from_secs(5);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(1024);
    let mut sockets = tokio::task::JoinSet::new();
    let mut socket_count = 0usize;
    let mut dashboards = 0u64;
    let dashboard_updates = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for (t, target) in o.targets.iter().enumerate() {
        let per = o
            .connections_per_tenant
            .clamp(1, target.products.len().max(1));
        for c in 0..per {
            let mine: Vec<(u32, usize)> = (0..target.products.len())
                .filter(|p| p % per == c)
                .map(|p| (p as u32, p))
                .collect();
            if mine.is_empty() {
                continue;
            }
            socket_count += 1;
            let dashboard_shop = if c == 0 { target.shop.clone() } else { None };
            dashboards += u64::from(dashboard_shop.is_some());
            let plan = SocketPlan {
                url: target.url.clone(),
                tenant: t,
                products: mine,
                dashboard_shop,
            };
            sockets.spawn(subscriber(
                plan,
                matcher.clone(),
                ready_tx.clone(),
                socket_deadline,
                product_ids.clone(),
                dashboard_updates.clone(),
            ));
        }
    }
    drop(ready_tx);
    eprintln!("live: {subscriptions} subscriptions over {socket_count} sockets on {} tenants; waiting for first results", o.targets.len());
    let subscribed_at = Instant::now();
    for i in 0..socket_count {
        match tokio::time::timeout(Duration::from_secs(120), ready_rx.recv()).await {
            Ok(Some(())) => {}
            _ => bail!("only {i} of {socket_count} sockets got their first results within 120 s"),
        }
    }
    let setup_ms = subscribed_at.elapsed().as_millis() as u64;
    eprintln!(
        "live: all subscribed in {setup_ms} ms; writing at {} commits/s",
        o.rate
    );

    // The open-loop writer: restock a random product of a random tenant every 1/rate s.
    let interval = Duration::from_secs_f64(1.0 / o.rate.max(0.1));
    let start = Instant::now();
    let mut before = None;
    let mut writers = tokio::task::JoinSet::new();
    let mut errors = 0u64;
    let mut commits = 0u64;
    let mut next = start;
    let mut last_progress = start;
    while next < start + total {
        let now = Instant::now();
        if now >= start + o.warmup && before.is_none() {
            matcher.lock().measuring = true;
            before = Some((live_totals(&client, &o).await?, Instant::now()));
        }
        if next > now {
            tokio::time::sleep(next - now).await;
        }
        let intended = next;
        next += interval;
        let t = rand::random::<usize>() % o.targets.len();
        let p = rand::random::<usize>() % o.targets[t].products.len();
        let (http, url, product, shared) = (
            client.clone(),
            o.targets[t].url.clone(),
            o.targets[t].products[p].clone(),
            matcher.clone(),
        );
        writers.spawn(async move {
            let body = json!({"path": "products:restock", "format": "convex_encoded_json",
                "args": [{"productId": product, "qty": 1}]});
            let response = http
                .post(format!("{url}/api/mutation"))
                .json(&body)
                .send()
                .await?;
            let acked = Instant::now();
            let value: Json = response.json().await?;
            if value["status"] != "success" {
                return Err(anyhow!("restock failed: {value}"));
            }
            let stock = value["value"]
                .as_f64()
                .ok_or_else(|| anyhow!("restock returned {value}"))? as i64;
            shared.lock().on_ack((t, p, stock), intended, acked);
            Ok(())
        });
        commits += 1;
        while let Some(done) = writers.try_join_next() {
            if !matches!(done, Ok(Ok(()))) {
                errors += 1;
            }
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            let m = matcher.lock();
            eprintln!(
                "live: {:>4.0}s  commits {commits}  matched {}  errors {errors}",
                start.elapsed().as_secs_f64(),
                m.send_to_notify.as_ref().map_or(0, Histogram::len)
            );
        }
    }
    while let Some(done) = writers.join_next().await {
        if !matches!(done, Ok(Ok(()))) {
            errors += 1;
        }
    }
    // Let the last updates arrive, then stop measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = live_totals(&client, &o).await?;
    matcher.lock().measuring = false;
    sockets.abort_all();
    let ((eval0, commits0, subs0), t0) =
        before.ok_or_else(|| anyhow!("the run ended before its warm-up"))?;
    let (eval1, commits1, _) = after;
    let measured_secs = t0.elapsed().as_secs_f64();
    let m = matcher.lock();
    let unmatched = m.sent.len() as u64;
    let hist = |h: &Option<Histogram<u64>>| {
        h.as_ref().map_or(json!(null), |h| {
            json!({"count": h.len(), "p50_us": h.value_at_quantile(0.5), "p95_us": h.value_at_quantile(0.95),
                "p99_us": h.value_at_quantile(0.99), "max_us": h.max()})
        })
    };
    if errors > 0 {
        bail!("{errors} of {commits} restock mutations failed");
    }
    let commits_matched = commits1.saturating_sub(commits0);
    let evaluations = eval1.saturating_sub(eval0);
    Ok(json!({
        "schema_version": 2,
        "kind": "live",
        "tenants": o.targets.len(),
        "sockets": socket_count,
        "subscriptions": subs0,
        "subscribe_ms": setup_ms,
        "rate": o.rate,
        "measured_secs": measured_secs,
        "commits_sent": commits,
        "errors": errors,
        "commits_matched_by_server": commits_matched,
        "evaluations": evaluations,
        "evaluations_per_commit": if commits_matched == 0 { json!(null) } else { json!(evaluations as f64 / commits_matched as f64) },
        "send_to_notify": hist(&m.send_to_notify),
        "ack_to_notify": hist(&m.ack_to_notify),
        "notified_before_ack": m.notified_before_ack,
        "dashboard_subscriptions": dashboards,
        "dashboard_updates": dashboard_updates.load(std::sync::atomic::Ordering::Relaxed),
        "unmatched_commits": unmatched,
    }))
}

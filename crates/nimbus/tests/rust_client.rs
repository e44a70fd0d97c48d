//! The official Rust client (`convex` crate) against a real `nimbus serve`: subscribe to a
//! query of `examples/pos`, see another client's mutation, run its own mutation, resume
//! after the server closes its socket, and get the answer to mutations that fail (with a
//! `ConvexError` and with a plain error).
//!
//! The Rust client replaces the URL path with `/api/sync`, so it reaches the tenant by host
//! name: `http://rust-live.localhost:<port>`. That name must resolve to 127.0.0.1; when it
//! does not, the test adds it to `/etc/hosts` (CI runs as root) or fails saying so.
//! Pushing `examples/pos` uses the official CLI from `examples/pos/node_modules`
//! (`scripts/test.sh` installs it before the Rust tests).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{
    admin, args, client, drain, ensure_host_resolves, reconnected, repo_root, run_bounded,
    start_server, value, WAIT,
};
use convex::{FunctionResult, Value};
use futures::StreamExt;
use serde_json::json;

const TENANT: &str = "rust-live";

fn push_pos(url: &str, admin_key: &str) {
    common::deploy(&repo_root().join("examples/pos"), url, admin_key);
}

fn field(v: &Value, name: &str) -> f64 {
    match v {
        Value::Object(fields) => match fields.get(name) {
            Some(Value::Float64(f)) => *f,
            Some(Value::Int64(i)) => *i as f64,
            other => panic!("{name} is {other:?}"),
        },
        other => panic!("not an object: {other:?}"),
    }
}

/// The next subscription value for which `open_orders` is `expected`.
async fn next_with_open_orders(sub: &mut convex::QuerySubscription, expected: f64) -> Value {
    tokio::time::timeout(WAIT, async {
        loop {
            let v = value(sub.next().await.expect("the subscription ended"));
            if field(&v, "openOrders") == expected {
                return v;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no update with openOrders = {expected}"))
}

/// How long a failed mutation may take to be answered before the test calls it a hang. The
/// answer normally takes milliseconds (the test prints it); the bound is loose because CI
/// machines are shared, and a hang is for ever.
const FAILED_MUTATION_LIMIT: Duration = Duration::from_secs(10);

/// The whole scenario's bound. A hang must fail the test, never stall CI.
const SCENARIO_LIMIT: Duration = Duration::from_secs(180);

/// The scenario runs on its own runtime under a watchdog (`common::run_bounded` says why:
/// `convex` 0.10.4's socket worker can spin, and a hang must fail the test, never stall CI).
#[test]
fn official_rust_client_subscribes_mutates_and_reconnects() {
    run_bounded("rust_client", SCENARIO_LIMIT, scenario());
}

async fn scenario() {
    let server = start_server().await;
    let created = admin(
        &server,
        reqwest::Method::POST,
        "/admin/tenants",
        Some(json!({"name": TENANT})),
    )
    .await;
    let key = created["adminKey"].as_str().unwrap().to_string();
    eprintln!("rust_client: tenant created; pushing examples/pos");
    let path_url = format!("http://127.0.0.1:{}/t/{TENANT}", server.port);
    push_pos(&path_url, &key);
    let host = format!("{TENANT}.localhost");
    ensure_host_resolves(&host);
    let url = format!("http://{host}:{}", server.port);

    eprintln!("rust_client: pushed; connecting to {url}");
    let (mut subscriber, mut subscriber_states) = client(&url).await;
    let (mut other, mut other_states) = client(&url).await;
    let shop = value(
        other
            .mutation(
                "shops:create",
                args(&[("name", Value::String("Rust shop".into()))]),
            )
            .await
            .unwrap(),
    );
    let product = value(
        other
            .mutation(
                "products:add",
                args(&[
                    ("shopId", shop.clone()),
                    ("name", Value::String("Tea".into())),
                    ("sku", Value::String("TEA".into())),
                    ("priceCents", Value::Float64(300.0)),
                    ("stock", Value::Float64(100.0)),
                ]),
            )
            .await
            .unwrap(),
    );
    let order = |qty: f64| {
        args(&[
            ("shopId", shop.clone()),
            (
                "items",
                Value::Array(vec![Value::Object(args(&[
                    ("productId", product.clone()),
                    ("qty", Value::Float64(qty)),
                ]))]),
            ),
        ])
    };

    eprintln!("rust_client: seeded; subscribing");
    let mut summary = subscriber
        .subscribe("dashboard:summary", args(&[("shopId", shop.clone())]))
        .await
        .unwrap();
    next_with_open_orders(&mut summary, 0.0).await;

    // Another client's mutation reaches the subscription.
    value(other.mutation("orders:create", order(2.0)).await.unwrap());
    let v = next_with_open_orders(&mut summary, 1.0).await;
    assert_eq!(field(&v, "openTotalCents"), 600.0);

    // The subscriber's own mutation: it resolves, and the subscription reflects it.
    value(
        subscriber
            .mutation("orders:create", order(1.0))
            .await
            .unwrap(),
    );
    next_with_open_orders(&mut summary, 2.0).await;

    // The server closes every socket of the tenant; the client reconnects and resumes.
    drain(&mut subscriber_states);
    drain(&mut other_states);
    let closed = admin(
        &server,
        reqwest::Method::POST,
        &format!("/admin/tenants/{TENANT}/disconnect"),
        None,
    )
    .await;
    assert!(closed["sessions"].as_u64().unwrap() >= 2, "{closed}");
    reconnected(&mut subscriber_states).await;
    reconnected(&mut other_states).await;
    value(other.mutation("orders:create", order(1.0)).await.unwrap());
    next_with_open_orders(&mut summary, 3.0).await;
    value(
        subscriber
            .mutation("orders:create", order(1.0))
            .await
            .unwrap(),
    );
    next_with_open_orders(&mut summary, 4.0).await;

    let stats = admin(
        &server,
        reqwest::Method::GET,
        &format!("/admin/tenants/{TENANT}/stats"),
        None,
    )
    .await;
    assert!(
        stats["live"]["droppedSessions"].as_u64().unwrap() >= 2,
        "{stats}"
    );

    // Failed mutations get their answer (issue 17). `convex` 0.10.4 completes a mutation
    // that failed with `errorData` (a `ConvexError`) only at the next Transition: the server
    // must send one even though nothing changed, or the caller waits for ever. Both clients
    // are tried: `other` has no subscription, `subscriber` has one whose result stays put.
    for (who, client) in [("other", &mut other), ("subscriber", &mut subscriber)] {
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(
            FAILED_MUTATION_LIMIT,
            client.mutation("orders:create", order(1_000.0)),
        )
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{who}: a mutation throwing ConvexError got no answer in {FAILED_MUTATION_LIMIT:?}"
            )
        })
        .unwrap();
        eprintln!(
            "rust_client: {who}: ConvexError answered in {:?}",
            started.elapsed()
        );
        match outcome {
            FunctionResult::ConvexError(error) => {
                let Value::Object(data) = &error.data else {
                    panic!("{who}: errorData is not an object: {:?}", error.data);
                };
                assert_eq!(
                    data.get("code"),
                    Some(&Value::String("OUT_OF_STOCK".into())),
                    "{who}: {data:?}"
                );
                assert_eq!(data.get("requested"), Some(&Value::Float64(1_000.0)));
                assert_eq!(data.get("productId"), Some(&product));
                assert!(
                    matches!(data.get("available"), Some(Value::Float64(n)) if *n < 1_000.0),
                    "{who}: {data:?}"
                );
            }
            other => panic!("{who}: expected a ConvexError, got {other:?}"),
        }

        // A failure without errorData (here the argument validator's): completed at once.
        let started = std::time::Instant::now();
        let mut bad = order(1.0);
        bad.insert("shopId".into(), Value::String("not an id".into()));
        let outcome =
            tokio::time::timeout(FAILED_MUTATION_LIMIT, client.mutation("orders:create", bad))
                .await
                .unwrap_or_else(|_| panic!("{who}: a failing mutation got no answer"))
                .unwrap();
        eprintln!(
            "rust_client: {who}: plain error answered in {:?}",
            started.elapsed()
        );
        match outcome {
            FunctionResult::ErrorMessage(message) => {
                assert!(message.contains("shopId"), "{who}: {message}")
            }
            other => panic!("{who}: expected an error message, got {other:?}"),
        }
    }
    // Nothing was written: the subscription still shows four open orders, and the next
    // successful mutation still reaches it.
    value(other.mutation("orders:create", order(1.0)).await.unwrap());
    next_with_open_orders(&mut summary, 5.0).await;

    // Teardown order matters (see the test's doc comment): the clients go first, while the
    // server still answers, and their tasks get a moment to be cancelled; then the server.
    drop(summary);
    drop(subscriber);
    drop(other);
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(server);
    eprintln!("rust_client: done");
}

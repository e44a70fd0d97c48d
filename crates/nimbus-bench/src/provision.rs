//! Getting targets ready for load: seeding a tenant that has `examples/pos`, creating many
//! tenants through the admin API (optionally pushing code to some of them by replaying the
//! official CLI's `start_push` request), and setting up the equivalent PocketBase
//! collections.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::{json, Value as Json};

use crate::workload::{check_local, Target};

/// Every provisioning step gives up after this long.
const PROVISION_DEADLINE: Duration = Duration::from_secs(3600);

pub(crate) fn client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?)
}

/// Runs `job(0..count)` with at most `concurrency` at a time, printing `label`'s progress
/// once a second on stderr. Stops at the first error.
pub(crate) async fn bounded<T, F, Fut>(
    label: &str,
    count: usize,
    concurrency: usize,
    job: F,
) -> Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    let job = Arc::new(job);
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..concurrency.clamp(1, count.max(1)) {
        let (job, next, done, stop) = (job.clone(), next.clone(), done.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                match job(i).await {
                    Ok(value) => out.push((i, value)),
                    Err(e) => {
                        stop.store(true, Ordering::Relaxed);
                        return Err(e.context(format!("item {i}")));
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(out)
        }));
    }
    let started = Instant::now();
    let mut last_print = Instant::now();
    while !workers.iter().all(|w| w.is_finished()) {
        if started.elapsed() > PROVISION_DEADLINE {
            stop.store(true, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            let n = done.load(Ordering::Relaxed);
            eprintln!(
                "[{:>3}s] {label}: {n}/{count} ({:.0}/s)",
                started.elapsed().as_secs(),
                n as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    let mut results: Vec<Option<T>> = (0..count).map(|_| None).collect();
    for worker in workers {
        for (i, value) in worker.await?? {
            results[i] = Some(value);
        }
    }
    if started.elapsed() > PROVISION_DEADLINE {
        bail!("{label}: gave up after {PROVISION_DEADLINE:?}");
    }
    results
        .into_iter()
        .enumerate()
        .map(|(i, v)| v.ok_or_else(|| anyhow!("{label}: item {i} did not run")))
        .collect()
}

/// POSTs JSON and returns the JSON answer, failing on a non-2xx status.
async fn post(
    client: &reqwest::Client,
    url: &str,
    authorization: Option<&str>,
    body: &Json,
) -> Result<Json> {
    let mut request = client.post(url).json(body);
    if let Some(auth) = authorization {
        request = request.header("authorization", auth);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = response.status();
    let text = response.text().await?;
    if !status.is_success() {
        bail!("POST {url}: {status}: {}", truncate(&text));
    }
    serde_json::from_str(&text).with_context(|| format!("POST {url}: not JSON"))
}

fn truncate(text: &str) -> &str {
    match text.char_indices().nth(300) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

/// Calls a Nimbus function and returns its value.
async fn call(
    client: &reqwest::Client,
    tenant_url: &str,
    kind: &str,
    path: &str,
    args: Json,
) -> Result<Json> {
    let url = format!("{}/api/{kind}", tenant_url.trim_end_matches('/'));
    let answer = post(
        client,
        &url,
        None,
        &json!({"path": path, "format": "convex_encoded_json", "args": [args]}),
    )
    .await?;
    if answer["status"] != "success" {
        bail!("{path} at {tenant_url} failed: {answer}");
    }
    Ok(answer["value"].clone())
}

/// Seeds a tenant that has `examples/pos`: one shop, `products` products with ample stock,
/// and `open_orders` open orders (so `orders:listOpen` reads a full page).
pub(crate) async fn seed(
    client: &reqwest::Client,
    mut target: Target,
    products: usize,
    open_orders: usize,
    concurrency: usize,
) -> Result<Target> {
    check_local(&target.url)?;
    let url = target.url.clone();
    let shop = call(
        client,
        &url,
        "mutation",
        "shops:create",
        json!({"name": format!("Shop of {}", target.name)}),
    )
    .await?;
    let shop_id = shop
        .as_str()
        .ok_or_else(|| anyhow!("shops:create returned {shop}"))?
        .to_string();
    let mut set = tokio::task::JoinSet::new();
    let mut ids: Vec<Option<String>> = vec![None; products];
    for i in 0..products {
        if set.len() >= concurrency.max(1) {
            if let Some(joined) = set.join_next().await {
                let (j, id) = joined??;
                ids[j] = Some(id);
            }
        }
        let (client, url, shop_id) = (client.clone(), url.clone(), shop_id.clone());
        set.spawn(async move {
            let id = call(
                &client,
                &url,
                "mutation",
                "products:add",
                json!({"shopId": shop_id, "name": format!("Product {i}"), "sku": format!("SKU-{i}"),
                       "priceCents": 100.0 + i as f64, "stock": 1e9}),
            )
            .await?;
            let id = id
                .as_str()
                .ok_or_else(|| anyhow!("products:add returned {id}"))?
                .to_string();
            anyhow::Ok((i, id))
        });
    }
    while let Some(joined) = set.join_next().await {
        let (j, id) = joined??;
        ids[j] = Some(id);
    }
    target.products = ids.into_iter().flatten().collect();
    if let Some(first) = target.products.first() {
        for _ in 0..open_orders {
            call(
                client,
                &url,
                "mutation",
                "orders:create",
                json!({"shopId": shop_id, "items": [{"productId": first, "qty": 1.0}]}),
            )
            .await?;
        }
    }
    target.shop = Some(shop_id);
    Ok(target)
}

/// Creates tenant `name` through the admin API.
pub(crate) async fn create_tenant(
    client: &reqwest::Client,
    base: &str,
    admin_key: &str,
    name: &str,
) -> Result<Target> {
    let base = base.trim_end_matches('/');
    let created = post(
        client,
        &format!("{base}/admin/tenants"),
        Some(&format!("Bearer {admin_key}")),
        &json!({ "name": name }),
    )
    .await?;
    let key = created["adminKey"]
        .as_str()
        .ok_or_else(|| anyhow!("creating {name}: no adminKey in {created}"))?;
    Ok(Target {
        name: name.to_string(),
        url: format!("{base}/t/{name}"),
        admin_key: Some(key.to_string()),
        shop: None,
        products: Vec::new(),
    })
}

/// Pushes code to a tenant by replaying a `start_push` request the official CLI wrote
/// (`npx convex deploy --push-all-modules --write-push-request FILE`), then the CLI's
/// `wait_for_schema` and `finish_push` steps.
pub(crate) async fn push(client: &reqwest::Client, target: &Target, template: &Json) -> Result<()> {
    let key = target
        .admin_key
        .as_deref()
        .ok_or_else(|| anyhow!("{}: no admin key to push with", target.name))?;
    let auth = format!("Convex {key}");
    let url = target.url.trim_end_matches('/');
    let mut body = template.clone();
    body["adminKey"] = json!(key);
    let started = post(
        client,
        &format!("{url}/api/deploy2/start_push"),
        Some(&auth),
        &body,
    )
    .await?;
    let waited = post(
        client,
        &format!("{url}/api/deploy2/wait_for_schema"),
        Some(&auth),
        &json!({"adminKey": key, "schemaChange": started["schemaChange"], "timeoutMs": 10000, "dryRun": false}),
    )
    .await?;
    if waited["type"] != "complete" {
        bail!("push to {}: schema not ready: {waited}", target.name);
    }
    post(
        client,
        &format!("{url}/api/deploy2/finish_push"),
        Some(&auth),
        &json!({"adminKey": key, "startPush": started, "dryRun": false}),
    )
    .await?;
    Ok(())
}

/// What `provision` does.
pub(crate) struct Provision {
    pub(crate) base: String,
    pub(crate) admin_key: String,
    pub(crate) prefix: String,
    pub(crate) count: usize,
    pub(crate) concurrency: usize,
    /// The CLI's start_push request, and how many of the new tenants get it.
    pub(crate) push: Option<(Json, usize)>,
    pub(crate) products: usize,
    pub(crate) open_orders: usize,
}

/// Creates the tenants, then pushes to and seeds the first ones. Returns the tenants and a
/// JSON summary (`kind: "provision"`).
pub(crate) async fn provision(p: Provision) -> Result<(Vec<Target>, Json)> {
    check_local(&p.base)?;
    let client = client()?;
    let started = Instant::now();
    let (base, key, prefix) = (
        Arc::new(p.base.clone()),
        Arc::new(p.admin_key.clone()),
        Arc::new(p.prefix.clone()),
    );
    let width = p.count.saturating_sub(1).to_string().len().max(3);
    let create_client = client.clone();
    let mut targets = bounded("creating tenants", p.count, p.concurrency, move |i| {
        let (client, base, key, prefix) = (
            create_client.clone(),
            base.clone(),
            key.clone(),
            prefix.clone(),
        );
        async move { create_tenant(&client, &base, &key, &format!("{prefix}{i:0width$}")).await }
    })
    .await?;
    let create_secs = started.elapsed().as_secs_f64();
    let mut summary = json!({
        "schema_version": crate::stats::SCHEMA_VERSION,
        "kind": "provision",
        "tenants_created": p.count,
        "create_concurrency": p.concurrency,
        "create_secs": create_secs,
        "create_per_sec": (p.count as f64 / create_secs.max(1e-9)).round(),
        "pushed": 0,
        "seeded": 0,
    });
    if let Some((template, push_count)) = p.push {
        let n = push_count.min(targets.len());
        let chosen: Arc<Vec<Target>> = Arc::new(targets[..n].to_vec());
        let template = Arc::new(template);
        let started = Instant::now();
        let (push_client, push_targets) = (client.clone(), chosen.clone());
        bounded("pushing code", n, p.concurrency.min(4), move |i| {
            let (client, targets, template) =
                (push_client.clone(), push_targets.clone(), template.clone());
            async move { push(&client, &targets[i], &template).await }
        })
        .await?;
        summary["pushed"] = json!(n);
        summary["push_secs"] = json!(started.elapsed().as_secs_f64());
        let started = Instant::now();
        let (products, open_orders) = (p.products, p.open_orders);
        let seeded = bounded("seeding", n, p.concurrency, move |i| {
            let (client, target) = (client.clone(), chosen[i].clone());
            async move { seed(&client, target, products, open_orders, 1).await }
        })
        .await?;
        summary["seeded"] = json!(n);
        summary["products_per_tenant"] = json!(products);
        summary["seed_secs"] = json!(started.elapsed().as_secs_f64());
        for (slot, target) in targets.iter_mut().zip(seeded) {
            *slot = target;
        }
    }
    Ok((targets, summary))
}

/// Sets up PocketBase like `examples/pos`: collections `products`, `orders` (composite
/// index on shop, status, createdAt) and `orderItems` (relations to both), open list/create
/// rules (the Nimbus functions need no auth either), batch requests on; then seeds one
/// shop's products and open orders. Needs a superuser (`pocketbase superuser upsert`).
pub(crate) async fn pocketbase_setup(
    url: &str,
    email: &str,
    password: &str,
    products: usize,
    open_orders: usize,
) -> Result<Target> {
    let base = url.trim_end_matches('/').to_string();
    check_local(&base)?;
    let client = client()?;
    let auth = post(
        &client,
        &format!("{base}/api/collections/_superusers/auth-with-password"),
        None,
        &json!({"identity": email, "password": password}),
    )
    .await?;
    let token = auth["token"]
        .as_str()
        .ok_or_else(|| anyhow!("PocketBase superuser login: no token"))?
        .to_string();
    let collections = format!("{base}/api/collections");
    let products_collection = post(
        &client,
        &collections,
        Some(&token),
        &json!({"name": "products", "type": "base",
            "listRule": "", "viewRule": "", "createRule": "", "updateRule": "",
            "fields": [
                {"name": "shop", "type": "text", "required": true},
                {"name": "name", "type": "text"},
                {"name": "sku", "type": "text"},
                {"name": "priceCents", "type": "number", "onlyInt": true},
                {"name": "stock", "type": "number", "onlyInt": true, "min": 0}],
            "indexes": ["CREATE INDEX idx_products_shop_sku ON products (shop, sku)"]}),
    )
    .await?;
    let orders_collection = post(
        &client,
        &collections,
        Some(&token),
        &json!({"name": "orders", "type": "base",
            "listRule": "", "viewRule": "", "createRule": "",
            "fields": [
                {"name": "shop", "type": "text", "required": true},
                {"name": "status", "type": "select", "values": ["open", "paid", "cancelled"],
                 "maxSelect": 1, "required": true},
                {"name": "createdAt", "type": "number"},
                {"name": "totalCents", "type": "number"}],
            "indexes": ["CREATE INDEX idx_orders_shop_status_created ON orders (shop, status, createdAt)"]}),
    )
    .await?;
    post(
        &client,
        &collections,
        Some(&token),
        &json!({"name": "orderItems", "type": "base",
            "listRule": "", "viewRule": "", "createRule": "",
            "fields": [
                {"name": "order", "type": "relation", "collectionId": orders_collection["id"],
                 "maxSelect": 1, "required": true},
                {"name": "product", "type": "relation", "collectionId": products_collection["id"],
                 "maxSelect": 1, "required": true},
                {"name": "qty", "type": "number"},
                {"name": "priceCents", "type": "number"}],
            "indexes": ["CREATE INDEX idx_order_items_order ON orderItems (`order`)"]}),
    )
    .await?;
    let settings = client
        .patch(format!("{base}/api/settings"))
        .header("authorization", &token)
        .json(&json!({"batch": {"enabled": true, "maxRequests": 50, "timeout": 10, "maxBodySize": 0}}))
        .send()
        .await?;
    if !settings.status().is_success() {
        bail!("enabling PocketBase batch requests: {}", settings.status());
    }
    let shop = "bench-shop".to_string();
    let records = Arc::new(format!("{base}/api/collections/products/records"));
    let (seed_client, seed_shop) = (client.clone(), shop.clone());
    let ids = bounded("seeding PocketBase products", products, 8, move |i| {
        let (client, records, shop) = (seed_client.clone(), records.clone(), seed_shop.clone());
        async move {
            let record = post(
                &client,
                &records,
                None,
                &json!({"shop": shop, "name": format!("Product {i}"), "sku": format!("SKU-{i}"),
                        "priceCents": 100 + i, "stock": 1_000_000_000u64}),
            )
            .await?;
            record["id"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| anyhow!("PocketBase product create: no id"))
        }
    })
    .await?;
    for i in 0..open_orders {
        post(
            &client,
            &format!("{base}/api/collections/orders/records"),
            None,
            &json!({"shop": shop, "status": "open", "createdAt": i, "totalCents": 100}),
        )
        .await?;
    }
    Ok(Target {
        name: "pocketbase".into(),
        url: base,
        admin_key: None,
        shop: Some(shop),
        products: ids,
    })
}

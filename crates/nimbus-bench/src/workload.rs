//! What one request is, for each system and workload, and how its answer is judged.
//!
//! Nimbus runs `examples/pos`: `orders:create` (read a product, patch its stock, insert the
//! order and its line item: one durable transaction), `orders:open` (insert one empty order:
//! the smallest durable write) and `orders:listOpen` (10 rows through the composite index
//! `by_shop_status_created`). PocketBase gets the closest equivalent its REST API offers: one
//! `/api/batch` transaction that decrements the product's stock (a `min: 0` number field, so
//! it fails rather than go negative), creates the order and creates its item (two relation
//! fields, checked to exist); one order record created; and a list of a shop's open orders
//! through an equivalent composite index, newest first, 10 per page, without the total count.

use anyhow::{bail, Context as _, Result};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub(crate) enum Workload {
    /// A durable write: Nimbus `orders:create` with one line item; PocketBase a batch of
    /// stock update + order + item.
    Mutation,
    /// The smallest durable write, one document: Nimbus `orders:open`; PocketBase one order
    /// record created.
    Insert,
    /// An indexed read of 10 rows: Nimbus `orders:listOpen`; PocketBase a filtered,
    /// sorted list.
    Query,
    /// CPU work alone, about 50–60 ms of it on this project's 2-core machines: Nimbus
    /// `load:burn` ([`BURN_ITERATIONS`]), with arguments that differ on every call so
    /// each one runs (no query cache). Nimbus only.
    Cpu,
}

/// Iterations of `load:burn` per call in the `cpu` workload: about 50–60 ms of QuickJS on
/// this project's 2-core machines (measured on an AMD EPYC: 34 calls/s over both cores;
/// the run reports its own rate).
pub(crate) const BURN_ITERATIONS: u64 = 1_000_000;

impl Workload {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Workload::Mutation => "mutation",
            Workload::Insert => "insert",
            Workload::Query => "query",
            Workload::Cpu => "cpu",
        }
    }
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum System {
    Nimbus,
    Pocketbase,
}

impl System {
    pub(crate) fn name(self) -> &'static str {
        match self {
            System::Nimbus => "nimbus",
            System::Pocketbase => "pocketbase",
        }
    }
}

/// One seeded target: a Nimbus tenant with `examples/pos`, or a PocketBase instance.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Target {
    /// The tenant's name (`pocketbase` for PocketBase).
    pub(crate) name: String,
    /// The tenant URL (`http://127.0.0.1:PORT/t/<tenant>`) or PocketBase's base URL.
    pub(crate) url: String,
    /// The tenant admin key (Nimbus tenants this harness created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) admin_key: Option<String>,
    /// The seeded shop, when the target was seeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) shop: Option<String>,
    /// The seeded products' IDs.
    #[serde(default)]
    pub(crate) products: Vec<String>,
}

/// The file `seed`, `provision` and `pocketbase-setup` write and the load commands read.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct TargetsFile {
    pub(crate) schema_version: u64,
    pub(crate) kind: String,
    pub(crate) system: System,
    pub(crate) targets: Vec<Target>,
}

impl TargetsFile {
    pub(crate) fn new(system: System, targets: Vec<Target>) -> TargetsFile {
        TargetsFile {
            schema_version: crate::stats::SCHEMA_VERSION,
            kind: "targets".into(),
            system,
            targets,
        }
    }

    pub(crate) fn read(path: &std::path::Path) -> Result<TargetsFile> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file: TargetsFile = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a targets file", path.display()))?;
        if file.kind != "targets" {
            bail!("{} is not a targets file", path.display());
        }
        Ok(file)
    }

    pub(crate) fn write(&self, path: &std::path::Path) -> Result<()> {
        std::fs::write(path, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", path.display()))
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Method {
    Get,
    Post,
}

/// How to build the requests of one target.
pub(crate) enum Plan {
    /// The same URL each time, one of a few prepared bodies (chosen at random).
    Fixed {
        method: Method,
        url: String,
        bodies: Vec<Vec<u8>>,
    },
    /// A PocketBase batch: every order gets a fresh client-chosen ID so its item can
    /// reference it within the same transaction.
    PocketbaseOrder {
        url: String,
        shop: String,
        products: Vec<String>,
    },
    /// A PocketBase order record (its `createdAt` is the time of sending, as Nimbus's
    /// `orders:open` takes `Date.now()`).
    PocketbaseOpen { url: String, shop: String },
    /// Nimbus `load:burn`, salted with a fresh ID per request.
    Burn { url: String },
}

/// One request ready to send.
pub(crate) struct Request<'a> {
    pub(crate) method: Method,
    /// Borrowed from the plan when it is fixed (no copy per request).
    pub(crate) body: std::borrow::Cow<'a, [u8]>,
}

impl Plan {
    pub(crate) fn new(system: System, workload: Workload, target: &Target) -> Result<Plan> {
        let base = target.url.trim_end_matches('/');
        check_local(base)?;
        let Some(shop) = target.shop.clone() else {
            bail!("target {} was not seeded (no shop)", target.name);
        };
        if workload == Workload::Mutation && target.products.is_empty() {
            bail!("target {} has no products to order", target.name);
        }
        Ok(match (system, workload) {
            (System::Nimbus, Workload::Mutation) => Plan::Fixed {
                method: Method::Post,
                url: format!("{base}/api/mutation"),
                bodies: target
                    .products
                    .iter()
                    .map(|product| {
                        serde_json::to_vec(&json!({"path": "orders:create",
                            "format": "convex_encoded_json",
                            "args": [{"shopId": shop, "items": [{"productId": product, "qty": 1.0}]}]}))
                    })
                    .collect::<Result<_, _>>()?,
            },
            (System::Nimbus, Workload::Insert) => Plan::Fixed {
                method: Method::Post,
                url: format!("{base}/api/mutation"),
                bodies: vec![serde_json::to_vec(&json!({"path": "orders:open",
                    "format": "convex_encoded_json", "args": [{"shopId": shop}]}))?],
            },
            (System::Nimbus, Workload::Query) => Plan::Fixed {
                method: Method::Post,
                url: format!("{base}/api/query"),
                bodies: vec![serde_json::to_vec(
                    &json!({"path": "orders:listOpen", "format": "convex_encoded_json",
                    "args": [{"shopId": shop, "limit": 10.0}]}),
                )?],
            },
            (System::Nimbus, Workload::Cpu) => Plan::Burn {
                url: format!("{base}/api/query"),
            },
            (System::Pocketbase, Workload::Cpu) => {
                bail!("the cpu workload is Nimbus only (it calls a Convex function)")
            }
            (System::Pocketbase, Workload::Mutation) => Plan::PocketbaseOrder {
                url: format!("{base}/api/batch"),
                shop,
                products: target.products.clone(),
            },
            (System::Pocketbase, Workload::Insert) => Plan::PocketbaseOpen {
                url: format!("{base}/api/collections/orders/records"),
                shop,
            },
            (System::Pocketbase, Workload::Query) => Plan::Fixed {
                method: Method::Get,
                url: format!(
                    "{base}/api/collections/orders/records?filter={}&sort=-createdAt&perPage=10&skipTotal=1",
                    percent_encode(&format!("(shop='{shop}'&&status='open')"))
                ),
                bodies: vec![Vec::new()],
            },
        })
    }

    /// The URL every request of this plan goes to.
    pub(crate) fn url(&self) -> &str {
        match self {
            Plan::Fixed { url, .. }
            | Plan::PocketbaseOrder { url, .. }
            | Plan::PocketbaseOpen { url, .. }
            | Plan::Burn { url } => url,
        }
    }

    /// The request for a random number `pick` and a fresh order ID `order_id`.
    pub(crate) fn request(&self, pick: usize, order_id: &str) -> Result<Request<'_>> {
        Ok(match self {
            Plan::Fixed { method, bodies, .. } => Request {
                method: *method,
                body: bodies
                    .get(pick % bodies.len().max(1))
                    .map(|b| std::borrow::Cow::Borrowed(b.as_slice()))
                    .unwrap_or_default(),
            },
            Plan::Burn { .. } => {
                let body = json!({"path": "load:burn", "format": "convex_encoded_json",
                    "args": [{"iterations": BURN_ITERATIONS as f64, "salt": order_id}]});
                Request {
                    method: Method::Post,
                    body: serde_json::to_vec(&body)?.into(),
                }
            }
            Plan::PocketbaseOpen { shop, .. } => {
                let body = json!({"shop": shop, "status": "open", "createdAt": now_ms(),
                                  "totalCents": 0});
                Request {
                    method: Method::Post,
                    body: serde_json::to_vec(&body)?.into(),
                }
            }
            Plan::PocketbaseOrder { shop, products, .. } => {
                let Some(product) = products.get(pick % products.len().max(1)) else {
                    bail!("no products to order");
                };
                let created_at = now_ms();
                let body = json!({"requests": [
                    {"method": "PATCH", "url": format!("/api/collections/products/records/{product}"),
                     "body": {"stock-": 1}},
                    {"method": "POST", "url": "/api/collections/orders/records",
                     "body": {"id": order_id, "shop": shop, "status": "open", "createdAt": created_at,
                              "totalCents": 100}},
                    {"method": "POST", "url": "/api/collections/orderItems/records",
                     "body": {"order": order_id, "product": product, "qty": 1, "priceCents": 100}},
                ]});
                Request {
                    method: Method::Post,
                    body: serde_json::to_vec(&body)?.into(),
                }
            }
        })
    }
}

/// Milliseconds since the Unix epoch (a PocketBase order's `createdAt`).
fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as f64)
        .unwrap_or(0.0)
}

/// Judges an answer: `None` for success, else the error kind.
pub(crate) fn classify(system: System, status: u16, body: &[u8]) -> Option<String> {
    if !(200..300).contains(&status) {
        return Some(format!("http-{status}"));
    }
    match system {
        System::Nimbus => classify_nimbus(body),
        // A list answers `{items: [...]}`, a create the record (with its `id`), a batch an
        // array of per-request results.
        System::Pocketbase => {
            let Ok(value) = serde_json::from_slice::<Json>(body) else {
                return Some("bad-json".into());
            };
            let ok = value["items"].is_array()
                || value["id"].is_string()
                || value.as_array().is_some_and(|results| {
                    results.iter().all(|r| {
                        r["status"]
                            .as_u64()
                            .is_some_and(|s| (200..300).contains(&s))
                    })
                });
            if ok {
                None
            } else {
                Some("bad-answer".into())
            }
        }
    }
}

/// A Nimbus answer: only the outcome fields are read; the value is checked to be JSON and
/// skipped, not built (the generator shares the cores with the server it measures).
fn classify_nimbus(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Answer<'a> {
        #[serde(borrow)]
        status: std::borrow::Cow<'a, str>,
        #[serde(default, rename = "errorCode", borrow)]
        error_code: Option<std::borrow::Cow<'a, str>>,
    }
    match serde_json::from_slice::<Answer<'_>>(body) {
        Ok(answer) if answer.status == "success" => None,
        Ok(answer) => Some(format!(
            "function:{}",
            answer.error_code.as_deref().unwrap_or("unknown")
        )),
        Err(_) => Some("bad-json".into()),
    }
}

/// Load is generated against this machine only.
pub(crate) fn check_local(url: &str) -> Result<()> {
    let rest = url.strip_prefix("http://").unwrap_or("");
    let host = rest.split(['/', ':']).next().unwrap_or("");
    let local = host == "localhost"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !local {
        bail!("load is sent to this machine only (http://127.x or http://localhost), not {url}");
    }
    Ok(())
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A PocketBase record ID (15 of `[a-z0-9]`) unique to this process (`run`), connection and
/// sequence number.
pub(crate) fn order_id(run: u64, connection: usize, seq: u64) -> String {
    let mut id = String::with_capacity(15);
    push_base36(&mut id, run, 4);
    push_base36(&mut id, connection as u64, 3);
    push_base36(&mut id, seq, 8);
    id
}

fn push_base36(out: &mut String, mut value: u64, width: usize) {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut digits = vec![b'0'; width];
    for slot in digits.iter_mut().rev() {
        *slot = DIGITS[(value % 36) as usize];
        value /= 36;
    }
    out.extend(digits.iter().map(|&d| d as char));
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            name: "t".into(),
            url: "http://127.0.0.1:3299/t/a/".into(),
            admin_key: None,
            shop: Some("s1".into()),
            products: vec!["p1".into(), "p2".into()],
        }
    }

    #[test]
    fn nimbus_requests() {
        let plan = Plan::new(System::Nimbus, Workload::Mutation, &target()).unwrap();
        let r = plan.request(1, "x").unwrap();
        assert_eq!(plan.url(), "http://127.0.0.1:3299/t/a/api/mutation");
        let body: Json = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["args"][0]["items"][0]["productId"], "p2");
        let plan = Plan::new(System::Nimbus, Workload::Query, &target()).unwrap();
        let body: Json = serde_json::from_slice(&plan.request(7, "x").unwrap().body).unwrap();
        assert_eq!(body["path"], "orders:listOpen");
        assert_eq!(body["args"][0]["limit"], 10.0);
        let plan = Plan::new(System::Nimbus, Workload::Insert, &target()).unwrap();
        let body: Json = serde_json::from_slice(&plan.request(3, "x").unwrap().body).unwrap();
        assert_eq!(plan.url(), "http://127.0.0.1:3299/t/a/api/mutation");
        assert_eq!(body["path"], "orders:open");
        assert_eq!(body["args"][0]["shopId"], "s1");
    }

    #[test]
    fn pocketbase_requests() {
        let plan = Plan::new(System::Pocketbase, Workload::Query, &target()).unwrap();
        assert!(plan.request(0, "x").unwrap().body.is_empty());
        assert_eq!(
            plan.url(),
            "http://127.0.0.1:3299/t/a/api/collections/orders/records?filter=%28shop%3D%27s1%27%26%26status%3D%27open%27%29&sort=-createdAt&perPage=10&skipTotal=1"
        );
        let plan = Plan::new(System::Pocketbase, Workload::Mutation, &target()).unwrap();
        let id = order_id(5, 2, 9);
        let body: Json = serde_json::from_slice(&plan.request(0, &id).unwrap().body).unwrap();
        assert_eq!(body["requests"][1]["body"]["id"], id.as_str());
        assert_eq!(body["requests"][2]["body"]["order"], id.as_str());
        assert_eq!(
            body["requests"][0]["url"],
            "/api/collections/products/records/p1"
        );
        let plan = Plan::new(System::Pocketbase, Workload::Insert, &target()).unwrap();
        assert_eq!(
            plan.url(),
            "http://127.0.0.1:3299/t/a/api/collections/orders/records"
        );
        let body: Json = serde_json::from_slice(&plan.request(0, "x").unwrap().body).unwrap();
        assert_eq!(body["shop"], "s1");
        assert_eq!(body["status"], "open");
        assert!(body["createdAt"].as_f64().unwrap() > 1.7e12);
    }

    #[test]
    fn order_ids_are_pocketbase_ids() {
        let id = order_id(u64::MAX, 999_999, u64::MAX);
        assert_eq!(id.len(), 15);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()));
        assert_ne!(order_id(1, 0, 1), order_id(1, 1, 0));
        assert_eq!(order_id(0, 0, 35), "00000000000000z");
    }

    #[test]
    fn answers() {
        let n = System::Nimbus;
        assert_eq!(classify(n, 200, br#"{"status":"success","value":1}"#), None);
        assert_eq!(
            classify(n, 200, br#"{"status":"error","errorCode":"ConvexError"}"#).as_deref(),
            Some("function:ConvexError")
        );
        assert_eq!(classify(n, 429, b"{}").as_deref(), Some("http-429"));
        assert_eq!(classify(n, 200, b"nope").as_deref(), Some("bad-json"));
        assert_eq!(
            classify(n, 200, br#"{"status":"success","value":[1"#).as_deref(),
            Some("bad-json"),
            "a truncated value is not a success"
        );
        let p = System::Pocketbase;
        assert_eq!(classify(p, 200, br#"{"items":[]}"#), None);
        assert_eq!(classify(p, 200, br#"{"id":"abc","shop":"s1"}"#), None);
        assert_eq!(
            classify(p, 200, br#"{"id":7}"#).as_deref(),
            Some("bad-answer")
        );
        assert_eq!(
            classify(p, 200, br#"[{"status":200},{"status":200}]"#),
            None
        );
        assert_eq!(
            classify(p, 200, br#"[{"status":200},{"status":400}]"#).as_deref(),
            Some("bad-answer")
        );
        assert_eq!(classify(p, 400, b"{}").as_deref(), Some("http-400"));
    }

    #[test]
    fn only_local_targets() {
        assert!(check_local("http://127.0.0.1:3299/t/a").is_ok());
        assert!(check_local("http://localhost:8090").is_ok());
        assert!(check_local("http://10.0.0.1:80").is_err());
        assert!(check_local("http://127.example.com/").is_err());
        assert!(check_local("https://127.0.0.1/").is_err());
    }
}

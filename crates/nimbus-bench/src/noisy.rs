//! Noisy neighbour: a steady tenant's open-loop traffic measured alone, then again while a
//! second tenant floods the server (closed loop, many connections). The ratio of the
//! steady tenant's p99 with and without the neighbour measures today's isolation.

use std::time::Duration;

use anyhow::{anyhow, Result};
use serde_json::{json, Value as Json};

use crate::load::{self, LoadSpec};
use crate::stats::SCHEMA_VERSION;
use crate::workload::{System, Target, Workload};

pub(crate) struct Noisy {
    pub(crate) steady: Target,
    pub(crate) neighbour: Target,
    pub(crate) steady_workload: Workload,
    pub(crate) steady_rate: f64,
    pub(crate) steady_connections: usize,
    pub(crate) neighbour_workload: Workload,
    pub(crate) neighbour_connections: usize,
    /// The neighbour's `inflight` limit to set first, with the instance admin key.
    pub(crate) neighbour_inflight: Option<(u64, String)>,
    pub(crate) warmup: Duration,
    pub(crate) duration: Duration,
}

impl Noisy {
    fn steady_spec(&self, label: &str) -> LoadSpec {
        LoadSpec {
            label: label.to_string(),
            system: System::Nimbus,
            workload: self.steady_workload,
            targets: vec![self.steady.clone()],
            connections: self.steady_connections,
            rate: Some(self.steady_rate),
            warmup: self.warmup,
            duration: self.duration,
        }
    }
}

fn ratio(a: &Json, b: &Json, pointer: &str) -> Json {
    match (
        a.pointer(pointer).and_then(Json::as_f64),
        b.pointer(pointer).and_then(Json::as_f64),
    ) {
        (Some(x), Some(y)) if y > 0.0 => json!(x / y),
        _ => Json::Null,
    }
}

pub(crate) async fn run(n: Noisy) -> Result<Json> {
    if n.steady.name == n.neighbour.name {
        return Err(anyhow!("the steady tenant and the neighbour must differ"));
    }
    if let Some((inflight, key)) = &n.neighbour_inflight {
        set_inflight(&n.neighbour, *inflight, key).await?;
    }
    let alone = load::run(n.steady_spec("steady tenant alone")).await?;
    let flood = LoadSpec {
        label: "neighbour flooding".into(),
        system: System::Nimbus,
        workload: n.neighbour_workload,
        targets: vec![n.neighbour.clone()],
        connections: n.neighbour_connections,
        rate: None,
        warmup: n.warmup,
        duration: n.duration,
    };
    // Same warm-up and duration, started together: the measured windows coincide.
    let (with_neighbour, neighbour) = tokio::join!(
        load::run(n.steady_spec("steady tenant with neighbour")),
        load::run(flood)
    );
    let (with_neighbour, neighbour) = (with_neighbour?, neighbour?);
    Ok(json!({
        "schema_version": SCHEMA_VERSION,
        "kind": "noisy-neighbour",
        "steady_tenant": n.steady.name,
        "neighbour_tenant": n.neighbour.name,
        "neighbour_inflight_limit": n.neighbour_inflight.as_ref().map(|(limit, _)| *limit),
        "p99_ratio": ratio(&with_neighbour, &alone, "/latency_ms/p99"),
        "p50_ratio": ratio(&with_neighbour, &alone, "/latency_ms/p50"),
        "throughput_ratio": ratio(&with_neighbour, &alone, "/throughput_per_sec"),
        "alone": alone,
        "with_neighbour": with_neighbour,
        "neighbour": neighbour,
    }))
}

/// Sets a tenant's `inflight` limit through the admin API of the server it is on.
async fn set_inflight(target: &Target, inflight: u64, admin_key: &str) -> Result<()> {
    let suffix = format!("/t/{}", target.name);
    let Some(base) = target.url.trim_end_matches('/').strip_suffix(&suffix) else {
        return Err(anyhow!("{} is not a /t/<tenant> URL", target.url));
    };
    let response = crate::provision::client()?
        .patch(format!("{base}/admin/tenants/{}", target.name))
        .bearer_auth(admin_key)
        .json(&json!({"limits": {"inflight": inflight}}))
        .send()
        .await?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(anyhow!(
            "setting {}'s inflight limit: {status}: {body}",
            target.name
        ));
    }
    Ok(())
}

//! Per-tenant limits: the instance's defaults (flags), a tenant's overrides (kept in the
//! tenant catalog, set with `PATCH /admin/tenants/<t>`), and the values in force, which
//! an active tenant applies without a restart.
//!
//! Overrides are checked as a whole before anything changes: one bad entry refuses the
//! whole change, so a request never half-applies.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value as Json};

use crate::config::NimbusConfig;
use crate::error::AppError;

/// The `limit` of a 429 from the instance's shared JavaScript pool (its queues, or its
/// actions alive), not a per-tenant limit.
pub const WORKER_POOL: &str = "workerPool";
/// The `limit` of a 429 for a mutation that kept conflicting with concurrent writes.
pub const CONFLICTS: &str = "conflicts";

/// One limit an operator can set per tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Limit {
    /// Calls in the JavaScript pool at once (executing, or next in line at a home worker).
    Executing,
    /// Calls admitted at once: executing, waiting for a worker, or waiting for their commit.
    Inflight,
    /// Actions alive at once (running or waiting between steps).
    Actions,
    /// Commits waiting for the tenant's committer.
    AdmissionQueue,
    /// Subscriptions over all of the tenant's live connections.
    Subscriptions,
    /// Live (WebSocket) connections open at once.
    Sockets,
    /// CPU time of one query or mutation, in milliseconds.
    CpuMsPerCall,
    /// JavaScript heap of the tenant's runtime, in MiB.
    MemoryMibPerCall,
}

impl Limit {
    pub const ALL: [Limit; 8] = [
        Limit::Executing,
        Limit::Inflight,
        Limit::Actions,
        Limit::AdmissionQueue,
        Limit::Subscriptions,
        Limit::Sockets,
        Limit::CpuMsPerCall,
        Limit::MemoryMibPerCall,
    ];

    /// Its name in the admin API's JSON.
    pub fn name(self) -> &'static str {
        match self {
            Limit::Executing => "executing",
            Limit::Inflight => "inflight",
            Limit::Actions => "actions",
            Limit::AdmissionQueue => "admissionQueue",
            Limit::Subscriptions => "subscriptions",
            Limit::Sockets => "sockets",
            Limit::CpuMsPerCall => "cpuMsPerCall",
            Limit::MemoryMibPerCall => "memoryMibPerCall",
        }
    }

    fn from_name(name: &str) -> Option<Limit> {
        Limit::ALL.into_iter().find(|limit| limit.name() == name)
    }

    /// The largest value accepted: beyond it a value is a mistake, not a plan. The
    /// admission queue's is also the capacity of the engine's channel
    /// ([`nimbus_engine::ADMISSION_QUEUE_MAX`]).
    fn max(self) -> u64 {
        match self {
            Limit::Executing => 1024,
            Limit::Inflight => 100_000,
            Limit::Actions => 10_000,
            Limit::AdmissionQueue => nimbus_engine::ADMISSION_QUEUE_MAX as u64,
            Limit::Subscriptions => 1_000_000,
            Limit::Sockets => 100_000,
            Limit::CpuMsPerCall => 600_000,
            Limit::MemoryMibPerCall => 4096,
        }
    }

    /// The smallest value accepted. A heap smaller than this cannot load the Convex
    /// library with a tenant's code.
    fn min(self) -> u64 {
        match self {
            Limit::MemoryMibPerCall => 8,
            _ => 1,
        }
    }

    /// The instance default (from flags), as the operator set it: the range above is for
    /// overrides only.
    fn default_in(self, config: &NimbusConfig) -> u64 {
        let value = match self {
            Limit::Executing => config.max_running_per_tenant,
            Limit::Inflight => config.max_inflight_per_tenant,
            Limit::Actions => config.actions.per_tenant,
            // The engine holds a larger flag to its channel's size.
            Limit::AdmissionQueue => config
                .engine
                .admission_queue
                .min(nimbus_engine::ADMISSION_QUEUE_MAX),
            Limit::Subscriptions => config.live.max_subscriptions_per_tenant,
            Limit::Sockets => config.live.max_sessions,
            Limit::CpuMsPerCall => {
                usize::try_from(config.pool.limits.cpu_time.as_millis()).unwrap_or(usize::MAX)
            }
            Limit::MemoryMibPerCall => config.pool.limits.memory_bytes >> 20,
        };
        (value as u64).max(1)
    }
}

/// A tenant's overrides: only the limits set for it; the rest follow the instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitOverrides(BTreeMap<Limit, u64>);

impl LimitOverrides {
    /// Reads overrides as stored in the catalog; entries no longer understood are
    /// dropped with a warning (they were valid when written).
    pub(crate) fn from_stored(tenant: &str, text: Option<&str>) -> LimitOverrides {
        let Some(text) = text else {
            return LimitOverrides::default();
        };
        let mut overrides = BTreeMap::new();
        match serde_json::from_str::<Map<String, Json>>(text) {
            Ok(object) => {
                for (name, value) in object {
                    match (Limit::from_name(&name), value.as_u64()) {
                        (Some(limit), Some(value))
                            if (limit.min()..=limit.max()).contains(&value) =>
                        {
                            overrides.insert(limit, value);
                        }
                        _ => tracing::warn!(tenant, name, %value, "ignoring a stored limit"),
                    }
                }
            }
            Err(error) => tracing::warn!(tenant, %error, "ignoring unreadable stored limits"),
        }
        LimitOverrides(overrides)
    }

    /// The text the catalog stores, or `None` when nothing is overridden.
    pub(crate) fn to_stored(&self) -> Option<String> {
        (!self.0.is_empty()).then(|| self.to_json().to_string())
    }

    pub fn to_json(&self) -> Json {
        Json::Object(
            self.0
                .iter()
                .map(|(limit, value)| (limit.name().to_string(), json!(value)))
                .collect(),
        )
    }

    /// These overrides changed by a `PATCH` body's `limits` object: a number sets a limit,
    /// `null` returns it to the instance default. Every entry is checked before any is
    /// applied; the first bad one is the error (400).
    pub fn patched(&self, change: &Json) -> Result<LimitOverrides, AppError> {
        let Some(change) = change.as_object() else {
            return Err(AppError::BadRequest(format!(
                "\"limits\" must be an object of limit names to numbers (or null to use the \
                 instance default), got {}",
                type_name(change)
            )));
        };
        let mut next = self.0.clone();
        for (name, value) in change {
            let Some(limit) = Limit::from_name(name) else {
                let known: Vec<&str> = Limit::ALL.iter().map(|l| l.name()).collect();
                return Err(AppError::BadRequest(format!(
                    "unknown limit {name:?}; the limits are {}",
                    known.join(", ")
                )));
            };
            if value.is_null() {
                next.remove(&limit);
                continue;
            }
            let range = format!("an integer from {} to {}", limit.min(), limit.max());
            let Some(number) = value.as_f64().filter(|_| value.is_number()) else {
                return Err(AppError::BadRequest(format!(
                    "limit {name:?} must be {range} (or null for the instance default), got {}",
                    type_name(value)
                )));
            };
            let accepted = value
                .as_u64()
                .filter(|v| (limit.min()..=limit.max()).contains(v));
            let Some(accepted) = accepted else {
                return Err(AppError::BadRequest(format!(
                    "limit {name:?} must be {range}, got {number}"
                )));
            };
            next.insert(limit, accepted);
        }
        Ok(LimitOverrides(next))
    }

    /// The limits in force: these overrides over the instance defaults.
    pub fn resolve(&self, config: &NimbusConfig) -> TenantLimits {
        let get = |limit: Limit| {
            self.0
                .get(&limit)
                .copied()
                .unwrap_or_else(|| limit.default_in(config))
        };
        let size = |limit: Limit| usize::try_from(get(limit)).unwrap_or(usize::MAX);
        TenantLimits {
            executing: size(Limit::Executing),
            inflight: size(Limit::Inflight),
            actions: size(Limit::Actions),
            admission_queue: size(Limit::AdmissionQueue),
            subscriptions: size(Limit::Subscriptions),
            sockets: size(Limit::Sockets),
            cpu_time: std::time::Duration::from_millis(get(Limit::CpuMsPerCall)),
            memory_bytes: size(Limit::MemoryMibPerCall) << 20,
        }
    }
}

fn type_name(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// The limits in force for one tenant. Each is at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantLimits {
    pub executing: usize,
    pub inflight: usize,
    pub actions: usize,
    pub admission_queue: usize,
    pub subscriptions: usize,
    pub sockets: usize,
    pub cpu_time: std::time::Duration,
    pub memory_bytes: usize,
}

impl TenantLimits {
    /// The admin API's form: every limit by its name.
    pub fn to_json(&self) -> Json {
        json!({
            Limit::Executing.name(): self.executing,
            Limit::Inflight.name(): self.inflight,
            Limit::Actions.name(): self.actions,
            Limit::AdmissionQueue.name(): self.admission_queue,
            Limit::Subscriptions.name(): self.subscriptions,
            Limit::Sockets.name(): self.sockets,
            Limit::CpuMsPerCall.name(): u64::try_from(self.cpu_time.as_millis()).unwrap_or(u64::MAX),
            Limit::MemoryMibPerCall.name(): self.memory_bytes >> 20,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn config() -> NimbusConfig {
        NimbusConfig::new(PathBuf::from("/tmp/x"), "http://x".into())
    }

    #[test]
    fn overrides_replace_defaults_and_null_restores_them() {
        let config = config();
        let none = LimitOverrides::default();
        let defaults = none.resolve(&config);
        assert_eq!(defaults.inflight, config.max_inflight_per_tenant);
        assert_eq!(defaults.cpu_time, config.pool.limits.cpu_time);
        let set = none
            .patched(&json!({"inflight": 7, "cpuMsPerCall": 250, "sockets": 3}))
            .unwrap();
        let limits = set.resolve(&config);
        assert_eq!(
            (limits.inflight, limits.sockets),
            (7, 3),
            "overridden limits are in force"
        );
        assert_eq!(limits.cpu_time, std::time::Duration::from_millis(250));
        assert_eq!(
            limits.actions, defaults.actions,
            "the rest follow the instance"
        );
        let back = set.patched(&json!({"inflight": null})).unwrap();
        assert_eq!(back.resolve(&config).inflight, defaults.inflight);
        assert_eq!(back.resolve(&config).sockets, 3);
    }

    #[test]
    fn stored_overrides_round_trip() {
        let set = LimitOverrides::default()
            .patched(&json!({"admissionQueue": 64, "memoryMibPerCall": 32}))
            .unwrap();
        let stored = set.to_stored().unwrap();
        assert_eq!(LimitOverrides::from_stored("t", Some(&stored)), set);
        assert_eq!(LimitOverrides::default().to_stored(), None);
        // A stored entry out of range (say, after a bound was lowered) is dropped.
        let odd =
            LimitOverrides::from_stored("t", Some(r#"{"inflight": 0, "sockets": 9, "x": 1}"#));
        assert_eq!(
            odd,
            LimitOverrides::default()
                .patched(&json!({"sockets": 9}))
                .unwrap()
        );
    }

    #[test]
    fn bad_changes_are_refused_whole() {
        let base = LimitOverrides::default()
            .patched(&json!({"inflight": 5}))
            .unwrap();
        let cases = [
            (json!({"nope": 1}), "unknown limit \"nope\""),
            (
                json!({"inflight": -1}),
                "must be an integer from 1 to 100000, got -1",
            ),
            (json!({"inflight": 0}), "got 0"),
            (json!({"inflight": 1.5}), "got 1.5"),
            (json!({"inflight": 1e12}), "got 1000000000000"),
            (json!({"inflight": "10"}), "got a string"),
            (json!({"inflight": true}), "got a boolean"),
            (json!({"memoryMibPerCall": 4}), "from 8 to 4096"),
            (json!({"sockets": 2, "inflight": []}), "got an array"),
            (json!([1]), "\"limits\" must be an object"),
        ];
        for (change, message) in cases {
            let error = base.patched(&change).unwrap_err();
            assert_eq!(error.http_status(), 400, "{change}");
            assert!(error.to_string().contains(message), "{change}: {error}");
        }
    }
}

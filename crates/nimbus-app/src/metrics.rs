//! Per-tenant request metrics for `GET /metrics`: how many function calls of each kind a
//! tenant ran, how they ended, and how long they took, in fixed latency buckets.
//!
//! Recording is a handful of relaxed atomic additions per call (no lock, no allocation);
//! reading takes a consistent-enough copy (each counter is read once; a scrape racing a
//! call may see its count without its bucket, which Prometheus tolerates).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nimbus_runtime::FunctionKind;

/// Upper bounds of the latency buckets, in seconds (a `+Inf` bucket follows).
pub const LATENCY_BUCKETS_SECONDS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// The function returned a value.
    Success,
    /// The function failed (threw, bad arguments, a limit): the caller got its error.
    Failure,
    /// The system failed the request (overload, a tenant unavailable, an internal error).
    Error,
}

impl CallOutcome {
    pub const ALL: [CallOutcome; 3] = [
        CallOutcome::Success,
        CallOutcome::Failure,
        CallOutcome::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Success => "success",
            CallOutcome::Failure => "failure",
            CallOutcome::Error => "error",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One kind's calls: outcomes, and the latency histogram of all of them.
#[derive(Default)]
struct KindMetrics {
    outcomes: [AtomicU64; 3],
    /// Non-cumulative: `buckets[i]` counts calls in `(bound[i-1], bound[i]]`; the last one
    /// counts those over every bound.
    buckets: [AtomicU64; LATENCY_BUCKETS_SECONDS.len() + 1],
    sum_micros: AtomicU64,
}

/// A copy of one kind's metrics, as Prometheus shows them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KindSnapshot {
    /// Calls by outcome, in the order of [`CallOutcome::ALL`].
    pub outcomes: [u64; 3],
    /// Cumulative counts: `cumulative[i]` calls took at most `LATENCY_BUCKETS_SECONDS[i]`;
    /// the last entry is every call (`+Inf`).
    pub cumulative: [u64; LATENCY_BUCKETS_SECONDS.len() + 1],
    pub sum_seconds: f64,
}

impl KindSnapshot {
    /// Every call counted (the histogram's `_count`).
    pub fn count(&self) -> u64 {
        self.cumulative[LATENCY_BUCKETS_SECONDS.len()]
    }

    /// Adds `other` into `self` (to aggregate tenants past the label bound).
    pub fn add(&mut self, other: &KindSnapshot) {
        for (a, b) in self.outcomes.iter_mut().zip(other.outcomes) {
            *a += b;
        }
        for (a, b) in self.cumulative.iter_mut().zip(other.cumulative) {
            *a += b;
        }
        self.sum_seconds += other.sum_seconds;
    }
}

/// A tenant's request metrics, by function kind.
#[derive(Default)]
pub struct RequestMetrics {
    kinds: [KindMetrics; 3],
}

/// The kinds in the order [`RequestMetrics::snapshot`] reports them.
pub const KINDS: [FunctionKind; 3] = [
    FunctionKind::Query,
    FunctionKind::Mutation,
    FunctionKind::Action,
];

fn kind_index(kind: FunctionKind) -> usize {
    match kind {
        FunctionKind::Query => 0,
        FunctionKind::Mutation => 1,
        FunctionKind::Action => 2,
    }
}

impl RequestMetrics {
    pub fn record(&self, kind: FunctionKind, outcome: CallOutcome, took: Duration) {
        let metrics = &self.kinds[kind_index(kind)];
        metrics.outcomes[outcome.index()].fetch_add(1, Ordering::Relaxed);
        let seconds = took.as_secs_f64();
        let bucket = LATENCY_BUCKETS_SECONDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS_SECONDS.len());
        metrics.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        metrics.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Each kind's metrics, in the order of [`KINDS`].
    pub fn snapshot(&self) -> [KindSnapshot; 3] {
        std::array::from_fn(|k| {
            let metrics = &self.kinds[k];
            let mut snapshot = KindSnapshot {
                outcomes: std::array::from_fn(|o| metrics.outcomes[o].load(Ordering::Relaxed)),
                sum_seconds: metrics.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
                ..KindSnapshot::default()
            };
            let mut running = 0;
            for (i, bucket) in metrics.buckets.iter().enumerate() {
                running += bucket.load(Ordering::Relaxed);
                snapshot.cumulative[i] = running;
            }
            snapshot
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_land_in_cumulative_buckets() {
        let metrics = RequestMetrics::default();
        metrics.record(
            FunctionKind::Query,
            CallOutcome::Success,
            Duration::from_micros(300),
        );
        metrics.record(
            FunctionKind::Query,
            CallOutcome::Failure,
            Duration::from_millis(7),
        );
        metrics.record(
            FunctionKind::Query,
            CallOutcome::Success,
            Duration::from_secs(9),
        );
        metrics.record(
            FunctionKind::Mutation,
            CallOutcome::Error,
            Duration::from_millis(1),
        );
        let [query, mutation, action] = metrics.snapshot();
        assert_eq!(query.outcomes, [2, 1, 0]);
        assert_eq!(query.count(), 3);
        // 0.3 ms is within the first bound; 7 ms within 10 ms (index 4); 9 s only in +Inf.
        assert_eq!(query.cumulative[0], 1);
        assert_eq!(query.cumulative[3], 1);
        assert_eq!(query.cumulative[4], 2);
        assert_eq!(query.cumulative[LATENCY_BUCKETS_SECONDS.len() - 1], 2);
        assert!((query.sum_seconds - 9.0073).abs() < 1e-9);
        // Exactly on a bound counts in that bucket (Prometheus's `le`).
        assert_eq!(mutation.cumulative[1], 1);
        assert_eq!(mutation.cumulative[0], 0);
        assert_eq!(mutation.outcomes, [0, 0, 1]);
        assert_eq!(action, KindSnapshot::default());
    }
}

/// Seconds of history [`CpuWindow`] keeps.
const CPU_WINDOW_SECS: u64 = 60;

/// JavaScript worker time a tenant's calls used over the last minute: one bucket per
/// second, each stamped with its second so a stale bucket is never counted. 60 × 16
/// bytes, whatever the load.
pub struct CpuWindow {
    origin: std::time::Instant,
    /// (second since `origin` + 1, microseconds used in that second); 0 marks unused.
    buckets: [(AtomicU64, AtomicU64); CPU_WINDOW_SECS as usize],
}

impl Default for CpuWindow {
    fn default() -> Self {
        CpuWindow {
            origin: std::time::Instant::now(),
            buckets: std::array::from_fn(|_| (AtomicU64::new(0), AtomicU64::new(0))),
        }
    }
}

impl CpuWindow {
    fn second(&self) -> u64 {
        self.origin.elapsed().as_secs() + 1
    }

    /// Counts `used` in the current second.
    pub fn record(&self, used: Duration) {
        let second = self.second();
        let (stamp, micros) = &self.buckets[(second % CPU_WINDOW_SECS) as usize];
        let micros_used = u64::try_from(used.as_micros()).unwrap_or(u64::MAX);
        if stamp.swap(second, Ordering::AcqRel) != second {
            // The bucket held an older second: start it over. (Two threads racing at a
            // second's turn may lose a call's time; this is a gauge, not an account.)
            micros.store(micros_used, Ordering::Release);
        } else {
            micros.fetch_add(micros_used, Ordering::AcqRel);
        }
    }

    /// Time used in the last [`CPU_WINDOW_SECS`] seconds.
    pub fn last_minute(&self) -> Duration {
        let now = self.second();
        let micros: u64 = self
            .buckets
            .iter()
            .filter(|(stamp, _)| {
                let stamp = stamp.load(Ordering::Acquire);
                stamp != 0 && now - stamp.min(now) < CPU_WINDOW_SECS
            })
            .map(|(_, micros)| micros.load(Ordering::Acquire))
            .sum();
        Duration::from_micros(micros)
    }
}

#[cfg(test)]
mod cpu_tests {
    use super::*;

    #[test]
    fn the_window_sums_what_was_recorded() {
        let window = CpuWindow::default();
        assert_eq!(window.last_minute(), Duration::ZERO);
        window.record(Duration::from_millis(5));
        window.record(Duration::from_micros(250));
        assert_eq!(window.last_minute(), Duration::from_micros(5_250));
    }
}

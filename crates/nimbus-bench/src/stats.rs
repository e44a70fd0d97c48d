//! Latency histograms and the JSON summaries every run prints (BENCHMARKS.md documents the
//! fields).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result};
use hdrhistogram::Histogram;
use serde_json::{json, Value as Json};

/// The largest latency a histogram records (60 s); longer ones are clamped to it.
const LATENCY_MICROS_MAX: u64 = 60_000_000;

/// The version of every JSON object nimbus-bench prints. Version 2 added fields to the
/// version 1 objects (which are unchanged) and the multi-tenant scenarios.
pub(crate) const SCHEMA_VERSION: u64 = 2;

/// Errors by kind (`function:<errorCode>`, `http-<status>`, `timeout`, `connection`,
/// `bad-json`, `bad-answer`).
pub(crate) type Errors = BTreeMap<String, u64>;

/// Microseconds, 1 µs .. 60 s, 3 significant digits.
pub(crate) fn new_histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, LATENCY_MICROS_MAX, 3).context("histogram")
}

/// Records one latency, clamped into the histogram's range.
pub(crate) fn record(histogram: &mut Histogram<u64>, latency: Duration) -> Result<()> {
    let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    histogram
        .record(micros.clamp(1, LATENCY_MICROS_MAX))
        .context("recording a latency")
}

/// `{requests, throughput_per_sec, latency_ms: {p50, p95, p99, max}}`.
pub(crate) fn summary(histogram: &Histogram<u64>, count: u64, elapsed: Duration) -> Json {
    let ms = |micros: u64| micros as f64 / 1000.0;
    let seconds = elapsed.as_secs_f64().max(1e-9);
    json!({
        "requests": count,
        "throughput_per_sec": (count as f64 / seconds).round(),
        "latency_ms": {
            "p50": ms(histogram.value_at_quantile(0.50)),
            "p95": ms(histogram.value_at_quantile(0.95)),
            "p99": ms(histogram.value_at_quantile(0.99)),
            "max": ms(histogram.max()),
        },
    })
}

/// `{min, median, max}` of some values (the lower median for an even count), or nulls when
/// there are none.
pub(crate) fn spread(mut values: Vec<f64>) -> Json {
    values.retain(|v| v.is_finite());
    values.sort_by(f64::total_cmp);
    match (
        values.first(),
        values.get((values.len().max(1) - 1) / 2),
        values.last(),
    ) {
        (Some(min), Some(median), Some(max)) => json!({"min": min, "median": median, "max": max}),
        _ => json!({"min": null, "median": null, "max": null}),
    }
}

/// Adds `from`'s counts into `into`.
pub(crate) fn merge_errors(into: &mut Errors, from: &Errors) {
    for (kind, count) in from {
        *into.entry(kind.clone()).or_default() += count;
    }
}

/// The total of an `errors` object (0 when absent).
pub(crate) fn error_total(errors: &Json) -> u64 {
    errors
        .as_object()
        .map(|m| m.values().filter_map(Json::as_u64).sum())
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_values() {
        assert_eq!(
            spread(vec![3.0, 1.0, 2.0]),
            json!({"min": 1.0, "median": 2.0, "max": 3.0})
        );
        assert_eq!(
            spread(vec![4.0, 1.0, 3.0, 2.0]),
            json!({"min": 1.0, "median": 2.0, "max": 4.0})
        );
        assert_eq!(
            spread(vec![]),
            json!({"min": null, "median": null, "max": null})
        );
    }

    #[test]
    fn summary_clamps_and_reports_milliseconds() {
        let mut h = new_histogram().unwrap();
        record(&mut h, Duration::from_millis(2)).unwrap();
        record(&mut h, Duration::from_secs(3600)).unwrap();
        let s = summary(&h, 2, Duration::from_secs(1));
        assert_eq!(s["requests"], 2);
        assert_eq!(s["throughput_per_sec"], 2.0);
        assert!(s["latency_ms"]["max"].as_f64().unwrap() <= 60_100.0);
        assert!((s["latency_ms"]["p50"].as_f64().unwrap() - 2.0).abs() < 0.01);
    }

    #[test]
    fn error_totals() {
        assert_eq!(error_total(&json!({"a": 2, "b": 3})), 5);
        assert_eq!(error_total(&json!({})), 0);
        assert_eq!(error_total(&Json::Null), 0);
    }
}

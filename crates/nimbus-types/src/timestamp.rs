//! Commit timestamps.

use std::fmt;

/// A commit timestamp: nanoseconds since the Unix epoch, strictly increasing per tenant
/// (the committer assigns `max(previous + 1, now)`), and persisted so it never goes back
/// across restarts. Clients see it as a u64 (base64 of its little-endian bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub const ZERO: Timestamp = Timestamp(0);

    /// The next timestamp after `self` that is not before `now_ns`.
    pub fn next_after(self, now_ns: u64) -> Timestamp {
        Timestamp(now_ns.max(self.0.saturating_add(1)))
    }

    /// Current wall-clock time in nanoseconds since the epoch (0 if the clock is before 1970).
    pub fn wall_clock_ns() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// The proleptic Gregorian `(year, month, day)` of a day number since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
pub fn civil_date(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // In range by construction: month 1..=12, day 1..=31.
    (year, month as u32, day as u32)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

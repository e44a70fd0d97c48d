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

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

//! Per-client-address bounds of the HTTP face: live connections, and failed admin
//! authentications.
//!
//! Both tables hold an entry per address only while it matters (an open connection, a
//! failure inside the window), and the failure table is capped in entries as well, so no
//! client can make them grow without bound.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use parking_lot::Mutex;

use crate::ApiError;

/// Open WebSocket connections per client address, across every tenant.
pub(crate) struct ConnectionLimiter {
    max_per_address: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection counted against its address; released on drop.
pub(crate) struct ConnectionSlot {
    limiter: Arc<ConnectionLimiter>,
    address: IpAddr,
}

impl ConnectionLimiter {
    pub fn new(max_per_address: usize) -> Arc<ConnectionLimiter> {
        Arc::new(ConnectionLimiter {
            max_per_address: max_per_address.max(1),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Connections open now, from every address.
    pub fn open_total(&self) -> usize {
        self.open.lock().values().sum()
    }

    /// Counts a new connection from `address`, or refuses it (429) when the address has
    /// `max_per_address` open already.
    pub fn acquire(self: &Arc<Self>, address: IpAddr) -> Result<ConnectionSlot, ApiError> {
        let mut open = self.open.lock();
        let count = open.entry(address).or_insert(0);
        if *count >= self.max_per_address {
            let mut error = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyConnections",
                format!(
                    "this client address already has {} live connections open, the most one \
                     address may have; close some and retry",
                    self.max_per_address
                ),
            );
            error.retry_after_secs = Some(5);
            return Err(error);
        }
        *count += 1;
        Ok(ConnectionSlot {
            limiter: self.clone(),
            address,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.limiter.open.lock();
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.address);
            }
        }
    }
}

/// Failed admin authentications per client address in a fixed window. An address that
/// failed `max_failures` times in the window is refused (429) every admin request, right
/// key or not, until the window ends: guessing keys costs a window per `max_failures`
/// guesses, and other addresses are not affected.
pub(crate) struct AuthFailures {
    max_failures: u32,
    window: Duration,
    /// Most addresses tracked; when full, expired windows are dropped, then the oldest.
    max_addresses: usize,
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl AuthFailures {
    pub fn new(max_failures: u32, window: Duration, max_addresses: usize) -> AuthFailures {
        AuthFailures {
            max_failures: max_failures.max(1),
            window,
            max_addresses: max_addresses.max(1),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Refuses an admin request from `address` while it is locked out.
    pub fn check(&self, address: IpAddr) -> Result<(), ApiError> {
        let mut failures = self.failures.lock();
        let Some((started, count)) = failures.get(&address).copied() else {
            return Ok(());
        };
        let elapsed = started.elapsed();
        if elapsed >= self.window {
            failures.remove(&address);
            return Ok(());
        }
        if count < self.max_failures {
            return Ok(());
        }
        let mut error = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyFailedAuthentications",
            format!(
                "{count} failed admin authentications from this address in the last {} s; \
                 admin requests from it are refused until the window ends",
                self.window.as_secs()
            ),
        );
        error.retry_after_secs = Some((self.window - elapsed).as_secs().max(1));
        Err(error)
    }

    /// Counts a failed admin authentication from `address`.
    pub fn record_failure(&self, address: IpAddr) {
        let mut failures = self.failures.lock();
        if failures.len() >= self.max_addresses && !failures.contains_key(&address) {
            let window = self.window;
            failures.retain(|_, (started, _)| started.elapsed() < window);
            if failures.len() >= self.max_addresses {
                let oldest = failures
                    .iter()
                    .min_by_key(|(_, (started, _))| *started)
                    .map(|(a, _)| *a);
                if let Some(oldest) = oldest {
                    failures.remove(&oldest);
                }
            }
        }
        let entry = failures.entry(address).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= self.window {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_counted_per_address_and_released() {
        let limiter = ConnectionLimiter::new(2);
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let first = limiter.acquire(a).ok();
        let _second = limiter.acquire(a).ok();
        assert!(first.is_some());
        let refused = limiter.acquire(a).err();
        assert_eq!(refused.map(|e| e.code), Some("TooManyConnections"));
        assert!(
            limiter.acquire(b).is_ok(),
            "another address is not affected"
        );
        drop(first);
        assert!(
            limiter.acquire(a).is_ok(),
            "a closed connection frees its slot"
        );
    }

    #[test]
    fn failures_lock_one_address_out_for_the_window() {
        let failures = AuthFailures::new(3, Duration::from_millis(200), 2);
        let a: IpAddr = [10, 0, 0, 1].into();
        for _ in 0..3 {
            assert!(failures.check(a).is_ok());
            failures.record_failure(a);
        }
        let locked = failures.check(a).err();
        assert_eq!(locked.map(|e| e.code), Some("TooManyFailedAuthentications"));
        assert!(failures.check([10, 0, 0, 2].into()).is_ok());
        std::thread::sleep(Duration::from_millis(250));
        assert!(
            failures.check(a).is_ok(),
            "the lockout ends with the window"
        );
        // The table stays within its bound of addresses.
        for last in 0..50u8 {
            failures.record_failure([10, 1, 0, last].into());
        }
        assert!(failures.failures.lock().len() <= 2);
    }
}

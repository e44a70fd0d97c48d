//! Counting bounds whose limit can change while they are in use (per-tenant limits are
//! changed live through the admin API).
//!
//! - [`Gate`]: admits or refuses at once (calls in flight, actions alive).
//! - [`Slots`]: waits for a turn (calls in the JavaScript pool).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A fail-fast bound: at most `limit` holders at once; one more is refused, not queued.
#[derive(Debug)]
pub(crate) struct Gate {
    limit: AtomicUsize,
    held: AtomicUsize,
}

/// One admission through a [`Gate`], returned when dropped.
#[derive(Debug)]
pub(crate) struct GatePass(Arc<Gate>);

impl Drop for GatePass {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Gate {
    pub fn new(limit: usize) -> Arc<Gate> {
        Arc::new(Gate {
            limit: AtomicUsize::new(limit.max(1)),
            held: AtomicUsize::new(0),
        })
    }

    /// Admits one more holder, unless `limit` are held. A lowered limit refuses newcomers
    /// until enough holders have left; it never takes a pass back.
    pub fn try_enter(self: &Arc<Self>) -> Option<GatePass> {
        let limit = self.limit.load(Ordering::Acquire);
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held < limit).then_some(held + 1)
            })
            .ok()
            .map(|_| GatePass(self.clone()))
    }

    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Acquire)
    }

    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit.max(1), Ordering::Release);
    }
}

/// A waiting bound: at most `limit` turns at once; callers beyond it wait in order.
#[derive(Debug)]
pub(crate) struct Slots {
    semaphore: Arc<Semaphore>,
    /// The limit asked for (the semaphore's permits converge on it).
    limit: AtomicUsize,
    /// Permits the semaphore has now, in use or not: raised at once, lowered as turns end.
    total: Arc<AtomicUsize>,
    /// Serializes resizes, so two changes cannot interleave their arithmetic.
    resize: parking_lot::Mutex<()>,
}

impl Slots {
    pub fn new(limit: usize) -> Slots {
        let limit = limit.max(1);
        Slots {
            semaphore: Arc::new(Semaphore::new(limit)),
            limit: AtomicUsize::new(limit),
            total: Arc::new(AtomicUsize::new(limit)),
            resize: parking_lot::Mutex::new(()),
        }
    }

    /// Waits for a turn; fails only once the semaphore is closed.
    pub async fn acquire(&self) -> Result<OwnedSemaphorePermit, tokio::sync::AcquireError> {
        self.semaphore.clone().acquire_owned().await
    }

    /// Turns in use (by the permits that exist now).
    pub fn in_use(&self) -> usize {
        self.total
            .load(Ordering::Acquire)
            .saturating_sub(self.semaphore.available_permits())
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Acquire)
    }

    /// Changes the limit. A raise adds turns at once. A lowering takes free turns at once,
    /// and the rest as the turns in use end: a task waits for them in line with the other
    /// waiters and retires them, so calls running now are never cut short.
    pub fn set_limit(&self, limit: usize) {
        let limit = limit.max(1);
        let _resize = self.resize.lock();
        let old = self.limit.swap(limit, Ordering::AcqRel);
        if limit > old {
            // Turns still owed to an earlier lowering are retired by its task; raising
            // adds on top of what the semaphore has, so the two settle on `limit`.
            self.semaphore.add_permits(limit - old);
            self.total.fetch_add(limit - old, Ordering::AcqRel);
        } else if limit < old {
            let excess = old - limit;
            let taken = self.semaphore.forget_permits(excess);
            self.total.fetch_sub(taken, Ordering::AcqRel);
            let owed = excess - taken;
            if owed > 0 {
                let semaphore = self.semaphore.clone();
                let total = self.total.clone();
                let Ok(owed_u32) = u32::try_from(owed) else {
                    return;
                };
                tokio::spawn(async move {
                    if let Ok(permits) = semaphore.acquire_many_owned(owed_u32).await {
                        permits.forget();
                        total.fetch_sub(owed, Ordering::AcqRel);
                    }
                });
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_gate_refuses_past_its_limit_and_follows_a_new_one() {
        let gate = Gate::new(2);
        let a = gate.try_enter().unwrap();
        let _b = gate.try_enter().unwrap();
        assert!(gate.try_enter().is_none(), "two held, limit two");
        gate.set_limit(1);
        drop(a);
        assert!(gate.try_enter().is_none(), "still one held, new limit one");
        gate.set_limit(3);
        let _c = gate.try_enter().unwrap();
        let _d = gate.try_enter().unwrap();
        assert_eq!(gate.held(), 3);
        assert!(gate.try_enter().is_none());
    }

    #[tokio::test]
    async fn slots_shrink_as_turns_end_and_grow_at_once() {
        let slots = Slots::new(3);
        let a = slots.acquire().await.unwrap();
        let b = slots.acquire().await.unwrap();
        slots.set_limit(1);
        // One free turn was retired at once; one more is owed by the turns in use.
        assert_eq!(slots.in_use(), 2);
        drop(a);
        // The retiring task takes the turn `a` gave back.
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while slots.total.load(Ordering::Acquire) != 1 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        assert!(
            slots.semaphore.try_acquire().is_err(),
            "b holds the only turn"
        );
        drop(b);
        let c = slots.acquire().await.unwrap();
        assert!(slots.semaphore.try_acquire().is_err(), "still one turn");
        slots.set_limit(4);
        let _d = slots.acquire().await.unwrap();
        let _e = slots.acquire().await.unwrap();
        let _f = slots.acquire().await.unwrap();
        assert_eq!(slots.in_use(), 4);
        assert!(slots.semaphore.try_acquire().is_err());
        drop(c);
    }
}

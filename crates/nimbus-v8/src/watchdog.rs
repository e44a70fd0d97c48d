//! One thread per process that terminates isolates at their deadlines.
//!
//! An isolate is armed with a deadline before an entry and disarmed after it. Both, and the
//! termination itself, happen under one lock, so once [`disarm`] returns the watchdog will
//! never touch that isolate again and it may be dropped.
//!
//! Arming must be cheap: every function call arms once. So the watchdog ticks (every
//! [`TICK`], or sooner for an earlier deadline) instead of being woken by each arm, which
//! cost a thread wake-up per call; a deadline strikes at most a tick late. After a second
//! with nothing armed it sleeps until the next arm wakes it.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::engine::{terminate, RawIsolate};

struct Armed {
    deadline: Instant,
    isolate: *mut RawIsolate,
}

// SAFETY: the pointer is only used to call nv8_terminate (thread-safe in V8), and only while
// the entry is in the map, i.e. before its isolate's disarm.
#[allow(unsafe_code)]
unsafe impl Send for Armed {}

/// How often the watchdog looks for deadlines that passed.
const TICK: Duration = Duration::from_millis(5);
/// Ticks with nothing armed before the watchdog sleeps until woken.
const IDLE_TICKS: u32 = 200;

#[derive(Default)]
struct State {
    next_id: u64,
    armed: BTreeMap<u64, Armed>,
    /// The watchdog waits for a wake-up (nothing was armed for a while).
    sleeping: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

fn shared() -> &'static Arc<Shared> {
    static SHARED: OnceLock<Arc<Shared>> = OnceLock::new();
    SHARED.get_or_init(|| {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let watched = shared.clone();
        // If the thread cannot start, deadlines are not enforced; nothing else breaks.
        if let Err(e) = std::thread::Builder::new()
            .name("nimbus-v8-watchdog".into())
            .spawn(move || watch(&watched))
        {
            eprintln!("nimbus-v8: cannot start the watchdog thread: {e}");
        }
        shared
    })
}

fn watch(shared: &Shared) {
    let mut state = shared.state.lock();
    let mut idle_ticks = 0u32;
    loop {
        let now = Instant::now();
        let due: Vec<u64> = state
            .armed
            .iter()
            .filter(|(_, a)| a.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(armed) = state.armed.remove(&id) {
                // SAFETY: in the map, so not yet disarmed, so alive (see the module doc).
                #[allow(unsafe_code)]
                unsafe {
                    terminate(armed.isolate)
                };
            }
        }
        if state.armed.is_empty() {
            idle_ticks += 1;
            if idle_ticks >= IDLE_TICKS {
                state.sleeping = true;
                shared.wake.wait(&mut state);
                state.sleeping = false;
                idle_ticks = 0;
                continue;
            }
        } else {
            idle_ticks = 0;
        }
        let tick = now + TICK;
        let next = state
            .armed
            .values()
            .map(|a| a.deadline)
            .min()
            .map_or(tick, |deadline| deadline.min(tick));
        shared.wake.wait_until(&mut state, next);
    }
}

/// Terminates `isolate`'s running entry at `deadline`, unless disarmed first.
pub(crate) fn arm(isolate: *mut RawIsolate, deadline: Instant) -> u64 {
    let shared = shared();
    let mut state = shared.state.lock();
    state.next_id += 1;
    let id = state.next_id;
    state.armed.insert(id, Armed { deadline, isolate });
    let sleeping = state.sleeping;
    drop(state);
    if sleeping {
        shared.wake.notify_one();
    }
    id
}

/// Forgets entry `id`; true if its deadline had already struck.
pub(crate) fn disarm(id: u64) -> bool {
    shared().state.lock().armed.remove(&id).is_none()
}

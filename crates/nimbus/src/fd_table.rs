//! The process's file descriptor table, grown to its working size once at start.
//!
//! Linux grows a process's descriptor table by doubling (64, 128, 256, ... slots) when a
//! descriptor past its end is opened, and in a process with more than one thread each
//! growth waits for an RCU grace period (`synchronize_rcu` in `expand_fdtable`): several
//! milliseconds during which the thread opening the descriptor is blocked. A server opens
//! descriptors as tenants activate (an SQLite tenant holds three: its database, WAL and
//! shared memory) and sockets connect, so the growths land on requests: measured here, the
//! first requests to the 21st, 45th, 91st and 184th tenant activated after a start took
//! 17–20 ms instead of 7–9 ms, on either JavaScript engine. The table never shrinks, so
//! growing it before the first thread exists costs one allocation and no wait.

use rustix::io::fcntl_dupfd_cloexec;
use rustix::process::{getrlimit, Resource};

/// Slots reserved at most: 65,536 descriptors take 512 KiB of table in the kernel.
const MAX_SLOTS: u64 = 1 << 16;

/// Grows the table to the descriptor limit (at most [`MAX_SLOTS`]). Call it before any
/// thread is started; it changes nothing else (the descriptor it opens is closed at once).
pub fn presize() -> Option<u64> {
    let limit = getrlimit(Resource::Nofile).current.unwrap_or(MAX_SLOTS);
    let highest = limit.min(MAX_SLOTS).checked_sub(1)?;
    if highest < 64 {
        return None;
    }
    // The lowest free descriptor at or above `highest`: the table grows to hold it.
    let fd = fcntl_dupfd_cloexec(std::io::stderr(), i32::try_from(highest).ok()?).ok()?;
    drop(fd);
    Some(highest + 1)
}

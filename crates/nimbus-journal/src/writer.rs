//! The writer thread: takes every record waiting, appends them as one round, syncs once,
//! answers each caller.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::error::{io, JournalError};
use crate::format;
use crate::recover::segment_path;
use crate::state::{Pending, Segment, Shared};
use crate::{Lsn, TenantKey};

/// The segment being appended to.
struct Active {
    file: File,
    first: Lsn,
    bytes: u64,
}

pub(crate) fn run(shared: &Shared) {
    let mut active: Option<Active> = None;
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        // Take a round: records in arrival order, LSNs given here so file order is LSN
        // order.
        let (round, first_lsn) = {
            let mut state = shared.state.lock();
            while state.pending.is_empty() && !state.closing {
                shared.work.wait(&mut state);
            }
            if state.pending.is_empty() {
                return;
            }
            let mut round: Vec<Pending> = Vec::new();
            let mut bytes = 0;
            while let Some(next) = state.pending.front() {
                if !round.is_empty() && bytes + next.bytes > shared.config.max_round_bytes {
                    break;
                }
                bytes += next.bytes;
                if let Some(next) = state.pending.pop_front() {
                    round.push(next);
                }
            }
            let first_lsn = state.next_lsn;
            state.next_lsn = Lsn(first_lsn.0 + round.len() as u64);
            (round, first_lsn)
        };

        buffer.clear();
        let mut written: Vec<(TenantKey, Lsn, u32)> = Vec::with_capacity(round.len());
        for (i, record) in round.iter().enumerate() {
            let lsn = Lsn(first_lsn.0 + i as u64);
            let before = buffer.len();
            format::encode_record(&mut buffer, lsn, &record.tenant, &record.payload);
            written.push((record.tenant.clone(), lsn, (buffer.len() - before) as u32));
        }
        let outcome = write_round(shared, &mut active, first_lsn, &buffer);
        // A failed round is undone on disk before anyone hears of it.
        let undone = match &outcome {
            Ok(_) => Ok(()),
            Err(_) => undo_round(shared, &mut active, first_lsn),
        };

        let mut state = shared.state.lock();
        state.pending_bytes -= round.iter().map(|p| p.bytes).sum::<usize>();
        let outcome = match (outcome, undone) {
            (Err(error), Ok(())) => {
                // Nothing of the round is in the journal: its callers fail (their commits
                // never happened), its LSNs go to the next round, and appends go on — a
                // full disk, once freed, needs no restart.
                tracing::error!(%error, "a journal round failed and was undone; appends go on");
                state.next_lsn = first_lsn;
                drop(state);
                shared.room.notify_all();
                for record in round {
                    let _ = record.reply.send(Err(error.clone()));
                }
                continue;
            }
            (Err(error), Err(undo)) => Err(JournalError::Io(format!(
                "{error}; undoing the round failed too: {undo}"
            ))),
            (ok, _) => ok,
        };
        match outcome {
            Ok((segment_first, durable)) => {
                shared.written(&mut state, segment_first, durable, &written);
                drop(state);
                shared.room.notify_all();
                for (record, (_, lsn, _)) in round.into_iter().zip(&written) {
                    let _ = record.reply.send(Ok(*lsn));
                }
            }
            Err(error) => {
                // What reached the disk is unknown: refuse everything until a new open
                // scans it.
                tracing::error!(%error, "journal write failed and could not be undone; the journal refuses appends until a restart");
                state.failed = Some(error.clone());
                let waiting: Vec<Pending> = state.pending.drain(..).collect();
                state.pending_bytes = 0;
                drop(state);
                shared.room.notify_all();
                for record in round.into_iter().chain(waiting) {
                    let _ = record.reply.send(Err(error.clone()));
                }
                return;
            }
        }
    }
}

/// Appends `bytes` (records from `first_lsn` on) to the active segment, starting a new one
/// first when it is full, and syncs; the segment's first LSN and its new durable length.
fn write_round(
    shared: &Shared,
    active: &mut Option<Active>,
    first_lsn: Lsn,
    bytes: &[u8],
) -> Result<(Lsn, u64), JournalError> {
    let full = active.as_ref().is_none_or(|a| {
        a.bytes > format::SEGMENT_HEADER_BYTES as u64
            && a.bytes + bytes.len() as u64 > shared.config.segment_bytes
    });
    if full {
        // The previous segment was synced with its last round; start the next.
        let file = create_segment(&shared.config.dir, first_lsn)?;
        let mut state = shared.state.lock();
        state.segments.push_back(Segment {
            path: segment_path(&shared.config.dir, first_lsn),
            first: first_lsn,
            last: None,
            bytes: format::SEGMENT_HEADER_BYTES as u64,
            tenants: Default::default(),
        });
        state.disk_bytes += format::SEGMENT_HEADER_BYTES as u64;
        *active = Some(Active {
            file,
            first: first_lsn,
            bytes: format::SEGMENT_HEADER_BYTES as u64,
        });
    }
    let Some(segment) = active.as_mut() else {
        return Err(JournalError::Io("no active segment".into()));
    };
    segment
        .file
        .write_all(bytes)
        .map_err(|e| io("appending to a segment", e))?;
    fault("after-append");
    if shared.config.sync {
        segment
            .file
            .sync_data()
            .map_err(|e| io("syncing a segment", e))?;
    }
    fault("after-sync");
    segment.bytes += bytes.len() as u64;
    Ok((segment.first, segment.bytes))
}

/// After a failed round: cuts the active segment back to what was durable before it and
/// stops appending to that file (after a failed sync, the kernel may have dropped pages it
/// still reports as written), and removes a segment made for this round. The next round
/// starts a new segment, at the same LSN.
fn undo_round(
    shared: &Shared,
    active: &mut Option<Active>,
    first_lsn: Lsn,
) -> Result<(), JournalError> {
    if let Some(segment) = active.take() {
        segment
            .file
            .set_len(segment.bytes)
            .map_err(|e| io("cutting a failed round off its segment", e))?;
        segment
            .file
            .sync_all()
            .map_err(|e| io("syncing a segment after a failed round", e))?;
    }
    let made_for_round = segment_path(&shared.config.dir, first_lsn);
    if made_for_round.exists() {
        std::fs::remove_file(&made_for_round)
            .map_err(|e| io("removing the segment of a failed round", e))?;
        let mut state = shared.state.lock();
        if state.segments.back().is_some_and(|s| s.first == first_lsn) {
            if let Some(segment) = state.segments.pop_back() {
                state.disk_bytes -= segment.bytes;
            }
        }
    }
    Ok(())
}

/// Creates a segment with its header, durably (the file and its directory entry).
fn create_segment(dir: &Path, first: Lsn) -> Result<File, JournalError> {
    let path = segment_path(dir, first);
    let mut file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(|e| io("creating a segment", e))?;
    file.write_all(&format::segment_header(first))
        .map_err(|e| io("writing a segment header", e))?;
    file.sync_all()
        .map_err(|e| io("syncing a new segment", e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("syncing the journal directory", e))?;
    Ok(file)
}

/// Crash tests: with `NIMBUS_JOURNAL_FAULT=<point>` the process kills itself with SIGKILL
/// when it reaches that point, after `NIMBUS_JOURNAL_FAULT_AFTER` earlier passes (default
/// 0). The journal's points are `after-append` (written, not synced), `after-sync` (synced,
/// not yet answered, so not applied) and `during-truncation` (after deleting a segment);
/// its users name their own. Only in builds with the `fault-injection` feature; a no-op
/// otherwise.
#[cfg(feature = "fault-injection")]
pub fn fault(point: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static PASSES: AtomicU64 = AtomicU64::new(0);
    if std::env::var("NIMBUS_JOURNAL_FAULT").ok().as_deref() != Some(point) {
        return;
    }
    let after: u64 = std::env::var("NIMBUS_JOURNAL_FAULT_AFTER")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if PASSES.fetch_add(1, Ordering::Relaxed) >= after {
        let _ = std::process::Command::new("kill")
            .args(["-9", &std::process::id().to_string()])
            .status();
        std::process::abort();
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn fault(_point: &str) {}

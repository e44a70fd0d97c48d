//! What the journal knows between the writer and its callers: records waiting for a
//! round, the segments on disk, and each tenant's unapplied records.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::error::{io, JournalError};
use crate::format::{self, Record};
use crate::recover::{FoundSegment, Recovered};
use crate::{JournalConfig, Lsn, TenantKey};

/// A record waiting for the writer, with where its caller waits for the answer.
pub(crate) struct Pending {
    pub tenant: TenantKey,
    pub payload: Vec<u8>,
    pub bytes: usize,
    pub since: Instant,
    pub reply: mpsc::SyncSender<Result<Lsn, JournalError>>,
}

/// A segment on disk.
pub(crate) struct Segment {
    pub path: PathBuf,
    pub first: Lsn,
    pub last: Option<Lsn>,
    /// Bytes that are durable (what replay may read).
    pub bytes: u64,
    /// Per tenant: its last LSN in this segment.
    pub tenants: HashMap<TenantKey, Lsn>,
}

impl From<FoundSegment> for Segment {
    fn from(found: FoundSegment) -> Segment {
        Segment {
            path: found.path,
            first: found.first,
            last: found.last,
            bytes: found.bytes,
            tenants: found.tenants,
        }
    }
}

#[derive(Default)]
struct TenantState {
    /// Applied through this LSN; `None` until reported since the open (pins its segments).
    applied: Option<Lsn>,
    /// Records not yet applied: LSN, bytes, when appended (the open's time for records
    /// found on disk).
    unapplied: VecDeque<(Lsn, u32, Instant)>,
    last: Option<Lsn>,
    dead: bool,
}

impl TenantState {
    /// Live, with records not yet applied (or not known applied since the open).
    fn behind(&self) -> bool {
        !self.dead && (self.applied.is_none() || !self.unapplied.is_empty())
    }
}

pub(crate) struct State {
    pub pending: VecDeque<Pending>,
    pub pending_bytes: usize,
    /// Set after a failed write or sync: every later append fails with it.
    pub failed: Option<JournalError>,
    pub closing: bool,
    /// Oldest first; the last is the one the writer appends to (once it made one).
    pub segments: VecDeque<Segment>,
    pub next_lsn: Lsn,
    tenants: HashMap<TenantKey, TenantState>,
    pub disk_bytes: u64,
    pub rounds: u64,
    pub records: u64,
    pub deleted_segments: u64,
}

pub(crate) struct Shared {
    pub config: JournalConfig,
    pub state: Mutex<State>,
    /// Signalled when a record is queued or the journal closes.
    pub work: Condvar,
    /// Signalled when pending bytes are freed.
    pub room: Condvar,
}

/// A tenant's unapplied records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TenantLag {
    pub records: u64,
    pub bytes: u64,
    /// Age of the oldest unapplied record.
    pub oldest: Duration,
    /// Whether the tenant's applied position has been reported since the open.
    pub applied_known: bool,
}

/// Instance-wide figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JournalStats {
    pub segments: u64,
    pub disk_bytes: u64,
    pub max_disk_bytes: u64,
    /// Rounds written (each one sync).
    pub rounds: u64,
    /// Records appended since the open.
    pub records: u64,
    pub pending_records: u64,
    pub pending_bytes: u64,
    pub next_lsn: u64,
    pub deleted_segments: u64,
    /// Tenants with records not applied (or not known applied).
    pub tenants_behind: u64,
}

impl Shared {
    pub fn new(config: JournalConfig, recovered: Recovered) -> Result<Shared, JournalError> {
        let opened = Instant::now();
        let disk_bytes = recovered.segments.iter().map(|s| s.bytes).sum();
        let tenants = recovered
            .records
            .into_iter()
            .map(|(key, records)| {
                let last = records.last().map(|(lsn, _)| *lsn);
                let unapplied = records
                    .into_iter()
                    .map(|(lsn, bytes)| (lsn, bytes, opened))
                    .collect();
                (
                    key,
                    TenantState {
                        applied: None,
                        unapplied,
                        last,
                        dead: false,
                    },
                )
            })
            .collect();
        Ok(Shared {
            state: Mutex::new(State {
                pending: VecDeque::new(),
                pending_bytes: 0,
                failed: None,
                closing: false,
                segments: recovered.segments.into_iter().map(Segment::from).collect(),
                next_lsn: recovered.next_lsn,
                tenants,
                disk_bytes,
                rounds: 0,
                records: 0,
                deleted_segments: 0,
            }),
            work: Condvar::new(),
            room: Condvar::new(),
            config,
        })
    }

    pub fn append(&self, tenant: &TenantKey, payload: &[u8]) -> Result<Lsn, JournalError> {
        if tenant.name.len() > format::MAX_TENANT_NAME_BYTES {
            return Err(JournalError::Refused(format!(
                "tenant name of {} bytes (at most {})",
                tenant.name.len(),
                format::MAX_TENANT_NAME_BYTES
            )));
        }
        let bytes = format::record_bytes(tenant, payload.len());
        if bytes > self.config.max_record_bytes {
            return Err(JournalError::Refused(format!(
                "a record of {bytes} bytes (at most {})",
                self.config.max_record_bytes
            )));
        }
        let (reply, answer) = mpsc::sync_channel(1);
        {
            let mut state = self.state.lock();
            loop {
                if let Some(failed) = &state.failed {
                    return Err(failed.clone());
                }
                if state.closing {
                    return Err(JournalError::Closed);
                }
                if state.disk_bytes + (state.pending_bytes + bytes) as u64
                    > self.config.max_disk_bytes
                {
                    return Err(JournalError::Full(format!(
                        "{} bytes on disk and {} waiting, of at most {}; it frees as tenants \
                         apply their records",
                        state.disk_bytes, state.pending_bytes, self.config.max_disk_bytes
                    )));
                }
                if state.pending_bytes + bytes <= self.config.max_pending_bytes {
                    break;
                }
                self.room.wait(&mut state);
            }
            state.pending_bytes += bytes;
            state.pending.push_back(Pending {
                tenant: tenant.clone(),
                payload: payload.to_vec(),
                bytes,
                since: Instant::now(),
                reply,
            });
        }
        self.work.notify_one();
        answer.recv().map_err(|_| JournalError::Closed)?
    }

    /// Called by the writer after a round is durable: the segment's new durable length and
    /// the records it holds.
    pub fn written(
        &self,
        state: &mut State,
        segment_first: Lsn,
        durable_bytes: u64,
        records: &[(TenantKey, Lsn, u32)],
    ) {
        let now = Instant::now();
        if let Some(segment) = state.segments.iter_mut().find(|s| s.first == segment_first) {
            state.disk_bytes += durable_bytes - segment.bytes;
            segment.bytes = durable_bytes;
            for (tenant, lsn, _) in records {
                segment.last = Some(*lsn);
                segment.tenants.insert(tenant.clone(), *lsn);
            }
        }
        for (tenant, lsn, bytes) in records {
            let entry = state
                .tenants
                .entry(tenant.clone())
                .or_insert_with(|| TenantState {
                    // A tenant first seen appending: nothing of it predates this open, so
                    // nothing before this record needs applying.
                    applied: Some(Lsn(lsn.0 - 1)),
                    ..TenantState::default()
                });
            entry.last = Some(*lsn);
            if !entry.dead {
                entry.unapplied.push_back((*lsn, *bytes, now));
            }
        }
        state.rounds += 1;
        state.records += records.len() as u64;
    }

    pub fn replay(
        &self,
        tenant: &TenantKey,
        after: Lsn,
        visit: &mut dyn FnMut(Record) -> bool,
    ) -> Result<(), JournalError> {
        // The segments to read and how far, taken under the lock; read without it.
        let segments: Vec<(PathBuf, u64)> = {
            let state = self.state.lock();
            if state.tenants.get(tenant).is_some_and(|t| t.dead) {
                return Ok(());
            }
            state
                .segments
                .iter()
                .filter(|s| s.tenants.get(tenant).is_some_and(|last| *last > after))
                .map(|s| (s.path.clone(), s.bytes))
                .collect()
        };
        for (path, durable) in segments {
            let mut bytes = std::fs::read(&path).map_err(|e| io("reading a segment", e))?;
            bytes.truncate(durable as usize);
            let mut wanted = Vec::new();
            format::scan_segment(&bytes, |record, _| {
                if &record.tenant == tenant && record.lsn > after {
                    wanted.push(record);
                }
            })?;
            for record in wanted {
                if !visit(record) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    pub fn set_applied(&self, tenant: &TenantKey, lsn: Lsn) {
        let mut state = self.state.lock();
        let entry = state.tenants.entry(tenant.clone()).or_default();
        if entry.applied.is_some_and(|applied| applied >= lsn) {
            return;
        }
        entry.applied = Some(lsn);
        while entry.unapplied.front().is_some_and(|(l, _, _)| *l <= lsn) {
            entry.unapplied.pop_front();
        }
    }

    pub fn forget(&self, tenant: &TenantKey) {
        let mut state = self.state.lock();
        let entry = state.tenants.entry(tenant.clone()).or_default();
        entry.dead = true;
        entry.unapplied.clear();
    }

    pub fn tenants_behind(&self) -> Vec<(TenantKey, Lsn)> {
        let state = self.state.lock();
        let mut behind: Vec<(TenantKey, Lsn)> = state
            .tenants
            .iter()
            .filter(|(_, t)| t.behind())
            .filter_map(|(key, t)| t.last.map(|last| (key.clone(), last)))
            .collect();
        behind.sort();
        behind
    }

    pub fn truncate(&self) -> Result<usize, JournalError> {
        let mut state = self.state.lock();
        let mut deleted = 0;
        // Never the last segment: the writer appends to it.
        while state.segments.len() > 1 {
            let Some(oldest) = state.segments.front() else {
                break;
            };
            let needed = oldest.tenants.iter().any(|(key, last)| {
                state
                    .tenants
                    .get(key)
                    .is_some_and(|t| !t.dead && t.applied.is_none_or(|applied| applied < *last))
            });
            if needed {
                break;
            }
            std::fs::remove_file(&oldest.path).map_err(|e| io("deleting a segment", e))?;
            crate::writer::fault("during-truncation");
            if let Some(segment) = state.segments.pop_front() {
                state.disk_bytes -= segment.bytes;
            }
            state.deleted_segments += 1;
            deleted += 1;
        }
        // Dead tenants whose records are all gone are forgotten for good.
        let State {
            tenants, segments, ..
        } = &mut *state;
        tenants.retain(|key, t| {
            !(t.dead || t.unapplied.is_empty() && t.applied.is_some())
                || segments.iter().any(|s| s.tenants.contains_key(key))
        });
        Ok(deleted)
    }

    pub fn lag(&self, tenant: &TenantKey) -> TenantLag {
        let state = self.state.lock();
        let Some(t) = state.tenants.get(tenant) else {
            return TenantLag {
                applied_known: true,
                ..TenantLag::default()
            };
        };
        TenantLag {
            records: t.unapplied.len() as u64,
            bytes: t.unapplied.iter().map(|(_, b, _)| u64::from(*b)).sum(),
            oldest: t
                .unapplied
                .front()
                .map_or(Duration::ZERO, |(_, _, at)| at.elapsed()),
            applied_known: t.applied.is_some(),
        }
    }

    pub fn stats(&self) -> JournalStats {
        let state = self.state.lock();
        JournalStats {
            segments: state.segments.len() as u64,
            disk_bytes: state.disk_bytes,
            max_disk_bytes: self.config.max_disk_bytes,
            rounds: state.rounds,
            records: state.records,
            pending_records: state.pending.len() as u64,
            pending_bytes: state.pending_bytes as u64,
            next_lsn: state.next_lsn.0,
            deleted_segments: state.deleted_segments,
            tenants_behind: state.tenants.values().filter(|t| t.behind()).count() as u64,
        }
    }

    pub fn oldest_pending(&self) -> Duration {
        self.state
            .lock()
            .pending
            .front()
            .map_or(Duration::ZERO, |p| p.since.elapsed())
    }

    pub fn close(&self) {
        self.state.lock().closing = true;
        self.work.notify_all();
        self.room.notify_all();
    }
}

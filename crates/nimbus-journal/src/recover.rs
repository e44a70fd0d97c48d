//! Opening a journal directory: which segments there are, what records they hold, and
//! where a crash cut the last one short.

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use crate::error::{io, JournalError};
use crate::format::{self, Stop, SEGMENT_HEADER_BYTES};
use crate::{Lsn, TenantKey};

/// One segment file as found (and kept) at the open.
#[derive(Debug)]
pub(crate) struct FoundSegment {
    pub path: PathBuf,
    pub first: Lsn,
    /// LSN of its last record; `None` when it holds none.
    pub last: Option<Lsn>,
    /// Bytes of its valid prefix (the file is cut to this).
    pub bytes: u64,
    /// Per tenant: its last LSN in this segment.
    pub tenants: HashMap<TenantKey, Lsn>,
}

/// Everything the open found.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    pub segments: Vec<FoundSegment>,
    /// Per tenant, each record's LSN and bytes, in order.
    pub records: HashMap<TenantKey, Vec<(Lsn, u32)>>,
    /// The LSN the next record gets.
    pub next_lsn: Lsn,
}

pub(crate) fn segment_path(dir: &Path, first: Lsn) -> PathBuf {
    dir.join(format!("{:020}.journal", first.0))
}

pub(crate) fn recover(dir: &Path) -> Result<Recovered, JournalError> {
    let mut files: BTreeMap<u64, PathBuf> = BTreeMap::new();
    let entries = std::fs::read_dir(dir).map_err(|e| io("listing the journal", e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io("listing the journal", e))?;
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(stem) = name.strip_suffix(".journal") else {
            continue;
        };
        let first: u64 = stem.parse().map_err(|_| {
            JournalError::Corrupted(format!("{name}: not a segment name (<first LSN>.journal)"))
        })?;
        files.insert(first, path);
    }

    let mut recovered = Recovered {
        next_lsn: Lsn(1),
        ..Recovered::default()
    };
    let count = files.len();
    for (index, (named_first, path)) in files.into_iter().enumerate() {
        let is_last = index + 1 == count;
        let bytes = std::fs::read(&path).map_err(|e| io("reading a segment", e))?;
        if bytes.len() < SEGMENT_HEADER_BYTES && is_last {
            // A crash while the segment was being created: it holds nothing.
            tracing::warn!(path = %path.display(), "removing a segment cut short in its header");
            std::fs::remove_file(&path).map_err(|e| io("removing a torn segment", e))?;
            continue;
        }
        let mut segment = FoundSegment {
            path: path.clone(),
            first: Lsn(named_first),
            last: None,
            bytes: SEGMENT_HEADER_BYTES as u64,
            tenants: HashMap::new(),
        };
        let (first, stop) = format::scan_segment(&bytes, |record, end| {
            let size = (end as u64 - segment.bytes) as u32;
            segment.bytes = end as u64;
            segment.last = Some(record.lsn);
            segment.tenants.insert(record.tenant.clone(), record.lsn);
            recovered
                .records
                .entry(record.tenant)
                .or_default()
                .push((record.lsn, size));
        })
        .map_err(|e| JournalError::Corrupted(format!("{}: {e}", path.display())))?;
        if first.0 != named_first {
            return Err(JournalError::Corrupted(format!(
                "{}: its header says it starts at LSN {}",
                path.display(),
                first.0
            )));
        }
        if index > 0 && first != recovered.next_lsn {
            return Err(JournalError::Corrupted(format!(
                "{}: starts at LSN {} where {} was due (a segment is missing)",
                path.display(),
                first.0,
                recovered.next_lsn.0
            )));
        }
        if let Stop::Torn { offset, why } = stop {
            if !is_last {
                return Err(JournalError::Corrupted(format!(
                    "{} at byte {offset}: {why}, and it is not the last segment",
                    path.display()
                )));
            }
            tracing::warn!(path = %path.display(), offset, why, "cutting the journal's torn tail");
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| io("opening a torn segment", e))?;
            file.set_len(offset as u64)
                .map_err(|e| io("cutting a torn segment", e))?;
            file.sync_all()
                .map_err(|e| io("syncing a cut segment", e))?;
        }
        recovered.next_lsn = segment.last.map_or(first, |last| Lsn(last.0 + 1));
        recovered.segments.push(segment);
    }
    // A last segment without a record (a crash after its header, or before its first
    // round was whole) goes: appends start a new segment at the same LSN, under its name.
    if recovered.segments.last().is_some_and(|s| s.last.is_none()) {
        if let Some(empty) = recovered.segments.pop() {
            std::fs::remove_file(&empty.path).map_err(|e| io("removing an empty segment", e))?;
        }
    }
    Ok(recovered)
}

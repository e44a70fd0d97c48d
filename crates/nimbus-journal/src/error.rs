/// What can go wrong with the journal.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum JournalError {
    /// Reading, writing or syncing a segment failed. After a failed write or sync the
    /// journal refuses every append (what reached the disk is unknown until it is opened
    /// again and scanned).
    #[error("journal I/O failed: {0}")]
    Io(String),
    /// A segment other than the last is damaged, or the segments are not contiguous: not
    /// something a crash leaves, so the journal refuses to open rather than guess.
    #[error("journal corrupted: {0}")]
    Corrupted(String),
    /// The record cannot be journaled as it is (too large, or a tenant name too long).
    #[error("journal record refused: {0}")]
    Refused(String),
    /// The journal holds its maximum bytes on disk; appends resume as tenants apply their
    /// records and segments are deleted.
    #[error("journal full: {0}")]
    Full(String),
    /// The journal is closing.
    #[error("the journal is closed")]
    Closed,
}

pub(crate) fn io(what: &str, error: std::io::Error) -> JournalError {
    JournalError::Io(format!("{what}: {error}"))
}

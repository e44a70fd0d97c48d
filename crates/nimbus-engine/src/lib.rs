//! The engine of one tenant: serving snapshots, transactions, and the serial committer.
//!
//! - [`TenantEngine`] owns a tenant's published [`Snapshot`] and its committer task.
//! - Queries run in a [`Transaction`] against a snapshot and never wait for writes.
//! - Mutations run in a [`Transaction`] too; [`TenantEngine::commit`] sends the finished
//!   transaction through the tenant's bounded admission queue to the committer, which
//!   checks conflicts, groups commits into one durable storage write, and answers only
//!   after that write is durable.
//!
//! **Architecture invariants:** only the committer writes to storage; the engine knows
//! nothing of JavaScript, HTTP or other tenants.

pub mod catalog;
mod codec;
mod committer;
mod compact;
mod cursor;
mod deploy;
mod engine;
pub mod error;
mod journaled;
mod metrics;
pub mod range_index;
pub mod read_set;
mod relocate;
mod resident;
pub mod snapshot;
pub mod transaction;
mod undo_log;
mod write_log;

pub use committer::CommitNotice;
pub use deploy::{
    is_system_table, DeployCheck, DeployOutcome, DeployRequest, DocumentCheck, StageRequest,
    Staged, WantedIndexes,
};
pub use engine::{
    DeploymentCodec, DeploymentDecoder, DeploymentHandle, EngineConfig, StoreOpener, TenantEngine,
    ADMISSION_QUEUE_MAX,
};
pub use error::{EngineError, ErrorClass};
pub use journaled::{TenantJournal, APPLIED_GLOBAL};
pub use metrics::{EngineStats, StorageHealth, StorageState};
pub use range_index::{RangeHandle, RangeIndex};
pub use read_set::ReadSet;
pub use relocate::{Relocation, RelocationOutcome, Switch, MIRROR_MAX_BYTES};
pub use snapshot::{ScanEntry, Snapshot};
pub use transaction::{
    FinishedTransaction, Page, Transaction, TransactionLimits, TransactionStats,
};

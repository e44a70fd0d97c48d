//! The engine's error type.

use nimbus_storage::StorageError;
use nimbus_types::TypesError;

/// Errors of the engine. [`EngineError::class`] tells callers how to report each one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// Bad input from a function (invalid ID, bad query, limit exceeded): the function's
    /// fault, reported to it as an exception.
    #[error(transparent)]
    Types(#[from] TypesError),
    /// A user-level problem described in words (unknown index, write to a missing
    /// document, ...): reported to the function as an exception.
    #[error("{0}")]
    User(String),
    /// The transaction read something another transaction changed since its snapshot;
    /// the caller re-runs the mutation on a newer snapshot.
    #[error("write conflict: {0}")]
    Conflict(String),
    /// The tenant's admission queue is full; the caller answers 429 with Retry-After.
    #[error("the tenant's commit queue is full ({capacity} waiting commits)")]
    Overloaded { capacity: usize },
    /// A storage write failed; the tenant refuses writes until it is reopened.
    #[error("storage failed: {0}")]
    Storage(#[from] StorageError),
    /// The tenant's engine was shut down (tenant deleted or server stopping).
    #[error("the tenant is shutting down")]
    ShutDown,
    /// The tenant's storage failed; it refuses writes until it is reopened (which it
    /// retries by itself).
    #[error("the tenant's storage failed and it refuses writes until it is reopened (retried automatically): {0}")]
    Poisoned(String),
    /// Moving the tenant to another namespace failed or was refused; the tenant stays where
    /// it was (`relocate.rs`).
    #[error("moving the tenant's storage failed: {0}")]
    Relocation(String),
}

/// How an error is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The function's fault: an exception inside the function.
    User,
    /// Transient: retry the whole operation.
    Conflict,
    /// Too much load on this tenant: 429.
    Overloaded,
    /// The tenant cannot serve writes now: 503.
    Unavailable,
    /// A bug or a storage failure: 500.
    Internal,
}

impl EngineError {
    pub fn class(&self) -> ErrorClass {
        match self {
            EngineError::Types(_) | EngineError::User(_) => ErrorClass::User,
            EngineError::Conflict(_) => ErrorClass::Conflict,
            EngineError::Overloaded { .. } => ErrorClass::Overloaded,
            EngineError::ShutDown | EngineError::Poisoned(_) => ErrorClass::Unavailable,
            EngineError::Storage(StorageError::Busy(_)) => ErrorClass::Overloaded,
            EngineError::Storage(_) | EngineError::Relocation(_) => ErrorClass::Internal,
        }
    }
}

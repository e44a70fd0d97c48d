//! Maps driver and pool failures onto [`StorageError`].
//!
//! Anything that a retry can fix — the server unreachable or restarting, a connection
//! dropped, too many connections, the pool exhausted, a serialization failure — is
//! [`StorageError::Busy`]. A statement the server rejects for any other reason is
//! [`StorageError::Io`] with the server's code and message.

use nimbus_storage::StorageError;
use tokio_postgres::error::SqlState;

pub(crate) fn pg(context: &str, namespace: &str, e: tokio_postgres::Error) -> StorageError {
    let Some(code) = e.code() else {
        // No SQLSTATE: the connection failed or closed (I/O, timeout, protocol).
        return StorageError::Busy(format!("{namespace}: {context}: postgres unreachable: {e}"));
    };
    let detail = match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), code.code()),
        None => format!("{e} ({})", code.code()),
    };
    let class = &code.code()[..2];
    let retryable = class == "08" // connection exception
        || class == "53" // insufficient resources (too many connections, out of memory)
        || class == "57" // operator intervention (shutdown, cannot connect now)
        || *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::LOCK_NOT_AVAILABLE;
    if retryable {
        StorageError::Busy(format!("{namespace}: {context}: {detail}"))
    } else {
        StorageError::Io(format!("{namespace}: {context}: {detail}"))
    }
}

pub(crate) fn pool(
    context: &str,
    namespace: &str,
    e: deadpool_postgres::PoolError,
) -> StorageError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg(context, namespace, e),
        other => StorageError::Busy(format!(
            "{namespace}: {context}: no postgres connection: {other}"
        )),
    }
}

pub(crate) fn is(e: &tokio_postgres::Error, state: &SqlState) -> bool {
    e.code() == Some(state)
}

//! Runs the backend's async Postgres work from the synchronous storage trait.
//!
//! The engine calls [`nimbus_storage::TenantStore`] from blocking threads (the committer's
//! `spawn_blocking`, the JavaScript workers), never from an async task. Each call is
//! spawned on the backend's own small runtime, which owns every connection task, and the
//! caller waits on a one-slot channel. Waiting on a channel, unlike `Handle::block_on`, is
//! sound from any thread, so a caller can never trip tokio's "runtime inside a runtime"
//! panic; and the server's own runtime never drives a Postgres socket.

use std::future::Future;
use std::sync::mpsc;

use nimbus_storage::StorageError;

/// The backend's runtime. Dropping it stops every connection task without blocking, so the
/// backend may be dropped from inside an async context too.
pub(crate) struct Bridge {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Bridge {
    pub(crate) fn new(threads: usize) -> Result<Bridge, StorageError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("nimbus-postgres")
            .enable_all()
            .build()
            .map_err(|e| StorageError::Io(format!("starting the postgres runtime: {e}")))?;
        Ok(Bridge {
            runtime: Some(runtime),
        })
    }

    fn handle(&self) -> Result<&tokio::runtime::Handle, StorageError> {
        self.runtime
            .as_ref()
            .map(|r| r.handle())
            .ok_or_else(|| StorageError::Io("the postgres backend is shut down".into()))
    }

    /// Runs `work` on the backend's runtime and waits for its result.
    pub(crate) fn run<T, F>(&self, work: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StorageError>> + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        self.handle()?.spawn(async move {
            // The receiver is gone only if the caller's thread died; nothing to tell then.
            let _ = tx.send(work.await);
        });
        rx.recv().map_err(|_| {
            StorageError::Io("a postgres task ended without an answer (it panicked)".into())
        })?
    }

    /// Spawns `work` without waiting (streams that feed a caller through a channel).
    pub(crate) fn spawn<F>(&self, work: F) -> Result<(), StorageError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.handle()?.spawn(work);
        Ok(())
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

//! Graduation: moving a live shared-tier Postgres tenant into a database of its own
//! (`POST /admin/tenants/<t>/graduate`, optionally `?server=<name>`). The same move takes a
//! dedicated-tier tenant to another server.
//!
//! The tenant keeps serving throughout; its clients keep their URL. The steps:
//! 1. The target namespace (a database on the target server) is created; one left by an
//!    interrupted graduation is dropped first (the catalog never pointed at it).
//! 2. The engine starts mirroring every batch it commits (`nimbus-engine`'s `relocate.rs`),
//!    and the source is copied into the target page by page while writes go on; after
//!    each page the batches mirrored so far are replayed onto the target.
//! 3. The replay goes on in rounds until few batches are left.
//! 4. The switch: the committer pauses writes, replays the last batches, records the new
//!    location in the catalog (durably: a restart opens the target) and writes to the
//!    target from then on. Only this step pauses writes; queries never pause.
//! 5. The source schema is deleted. The catalog remembers it as `retired` until then, so a
//!    crash here leaves it for the next start to delete.
//!
//! Any failure before the switch leaves the tenant where it was, nothing lost (the source
//! is never written by the move), and the half-made target is dropped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nimbus_engine::{Relocation, StoreOpener};
use nimbus_storage::{ExportPosition, ExportedRow, StorageError, TenantStore};

use crate::error::AppError;
use crate::instance::Nimbus;
use crate::placement::{Location, Placement};

/// Rows and bytes per page of the copy: small enough that one page is a short read and
/// write, large enough that round trips do not dominate.
const PAGE_ROWS: usize = 2_000;
const PAGE_BYTES: usize = 4 << 20;
/// Catch-up rounds before the switch, and the backlog small enough to switch on.
const CATCH_UP_ROUNDS: usize = 20;
/// Documents a copy may find beyond twice the tenant's size at the start.
const CHASE_ALLOWANCE: u64 = 100_000;
const SWITCH_BACKLOG: usize = 32;

/// What a graduation did (the admin API's answer).
#[derive(Debug, Clone)]
pub struct Graduated {
    pub from: Location,
    pub to: Location,
    pub copied_rows: u64,
    pub copied_bytes: u64,
    /// Batches written while copying and replayed before the switch.
    pub caught_up_batches: usize,
    /// Batches replayed during the switch.
    pub final_batches: usize,
    /// How long writes paused for the switch.
    pub pause: Duration,
    pub duration: Duration,
}

impl Nimbus {
    /// Moves a shared-tier tenant into a database of its own, on `server` (its current
    /// server when `None`). See the module docs.
    pub async fn graduate_tenant(
        &self,
        name: &str,
        server: Option<&str>,
    ) -> Result<Graduated, AppError> {
        let started = Instant::now();
        // Taken before the catalog is read: while it is held the tenant cannot be deleted,
        // so the row read here stays this tenant's (a name is never reused under us).
        let _one_at_a_time = self.graduation_lock(name)?;
        let Some(row) = self.catalog().get(name)? else {
            return Err(AppError::TenantNotFound(name.to_string()));
        };
        let from = row.location()?;
        let target_server = server
            .map(str::to_string)
            .or_else(|| from.server.clone())
            .unwrap_or_default();
        match from.placement {
            Placement::Sqlite => {
                return Err(AppError::Conflict(format!(
                    "tenant {name:?} is in sqlite: only a Postgres tenant graduates to a \
                     database of its own"
                )))
            }
            Placement::PostgresDedicated if from.server.as_deref() == Some(&target_server) => {
                return Err(AppError::Conflict(format!(
                    "tenant {name:?} already has a database of its own on server \
                     {target_server:?}; name another server with ?server= to move it there"
                )))
            }
            _ => {}
        }
        let to = self
            .storage_backends()
            .choose(
                Placement::PostgresDedicated,
                Some(&target_server),
                &Default::default(),
            )
            .map_err(AppError::BadRequest)?;
        self.storage_backends()
            .check_name(&to, name)
            .map_err(AppError::BadRequest)?;
        let source_backend = self.backend_of(name, &from)?;
        let target_backend = self.backend_of(name, &to)?;
        tracing::info!(tenant = name, from = ?from.server, to = ?to.server, "graduation started");

        let namespace = name.to_string();
        let maker = target_backend.clone();
        let target = blocking(name, "creating the tenant's database", move || {
            if maker.namespace_exists(&namespace)? {
                tracing::warn!(tenant = %namespace, "dropping the database an interrupted graduation left");
                maker.delete_namespace(&namespace)?;
            }
            maker.create_namespace(&namespace)?;
            maker.open_namespace(&namespace)
        })
        .await?;

        let moved = self.move_into(name, &from, &to, target.clone()).await;
        let outcome = match moved {
            Ok(outcome) => outcome,
            Err(error) => {
                drop(target);
                let namespace = name.to_string();
                let dropped = blocking(name, "dropping the unfinished database", move || {
                    target_backend.delete_namespace(&namespace)
                })
                .await;
                if let Err(cleanup) = dropped {
                    tracing::warn!(tenant = name, %cleanup, "could not drop the database of a failed graduation; the next graduation drops it");
                }
                tracing::warn!(tenant = name, %error, "graduation failed; the tenant stays in the shared tier");
                return Err(error);
            }
        };

        // Switched: the source schema is retired; delete it now (a crash leaves it to the
        // next start, which reads `retired`).
        let namespace = name.to_string();
        let deleted = blocking(name, "deleting the shared-tier schema", move || {
            source_backend.delete_namespace(&namespace)
        })
        .await;
        match deleted {
            Ok(()) => self.catalog().clear_retired(name)?,
            Err(error) => {
                tracing::warn!(tenant = name, %error, "the graduated tenant's old schema was not deleted; the next start deletes it")
            }
        }
        let graduated = Graduated {
            from,
            to,
            duration: started.elapsed(),
            ..outcome
        };
        tracing::info!(
            tenant = name,
            rows = graduated.copied_rows,
            pause_ms = graduated.pause.as_millis() as u64,
            duration_ms = graduated.duration.as_millis() as u64,
            "graduation finished"
        );
        Ok(graduated)
    }

    /// Steps 2 to 4 of the module docs.
    async fn move_into(
        &self,
        name: &str,
        from: &Location,
        to: &Location,
        target: Arc<dyn TenantStore>,
    ) -> Result<Graduated, AppError> {
        let tenant = self.tenant(name).await?;
        let engine = tenant.engine().clone();
        let relocation = Arc::new(
            engine
                .start_relocation()
                .await
                .map_err(|e| relocation_error(name, e))?,
        );
        let (copied_rows, copied_bytes, mut caught_up_batches) =
            copy(name, &relocation, target.clone()).await?;
        for _ in 0..CATCH_UP_ROUNDS {
            let batches = relocation
                .take_written()
                .map_err(|e| relocation_error(name, e))?;
            let count = batches.len();
            caught_up_batches += count;
            let writer = target.clone();
            blocking(name, "replaying writes onto the new database", move || {
                batches.iter().try_for_each(|batch| writer.write(batch))
            })
            .await?;
            if count <= SWITCH_BACKLOG {
                break;
            }
        }

        let backend = self.backend_of(name, to)?;
        let namespace = name.to_string();
        let opener: StoreOpener = Arc::new(move || backend.open_namespace(&namespace));
        let catalog = self.catalog().clone();
        let (tenant_name, placement, server) =
            (name.to_string(), to.placement.name(), to.server.clone());
        let retired = format!(
            "{}@{}",
            from.placement.name(),
            from.server.as_deref().unwrap_or_default()
        );
        let switch: nimbus_engine::Switch = Box::new(move || {
            match catalog.set_location(&tenant_name, placement, server.as_deref(), Some(&retired)) {
                Ok(true) => Ok(()),
                Ok(false) => Err("the tenant was deleted during its graduation".into()),
                Err(e) => Err(e.to_string()),
            }
        });
        let relocation = Arc::try_unwrap(relocation)
            .map_err(|_| AppError::Internal("graduation: the copy still holds the move".into()))?;
        let finished = engine
            .finish_relocation(relocation, target, opener, switch)
            .await
            .map_err(|e| relocation_error(name, e))?;
        Ok(Graduated {
            from: from.clone(),
            to: to.clone(),
            copied_rows,
            copied_bytes,
            caught_up_batches,
            final_batches: finished.final_batches,
            pause: finished.pause,
            duration: Duration::ZERO,
        })
    }
}

/// Copies the source into the target page by page, replaying the mirrored batches after
/// each page so the mirror stays small; returns rows and bytes copied and batches replayed.
///
/// Replaying between pages converges like replaying at the end: every batch since the
/// mirror started is replayed, in order, after the import of any page read before it; a
/// page read after a batch already reflects it.
async fn copy(
    name: &str,
    relocation: &Arc<Relocation>,
    target: Arc<dyn TenantStore>,
) -> Result<(u64, u64, usize), AppError> {
    let relocation = relocation.clone();
    blocking(name, "copying the tenant", move || {
        let (mut rows, mut bytes, mut replayed) = (0u64, 0u64, 0usize);
        // Documents inserted during the copy land after its position (IDs are time-ordered),
        // so a tenant inserting faster than the copy would be chased for ever: past twice
        // what it held at the start, the move gives up.
        let most_documents = relocation
            .source()
            .stats()?
            .documents
            .saturating_mul(2)
            .saturating_add(CHASE_ALLOWANCE);
        let mut documents = 0u64;
        let mut position = ExportPosition::Start;
        loop {
            let page = relocation
                .source()
                .export_page(&position, PAGE_ROWS, PAGE_BYTES)?;
            documents += page
                .rows
                .iter()
                .filter(|r| matches!(r, ExportedRow::Document(_)))
                .count() as u64;
            if documents > most_documents {
                return Err(StorageError::Busy(format!(
                    "the tenant gained documents faster than they could be copied ({documents} \
                     copied, more than twice what it held at the start); retry when it is \
                     less busy"
                )));
            }
            rows += page.rows.len() as u64;
            bytes += page.rows.iter().map(|r| r.size_bytes() as u64).sum::<u64>();
            // The first page sets the copy's max_ts: the mirrored batches follow it.
            let first = position == ExportPosition::Start;
            target.import(&page.rows, first.then(|| relocation.start()))?;
            let batches = relocation
                .take_written()
                .map_err(|e| StorageError::Busy(e.to_string()))?;
            replayed += batches.len();
            for batch in &batches {
                target.write(batch)?;
            }
            match page.next {
                Some(next) => position = next,
                None => return Ok((rows, bytes, replayed)),
            }
        }
    })
    .await
}

fn relocation_error(name: &str, error: nimbus_engine::EngineError) -> AppError {
    match error {
        nimbus_engine::EngineError::Storage(StorageError::Busy(detail)) => AppError::Unavailable {
            tenant: name.to_string(),
            detail: format!("graduation: storage is busy: {detail}"),
        },
        nimbus_engine::EngineError::Relocation(detail) => AppError::Unavailable {
            tenant: name.to_string(),
            detail: format!("graduation did not finish, the tenant stays where it was: {detail}"),
        },
        other => AppError::from_engine(name, other),
    }
}

/// Runs storage work on a blocking thread.
async fn blocking<T: Send + 'static>(
    name: &str,
    context: &str,
    work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, AppError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| AppError::Internal(format!("{context}: task failed: {e}")))?
        .map_err(|e| crate::instance::storage_error(name, context, e))
}

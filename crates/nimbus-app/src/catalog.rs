//! The control-plane catalog: which tenants exist, when they were created, and the hash of
//! each tenant's admin key. Stored in `<data-dir>/nimbus.sqlite3`, separate from every
//! tenant's own namespace, so tenant data never holds another tenant's secrets.

use std::path::Path;

use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension};

use crate::error::AppError;

/// One catalog row.
#[derive(Debug, Clone)]
pub(crate) struct TenantRow {
    pub name: String,
    pub created_at_ms: u64,
    /// Lowercase hex SHA-256 of the tenant admin key.
    pub key_hash: String,
    /// When its earliest scheduled job or cron run is due (ms since the epoch), as far as
    /// the instance knows: never later than the truth (see `scheduler/`).
    pub next_due_ms: Option<i64>,
    /// Its limit overrides as JSON (`limits.rs`), or `None` when it follows the instance.
    pub limits: Option<String>,
    /// Where its namespace lives (`Placement::name`); `None` in rows from before
    /// placements existed, which are all SQLite.
    pub storage: Option<String>,
    /// The Postgres server of a Postgres tenant (`None` in rows from before the server
    /// pool: the `default` server).
    pub server: Option<String>,
    /// A location the tenant graduated from whose namespace is not deleted yet
    /// (`<placement>@<server>`); a start finishes the deletion.
    pub retired: Option<String>,
    /// Chosen at random when the tenant is created (or when a catalog from before it is
    /// opened), never changed: its journal records carry it, so a tenant deleted and
    /// created again under the same name never gets its predecessor's records.
    pub incarnation: u64,
}

impl TenantRow {
    /// Where the tenant lives.
    pub fn location(&self) -> Result<crate::placement::Location, AppError> {
        crate::placement::Location::from_catalog(
            &self.name,
            self.storage.as_deref(),
            self.server.as_deref(),
        )
    }
}

pub(crate) struct TenantCatalog {
    conn: Mutex<Connection>,
}

fn internal(context: &str, e: rusqlite::Error) -> AppError {
    AppError::Internal(format!("tenant catalog: {context}: {e}"))
}

/// The columns [`tenant_row`] reads, in its order.
const ROW_COLUMNS: &str =
    "name, created_at_ms, key_hash, next_due_ms, limits, storage, server, retired, incarnation";

fn tenant_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<TenantRow> {
    Ok(TenantRow {
        name: row.get(0)?,
        created_at_ms: row.get::<_, i64>(1)? as u64,
        key_hash: row.get(2)?,
        next_due_ms: row.get(3)?,
        limits: row.get(4)?,
        storage: row.get(5)?,
        server: row.get(6)?,
        retired: row.get(7)?,
        // Stored as SQLite's signed 64 bits; the same bits either way.
        incarnation: row.get::<_, Option<i64>>(8)?.unwrap_or_default() as u64,
    })
}

/// Runs `ddl` (which adds `column` to `tenants`) unless the column is there already.
fn add_column_if_missing(conn: &Connection, column: &str, ddl: &str) -> Result<(), AppError> {
    let present: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM pragma_table_info('tenants') WHERE name = ?1",
            params![column],
            |row| row.get(0),
        )
        .map_err(|e| internal("inspect schema", e))?;
    if present == 0 {
        conn.execute_batch(ddl)
            .map_err(|e| internal(&format!("add {column}"), e))?;
    }
    Ok(())
}

impl TenantCatalog {
    pub fn open(path: &Path) -> Result<Self, AppError> {
        let conn = Connection::open(path).map_err(|e| internal("open", e))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS tenants (
                 name TEXT PRIMARY KEY,
                 created_at_ms INTEGER NOT NULL,
                 key_hash TEXT NOT NULL,
                 state TEXT NOT NULL DEFAULT 'active'
             );",
        )
        .map_err(|e| internal("create schema", e))?;
        // Columns added since the first catalogs; older ones get them here.
        add_column_if_missing(
            &conn,
            "next_due_ms",
            "ALTER TABLE tenants ADD COLUMN next_due_ms INTEGER;
             CREATE INDEX IF NOT EXISTS tenants_by_next_due ON tenants (next_due_ms)
                 WHERE next_due_ms IS NOT NULL;",
        )?;
        add_column_if_missing(
            &conn,
            "limits",
            "ALTER TABLE tenants ADD COLUMN limits TEXT;",
        )?;
        add_column_if_missing(
            &conn,
            "storage",
            "ALTER TABLE tenants ADD COLUMN storage TEXT;",
        )?;
        add_column_if_missing(
            &conn,
            "server",
            "ALTER TABLE tenants ADD COLUMN server TEXT;",
        )?;
        add_column_if_missing(
            &conn,
            "retired",
            "ALTER TABLE tenants ADD COLUMN retired TEXT;",
        )?;
        add_column_if_missing(
            &conn,
            "incarnation",
            "ALTER TABLE tenants ADD COLUMN incarnation INTEGER;",
        )?;
        // Rows from before incarnations get one now, once.
        conn.execute(
            "UPDATE tenants SET incarnation = random() WHERE incarnation IS NULL",
            [],
        )
        .map_err(|e| internal("give incarnations", e))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS servers (
                 name TEXT PRIMARY KEY,
                 url TEXT NOT NULL,
                 pooler_url TEXT,
                 max_connections INTEGER
             );",
        )
        .map_err(|e| internal("create servers", e))?;
        Ok(TenantCatalog {
            conn: Mutex::new(conn),
        })
    }

    /// Inserts a tenant in state `creating`; fails with `TenantExists` if the name is taken.
    pub fn insert_creating(&self, row: &TenantRow) -> Result<(), AppError> {
        let conn = self.conn.lock();
        let result = conn.execute(
            "INSERT INTO tenants (name, created_at_ms, key_hash, state, storage, server, \
             incarnation) VALUES (?1, ?2, ?3, 'creating', ?4, ?5, ?6)",
            params![
                row.name,
                row.created_at_ms as i64,
                row.key_hash,
                row.storage,
                row.server,
                row.incarnation as i64
            ],
        );
        match result {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(AppError::TenantExists(row.name.clone()))
            }
            Err(e) => Err(internal("insert", e)),
        }
    }

    pub fn set_active(&self, name: &str) -> Result<(), AppError> {
        self.conn
            .lock()
            .execute(
                "UPDATE tenants SET state = 'active' WHERE name = ?1",
                params![name],
            )
            .map_err(|e| internal("activate", e))?;
        Ok(())
    }

    /// Replaces an active tenant's admin key hash; false when there is no such tenant.
    pub fn set_key_hash(&self, name: &str, key_hash: &str) -> Result<bool, AppError> {
        self.set_active_column(name, "key_hash", Some(key_hash))
    }

    /// Writes one column of an active tenant's row (durably, before returning); false
    /// when there is no such tenant. `column` is one of this module's own names.
    fn set_active_column(
        &self,
        name: &str,
        column: &'static str,
        value: Option<&str>,
    ) -> Result<bool, AppError> {
        let changed = self
            .conn
            .lock()
            .execute(
                &format!("UPDATE tenants SET {column} = ?2 WHERE name = ?1 AND state = 'active'"),
                params![name, value],
            )
            .map_err(|e| internal(&format!("set {column}"), e))?;
        Ok(changed == 1)
    }

    /// Marks a tenant as being deleted: it is invisible from now on, and a restart
    /// finishes the deletion.
    pub fn set_deleting(&self, name: &str) -> Result<bool, AppError> {
        let changed = self
            .conn
            .lock()
            .execute(
                "UPDATE tenants SET state = 'deleting' WHERE name = ?1 AND state = 'active'",
                params![name],
            )
            .map_err(|e| internal("mark deleting", e))?;
        Ok(changed == 1)
    }

    pub fn remove(&self, name: &str) -> Result<(), AppError> {
        self.conn
            .lock()
            .execute("DELETE FROM tenants WHERE name = ?1", params![name])
            .map_err(|e| internal("delete", e))?;
        Ok(())
    }

    pub fn get(&self, name: &str) -> Result<Option<TenantRow>, AppError> {
        self.conn
            .lock()
            .query_row(
                &format!("SELECT {ROW_COLUMNS} FROM tenants WHERE name = ?1 AND state = 'active'"),
                params![name],
                tenant_row,
            )
            .optional()
            .map_err(|e| internal("get", e))
    }

    pub fn list(&self) -> Result<Vec<TenantRow>, AppError> {
        let conn = self.conn.lock();
        let mut statement = conn
            .prepare(&format!(
                "SELECT {ROW_COLUMNS} FROM tenants WHERE state = 'active' ORDER BY name"
            ))
            .map_err(|e| internal("list", e))?;
        let rows = statement
            .query_map([], tenant_row)
            .map_err(|e| internal("list", e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| internal("list", e))
    }

    /// Replaces an active tenant's limit overrides (durably, before returning); false when
    /// there is no such tenant.
    pub fn set_limits(&self, name: &str, limits: Option<&str>) -> Result<bool, AppError> {
        self.set_active_column(name, "limits", limits)
    }

    /// Records when a tenant's earliest job is due (`None`: it has none). Only for the
    /// tenant created at `created_at_ms`: a tenant deleted and created again under the same
    /// name is another one, which its predecessor's scheduler must not touch.
    pub fn set_next_due(
        &self,
        name: &str,
        created_at_ms: u64,
        due_ms: Option<i64>,
    ) -> Result<(), AppError> {
        self.conn
            .lock()
            .execute(
                "UPDATE tenants SET next_due_ms = ?3 WHERE name = ?1 AND created_at_ms = ?2",
                params![name, created_at_ms as i64, due_ms],
            )
            .map_err(|e| internal("set next due", e))?;
        Ok(())
    }

    /// Tenants with a job due by `now_ms`, soonest first, at most `limit`.
    pub fn due_tenants(&self, now_ms: i64, limit: usize) -> Result<Vec<String>, AppError> {
        let conn = self.conn.lock();
        let mut statement = conn
            .prepare(
                "SELECT name FROM tenants WHERE next_due_ms IS NOT NULL AND next_due_ms <= ?1 \
                 AND state = 'active' ORDER BY next_due_ms LIMIT ?2",
            )
            .map_err(|e| internal("due tenants", e))?;
        let rows = statement
            .query_map(params![now_ms, limit as i64], |row| row.get(0))
            .map_err(|e| internal("due tenants", e))?;
        rows.collect::<Result<Vec<String>, _>>()
            .map_err(|e| internal("due tenants", e))
    }

    /// Tenants left half-created or half-deleted by a crash, with their state.
    pub fn unfinished(&self) -> Result<Vec<(TenantRow, String)>, AppError> {
        let conn = self.conn.lock();
        let mut statement = conn
            .prepare(&format!(
                "SELECT {ROW_COLUMNS}, state FROM tenants WHERE state != 'active'"
            ))
            .map_err(|e| internal("unfinished", e))?;
        let rows = statement
            .query_map([], |row| Ok((tenant_row(row)?, row.get(8)?)))
            .map_err(|e| internal("unfinished", e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| internal("unfinished", e))
    }

    /// Active tenants with a retired location still to delete.
    pub fn retired(&self) -> Result<Vec<TenantRow>, AppError> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|row| row.retired.is_some())
            .collect())
    }

    /// Moves an active tenant to a new location durably, recording the old one as retired
    /// (`retired`), in one statement; false when there is no such tenant (deleted
    /// meanwhile).
    pub fn set_location(
        &self,
        name: &str,
        storage: &str,
        server: Option<&str>,
        retired: Option<&str>,
    ) -> Result<bool, AppError> {
        let changed = self
            .conn
            .lock()
            .execute(
                "UPDATE tenants SET storage = ?2, server = ?3, retired = ?4 \
                 WHERE name = ?1 AND state = 'active'",
                params![name, storage, server, retired],
            )
            .map_err(|e| internal("set location", e))?;
        Ok(changed == 1)
    }

    /// Forgets a retired location once its namespace is deleted.
    pub fn clear_retired(&self, name: &str) -> Result<(), AppError> {
        self.conn
            .lock()
            .execute(
                "UPDATE tenants SET retired = NULL WHERE name = ?1",
                params![name],
            )
            .map_err(|e| internal("clear retired", e))?;
        Ok(())
    }

    /// Postgres tenants per server, in every state (a creation in flight counts).
    pub fn tenants_per_server(
        &self,
        default_server: &str,
    ) -> Result<std::collections::HashMap<String, i64>, AppError> {
        let conn = self.conn.lock();
        let mut statement = conn
            .prepare(
                "SELECT COALESCE(server, ?1), COUNT(*) FROM tenants \
                 WHERE storage LIKE 'postgres%' GROUP BY 1",
            )
            .map_err(|e| internal("tenants per server", e))?;
        let rows = statement
            .query_map(params![default_server], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .map_err(|e| internal("tenants per server", e))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| internal("tenants per server", e))
    }

    /// Postgres servers added through the admin API.
    pub fn servers(&self) -> Result<Vec<crate::placement::ServerSettings>, AppError> {
        let conn = self.conn.lock();
        let mut statement = conn
            .prepare("SELECT name, url, pooler_url, max_connections FROM servers ORDER BY name")
            .map_err(|e| internal("servers", e))?;
        let rows = statement
            .query_map([], |row| {
                Ok(crate::placement::ServerSettings {
                    name: row.get(0)?,
                    url: row.get(1)?,
                    pooler_url: row.get(2)?,
                    max_connections: row.get(3)?,
                })
            })
            .map_err(|e| internal("servers", e))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| internal("servers", e))
    }

    /// Records a server added through the admin API; false when the name is taken.
    pub fn insert_server(
        &self,
        server: &crate::placement::ServerSettings,
    ) -> Result<bool, AppError> {
        let changed = self
            .conn
            .lock()
            .execute(
                "INSERT INTO servers (name, url, pooler_url, max_connections) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (name) DO NOTHING",
                params![
                    server.name,
                    server.url,
                    server.pooler_url,
                    server.max_connections
                ],
            )
            .map_err(|e| internal("insert server", e))?;
        Ok(changed == 1)
    }

    /// Forgets a server added through the admin API, unless a tenant (in any state) is on
    /// it; returns whether it was removed.
    pub fn remove_server(&self, name: &str, default_server: &str) -> Result<bool, AppError> {
        let changed = self
            .conn
            .lock()
            .execute(
                "DELETE FROM servers WHERE name = ?1 AND NOT EXISTS (SELECT 1 FROM tenants \
                 WHERE storage LIKE 'postgres%' AND COALESCE(server, ?2) = ?1 \
                    OR retired LIKE '%@' || ?1)",
                params![name, default_server],
            )
            .map_err(|e| internal("remove server", e))?;
        Ok(changed == 1)
    }
}

/// One tenant's record of its next due job, in the catalog: keyed by its name and creation
/// time, so it never reaches a later tenant of the same name.
pub(crate) struct TenantDueRecord {
    pub catalog: std::sync::Arc<TenantCatalog>,
    pub created_at_ms: u64,
}

impl crate::scheduler::DueRecord for TenantDueRecord {
    fn record(&self, tenant: &str, due_ms: Option<i64>) {
        if let Err(error) = self
            .catalog
            .set_next_due(tenant, self.created_at_ms, due_ms)
        {
            tracing::warn!(tenant, %error, "recording the next due job failed");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_catalog_from_before_the_added_columns_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nimbus.sqlite3");
        {
            // The schema of the first catalogs, with one tenant in it.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE tenants (
                     name TEXT PRIMARY KEY,
                     created_at_ms INTEGER NOT NULL,
                     key_hash TEXT NOT NULL,
                     state TEXT NOT NULL DEFAULT 'active'
                 );
                 INSERT INTO tenants (name, created_at_ms, key_hash) VALUES ('old', 7, 'ab');",
            )
            .unwrap();
        }
        for _ in 0..2 {
            // Opened twice: the second time finds the columns and adds nothing.
            let catalog = TenantCatalog::open(&path).unwrap();
            let row = catalog.get("old").unwrap().unwrap();
            assert_eq!(
                (row.created_at_ms, row.next_due_ms, row.limits),
                (7, None, None)
            );
            assert!(catalog
                .set_limits("old", Some(r#"{"inflight":5}"#))
                .unwrap());
            catalog.set_next_due("old", 7, Some(42)).unwrap();
            let row = catalog.get("old").unwrap().unwrap();
            assert_eq!(row.limits.as_deref(), Some(r#"{"inflight":5}"#));
            assert_eq!(row.next_due_ms, Some(42));
            assert!(catalog.set_limits("old", None).unwrap());
            catalog.set_next_due("old", 7, None).unwrap();
        }
        assert!(!TenantCatalog::open(&path)
            .unwrap()
            .set_limits("missing", None)
            .unwrap());
    }
}

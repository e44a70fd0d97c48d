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
}

pub(crate) struct TenantCatalog {
    conn: Mutex<Connection>,
}

fn internal(context: &str, e: rusqlite::Error) -> AppError {
    AppError::Internal(format!("tenant catalog: {context}: {e}"))
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
        Ok(TenantCatalog {
            conn: Mutex::new(conn),
        })
    }

    /// Inserts a tenant in state `creating`; fails with `TenantExists` if the name is taken.
    pub fn insert_creating(&self, row: &TenantRow) -> Result<(), AppError> {
        let conn = self.conn.lock();
        let result = conn.execute(
            "INSERT INTO tenants (name, created_at_ms, key_hash, state) VALUES (?1, ?2, ?3, 'creating')",
            params![row.name, row.created_at_ms as i64, row.key_hash],
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
        let changed = self
            .conn
            .lock()
            .execute(
                "UPDATE tenants SET key_hash = ?2 WHERE name = ?1 AND state = 'active'",
                params![name, key_hash],
            )
            .map_err(|e| internal("set key hash", e))?;
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
                "SELECT name, created_at_ms, key_hash FROM tenants WHERE name = ?1 AND state = 'active'",
                params![name],
                |row| {
                    Ok(TenantRow {
                        name: row.get(0)?,
                        created_at_ms: row.get::<_, i64>(1)? as u64,
                        key_hash: row.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(|e| internal("get", e))
    }

    pub fn list(&self) -> Result<Vec<TenantRow>, AppError> {
        let conn = self.conn.lock();
        let mut statement = conn
            .prepare("SELECT name, created_at_ms, key_hash FROM tenants WHERE state = 'active' ORDER BY name")
            .map_err(|e| internal("list", e))?;
        let rows = statement
            .query_map([], |row| {
                Ok(TenantRow {
                    name: row.get(0)?,
                    created_at_ms: row.get::<_, i64>(1)? as u64,
                    key_hash: row.get(2)?,
                })
            })
            .map_err(|e| internal("list", e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| internal("list", e))
    }

    /// Tenants left half-created or half-deleted by a crash.
    pub fn unfinished(&self) -> Result<Vec<(String, String)>, AppError> {
        let conn = self.conn.lock();
        let mut statement = conn
            .prepare("SELECT name, state FROM tenants WHERE state != 'active'")
            .map_err(|e| internal("unfinished", e))?;
        let rows = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(|e| internal("unfinished", e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| internal("unfinished", e))
    }
}

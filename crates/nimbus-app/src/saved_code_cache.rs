//! A push's V8 code caches made after its first call, kept in the tenant's namespace.
//!
//! The deployment record holds the caches push-time analysis made, which cover the modules'
//! top level only. The push's first runtime makes them again after its first call, with the
//! functions that call compiled; a new runtime given those spends a fifth to a third less on its
//! first call (BENCHMARKS.md, "A tenant's first request"). They are saved here, as the
//! global [`CODE_CACHE_GLOBAL`] tagged with the push's code id, and given back when the
//! tenant is activated, so they are made once per push rather than once per process. A
//! record of another push (written late by an older one, or left by it) is ignored; the next
//! push's save replaces it.
//!
//! Format: the magic `NCC1`, the code id (u128 LE), the entry count (u32 LE), then per entry
//! the module path (u16 LE length, UTF-8) and the cache (u32 LE length, bytes). A record
//! that does not parse is ignored: a cache is an optimization, and V8 checks each one
//! against its source, version and flags before use.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use nimbus_engine::{EngineError, TenantEngine};
use nimbus_runtime::{CodeCache, CodeId};

use crate::deployment::Deployment;
use crate::tenant::{deployment_of, Tenant};

/// The global holding the saved caches.
pub(crate) const CODE_CACHE_GLOBAL: &str = "code_cache";

const MAGIC: &[u8; 4] = b"NCC1";

/// Most entries a record may declare (a push has at most a few hundred modules).
const MAX_ENTRIES: u32 = 100_000;

/// Saves written and restores made, in this process (`/metrics`).
static SAVED: AtomicU64 = AtomicU64::new(0);
static RESTORED: AtomicU64 = AtomicU64::new(0);

/// How often code caches were saved and restored in this process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SavedCodeCacheStats {
    /// Code caches made after a push's first call and written to its tenant's namespace.
    pub saved: u64,
    /// Activations whose push got its saved code caches back.
    pub restored: u64,
}

/// The process's counts so far.
pub fn stats() -> SavedCodeCacheStats {
    SavedCodeCacheStats {
        saved: SAVED.load(Ordering::Relaxed),
        restored: RESTORED.load(Ordering::Relaxed),
    }
}

/// The record of `code_id`'s caches.
fn encode(code_id: CodeId, entries: &[(String, Arc<[u8]>)]) -> Vec<u8> {
    let size: usize = entries
        .iter()
        .map(|(name, bytes)| 6 + name.len() + bytes.len())
        .sum();
    let mut out = Vec::with_capacity(24 + size);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&code_id.0.to_le_bytes());
    let kept: Vec<&(String, Arc<[u8]>)> = entries
        .iter()
        .filter(|(name, bytes)| {
            name.len() <= usize::from(u16::MAX) && u32::try_from(bytes.len()).is_ok()
        })
        .collect();
    out.extend_from_slice(&(kept.len() as u32).to_le_bytes());
    for (name, bytes) in kept {
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

/// Module paths and their caches.
type Entries = Vec<(String, Vec<u8>)>;

/// The code id and entries of a record; `None` when it does not parse.
fn decode(bytes: &[u8]) -> Option<(CodeId, Entries)> {
    let mut rest = bytes.strip_prefix(MAGIC)?;
    let mut take = |n: usize| -> Option<&[u8]> {
        if rest.len() < n {
            return None;
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Some(head)
    };
    let code_id = u128::from_le_bytes(take(16)?.try_into().ok()?);
    let count = u32::from_le_bytes(take(4)?.try_into().ok()?);
    if count > MAX_ENTRIES {
        return None;
    }
    let mut entries = Vec::new();
    for _ in 0..count {
        let name_len = u16::from_le_bytes(take(2)?.try_into().ok()?);
        let name = std::str::from_utf8(take(usize::from(name_len))?)
            .ok()?
            .to_string();
        let len = u32::from_le_bytes(take(4)?.try_into().ok()?);
        let cache = take(usize::try_from(len).ok()?)?.to_vec();
        entries.push((name, cache));
    }
    if !rest.is_empty() {
        return None;
    }
    Some((CodeId(code_id), entries))
}

/// Gives the current push the caches saved for it, if any (at activation, before any call).
/// `v8`: whether the server runs V8; QuickJS makes no caches, so there is nothing to read
/// (for a Postgres tenant the read is a round trip on the activation's path).
pub(crate) async fn restore(engine: &Arc<TenantEngine>, v8: bool) {
    let deployment = deployment_of(&engine.snapshot());
    if !v8 || deployment.module_set.modules.is_empty() {
        return;
    }
    let reader = engine.clone();
    let stored = match tokio::task::spawn_blocking(move || reader.get_global(CODE_CACHE_GLOBAL))
        .await
    {
        Ok(Ok(Some(bytes))) => bytes,
        Ok(Ok(None)) => return,
        Ok(Err(error)) => {
            tracing::warn!(tenant = %engine.name(), %error, "the saved code caches could not be read; the first call compiles without them");
            return;
        }
        Err(_) => return,
    };
    let Some((code_id, entries)) = decode(&stored) else {
        tracing::warn!(tenant = %engine.name(), "the saved code caches do not parse; ignored");
        return;
    };
    if deployment.module_set.code_id == code_id {
        deployment.module_set.code_cache.restore(entries);
        RESTORED.fetch_add(1, Ordering::Relaxed);
    }
}

impl Tenant {
    /// Arranges for `deployment`'s code caches to be saved when a runtime makes them after
    /// a call (see the module's docs): in the background, through the tenant's committer.
    /// Called before each call; cheap once arranged.
    pub(crate) fn save_code_caches_when_made(&self, deployment: &Arc<Deployment>) {
        let cache = &deployment.module_set.code_cache;
        if cache.has_notify() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // Weak: the function lives in the cache, and must keep neither it nor the tenant.
        let weak_cache = Arc::downgrade(cache);
        let engine = Arc::downgrade(self.engine());
        let code_id = deployment.module_set.code_id;
        let (late_engine, late_cache, late_runtime) =
            (engine.clone(), weak_cache.clone(), runtime.clone());
        cache.on_made_after_a_call(move || {
            Box::new(move || {
                runtime.spawn(save(engine.clone(), weak_cache.clone(), code_id));
            })
        });
        // Made before there was anyone to tell (`save` does nothing if they are saved).
        if cache.made_after_a_call() {
            late_runtime.spawn(save(late_engine, late_cache, code_id));
        }
    }
}

/// Writes the caches if they are unsaved; retries a few times while the tenant is busy.
async fn save(engine: Weak<TenantEngine>, cache: Weak<CodeCache>, code_id: CodeId) {
    const ATTEMPTS: u32 = 5;
    let Some(cache) = cache.upgrade() else { return };
    if !cache.take_unsaved() {
        return;
    }
    let record = encode(code_id, &cache.entries());
    for attempt in 1..=ATTEMPTS {
        let Some(engine) = engine.upgrade() else {
            return;
        };
        let globals = vec![(CODE_CACHE_GLOBAL.to_string(), Some(record.clone()))];
        match engine.set_globals(globals).await {
            Ok(_) => {
                SAVED.fetch_add(1, Ordering::Relaxed);
                return;
            }
            // Busy: the cache is an optimization; try again a little later.
            Err(EngineError::Overloaded { .. }) if attempt < ATTEMPTS => {
                drop(engine);
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(error) => {
                tracing::debug!(tenant = %engine.name(), %error, "the code caches were not saved");
                cache.mark_unsaved();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_refused() {
        let entries: Vec<(String, Arc<[u8]>)> = vec![
            ("app.js".to_string(), Arc::from(vec![1u8, 2, 3])),
            ("_deps/x.js".to_string(), Arc::from(Vec::<u8>::new())),
        ];
        let record = encode(CodeId(7 << 100 | 5), &entries);
        let (code_id, decoded) = decode(&record).unwrap_or_else(|| panic!("does not parse"));
        assert_eq!(code_id, CodeId(7 << 100 | 5));
        assert_eq!(
            decoded,
            vec![
                ("app.js".to_string(), vec![1, 2, 3]),
                ("_deps/x.js".to_string(), vec![])
            ]
        );
        for cut in 0..record.len() {
            assert!(decode(&record[..cut]).is_none(), "cut at {cut}");
        }
        let mut longer = record.clone();
        longer.push(0);
        assert!(decode(&longer).is_none());
        let mut bad_magic = record;
        bad_magic[0] = b'X';
        assert!(decode(&bad_magic).is_none());
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&[0; 16]);
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&huge).is_none());
    }
}

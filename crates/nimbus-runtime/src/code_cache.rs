//! Compiled code kept between runtimes (V8 only; QuickJS compiles from source each time).
//!
//! A tenant's first call pays for parsing and compiling the Convex library and its own
//! modules, in every new runtime of that code: on each of its home workers, and again after
//! the pool evicted its runtime. V8 can serialize what it compiled (`CreateCodeCache`) and
//! compile from that instead of the source. Push-time analysis makes a cache of each module
//! after loading it (only the top level is compiled then); the first runtime of a push
//! makes them again *after its first call*, when they also hold every function that call
//! compiled, and the runtimes after it consume those. The caller learns of them
//! ([`CodeCache::on_made_after_a_call`]), persists them ([`CodeCache::take_unsaved`]) and
//! gives them back with [`CodeCache::restore`] after a restart, so a push's caches are
//! remade after a call once, not once per process.
//!
//! Two stores:
//! - [`CodeCache`], one per [`crate::ModuleSet`] (per push of one tenant): its modules'
//!   caches. Never shared between tenants: a cache is bytecode of that tenant's code, and
//!   a cache shared by content would let one tenant time whether another runs the same
//!   source.
//! - the process's caches of Nimbus's own scripts (the prelude and the web globals), the
//!   same for every tenant.
//!
//! Both are bounded in bytes; past the bound a cache is not kept (the next runtime compiles
//! from source, as without a cache). V8 checks each cache against the source, its version
//! and its flags before using it, and compiles from source when it does not match.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Most bytes of code cache one push keeps (the Convex library's cache, after a call, is
/// a few hundred KiB).
pub const MAX_BYTES_PER_SET: usize = 8 << 20;

/// Most bytes of cache of Nimbus's own scripts.
const MAX_STATIC_BYTES: usize = 2 << 20;

/// The code caches of one push's modules, by module path.
#[derive(Default)]
pub struct CodeCache {
    entries: Mutex<CacheEntries>,
    /// Whether the caches were made by a runtime after a call (with the functions that call
    /// compiled), not only after loading the modules (at push time).
    after_a_call: AtomicBool,
    /// Set when a runtime made them after a call, cleared by [`CodeCache::take_unsaved`].
    unsaved: AtomicBool,
    /// Called (on the worker thread) when a runtime made them after a call.
    on_made: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for CodeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries = lock(&self.entries);
        f.debug_struct("CodeCache")
            .field("modules", &entries.by_name.len())
            .field("bytes", &entries.bytes)
            .finish()
    }
}

#[derive(Default)]
struct CacheEntries {
    by_name: BTreeMap<String, Arc<[u8]>>,
    bytes: usize,
}

impl CacheEntries {
    /// Keeps `bytes` as `name`'s cache, replacing an older one, unless it would pass
    /// `limit`.
    fn put(&mut self, name: &str, bytes: Vec<u8>, limit: usize) -> bool {
        let old = self.by_name.get(name).map_or(0, |b| b.len());
        let total = self.bytes - old + bytes.len();
        if total > limit {
            return false;
        }
        self.bytes = total;
        self.by_name.insert(name.to_string(), Arc::from(bytes));
        true
    }
}

impl CodeCache {
    /// The cache of module `name`, if one was made.
    pub fn get(&self, name: &str) -> Option<Arc<[u8]>> {
        lock(&self.entries).by_name.get(name).cloned()
    }

    /// Whether `name` has a cache.
    pub fn contains(&self, name: &str) -> bool {
        lock(&self.entries).by_name.contains_key(name)
    }

    /// Keeps `bytes` as the cache of module `name` (replacing an older one); false when it
    /// would pass [`MAX_BYTES_PER_SET`] (nothing is kept then).
    pub fn put(&self, name: &str, bytes: Vec<u8>) -> bool {
        lock(&self.entries).put(name, bytes, MAX_BYTES_PER_SET)
    }

    /// Whether a runtime made these caches after a call (see the module's docs); then no
    /// other runtime of this push makes them again.
    pub fn made_after_a_call(&self) -> bool {
        self.after_a_call.load(Ordering::Acquire)
    }

    pub(crate) fn mark_made_after_a_call(&self) {
        self.after_a_call.store(true, Ordering::Release);
        self.unsaved.store(true, Ordering::Release);
        if let Some(notify) = self.on_made.get() {
            notify();
        }
    }

    /// Gives the function to call (on the worker thread, so it must only hand the work
    /// on) when a runtime made the caches after a call; the first one given stays.
    pub fn on_made_after_a_call(&self, notify: impl FnOnce() -> Box<dyn Fn() + Send + Sync>) {
        let _ = self.on_made.get_or_init(notify);
    }

    /// Whether [`CodeCache::on_made_after_a_call`] was given a function.
    pub fn has_notify(&self) -> bool {
        self.on_made.get().is_some()
    }

    /// True once after a runtime made the caches after a call: the caller should persist
    /// [`CodeCache::entries`] now (and call [`CodeCache::mark_unsaved`] if that failed).
    pub fn take_unsaved(&self) -> bool {
        self.unsaved.swap(false, Ordering::AcqRel)
    }

    /// Asks for the caches to be persisted again (a save that failed).
    pub fn mark_unsaved(&self) {
        self.unsaved.store(true, Ordering::Release);
    }

    /// Puts back caches a runtime made after a call and the caller persisted: no runtime of
    /// this push makes them again (V8 still checks each one, and a refused one is remade).
    /// Entries past the bound are left out.
    pub fn restore(&self, entries: impl IntoIterator<Item = (String, Vec<u8>)>) {
        {
            let mut held = lock(&self.entries);
            for (name, bytes) in entries {
                held.put(&name, bytes, MAX_BYTES_PER_SET);
            }
        }
        self.after_a_call.store(true, Ordering::Release);
    }

    /// The same caches under a new code identity (another push of the same sources, or
    /// other environment variables): as push-time caches, so the new identity's first
    /// runtime makes and announces its own after its first call, and with no function to
    /// call then (the caller gives the new identity's).
    pub fn copy_for_new_code(&self) -> CodeCache {
        let copy = CodeCache::default();
        {
            let held = lock(&self.entries);
            let mut into = lock(&copy.entries);
            into.by_name = held.by_name.clone();
            into.bytes = held.bytes;
        }
        copy
    }

    /// Every module's cache, by name.
    pub fn entries(&self) -> Vec<(String, Arc<[u8]>)> {
        lock(&self.entries)
            .by_name
            .iter()
            .map(|(name, bytes)| (name.clone(), bytes.clone()))
            .collect()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        lock(&self.entries).bytes
    }

    /// Modules with a cache.
    pub fn len(&self) -> usize {
        lock(&self.entries).by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The process's caches of Nimbus's own scripts, by script name.
fn static_scripts() -> &'static Mutex<CacheEntries> {
    static SCRIPTS: OnceLock<Mutex<CacheEntries>> = OnceLock::new();
    SCRIPTS.get_or_init(Mutex::default)
}

/// The cache of Nimbus's own script `name`.
pub(crate) fn static_script(name: &str) -> Option<Arc<[u8]>> {
    lock(static_scripts()).by_name.get(name).cloned()
}

pub(crate) fn put_static_script(name: &str, bytes: Vec<u8>) -> bool {
    lock(static_scripts()).put(name, bytes, MAX_STATIC_BYTES)
}

/// A poisoned lock still holds whole entries (each insert is one assignment).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_keeps_its_caches_within_its_bound() {
        let cache = CodeCache::default();
        assert!(cache.put("a.js", vec![1; 100]));
        assert!(cache.put("a.js", vec![2; 50]));
        assert_eq!(cache.bytes(), 50);
        assert_eq!(cache.get("a.js").as_deref(), Some(&[2u8; 50][..]));
        assert!(!cache.put("big.js", vec![0; MAX_BYTES_PER_SET]));
        assert!(!cache.contains("big.js"));
        assert!(cache.put("b.js", vec![0; MAX_BYTES_PER_SET - 50]));
        assert_eq!(cache.bytes(), MAX_BYTES_PER_SET);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn caches_made_after_a_call_are_saved_once_and_restored_as_such() {
        let cache = CodeCache::default();
        assert!(cache.put("a.js", vec![1; 10]));
        assert!(!cache.made_after_a_call());
        assert!(
            !cache.take_unsaved(),
            "push-time caches are the deployment's, not to save"
        );
        cache.mark_made_after_a_call();
        assert!(cache.take_unsaved());
        assert!(!cache.take_unsaved(), "saved once");
        cache.mark_unsaved();
        assert!(cache.take_unsaved(), "a failed save is asked for again");

        let restored = CodeCache::default();
        restored.restore([("a.js".to_string(), vec![2; 10])]);
        assert!(restored.made_after_a_call());
        assert!(
            !restored.take_unsaved(),
            "what was restored is saved already"
        );
        assert_eq!(restored.get("a.js").as_deref(), Some(&[2u8; 10][..]));

        // Another code identity of the same sources starts from the same bytes, as
        // push-time caches, and without the first identity's function.
        restored.on_made_after_a_call(|| Box::new(|| {}));
        let copy = restored.copy_for_new_code();
        assert_eq!(copy.get("a.js").as_deref(), Some(&[2u8; 10][..]));
        assert_eq!(copy.bytes(), restored.bytes());
        assert!(!copy.made_after_a_call());
        assert!(!copy.has_notify());
    }
}

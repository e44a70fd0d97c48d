//! V8 (Debian's libnode, through `nimbus-v8`): the JIT, where the build has it.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use nimbus_v8::{Failure, Host, Isolate, Limits, Module};

use super::{Arg, Natives, VmFailure, NATIVES};
use crate::code_cache::{self, CodeCache};
use crate::modules::resolve_path;
use crate::{ModuleSet, RuntimeLimits};

pub(crate) struct V8Vm {
    isolate: Isolate,
    pub memory_limit: usize,
    /// The tenant's code, shared with the host (empty until [`V8Vm::set_modules`]).
    code: Rc<RefCell<Code>>,
    /// Modules the isolate loaded, shared with its host.
    loaded: Rc<RefCell<BTreeSet<String>>>,
    /// Nimbus's own scripts this isolate compiled without a cache.
    uncached_scripts: Vec<&'static str>,
    /// Whether this runtime still has to consider making code caches after a call (its
    /// first).
    caches_wanted: bool,
}

/// What a runtime loads modules from: one push's modules and their code caches.
#[derive(Default)]
struct Code {
    modules: Arc<BTreeMap<String, String>>,
    /// See `crate::code_cache`.
    cache: Arc<CodeCache>,
}

/// The isolate's natives, and its loader over the tenant's modules.
struct V8Host {
    natives: Natives,
    code: Rc<RefCell<Code>>,
    /// Names already handed to the isolate, which compiles each once: their source is not
    /// copied again.
    loaded: Rc<RefCell<BTreeSet<String>>>,
}

impl Host for V8Host {
    fn native(&mut self, id: u32, args: &[Arg<'_>]) -> Result<String, String> {
        self.natives.call(id, args)
    }

    fn load(&mut self, referrer: &str, specifier: &str) -> Result<Module, String> {
        let Some(path) = resolve_path(referrer, specifier) else {
            return Err(format!(
                "Could not resolve {specifier:?} from {referrer:?}: the path leaves the functions directory"
            ));
        };
        let code = self.code.borrow();
        let Some(source) = code.modules.get(&path) else {
            return Err(format!(
                "Could not resolve {specifier:?} from {referrer:?}: module {path:?} is not part of the pushed code"
            ));
        };
        if !self.loaded.borrow_mut().insert(path.clone()) {
            return Ok(Module {
                name: path,
                ..Module::default()
            });
        }
        Ok(Module {
            code_cache: code.cache.get(&path),
            source: source.clone(),
            name: path,
        })
    }
}

fn failure(failure: Failure) -> VmFailure {
    match failure {
        Failure::Exception(message) => VmFailure::Exception(message),
        Failure::Terminated => VmFailure::Terminated,
        Failure::OutOfMemory => VmFailure::OutOfMemory,
        Failure::Internal(message) => VmFailure::Internal(message),
    }
}

impl V8Vm {
    /// A runtime with no modules yet ([`V8Vm::set_modules`] gives them).
    pub fn new(natives: Natives, limits: &RuntimeLimits) -> Result<V8Vm, String> {
        let loaded = Rc::new(RefCell::new(BTreeSet::new()));
        let code = Rc::new(RefCell::new(Code::default()));
        let host = V8Host {
            natives,
            code: code.clone(),
            loaded: loaded.clone(),
        };
        let isolate = Isolate::new(
            Limits {
                heap_bytes: limits.memory_bytes,
                // ArrayBuffer contents live outside V8's heap: they get a bound of the same
                // size (QuickJS counts both in one).
                array_buffer_bytes: limits.memory_bytes,
                stack_bytes: limits.max_stack_bytes,
            },
            &NATIVES,
            Box::new(host),
        )
        .map_err(|e| e.to_string())?;
        Ok(V8Vm {
            isolate,
            memory_limit: limits.memory_bytes,
            code,
            loaded,
            uncached_scripts: Vec::new(),
            caches_wanted: false,
        })
    }

    /// The modules this runtime loads from (once, before any of them is imported).
    pub fn set_modules(&mut self, modules: &ModuleSet) {
        debug_assert!(self.loaded.borrow().is_empty(), "modules set after loading");
        *self.code.borrow_mut() = Code {
            modules: modules.modules.clone(),
            cache: modules.code_cache.clone(),
        };
        self.caches_wanted = true;
    }

    pub fn eval_script(&mut self, name: &str, source: &str) -> Result<(), VmFailure> {
        self.isolate.eval_script(name, source).map_err(failure)
    }

    /// Runs one of Nimbus's own scripts, from the process's code cache when there is one.
    pub fn eval_static_script(
        &mut self,
        name: &'static str,
        source: &'static str,
    ) -> Result<(), VmFailure> {
        let cache = code_cache::static_script(name);
        if cache.is_none() {
            self.uncached_scripts.push(name);
        }
        self.isolate
            .eval_script_cached(name, source, cache.as_deref())
            .map_err(failure)
    }

    /// Whether [`V8Vm::make_code_caches`] has work: this runtime made its first call and
    /// its push's caches were not made after one yet (they are push-time caches, of the
    /// modules' top level only, or there are none), or V8 refused one of them (made by
    /// another V8 version or with other flags). The caches then made hold the functions
    /// the call compiled too; the caller persists them (`CodeCache::take_unsaved`), so this
    /// happens once per push, not once per restart. A module left without a cache once
    /// they were made after a call (past the bound) is not chased: every runtime would.
    pub fn wants_code_caches(&self) -> bool {
        self.modules_want_caches() || !self.uncached_scripts.is_empty()
    }

    fn modules_want_caches(&self) -> bool {
        self.caches_wanted
            && !self.loaded.borrow().is_empty()
            && (!self.code.borrow().cache.made_after_a_call()
                || self.isolate.code_caches_rejected() > 0)
    }

    /// Makes the code caches of the modules this isolate loaded (and of Nimbus's scripts it
    /// compiled from source), with every function compiled so far, for the runtimes
    /// after it: once per runtime after its first call (`after_a_call`), or after push-time
    /// analysis loaded every module. Caches V8 refused are replaced.
    pub fn make_code_caches(&mut self, after_a_call: bool) {
        if !after_a_call || self.modules_want_caches() {
            let names: Vec<String> = self.loaded.borrow().iter().cloned().collect();
            let cache = self.code.borrow().cache.clone();
            for name in names {
                if let Some(bytes) = self.isolate.code_cache(&name) {
                    cache.put(&name, bytes);
                }
            }
            if after_a_call {
                cache.mark_made_after_a_call();
            }
        }
        if after_a_call {
            self.caches_wanted = false;
        }
        for name in std::mem::take(&mut self.uncached_scripts) {
            if let Some(bytes) = self.isolate.code_cache(name) {
                code_cache::put_static_script(name, bytes);
            }
        }
    }

    pub fn call(&mut self, name: &str, args: &[Arg<'_>]) -> Result<Option<String>, VmFailure> {
        let result = self.isolate.call(name, args).map_err(failure);
        self.array_buffers_refused(result)
    }

    /// Runs the microtasks: the end of every call's JavaScript, so also where the heap is
    /// compared with its limit (see `nimbus_v8::Isolate::heap_over_limit`).
    pub fn run_jobs(&mut self) -> Result<Option<String>, VmFailure> {
        let result = self
            .isolate
            .run_microtasks()
            .map_err(failure)
            .map(|()| None);
        if result.is_ok() && self.isolate.heap_over_limit() {
            return Err(VmFailure::OutOfMemory);
        }
        self.array_buffers_refused(result)
    }

    /// An ArrayBuffer refused for the limit is the call running out of memory, as it is
    /// in QuickJS, whatever the code did with the `RangeError`.
    fn array_buffers_refused<T>(&mut self, result: Result<T, VmFailure>) -> Result<T, VmFailure> {
        if self.isolate.take_array_buffer_refused() {
            return Err(VmFailure::OutOfMemory);
        }
        result
    }

    pub fn arm(&mut self, deadline: Instant) {
        self.isolate.arm(deadline);
    }

    pub fn disarm(&mut self) -> bool {
        self.isolate.disarm()
    }

    pub fn memory_bytes(&self) -> usize {
        self.isolate.memory_bytes()
    }
}

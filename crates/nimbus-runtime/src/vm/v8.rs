//! V8 (Debian's libnode, through `nimbus-v8`): the JIT, where the build has it.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use nimbus_v8::{Failure, Host, Isolate, Limits};

use super::{Arg, Natives, VmFailure, NATIVES};
use crate::modules::resolve_path;
use crate::{ModuleSet, RuntimeLimits};

pub(crate) struct V8Vm {
    isolate: Isolate,
    pub memory_limit: usize,
}

/// The isolate's natives, and its loader over the tenant's modules.
struct V8Host {
    natives: Natives,
    modules: Arc<BTreeMap<String, String>>,
    /// Names already handed to the isolate, which compiles each once: their source is not
    /// copied again.
    loaded: HashSet<String>,
}

impl Host for V8Host {
    fn native(&mut self, id: u32, args: &[Arg<'_>]) -> Result<String, String> {
        self.natives.call(id, args)
    }

    fn load(&mut self, referrer: &str, specifier: &str) -> Result<(String, String), String> {
        let Some(path) = resolve_path(referrer, specifier) else {
            return Err(format!(
                "Could not resolve {specifier:?} from {referrer:?}: the path leaves the functions directory"
            ));
        };
        let Some(source) = self.modules.get(&path) else {
            return Err(format!(
                "Could not resolve {specifier:?} from {referrer:?}: module {path:?} is not part of the pushed code"
            ));
        };
        if self.loaded.contains(&path) {
            return Ok((path, String::new()));
        }
        self.loaded.insert(path.clone());
        Ok((path, source.clone()))
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
    pub fn new(
        natives: Natives,
        modules: &ModuleSet,
        limits: &RuntimeLimits,
    ) -> Result<V8Vm, String> {
        let host = V8Host {
            natives,
            modules: modules.modules.clone(),
            loaded: HashSet::new(),
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
        })
    }

    pub fn eval_script(&mut self, name: &str, source: &str) -> Result<(), VmFailure> {
        self.isolate.eval_script(name, source).map_err(failure)
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

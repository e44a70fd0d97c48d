//! The isolate over the C++ shim (`shim/nimbus_v8.cc`): the only unsafe code in Nimbus's
//! JavaScript path, kept to the FFI calls and the two callbacks.

use std::borrow::Cow;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;
use std::time::Instant;

use crate::watchdog;
use crate::{Arg, Error, Failure, Host, Limits, Module};

mod ffi {
    use std::ffi::{c_char, c_int, c_void};

    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct Str {
        pub ptr: *const c_char,
        pub len: usize,
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct RawArg {
        pub tag: u32,
        pub number: f64,
        pub ptr: *const c_char,
        pub len: usize,
    }

    pub const UNDEFINED: u32 = 0;
    pub const BOOL: u32 = 1;
    pub const NUMBER: u32 = 2;
    pub const STRING: u32 = 3;
    pub const BYTES: u32 = 4;

    pub const OK: c_int = 0;
    pub const EXCEPTION: c_int = 1;
    pub const TERMINATED: c_int = 2;
    pub const OUT_OF_MEMORY: c_int = 3;

    /// Opaque: the shim's `nv8_isolate`.
    #[repr(C)]
    pub struct RawIsolate {
        _private: [u8; 0],
    }

    pub type NativeFn = unsafe extern "C" fn(
        host: *mut c_void,
        id: u32,
        args: *const RawArg,
        nargs: usize,
        out: *mut Str,
    ) -> c_int;
    pub type LoadFn = unsafe extern "C" fn(
        host: *mut c_void,
        referrer: Str,
        specifier: Str,
        name: *mut Str,
        source: *mut Str,
        cache: *mut Str,
    ) -> c_int;

    extern "C" {
        pub fn nv8_init(flags: *const c_char, flags_len: usize);
        pub fn nv8_version() -> *const c_char;
        #[allow(clippy::too_many_arguments)]
        pub fn nv8_isolate_new(
            heap_bytes: usize,
            array_buffer_bytes: usize,
            stack_bytes: usize,
            host: *mut c_void,
            native: NativeFn,
            load: LoadFn,
            names: *const Str,
            count: usize,
        ) -> *mut RawIsolate;
        pub fn nv8_isolate_free(isolate: *mut RawIsolate);
        pub fn nv8_eval_script(
            isolate: *mut RawIsolate,
            source: Str,
            name: Str,
            cache: Str,
            out: *mut Str,
        ) -> c_int;
        pub fn nv8_code_cache(isolate: *mut RawIsolate, name: Str, out: *mut Str) -> c_int;
        pub fn nv8_code_cache_rejected(isolate: *mut RawIsolate) -> usize;
        pub fn nv8_call(
            isolate: *mut RawIsolate,
            name: Str,
            args: *const RawArg,
            nargs: usize,
            out: *mut Str,
            is_string: *mut bool,
        ) -> c_int;
        pub fn nv8_run_microtasks(isolate: *mut RawIsolate) -> c_int;
        pub fn nv8_heap_over_limit(isolate: *mut RawIsolate) -> bool;
        pub fn nv8_terminate(isolate: *mut RawIsolate);
        pub fn nv8_clear_termination(isolate: *mut RawIsolate);
        pub fn nv8_memory_used(isolate: *mut RawIsolate) -> usize;
        pub fn nv8_take_array_buffer_refused(isolate: *mut RawIsolate) -> bool;
        pub fn nv8_set_array_buffer_limit(isolate: *mut RawIsolate, bytes: usize);
    }
}

pub(crate) use ffi::RawIsolate;

/// Stops the entry running in `isolate` (any thread).
///
/// # Safety
/// `isolate` must be alive: the watchdog only calls this for an armed isolate, under the
/// lock that [`Isolate::disarm`] (and so [`Isolate`]'s drop) takes.
pub(crate) unsafe fn terminate(isolate: *mut RawIsolate) {
    // SAFETY: see above; TerminateExecution may be called from any thread.
    unsafe { ffi::nv8_terminate(isolate) }
}

static INIT: Once = Once::new();

/// V8 flags, set once before the platform starts.
///
/// `--no-expose-wasm`: no `WebAssembly` global. A WebAssembly memory is reserved by V8's page
/// allocator, outside both the heap limit and the ArrayBuffer allocator, so a tenant could
/// take gigabytes past its memory limit with one `new WebAssembly.Memory(...)`. Convex
/// functions do not get WebAssembly in QuickJS either.
const FLAGS: &str = "--no-expose-wasm";

fn init() {
    INIT.call_once(|| {
        // SAFETY: the flags outlive the call; the shim initializes the platform once.
        unsafe { ffi::nv8_init(FLAGS.as_ptr().cast(), FLAGS.len()) }
    });
}

/// V8's version (`"10.2.154.26-node.36"`).
pub fn version() -> Option<&'static str> {
    init();
    // SAFETY: V8 returns a static NUL-terminated string.
    let raw = unsafe { CStr::from_ptr(ffi::nv8_version()) };
    raw.to_str().ok()
}

/// What the callbacks reach: the host, and the texts they return (borrowed by the shim
/// until the next callback).
struct HostCell {
    host: Box<dyn Host>,
    out: String,
    /// The module handed to the shim by the last load (borrowed until the next callback).
    module: Module,
}

fn text<'a>(ptr: *const c_char, len: usize) -> Cow<'a, str> {
    if ptr.is_null() || len == 0 {
        return Cow::Borrowed("");
    }
    // SAFETY: the shim passes `len` readable bytes at `ptr`, alive for this callback.
    let bytes = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) };
    String::from_utf8_lossy(bytes)
}

fn bytes<'a>(ptr: *const c_char, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        return &[];
    }
    // SAFETY: as in `text`.
    unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) }
}

fn borrowed(s: &str) -> ffi::Str {
    ffi::Str {
        ptr: s.as_ptr().cast(),
        len: s.len(),
    }
}

unsafe extern "C" fn native_trampoline(
    host: *mut c_void,
    id: u32,
    args: *const ffi::RawArg,
    nargs: usize,
    out: *mut ffi::Str,
) -> c_int {
    // SAFETY: `host` is the HostCell this isolate was made with; the shim calls back only
    // during an entry, when no Rust reference to the cell is alive.
    let cell = unsafe { &mut *host.cast::<HostCell>() };
    let raw = if nargs == 0 || args.is_null() {
        &[][..]
    } else {
        // SAFETY: the shim passes `nargs` arguments at `args`.
        unsafe { std::slice::from_raw_parts(args, nargs) }
    };
    let texts: Vec<Cow<'_, str>> = raw
        .iter()
        .map(|a| {
            if a.tag == ffi::STRING {
                text(a.ptr, a.len)
            } else {
                Cow::Borrowed("")
            }
        })
        .collect();
    let args: Vec<Arg<'_>> = raw
        .iter()
        .zip(&texts)
        .map(|(a, t)| match a.tag {
            ffi::BOOL => Arg::Bool(a.number != 0.0),
            ffi::NUMBER => Arg::Number(a.number),
            ffi::STRING => Arg::Str(t),
            ffi::BYTES => Arg::Bytes(bytes(a.ptr, a.len)),
            _ => Arg::Undefined,
        })
        .collect();
    let answer = catch_unwind(AssertUnwindSafe(|| cell.host.native(id, &args)));
    let (rc, message) = match answer {
        Ok(Ok(result)) => (0, result),
        Ok(Err(message)) => (1, message),
        Err(_) => (1, "internal error: a native function panicked".to_string()),
    };
    cell.out = message;
    // SAFETY: `out` is the shim's slot for this callback.
    unsafe { *out = borrowed(&cell.out) };
    rc
}

unsafe extern "C" fn load_trampoline(
    host: *mut c_void,
    referrer: ffi::Str,
    specifier: ffi::Str,
    name: *mut ffi::Str,
    source: *mut ffi::Str,
    cache: *mut ffi::Str,
) -> c_int {
    // SAFETY: as in `native_trampoline`.
    let cell = unsafe { &mut *host.cast::<HostCell>() };
    let referrer = text(referrer.ptr, referrer.len);
    let specifier = text(specifier.ptr, specifier.len);
    let answer = catch_unwind(AssertUnwindSafe(|| cell.host.load(&referrer, &specifier)));
    let failed = |message: String| Module {
        name: message,
        ..Module::default()
    };
    let (rc, module) = match answer {
        Ok(Ok(module)) => (0, module),
        Ok(Err(message)) => (1, failed(message)),
        Err(_) => (
            1,
            failed("internal error: the module loader panicked".into()),
        ),
    };
    cell.module = module;
    let cached: &[u8] = cell.module.code_cache.as_deref().unwrap_or_default();
    // SAFETY: the shim's slots for this callback.
    unsafe {
        *name = borrowed(&cell.module.name);
        *source = borrowed(&cell.module.source);
        *cache = ffi::Str {
            ptr: cached.as_ptr().cast(),
            len: cached.len(),
        };
    }
    rc
}

/// One V8 isolate with one context. Not `Send`: it must stay on the thread that made it
/// (its stack limit is measured from that thread's stack).
pub struct Isolate {
    raw: *mut RawIsolate,
    cell: *mut HostCell,
    /// The watchdog entry of the current [`Isolate::arm`].
    armed: Option<u64>,
    _not_send: PhantomData<*const ()>,
}

impl Isolate {
    /// A new isolate whose globals `natives[i]` call `host.native(i, ..)`.
    pub fn new(limits: Limits, natives: &[&str], host: Box<dyn Host>) -> Result<Isolate, Error> {
        init();
        let cell = Box::into_raw(Box::new(HostCell {
            host,
            out: String::new(),
            module: Module::default(),
        }));
        let names: Vec<ffi::Str> = natives.iter().map(|n| borrowed(n)).collect();
        // SAFETY: the names outlive the call; `cell` lives until drop, after the isolate.
        let raw = unsafe {
            ffi::nv8_isolate_new(
                limits.heap_bytes,
                limits.array_buffer_bytes,
                limits.stack_bytes,
                cell.cast(),
                native_trampoline,
                load_trampoline,
                names.as_ptr(),
                names.len(),
            )
        };
        if raw.is_null() {
            // SAFETY: made above by Box::into_raw and not shared.
            drop(unsafe { Box::from_raw(cell) });
            return Err(Error::Create);
        }
        Ok(Isolate {
            raw,
            cell,
            armed: None,
            _not_send: PhantomData,
        })
    }

    fn failure(&self, status: c_int, out: ffi::Str) -> Failure {
        match status {
            ffi::EXCEPTION => Failure::Exception(text(out.ptr, out.len).into_owned()),
            ffi::TERMINATED => Failure::Terminated,
            ffi::OUT_OF_MEMORY => Failure::OutOfMemory,
            _ => Failure::Internal(text(out.ptr, out.len).into_owned()),
        }
    }

    /// Runs a classic script named `name`.
    pub fn eval_script(&mut self, name: &str, source: &str) -> Result<(), Failure> {
        self.eval_script_cached(name, source, None)
    }

    /// Runs a classic script named `name`, compiled from `code_cache` (made by
    /// [`Isolate::code_cache`] for this source) when V8 accepts it.
    pub fn eval_script_cached(
        &mut self,
        name: &str,
        source: &str,
        code_cache: Option<&[u8]>,
    ) -> Result<(), Failure> {
        let mut out = ffi::Str {
            ptr: std::ptr::null(),
            len: 0,
        };
        let cache = code_cache.unwrap_or_default();
        let cache = ffi::Str {
            ptr: cache.as_ptr().cast(),
            len: cache.len(),
        };
        // SAFETY: `raw` is alive; the texts and the cache outlive the call; `out` is ours.
        let status = unsafe {
            ffi::nv8_eval_script(self.raw, borrowed(source), borrowed(name), cache, &mut out)
        };
        match status {
            ffi::OK => Ok(()),
            other => Err(self.failure(other, out)),
        }
    }

    /// The code cache of the module or classic script `name` loaded in this isolate: its
    /// compiled bytecode, every function compiled so far included. `None` if nothing of
    /// that name was loaded (or V8 made no cache).
    pub fn code_cache(&mut self, name: &str) -> Option<Vec<u8>> {
        let mut out = ffi::Str {
            ptr: std::ptr::null(),
            len: 0,
        };
        // SAFETY: `raw` is alive and no entry runs; `out` is ours, valid until the next entry.
        let status = unsafe { ffi::nv8_code_cache(self.raw, borrowed(name), &mut out) };
        (status == ffi::OK).then(|| bytes(out.ptr, out.len).to_vec())
    }

    /// Code caches V8 refused so far (made by another V8 or with other flags, or damaged):
    /// their sources were compiled afresh.
    pub fn code_caches_rejected(&self) -> usize {
        // SAFETY: `raw` is alive.
        unsafe { ffi::nv8_code_cache_rejected(self.raw) }
    }

    /// Calls the global function `name`; `Some` when it returned a string.
    pub fn call(&mut self, name: &str, args: &[Arg<'_>]) -> Result<Option<String>, Failure> {
        let raw_args: Vec<ffi::RawArg> = args
            .iter()
            .map(|a| {
                let (tag, number, ptr, len) = match *a {
                    Arg::Undefined => (ffi::UNDEFINED, 0.0, std::ptr::null(), 0),
                    Arg::Bool(b) => (ffi::BOOL, if b { 1.0 } else { 0.0 }, std::ptr::null(), 0),
                    Arg::Number(n) => (ffi::NUMBER, n, std::ptr::null(), 0),
                    Arg::Str(s) => (ffi::STRING, 0.0, s.as_ptr().cast(), s.len()),
                    Arg::Bytes(b) => (ffi::BYTES, 0.0, b.as_ptr().cast(), b.len()),
                };
                ffi::RawArg {
                    tag,
                    number,
                    ptr,
                    len,
                }
            })
            .collect();
        let mut out = ffi::Str {
            ptr: std::ptr::null(),
            len: 0,
        };
        let mut is_string = false;
        // SAFETY: `raw` is alive; the arguments outlive the call; `out` and `is_string` are
        // ours.
        let status = unsafe {
            ffi::nv8_call(
                self.raw,
                borrowed(name),
                raw_args.as_ptr(),
                raw_args.len(),
                &mut out,
                &mut is_string,
            )
        };
        match status {
            ffi::OK if is_string => Ok(Some(text(out.ptr, out.len).into_owned())),
            ffi::OK => Ok(None),
            other => Err(self.failure(other, out)),
        }
    }

    /// Runs the queued microtasks (promise reactions) until none is left.
    pub fn run_microtasks(&mut self) -> Result<(), Failure> {
        // SAFETY: `raw` is alive.
        let status = unsafe { ffi::nv8_run_microtasks(self.raw) };
        match status {
            ffi::OK => Ok(()),
            other => Err(self.failure(
                other,
                ffi::Str {
                    ptr: std::ptr::null(),
                    len: 0,
                },
            )),
        }
    }

    /// Whether the heap is over its limit: V8 checks its limit only when it collects
    /// garbage, so one large object can pass it unseen. Once true, the isolate is out of
    /// memory (every entry fails with [`Failure::OutOfMemory`]) and must be dropped.
    pub fn heap_over_limit(&mut self) -> bool {
        // SAFETY: `raw` is alive.
        unsafe { ffi::nv8_heap_over_limit(self.raw) }
    }

    /// Terminates whatever runs in this isolate at `deadline`, until [`Isolate::disarm`].
    pub fn arm(&mut self, deadline: Instant) {
        self.disarm();
        self.armed = Some(watchdog::arm(self.raw, deadline));
    }

    /// Stops the watch; true if the deadline struck (the isolate is then able to run again).
    pub fn disarm(&mut self) -> bool {
        let Some(id) = self.armed.take() else {
            return false;
        };
        let fired = watchdog::disarm(id);
        if fired {
            // SAFETY: `raw` is alive, and no entry runs now.
            unsafe { ffi::nv8_clear_termination(self.raw) };
        }
        fired
    }

    /// Bytes of V8's heap plus ArrayBuffer contents.
    pub fn memory_bytes(&self) -> usize {
        // SAFETY: `raw` is alive.
        unsafe { ffi::nv8_memory_used(self.raw) }
    }

    /// Whether an ArrayBuffer allocation was refused since the last time this was asked.
    pub fn take_array_buffer_refused(&mut self) -> bool {
        // SAFETY: `raw` is alive.
        unsafe { ffi::nv8_take_array_buffer_refused(self.raw) }
    }

    pub fn set_array_buffer_limit(&mut self, bytes: usize) {
        // SAFETY: `raw` is alive.
        unsafe { ffi::nv8_set_array_buffer_limit(self.raw, bytes) }
    }

    /// The host, between entries.
    pub fn host_mut(&mut self) -> &mut dyn Host {
        // SAFETY: no entry runs while `self` is borrowed mutably, so the shim holds no
        // reference to the cell.
        unsafe { (*self.cell).host.as_mut() }
    }
}

impl Drop for Isolate {
    fn drop(&mut self) {
        self.disarm();
        // SAFETY: disarmed, so the watchdog no longer holds the isolate; the cell is freed
        // after the isolate that calls into it.
        unsafe {
            ffi::nv8_isolate_free(self.raw);
            drop(Box::from_raw(self.cell));
        }
    }
}

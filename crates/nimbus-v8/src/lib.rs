//! JavaScript in V8 isolates, through Debian's libnode and a small C++ shim
//! (`shim/nimbus_v8.cc`).
//!
//! The crate knows nothing of Convex or tenants: an [`Isolate`] is a heap with one context,
//! whose globals hold the natives its [`Host`] answers, that runs classic scripts, ES
//! modules (loaded through the host) and calls of global functions, and drains its microtasks
//! when told. Every entry can be bounded in time ([`Isolate::arm`]) and the isolate's heap
//! and ArrayBuffer memory are bounded at creation ([`Limits`]). Past a limit the entry fails
//! with [`Failure::Terminated`] or [`Failure::OutOfMemory`]; V8's own out-of-memory handling,
//! which aborts the process, is never reached.
//!
//! Builds without libnode have no V8: [`AVAILABLE`] is false and [`Isolate::new`] fails
//! with [`Error::NotBuilt`] (see `build.rs`).

// The FFI to the shim; nothing else in the workspace is unsafe.
#[cfg(not(nimbus_v8))]
mod absent;
#[cfg(nimbus_v8)]
#[allow(unsafe_code)]
mod engine;
#[cfg(nimbus_v8)]
mod watchdog;

#[cfg(not(nimbus_v8))]
pub use absent::{version, Isolate};
#[cfg(nimbus_v8)]
pub use engine::{version, Isolate};

/// Whether this build has V8.
pub const AVAILABLE: bool = cfg!(nimbus_v8);

/// Bounds of one isolate.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// V8's heap (old and young generations), in bytes. Reaching it fails the running entry
    /// with [`Failure::OutOfMemory`]; the isolate must then be dropped.
    pub heap_bytes: usize,
    /// ArrayBuffer contents, in bytes (outside V8's heap). Past it, allocating one throws a
    /// `RangeError` in JavaScript and [`Isolate::take_array_buffer_refused`] reports it.
    pub array_buffer_bytes: usize,
    /// Native stack JavaScript may use below the frame that created the isolate. Deeper
    /// recursion throws a `RangeError`. The isolate must be used on the thread that made it.
    pub stack_bytes: usize,
}

/// A value passed into or out of JavaScript.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arg<'a> {
    Undefined,
    Bool(bool),
    Number(f64),
    Str(&'a str),
    /// Into JavaScript: a new ArrayBuffer holding a copy. Out of it: an ArrayBuffer's or a
    /// view's bytes.
    Bytes(&'a [u8]),
}

impl Arg<'_> {
    /// The argument as text (`""` for anything that is not a string).
    pub fn as_str(&self) -> &str {
        match self {
            Arg::Str(s) => s,
            _ => "",
        }
    }
}

/// What an isolate asks of its embedder: its natives, and the source of its modules.
pub trait Host {
    /// Native number `id` (its index in the names given to [`Isolate::new`]). `Ok` is the
    /// string it returns; `Err` is thrown as an `Error` with that message.
    fn native(&mut self, id: u32, args: &[Arg<'_>]) -> Result<String, String>;

    /// Resolves `specifier`, imported by the module or script named `referrer`, to a
    /// module. The isolate compiles each name once; the source of a name it already has is
    /// ignored. `Err` is thrown as an `Error` with that message.
    fn load(&mut self, referrer: &str, specifier: &str) -> Result<Module, String>;
}

/// A module handed to an isolate by [`Host::load`].
#[derive(Debug, Clone, Default)]
pub struct Module {
    /// Its resolved name: how other modules' imports and stack traces name it.
    pub name: String,
    /// Its source (may be empty when the isolate already has this name).
    pub source: String,
    /// A code cache made by [`Isolate::code_cache`] from this very source, by this build:
    /// the module is then compiled from it without parsing. V8 checks that it matches the
    /// source, its version and its flags, and compiles afresh when not
    /// ([`Isolate::code_caches_rejected`] counts those).
    pub code_cache: Option<std::sync::Arc<[u8]>>,
}

/// Why an entry into JavaScript failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// An exception escaped: its `stack` if it has one, else its text.
    #[error("{0}")]
    Exception(String),
    /// The deadline of [`Isolate::arm`] passed.
    #[error("terminated at its deadline")]
    Terminated,
    /// The heap limit was reached; drop the isolate.
    #[error("out of memory")]
    OutOfMemory,
    /// The shim's own failure (e.g. calling something that is not a function).
    #[error("{0}")]
    Internal(String),
}

/// Failures to make an isolate.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("this build of Nimbus has no V8: libnode was not found when it was built (run scripts/libnode.sh and rebuild)")]
    NotBuilt,
    #[error("V8 could not create an isolate")]
    Create,
}

//! The runtime's contract, with small modules shaped like what the Convex library
//! registers (`isQuery` + `invokeQuery(argsJson)` etc.): syscalls through the host,
//! `ConvexError`, log lines, determinism, CPU and memory limits, and that one tenant
//! hitting a limit does not stop another.

//!
//! On the preferred engine (V8 where this build has it); `pool_quickjs.rs` runs the same
//! tests on QuickJS.

const ENGINE: nimbus_runtime::Engine = nimbus_runtime::Engine::preferred();

include!("pool/contract.rs");

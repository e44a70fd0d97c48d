//! The pool's contract (`pool/contract.rs`) on QuickJS, which every build has and
//! `--js-engine quickjs` selects.

const ENGINE: nimbus_runtime::Engine = nimbus_runtime::Engine::QuickJs;

include!("pool/contract.rs");

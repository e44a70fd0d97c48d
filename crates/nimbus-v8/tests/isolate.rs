//! The V8 isolate on its own: natives, scripts, modules, microtasks, and every limit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nimbus_v8::{Arg, Failure, Host, Isolate, Limits, Module};

/// Skips (with a note) only where V8 may be absent; CI sets NIMBUS_REQUIRE_V8=1.
fn v8_built() -> bool {
    if nimbus_v8::AVAILABLE {
        return true;
    }
    assert_ne!(
        std::env::var("NIMBUS_REQUIRE_V8").as_deref(),
        Ok("1"),
        "NIMBUS_REQUIRE_V8=1 but this build has no V8"
    );
    eprintln!("skipped: this build has no V8");
    false
}

const LIMITS: Limits = Limits {
    heap_bytes: 64 << 20,
    array_buffer_bytes: 64 << 20,
    stack_bytes: 512 << 10,
};

/// Natives: 0 echoes its arguments as JSON-ish text, 1 fails with its first argument.
struct TestHost {
    modules: BTreeMap<String, String>,
    /// Code caches handed out with the modules of these names.
    caches: BTreeMap<String, Arc<[u8]>>,
}

impl Host for TestHost {
    fn native(&mut self, id: u32, args: &[Arg<'_>]) -> Result<String, String> {
        match id {
            0 => Ok(args
                .iter()
                .map(|a| match a {
                    Arg::Undefined => "undefined".to_string(),
                    Arg::Bool(b) => format!("bool:{b}"),
                    Arg::Number(n) => format!("number:{n}"),
                    Arg::Str(s) => format!("str:{s}"),
                    Arg::Bytes(b) => format!("bytes:{b:?}"),
                })
                .collect::<Vec<_>>()
                .join(",")),
            _ => Err(args
                .first()
                .map(|a| a.as_str().to_string())
                .unwrap_or_default()),
        }
    }

    fn load(&mut self, referrer: &str, specifier: &str) -> Result<Module, String> {
        let name = specifier.trim_start_matches("./").to_string();
        match self.modules.get(&name) {
            Some(source) => Ok(Module {
                code_cache: self.caches.get(&name).cloned(),
                source: source.clone(),
                name,
            }),
            None => Err(format!("no module {specifier} (imported by {referrer})")),
        }
    }
}

fn isolate(modules: &[(&str, &str)]) -> Isolate {
    cached_isolate(modules, BTreeMap::new())
}

fn cached_isolate(modules: &[(&str, &str)], caches: BTreeMap<String, Arc<[u8]>>) -> Isolate {
    let host = TestHost {
        modules: modules
            .iter()
            .map(|(n, s)| (n.to_string(), s.to_string()))
            .collect(),
        caches,
    };
    Isolate::new(LIMITS, &["echo", "fail"], Box::new(host)).unwrap()
}

/// Calls `f` (a global returning a promise-settling setter) and reads `globalThis.out`.
fn run(iso: &mut Isolate, source: &str) -> Result<Option<String>, Failure> {
    iso.eval_script("test.js", source)?;
    iso.run_microtasks()?;
    iso.call("read", &[])
}

const READ: &str = "globalThis.read = () => String(globalThis.out);";

#[test]
fn natives_scripts_and_calls_carry_every_kind_of_value() {
    if !v8_built() {
        return;
    }
    assert!(nimbus_v8::version()
        .unwrap()
        .starts_with(|c: char| c.is_ascii_digit()));
    let mut iso = isolate(&[]);
    iso.eval_script("setup.js", "globalThis.f = (...a) => echo(...a);")
        .unwrap();
    let out = iso
        .call(
            "f",
            &[
                Arg::Str("héllo"),
                Arg::Number(1.5),
                Arg::Bool(true),
                Arg::Undefined,
                Arg::Bytes(&[1, 2, 3]),
            ],
        )
        .unwrap();
    assert_eq!(
        out.as_deref(),
        Some("str:héllo,number:1.5,bool:true,undefined,bytes:[1, 2, 3]")
    );
    // A typed array view passes its own bytes; a lone surrogate arrives replaced.
    iso.eval_script(
        "v.js",
        "globalThis.g = () => echo(new Uint8Array([9, 8, 7, 6]).subarray(1, 3), '\\ud800x');",
    )
    .unwrap();
    assert_eq!(
        iso.call("g", &[]).unwrap().as_deref(),
        Some("bytes:[8, 7],str:\u{fffd}x")
    );
    // A function returning something else than a string.
    iso.eval_script("n.js", "globalThis.n = () => 42;").unwrap();
    assert_eq!(iso.call("n", &[]).unwrap(), None);
    // A native's error is thrown as an Error with its message.
    iso.eval_script(
        "e.js",
        "globalThis.e = () => { try { fail('nope'); } catch (e) { return `${e.name}: ${e.message}`; } };",
    )
    .unwrap();
    assert_eq!(iso.call("e", &[]).unwrap().as_deref(), Some("Error: nope"));
    // An exception escaping: its stack, with the script's name.
    iso.eval_script(
        "t.js",
        "globalThis.t = () => { throw new TypeError('bad'); };",
    )
    .unwrap();
    match iso.call("t", &[]) {
        Err(Failure::Exception(message)) => {
            assert!(message.starts_with("TypeError: bad"), "{message}");
            assert!(message.contains("t.js"), "{message}");
        }
        other => panic!("expected an exception, got {other:?}"),
    }
    // No WebAssembly: its memories would escape every memory limit.
    iso.eval_script("w.js", "globalThis.w = () => typeof WebAssembly;")
        .unwrap();
    assert_eq!(iso.call("w", &[]).unwrap().as_deref(), Some("undefined"));
    // A syntax error in a script, and calling what is not a function.
    assert!(matches!(
        iso.eval_script("s.js", "let ="),
        Err(Failure::Exception(m)) if m.contains("SyntaxError")
    ));
    assert!(matches!(
        iso.call("nothing", &[]),
        Err(Failure::Internal(_))
    ));
}

#[test]
fn es_modules_load_through_the_host_and_settle_with_microtasks() {
    if !v8_built() {
        return;
    }
    let mut iso = isolate(&[
        (
            "a.js",
            "import { b } from './b.js'; export const a = `a+${b}`;",
        ),
        ("b.js", "export const b = 'b'; await Promise.resolve();"),
        (
            "broken.js",
            "import { x } from './missing.js'; export const y = x;",
        ),
        ("throws.js", "throw new Error('at load');"),
    ]);
    iso.eval_script("read.js", READ).unwrap();
    // Nothing settles before the microtasks run.
    iso.eval_script(
        "main.js",
        "globalThis.out = 'pending'; import('a.js').then((ns) => { globalThis.out = ns.a; });",
    )
    .unwrap();
    assert_eq!(iso.call("read", &[]).unwrap().as_deref(), Some("pending"));
    iso.run_microtasks().unwrap();
    assert_eq!(iso.call("read", &[]).unwrap().as_deref(), Some("a+b"));
    // The same module again: the same namespace (evaluated once).
    let again = run(
        &mut iso,
        "import('a.js').then((ns) => import('./a.js').then((ns2) => { globalThis.out = ns === ns2; }));",
    );
    assert_eq!(again.unwrap().as_deref(), Some("true"));
    // A missing import and a module that throws reject the import, with the host's message.
    let missing = run(
        &mut iso,
        "import('broken.js').then(() => { globalThis.out = 'loaded'; }, (e) => { globalThis.out = e.message; });",
    );
    assert_eq!(
        missing.unwrap().as_deref(),
        Some("no module ./missing.js (imported by broken.js)")
    );
    let throws = run(
        &mut iso,
        "import('throws.js').then(() => { globalThis.out = 'loaded'; }, (e) => { globalThis.out = e.message; });",
    );
    assert_eq!(throws.unwrap().as_deref(), Some("at load"));
}

/// Runs `source` (which should exceed a limit) in its own isolate, while another isolate on
/// another thread keeps answering calls; returns the failure.
fn contained(source: &'static str, deadline: Duration) -> Result<Option<String>, Failure> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let neighbour = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut iso = isolate(&[]);
            iso.eval_script("n.js", "globalThis.add = (a, b) => String(a + b);")
                .unwrap();
            let mut calls = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                iso.arm(Instant::now() + Duration::from_secs(5));
                let sum = iso.call("add", &[Arg::Number(2.0), Arg::Number(3.0)]);
                assert!(!iso.disarm());
                assert_eq!(sum.unwrap().as_deref(), Some("5"));
                calls += 1;
            }
            calls
        })
    };
    let outcome = {
        let mut iso = isolate(&[]);
        iso.eval_script(
            "bomb.js",
            &format!("globalThis.bomb = () => {{ {source} }};"),
        )
        .unwrap();
        iso.arm(Instant::now() + deadline);
        let mut outcome = iso.call("bomb", &[]);
        iso.disarm();
        if outcome.is_ok() && iso.heap_over_limit() {
            outcome = Err(Failure::OutOfMemory);
        }
        outcome
    };
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let calls = neighbour.join().unwrap();
    assert!(calls > 0, "the neighbour made no call");
    outcome
}

#[test]
fn an_infinite_loop_stops_at_its_deadline_and_the_isolate_runs_again() {
    if !v8_built() {
        return;
    }
    let started = Instant::now();
    let outcome = contained("for (;;) {}", Duration::from_millis(200));
    assert_eq!(outcome, Err(Failure::Terminated));
    assert!(started.elapsed() < Duration::from_secs(10));
    // The same isolate after a termination: it runs the next call.
    let mut iso = isolate(&[]);
    iso.eval_script(
        "l.js",
        "globalThis.spin = () => { for (;;) {} }; globalThis.ok = () => 'ok';",
    )
    .unwrap();
    iso.arm(Instant::now() + Duration::from_millis(100));
    assert_eq!(iso.call("spin", &[]), Err(Failure::Terminated));
    assert!(iso.disarm(), "the deadline struck");
    assert_eq!(iso.call("ok", &[]).unwrap().as_deref(), Some("ok"));
    // A promise chain that never ends is stopped the same way.
    iso.eval_script(
        "p.js",
        "globalThis.chain = () => { const f = () => Promise.resolve().then(f); f(); };",
    )
    .unwrap();
    iso.arm(Instant::now() + Duration::from_millis(100));
    iso.call("chain", &[]).unwrap();
    assert_eq!(iso.run_microtasks(), Err(Failure::Terminated));
    assert!(iso.disarm());
}

#[test]
fn a_heap_bomb_fails_with_out_of_memory_and_the_process_lives() {
    if !v8_built() {
        return;
    }
    let outcome = contained(
        "const a = []; for (;;) a.push({ n: a.length, s: 'x' + a.length });",
        Duration::from_secs(60),
    );
    assert_eq!(outcome, Err(Failure::OutOfMemory));
    // And again, in a fresh isolate: nothing was left broken.
    let outcome = contained(
        "let s = []; for (let i = 0; ; i++) s.push(new Array(100000).fill(i));",
        Duration::from_secs(60),
    );
    assert_eq!(outcome, Err(Failure::OutOfMemory));
}

#[test]
fn array_buffers_count_against_their_own_limit() {
    if !v8_built() {
        return;
    }
    let mut iso = isolate(&[]);
    iso.eval_script(
        "ab.js",
        "globalThis.keep = []; globalThis.grab = () => { for (;;) keep.push(new ArrayBuffer(8 << 20)); };",
    )
    .unwrap();
    match iso.call("grab", &[]) {
        Err(Failure::Exception(message)) => {
            assert!(message.contains("RangeError"), "{message}")
        }
        other => panic!("expected a RangeError, got {other:?}"),
    }
    assert!(iso.take_array_buffer_refused());
    assert!(!iso.take_array_buffer_refused(), "cleared once taken");
    let held = iso.memory_bytes();
    assert!(held >= 56 << 20, "{held} bytes counted");
    assert!(held <= (64 << 20) + (32 << 20), "{held} bytes counted");
}

#[test]
fn deep_recursion_and_huge_strings_fail_cleanly() {
    if !v8_built() {
        return;
    }
    let mut iso = isolate(&[]);
    iso.eval_script("r.js", "globalThis.down = (n) => down(n + 1) + 1;")
        .unwrap();
    match iso.call("down", &[Arg::Number(0.0)]) {
        Err(Failure::Exception(message)) => {
            assert!(
                message.contains("Maximum call stack size exceeded"),
                "{message}"
            )
        }
        other => panic!("expected a RangeError, got {other:?}"),
    }
    // The isolate is still usable after a stack overflow.
    iso.eval_script("ok.js", "globalThis.ok = () => 'ok';")
        .unwrap();
    assert_eq!(iso.call("ok", &[]).unwrap().as_deref(), Some("ok"));
    // 100 MB of string, flattened (`repeat` alone builds a rope of a few nodes, and
    // `indexOf` needs it in one piece): past the 64 MiB heap. V8 allocates one large object
    // past its limit without a word (it checks the limit when it collects garbage), so the
    // embedder asks after each call (`contained` does, as nimbus-runtime does).
    let outcome = contained(
        "const s = 'x'.repeat(100 * 1000 * 1000); return String(s.indexOf('y'));",
        Duration::from_secs(60),
    );
    assert_eq!(outcome, Err(Failure::OutOfMemory));
    // Two of them, kept: the second reaches the limit during a collection.
    let outcome = contained(
        "globalThis.keep = []; for (let i = 0; i < 3; i++) { const s = 'x'.repeat(1e8) + i; s.indexOf('y'); keep.push(s); }",
        Duration::from_secs(60),
    );
    assert_eq!(outcome, Err(Failure::OutOfMemory));
    // Past V8's maximum string length: a RangeError, not a crash.
    let mut iso = isolate(&[]);
    iso.eval_script("big.js", "globalThis.big = () => 'x'.repeat(2 ** 31);")
        .unwrap();
    match iso.call("big", &[]) {
        Err(Failure::Exception(message)) => assert!(message.contains("RangeError"), "{message}"),
        other => panic!("expected a RangeError, got {other:?}"),
    }
}

/// A module and a script compiled from their code caches behave as compiled from source; a
/// cache of another source, or damaged bytes, are refused (counted) and the source compiles.
#[test]
fn code_caches_are_consumed_and_refused_when_they_do_not_match() {
    if !v8_built() {
        return;
    }
    const LIB: &str = "export function fib(n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }\n\
                       export const unused = () => 'never called';";
    const LIB_CHANGED: &str =
        "export function fib(n) { return n < 2 ? n : fib(n - 1) + fib(n - 2) + 1; }";
    const MAIN: &str = "import('lib.js').then((m) => { globalThis.out = m.fib(20); });";
    let first = |modules: &[(&str, &str)], caches| {
        let mut iso = cached_isolate(modules, caches);
        iso.eval_script("read.js", READ).unwrap();
        let out = run(&mut iso, MAIN).unwrap();
        (iso, out)
    };
    let (mut made, out) = first(&[("lib.js", LIB)], BTreeMap::new());
    assert_eq!(out.as_deref(), Some("6765"));
    let lib_cache: Arc<[u8]> = made.code_cache("lib.js").expect("a module's cache").into();
    let read_cache = made.code_cache("read.js").expect("a script's cache");
    assert!(lib_cache.len() > 16 && read_cache.len() > 16);
    assert_eq!(made.code_cache("missing.js"), None);
    assert_eq!(made.code_caches_rejected(), 0);

    // Consumed: the same answers, nothing refused.
    let caches = BTreeMap::from([("lib.js".to_string(), lib_cache.clone())]);
    let mut iso = cached_isolate(&[("lib.js", LIB)], caches);
    iso.eval_script_cached("read.js", READ, Some(&read_cache))
        .unwrap();
    assert_eq!(run(&mut iso, MAIN).unwrap().as_deref(), Some("6765"));
    assert_eq!(iso.code_caches_rejected(), 0);

    // Another source under the same name: refused, and the new source is what runs.
    let caches = BTreeMap::from([("lib.js".to_string(), lib_cache.clone())]);
    let (changed, out) = first(&[("lib.js", LIB_CHANGED)], caches);
    assert_eq!(out.as_deref(), Some("17710"));
    assert_eq!(changed.code_caches_rejected(), 1);

    // Damaged bytes: refused too.
    let mut damaged = lib_cache.to_vec();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    damaged.truncate(damaged.len() - 3);
    let caches = BTreeMap::from([("lib.js".to_string(), Arc::from(damaged))]);
    let (broken, out) = first(&[("lib.js", LIB)], caches);
    assert_eq!(out.as_deref(), Some("6765"));
    assert_eq!(broken.code_caches_rejected(), 1);
    let mut iso = isolate(&[]);
    iso.eval_script_cached("read.js", READ, Some(b"not a code cache"))
        .unwrap();
    assert_eq!(iso.code_caches_rejected(), 1);

    // A module still evaluating (a top-level await that never settles) and one whose
    // evaluation threw: asking for their caches neither fails nor aborts the process.
    let mut iso = isolate(&[
        (
            "pending.js",
            "export const x = 1; await new Promise(() => {});",
        ),
        ("throws.js", "throw new Error('at load');"),
    ]);
    iso.eval_script("read.js", READ).unwrap();
    run(
        &mut iso,
        "import('pending.js'); import('throws.js').catch(() => {});",
    )
    .unwrap();
    assert!(iso.code_cache("pending.js").is_some());
    assert_eq!(iso.code_cache("throws.js"), None);
}

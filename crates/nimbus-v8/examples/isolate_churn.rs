//! Makes and drops isolates one after another and prints the process's resident memory:
//! what an isolate leaves behind when it is dropped (actions make one per call).
//!
//! `cargo run --release -p nimbus-v8 --example isolate_churn -- 5000`

use nimbus_v8::{Arg, Host, Isolate, Limits, Module};

struct NoHost;

impl Host for NoHost {
    fn native(&mut self, _id: u32, _args: &[Arg<'_>]) -> Result<String, String> {
        Ok(String::new())
    }
    fn load(&mut self, _referrer: &str, specifier: &str) -> Result<Module, String> {
        Err(format!("no module {specifier}"))
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn main() -> Result<(), String> {
    if !nimbus_v8::AVAILABLE {
        return Err("this build has no V8".into());
    }
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000);
    let limits = Limits {
        heap_bytes: 64 << 20,
        array_buffer_bytes: 64 << 20,
        stack_bytes: 512 << 10,
    };
    let started = std::time::Instant::now();
    for i in 0..=count {
        let mut isolate =
            Isolate::new(limits, &["n"], Box::new(NoHost)).map_err(|e| e.to_string())?;
        isolate
            .eval_script(
                "churn.js",
                "globalThis.f = () => { const a = []; for (let i = 0; i < 1000; i++) a.push({ i }); \
                 new FinalizationRegistry(() => {}).register({}, 1); \
                 return Promise.resolve(a.length).then(String); };",
            )
            .map_err(|e| e.to_string())?;
        isolate.call("f", &[]).map_err(|e| e.to_string())?;
        isolate.run_microtasks().map_err(|e| e.to_string())?;
        if i % (count / 5).max(1) == 0 {
            println!(
                "{i:>6} isolates made and dropped: VmRSS {} KiB, {:.2} ms each",
                rss_kib(),
                started.elapsed().as_secs_f64() * 1e3 / (i.max(1) as f64)
            );
        }
    }
    Ok(())
}

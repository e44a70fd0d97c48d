//! Finds Debian's V8 (libnode's headers and shared library) and compiles the C++ shim against
//! it. Where it is not found, the crate builds without V8 ([`nimbus_v8::AVAILABLE`] is false)
//! and says so in a warning, unless `NIMBUS_REQUIRE_V8=1` makes that an error (CI sets it).
//!
//! Looked for, in order: `NIMBUS_LIBNODE_DIR` (a root holding `usr/include/node/v8.h` and
//! `usr/lib/<triplet>/libnode.so`), the system (`/`), then `scripts/libnode.sh`'s cache
//! (`$HOME/.cache/nimbus-libnode`, or `NIMBUS_LIBNODE_CACHE`). A root other than `/` must
//! be known to the dynamic loader (the script registers it), or the programs would not start.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(nimbus_v8)");
    println!("cargo::rerun-if-changed=shim/nimbus_v8.cc");
    for var in [
        "NIMBUS_LIBNODE_DIR",
        "NIMBUS_LIBNODE_CACHE",
        "NIMBUS_REQUIRE_V8",
        "HOME",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let triplet = triplet();
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("NIMBUS_LIBNODE_DIR") {
        candidates.push(dir.into());
    }
    candidates.push("/".into());
    if let Some(dir) = std::env::var_os("NIMBUS_LIBNODE_CACHE") {
        candidates.push(dir.into());
    } else if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cache/nimbus-libnode"));
    }
    let mut problems = Vec::new();
    let found = candidates.iter().find_map(|root| {
        let include = root.join("usr/include/node");
        let lib = root.join("usr/lib").join(&triplet);
        if !include.join("v8.h").is_file() || !lib.join("libnode.so").exists() {
            return None;
        }
        if root != Path::new("/") && !loader_knows(&lib) {
            problems.push(format!(
                "{} has libnode but the dynamic loader does not know {} (run scripts/libnode.sh)",
                root.display(),
                lib.display()
            ));
            return None;
        }
        Some((include, lib))
    });
    let Some((include, lib)) = found else {
        let why = if problems.is_empty() {
            "libnode (V8) not found; run scripts/libnode.sh".to_string()
        } else {
            problems.join("; ")
        };
        if std::env::var("NIMBUS_REQUIRE_V8").as_deref() == Ok("1") {
            panic!("NIMBUS_REQUIRE_V8=1 but {why}");
        }
        println!("cargo::warning=building without V8 (QuickJS only): {why}");
        return;
    };
    for entry in std::fs::read_dir(&include).into_iter().flatten().flatten() {
        println!("cargo::rerun-if-changed={}", entry.path().display());
    }
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .include(&include)
        .file("shim/nimbus_v8.cc")
        // V8 is built without RTTI; a class deriving from its Allocator must be too.
        .flag("-fno-rtti")
        .flag_if_supported("-Wno-unused-parameter")
        .compile("nimbus_v8_shim");
    println!("cargo::rustc-link-search=native={}", lib.display());
    println!("cargo::rustc-link-lib=dylib=node");
    println!("cargo::rustc-cfg=nimbus_v8");
    println!("cargo::metadata=lib={}", lib.display());
}

/// Debian's multiarch directory for the target (`x86_64-linux-gnu`).
fn triplet() -> String {
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    format!("{arch}-linux-gnu")
}

/// Whether the dynamic loader's cache lists `lib/libnode.so.*`.
fn loader_knows(lib: &Path) -> bool {
    if std::env::var_os("LD_LIBRARY_PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p == lib))
    {
        return true;
    }
    let Ok(out) = Command::new("ldconfig").arg("-p").output() else {
        // ldconfig is in /sbin; look there too.
        return Command::new("/sbin/ldconfig")
            .arg("-p")
            .output()
            .is_ok_and(|out| lists(&out.stdout, lib));
    };
    lists(&out.stdout, lib)
}

fn lists(ldconfig_output: &[u8], lib: &Path) -> bool {
    let needle = format!("{}/libnode.so.", lib.display());
    String::from_utf8_lossy(ldconfig_output).contains(&needle)
}

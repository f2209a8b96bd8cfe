//! The engine (`src/engine/`) is pure: it decides, the shell does I/O. This test fails when a
//! file there names a runtime, a store, the file system, the network, the environment, a clock
//! or a shell module, so the boundary is kept by the build and not by habit.

use std::path::{Path, PathBuf};

/// What an engine file must not name (in code; comments may explain the rule).
const FORBIDDEN: &[&str] = &[
    "pingora",
    "tokio",
    "rusqlite",
    // The crate (config names like `redis_url_env` are fine).
    "redis::",
    "std::fs",
    "std::net",
    "std::env",
    "std::process",
    "std::thread",
    "SystemTime",
    "Instant::now",
    "once_cell",
    // The shell's modules.
    "crate::admin",
    "crate::clock",
    "crate::health",
    "crate::ledger",
    "crate::metrics",
    "crate::notify",
    "crate::proxy",
    "crate::ratelimit",
    "crate::reload",
    "crate::resolver",
    "crate::server",
    "crate::cache",
    "crate::fleet",
];

/// Every `forbidden` name in the code of `text` (comments stripped), as `line: name`.
fn violations(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let code = match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        };
        for f in FORBIDDEN {
            if code.contains(f) {
                out.push(format!("{}: {f}", i + 1));
            }
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src/engine") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_engine_file_names_io_a_clock_or_the_shell() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/engine");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(
        files.len() >= 15,
        "the engine is where the pure modules live; found only {files:?}"
    );
    let mut bad = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read engine file");
        for v in violations(&text) {
            bad.push(format!("{}:{v}", f.display()));
        }
    }
    assert!(
        bad.is_empty(),
        "the engine must stay pure (pass facts and `now` in from the shell):\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_check_catches_each_kind_of_violation_and_ignores_comments() {
    assert_eq!(violations("use pingora::proxy::Session;"), ["1: pingora"]);
    assert_eq!(
        violations("let t = std::time::Instant::now();"),
        ["1: Instant::now"]
    );
    assert_eq!(
        violations("fn f() {}\nuse crate::ledger::Ledger;"),
        ["2: crate::ledger"]
    );
    assert_eq!(
        violations("let s = std::fs::read_to_string(p);"),
        ["1: std::fs"]
    );
    assert!(violations("//! no pingora, no tokio, no I/O").is_empty());
    assert!(violations("let x = 1; // not tokio").is_empty());
    assert!(violations("use core::net::SocketAddr;").is_empty());
}

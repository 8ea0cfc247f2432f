//! Support code shared by the root package's integration tests.
//!
//! Every file in `tests/` is its own crate that pulls this module in with
//! `mod common;` and uses only part of it, so the rest would be reported as
//! dead code in that crate.
#![allow(dead_code)]

pub mod cores;
pub mod deb;
pub mod dumpvm;
pub mod hibvm;
pub mod kjump;
pub mod loopdev;
pub mod sysvm;
pub mod tempdir;
pub mod vm;

/// Whether this process runs as root (the tests that attach loop devices,
/// mount file systems or ask `kjump check` need it).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Whether `tool` is on PATH (cargo subcommands as `cargo-NAME`).
pub fn have(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(tool).is_file()))
}

/// Runs a command that must succeed and returns its stdout.
pub fn run(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Says that a test is skipped, where a plain `cargo test` shows it: libtest
/// captures `println!`/`eprintln!`, not writes to the stderr handle.
pub fn skip(why: impl std::fmt::Display) {
    use std::io::Write as _;
    let _ = std::io::stderr().write_all(format!("SKIPPED: {why}\n").as_bytes());
}

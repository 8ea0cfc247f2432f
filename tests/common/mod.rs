//! Support code shared by the root package's integration tests.
//!
//! Every file in `tests/` is its own crate that pulls this module in with
//! `mod common;` and uses only part of it, so the rest would be reported as
//! dead code in that crate.
#![allow(dead_code)]

pub mod cores;
pub mod deb;
pub mod hibvm;
pub mod loopdev;
pub mod sysvm;
pub mod vm;

/// Says that a test is skipped, where a plain `cargo test` shows it: libtest
/// captures `println!`/`eprintln!`, not writes to the stderr handle.
pub fn skip(why: impl std::fmt::Display) {
    use std::io::Write as _;
    let _ = std::io::stderr().write_all(format!("SKIPPED: {why}\n").as_bytes());
}

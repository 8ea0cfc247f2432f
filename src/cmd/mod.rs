//! The subcommands.

pub mod capture;
pub mod hibernate;
pub mod initramfs;
pub mod inspect;

use std::io::IsTerminal;

/// Threads to use: as asked, or every CPU available.
pub fn threads(asked: Option<usize>) -> usize {
    asked.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Whether to draw progress lines (stderr is a terminal).
pub fn progress_line() -> bool {
    std::io::stderr().is_terminal()
}

/// `n` bytes in the largest binary unit that keeps it above 1.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

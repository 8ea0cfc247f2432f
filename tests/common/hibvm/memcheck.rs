//! `memcheck MIB [PASSES_FILE]`: a workload for kernel A in the QEMU tests that proves
//! its memory came back. It fills MIB MiB of its own memory with a
//! pseudo-random sequence from a seed it prints, then re-reads the whole
//! buffer every 2 s, comparing every word with the sequence regenerated
//! from the seed. It prints one line a pass:
//!
//! ```text
//! MEMCHECK filled 1024 MiB seed 0x... in 3.2 s
//! MEMCHECK pass 7 ok 1024 MiB in 1.9 s
//! MEMCHECK-BAD pass 8: 4096 of 134217728 words differ, the first at buffer offset 0x1a2b000 (word 0x... expected 0x...)
//! ```
//!
//! and exits 1 after the first bad pass. After each good pass it writes
//! the number of good passes to PASSES_FILE, for A's /init to wait on.
//! Built by the test rig with rustc
//! alone (no crates), statically, into A's initramfs.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// xorshift64*: fast, and every seed gives a different full-period sequence.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// The first differing word and how many differ.
fn check(buf: &[u64], seed: u64) -> Option<(usize, u64, u64, usize)> {
    let mut state = seed;
    let mut first = None;
    let mut bad = 0usize;
    for (i, &w) in buf.iter().enumerate() {
        let want = next(&mut state);
        if w != want {
            bad += 1;
            first.get_or_insert((i, w, want));
        }
    }
    first.map(|(i, w, want)| (i, w, want, bad))
}

fn main() {
    let mib: usize = match std::env::args().nth(1).and_then(|a| a.parse().ok()) {
        Some(m) if m > 0 => m,
        _ => {
            eprintln!("usage: memcheck MIB [PASSES_FILE]");
            std::process::exit(2);
        }
    };
    let passes_file = std::env::args().nth(2);
    let words = mib << 17;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let seed = (nanos ^ u64::from(std::process::id()).rotate_left(32)) | 1;
    let started = Instant::now();
    let mut state = seed;
    let buf: Vec<u64> = (0..words).map(|_| next(&mut state)).collect();
    println!(
        "MEMCHECK filled {mib} MiB seed {seed:#x} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for pass in 1u64.. {
        std::thread::sleep(Duration::from_secs(2));
        let t = Instant::now();
        match check(std::hint::black_box(&buf), seed) {
            None => {
                println!(
                    "MEMCHECK pass {pass} ok {mib} MiB in {:.1} s",
                    t.elapsed().as_secs_f64()
                );
                if let Some(f) = &passes_file {
                    if let Err(e) = std::fs::write(f, format!("{pass}\n")) {
                        eprintln!("memcheck: writing {f}: {e}");
                    }
                }
            }
            Some((i, w, want, bad)) => {
                println!(
                    "MEMCHECK-BAD pass {pass}: {bad} of {words} words differ, the first at buffer offset {:#x} (word {w:#x} expected {want:#x})",
                    i * 8
                );
                std::process::exit(1);
            }
        }
    }
}

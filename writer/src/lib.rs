//! Capturing physical memory into a kjump image.
//!
//! [`MemorySource`] reads memory from an ELF core (/proc/vmcore, QEMU's
//! `dump-guest-memory`) or from /dev/mem over given ranges; [`capture`]
//! compresses it in parallel into a [`Target`] and commits the image only
//! once every other byte is on stable storage.

pub mod capture;
pub mod elf;
pub mod place;
pub mod progress;
pub mod ranges;
pub mod source;
pub mod target;

pub use capture::{
    capture, capture_encrypted, worst_case_len, CaptureError, CaptureOptions, CaptureReport,
    Encryption,
};
pub use place::{Place, PlaceError, PlaceReader};
pub use source::{MemorySource, SourceError};
pub use target::{Target, TargetError};

/// Current time in nanoseconds since the Unix epoch (0 if the clock is
/// before it, as on a machine whose RTC was never set).
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A random image identity. It only has to differ between captures, so a
/// capture kernel with an empty entropy pool falls back to time and pid.
pub fn random_uuid() -> [u8; 16] {
    let mut b = [0u8; 16];
    // SAFETY: getrandom writes at most `b.len()` bytes into the buffer we own.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), libc::GRND_NONBLOCK) };
    if n != b.len() as isize {
        let seed = now_ns() ^ (u64::from(std::process::id()) << 32);
        b[..8].copy_from_slice(&splitmix(seed).to_le_bytes());
        b[8..].copy_from_slice(&splitmix(seed ^ 0x9e37_79b9_7f4a_7c15).to_le_bytes());
    }
    b
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

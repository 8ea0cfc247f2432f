//! Random bytes from the kernel (`getrandom(2)`).

use crate::clock::now_ns;

/// Fills `buf` from the kernel's random pool, waiting until the pool is
/// ready: for keys and salts, which must never repeat.
pub fn fill(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`,
        // which we own and borrow mutably for the call.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        } else {
            filled += n as usize;
        }
    }
    Ok(())
}

/// A random image identity. It only has to differ between captures, so a
/// capture kernel with an empty entropy pool falls back to time and pid.
pub fn uuid() -> [u8; 16] {
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

#[cfg(test)]
mod tests {
    #[test]
    fn bytes_differ_between_calls() {
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        super::fill(&mut a).unwrap();
        super::fill(&mut b).unwrap();
        assert_ne!(a, b);
        assert_ne!(super::uuid(), super::uuid());
    }
}

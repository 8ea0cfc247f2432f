//! Memory that holds a key or passphrase: locked in RAM (`mlock`), so that
//! it is never written to swap, and left out of core dumps
//! (`MADV_DONTDUMP`). The buffer itself must be wiped on drop
//! (`zeroize`); this only keeps copies from leaving RAM.

use std::ffi::c_void;
use std::ptr::NonNull;

use nix::sys::mman::{madvise, mlock, munlock, MmapAdvise};

/// Locking or marking a secret's pages failed.
#[derive(Debug, thiserror::Error)]
pub enum SecMemError {
    /// `mlock` refused (RLIMIT_MEMLOCK, or no CAP_IPC_LOCK).
    #[error("locking {len} bytes of secret in memory (mlock)")]
    Lock {
        /// Bytes of the pages.
        len: usize,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// `madvise(MADV_DONTDUMP)` refused.
    #[error("excluding {len} bytes of secret from core dumps (madvise MADV_DONTDUMP)")]
    DontDump {
        /// Bytes of the pages.
        len: usize,
        /// The cause.
        #[source]
        source: nix::Error,
    },
}

/// The pages of a secret, locked and excluded from core dumps; unlocked
/// when dropped. Wipe the buffer before dropping this, so that its pages
/// are zero once they may be swapped.
#[derive(Debug)]
pub struct Locked {
    start: NonNull<c_void>,
    len: usize,
}

/// The whole pages that hold `buf`: madvise takes page-aligned ranges.
fn pages_of(buf: &[u8]) -> Option<(NonNull<c_void>, usize)> {
    if buf.is_empty() {
        return None;
    }
    let page = kjump_image_format::PAGE_SIZE;
    let addr = buf.as_ptr() as usize;
    let start = addr - addr % page;
    let end = (addr + buf.len()).next_multiple_of(page);
    let ptr = buf.as_ptr().wrapping_sub(addr - start) as *mut c_void;
    NonNull::new(ptr).map(|p| (p, end - start))
}

/// Locks the pages of `buf` in RAM and excludes them from core dumps; an
/// empty buffer has none.
pub fn lock(buf: &[u8]) -> Result<Option<Locked>, SecMemError> {
    let Some((start, len)) = pages_of(buf) else {
        return Ok(None);
    };
    // SAFETY: mlock and madvise(MADV_DONTDUMP) change how the kernel
    // treats pages (kept in RAM, left out of core dumps), never their
    // contents or mapping; the range covers pages of `buf`, which is
    // mapped, and neighbouring data on them is affected the same harmless
    // way.
    unsafe { mlock(start, len) }.map_err(|source| SecMemError::Lock { len, source })?;
    let locked = Locked { start, len };
    // SAFETY: as above; `start` is page-aligned, as madvise requires.
    unsafe { madvise(start, len, MmapAdvise::MADV_DONTDUMP) }
        .map_err(|source| SecMemError::DontDump { len, source })?;
    Ok(Some(locked))
}

impl Drop for Locked {
    fn drop(&mut self) {
        // SAFETY: munlock changes no contents or mapping; on pages that
        // were freed and unmapped since, it fails (ENOMEM) and nothing
        // happens.
        let _ = unsafe { munlock(self.start, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the page holding `addr` is locked, from /proc/self/smaps.
    fn locked_kib_at(addr: usize) -> (u64, bool) {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        let (mut locked, mut dd) = (0, false);
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if let Some((a, b)) = first.split_once('-') {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                {
                    inside = (a..b).contains(&addr);
                    continue;
                }
            }
            if !inside {
                continue;
            }
            if let Some(v) = line.strip_prefix("Locked:") {
                locked = v.trim().trim_end_matches(" kB").parse().unwrap();
            }
            if let Some(v) = line.strip_prefix("VmFlags:") {
                dd = v.split_whitespace().any(|f| f == "dd");
            }
        }
        (locked, dd)
    }

    #[test]
    fn a_secret_s_pages_are_locked_and_left_out_of_core_dumps() {
        let page = kjump_image_format::PAGE_SIZE;
        let mut buf = zeroize::Zeroizing::new(vec![0x5au8; 3 * page]);
        let (start, len) = pages_of(&buf[100..200]).unwrap();
        assert_eq!(start.as_ptr() as usize % page, 0);
        assert!(len == page || len == 2 * page, "{len}");
        let guard = match lock(&buf[page..2 * page]) {
            Ok(g) => g.expect("pages to lock"),
            // Without CAP_IPC_LOCK and with RLIMIT_MEMLOCK 0, mlock is
            // refused: the error names what and how much.
            Err(e @ SecMemError::Lock { .. }) => {
                assert!(e.to_string().contains("mlock"), "{e}");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let (locked, dont_dump) = locked_kib_at(buf.as_ptr() as usize + page);
        assert!(locked >= (page / 1024) as u64, "Locked: {locked} kB");
        assert!(dont_dump, "VmFlags lacks dd");
        zeroize::Zeroize::zeroize(&mut *buf);
        drop(guard);
        assert!(lock(&[]).unwrap().is_none());
    }
}

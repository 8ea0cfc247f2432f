//! Memory that holds a key or passphrase: locked in RAM (`mlock`), so that
//! it is never written to swap, and left out of core dumps
//! (`MADV_DONTDUMP`). The buffer itself must be wiped on drop
//! (`zeroize`); this only keeps copies from leaving RAM.

use std::ffi::c_void;
use std::ptr::NonNull;

use std::io::Read;
use std::path::Path;

use nix::sys::mman::{madvise, mlock, munlock, MmapAdvise};
use zeroize::Zeroizing;

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

/// The most bytes [`read_secret`] reads from a key file: far more than a
/// key needs, and a bound on what a wrong path (a disk) costs.
pub const SECRET_LIMIT: usize = 1 << 20;

/// Reads a secret from `path`: exactly `exact` bytes (the start of a key
/// device), else the whole file (at most [`SECRET_LIMIT`] bytes). The
/// buffer is allocated once and never moves, so no copy of the secret is
/// left in freed memory; its pages are locked in RAM and out of core dumps
/// for the rest of the process ([`keep`]), and this process stops being
/// dumpable ([`no_core_dumps`]). Bytes read before a failure are wiped.
pub fn read_secret(path: &Path, exact: Option<usize>) -> std::io::Result<Zeroizing<Vec<u8>>> {
    let mut file = std::fs::File::open(path)?;
    let want = match exact {
        Some(n) => n,
        None => {
            let len = file.metadata()?.len();
            usize::try_from(len)
                .ok()
                .filter(|&l| l <= SECRET_LIMIT)
                .ok_or_else(|| {
                    std::io::Error::other(format!(
                        "{len} bytes is no key file (at most {SECRET_LIMIT} bytes are read)"
                    ))
                })?
        }
    };
    no_core_dumps();
    let mut buf = Zeroizing::new(vec![0u8; want]);
    keep(&buf);
    let mut got = 0;
    while got < want {
        match file.read(&mut buf[got..]) {
            Ok(0) if exact.is_some() => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("{got} of {want} bytes"),
                ))
            }
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// Locks the pages of `buf` in RAM and out of core dumps for the rest of
/// the process (a secret's buffer is wiped when dropped; its pages may stay
/// locked). Where the kernel refuses, logs why: the buffer is still wiped,
/// only a copy may reach swap.
pub fn keep(buf: &[u8]) {
    match lock(buf) {
        Ok(locked) => std::mem::forget(locked),
        Err(e) => log::warn!("{e}; going on"),
    }
}

/// Makes this process not dumpable (`PR_SET_DUMPABLE` 0): no core dump of
/// a process that holds a secret, and no ptrace attach by other users.
pub fn no_core_dumps() {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes plain integers and changes
    // one flag of this process; no memory is passed.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if rc != 0 {
        log::warn!(
            "could not make this process undumpable: {}",
            std::io::Error::last_os_error()
        );
    }
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

    #[test]
    fn a_secret_is_read_into_one_locked_buffer() {
        let dir = std::env::temp_dir().join(format!("kjump-secmem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        std::fs::write(&path, [0x4bu8; 40]).unwrap();
        let key = read_secret(&path, None).unwrap();
        assert_eq!(*key, [0x4bu8; 40]);
        assert_eq!(
            key.capacity(),
            40,
            "the buffer grew: copies were left behind"
        );
        let (locked, dont_dump) = locked_kib_at(key.as_ptr() as usize);
        // mlock may be refused (no CAP_IPC_LOCK, RLIMIT_MEMLOCK 0): then
        // only the flag is checked.
        if locked > 0 {
            assert!(dont_dump, "VmFlags lacks dd");
        }
        // SAFETY: PR_GET_DUMPABLE takes no pointer and changes nothing.
        let dumpable = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) };
        assert_eq!(dumpable, 0, "a process that read a secret stays dumpable");
        assert_eq!(*read_secret(&path, Some(32)).unwrap(), [0x4bu8; 32]);
        let short = read_secret(&path, Some(64)).unwrap_err();
        assert_eq!(short.kind(), std::io::ErrorKind::UnexpectedEof);
        assert_eq!(short.to_string(), "40 of 64 bytes");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

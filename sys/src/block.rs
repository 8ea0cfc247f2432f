//! Block devices and files opened for image I/O: `O_DIRECT` with its one
//! fallback, sizes, free space, the page cache, and files only their owner
//! may read.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use nix::fcntl::{fcntl, FcntlArg, OFlag};

/// How [`open_direct`] opens a target.
#[derive(Clone, Copy, Debug)]
pub struct Access {
    /// `O_EXCL` on a block device: the kernel refuses it while it is
    /// mounted or otherwise claimed.
    pub exclusive: bool,
    /// Create a regular file that does not exist, readable by its owner
    /// only, and refuse a symbolic link in its place (`O_NOFOLLOW`).
    pub create_private: bool,
}

/// Opens `path` for reading and writing with `O_DIRECT` where the
/// filesystem allows it; returns the file and whether direct I/O is on.
/// Filesystems without direct I/O refuse `O_DIRECT` at open with EINVAL:
/// the file is then opened without it.
pub fn open_direct(path: &Path, access: Access) -> std::io::Result<(File, bool)> {
    let open = |direct: bool| {
        let mut opts = OpenOptions::new();
        opts.read(true).write(true);
        let mut flags = if direct { libc::O_DIRECT } else { 0 };
        if access.exclusive {
            flags |= libc::O_EXCL;
        }
        if access.create_private {
            opts.create(true).mode(0o600);
            flags |= libc::O_NOFOLLOW;
        }
        opts.custom_flags(flags).open(path)
    };
    match open(true) {
        Ok(f) => Ok((f, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok((open(false)?, false)),
        Err(e) => Err(e),
    }
}

/// Turns `O_DIRECT` off for the rest of `file`'s life (best effort: a
/// file that keeps it fails its next unaligned write, which says so).
pub fn stop_direct(file: &File) {
    let flags =
        fcntl(file, FcntlArg::F_GETFL).map(|f| OFlag::from_bits_truncate(f) & !OFlag::O_DIRECT);
    if let Ok(flags) = flags {
        let _ = fcntl(file, FcntlArg::F_SETFL(flags));
    }
}

/// Whether an error means the filesystem refused a direct write (some
/// accept `O_DIRECT` at open and refuse the write).
pub fn refused_direct(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL)
}

/// The size of an open file or block device (`metadata().len()` is 0 for a
/// block device; seeking to the end is not).
pub fn size(mut file: &File) -> std::io::Result<u64> {
    file.seek(SeekFrom::End(0))
}

/// Opens a block device read-only and exclusively, to learn whether
/// anyone holds it (a mounted filesystem, an active swap area).
pub fn open_exclusive(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(path)
}

/// Drops a block device's cached pages: another kernel (the capture or
/// restore kernel) may have written it since this one last read it, and a
/// device that stays open, as a mounted filesystem's does, keeps its cache.
pub fn drop_cache(file: &File) {
    let _ = nix::fcntl::posix_fadvise(
        file,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
}

/// Bytes free for an unprivileged writer on `file`'s filesystem
/// (`fstatvfs`), or `None` when the kernel does not say.
pub fn free_space(file: &File) -> Option<u64> {
    let st = nix::sys::statvfs::fstatvfs(file).ok()?;
    Some(st.blocks_available().saturating_mul(st.fragment_size()))
}

/// Bytes free for an unprivileged writer on the filesystem of the
/// directory `dir` (`statvfs`), or `None` when the kernel does not say.
pub fn free_space_in(dir: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(st.blocks_available().saturating_mul(st.fragment_size()))
}

/// Creates (or truncates) a file only its owner may read, refusing a
/// symbolic link as its last component: for files that hold a machine's
/// RAM. An existing file's mode is narrowed too.
pub fn create_private(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    // An existing file keeps its mode through the open.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

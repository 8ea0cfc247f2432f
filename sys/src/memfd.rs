//! Files that live in memory only (`memfd_create`): an initramfs that may
//! carry a secret reaches kexec-tools without touching a disk.

use std::fs::File;
use std::io::{Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// An anonymous file in memory, which a child process inherits and reads
/// through /proc/self/fd.
pub struct MemFile {
    file: File,
    len: usize,
}

impl MemFile {
    /// A memory file named `name` (for /proc/PID/fd listings) holding
    /// `bytes`, positioned at its start.
    pub fn with_contents(name: &std::ffi::CStr, bytes: &[u8]) -> std::io::Result<MemFile> {
        let fd = nix::sys::memfd::memfd_create(name, nix::sys::memfd::MFdFlags::empty())?;
        let mut file = File::from(fd);
        file.write_all(bytes)?;
        let _ = file.rewind();
        Ok(MemFile {
            file,
            len: bytes.len(),
        })
    }

    /// The path a child process opens it by: the descriptor is inherited
    /// (no close-on-exec).
    pub fn child_path(&self) -> String {
        format!("/proc/self/fd/{}", self.file.as_raw_fd())
    }

    /// Overwrites its contents with zeros and closes it.
    pub fn wipe(self) {
        let _ = self.file.write_all_at(&vec![0u8; self.len], 0);
    }
}

//! Where an image goes: a regular file or a block device, written at known
//! offsets so every failure can name where it happened.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use kjump_image_format::ImageOffset;

/// A target that cannot be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Opening or inspecting the target failed.
    #[error("opening target {path}: {source}")]
    Open {
        /// The target.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The target is a kind of file kjump does not write to.
    #[error("target {path} is neither a regular file nor a block device")]
    Kind {
        /// The target.
        path: PathBuf,
    },
    /// A write failed.
    #[error("writing {len} bytes to {path} at offset {offset}: {source}")]
    Write {
        /// The target.
        path: PathBuf,
        /// Where the failed write began.
        offset: ImageOffset,
        /// Bytes being written.
        len: usize,
        /// The cause (ENOSPC when the target is full).
        #[source]
        source: std::io::Error,
    },
    /// Flushing to stable storage failed.
    #[error("flushing {path} to stable storage: {source}")]
    Sync {
        /// The target.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// An open target.
#[derive(Debug)]
pub struct Target {
    path: PathBuf,
    file: File,
    block_device: bool,
    capacity: Option<u64>,
}

impl Target {
    /// Opens a block device exclusively (the kernel refuses when it is
    /// mounted or otherwise claimed), or creates/truncates a regular file.
    pub fn open(path: &Path) -> Result<Target, TargetError> {
        let err = |source| TargetError::Open {
            path: path.to_path_buf(),
            source,
        };
        let kind = match std::fs::metadata(path) {
            Ok(m) => Some(m.file_type()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(err(e)),
        };
        let block_device = kind.is_some_and(|k| k.is_block_device());
        if kind.is_some_and(|k| !k.is_file() && !k.is_block_device()) {
            return Err(TargetError::Kind {
                path: path.to_path_buf(),
            });
        }
        let mut opts = OpenOptions::new();
        opts.write(true).read(true);
        if block_device {
            opts.custom_flags(libc::O_EXCL);
        } else {
            opts.create(true).truncate(true);
        }
        let mut file = opts.open(path).map_err(err)?;
        let capacity = if block_device {
            Some(file.seek(SeekFrom::End(0)).map_err(err)?)
        } else {
            free_space(&file)
        };
        Ok(Target {
            path: path.to_path_buf(),
            file,
            block_device,
            capacity,
        })
    }

    /// The target's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes an image may take, when known: a block device's size, or the
    /// space free on a regular file's filesystem.
    pub fn capacity(&self) -> Option<u64> {
        self.capacity
    }

    /// Whether the target is a block device.
    pub fn is_block_device(&self) -> bool {
        self.block_device
    }

    /// Writes all of `buf` at `offset`, naming the offset of any failure.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), TargetError> {
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            match self.file.write_at(&buf[done..], at) {
                Ok(0) => {
                    return Err(self.write_error(
                        at,
                        buf.len() - done,
                        std::io::ErrorKind::WriteZero.into(),
                    ))
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.write_error(at, buf.len() - done, e)),
            }
        }
        Ok(())
    }

    fn write_error(&self, offset: u64, len: usize, source: std::io::Error) -> TargetError {
        TargetError::Write {
            path: self.path.clone(),
            offset: ImageOffset(offset),
            len,
            source,
        }
    }

    /// Sets a regular file's length (block devices keep theirs).
    pub fn set_len(&self, len: u64) -> Result<(), TargetError> {
        if self.block_device {
            return Ok(());
        }
        self.file
            .set_len(len)
            .map_err(|e| self.write_error(len, 0, e))
    }

    /// Flushes everything written so far to stable storage.
    pub fn sync(&self) -> Result<(), TargetError> {
        self.file.sync_data().map_err(|source| TargetError::Sync {
            path: self.path.clone(),
            source,
        })
    }
}

fn free_space(file: &File) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: fstatvfs writes a statvfs into the buffer we own and reads
    // nothing else; the descriptor stays open for the call.
    let rc = unsafe { libc::fstatvfs(file.as_raw_fd(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: fstatvfs returned 0, so it filled the whole struct.
    let st = unsafe { st.assume_init() };
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

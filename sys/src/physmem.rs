//! Writing physical memory through a shared mapping of /dev/mem (or of a
//! file standing in for it, offset = physical address).
//!
//! The mappings are write-back (no `O_SYNC`): an uncached mapping is many
//! times slower, and while a write-back mapping of a range is held the
//! kernel refuses an uncached one of the same range anyway.

use std::fs::File;
use std::path::{Path, PathBuf};

use kjump_image_format::{MemoryMap, PhysRange};
use memmap2::{MmapOptions, MmapRaw};

/// Why physical memory could not be mapped or written.
#[derive(Debug, thiserror::Error)]
pub enum PhysMemError {
    /// Opening failed.
    #[error("opening {path} for writing")]
    Open {
        /// /dev/mem or its stand-in.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Mapping failed.
    #[error("mapping {range} of {path}")]
    Map {
        /// /dev/mem or its stand-in.
        path: PathBuf,
        /// The range.
        range: PhysRange,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Flushing a file standing in for memory failed.
    #[error("flushing the writes to {path}")]
    Flush {
        /// The stand-in file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A write falls outside every mapped range.
    #[error("physical {addr:#x}+{len:#x} lies outside the mapped ranges")]
    Outside {
        /// First byte.
        addr: u64,
        /// Length.
        len: usize,
    },
}

/// Writable mappings of a set of physical ranges.
pub struct PhysMem {
    maps: Vec<(PhysRange, MmapRaw)>,
    /// The regular file standing in for memory, which needs an msync;
    /// `None` for /dev/mem, whose writes land in memory directly (and whose
    /// mappings msync refuses with EINVAL: the device has no fsync).
    file: Option<PathBuf>,
}

impl PhysMem {
    /// Maps every range of `map` from `path` read-write and shared.
    pub fn open(path: &Path, map: &MemoryMap) -> Result<PhysMem, PhysMemError> {
        let file = File::options()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| PhysMemError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let is_file = file.metadata().is_ok_and(|m| m.is_file());
        let mut maps = Vec::with_capacity(map.ranges().len());
        for r in map.ranges() {
            let m = MmapOptions::new()
                .offset(r.start().0)
                .len(r.len() as usize)
                .map_raw(&file)
                .map_err(|source| PhysMemError::Map {
                    path: path.to_path_buf(),
                    range: *r,
                    source,
                })?;
            maps.push((*r, m));
        }
        Ok(PhysMem {
            maps,
            file: is_file.then(|| path.to_path_buf()),
        })
    }

    /// Copies `bytes` to physical address `addr`.
    ///
    /// # Safety
    /// No other call may write any of the same bytes at the same time. The
    /// bytes must not be memory this process or the running kernel uses:
    /// the caller has checked that the ranges lie outside the running
    /// kernel's own RAM.
    pub unsafe fn write(&self, addr: u64, bytes: &[u8]) -> Result<(), PhysMemError> {
        let outside = PhysMemError::Outside {
            addr,
            len: bytes.len(),
        };
        let end = addr
            .checked_add(bytes.len() as u64)
            .ok_or(PhysMemError::Outside {
                addr,
                len: bytes.len(),
            })?;
        let (range, map) = self
            .maps
            .iter()
            .find(|(r, _)| r.start().0 <= addr && end <= r.end().0)
            .ok_or(outside)?;
        let off = (addr - range.start().0) as usize;
        // SAFETY: [off, off + len) lies inside the mapping (checked above);
        // the caller guarantees no concurrent write to the same bytes, and
        // the source slice cannot overlap a mapping of physical memory that
        // no Rust object lives in.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), map.as_mut_ptr().add(off), bytes.len());
        }
        Ok(())
    }

    /// Flushes the mappings: an msync for a file, nothing for /dev/mem.
    pub fn flush(&self) -> Result<(), PhysMemError> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        self.maps
            .iter()
            .try_for_each(|(_, m)| m.flush())
            .map_err(|source| PhysMemError::Flush {
                path: path.clone(),
                source,
            })
    }
}

//! Where a file's blocks lie on its device (`FS_IOC_FIEMAP`), for file
//! targets whose image the capture and restore kernels read and write on
//! the raw device.

use std::fs::File;
use std::os::fd::AsRawFd;

use kjump_image_format::placement::Extent;

/// Why a file's extents are unknown or unusable.
#[derive(Debug, thiserror::Error)]
pub enum FiemapError {
    /// The ioctl failed.
    #[error("mapping the extents (FIEMAP)")]
    Ioctl(#[source] std::io::Error),
    /// A hole in the file.
    #[error("it has no blocks at offset {0:#x} (a hole)")]
    Hole(u64),
    /// An extent whose blocks may move or be shared.
    #[error("its extent at file offset {logical:#x} has flags {flags:#x} (shared, inline, encoded or not yet allocated): its blocks may move or belong to other files")]
    Refused {
        /// Its file offset.
        logical: u64,
        /// Its FIEMAP flags.
        flags: u32,
    },
}

// FIEMAP, from linux/fiemap.h.
const FIEMAP_FLAG_SYNC: u32 = 0x1;
const FIEMAP_EXTENT_LAST: u32 = 0x1;
/// Extent flags that make a file unusable: unknown location, delayed
/// allocation, encoded or encrypted data, unaligned or inline data, shared.
const FIEMAP_EXTENT_REFUSED: u32 = 0x2 | 0x4 | 0x8 | 0x80 | 0x100 | 0x200 | 0x400 | 0x2000;
const FIEMAP_BATCH: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    fe_logical: u64,
    fe_physical: u64,
    fe_length: u64,
    fe_reserved64: [u64; 2],
    fe_flags: u32,
    fe_reserved: [u32; 3],
}

/// struct fiemap with room for a batch of extents after it.
#[repr(C)]
struct Fiemap {
    header: FiemapHeader,
    fm_extents: [FiemapExtent; FIEMAP_BATCH],
}

#[repr(C)]
struct FiemapHeader {
    fm_start: u64,
    fm_length: u64,
    fm_flags: u32,
    fm_mapped_extents: u32,
    fm_extent_count: u32,
    fm_reserved: u32,
}

nix::ioctl_readwrite!(
    /// FS_IOC_FIEMAP: where a file's bytes lie on its device.
    fs_ioc_fiemap,
    b'f',
    11,
    FiemapHeader
);

/// The extents of `file`'s first `len` bytes, refusing any the kernel
/// cannot promise stay put.
pub fn file_extents(file: &File, len: u64) -> Result<Vec<Extent>, FiemapError> {
    let mut out = Vec::new();
    let mut start = 0u64;
    while start < len {
        let mut fm = Box::new(Fiemap {
            header: FiemapHeader {
                fm_start: start,
                fm_length: len - start,
                fm_flags: FIEMAP_FLAG_SYNC,
                fm_mapped_extents: 0,
                fm_extent_count: FIEMAP_BATCH as u32,
                fm_reserved: 0,
            },
            fm_extents: [FiemapExtent::default(); FIEMAP_BATCH],
        });
        // SAFETY: `fm` is a struct fiemap followed by room for
        // `fm_extent_count` extents, as FS_IOC_FIEMAP expects; the kernel
        // writes at most that many extents, and the box outlives the call.
        unsafe {
            fs_ioc_fiemap(
                file.as_raw_fd(),
                std::ptr::from_mut(&mut *fm).cast::<FiemapHeader>(),
            )
        }
        .map_err(|e| FiemapError::Ioctl(std::io::Error::from_raw_os_error(e as i32)))?;
        let n = (fm.header.fm_mapped_extents as usize).min(FIEMAP_BATCH);
        if n == 0 {
            return Err(FiemapError::Hole(start));
        }
        let mut last = false;
        for e in &fm.fm_extents[..n] {
            if e.fe_flags & FIEMAP_EXTENT_REFUSED != 0 {
                return Err(FiemapError::Refused {
                    logical: e.fe_logical,
                    flags: e.fe_flags,
                });
            }
            out.push(Extent {
                logical: e.fe_logical,
                physical: e.fe_physical,
                len: e.fe_length,
            });
            last |= e.fe_flags & FIEMAP_EXTENT_LAST != 0;
        }
        let end = out.last().map_or(start, |e| e.logical + e.len);
        if last || end <= start {
            break;
        }
        start = end;
    }
    Ok(out)
}

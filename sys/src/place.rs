//! Where an image lives on this machine: a whole device or file, a swap
//! partition after its header, or a preallocated file's blocks on the raw
//! device beneath its filesystem (see [`kjump_image_format::placement`]).
//!
//! [`Place::locate`] finds an existing place for reading, writing or
//! discarding; [`prepare_file`] allocates a file target and writes its extent
//! map, on the running system that owns the filesystem.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use kjump_image_format::placement::{
    detect, read_mapped, swap_signature, Extent, ExtentMap, SwapSignature, MAP_HEADER_LEN, MAP_LEN,
    MAP_MAGIC, SWAP_HEADER_LEN,
};
use kjump_image_format::{FormatError, Placement, ReadAt, Segment, BLOCK_SIZE};

/// A place that cannot be found, prepared or used.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    /// Opening or reading a file or device failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or device.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The bytes found do not describe a place.
    #[error("reading where the image lies on {path}")]
    Format {
        /// The device or file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: FormatError,
    },
    /// The swap area is in use.
    #[error("{path} is an active swap area (listed in /proc/swaps): swapoff it before putting an image there")]
    ActiveSwap {
        /// The device.
        path: PathBuf,
    },
    /// A file kjump cannot place an image in.
    #[error("{path}: {why}")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

/// Where an image lies.
#[derive(Clone, Debug)]
pub struct Place {
    /// What the user named: a device, or a file.
    pub named: PathBuf,
    /// The device or file whose bytes hold the image.
    pub holder: PathBuf,
    /// Whether `holder` is a block device.
    pub block_device: bool,
    /// How the image lies in `holder`.
    pub placement: Placement,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> PlaceError + 'a {
    move |source| PlaceError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Drops a block device's cached pages: another kernel (the capture or
/// restore kernel) may have written it since this one last read it, and a
/// device that stays open, as a mounted filesystem's does, keeps its cache.
fn drop_cache(file: &File) {
    let _ = nix::fcntl::posix_fadvise(
        file,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
}

impl Place {
    /// Finds the image named by `path`. With `map_at`, `path` is a block
    /// device (or a copy of one in a file) and a file's extent map lies at
    /// that offset. Without, a device or file holds the image whole or
    /// after a swap header; a regular file that starts with an extent map
    /// is a file target, whose image lies in its blocks on the device
    /// beneath its filesystem. A path that does not exist yet is a new
    /// regular file.
    pub fn locate(path: &Path, map_at: Option<u64>) -> Result<Place, PlaceError> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && map_at.is_none() => {
                return Ok(Place {
                    named: path.to_path_buf(),
                    holder: path.to_path_buf(),
                    block_device: false,
                    placement: Placement::Whole,
                })
            }
            Err(e) => return Err(io("opening", path)(e)),
        };
        let kind = meta.file_type();
        if !kind.is_file() && !kind.is_block_device() {
            return Err(PlaceError::Unsupported {
                path: path.to_path_buf(),
                why: "neither a regular file nor a block device".into(),
            });
        }
        let file = File::open(path).map_err(io("opening", path))?;
        if kind.is_block_device() {
            drop_cache(&file);
        }
        let mut magic = [0u8; 8];
        let file_target = kind.is_file()
            && map_at.is_none()
            && meta.len() >= MAP_LEN
            && FileExt::read_exact_at(&file, &mut magic, 0).is_ok()
            && &magic == MAP_MAGIC;
        if !file_target {
            // A device, or a copy of one in a file: whole, after a swap
            // header, or a file's extents at `map_at`.
            let placement = detect(&file, map_at).map_err(|source| PlaceError::Format {
                path: path.to_path_buf(),
                source,
            })?;
            return Ok(Place {
                named: path.to_path_buf(),
                holder: path.to_path_buf(),
                block_device: kind.is_block_device(),
                placement,
            });
        }
        // The file's own copy of its map says where the file begins on the
        // device; the device's copy there is the one that counts.
        let mut own = vec![0u8; MAP_LEN as usize];
        FileExt::read_exact_at(&file, &mut own, 0)
            .map_err(io("reading the extent map of", path))?;
        let device = file_device(path, &meta)?;
        // The first extent record's second field: its device offset.
        let mut first = [0u8; 8];
        first.copy_from_slice(&own[MAP_HEADER_LEN + 8..MAP_HEADER_LEN + 16]);
        let guess = ExtentMap::decode(&own, u64::from_le_bytes(first)).map_err(|source| {
            PlaceError::Format {
                path: path.to_path_buf(),
                source,
            }
        })?;
        let dev = File::open(&device).map_err(io("opening", &device))?;
        drop_cache(&dev);
        let map = ExtentMap::read(&dev, guess.map_at()).map_err(|source| PlaceError::Format {
            path: device.clone(),
            source,
        })?;
        if map != guess {
            return Err(PlaceError::Unsupported {
                path: path.to_path_buf(),
                why: format!(
                    "its extent map differs from the one at offset {:#x} of {}: the file's blocks are not where the map says",
                    guess.map_at(),
                    device.display()
                ),
            });
        }
        Ok(Place {
            named: path.to_path_buf(),
            holder: device,
            block_device: true,
            placement: Placement::Extents(map),
        })
    }

    /// The extent map's device offset, for a file's extents.
    pub fn map_at(&self) -> Option<u64> {
        match &self.placement {
            Placement::Extents(map) => Some(map.map_at()),
            _ => None,
        }
    }

    /// A description for messages: the holder and how the image lies in it.
    pub fn describe(&self) -> String {
        match &self.placement {
            Placement::Whole => self.holder.display().to_string(),
            Placement::Swap(_) => format!("{} (after its swap header)", self.holder.display()),
            Placement::Extents(map) if self.named != self.holder => format!(
                "{} (its blocks on {}, map at offset {:#x})",
                self.named.display(),
                self.holder.display(),
                map.map_at()
            ),
            Placement::Extents(map) => format!(
                "{} (a file's blocks, map at offset {:#x})",
                self.holder.display(),
                map.map_at()
            ),
        }
    }

    /// Opens the image for reading.
    pub fn reader(&self) -> Result<PlaceReader, PlaceError> {
        let file = File::open(&self.holder).map_err(io("opening", &self.holder))?;
        if self.block_device {
            drop_cache(&file);
        }
        let size = ReadAt::size(&file).map_err(io("measuring", &self.holder))?;
        let segments = self.placement.segments(size);
        let len = segments.iter().map(|s| s.len).sum();
        Ok(PlaceReader {
            file,
            segments,
            len,
        })
    }

    /// Gives a swap area held for an image back to swap: writes its
    /// signature back. `None` when there was nothing to give back (not a
    /// swap area, or not held); else whether the area was swapped on when
    /// kjump took it, so that the caller swaps it on again.
    pub fn release_swap(&self) -> Result<Option<bool>, PlaceError> {
        if !matches!(self.placement, Placement::Swap(_)) {
            return Ok(None);
        }
        let was = set_swap_signature(&self.holder, SwapSignature::Free)?;
        Ok(was.is_held().then_some(was == SwapSignature::HeldWasActive))
    }

    /// Marks a swap area as holding an image, so that `swapon` refuses it,
    /// noting whether it was swapped on before. Returns whether the
    /// signature changed.
    pub fn hold_swap(&self, was_active: bool) -> Result<bool, PlaceError> {
        if !matches!(self.placement, Placement::Swap(_)) {
            return Ok(false);
        }
        let to = if was_active {
            SwapSignature::HeldWasActive
        } else {
            SwapSignature::Held
        };
        Ok(set_swap_signature(&self.holder, to)? != to)
    }
}

/// Rewrites the signature of the swap header on `device`; returns the one
/// it had.
fn set_swap_signature(device: &Path, to: SwapSignature) -> Result<SwapSignature, PlaceError> {
    use kjump_image_format::placement::SWAP_MAGIC_OFFSET;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .map_err(io("opening", device))?;
    let mut head = vec![0u8; SWAP_HEADER_LEN as usize];
    FileExt::read_exact_at(&f, &mut head, 0).map_err(io("reading the swap header of", device))?;
    let now = swap_signature(&head).ok_or_else(|| PlaceError::Unsupported {
        path: device.to_path_buf(),
        why: "its swap header has no swap signature any more".into(),
    })?;
    if now == to {
        return Ok(now);
    }
    f.write_all_at(to.magic(), SWAP_MAGIC_OFFSET as u64)
        .map_err(io("writing the swap signature of", device))?;
    f.sync_data()
        .map_err(io("flushing the swap signature of", device))?;
    Ok(now)
}

/// Whether `path` (a device or a swap file) is listed as an active swap
/// area.
pub fn is_active_swap(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/swaps") else {
        return false;
    };
    let Ok(want) = std::fs::metadata(path) else {
        return false;
    };
    let same = |m: &std::fs::Metadata| {
        if want.file_type().is_block_device() {
            m.file_type().is_block_device() && m.rdev() == want.rdev()
        } else {
            m.dev() == want.dev() && m.ino() == want.ino()
        }
    };
    text.lines().skip(1).any(|l| {
        let name = l
            .split_whitespace()
            .next()
            .unwrap_or("")
            .replace("\\040", " ");
        std::fs::metadata(&name).is_ok_and(|m| same(&m))
    })
}

/// An image read through its place's segments.
pub struct PlaceReader {
    file: File,
    segments: Vec<Segment>,
    len: u64,
}

impl PlaceReader {
    /// Bytes of room for the image.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether there is no room at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device runs that hold the image, in image order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }
}

impl ReadAt for PlaceReader {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        read_mapped(&self.file, &self.segments, buf, offset)
    }

    fn size(&self) -> std::io::Result<u64> {
        Ok(self.len)
    }
}

/// The block device a file's filesystem lies on, found through sysfs.
fn file_device(path: &Path, meta: &std::fs::Metadata) -> Result<PathBuf, PlaceError> {
    let dev = meta.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let unsupported = |why: String| PlaceError::Unsupported {
        path: path.to_path_buf(),
        why,
    };
    if major == 0 {
        return Err(unsupported(format!(
            "its filesystem has no block device of its own (device {major}:{minor})"
        )));
    }
    let uevent = format!("/sys/dev/block/{major}:{minor}/uevent");
    let text = std::fs::read_to_string(&uevent).map_err(io("reading", Path::new(&uevent)))?;
    let name = text
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .ok_or_else(|| unsupported(format!("{uevent} names no device")))?;
    let node = Path::new("/dev").join(name);
    let same =
        std::fs::metadata(&node).is_ok_and(|m| m.file_type().is_block_device() && m.rdev() == dev);
    if !same {
        return Err(unsupported(format!(
            "its filesystem is on block device {major}:{minor}, and {} is not that device",
            node.display()
        )));
    }
    Ok(node)
}

/// Filesystems whose files keep their blocks where they are: nothing
/// moves or shares a preallocated file's extents behind the file's back.
fn filesystem_verdict(magic: i64) -> Result<&'static str, String> {
    match magic {
        0xEF53 => Ok("ext2/3/4"),
        0x5846_5342 => Ok("XFS"),
        0x9123_683E => Err("btrfs: copy-on-write moves and shares file blocks, and its block addresses are not device offsets".into()),
        0x2FC1_2FC1 => Err("ZFS: copy-on-write moves file blocks".into()),
        0xF2F5_2010 => Err("F2FS: log-structured, it moves file blocks".into()),
        0x0102_1994 => Err("tmpfs: it lives in RAM".into()),
        other => Err(format!(
            "a filesystem of type {other:#x}, which kjump does not know to keep file blocks in place"
        )),
    }
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
fn file_extents(file: &File, path: &Path, len: u64) -> Result<Vec<Extent>, PlaceError> {
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
        .map_err(|e| {
            io("mapping the extents (FIEMAP) of", path)(std::io::Error::from_raw_os_error(e as i32))
        })?;
        let n = (fm.header.fm_mapped_extents as usize).min(FIEMAP_BATCH);
        if n == 0 {
            return Err(PlaceError::Unsupported {
                path: path.to_path_buf(),
                why: format!("it has no blocks at offset {start:#x} (a hole)"),
            });
        }
        let mut last = false;
        for e in &fm.fm_extents[..n] {
            if e.fe_flags & FIEMAP_EXTENT_REFUSED != 0 {
                return Err(PlaceError::Unsupported {
                    path: path.to_path_buf(),
                    why: format!(
                        "its extent at file offset {:#x} has flags {:#x} (shared, inline, encoded or not yet allocated): its blocks may move or belong to other files",
                        e.fe_logical, e.fe_flags
                    ),
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

/// Makes `path` a file target of at least `image_len` bytes of image: on
/// ext2/3/4 or XFS, allocated with fallocate, its extents mapped with FIEMAP
/// and written to its first 64 KiB, and that map confirmed on the raw
/// device. An existing file is reused (and grown when too short).
pub fn prepare_file(path: &Path, image_len: u64) -> Result<Place, PlaceError> {
    let unsupported = |why: String| PlaceError::Unsupported {
        path: path.to_path_buf(),
        why,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io("opening", path))?;
    let meta = file.metadata().map_err(io("inspecting", path))?;
    if !meta.file_type().is_file() {
        return Err(unsupported("not a regular file".into()));
    }
    // Never overwrite a file that is not kjump's: a swap file, an image
    // written whole, anyone's data.
    if meta.len() > 0 {
        let mut magic = [0u8; 8];
        let ours = FileExt::read_exact_at(&file, &mut magic, 0).is_ok() && &magic == MAP_MAGIC;
        if !ours {
            return Err(unsupported(format!(
                "it exists ({} bytes) and is not a kjump file target (it does not start with {}): remove it or name a new file",
                meta.len(),
                String::from_utf8_lossy(MAP_MAGIC)
            )));
        }
    }
    let fs = nix::sys::statfs::fstatfs(&file)
        .map_err(|e| io("inspecting the filesystem of", path)(std::io::Error::from(e)))?;
    let fs_name = filesystem_verdict(fs.filesystem_type().0 as i64).map_err(|why| {
        unsupported(format!(
            "it is on {why}. kjump writes a file target's blocks on the raw device and needs them to stay put: use ext2/3/4 or XFS, or a swap or raw partition"
        ))
    })?;
    let device = file_device(path, &meta)?;
    let want = image_len
        .checked_add(MAP_LEN)
        .and_then(|n| n.checked_next_multiple_of(BLOCK_SIZE as u64))
        .ok_or_else(|| unsupported(format!("an image of {image_len} bytes is too large")))?;
    let file_len = meta.len().max(want) / BLOCK_SIZE as u64 * BLOCK_SIZE as u64;
    nix::fcntl::fallocate(
        &file,
        nix::fcntl::FallocateFlags::empty(),
        0,
        file_len as libc::off_t,
    )
    .map_err(|e| io("allocating", path)(std::io::Error::from(e)))?;
    file.sync_all().map_err(io("flushing", path))?;
    let extents = file_extents(&file, path, file_len)?;
    let map = ExtentMap::new(file_len, &extents).map_err(|source| PlaceError::Format {
        path: path.to_path_buf(),
        source,
    })?;
    let bytes = map.encode();
    file.write_all_at(&bytes, 0)
        .map_err(io("writing the extent map of", path))?;
    file.sync_all().map_err(io("flushing", path))?;
    // The map must now read back from the device where FIEMAP says the file
    // starts: proof that file blocks and device offsets agree.
    let dev = File::open(&device).map_err(io("opening", &device))?;
    drop_cache(&dev);
    let on_device = ExtentMap::read(&dev, map.map_at());
    if !matches!(&on_device, Ok(m) if *m == map) {
        return Err(unsupported(format!(
            "the extent map written to it did not appear at offset {:#x} of {} ({}): the {fs_name} filesystem does not map file blocks straight onto that device",
            map.map_at(),
            device.display(),
            match on_device {
                Ok(_) => "a different map is there".to_string(),
                Err(e) => e.to_string(),
            }
        )));
    }
    log::info!(
        "{}: {} bytes in {} extents on {}, map at offset {:#x}",
        path.display(),
        file_len,
        map.extents.len(),
        device.display(),
        map.map_at()
    );
    Ok(Place {
        named: path.to_path_buf(),
        holder: device,
        block_device: true,
        placement: Placement::Extents(map),
    })
}

/// A block device's size in bytes.
pub fn device_size(path: &Path) -> Result<u64, PlaceError> {
    let mut f = File::open(path).map_err(io("opening", path))?;
    f.seek(SeekFrom::End(0)).map_err(io("measuring", path))
}

/// Bytes of swapped-out pages on the active swap area `path` (the `Used`
/// column of /proc/swaps), or `None` when it is not active.
pub fn swap_used_bytes(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/swaps").ok()?;
    let want = std::fs::metadata(path).ok()?;
    text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let name = f.first()?.replace("\\040", " ");
        let m = std::fs::metadata(&name).ok()?;
        let same = if want.file_type().is_block_device() {
            m.file_type().is_block_device() && m.rdev() == want.rdev()
        } else {
            m.dev() == want.dev() && m.ino() == want.ino()
        };
        same.then(|| f.get(3)?.parse::<u64>().ok().map(|kib| kib * 1024))?
    })
}

fn c_path(path: &Path) -> Result<std::ffi::CString, PlaceError> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| PlaceError::Unsupported {
        path: path.to_path_buf(),
        why: "the path holds a NUL byte".into(),
    })
}

/// Stops swapping to `path` (swapoff(2)): the kernel reads every page
/// swapped out there back into RAM first.
pub fn swap_off(path: &Path) -> Result<(), PlaceError> {
    let c = c_path(path)?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call, which
    // only reads it.
    let rc = unsafe { libc::swapoff(c.as_ptr()) };
    if rc != 0 {
        return Err(io("swapping off", path)(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Swaps to `path` again (swapon(2), default priority).
pub fn swap_on(path: &Path) -> Result<(), PlaceError> {
    let c = c_path(path)?;
    // SAFETY: as in swap_off: a NUL-terminated path, only read.
    let rc = unsafe { libc::swapon(c.as_ptr(), 0) };
    if rc != 0 {
        return Err(io("swapping on", path)(std::io::Error::last_os_error()));
    }
    Ok(())
}

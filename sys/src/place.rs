//! Where an image lives on this machine: a whole device or file, a swap
//! partition after its header, or a preallocated file's blocks on the raw
//! device beneath its filesystem (see [`kjump_image_format::placement`]).
//!
//! [`Place::locate`] finds an existing place for reading, writing or
//! discarding; [`prepare_file`] allocates a file target and writes its extent
//! map, on the running system that owns the filesystem.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use kjump_image_format::foreign::{foreign_content, Foreign, PROBE_LEN};
use kjump_image_format::placement::{
    detect, ExtentMap, Mapped, MAP_HEADER_LEN, MAP_LEN, MAP_MAGIC,
};
use kjump_image_format::{FormatError, Placement, BLOCK_SIZE};

use crate::block::{self, drop_cache};
use crate::fiemap::{file_extents, FiemapError};

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
    /// The target holds something kjump did not write.
    #[error("{path} holds {found}, which kjump would overwrite: name another target, erase it first (wipefs --all {path}), or give --force")]
    Foreign {
        /// The device or file.
        path: PathBuf,
        /// What it holds.
        found: Foreign,
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

/// Wraps an I/O error of `what` on `path`.
pub(crate) fn io<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> PlaceError + 'a {
    move |source| PlaceError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
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
        Place::file_target(path, &file, &meta)
    }

    /// The place of a file target: its blocks on the device beneath its
    /// filesystem, as the copy of its extent map there says. The file's
    /// own copy says where the file begins on the device; the device's
    /// copy there is the one that counts, and must agree.
    fn file_target(
        path: &Path,
        file: &File,
        meta: &std::fs::Metadata,
    ) -> Result<Place, PlaceError> {
        let mut own = vec![0u8; MAP_LEN as usize];
        FileExt::read_exact_at(file, &mut own, 0).map_err(io("reading the extent map of", path))?;
        let device = file_device(path, meta)?;
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
        Mapped::new(file, &self.placement).map_err(io("measuring", &self.holder))
    }
}

/// An image read through its place's segments: image offsets in, device
/// reads out.
pub type PlaceReader = Mapped<File>;

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

/// Makes `path` a file target of at least `image_len` bytes of image: on
/// ext2/3/4 or XFS, allocated with fallocate, its extents mapped with FIEMAP
/// and written to its first 64 KiB, and that map confirmed on the raw
/// device. An existing file is reused (and grown when too short).
pub fn prepare_file(path: &Path, image_len: u64) -> Result<Place, PlaceError> {
    let unsupported = |why: String| PlaceError::Unsupported {
        path: path.to_path_buf(),
        why,
    };
    let (file, meta) = open_file_target(path)?;
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
    let extents = file_extents(&file, file_len).map_err(|e| match e {
        FiemapError::Ioctl(source) => io("mapping the extents (FIEMAP) of", path)(source),
        other => unsupported(other.to_string()),
    })?;
    let map = ExtentMap::new(file_len, &extents).map_err(|source| PlaceError::Format {
        path: path.to_path_buf(),
        source,
    })?;
    file.write_all_at(&map.encode(), 0)
        .map_err(io("writing the extent map of", path))?;
    file.sync_all().map_err(io("flushing", path))?;
    confirm_on_device(path, &device, &map, fs_name)?;
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

/// Opens (or creates, owner-only) the file for a file target, refusing a
/// file that is not kjump's: a swap file, an image written whole, anyone's
/// data.
fn open_file_target(path: &Path) -> Result<(File, std::fs::Metadata), PlaceError> {
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
    Ok((file, meta))
}

/// The extent map written to a file must read back from its device where
/// FIEMAP says the file starts: proof that file blocks and device offsets
/// agree.
fn confirm_on_device(
    path: &Path,
    device: &Path,
    map: &ExtentMap,
    fs_name: &str,
) -> Result<(), PlaceError> {
    let dev = File::open(device).map_err(io("opening", device))?;
    drop_cache(&dev);
    let on_device = ExtentMap::read(&dev, map.map_at());
    if matches!(&on_device, Ok(m) if m == map) {
        return Ok(());
    }
    Err(PlaceError::Unsupported {
        path: path.to_path_buf(),
        why: format!(
            "the extent map written to it did not appear at offset {:#x} of {} ({}): the {fs_name} filesystem does not map file blocks straight onto that device",
            map.map_at(),
            device.display(),
            match on_device {
                Ok(_) => "a different map is there".to_string(),
                Err(e) => e.to_string(),
            }
        ),
    })
}

/// Refuses to write `place` whole when it holds data kjump did not write:
/// a filesystem, a partition table, a volume, anything not all zero where
/// kjump looks that is not a kjump image. A swap area (written after its
/// header) and a file target (its own extents, kjump's map first) were
/// recognised by [`Place::locate`] already; a path that does not exist yet
/// holds nothing.
pub fn refuse_foreign(place: &Place) -> Result<(), PlaceError> {
    if place.placement != Placement::Whole {
        return Ok(());
    }
    let file = match File::open(&place.holder) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("opening", &place.holder)(e)),
    };
    let mut head = vec![0u8; PROBE_LEN];
    let mut got = 0;
    while got < head.len() {
        match FileExt::read_at(&file, &mut head[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io("reading the first bytes of", &place.holder)(e)),
        }
    }
    match foreign_content(&head[..got]) {
        None => Ok(()),
        Some(found) => Err(PlaceError::Foreign {
            path: place.holder.clone(),
            found,
        }),
    }
}

/// A block device's size in bytes.
pub fn device_size(path: &Path) -> Result<u64, PlaceError> {
    let f = File::open(path).map_err(io("opening", path))?;
    block::size(&f).map_err(io("measuring", path))
}

//! Where an image goes: a regular file or a block device, written at known
//! offsets so every failure can name where it happened.
//!
//! Targets are opened with `O_DIRECT` where the filesystem allows it: the
//! image then streams to the device while compression goes on, instead of
//! piling up in the page cache for one long flush at the commit. Direct I/O
//! needs block-aligned buffers, lengths and offsets; [`AlignedBuf`] provides
//! the buffers, and any write that cannot be aligned turns direct I/O off for
//! the rest of the capture rather than fail.

use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use kjump_image_format::placement::for_each_piece;
use kjump_image_format::{ImageOffset, Placement, Segment};

use crate::block::{self, Access};
use crate::place::{Place, PlaceError};
use crate::swap::SwapArea;

/// A target that cannot be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Opening or inspecting the target failed.
    #[error("opening target {path}")]
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
    /// An image file named through a symbolic link.
    #[error("target {path} is a symbolic link to a file: kjump writes an image file only under its own name (name {points_to} itself)")]
    Link {
        /// The target.
        path: PathBuf,
        /// Where the link points.
        points_to: String,
    },
    /// A write failed.
    #[error("writing {len} bytes to {path} at offset {offset}")]
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
    /// The place the image goes cannot take it.
    #[error(transparent)]
    Place(Box<PlaceError>),
    /// A write fell outside the device runs that hold the image.
    #[error("offset {offset} is past the end of the space for the image on {path} ({len} bytes)")]
    OutOfSpace {
        /// The target.
        path: PathBuf,
        /// The first image offset outside the space.
        offset: ImageOffset,
        /// Bytes of space.
        len: u64,
    },
    /// Flushing to stable storage failed.
    #[error("flushing {path} to stable storage")]
    Sync {
        /// The target.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl From<PlaceError> for TargetError {
    fn from(e: PlaceError) -> Self {
        TargetError::Place(Box::new(e))
    }
}

/// An open target.
#[derive(Debug)]
pub struct Target {
    path: PathBuf,
    file: File,
    block_device: bool,
    capacity: Option<u64>,
    direct: AtomicBool,
    /// Bytes still allowed to land before a simulated power cut.
    #[cfg(feature = "test-hooks")]
    budget: power_cut::Budget,
    /// Where image bytes go on a swap partition or in a file's extents.
    segments: Option<Vec<Segment>>,
    /// How the image lies, for claiming and releasing a swap area.
    place: Option<Place>,
    /// A swap area being claimed was swapped on before the capture.
    swap_was_active: bool,
}

/// Alignment of direct I/O buffers, lengths and offsets.
pub const DIRECT_ALIGN: usize = 4096;

/// A byte buffer whose start is aligned for direct I/O. Its capacity is
/// fixed: pushing past it is a caller bug and panics in debug builds only
/// through the slice bounds.
pub struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// An empty buffer holding up to `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        let raw = vec![0u8; capacity + DIRECT_ALIGN];
        let start = raw.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
        AlignedBuf { raw, start, len: 0 }
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Room left.
    pub fn room(&self) -> usize {
        self.raw.len() - DIRECT_ALIGN - self.len
    }

    /// The bytes held.
    pub fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    /// Appends `bytes`; the caller keeps within [`AlignedBuf::room`].
    pub fn push(&mut self, bytes: &[u8]) {
        let at = self.start + self.len;
        self.raw[at..at + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    /// Appends `n` zero bytes.
    pub fn push_zeros(&mut self, n: usize) {
        let at = self.start + self.len;
        self.raw[at..at + n].fill(0);
        self.len += n;
    }

    /// Drops the first `n` bytes, keeping the rest at the aligned start.
    pub fn consume(&mut self, n: usize) {
        let (s, l) = (self.start, self.len);
        self.raw.copy_within(s + n..s + l, s);
        self.len -= n;
    }
}

impl Target {
    /// Opens a block device exclusively (the kernel refuses when it is
    /// mounted or otherwise claimed), or a regular file, created if need be.
    /// An existing file is not truncated: a capture refused up front (too
    /// small) must leave the image it holds intact; a capture that goes ahead
    /// invalidates it with its first write and sets the length at the commit.
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
        if !block_device && std::fs::symlink_metadata(path).is_ok_and(|m| m.is_symlink()) {
            return Err(TargetError::Link {
                path: path.to_path_buf(),
                points_to: std::fs::read_link(path).map_or_else(
                    |e| format!("(unreadable: {e})"),
                    |p| p.display().to_string(),
                ),
            });
        }
        // An image holds a machine's RAM: its owner's alone, and never
        // written through a symbolic link planted in its place (a device is
        // named through links, a file is not).
        let access = Access {
            exclusive: block_device,
            create_private: !block_device,
        };
        let (file, direct) = block::open_direct(path, access).map_err(err)?;
        let capacity = if block_device {
            Some(block::size(&file).map_err(err)?)
        } else {
            // The new image reuses the blocks the file already holds.
            let held = file.metadata().map_err(err)?.blocks().saturating_mul(512);
            block::free_space(&file).map(|free| free.saturating_add(held))
        };
        Ok(Target {
            path: path.to_path_buf(),
            file,
            block_device,
            capacity,
            direct: AtomicBool::new(direct),
            #[cfg(feature = "test-hooks")]
            budget: power_cut::Budget::default(),
            segments: None,
            place: None,
            swap_was_active: false,
        })
    }

    /// Opens the place an image goes: a whole file or device as
    /// [`Target::open`] does, a swap partition after its header (refused
    /// while it is an active swap area), or a file's extents on its device.
    /// Offsets given to the writes are image offsets either way.
    pub fn open_place(place: &Place) -> Result<Target, TargetError> {
        if place.placement == Placement::Whole {
            return Target::open(&place.holder);
        }
        let path = &place.holder;
        let swap = SwapArea::of(place);
        if swap.as_ref().is_some_and(SwapArea::is_active) {
            return Err(PlaceError::ActiveSwap { path: path.clone() }.into());
        }
        let err = |source| TargetError::Open {
            path: path.clone(),
            source,
        };
        // A swap partition is unused and taken whole: claim it. A file's
        // blocks lie under a filesystem that may be mounted, whose other
        // blocks are not touched.
        let access = Access {
            exclusive: swap.is_some(),
            create_private: false,
        };
        let (file, direct) = block::open_direct(path, access).map_err(err)?;
        let size = block::size(&file).map_err(err)?;
        let segments = place.placement.segments(size);
        let capacity = segments.iter().map(|s| s.len).sum();
        Ok(Target {
            path: place.named.clone(),
            file,
            block_device: true,
            capacity: Some(capacity),
            direct: AtomicBool::new(direct),
            #[cfg(feature = "test-hooks")]
            budget: power_cut::Budget::default(),
            segments: Some(segments),
            place: Some(place.clone()),
            swap_was_active: false,
        })
    }

    /// Takes the place for a new image before its first byte is written:
    /// a swap area gets kjump's signature so that `swapon` leaves it alone.
    pub fn claim(&self) -> Result<(), TargetError> {
        if let Some(swap) = self.place.as_ref().and_then(SwapArea::of) {
            if swap.hold(self.swap_was_active)? {
                log::info!(
                    "{}: swap signature set aside for the image",
                    swap.device().display()
                );
            }
        }
        Ok(())
    }

    /// Gives a swap area back once its image is resumed or discarded: its
    /// swap signature is written back. Nothing to do for other places.
    /// Returns whether the area was swapped on when kjump took it (and so
    /// is to be swapped on again).
    pub fn release(&self) -> Result<bool, TargetError> {
        if let Some(swap) = self.place.as_ref().and_then(SwapArea::of) {
            if let Some(was_active) = swap.give_back()? {
                log::info!("{}: swap signature restored", swap.device().display());
                return Ok(was_active);
            }
        }
        Ok(false)
    }

    /// Notes that the swap area this target claims was swapped on before:
    /// its held signature says so, for whoever gives it back.
    pub fn set_swap_was_active(&mut self, yes: bool) {
        self.swap_was_active = yes;
    }

    /// Whether writes currently bypass the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct.load(Ordering::Relaxed)
    }

    /// Turns direct I/O off for the rest of this target's life.
    fn stop_direct(&self, why: &str) {
        if self.direct.swap(false, Ordering::Relaxed) {
            log::debug!("{}: direct I/O off ({why})", self.path.display());
            block::stop_direct(&self.file);
        }
    }

    /// Checks, without writing, that `path` can take an image: a block
    /// device nobody holds (the kernel refuses an exclusive open of a mounted
    /// one) or a regular file. Returns the capacity when known.
    pub fn open_check(path: &Path) -> Result<Option<u64>, TargetError> {
        let err = |source| TargetError::Open {
            path: path.to_path_buf(),
            source,
        };
        let kind = std::fs::metadata(path).map_err(err)?.file_type();
        if kind.is_block_device() {
            let f = block::open_exclusive(path).map_err(err)?;
            return Ok(Some(block::size(&f).map_err(err)?));
        }
        if !kind.is_file() {
            return Err(TargetError::Kind {
                path: path.to_path_buf(),
            });
        }
        let f = File::open(path).map_err(err)?;
        let held = f.metadata().map_err(err)?.blocks().saturating_mul(512);
        Ok(block::free_space(&f).map(|free| free.saturating_add(held)))
    }

    /// The target's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes an image may take, when known: a block device's size, or the
    /// space free on a regular file's filesystem plus what the file holds.
    pub fn capacity(&self) -> Option<u64> {
        self.capacity
    }

    /// Whether the target is a block device.
    pub fn is_block_device(&self) -> bool {
        self.block_device
    }

    /// Writes all of `buf` at `offset`, naming the offset of any failure.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), TargetError> {
        if self.is_direct() {
            let aligned = buf.as_ptr().align_offset(DIRECT_ALIGN) == 0
                && buf.len() % DIRECT_ALIGN == 0
                && offset % DIRECT_ALIGN as u64 == 0;
            if !aligned {
                self.stop_direct("unaligned write");
            }
        }
        match self.write_all_at(buf, offset) {
            // Some filesystems accept O_DIRECT at open and refuse the write.
            Err(TargetError::Write { source, .. })
                if self.is_direct() && block::refused_direct(&source) =>
            {
                self.stop_direct("the filesystem refused a direct write");
                self.write_all_at(buf, offset)
            }
            other => other,
        }
    }

    /// Writes a small unaligned buffer (a superblock) through an aligned copy.
    pub fn write_copy_at(&self, buf: &[u8], offset: u64) -> Result<(), TargetError> {
        let mut a = AlignedBuf::with_capacity(buf.len());
        a.push(buf);
        self.write_at(a.as_slice(), offset)
    }

    /// Writes `len` zero bytes at `offset`.
    pub fn write_at_zeroed(&self, len: usize, offset: u64) -> Result<(), TargetError> {
        let mut a = AlignedBuf::with_capacity(len);
        a.push_zeros(len);
        self.write_at(a.as_slice(), offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> Result<(), TargetError> {
        #[cfg(feature = "test-hooks")]
        if let Some(allowed) = self.budget.take(buf.len()) {
            self.write_all_at_raw(&buf[..allowed], offset)?;
            if allowed < buf.len() {
                let cut = std::io::Error::other("simulated power cut");
                return Err(self.write_error(offset + allowed as u64, buf.len() - allowed, cut));
            }
            return Ok(());
        }
        self.write_all_at_raw(buf, offset)
    }

    fn write_all_at_raw(&self, buf: &[u8], offset: u64) -> Result<(), TargetError> {
        let Some(segments) = &self.segments else {
            return self.write_device_at(buf, offset, offset);
        };
        for_each_piece(
            segments,
            offset,
            buf.len(),
            |at, a, b| self.write_device_at(&buf[a..b], at, offset + a as u64),
            |at| TargetError::OutOfSpace {
                path: self.path.clone(),
                offset: ImageOffset(at),
                len: self.capacity.unwrap_or(0),
            },
        )
    }

    /// Writes `buf` at device offset `offset`; `image` is its image offset,
    /// which errors name.
    fn write_device_at(&self, buf: &[u8], offset: u64, image: u64) -> Result<(), TargetError> {
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            let named = image + done as u64;
            match self.file.write_at(&buf[done..], at) {
                Ok(0) => {
                    return Err(self.write_error(
                        named,
                        buf.len() - done,
                        std::io::ErrorKind::WriteZero.into(),
                    ))
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.write_error(named, buf.len() - done, e)),
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

/// Fault injection for the power-cut tests (tests/power_cut.rs), built only
/// with the `test-hooks` feature, which the kjump package enables for its
/// tests alone: the kjump binary and the /init of a release build have no
/// such code.
#[cfg(feature = "test-hooks")]
impl Target {
    /// After `bytes` more bytes have been written, every write fails as if
    /// the machine lost power, the last one part way. Direct I/O is turned
    /// off so the cut can fall on any byte.
    pub fn cut_power_after(&self, bytes: u64) {
        self.stop_direct("power-cut test");
        self.budget.set(bytes);
    }
}

#[cfg(feature = "test-hooks")]
mod power_cut {
    use std::sync::atomic::{AtomicU64, Ordering};

    const NO_CUT: u64 = u64::MAX;

    /// Bytes still allowed to land before a simulated power cut.
    #[derive(Debug)]
    pub(super) struct Budget(AtomicU64);

    impl Default for Budget {
        fn default() -> Self {
            Budget(AtomicU64::new(NO_CUT))
        }
    }

    impl Budget {
        pub(super) fn set(&self, bytes: u64) {
            self.0.store(bytes, Ordering::SeqCst);
        }

        /// With a cut set, takes up to `len` bytes from the budget and
        /// returns how many may still be written; `None` without a cut.
        pub(super) fn take(&self, len: usize) -> Option<usize> {
            let budget = self.0.load(Ordering::SeqCst);
            if budget == NO_CUT {
                return None;
            }
            let allowed = budget.min(len as u64);
            self.0.store(budget - allowed, Ordering::SeqCst);
            Some(allowed as usize)
        }
    }
}

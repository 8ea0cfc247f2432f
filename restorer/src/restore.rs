//! Writing a saved kernel's memory back: the heart of a resume.
//!
//! Order matters, and each step refuses rather than guess: the image must be
//! committed and never consumed, every checksum must hold, none of its
//! ranges may overlap the running kernel's own RAM; then the image is marked
//! consumed (a crash from here on must not loop into it again), and only
//! then is a single byte of memory written.

use std::path::Path;
use std::time::{Duration, Instant};

use kjump_image_format::{Image, ImageState, MemoryMap, PhysRange, Secret, PAGE_SIZE};
use kjump_sys::physmem::{PhysMem, PhysMemError};
use kjump_sys::{Place, PlaceError, Target, TargetError};

use crate::scan::{scan_chunks, ScanError};

/// Why a restore refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The image cannot be opened or read.
    #[error("opening image {path}")]
    Open {
        /// The image.
        path: String,
        /// The cause.
        #[source]
        source: Box<PlaceError>,
    },
    /// The image fails a check; nothing was changed.
    #[error("image {path} is not whole; it was left as it is")]
    Invalid {
        /// The image.
        path: String,
        /// The check that failed.
        #[source]
        source: ScanError<std::convert::Infallible>,
    },
    /// The image is not the one the kernel that loaded this one checked.
    #[error("image {path} is not the image the resume checked ({what}); it was left as it is")]
    NotPinned {
        /// The image.
        path: String,
        /// What differs, expected against found.
        what: String,
    },
    /// The image was restored before.
    #[error("image {path} was consumed by an earlier resume; it will not be resumed again")]
    Consumed {
        /// The image.
        path: String,
    },
    /// The image has no re-entry point.
    #[error("image {path} records no jump-back entry: it was not captured by a kexec jump")]
    NoEntry {
        /// The image.
        path: String,
    },
    /// A saved range overlaps this kernel's own RAM.
    #[error("saved range {range} overlaps this kernel's own RAM {own}: this is not the machine or the memory layout the image was captured on")]
    Overlap {
        /// The saved range.
        range: String,
        /// The running kernel's RAM it hits.
        own: String,
    },
    /// Marking the image consumed failed; memory was not touched.
    #[error("marking image {path} consumed; memory was not touched")]
    MarkConsumed {
        /// The image.
        path: String,
        /// The cause.
        #[source]
        source: TargetError,
    },
    /// Mapping memory failed; memory was not touched.
    #[error(transparent)]
    Map(PhysMemError),
    /// Writing memory failed part way: the saved kernel cannot be resumed.
    #[error("writing the saved memory failed part way")]
    Write(#[source] ScanError<PhysMemError>),
}

impl RestoreError {
    /// Whether memory is still as it was before the restore began: true
    /// for every refusal, false once writing it started. Until then the
    /// kernel that jumped into the restore kernel can take control back.
    pub fn memory_untouched(&self) -> bool {
        !matches!(self, RestoreError::Write(_))
    }
}

/// What the kernel that loaded the restore kernel checked (the normal
/// boot's `kjump resume`): the restore refuses an image that is not the
/// same one, such as a target that changed between the two kernels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    /// The image uuid.
    pub uuid: [u8; 16],
    /// The saved ranges (merged: adjacent ranges as one).
    pub ranges: MemoryMap,
    /// The region the capture kernel ran in, as the image records it
    /// (`region=` of its key/value metadata).
    pub region: PhysRange,
}

impl Pin {
    /// What of `image` differs from the pin, if anything.
    fn mismatch(&self, image: &Image) -> Option<String> {
        let hex = |u: &[u8; 16]| u.iter().map(|b| format!("{b:02x}")).collect::<String>();
        if image.superblock.uuid != self.uuid {
            return Some(format!(
                "uuid {} expected, {} found",
                hex(&self.uuid),
                hex(&image.superblock.uuid)
            ));
        }
        if MemoryMap::merged(image.metadata.ranges.ranges().to_vec()) != self.ranges {
            return Some(format!(
                "saved ranges {:?} expected, {:?} found",
                self.ranges.ranges(),
                image.metadata.ranges.ranges()
            ));
        }
        let recorded = image
            .metadata
            .get(kjump_image_format::metadata::KEY_REGION)
            .unwrap_or_default();
        let region = kjump_sys::ranges::parse_range_list(recorded).ok();
        (region.as_deref() != Some(&[self.region])).then(|| {
            format!(
                "capture region {} expected, {recorded:?} found",
                self.region
            )
        })
    }
}

/// What a restore did.
#[derive(Clone, Debug)]
pub struct RestoreReport {
    /// Where the saved kernel re-enters.
    pub entry: u64,
    /// Bytes of memory written (whole ranges).
    pub bytes: u64,
    /// Time spent verifying.
    pub verify: Duration,
    /// Time spent writing memory.
    pub write: Duration,
}

/// Checks `image_path` and writes its memory through `mem_path` (/dev/mem, or
/// a file standing in for it). `own_ram` is the running kernel's RAM.
pub fn restore(
    place: &Place,
    mem_path: &Path,
    own_ram: &MemoryMap,
    threads: usize,
) -> Result<RestoreReport, RestoreError> {
    restore_with_key(place, mem_path, own_ram, threads, None, None)
}

/// [`restore`] with the key or passphrase of an encrypted image. A wrong
/// key, or any sealed structure that fails authentication, is refused
/// during the verification pass, before the image is marked consumed and
/// before a byte of memory is written. With a `pin`, an image that is not
/// the one pinned is refused likewise.
pub fn restore_with_key(
    place: &Place,
    mem_path: &Path,
    own_ram: &MemoryMap,
    threads: usize,
    secret: Option<&Secret>,
    pin: Option<&Pin>,
) -> Result<RestoreReport, RestoreError> {
    let shown = place.describe();
    let file = place.reader().map_err(|source| RestoreError::Open {
        path: shown.clone(),
        source: Box::new(source),
    })?;
    let invalid = |source| RestoreError::Invalid {
        path: shown.clone(),
        source,
    };
    let image = Image::open_with(&file, secret).map_err(|e| invalid(ScanError::Image(e)))?;
    let entry = restorable(&image, &shown, pin, own_ram)?;
    let started = Instant::now();
    crate::verify(&file, &image, threads, false).map_err(invalid)?;
    let verify = started.elapsed();
    mark_consumed(place, image.superblock).map_err(|source| RestoreError::MarkConsumed {
        path: shown.clone(),
        source,
    })?;
    let mem =
        PhysMem::open(mem_path, &image.metadata.ranges, own_ram).map_err(RestoreError::Map)?;
    let started = Instant::now();
    scan_chunks(&file, &image, threads, false, |i, pages| {
        write_chunk(&mem, &image, i, pages)
    })
    .map_err(RestoreError::Write)?;
    mem.flush()
        .map_err(|e| RestoreError::Write(ScanError::Consumer(e)))?;
    Ok(RestoreReport {
        entry,
        bytes: image.metadata.ranges.total_bytes(),
        verify,
        write: started.elapsed(),
    })
}

/// Refuses an image (shown as `shown`) that must not be restored here: one
/// already consumed, not the one pinned, without a re-entry point, or
/// saving RAM this kernel uses (`own_ram`). Returns its re-entry point.
fn restorable(
    image: &Image,
    shown: &str,
    pin: Option<&Pin>,
    own_ram: &MemoryMap,
) -> Result<u64, RestoreError> {
    let path = shown.to_string();
    if image.superblock.state == ImageState::Consumed {
        return Err(RestoreError::Consumed { path });
    }
    if let Some(what) = pin.and_then(|p| p.mismatch(image)) {
        return Err(RestoreError::NotPinned { path, what });
    }
    let entry = image
        .metadata
        .jump_back_entry
        .ok_or(RestoreError::NoEntry { path })?;
    for r in image.metadata.ranges.ranges() {
        if let Some(own) = own_ram.ranges().iter().find(|o| o.intersect(r).is_some()) {
            return Err(RestoreError::Overlap {
                range: r.to_string(),
                own: own.to_string(),
            });
        }
    }
    Ok(entry)
}

/// Marks the committed image at `place` consumed without restoring it:
/// what the saved kernel does when it runs on after its capture kernel woke
/// from suspend to RAM, so that the disk image, now stale, is never
/// resumed. Returns false when the image was not committed.
pub fn consume(place: &Place) -> Result<bool, RestoreError> {
    let shown = place.describe();
    let file = place.reader().map_err(|source| RestoreError::Open {
        path: shown.clone(),
        source: Box::new(source),
    })?;
    // The superblock alone: its state is outside an encrypted image's seal,
    // so no key is needed to retire the image.
    let sb =
        kjump_image_format::reader::read_superblock(&file).map_err(|e| RestoreError::Invalid {
            path: shown.clone(),
            source: ScanError::Image(e),
        })?;
    if sb.state != ImageState::Committed {
        return Ok(false);
    }
    mark_consumed(place, sb).map_err(|source| RestoreError::MarkConsumed {
        path: shown,
        source,
    })?;
    Ok(true)
}

/// Rewrites the superblock in state consumed and flushes it; a swap area
/// then gets its swap signature back.
fn mark_consumed(place: &Place, mut sb: kjump_image_format::Superblock) -> Result<(), TargetError> {
    sb.state = ImageState::Consumed;
    sb.consumed_time_ns = kjump_sys::clock::now_ns().max(1);
    let target = Target::open_place(place)?;
    target.write_copy_at(&sb.encode(), 0)?;
    target.sync()?;
    // The saved kernel swaps an area it used on again itself.
    target.release().map(drop)
}

/// Writes chunk `i`'s pages, clipped to its range (a partial edge page
/// writes only its bytes inside the range). Chunks cover disjoint frames
/// of a range, so every page is written once, as [`PhysMem`] asks.
fn write_chunk(mem: &PhysMem, image: &Image, i: usize, pages: &[u8]) -> Result<(), PhysMemError> {
    let spec = &image.specs[i];
    let range = image.metadata.ranges.ranges()[spec.range];
    let base = spec.first_pfn.addr().0;
    let end = base + (usize::from(spec.page_count) * PAGE_SIZE) as u64;
    let (from, to) = (base.max(range.start().0), end.min(range.end().0));
    let bytes = &pages[(from - base) as usize..(to - base) as usize];
    mem.write(from, bytes)
}

//! Writing a saved kernel's memory back: the heart of a resume.
//!
//! Order matters, and each step refuses rather than guess: the image must be
//! committed and never consumed, its superblock, metadata, index and trailer
//! must check, none of its ranges may overlap the running kernel's own RAM,
//! and everything the restore needs (the target opened for writing, the
//! memory mapped, threads and buffers) is taken. Then one pass reads each
//! chunk once, checks it completely and writes its pages. Only after the
//! last page is written and flushed is the image marked consumed. A chunk
//! that fails once memory was written marks the image failed, saying which
//! and why, so that the next boot refuses it instead of looping.

use std::path::Path;
use std::time::{Duration, Instant};

use kjump_image_format::reader::read_superblock;
use kjump_image_format::{
    FailureText, Image, ImageState, Kdf, MemoryMap, PhysRange, ReadAt, Secret, Superblock,
    ZeroPages, PAGE_SIZE,
};
use kjump_sys::physmem::{PhysMem, PhysMemError};
use kjump_sys::progress::Progress;
use kjump_sys::{Place, PlaceError, Target, TargetError};

use crate::budget::{check_kdf, KdfTooCostly};
use crate::scan::{pass_memory, scan_chunks_at, ScanError, Stopped};

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
    /// An earlier restore of the image failed part way.
    #[error("image {path} failed an earlier restore ({reason}); it will not be resumed again")]
    FailedBefore {
        /// The image.
        path: String,
        /// What the image's restore record says.
        reason: String,
    },
    /// The image has no re-entry point.
    #[error("image {path} records no jump-back entry: it was not captured by a kexec jump")]
    NoEntry {
        /// The image.
        path: String,
    },
    /// The image's key derivation needs more memory than this kernel has
    /// to spare; refused before the key is derived.
    #[error("image {path} cannot be opened here; it was left as it is")]
    KdfMemory {
        /// The image.
        path: String,
        /// The memory needed and the memory there is.
        #[source]
        source: KdfTooCostly,
    },
    /// A saved range overlaps this kernel's own RAM.
    #[error("saved range {range} overlaps this kernel's own RAM {own}: this is not the machine or the memory layout the image was captured on")]
    Overlap {
        /// The saved range.
        range: String,
        /// The running kernel's RAM it hits.
        own: String,
    },
    /// The target cannot be opened for the records a restore writes;
    /// memory was not touched.
    #[error("opening image {path} for writing; memory was not touched")]
    OpenTarget {
        /// The image.
        path: String,
        /// The cause.
        #[source]
        source: TargetError,
    },
    /// Rewriting the superblock (consumed, or a restore attempt taken
    /// back) failed outside a restore.
    #[error("updating the superblock of image {path}")]
    Record {
        /// The image.
        path: String,
        /// The cause.
        #[source]
        source: TargetError,
    },
    /// Mapping memory failed; memory was not touched.
    #[error(transparent)]
    Map(PhysMemError),
    /// A chunk failed, or writing memory failed, after memory was written:
    /// the saved kernel cannot be resumed. The image is marked failed
    /// (`recorded`), so that the next boot refuses it.
    #[error("writing the saved memory failed part way{}; {}", chunk.map(|c| format!(" at chunk {c}")).unwrap_or_default(), failed_note(path, recorded))]
    Failed {
        /// The image.
        path: String,
        /// The chunk that failed, if one did.
        chunk: Option<usize>,
        /// What failed.
        #[source]
        source: Box<ScanError<PhysMemError>>,
        /// Whether the failure was recorded in the image.
        recorded: Result<(), String>,
    },
}

/// What became of a failed restore's record in the image.
fn failed_note(path: &str, recorded: &Result<(), String>) -> String {
    match recorded {
        Ok(()) => format!("image {path} is marked failed and will not be resumed"),
        Err(e) => format!("marking image {path} failed did not work either ({e}): run kjump discard on it before the next boot"),
    }
}

impl RestoreError {
    /// Whether memory is still as it was before the restore began: true
    /// for every refusal, false once writing it started. Until then the
    /// kernel that jumped into the restore kernel can take control back.
    pub fn memory_untouched(&self) -> bool {
        !matches!(self, RestoreError::Failed { .. })
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
    /// Whether the image was encrypted: a plain image put in place of an
    /// encrypted one (its uuid, ranges and region are in the clear) is
    /// refused, not restored without its key.
    pub encrypted: bool,
}

impl Pin {
    /// What of `image` differs from the pin, if anything.
    fn mismatch(&self, image: &Image) -> Option<String> {
        let hex = |u: &[u8; 16]| u.iter().map(|b| format!("{b:02x}")).collect::<String>();
        if image.is_encrypted() != self.encrypted {
            let kind = |e: bool| if e { "an encrypted" } else { "a plain" };
            return Some(format!(
                "{} image expected, {} image found",
                kind(self.encrypted),
                kind(image.is_encrypted())
            ));
        }
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
    /// Bytes of image read.
    pub image_bytes: u64,
    /// Time spent reading, checking and writing.
    pub write: Duration,
    /// Marking the image consumed failed after memory was whole: the saved
    /// kernel marks it when it runs again; the reason, to say so.
    pub not_consumed: Option<String>,
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
/// key, or any sealed structure other than a chunk that fails
/// authentication, is refused before a byte of memory is written; a chunk
/// is authenticated before its pages are written. With a `pin`, an image
/// that is not the one pinned is refused likewise.
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
    let spare = kjump_sys::freemem::MemInfo::spare();
    let sb = read_superblock(&file).map_err(|e| invalid(ScanError::Image(e)))?;
    let kdf = sb.crypto.map(|c| c.kdf);
    check_kdf_memory(&shown, kdf.as_ref(), spare, pin.map(|p| p.region))?;
    // Half of what this kernel has to spare, after the pass's buffers,
    // for the image's index: a superblock's counts cannot exhaust it.
    let budget = spare.saturating_sub(pass_memory(threads)) / 2;
    let image =
        Image::open_within(&file, secret, budget).map_err(|e| invalid(ScanError::Image(e)))?;
    let entry = restorable(&image, &shown, pin, own_ram)?;
    image
        .check_padding(&file)
        .map_err(|e| invalid(ScanError::Image(e)))?;
    let target = Target::open_place(place).map_err(|source| RestoreError::OpenTarget {
        path: shown.clone(),
        source,
    })?;
    let mem =
        PhysMem::open(mem_path, &image.metadata.ranges, own_ram).map_err(RestoreError::Map)?;
    let started = Instant::now();
    let progress = kjump_sys::progress::Progress::new("restore", 0, false);
    let pass = write_memory(&file, &image, &mem, threads, progress);
    if let Err(Stopped { chunk, error }) = pass {
        if !mem.touched() {
            return Err(untouched(&shown, error));
        }
        let recorded = mark_failed(&target, image.superblock, chunk, &error)
            .map_err(|e| kjump_sys::error_chain(&e));
        return Err(RestoreError::Failed {
            path: shown,
            chunk,
            source: Box::new(error),
            recorded,
        });
    }
    let write = started.elapsed();
    let not_consumed = mark_consumed(&target, image.superblock)
        .err()
        .map(|e| kjump_sys::error_chain(&e));
    Ok(RestoreReport {
        entry,
        bytes: image.metadata.ranges.total_bytes(),
        image_bytes: image.superblock.layout.image_len,
        write,
        not_consumed,
    })
}

/// Refuses, before any key is derived, the image `path` whose key
/// derivation `kdf` (`None`: a plain image) needs more memory than the
/// `spare` bytes this kernel has: in the restore kernel, PID 1 running out
/// of memory is a kernel panic, and a refusal hands back to the normal
/// boot. `region` is the restore kernel's, to say what crashkernel= to
/// give.
pub fn check_kdf_memory(
    path: &str,
    kdf: Option<&Kdf>,
    spare: u64,
    region: Option<PhysRange>,
) -> Result<(), RestoreError> {
    match kdf {
        None => Ok(()),
        Some(kdf) => check_kdf(kdf, spare, region).map_err(|source| RestoreError::KdfMemory {
            path: path.to_string(),
            source,
        }),
    }
}

/// The restore's one pass: reads each chunk of `image` (opened from
/// `file`) once, checks it completely and writes its pages through `mem`,
/// then flushes `mem`. A panic in the pass is a failure like any other
/// ([`ScanError::Panicked`]): whoever called this decides, from
/// [`PhysMem::touched`], whether memory is still as it was.
pub fn write_memory<R: ReadAt + Sync + ?Sized>(
    file: &R,
    image: &Image,
    mem: &PhysMem,
    threads: usize,
    progress: Progress,
) -> Result<(), Stopped<PhysMemError>> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // write_chunk writes zero pages as zeros on its own.
        scan_chunks_at(
            file,
            image,
            threads,
            progress,
            ZeroPages::Leave,
            |i, pages| write_chunk(mem, image, i, pages),
        )
    }))
    .unwrap_or_else(|_panic| Err(Stopped::from(ScanError::Panicked)))
    .and_then(|()| {
        mem.flush()
            .map_err(|e| Stopped::from(ScanError::Consumer(e)))
    })
}

/// A pass that stopped before it wrote a byte: a refusal.
fn untouched(shown: &str, error: ScanError<PhysMemError>) -> RestoreError {
    match error {
        ScanError::Image(e) => RestoreError::Invalid {
            path: shown.to_string(),
            source: ScanError::Image(e),
        },
        ScanError::Threads { threads, reason } => RestoreError::Invalid {
            path: shown.to_string(),
            source: ScanError::Threads { threads, reason },
        },
        ScanError::Panicked => RestoreError::Invalid {
            path: shown.to_string(),
            source: ScanError::Panicked,
        },
        ScanError::Consumer(e) => RestoreError::Map(e),
    }
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
    match image.superblock.state {
        ImageState::Consumed => return Err(RestoreError::Consumed { path }),
        ImageState::Failed => {
            return Err(RestoreError::FailedBefore {
                path,
                reason: failure_of(&image.superblock),
            })
        }
        ImageState::Writing | ImageState::Committed => {}
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
/// resumed, or after a restore that could not mark it. Returns false when
/// the image was not committed.
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
    Target::open_place(place)
        .and_then(|target| mark_consumed(&target, sb))
        .map_err(|source| RestoreError::Record {
            path: shown,
            source,
        })?;
    Ok(true)
}

/// Counts one more restore attempt of the committed image whose
/// superblock is `sb`, durably, before the restore kernel is loaded (the
/// restore record of FORMAT.md). Returns the count now recorded.
pub fn begin_attempt(place: &Place, mut sb: Superblock) -> Result<u32, TargetError> {
    sb.restore.attempts = sb.restore.attempts.saturating_add(1);
    let target = Target::open_place(place)?;
    write_superblock(&target, &sb)?;
    Ok(sb.restore.attempts)
}

/// Takes back restore attempt `attempt` of the image `uuid` at `place`
/// when the restore kernel came back without writing memory (it refused
/// and handed control back, or was never started): the count is for
/// restores that may have stopped part way. Changes nothing unless the
/// image is still that one, committed, with that count.
pub fn take_back_attempt(place: &Place, uuid: [u8; 16], attempt: u32) -> Result<(), RestoreError> {
    let path = place.describe();
    let reader = place.reader().map_err(|source| RestoreError::Open {
        path: path.clone(),
        source: Box::new(source),
    })?;
    let Ok(mut sb) = kjump_image_format::reader::read_superblock(&reader) else {
        return Ok(());
    };
    if sb.uuid != uuid || sb.state != ImageState::Committed || sb.restore.attempts != attempt {
        return Ok(());
    }
    sb.restore.attempts = attempt - 1;
    Target::open_place(place)
        .and_then(|target| write_superblock(&target, &sb))
        .map_err(|source| RestoreError::Record { path, source })
}

/// What an image's restore record says about its failed restore.
pub fn failure_of(sb: &Superblock) -> String {
    let text = sb.restore.failure.text();
    let text = if text.is_empty() {
        "no reason recorded".to_string()
    } else {
        text
    };
    match sb.restore.failed_chunk {
        Some(c) => format!("it stopped at chunk {c}: {text}"),
        None => format!("it stopped: {text}"),
    }
}

/// Rewrites the superblock in state consumed and flushes it; a swap area
/// then gets its swap signature back.
fn mark_consumed(target: &Target, mut sb: Superblock) -> Result<(), TargetError> {
    sb.state = ImageState::Consumed;
    sb.consumed_time_ns = kjump_sys::clock::now_ns().max(1);
    write_superblock(target, &sb)?;
    // The saved kernel swaps an area it used on again itself.
    target.release().map(drop)
}

/// Rewrites the superblock in state failed, with the chunk and the reason.
fn mark_failed(
    target: &Target,
    mut sb: Superblock,
    chunk: Option<usize>,
    error: &ScanError<PhysMemError>,
) -> Result<(), TargetError> {
    sb.state = ImageState::Failed;
    sb.restore.failed_chunk = chunk.map(|c| c as u64);
    sb.restore.failure = FailureText::new(&kjump_sys::error_chain(error));
    write_superblock(target, &sb)
}

fn write_superblock(target: &Target, sb: &Superblock) -> Result<(), TargetError> {
    target.write_copy_at(&sb.encode(), 0)?;
    target.sync()
}

/// Writes chunk `i`'s pages, clipped to its range (a partial edge page
/// writes only its bytes inside the range). Chunks cover disjoint frames
/// of a range, so every page is written once, as [`PhysMem`] asks. Runs of
/// zero pages (most of a typical machine's RAM) are written as zeros, with
/// stores alone, rather than copied from the decoded chunk.
fn write_chunk(mem: &PhysMem, image: &Image, i: usize, pages: &[u8]) -> Result<(), PhysMemError> {
    let spec = &image.specs[i];
    let zero_bitmap = image.index[i].zero_bitmap;
    let range = image.metadata.ranges.ranges()[spec.range];
    let base = spec.first_pfn.addr().0;
    let page = PAGE_SIZE as u64;
    let count = u64::from(spec.page_count);
    let (from, to) = (
        base.max(range.start().0),
        (base + count * page).min(range.end().0),
    );
    let is_zero = |p: u64| zero_bitmap >> p & 1 == 1;
    let mut p = 0;
    while p < count {
        let zero = is_zero(p);
        let run = (p..count).take_while(|&q| is_zero(q) == zero).count() as u64;
        let (start, end) = (
            (base + p * page).max(from),
            (base + (p + run) * page).min(to),
        );
        if start < end {
            if zero {
                mem.zero(start, (end - start) as usize)?;
            } else {
                mem.write(
                    start,
                    &pages[(start - base) as usize..(end - base) as usize],
                )?;
            }
        }
        p += run;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kjump_image_format::PhysAddr;

    /// An image whose Argon2 cost exceeds what the restore kernel has to
    /// spare is a refusal that names both numbers and the fix, before any
    /// key is derived: memory untouched, so R hands back to the normal
    /// boot instead of running out of memory as PID 1.
    #[test]
    fn a_kdf_costlier_than_the_spare_memory_is_refused_before_deriving() {
        let kdf = Kdf::Argon2id {
            memory_kib: 128 * 1024,
            iterations: 3,
            lanes: 1,
        };
        let region = PhysRange::new(PhysAddr(0x1000_0000), PhysAddr(0x2000_0000)).unwrap();
        let err = check_kdf_memory("/dev/vdb", Some(&kdf), 90 << 20, Some(region)).unwrap_err();
        assert!(err.memory_untouched());
        let text = kjump_sys::error_chain(&err);
        assert!(
            text.starts_with("image /dev/vdb cannot be opened here; it was left as it is: deriving the key (Argon2id) needs 128 MiB of memory, and this restore kernel has 90 MiB to spare"),
            "{text}"
        );
        assert!(text.contains("crashkernel=320M"), "{text}");
        check_kdf_memory("/dev/vdb", Some(&kdf), 128 << 20, Some(region)).unwrap();
        check_kdf_memory("/dev/vdb", None, 0, None).unwrap();
        check_kdf_memory("/dev/vdb", Some(&Kdf::KeyFile), 0, None).unwrap();
    }
}

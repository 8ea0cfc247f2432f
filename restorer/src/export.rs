//! `kjump export`: the saved memory as an ELF64 core.
//!
//! One PT_LOAD per saved range at its physical address, the saved ELF notes
//! as the PT_NOTE. Loadable contents are byte for byte the captured memory,
//! so crash, drgn and gdb read the image like the dump it came from. Zero
//! pages are left as holes of a sparse file. Frames a filtering capture left
//! out (`kjump collect -d`) lie in no PT_LOAD: a range is split around them,
//! as `makedumpfile -E` splits its segments, so a reader finds them absent
//! from the dump rather than zero.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kjump_image_format::{Image, PhysAddr, PhysRange, ReadAt, PAGE_SIZE};
use kjump_sys::ELF_MACHINE;

use crate::scan::{scan_chunks, ScanError};

const EHDR_SIZE: u64 = 64;
const PHDR_SIZE: u64 = 56;

/// The most PT_LOAD segments (and the PT_NOTE) an ELF header counts
/// without the PN_XNUM extension, which not every reader knows.
const MAX_PHNUM: usize = 0xfffe;

/// Why an export failed; a partial output file is removed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The frames left out split the ranges into more segments than an
    /// ELF header counts.
    #[error("the frames this image leaves out split its memory into {segments} pieces, more than the {MAX_PHNUM} segments an ELF core's header counts: export it with --format kdump, which marks left-out frames in a bitmap")]
    TooManySegments {
        /// PT_LOADs needed.
        segments: usize,
    },
    /// The image failed a check.
    #[error(transparent)]
    Image(#[from] ScanError<OutputError>),
    /// The output could not be written.
    #[error(transparent)]
    Output(#[from] OutputError),
}

/// Writing the output failed.
#[derive(Debug, thiserror::Error)]
#[error("writing {path} at offset {offset:#x}")]
pub struct OutputError {
    path: PathBuf,
    offset: u64,
    #[source]
    source: std::io::Error,
}

/// What an export wrote.
#[derive(Clone, Debug)]
pub struct ExportReport {
    /// Length of the ELF file.
    pub file_len: u64,
    /// PT_LOAD segments.
    pub segments: usize,
    /// Wall time.
    pub elapsed: Duration,
}

/// Where each range's bytes start in the output file.
fn segment_offsets(ranges: &[PhysRange], data_start: u64) -> (Vec<u64>, u64) {
    let mut offsets = Vec::with_capacity(ranges.len());
    let mut at = data_start;
    for r in ranges {
        // Keep file offsets congruent to addresses modulo the page size so
        // tools can map segments.
        let base = at.next_multiple_of(PAGE_SIZE as u64);
        let off = base + r.start().page_offset() as u64;
        offsets.push(off);
        at = off + r.len();
    }
    (offsets, at)
}

/// The PT_LOADs of `image`: each saved range (index into the ranges) less
/// the frames a filtering capture left out.
fn loads(image: &Image) -> Vec<(usize, PhysRange)> {
    let page = PAGE_SIZE as u64;
    let runs = image
        .metadata
        .excluded
        .as_ref()
        .map_or(&[][..], |x| x.runs.as_slice());
    let mut out = Vec::new();
    let mut next_run = runs.iter().peekable();
    for (i, r) in image.metadata.ranges.ranges().iter().enumerate() {
        let (mut at, end) = (r.start().0, r.end().0);
        // Runs are sorted and each lies inside one range.
        while let Some(&&(first, count)) = next_run.peek() {
            let (gap_start, gap_end) = (first * page, (first + count) * page);
            if gap_start >= end {
                break;
            }
            next_run.next();
            if gap_start > at {
                out.extend(
                    PhysRange::new(PhysAddr(at), PhysAddr(gap_start))
                        .ok()
                        .map(|p| (i, p)),
                );
            }
            at = at.max(gap_end);
        }
        if at < end {
            out.extend(
                PhysRange::new(PhysAddr(at), PhysAddr(end))
                    .ok()
                    .map(|p| (i, p)),
            );
        }
    }
    out
}

fn headers(
    image: &Image,
    loads: &[(usize, PhysRange)],
    offsets: &[u64],
    notes_off: u64,
) -> Vec<u8> {
    let ranges = image.metadata.ranges.ranges();
    let notes = image.metadata.elf_notes.as_deref().unwrap_or(&[]);
    let phnum = loads.len() + usize::from(!notes.is_empty());
    let mut h = Vec::with_capacity(notes_off as usize + notes.len());
    h.extend_from_slice(b"\x7fELF\x02\x01\x01");
    h.resize(16, 0);
    h.extend_from_slice(&4u16.to_le_bytes()); // ET_CORE
    h.extend_from_slice(&ELF_MACHINE.0.to_le_bytes());
    h.extend_from_slice(&1u32.to_le_bytes()); // EV_CURRENT
    h.extend_from_slice(&0u64.to_le_bytes()); // e_entry
    h.extend_from_slice(&EHDR_SIZE.to_le_bytes()); // e_phoff
    h.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    h.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for v in [EHDR_SIZE as u16, PHDR_SIZE as u16, phnum as u16, 0, 0, 0] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    let mut phdr = |p_type: u32, flags: u32, off: u64, paddr: u64, len: u64| {
        h.extend_from_slice(&p_type.to_le_bytes());
        h.extend_from_slice(&flags.to_le_bytes());
        for v in [off, 0, paddr, len, len, 0] {
            h.extend_from_slice(&v.to_le_bytes());
        }
    };
    if !notes.is_empty() {
        phdr(4, 0, notes_off, 0, notes.len() as u64);
    }
    // A piece of a range lies in the file where the range's bytes do.
    for (i, piece) in loads {
        let off = offsets[*i] + (piece.start().0 - ranges[*i].start().0);
        phdr(1, 7, off, piece.start().0, piece.len());
    }
    h.extend_from_slice(notes);
    h
}

/// Writes `image` read from `src` as an ELF core at `output`.
pub fn export<R: ReadAt + ?Sized>(
    src: &R,
    image: &Image,
    output: &Path,
    threads: usize,
    progress_line: bool,
) -> Result<ExportReport, ExportError> {
    let started = Instant::now();
    let result = write_core(src, image, output, threads, progress_line);
    if result.is_err() {
        // A partial core must not pass for a whole one.
        let _ = std::fs::remove_file(output);
    }
    let (file_len, segments) = result?;
    Ok(ExportReport {
        file_len,
        segments,
        elapsed: started.elapsed(),
    })
}

fn write_core<R: ReadAt + ?Sized>(
    src: &R,
    image: &Image,
    output: &Path,
    threads: usize,
    progress_line: bool,
) -> Result<(u64, usize), ExportError> {
    let ranges = image.metadata.ranges.ranges();
    let loads = loads(image);
    let notes_len = image.metadata.elf_notes.as_ref().map_or(0, Vec::len) as u64;
    let phnum = loads.len() as u64 + u64::from(notes_len > 0);
    if phnum > MAX_PHNUM as u64 {
        return Err(ExportError::TooManySegments {
            segments: loads.len(),
        });
    }
    let notes_off = EHDR_SIZE + phnum * PHDR_SIZE;
    let (offsets, file_len) = segment_offsets(ranges, notes_off + notes_len);
    let out_err = |offset, source| OutputError {
        path: output.to_path_buf(),
        offset,
        source,
    };
    // Readable by its owner only: the core holds all of a machine's RAM,
    // keys and passwords included (and in clear, from an encrypted image).
    // A symbolic link as the last component is refused, not followed.
    let file = kjump_sys::block::create_private(output).map_err(|e| out_err(0, e))?;
    file.set_len(file_len).map_err(|e| out_err(file_len, e))?;
    file.write_all_at(&headers(image, &loads, &offsets, notes_off), 0)
        .map_err(|e| out_err(0, e))?;
    scan_chunks(src, image, threads, progress_line, |i, pages| {
        write_pages(&file, image, &offsets, i, pages).map_err(|(offset, e)| out_err(offset, e))
    })?;
    file.sync_all().map_err(|e| out_err(file_len, e))?;
    Ok((file_len, loads.len()))
}

/// Writes the nonzero pages of chunk `i`, clipped to its range.
fn write_pages(
    file: &File,
    image: &Image,
    offsets: &[u64],
    i: usize,
    pages: &[u8],
) -> Result<(), (u64, std::io::Error)> {
    let spec = &image.specs[i];
    let entry = &image.index[i];
    let range = image.metadata.ranges.ranges()[spec.range];
    let (rs, re) = (range.start().0, range.end().0);
    let mut page = 0usize;
    while page < usize::from(spec.page_count) {
        if entry.zero_bitmap & (1 << page) != 0 {
            page += 1;
            continue;
        }
        // A run of stored pages goes out in one write.
        let run_start = page;
        while page < usize::from(spec.page_count) && entry.zero_bitmap & (1 << page) == 0 {
            page += 1;
        }
        let addr = spec.first_pfn.addr().0 + (run_start * PAGE_SIZE) as u64;
        let end = spec.first_pfn.addr().0 + (page * PAGE_SIZE) as u64;
        let (from, to) = (addr.max(rs), end.min(re));
        let bytes = &pages
            [(from - spec.first_pfn.addr().0) as usize..(to - spec.first_pfn.addr().0) as usize];
        let off = offsets[spec.range] + (from - rs);
        file.write_all_at(bytes, off).map_err(|e| (off, e))?;
    }
    Ok(())
}

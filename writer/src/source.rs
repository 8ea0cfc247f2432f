//! Where the memory to capture comes from: an ELF core file, or /dev/mem (or
//! a file standing in for physical memory) with the ranges given.
//!
//! Memory is read one window at a time so that what the capture holds stays
//! bounded whatever the size of the source: a window is mapped, compressed and
//! unmapped before the next one is mapped.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use kjump_image_format::{MemoryMap, Metadata, Pfn, PhysRange, PAGE_SIZE};
use kjump_sys::physmem::{map_memory, MemoryView};

use crate::elf::{self, ElfCore, ElfError, LoadSegment};

/// A source that cannot be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Opening or inspecting the source failed.
    #[error("opening source {path}")]
    Open {
        /// The source.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The ELF core is unusable.
    #[error("source {path} is not a usable ELF core")]
    Elf {
        /// The source.
        path: PathBuf,
        /// The cause.
        #[source]
        source: ElfError,
    },
    /// A raw source was given without ranges.
    #[error("source {path} is not an ELF core: give the physical ranges to read with --ranges or --memmap")]
    NeedRanges {
        /// The source.
        path: PathBuf,
    },
    /// A range lies beyond the end of a regular file standing in for memory.
    #[error("range {range} lies beyond the end of {path} ({size:#x} bytes)")]
    RangeBeyondFile {
        /// The source.
        path: PathBuf,
        /// The range.
        range: PhysRange,
        /// Length of the file.
        size: u64,
    },
    /// Reading memory failed.
    #[error("reading {len:#x} bytes of {path} at file offset {offset:#x} (physical {phys:#x})")]
    Read {
        /// The source.
        path: PathBuf,
        /// File offset.
        offset: u64,
        /// Physical address.
        phys: u64,
        /// Bytes asked for.
        len: usize,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// An open memory source.
#[derive(Debug)]
pub struct MemorySource {
    path: PathBuf,
    file: File,
    /// Where each piece of physical memory is in the file: an ELF core's
    /// PT_LOADs, overlaps cut away, or the ranges of a raw source.
    segments: Vec<LoadSegment>,
    map: MemoryMap,
    notes: Option<Vec<u8>>,
    use_mmap: AtomicBool,
}

/// The bytes of one window: whole pages covering a run of frames.
pub enum Window {
    /// Mapped straight from the source.
    Mapped(MemoryView),
    /// Read or assembled into memory (partial pages, zero tails, no mmap).
    Owned(Vec<u8>),
}

impl Window {
    /// The window's pages, back to back.
    pub fn pages(&self) -> &[u8] {
        match self {
            Window::Mapped(m) => m,
            Window::Owned(v) => v,
        }
    }
}

fn is_elf(file: &File) -> bool {
    let mut magic = [0u8; 4];
    file.read_exact_at(&mut magic, 0).is_ok() && magic == *b"\x7fELF"
}

impl MemorySource {
    /// Opens `path`. With `ranges`, the file is physical memory (offset =
    /// address), like /dev/mem; without, it must be an ELF core.
    pub fn open(path: &Path, ranges: Option<MemoryMap>) -> Result<Self, SourceError> {
        let open_err = |source| SourceError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        let (segments, map, notes) = match ranges {
            Some(map) => (raw_segments(path, &meta, &map)?, map, None),
            None if is_elf(&file) => {
                let (segments, core) = core_segments(path, &file, meta.len())?;
                (segments, core.map, Some(core.notes))
            }
            None => {
                return Err(SourceError::NeedRanges {
                    path: path.to_path_buf(),
                })
            }
        };
        Ok(MemorySource {
            path: path.to_path_buf(),
            file,
            segments,
            map,
            notes,
            use_mmap: AtomicBool::new(true),
        })
    }

    /// The physical ranges this source holds.
    pub fn map(&self) -> &MemoryMap {
        &self.map
    }

    /// Metadata the source itself provides: the ranges, and for ELF cores
    /// the notes with the kernel identity found in VMCOREINFO.
    pub fn metadata(&self) -> Metadata {
        let mut m = Metadata {
            ranges: self.map.clone(),
            source: Some(self.path.display().to_string()),
            ..Metadata::default()
        };
        if let Some(notes) = &self.notes {
            if let Some(info) = elf::vmcoreinfo(notes) {
                m.kernel_release = elf::vmcoreinfo_value(info, "OSRELEASE");
                m.build_id = elf::vmcoreinfo_value(info, "BUILD-ID");
                m.vmcoreinfo = Some(info.to_vec());
            }
            if !notes.is_empty() {
                m.elf_notes = Some(notes.clone());
            }
        }
        m
    }

    /// Reads the frames `[first, first + pages)` of range `range_index` as
    /// whole pages. Bytes of those frames outside the range, or past what the
    /// file holds, read as zero.
    pub fn window(
        &self,
        range_index: usize,
        first: Pfn,
        pages: usize,
    ) -> Result<Window, SourceError> {
        let seg = self.segments[range_index];
        let win_start = first.addr().0;
        let win_len = pages * PAGE_SIZE;
        let backed_start = seg.range.start().0.max(win_start);
        let backed_end = (seg.range.start().0 + seg.file_len).min(win_start + win_len as u64);
        let exact = backed_start == win_start && backed_end == win_start + win_len as u64;
        let file_off = |phys: u64| seg.file_offset + (phys - seg.range.start().0);
        if exact && self.use_mmap.load(Ordering::Relaxed) {
            match self.map_bytes(file_off(win_start), win_len) {
                Ok(m) => return Ok(Window::Mapped(m)),
                Err(e) => {
                    log::warn!(
                        "{}: mmap failed ({e}), reading with pread instead",
                        self.path.display()
                    );
                    self.use_mmap.store(false, Ordering::Relaxed);
                }
            }
        }
        let mut buf = vec![0u8; win_len];
        if backed_end > backed_start {
            let at = (backed_start - win_start) as usize;
            let len = (backed_end - backed_start) as usize;
            self.read_into(&mut buf[at..at + len], file_off(backed_start), backed_start)?;
        }
        Ok(Window::Owned(buf))
    }

    /// Fills `buf` with the bytes at physical `addr`, one positional read
    /// per segment they lie in (bytes past what the file holds read as
    /// zero), for the readers of kernel structures in a core. Returns the
    /// bytes filled: fewer when the next byte lies in no range of this
    /// source.
    pub fn read_phys(&self, addr: u64, buf: &mut [u8]) -> Result<usize, SourceError> {
        elf::read_phys(&self.file, &self.segments, addr, buf).map_err(|e| SourceError::Read {
            path: self.path.clone(),
            offset: e.offset,
            phys: e.phys,
            len: e.len,
            source: e.source,
        })
    }

    fn map_bytes(&self, offset: u64, len: usize) -> std::io::Result<MemoryView> {
        // The bytes stand still while mapped: the RAM of a kernel that is
        // not running, or a dump that nothing rewrites during the capture
        // (see map_memory).
        map_memory(&self.file, offset, len)
    }

    fn read_into(&self, buf: &mut [u8], offset: u64, phys: u64) -> Result<(), SourceError> {
        if self.use_mmap.load(Ordering::Relaxed) {
            if let Ok(m) = self.map_bytes(offset, buf.len()) {
                buf.copy_from_slice(&m);
                return Ok(());
            }
        }
        self.file
            .read_exact_at(buf, offset)
            .map_err(|source| SourceError::Read {
                path: self.path.clone(),
                offset,
                phys,
                len: buf.len(),
                source,
            })
    }
}

/// Segments of physical memory read at their own address (offset =
/// address), as /dev/mem holds them; a regular file standing in for it
/// must hold every range.
fn raw_segments(
    path: &Path,
    meta: &std::fs::Metadata,
    map: &MemoryMap,
) -> Result<Vec<LoadSegment>, SourceError> {
    if meta.is_file() {
        if let Some(r) = map.ranges().iter().find(|r| r.end().0 > meta.len()) {
            return Err(SourceError::RangeBeyondFile {
                path: path.to_path_buf(),
                range: *r,
                size: meta.len(),
            });
        }
    }
    Ok(map
        .ranges()
        .iter()
        .enumerate()
        .map(|(index, r)| LoadSegment {
            index,
            range: *r,
            file_offset: r.start().0,
            file_len: r.len(),
        })
        .collect())
}

/// The segments of an ELF core, and the core as parsed.
fn core_segments(
    path: &Path,
    file: &File,
    size: u64,
) -> Result<(Vec<LoadSegment>, ElfCore), SourceError> {
    let core = read_core(file, size).map_err(|source| SourceError::Elf {
        path: path.to_path_buf(),
        source,
    })?;
    for o in &core.overlaps {
        // A kdump core's kernel text mapping, usually.
        log::info!(
            "{}: PT_LOAD {} covers {} of PT_LOAD {} with the same bytes: read once",
            path.display(),
            o.other,
            o.range,
            o.kept
        );
    }
    Ok((core.segments.clone(), core))
}

fn read_core(file: &File, size: u64) -> Result<ElfCore, ElfError> {
    elf::parse(size, |off, len| {
        let mut b = vec![0u8; len];
        file.read_exact_at(&mut b, off)?;
        Ok(b)
    })
}

//! Seeded, reproducible synthetic memory dumps for kjump's tests and benchmark.
//!
//! A dump is an ELF64 little-endian x86-64 core file (`ET_CORE`) shaped like
//! the kernel's `/proc/vmcore` or QEMU's `dump-guest-memory` output:
//!
//! | part | where |
//! |---|---|
//! | ELF header | offset 0, 64 bytes |
//! | program headers | `e_phoff` = 64: one `PT_NOTE`, the [`KernelText`] `PT_LOAD` if asked for, then one `PT_LOAD` per segment in spec order |
//! | notes | right after the program headers: one `CORE`/`NT_PRSTATUS` per CPU, then `VMCOREINFO` |
//! | segment data | in program header order, per [`ElfStyle`]: page-congruent offsets (vmcore) or packed (QEMU) |
//!
//! Each `PT_LOAD` has `p_paddr` = the segment's physical address and holds
//! `filesz` bytes in the file; the `memsz - filesz` bytes after them are
//! implied zero and absent from the file. Physical addresses between
//! segments are holes. Every byte, padding included, is really written: the
//! file is never sparse, so reading it costs what reading a real dump costs.
//!
//! Page contents follow a [`PageMix`] (zero, kernel-like, text, random pages
//! in runs) and depend only on the seed and the page's physical frame, so the
//! same [`DumpSpec`] always gives the same bytes, whatever the thread count.
//! With the default mix, `lz4 -1` compresses a dump about 3.3x and `zstd -1`
//! about 4.0x, close to the figures in `shared/PERFORMANCE.md` (kernel-like
//! pages alone about 3.3x with lz4, text pages about 2x, random pages 1x).
//!
//! ```no_run
//! use kjump_dumpgen::{write_dump, DumpSpec, Layout};
//!
//! let spec = DumpSpec::from_layout(Layout::Qemu, 64 << 20, 7)?;
//! let info = write_dump(&spec, std::path::Path::new("/var/tmp/small.elf"))?;
//! // Below 3 GiB a QEMU guest has no RAM above 4 GiB: low, main, VGA, BIOS.
//! assert_eq!(info.segments.len(), 4);
//! # Ok::<(), kjump_dumpgen::DumpgenError>(())
//! ```

#![forbid(unsafe_code)]

pub mod elf;
mod layout;
mod mix;
mod notes;
mod page;
mod rng;
mod text;
mod write;

use std::path::PathBuf;

pub use layout::Layout;
pub use mix::{PageCounts, PageKind, PageMix};
pub use notes::{note, NotesSpec, NT_PRSTATUS, NT_VMCOREINFO, PRSTATUS_SIZE};
pub use rng::Rng;
pub use write::{write_dump, write_dump_to};

/// The page size of the dumped machine, and the granularity of page kinds.
pub const PAGE_SIZE: usize = 4096;

/// Fills `out` (one page) with what a dump of seed `seed` holds at frame
/// `pfn` for a page of `kind` that starts its run: the same bytes for the
/// same arguments, on every machine.
pub fn fill_page(kind: PageKind, seed: u64, pfn: u64, out: &mut [u8]) {
    assert_eq!(out.len(), PAGE_SIZE, "fill_page fills one page");
    let ctx = page::PageCtx {
        seed,
        pfn,
        run_pfn: pfn,
    };
    page::fill_page(kind, ctx, out);
}

/// One range of physical memory, one `PT_LOAD` program header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSpec {
    /// Physical address of the first byte (`p_paddr`); need not be aligned.
    pub paddr: u64,
    /// Bytes of physical memory the segment describes (`p_memsz`).
    pub memsz: u64,
    /// Bytes present in the file (`p_filesz`, at most `memsz`); the rest of
    /// the segment reads as zero.
    pub filesz: u64,
}

impl SegmentSpec {
    /// A segment whose bytes are all in the file.
    pub fn new(paddr: u64, memsz: u64) -> Self {
        Self {
            paddr,
            memsz,
            filesz: memsz,
        }
    }

    /// The same segment with only its first `filesz` bytes in the file.
    pub fn with_filesz(self, filesz: u64) -> Self {
        Self { filesz, ..self }
    }
}

/// Where x86_64 maps the kernel image (`__START_KERNEL_map`).
pub const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;

/// A `PT_LOAD` for the kernel text mapping, as every x86_64 kdump core has
/// one (kexec-tools and the kernel's `crash_prepare_elf64_headers` write
/// it): `p_vaddr` in the kernel's text map, and physical bytes that lie
/// inside a RAM segment too, so two `PT_LOAD`s cover them. Its file bytes
/// are a copy of that segment's, or differ in one byte on request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelText {
    /// Physical address of the first byte.
    pub paddr: u64,
    /// Bytes (`p_filesz` = `p_memsz`); all inside one segment's file part.
    pub len: u64,
    /// Offset in this segment of a byte whose bits are flipped, so that
    /// the two copies differ there; `None` for a faithful copy.
    pub differ_at: Option<u64>,
}

impl KernelText {
    /// `len` bytes at 16 MiB, where an x86_64 kernel runs without KASLR.
    pub fn at_16m(len: u64) -> Self {
        Self {
            paddr: 16 << 20,
            len,
            differ_at: None,
        }
    }

    /// The same segment with its byte at `offset` differing from the RAM's.
    pub fn differing_at(self, offset: u64) -> Self {
        Self {
            differ_at: Some(offset),
            ..self
        }
    }

    /// `p_vaddr`: the text map's address of `paddr` (a `phys_base` of 0).
    pub fn vaddr(&self) -> u64 {
        START_KERNEL_MAP.wrapping_add(self.paddr)
    }
}

/// How segment data is placed in the file and what the headers say about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ElfStyle {
    /// Like the kernel's `/proc/vmcore`: each segment's data starts at the
    /// first offset after the previous data with `p_offset % 4096 ==
    /// p_paddr % 4096` (so a dump reader can map pages at page-aligned file
    /// offsets), `p_vaddr` is the direct-map address `0xffff888000000000 +
    /// p_paddr`, `p_flags` RWX, `p_align` 4096.
    #[default]
    Vmcore,
    /// Like QEMU's `dump-guest-memory`: data packed right after the notes
    /// and after each other, offsets unaligned, `p_vaddr` 0, `p_flags` 0,
    /// `p_align` 0.
    Packed,
}

/// Everything that determines a dump's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpSpec {
    /// Seed of all randomness; the same spec always gives the same file.
    pub seed: u64,
    /// Physical memory ranges, sorted by `paddr` and not overlapping.
    pub segments: Vec<SegmentSpec>,
    /// Content of the notes.
    pub notes: NotesSpec,
    /// Shares of the page kinds.
    pub mix: PageMix,
    /// Placement of data in the file.
    pub style: ElfStyle,
    /// A kernel text `PT_LOAD` overlapping a segment, as in kdump cores.
    pub kernel_text: Option<KernelText>,
}

impl DumpSpec {
    /// A spec with default notes, mix and style.
    pub fn new(seed: u64, segments: Vec<SegmentSpec>) -> Self {
        Self {
            seed,
            segments,
            notes: NotesSpec::default(),
            mix: PageMix::default(),
            style: ElfStyle::default(),
            kernel_text: None,
        }
    }

    /// A spec for one of the preset layouts describing `size` bytes of RAM,
    /// with that layout's style.
    pub fn from_layout(layout: Layout, size: u64, seed: u64) -> Result<Self> {
        Ok(Self {
            style: layout.style(),
            ..Self::new(seed, layout.segments(size)?)
        })
    }

    /// The same spec with another page mix.
    pub fn with_mix(self, mix: PageMix) -> Self {
        Self { mix, ..self }
    }

    /// The same spec with a kernel text `PT_LOAD`.
    pub fn with_kernel_text(self, text: KernelText) -> Self {
        Self {
            kernel_text: Some(text),
            ..self
        }
    }

    /// Bytes of segment data in the file (sum of `filesz`, the kernel
    /// text segment's copy not included).
    pub fn total_filesz(&self) -> u64 {
        self.segments.iter().map(|s| s.filesz).sum()
    }

    /// Index of the segment whose file part holds all of `text`.
    pub(crate) fn text_home(&self, text: &KernelText) -> Option<usize> {
        let end = text.paddr.checked_add(text.len)?;
        self.segments
            .iter()
            .position(|s| s.paddr <= text.paddr && end <= s.paddr.saturating_add(s.filesz))
    }

    /// Checks the invariants the writer relies on.
    pub fn validate(&self) -> Result<()> {
        self.mix.validate()?;
        self.notes.validate()?;
        // One program header goes to the notes.
        let count = self.segments.len() + usize::from(self.kernel_text.is_some());
        if count >= elf::MAX_PHNUM {
            return Err(DumpgenError::TooManySegments { count });
        }
        let mut prev_end: Option<u64> = None;
        for (index, s) in self.segments.iter().enumerate() {
            if s.filesz > s.memsz {
                return Err(DumpgenError::FileszExceedsMemsz {
                    index,
                    filesz: s.filesz,
                    memsz: s.memsz,
                });
            }
            let end = s
                .paddr
                .checked_add(s.memsz)
                .ok_or(DumpgenError::SegmentOverflow {
                    index,
                    paddr: s.paddr,
                    memsz: s.memsz,
                })?;
            if let Some(prev_end) = prev_end.filter(|e| s.paddr < *e) {
                return Err(DumpgenError::SegmentsOverlap {
                    index,
                    paddr: s.paddr,
                    prev_end,
                });
            }
            prev_end = Some(end);
        }
        if let Some(text) = &self.kernel_text {
            if text.len == 0 || self.text_home(text).is_none() {
                return Err(DumpgenError::KernelTextOutsideRam {
                    paddr: text.paddr,
                    len: text.len,
                });
            }
            if let Some(offset) = text.differ_at.filter(|o| *o >= text.len) {
                return Err(DumpgenError::KernelTextDifferOutside {
                    offset,
                    len: text.len,
                });
            }
        }
        Ok(())
    }
}

/// Where one segment ended up, and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// `p_paddr`.
    pub paddr: u64,
    /// `p_vaddr`.
    pub vaddr: u64,
    /// `p_memsz`.
    pub memsz: u64,
    /// `p_filesz`.
    pub filesz: u64,
    /// `p_offset`: file offset of the segment's first byte.
    pub offset: u64,
    /// Pages of each kind among those the file part of the segment touches.
    pub pages: PageCounts,
}

/// What a written dump contains, for tests to compare a capture against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpInfo {
    /// Length of the file in bytes (the end of the last segment's data).
    pub file_size: u64,
    /// File offset of the note segment.
    pub notes_offset: u64,
    /// The whole note segment, byte for byte.
    pub notes: Vec<u8>,
    /// `OSRELEASE=` value.
    pub os_release: String,
    /// `BUILD-ID=` value: 40 lowercase hex digits.
    pub build_id: String,
    /// The full VMCOREINFO text.
    pub vmcoreinfo: String,
    /// One entry per segment of the spec, in program header order.
    pub segments: Vec<SegmentInfo>,
    /// The kernel text `PT_LOAD` (program header 1, its data first in the
    /// file), if the spec has one. Its `pages` are empty: they are counted
    /// in the segment that holds the same physical bytes.
    pub kernel_text: Option<SegmentInfo>,
    /// Page counts over all segments.
    pub pages: PageCounts,
}

/// Errors of dump generation.
#[derive(Debug, thiserror::Error)]
pub enum DumpgenError {
    /// The page mix percentages do not add up to 100.
    #[error("page mix {mix:?} adds up to {sum}%, not 100%")]
    MixSum {
        /// The offending mix.
        mix: PageMix,
        /// What it adds up to.
        sum: u32,
    },
    /// The release string cannot stand in a VMCOREINFO line.
    #[error("os release {release:?} must be non-empty printable ASCII without spaces")]
    InvalidRelease {
        /// The offending string.
        release: String,
    },
    /// A dump needs at least one CPU note.
    #[error("notes need at least one cpu")]
    NoCpus,
    /// More segments than `e_phnum` can count.
    #[error(
        "{count} segments and the note do not fit in e_phnum (at most {})",
        elf::MAX_PHNUM
    )]
    TooManySegments {
        /// Number of segments asked for.
        count: usize,
    },
    /// A segment has more bytes in the file than in memory.
    #[error("segment {index}: filesz {filesz:#x} exceeds memsz {memsz:#x}")]
    FileszExceedsMemsz {
        /// Index of the segment in the spec.
        index: usize,
        /// Its `filesz`.
        filesz: u64,
        /// Its `memsz`.
        memsz: u64,
    },
    /// A segment runs past the end of the 64-bit address space.
    #[error("segment {index} at {paddr:#x} with memsz {memsz:#x} wraps around")]
    SegmentOverflow {
        /// Index of the segment in the spec.
        index: usize,
        /// Its physical address.
        paddr: u64,
        /// Its size.
        memsz: u64,
    },
    /// Segments are unsorted or overlap.
    #[error("segment {index} at {paddr:#x} starts before the previous one ends at {prev_end:#x}")]
    SegmentsOverlap {
        /// Index of the later segment.
        index: usize,
        /// Its physical address.
        paddr: u64,
        /// End of the segment before it.
        prev_end: u64,
    },
    /// The kernel text segment is empty or not inside one segment's file part.
    #[error("kernel text segment at {paddr:#x} with length {len:#x} does not lie inside the file part of one segment")]
    KernelTextOutsideRam {
        /// Its physical address.
        paddr: u64,
        /// Its length.
        len: u64,
    },
    /// The byte asked to differ lies outside the kernel text segment.
    #[error("kernel text byte {offset:#x} to differ lies outside its {len:#x} bytes")]
    KernelTextDifferOutside {
        /// Offset asked for.
        offset: u64,
        /// Length of the segment.
        len: u64,
    },
    /// A layout cannot describe this little memory.
    #[error("layout {layout} needs at least {min:#x} bytes, got {size:#x}")]
    SizeTooSmall {
        /// The layout.
        layout: Layout,
        /// The size asked for.
        size: u64,
        /// The least it supports.
        min: u64,
    },
    /// An unknown layout name.
    #[error("unknown layout {name:?} (expected qemu, holes, single or unaligned)")]
    UnknownLayout {
        /// The name given.
        name: String,
    },
    /// The dump file could not be created.
    #[error("cannot create dump file {}", path.display())]
    Create {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing to a caller-supplied writer failed.
    #[error("cannot write dump at offset {offset:#x}")]
    Write {
        /// Offset of the first byte of the failed write.
        offset: u64,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing the dump file failed.
    #[error("cannot write dump file {} at offset {offset:#x}", path.display())]
    WriteFile {
        /// The file.
        path: PathBuf,
        /// Offset of the first byte of the failed write.
        offset: u64,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The writer thread panicked (a bug, or a panicking `Write` impl).
    #[error("dump writer thread panicked")]
    WriterPanicked,
}

/// Result of this crate's operations.
pub type Result<T, E = DumpgenError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_rejects_bad_segments() {
        let spec = |segs: Vec<SegmentSpec>| DumpSpec::new(1, segs).validate();
        assert!(spec(vec![SegmentSpec::new(0, 10), SegmentSpec::new(10, 5)]).is_ok());
        assert!(matches!(
            spec(vec![SegmentSpec::new(0, 10).with_filesz(11)]),
            Err(DumpgenError::FileszExceedsMemsz { index: 0, .. })
        ));
        assert!(matches!(
            spec(vec![SegmentSpec::new(u64::MAX, 2)]),
            Err(DumpgenError::SegmentOverflow { index: 0, .. })
        ));
        assert!(matches!(
            spec(vec![SegmentSpec::new(0, 10), SegmentSpec::new(9, 5)]),
            Err(DumpgenError::SegmentsOverlap {
                index: 1,
                prev_end: 10,
                ..
            })
        ));
        assert!(matches!(
            spec(vec![SegmentSpec::new(100, 10), SegmentSpec::new(0, 5)]),
            Err(DumpgenError::SegmentsOverlap { index: 1, .. })
        ));
        let too_many = vec![SegmentSpec::new(0, 0); elf::MAX_PHNUM];
        assert!(matches!(
            spec(too_many),
            Err(DumpgenError::TooManySegments { .. })
        ));
        let just_fits = vec![SegmentSpec::new(0, 0); elf::MAX_PHNUM - 1];
        assert!(matches!(
            DumpSpec::new(1, just_fits)
                .with_kernel_text(KernelText::at_16m(1))
                .validate(),
            Err(DumpgenError::TooManySegments { .. })
        ));
    }

    #[test]
    fn validate_rejects_bad_kernel_text() {
        let ram = vec![SegmentSpec::new(1 << 20, 63 << 20).with_filesz(31 << 20)];
        let spec = |t: KernelText| DumpSpec::new(1, ram.clone()).with_kernel_text(t).validate();
        assert!(spec(KernelText::at_16m(16 << 20)).is_ok());
        // Past the segment's file part, though inside its memory.
        assert!(matches!(
            spec(KernelText::at_16m((16 << 20) + 1)),
            Err(DumpgenError::KernelTextOutsideRam { .. })
        ));
        assert!(matches!(
            spec(KernelText::at_16m(0)),
            Err(DumpgenError::KernelTextOutsideRam { len: 0, .. })
        ));
        assert!(matches!(
            spec(KernelText::at_16m(4096).differing_at(4096)),
            Err(DumpgenError::KernelTextDifferOutside { offset: 4096, .. })
        ));
    }
}

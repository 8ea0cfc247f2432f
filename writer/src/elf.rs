//! ELF64 core files: /proc/vmcore, QEMU's `dump-guest-memory`, any core with
//! physical addresses in its PT_LOAD headers.
//!
//! Everything here comes from an untrusted file: every offset and size is
//! checked against the file's length before it is used.
//!
//! PT_LOAD segments may cover the same physical bytes: a kdump core on x86_64
//! (/proc/vmcore and copies of it) has a PT_LOAD for the kernel text mapping
//! (`p_vaddr` 0xffffffff8...) whose physical bytes also lie in a "System RAM"
//! PT_LOAD. [`parse`] compares the shared bytes once and keeps each physical
//! byte in exactly one segment; bytes that differ refuse the core, since
//! kjump could not tell which of them the machine held.

mod overlap;

use kjump_image_format::{MemoryMap, PhysAddr, PhysRange};
use kjump_sys::ELF_MACHINE;

use kjump_image_format::le::{u16_at, u32_at, u64_at};
use overlap::merge_overlaps;

/// Largest total of PT_NOTE contents kept.
pub const MAX_NOTES_LEN: u64 = 16 << 20;

const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const ET_CORE: u16 = 4;
const PN_XNUM: u16 = 0xffff;

/// Why a file is not a usable ELF core.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// Not ELF at all.
    #[error("not an ELF file (magic {found:02x?})")]
    NotElf {
        /// The first bytes.
        found: Vec<u8>,
    },
    /// An ELF header field has a value kjump does not take.
    #[error("ELF header field {field} is {value:#x}: {reason}")]
    Header {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// What kjump expects.
        reason: &'static str,
    },
    /// A structure lies beyond the end of the file.
    #[error("{what} at file offset {offset:#x} with size {size:#x} runs past the end of the file ({file_size:#x} bytes)")]
    OutOfFile {
        /// The structure.
        what: String,
        /// Its file offset.
        offset: u64,
        /// Its size.
        size: u64,
        /// Length of the file.
        file_size: u64,
    },
    /// A PT_LOAD segment is inconsistent.
    #[error("PT_LOAD {index} (paddr {paddr:#x}): {reason}")]
    Segment {
        /// Program header index.
        index: usize,
        /// Its physical address.
        paddr: u64,
        /// What is wrong.
        reason: String,
    },
    /// Two PT_LOAD segments cover the same physical bytes, and those bytes
    /// differ.
    #[error("PT_LOAD {kept} (paddr {kept_range}) and PT_LOAD {other} (paddr {other_range}) overlap in physical memory but differ, first at physical {at:#x}")]
    OverlapDiffers {
        /// Program header index of the segment that comes first by address.
        kept: usize,
        /// Its physical range.
        kept_range: PhysRange,
        /// Program header index of the other segment.
        other: usize,
        /// Its physical range.
        other_range: PhysRange,
        /// The first physical address whose bytes differ.
        at: u64,
    },
    /// Reading a segment's bytes to compare an overlap failed.
    #[error("reading {len:#x} bytes of PT_LOAD {index} at file offset {offset:#x} (physical {phys:#x}) to compare an overlap")]
    OverlapRead {
        /// Program header index.
        index: usize,
        /// File offset.
        offset: u64,
        /// Physical address of the first byte.
        phys: u64,
        /// Bytes asked for.
        len: u64,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The merged segments do not form a memory map (a bug in kjump: the
    /// merge makes them disjoint and sorted).
    #[error("merged PT_LOAD segments are not a memory map: {0}")]
    Map(kjump_image_format::RangeError),
    /// The notes exceed [`MAX_NOTES_LEN`].
    #[error("PT_NOTE contents total {total} bytes, more than the {MAX_NOTES_LEN} kjump keeps")]
    NotesTooLarge {
        /// Total bytes of notes.
        total: u64,
    },
    /// No PT_LOAD with memory.
    #[error("the core has no PT_LOAD segment with memory")]
    NoMemory,
}

/// One PT_LOAD, or the part of one that no other covers: physical bytes
/// `range`, of which the first `file_len` are at `file_offset` in the file and
/// the rest are zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadSegment {
    /// Program header index.
    pub index: usize,
    /// Physical bytes covered (`p_paddr`, `p_memsz`, less any part read
    /// from another segment).
    pub range: PhysRange,
    /// `p_offset` of `range`'s first byte.
    pub file_offset: u64,
    /// Bytes of `range` in the file (`p_filesz`, less the same).
    pub file_len: u64,
}

/// A positional read of a core's file that failed, and where.
#[derive(Debug)]
pub struct SegmentReadError {
    /// Physical address of the first byte asked of the file.
    pub phys: u64,
    /// Its offset in the file.
    pub offset: u64,
    /// Bytes asked.
    pub len: usize,
    /// The cause.
    pub source: std::io::Error,
}

/// Fills `buf` with the bytes at physical `addr` of `segments` (sorted and
/// disjoint) of `file`: one positional read per segment the bytes lie in,
/// zeros past a segment's file bytes. Returns the bytes filled: fewer than
/// `buf` holds when the next byte lies in no segment.
pub fn read_phys<F: std::os::unix::fs::FileExt + ?Sized>(
    file: &F,
    segments: &[LoadSegment],
    addr: u64,
    buf: &mut [u8],
) -> Result<usize, SegmentReadError> {
    let mut done = 0usize;
    while done < buf.len() {
        let at = addr + done as u64;
        let i = segments.partition_point(|s| s.range.start().0 <= at);
        let Some(seg) = i
            .checked_sub(1)
            .map(|i| &segments[i])
            .filter(|s| at < s.range.end().0)
        else {
            return Ok(done);
        };
        let rel = at - seg.range.start().0;
        let n = ((seg.range.end().0 - at) as usize).min(buf.len() - done);
        let part = &mut buf[done..done + n];
        let in_file = seg.file_len.saturating_sub(rel).min(n as u64) as usize;
        let offset = seg.file_offset + rel;
        file.read_exact_at(&mut part[..in_file], offset)
            .map_err(|source| SegmentReadError {
                phys: at,
                offset,
                len: in_file,
                source,
            })?;
        part[in_file..].fill(0);
        done += n;
    }
    Ok(done)
}

impl LoadSegment {
    /// Physical address one past the last byte backed by the file.
    fn file_end(&self) -> u64 {
        self.range.start().0 + self.file_len
    }

    /// The file offset of physical address `phys` (below [`Self::file_end`]).
    fn offset_of(&self, phys: u64) -> u64 {
        self.file_offset + (phys - self.range.start().0)
    }
}

/// Physical bytes two PT_LOAD segments both cover, found equal: they are
/// read from `kept` only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overlap {
    /// Program header index of the segment the bytes are read from.
    pub kept: usize,
    /// Program header index of the segment whose copy was compared and left.
    pub other: usize,
    /// The shared bytes.
    pub range: PhysRange,
}

/// What kjump takes from an ELF core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElfCore {
    /// PT_LOAD segments sorted by physical address and disjoint: a segment
    /// that others wholly cover is absent, one partly covered keeps only
    /// the rest, so each physical byte is read from exactly one segment.
    pub segments: Vec<LoadSegment>,
    /// Their ranges as a memory map, one range per segment.
    pub map: MemoryMap,
    /// Bytes that several PT_LOAD segments cover, with equal contents.
    pub overlaps: Vec<Overlap>,
    /// All PT_NOTE contents, concatenated in header order.
    pub notes: Vec<u8>,
}

fn in_file(
    what: impl Into<String>,
    offset: u64,
    size: u64,
    file_size: u64,
) -> Result<(), ElfError> {
    match offset.checked_add(size) {
        Some(end) if end <= file_size => Ok(()),
        _ => Err(ElfError::OutOfFile {
            what: what.into(),
            offset,
            size,
            file_size,
        }),
    }
}

/// Checks the ELF header and returns `(e_phoff, e_phnum)`.
fn parse_header(h: &[u8]) -> Result<(u64, u16), ElfError> {
    if h.len() < EHDR_SIZE || h[..4] != *b"\x7fELF" {
        return Err(ElfError::NotElf {
            found: h[..h.len().min(4)].to_vec(),
        });
    }
    let bad = |field, value: u64, reason| {
        Err(ElfError::Header {
            field,
            value,
            reason,
        })
    };
    if h[4] != 2 {
        return bad("EI_CLASS", h[4].into(), "kjump reads 64-bit cores only");
    }
    if h[5] != 1 {
        return bad(
            "EI_DATA",
            h[5].into(),
            "kjump reads little-endian cores only",
        );
    }
    if u16_at(h, 16) != ET_CORE {
        return bad("e_type", u16_at(h, 16).into(), "expected ET_CORE (4)");
    }
    if u16_at(h, 18) != ELF_MACHINE.0 {
        return bad(
            "e_machine",
            u16_at(h, 18).into(),
            "the core is for another architecture",
        );
    }
    let phnum = u16_at(h, 56);
    if phnum == PN_XNUM {
        return bad(
            "e_phnum",
            phnum.into(),
            "extended program header counts are not supported",
        );
    }
    if phnum > 0 && usize::from(u16_at(h, 54)) != PHDR_SIZE {
        return bad("e_phentsize", u16_at(h, 54).into(), "expected 56");
    }
    Ok((u64_at(h, 32), phnum))
}

/// Parses a core from its header bytes; `read` fetches `len` bytes at an
/// offset (program headers, notes, and the bytes of overlapping PT_LOAD
/// segments, a bounded piece at a time).
pub fn parse<F>(file_size: u64, mut read: F) -> Result<ElfCore, ElfError>
where
    F: FnMut(u64, usize) -> std::io::Result<Vec<u8>>,
{
    let io = |what: &str, offset: u64, size: u64| ElfError::OutOfFile {
        what: what.to_string(),
        offset,
        size,
        file_size,
    };
    in_file("ELF header", 0, EHDR_SIZE as u64, file_size)?;
    let h = read(0, EHDR_SIZE).map_err(|_| io("ELF header", 0, EHDR_SIZE as u64))?;
    let (phoff, phnum) = parse_header(&h)?;
    let ph_len = u64::from(phnum) * PHDR_SIZE as u64;
    in_file("program headers", phoff, ph_len, file_size)?;
    let ph = read(phoff, ph_len as usize).map_err(|_| io("program headers", phoff, ph_len))?;
    let mut segments = Vec::new();
    let mut notes = Vec::new();
    for (index, p) in ph.chunks_exact(PHDR_SIZE).enumerate() {
        let (p_type, off, paddr) = (u32_at(p, 0), u64_at(p, 8), u64_at(p, 24));
        let (filesz, memsz) = (u64_at(p, 32), u64_at(p, 40));
        match p_type {
            PT_NOTE => {
                in_file(format!("PT_NOTE {index}"), off, filesz, file_size)?;
                let total = notes.len() as u64 + filesz;
                if total > MAX_NOTES_LEN {
                    return Err(ElfError::NotesTooLarge { total });
                }
                let n = read(off, filesz as usize).map_err(|_| io("PT_NOTE", off, filesz))?;
                notes.extend_from_slice(&n);
            }
            PT_LOAD if memsz > 0 => {
                segments.push(load_segment(index, off, paddr, filesz, memsz, file_size)?);
            }
            _ => {}
        }
    }
    if segments.is_empty() {
        return Err(ElfError::NoMemory);
    }
    let (segments, overlaps) = merge_overlaps(segments, &mut read)?;
    let map = MemoryMap::from_sorted(segments.iter().map(|s| s.range).collect())
        .map_err(ElfError::Map)?;
    Ok(ElfCore {
        segments,
        map,
        overlaps,
        notes,
    })
}

fn load_segment(
    index: usize,
    off: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
    file_size: u64,
) -> Result<LoadSegment, ElfError> {
    let seg_err = |reason: String| ElfError::Segment {
        index,
        paddr,
        reason,
    };
    if filesz > memsz {
        return Err(seg_err(format!(
            "p_filesz {filesz:#x} exceeds p_memsz {memsz:#x}"
        )));
    }
    in_file(
        format!("PT_LOAD {index} (paddr {paddr:#x})"),
        off,
        filesz,
        file_size,
    )?;
    let range =
        PhysRange::from_start_len(PhysAddr(paddr), memsz).map_err(|e| seg_err(e.to_string()))?;
    Ok(LoadSegment {
        index,
        range,
        file_offset: off,
        file_len: filesz,
    })
}

/// An ELF note: name, type and descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note<'a> {
    /// Name without its terminating NUL.
    pub name: &'a [u8],
    /// `n_type`.
    pub kind: u32,
    /// The descriptor bytes.
    pub desc: &'a [u8],
}

/// Iterates notes; stops at the first malformed one.
pub fn notes(mut b: &[u8]) -> impl Iterator<Item = Note<'_>> {
    std::iter::from_fn(move || {
        if b.len() < 12 {
            return None;
        }
        let (namesz, descsz) = (u32_at(b, 0) as usize, u32_at(b, 4) as usize);
        let kind = u32_at(b, 8);
        let name_end = 12usize.checked_add(namesz)?;
        let desc_start = name_end.checked_next_multiple_of(4)?;
        let desc_end = desc_start.checked_add(descsz)?;
        let next = desc_end.checked_next_multiple_of(4)?;
        if desc_end > b.len() {
            return None;
        }
        let name = &b[12..name_end];
        let name = name.strip_suffix(&[0]).unwrap_or(name);
        let note = Note {
            name,
            kind,
            desc: &b[desc_start..desc_end],
        };
        b = &b[next.min(b.len())..];
        Some(note)
    })
}

/// The VMCOREINFO text among the notes, if any.
pub fn vmcoreinfo(notes_bytes: &[u8]) -> Option<&[u8]> {
    notes(notes_bytes)
        .find(|n| n.name == b"VMCOREINFO")
        .map(|n| n.desc)
}

/// The value of `KEY=` in VMCOREINFO text.
pub fn vmcoreinfo_value(info: &[u8], key: &str) -> Option<String> {
    let text = String::from_utf8_lossy(info);
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .map(|v| v.trim_end_matches('\0').to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn header(phnum: u16) -> Vec<u8> {
        let mut h = vec![0u8; EHDR_SIZE];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2;
        h[5] = 1;
        h[6] = 1;
        h[16..18].copy_from_slice(&ET_CORE.to_le_bytes());
        h[18..20].copy_from_slice(&ELF_MACHINE.0.to_le_bytes());
        h[32..40].copy_from_slice(&64u64.to_le_bytes());
        h[54..56].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
        h[56..58].copy_from_slice(&phnum.to_le_bytes());
        h
    }

    pub(crate) fn phdr(t: u32, off: u64, paddr: u64, filesz: u64, memsz: u64) -> Vec<u8> {
        let mut p = vec![0u8; PHDR_SIZE];
        p[0..4].copy_from_slice(&t.to_le_bytes());
        p[8..16].copy_from_slice(&off.to_le_bytes());
        p[24..32].copy_from_slice(&paddr.to_le_bytes());
        p[32..40].copy_from_slice(&filesz.to_le_bytes());
        p[40..48].copy_from_slice(&memsz.to_le_bytes());
        p
    }

    pub(crate) fn parse_bytes(b: &[u8]) -> Result<ElfCore, ElfError> {
        parse(b.len() as u64, |off, len| {
            Ok(b[off as usize..off as usize + len].to_vec())
        })
    }

    #[test]
    fn segments_are_sorted_and_notes_kept() {
        let mut f = header(3);
        f.extend(phdr(PT_LOAD, 0x1000, 0x100000, 0x1000, 0x2000));
        f.extend(phdr(PT_NOTE, 232, 0, 8, 8));
        f.extend(phdr(PT_LOAD, 0x2000, 0x1000, 0x1000, 0x1000));
        f.extend([1, 2, 3, 4, 5, 6, 7, 8]);
        f.resize(0x3000, 0);
        let c = parse_bytes(&f).unwrap();
        assert_eq!(c.notes, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(c.segments[0].range.start(), PhysAddr(0x1000));
        assert_eq!(c.segments[1].file_len, 0x1000);
        assert_eq!(c.segments[1].range.len(), 0x2000);
    }

    #[test]
    fn bogus_vmcore_segment_is_refused_with_its_numbers() {
        // kexec-tools' preserve-context elfcorehdr carries p_filesz 0xffffffffffff0000.
        let mut f = header(1);
        f.extend(phdr(
            PT_LOAD,
            0x1000,
            0x100000,
            0xffff_ffff_ffff_0000,
            0xffff_ffff_ffff_0000,
        ));
        f.resize(0x2000, 0);
        let e = parse_bytes(&f).unwrap_err().to_string();
        assert!(
            e.contains("PT_LOAD 0 (paddr 0x100000) at file offset 0x1000"),
            "{e}"
        );
        assert!(
            e.contains("runs past the end of the file (0x2000 bytes)"),
            "{e}"
        );
    }

    #[test]
    fn header_errors_are_specific() {
        let mut h = header(0);
        h[4] = 1;
        assert!(parse_bytes(&h).unwrap_err().to_string().contains("64-bit"));
        let mut h = header(0);
        h[18] = 183;
        assert!(parse_bytes(&h)
            .unwrap_err()
            .to_string()
            .contains("another architecture"));
        assert!(matches!(parse_bytes(&header(0)), Err(ElfError::NoMemory)));
        assert!(matches!(
            parse_bytes(b"\x7fEL"),
            Err(ElfError::OutOfFile { .. })
        ));
        assert!(matches!(
            parse_bytes(&[0u8; 64]),
            Err(ElfError::NotElf { .. })
        ));
    }

    #[test]
    fn vmcoreinfo_is_found() {
        let text = b"OSRELEASE=6.12.0-kjump\nBUILD-ID=abc123\n";
        let mut n = Vec::new();
        n.extend(5u32.to_le_bytes());
        n.extend(4u32.to_le_bytes());
        n.extend(1u32.to_le_bytes());
        n.extend(b"CORE\0\0\0\0");
        n.extend([9, 9, 9, 9]);
        n.extend(11u32.to_le_bytes());
        n.extend((text.len() as u32).to_le_bytes());
        n.extend(0u32.to_le_bytes());
        n.extend(b"VMCOREINFO\0\0");
        n.extend(text);
        n.resize(n.len().next_multiple_of(4), 0);
        let info = vmcoreinfo(&n).unwrap();
        assert_eq!(
            vmcoreinfo_value(info, "OSRELEASE").as_deref(),
            Some("6.12.0-kjump")
        );
        assert_eq!(
            vmcoreinfo_value(info, "BUILD-ID").as_deref(),
            Some("abc123")
        );
        assert_eq!(notes(&n[..20]).count(), 0);
    }
}

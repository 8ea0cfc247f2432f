//! Small kjump images made with the writer library, and the tools to damage
//! them precisely: the byte offset of every field, re-signing (recomputing a
//! structure's CRC and every copy of it) so that a damaged field gets past its
//! checksum to the check behind it, and a one-line signature of each
//! `FormatError` so a test asserts the exact variant and its key fields.

use std::fs;
use std::path::Path;
use std::sync::OnceLock;

use kjump_image_format::layout::metadata_record as rec;
use kjump_image_format::{
    Codec, FormatError, Image, IndexEntry, Layout, MemoryMap, PhysAddr, PhysRange, BLOCK_SIZE,
    CHUNK_HEADER_SIZE, INDEX_ENTRY_SIZE, PAGE_SIZE, SUPERBLOCK_SIZE, TRAILER_SIZE,
};
use kjump_restorer::ScanError;
use kjump_writer::{capture, CaptureOptions, MemorySource, Target};

use crate::common::tempdir::TempDir;

/// Identity of the main test image.
pub const UUID_A: [u8; 16] = *b"corruption-img-A";
/// Identity of its twin: the same memory captured again.
pub const UUID_B: [u8; 16] = *b"corruption-img-B";
const CAPTURE_TIME_NS: u64 = 1_700_000_000_123_456_789;

/// Field offsets of every structure: the format crate's own layout, which
/// its tests hold to the tables of image-format/FORMAT.md.
pub use kjump_image_format::layout::{
    chunk_header as hdr, index_entry as entry, superblock as sb, trailer as trl,
};

// `set_chunk_crc` writes a CRC into a header and its index entry at one
// offset: the format puts both CRC fields at the same place in each.
const _: () = assert!(hdr::PAYLOAD_CRC == entry::PAYLOAD_CRC && hdr::DATA_CRC == entry::DATA_CRC);

pub fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

pub fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn range(start: u64, end: u64) -> PhysRange {
    PhysRange::new(PhysAddr(start), PhysAddr(end)).expect("test range")
}

/// The saved ranges: a page-aligned one, one unaligned at both ends (by 16
/// bytes only, so its random contents stay incompressible and are stored
/// raw), and one of 136 pages.
pub fn ranges() -> Vec<PhysRange> {
    vec![
        range(0x1000, 0x11000),
        range(0x40010, 0x43ff0),
        range(0x100000, 0x188000),
    ]
}

/// The same ranges as `kjump capture --ranges` takes them (inclusive ends).
pub const RANGES_ARG: &str = "0x1000-0x10fff,0x40010-0x43fef,0x100000-0x187fff";

/// Fills `buf` with bytes lz4 cannot fold (xorshift64*, from `seed`).
pub fn random_fill(buf: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for b in buf {
        // xorshift64*: enough to defeat lz4.
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        *b = (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8;
    }
}

fn text_fill(buf: &mut [u8], pfn: u64) {
    let mut text = String::new();
    let mut line = 0;
    while text.len() < buf.len() {
        text.push_str(&format!(
            "pfn {pfn:#x} line {line:03}: kjump keeps this page, lz4 folds it\n"
        ));
        line += 1;
    }
    buf.copy_from_slice(&text.as_bytes()[..buf.len()]);
}

/// Physical memory as a flat file (offset = address). The chunks it makes:
/// 0 lz4 with zero pages, 1 raw (the unaligned range), 2 all zero,
/// 3 lz4 without zero pages, 4 raw with zero pages.
pub fn memory() -> Vec<u8> {
    let mut m = vec![0u8; 0x188000];
    let page = |pfn: u64| pfn as usize * PAGE_SIZE..(pfn as usize + 1) * PAGE_SIZE;
    for pfn in (0x1..0x11).step_by(2) {
        text_fill(&mut m[page(pfn)], pfn);
    }
    random_fill(&mut m[0x40010..0x43ff0], 0x40);
    for pfn in 0x140..0x180 {
        text_fill(&mut m[page(pfn)], pfn);
    }
    for pfn in (0x180..0x188).filter(|p| p % 4 != 3) {
        random_fill(&mut m[page(pfn)], pfn);
    }
    m
}

/// The codec each chunk of [`memory`] is expected to get.
pub const CODECS: [Codec; 5] = [Codec::Lz4, Codec::Raw, Codec::Zero, Codec::Lz4, Codec::Raw];

/// The capture settings of the fixtures: fixed identity and time, windows of
/// one chunk so the pipeline runs many rounds.
pub fn options(uuid: [u8; 16]) -> CaptureOptions {
    CaptureOptions {
        threads: 2,
        window_pages: 64,
        uuid,
        capture_time_ns: CAPTURE_TIME_NS,
        check_worst_case: true,
        progress_line: false,
    }
}

/// Opens the memory file `mem` as a source with [`ranges`] and the metadata
/// the fixtures record.
pub fn source(mem: &Path) -> (MemorySource, kjump_image_format::Metadata) {
    let map = MemoryMap::from_sorted(ranges()).expect("sorted test ranges");
    let src = MemorySource::open(mem, Some(map)).expect("opening the test memory");
    let mut meta = src.metadata();
    meta.source = Some("corruption-test-memory".into());
    meta.kernel_release = Some("6.1.0-kjump-test".into());
    meta.jump_back_entry = Some(0x0123_4000);
    meta.extra = vec![("purpose".into(), "negative tests".into())];
    (src, meta)
}

/// A committed image and what a pristine open made of it.
pub struct Fixture {
    pub bytes: Vec<u8>,
    pub layout: Layout,
    pub index: Vec<IndexEntry>,
}

fn build(uuid: [u8; 16]) -> Fixture {
    let dir = TempDir::new(&format!("corruption-fixture-{}", uuid[15] as char));
    let mem = dir.path("memory");
    fs::write(&mem, memory()).expect("writing the test memory");
    let (src, meta) = source(&mem);
    let img = dir.path("image");
    let target = Target::open(&img).expect("opening the fixture target");
    capture(&src, &target, &meta, &options(uuid)).expect("capturing the fixture");
    let bytes = fs::read(&img).expect("reading the fixture back");
    let image = Image::open(bytes.as_slice()).expect("the fixture opens");
    Fixture {
        layout: image.superblock.layout,
        index: image.index,
        bytes,
    }
}

/// The main test image, built once per test process.
pub fn image_a() -> &'static Fixture {
    static A: OnceLock<Fixture> = OnceLock::new();
    A.get_or_init(|| build(UUID_A))
}

/// The same memory captured again under another uuid.
pub fn image_b() -> &'static Fixture {
    static B: OnceLock<Fixture> = OnceLock::new();
    B.get_or_init(|| build(UUID_B))
}

/// What an image reader is asked: open, then verify every byte.
pub fn open_and_verify(bytes: &[u8]) -> Result<(), FormatError> {
    let image = Image::open(bytes)?;
    match kjump_restorer::verify(bytes, &image, 1, false) {
        Ok(_) => Ok(()),
        Err(ScanError::Image(e)) => Err(e),
        Err(e) => panic!("verification failed for a reason other than the image: {e}"),
    }
}

/// The signature of the error `open_and_verify` gives, or "ok".
pub fn outcome(bytes: &[u8]) -> String {
    match open_and_verify(bytes) {
        Ok(()) => "ok".into(),
        Err(e) => sig(&e),
    }
}

/// Variant and key fields of an error, in one comparable line.
pub fn sig(e: &FormatError) -> String {
    use FormatError as E;
    match e {
        E::Io { what, offset, .. } => format!("Io({what}@{offset})"),
        E::Truncated {
            what,
            offset,
            needed,
            available,
        } => format!("Truncated({what}@{offset} needs {needed} of {available})"),
        E::BadMagic { what, offset, .. } => format!("BadMagic({what}@{offset})"),
        E::ExtentMap { offset, problem } => format!("ExtentMap(@{offset} {problem})"),
        E::WrongArchitecture { found, .. } => format!("WrongArchitecture({found})"),
        E::UnsupportedVersion { major, minor, .. } => {
            format!("UnsupportedVersion({major}.{minor})")
        }
        E::UnknownIncompatFeatures { offset, flags } => {
            format!("UnknownIncompatFeatures(@{offset} {flags:#x})")
        }
        E::ReservedNotZero {
            what,
            offset,
            found,
        } => format!("ReservedNotZero({what}@{offset} {found:#x})"),
        E::PaddingNotZero { what, offset } => format!("PaddingNotZero({what}@{offset})"),
        E::Checksum {
            what,
            offset,
            stored,
            computed,
        } => {
            assert_ne!(stored, computed, "a checksum error with equal sums: {e}");
            format!("Checksum({what}@{offset})")
        }
        E::NotCommitted { state } => format!("NotCommitted({state})"),
        E::InvalidValue {
            what,
            field,
            offset,
            value,
        } => format!("InvalidValue({what}.{field}@{offset} {value:#x})"),
        E::Mismatch {
            what,
            field,
            offset,
            expected,
            found,
        } => format!("Mismatch({what}.{field}@{offset} expected {expected:#x} found {found:#x})"),
        E::OutOfMemory { what, needed, .. } => format!("OutOfMemory({what} {needed})"),
        E::TooLarge {
            what,
            offset,
            value,
            limit,
        } => format!("TooLarge({what}@{offset} {value} > {limit})"),
        E::Metadata { offset, reason } => format!("Metadata(@{offset} {reason})"),
        E::ForeignUuid { what, offset } => format!("ForeignUuid({what}@{offset})"),
        E::Decompress { index, offset, .. } => format!("Decompress(chunk {index}@{offset})"),
        E::OutsideRangeNotZero {
            index,
            offset,
            addr,
            range,
        } => format!("OutsideRangeNotZero(chunk {index}@{offset} page {addr:#x} of {range})"),
        E::KeyRequired => "KeyRequired".into(),
        E::NoResumeRecord => "NoResumeRecord".into(),
        E::WrongKey { offset } => format!("WrongKey(@{offset})"),
        E::KeyKind { sealed_with, given } => format!("KeyKind({sealed_with}, {given})"),
        E::Authentication { what, offset } => format!("Authentication({what}@{offset})"),
        E::Kdf(reason) => format!("Kdf({reason})"),
    }
}

impl Fixture {
    pub fn copy(&self) -> Vec<u8> {
        self.bytes.clone()
    }

    pub fn chunk_at(&self, i: usize) -> usize {
        self.index[i].offset.0 as usize
    }

    pub fn entry_at(&self, i: usize) -> usize {
        self.layout.index_offset as usize + i * INDEX_ENTRY_SIZE
    }

    pub fn trailer_at(&self) -> usize {
        self.layout.trailer_offset as usize
    }

    pub fn meta_at(&self) -> usize {
        self.layout.metadata_offset as usize
    }

    /// `[start, end)` of the zero gaps after the metadata, the chunks and
    /// the trailer.
    pub fn gaps(&self) -> [(&'static str, usize, usize); 3] {
        let l = &self.layout;
        [
            (
                "after the metadata",
                (l.metadata_offset + l.metadata_len) as usize,
                l.data_offset as usize,
            ),
            (
                "after the chunks",
                (l.data_offset + l.data_len) as usize,
                l.index_offset as usize,
            ),
            (
                "after the trailer",
                l.trailer_offset as usize + TRAILER_SIZE,
                l.image_len as usize,
            ),
        ]
    }

    /// Recomputes the superblock CRC.
    pub fn resign_superblock(&self, b: &mut [u8]) {
        let crc = crc32fast::hash(&b[..sb::CRC]);
        put_u32(b, sb::CRC, crc);
    }

    /// Recomputes the trailer CRC, then the superblock's.
    pub fn resign_trailer(&self, b: &mut [u8]) {
        let t = self.trailer_at();
        let crc = crc32fast::hash(&b[t..t + trl::CRC]);
        put_u32(b, t + trl::CRC, crc);
        self.resign_superblock(b);
    }

    /// Recomputes the metadata CRC over `len` bytes where the superblock and
    /// the trailer record it.
    pub fn resign_metadata(&self, b: &mut [u8], len: usize) {
        let m = self.meta_at();
        let crc = crc32fast::hash(&b[m..m + len]);
        put_u32(b, sb::METADATA_CRC, crc);
        put_u32(b, self.trailer_at() + trl::METADATA_CRC, crc);
        self.resign_trailer(b);
    }

    /// Recomputes the index CRC where the superblock and trailer record it.
    pub fn resign_index(&self, b: &mut [u8]) {
        let start = self.layout.index_offset as usize;
        let crc = crc32fast::hash(&b[start..self.trailer_at()]);
        put_u32(b, sb::INDEX_CRC, crc);
        put_u32(b, self.trailer_at() + trl::INDEX_CRC, crc);
        self.resign_trailer(b);
    }

    /// Recomputes chunk `i`'s header CRC.
    pub fn resign_header(&self, b: &mut [u8], i: usize) {
        let h = self.chunk_at(i);
        let crc = crc32fast::hash(&b[h..h + hdr::CRC]);
        put_u32(b, h + hdr::CRC, crc);
    }

    /// Sets a CRC field of chunk `i` (payload or data) in its header and its
    /// index entry alike, and re-signs both.
    pub fn set_chunk_crc(&self, b: &mut [u8], i: usize, field: usize, value: u32) {
        put_u32(b, self.chunk_at(i) + field, value);
        put_u32(b, self.entry_at(i) + field, value);
        self.resign_header(b, i);
        self.resign_index(b);
    }

    /// Makes chunk `i`'s payload CRC match whatever its payload now holds.
    pub fn resign_payload(&self, b: &mut [u8], i: usize) {
        let p = self.chunk_at(i) + CHUNK_HEADER_SIZE;
        let crc = crc32fast::hash(&b[p..p + self.index[i].stored_len as usize]);
        self.set_chunk_crc(b, i, hdr::PAYLOAD_CRC, crc);
    }

    /// The exact error a flip of the byte at `off` must cause (`flipped` is
    /// the damaged image, for the fields whose value the error reports).
    pub fn flip_outcome(&self, off: usize, flipped: &[u8]) -> String {
        let (l, at) = (&self.layout, off as u64);
        match off {
            0..8 => return "BadMagic(superblock@0x0)".into(),
            8..sb::MAJOR => return arch_outcome(&flipped[8..sb::MAJOR]),
            sb::MAJOR..sb::MINOR => {
                let major = u16::from_le_bytes([flipped[sb::MAJOR], flipped[sb::MAJOR + 1]]);
                let minor = kjump_image_format::superblock::VERSION_MINOR;
                return format!("UnsupportedVersion({major}.{minor})");
            }
            sb::MINOR..SUPERBLOCK_SIZE => return "Checksum(superblock@0x0)".into(),
            SUPERBLOCK_SIZE..BLOCK_SIZE => {
                return format!("PaddingNotZero(after the superblock@{at:#x})")
            }
            _ => {}
        }
        if at < l.metadata_offset + l.metadata_len {
            return format!("Checksum(metadata@{:#x})", l.metadata_offset);
        }
        for (what, start, end) in self.gaps() {
            if (start..end).contains(&off) {
                return format!("PaddingNotZero({what}@{at:#x})");
            }
        }
        if off >= self.trailer_at() {
            let what = if off < self.trailer_at() + trl::UUID {
                "BadMagic"
            } else {
                "Checksum"
            };
            return format!("{what}(trailer@{:#x})", l.trailer_offset);
        }
        if at >= l.index_offset {
            return format!("Checksum(chunk index@{:#x})", l.index_offset);
        }
        let i = self.index.partition_point(|e| e.offset.0 <= at) - 1;
        let h = self.index[i].offset.0;
        match (at - h) as usize {
            hdr::MAGIC..hdr::CODEC => format!("BadMagic(chunk header@{h:#x})"),
            hdr::CODEC..CHUNK_HEADER_SIZE => format!("Checksum(chunk header@{h:#x})"),
            _ => format!("Checksum(chunk {i} payload@{h:#x})"),
        }
    }
}

/// A damaged architecture name: a well-formed other name (nonzero bytes,
/// then only zeros) is another architecture, anything else a bad magic.
pub fn arch_outcome(field: &[u8]) -> String {
    let len = field.iter().position(|&c| c == 0).unwrap_or(field.len());
    if len == 0 || field[len..].iter().any(|&c| c != 0) {
        return "BadMagic(superblock@0x0)".into();
    }
    let shown: String = field[..len]
        .iter()
        .map(|&c| {
            if c.is_ascii_graphic() {
                (c as char).to_string()
            } else {
                format!("\\x{c:02x}")
            }
        })
        .collect();
    format!("WrongArchitecture({shown})")
}

/// Where each metadata record starts, with its tag and value length.
pub fn records(b: &[u8], start: usize, len: usize) -> Vec<(usize, u16, usize)> {
    let mut out = Vec::new();
    let mut at = start;
    while at < start + len {
        let tag = u16::from_le_bytes([b[at + rec::TAG], b[at + rec::TAG + 1]]);
        let l = at + rec::LEN;
        let n = u32::from_le_bytes([b[l], b[l + 1], b[l + 2], b[l + 3]]) as usize;
        out.push((at, tag, n));
        at += rec::SIZE + n.next_multiple_of(rec::ALIGN);
    }
    out
}

//! The kdump-compressed format ("diskdump"), as makedumpfile writes it and
//! `crash`, drgn (libkdumpfile) and makedumpfile itself read it
//! (makedumpfile's diskdump_mod.h, crash's diskdump.c). x86_64 layout, all
//! little-endian, block size = page size = 4096:
//!
//! | block | what |
//! |---|---|
//! | 0 | `disk_dump_header`: `KDUMP   `, version 6, utsname, time, status (the page codec), sizes |
//! | 1.. | `kdump_sub_header` (104 bytes), then the ELF notes and the VMCOREINFO text; `sub_hdr_size` blocks |
//! | then | bitmap 1 (frames that exist) and bitmap 2 (frames dumped), `bitmap_blocks / 2` blocks each; bit *n* of byte *b* is frame 8*b*+*n* |
//! | then | a 24-byte `page_desc` (`offset: i64, size: u32, flags: u32, page_flags: u64`) per dumped frame, in frame order |
//! | then | page data: one shared zero page first, then each page compressed, or raw (`size` 4096, no codec flag) when that is not smaller |
//!
//! A frame excluded by the dump level is absent from bitmap 2 and has no
//! descriptor: readers report it as excluded, never as zero. Zero pages are
//! dumped, their descriptors pointing at the shared zero page, so they read
//! as zero.
//!
//! [`DiskdumpWriter`] takes pages in any order and from several threads:
//! the descriptor of a frame sits at its rank among the dumped frames,
//! known from the ranges and the exclusions before any page is written.

use std::io::{Seek, SeekFrom, Write};
use std::sync::Mutex;

use crate::filter::Exclusions;
use crate::mem::PhysMemory;
use crate::vmcoreinfo::{KernelLayout, VmcoreInfo};

/// Block and page size.
pub const BLOCK: u64 = 4096;
const PAGE: usize = 4096;
const HEADER_SIZE: usize = 464;
const SUB_HEADER_SIZE: usize = 104;
const DESC_SIZE: u64 = 24;
const HEADER_VERSION: i32 = 6;
/// `DUMP_DH_COMPRESSED_INCOMPLETE`: set when a dump stopped short.
pub const STATUS_INCOMPLETE: u32 = 0x8;

/// How pages are compressed; crash reads each of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageCodec {
    /// Every page raw.
    None,
    /// Snappy (`DUMP_DH_COMPRESSED_SNAPPY`, makedumpfile `-p`): about lz4's
    /// speed, the fastest codec the format has.
    Snappy,
    /// Zstandard level 1 (`DUMP_DH_COMPRESSED_ZSTD`, makedumpfile `-z`).
    Zstd,
}

impl PageCodec {
    /// The flag in `status` and in each compressed page's descriptor.
    pub fn flag(self) -> u32 {
        match self {
            PageCodec::None => 0,
            PageCodec::Snappy => 0x4,
            PageCodec::Zstd => 0x20,
        }
    }

    /// The name makedumpfile's options use.
    pub fn name(self) -> &'static str {
        match self {
            PageCodec::None => "none",
            PageCodec::Snappy => "snappy",
            PageCodec::Zstd => "zstd",
        }
    }
}

/// Why a kdump-compressed file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum DiskdumpError {
    /// Writing the output failed.
    #[error("writing {what} at offset {offset:#x}")]
    Write {
        /// The structure.
        what: &'static str,
        /// Its offset.
        offset: u64,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A page was given for a frame outside the dump or given twice.
    #[error("frame {pfn:#x} {reason}")]
    Frame {
        /// The frame.
        pfn: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// Not every dumped frame was written.
    #[error("{written} of {dumpable} dumped frames were written")]
    Short {
        /// Written.
        written: u64,
        /// Expected.
        dumpable: u64,
    },
    /// Compressing a page failed.
    #[error("compressing frame {pfn:#x} with {codec}")]
    Compress {
        /// The frame.
        pfn: u64,
        /// The codec.
        codec: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The memory is too large for the format's 32-bit fields.
    #[error("{what} of {value} does not fit the kdump-compressed header")]
    TooLarge {
        /// The field.
        what: &'static str,
        /// Its value.
        value: u64,
    },
}

/// What the headers say about the dumped machine.
#[derive(Clone, Debug, Default)]
pub struct DumpInfo {
    /// The kernel's `struct new_utsname` (6 × 65 bytes), or fields to fill.
    pub utsname: Utsname,
    /// Dump time, seconds since the epoch.
    pub time_sec: i64,
    /// CPUs of the dumped machine (its NT_PRSTATUS notes).
    pub nr_cpus: i32,
    /// `phys_base` from VMCOREINFO.
    pub phys_base: u64,
    /// The dump level the frames were filtered at.
    pub dump_level: i32,
    /// The ELF notes, verbatim.
    pub notes: Vec<u8>,
    /// The VMCOREINFO text.
    pub vmcoreinfo: Vec<u8>,
}

/// `struct new_utsname`: sysname, nodename, release, version, machine,
/// domainname, 65 bytes each, NUL padded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Utsname(pub [[u8; 65]; 6]);

impl Default for Utsname {
    fn default() -> Self {
        Utsname::from_fields(&["Linux", "", "", "", "x86_64", ""])
    }
}

impl Utsname {
    /// From the six fields (each cut to 64 bytes).
    pub fn from_fields(fields: &[&str; 6]) -> Self {
        let mut u = [[0u8; 65]; 6];
        for (slot, f) in u.iter_mut().zip(fields) {
            let b = f.as_bytes();
            let n = b.len().min(64);
            slot[..n].copy_from_slice(&b[..n]);
        }
        Utsname(u)
    }

    /// From the kernel's 390 bytes.
    pub fn from_bytes(b: &[u8; 390]) -> Self {
        let mut u = [[0u8; 65]; 6];
        for (i, slot) in u.iter_mut().enumerate() {
            slot.copy_from_slice(&b[i * 65..(i + 1) * 65]);
        }
        Utsname(u)
    }

    /// The dumped kernel's own, read from `init_uts_ns` in its memory (as
    /// makedumpfile does); else one made from VMCOREINFO's release.
    pub fn of_kernel<M: PhysMemory + ?Sized>(mem: &M, info: &VmcoreInfo) -> Self {
        let from_memory = || {
            let k = KernelLayout::from_info(info).ok()?;
            let at = info.symbol("init_uts_ns")? + info.offset("uts_namespace.name")?;
            let mut b = [0u8; 390];
            mem.read_phys(k.text_to_phys(at)?, &mut b).ok()?;
            let u = Utsname::from_bytes(&b);
            (u.field(0) == "Linux").then_some(u)
        };
        from_memory().unwrap_or_else(|| {
            let release = info.release().unwrap_or("");
            Utsname::from_fields(&["Linux", "(none)", release, "", "x86_64", "(none)"])
        })
    }

    /// Field `i` as text.
    pub fn field(&self, i: usize) -> String {
        let f = &self.0[i];
        let end = f.iter().position(|&b| b == 0).unwrap_or(65);
        String::from_utf8_lossy(&f[..end]).into_owned()
    }
}

/// The layout of a dump: which frames exist, which are dumped, and where
/// everything goes.
#[derive(Clone, Debug)]
pub struct DumpLayout {
    /// Frame ranges `[first, end)` that exist, sorted and disjoint.
    ranges: Vec<(u64, u64)>,
    excluded: Exclusions,
    /// Dumped frames before each range.
    rank_base: Vec<u64>,
    /// One past the highest frame.
    pub max_mapnr: u64,
    /// Dumped frames.
    pub dumpable: u64,
    /// Blocks of the sub header, notes and VMCOREINFO.
    pub sub_hdr_blocks: u64,
    /// Blocks of both bitmaps.
    pub bitmap_blocks: u64,
    /// Offset of the first page descriptor.
    pub desc_offset: u64,
    /// Offset of the page data (the shared zero page).
    pub data_offset: u64,
}

impl DumpLayout {
    /// The layout for `ranges` (frames), leaving out `excluded`, with
    /// `info`'s notes and VMCOREINFO.
    pub fn new(ranges: &[(u64, u64)], excluded: &Exclusions, info: &DumpInfo) -> Self {
        let excluded = excluded.clip(ranges);
        let mut rank_base = Vec::with_capacity(ranges.len());
        let mut dumpable = 0u64;
        for &(s, e) in ranges {
            rank_base.push(dumpable);
            dumpable += e - s - (excluded.before(e) - excluded.before(s));
        }
        let max_mapnr = ranges.last().map_or(0, |r| r.1);
        let sub = (SUB_HEADER_SIZE + info.notes.len() + info.vmcoreinfo.len()) as u64;
        let sub_hdr_blocks = sub.div_ceil(BLOCK);
        let bitmap_blocks = max_mapnr.div_ceil(8).div_ceil(BLOCK) * 2;
        let desc_offset = (1 + sub_hdr_blocks + bitmap_blocks) * BLOCK;
        let data_offset = desc_offset + dumpable * DESC_SIZE;
        DumpLayout {
            ranges: ranges.to_vec(),
            excluded,
            rank_base,
            max_mapnr,
            dumpable,
            sub_hdr_blocks,
            bitmap_blocks,
            desc_offset,
            data_offset,
        }
    }

    /// The rank of `pfn` among the dumped frames, if it is dumped.
    pub fn rank(&self, pfn: u64) -> Option<u64> {
        let i = self.ranges.partition_point(|r| r.1 <= pfn);
        let &(s, e) = self.ranges.get(i)?;
        if pfn < s || pfn >= e || self.excluded.contains(pfn) {
            return None;
        }
        let before = self.excluded.before(pfn) - self.excluded.before(s);
        Some(self.rank_base[i] + (pfn - s) - before)
    }

    /// The two bitmaps, back to back.
    fn bitmaps(&self) -> Vec<u8> {
        let half = (self.bitmap_blocks / 2 * BLOCK) as usize;
        let mut b = vec![0u8; 2 * half];
        let set = |b: &mut [u8], s: u64, e: u64| {
            for pfn in s..e {
                b[(pfn / 8) as usize] |= 1 << (pfn % 8);
            }
        };
        for &(s, e) in &self.ranges {
            set(&mut b[..half], s, e);
            set(&mut b[half..], s, e);
        }
        for &(f, n) in self.excluded.runs() {
            for pfn in f..f + n {
                b[half + (pfn / 8) as usize] &= !(1 << (pfn % 8));
            }
        }
        b
    }
}

struct Output<W> {
    out: W,
    /// Where the next page's data goes.
    next_data: u64,
    written: u64,
    /// One bit per dumped frame: its descriptor is written.
    done: Vec<u64>,
}

/// A frame ready for [`DiskdumpWriter::write_pages`]' locked part: its
/// index in the pages given, its rank among dumped frames, its compressed
/// bytes (`None` to store it raw) and whether it is all zero.
type EncodedPage = (usize, u64, Option<Vec<u8>>, bool);

/// Writes a kdump-compressed file: headers and bitmaps at creation, then
/// pages in any order, then [`DiskdumpWriter::finish`].
pub struct DiskdumpWriter<W: Write + Seek> {
    layout: DumpLayout,
    codec: PageCodec,
    zero_offset: u64,
    out: Mutex<Output<W>>,
}

fn at<W: Write + Seek>(
    out: &mut W,
    offset: u64,
    bytes: &[u8],
    what: &'static str,
) -> Result<(), DiskdumpError> {
    out.seek(SeekFrom::Start(offset))
        .and_then(|_| out.write_all(bytes))
        .map_err(|source| DiskdumpError::Write {
            what,
            offset,
            source,
        })
}

fn header_bytes(layout: &DumpLayout, info: &DumpInfo, codec: PageCodec, status: u32) -> Vec<u8> {
    let mut h = vec![0u8; BLOCK as usize];
    h[..8].copy_from_slice(b"KDUMP   ");
    h[8..12].copy_from_slice(&HEADER_VERSION.to_le_bytes());
    for (i, f) in info.utsname.0.iter().enumerate() {
        h[12 + i * 65..12 + (i + 1) * 65].copy_from_slice(f);
    }
    h[408..416].copy_from_slice(&info.time_sec.to_le_bytes());
    let fields: [u32; 10] = [
        codec.flag() | status,
        BLOCK as u32,
        layout.sub_hdr_blocks as u32,
        layout.bitmap_blocks as u32,
        layout.max_mapnr.min(u64::from(u32::MAX)) as u32,
        layout.dumpable.min(u64::from(u32::MAX)) as u32,
        0,
        0,
        0,
        info.nr_cpus.max(1) as u32,
    ];
    for (i, v) in fields.iter().enumerate() {
        h[424 + 4 * i..428 + 4 * i].copy_from_slice(&v.to_le_bytes());
    }
    debug_assert_eq!(424 + 4 * fields.len(), HEADER_SIZE);
    h
}

fn sub_header_bytes(layout: &DumpLayout, info: &DumpInfo) -> Vec<u8> {
    let mut s = vec![0u8; (layout.sub_hdr_blocks * BLOCK) as usize];
    let note_off = BLOCK + SUB_HEADER_SIZE as u64;
    let vmci_off = note_off + info.notes.len() as u64;
    // start_pfn and end_pfn describe one part of a split dump; a whole
    // dump leaves them zero, as makedumpfile does (libkdumpfile reads
    // non-zero ones as a split).
    let words: [(usize, u64); 12] = [
        (0, info.phys_base),
        (16, 0),
        (24, 0),
        (
            32,
            if info.vmcoreinfo.is_empty() {
                0
            } else {
                vmci_off
            },
        ),
        (40, info.vmcoreinfo.len() as u64),
        (48, if info.notes.is_empty() { 0 } else { note_off }),
        (56, info.notes.len() as u64),
        (64, 0),
        (72, 0),
        (80, 0),
        (88, 0),
        (96, layout.max_mapnr),
    ];
    for (o, v) in words {
        s[o..o + 8].copy_from_slice(&v.to_le_bytes());
    }
    s[8..12].copy_from_slice(&info.dump_level.to_le_bytes());
    let n = SUB_HEADER_SIZE;
    s[n..n + info.notes.len()].copy_from_slice(&info.notes);
    let v = n + info.notes.len();
    s[v..v + info.vmcoreinfo.len()].copy_from_slice(&info.vmcoreinfo);
    s
}

fn descriptor(offset: u64, size: u32, flags: u32) -> [u8; DESC_SIZE as usize] {
    let mut d = [0u8; DESC_SIZE as usize];
    d[..8].copy_from_slice(&offset.to_le_bytes());
    d[8..12].copy_from_slice(&size.to_le_bytes());
    d[12..16].copy_from_slice(&flags.to_le_bytes());
    d
}

thread_local! {
    static ZSTD: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Compresses one page; `None` when the result is not smaller.
fn compress(codec: PageCodec, pfn: u64, page: &[u8]) -> Result<Option<Vec<u8>>, DiskdumpError> {
    let err = |source| DiskdumpError::Compress {
        pfn,
        codec: codec.name(),
        source,
    };
    let out = match codec {
        PageCodec::None => return Ok(None),
        PageCodec::Snappy => snap::raw::Encoder::new()
            .compress_vec(page)
            .map_err(|e| err(std::io::Error::other(e)))?,
        PageCodec::Zstd => ZSTD.with(|z| {
            let mut z = z.borrow_mut();
            if z.is_none() {
                *z = Some(zstd::bulk::Compressor::new(1).map_err(err)?);
            }
            match z.as_mut() {
                Some(c) => c.compress(page).map_err(err),
                None => Err(err(std::io::Error::other("no zstd context"))),
            }
        })?,
    };
    Ok((out.len() < page.len()).then_some(out))
}

impl<W: Write + Seek> DiskdumpWriter<W> {
    /// Writes the headers, notes, VMCOREINFO, bitmaps and the shared zero
    /// page; the header says *incomplete* until [`Self::finish`].
    pub fn create(
        mut out: W,
        ranges: &[(u64, u64)],
        excluded: &Exclusions,
        info: &DumpInfo,
        codec: PageCodec,
    ) -> Result<Self, DiskdumpError> {
        let layout = DumpLayout::new(ranges, excluded, info);
        if layout.sub_hdr_blocks > i32::MAX as u64 || layout.bitmap_blocks > u64::from(u32::MAX) {
            return Err(DiskdumpError::TooLarge {
                what: "the header area",
                value: layout.sub_hdr_blocks.max(layout.bitmap_blocks),
            });
        }
        let header = header_bytes(&layout, info, codec, STATUS_INCOMPLETE);
        at(&mut out, 0, &header, "the header")?;
        at(
            &mut out,
            BLOCK,
            &sub_header_bytes(&layout, info),
            "the sub header",
        )?;
        let bitmap_at = (1 + layout.sub_hdr_blocks) * BLOCK;
        at(&mut out, bitmap_at, &layout.bitmaps(), "the bitmaps")?;
        let zero_offset = layout.data_offset;
        at(&mut out, zero_offset, &[0u8; PAGE], "the zero page")?;
        let words = layout.dumpable.div_ceil(64) as usize;
        Ok(DiskdumpWriter {
            zero_offset,
            codec,
            out: Mutex::new(Output {
                out,
                next_data: zero_offset + PAGE as u64,
                written: 0,
                done: vec![0; words],
            }),
            layout,
        })
    }

    /// The layout.
    pub fn layout(&self) -> &DumpLayout {
        &self.layout
    }

    /// Writes the pages of frames `first..first + n` (`pages` holds `n`
    /// whole pages); `skip` has bit *i* set for frames that are excluded
    /// (and must be), and `zero` for all-zero ones. Safe to call from
    /// several threads; compression runs outside the lock.
    pub fn write_pages(
        &self,
        first: u64,
        pages: &[u8],
        zero: u64,
        skip: u64,
    ) -> Result<(), DiskdumpError> {
        let encoded = self.encode_pages(first, pages, zero, skip)?;
        let mut o = self.out.lock().unwrap_or_else(|p| p.into_inner());
        for (i, rank, data, is_zero) in encoded {
            let word = &mut o.done[(rank / 64) as usize];
            if *word >> (rank % 64) & 1 == 1 {
                return Err(DiskdumpError::Frame {
                    pfn: first + i as u64,
                    reason: "was written twice",
                });
            }
            *word |= 1 << (rank % 64);
            let desc = if is_zero {
                descriptor(self.zero_offset, PAGE as u32, 0)
            } else {
                let off = o.next_data;
                let (bytes, flags) = match &data {
                    Some(c) => (c.as_slice(), self.codec.flag()),
                    None => (&pages[i * PAGE..(i + 1) * PAGE], 0),
                };
                at(&mut o.out, off, bytes, "page data")?;
                o.next_data += bytes.len() as u64;
                descriptor(off, bytes.len() as u32, flags)
            };
            let desc_at = self.layout.desc_offset + rank * DESC_SIZE;
            at(&mut o.out, desc_at, &desc, "a page descriptor")?;
            o.written += 1;
        }
        Ok(())
    }

    /// The frames of [`Self::write_pages`] to write, outside the lock:
    /// `(index in pages, rank, compressed bytes or None to store raw,
    /// all zero)`, after checking each is dumped exactly when not skipped.
    fn encode_pages(
        &self,
        first: u64,
        pages: &[u8],
        zero: u64,
        skip: u64,
    ) -> Result<Vec<EncodedPage>, DiskdumpError> {
        let n = pages.len() / PAGE;
        let mut encoded: Vec<EncodedPage> = Vec::with_capacity(n);
        for i in 0..n {
            let pfn = first + i as u64;
            let rank = self.layout.rank(pfn);
            match (rank, skip >> i & 1 == 1) {
                (None, true) => continue,
                (None, false) => {
                    return Err(DiskdumpError::Frame {
                        pfn,
                        reason: "is not dumped (outside the ranges, or excluded but given)",
                    })
                }
                (Some(_), true) => {
                    return Err(DiskdumpError::Frame {
                        pfn,
                        reason: "is dumped but was skipped",
                    })
                }
                (Some(r), false) => {
                    let page = &pages[i * PAGE..(i + 1) * PAGE];
                    if zero >> i & 1 == 1 {
                        encoded.push((i, r, None, true));
                    } else {
                        encoded.push((i, r, compress(self.codec, pfn, page)?, false));
                    }
                }
            }
        }
        Ok(encoded)
    }

    /// Checks that every dumped frame was written, clears *incomplete* in
    /// the header and flushes; returns the output and the file's length.
    pub fn finish(self, info: &DumpInfo) -> Result<(W, u64), DiskdumpError> {
        let mut o = self.out.into_inner().unwrap_or_else(|p| p.into_inner());
        if o.written != self.layout.dumpable {
            return Err(DiskdumpError::Short {
                written: o.written,
                dumpable: self.layout.dumpable,
            });
        }
        let header = header_bytes(&self.layout, info, self.codec, 0);
        at(&mut o.out, 0, &header, "the header")?;
        o.out.flush().map_err(|source| DiskdumpError::Write {
            what: "the file",
            offset: o.next_data,
            source,
        })?;
        Ok((o.out, o.next_data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diskdump_read::{Diskdump, ReadError};

    /// A page that compresses (text) or not (noise), by frame.
    fn page(pfn: u64) -> Vec<u8> {
        let mut p = vec![0u8; PAGE];
        if pfn % 3 == 0 {
            let mut x = pfn.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            for b in p.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
        } else if pfn % 3 == 1 {
            for (i, b) in p.iter_mut().enumerate() {
                *b = format!("kjump {pfn:x} {i}\n").as_bytes()[i % 8];
            }
        }
        p
    }

    fn info() -> DumpInfo {
        DumpInfo {
            utsname: Utsname::from_fields(&["Linux", "a", "6.12.117", "#1", "x86_64", ""]),
            time_sec: 1_796_143_327,
            nr_cpus: 2,
            phys_base: 0x1000_0000,
            dump_level: 30,
            notes: vec![5; 36],
            vmcoreinfo: b"OSRELEASE=6.12.117\n".to_vec(),
        }
    }

    /// Writes frames of `ranges` less `excluded` in a scrambled order of
    /// 8-frame batches from two threads, and reads every frame back.
    fn round_trip(codec: PageCodec) {
        let ranges = [(1, 0x9f), (0x100, 0x300)];
        let excluded = Exclusions::from_runs(vec![(0x10, 4), (0x120, 0x40), (0x2ff, 9)]);
        let info = info();
        let file = tempfile();
        let w = DiskdumpWriter::create(file.try_clone().unwrap(), &ranges, &excluded, &info, codec)
            .unwrap();
        assert_eq!(w.layout().dumpable, 0x9e + 0x200 - 4 - 0x40 - 1);
        let mut batches: Vec<(u64, u64)> = Vec::new();
        for &(s, e) in &ranges {
            let mut p = s;
            while p < e {
                let n = (e - p).min(8);
                batches.push((p, n));
                p += n;
            }
        }
        batches.sort_by_key(|b| (b.0 * 7919) % 1031);
        std::thread::scope(|s| {
            for half in batches.chunks(batches.len() / 2 + 1) {
                let (w, excluded) = (&w, &excluded);
                s.spawn(move || {
                    for &(first, n) in half {
                        let pages: Vec<u8> = (first..first + n).flat_map(page).collect();
                        let mut zero = 0u64;
                        let mut skip = 0u64;
                        for i in 0..n {
                            zero |= u64::from((first + i) % 3 == 2) << i;
                            skip |= u64::from(excluded.contains(first + i)) << i;
                        }
                        w.write_pages(first, &pages, zero, skip).unwrap();
                    }
                });
            }
        });
        let (_, len) = w.finish(&info).unwrap();
        assert!(len <= file.metadata().unwrap().len());
        let d = Diskdump::open(file).unwrap();
        assert_eq!((d.version, d.nr_cpus, d.dump_level), (6, 2, 30));
        assert_eq!(d.status, codec.flag(), "complete, with the codec");
        assert_eq!(d.max_mapnr, 0x300);
        assert_eq!(d.release, "6.12.117");
        assert_eq!(d.vmcoreinfo, info.vmcoreinfo);
        assert_eq!(d.notes, info.notes);
        for pfn in 0..0x310 {
            let inside = ranges.iter().any(|&(s, e)| (s..e).contains(&pfn));
            assert_eq!(d.exists(pfn), inside, "bitmap 1 at {pfn:#x}");
            let dumped = inside && !excluded.contains(pfn);
            assert_eq!(d.is_dumped(pfn), dumped, "bitmap 2 at {pfn:#x}");
            match d.read_page(pfn) {
                Ok(p) => assert!(dumped && p == page(pfn), "frame {pfn:#x}"),
                Err(ReadError::NotDumped(f)) => assert!(!dumped && f == pfn),
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn tempfile() -> std::fs::File {
        let dir = std::env::temp_dir();
        let path = dir.join(format!(
            "kjump-diskdump-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let _ = std::fs::remove_file(&path);
        f
    }

    #[test]
    fn round_trip_snappy() {
        round_trip(PageCodec::Snappy);
    }

    #[test]
    fn round_trip_zstd() {
        round_trip(PageCodec::Zstd);
    }

    #[test]
    fn round_trip_raw() {
        round_trip(PageCodec::None);
    }

    #[test]
    fn header_fields_sit_where_crash_reads_them() {
        let info = info();
        let layout = DumpLayout::new(&[(0, 0x8000)], &Exclusions::default(), &info);
        let h = header_bytes(&layout, &info, PageCodec::Zstd, STATUS_INCOMPLETE);
        assert_eq!(&h[..8], b"KDUMP   ");
        assert_eq!(&h[12 + 4 * 65..12 + 4 * 65 + 6], b"x86_64");
        assert_eq!(u32::from_le_bytes(h[424..428].try_into().unwrap()), 0x28);
        assert_eq!(u32::from_le_bytes(h[428..432].try_into().unwrap()), 4096);
        // 0x8000 frames: 4096 bitmap bytes, one block per bitmap.
        assert_eq!(u32::from_le_bytes(h[436..440].try_into().unwrap()), 2);
        assert_eq!(u32::from_le_bytes(h[460..464].try_into().unwrap()), 2);
        assert_eq!(layout.desc_offset, 4 * BLOCK);
        assert_eq!(layout.data_offset, 4 * BLOCK + 0x8000 * 24);
        let s = sub_header_bytes(&layout, &info);
        assert_eq!(
            u64::from_le_bytes(s[48..56].try_into().unwrap()),
            BLOCK + 104
        );
        assert_eq!(
            u64::from_le_bytes(s[32..40].try_into().unwrap()),
            BLOCK + 104 + 36
        );
    }

    #[test]
    fn misuse_is_refused() {
        let info = info();
        let w = DiskdumpWriter::create(
            tempfile(),
            &[(0, 16)],
            &Exclusions::from_runs(vec![(4, 2)]),
            &info,
            PageCodec::Snappy,
        )
        .unwrap();
        let pages = vec![0u8; 16 * PAGE];
        let e = w.write_pages(0, &pages, 0, 0).unwrap_err();
        assert!(matches!(e, DiskdumpError::Frame { pfn: 4, .. }), "{e}");
        let e = w.write_pages(0, &pages[..PAGE], 0, 1).unwrap_err();
        assert!(matches!(e, DiskdumpError::Frame { pfn: 0, .. }), "{e}");
        w.write_pages(0, &pages[..4 * PAGE], 0, 0).unwrap();
        let e = w.write_pages(1, &pages[..PAGE], 0, 0).unwrap_err();
        assert!(
            matches!(
                e,
                DiskdumpError::Frame {
                    pfn: 1,
                    reason: "was written twice"
                }
            ),
            "{e}"
        );
        let e = w.finish(&info).unwrap_err();
        assert!(
            matches!(
                e,
                DiskdumpError::Short {
                    written: 4,
                    dumpable: 14
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn a_full_disk_leaves_the_dump_marked_incomplete() {
        // A writer that takes the headers, then runs out of room.
        struct Full(std::io::Cursor<Vec<u8>>, u64);
        impl Write for Full {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                if self.0.position() + b.len() as u64 > self.1 {
                    return Err(std::io::Error::from_raw_os_error(28));
                }
                self.0.write(b)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        impl Seek for Full {
            fn seek(&mut self, p: SeekFrom) -> std::io::Result<u64> {
                self.0.seek(p)
            }
        }
        let info = info();
        let w = DiskdumpWriter::create(
            Full(std::io::Cursor::new(Vec::new()), 0x6000),
            &[(0, 16)],
            &Exclusions::default(),
            &info,
            PageCodec::None,
        )
        .unwrap();
        let pages: Vec<u8> = (0..16).flat_map(|p| page(p * 3)).collect();
        let e = w.write_pages(0, &pages, 0, 0).unwrap_err();
        let DiskdumpError::Write {
            what: "page data",
            offset,
            ..
        } = e
        else {
            panic!("{e}")
        };
        assert!(offset >= 0x5000, "{offset:#x}");
        let out = w.out.into_inner().unwrap();
        let status = u32::from_le_bytes(out.out.0.get_ref()[424..428].try_into().unwrap());
        assert_eq!(status, STATUS_INCOMPLETE);
    }
}

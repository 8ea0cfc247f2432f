//! Reading a kdump-compressed file back: its header, which frames it
//! dumps, and their pages. kjump uses it to check what it wrote and to
//! compare its filtering with makedumpfile's output; `crash` and drgn are
//! the readers users have.

use std::os::unix::fs::FileExt;

use crate::diskdump::BLOCK;
use kjump_image_format::le::{u32_at, u64_at};

/// Why a kdump-compressed file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Reading failed.
    #[error("reading {what} at offset {offset:#x}")]
    Io {
        /// What was read.
        what: &'static str,
        /// Where.
        offset: u64,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not kdump-compressed, or a field is out of bounds.
    #[error("not a usable kdump-compressed file: {0}")]
    Format(String),
    /// The frame is not in the dump (excluded, or outside it).
    #[error("frame {0:#x} is not dumped")]
    NotDumped(u64),
    /// A page did not decompress to 4096 bytes.
    #[error("frame {pfn:#x}: page data flags {flags:#x}: {reason}")]
    Page {
        /// The frame.
        pfn: u64,
        /// The descriptor's flags.
        flags: u32,
        /// What failed.
        reason: String,
    },
}

/// An opened kdump-compressed file.
pub struct Diskdump<F: FileExt> {
    file: F,
    /// `header_version`.
    pub version: i32,
    /// `status`: the codec flags and `DUMP_DH_COMPRESSED_INCOMPLETE`.
    pub status: u32,
    /// `nr_cpus`.
    pub nr_cpus: i32,
    /// The sub header's `dump_level`.
    pub dump_level: i32,
    /// One past the highest frame.
    pub max_mapnr: u64,
    /// The VMCOREINFO text.
    pub vmcoreinfo: Vec<u8>,
    /// The ELF notes.
    pub notes: Vec<u8>,
    /// The utsname release field.
    pub release: String,
    /// Bitmap 1 (frames that exist) and bitmap 2 (frames dumped).
    bitmap1: Vec<u8>,
    bitmap2: Vec<u8>,
    /// Dumped frames before each bitmap2 byte.
    ranks: Vec<u64>,
    desc_offset: u64,
}

/// The dumped frames before each byte of bitmap 2.
fn ranks(bitmap2: &[u8]) -> Vec<u64> {
    bitmap2
        .iter()
        .scan(0u64, |n, b| {
            let before = *n;
            *n += u64::from(b.count_ones());
            Some(before)
        })
        .collect()
}

/// `len` bytes of `file` at `offset` (`what` names them in an error),
/// refusing a length no kdump-compressed file has.
fn read_part<F: FileExt>(
    file: &F,
    what: &'static str,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>, ReadError> {
    if len > 1 << 32 {
        return Err(ReadError::Format(format!("{what} of {len} bytes")));
    }
    let mut b = vec![0u8; len as usize];
    file.read_exact_at(&mut b, offset)
        .map_err(|source| ReadError::Io {
            what,
            offset,
            source,
        })?;
    Ok(b)
}

impl<F: FileExt> Diskdump<F> {
    /// Reads the headers and bitmaps.
    pub fn open(file: F) -> Result<Self, ReadError> {
        let read = |what, offset: u64, len: u64| read_part(&file, what, offset, len);
        let h = read("the header", 0, BLOCK)?;
        if &h[..8] != b"KDUMP   " {
            return Err(ReadError::Format(format!("signature {:?}", &h[..8])));
        }
        let version = u32_at(&h, 8) as i32;
        let (status, block) = (u32_at(&h, 424), u64::from(u32_at(&h, 428)));
        let (sub_blocks, bitmap_blocks) = (u64::from(u32_at(&h, 432)), u64::from(u32_at(&h, 436)));
        if block != BLOCK || version < 6 {
            return Err(ReadError::Format(format!(
                "block size {block}, header version {version} (kjump reads 4096 and 6)"
            )));
        }
        let sub = read("the sub header", BLOCK, 104)?;
        let max_mapnr = u64_at(&sub, 96);
        let half = bitmap_blocks / 2 * BLOCK;
        if max_mapnr.div_ceil(8) > half {
            return Err(ReadError::Format(format!(
                "max_mapnr {max_mapnr} exceeds the {half}-byte bitmaps"
            )));
        }
        let part = |off: u64, len: u64, what| {
            if off == 0 || len == 0 {
                Ok(Vec::new())
            } else {
                read(what, off, len.min(16 << 20))
            }
        };
        let vmcoreinfo = part(u64_at(&sub, 32), u64_at(&sub, 40), "the VMCOREINFO")?;
        let notes = part(u64_at(&sub, 48), u64_at(&sub, 56), "the notes")?;
        let mut bitmap1 = read("the bitmaps", (1 + sub_blocks) * BLOCK, 2 * half)?;
        let bitmap2 = bitmap1.split_off(half as usize);
        let ranks = ranks(&bitmap2);
        let end = h[12 + 2 * 65..12 + 3 * 65]
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(65);
        Ok(Diskdump {
            version,
            status,
            nr_cpus: u32_at(&h, 460) as i32,
            dump_level: u32_at(&sub, 8) as i32,
            max_mapnr,
            vmcoreinfo,
            notes,
            release: String::from_utf8_lossy(&h[12 + 130..12 + 130 + end]).into_owned(),
            bitmap1,
            bitmap2,
            ranks,
            desc_offset: (1 + sub_blocks + bitmap_blocks) * BLOCK,
            file,
        })
    }

    fn bit(map: &[u8], pfn: u64) -> bool {
        map.get((pfn / 8) as usize)
            .is_some_and(|b| b >> (pfn % 8) & 1 == 1)
    }

    /// Whether frame `pfn` exists in the dumped machine (bitmap 1).
    pub fn exists(&self, pfn: u64) -> bool {
        Self::bit(&self.bitmap1, pfn)
    }

    /// Whether frame `pfn` is dumped (bitmap 2).
    pub fn is_dumped(&self, pfn: u64) -> bool {
        Self::bit(&self.bitmap2, pfn)
    }

    /// The page of frame `pfn`.
    pub fn read_page(&self, pfn: u64) -> Result<Vec<u8>, ReadError> {
        if !self.is_dumped(pfn) {
            return Err(ReadError::NotDumped(pfn));
        }
        let byte = (pfn / 8) as usize;
        let below = self.bitmap2[byte] & ((1u16 << (pfn % 8)) - 1) as u8;
        let rank = self.ranks[byte] + u64::from(below.count_ones());
        let at = self.desc_offset + rank * 24;
        let mut d = [0u8; 24];
        self.file
            .read_exact_at(&mut d, at)
            .map_err(|source| ReadError::Io {
                what: "a page descriptor",
                offset: at,
                source,
            })?;
        let (offset, size, flags) = (u64_at(&d, 0), u32_at(&d, 8), u32_at(&d, 12));
        if size == 0 || size as u64 > BLOCK {
            return Err(ReadError::Page {
                pfn,
                flags,
                reason: format!("stored size {size}"),
            });
        }
        let mut data = vec![0u8; size as usize];
        self.file
            .read_exact_at(&mut data, offset)
            .map_err(|source| ReadError::Io {
                what: "page data",
                offset,
                source,
            })?;
        let bad = |reason: String| ReadError::Page { pfn, flags, reason };
        let page = match flags & 0x27 {
            0 => data,
            0x4 => snap::raw::Decoder::new()
                .decompress_vec(&data)
                .map_err(|e| bad(e.to_string()))?,
            0x20 => {
                zstd::bulk::decompress(&data, BLOCK as usize).map_err(|e| bad(e.to_string()))?
            }
            _ => return Err(bad("zlib and lzo pages are not read by kjump".to_string())),
        };
        if page.len() as u64 != BLOCK {
            return Err(bad(format!("{} bytes decoded", page.len())));
        }
        Ok(page)
    }
}

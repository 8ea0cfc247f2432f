//! Chunks: the unit of compression, checksumming and parallel work, and
//! the two structures that describe one, its header and its index entry.
//!
//! Every saved range is cut into chunks of at most [`CHUNK_PAGES`] pages at
//! frame numbers aligned to [`CHUNK_PAGES`], so the chunk sequence follows from
//! the ranges alone and a reader can check that every page is present exactly
//! once, in its place. What a chunk's payload holds is the codec's
//! ([`crate::codec`]).

use crate::addr::{ImageOffset, MemoryMap, Pfn};
use crate::error::FormatError;
pub use crate::layout::CHUNK_PAGES;
use crate::layout::PAGE_SIZE;
use crate::layout::{chunk_header as hdr, index_entry as entry, TAG_SIZE, UUID_LEN};
use crate::le::{put_u32, put_u64, u16_at, u32_at, u64_at};

/// Size of an encoded chunk header.
pub const CHUNK_HEADER_SIZE: usize = hdr::SIZE;
/// Size of an encoded index entry.
pub const INDEX_ENTRY_SIZE: usize = entry::SIZE;
/// Magic at the start of every chunk header.
pub const CHUNK_MAGIC: [u8; 4] = *b"KJCK";

// The zero bitmap is one u64 and the page count one byte.
const _: () = assert!(CHUNK_PAGES <= u64::BITS as usize && CHUNK_PAGES <= u8::MAX as usize);
const _: () = assert!(CHUNK_MAGIC.len() == hdr::CODEC - hdr::MAGIC);

/// How a chunk's stored pages are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// Every page is zero; nothing is stored.
    Zero,
    /// The stored pages as they are.
    Raw,
    /// The stored pages as one lz4 block.
    Lz4,
}

impl Codec {
    fn code(self) -> u8 {
        match self {
            Codec::Zero => 0,
            Codec::Raw => 1,
            Codec::Lz4 => 2,
        }
    }

    fn from_code(c: u8) -> Option<Codec> {
        match c {
            0 => Some(Codec::Zero),
            1 => Some(Codec::Raw),
            2 => Some(Codec::Lz4),
            _ => None,
        }
    }
}

/// Where a chunk lies in physical memory: derived from the ranges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkSpec {
    /// First frame.
    pub first_pfn: Pfn,
    /// Frames in the chunk, 1 to [`CHUNK_PAGES`].
    pub page_count: u8,
    /// Index of the range in the memory map.
    pub range: usize,
}

/// Iterates the chunk sequence of a memory map without allocating it whole.
pub fn chunk_specs(map: &MemoryMap) -> impl Iterator<Item = ChunkSpec> + '_ {
    map.ranges().iter().enumerate().flat_map(|(i, r)| {
        let (first, end) = (r.first_pfn().0, r.end_pfn().0);
        let step = CHUNK_PAGES as u64;
        let mut p = first;
        std::iter::from_fn(move || {
            if p >= end {
                return None;
            }
            let next = ((p / step + 1) * step).min(end);
            let spec = ChunkSpec {
                first_pfn: Pfn(p),
                page_count: (next - p) as u8,
                range: i,
            };
            p = next;
            Some(spec)
        })
    })
}

/// Number of chunks of a memory map, computed without iterating pages.
pub fn chunk_count(map: &MemoryMap) -> u64 {
    let step = CHUNK_PAGES as u64;
    map.ranges()
        .iter()
        .map(|r| {
            let (first, end) = (r.first_pfn().0, r.end_pfn().0);
            (end - 1) / step - first / step + 1
        })
        .sum()
}

/// A decoded chunk header, as it stands in the data stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkHeader {
    /// Payload encoding.
    pub codec: Codec,
    /// Frames covered.
    pub page_count: u8,
    /// First frame.
    pub first_pfn: Pfn,
    /// Bit `i` set: page `i` is all zero and not stored.
    pub zero_bitmap: u64,
    /// Payload bytes following the header.
    pub stored_len: u32,
    /// CRC32 of the payload bytes.
    pub payload_crc: u32,
    /// CRC32 of the stored pages, uncompressed and concatenated.
    pub data_crc: u32,
    /// Position of the chunk in the image.
    pub seq: u32,
    /// The image's uuid: a chunk left over from another capture never matches.
    pub uuid: [u8; UUID_LEN],
}

/// A decoded chunk index entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// Image offset of the chunk header.
    pub offset: ImageOffset,
    /// First frame.
    pub first_pfn: Pfn,
    /// Zero-page bitmap, as in the header.
    pub zero_bitmap: u64,
    /// Payload bytes.
    pub stored_len: u32,
    /// CRC32 of the payload bytes.
    pub payload_crc: u32,
    /// CRC32 of the uncompressed stored pages.
    pub data_crc: u32,
    /// Payload encoding.
    pub codec: Codec,
    /// Frames covered.
    pub page_count: u8,
}

/// The bitmap bits of a chunk of `page_count` pages.
pub(crate) fn page_mask(page_count: u8) -> u64 {
    if page_count as usize >= 64 {
        u64::MAX
    } else {
        (1u64 << page_count) - 1
    }
}

impl ChunkHeader {
    /// Pages stored (not zero).
    pub fn stored_pages(&self) -> u32 {
        u32::from(self.page_count) - self.zero_bitmap.count_ones()
    }

    /// Bytes of the stored pages once decompressed.
    pub fn raw_len(&self) -> usize {
        self.stored_pages() as usize * PAGE_SIZE
    }

    /// Encodes the header.
    pub fn encode(&self) -> [u8; CHUNK_HEADER_SIZE] {
        let mut b = [0u8; CHUNK_HEADER_SIZE];
        b[hdr::MAGIC..hdr::MAGIC + CHUNK_MAGIC.len()].copy_from_slice(&CHUNK_MAGIC);
        b[hdr::CODEC] = self.codec.code();
        b[hdr::PAGE_COUNT] = self.page_count;
        put_u64(&mut b, hdr::FIRST_PFN, self.first_pfn.0);
        put_u64(&mut b, hdr::ZERO_BITMAP, self.zero_bitmap);
        put_u32(&mut b, hdr::STORED_LEN, self.stored_len);
        put_u32(&mut b, hdr::PAYLOAD_CRC, self.payload_crc);
        put_u32(&mut b, hdr::DATA_CRC, self.data_crc);
        put_u32(&mut b, hdr::SEQ, self.seq);
        b[hdr::UUID..hdr::UUID + UUID_LEN].copy_from_slice(&self.uuid);
        let crc = crc32fast::hash(&b[..hdr::CRC]);
        put_u32(&mut b, hdr::CRC, crc);
        b
    }

    /// Decodes a header of an unencrypted image found at `offset`, checking
    /// its magic, CRC, reserved bytes and internal consistency.
    pub fn decode(b: &[u8; CHUNK_HEADER_SIZE], offset: u64) -> Result<Self, FormatError> {
        Self::decode_as(b, offset, false)
    }

    /// Decodes a header found at `offset`; `sealed` for an encrypted image,
    /// whose payloads carry a tag and whose contents CRC is zero.
    pub fn decode_as(
        b: &[u8; CHUNK_HEADER_SIZE],
        offset: u64,
        sealed: bool,
    ) -> Result<Self, FormatError> {
        let magic = &b[hdr::MAGIC..hdr::MAGIC + CHUNK_MAGIC.len()];
        if magic != CHUNK_MAGIC {
            return Err(FormatError::BadMagic {
                what: "chunk header",
                offset: ImageOffset(offset),
                expected: crate::le::show_bytes(&CHUNK_MAGIC),
                found: crate::le::show_bytes(magic),
            });
        }
        let stored = u32_at(b, hdr::CRC);
        let computed = crc32fast::hash(&b[..hdr::CRC]);
        if stored != computed {
            return Err(FormatError::checksum(
                "chunk header",
                offset,
                stored,
                computed,
            ));
        }
        for (at, len) in [(hdr::RESERVED_A, 2), (hdr::RESERVED_B, 4)] {
            if let Some(p) = crate::le::first_nonzero(&b[at..at + len]) {
                return Err(FormatError::ReservedNotZero {
                    what: "chunk header",
                    offset: ImageOffset(offset + (at + p) as u64),
                    found: b[at + p].into(),
                });
            }
        }
        let mut uuid = [0u8; UUID_LEN];
        uuid.copy_from_slice(&b[hdr::UUID..hdr::UUID + UUID_LEN]);
        let h = ChunkHeader {
            codec: decode_codec(b[hdr::CODEC], "chunk header", offset)?,
            page_count: b[hdr::PAGE_COUNT],
            first_pfn: Pfn(u64_at(b, hdr::FIRST_PFN)),
            zero_bitmap: u64_at(b, hdr::ZERO_BITMAP),
            stored_len: u32_at(b, hdr::STORED_LEN),
            payload_crc: u32_at(b, hdr::PAYLOAD_CRC),
            data_crc: u32_at(b, hdr::DATA_CRC),
            seq: u32_at(b, hdr::SEQ),
            uuid,
        };
        check_shape(
            "chunk header",
            offset,
            &h.index_entry(ImageOffset(offset)),
            sealed,
        )?;
        Ok(h)
    }

    /// The index entry describing this chunk at `offset`.
    pub fn index_entry(&self, offset: ImageOffset) -> IndexEntry {
        IndexEntry {
            offset,
            first_pfn: self.first_pfn,
            zero_bitmap: self.zero_bitmap,
            stored_len: self.stored_len,
            payload_crc: self.payload_crc,
            data_crc: self.data_crc,
            codec: self.codec,
            page_count: self.page_count,
        }
    }
}

fn decode_codec(c: u8, what: &'static str, offset: u64) -> Result<Codec, FormatError> {
    Codec::from_code(c).ok_or(FormatError::InvalidValue {
        what,
        field: "codec",
        offset: ImageOffset(offset),
        value: c.into(),
    })
}

/// Checks what a header or entry says about itself: page count, bitmap,
/// codec and payload length must agree. A sealed payload carries a tag,
/// and no CRC over plaintext is stored.
fn check_shape(
    what: &'static str,
    offset: u64,
    e: &IndexEntry,
    sealed: bool,
) -> Result<(), FormatError> {
    let (codec, page_count, zero_bitmap, stored_len) =
        (e.codec, e.page_count, e.zero_bitmap, e.stored_len);
    let invalid = |field, value| FormatError::InvalidValue {
        what,
        field,
        offset: ImageOffset(offset),
        value,
    };
    if page_count == 0 || page_count as usize > CHUNK_PAGES {
        return Err(invalid("page count", page_count.into()));
    }
    let mask = page_mask(page_count);
    if zero_bitmap & !mask != 0 {
        return Err(invalid("zero bitmap", zero_bitmap));
    }
    let raw_len = (u64::from(page_count) - u64::from(zero_bitmap.count_ones())) * PAGE_SIZE as u64;
    let tag = if sealed { TAG_SIZE as u64 } else { 0 };
    let body = u64::from(stored_len).checked_sub(tag);
    let ok = match (codec, body) {
        (Codec::Zero, _) => zero_bitmap == mask && stored_len == 0,
        (_, None) => false,
        (Codec::Raw, Some(n)) => raw_len > 0 && n == raw_len,
        (Codec::Lz4, Some(n)) => raw_len > 0 && n > 0 && n < raw_len,
    };
    if !ok {
        return Err(invalid("stored length", stored_len.into()));
    }
    if sealed && e.data_crc != 0 {
        return Err(invalid(
            "contents crc (zero in an encrypted image)",
            e.data_crc.into(),
        ));
    }
    Ok(())
}

impl IndexEntry {
    /// Encodes the entry.
    pub fn encode(&self) -> [u8; INDEX_ENTRY_SIZE] {
        let mut b = [0u8; INDEX_ENTRY_SIZE];
        put_u64(&mut b, entry::OFFSET, self.offset.0);
        put_u64(&mut b, entry::FIRST_PFN, self.first_pfn.0);
        put_u64(&mut b, entry::ZERO_BITMAP, self.zero_bitmap);
        put_u32(&mut b, entry::STORED_LEN, self.stored_len);
        put_u32(&mut b, entry::PAYLOAD_CRC, self.payload_crc);
        put_u32(&mut b, entry::DATA_CRC, self.data_crc);
        b[entry::CODEC] = self.codec.code();
        b[entry::PAGE_COUNT] = self.page_count;
        b
    }

    /// Decodes an entry of an unencrypted image found at `offset`, checking
    /// its reserved bytes and internal consistency (the index CRC is checked
    /// by the reader).
    pub fn decode(b: &[u8], offset: u64) -> Result<Self, FormatError> {
        Self::decode_as(b, offset, false)
    }

    /// Decodes an entry found at `offset`; `sealed` for an encrypted image.
    pub fn decode_as(b: &[u8], offset: u64, sealed: bool) -> Result<Self, FormatError> {
        let reserved = u16_at(b, entry::RESERVED);
        if reserved != 0 {
            return Err(FormatError::ReservedNotZero {
                what: "index entry",
                offset: ImageOffset(offset + entry::RESERVED as u64),
                found: reserved.into(),
            });
        }
        let e = IndexEntry {
            offset: ImageOffset(u64_at(b, entry::OFFSET)),
            first_pfn: Pfn(u64_at(b, entry::FIRST_PFN)),
            zero_bitmap: u64_at(b, entry::ZERO_BITMAP),
            stored_len: u32_at(b, entry::STORED_LEN),
            payload_crc: u32_at(b, entry::PAYLOAD_CRC),
            data_crc: u32_at(b, entry::DATA_CRC),
            codec: decode_codec(b[entry::CODEC], "index entry", offset)?,
            page_count: b[entry::PAGE_COUNT],
        };
        check_shape("index entry", offset, &e, sealed)?;
        Ok(e)
    }

    /// Pages stored (not zero).
    pub fn stored_pages(&self) -> u32 {
        u32::from(self.page_count) - self.zero_bitmap.count_ones()
    }

    /// Bytes of the stored pages once decompressed.
    pub fn raw_len(&self) -> usize {
        self.stored_pages() as usize * PAGE_SIZE
    }

    /// The first field in which `other` differs from this entry, with this
    /// entry's value and `other`'s.
    pub(crate) fn first_difference(&self, other: &IndexEntry) -> Option<(&'static str, u64, u64)> {
        [
            ("chunk offset", self.offset.0, other.offset.0),
            ("first pfn", self.first_pfn.0, other.first_pfn.0),
            (
                "page count",
                self.page_count.into(),
                other.page_count.into(),
            ),
            ("zero bitmap", self.zero_bitmap, other.zero_bitmap),
            ("codec", self.codec.code().into(), other.codec.code().into()),
            (
                "stored length",
                self.stored_len.into(),
                other.stored_len.into(),
            ),
            (
                "payload crc",
                self.payload_crc.into(),
                other.payload_crc.into(),
            ),
            ("data crc", self.data_crc.into(), other.data_crc.into()),
        ]
        .into_iter()
        .find(|(_, a, b)| a != b)
    }

    /// Image bytes of header and payload.
    pub fn encoded_len(&self) -> u64 {
        CHUNK_HEADER_SIZE as u64 + u64::from(self.stored_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::{PhysAddr, PhysRange};

    fn map(r: &[(u64, u64)]) -> MemoryMap {
        MemoryMap::from_sorted(
            r.iter()
                .map(|&(s, e)| PhysRange::new(PhysAddr(s), PhysAddr(e)).unwrap())
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn chunks_align_to_64_frames_and_count_matches() {
        let m = map(&[(0x1000, 0x9fc00), (0x100000, 0x100000 + 200 * 4096)]);
        let specs: Vec<_> = chunk_specs(&m).collect();
        assert_eq!(specs.len() as u64, chunk_count(&m));
        assert_eq!(specs[0].first_pfn, Pfn(1));
        assert_eq!(specs[0].page_count, 63);
        assert_eq!(specs[1].first_pfn, Pfn(64));
        let pages: u64 = specs.iter().map(|s| u64::from(s.page_count)).sum();
        assert_eq!(pages, m.total_pages());
        let single = map(&[(0x5000, 0x5001)]);
        assert_eq!(chunk_count(&single), 1);
        assert_eq!(chunk_specs(&single).next().unwrap().page_count, 1);
    }

    #[test]
    fn inconsistent_shapes_are_rejected() {
        let h = ChunkHeader {
            codec: Codec::Raw,
            page_count: 2,
            first_pfn: Pfn(0),
            zero_bitmap: 0b100,
            stored_len: 8192,
            payload_crc: 0,
            data_crc: 0,
            seq: 0,
            uuid: [0; 16],
        };
        assert!(ChunkHeader::decode(&h.encode(), 0).is_err());
        let h = ChunkHeader {
            zero_bitmap: 0,
            page_count: 65,
            ..h
        };
        assert!(ChunkHeader::decode(&h.encode(), 0).is_err());
        let h = ChunkHeader {
            page_count: 2,
            stored_len: 4096,
            ..h
        };
        assert!(ChunkHeader::decode(&h.encode(), 0).is_err());
    }
}

//! Chunks: the unit of compression, checksumming and parallel work.
//!
//! Every saved range is cut into chunks of at most [`CHUNK_PAGES`] pages at
//! frame numbers aligned to [`CHUNK_PAGES`], so the chunk sequence follows from
//! the ranges alone and a reader can check that every page is present exactly
//! once, in its place. All-zero pages are marked in a bitmap and not stored;
//! the other pages are compressed together as one lz4 block, or stored raw
//! when lz4 does not make them smaller.

use crate::addr::{ImageOffset, MemoryMap, Pfn};
use crate::error::FormatError;
use crate::le::{put_u32, put_u64, u32_at, u64_at};
use crate::PAGE_SIZE;

/// Pages per chunk at most; the zero bitmap is one `u64`.
pub const CHUNK_PAGES: usize = 64;
/// Size of an encoded chunk header.
pub const CHUNK_HEADER_SIZE: usize = 64;
/// Size of an encoded index entry.
pub const INDEX_ENTRY_SIZE: usize = 40;
/// Magic at the start of every chunk header.
pub const CHUNK_MAGIC: [u8; 4] = *b"KJCK";

const ZERO_PAGE: [u8; PAGE_SIZE] = [0; PAGE_SIZE];

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
    pub uuid: [u8; 16],
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

fn page_mask(page_count: u8) -> u64 {
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
        b[0..4].copy_from_slice(&CHUNK_MAGIC);
        b[4] = self.codec.code();
        b[5] = self.page_count;
        put_u64(&mut b, 8, self.first_pfn.0);
        put_u64(&mut b, 16, self.zero_bitmap);
        put_u32(&mut b, 24, self.stored_len);
        put_u32(&mut b, 28, self.payload_crc);
        put_u32(&mut b, 32, self.data_crc);
        put_u32(&mut b, 36, self.seq);
        b[40..56].copy_from_slice(&self.uuid);
        let crc = crc32fast::hash(&b[..60]);
        put_u32(&mut b, 60, crc);
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
        if b[0..4] != CHUNK_MAGIC {
            return Err(FormatError::BadMagic {
                what: "chunk header",
                offset: ImageOffset(offset),
                expected: crate::le::show_bytes(&CHUNK_MAGIC),
                found: crate::le::show_bytes(&b[0..4]),
            });
        }
        let stored = u32_at(b, 60);
        let computed = crc32fast::hash(&b[..60]);
        if stored != computed {
            return Err(FormatError::checksum(
                "chunk header",
                offset,
                stored,
                computed,
            ));
        }
        for (at, len) in [(6usize, 2usize), (56, 4)] {
            if let Some(p) = crate::le::first_nonzero(&b[at..at + len]) {
                return Err(FormatError::ReservedNotZero {
                    what: "chunk header",
                    offset: ImageOffset(offset + (at + p) as u64),
                    found: b[at + p].into(),
                });
            }
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[40..56]);
        let h = ChunkHeader {
            codec: decode_codec(b[4], "chunk header", offset)?,
            page_count: b[5],
            first_pfn: Pfn(u64_at(b, 8)),
            zero_bitmap: u64_at(b, 16),
            stored_len: u32_at(b, 24),
            payload_crc: u32_at(b, 28),
            data_crc: u32_at(b, 32),
            seq: u32_at(b, 36),
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
    let tag = if sealed {
        crate::crypto::TAG_SIZE as u64
    } else {
        0
    };
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
        put_u64(&mut b, 0, self.offset.0);
        put_u64(&mut b, 8, self.first_pfn.0);
        put_u64(&mut b, 16, self.zero_bitmap);
        put_u32(&mut b, 24, self.stored_len);
        put_u32(&mut b, 28, self.payload_crc);
        put_u32(&mut b, 32, self.data_crc);
        b[36] = self.codec.code();
        b[37] = self.page_count;
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
        if b[38] != 0 || b[39] != 0 {
            return Err(FormatError::ReservedNotZero {
                what: "index entry",
                offset: ImageOffset(offset + 38),
                found: u64::from(b[38]) | u64::from(b[39]) << 8,
            });
        }
        let e = IndexEntry {
            offset: ImageOffset(u64_at(b, 0)),
            first_pfn: Pfn(u64_at(b, 8)),
            zero_bitmap: u64_at(b, 16),
            stored_len: u32_at(b, 24),
            payload_crc: u32_at(b, 28),
            data_crc: u32_at(b, 32),
            codec: decode_codec(b[36], "index entry", offset)?,
            page_count: b[37],
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

/// A chunk ready to be written: its header and payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedChunk {
    /// The header (its `seq` and `uuid` as given to [`encode_chunk`]).
    pub header: ChunkHeader,
    /// The payload bytes.
    pub payload: Vec<u8>,
}

/// Encodes the pages of one chunk. `pages` holds `spec.page_count` whole pages
/// back to back.
pub fn encode_chunk(spec: &ChunkSpec, seq: u32, uuid: [u8; 16], pages: &[u8]) -> EncodedChunk {
    debug_assert_eq!(pages.len(), spec.page_count as usize * PAGE_SIZE);
    let mut zero_bitmap = 0u64;
    for (i, page) in pages.chunks_exact(PAGE_SIZE).enumerate() {
        if page == ZERO_PAGE {
            zero_bitmap |= 1 << i;
        }
    }
    let header = |codec, stored_len, payload_crc, data_crc| ChunkHeader {
        codec,
        page_count: spec.page_count,
        first_pfn: spec.first_pfn,
        zero_bitmap,
        stored_len,
        payload_crc,
        data_crc,
        seq,
        uuid,
    };
    if zero_bitmap == page_mask(spec.page_count) {
        return EncodedChunk {
            header: header(Codec::Zero, 0, 0, 0),
            payload: Vec::new(),
        };
    }
    let gathered;
    let raw: &[u8] = if zero_bitmap == 0 {
        pages
    } else {
        let mut g = Vec::with_capacity(pages.len());
        for (i, page) in pages.chunks_exact(PAGE_SIZE).enumerate() {
            if zero_bitmap & (1 << i) == 0 {
                g.extend_from_slice(page);
            }
        }
        gathered = g;
        &gathered
    };
    let data_crc = crc32fast::hash(raw);
    let compressed = lz4_flex::block::compress(raw);
    let (codec, payload) = if compressed.len() < raw.len() {
        (Codec::Lz4, compressed)
    } else {
        (Codec::Raw, raw.to_vec())
    };
    let payload_crc = crc32fast::hash(&payload);
    EncodedChunk {
        header: header(codec, payload.len() as u32, payload_crc, data_crc),
        payload,
    }
}

/// Checks a payload's length and CRC against its index entry.
pub(crate) fn check_payload(
    entry: &IndexEntry,
    index: u64,
    payload: &[u8],
) -> Result<(), FormatError> {
    let at = entry.offset.0;
    if payload.len() != entry.stored_len as usize {
        return Err(FormatError::mismatch(
            format!("chunk {index}"),
            "payload length",
            at,
            entry.stored_len.into(),
            payload.len() as u64,
        ));
    }
    let computed = crc32fast::hash(payload);
    if computed != entry.payload_crc {
        return Err(FormatError::checksum(
            format!("chunk {index} payload"),
            at,
            entry.payload_crc,
            computed,
        ));
    }
    Ok(())
}

/// Decompresses an lz4 block into exactly `target.len()` bytes.
pub(crate) fn decompress_exact(
    src: &[u8],
    target: &mut [u8],
    index: u64,
    at: u64,
) -> Result<(), FormatError> {
    let n = lz4_flex::block::decompress_into(src, target).map_err(|e| FormatError::Decompress {
        index,
        offset: ImageOffset(at),
        reason: e.to_string(),
    })?;
    if n != target.len() {
        return Err(FormatError::Decompress {
            index,
            offset: ImageOffset(at),
            reason: format!("produced {n} bytes, expected {}", target.len()),
        });
    }
    Ok(())
}

/// Decodes a chunk's payload into `out` (`page_count` whole pages), zero
/// pages included, after checking both CRCs.
pub fn decode_chunk(
    entry: &IndexEntry,
    index: u64,
    payload: &[u8],
    out: &mut [u8],
) -> Result<(), FormatError> {
    let at = entry.offset.0;
    check_payload(entry, index, payload)?;
    let raw_len = entry.raw_len();
    let check_data = |raw: &[u8]| {
        let computed = crc32fast::hash(raw);
        if computed == entry.data_crc {
            Ok(())
        } else {
            Err(FormatError::checksum(
                format!("chunk {index} contents"),
                at,
                entry.data_crc,
                computed,
            ))
        }
    };
    match entry.codec {
        Codec::Zero => out.fill(0),
        Codec::Raw => {
            check_data(payload)?;
            out[..raw_len].copy_from_slice(payload);
        }
        Codec::Lz4 => {
            decompress_exact(payload, &mut out[..raw_len], index, at)?;
            check_data(&out[..raw_len])?;
        }
    }
    if entry.codec != Codec::Zero && entry.zero_bitmap != 0 {
        scatter_in_place(entry.zero_bitmap, out);
    }
    Ok(())
}

/// Moves the stored pages, packed at the front of `out`, to their slots
/// and zero-fills the others. Working from the last slot down, a page is
/// never overwritten before it is moved (its slot is at or after it).
pub(crate) fn scatter_in_place(zero_bitmap: u64, out: &mut [u8]) {
    let slots = out.len() / PAGE_SIZE;
    let mut stored = slots - zero_bitmap.count_ones() as usize;
    for slot in (0..slots).rev() {
        let at = slot * PAGE_SIZE;
        if zero_bitmap & (1 << slot) != 0 {
            out[at..at + PAGE_SIZE].fill(0);
        } else {
            stored -= 1;
            if stored != slot {
                out.copy_within(stored * PAGE_SIZE..(stored + 1) * PAGE_SIZE, at);
            }
        }
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

    fn spec(n: u8) -> ChunkSpec {
        ChunkSpec {
            first_pfn: Pfn(64),
            page_count: n,
            range: 0,
        }
    }

    fn round_trip(pages: &[u8], n: u8) -> EncodedChunk {
        let c = encode_chunk(&spec(n), 3, [9; 16], pages);
        let h = ChunkHeader::decode(&c.header.encode(), 0).unwrap();
        assert_eq!(h, c.header);
        let e = IndexEntry::decode(&h.index_entry(ImageOffset(4096)).encode(), 0).unwrap();
        let mut out = vec![0xaa; pages.len()];
        decode_chunk(&e, 0, &c.payload, &mut out).unwrap();
        assert_eq!(out, pages);
        c
    }

    #[test]
    fn scatter_in_place_matches_the_bitmap() {
        let mut out = vec![0u8; 4 * PAGE_SIZE];
        out[..PAGE_SIZE].fill(1);
        out[PAGE_SIZE..2 * PAGE_SIZE].fill(2);
        out[2 * PAGE_SIZE..].fill(9);
        scatter_in_place(0b1010, &mut out);
        let firsts: Vec<u8> = out.chunks(PAGE_SIZE).map(|p| p[0]).collect();
        assert_eq!(firsts, [1, 0, 2, 0]);
        assert!(out.chunks(PAGE_SIZE).all(|p| p.iter().all(|&b| b == p[0])));
    }

    #[test]
    fn codecs_are_chosen_by_content() {
        let zero = vec![0u8; 4 * PAGE_SIZE];
        assert_eq!(round_trip(&zero, 4).header.codec, Codec::Zero);
        let text: Vec<u8> = (0..4 * PAGE_SIZE).map(|i| b"kjump "[i % 6]).collect();
        assert_eq!(round_trip(&text, 4).header.codec, Codec::Lz4);
        let mut x = 0x1234_5678_9abc_def0u64;
        let random: Vec<u8> = (0..4 * PAGE_SIZE)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let c = round_trip(&random, 4);
        assert_eq!(c.header.codec, Codec::Raw);
        let mut mixed = random.clone();
        mixed[PAGE_SIZE..2 * PAGE_SIZE].fill(0);
        let c = round_trip(&mixed, 4);
        assert_eq!(c.header.zero_bitmap, 0b10);
        assert_eq!(c.payload.len(), 3 * PAGE_SIZE);
    }

    #[test]
    fn corrupt_payload_is_caught_by_crc() {
        let text: Vec<u8> = (0..2 * PAGE_SIZE).map(|i| (i % 7) as u8).collect();
        let mut c = encode_chunk(&spec(2), 0, [0; 16], &text);
        c.payload[3] ^= 1;
        let e = c.header.index_entry(ImageOffset(0));
        let mut out = vec![0; text.len()];
        let err = decode_chunk(&e, 0, &c.payload, &mut out).unwrap_err();
        assert!(matches!(err, FormatError::Checksum { .. }), "{err}");
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

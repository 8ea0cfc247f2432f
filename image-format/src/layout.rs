//! Where everything lies: the sections of an image, and the offset and size
//! of every field of every on-disk structure, as the tables of `FORMAT.md`
//! give them. Encoders, decoders and the tests that damage images one
//! field at a time all name fields through this module; nothing else
//! writes an offset as a number.
//!
//! Each structure's `FIELDS` table is checked at compile time to cover the
//! structure exactly, field after field without gap or overlap, and a test
//! holds every table to its table in `FORMAT.md`.

/// Size of a page of the saved machine.
pub const PAGE_SIZE: usize = 4096;
/// Alignment of the image's sections.
pub const BLOCK_SIZE: usize = 4096;
/// Architecture named in the magic.
#[cfg(target_arch = "x86_64")]
pub const ARCH_NAME: &str = "x86_64";
/// Architecture named in the magic.
#[cfg(target_arch = "aarch64")]
pub const ARCH_NAME: &str = "aarch64";

/// Bytes of an image uuid, wherever a structure repeats it.
pub const UUID_LEN: usize = 16;
/// Bytes of the AES-GCM tag that follows every sealed payload and the
/// sealed metadata.
pub const TAG_SIZE: usize = 16;
/// Pages per chunk at most; the zero bitmap is one `u64`.
pub const CHUNK_PAGES: usize = 64;
/// Where the metadata section starts: the block after the superblock's.
pub const METADATA_OFFSET: u64 = BLOCK_SIZE as u64;

/// One row of a structure's table in `FORMAT.md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// What the field holds.
    pub name: &'static str,
    /// Its first byte, from the start of the structure (the superblock's
    /// crypto area counts from the superblock's start, as FORMAT.md does).
    pub offset: usize,
    /// Its bytes.
    pub size: usize,
}

const fn field(name: &'static str, offset: usize, size: usize) -> Field {
    Field { name, offset, size }
}

/// Whether `fields` follow each other from `start` to `end` without a gap
/// or an overlap.
pub const fn tiles(fields: &[Field], start: usize, end: usize) -> bool {
    let mut at = start;
    let mut i = 0;
    while i < fields.len() {
        if fields[i].offset != at || fields[i].size == 0 {
            return false;
        }
        at += fields[i].size;
        i += 1;
    }
    at == end
}

/// The superblock, at image offset 0; the rest of its block is zero.
pub mod superblock {
    use super::{field, tiles, Field};

    /// Bytes of fields; the rest of block 0 is zero.
    pub const SIZE: usize = 512;
    /// `KJUMPIMG` and the architecture name, NUL padded.
    pub const MAGIC: usize = 0;
    /// Major version.
    pub const MAJOR: usize = 16;
    /// Minor version.
    pub const MINOR: usize = 18;
    /// Superblock size.
    pub const SIZE_FIELD: usize = 20;
    /// Incompatible feature flags.
    pub const INCOMPAT: usize = 24;
    /// Compatible feature flags.
    pub const COMPAT: usize = 32;
    /// Page size.
    pub const PAGE_SIZE: usize = 40;
    /// Life state.
    pub const STATE: usize = 44;
    /// Image uuid.
    pub const UUID: usize = 48;
    /// Capture time.
    pub const CAPTURE_TIME: usize = 64;
    /// Consumed time.
    pub const CONSUMED_TIME: usize = 72;
    /// `metadata_offset`; the layout fields run from here to [`RESERVED`].
    pub const METADATA_OFFSET: usize = 80;
    /// `metadata_len`.
    pub const METADATA_LEN: usize = 88;
    /// CRC32 of the metadata section.
    pub const METADATA_CRC: usize = 96;
    /// CRC32 of the index.
    pub const INDEX_CRC: usize = 100;
    /// `data_offset`.
    pub const DATA_OFFSET: usize = 104;
    /// `data_len`.
    pub const DATA_LEN: usize = 112;
    /// `index_offset`.
    pub const INDEX_OFFSET: usize = 120;
    /// `chunk_count`.
    pub const CHUNK_COUNT: usize = 128;
    /// `trailer_offset`.
    pub const TRAILER_OFFSET: usize = 136;
    /// `image_len`.
    pub const IMAGE_LEN: usize = 144;
    /// Pages covered by the ranges.
    pub const TOTAL_PAGES: usize = 152;
    /// Zero pages, not stored.
    pub const ZERO_PAGES: usize = 160;
    /// Reserved, zero; an encrypted image's crypto area starts here.
    pub const RESERVED: usize = 168;
    /// Restores begun: the normal boot counts one before it loads the
    /// restore kernel. The restore record runs from here to [`CRC`].
    pub const RESTORE_ATTEMPTS: usize = 320;
    /// Reserved, zero.
    pub const RESERVED_B: usize = 324;
    /// The chunk a failed restore stopped at, plus one (0: none).
    pub const FAILED_CHUNK: usize = 328;
    /// Why a restore failed after it began writing memory: UTF-8, NUL
    /// padded.
    pub const FAILURE: usize = 336;
    /// Bytes of [`FAILURE`].
    pub const FAILURE_LEN: usize = 168;
    /// Reserved, zero.
    pub const RESERVED_C: usize = 504;
    /// CRC32 of bytes `0..CRC`.
    pub const CRC: usize = SIZE - 4;

    /// The superblock table of FORMAT.md.
    pub const FIELDS: &[Field] = &[
        field("magic", MAGIC, 16),
        field("major version", MAJOR, 2),
        field("minor version", MINOR, 2),
        field("superblock size", SIZE_FIELD, 4),
        field("incompatible features", INCOMPAT, 8),
        field("compatible features", COMPAT, 8),
        field("page size", PAGE_SIZE, 4),
        field("state", STATE, 4),
        field("uuid", UUID, 16),
        field("capture time", CAPTURE_TIME, 8),
        field("consumed time", CONSUMED_TIME, 8),
        field("metadata offset", METADATA_OFFSET, 8),
        field("metadata length", METADATA_LEN, 8),
        field("metadata crc", METADATA_CRC, 4),
        field("index crc", INDEX_CRC, 4),
        field("data offset", DATA_OFFSET, 8),
        field("data length", DATA_LEN, 8),
        field("index offset", INDEX_OFFSET, 8),
        field("chunk count", CHUNK_COUNT, 8),
        field("trailer offset", TRAILER_OFFSET, 8),
        field("image length", IMAGE_LEN, 8),
        field("total pages", TOTAL_PAGES, 8),
        field("zero pages", ZERO_PAGES, 8),
        field("reserved", RESERVED, RESTORE_ATTEMPTS - RESERVED),
        field("restore attempts", RESTORE_ATTEMPTS, 4),
        field("reserved", RESERVED_B, 4),
        field("failed chunk", FAILED_CHUNK, 8),
        field("restore failure", FAILURE, FAILURE_LEN),
        field("reserved", RESERVED_C, 4),
        field("crc", CRC, 4),
    ];
    const _: () = assert!(tiles(FIELDS, 0, SIZE));
    const _: () = assert!(SIZE <= super::BLOCK_SIZE);
    // The commit is one sector write.
    const _: () = assert!(SIZE == 512);
}

/// The crypto area of an encrypted image's superblock, in its reserved
/// bytes. Offsets count from the superblock's start.
pub mod crypto_area {
    use super::{field, tiles, Field};

    /// First byte of the area.
    pub const START: usize = super::superblock::RESERVED;
    /// Cipher code.
    pub const CIPHER: usize = 168;
    /// Key derivation code.
    pub const KDF: usize = 169;
    /// Reserved, zero.
    pub const RESERVED: usize = 170;
    /// Argon2 memory cost in KiB.
    pub const MEMORY: usize = 172;
    /// Argon2 passes.
    pub const ITERATIONS: usize = 176;
    /// Argon2 lanes.
    pub const LANES: usize = 180;
    /// The image's salt.
    pub const SALT: usize = 184;
    /// Bytes of the salt.
    pub const SALT_LEN: usize = 32;
    /// Key check value.
    pub const CHECK: usize = 216;
    /// Bytes of the key check value.
    pub const CHECK_LEN: usize = 32;
    /// Image seal.
    pub const SEAL: usize = 248;
    /// Bytes of the image seal (HMAC-SHA256).
    pub const SEAL_LEN: usize = 32;
    /// `resume_record_len`.
    pub const RESUME_RECORD_LEN: usize = 280;
    /// First byte after the area; reserved and zero up to the restore
    /// record.
    pub const END: usize = 284;

    /// The crypto area table of FORMAT.md.
    pub const FIELDS: &[Field] = &[
        field("cipher", CIPHER, 1),
        field("key derivation", KDF, 1),
        field("reserved", RESERVED, 2),
        field("argon2 memory", MEMORY, 4),
        field("argon2 passes", ITERATIONS, 4),
        field("argon2 lanes", LANES, 4),
        field("salt", SALT, SALT_LEN),
        field("key check value", CHECK, CHECK_LEN),
        field("image seal", SEAL, SEAL_LEN),
        field("resume record length", RESUME_RECORD_LEN, 4),
    ];
    const _: () = assert!(tiles(FIELDS, START, END));
    const _: () = assert!(END <= super::superblock::RESTORE_ATTEMPTS);
}

/// A chunk header, at the start of every chunk in the data stream.
pub mod chunk_header {
    use super::{field, tiles, Field};

    /// Bytes of a header.
    pub const SIZE: usize = 64;
    /// `KJCK`.
    pub const MAGIC: usize = 0;
    /// Codec.
    pub const CODEC: usize = 4;
    /// Page count.
    pub const PAGE_COUNT: usize = 5;
    /// Reserved, zero.
    pub const RESERVED_A: usize = 6;
    /// First page frame number.
    pub const FIRST_PFN: usize = 8;
    /// Zero bitmap.
    pub const ZERO_BITMAP: usize = 16;
    /// `stored_len`.
    pub const STORED_LEN: usize = 24;
    /// CRC32 of the payload.
    pub const PAYLOAD_CRC: usize = 28;
    /// CRC32 of the stored pages (zero in an encrypted image).
    pub const DATA_CRC: usize = 32;
    /// Sequence number.
    pub const SEQ: usize = 36;
    /// Image uuid.
    pub const UUID: usize = 40;
    /// Reserved, zero.
    pub const RESERVED_B: usize = 56;
    /// CRC32 of bytes `0..CRC`.
    pub const CRC: usize = 60;

    /// The chunk header table of FORMAT.md.
    pub const FIELDS: &[Field] = &[
        field("magic", MAGIC, 4),
        field("codec", CODEC, 1),
        field("page count", PAGE_COUNT, 1),
        field("reserved", RESERVED_A, 2),
        field("first pfn", FIRST_PFN, 8),
        field("zero bitmap", ZERO_BITMAP, 8),
        field("stored length", STORED_LEN, 4),
        field("payload crc", PAYLOAD_CRC, 4),
        field("contents crc", DATA_CRC, 4),
        field("sequence", SEQ, 4),
        field("uuid", UUID, 16),
        field("reserved", RESERVED_B, 4),
        field("crc", CRC, 4),
    ];
    const _: () = assert!(tiles(FIELDS, 0, SIZE));
}

/// An entry of the chunk index: 40 bytes per chunk.
pub mod index_entry {
    use super::{field, tiles, Field};

    /// Bytes of an entry.
    pub const SIZE: usize = 40;
    /// Image offset of the chunk header.
    pub const OFFSET: usize = 0;
    /// First page frame number.
    pub const FIRST_PFN: usize = 8;
    /// Zero bitmap.
    pub const ZERO_BITMAP: usize = 16;
    /// `stored_len`.
    pub const STORED_LEN: usize = 24;
    /// CRC32 of the payload.
    pub const PAYLOAD_CRC: usize = 28;
    /// CRC32 of the stored pages.
    pub const DATA_CRC: usize = 32;
    /// Codec.
    pub const CODEC: usize = 36;
    /// Page count.
    pub const PAGE_COUNT: usize = 37;
    /// Reserved, zero.
    pub const RESERVED: usize = 38;

    /// The chunk index table of FORMAT.md.
    pub const FIELDS: &[Field] = &[
        field("chunk offset", OFFSET, 8),
        field("first pfn", FIRST_PFN, 8),
        field("zero bitmap", ZERO_BITMAP, 8),
        field("stored length", STORED_LEN, 4),
        field("payload crc", PAYLOAD_CRC, 4),
        field("contents crc", DATA_CRC, 4),
        field("codec", CODEC, 1),
        field("page count", PAGE_COUNT, 1),
        field("reserved", RESERVED, 2),
    ];
    const _: () = assert!(tiles(FIELDS, 0, SIZE));
}

/// The trailer, right after the index.
pub mod trailer {
    use super::{field, tiles, Field};

    /// Bytes of the trailer.
    pub const SIZE: usize = 64;
    /// `KJTRAIL\0`.
    pub const MAGIC: usize = 0;
    /// Image uuid.
    pub const UUID: usize = 8;
    /// `index_offset`.
    pub const INDEX_OFFSET: usize = 24;
    /// `chunk_count`.
    pub const CHUNK_COUNT: usize = 32;
    /// CRC32 of the index.
    pub const INDEX_CRC: usize = 40;
    /// CRC32 of the metadata section.
    pub const METADATA_CRC: usize = 44;
    /// `data_len`.
    pub const DATA_LEN: usize = 48;
    /// Reserved, zero.
    pub const RESERVED: usize = 56;
    /// CRC32 of bytes `0..CRC`.
    pub const CRC: usize = 60;

    /// The trailer table of FORMAT.md.
    pub const FIELDS: &[Field] = &[
        field("magic", MAGIC, 8),
        field("uuid", UUID, 16),
        field("index offset", INDEX_OFFSET, 8),
        field("chunk count", CHUNK_COUNT, 8),
        field("index crc", INDEX_CRC, 4),
        field("metadata crc", METADATA_CRC, 4),
        field("data length", DATA_LEN, 8),
        field("reserved", RESERVED, 4),
        field("crc", CRC, 4),
    ];
    const _: () = assert!(tiles(FIELDS, 0, SIZE));
}

/// A metadata record's header; its value follows, zero padded to a
/// multiple of [`metadata_record::ALIGN`].
pub mod metadata_record {
    use super::{field, tiles, Field};

    /// Bytes of the header.
    pub const SIZE: usize = 8;
    /// Tag.
    pub const TAG: usize = 0;
    /// Flags.
    pub const FLAGS: usize = 2;
    /// Value length.
    pub const LEN: usize = 4;
    /// Every record, padding included, is a multiple of this.
    pub const ALIGN: usize = 8;

    /// `tag: u16, flags: u16, len: u32` (FORMAT.md, Metadata).
    pub const FIELDS: &[Field] = &[
        field("tag", TAG, 2),
        field("flags", FLAGS, 2),
        field("length", LEN, 4),
    ];
    const _: () = assert!(tiles(FIELDS, 0, SIZE));
}

/// The extent map at the start of a file that holds an image.
pub mod extent_map {
    use super::{field, tiles, Field};

    /// Bytes of the map's header; the extents follow.
    pub const HEADER_SIZE: usize = 64;
    /// `KJUMPMAP`.
    pub const MAGIC: usize = 0;
    /// Version.
    pub const VERSION: usize = 8;
    /// CRC32 of the whole map with this field zero.
    pub const CRC: usize = 12;
    /// Map length.
    pub const MAP_LEN: usize = 16;
    /// File length covered.
    pub const FILE_LEN: usize = 24;
    /// Extent count.
    pub const COUNT: usize = 32;
    /// Reserved, zero.
    pub const RESERVED: usize = 36;

    /// The header rows of the extent map table of FORMAT.md.
    pub const FIELDS: &[Field] = &[
        field("magic", MAGIC, 8),
        field("version", VERSION, 4),
        field("crc", CRC, 4),
        field("map length", MAP_LEN, 8),
        field("file length", FILE_LEN, 8),
        field("extent count", COUNT, 4),
        field("reserved", RESERVED, HEADER_SIZE - RESERVED),
    ];
    const _: () = assert!(tiles(FIELDS, 0, HEADER_SIZE));

    /// Bytes of one extent record.
    pub const EXTENT_SIZE: usize = 24;
    /// File offset of an extent, within its record.
    pub const EXTENT_LOGICAL: usize = 0;
    /// Device offset of an extent, within its record.
    pub const EXTENT_PHYSICAL: usize = 8;
    /// Length of an extent, within its record.
    pub const EXTENT_LEN: usize = 16;

    /// One extent record: file offset, device offset, length.
    pub const EXTENT_FIELDS: &[Field] = &[
        field("file offset", EXTENT_LOGICAL, 8),
        field("device offset", EXTENT_PHYSICAL, 8),
        field("length", EXTENT_LEN, 8),
    ];
    const _: () = assert!(tiles(EXTENT_FIELDS, 0, EXTENT_SIZE));
}

/// Where everything after the superblock lies; all zero while `Writing`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// Start of the metadata section (always one block in).
    pub metadata_offset: u64,
    /// Bytes of metadata records.
    pub metadata_len: u64,
    /// CRC32 of the metadata bytes.
    pub metadata_crc: u32,
    /// Start of the chunk stream (block aligned).
    pub data_offset: u64,
    /// Bytes of chunk stream.
    pub data_len: u64,
    /// Start of the chunk index (block aligned).
    pub index_offset: u64,
    /// Number of chunks (and index entries).
    pub chunk_count: u64,
    /// CRC32 of the index bytes.
    pub index_crc: u32,
    /// Start of the trailer (right after the index).
    pub trailer_offset: u64,
    /// Total bytes of the image, block aligned.
    pub image_len: u64,
    /// Pages covered by the saved ranges.
    pub total_pages: u64,
    /// Of those, pages that were all zero and are not stored.
    pub zero_pages: u64,
}

/// Rounds `n` up to the next block boundary, `None` on overflow.
pub fn block_align(n: u64) -> Option<u64> {
    n.checked_next_multiple_of(BLOCK_SIZE as u64)
}

/// Where every section of an image goes, given what the writer knows at the
/// end: the metadata size, the chunk stream size and the chunk count.
pub fn plan_layout(metadata_len: u64, data_len: u64, chunk_count: u64) -> Option<Layout> {
    let metadata_offset = METADATA_OFFSET;
    let data_offset = block_align(metadata_offset.checked_add(metadata_len)?)?;
    let index_offset = block_align(data_offset.checked_add(data_len)?)?;
    let index_len = chunk_count.checked_mul(index_entry::SIZE as u64)?;
    let trailer_offset = index_offset.checked_add(index_len)?;
    let image_len = block_align(trailer_offset.checked_add(trailer::SIZE as u64)?)?;
    Some(Layout {
        metadata_offset,
        metadata_len,
        data_offset,
        data_len,
        index_offset,
        chunk_count,
        trailer_offset,
        image_len,
        ..Layout::default()
    })
}

/// The largest image `metadata` can produce, sealed (an encrypted image)
/// or not: every page stored raw, each chunk with its header and, sealed,
/// its tag, after the metadata section as it is written (sealed: the
/// records, their tag and the resume record). `None` when it overflows.
pub fn worst_case_len(metadata: &crate::Metadata, sealed: bool) -> Option<u64> {
    let count = crate::chunk_count(&metadata.ranges);
    let pages = metadata
        .ranges
        .total_pages()
        .checked_mul(PAGE_SIZE as u64)?;
    let data = count
        .checked_mul(crate::ChunkCodec::max_overhead(sealed))?
        .checked_add(pages)?;
    let meta_len = crate::MetadataSection::len_of(metadata, sealed);
    plan_layout(meta_len, data, count).map(|l| l.image_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_refuses_gaps_overlaps_and_short_covers() {
        let ok = [field("a", 0, 4), field("b", 4, 4)];
        assert!(tiles(&ok, 0, 8));
        assert!(!tiles(&ok, 0, 9));
        assert!(!tiles(&[field("a", 0, 4), field("b", 5, 3)], 0, 8));
        assert!(!tiles(&[field("a", 0, 4), field("b", 3, 5)], 0, 8));
        assert!(!tiles(&[field("a", 0, 0), field("b", 0, 8)], 0, 8));
    }

    #[test]
    fn plan_layout_aligns_every_section() {
        let l = plan_layout(100, 5000, 3).unwrap();
        assert_eq!(l.metadata_offset, 4096);
        assert_eq!(l.data_offset, 8192);
        assert_eq!(l.index_offset, 16384);
        assert_eq!(l.trailer_offset, 16384 + 120);
        assert_eq!(l.image_len, 20480);
        assert_eq!(plan_layout(u64::MAX - 10, 0, 0), None);
    }

    /// Pages no compressor can shrink (xorshift), so every chunk is
    /// stored raw: the image the worst case describes.
    fn incompressible(len: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn worst_case_is_reached_by_raw_chunks_and_a_sealed_one_is_larger() {
        use crate::addr::{MemoryMap, PhysAddr, PhysRange};
        use crate::crypto::{ImageKeys, Kdf, Secret};
        use crate::{chunk_specs, ChunkCodec, Metadata, MetadataSection};

        // 61 chunks, two of them partial: their headers take 3904 bytes,
        // within one block, and with their tags 4880, past it.
        let r = |a, b| PhysRange::new(PhysAddr(a), PhysAddr(b)).unwrap();
        let metadata = Metadata {
            ranges: MemoryMap::from_sorted(vec![r(0x1000, 0xecb000), r(0x100_0000, 0x100_3000)])
                .unwrap(),
            extra: vec![("mode".into(), "poweroff".into())],
            ..Metadata::default()
        };
        let secret = Secret::key_file(vec![7; 32]).unwrap();
        let uuid = [3; UUID_LEN];
        let keys = ImageKeys::derive(&secret, &Kdf::KeyFile, &[1; 32], &uuid).unwrap();
        let image_len = |codec: ChunkCodec, meta_len: u64| {
            let (mut data, mut count) = (0u64, 0u64);
            for (seq, spec) in chunk_specs(&metadata.ranges).enumerate() {
                let pages = incompressible(usize::from(spec.page_count) * PAGE_SIZE);
                let c = codec.encode(&spec, seq as u32, uuid, &pages);
                data += (c.header.encode().len() + c.payload.len()) as u64;
                count += 1;
            }
            plan_layout(meta_len, data, count).unwrap().image_len
        };

        let plain = worst_case_len(&metadata, false).unwrap();
        let plain_meta = MetadataSection::plain(&metadata).bytes().len() as u64;
        assert_eq!(image_len(ChunkCodec::Plain, plain_meta), plain);

        let sealed = worst_case_len(&metadata, true).unwrap();
        let sealed_meta = MetadataSection::seal(&metadata, &keys, &uuid).bytes().len() as u64;
        assert_eq!(image_len(ChunkCodec::Sealed(&keys), sealed_meta), sealed);
        assert_eq!(sealed, plain + BLOCK_SIZE as u64);
    }
}

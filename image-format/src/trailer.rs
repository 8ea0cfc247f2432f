//! The trailer: the last structure a capture writes before the commit.
//!
//! It repeats the image's identity and the index's position and checksum,
//! so a reader can tell an image written through to its end from one whose
//! superblock points at leftovers.

use crate::addr::ImageOffset;
use crate::error::FormatError;
use crate::le::{put_u32, put_u64, show_bytes, u32_at, u64_at};

/// Size of the encoded trailer.
pub const TRAILER_SIZE: usize = 64;
/// Magic at the start of the trailer.
pub const TRAILER_MAGIC: [u8; 8] = *b"KJTRAIL\0";

/// The decoded trailer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer {
    /// The image's uuid.
    pub uuid: [u8; 16],
    /// Start of the chunk index.
    pub index_offset: u64,
    /// Chunks in the index.
    pub chunk_count: u64,
    /// CRC32 of the index bytes.
    pub index_crc: u32,
    /// CRC32 of the metadata bytes.
    pub metadata_crc: u32,
    /// Bytes of chunk stream.
    pub data_len: u64,
}

impl Trailer {
    /// Encodes the trailer.
    pub fn encode(&self) -> [u8; TRAILER_SIZE] {
        let mut b = [0u8; TRAILER_SIZE];
        b[0..8].copy_from_slice(&TRAILER_MAGIC);
        b[8..24].copy_from_slice(&self.uuid);
        put_u64(&mut b, 24, self.index_offset);
        put_u64(&mut b, 32, self.chunk_count);
        put_u32(&mut b, 40, self.index_crc);
        put_u32(&mut b, 44, self.metadata_crc);
        put_u64(&mut b, 48, self.data_len);
        let crc = crc32fast::hash(&b[..60]);
        put_u32(&mut b, 60, crc);
        b
    }

    /// Decodes the trailer found at `offset`.
    pub fn decode(b: &[u8; TRAILER_SIZE], offset: u64) -> Result<Self, FormatError> {
        if b[0..8] != TRAILER_MAGIC {
            return Err(FormatError::BadMagic {
                what: "trailer",
                offset: ImageOffset(offset),
                expected: show_bytes(&TRAILER_MAGIC),
                found: show_bytes(&b[0..8]),
            });
        }
        let stored = u32_at(b, 60);
        let computed = crc32fast::hash(&b[..60]);
        if stored != computed {
            return Err(FormatError::checksum("trailer", offset, stored, computed));
        }
        if let Some(p) = crate::le::first_nonzero(&b[56..60]) {
            return Err(FormatError::ReservedNotZero {
                what: "trailer",
                offset: ImageOffset(offset + 56 + p as u64),
                found: b[56 + p].into(),
            });
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[8..24]);
        Ok(Trailer {
            uuid,
            index_offset: u64_at(b, 24),
            chunk_count: u64_at(b, 32),
            index_crc: u32_at(b, 40),
            metadata_crc: u32_at(b, 44),
            data_len: u64_at(b, 48),
        })
    }
}

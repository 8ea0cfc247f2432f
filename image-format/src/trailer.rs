//! The trailer: the last structure a capture writes before the commit.
//!
//! It repeats the image's identity and the index's position and checksum,
//! so a reader can tell an image written through to its end from one whose
//! superblock points at leftovers.

use crate::addr::ImageOffset;
use crate::error::FormatError;
use crate::layout::{trailer as t, Layout, UUID_LEN};
use crate::le::{put_u32, put_u64, show_bytes, u32_at, u64_at};

/// Size of the encoded trailer.
pub const TRAILER_SIZE: usize = t::SIZE;
/// Magic at the start of the trailer.
pub const TRAILER_MAGIC: [u8; 8] = *b"KJTRAIL\0";
const _: () = assert!(TRAILER_MAGIC.len() == t::UUID - t::MAGIC);

/// The decoded trailer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer {
    /// The image's uuid.
    pub uuid: [u8; UUID_LEN],
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
    /// The trailer of the image `uuid` laid out as `layout` says.
    pub fn of(uuid: [u8; UUID_LEN], layout: &Layout) -> Trailer {
        Trailer {
            uuid,
            index_offset: layout.index_offset,
            chunk_count: layout.chunk_count,
            index_crc: layout.index_crc,
            metadata_crc: layout.metadata_crc,
            data_len: layout.data_len,
        }
    }

    /// Checks this trailer, found at `offset`, against the superblock's
    /// uuid and layout: a trailer of another capture, or one that
    /// disagrees field for field, means the superblock points at
    /// leftovers.
    pub fn check_against(
        &self,
        uuid: &[u8; UUID_LEN],
        layout: &Layout,
        offset: u64,
    ) -> Result<(), FormatError> {
        if self.uuid != *uuid {
            return Err(FormatError::ForeignUuid {
                what: "trailer".into(),
                offset: ImageOffset(offset),
            });
        }
        let want = Trailer::of(*uuid, layout);
        let fields = [
            ("index offset", want.index_offset, self.index_offset),
            ("chunk count", want.chunk_count, self.chunk_count),
            ("index crc", want.index_crc.into(), self.index_crc.into()),
            (
                "metadata crc",
                want.metadata_crc.into(),
                self.metadata_crc.into(),
            ),
            ("data length", want.data_len, self.data_len),
        ];
        match fields.into_iter().find(|(_, a, b)| a != b) {
            Some((field, expected, found)) => Err(FormatError::mismatch(
                "trailer", field, offset, expected, found,
            )),
            None => Ok(()),
        }
    }

    /// Encodes the trailer.
    pub fn encode(&self) -> [u8; TRAILER_SIZE] {
        let mut b = [0u8; TRAILER_SIZE];
        b[t::MAGIC..t::MAGIC + TRAILER_MAGIC.len()].copy_from_slice(&TRAILER_MAGIC);
        b[t::UUID..t::UUID + UUID_LEN].copy_from_slice(&self.uuid);
        put_u64(&mut b, t::INDEX_OFFSET, self.index_offset);
        put_u64(&mut b, t::CHUNK_COUNT, self.chunk_count);
        put_u32(&mut b, t::INDEX_CRC, self.index_crc);
        put_u32(&mut b, t::METADATA_CRC, self.metadata_crc);
        put_u64(&mut b, t::DATA_LEN, self.data_len);
        let crc = crc32fast::hash(&b[..t::CRC]);
        put_u32(&mut b, t::CRC, crc);
        b
    }

    /// Decodes the trailer found at `offset`.
    pub fn decode(b: &[u8; TRAILER_SIZE], offset: u64) -> Result<Self, FormatError> {
        let magic = &b[t::MAGIC..t::MAGIC + TRAILER_MAGIC.len()];
        if magic != TRAILER_MAGIC {
            return Err(FormatError::BadMagic {
                what: "trailer",
                offset: ImageOffset(offset),
                expected: show_bytes(&TRAILER_MAGIC),
                found: show_bytes(magic),
            });
        }
        let stored = u32_at(b, t::CRC);
        let computed = crc32fast::hash(&b[..t::CRC]);
        if stored != computed {
            return Err(FormatError::checksum("trailer", offset, stored, computed));
        }
        let reserved = &b[t::RESERVED..t::CRC];
        if let Some(p) = crate::le::first_nonzero(reserved) {
            return Err(FormatError::ReservedNotZero {
                what: "trailer",
                offset: ImageOffset(offset + (t::RESERVED + p) as u64),
                found: reserved[p].into(),
            });
        }
        let mut uuid = [0u8; UUID_LEN];
        uuid.copy_from_slice(&b[t::UUID..t::UUID + UUID_LEN]);
        Ok(Trailer {
            uuid,
            index_offset: u64_at(b, t::INDEX_OFFSET),
            chunk_count: u64_at(b, t::CHUNK_COUNT),
            index_crc: u32_at(b, t::INDEX_CRC),
            metadata_crc: u32_at(b, t::METADATA_CRC),
            data_len: u64_at(b, t::DATA_LEN),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            index_offset: 0x3000,
            chunk_count: 5,
            index_crc: 0xdead_beef,
            metadata_crc: 0x1234_5678,
            data_len: 0x1800,
            ..Layout::default()
        }
    }

    #[test]
    fn round_trips_and_agrees_with_its_layout() {
        let tr = Trailer::of([3; 16], &layout());
        let b = tr.encode();
        assert_eq!(Trailer::decode(&b, 0x3000).unwrap(), tr);
        assert!(tr.check_against(&[3; 16], &layout(), 0x3000).is_ok());
    }

    #[test]
    fn a_foreign_or_disagreeing_trailer_is_named() {
        let tr = Trailer::of([3; 16], &layout());
        assert!(matches!(
            tr.check_against(&[4; 16], &layout(), 0x3000),
            Err(FormatError::ForeignUuid { .. })
        ));
        let mut other = layout();
        other.metadata_crc ^= 1;
        let e = tr.check_against(&[3; 16], &other, 0x3000).unwrap_err();
        assert_eq!(
            e.to_string(),
            "trailer at offset 0x3000: metadata crc is 0x12345678, expected 0x12345679"
        );
    }

    #[test]
    fn any_flipped_byte_is_caught() {
        let b = Trailer::of([3; 16], &layout()).encode();
        for i in 0..TRAILER_SIZE {
            let mut c = b;
            c[i] ^= 0x10;
            assert!(Trailer::decode(&c, 0).is_err(), "flip at {i} not caught");
        }
    }
}

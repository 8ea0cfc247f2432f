//! The superblock: the image's first sector and its commit record.
//!
//! It is written twice by a capture: first in state `Writing` (so whatever
//! image the target held before is no longer valid), and last, after every
//! other byte is on stable storage, in state `Committed`. All its fields sit
//! in the first 512 bytes so the commit is one sector write; a torn write
//! fails the CRC and the image reads as corrupt, never as whole.

use crate::addr::ImageOffset;
use crate::crypto::CryptoParams;
use crate::error::FormatError;
use crate::layout::{
    crypto_area as area, superblock as sb, Layout, ARCH_NAME, BLOCK_SIZE, PAGE_SIZE, UUID_LEN,
};
use crate::le::{first_nonzero, put_u16, put_u32, put_u64, show_bytes, u16_at, u32_at, u64_at};

/// Size of the encoded superblock; the rest of block 0 is zero.
pub const SUPERBLOCK_SIZE: usize = sb::SIZE;
/// Bytes of the magic: the prefix, then the architecture name, NUL padded.
pub const MAGIC_LEN: usize = 16;
/// First half of the magic: the same on every architecture.
pub const MAGIC_PREFIX: [u8; 8] = *b"KJUMPIMG";
// The architecture's name fits the magic, with at least one NUL after it.
const _: () = assert!(MAGIC_PREFIX.len() + ARCH_NAME.len() < MAGIC_LEN);
const _: () = assert!(MAGIC_LEN == sb::MAJOR - sb::MAGIC);

/// Major version this build writes and reads.
pub const VERSION_MAJOR: u16 = 1;
/// Minor version this build writes: 1 added the restore record (bytes
/// 320..508) and the state *failed*.
pub const VERSION_MINOR: u16 = 1;
/// Incompatible feature: the image is encrypted and authenticated; the
/// crypto area (bytes 168..284) holds its parameters.
pub const INCOMPAT_ENCRYPTED: u64 = 1;
/// Incompatible features this build understands.
pub const KNOWN_INCOMPAT: u64 = INCOMPAT_ENCRYPTED;

/// The 16-byte magic of this build's architecture.
pub fn magic() -> [u8; MAGIC_LEN] {
    let mut m = [0u8; MAGIC_LEN];
    m[..8].copy_from_slice(&MAGIC_PREFIX);
    m[8..8 + ARCH_NAME.len()].copy_from_slice(ARCH_NAME.as_bytes());
    m
}

/// Where an image is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageState {
    /// A capture is writing it, or died doing so.
    Writing,
    /// Whole and never resumed.
    Committed,
    /// Whole, and a restore has taken it: never resume it again.
    Consumed,
    /// A restore stopped after it began writing memory (the restore record
    /// says where and why): never resume it again.
    Failed,
}

impl ImageState {
    fn code(self) -> u32 {
        match self {
            ImageState::Writing => 1,
            ImageState::Committed => 2,
            ImageState::Consumed => 3,
            ImageState::Failed => 4,
        }
    }

    fn from_code(c: u32) -> Option<Self> {
        match c {
            1 => Some(ImageState::Writing),
            2 => Some(ImageState::Committed),
            3 => Some(ImageState::Consumed),
            4 => Some(ImageState::Failed),
            _ => None,
        }
    }

    /// Lowercase name as shown to users.
    pub fn name(self) -> &'static str {
        match self {
            ImageState::Writing => "incomplete",
            ImageState::Committed => "committed",
            ImageState::Consumed => "consumed",
            ImageState::Failed => "failed",
        }
    }
}

/// The decoded superblock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// Minor version of the writer.
    pub version_minor: u16,
    /// Compatible feature flags (ignored when unknown).
    pub compat: u64,
    /// Life state.
    pub state: ImageState,
    /// Random identity of this capture; chunks and trailer repeat it.
    pub uuid: [u8; UUID_LEN],
    /// Capture start, nanoseconds since the Unix epoch.
    pub capture_time_ns: u64,
    /// When a restore consumed it (0 unless `Consumed`).
    pub consumed_time_ns: u64,
    /// Where the rest of the image is.
    pub layout: Layout,
    /// The crypto parameters of an encrypted image.
    pub crypto: Option<CryptoParams>,
    /// What restores of it did.
    pub restore: RestoreRecord,
}

/// The restore record: how many restores of an image began, and why one
/// stopped after it began writing memory. Like the state, a restore
/// rewrites it, so an encrypted image's seal leaves it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RestoreRecord {
    /// Restores begun: the normal boot counts one, durably, before it
    /// loads the restore kernel. A restore that finishes leaves the count
    /// as it is and marks the image consumed; one that never finished (the
    /// power failed, the machine stopped) leaves it committed with the
    /// count raised.
    pub attempts: u32,
    /// The chunk a failed restore stopped at.
    pub failed_chunk: Option<u64>,
    /// Why it failed, as far as the record holds (see [`FailureText`]).
    pub failure: FailureText,
}

/// A restore failure's text, UTF-8 and NUL padded in its field; longer text
/// is cut at a character boundary.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FailureText([u8; sb::FAILURE_LEN]);

impl FailureText {
    /// `text`, cut to the field.
    pub fn new(text: &str) -> Self {
        let mut b = [0u8; sb::FAILURE_LEN];
        let mut end = text.len().min(sb::FAILURE_LEN);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        b[..end].copy_from_slice(&text.as_bytes()[..end]);
        FailureText(b)
    }

    /// The text, safe to print: bytes that are not UTF-8 are shown as
    /// U+FFFD and control characters as `?` (the field is not sealed, so
    /// anyone who can write the disk can write it).
    pub fn text(&self) -> String {
        let end = self.0.iter().position(|&c| c == 0).unwrap_or(self.0.len());
        String::from_utf8_lossy(&self.0[..end])
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect()
    }
}

impl Default for FailureText {
    fn default() -> Self {
        FailureText([0; sb::FAILURE_LEN])
    }
}

impl std::fmt::Debug for FailureText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.text().fmt(f)
    }
}

impl Superblock {
    /// A superblock for a capture that has just begun.
    pub fn writing(uuid: [u8; UUID_LEN], capture_time_ns: u64) -> Self {
        Superblock {
            version_minor: VERSION_MINOR,
            compat: 0,
            state: ImageState::Writing,
            uuid,
            capture_time_ns,
            consumed_time_ns: 0,
            layout: Layout::default(),
            crypto: None,
            restore: RestoreRecord::default(),
        }
    }

    /// Encodes into a full block (512 bytes of fields, then zeros).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK_SIZE];
        let l = &self.layout;
        b[sb::MAGIC..sb::MAGIC + MAGIC_LEN].copy_from_slice(&magic());
        put_u16(&mut b, sb::MAJOR, VERSION_MAJOR);
        put_u16(&mut b, sb::MINOR, self.version_minor);
        put_u32(&mut b, sb::SIZE_FIELD, SUPERBLOCK_SIZE as u32);
        let incompat = if self.crypto.is_some() {
            INCOMPAT_ENCRYPTED
        } else {
            0
        };
        put_u64(&mut b, sb::INCOMPAT, incompat);
        put_u64(&mut b, sb::COMPAT, self.compat);
        put_u32(&mut b, sb::PAGE_SIZE, PAGE_SIZE as u32);
        put_u32(&mut b, sb::STATE, self.state.code());
        b[sb::UUID..sb::UUID + UUID_LEN].copy_from_slice(&self.uuid);
        put_u64(&mut b, sb::CAPTURE_TIME, self.capture_time_ns);
        put_u64(&mut b, sb::CONSUMED_TIME, self.consumed_time_ns);
        put_u64(&mut b, sb::METADATA_OFFSET, l.metadata_offset);
        put_u64(&mut b, sb::METADATA_LEN, l.metadata_len);
        put_u32(&mut b, sb::METADATA_CRC, l.metadata_crc);
        put_u32(&mut b, sb::INDEX_CRC, l.index_crc);
        put_u64(&mut b, sb::DATA_OFFSET, l.data_offset);
        put_u64(&mut b, sb::DATA_LEN, l.data_len);
        put_u64(&mut b, sb::INDEX_OFFSET, l.index_offset);
        put_u64(&mut b, sb::CHUNK_COUNT, l.chunk_count);
        put_u64(&mut b, sb::TRAILER_OFFSET, l.trailer_offset);
        put_u64(&mut b, sb::IMAGE_LEN, l.image_len);
        put_u64(&mut b, sb::TOTAL_PAGES, l.total_pages);
        put_u64(&mut b, sb::ZERO_PAGES, l.zero_pages);
        if let Some(c) = &self.crypto {
            c.encode_into(&mut b);
        }
        let r = &self.restore;
        put_u32(&mut b, sb::RESTORE_ATTEMPTS, r.attempts);
        put_u64(
            &mut b,
            sb::FAILED_CHUNK,
            r.failed_chunk.map_or(0, |c| c + 1),
        );
        b[sb::FAILURE..sb::FAILURE + sb::FAILURE_LEN].copy_from_slice(&r.failure.0);
        let crc = crc32fast::hash(&b[..sb::CRC]);
        put_u32(&mut b, sb::CRC, crc);
        b
    }

    /// Decodes and checks block 0 of an image: magic, architecture, version,
    /// features, page size, CRC, reserved bytes and state. It does not check
    /// the layout against the rest of the image; the reader does.
    pub fn decode(block: &[u8]) -> Result<Self, FormatError> {
        let minor = check_header(block)?;
        let incompat = check_features(block)?;
        let encrypted = incompat & INCOMPAT_ENCRYPTED != 0;
        let reserved = if encrypted { area::END } else { sb::RESERVED };
        for (start, end) in [
            (reserved, sb::RESTORE_ATTEMPTS),
            (sb::RESERVED_B, sb::FAILED_CHUNK),
            (sb::RESERVED_C, sb::CRC),
        ] {
            if let Some(p) = first_nonzero(&block[start..end]) {
                return Err(FormatError::ReservedNotZero {
                    what: "superblock",
                    offset: ImageOffset((start + p) as u64),
                    found: block[start + p].into(),
                });
            }
        }
        let crypto = if encrypted {
            Some(CryptoParams::decode_from(block)?)
        } else {
            None
        };
        if let Some(p) = first_nonzero(&block[SUPERBLOCK_SIZE..BLOCK_SIZE]) {
            return Err(FormatError::PaddingNotZero {
                what: "after the superblock",
                offset: ImageOffset((SUPERBLOCK_SIZE + p) as u64),
            });
        }
        let code = u32_at(block, sb::STATE);
        let state = ImageState::from_code(code).ok_or(FormatError::InvalidValue {
            what: "superblock",
            field: "state",
            offset: ImageOffset(sb::STATE as u64),
            value: code.into(),
        })?;
        let mut uuid = [0u8; UUID_LEN];
        uuid.copy_from_slice(&block[sb::UUID..sb::UUID + UUID_LEN]);
        Ok(Superblock {
            version_minor: minor,
            compat: u64_at(block, sb::COMPAT),
            state,
            uuid,
            capture_time_ns: u64_at(block, sb::CAPTURE_TIME),
            consumed_time_ns: u64_at(block, sb::CONSUMED_TIME),
            layout: decode_layout(block),
            crypto,
            restore: decode_restore_record(block),
        })
    }
}

/// Checks that `block` is a whole superblock block of a version this
/// reader knows, intact (CRC) and of the known size; returns its minor
/// version.
fn check_header(block: &[u8]) -> Result<u16, FormatError> {
    if block.len() < BLOCK_SIZE {
        return Err(FormatError::Truncated {
            what: "superblock",
            offset: ImageOffset(0),
            needed: BLOCK_SIZE as u64,
            available: block.len() as u64,
        });
    }
    check_magic(&block[sb::MAGIC..sb::MAGIC + MAGIC_LEN])?;
    let major = u16_at(block, sb::MAJOR);
    let minor = u16_at(block, sb::MINOR);
    if major != VERSION_MAJOR {
        return Err(FormatError::UnsupportedVersion {
            major,
            minor,
            supported: VERSION_MAJOR,
        });
    }
    let stored = u32_at(block, sb::CRC);
    let computed = crc32fast::hash(&block[..sb::CRC]);
    if stored != computed {
        return Err(FormatError::checksum("superblock", 0, stored, computed));
    }
    expect_u32(block, sb::SIZE_FIELD, "size", SUPERBLOCK_SIZE)?;
    Ok(minor)
}

/// Refuses a 32-bit field at `at` that does not hold `want`.
fn expect_u32(block: &[u8], at: usize, what: &'static str, want: usize) -> Result<(), FormatError> {
    let got = u32_at(block, at);
    if got as usize != want {
        return Err(FormatError::mismatch(
            "superblock",
            what,
            0,
            want as u64,
            got.into(),
        ));
    }
    Ok(())
}

/// Refuses incompatible features this reader does not know and a page
/// size other than this machine's; returns the incompatible feature bits.
fn check_features(block: &[u8]) -> Result<u64, FormatError> {
    let incompat = u64_at(block, sb::INCOMPAT);
    if incompat & !KNOWN_INCOMPAT != 0 {
        return Err(FormatError::UnknownIncompatFeatures {
            offset: ImageOffset(sb::INCOMPAT as u64),
            flags: incompat & !KNOWN_INCOMPAT,
        });
    }
    expect_u32(block, sb::PAGE_SIZE, "page size", PAGE_SIZE)?;
    Ok(incompat)
}

fn decode_layout(b: &[u8]) -> Layout {
    Layout {
        metadata_offset: u64_at(b, sb::METADATA_OFFSET),
        metadata_len: u64_at(b, sb::METADATA_LEN),
        metadata_crc: u32_at(b, sb::METADATA_CRC),
        data_offset: u64_at(b, sb::DATA_OFFSET),
        data_len: u64_at(b, sb::DATA_LEN),
        index_offset: u64_at(b, sb::INDEX_OFFSET),
        chunk_count: u64_at(b, sb::CHUNK_COUNT),
        index_crc: u32_at(b, sb::INDEX_CRC),
        trailer_offset: u64_at(b, sb::TRAILER_OFFSET),
        image_len: u64_at(b, sb::IMAGE_LEN),
        total_pages: u64_at(b, sb::TOTAL_PAGES),
        zero_pages: u64_at(b, sb::ZERO_PAGES),
    }
}

fn decode_restore_record(b: &[u8]) -> RestoreRecord {
    let mut failure = [0u8; sb::FAILURE_LEN];
    failure.copy_from_slice(&b[sb::FAILURE..sb::FAILURE + sb::FAILURE_LEN]);
    RestoreRecord {
        attempts: u32_at(b, sb::RESTORE_ATTEMPTS),
        failed_chunk: u64_at(b, sb::FAILED_CHUNK).checked_sub(1),
        failure: FailureText(failure),
    }
}

fn check_magic(found: &[u8]) -> Result<(), FormatError> {
    let want = magic();
    if found == want {
        return Ok(());
    }
    // Another architecture only when the name field holds a name (nonzero
    // bytes, then zeros): damage to this build's own magic, such as a byte
    // after "x86_64" or an empty name, is a bad magic, not "x86_64 != x86_64".
    let arch = &found[8..];
    let name_len = arch.iter().position(|&c| c == 0).unwrap_or(arch.len());
    let padded = arch[name_len..].iter().all(|&c| c == 0);
    if found[..8] == MAGIC_PREFIX && name_len > 0 && padded {
        return Err(FormatError::WrongArchitecture {
            expected: ARCH_NAME,
            found: show_bytes(&arch[..name_len]),
        });
    }
    Err(FormatError::BadMagic {
        what: "superblock",
        offset: ImageOffset(0),
        expected: show_bytes(&want),
        found: show_bytes(found),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_restore_record_round_trips_and_its_text_is_cut_at_a_character() {
        let mut sb = Superblock::writing([7; 16], 123);
        sb.state = ImageState::Failed;
        sb.restore = RestoreRecord {
            attempts: 3,
            failed_chunk: Some(0),
            failure: FailureText::new(&"é".repeat(100)),
        };
        let b = sb.encode();
        let back = Superblock::decode(&b).unwrap();
        assert_eq!(back, sb);
        assert_eq!(back.restore.failed_chunk, Some(0));
        assert_eq!(back.restore.failure.text(), "é".repeat(sb::FAILURE_LEN / 2));
        assert_eq!(u32_at(&b, sb::STATE), 4);
        assert_eq!(FailureText::new("").text(), "");
        assert_eq!(FailureText::new("a\x1b[2Jb\n").text(), "a?[2Jb?");
    }

    #[test]
    fn reserved_bytes_around_the_restore_record_are_refused() {
        for at in [sb::RESTORE_ATTEMPTS - 1, sb::RESERVED_B, sb::RESERVED_C + 3] {
            let mut b = Superblock::writing([7; 16], 123).encode();
            b[at] = 1;
            let crc = crc32fast::hash(&b[..sb::CRC]);
            put_u32(&mut b, sb::CRC, crc);
            match Superblock::decode(&b) {
                Err(FormatError::ReservedNotZero { offset, .. }) => {
                    assert_eq!(offset, ImageOffset(at as u64))
                }
                other => panic!("byte {at}: {other:?}"),
            }
        }
    }

    #[test]
    fn round_trip() {
        let mut sb = Superblock::writing([7; 16], 123);
        sb.state = ImageState::Committed;
        sb.layout.chunk_count = 5;
        sb.layout.image_len = 8192;
        let b = sb.encode();
        assert_eq!(b.len(), BLOCK_SIZE);
        assert_eq!(Superblock::decode(&b).unwrap(), sb);
    }

    #[test]
    fn crypto_area_round_trips() {
        let mut sb = Superblock::writing([7; 16], 123);
        sb.crypto = Some(CryptoParams {
            kdf: crate::crypto::DEFAULT_KDF,
            salt: [1; 32],
            check: [2; 32],
            seal: [3; 32],
            resume_record_len: 40,
        });
        let b = sb.encode();
        assert_eq!(u64_at(&b, sb::INCOMPAT), INCOMPAT_ENCRYPTED);
        assert_eq!(Superblock::decode(&b).unwrap(), sb);
    }

    #[test]
    fn any_flipped_byte_of_the_block_is_caught() {
        let b = Superblock::writing([1; 16], 9).encode();
        for i in 0..BLOCK_SIZE {
            let mut c = b.clone();
            c[i] ^= 0x10;
            assert!(Superblock::decode(&c).is_err(), "flip at {i} not caught");
        }
    }

    #[test]
    fn damage_to_this_architecture_name_is_a_bad_magic() {
        for (at, byte) in [(15, 0x80), (8, 0)] {
            let mut b = Superblock::writing([1; 16], 9).encode();
            b[at] = byte;
            match Superblock::decode(&b) {
                Err(FormatError::BadMagic { .. }) => {}
                other => panic!("byte {at} = {byte:#x}: {other:?}"),
            }
        }
    }

    #[test]
    fn wrong_architecture_is_named() {
        let mut b = Superblock::writing([1; 16], 9).encode();
        b[8..16].copy_from_slice(b"aarch64\0");
        match Superblock::decode(&b) {
            Err(FormatError::WrongArchitecture { found, .. }) => assert_eq!(found, "aarch64"),
            other => panic!("{other:?}"),
        }
    }
}

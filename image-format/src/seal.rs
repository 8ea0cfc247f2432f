//! The image seal of an encrypted image: HMAC-SHA256 under the seal key
//! over, in this order, the metadata section, the index, the trailer and
//! the superblock's sealed fields (FORMAT.md, Sealed structures).
//!
//! The order is the types': [`ImageSeal::over_metadata`] begins with the
//! metadata section, [`ImageSeal::index`] takes the index as it is written,
//! [`ImageSeal::trailer`] ends the stream and leaves a [`SuperblockSeal`],
//! which either stores the seal in a superblock (a capture's commit) or
//! checks the one a superblock holds (a reader).

use hmac::Mac;

use crate::addr::ImageOffset;
use crate::crypto::{CryptoParams, HmacSha256, ImageKeys};
use crate::error::FormatError;
use crate::layout::{crypto_area, superblock as sb, trailer};
use crate::superblock::Superblock;

/// The seal over the metadata section, taking the index next.
pub struct ImageSeal(HmacSha256);

/// The seal over the metadata, index and trailer, taking the superblock
/// last.
pub struct SuperblockSeal(HmacSha256);

impl ImageSeal {
    /// Begins the seal of the image these keys belong to with its metadata
    /// section, as it lies in the image (sealed records and resume record).
    pub fn over_metadata(keys: &ImageKeys, metadata_section: &[u8]) -> ImageSeal {
        let mut mac = keys.seal_mac();
        mac.update(metadata_section);
        ImageSeal(mac)
    }

    /// Adds index bytes, in order: the whole index at once or entry by entry.
    pub fn index(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// Adds the encoded trailer, after the whole index.
    pub fn trailer(mut self, trailer: &[u8; trailer::SIZE]) -> SuperblockSeal {
        self.0.update(trailer);
        SuperblockSeal(self.0)
    }
}

impl SuperblockSeal {
    /// Commits the seal: `sb` gets `params` with the seal computed over
    /// everything before and `sb`'s own sealed fields.
    pub fn store(self, sb: &mut Superblock, params: CryptoParams) {
        sb.crypto = Some(CryptoParams {
            seal: [0; crypto_area::SEAL_LEN],
            ..params
        });
        let mut mac = self.0;
        mac.update(&sealed_fields(sb));
        let seal = mac.finalize().into_bytes().into();
        sb.crypto = Some(CryptoParams { seal, ..params });
    }

    /// Checks the seal `sb` holds (constant time); an unencrypted `sb`
    /// holds none and fails.
    pub fn check(self, sb: &Superblock) -> Result<(), FormatError> {
        let stored = sb.crypto.map(|c| c.seal).unwrap_or_default();
        let mut mac = self.0;
        mac.update(&sealed_fields(sb));
        mac.verify_slice(&stored)
            .map_err(|_mac_error_has_no_detail| FormatError::Authentication {
                what: "image seal (superblock, metadata, index and trailer)".into(),
                offset: ImageOffset(crypto_area::SEAL as u64),
            })
    }
}

/// The superblock bytes the seal covers: the encoded fields with the
/// state, the consumed time, the restore record (a restore changes them)
/// and the seal itself zero.
fn sealed_fields(s: &Superblock) -> Vec<u8> {
    let mut b = s.encode();
    b.truncate(sb::CRC);
    b[sb::STATE..sb::STATE + 4].fill(0);
    b[sb::CONSUMED_TIME..sb::CONSUMED_TIME + 8].fill(0);
    b[sb::RESTORE_ATTEMPTS..sb::CRC].fill(0);
    if s.crypto.is_some() {
        b[crypto_area::SEAL..crypto_area::SEAL + crypto_area::SEAL_LEN].fill(0);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Kdf, Secret, DEFAULT_KDF};
    use crate::superblock::ImageState;

    fn keys() -> ImageKeys {
        let s = Secret::key_file(vec![7; 32]).unwrap();
        ImageKeys::derive(&s, &Kdf::KeyFile, &[1; 32], &[7; 16]).unwrap()
    }

    fn params() -> CryptoParams {
        CryptoParams {
            kdf: DEFAULT_KDF,
            salt: [1; 32],
            check: [2; 32],
            seal: [3; 32],
            resume_record_len: 40,
        }
    }

    fn sealed(k: &ImageKeys, meta: &[u8], index: &[u8], sb: &mut Superblock) {
        let mut s = ImageSeal::over_metadata(k, meta);
        s.index(index);
        s.trailer(&[5; trailer::SIZE]).store(sb, params());
    }

    fn check(k: &ImageKeys, meta: &[u8], index: &[u8], sb: &Superblock) -> bool {
        let mut s = ImageSeal::over_metadata(k, meta);
        s.index(index);
        s.trailer(&[5; trailer::SIZE]).check(sb).is_ok()
    }

    #[test]
    fn the_seal_covers_every_field_but_state_consumed_time_restore_record_and_itself() {
        let mut sb = Superblock::writing([7; 16], 123);
        sb.crypto = Some(params());
        let before = sealed_fields(&sb);
        sb.state = ImageState::Failed;
        sb.consumed_time_ns = 5;
        sb.restore.attempts = 2;
        sb.restore.failed_chunk = Some(7);
        sb.restore.failure = crate::FailureText::new("chunk 7: payload crc");
        sb.crypto.as_mut().unwrap().seal = [4; 32];
        assert_eq!(sealed_fields(&sb), before);
        sb.capture_time_ns += 1;
        assert_ne!(sealed_fields(&sb), before);
    }

    #[test]
    fn a_stored_seal_checks_and_any_part_changed_fails() {
        let k = keys();
        let mut sb = Superblock::writing([7; 16], 123);
        sb.state = ImageState::Committed;
        sealed(&k, b"metadata", b"index entries", &mut sb);
        assert_eq!(sb.crypto.unwrap().resume_record_len, 40);
        assert!(check(&k, b"metadata", b"index entries", &sb));
        // A restore consumes the image: still sealed.
        let mut consumed = sb;
        consumed.state = ImageState::Consumed;
        consumed.consumed_time_ns = 9;
        consumed.restore.attempts = 1;
        assert!(check(&k, b"metadata", b"index entries", &consumed));
        // The index split differently is the same bytes in the same order.
        let mut s = ImageSeal::over_metadata(&k, b"metadata");
        s.index(b"index ");
        s.index(b"entries");
        assert!(s.trailer(&[5; trailer::SIZE]).check(&sb).is_ok());
        assert!(!check(&k, b"metadatA", b"index entries", &sb));
        assert!(!check(&k, b"metadata", b"index entrieS", &sb));
        let mut moved = sb;
        moved.layout.data_len += 1;
        assert!(!check(&k, b"metadata", b"index entries", &moved));
        let plain = Superblock::writing([7; 16], 123);
        assert!(!check(&k, b"metadata", b"index entries", &plain));
    }
}

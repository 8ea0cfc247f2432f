//! Encrypted images: the secret, the keys, the crypto area of the
//! superblock, and the AEAD and MAC primitives the sealed structures use.
//!
//! A master key comes from a key file (HKDF-SHA256) or a passphrase
//! (Argon2id, parameters in the superblock). Per image, HKDF-SHA256 with the
//! image's random salt and uuid derives three values from it: the AES-256-GCM
//! data key, the HMAC-SHA256 seal key and a key check value. Chunk payloads
//! ([`crate::codec`]) and the metadata ([`crate::section`]) are sealed with
//! the data key; the image seal ([`crate::seal`]), an HMAC over the
//! metadata, index, trailer and superblock fields, ties every structure to
//! the others. `FORMAT.md` is the normative description.

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::Aes256Gcm;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::addr::ImageOffset;
use crate::error::FormatError;
use crate::layout::crypto_area as area;
use crate::le::{put_u32, put_u64, u32_at};

/// Bytes of the per-image random salt.
pub const SALT_SIZE: usize = area::SALT_LEN;
/// Shortest key file accepted: 256 bits.
pub const MIN_KEY_FILE_LEN: usize = 32;
/// Largest Argon2 memory cost a reader accepts: half of the smallest
/// crashkernel region kjump documents (256 MiB), so that a restore kernel
/// there can always derive the key. The other half holds the kernel's
/// image, its initramfs and its boot allocations (40 to 50 MiB of them
/// measured for the capture kernel, `kjump check`) with room to spare. An
/// unauthenticated superblock chooses this cost: at 256 MiB, the old
/// cap, it asked for the whole region (out of memory in PID 1, a kernel
/// panic, a boot loop).
pub const MAX_KDF_MEMORY_KIB: u32 = 128 * 1024;
/// Most Argon2 passes a reader accepts (bounds the time an image can cost).
pub const MAX_KDF_ITERATIONS: u32 = 64;
/// Most Argon2 lanes a reader accepts.
pub const MAX_KDF_LANES: u32 = 16;
/// The Argon2id cost a capture uses unless told otherwise: 0.13 s on one
/// core of these machines, 64 MiB.
pub const DEFAULT_KDF: Kdf = Kdf::Argon2id {
    memory_kib: 64 * 1024,
    iterations: 3,
    lanes: 1,
};

/// Cipher code of AES-256-GCM, the only one defined.
pub const CIPHER_AES256_GCM: u8 = 1;
const KDF_KEY_FILE: u8 = 1;
const KDF_ARGON2ID: u8 = 2;

/// What a nonce seals. A nonce is `domain, 0, 0, 0, counter: u64`, so no
/// two structures of one image share a nonce under its data key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Nonce {
    /// A chunk (domain 1), counted by its sequence number.
    Chunk(u32),
    /// The metadata (domain 2, counter 0).
    Metadata,
}

impl Nonce {
    fn bytes(self) -> [u8; 12] {
        let (domain, counter) = match self {
            Nonce::Chunk(seq) => (1, u64::from(seq)),
            Nonce::Metadata => (2, 0),
        };
        let mut n = [0u8; 12];
        n[0] = domain;
        put_u64(&mut n, 4, counter);
        n
    }
}

const LABEL_KEY_FILE: &[u8] = b"kjump v1 key file";
const LABEL_DATA: &[u8] = b"kjump v1 data key";
const LABEL_SEAL: &[u8] = b"kjump v1 seal key";
const LABEL_CHECK: &[u8] = b"kjump v1 key check";
const LABEL_IMAGE_SEAL: &[u8] = b"kjump v1 image seal";

/// Where the master key comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kdf {
    /// A key file of at least [`MIN_KEY_FILE_LEN`] bytes, through HKDF-SHA256.
    KeyFile,
    /// A passphrase through Argon2id (version 0x13).
    Argon2id {
        /// Memory cost in KiB.
        memory_kib: u32,
        /// Passes.
        iterations: u32,
        /// Lanes (parallelism).
        lanes: u32,
    },
}

impl Kdf {
    /// Refuses costs a reader would refuse ([`MAX_KDF_MEMORY_KIB`],
    /// [`MAX_KDF_ITERATIONS`], [`MAX_KDF_LANES`], or what Argon2 itself
    /// refuses): a writer checks this before it seals an image nobody
    /// could open.
    pub fn check_costs(&self) -> Result<(), FormatError> {
        match *self {
            Kdf::KeyFile => Ok(()),
            Kdf::Argon2id {
                memory_kib,
                iterations,
                lanes,
            } => check_argon2_costs(memory_kib, iterations, lanes),
        }
    }

    /// How `kjump info` names it.
    pub fn describe(&self) -> String {
        match self {
            Kdf::KeyFile => "key file (HKDF-SHA256)".into(),
            Kdf::Argon2id {
                memory_kib,
                iterations,
                lanes,
            } => format!(
                "passphrase (Argon2id, {} MiB, {iterations} passes, {lanes} lanes)",
                memory_kib / 1024
            ),
        }
    }
}

/// The public crypto parameters in the superblock of an encrypted image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CryptoParams {
    /// Where the master key comes from.
    pub kdf: Kdf,
    /// Random per image: the Argon2 salt and the HKDF salt.
    pub salt: [u8; SALT_SIZE],
    /// Key check value: tells a wrong key from a damaged image.
    pub check: [u8; 32],
    /// HMAC-SHA256 over the metadata, index, trailer and superblock fields;
    /// zero until the commit.
    pub seal: [u8; 32],
    /// Bytes of the metadata section that are the resume record: plain
    /// metadata records after the sealed ones (0 in the writing state).
    pub resume_record_len: u32,
}

impl CryptoParams {
    /// Writes the area into a superblock block.
    pub(crate) fn encode_into(&self, b: &mut [u8]) {
        b[area::CIPHER] = CIPHER_AES256_GCM;
        let (kdf, m, t, p) = match self.kdf {
            Kdf::KeyFile => (KDF_KEY_FILE, 0, 0, 0),
            Kdf::Argon2id {
                memory_kib,
                iterations,
                lanes,
            } => (KDF_ARGON2ID, memory_kib, iterations, lanes),
        };
        b[area::KDF] = kdf;
        put_u32(b, area::MEMORY, m);
        put_u32(b, area::ITERATIONS, t);
        put_u32(b, area::LANES, p);
        b[area::SALT..area::SALT + SALT_SIZE].copy_from_slice(&self.salt);
        b[area::CHECK..area::CHECK + area::CHECK_LEN].copy_from_slice(&self.check);
        b[area::SEAL..area::SEAL + area::SEAL_LEN].copy_from_slice(&self.seal);
        put_u32(b, area::RESUME_RECORD_LEN, self.resume_record_len);
    }

    /// Reads and bounds the area: unknown codes and costs a small kernel
    /// cannot pay are refused here, before anything is allocated.
    pub(crate) fn decode_from(b: &[u8]) -> Result<Self, FormatError> {
        if b[area::CIPHER] != CIPHER_AES256_GCM {
            return Err(invalid("cipher", area::CIPHER, b[area::CIPHER].into()));
        }
        if b[area::RESERVED] != 0 || b[area::RESERVED + 1] != 0 {
            return Err(FormatError::ReservedNotZero {
                what: "superblock crypto area",
                offset: ImageOffset(area::RESERVED as u64),
                found: u64::from(b[area::RESERVED]) | u64::from(b[area::RESERVED + 1]) << 8,
            });
        }
        let kdf = decode_kdf(b)?;
        let mut p = CryptoParams {
            kdf,
            salt: [0; SALT_SIZE],
            check: [0; 32],
            seal: [0; 32],
            resume_record_len: u32_at(b, area::RESUME_RECORD_LEN),
        };
        p.salt
            .copy_from_slice(&b[area::SALT..area::SALT + SALT_SIZE]);
        p.check
            .copy_from_slice(&b[area::CHECK..area::CHECK + area::CHECK_LEN]);
        p.seal
            .copy_from_slice(&b[area::SEAL..area::SEAL + area::SEAL_LEN]);
        Ok(p)
    }
}

/// The key derivation of the crypto area `b`: a key file has no costs, an
/// Argon2id cost is bounded by what a small capture kernel can pay.
fn decode_kdf(b: &[u8]) -> Result<Kdf, FormatError> {
    let (m, t, p) = (
        u32_at(b, area::MEMORY),
        u32_at(b, area::ITERATIONS),
        u32_at(b, area::LANES),
    );
    match b[area::KDF] {
        KDF_KEY_FILE => {
            for (field, at, v) in [
                ("argon2 memory", area::MEMORY, m),
                ("argon2 iterations", area::ITERATIONS, t),
                ("argon2 lanes", area::LANES, p),
            ] {
                if v != 0 {
                    return Err(invalid(field, at, v.into()));
                }
            }
            Ok(Kdf::KeyFile)
        }
        KDF_ARGON2ID => {
            check_argon2_costs(m, t, p)?;
            Ok(Kdf::Argon2id {
                memory_kib: m,
                iterations: t,
                lanes: p,
            })
        }
        other => Err(invalid("key derivation", area::KDF, other.into())),
    }
}

/// Refuses Argon2id costs (memory in KiB, iterations, lanes) above the
/// limits or that Argon2 itself refuses.
fn check_argon2_costs(m: u32, t: u32, p: u32) -> Result<(), FormatError> {
    let too_large = |what, at: usize, value: u32, limit: u32| FormatError::TooLarge {
        what,
        offset: ImageOffset(at as u64),
        value: value.into(),
        limit: limit.into(),
    };
    if m > MAX_KDF_MEMORY_KIB {
        return Err(too_large(
            "argon2 memory cost (KiB)",
            area::MEMORY,
            m,
            MAX_KDF_MEMORY_KIB,
        ));
    }
    if t > MAX_KDF_ITERATIONS {
        return Err(too_large(
            "argon2 iterations",
            area::ITERATIONS,
            t,
            MAX_KDF_ITERATIONS,
        ));
    }
    if p > MAX_KDF_LANES {
        return Err(too_large("argon2 lanes", area::LANES, p, MAX_KDF_LANES));
    }
    if t == 0 {
        return Err(invalid("argon2 iterations", area::ITERATIONS, 0));
    }
    if p == 0 {
        return Err(invalid("argon2 lanes", area::LANES, 0));
    }
    if m < 8 * p {
        return Err(invalid("argon2 memory", area::MEMORY, m.into()));
    }
    Ok(())
}

/// A crypto-area field of the superblock holding a value it may not.
fn invalid(field: &'static str, at: usize, value: u64) -> FormatError {
    FormatError::InvalidValue {
        what: "superblock",
        field,
        offset: ImageOffset(at as u64),
        value,
    }
}

/// What the user holds: a key file's bytes or a passphrase. Wiped on drop,
/// never printed.
pub enum Secret {
    /// The contents of a key file.
    KeyFile(Zeroizing<Vec<u8>>),
    /// A passphrase, without its trailing newline.
    Passphrase(Zeroizing<Vec<u8>>),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::KeyFile(_) => f.write_str("Secret::KeyFile(..)"),
            Secret::Passphrase(_) => f.write_str("Secret::Passphrase(..)"),
        }
    }
}

/// A key file or passphrase that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The key file is too short to hold 256 bits.
    #[error(
        "key file holds {len} bytes, at least {min} are needed (e.g. head -c 32 /dev/urandom)"
    )]
    KeyFileTooShort {
        /// Its length.
        len: usize,
        /// The minimum.
        min: usize,
    },
    /// The passphrase is empty.
    #[error("the passphrase is empty")]
    EmptyPassphrase,
}

impl Secret {
    /// A key file's contents, used whole.
    pub fn key_file(bytes: Vec<u8>) -> Result<Secret, SecretError> {
        let bytes = Zeroizing::new(bytes);
        if bytes.len() < MIN_KEY_FILE_LEN {
            return Err(SecretError::KeyFileTooShort {
                len: bytes.len(),
                min: MIN_KEY_FILE_LEN,
            });
        }
        Ok(Secret::KeyFile(bytes))
    }

    /// A passphrase as a file holds it: one trailing newline is dropped.
    pub fn passphrase(bytes: Vec<u8>) -> Result<Secret, SecretError> {
        let mut bytes = Zeroizing::new(bytes);
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
        }
        if bytes.is_empty() {
            return Err(SecretError::EmptyPassphrase);
        }
        Ok(Secret::Passphrase(bytes))
    }

    fn kind(&self) -> &'static str {
        match self {
            Secret::KeyFile(_) => "a key file",
            Secret::Passphrase(_) => "a passphrase",
        }
    }
}

/// The master key: from the secret and the image's KDF parameters.
fn master_key(
    secret: &Secret,
    kdf: &Kdf,
    salt: &[u8; SALT_SIZE],
) -> Result<Zeroizing<[u8; 32]>, FormatError> {
    let mut out = Zeroizing::new([0u8; 32]);
    match (secret, kdf) {
        (Secret::KeyFile(bytes), Kdf::KeyFile) => {
            Hkdf::<Sha256>::new(Some(LABEL_KEY_FILE), bytes)
                .expand(b"master", out.as_mut())
                .map_err(|e| FormatError::Kdf(e.to_string()))?;
        }
        (
            Secret::Passphrase(p),
            Kdf::Argon2id {
                memory_kib,
                iterations,
                lanes,
            },
        ) => {
            let params = argon2::Params::new(*memory_kib, *iterations, *lanes, Some(32))
                .map_err(|e| FormatError::Kdf(e.to_string()))?;
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                .hash_password_into(p, salt, out.as_mut())
                .map_err(|e| FormatError::Kdf(e.to_string()))?;
        }
        (s, k) => {
            return Err(FormatError::KeyKind {
                sealed_with: match k {
                    Kdf::KeyFile => "a key file",
                    Kdf::Argon2id { .. } => "a passphrase",
                },
                given: s.kind(),
            })
        }
    }
    Ok(out)
}

/// The keys of one image. The AES key schedule and the seal key are wiped
/// on drop; `Debug` shows nothing of them.
pub struct ImageKeys {
    cipher: Aes256Gcm,
    seal_key: Zeroizing<[u8; 32]>,
    check: [u8; 32],
}

impl std::fmt::Debug for ImageKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ImageKeys(..)")
    }
}

/// The cipher object holds the AES round keys and the GHASH key; it must
/// wipe them when dropped. This fails to compile if it stops doing so.
const _: () = {
    const fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
    wiped_on_drop::<Aes256Gcm>()
};

pub(crate) type HmacSha256 = Hmac<Sha256>;
type GcmNonce = aes_gcm::Nonce<U12>;
type Tag = aes_gcm::Tag;

impl ImageKeys {
    /// Derives the keys of the image `uuid` whose salt and KDF are given.
    pub fn derive(
        secret: &Secret,
        kdf: &Kdf,
        salt: &[u8; SALT_SIZE],
        uuid: &[u8; 16],
    ) -> Result<ImageKeys, FormatError> {
        let master = master_key(secret, kdf, salt)?;
        let hk = Hkdf::<Sha256>::new(Some(salt), master.as_ref());
        let expand = |label: &[u8], out: &mut [u8]| {
            hk.expand_multi_info(&[label, uuid], out)
                .map_err(|e| FormatError::Kdf(e.to_string()))
        };
        let mut data = Zeroizing::new([0u8; 32]);
        expand(LABEL_DATA, data.as_mut())?;
        let mut seal_key = Zeroizing::new([0u8; 32]);
        expand(LABEL_SEAL, seal_key.as_mut())?;
        let mut check = [0u8; 32];
        expand(LABEL_CHECK, &mut check)?;
        let cipher = Aes256Gcm::new_from_slice(data.as_ref())
            .map_err(|e| FormatError::Kdf(e.to_string()))?;
        Ok(ImageKeys {
            cipher,
            seal_key,
            check,
        })
    }

    /// Derives the keys of an image and checks them against its key check
    /// value: a wrong key is refused here, before any structure is read.
    pub fn unlock(
        secret: &Secret,
        params: &CryptoParams,
        uuid: &[u8; 16],
    ) -> Result<ImageKeys, FormatError> {
        let keys = Self::derive(secret, &params.kdf, &params.salt, uuid)?;
        // Constant time, though the stored value is not secret: a habit.
        let diff = keys
            .check
            .iter()
            .zip(&params.check)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return Err(FormatError::WrongKey {
                offset: ImageOffset(area::CHECK as u64),
            });
        }
        Ok(keys)
    }

    /// The key check value to store.
    pub fn check_value(&self) -> [u8; 32] {
        self.check
    }

    /// The image seal's MAC under this image's seal key, its label fed:
    /// [`crate::seal`] feeds it the sealed structures in their order.
    pub(crate) fn seal_mac(&self) -> HmacSha256 {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(self.seal_key.as_ref())
            .expect("HMAC takes keys of any length");
        mac.update(LABEL_IMAGE_SEAL);
        mac
    }

    /// Encrypts `buf` in place under the data key and appends the tag.
    pub(crate) fn seal_in_place(&self, nonce: Nonce, aad: &[u8], buf: &mut Vec<u8>) {
        let tag = self
            .cipher
            .encrypt_inout_detached(
                &GcmNonce::from(nonce.bytes()),
                aad,
                buf.as_mut_slice().into(),
            )
            .expect("a sealed structure is far below AES-GCM's 64 GiB message limit");
        buf.extend_from_slice(&tag);
    }

    /// Decrypts `buf` in place and checks `tag`; false when it fails
    /// authentication (the AEAD error says no more).
    pub(crate) fn open_in_place(
        &self,
        nonce: Nonce,
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8],
    ) -> bool {
        let Ok(tag) = Tag::try_from(tag) else {
            return false;
        };
        self.cipher
            .decrypt_inout_detached(&GcmNonce::from(nonce.bytes()), aad, buf.into(), &tag)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_of_chunks_and_metadata_never_meet() {
        assert_eq!(
            Nonce::Metadata.bytes(),
            [2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        let n = Nonce::Chunk(0x0102_0304).bytes();
        assert_eq!(n, [1, 0, 0, 0, 4, 3, 2, 1, 0, 0, 0, 0]);
    }

    #[test]
    fn sealed_bytes_open_only_with_their_nonce_aad_and_key() {
        let s = Secret::key_file(vec![7; 32]).unwrap();
        let k = ImageKeys::derive(&s, &Kdf::KeyFile, &[1; SALT_SIZE], &[3; 16]).unwrap();
        let mut buf = b"kjump sealed bytes".to_vec();
        k.seal_in_place(Nonce::Chunk(5), b"aad", &mut buf);
        let (body, tag) = buf.split_at(buf.len() - crate::layout::TAG_SIZE);
        let open = |nonce, aad: &[u8], k: &ImageKeys| {
            let mut b = body.to_vec();
            k.open_in_place(nonce, aad, &mut b, tag).then_some(b)
        };
        assert_eq!(
            open(Nonce::Chunk(5), b"aad", &k).unwrap(),
            b"kjump sealed bytes"
        );
        assert!(open(Nonce::Chunk(6), b"aad", &k).is_none());
        assert!(open(Nonce::Metadata, b"aad", &k).is_none());
        assert!(open(Nonce::Chunk(5), b"aaD", &k).is_none());
        let other = ImageKeys::derive(&s, &Kdf::KeyFile, &[1; SALT_SIZE], &[4; 16]).unwrap();
        assert!(open(Nonce::Chunk(5), b"aad", &other).is_none());
    }
    /// A crypto area holding these Argon2id costs, as a writer encodes it.
    fn area_with(memory_kib: u32, iterations: u32, lanes: u32) -> Vec<u8> {
        let mut b = vec![0u8; area::RESUME_RECORD_LEN + 4];
        CryptoParams {
            kdf: Kdf::Argon2id {
                memory_kib,
                iterations,
                lanes,
            },
            salt: [0; SALT_SIZE],
            check: [0; 32],
            seal: [0; 32],
            resume_record_len: 0,
        }
        .encode_into(&mut b);
        b
    }

    #[test]
    fn argon2_costs_a_small_restore_kernel_cannot_pay_are_refused() {
        assert_eq!(MAX_KDF_MEMORY_KIB, 128 * 1024);
        let at_cap = area_with(MAX_KDF_MEMORY_KIB, MAX_KDF_ITERATIONS, MAX_KDF_LANES);
        assert!(CryptoParams::decode_from(&at_cap).is_ok());
        // 192 MiB: three quarters of a 256 MiB region, accepted before.
        let over = area_with(192 * 1024, 3, 1);
        match CryptoParams::decode_from(&over) {
            Err(FormatError::TooLarge {
                what,
                offset,
                value,
                limit,
            }) => {
                assert_eq!(what, "argon2 memory cost (KiB)");
                assert_eq!(offset, ImageOffset(area::MEMORY as u64));
                assert_eq!((value, limit), (192 * 1024, 128 * 1024));
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        let kdf = Kdf::Argon2id {
            memory_kib: MAX_KDF_MEMORY_KIB + 1,
            iterations: 1,
            lanes: 1,
        };
        assert!(matches!(
            kdf.check_costs(),
            Err(FormatError::TooLarge { .. })
        ));
        assert!(DEFAULT_KDF.check_costs().is_ok());
        assert!(Kdf::KeyFile.check_costs().is_ok());
    }

    #[test]
    fn wrong_secrets_are_refused_by_the_check_value() {
        let uuid = [9; 16];
        let kdf = Kdf::Argon2id {
            memory_kib: 64,
            iterations: 1,
            lanes: 1,
        };
        let good = Secret::passphrase(b"correct horse\n".to_vec()).unwrap();
        let k = ImageKeys::derive(&good, &kdf, &[2; SALT_SIZE], &uuid).unwrap();
        let params = CryptoParams {
            kdf,
            salt: [2; SALT_SIZE],
            check: k.check_value(),
            seal: [0; 32],
            resume_record_len: 0,
        };
        assert!(ImageKeys::unlock(&good, &params, &uuid).is_ok());
        let bad = Secret::passphrase(b"correct horse!".to_vec()).unwrap();
        assert!(matches!(
            ImageKeys::unlock(&bad, &params, &uuid),
            Err(FormatError::WrongKey { .. })
        ));
        let file = Secret::key_file(vec![0; 40]).unwrap();
        assert!(matches!(
            ImageKeys::unlock(&file, &params, &uuid),
            Err(FormatError::KeyKind { .. })
        ));
        assert!(Secret::key_file(vec![0; 31]).is_err());
        assert!(Secret::passphrase(b"\n".to_vec()).is_err());
    }
}

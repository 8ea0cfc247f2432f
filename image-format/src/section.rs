//! The metadata section as it lies in the image (FORMAT.md, Metadata and
//! Sealed structures). A plain image's section is its metadata records. An
//! encrypted image's is the records sealed (ciphertext, then tag, with the
//! image uuid as associated data) followed by the resume record in the
//! clear, whose length the superblock's crypto area records: what a normal
//! boot reads before the key is asked.
//!
//! A capture builds the section with [`MetadataSection::plain`] or
//! [`MetadataSection::seal`]; a reader splits the bytes it read with
//! [`MetadataSection::split`] and takes the resume record or the opened
//! metadata from the parts.

use zeroize::Zeroizing;

use crate::addr::ImageOffset;
use crate::crypto::{ImageKeys, Nonce};
use crate::error::FormatError;
use crate::layout::{crypto_area, metadata_record, TAG_SIZE, UUID_LEN};
use crate::metadata::{in_resume_record, Metadata};
use crate::superblock::Superblock;

/// A metadata section ready to be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetadataSection {
    bytes: Vec<u8>,
    resume_record_len: u32,
}

impl MetadataSection {
    /// The section of a plain image: the records.
    pub fn plain(metadata: &Metadata) -> MetadataSection {
        MetadataSection {
            bytes: metadata.encode(),
            resume_record_len: 0,
        }
    }

    /// The section of an encrypted image: the records sealed under the
    /// data key of the image `uuid`, then its resume record. The encoded
    /// plaintext is wiped once sealed.
    pub fn seal(metadata: &Metadata, keys: &ImageKeys, uuid: &[u8; UUID_LEN]) -> MetadataSection {
        let plain = Zeroizing::new(metadata.encode());
        let record = metadata.resume_record().encode();
        let mut bytes = Vec::with_capacity(plain.len() + TAG_SIZE + record.len());
        bytes.extend_from_slice(&plain);
        keys.seal_in_place(Nonce::Metadata, uuid, &mut bytes);
        bytes.extend_from_slice(&record);
        MetadataSection {
            bytes,
            resume_record_len: record.len() as u32,
        }
    }

    /// The length of the section of `metadata`, sealed or not, as
    /// [`MetadataSection::plain`] and [`MetadataSection::seal`] build it,
    /// without sealing anything.
    pub fn len_of(metadata: &Metadata, sealed: bool) -> u64 {
        let records = metadata.encode().len() as u64;
        if !sealed {
            return records;
        }
        records + TAG_SIZE as u64 + metadata.resume_record().encode().len() as u64
    }

    /// The bytes to write at the metadata offset; the metadata CRC and the
    /// image seal cover all of them.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Bytes of the resume record at the end (0 in a plain image), for the
    /// superblock's crypto area.
    pub fn resume_record_len(&self) -> u32 {
        self.resume_record_len
    }

    /// Splits the section `bytes` of the image whose superblock is `sb`,
    /// after checking the resume record length the superblock gives.
    pub fn split<'a>(sb: &Superblock, bytes: &'a [u8]) -> Result<SectionParts<'a>, FormatError> {
        let offset = sb.layout.metadata_offset;
        let Some(c) = &sb.crypto else {
            return Ok(SectionParts {
                records: bytes,
                resume_record: &[],
                offset,
                sealed: false,
            });
        };
        let len = c.resume_record_len as usize;
        let limit = bytes.len().saturating_sub(TAG_SIZE);
        if len > limit || len % metadata_record::ALIGN != 0 {
            return Err(FormatError::InvalidValue {
                what: "superblock",
                field:
                    "resume record length (a multiple of 8, leaving the sealed metadata its tag)",
                offset: ImageOffset(crypto_area::RESUME_RECORD_LEN as u64),
                value: len as u64,
            });
        }
        let (records, resume_record) = bytes.split_at(bytes.len() - len);
        Ok(SectionParts {
            records,
            resume_record,
            offset,
            sealed: true,
        })
    }
}

/// A metadata section read from an image, split as its superblock says.
#[derive(Clone, Copy, Debug)]
pub struct SectionParts<'a> {
    /// The records: plain, or sealed with their tag.
    records: &'a [u8],
    /// The plain resume record of an encrypted image (empty otherwise, and
    /// in an encrypted image from a kjump that wrote none).
    resume_record: &'a [u8],
    /// Image offset of the section.
    offset: u64,
    sealed: bool,
}

impl SectionParts<'_> {
    fn record_offset(&self) -> u64 {
        self.offset + self.records.len() as u64
    }

    /// The resume record, which needs no key: drawn from the records of a
    /// plain image, read from the clear part of an encrypted one (which
    /// may hold only records that belong there). The image seal covers it;
    /// whoever opens the image with its key checks that.
    pub fn resume_record(&self) -> Result<Metadata, FormatError> {
        if !self.sealed {
            return Ok(Metadata::decode(self.records, self.offset)?.resume_record());
        }
        if self.resume_record.is_empty() {
            return Err(FormatError::NoResumeRecord);
        }
        let record = Metadata::decode(self.resume_record, self.record_offset())?;
        if record.extra.iter().any(|(k, _)| !in_resume_record(k)) {
            return Err(FormatError::Metadata {
                offset: ImageOffset(self.record_offset()),
                reason: "the resume record holds a record that does not belong there".into(),
            });
        }
        Ok(record)
    }

    /// The metadata: decrypted with `keys` when sealed (check the image
    /// seal first), decoded, and held against the resume record.
    pub fn open(
        &self,
        keys: Option<&ImageKeys>,
        uuid: &[u8; UUID_LEN],
    ) -> Result<Metadata, FormatError> {
        let opened;
        let plain = match (self.sealed, keys) {
            (false, _) => self.records,
            (true, None) => return Err(FormatError::KeyRequired),
            (true, Some(k)) => {
                opened = self.unseal(k, uuid)?;
                opened.as_slice()
            }
        };
        let metadata = Metadata::decode(plain, self.offset)?;
        if !self.resume_record.is_empty() {
            let at = self.record_offset();
            if Metadata::decode(self.resume_record, at)? != metadata.resume_record() {
                return Err(FormatError::Metadata {
                    offset: ImageOffset(at),
                    reason: "the resume record disagrees with the sealed metadata".into(),
                });
            }
        }
        Ok(metadata)
    }

    fn unseal(
        &self,
        keys: &ImageKeys,
        uuid: &[u8; UUID_LEN],
    ) -> Result<Zeroizing<Vec<u8>>, FormatError> {
        let fail = || FormatError::Authentication {
            what: "metadata".into(),
            offset: ImageOffset(self.offset),
        };
        let n = self.records.len().checked_sub(TAG_SIZE).ok_or_else(fail)?;
        let (cipher, tag) = self.records.split_at(n);
        let mut plain = Zeroizing::new(cipher.to_vec());
        if !keys.open_in_place(Nonce::Metadata, uuid, &mut plain, tag) {
            return Err(fail());
        }
        Ok(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::{MemoryMap, PhysAddr, PhysRange};
    use crate::crypto::{CryptoParams, Kdf, Secret};
    use crate::metadata::KEY_REGION;

    const UUID: [u8; 16] = [5; 16];

    fn keys(uuid: [u8; 16]) -> ImageKeys {
        let s = Secret::key_file(vec![7; 32]).unwrap();
        ImageKeys::derive(&s, &Kdf::KeyFile, &[1; 32], &uuid).unwrap()
    }

    fn metadata() -> Metadata {
        let r = PhysRange::new(PhysAddr(0x1000), PhysAddr(0x9000)).unwrap();
        Metadata {
            ranges: MemoryMap::from_sorted(vec![r]).unwrap(),
            kernel_release: Some("6.12.0".into()),
            extra: vec![
                ("mode".into(), "poweroff".into()),
                (KEY_REGION.into(), "0x2f000000-0x3effffff".into()),
            ],
            ..Metadata::default()
        }
    }

    fn superblock(section: &MetadataSection, sealed: bool) -> Superblock {
        let mut sb = Superblock::writing(UUID, 1);
        sb.layout.metadata_offset = 4096;
        sb.crypto = sealed.then_some(CryptoParams {
            kdf: Kdf::KeyFile,
            salt: [1; 32],
            check: [0; 32],
            seal: [0; 32],
            resume_record_len: section.resume_record_len(),
        });
        sb
    }

    #[test]
    fn plain_sections_are_the_records() {
        let m = metadata();
        let s = MetadataSection::plain(&m);
        assert_eq!(s.bytes(), m.encode());
        assert_eq!(MetadataSection::len_of(&m, false), s.bytes().len() as u64);
        let parts = MetadataSection::split(&superblock(&s, false), s.bytes()).unwrap();
        assert_eq!(parts.open(None, &UUID).unwrap(), m);
        assert_eq!(parts.resume_record().unwrap(), m.resume_record());
    }

    #[test]
    fn sealed_sections_split_into_sealed_records_and_the_resume_record() {
        let (m, k) = (metadata(), keys(UUID));
        let s = MetadataSection::seal(&m, &k, &UUID);
        let record = m.resume_record().encode();
        assert_eq!(s.resume_record_len() as usize, record.len());
        assert!(s.bytes().ends_with(&record));
        assert_eq!(s.bytes().len(), m.encode().len() + TAG_SIZE + record.len());
        assert_eq!(MetadataSection::len_of(&m, true), s.bytes().len() as u64);
        let sb = superblock(&s, true);
        let parts = MetadataSection::split(&sb, s.bytes()).unwrap();
        assert_eq!(parts.resume_record().unwrap(), m.resume_record());
        assert_eq!(parts.open(Some(&k), &UUID).unwrap(), m);
        assert!(matches!(
            parts.open(None, &UUID),
            Err(FormatError::KeyRequired)
        ));
        assert!(matches!(
            parts.open(Some(&keys([6; 16])), &UUID),
            Err(FormatError::Authentication { .. })
        ));
    }

    #[test]
    fn a_resume_record_length_that_does_not_fit_is_refused() {
        let (m, k) = (metadata(), keys(UUID));
        let s = MetadataSection::seal(&m, &k, &UUID);
        for bad in [4, s.bytes().len() as u32] {
            let mut sb = superblock(&s, true);
            sb.crypto.as_mut().unwrap().resume_record_len = bad;
            assert!(matches!(
                MetadataSection::split(&sb, s.bytes()),
                Err(FormatError::InvalidValue { .. })
            ));
        }
    }
}

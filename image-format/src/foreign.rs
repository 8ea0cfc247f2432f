//! What a target holds when it is not kjump's: the signatures of the
//! filesystems, partition tables and volume formats a user may point kjump
//! at by mistake, read from a device's or file's first bytes. kjump writes
//! a target whole only when it is empty (all zero where it looks), already
//! holds a kjump image, or the user says `--force`.

use crate::superblock::MAGIC_PREFIX;

/// Bytes [`foreign_content`] looks at: far enough for btrfs's superblock
/// (64 KiB) and ISO 9660's volume descriptor (32 KiB).
pub const PROBE_LEN: usize = 0x11000;

/// Content that is not kjump's, found at `offset`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Foreign {
    /// What it is: "an ext2/3/4 filesystem", "a GPT partition table", ...
    pub what: String,
    /// Where its signature (or the first non-zero byte) lies.
    pub offset: u64,
    /// Whether `offset` is a signature's, not just the first non-zero byte.
    pub signature: bool,
}

impl std::fmt::Display for Foreign {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = if self.signature {
            "signature"
        } else {
            "first non-zero byte"
        };
        write!(f, "{} ({at} at offset {:#x})", self.what, self.offset)
    }
}

/// One signature: `magic` at `offset`.
struct Signature {
    what: &'static str,
    offset: usize,
    magic: &'static [u8],
}

const fn sig(what: &'static str, offset: usize, magic: &'static [u8]) -> Signature {
    Signature {
        what,
        offset,
        magic,
    }
}

/// Checked in order; the first match names the content.
const SIGNATURES: &[Signature] = &[
    sig("a LUKS encrypted volume", 0, b"LUKS\xba\xbe"),
    sig("an XFS filesystem", 0, b"XFSB"),
    sig("a squashfs filesystem", 0, b"hsqs"),
    sig(
        "an md RAID member (metadata 1.1)",
        0,
        &[0xfc, 0x4e, 0x2b, 0xa9],
    ),
    sig(
        "an md RAID member (metadata 1.2)",
        0x1000,
        &[0xfc, 0x4e, 0x2b, 0xa9],
    ),
    sig("an LVM physical volume", 0x200, b"LABELONE"),
    sig("an LVM physical volume", 0x218, b"LVM2 001"),
    sig("a GPT partition table", 0x200, b"EFI PART"),
    sig("an ext2/3/4 filesystem", 0x438, &[0x53, 0xef]),
    sig("a btrfs filesystem", 0x10040, b"_BHRfS_M"),
    sig("an NTFS filesystem", 3, b"NTFS    "),
    sig("a FAT filesystem", 0x36, b"FAT1"),
    sig("a FAT filesystem", 0x52, b"FAT32   "),
    sig("an ISO 9660 filesystem", 0x8001, b"CD001"),
];

/// What `head` (a target's first bytes, up to [`PROBE_LEN`]) holds when it
/// is neither empty nor kjump's: a known signature, an MBR partition
/// table, or else data kjump cannot name. `None` for all-zero bytes and
/// for a kjump image in any state (its magic at offset 0). A swap area is
/// the caller's to recognise first (kjump writes after its header).
pub fn foreign_content(head: &[u8]) -> Option<Foreign> {
    if head.starts_with(&MAGIC_PREFIX) {
        return None;
    }
    for s in SIGNATURES {
        if head.get(s.offset..s.offset + s.magic.len()) == Some(s.magic) {
            return Some(Foreign {
                what: s.what.to_string(),
                offset: s.offset as u64,
                signature: true,
            });
        }
    }
    if let Some(at) = mbr_partition_table(head) {
        return Some(Foreign {
            what: "an MBR partition table".to_string(),
            offset: at,
            signature: true,
        });
    }
    let first = head.iter().position(|&b| b != 0)?;
    Some(Foreign {
        what: "data that is not a kjump image".to_string(),
        offset: first as u64,
        signature: false,
    })
}

/// The boot signature's offset when `head` starts with an MBR that has at
/// least one partition entry.
fn mbr_partition_table(head: &[u8]) -> Option<u64> {
    if head.get(510..512) != Some(&[0x55, 0xaa]) {
        return None;
    }
    let entries = head.get(446..510)?;
    // An entry's type byte (offset 4) is non-zero when the slot is used.
    entries.chunks_exact(16).any(|e| e[4] != 0).then_some(510)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(at: usize, bytes: &[u8]) -> Vec<u8> {
        let mut head = vec![0u8; PROBE_LEN];
        head[at..at + bytes.len()].copy_from_slice(bytes);
        head
    }

    #[test]
    fn empty_and_kjump_images_are_not_foreign() {
        assert_eq!(foreign_content(&vec![0u8; PROBE_LEN]), None);
        assert_eq!(foreign_content(&[]), None);
        assert_eq!(foreign_content(&with(0, b"KJUMPIMGx86_64\0\0")), None);
    }

    #[test]
    fn each_signature_is_named_with_its_offset() {
        for s in SIGNATURES {
            let found = foreign_content(&with(s.offset, s.magic)).expect(s.what);
            assert_eq!(found.what, s.what);
            assert_eq!(found.offset, s.offset as u64);
        }
    }

    #[test]
    fn an_mbr_needs_a_used_entry() {
        let mut head = with(510, &[0x55, 0xaa]);
        // A boot sector without partitions is still data, at 510.
        assert_eq!(
            foreign_content(&head).unwrap().what,
            "data that is not a kjump image"
        );
        head[446 + 16 + 4] = 0x83;
        let found = foreign_content(&head).unwrap();
        assert_eq!(
            (found.what.as_str(), found.offset),
            ("an MBR partition table", 510)
        );
    }

    #[test]
    fn unknown_data_names_its_first_byte() {
        let found = foreign_content(&with(0x1234, b"x")).unwrap();
        assert_eq!(found.offset, 0x1234);
        assert_eq!(
            found.to_string(),
            "data that is not a kjump image (first non-zero byte at offset 0x1234)"
        );
    }
}

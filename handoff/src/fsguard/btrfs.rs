//! btrfs: its primary superblock, at 64 KiB.
//!
//! btrfs writes its superblocks at every transaction commit, which every
//! synced write ends in, with the commit's generation; an fsync between
//! commits writes the tree log and then the superblocks with the log's
//! root. So the generation and the log root change with every write that
//! reached the disk.

use kjump_image_format::le::u64_at;

/// Where the primary superblock lies, and the bytes of it that are read.
pub(super) const SUPER: u64 = 64 << 10;
pub(super) const SUPER_LEN: usize = 4096;
const MAGIC: &[u8; 8] = b"_BHRfS_M";

/// The fingerprint of the btrfs filesystem whose primary superblock is
/// `sb`, or `None` when `sb` is not one.
pub(super) fn fingerprint(sb: &[u8]) -> Option<String> {
    if sb.get(0x40..0x48)? != MAGIC || sb.len() < 0xc9 {
        return None;
    }
    Some(format!(
        "btrfs generation={} root={:#x} log-root={:#x} log-root-level={}",
        u64_at(sb, 0x48),
        u64_at(sb, 0x50),
        u64_at(sb, 0x60),
        sb[0xc8]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_and_log_root() {
        let mut sb = vec![0u8; SUPER_LEN];
        assert_eq!(fingerprint(&sb), None);
        sb[0x40..0x48].copy_from_slice(MAGIC);
        sb[0x48..0x50].copy_from_slice(&77u64.to_le_bytes());
        sb[0x50..0x58].copy_from_slice(&0x1d4000u64.to_le_bytes());
        sb[0x60..0x68].copy_from_slice(&0x1f0000u64.to_le_bytes());
        sb[0xc8] = 1;
        assert_eq!(
            fingerprint(&sb).unwrap(),
            "btrfs generation=77 root=0x1d4000 log-root=0x1f0000 log-root-level=1"
        );
        assert_eq!(fingerprint(&sb[..0x80]), None);
    }
}

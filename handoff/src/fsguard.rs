//! The stale-filesystem guard.
//!
//! Resuming a kernel after its filesystems were mounted and written by
//! another boot corrupts them: the resumed kernel's caches and journal no
//! longer match the disk. So the capture kernel records a fingerprint of
//! every block device the saved kernel had mounted, read from the device
//! without mounting it, and a resume refuses when any fingerprint changed.
//!
//! For ext2/3/4 the fingerprint is the superblock's last write time, mount
//! count and lifetime kilobytes written; for anything else a CRC32 of the
//! device's first 64 KiB, where filesystems keep their superblocks.

use kjump_image_format::le::{u16_at, u32_at};
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// Bytes read from the start of a device.
const HEAD: usize = 64 << 10;
/// The ext superblock: offset on the device and magic.
const EXT_SUPER: usize = 1024;
const EXT_MAGIC: u16 = 0xef53;
/// Key prefix of fingerprints in an image's metadata.
pub const META_PREFIX: &str = kjump_image_format::metadata::KEY_FS_FINGERPRINT;

/// The fingerprint of a device's first bytes (`head`, up to 64 KiB).
pub fn fingerprint_of(head: &[u8]) -> String {
    let sb = head.get(EXT_SUPER..EXT_SUPER + 1024);
    if let Some(sb) = sb.filter(|sb| u16_at(sb, 0x38) == EXT_MAGIC) {
        let wtime = u64::from(u32_at(sb, 0x30)) | u64::from(sb[0x274]) << 32;
        let kbytes = u64::from(u32_at(sb, 0x178)) | u64::from(u32_at(sb, 0x17c)) << 32;
        // s_state and s_feature_incompat: a journal replay by another
        // boot (even a read-only mount replays) clears the "needs
        // recovery" bit a mounted ext3/4 has on disk.
        return format!(
            "ext wtime={wtime} mounts={} kbytes-written={kbytes} state={:#x} incompat={:#x}",
            u16_at(sb, 0x34),
            u16_at(sb, 0x3a),
            u32_at(sb, 0x60)
        );
    }
    format!(
        "crc32 of first {} bytes={:08x}",
        head.len(),
        crc32fast::hash(head)
    )
}

/// Reads a device's fingerprint.
pub fn fingerprint(device: &Path) -> std::io::Result<String> {
    let mut head = Vec::with_capacity(HEAD);
    File::open(device)?
        .take(HEAD as u64)
        .read_to_end(&mut head)?;
    Ok(fingerprint_of(&head))
}

/// Block devices with a filesystem mounted, from /proc/self/mountinfo text:
/// mount sources under /dev, in order, without repeats.
pub fn mounted_block_devices(mountinfo: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in mountinfo.lines() {
        let Some((_, after)) = line.split_once(" - ") else {
            continue;
        };
        let mut fields = after.split_whitespace();
        let (_fstype, source) = (fields.next(), fields.next());
        if let Some(src) = source.filter(|s| s.starts_with("/dev/")) {
            if !out.iter().any(|d| d == src) {
                out.push(src.to_string());
            }
        }
    }
    out
}

/// A filesystem that is not as the capture recorded it.
#[derive(Debug)]
pub enum Change {
    /// Its fingerprint differs.
    Changed {
        /// The device.
        device: String,
        /// The fingerprint the capture recorded.
        then: String,
        /// The fingerprint now.
        now: String,
    },
    /// The device cannot be read.
    Unreadable {
        /// The device.
        device: String,
        /// Why.
        error: std::io::Error,
    },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Changed { device, then, now } => write!(
                f,
                "the filesystem on {device} changed since the hibernation ({then} then, {now} now): \
             it was mounted and written by another boot, and resuming would corrupt it"
            ),
            Change::Unreadable { device, error } => write!(
                f,
                "cannot read {device} to check that its filesystem is unchanged: {error}"
            ),
        }
    }
}

/// Compares recorded fingerprints (`(device, fingerprint)`) with the
/// devices now; returns the first that changed or cannot be read.
pub fn first_change(recorded: &[(String, String)]) -> Option<Change> {
    recorded
        .iter()
        .find_map(|(dev, then)| match fingerprint(Path::new(dev)) {
            Ok(now) if now == *then => None,
            Ok(now) => Some(Change::Changed {
                device: dev.clone(),
                then: then.clone(),
                now,
            }),
            Err(error) => Some(Change::Unreadable {
                device: dev.clone(),
                error,
            }),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_block_sources() {
        let text = "22 27 0:21 / /proc rw - proc proc rw\n\
                    30 1 254:1 / / rw,relatime - ext4 /dev/vda1 rw\n\
                    31 30 254:16 / /home rw - ext4 /dev/vdb rw\n\
                    32 30 254:16 /x /srv rw - ext4 /dev/vdb rw\n\
                    33 30 0:40 / /tmp rw - tmpfs tmpfs rw\n";
        assert_eq!(mounted_block_devices(text), ["/dev/vda1", "/dev/vdb"]);
    }

    #[test]
    fn ext_fields_and_fallback() {
        let mut head = vec![0u8; 4096];
        head[EXT_SUPER + 0x38..EXT_SUPER + 0x3a].copy_from_slice(&EXT_MAGIC.to_le_bytes());
        head[EXT_SUPER + 0x30..EXT_SUPER + 0x34].copy_from_slice(&1_700_000_000u32.to_le_bytes());
        head[EXT_SUPER + 0x34] = 7;
        head[EXT_SUPER + 0x178] = 42;
        head[EXT_SUPER + 0x3a] = 1;
        head[EXT_SUPER + 0x60..EXT_SUPER + 0x64].copy_from_slice(&0x246u32.to_le_bytes());
        assert_eq!(
            fingerprint_of(&head),
            "ext wtime=1700000000 mounts=7 kbytes-written=42 state=0x1 incompat=0x246"
        );
        head[EXT_SUPER + 0x38] = 0;
        assert!(fingerprint_of(&head).starts_with("crc32 of first 4096 bytes="));
    }
}

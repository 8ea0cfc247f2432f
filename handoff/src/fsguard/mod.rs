//! The stale-filesystem guard.
//!
//! Resuming a kernel after its filesystems were mounted and written by
//! another boot corrupts them: the resumed kernel's caches and journal no
//! longer match the disk. So the capture kernel records a fingerprint of
//! every block device the saved kernel had mounted, read from the device
//! without mounting it, and a resume refuses when any fingerprint changed.
//! After `--then checkpoint` the saved kernel runs on and writes its
//! disks while the image stays committed, so a fingerprint must also
//! change with writes made while a filesystem stays mounted, which most
//! filesystems make to their journal or log, not to their superblock:
//!
//! - ext2/3/4 (`ext`): the superblock's last write time, mount count,
//!   lifetime kilobytes written, state and incompatible features; with a
//!   journal in an inode, also its sequence, where its log starts and
//!   where the log ends, followed from the journal's blocks as jbd2's
//!   recovery does (`jbd2`), and a CRC32 of its fast-commit area if it
//!   has one. An external journal is not read, and the fingerprint says so.
//! - btrfs (`btrfs`): its primary superblock's generation, root and log
//!   root, which every transaction commit and fsync rewrites.
//! - XFS (`xfs`): a CRC32 of the first 64 KiB and the head of an
//!   internal log; an external log is not read, and the fingerprint says so.
//! - anything else: a CRC32 of the device's first 64 KiB, where most
//!   filesystems keep their superblocks.
//!
//! Not seen: data overwritten in place without a change the journal or
//! log records (with `lazytime`, timestamps reach the disk up to a day
//! later), writes to an ext2, or to an ext4 without a journal, until it is
//! unmounted, and writes to an external journal or log.
//!
//! The capture kernel sets up no device-mapper or md, so it cannot read
//! a filesystem on LVM, dm-crypt/LUKS or md RAID; [`unguarded`] names
//! those mounts for `kjump hibernate` to refuse up front.
//!
//! The bytes come from a disk and may be garbage: every length and block
//! number is checked before it is used and every walk is bounded, and a
//! journal or log that cannot be followed gives a fingerprint that says
//! why (the same for the same bytes), never a panic. Only a device that
//! cannot be read makes the fingerprint an error.

use kjump_image_format::le::u16_at;
use std::io;
use std::path::Path;

mod btrfs;
mod disk;
mod ext;
mod jbd2;
mod unguarded;
mod xfs;

use disk::{read, Device, Disk, Fault};
pub use unguarded::{unguarded, Layer, Unguarded, UnguardedMounts};

/// Bytes read from the start of a device.
const HEAD: usize = 64 << 10;
/// Key prefix of fingerprints in an image's metadata.
pub const META_PREFIX: &str = kjump_image_format::metadata::KEY_FS_FINGERPRINT;

/// The fingerprint of a device whose bytes are `device`, all of them.
pub fn fingerprint_of(mut device: &[u8]) -> io::Result<String> {
    fingerprint_disk(&mut device)
}

/// Reads a device's fingerprint.
pub fn fingerprint(device: &Path) -> io::Result<String> {
    fingerprint_disk(&mut Device::open(device)?)
}

fn fingerprint_disk(disk: &mut dyn Disk) -> io::Result<String> {
    let head_len = disk.len().min(HEAD as u64) as usize;
    let head = read(disk, 0, head_len).map_err(into_io)?;
    let ext = head.get(ext::SUPER..ext::SUPER + ext::SUPER_LEN);
    if let Some(sb) = ext.filter(|sb| u16_at(sb, 0x38) == ext::MAGIC) {
        return ext::fingerprint(disk, sb);
    }
    if head.starts_with(xfs::MAGIC) {
        return xfs::fingerprint(disk, &head);
    }
    if disk.len() >= btrfs::SUPER + btrfs::SUPER_LEN as u64 {
        let sb = read(disk, btrfs::SUPER, btrfs::SUPER_LEN).map_err(into_io)?;
        if let Some(fp) = btrfs::fingerprint(&sb) {
            return Ok(fp);
        }
    }
    Ok(format!(
        "crc32 of first {} bytes={:08x}",
        head.len(),
        crc32fast::hash(&head)
    ))
}

/// A read whose range was checked can fail only as I/O does.
fn into_io(fault: Fault) -> io::Error {
    match fault {
        Fault::Io(e) => e,
        Fault::Malformed(m) => io::Error::new(io::ErrorKind::InvalidData, m),
    }
}

/// One line of /proc/self/mountinfo, the fields the guard reads.
struct Mount<'a> {
    /// Where it is mounted (escaped as mountinfo escapes it).
    point: &'a str,
    /// The mount's options (`rw,relatime`).
    options: &'a str,
    /// The mount source (`/dev/vda1`, `tmpfs`).
    source: &'a str,
    /// The filesystem's own options.
    super_options: &'a str,
}

/// The mounts of /proc/self/mountinfo text; lines that do not parse are
/// passed over.
fn mounts(mountinfo: &str) -> impl Iterator<Item = Mount<'_>> {
    mountinfo.lines().filter_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let mut own = before.split_whitespace().skip(4);
        let (point, options) = (own.next()?, own.next().unwrap_or(""));
        let mut fs = after.split_whitespace().skip(1);
        let source = fs.next()?;
        Some(Mount {
            point,
            options,
            source,
            super_options: fs.next().unwrap_or(""),
        })
    })
}

/// Block devices with a filesystem mounted, from /proc/self/mountinfo text:
/// mount sources under /dev, in order, without repeats, but for loop
/// devices mounted read-only only ([`unguarded::read_only_loops`]).
pub fn mounted_block_devices(mountinfo: &str) -> Vec<String> {
    let read_only_loops = unguarded::read_only_loops(mountinfo);
    let mut out: Vec<String> = Vec::new();
    for src in mounts(mountinfo).map(|m| m.source) {
        let wanted = src.starts_with("/dev/") && !read_only_loops.iter().any(|l| l == src);
        if wanted && !out.iter().any(|d| d == src) {
            out.push(src.to_string());
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
             it was written since (by another boot, or by the saved kernel running on after a checkpoint), and resuming would corrupt it"
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
                    33 30 0:40 / /tmp rw - tmpfs tmpfs rw\n\
                    34 30 7:0 / /snap/core22/1 ro - squashfs /dev/loop0 ro\n\
                    35 30 7:1 / /mnt/img rw - ext4 /dev/loop1 rw\n";
        // A read-only loop mount is left out; a read-write one is kept
        // (and refused up front by the preflight, see unguarded).
        assert_eq!(
            mounted_block_devices(text),
            ["/dev/vda1", "/dev/vdb", "/dev/loop1"]
        );
    }

    /// The seeds of the fuzz target `fs_fingerprint`, written to the
    /// directory `KJUMP_FUZZ_SEEDS` names (fuzz/corpus/fs_fingerprint).
    #[test]
    fn fuzz_seeds() {
        let Some(dir) = std::env::var_os("KJUMP_FUZZ_SEEDS") else {
            return;
        };
        let dir = Path::new(&dir);
        std::fs::write(dir.join("ext4-journal"), ext::tests::seed()).unwrap();
        std::fs::write(dir.join("xfs-log"), xfs::tests::seed()).unwrap();
    }

    #[test]
    fn ext_fields_and_fallback() {
        const EXT_SUPER: usize = ext::SUPER;
        const EXT_MAGIC: u16 = ext::MAGIC;
        let mut head = vec![0u8; 4096];
        head[EXT_SUPER + 0x38..EXT_SUPER + 0x3a].copy_from_slice(&EXT_MAGIC.to_le_bytes());
        head[EXT_SUPER + 0x30..EXT_SUPER + 0x34].copy_from_slice(&1_700_000_000u32.to_le_bytes());
        head[EXT_SUPER + 0x34] = 7;
        head[EXT_SUPER + 0x178] = 42;
        head[EXT_SUPER + 0x3a] = 1;
        head[EXT_SUPER + 0x60..EXT_SUPER + 0x64].copy_from_slice(&0x246u32.to_le_bytes());
        assert_eq!(
            fingerprint_of(&head).unwrap(),
            "ext wtime=1700000000 mounts=7 kbytes-written=42 state=0x1 incompat=0x246 journal=none"
        );
        head[EXT_SUPER + 0x38] = 0;
        assert!(fingerprint_of(&head)
            .unwrap()
            .starts_with("crc32 of first 4096 bytes="));
    }
}

//! Reading a device for its fingerprint: ranges checked against the
//! device's end before they are read (a length or block number from disk
//! may be anything), and reads that bypass the page cache.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The bytes of a device, by range.
pub(crate) trait Disk {
    /// Bytes on the device.
    fn len(&self) -> u64;
    /// Fills `buf` from `offset`; the range lies within [`Disk::len`].
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

/// A disk held in memory, for the tests and the fuzz target.
impl Disk for &[u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }

    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let at = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let src = self
            .get(at..at.saturating_add(buf.len()))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// Why a filesystem's structures could not be followed to the end.
#[derive(Debug)]
pub(crate) enum Fault {
    /// The device failed: the fingerprint cannot be taken.
    Io(io::Error),
    /// Its bytes are not what the format says: the fingerprint says so.
    Malformed(Malformed),
}

impl From<io::Error> for Fault {
    fn from(e: io::Error) -> Fault {
        Fault::Io(e)
    }
}

impl From<Malformed> for Fault {
    fn from(m: Malformed) -> Fault {
        Fault::Malformed(m)
    }
}

/// How the on-disk structures a fingerprint follows are malformed. The
/// text becomes part of the fingerprint, so that the same garbage read
/// twice gives the same fingerprint and other garbage another.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Malformed {
    /// A range lies past the device's end (a truncated device, or a
    /// block number that is garbage).
    #[error("{len} bytes at byte {offset} lie beyond the device's end at {end}")]
    BeyondEnd {
        /// Where the range starts.
        offset: u64,
        /// Its length.
        len: u64,
        /// The device's length.
        end: u64,
    },
    /// A field is outside what the format allows.
    #[error("{field} is {value}, outside {allowed}")]
    Field {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// What the format allows.
        allowed: &'static str,
    },
    /// A structure lacks its magic number.
    #[error("no {what} magic at byte {offset}")]
    Magic {
        /// The structure.
        what: &'static str,
        /// Where it was looked for.
        offset: u64,
    },
    /// Journal block 0 is not a jbd2 superblock.
    #[error("journal block 0 is no jbd2 superblock (magic {magic:#x}, type {blocktype})")]
    JournalSuperblock {
        /// Its first word.
        magic: u32,
        /// Its block type.
        blocktype: u32,
    },
    /// A block of the journal file has no block on the device.
    #[error("journal block {0} is not mapped to the device")]
    Unmapped(u64),
    /// The journal lies in more pieces than are followed.
    #[error("the journal lies in more than {0} pieces")]
    Fragmented(usize),
    /// The journal's block map takes more blocks than are read.
    #[error("the journal's block map takes more than {0} blocks")]
    MapTooLarge(usize),
    /// Following the log went round the whole journal.
    #[error("the log does not end within the journal's {0} blocks")]
    Endless(u64),
}

/// Reads `len` bytes at `offset` of `disk`, after checking that they lie
/// within it.
pub(crate) fn read(disk: &mut dyn Disk, offset: u64, len: usize) -> Result<Vec<u8>, Fault> {
    let end = disk.len();
    let beyond = Malformed::BeyondEnd {
        offset,
        len: len as u64,
        end,
    };
    match offset.checked_add(len as u64) {
        Some(e) if e <= end => {}
        _ => return Err(beyond.into()),
    }
    let mut buf = vec![0u8; len];
    disk.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

/// The big-endian `u32` at `off` in `b` (panics past the end).
pub(crate) fn be32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_be_bytes(a)
}

/// The big-endian `u64` at `off` in `b` (panics past the end).
pub(crate) fn be64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_be_bytes(a)
}

/// The alignment of direct reads: the largest logical block size of the
/// devices in use, which also suits smaller ones.
const DIRECT_ALIGN: usize = 4096;

/// A block device opened for its fingerprint.
///
/// It is read with O_DIRECT where the device allows it: XFS writes its
/// log around the block device's page cache, so a cached copy of a log
/// block read earlier in the same boot would hide a write made since
/// (the capture kernel and a normal boot read each device fresh, but a
/// running system, as in the tests, does not).
pub(crate) struct Device {
    path: PathBuf,
    file: File,
    len: u64,
    direct: bool,
}

impl Device {
    /// Opens `path` for reading.
    pub(crate) fn open(path: &Path) -> io::Result<Device> {
        let direct = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path);
        let (mut file, direct) = match direct {
            Ok(f) => (f, true),
            // A file on tmpfs, for one, takes no O_DIRECT.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (File::open(path)?, false),
            Err(e) => return Err(e),
        };
        let len = file.seek(SeekFrom::End(0))?;
        Ok(Device {
            path: path.to_path_buf(),
            file,
            len,
            direct,
        })
    }

    /// A direct read of the aligned span around `buf`'s range, copied out.
    fn read_direct(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let align = DIRECT_ALIGN as u64;
        let start = offset - offset % align;
        let want_end = offset + buf.len() as u64;
        let end = want_end.next_multiple_of(align).min(self.len).max(want_end);
        let span = (end - start) as usize;
        let mut bounce = vec![0u8; span + DIRECT_ALIGN];
        let pad = bounce.as_ptr().align_offset(DIRECT_ALIGN);
        let aligned = &mut bounce[pad..pad + span];
        self.file.read_exact_at(aligned, start)?;
        let skip = (offset - start) as usize;
        buf.copy_from_slice(&aligned[skip..skip + buf.len()]);
        Ok(())
    }
}

impl Disk for Device {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if self.direct {
            match self.read_direct(buf, offset) {
                // The device refuses direct reads of this size or
                // alignment: read through the page cache from now on.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    self.file = File::open(&self.path)?;
                    self.direct = false;
                }
                other => return other,
            }
        }
        self.file.read_exact_at(buf, offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_past_the_end_are_malformed_not_read() {
        let bytes = [1u8, 2, 3, 4];
        let mut disk: &[u8] = &bytes;
        assert_eq!(read(&mut disk, 1, 3).unwrap(), [2, 3, 4]);
        for (offset, len) in [(2, 3), (u64::MAX, 1), (5, 0)] {
            match read(&mut disk, offset, len) {
                Err(Fault::Malformed(Malformed::BeyondEnd { end: 4, .. })) => {}
                other => panic!("{offset}+{len}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_device_reads_unaligned_ranges_directly_or_not() {
        let dir = std::env::temp_dir().join(format!("kjump-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dev");
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let mut dev = Device::open(&path).unwrap();
        assert_eq!(Disk::len(&dev), 10_000);
        for (offset, len) in [(0, 1), (4095, 2), (5000, 4999), (9999, 1)] {
            let got = read(&mut dev, offset, len).unwrap();
            assert_eq!(got, bytes[offset as usize..][..len], "{offset}+{len}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! XFS: the log's head, besides the first 64 KiB (its superblock and
//! allocation group 0's headers).
//!
//! XFS counts free space lazily, so its superblock stays as it is while
//! the filesystem is mounted and written; every write reaches the log
//! first. The log is a ring of 512-byte basic blocks, and each carries in
//! its first word the cycle, the number of times the log has wrapped when
//! it was written (a record header carries it in its second word, after
//! its magic). Blocks before the head have the current cycle, blocks from
//! it on the one before, so the head is where the cycle drops: found by a
//! binary search, as xlog_find_head's first step does. Every log write
//! moves the head or, when it wraps, the cycle of block 0, so a head and
//! the cycles at both ends of the log change with each of them, in about
//! 2 + log2(blocks) reads of 512 bytes (a CRC of every block's cycle
//! would read the whole log, up to 2 GiB).
//!
//! The kernel also looks behind the head for blocks its last writes left
//! unwritten, which a crash can leave (the log's writes overlap); a search
//! through such a hole finds one of its edges, the same one for the same
//! bytes.

use std::fmt;
use std::io;

use super::disk::{be32, be64, read, Disk, Fault, Malformed};

/// The superblock's magic, at byte 0.
pub(super) const MAGIC: &[u8; 4] = b"XFSB";
/// A log record header's magic.
const RECORD_MAGIC: u32 = 0xfeed_babe;
/// A basic block.
const BB: u64 = 512;

/// The fingerprint of an XFS filesystem whose first bytes are `head`
/// (its superblock first).
pub(super) fn fingerprint(disk: &mut dyn Disk, head: &[u8]) -> io::Result<String> {
    let log = match Log::locate(head) {
        Ok(None) => "log=external (not read: writes while mounted are not seen)".to_string(),
        Ok(Some(log)) => match log.head(disk) {
            Ok(head) => head.to_string(),
            Err(Fault::Malformed(m)) => format!("log=invalid ({m})"),
            Err(Fault::Io(e)) => return Err(e),
        },
        Err(m) => format!("log=invalid ({m})"),
    };
    Ok(format!(
        "xfs {log} crc32 of first {} bytes={:08x}",
        head.len(),
        crc32fast::hash(head)
    ))
}

/// An internal log: where it starts on the device, and its basic blocks.
#[derive(Debug, PartialEq, Eq)]
struct Log {
    start: u64,
    blocks: u64,
}

impl Log {
    /// The internal log the superblock `sb` places, or `None` when the log
    /// is on another device.
    fn locate(sb: &[u8]) -> Result<Option<Log>, Malformed> {
        if sb.len() < 0x80 {
            return Err(Malformed::Field {
                field: "the device's size",
                value: sb.len() as u64,
                allowed: "an XFS superblock",
            });
        }
        let block_size = be32(sb, 0x04);
        if !block_size.is_power_of_two() || !(512..=65536).contains(&block_size) {
            return Err(Malformed::Field {
                field: "sb_blocksize",
                value: block_size.into(),
                allowed: "a power of two from 512 to 65536",
            });
        }
        let logstart = be64(sb, 0x30);
        if logstart == 0 {
            return Ok(None);
        }
        let (ag_blocks, ag_log) = (u64::from(be32(sb, 0x54)), u32::from(sb[0x7c]));
        if ag_log >= 32 || ag_blocks == 0 || ag_blocks > 1 << ag_log {
            return Err(Malformed::Field {
                field: "sb_agblklog",
                value: ag_log.into(),
                allowed: "below 32, and sb_agblocks within 2^sb_agblklog",
            });
        }
        let log_blocks = u64::from(be32(sb, 0x60));
        if log_blocks == 0 {
            return Err(Malformed::Field {
                field: "sb_logblocks",
                value: 0,
                allowed: "1 or more",
            });
        }
        // sb_logstart numbers the block within its allocation group.
        let (ag, in_ag) = (logstart >> ag_log, logstart & ((1 << ag_log) - 1));
        let start = ag
            .checked_mul(ag_blocks)
            .and_then(|b| b.checked_add(in_ag))
            .and_then(|b| b.checked_mul(block_size.into()))
            .ok_or(Malformed::Field {
                field: "sb_logstart",
                value: logstart,
                allowed: "a block of the filesystem",
            })?;
        Ok(Some(Log {
            start,
            blocks: log_blocks * (u64::from(block_size) / BB),
        }))
    }

    /// The cycle of basic block `n`.
    fn cycle(&self, disk: &mut dyn Disk, n: u64) -> Result<u32, Fault> {
        let b = read(disk, self.start + n * BB, 8)?;
        Ok(match be32(&b, 0) {
            RECORD_MAGIC => be32(&b, 4),
            cycle => cycle,
        })
    }

    /// Finds the head.
    fn head(&self, disk: &mut dyn Disk) -> Result<LogHead, Fault> {
        let len = self.blocks * BB;
        match self.start.checked_add(len) {
            Some(end) if end <= disk.len() => {}
            _ => {
                return Err(Malformed::BeyondEnd {
                    offset: self.start,
                    len,
                    end: disk.len(),
                }
                .into())
            }
        }
        let first = self.cycle(disk, 0)?;
        let last = self.cycle(disk, self.blocks - 1)?;
        // All one cycle: the log wrapped just now, or was never written
        // past its end; the next write goes to block 0.
        let mut block = 0;
        if first != last {
            // Block lo is before the head, block hi from it on.
            let (mut lo, mut hi) = (0, self.blocks - 1);
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if self.cycle(disk, mid)? == last {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            block = hi;
        }
        Ok(LogHead { block, first, last })
    }
}

/// Where the log's head is and the cycles at its two ends.
#[derive(Debug, PartialEq, Eq)]
struct LogHead {
    block: u64,
    first: u32,
    last: u32,
}

impl fmt::Display for LogHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "log-head={} cycles={}/{}",
            self.block, self.first, self.last
        )
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::fsguard::fingerprint_of;

    /// A filesystem of 4 KiB blocks, allocation groups of 1000 blocks
    /// (2^10 numbered), whose 4-block log starts at block 10 of group 1:
    /// 32 basic blocks from byte 4136960.
    fn image() -> Vec<u8> {
        let mut img = vec![0u8; 1100 * 4096];
        img[..4].copy_from_slice(MAGIC);
        img[4..8].copy_from_slice(&4096u32.to_be_bytes());
        img[0x30..0x38].copy_from_slice(&(1u64 << 10 | 10).to_be_bytes());
        img[0x54..0x58].copy_from_slice(&1000u32.to_be_bytes());
        img[0x60..0x64].copy_from_slice(&4u32.to_be_bytes());
        img[0x7c] = 10;
        img
    }

    const LOG: usize = 1010 * 4096;

    /// Writes the log's cycles: a record header (magic, cycle) at each
    /// block in `headers`, the bare cycle elsewhere.
    fn cycles(img: &mut [u8], cycles: &[u32], headers: &[usize]) {
        for (i, c) in cycles.iter().enumerate() {
            let at = LOG + i * 512;
            if headers.contains(&i) {
                img[at..at + 4].copy_from_slice(&RECORD_MAGIC.to_be_bytes());
                img[at + 4..at + 8].copy_from_slice(&c.to_be_bytes());
            } else {
                img[at..at + 4].copy_from_slice(&c.to_be_bytes());
            }
        }
    }

    fn log_of(img: &[u8]) -> String {
        let fp = fingerprint_of(img).unwrap();
        let log = fp.strip_prefix("xfs ").unwrap_or_else(|| panic!("{fp}"));
        log.split(" crc32 of first 65536 bytes=")
            .next()
            .unwrap()
            .into()
    }

    #[test]
    fn the_head_is_where_the_cycle_drops() {
        let mut img = image();
        assert_eq!(
            Log::locate(&img).unwrap(),
            Some(Log {
                start: LOG as u64,
                blocks: 32
            })
        );
        // Never wrapped: written up to block 11, zero after.
        let mut c = vec![1; 11];
        c.resize(32, 0);
        cycles(&mut img, &c, &[0, 5]);
        assert_eq!(log_of(&img), "log-head=11 cycles=1/0");
        // Wrapped: cycle 3 up to block 20, cycle 2 from there.
        let mut c = vec![3; 20];
        c.resize(32, 2);
        cycles(&mut img, &c, &[0, 19, 20]);
        assert_eq!(log_of(&img), "log-head=20 cycles=3/2");
        // Written to its very end: the next write goes to block 0.
        cycles(&mut img, &[3; 32], &[0]);
        assert_eq!(log_of(&img), "log-head=0 cycles=3/3");
        // Every head from 1 to 31 is found.
        for head in 1..32 {
            let mut c = vec![5; head];
            c.resize(32, 4);
            cycles(&mut img, &c, &[]);
            assert_eq!(log_of(&img), format!("log-head={head} cycles=5/4"));
        }
    }

    /// A 12 KiB XFS of 512-byte blocks whose 16-block log, from byte 4096,
    /// was written up to block 5 in its second cycle: the fuzz target's
    /// seed.
    pub(in crate::fsguard) fn seed() -> Vec<u8> {
        let mut img = vec![0u8; 12 << 10];
        img[..4].copy_from_slice(MAGIC);
        img[4..8].copy_from_slice(&512u32.to_be_bytes());
        img[0x30..0x38].copy_from_slice(&8u64.to_be_bytes());
        img[0x54..0x58].copy_from_slice(&64u32.to_be_bytes());
        img[0x60..0x64].copy_from_slice(&16u32.to_be_bytes());
        img[0x7c] = 6;
        for n in 0..16 {
            let at = 4096 + n * 512;
            let cycle: u32 = if n < 5 { 2 } else { 1 };
            if n == 0 || n == 3 {
                img[at..at + 4].copy_from_slice(&RECORD_MAGIC.to_be_bytes());
                img[at + 4..at + 8].copy_from_slice(&cycle.to_be_bytes());
            } else {
                img[at..at + 4].copy_from_slice(&cycle.to_be_bytes());
            }
        }
        img
    }

    #[test]
    fn the_fuzz_seed_has_its_head_at_block_5() {
        let fp = fingerprint_of(&seed()).unwrap();
        assert!(fp.starts_with("xfs log-head=5 cycles=2/1 crc32"), "{fp}");
    }

    #[test]
    fn an_external_log_is_not_read() {
        let mut img = image();
        img[0x30..0x38].fill(0);
        assert_eq!(
            log_of(&img),
            "log=external (not read: writes while mounted are not seen)"
        );
    }

    #[test]
    fn garbage_geometry_says_how() {
        let spoilt = |at: usize, bytes: &[u8]| {
            let mut img = image();
            img[at..at + bytes.len()].copy_from_slice(bytes);
            log_of(&img)
        };
        assert_eq!(
            spoilt(4, &3000u32.to_be_bytes()),
            "log=invalid (sb_blocksize is 3000, outside a power of two from 512 to 65536)"
        );
        assert_eq!(
            spoilt(0x7c, &[40]),
            "log=invalid (sb_agblklog is 40, outside below 32, and sb_agblocks within 2^sb_agblklog)"
        );
        assert_eq!(
            spoilt(0x60, &[0; 4]),
            "log=invalid (sb_logblocks is 0, outside 1 or more)"
        );
        assert_eq!(
            spoilt(0x30, &(2u64 << 10).to_be_bytes()),
            "log=invalid (16384 bytes at byte 8192000 lie beyond the device's end at 4505600)"
        );
        assert!(spoilt(0x30, &u64::MAX.to_be_bytes()).starts_with("log=invalid (sb_logstart is"));
        let tiny = &image()[..0x40];
        assert_eq!(
            fingerprint_of(tiny).unwrap(),
            format!(
                "xfs log=invalid (the device's size is 64, outside an XFS superblock) crc32 of first 64 bytes={:08x}",
                crc32fast::hash(tiny)
            )
        );
    }
}

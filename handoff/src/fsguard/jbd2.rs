//! The jbd2 journal of ext3/4: where its log starts and where it ends.
//!
//! The journal superblock (journal block 0, big-endian) says where the
//! log starts (`s_start`, 0 when the journal is empty) and the sequence
//! number of its first transaction (`s_sequence`). The first commit after
//! the journal was emptied rewrites the superblock; later commits append
//! blocks to the log, each headed by the magic number and the sequence of
//! its transaction. The log's end is found as jbd2 recovery's scan pass
//! finds it: from `s_start`, a descriptor block is followed by the data
//! blocks its tags describe, a commit block ends a transaction and the
//! next one has the next sequence, a revoke block is skipped; the log
//! wraps from the end of its area to `s_first`; the first block that is
//! not a header of the expected sequence ends it. Data blocks that begin
//! with the magic are escaped in the log, so a block that begins with it
//! is the journal's own.
//!
//! Checksums are not verified: a fingerprint only has to be the same for
//! the same bytes, and differ when the log moves.

use std::fmt;

use super::disk::{be32, Fault, Malformed};

const MAGIC: u32 = 0xc03b_3998;
const DESCRIPTOR: u32 = 1;
const COMMIT: u32 = 2;
const SUPER_V1: u32 = 3;
const SUPER_V2: u32 = 4;
const REVOKE: u32 = 5;

/// `s_feature_incompat` bits that change the layout of the log.
const INCOMPAT_64BIT: u32 = 0x2;
const INCOMPAT_CSUM_V2: u32 = 0x8;
const INCOMPAT_CSUM_V3: u32 = 0x10;
const INCOMPAT_FAST_COMMIT: u32 = 0x20;
/// The fast-commit area when the superblock does not size it.
const DEFAULT_FC_BLOCKS: u32 = 256;

/// Descriptor tag flags: no UUID follows the tag; the last tag.
const FLAG_SAME_UUID: u16 = 0x2;
const FLAG_LAST_TAG: u16 = 0x8;

/// A journal's blocks, by number in the journal.
pub(super) trait Journal {
    /// Blocks in the journal file.
    fn blocks(&self) -> u64;
    /// Block `n`, of the filesystem's block size.
    fn block(&mut self, n: u64) -> Result<Vec<u8>, Fault>;
}

/// The journal superblock's fields that place the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Superblock {
    sequence: u32,
    start: u32,
    /// The log's area: blocks `first..last`.
    first: u32,
    last: u32,
    /// The fast-commit area, `last..maxlen`, when there is one.
    maxlen: u32,
    fast_commit: bool,
    /// Bytes of a descriptor block's tag.
    tag_bytes: usize,
    /// Bytes at the end of a descriptor block that hold no tags.
    tail_bytes: usize,
}

impl Superblock {
    fn parse(b: &[u8], journal_blocks: u64) -> Result<Superblock, Malformed> {
        if b.len() < 1024 {
            return Err(Malformed::Field {
                field: "the journal's block size",
                value: b.len() as u64,
                allowed: "1024 bytes or more",
            });
        }
        let blocktype = be32(b, 4);
        if be32(b, 0) != MAGIC || !matches!(blocktype, SUPER_V1 | SUPER_V2) {
            return Err(Malformed::JournalSuperblock {
                magic: be32(b, 0),
                blocktype,
            });
        }
        let field = |field, value: u32, allowed| Malformed::Field {
            field,
            value: value.into(),
            allowed,
        };
        let block_size = be32(b, 0xc);
        if block_size as usize != b.len() {
            return Err(field(
                "s_blocksize",
                block_size,
                "the filesystem's block size",
            ));
        }
        let maxlen = be32(b, 0x10);
        if u64::from(maxlen) > journal_blocks {
            return Err(field("s_maxlen", maxlen, "the journal file's blocks"));
        }
        let first = be32(b, 0x14);
        if first == 0 || first >= maxlen {
            return Err(field("s_first", first, "1..s_maxlen"));
        }
        // Version 1 superblocks have no feature fields.
        let incompat = if blocktype == SUPER_V2 {
            be32(b, 0x28)
        } else {
            0
        };
        let fast_commit = incompat & INCOMPAT_FAST_COMMIT != 0;
        let fc_blocks = match be32(b, 0x54) {
            0 if fast_commit => DEFAULT_FC_BLOCKS,
            n if fast_commit => n,
            _ => 0,
        };
        let last = maxlen
            .checked_sub(fc_blocks)
            .filter(|&last| last > first)
            .ok_or(field("s_num_fc_blks", fc_blocks, "less than the journal"))?;
        let start = be32(b, 0x1c);
        if start != 0 && !(first..last).contains(&start) {
            return Err(field("s_start", start, "0 or s_first..the log's end"));
        }
        let csum = incompat & (INCOMPAT_CSUM_V2 | INCOMPAT_CSUM_V3) != 0;
        let tag_bytes = if incompat & INCOMPAT_CSUM_V3 != 0 {
            16
        } else {
            let bytes = if csum { 10 } else { 8 };
            bytes + if incompat & INCOMPAT_64BIT != 0 { 4 } else { 0 }
        };
        Ok(Superblock {
            sequence: be32(b, 0x18),
            start,
            first,
            last,
            maxlen,
            fast_commit,
            tag_bytes,
            tail_bytes: if csum { 4 } else { 0 },
        })
    }

    /// The block `n` blocks after `block`, round the log's area.
    fn advance(&self, block: u32, n: u64) -> u32 {
        let span = u64::from(self.last - self.first);
        let at = (u64::from(block - self.first) + n) % span;
        self.first + at as u32
    }

    /// The data blocks that follow the descriptor block `b`: its tags.
    fn tags(&self, b: &[u8]) -> u64 {
        let room = b.len() - self.tail_bytes;
        let (mut at, mut n) = (12, 0);
        while at + self.tag_bytes <= room {
            let flags = u16::from_be_bytes([b[at + 6], b[at + 7]]);
            n += 1;
            at += self.tag_bytes;
            if flags & FLAG_SAME_UUID == 0 {
                at += 16;
            }
            if flags & FLAG_LAST_TAG != 0 {
                break;
            }
        }
        n
    }
}

/// Where a journal's log starts and ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct LogState {
    /// `s_sequence` and `s_start` of the journal superblock.
    sequence: u32,
    start: u32,
    /// The sequence the log's end expects and the block it ends at;
    /// `None` for an empty journal.
    end: Option<(u32, u32)>,
    /// CRC32 of the fast-commit area, when the journal has one: fast
    /// commits write there and leave the log as it is.
    fast_commit: Option<u32>,
}

impl LogState {
    /// Reads the journal superblock and follows the log.
    pub(super) fn read(journal: &mut dyn Journal) -> Result<LogState, Fault> {
        let b = journal.block(0)?;
        let sb = Superblock::parse(&b, journal.blocks())?;
        let end = match sb.start {
            0 => None,
            _ => Some(log_end(journal, &sb)?),
        };
        let fast_commit = match sb.fast_commit {
            true => {
                let mut crc = crc32fast::Hasher::new();
                for n in sb.last..sb.maxlen {
                    crc.update(&journal.block(n.into())?);
                }
                Some(crc.finalize())
            }
            false => None,
        };
        Ok(LogState {
            sequence: sb.sequence,
            start: sb.start,
            end,
            fast_commit,
        })
    }
}

impl fmt::Display for LogState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "journal-sequence={} journal-start={} ",
            self.sequence, self.start
        )?;
        match self.end {
            Some((sequence, block)) => write!(f, "log-end={sequence}@{block}")?,
            None => write!(f, "log-end=empty")?,
        }
        if let Some(crc) = self.fast_commit {
            write!(f, " fast-commit-crc32={crc:08x}")?;
        }
        Ok(())
    }
}

/// The log's end from `s_start`: the sequence it expects next and the
/// block it ends at. Each step passes at least one block, and the log
/// never fills its whole area, so a walk round all of it means garbage.
fn log_end(journal: &mut dyn Journal, sb: &Superblock) -> Result<(u32, u32), Fault> {
    let span = u64::from(sb.last - sb.first);
    let (mut sequence, mut block) = (sb.sequence, sb.start);
    let mut passed = 0u64;
    while passed < span {
        let b = journal.block(block.into())?;
        if be32(&b, 0) != MAGIC || be32(&b, 8) != sequence {
            return Ok((sequence, block));
        }
        passed += 1;
        let mut next = 1;
        match be32(&b, 4) {
            DESCRIPTOR => next += sb.tags(&b),
            COMMIT => sequence = sequence.wrapping_add(1),
            REVOKE => {}
            _ => return Ok((sequence, block)),
        }
        passed += next - 1;
        block = sb.advance(block, next);
    }
    Err(Malformed::Endless(span).into())
}

#[cfg(test)]
mod tests;

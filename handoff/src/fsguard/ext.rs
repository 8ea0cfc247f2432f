//! ext2/3/4: the superblock's fields and, for a journaled filesystem,
//! where its journal's log starts and ends ([`super::jbd2`]).
//!
//! The superblock changes only at mount and unmount (and an hourly
//! update), so writes while the filesystem stays mounted show in the
//! journal alone. The journal is a file; the superblock keeps a copy of
//! its inode's block map (`s_jnl_blocks`), an extent tree or, on ext3, a
//! block map with indirect blocks, from which its blocks are found on the
//! device without reading the inode table.

use std::io;

use kjump_image_format::le::{u16_at, u32_at};

use super::disk::{read, Disk, Fault, Malformed};
use super::jbd2::{self, Journal};

/// The superblock: its offset on the device, its size and its magic.
pub(super) const SUPER: usize = 1024;
pub(super) const SUPER_LEN: usize = 1024;
pub(super) const MAGIC: u16 = 0xef53;

/// `s_feature_compat`: the filesystem has a journal.
const COMPAT_HAS_JOURNAL: u32 = 0x4;
/// `s_jnl_backup_type`: `s_jnl_blocks` holds the journal inode's
/// `i_block`, then `i_size_high` and `i_size`.
const JNL_BACKUP_BLOCKS: u8 = 1;
const JNL_BLOCKS: usize = 0x10c;
const EXTENT_MAGIC: u16 = 0xf30a;
/// ext4 builds extent trees at most 5 deep below the inode.
const MAX_DEPTH: u16 = 5;
/// Bounds on what is followed from disk: the pieces the journal lies in,
/// and the extent-tree or indirect blocks read to find them. A journal
/// that mke2fs or tune2fs made takes a few of each.
const MAX_RUNS: usize = 1 << 16;
const MAX_MAP_BLOCKS: usize = 1 << 12;
/// The largest journal mke2fs makes (`JBD2_MAX_JOURNAL_BLOCKS`).
const MAX_JOURNAL_BLOCKS: u64 = 10_240_000;
/// Journal blocks read at once: the log is read from its start to its end
/// for its descriptor and commit blocks, which lie close together when
/// transactions are small.
const READ_AHEAD: u64 = 32;

/// The fingerprint of an ext filesystem whose superblock is `sb`.
pub(super) fn fingerprint(disk: &mut dyn Disk, sb: &[u8]) -> io::Result<String> {
    let wtime = u64::from(u32_at(sb, 0x30)) | u64::from(sb[0x274]) << 32;
    let kbytes = u64::from(u32_at(sb, 0x178)) | u64::from(u32_at(sb, 0x17c)) << 32;
    // s_state and s_feature_incompat: a journal replay by another
    // boot (even a read-only mount replays) clears the "needs
    // recovery" bit a mounted ext3/4 has on disk.
    Ok(format!(
        "ext wtime={wtime} mounts={} kbytes-written={kbytes} state={:#x} incompat={:#x} {}",
        u16_at(sb, 0x34),
        u16_at(sb, 0x3a),
        u32_at(sb, 0x60),
        journal(disk, sb)?
    ))
}

/// What the journal says: where its log starts and ends, or why that is
/// not known.
fn journal(disk: &mut dyn Disk, sb: &[u8]) -> io::Result<String> {
    if u32_at(sb, 0x5c) & COMPAT_HAS_JOURNAL == 0 {
        return Ok("journal=none".into());
    }
    let (inum, dev) = (u32_at(sb, 0xe0), u32_at(sb, 0xe4));
    if inum == 0 {
        return Ok(format!(
            "journal=external (device {dev:#x}, not read: writes while mounted are not seen)"
        ));
    }
    if sb[0xfd] != JNL_BACKUP_BLOCKS {
        return Ok(format!(
            "journal=unknown (inode {inum}; the superblock keeps no copy of its block map)"
        ));
    }
    let state = JournalFile::from_backup(disk, sb).and_then(|file| {
        let mut journal = OnDisk {
            disk,
            file,
            window: (0, Vec::new()),
        };
        jbd2::LogState::read(&mut journal)
    });
    match state {
        Ok(state) => Ok(state.to_string()),
        Err(Fault::Malformed(m)) => Ok(format!("journal=invalid ({m})")),
        Err(Fault::Io(e)) => Err(e),
    }
}

/// Journal blocks `logical..logical + len` lie at device blocks
/// `physical..`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    logical: u64,
    physical: u64,
    len: u64,
}

/// The journal file: its block size, its length and where its blocks lie.
#[derive(Debug)]
struct JournalFile {
    block_size: u64,
    blocks: u64,
    /// Sorted by `logical`.
    runs: Vec<Run>,
}

impl JournalFile {
    /// The journal file as the superblock `sb` keeps its inode's block map.
    fn from_backup(disk: &mut dyn Disk, sb: &[u8]) -> Result<JournalFile, Fault> {
        let log = u32_at(sb, 0x18);
        if log > 6 {
            return Err(Malformed::Field {
                field: "s_log_block_size",
                value: log.into(),
                allowed: "0..=6 (1 to 64 KiB blocks)",
            }
            .into());
        }
        let block_size = 1024u64 << log;
        let i_block = &sb[JNL_BLOCKS..JNL_BLOCKS + 60];
        let size =
            u64::from(u32_at(sb, JNL_BLOCKS + 64)) | u64::from(u32_at(sb, JNL_BLOCKS + 60)) << 32;
        let blocks = size / block_size;
        if blocks > MAX_JOURNAL_BLOCKS {
            return Err(Malformed::Field {
                field: "the journal's size in blocks",
                value: blocks,
                allowed: "mke2fs's 10240000",
            }
            .into());
        }
        let mut map = MapWalk {
            disk,
            block_size,
            blocks,
            runs: Vec::new(),
            map_blocks: 0,
        };
        if u16_at(i_block, 0) == EXTENT_MAGIC {
            map.extents(i_block, (SUPER + JNL_BLOCKS) as u64, None)?;
        } else {
            map.block_map(i_block)?;
        }
        let mut runs = map.runs;
        runs.sort_by_key(|r| r.logical);
        Ok(JournalFile {
            block_size,
            blocks,
            runs,
        })
    }

    /// Where journal block `n` lies on the device (in bytes), and how many
    /// blocks from there on follow it on the device.
    fn locate(&self, n: u64) -> Result<(u64, u64), Malformed> {
        let i = self.runs.partition_point(|r| r.logical <= n);
        let run = i
            .checked_sub(1)
            .map(|i| self.runs[i])
            .filter(|r| n < r.logical + r.len)
            .ok_or(Malformed::Unmapped(n))?;
        let block = run.physical + (n - run.logical);
        let offset = block
            .checked_mul(self.block_size)
            .ok_or(Malformed::Unmapped(n))?;
        Ok((offset, run.len - (n - run.logical)))
    }
}

/// The walk of a journal inode's block map.
struct MapWalk<'a> {
    disk: &'a mut dyn Disk,
    block_size: u64,
    /// Journal blocks: the walk stops there.
    blocks: u64,
    runs: Vec<Run>,
    /// Tree or indirect blocks read so far.
    map_blocks: usize,
}

impl MapWalk<'_> {
    fn push(&mut self, run: Run) -> Result<(), Malformed> {
        if run.len == 0 || run.physical == 0 {
            return Ok(());
        }
        if let Some(last) = self.runs.last_mut() {
            if last.logical + last.len == run.logical && last.physical + last.len == run.physical {
                last.len += run.len;
                return Ok(());
            }
        }
        if self.runs.len() == MAX_RUNS {
            return Err(Malformed::Fragmented(MAX_RUNS));
        }
        self.runs.push(run);
        Ok(())
    }

    /// Reads device block `block` of the map.
    fn map_block(&mut self, block: u64) -> Result<Vec<u8>, Fault> {
        self.map_blocks += 1;
        if self.map_blocks > MAX_MAP_BLOCKS {
            return Err(Malformed::MapTooLarge(MAX_MAP_BLOCKS).into());
        }
        let offset = block.checked_mul(self.block_size).ok_or(Malformed::Field {
            field: "a block number in the journal's block map",
            value: block,
            allowed: "the device",
        })?;
        read(self.disk, offset, self.block_size as usize)
    }

    /// The extent-tree node `node` (found at device byte `at`), at `depth`
    /// when its parent says so.
    fn extents(&mut self, node: &[u8], at: u64, depth: Option<u16>) -> Result<(), Fault> {
        if u16_at(node, 0) != EXTENT_MAGIC {
            return Err(Malformed::Magic {
                what: "extent-tree",
                offset: at,
            }
            .into());
        }
        let entries = usize::from(u16_at(node, 2));
        let here = u16_at(node, 6);
        if 12 + 12 * entries > node.len() {
            return Err(Malformed::Field {
                field: "eh_entries",
                value: entries as u64,
                allowed: "the entries that fit in the node",
            }
            .into());
        }
        if here > depth.unwrap_or(MAX_DEPTH) {
            return Err(Malformed::Field {
                field: "eh_depth",
                value: here.into(),
                allowed: "0..=5, one less than its parent's",
            }
            .into());
        }
        for e in node[12..12 + 12 * entries].chunks_exact(12) {
            if here == 0 {
                let len = u16_at(e, 4);
                // Above 32768: an unwritten extent of len - 32768 blocks.
                let len = if len > 32768 { len - 32768 } else { len };
                self.push(Run {
                    logical: u32_at(e, 0).into(),
                    physical: u64::from(u16_at(e, 6)) << 32 | u64::from(u32_at(e, 8)),
                    len: len.into(),
                })?;
            } else {
                let child = u64::from(u16_at(e, 8)) << 32 | u64::from(u32_at(e, 4));
                let block = self.map_block(child)?;
                self.extents(&block, child * self.block_size, Some(here - 1))?;
            }
        }
        Ok(())
    }

    /// An ext2/3 block map: 12 direct blocks, then a single, a double and
    /// a triple indirect block.
    fn block_map(&mut self, i_block: &[u8]) -> Result<(), Fault> {
        let mut logical = 0;
        for i in 0..15 {
            if logical >= self.blocks {
                break;
            }
            let ptr = u32_at(i_block, 4 * i);
            if i < 12 {
                self.push(Run {
                    logical,
                    physical: ptr.into(),
                    len: 1,
                })?;
                logical += 1;
            } else {
                // 12: single indirect (level 1), 13: double, 14: triple.
                self.indirect(ptr, i as u32 - 11, &mut logical)?;
            }
        }
        Ok(())
    }

    /// The indirect block `ptr` at `level` (1: it lists data blocks),
    /// which maps the journal blocks from `logical` on.
    fn indirect(&mut self, ptr: u32, level: u32, logical: &mut u64) -> Result<(), Fault> {
        let per = self.block_size / 4;
        if ptr == 0 {
            // A hole, which the journal must not have: a lookup there fails.
            *logical = logical.saturating_add(per.saturating_pow(level));
            return Ok(());
        }
        let block = self.map_block(ptr.into())?;
        for entry in block.chunks_exact(4) {
            if *logical >= self.blocks {
                break;
            }
            let next = u32_at(entry, 0);
            if level == 1 {
                self.push(Run {
                    logical: *logical,
                    physical: next.into(),
                    len: 1,
                })?;
                *logical += 1;
            } else {
                self.indirect(next, level - 1, logical)?;
            }
        }
        Ok(())
    }
}

/// The journal file read from the device.
struct OnDisk<'a> {
    disk: &'a mut dyn Disk,
    file: JournalFile,
    /// The blocks read ahead: the first, and their bytes.
    window: (u64, Vec<u8>),
}

impl Journal for OnDisk<'_> {
    fn blocks(&self) -> u64 {
        self.file.blocks
    }

    fn block(&mut self, n: u64) -> Result<Vec<u8>, Fault> {
        let bs = self.file.block_size;
        let (first, bytes) = &self.window;
        if n >= *first && (n - first + 1) * bs <= bytes.len() as u64 {
            let at = ((n - first) * bs) as usize;
            return Ok(bytes[at..at + bs as usize].to_vec());
        }
        let (offset, contiguous) = self.file.locate(n)?;
        let on_disk = self.disk.len().saturating_sub(offset) / bs;
        let count = contiguous
            .min(READ_AHEAD)
            .min(self.file.blocks - n)
            .min(on_disk)
            .max(1);
        let bytes = read(self.disk, offset, (count * bs) as usize)?;
        let block = bytes[..bs as usize].to_vec();
        self.window = (n, bytes);
        Ok(block)
    }
}

#[cfg(test)]
pub(super) mod tests;

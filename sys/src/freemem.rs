//! /proc/meminfo, and `kjump hibernate --free-memory`: fewer pages for the
//! capture to save.
//!
//! The capture saves every page of RAM that is not all zeros, free or not:
//! the kernel does not clear pages when it frees them, so dropped caches
//! and exited processes leave their old contents behind. Before the jump
//! this drops the clean page cache, compacts memory, and then zeroes the
//! free pages the cheap way: it maps anonymous memory with `MAP_POPULATE`,
//! which makes the kernel hand out zero-filled pages, until little is left,
//! and unmaps it again. The pages go back to the free lists still zero, and
//! the capture skips them.
//!
//! The cost comes after the resume: files that were cached are read from
//! disk again the first time they are used.

use memmap2::{MmapMut, MmapOptions};

/// Why memory could not be measured or freed.
#[derive(Debug, thiserror::Error)]
pub enum FreeMemError {
    /// A file under /proc could not be read or written.
    #[error("{what}")]
    Proc {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// What /proc/meminfo said, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemInfo {
    /// MemTotal.
    pub total: u64,
    /// MemFree.
    pub free: u64,
    /// MemAvailable.
    pub available: u64,
    /// Cached (page cache, tmpfs included).
    pub cached: u64,
}

impl MemInfo {
    /// Parses /proc/meminfo text.
    pub fn parse(text: &str) -> MemInfo {
        let mut m = MemInfo::default();
        for line in text.lines() {
            let mut f = line.split_whitespace();
            let (Some(key), Some(value)) = (f.next(), f.next()) else {
                continue;
            };
            let bytes = value.parse::<u64>().unwrap_or(0) * 1024;
            match key {
                "MemTotal:" => m.total = bytes,
                "MemFree:" => m.free = bytes,
                "MemAvailable:" => m.available = bytes,
                "Cached:" => m.cached = bytes,
                _ => {}
            }
        }
        m
    }

    /// Reads /proc/meminfo.
    pub fn read() -> Result<MemInfo, FreeMemError> {
        std::fs::read_to_string("/proc/meminfo")
            .map(|t| MemInfo::parse(&t))
            .map_err(|source| FreeMemError::Proc {
                what: "reading /proc/meminfo",
                source,
            })
    }

    /// What a reader of an untrusted image may hold in memory: MemAvailable,
    /// or no bound when /proc/meminfo cannot be read (the allocations then
    /// fail cleanly rather than abort).
    pub fn spare() -> u64 {
        MemInfo::read().map_or(u64::MAX, |m| m.available)
    }

    /// RAM holding something: all but the free pages.
    pub fn in_use(&self) -> u64 {
        self.total.saturating_sub(self.free)
    }
}

/// What freeing did.
#[derive(Debug)]
pub struct FreeReport {
    /// Before anything.
    pub before: MemInfo,
    /// After dropping caches and compacting.
    pub dropped: MemInfo,
    /// Free RAM made zero.
    pub zeroed: u64,
}

impl FreeReport {
    /// The report's lines, for the console.
    pub fn lines(&self) -> Vec<String> {
        let mib = |b: u64| b / (1 << 20);
        vec![
            format!(
                "free memory: RAM in use {} MiB before, {} MiB after dropping {} MiB of page cache",
                mib(self.before.in_use()),
                mib(self.dropped.in_use()),
                mib(self.before.cached.saturating_sub(self.dropped.cached)),
            ),
            format!(
                "free memory: {} MiB of free RAM zeroed, so the capture skips it (the kernel leaves freed pages' old contents in place)",
                mib(self.zeroed),
            ),
            "free memory: the cost comes after the resume: dropped files are read from disk again when first used".to_string(),
        ]
    }
}

/// Bytes zeroed per mapping.
const STEP: usize = 32 << 20;

/// Drops caches, compacts, and zeroes free RAM down to a floor kept free
/// for the kernel (5% of RAM, at least 64 MiB). Needs root.
pub fn free_memory() -> Result<FreeReport, FreeMemError> {
    let before = MemInfo::read()?;
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3").map_err(|source| FreeMemError::Proc {
        what: "dropping caches (/proc/sys/vm/drop_caches)",
        source,
    })?;
    // Without CONFIG_COMPACTION there is nothing to compact.
    let _ = std::fs::write("/proc/sys/vm/compact_memory", "1");
    let dropped = MemInfo::read()?;
    let floor = (dropped.total / 20).max(64 << 20);
    let mut held: Vec<MmapMut> = Vec::new();
    let mut zeroed = 0u64;
    loop {
        let now = MemInfo::read()?;
        if now.free < floor + STEP as u64 {
            break;
        }
        match MmapOptions::new().len(STEP).populate().map_anon() {
            Ok(m) => {
                held.push(m);
                zeroed += STEP as u64;
            }
            Err(_) => break,
        }
    }
    drop(held);
    Ok(FreeReport {
        before,
        dropped,
        zeroed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_fields() {
        let m = MemInfo::parse(
            "MemTotal:        1000 kB\nMemFree:          300 kB\nMemAvailable:     600 kB\nBuffers: 1 kB\nCached:           250 kB\nSwapCached: 0 kB\n",
        );
        assert_eq!(
            m,
            MemInfo {
                total: 1_024_000,
                free: 307_200,
                available: 614_400,
                cached: 256_000,
            }
        );
        assert_eq!(m.in_use(), 716_800);
    }
}

//! A page of this process locked in RAM, and its physical address
//! (/proc/self/pagemap): how one kernel gives the next a page to write to.

use std::fs::File;
use std::os::unix::fs::FileExt;

use memmap2::MmapMut;

/// The page size.
pub const PAGE: usize = 4096;

/// Why a locked page could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// Mapping or locking the page failed.
    #[error("{what}")]
    Map {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Opening or reading /proc/self/pagemap failed.
    #[error("{what}")]
    Pagemap {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The page has no frame this process may know.
    #[error("/proc/self/pagemap gives no frame for {vaddr:#x} (entry {entry:#x}): not root?")]
    NoFrame {
        /// The page's virtual address.
        vaddr: u64,
        /// The pagemap entry.
        entry: u64,
    },
}

/// A page of anonymous memory, locked in RAM (it neither moves to swap nor
/// changes frame while locked) and filled by the caller. It may be one page
/// of a larger locked block ([`LockedPage::pick`]), which stays mapped, and
/// its other frames held, as long as the page lives.
pub struct LockedPage {
    map: MmapMut,
    /// Where the page starts in `map`.
    at: usize,
    phys: u64,
}

impl LockedPage {
    /// Maps and locks `pages` pages and keeps the first whose physical
    /// address `wanted` accepts, filled by `fill`; when no frame of the
    /// block is wanted, the block itself, still locked: a caller that holds
    /// it while it maps the next block gets other frames. Needs
    /// CAP_SYS_ADMIN for the addresses (without it the kernel shows frame
    /// 0).
    pub fn pick(
        pages: usize,
        wanted: impl Fn(u64) -> bool,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<Result<LockedPage, LockedBlock>, PageError> {
        let pages = pages.max(1);
        let mut map = MmapMut::map_anon(pages * PAGE).map_err(|source| PageError::Map {
            what: "mapping pages to lock in RAM",
            source,
        })?;
        map.lock().map_err(|source| PageError::Map {
            what: "locking pages in RAM",
            source,
        })?;
        let frames = physical_addresses(map.as_ptr() as u64, pages)?;
        let Some(index) = frames.iter().position(|&phys| wanted(phys)) else {
            return Ok(Err(LockedBlock(map)));
        };
        let at = index * PAGE;
        fill(&mut map[at..at + PAGE]);
        Ok(Ok(LockedPage {
            map,
            at,
            phys: frames[index],
        }))
    }

    /// Its physical address.
    pub fn phys(&self) -> u64 {
        self.phys
    }
}

/// Pages locked in RAM and not used: their frames stay taken until it is
/// dropped.
pub struct LockedBlock(#[allow(dead_code)] MmapMut);

impl std::ops::Deref for LockedPage {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.map[self.at..self.at + PAGE]
    }
}

impl std::ops::DerefMut for LockedPage {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.map[self.at..self.at + PAGE]
    }
}

/// The physical addresses of this process's `pages` resident pages from
/// `vaddr` (page-aligned), from /proc/self/pagemap (bits 0-54 the frame
/// number, bit 63 present; the kernel shows frame 0 to a reader without
/// CAP_SYS_ADMIN).
fn physical_addresses(vaddr: u64, pages: usize) -> Result<Vec<u64>, PageError> {
    let page = PAGE as u64;
    let file = File::open("/proc/self/pagemap").map_err(|source| PageError::Pagemap {
        what: "opening /proc/self/pagemap".into(),
        source,
    })?;
    let mut entries = vec![0u8; pages * 8];
    file.read_exact_at(&mut entries, vaddr / page * 8)
        .map_err(|source| PageError::Pagemap {
            what: format!("reading /proc/self/pagemap for {pages} pages at {vaddr:#x}"),
            source,
        })?;
    entries
        .chunks_exact(8)
        .enumerate()
        .map(|(i, e)| {
            let entry = u64::from_le_bytes(e.try_into().unwrap_or_default());
            let pfn = entry & ((1 << 55) - 1);
            if entry >> 63 == 0 || pfn == 0 {
                return Err(PageError::NoFrame {
                    vaddr: vaddr + i as u64 * page,
                    entry,
                });
            }
            Ok(pfn * page)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames of a block that is held are not handed out again: picking
    /// around them finds another page. Needs root (physical addresses).
    #[test]
    fn a_held_block_keeps_its_frames() {
        if !std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        }) {
            assert!(std::env::var_os("CI").is_none(), "CI runs this as root");
            eprintln!("SKIPPED: needs root for /proc/self/pagemap's frames");
            return;
        }
        let Ok(Err(held)) = LockedPage::pick(64, |_| false, |_| {}) else {
            panic!("a block no frame of which is wanted comes back whole");
        };
        let frames = physical_addresses(held.0.as_ptr() as u64, 64).unwrap();
        let picked = LockedPage::pick(64, |p| !frames.contains(&p), |page| page[0] = 7)
            .unwrap()
            .unwrap_or_else(|_| panic!("every frame of a new block was one of the held block's"));
        assert!(!frames.contains(&picked.phys()));
        assert_eq!(picked[0], 7);
    }
}

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
/// changes frame while locked) and filled by the caller.
pub struct LockedPage {
    map: MmapMut,
    phys: u64,
}

impl LockedPage {
    /// Maps a page, lets `fill` write it, locks it and looks up its
    /// physical address. Needs CAP_SYS_ADMIN for the address (without it
    /// the kernel shows frame 0).
    pub fn new(fill: impl FnOnce(&mut [u8])) -> Result<LockedPage, PageError> {
        let mut map = MmapMut::map_anon(PAGE).map_err(|source| PageError::Map {
            what: "mapping a page to lock in RAM",
            source,
        })?;
        fill(&mut map);
        map.lock().map_err(|source| PageError::Map {
            what: "locking a page in RAM",
            source,
        })?;
        let phys = physical_address(map.as_ptr() as u64)?;
        Ok(LockedPage { map, phys })
    }

    /// Its physical address.
    pub fn phys(&self) -> u64 {
        self.phys
    }
}

impl std::ops::Deref for LockedPage {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.map
    }
}

impl std::ops::DerefMut for LockedPage {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.map
    }
}

/// The physical address of this process's resident page at `vaddr`, from
/// /proc/self/pagemap (bits 0-54 the frame number, bit 63 present; the
/// kernel shows frame 0 to a reader without CAP_SYS_ADMIN).
fn physical_address(vaddr: u64) -> Result<u64, PageError> {
    let page = PAGE as u64;
    let file = File::open("/proc/self/pagemap").map_err(|source| PageError::Pagemap {
        what: "opening /proc/self/pagemap".into(),
        source,
    })?;
    let mut entry = [0u8; 8];
    file.read_exact_at(&mut entry, vaddr / page * 8)
        .map_err(|source| PageError::Pagemap {
            what: format!("reading /proc/self/pagemap for {vaddr:#x}"),
            source,
        })?;
    let entry = u64::from_le_bytes(entry);
    let pfn = entry & ((1 << 55) - 1);
    if entry >> 63 == 0 || pfn == 0 {
        return Err(PageError::NoFrame { vaddr, entry });
    }
    Ok(pfn * page + vaddr % page)
}

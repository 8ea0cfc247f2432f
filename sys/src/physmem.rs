//! Physical memory: read mappings of the memory a capture saves, write
//! mappings of the memory a restore fills, and single pages through
//! /dev/mem (or a file standing in for it, offset = physical address).
//!
//! Mappings of /dev/mem are write-back (no `O_SYNC`): an uncached mapping
//! is many times slower, and while a write-back mapping of a range is held
//! the kernel refuses an uncached one of the same range anyway.
//! pread/pwrite of /dev/mem go one page at a time, ten times slower than a
//! copy through a mapping (KEXEC-JUMP.md): [`PhysFile`] is for single pages.

use std::fs::File;
use std::ops::Deref;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use kjump_image_format::{MemoryMap, PhysRange, PAGE_SIZE};
use memmap2::{Mmap, MmapOptions, MmapRaw};

/// Why physical memory could not be mapped or written.
#[derive(Debug, thiserror::Error)]
pub enum PhysMemError {
    /// Opening failed.
    #[error("opening {path} for writing")]
    Open {
        /// /dev/mem or its stand-in.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Mapping failed.
    #[error("mapping {range} of {path}")]
    Map {
        /// /dev/mem or its stand-in.
        path: PathBuf,
        /// The range.
        range: PhysRange,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Flushing a file standing in for memory failed.
    #[error("flushing the writes to {path}")]
    Flush {
        /// The stand-in file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A write falls outside every mapped range.
    #[error("physical {addr:#x}+{len:#x} lies outside the mapped ranges")]
    Outside {
        /// First byte.
        addr: u64,
        /// Length.
        len: usize,
    },
    /// A range to write overlaps the running kernel's own RAM.
    #[error(
        "physical range {range} overlaps this kernel's own RAM {own}: it is not mapped for writing"
    )]
    OwnRam {
        /// The range asked for.
        range: PhysRange,
        /// The running kernel's RAM it hits.
        own: PhysRange,
    },
    /// A write touches a page an earlier write of this mapping touched.
    #[error(
        "physical {addr:#x}+{len:#x} touches a page written before: each page is written once"
    )]
    Rewrite {
        /// First byte.
        addr: u64,
        /// Length.
        len: usize,
    },
}

/// A read-only view of memory to capture: a window of /dev/mem, of
/// /proc/vmcore, or of a memory dump.
pub struct MemoryView(Mmap);

impl Deref for MemoryView {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

/// Maps `len` bytes of `file` from `offset` read-only, for a capture.
///
/// The bytes behind the view must not change while it is held, and kjump
/// maps only memory that stands still: the RAM of a kernel that is not
/// running (the saved kernel, seen from the capture kernel through
/// /dev/mem; the crashed kernel, seen from kdump's through /proc/vmcore),
/// or a dump file, which kjump asks that nothing rewrites or truncates
/// during the capture. A file truncated all the same raises SIGBUS on the
/// next access rather than yield a wrong image, since every range was
/// checked against the file's length before.
pub fn map_memory(file: &File, offset: u64, len: usize) -> std::io::Result<MemoryView> {
    // SAFETY: the mapping is read-only and private to this process, and its
    // bytes do not change while it is held: they are the memory of a kernel
    // that is not running, or a dump file that the capture's caller keeps
    // as it is (see above). No Rust object lives in the new mapping.
    let map = unsafe { MmapOptions::new().offset(offset).len(len).map(file) }?;
    Ok(MemoryView(map))
}

/// One mapped range and which of its frames were written.
struct RangeMap {
    range: PhysRange,
    map: MmapRaw,
    /// A bit per frame the range touches, from its first frame: set once
    /// a write touched it.
    written: Vec<AtomicU64>,
}

impl RangeMap {
    /// Claims the frames `[addr, end)` touches for one write; fails when
    /// any was claimed before, by this or another thread.
    fn claim(&self, addr: u64, end: u64) -> bool {
        let base = self.range.start().0 / PAGE_SIZE as u64;
        let first = addr / PAGE_SIZE as u64 - base;
        let last = (end - 1) / PAGE_SIZE as u64 - base;
        let mut ok = true;
        for word in first / 64..=last / 64 {
            let lo = if word == first / 64 { first % 64 } else { 0 };
            let hi = if word == last / 64 { last % 64 } else { 63 };
            let mask = (u64::MAX >> (63 - hi)) & (u64::MAX << lo);
            let before = self.written[word as usize].fetch_or(mask, Ordering::AcqRel);
            ok &= before & mask == 0;
        }
        ok
    }
}

/// Set, once and for good, when any [`PhysMem`] of this process is about
/// to write its first byte.
static ANY_WRITTEN: AtomicBool = AtomicBool::new(false);

/// Whether this process began writing physical memory through a
/// [`PhysMem`]: from then on, whatever happens (an error, a panic), the
/// memory is no longer as it was, and a restore kernel must not hand
/// control back to a kernel that would run on it.
pub fn memory_written() -> bool {
    ANY_WRITTEN.load(Ordering::SeqCst)
}

/// Writable mappings of a set of physical ranges, each byte written at
/// most once.
pub struct PhysMem {
    /// Set before the first byte is written.
    touched: AtomicBool,
    maps: Vec<RangeMap>,
    /// The regular file standing in for memory, which needs an msync;
    /// `None` for /dev/mem, whose writes land in memory directly (and whose
    /// mappings msync refuses with EINVAL: the device has no fsync).
    file: Option<PathBuf>,
}

impl PhysMem {
    /// Maps every range of `map` from `path` read-write and shared,
    /// refusing any range that overlaps `own_ram`, the running kernel's
    /// own RAM.
    pub fn open(
        path: &Path,
        map: &MemoryMap,
        own_ram: &MemoryMap,
    ) -> Result<PhysMem, PhysMemError> {
        for r in map.ranges() {
            if let Some(own) = own_ram.ranges().iter().find(|o| o.intersect(r).is_some()) {
                return Err(PhysMemError::OwnRam {
                    range: *r,
                    own: *own,
                });
            }
        }
        let file = File::options()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| PhysMemError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let is_file = file.metadata().is_ok_and(|m| m.is_file());
        let mut maps = Vec::with_capacity(map.ranges().len());
        for r in map.ranges() {
            let m = MmapOptions::new()
                .offset(r.start().0)
                .len(r.len() as usize)
                .map_raw(&file)
                .map_err(|source| PhysMemError::Map {
                    path: path.to_path_buf(),
                    range: *r,
                    source,
                })?;
            let page = PAGE_SIZE as u64;
            let frames = (r.end().0 - 1) / page - r.start().0 / page + 1;
            let written = (0..frames.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect();
            maps.push(RangeMap {
                range: *r,
                map: m,
                written,
            });
        }
        Ok(PhysMem {
            touched: AtomicBool::new(false),
            maps,
            file: is_file.then(|| path.to_path_buf()),
        })
    }

    /// Copies `bytes` to physical address `addr`. A write that touches a
    /// page an earlier write touched, in the same mapped range, is refused:
    /// a restore writes every page once, and two writes of the same bytes
    /// could race.
    pub fn write(&self, addr: u64, bytes: &[u8]) -> Result<(), PhysMemError> {
        let Some((m, off)) = self.claim(addr, bytes.len())? else {
            return Ok(());
        };
        // SAFETY: [off, off + len) lies inside the mapping (checked by
        // claim). Its pages were claimed by this call alone, so no other
        // write, earlier or concurrent, touches these bytes, and nothing in
        // this process reads them. The mapping holds no Rust object (it is
        // memory outside the running kernel's RAM, checked at open), so
        // `bytes` cannot overlap it.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), m.map.as_mut_ptr().add(off), bytes.len());
        }
        #[cfg(feature = "test-hooks")]
        fault::after_write();
        Ok(())
    }

    /// Writes `len` zero bytes at physical address `addr`, as [`write`]
    /// would write them from a zeroed buffer, with stores alone.
    ///
    /// [`write`]: PhysMem::write
    pub fn zero(&self, addr: u64, len: usize) -> Result<(), PhysMemError> {
        let Some((m, off)) = self.claim(addr, len)? else {
            return Ok(());
        };
        // SAFETY: as in `write`: [off, off + len) lies inside the mapping,
        // claimed by this call alone, and holds no Rust object.
        unsafe {
            std::ptr::write_bytes(m.map.as_mut_ptr().add(off), 0, len);
        }
        Ok(())
    }

    /// Finds the mapped range holding `[addr, addr + len)` and claims its
    /// frames for one write; returns it and the offset of `addr` in it, or
    /// `None` for an empty write. From here on memory counts as touched.
    fn claim(&self, addr: u64, len: usize) -> Result<Option<(&RangeMap, usize)>, PhysMemError> {
        let outside = PhysMemError::Outside { addr, len };
        let end = addr
            .checked_add(len as u64)
            .ok_or(PhysMemError::Outside { addr, len })?;
        let m = self
            .maps
            .iter()
            .find(|m| m.range.start().0 <= addr && end <= m.range.end().0)
            .ok_or(outside)?;
        if len == 0 {
            return Ok(None);
        }
        if !m.claim(addr, end) {
            return Err(PhysMemError::Rewrite { addr, len });
        }
        self.touched.store(true, Ordering::SeqCst);
        ANY_WRITTEN.store(true, Ordering::SeqCst);
        Ok(Some((m, (addr - m.range.start().0) as usize)))
    }

    /// Whether a write began: memory is no longer as it was when this was
    /// opened.
    pub fn touched(&self) -> bool {
        self.touched.load(Ordering::SeqCst)
    }

    /// Flushes the mappings: an msync for a file, nothing for /dev/mem.
    pub fn flush(&self) -> Result<(), PhysMemError> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        self.maps
            .iter()
            .try_for_each(|m| m.map.flush())
            .map_err(|source| PhysMemError::Flush {
                path: path.clone(),
                source,
            })
    }
}

/// Physical memory read and written with pread and pwrite, a few bytes at
/// a time: /dev/mem, or a file standing in for it.
pub struct PhysFile {
    file: File,
}

impl PhysFile {
    /// Opens `path` for reading and writing.
    pub fn open(path: &Path) -> std::io::Result<PhysFile> {
        let file = File::options().read(true).write(true).open(path)?;
        Ok(PhysFile { file })
    }

    /// Fills `buf` from physical address `addr`.
    pub fn read_at(&self, buf: &mut [u8], addr: u64) -> std::io::Result<()> {
        self.file.read_exact_at(buf, addr)
    }

    /// Writes `bytes` at physical address `addr`.
    pub fn write_at(&self, bytes: &[u8], addr: u64) -> std::io::Result<()> {
        self.file.write_all_at(bytes, addr)
    }
}

/// Fault injection for the VM test of a panic during a restore
/// (tests/io_faults_vm.rs), built only with the `test-hooks` feature: the
/// kjump binary and the /init of a release build have no such code.
#[cfg(feature = "test-hooks")]
mod fault {
    use std::sync::OnceLock;

    /// The word on the kernel command line that arms it.
    const ARM: &str = "kjump.test-panic=write";

    /// With [`ARM`] on the kernel command line, panics after a write to
    /// memory, as a bug in the restore would.
    pub(super) fn after_write() {
        static ARMED: OnceLock<bool> = OnceLock::new();
        let armed = ARMED.get_or_init(|| {
            std::fs::read_to_string("/proc/cmdline")
                .is_ok_and(|c| c.split_whitespace().any(|w| w == ARM))
        });
        if *armed {
            panic!("test hook: a panic after a write to memory ({ARM})");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kjump_image_format::PhysAddr;

    fn range(s: u64, e: u64) -> PhysRange {
        PhysRange::new(PhysAddr(s), PhysAddr(e)).unwrap()
    }

    fn stand_in(name: &str, len: usize) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("kjump-physmem-{name}-{}", std::process::id()));
        std::fs::write(&path, vec![0u8; len]).unwrap();
        path
    }

    #[test]
    fn each_page_is_written_once() {
        let path = stand_in("once", 0x10_0000);
        let map = MemoryMap::merged(vec![range(0x1800, 0x9000), range(0x9000, 0x8_0000)]);
        let mem = PhysMem::open(&path, &map, &MemoryMap::default()).unwrap();
        mem.write(0x1800, &[1; 0x800]).unwrap();
        mem.write(0x2000, &[2; 0x1000]).unwrap();
        assert!(matches!(
            mem.write(0x2ff0, &[3; 0x20]),
            Err(PhysMemError::Rewrite { addr: 0x2ff0, .. })
        ));
        // Frame 0x41 is counted in the second word of the range's bits.
        mem.write(0x41000, &[4; 0x100]).unwrap();
        assert!(mem.write(0x41f00, &[5; 1]).is_err());
        assert!(matches!(
            mem.write(0x7_ff00, &[6; 0x200]),
            Err(PhysMemError::Outside { .. })
        ));
        mem.write(0x3000, &[]).unwrap();
        mem.flush().unwrap();
        let back = std::fs::read(&path).unwrap();
        assert_eq!(back[0x1800..0x2000], [1; 0x800]);
        assert_eq!(back[0x2000..0x3000], [2; 0x1000]);
        assert_eq!(back[0x3000], 0);
        assert_eq!(back[0x41000..0x41100], [4; 0x100]);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn zeros_are_written_once_and_touch_memory() {
        let path = std::env::temp_dir().join(format!("kjump-physmem-zero-{}", std::process::id()));
        std::fs::write(&path, vec![0xeeu8; 0x10000]).unwrap();
        let mem = PhysMem::open(
            &path,
            &MemoryMap::merged(vec![range(0x1000, 0x8000)]),
            &MemoryMap::default(),
        )
        .unwrap();
        mem.zero(0x1000, 0).unwrap();
        assert!(!mem.touched());
        mem.zero(0x1800, 0x1800).unwrap();
        assert!(mem.touched() && memory_written());
        assert!(matches!(
            mem.zero(0x2f00, 0x10),
            Err(PhysMemError::Rewrite { .. })
        ));
        assert!(matches!(
            mem.zero(0x7f00, 0x200),
            Err(PhysMemError::Outside { .. })
        ));
        mem.flush().unwrap();
        let back = std::fs::read(&path).unwrap();
        assert!(back[0x1000..0x1800].iter().all(|&b| b == 0xee));
        assert!(back[0x1800..0x3000].iter().all(|&b| b == 0));
        assert!(back[0x3000..].iter().all(|&b| b == 0xee));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn the_running_kernels_ram_is_not_mapped() {
        let path = stand_in("own", 0x10000);
        let map = MemoryMap::merged(vec![range(0x1000, 0x8000)]);
        let own = MemoryMap::merged(vec![range(0x7000, 0x9000)]);
        let e = PhysMem::open(&path, &map, &own).err().unwrap();
        assert!(matches!(e, PhysMemError::OwnRam { .. }), "{e}");
        std::fs::remove_file(&path).unwrap();
    }
}

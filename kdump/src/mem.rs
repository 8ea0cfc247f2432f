//! Reading a dumped kernel's memory: physical reads from any source, and
//! kernel virtual addresses through its own x86_64 page tables.

use crate::vmcoreinfo::KernelLayout;

/// Why physical memory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PhysReadError {
    /// The address is not in the dump.
    #[error("physical {addr:#x} (+{len:#x}) is not in the dump")]
    NotInDump {
        /// First byte asked for.
        addr: u64,
        /// Bytes asked for.
        len: usize,
    },
    /// The source failed.
    #[error("reading physical {addr:#x} (+{len:#x})")]
    Io {
        /// First byte asked for.
        addr: u64,
        /// Bytes asked for.
        len: usize,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Physical memory of a dumped machine: an ELF core, /dev/mem, a kjump
/// image, or a buffer in a test.
pub trait PhysMemory {
    /// Fills `buf` with the bytes at physical `addr`.
    fn read_phys(&self, addr: u64, buf: &mut [u8]) -> Result<(), PhysReadError>;

    /// The little-endian `u64` at physical `addr`.
    fn read_u64(&self, addr: u64) -> Result<u64, PhysReadError> {
        let mut b = [0u8; 8];
        self.read_phys(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}

/// A flat buffer standing for physical memory from address 0.
impl PhysMemory for [u8] {
    fn read_phys(&self, addr: u64, buf: &mut [u8]) -> Result<(), PhysReadError> {
        let err = || PhysReadError::NotInDump {
            addr,
            len: buf.len(),
        };
        let start = usize::try_from(addr).map_err(|_| err())?;
        let end = start.checked_add(buf.len()).ok_or_else(err)?;
        let src = self.get(start..end).ok_or_else(err)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// The capture's own source: the ELF core parsed and its overlaps checked
/// once, for the filter and the capture alike.
impl PhysMemory for kjump_writer::MemorySource {
    fn read_phys(&self, addr: u64, buf: &mut [u8]) -> Result<(), PhysReadError> {
        let len = buf.len();
        match kjump_writer::MemorySource::read_phys(self, addr, buf) {
            Ok(n) if n == len => Ok(()),
            Ok(n) => Err(PhysReadError::NotInDump {
                addr: addr + n as u64,
                len: len - n,
            }),
            Err(e) => Err(PhysReadError::Io {
                addr,
                len,
                source: std::io::Error::other(e),
            }),
        }
    }
}

impl<T: PhysMemory + ?Sized> PhysMemory for &T {
    fn read_phys(&self, addr: u64, buf: &mut [u8]) -> Result<(), PhysReadError> {
        (**self).read_phys(addr, buf)
    }
}

/// Why a kernel virtual address could not be translated.
#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    /// A page table entry on the way is not present.
    #[error(
        "virtual {vaddr:#x} is not mapped (level {level} entry {entry:#x} at physical {at:#x})"
    )]
    NotMapped {
        /// The address.
        vaddr: u64,
        /// Page table level, 5 or 4 (top) to 1 (PTE).
        level: u8,
        /// The entry found.
        entry: u64,
        /// Where it was read.
        at: u64,
    },
    /// Reading a page table failed.
    #[error("reading the page tables for virtual {vaddr:#x}")]
    Read {
        /// The address.
        vaddr: u64,
        /// The cause.
        #[source]
        source: PhysReadError,
    },
}

const PRESENT: u64 = 1;
const HUGE: u64 = 1 << 7;
/// Physical address bits of an entry (bits 12..51).
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Translates kernel virtual addresses of a dumped x86_64 kernel by walking
/// its page tables (`init_top_pgt`), as the CPU would, with 1 GiB and 2 MiB
/// pages. Translations are cached per 2 MiB, since struct pages are read in
/// address order.
pub struct Translator<'a, M: PhysMemory + ?Sized> {
    mem: &'a M,
    top: u64,
    five_level: bool,
    mask: u64,
    /// (virtual 2 MiB frame, physical base of it, or of its 4 KiB page
    /// when `small`).
    last: std::cell::Cell<Option<(u64, u64, bool)>>,
}

impl<'a, M: PhysMemory + ?Sized> Translator<'a, M> {
    /// A translator over `mem` with the page tables `layout` names.
    pub fn new(mem: &'a M, layout: &KernelLayout) -> Option<Self> {
        let top = layout.text_to_phys(layout.init_top_pgt)?;
        Some(Translator {
            mem,
            top,
            five_level: layout.five_level,
            mask: ADDR_MASK & !layout.sme_mask,
            last: std::cell::Cell::new(None),
        })
    }

    /// The memory read through.
    pub fn memory(&self) -> &'a M {
        self.mem
    }

    /// The physical address of `vaddr`.
    pub fn translate(&self, vaddr: u64) -> Result<u64, TranslateError> {
        if let Some((frame, base, small)) = self.last.get() {
            if small && vaddr >> 12 == frame {
                return Ok(base | (vaddr & 0xfff));
            }
            if !small && vaddr >> 21 == frame {
                return Ok(base | (vaddr & 0x1f_ffff));
            }
        }
        let levels: &[(u8, u32)] = if self.five_level {
            &[(5, 48), (4, 39), (3, 30), (2, 21), (1, 12)]
        } else {
            &[(4, 39), (3, 30), (2, 21), (1, 12)]
        };
        let mut table = self.top;
        for &(level, shift) in levels {
            let at = table + ((vaddr >> shift) & 0x1ff) * 8;
            let entry = self
                .mem
                .read_u64(at)
                .map_err(|source| TranslateError::Read { vaddr, source })?;
            if entry & PRESENT == 0 {
                return Err(TranslateError::NotMapped {
                    vaddr,
                    level,
                    entry,
                    at,
                });
            }
            let base = entry & self.mask;
            if level == 1 || ((level == 2 || level == 3) && entry & HUGE != 0) {
                let page_mask = (1u64 << shift) - 1;
                let base = base & !page_mask;
                match shift {
                    12 => self.last.set(Some((vaddr >> 12, base, true))),
                    21 => self.last.set(Some((vaddr >> 21, base, false))),
                    _ => {
                        let two_mib = base | (vaddr & page_mask & !0x1f_ffff);
                        self.last.set(Some((vaddr >> 21, two_mib, false)));
                    }
                }
                return Ok(base | (vaddr & page_mask));
            }
            table = base;
        }
        unreachable!("level 1 always ends the walk")
    }

    /// Reads `buf.len()` bytes at kernel virtual `vaddr`, page by page. A
    /// read past the top of the address space wraps to its bottom, which
    /// a kernel does not map: the addresses come from the dump.
    pub fn read_virt(&self, vaddr: u64, buf: &mut [u8]) -> Result<(), TranslateError> {
        let mut done = 0;
        while done < buf.len() {
            let v = vaddr.wrapping_add(done as u64);
            let n = (buf.len() - done).min(4096 - (v & 0xfff) as usize);
            let p = self.translate(v)?;
            self.mem
                .read_phys(p, &mut buf[done..done + n])
                .map_err(|source| TranslateError::Read { vaddr: v, source })?;
            done += n;
        }
        Ok(())
    }

    /// The `u64` at kernel virtual `vaddr`.
    pub fn read_virt_u64(&self, vaddr: u64) -> Result<u64, TranslateError> {
        let mut b = [0u8; 8];
        self.read_virt(vaddr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::vmcoreinfo::{VmcoreInfo, START_KERNEL_MAP};

    /// The real VMCOREINFO of the 6.12 test kernel (see tests/fixtures/README.md).
    const REAL: &str = include_str!("../tests/fixtures/vmcoreinfo-6.12.117.txt");

    /// Builds 4-level page tables in a flat memory buffer: tables are
    /// allocated from `next` upwards.
    pub(crate) struct Tables {
        pub mem: Vec<u8>,
        pub top: u64,
        next: u64,
    }

    impl Tables {
        pub fn new(mem_len: usize, tables_at: u64) -> Self {
            let mut t = Tables {
                mem: vec![0; mem_len],
                top: tables_at,
                next: tables_at + 4096,
            };
            t.top = tables_at;
            t
        }

        fn entry(&mut self, table: u64, index: u64) -> (u64, u64) {
            let at = table + index * 8;
            let e = u64::from_le_bytes(self.mem[at as usize..at as usize + 8].try_into().unwrap());
            (at, e)
        }

        fn set(&mut self, at: u64, v: u64) {
            self.mem[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
        }

        /// Maps the page of `size` (4 KiB, 2 MiB or 1 GiB) at `vaddr` to `paddr`.
        pub fn map(&mut self, vaddr: u64, paddr: u64, size: u64) {
            let stop = match size {
                0x1000 => 12,
                0x20_0000 => 21,
                0x4000_0000 => 30,
                _ => panic!("page size {size:#x}"),
            };
            let mut table = self.top;
            for shift in [39u32, 30, 21, 12] {
                let (at, e) = self.entry(table, (vaddr >> shift) & 0x1ff);
                if shift == stop {
                    let huge = if stop == 12 { 0 } else { HUGE };
                    self.set(at, paddr | PRESENT | huge | 2);
                    return;
                }
                if e & PRESENT == 0 {
                    let t = self.next;
                    self.next += 4096;
                    self.set(at, t | PRESENT | 2);
                    table = t;
                } else {
                    table = e & ADDR_MASK;
                }
            }
        }

        /// The real 6.12 VMCOREINFO (tests/fixtures) pointed at these
        /// 4-level tables, with the keys in `set` given these values and
        /// those in `drop` left out.
        pub fn vmcoreinfo(&self, set: &[(&str, String)], drop: &[&str]) -> VmcoreInfo {
            let tables = [
                ("NUMBER(phys_base)", "0".to_string()),
                (
                    "SYMBOL(init_top_pgt)",
                    format!("{:x}", START_KERNEL_MAP + self.top),
                ),
                ("NUMBER(pgtable_l5_enabled)", "0".to_string()),
            ];
            let set: Vec<(&str, String)> = tables.into_iter().chain(set.iter().cloned()).collect();
            let replaced = |l: &&str| {
                let key = l.split('=').next().unwrap_or("");
                set.iter().map(|(k, _)| k).chain(drop).any(|k| *k == key)
            };
            let mut text: String = REAL
                .lines()
                .filter(|l| !replaced(l))
                .map(|l| format!("{l}\n"))
                .collect();
            for (k, v) in set.iter().filter(|(k, _)| !drop.contains(k)) {
                text += &format!("{k}={v}\n");
            }
            VmcoreInfo::parse(text.as_bytes()).unwrap()
        }

        pub fn layout(&self) -> KernelLayout {
            KernelLayout {
                phys_base: 0,
                kernel_offset: 0,
                init_top_pgt: START_KERNEL_MAP + self.top,
                five_level: false,
                vmemmap_base_sym: None,
                sme_mask: 0,
            }
        }
    }

    #[test]
    fn walks_4k_2m_and_1g_pages() {
        let mut t = Tables::new(1 << 20, 0x1000);
        t.map(0xffff_ea00_0000_0000, 0x8_0000, 0x1000);
        t.map(0xffff_ea00_0020_0000, 0x4000_0000, 0x20_0000);
        t.map(0xffff_8880_0000_0000, 0, 0x4000_0000);
        let layout = t.layout();
        let tr = Translator::new(&t.mem[..], &layout).unwrap();
        assert_eq!(tr.translate(0xffff_ea00_0000_0123).unwrap(), 0x8_0123);
        assert_eq!(tr.translate(0xffff_ea00_0030_0040).unwrap(), 0x4010_0040);
        assert_eq!(tr.translate(0xffff_8880_1234_5678).unwrap(), 0x1234_5678);
        // Cached: the same 2 MiB again, then a neighbour in the 1 GiB page.
        assert_eq!(tr.translate(0xffff_8880_1234_0000).unwrap(), 0x1234_0000);
        assert_eq!(tr.translate(0xffff_8880_0000_0008).unwrap(), 8);
        let e = tr.translate(0xffff_ea00_0000_1000).unwrap_err();
        assert!(
            matches!(e, TranslateError::NotMapped { level: 1, .. }),
            "{e}"
        );
        let e = tr.translate(0xffff_c900_0000_0000).unwrap_err();
        assert!(
            matches!(e, TranslateError::NotMapped { level: 4, .. }),
            "{e}"
        );
    }

    #[test]
    fn reads_across_pages() {
        let mut t = Tables::new(1 << 20, 0x1000);
        t.map(0xffff_ea00_0000_0000, 0x8_0000, 0x1000);
        t.map(0xffff_ea00_0000_1000, 0x3_0000, 0x1000);
        t.mem[0x8_0ffc..0x8_1000].copy_from_slice(&[1, 2, 3, 4]);
        t.mem[0x3_0000..0x3_0004].copy_from_slice(&[5, 6, 7, 8]);
        let layout = t.layout();
        let tr = Translator::new(&t.mem[..], &layout).unwrap();
        let v = tr.read_virt_u64(0xffff_ea00_0000_0ffc).unwrap();
        assert_eq!(v.to_le_bytes(), [1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn a_short_memory_is_a_read_error() {
        let mem = vec![0u8; 0x100];
        let layout = KernelLayout {
            phys_base: 0,
            kernel_offset: 0,
            init_top_pgt: START_KERNEL_MAP + 0x1000,
            five_level: false,
            vmemmap_base_sym: None,
            sme_mask: 0,
        };
        let tr = Translator::new(&mem[..], &layout).unwrap();
        assert!(matches!(
            tr.translate(0xffff_8880_0000_0000),
            Err(TranslateError::Read { .. })
        ));
    }
}

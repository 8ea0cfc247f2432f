//! VMCOREINFO: the `KEY=VALUE` lines a Linux kernel publishes about itself
//! for dump tools, found in a core's `VMCOREINFO` ELF note (and, on a
//! running kernel, at the physical address in /sys/kernel/vmcoreinfo).
//!
//! [`VmcoreInfo::parse`] keeps every line; [`PageLayout::from_info`] and
//! [`KernelLayout::from_info`] take what filtering needs and name each key
//! that is missing, so a caller can say exactly why it cannot filter.

use std::collections::BTreeMap;

/// Largest VMCOREINFO text taken: the kernel's own buffer is one page
/// (`VMCOREINFO_BYTES`), which newer kernels may grow; 1 MiB is far above.
pub const MAX_VMCOREINFO_LEN: usize = 1 << 20;

/// Why VMCOREINFO text could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VmcoreInfoError {
    /// The text is larger than [`MAX_VMCOREINFO_LEN`].
    #[error("VMCOREINFO of {len} bytes is larger than the {MAX_VMCOREINFO_LEN} kjump reads")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// A line has no `=` or a value that does not parse.
    #[error("VMCOREINFO line {line}: {text:?}: {reason}")]
    BadLine {
        /// Line number, from 1.
        line: usize,
        /// The line.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The same key appears twice with different values.
    #[error("VMCOREINFO key {key} appears twice, as {first:?} and {second:?}")]
    Duplicate {
        /// The key.
        key: String,
        /// Its first value.
        first: String,
        /// Its second value.
        second: String,
    },
}

/// The parsed VMCOREINFO text: each key with its value, as the kernel wrote
/// it (hex for `SYMBOL(...)`, `KERNELOFFSET` and `NUMBER(phys_base)` on some
/// architectures, decimal for the rest).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmcoreInfo {
    entries: BTreeMap<String, String>,
    /// The text as given, for writing it back out (kdump-compressed files
    /// carry it verbatim).
    raw: Vec<u8>,
}

impl VmcoreInfo {
    /// Parses VMCOREINFO text. NUL padding at the end (the ELF note's
    /// descriptor is padded) is dropped; empty lines are skipped.
    pub fn parse(text: &[u8]) -> Result<Self, VmcoreInfoError> {
        if text.len() > MAX_VMCOREINFO_LEN {
            return Err(VmcoreInfoError::TooLarge { len: text.len() });
        }
        let end = text.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        let raw = text[..end].to_vec();
        let mut entries = BTreeMap::new();
        for (i, line) in raw.split(|&b| b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let bad = |reason| VmcoreInfoError::BadLine {
                line: i + 1,
                text: String::from_utf8_lossy(line).into_owned(),
                reason,
            };
            let line = std::str::from_utf8(line).map_err(|_| bad("not UTF-8"))?;
            let (key, value) = line.split_once('=').ok_or_else(|| bad("no '='"))?;
            if key.is_empty() {
                return Err(bad("empty key"));
            }
            if let Some(first) = entries.get(key) {
                if first != value {
                    return Err(VmcoreInfoError::Duplicate {
                        key: key.to_string(),
                        first: String::clone(first),
                        second: value.to_string(),
                    });
                }
            }
            entries.insert(key.to_string(), value.to_string());
        }
        Ok(VmcoreInfo { entries, raw })
    }

    /// The text as given (without trailing NULs).
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The value of `key`, as written.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(String::as_str)
    }

    /// Every key and value.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// `OSRELEASE`.
    pub fn release(&self) -> Option<&str> {
        self.get("OSRELEASE")
    }

    /// `SYMBOL(name)`: a kernel virtual address, hex.
    pub fn symbol(&self, name: &str) -> Option<u64> {
        self.get(&format!("SYMBOL({name})")).and_then(hex)
    }

    /// `SIZE(name)`, decimal.
    pub fn size(&self, name: &str) -> Option<u64> {
        self.get(&format!("SIZE({name})")).and_then(dec)
    }

    /// `OFFSET(name)`, decimal.
    pub fn offset(&self, name: &str) -> Option<u64> {
        self.get(&format!("OFFSET({name})")).and_then(dec)
    }

    /// `LENGTH(name)`, decimal.
    pub fn length(&self, name: &str) -> Option<u64> {
        self.get(&format!("LENGTH({name})")).and_then(dec)
    }

    /// `NUMBER(name)`: decimal, signed (the kernel prints `%ld`), as the
    /// two's complement bits; x86_64's `phys_base` is written in hex with
    /// a `0x` prefix by some kernels, which is taken too.
    pub fn number(&self, name: &str) -> Option<i64> {
        let v = self.get(&format!("NUMBER({name})"))?;
        if let Some(h) = v.strip_prefix("0x") {
            return u64::from_str_radix(h, 16).ok().map(|u| u as i64);
        }
        v.parse::<i64>().ok()
    }

    /// `KERNELOFFSET` (the KASLR slide of the kernel text), hex.
    pub fn kernel_offset(&self) -> Option<u64> {
        self.get("KERNELOFFSET").and_then(hex)
    }

    /// `PAGESIZE`, decimal.
    pub fn page_size(&self) -> Option<u64> {
        self.get("PAGESIZE").and_then(dec)
    }
}

fn hex(v: &str) -> Option<u64> {
    u64::from_str_radix(v.strip_prefix("0x").unwrap_or(v), 16).ok()
}

fn dec(v: &str) -> Option<u64> {
    v.parse().ok()
}

/// Keys filtering cannot do without, and what was missing or unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("VMCOREINFO lacks {}", .missing.join(", "))]
pub struct MissingKeys {
    /// Each missing key, as the kernel names it (`OFFSET(page.flags)`).
    pub missing: Vec<String>,
}

/// Collects lookups and the names of those that failed.
pub(crate) struct Need<'a> {
    info: &'a VmcoreInfo,
    pub(crate) missing: Vec<String>,
}

impl<'a> Need<'a> {
    /// Lookups in `info`, none failed yet.
    pub(crate) fn new(info: &'a VmcoreInfo) -> Self {
        Need {
            info,
            missing: Vec::new(),
        }
    }
    pub(crate) fn size(&mut self, name: &str) -> u64 {
        self.info.size(name).unwrap_or_else(|| {
            self.missing.push(format!("SIZE({name})"));
            0
        })
    }
    pub(crate) fn offset(&mut self, name: &str) -> u64 {
        self.info.offset(name).unwrap_or_else(|| {
            self.missing.push(format!("OFFSET({name})"));
            0
        })
    }
    pub(crate) fn number(&mut self, name: &str) -> i64 {
        self.info.number(name).unwrap_or_else(|| {
            self.missing.push(format!("NUMBER({name})"));
            0
        })
    }
    pub(crate) fn symbol(&mut self, name: &str) -> u64 {
        self.info.symbol(name).unwrap_or_else(|| {
            self.missing.push(format!("SYMBOL({name})"));
            0
        })
    }
    pub(crate) fn bit(&mut self, name: &str) -> u32 {
        let n = self.number(name);
        if !(0..64).contains(&n) {
            self.missing
                .push(format!("NUMBER({name}) (a bit number 0..63, found {n})"));
            return 0;
        }
        n as u32
    }
    pub(crate) fn done<T>(self, value: T) -> Result<T, MissingKeys> {
        if self.missing.is_empty() {
            Ok(value)
        } else {
            Err(MissingKeys {
                missing: self.missing,
            })
        }
    }
}

/// Where the fields of `struct page` are and what its flag bits mean: what
/// deciding a page frame's kind takes (makedumpfile's dump levels).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageLayout {
    /// `SIZE(page)`.
    pub size: u64,
    /// `OFFSET(page.flags)`.
    pub flags: u64,
    /// `OFFSET(page._refcount)`.
    pub refcount: u64,
    /// `OFFSET(page.mapping)`.
    pub mapping: u64,
    /// `OFFSET(page.lru)`.
    pub lru: u64,
    /// `OFFSET(page._mapcount)` (also the page type on 4.18 and later).
    pub mapcount: u64,
    /// `OFFSET(page.private)`: a free block's order.
    pub private: u64,
    /// `OFFSET(page.compound_head)`: bit 0 set on tail pages.
    pub compound_head: u64,
    /// `NUMBER(PG_lru)`.
    pub pg_lru: u32,
    /// `NUMBER(PG_private)`.
    pub pg_private: u32,
    /// `NUMBER(PG_swapcache)`.
    pub pg_swapcache: u32,
    /// `NUMBER(PG_swapbacked)`.
    pub pg_swapbacked: u32,
    /// `NUMBER(PG_head_mask)`.
    pub pg_head_mask: u64,
    /// `NUMBER(PG_hwpoison)`: absent without CONFIG_MEMORY_FAILURE.
    pub pg_hwpoison: Option<u32>,
    /// `NUMBER(PG_slab)`: a flag before Linux 6.10, a page type since.
    pub pg_slab: Option<u32>,
    /// `NUMBER(PG_hugetlb)`: Linux 6.6 to 6.8.
    pub pg_hugetlb: Option<u32>,
    /// `OFFSET(page.compound_order)`: in a compound page's second struct
    /// page, before 6.6.
    pub compound_order: Option<u64>,
    /// `OFFSET(page.compound_dtor)`: likewise.
    pub compound_dtor: Option<u64>,
    /// `NUMBER(HUGETLB_PAGE_DTOR)`: the destructor of a hugetlbfs page,
    /// before 6.6.
    pub hugetlb_dtor: Option<u32>,
    /// `NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)`.
    pub buddy_type: u32,
    /// `NUMBER(PAGE_SLAB_MAPCOUNT_VALUE)`: 6.10 and later.
    pub slab_type: Option<u32>,
    /// `NUMBER(PAGE_HUGETLB_MAPCOUNT_VALUE)`: 6.9 and later.
    pub hugetlb_type: Option<u32>,
    /// `NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)`.
    pub offline_type: Option<u32>,
    /// `NUMBER(PAGE_UNACCEPTED_MAPCOUNT_VALUE)`.
    pub unaccepted_type: Option<u32>,
    /// `LENGTH(zone.free_area)`: the number of buddy orders (MAX_ORDER + 1).
    pub free_area_orders: Option<u64>,
}

impl PageLayout {
    /// Takes the struct page layout from `info`, or names every key that is
    /// missing. Kernels older than 4.14 (no `OFFSET(page.compound_head)`)
    /// or without page types in `_mapcount` (before 2.6.38) are refused
    /// this way.
    pub fn from_info(info: &VmcoreInfo) -> Result<Self, MissingKeys> {
        let mut n = Need::new(info);
        let opt_bit = |name: &str| {
            info.number(name)
                .filter(|v| (0..64).contains(v))
                .map(|v| v as u32)
        };
        let opt_type = |name: &str| info.number(name).map(|v| v as u32);
        let layout = PageLayout {
            size: n.size("page"),
            flags: n.offset("page.flags"),
            refcount: n.offset("page._refcount"),
            mapping: n.offset("page.mapping"),
            lru: n.offset("page.lru"),
            mapcount: n.offset("page._mapcount"),
            private: n.offset("page.private"),
            compound_head: n.offset("page.compound_head"),
            pg_lru: n.bit("PG_lru"),
            pg_private: n.bit("PG_private"),
            pg_swapcache: n.bit("PG_swapcache"),
            pg_swapbacked: n.bit("PG_swapbacked"),
            pg_head_mask: n.number("PG_head_mask") as u64,
            pg_hwpoison: opt_bit("PG_hwpoison"),
            pg_slab: opt_bit("PG_slab"),
            pg_hugetlb: opt_bit("PG_hugetlb"),
            compound_order: info.offset("page.compound_order"),
            compound_dtor: info.offset("page.compound_dtor"),
            hugetlb_dtor: info
                .number("HUGETLB_PAGE_DTOR")
                .and_then(|v| u32::try_from(v).ok()),
            buddy_type: n.number("PAGE_BUDDY_MAPCOUNT_VALUE") as u32,
            slab_type: opt_type("PAGE_SLAB_MAPCOUNT_VALUE"),
            hugetlb_type: opt_type("PAGE_HUGETLB_MAPCOUNT_VALUE"),
            offline_type: opt_type("PAGE_OFFLINE_MAPCOUNT_VALUE"),
            unaccepted_type: opt_type("PAGE_UNACCEPTED_MAPCOUNT_VALUE"),
            free_area_orders: info.length("zone.free_area"),
        };
        n.missing.extend(layout.implausible());
        n.done(layout)
    }

    /// What the layout lacks to be usable, though every key was there: a
    /// way to tell slab pages, fields inside the struct page, a plausible
    /// struct page size.
    fn implausible(&self) -> Vec<String> {
        let mut wrong = Vec::new();
        if self.slab_type.is_none() && self.pg_slab.is_none() {
            wrong.push(
                "NUMBER(PG_slab) or NUMBER(PAGE_SLAB_MAPCOUNT_VALUE) (how a slab page is told)"
                    .to_string(),
            );
        }
        for (name, off) in [
            ("page.flags", self.flags),
            ("page._refcount", self.refcount),
            ("page.mapping", self.mapping),
            ("page.lru", self.lru),
            ("page._mapcount", self.mapcount),
            ("page.private", self.private),
            ("page.compound_head", self.compound_head),
        ] {
            let width = if name.ends_with("count") { 4 } else { 8 };
            if self.size > 0 && off + width > self.size {
                wrong.push(format!(
                    "OFFSET({name}) inside SIZE(page) ({off} + {width} > {})",
                    self.size
                ));
            }
        }
        if self.size > 0 && !(32..=512).contains(&self.size) {
            wrong.push(format!(
                "SIZE(page) between 32 and 512 bytes (found {})",
                self.size
            ));
        }
        wrong
    }
}

/// What finding a frame's struct page takes on x86_64: the kernel's page
/// tables and where the struct page array lies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelLayout {
    /// `NUMBER(phys_base)`: the kernel text's physical load offset.
    pub phys_base: u64,
    /// `KERNELOFFSET`: the KASLR slide of the text mapping.
    pub kernel_offset: u64,
    /// `SYMBOL(init_top_pgt)`: the top-level page table, a kernel text
    /// address.
    pub init_top_pgt: u64,
    /// `NUMBER(pgtable_l5_enabled)`.
    pub five_level: bool,
    /// `SYMBOL(vmemmap_base)`: the variable holding the struct page array's
    /// virtual address (a KASLR kernel moves it).
    pub vmemmap_base_sym: Option<u64>,
    /// `NUMBER(sme_mask)`: the AMD memory-encryption bit, cleared from page
    /// table entries.
    pub sme_mask: u64,
}

/// The text mapping's base on x86_64 (`__START_KERNEL_map`).
pub const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;

impl KernelLayout {
    /// Takes what address translation needs from `info`, or names what is
    /// missing.
    pub fn from_info(info: &VmcoreInfo) -> Result<Self, MissingKeys> {
        let mut n = Need::new(info);
        let layout = KernelLayout {
            phys_base: n.number("phys_base") as u64,
            kernel_offset: info.kernel_offset().unwrap_or_else(|| {
                n.missing.push("KERNELOFFSET".to_string());
                0
            }),
            init_top_pgt: n.symbol("init_top_pgt"),
            five_level: info.number("pgtable_l5_enabled").unwrap_or(0) != 0,
            vmemmap_base_sym: info.symbol("vmemmap_base"),
            sme_mask: info.number("sme_mask").unwrap_or(0) as u64,
        };
        n.done(layout)
    }

    /// The physical address of a kernel text or data symbol (an address in
    /// the text mapping at `__START_KERNEL_map`), or `None` for any other.
    pub fn text_to_phys(&self, vaddr: u64) -> Option<u64> {
        if vaddr < START_KERNEL_MAP {
            return None;
        }
        // phys_base is negative when the kernel runs below the address it
        // was linked for (KASLR moved it down): VMCOREINFO prints it as
        // a signed number.
        Some((vaddr - START_KERNEL_MAP).wrapping_add(self.phys_base))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real VMCOREINFO of the 6.12 test kernel (see tests/fixtures/README.md).
    const REAL: &[u8] = include_bytes!("../tests/fixtures/vmcoreinfo-6.12.117.txt");

    #[test]
    fn real_text_gives_the_page_layout() {
        let info = VmcoreInfo::parse(REAL).unwrap();
        assert_eq!(info.release(), Some("6.12.117"));
        assert_eq!(info.page_size(), Some(4096));
        let p = PageLayout::from_info(&info).unwrap();
        assert_eq!(p.size, 64);
        assert_eq!((p.flags, p.lru, p.mapping, p.private), (0, 8, 24, 40));
        assert_eq!((p.mapcount, p.refcount, p.compound_head), (48, 52, 8));
        assert_eq!(p.buddy_type, 0xf000_0000);
        assert_eq!(p.slab_type, Some(0xf500_0000));
        assert_eq!(p.hugetlb_type, Some(0xf400_0000));
        assert_eq!(p.pg_head_mask, 1 << 6);
        assert_eq!(p.free_area_orders, Some(11));
        let k = KernelLayout::from_info(&info).unwrap();
        // Kernel A of the VM tests runs with KASLR and, under QEMU's
        // `-cpu max`, 5-level paging.
        assert_eq!(k.kernel_offset, 0x2f40_0000);
        assert!(k.five_level);
        assert_eq!(k.phys_base, (-331_350_016i64) as u64);
        // The kernel text PT_LOAD of that core: vaddr 0xffffffffb0400000 at
        // paddr 0x1c800000.
        assert_eq!(k.text_to_phys(0xffff_ffff_b040_0000), Some(0x1c80_0000));
        assert_eq!(k.text_to_phys(k.init_top_pgt), Some(0x1dc2_c000));
        assert_eq!(info.symbol("vmemmap"), Some(0xff5d_f176_c000_0000));
        assert!(info.symbol("prb").is_some());
    }

    #[test]
    fn trailing_nuls_and_empty_lines_are_dropped() {
        let info = VmcoreInfo::parse(b"OSRELEASE=6.1\n\nPAGESIZE=4096\n\0\0\0").unwrap();
        assert_eq!(info.raw(), b"OSRELEASE=6.1\n\nPAGESIZE=4096\n");
        assert_eq!(info.entries().count(), 2);
    }

    #[test]
    fn a_line_without_equals_is_refused_with_its_number() {
        let e = VmcoreInfo::parse(b"OSRELEASE=6.1\nGARBAGE\n").unwrap_err();
        assert_eq!(
            e,
            VmcoreInfoError::BadLine {
                line: 2,
                text: "GARBAGE".into(),
                reason: "no '='"
            }
        );
        assert!(matches!(
            VmcoreInfo::parse(b"=1\n"),
            Err(VmcoreInfoError::BadLine {
                reason: "empty key",
                ..
            })
        ));
        assert!(matches!(
            VmcoreInfo::parse(b"A=\xff\n"),
            Err(VmcoreInfoError::BadLine {
                reason: "not UTF-8",
                ..
            })
        ));
    }

    #[test]
    fn conflicting_duplicates_are_refused() {
        let e = VmcoreInfo::parse(b"SIZE(page)=64\nSIZE(page)=56\n").unwrap_err();
        assert!(matches!(e, VmcoreInfoError::Duplicate { ref key, .. } if key == "SIZE(page)"));
        assert!(VmcoreInfo::parse(b"SIZE(page)=64\nSIZE(page)=64\n").is_ok());
    }

    #[test]
    fn oversized_text_is_refused() {
        let big = vec![b'a'; MAX_VMCOREINFO_LEN + 1];
        assert_eq!(
            VmcoreInfo::parse(&big),
            Err(VmcoreInfoError::TooLarge { len: big.len() })
        );
    }

    #[test]
    fn missing_keys_are_all_named() {
        let text: Vec<u8> = String::from_utf8_lossy(REAL)
            .lines()
            .filter(|l| !l.starts_with("OFFSET(page.flags)") && !l.starts_with("NUMBER(PG_lru)"))
            .flat_map(|l| format!("{l}\n").into_bytes())
            .collect();
        let info = VmcoreInfo::parse(&text).unwrap();
        let e = PageLayout::from_info(&info).unwrap_err();
        assert_eq!(e.missing, ["OFFSET(page.flags)", "NUMBER(PG_lru)"]);
        assert_eq!(
            e.to_string(),
            "VMCOREINFO lacks OFFSET(page.flags), NUMBER(PG_lru)"
        );
        let none = VmcoreInfo::parse(b"OSRELEASE=2.6.32\n").unwrap();
        let e = PageLayout::from_info(&none).unwrap_err();
        assert!(e.missing.contains(&"SIZE(page)".to_string()), "{e}");
        assert!(e.missing.iter().any(|m| m.starts_with("NUMBER(PG_slab)")));
        let e = KernelLayout::from_info(&none).unwrap_err();
        assert_eq!(
            e.missing,
            ["NUMBER(phys_base)", "KERNELOFFSET", "SYMBOL(init_top_pgt)"]
        );
    }

    #[test]
    fn an_offset_past_the_struct_is_unusable() {
        let text = String::from_utf8_lossy(REAL)
            .replace("OFFSET(page.private)=40", "OFFSET(page.private)=60");
        let info = VmcoreInfo::parse(text.as_bytes()).unwrap();
        let e = PageLayout::from_info(&info).unwrap_err();
        assert_eq!(
            e.missing,
            ["OFFSET(page.private) inside SIZE(page) (60 + 8 > 64)"]
        );
    }
}

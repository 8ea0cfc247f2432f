//! Dump levels: which page frames a crash dump may leave out, decided from
//! each frame's `struct page` as makedumpfile decides it (its `-d` bits,
//! makedumpfile.c `__exclude_unnecessary_pages`).
//!
//! | bit | pages left out |
//! |---|---|
//! | 1 | zero pages (kjump always skips them; this module does not look) |
//! | 2 | page cache and swap cache without private data |
//! | 4 | page cache and swap cache, private data or not |
//! | 8 | user process data: anonymous pages and hugetlbfs pages |
//! | 16 | free pages (buddy blocks, and unaccepted memory) |
//!
//! Hardware-poisoned and logically offline pages are left out at every level
//! above 1, as makedumpfile does: reading them may fault the machine or
//! return garbage.
//!
//! The struct page array is the virtual array of x86_64's SPARSEMEM_VMEMMAP
//! (every kernel since 2.6.24 there), read through the dumped kernel's own
//! page tables. Newer kernels name it (`SYMBOL(vmemmap)`); older ones, 6.1
//! among them, do not, and its address is decoded from the sections of
//! `mem_section` the dumped frames lie in, as makedumpfile finds each
//! section's struct pages: every present section must give the same array.
//! A frame whose struct page cannot be read (its vmemmap page is not in the
//! dump) is kept.

use kjump_image_format::Pfn;

use crate::mem::{PhysMemory, TranslateError, Translator};
use crate::vmcoreinfo::{KernelLayout, MissingKeys, PageLayout, VmcoreInfo};

/// Frames read per batch of struct pages: makedumpfile's PGMM_CACHED. A
/// compound page is aligned to its order, so a head page is never the last
/// of a batch and its second page (which holds the order) is in the batch.
const BATCH: u64 = 512;

/// A makedumpfile dump level, 0 to 31.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DumpLevel(u8);

impl DumpLevel {
    /// Zero pages.
    pub const ZERO: u8 = 1;
    /// Cache pages without private data.
    pub const CACHE: u8 = 2;
    /// Cache pages, private or not.
    pub const CACHE_PRIVATE: u8 = 4;
    /// User process data.
    pub const USER: u8 = 8;
    /// Free pages.
    pub const FREE: u8 = 16;

    /// The level `n`, if it is one (0 to 31).
    pub fn new(n: u8) -> Option<Self> {
        (n <= 31).then_some(DumpLevel(n))
    }

    /// The number.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// Whether `bit` is set.
    pub fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }

    /// Whether struct pages must be read (any bit above zero pages).
    pub fn needs_struct_pages(self) -> bool {
        self.0 & !Self::ZERO != 0
    }

    /// The level with only the zero-page bit kept: what is left when struct
    /// pages cannot be read.
    pub fn zero_only(self) -> Self {
        DumpLevel(self.0 & Self::ZERO)
    }
}

impl std::fmt::Display for DumpLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = [
            (Self::ZERO, "zero"),
            (Self::CACHE, "cache"),
            (Self::CACHE_PRIVATE, "cache-private"),
            (Self::USER, "user"),
            (Self::FREE, "free"),
        ]
        .iter()
        .filter(|(b, _)| self.has(*b))
        .map(|(_, n)| *n)
        .collect();
        if names.is_empty() {
            write!(f, "0 (nothing left out)")
        } else {
            write!(f, "{} ({})", self.0, names.join(", "))
        }
    }
}

/// Why a frame was left out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PageKind {
    /// A free buddy block, or unaccepted memory.
    Free,
    /// Page or swap cache without private data.
    Cache,
    /// Page or swap cache with private data (buffer heads).
    CachePrivate,
    /// Anonymous or hugetlbfs memory of a process.
    User,
    /// Marked hardware-poisoned.
    HwPoison,
    /// Logically offline (a balloon driver took it).
    Offline,
}

/// How many frames of each kind were left out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KindCounts {
    /// Free pages.
    pub free: u64,
    /// Cache pages without private data.
    pub cache: u64,
    /// Cache pages with private data.
    pub cache_private: u64,
    /// User pages.
    pub user: u64,
    /// Hardware-poisoned pages.
    pub hwpoison: u64,
    /// Offline pages.
    pub offline: u64,
    /// Frames kept because their struct page could not be read.
    pub unreadable: u64,
}

impl KindCounts {
    fn add(&mut self, kind: PageKind, n: u64) {
        match kind {
            PageKind::Free => self.free += n,
            PageKind::Cache => self.cache += n,
            PageKind::CachePrivate => self.cache_private += n,
            PageKind::User => self.user += n,
            PageKind::HwPoison => self.hwpoison += n,
            PageKind::Offline => self.offline += n,
        }
    }

    /// Frames left out, all kinds.
    pub fn total(&self) -> u64 {
        self.free + self.cache + self.cache_private + self.user + self.hwpoison + self.offline
    }
}

/// Why struct pages could not be used; the caller falls back to zero pages
/// only and says why.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// The dump carries no VMCOREINFO note.
    #[error("the dump has no VMCOREINFO note, so kjump cannot tell page cache, user and free pages from kernel memory")]
    NoVmcoreInfo,
    /// The dump is of a page size kjump does not filter.
    #[error("VMCOREINFO gives PAGESIZE={found:?}; kjump filters 4096-byte pages only")]
    PageSize {
        /// What was found.
        found: Option<u64>,
    },
    /// The struct page layout is incomplete or unknown.
    #[error("unknown struct page layout")]
    Layout(#[source] MissingKeys),
    /// The struct page array's address is unknown.
    #[error("VMCOREINFO gives neither SYMBOL(vmemmap), the struct page array's address, nor the mem_section keys to find it ({missing})")]
    NoVmemmap {
        /// The mem_section keys missing.
        missing: String,
    },
    /// `mem_section` does not describe one struct page array.
    #[error(
        "finding the struct page array through mem_section (SYMBOL(mem_section)={roots:#x}): {why}"
    )]
    Sections {
        /// `SYMBOL(mem_section)`.
        roots: u64,
        /// What was wrong, with the section and the address read.
        why: String,
    },
    /// The kernel's page tables are not in the dump.
    #[error("reading the dumped kernel's page tables (init_top_pgt at physical {at:#x})")]
    PageTables {
        /// Where the top table should be.
        at: u64,
        /// The cause.
        #[source]
        source: TranslateError,
    },
    /// Most struct pages could not be read: the layout does not describe
    /// this dump.
    #[error("{unreadable} of {total} struct pages could not be read through the dumped kernel's page tables: VMCOREINFO does not describe this memory")]
    Unreadable {
        /// Frames whose struct page was unreadable.
        unreadable: u64,
        /// Frames looked at.
        total: u64,
    },
}

/// The frames a dump leaves out: sorted, disjoint, non-adjacent runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exclusions {
    runs: Vec<(u64, u64)>,
    /// Frames in the runs before each run.
    prefix: Vec<u64>,
}

impl Exclusions {
    /// From runs `(first frame, count)`; sorts and joins them.
    pub fn from_runs(mut runs: Vec<(u64, u64)>) -> Self {
        runs.retain(|r| r.1 > 0);
        runs.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(runs.len());
        for (first, count) in runs {
            if let Some(last) = out.last_mut() {
                let end = last.0 + last.1;
                if first <= end {
                    last.1 = last.1.max(first + count - last.0);
                    continue;
                }
            }
            out.push((first, count));
        }
        let mut total = 0;
        let prefix = out
            .iter()
            .map(|r| {
                let before = total;
                total += r.1;
                before
            })
            .collect();
        Exclusions { runs: out, prefix }
    }

    /// Frames left out below `pfn`.
    pub fn before(&self, pfn: u64) -> u64 {
        let i = self.runs.partition_point(|r| r.0 < pfn);
        match i.checked_sub(1) {
            None => 0,
            Some(j) => self.prefix[j] + self.runs[j].1.min(pfn - self.runs[j].0),
        }
    }

    /// The runs, `(first frame, count)`, sorted and disjoint.
    pub fn runs(&self) -> &[(u64, u64)] {
        &self.runs
    }

    /// Frames left out.
    pub fn pages(&self) -> u64 {
        self.prefix
            .last()
            .map_or(0, |p| p + self.runs[self.runs.len() - 1].1)
    }

    /// Whether nothing is left out.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Whether `pfn` is left out.
    pub fn contains(&self, pfn: u64) -> bool {
        let i = self.runs.partition_point(|r| r.0 + r.1 <= pfn);
        self.runs.get(i).is_some_and(|r| r.0 <= pfn)
    }

    /// Bit `i` set when frame `first + i` is left out, for `count` ≤ 64
    /// frames.
    pub fn mask(&self, first: Pfn, count: u32) -> u64 {
        debug_assert!(count <= 64);
        let (start, end) = (first.0, first.0 + u64::from(count));
        let mut mask = 0u64;
        let mut i = self.runs.partition_point(|r| r.0 + r.1 <= start);
        while let Some(&(f, n)) = self.runs.get(i) {
            if f >= end {
                break;
            }
            let (lo, hi) = (f.max(start) - start, (f + n).min(end) - start);
            let bits = if hi - lo >= 64 {
                u64::MAX
            } else {
                ((1u64 << (hi - lo)) - 1) << lo
            };
            mask |= bits;
            i += 1;
        }
        mask
    }

    /// Keeps only the frames inside `ranges` (`[first, end)` frame pairs).
    pub fn clip(&self, ranges: &[(u64, u64)]) -> Self {
        let mut out = Vec::new();
        for &(f, n) in &self.runs {
            for &(rs, re) in ranges {
                let (lo, hi) = (f.max(rs), (f + n).min(re));
                if lo < hi {
                    out.push((lo, hi - lo));
                }
            }
        }
        Exclusions::from_runs(out)
    }
}

/// The outcome of a filtering pass.
#[derive(Clone, Debug)]
pub struct FilterPlan {
    /// The level asked for.
    pub level: DumpLevel,
    /// Frames left out.
    pub excluded: Exclusions,
    /// By kind.
    pub counts: KindCounts,
}

/// What one struct page says, for [`classify`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageFields {
    /// `page.flags`.
    pub flags: u64,
    /// `page.mapping`.
    pub mapping: u64,
    /// `page._mapcount` (the page type on newer kernels).
    pub mapcount: u32,
    /// `page.private`.
    pub private: u64,
    /// `page.compound_head`.
    pub compound_head: u64,
    /// For a head page, the next page's `flags` (its low byte is the
    /// folio's order on 6.6 and later).
    pub next_flags: Option<u64>,
    /// For a head page before 6.6, the next page's `compound_order` and
    /// `compound_dtor` bytes.
    pub next_order: Option<u8>,
    /// See `next_order`.
    pub next_dtor: Option<u8>,
}

impl PageFields {
    /// Reads the fields from one struct page's bytes (and the next one's,
    /// when at hand).
    pub fn read(layout: &PageLayout, page: &[u8], next: Option<&[u8]>) -> Self {
        let u64_at = |b: &[u8], o: u64| {
            let o = o as usize;
            u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]))
        };
        let u32_at = |b: &[u8], o: u64| {
            let o = o as usize;
            u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]))
        };
        let flags = u64_at(page, layout.flags);
        let next = next.filter(|_| flags & layout.pg_head_mask != 0);
        // Little endian: the low byte of the older, wider fields too.
        let byte = |o: Option<u64>| {
            next.zip(o)
                .and_then(|(n, o)| n.get(usize::try_from(o).ok()?).copied())
        };
        PageFields {
            flags,
            mapping: u64_at(page, layout.mapping),
            mapcount: u32_at(page, layout.mapcount),
            private: u64_at(page, layout.private),
            compound_head: u64_at(page, layout.compound_head),
            next_flags: next.map(|n| u64_at(n, layout.flags)),
            next_order: byte(layout.compound_order),
            next_dtor: byte(layout.compound_dtor),
        }
    }
}

/// Whether a `_mapcount` value is the page type `want` (a
/// `PAGE_*_MAPCOUNT_VALUE`). Since Linux 6.11 the type is the top byte and
/// the low 24 bits may hold type data; before, the value is compared whole,
/// as makedumpfile does.
fn is_type(mapcount: u32, want: Option<u32>) -> bool {
    match want {
        Some(w) if w & 0x00ff_ffff == 0 && (0xf0..0xff).contains(&(w >> 24)) => {
            mapcount >> 24 == w >> 24
        }
        Some(w) => mapcount == w,
        None => false,
    }
}

fn bit(flags: u64, n: Option<u32>) -> bool {
    n.is_some_and(|n| flags & (1u64 << n) != 0)
}

/// The order of the compound page whose head is frame `pfn` (0 for a
/// single page, or when its order is implausible for that frame), read
/// where the kernel keeps it, and whether it is a hugetlbfs page: the
/// folio's flags and page type since 6.9, its flags from 6.6 to 6.8, the
/// second page's `compound_order` and `compound_dtor` before.
fn compound_order(layout: &PageLayout, pfn: u64, p: &PageFields) -> (u32, bool) {
    let mut order = 0u32;
    let mut hugetlb = false;
    if let Some(next) = p.next_flags {
        if layout.hugetlb_type.is_some() {
            order = (next & 0xff) as u32;
            hugetlb = is_type(p.mapcount, layout.hugetlb_type);
        } else if let Some(b) = layout.pg_hugetlb {
            order = (next & 0xff) as u32;
            hugetlb = next & (1u64 << b) != 0;
        } else if layout.compound_order.is_some() {
            order = u32::from(p.next_order.unwrap_or(0));
            hugetlb = layout
                .hugetlb_dtor
                .is_some_and(|d| p.next_dtor.map(u32::from) == Some(d));
        }
        if order >= 64 || pfn & ((1u64 << order) - 1) != 0 {
            order = 0;
        }
    }
    (order, hugetlb)
}

/// Decides one frame: `None` to keep it, else why it may go and how many
/// frames from it go with it (a buddy block or a compound page). Tail pages
/// of compound pages are kept here: their head decides for them.
pub fn classify(
    layout: &PageLayout,
    level: DumpLevel,
    pfn: u64,
    p: &PageFields,
) -> Option<(PageKind, u64)> {
    let slab = is_type(p.mapcount, layout.slab_type) || bit(p.flags, layout.pg_slab);
    let anon = p.mapping & 1 != 0 && !slab;
    let (order, hugetlb) = compound_order(layout, pfn, p);
    let compound = 1u64 << order;
    if p.compound_head & 1 != 0 {
        return None;
    }
    let cache = bit(p.flags, Some(layout.pg_lru))
        || (bit(p.flags, Some(layout.pg_swapbacked)) && bit(p.flags, Some(layout.pg_swapcache)));
    let private = bit(p.flags, Some(layout.pg_private));
    if level.has(DumpLevel::FREE) && !slab && is_type(p.mapcount, Some(layout.buddy_type)) {
        let orders = layout.free_area_orders.unwrap_or(64);
        if p.private >= orders || p.private >= 64 {
            // makedumpfile warns and keeps it: a free block of an order the
            // zone cannot have is not trusted.
            return None;
        }
        return Some((PageKind::Free, 1u64 << p.private));
    }
    if level.has(DumpLevel::FREE) && is_type(p.mapcount, layout.unaccepted_type) {
        let orders = layout.free_area_orders.unwrap_or(11).clamp(1, 64);
        return Some((PageKind::Free, 1u64 << (orders - 1)));
    }
    if level.has(DumpLevel::CACHE) && cache && !private && !anon {
        return Some((PageKind::Cache, compound));
    }
    if level.has(DumpLevel::CACHE_PRIVATE) && cache && !anon {
        let kind = if private {
            PageKind::CachePrivate
        } else {
            PageKind::Cache
        };
        return Some((kind, compound));
    }
    if level.has(DumpLevel::USER) && (anon || hugetlb) {
        return Some((PageKind::User, compound));
    }
    if bit(p.flags, layout.pg_hwpoison) {
        return Some((PageKind::HwPoison, compound));
    }
    if !slab && is_type(p.mapcount, layout.offline_type) {
        return Some((PageKind::Offline, compound));
    }
    None
}

/// Decides, for every frame of `ranges` (`[first, end)` frame pairs, sorted),
/// whether a dump at `level` leaves it out, reading struct pages from `mem`.
/// Zero pages are not looked at here.
pub fn plan<M: PhysMemory + ?Sized>(
    mem: &M,
    info: Option<&VmcoreInfo>,
    ranges: &[(u64, u64)],
    level: DumpLevel,
) -> Result<FilterPlan, FilterError> {
    let mut result = FilterPlan {
        level,
        excluded: Exclusions::default(),
        counts: KindCounts::default(),
    };
    if !level.needs_struct_pages() {
        return Ok(result);
    }
    let info = info.ok_or(FilterError::NoVmcoreInfo)?;
    let facts = StructPageFacts::from_info(info)?;
    let tr = Translator::new(mem, &facts.kernel).ok_or_else(|| facts.no_top_table())?;
    facts.check_top_table(&tr)?;
    let vmemmap = match &facts.array {
        StructPages::Symbol(at) => *at,
        StructPages::Sections(sections) => sections.vmemmap(&tr, ranges)?,
    };
    let scan = Scan {
        tr: &tr,
        page: &facts.page,
        vmemmap,
        level,
    };
    let (runs, total) = scan.ranges(ranges, &mut result.counts);
    if total > 0 && result.counts.unreadable * 2 > total {
        return Err(FilterError::Unreadable {
            unreadable: result.counts.unreadable,
            total,
        });
    }
    let mut plain = Vec::with_capacity(runs.len());
    for (f, n, kind) in runs {
        for &(rs, re) in ranges {
            let (lo, hi) = (f.max(rs), (f + n).min(re));
            if lo < hi {
                result.counts.add(kind, hi - lo);
                plain.push((lo, hi - lo));
            }
        }
    }
    result.excluded = Exclusions::from_runs(plain);
    Ok(result)
}

/// What reading struct pages takes from VMCOREINFO: their layout, the
/// kernel's address layout, where the struct page array lies and the
/// physical address of the top page table.
struct StructPageFacts {
    page: PageLayout,
    kernel: KernelLayout,
    array: StructPages,
    top: u64,
}

/// How the struct page array is found.
enum StructPages {
    /// At `SYMBOL(vmemmap)`.
    Symbol(u64),
    /// Through `mem_section`, the kernel's table of memory sections.
    Sections(MemSections),
}

/// A present section's `section_mem_map` has these low bits set
/// (SECTION_MARKED_PRESENT, SECTION_HAS_MEM_MAP).
const SECTION_PRESENT: u64 = 1;
const SECTION_HAS_MEM_MAP: u64 = 2;
/// The flag bits below the encoded struct page address: at most 6 in any
/// kernel (SECTION_MAP_LAST_BIT); the array itself is page aligned.
const SECTION_FLAGS: u64 = 0xfff;
/// Sections read at most: 128 MiB each, so 128 TiB of dumped memory.
const SECTIONS_MAX: u64 = 1 << 20;

/// `mem_section` as VMCOREINFO describes it. With SPARSEMEM_EXTREME (every
/// x86_64 kernel) it points at `LENGTH(mem_section)` roots, each pointing
/// at a page of `struct mem_section`s, or is null; without, it is the
/// array of sections itself. A section's `section_mem_map` holds the
/// address of its first frame's struct page minus its first frame's
/// index, with flags in the low bits: with SPARSEMEM_VMEMMAP, the array's
/// address for every section.
struct MemSections {
    /// `SYMBOL(mem_section)`.
    roots: u64,
    /// `LENGTH(mem_section)`.
    roots_len: u64,
    /// `SIZE(mem_section)`.
    entry_size: u64,
    /// `OFFSET(mem_section.section_mem_map)`.
    map_offset: u64,
    /// `NUMBER(SECTION_SIZE_BITS)`.
    section_bits: u32,
    /// `NUMBER(MAX_PHYSMEM_BITS)`, when given.
    physmem_bits: Option<u32>,
}

impl MemSections {
    fn from_info(info: &VmcoreInfo) -> Result<Self, FilterError> {
        let roots = info.symbol("mem_section");
        let roots_len = info.length("mem_section");
        let entry_size = info.size("mem_section");
        let map_offset = info.offset("mem_section.section_mem_map");
        let section_bits = info.number("SECTION_SIZE_BITS");
        match (roots, roots_len, entry_size, map_offset, section_bits) {
            (Some(roots), Some(roots_len), Some(entry_size), Some(map_offset), Some(bits))
                if (8..=4096).contains(&entry_size)
                    && map_offset + 8 <= entry_size
                    && (12..40).contains(&bits)
                    && roots_len > 0 =>
            {
                Ok(MemSections {
                    roots,
                    roots_len,
                    entry_size,
                    map_offset,
                    section_bits: bits as u32,
                    physmem_bits: info
                        .number("MAX_PHYSMEM_BITS")
                        .filter(|b| (bits..64).contains(b))
                        .map(|b| b as u32),
                })
            }
            _ => {
                let keys = [
                    ("SYMBOL(mem_section)", roots.is_some()),
                    ("LENGTH(mem_section)", roots_len.is_some()),
                    ("SIZE(mem_section)", entry_size.is_some()),
                    ("OFFSET(mem_section.section_mem_map)", map_offset.is_some()),
                    ("NUMBER(SECTION_SIZE_BITS)", section_bits.is_some()),
                ];
                let missing: Vec<&str> = keys.iter().filter(|k| !k.1).map(|k| k.0).collect();
                Err(FilterError::NoVmemmap {
                    missing: if missing.is_empty() {
                        format!(
                            "implausible: SIZE(mem_section)={}, OFFSET(mem_section.section_mem_map)={}, NUMBER(SECTION_SIZE_BITS)={}, LENGTH(mem_section)={}",
                            entry_size.unwrap_or(0),
                            map_offset.unwrap_or(0),
                            section_bits.unwrap_or(0),
                            roots_len.unwrap_or(0)
                        )
                    } else {
                        format!("no {}", missing.join(", "))
                    },
                })
            }
        }
    }

    fn error(&self, why: String) -> FilterError {
        FilterError::Sections {
            roots: self.roots,
            why,
        }
    }

    /// Sections per root: a page of them with SPARSEMEM_EXTREME, else one
    /// (the roots are the sections). Without MAX_PHYSMEM_BITS the kernel is
    /// taken to be SPARSEMEM_EXTREME, as every x86_64 kernel is.
    fn per_root(&self) -> u64 {
        match self.physmem_bits {
            Some(b) if self.roots_len == 1u64 << (b - self.section_bits) => 1,
            _ => 4096 / self.entry_size,
        }
    }

    /// The struct page array's address, decoded from every present section
    /// that holds frames of `ranges`; all must agree.
    fn vmemmap<M: PhysMemory + ?Sized>(
        &self,
        tr: &Translator<'_, M>,
        ranges: &[(u64, u64)],
    ) -> Result<u64, FilterError> {
        let shift = self.section_bits - 12;
        let per_root = self.per_root();
        let mut found: Option<(u64, u64)> = None;
        let mut read = 0u64;
        let mut last = None;
        'ranges: for &(first, end) in ranges.iter().filter(|r| r.0 < r.1) {
            for nr in (first >> shift)..=((end - 1) >> shift) {
                if last.is_some_and(|l| nr <= l) {
                    continue;
                }
                last = Some(nr);
                read += 1;
                if read > SECTIONS_MAX {
                    break 'ranges;
                }
                let root = nr / per_root;
                if root >= self.roots_len {
                    return Err(self.error(format!(
                        "frame {:#x}'s section {nr} lies past its {} roots",
                        nr << shift,
                        self.roots_len
                    )));
                }
                // Addresses from the dump are untrusted: they wrap, and a
                // wrong one fails to translate, with the address named.
                let base = if per_root == 1 {
                    // The sections themselves, one per root.
                    self.roots.wrapping_add(root.wrapping_mul(self.entry_size))
                } else {
                    let at = self.roots.wrapping_add(root.wrapping_mul(8));
                    let base = tr
                        .read_virt_u64(at)
                        .map_err(|e| self.error(format!("reading root {root} at {at:#x}: {e}")))?;
                    if base == 0 {
                        continue;
                    }
                    base
                };
                let at = base
                    .wrapping_add((nr % per_root) * self.entry_size)
                    .wrapping_add(self.map_offset);
                let map = tr.read_virt_u64(at).map_err(|e| {
                    self.error(format!(
                        "reading section {nr}'s section_mem_map at {at:#x}: {e}"
                    ))
                })?;
                if map & (SECTION_PRESENT | SECTION_HAS_MEM_MAP)
                    != SECTION_PRESENT | SECTION_HAS_MEM_MAP
                {
                    continue;
                }
                let array = map & !SECTION_FLAGS;
                match found {
                    None => found = Some((nr, array)),
                    Some((first_nr, a)) if a != array => {
                        return Err(self.error(format!(
                            "section {first_nr} gives struct pages at {a:#x}, section {nr} at {array:#x}: not one SPARSEMEM_VMEMMAP array"
                        )))
                    }
                    Some(_) => {}
                }
            }
        }
        found
            .map(|(_, a)| a)
            .ok_or_else(|| self.error("no present section holds the dumped frames".to_string()))
    }
}

impl StructPageFacts {
    fn from_info(info: &VmcoreInfo) -> Result<Self, FilterError> {
        if info.page_size() != Some(4096) {
            return Err(FilterError::PageSize {
                found: info.page_size(),
            });
        }
        let page = PageLayout::from_info(info).map_err(FilterError::Layout)?;
        let kernel = KernelLayout::from_info(info).map_err(FilterError::Layout)?;
        let array = match info.symbol("vmemmap") {
            Some(at) => StructPages::Symbol(at),
            None => StructPages::Sections(MemSections::from_info(info)?),
        };
        let top = kernel
            .text_to_phys(kernel.init_top_pgt)
            .ok_or(FilterError::Layout(MissingKeys {
                missing: vec![format!(
                    "SYMBOL(init_top_pgt) in the kernel text mapping (found {:#x})",
                    kernel.init_top_pgt
                )],
            }))?;
        Ok(StructPageFacts {
            page,
            kernel,
            array,
            top,
        })
    }

    /// The top table's address is not in the kernel text mapping (checked
    /// in `from_info`, so not expected).
    fn no_top_table(&self) -> FilterError {
        FilterError::Layout(MissingKeys {
            missing: vec![format!(
                "SYMBOL(init_top_pgt) in the kernel text mapping (found {:#x})",
                self.kernel.init_top_pgt
            )],
        })
    }

    /// The top table must be readable, or nothing will be.
    fn check_top_table<M: PhysMemory + ?Sized>(
        &self,
        tr: &Translator<'_, M>,
    ) -> Result<(), FilterError> {
        tr.memory()
            .read_u64(self.top)
            .map(|_| ())
            .map_err(|source| FilterError::PageTables {
                at: self.top,
                source: TranslateError::Read {
                    vaddr: self.kernel.init_top_pgt,
                    source,
                },
            })
    }
}

/// The walk over the struct pages of the dumped frames, a batch at a time.
struct Scan<'a, 'm, M: PhysMemory + ?Sized> {
    tr: &'a Translator<'m, M>,
    page: &'a PageLayout,
    vmemmap: u64,
    level: DumpLevel,
}

impl<M: PhysMemory + ?Sized> Scan<'_, '_, M> {
    /// The runs `(first frame, frames, kind)` left out of `ranges`, as
    /// decided by their first frame (not yet clipped to the ranges), and
    /// the frames looked at; unreadable struct pages are counted in
    /// `counts`.
    fn ranges(
        &self,
        ranges: &[(u64, u64)],
        counts: &mut KindCounts,
    ) -> (Vec<(u64, u64, PageKind)>, u64) {
        let mut runs: Vec<(u64, u64, PageKind)> = Vec::new();
        let mut total = 0u64;
        let size = self.page.size as usize;
        let mut buf = vec![0u8; BATCH as usize * size];
        let mut readable = vec![true; BATCH as usize];
        // A buddy block or compound page decided by its first frame may reach
        // past a batch or a range: its frames are not looked at again.
        let mut skip_until = 0u64;
        for &(first, end) in ranges {
            let mut pfn = first.max(skip_until);
            while pfn < end {
                let batch_end = ((pfn / BATCH + 1) * BATCH).min(end);
                let n = (batch_end - pfn) as usize;
                total += n as u64;
                read_batch(
                    self.tr,
                    self.vmemmap,
                    pfn,
                    &mut buf[..n * size],
                    &mut readable[..n],
                    size,
                );
                counts.unreadable += readable[..n].iter().filter(|r| !**r).count() as u64;
                self.batch(
                    pfn,
                    &buf[..n * size],
                    &readable[..n],
                    &mut runs,
                    &mut skip_until,
                );
                pfn = batch_end.max(skip_until);
            }
        }
        (runs, total)
    }

    /// Classifies the frames of one batch from `pfn` (their struct pages
    /// in `buf`), adding a run for each frame left out and moving
    /// `skip_until` past the frames a run covers.
    fn batch(
        &self,
        pfn: u64,
        buf: &[u8],
        readable: &[bool],
        runs: &mut Vec<(u64, u64, PageKind)>,
        skip_until: &mut u64,
    ) {
        let (size, n) = (self.page.size as usize, readable.len());
        let mut i = 0usize;
        while i < n {
            if !readable[i] {
                i += 1;
                continue;
            }
            let p = &buf[i * size..(i + 1) * size];
            let next = (i + 1 < n && readable[i + 1]).then(|| &buf[(i + 1) * size..(i + 2) * size]);
            let fields = PageFields::read(self.page, p, next);
            let at = pfn + i as u64;
            match classify(self.page, self.level, at, &fields) {
                Some((kind, count)) => {
                    // Neighbours of one kind (a process's pages, the free
                    // blocks of a zone) make one run: hundreds of thousands
                    // of frames in a few thousand runs.
                    match runs.last_mut() {
                        Some((first, n, k)) if *k == kind && *first + *n == at => *n += count,
                        _ => runs.push((at, count, kind)),
                    }
                    *skip_until = at + count;
                    i = i.saturating_add(usize::try_from(count).unwrap_or(usize::MAX));
                }
                None => i += 1,
            }
        }
    }
}

/// Reads the struct pages of `n` frames from `pfn` into `buf`; frames whose
/// struct page cannot be read are marked in `readable`.
fn read_batch<M: PhysMemory + ?Sized>(
    tr: &Translator<'_, M>,
    vmemmap: u64,
    pfn: u64,
    buf: &mut [u8],
    readable: &mut [bool],
    size: usize,
) {
    readable.fill(true);
    if tr.read_virt(vmemmap + pfn * size as u64, buf).is_ok() {
        return;
    }
    for (i, r) in readable.iter_mut().enumerate() {
        let one = &mut buf[i * size..(i + 1) * size];
        let at = vmemmap + (pfn + i as u64) * size as u64;
        *r = tr.read_virt(at, one).is_ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::tests::Tables;

    const REAL: &[u8] = include_bytes!("../tests/fixtures/vmcoreinfo-6.12.117.txt");
    const SLAB: u32 = 0xf500_0000;
    const BUDDY: u32 = 0xf000_0000;
    const HUGETLB: u32 = 0xf400_0000;
    const NONE: u32 = 0xffff_ffff;

    fn layout() -> PageLayout {
        PageLayout::from_info(&VmcoreInfo::parse(REAL).unwrap()).unwrap()
    }

    fn page(flags: u64, mapping: u64, mapcount: u32) -> PageFields {
        PageFields {
            flags,
            mapping,
            mapcount,
            ..PageFields::default()
        }
    }

    const LRU: u64 = 1 << 5;
    const PRIVATE: u64 = 1 << 14;
    const SWAPCACHE: u64 = 1 << 10;
    const SWAPBACKED: u64 = 1 << 17;
    const HEAD: u64 = 1 << 6;

    fn level(n: u8) -> DumpLevel {
        DumpLevel::new(n).unwrap()
    }

    #[test]
    fn each_kind_at_its_level_only() {
        let l = layout();
        let file = page(LRU, 0xff27_98a9_0100_0000, 0);
        assert_eq!(classify(&l, level(1), 0, &file), None);
        assert_eq!(classify(&l, level(2), 0, &file), Some((PageKind::Cache, 1)));
        assert_eq!(classify(&l, level(4), 0, &file), Some((PageKind::Cache, 1)));
        assert_eq!(classify(&l, level(8), 0, &file), None);
        let buffers = page(LRU | PRIVATE, 0xff27_98a9_0100_0000, 0);
        assert_eq!(classify(&l, level(2), 0, &buffers), None);
        assert_eq!(
            classify(&l, level(4), 0, &buffers),
            Some((PageKind::CachePrivate, 1))
        );
        let anon = page(LRU | SWAPBACKED, 0xff27_98a9_0200_0001, 0);
        assert_eq!(classify(&l, level(6), 0, &anon), None, "anon is not cache");
        assert_eq!(classify(&l, level(8), 0, &anon), Some((PageKind::User, 1)));
        let swapcache = page(SWAPBACKED | SWAPCACHE, 0xff27_98a9_0100_0000, 0);
        assert_eq!(
            classify(&l, level(2), 0, &swapcache),
            Some((PageKind::Cache, 1))
        );
        // PG_swapcache alone is another flag's bit (PG_owner_priv_1).
        assert_eq!(classify(&l, level(2), 0, &page(SWAPCACHE, 0, NONE)), None);
        let mut free = page(0, 0, BUDDY);
        free.private = 3;
        assert_eq!(classify(&l, level(15), 0, &free), None);
        assert_eq!(classify(&l, level(16), 0, &free), Some((PageKind::Free, 8)));
        free.private = 11;
        assert_eq!(
            classify(&l, level(16), 0, &free),
            None,
            "order past MAX_ORDER"
        );
        assert_eq!(classify(&l, level(31), 0, &page(0, 0, NONE)), None);
    }

    #[test]
    fn slab_pages_are_never_user_pages() {
        // A slab's fields overlay `mapping`, whose bit 0 is then no anon
        // mark: makedumpfile before 1.7.5 excluded such pages on 6.10 and
        // later, kernel memory included.
        let l = layout();
        for mapping in [1, 3, 0xdead_0000_0000_0005] {
            assert_eq!(classify(&l, level(31), 0, &page(0, mapping, SLAB)), None);
        }
    }

    #[test]
    fn compound_pages_go_whole_and_tails_follow_their_head() {
        let l = layout();
        let mut thp = page(HEAD | LRU | SWAPBACKED, 0xff27_98a9_0200_0001, 0);
        thp.next_flags = Some(9);
        assert_eq!(
            classify(&l, level(8), 512, &thp),
            Some((PageKind::User, 512))
        );
        // A head whose order does not fit its frame number is taken alone.
        assert_eq!(classify(&l, level(8), 513, &thp), Some((PageKind::User, 1)));
        let mut huge = page(HEAD, 0xff27_98a9_0300_0000, HUGETLB);
        huge.next_flags = Some(9);
        assert_eq!(
            classify(&l, level(8), 0, &huge),
            Some((PageKind::User, 512))
        );
        let mut tail = page(0, 1, 0);
        tail.compound_head = 0xff5d_f176_c000_8001;
        assert_eq!(classify(&l, level(31), 1, &tail), None);
    }

    const REAL_6_1: &[u8] = include_bytes!("../tests/fixtures/vmcoreinfo-6.1.0-57.txt");

    #[test]
    fn before_6_6_the_second_struct_page_holds_order_and_destructor() {
        // Debian 12's kernel: PG_head is bit 16, PG_lru 4, PG_swapbacked 19,
        // hugetlbfs pages have destructor 2, types compare whole.
        let l = PageLayout::from_info(&VmcoreInfo::parse(REAL_6_1).unwrap()).unwrap();
        assert_eq!(
            (l.compound_order, l.compound_dtor, l.hugetlb_dtor),
            (Some(17), Some(16), Some(2))
        );
        assert_eq!(
            (l.hugetlb_type, l.pg_hugetlb, l.pg_slab),
            (None, None, Some(9))
        );
        let (head, lru, swapbacked) = (1u64 << 16, 1u64 << 4, 1u64 << 19);
        let mut second = [0u8; 64];
        second[16] = 1; // compound_dtor: a THP's destructor
        second[17] = 9;
        let mut first = [0u8; 64];
        first[0..8].copy_from_slice(&(head | lru | swapbacked).to_le_bytes());
        first[24..32].copy_from_slice(&0xff27_98a9_0200_0001u64.to_le_bytes());
        first[48..52].copy_from_slice(&u32::MAX.to_le_bytes());
        let thp = PageFields::read(&l, &first, Some(&second));
        assert_eq!((thp.next_order, thp.next_dtor), (Some(9), Some(1)));
        assert_eq!(
            classify(&l, level(8), 512, &thp),
            Some((PageKind::User, 512))
        );
        assert_eq!(classify(&l, level(7), 512, &thp), None);
        // A hugetlbfs page: file-backed, so user data only by its destructor.
        first[0..8].copy_from_slice(&head.to_le_bytes());
        first[24..32].copy_from_slice(&0xff27_98a9_0300_0000u64.to_le_bytes());
        second[16] = 2;
        let huge = PageFields::read(&l, &first, Some(&second));
        assert_eq!(
            classify(&l, level(8), 0, &huge),
            Some((PageKind::User, 512))
        );
        second[16] = 1;
        let not_huge = PageFields::read(&l, &first, Some(&second));
        assert_eq!(classify(&l, level(8), 0, &not_huge), None);
        // Not a head: the next page is not looked at.
        first[0..8].copy_from_slice(&lru.to_le_bytes());
        let single = PageFields::read(&l, &first, Some(&second));
        assert_eq!((single.next_order, single.next_dtor), (None, None));
        // A free block, by its whole page type.
        let mut free = page(0, 0, 0xffff_ff7f);
        free.private = 2;
        assert_eq!(classify(&l, level(16), 0, &free), Some((PageKind::Free, 4)));
    }

    #[test]
    fn hwpoison_and_offline_go_at_any_level_above_zero() {
        let mut l = layout();
        l.pg_hwpoison = Some(19);
        assert_eq!(
            classify(&l, level(2), 0, &page(1 << 19, 0, NONE)),
            Some((PageKind::HwPoison, 1))
        );
        assert_eq!(
            classify(&l, level(2), 0, &page(0, 0, 0xf100_0000)),
            Some((PageKind::Offline, 1))
        );
    }

    #[test]
    fn page_types_before_6_11_are_compared_whole() {
        assert!(is_type(0xffff_ff7f, Some(0xffff_ff7f)));
        assert!(!is_type(0xffff_ff7e, Some(0xffff_ff7f)));
        // Since 6.11 the low 24 bits may carry data.
        assert!(is_type(0xf500_0123, Some(SLAB)));
        assert!(!is_type(0xffff_ffff, Some(SLAB)));
        assert!(!is_type(SLAB, None));
    }

    /// The real fixture's vmemmap address.
    const VMEMMAP: u64 = 0xff5d_f176_c000_0000;

    /// Memory with page tables mapping the struct page array of `frames`
    /// frames at the real fixture's vmemmap address, and the struct pages
    /// written by `fill`.
    fn memory(frames: u64, fill: impl Fn(u64) -> [u8; 64]) -> (Vec<u8>, VmcoreInfo) {
        let (t, info) = memory_tables(frames, fill);
        (t.mem, info)
    }

    fn memory_tables(frames: u64, fill: impl Fn(u64) -> [u8; 64]) -> (Tables, VmcoreInfo) {
        let vmemmap = VMEMMAP;
        let mut t = Tables::new(16 << 20, 0x10_0000);
        let array_at = 0x20_0000u64;
        let array_len = frames * 64;
        let mut off = 0;
        while off < array_len {
            t.map(vmemmap + off, array_at + off, 0x1000);
            off += 0x1000;
        }
        for pfn in 0..frames {
            let at = (array_at + pfn * 64) as usize;
            t.mem[at..at + 64].copy_from_slice(&fill(pfn));
        }
        let info = t.vmcoreinfo(&[], &[]);
        (t, info)
    }

    /// The direct-map address of the `mem_section` roots in the tests.
    const ROOTS: u64 = 0xff1a_687a_3e7a_c000;

    /// `t` with SPARSEMEM_EXTREME `mem_section` roots (at [`ROOTS`], as
    /// Debian's 6.1 kernel gives them: 131072 roots of 256 sections) whose
    /// first root's sections encode `maps`, and VMCOREINFO without
    /// SYMBOL(vmemmap) pointing at them.
    fn with_sections(t: Tables, maps: &[(u64, u64)]) -> (Vec<u8>, VmcoreInfo) {
        sections_of(t, maps, true)
    }

    /// As [`with_sections`], or without SPARSEMEM_EXTREME (`extreme`
    /// false): then `mem_section` is the array of sections itself, one
    /// per root, 2^25 of them.
    fn sections_of(mut t: Tables, maps: &[(u64, u64)], extreme: bool) -> (Vec<u8>, VmcoreInfo) {
        let (roots_at, sections_at) = (0x80_0000u64, 0x80_1000u64);
        let sections = ROOTS + 0x10_0000;
        t.map(ROOTS, roots_at, 0x1000);
        t.map(sections, sections_at, 0x1000);
        let entries_at = if extreme {
            t.mem[roots_at as usize..roots_at as usize + 8]
                .copy_from_slice(&sections.to_le_bytes());
            sections_at
        } else {
            roots_at
        };
        for &(nr, map) in maps {
            let at = (entries_at + nr * 16) as usize;
            t.mem[at..at + 8].copy_from_slice(&map.to_le_bytes());
        }
        let len = if extreme { "131072" } else { "33554432" };
        let info = t.vmcoreinfo(
            &[
                ("SYMBOL(mem_section)", format!("{ROOTS:x}")),
                ("LENGTH(mem_section)", len.into()),
                ("NUMBER(MAX_PHYSMEM_BITS)", "52".into()),
            ],
            &["SYMBOL(vmemmap)"],
        );
        (t.mem, info)
    }

    fn struct_page(flags: u64, mapping: u64, mapcount: u32, private: u64) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[0..8].copy_from_slice(&flags.to_le_bytes());
        b[24..32].copy_from_slice(&mapping.to_le_bytes());
        b[40..48].copy_from_slice(&private.to_le_bytes());
        b[48..52].copy_from_slice(&mapcount.to_le_bytes());
        b
    }

    #[test]
    fn a_pass_over_struct_pages_through_the_page_tables() {
        // Frames 0x400..0x600: a free order-4 block at 0x410, a file page at
        // 0x500, an anon page at 0x501, a slab page at 0x502, the rest kernel.
        let (mem, info) = memory(0x600, |pfn| match pfn {
            0x410 => struct_page(0, 0, BUDDY, 4),
            0x500 => struct_page(LRU, 0xff27_98a9_0100_0000, 0, 0),
            0x501 => struct_page(LRU | SWAPBACKED, 0xff27_98a9_0200_0001, 0, 0),
            0x502 => struct_page(0, 1, SLAB, 0),
            _ => struct_page(0, 0, NONE, 0),
        });
        let ranges = [(0x400, 0x600)];
        let p = plan(&mem[..], Some(&info), &ranges, level(31)).unwrap();
        assert_eq!(p.excluded.runs(), [(0x410, 16), (0x500, 2)]);
        assert_eq!((p.counts.free, p.counts.cache, p.counts.user), (16, 1, 1));
        assert_eq!(p.counts.unreadable, 0);
        let p = plan(&mem[..], Some(&info), &ranges, level(2)).unwrap();
        assert_eq!(p.excluded.runs(), [(0x500, 1)]);
        // A free block reaching past the range is cut to it.
        let p = plan(&mem[..], Some(&info), &[(0x400, 0x418)], level(16)).unwrap();
        assert_eq!(p.excluded.runs(), [(0x410, 8)]);
        // Level 1 reads nothing.
        let p = plan(&[][..], None, &ranges, level(1)).unwrap();
        assert!(p.excluded.is_empty());
    }

    #[test]
    fn frames_whose_struct_page_is_not_mapped_are_kept() {
        let (mem, info) = memory(0x600, |pfn| match pfn {
            0x410 => struct_page(0, 0, BUDDY, 0),
            _ => struct_page(0, 0, NONE, 0),
        });
        // Frames 0x600..0x640 have no struct pages mapped: kept, counted.
        let p = plan(&mem[..], Some(&info), &[(0x400, 0x640)], level(16)).unwrap();
        assert_eq!(p.excluded.runs(), [(0x410, 1)]);
        assert_eq!(p.counts.unreadable, 0x40);
        // Mostly unmapped: the layout does not describe this memory.
        let e = plan(&mem[..], Some(&info), &[(0x400, 0x1000)], level(16)).unwrap_err();
        assert!(
            matches!(
                e,
                FilterError::Unreadable {
                    unreadable: 0xa00,
                    total: 0xc00
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn without_symbol_vmemmap_the_sections_give_the_array() {
        let fill = |pfn| match pfn {
            0x410 => struct_page(0, 0, BUDDY, 4),
            0x8500 => struct_page(LRU, 0xff27_98a9_0100_0000, 0, 0),
            _ => struct_page(0, 0, NONE, 0),
        };
        // Sections 0 and 1 (128 MiB each); flag bits as 6.1 sets them
        // (present, has mem_map, online, early).
        let ranges = [(0x400, 0x600), (0x8400, 0x8600)];
        let (t, _) = memory_tables(0x8600, fill);
        let (mem, info) = with_sections(t, &[(0, VMEMMAP | 0xf), (1, VMEMMAP | 0xb)]);
        let p = plan(&mem[..], Some(&info), &ranges, level(31)).unwrap();
        assert_eq!(p.excluded.runs(), [(0x410, 16), (0x8500, 1)]);
        assert_eq!(p.counts.unreadable, 0);
        // Sections that disagree are not one array.
        let (t, _) = memory_tables(0x8600, fill);
        let other = VMEMMAP + (1 << 30);
        let (mem, info) = with_sections(t, &[(0, VMEMMAP | 3), (1, other | 3)]);
        let e = plan(&mem[..], Some(&info), &ranges, level(31)).unwrap_err();
        assert!(
            e.to_string().contains(&format!(
                "section 0 gives struct pages at {VMEMMAP:#x}, section 1 at {other:#x}"
            )),
            "{e}"
        );
        // A section without a mem_map is passed over; none at all is refused.
        let (t, _) = memory_tables(0x8600, fill);
        let (mem, info) = with_sections(t, &[(0, VMEMMAP | 1), (1, VMEMMAP | 3)]);
        let p = plan(&mem[..], Some(&info), &ranges, level(31)).unwrap();
        assert_eq!(p.excluded.runs(), [(0x410, 16), (0x8500, 1)]);
        let (t, _) = memory_tables(0x8600, fill);
        let (mem, info) = with_sections(t, &[]);
        let e = plan(&mem[..], Some(&info), &ranges, level(31)).unwrap_err();
        assert!(
            e.to_string()
                .contains("no present section holds the dumped frames"),
            "{e}"
        );
        // Without SPARSEMEM_EXTREME the sections lie in mem_section itself.
        let (t, _) = memory_tables(0x8600, fill);
        let (mem, info) = sections_of(t, &[(0, VMEMMAP | 3), (1, VMEMMAP | 3)], false);
        let p = plan(&mem[..], Some(&info), &ranges, level(31)).unwrap();
        assert_eq!(p.excluded.runs(), [(0x410, 16), (0x8500, 1)]);
        let (t, _) = memory_tables(0x8600, fill);
        let (mem, info) = sections_of(t, &[(0, VMEMMAP | 3), (1, other | 3)], false);
        let e = plan(&mem[..], Some(&info), &ranges, level(31)).unwrap_err();
        assert!(e.to_string().contains("section 1 at"), "{e}");
        // Frames past the roots, and roots that are not mapped.
        let (t, _) = memory_tables(0x600, fill);
        let (mem, info) = with_sections(t, &[(0, VMEMMAP | 3)]);
        let e = plan(
            &mem[..],
            Some(&info),
            &[(1 << 40, (1 << 40) + 1)],
            level(31),
        )
        .unwrap_err();
        assert!(e.to_string().contains("lies past its 131072 roots"), "{e}");
        let (t, info) = memory_tables(0x600, fill);
        let text = String::from_utf8_lossy(info.raw()).replace("SYMBOL(vmemmap)", "SYMBOL(unused)");
        let info = VmcoreInfo::parse(text.as_bytes()).unwrap();
        let e = plan(&t.mem[..], Some(&info), &[(0x400, 0x600)], level(31)).unwrap_err();
        assert!(e.to_string().contains("reading root 0 at "), "{e}");
    }

    #[test]
    fn bad_input_names_what_is_missing() {
        let ranges = [(0, 16)];
        let e = plan(&[0u8; 64][..], None, &ranges, level(31)).unwrap_err();
        assert!(matches!(e, FilterError::NoVmcoreInfo));
        let info = VmcoreInfo::parse(b"OSRELEASE=6.12\nPAGESIZE=4096\nSIZE(page)=64\n").unwrap();
        let e = plan(&[0u8; 64][..], Some(&info), &ranges, level(31)).unwrap_err();
        let FilterError::Layout(m) = &e else {
            panic!("{e}")
        };
        assert!(m.missing.contains(&"OFFSET(page.flags)".to_string()), "{m}");
        let no_vmemmap: String = String::from_utf8_lossy(REAL)
            .lines()
            .filter(|l| !l.starts_with("SYMBOL(vmemmap)") && !l.starts_with("LENGTH(mem_section)"))
            .map(|l| format!("{l}\n"))
            .collect();
        let info = VmcoreInfo::parse(no_vmemmap.as_bytes()).unwrap();
        let e = plan(&[0u8; 64][..], Some(&info), &ranges, level(31)).unwrap_err();
        assert!(matches!(e, FilterError::NoVmemmap { .. }), "{e}");
        assert!(e.to_string().contains("(no LENGTH(mem_section))"), "{e}");
        // The real text, but memory without the kernel's page tables.
        let info = VmcoreInfo::parse(REAL).unwrap();
        let e = plan(&[0u8; 64][..], Some(&info), &ranges, level(31)).unwrap_err();
        assert!(
            matches!(
                e,
                FilterError::PageTables {
                    at: 0x1dc2_c000,
                    ..
                }
            ),
            "{e}"
        );
        let huge = String::from_utf8_lossy(REAL).replace("PAGESIZE=4096", "PAGESIZE=65536");
        let info = VmcoreInfo::parse(huge.as_bytes()).unwrap();
        let e = plan(&[0u8; 64][..], Some(&info), &ranges, level(31)).unwrap_err();
        assert!(
            matches!(e, FilterError::PageSize { found: Some(65536) }),
            "{e}"
        );
    }

    #[test]
    fn levels() {
        assert_eq!(DumpLevel::new(32), None);
        assert_eq!(
            level(31).to_string(),
            "31 (zero, cache, cache-private, user, free)"
        );
        assert_eq!(level(0).to_string(), "0 (nothing left out)");
        assert!(!level(1).needs_struct_pages());
        assert!(level(16).needs_struct_pages());
        assert_eq!(level(31).zero_only(), level(1));
    }

    proptest::proptest! {
        #[test]
        fn exclusions_agree_with_a_frame_set(
            runs in proptest::collection::vec((0u64..300, 0u64..40), 0..12),
            first in 0u64..320,
            count in 1u32..=64,
        ) {
            let set: std::collections::BTreeSet<u64> =
                runs.iter().flat_map(|&(f, n)| f..f + n).collect();
            let e = Exclusions::from_runs(runs.clone());
            proptest::prop_assert_eq!(e.pages(), set.len() as u64);
            for w in e.runs().windows(2) {
                proptest::prop_assert!(w[0].0 + w[0].1 < w[1].0, "joined and sorted");
            }
            for pfn in 0..400 {
                proptest::prop_assert_eq!(e.contains(pfn), set.contains(&pfn));
                proptest::prop_assert_eq!(e.before(pfn), set.range(..pfn).count() as u64);
            }
            let mask = e.mask(Pfn(first), count);
            for i in 0..count {
                proptest::prop_assert_eq!(mask >> i & 1 == 1, set.contains(&(first + u64::from(i))));
            }
            proptest::prop_assert_eq!(mask >> count.min(63) >> u32::from(count == 64), 0);
        }
    }
}

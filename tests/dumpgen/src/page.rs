//! Content of one 4 KiB page of each [`PageKind`].
//!
//! A page's bytes depend only on the dump seed, its page frame number, and the
//! first frame of the run it belongs to (which fixes e.g. a slab's object
//! layout for the whole run, as in a real slab cache). That makes generation
//! embarrassingly parallel and the output independent of the thread count.
//!
//! The generators aim at lz4 ratios like real memory's, not at realism for
//! its own sake: with `lz4 -1`, kernel-like pages compress about 3.3x, text
//! pages about 2x (code 1.4x as real `.text`, strings 2-4x).

use crate::mix::PageKind;
use crate::rng::{derive, Rng};
use crate::text;
use crate::PAGE_SIZE;

/// Seed domains, so that unrelated uses of one (seed, pfn) pair never share a
/// random stream.
const DOMAIN_PAGE: u64 = 1;
const DOMAIN_RUN: u64 = 2;

/// Base of x86-64's direct map of physical memory (`page_offset_base`).
const DIRECT_MAP: u64 = 0xffff_8880_0000_0000;
/// Base of the `struct page` array (`vmemmap_base`).
const VMEMMAP: u64 = 0xffff_ea00_0000_0000;
/// Where kernel text is linked.
const KERNEL_TEXT: u64 = 0xffff_ffff_8100_0000;

/// Where a page sits: the dump seed, its own frame and its run's first frame.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PageCtx {
    pub(crate) seed: u64,
    pub(crate) pfn: u64,
    pub(crate) run_pfn: u64,
}

impl PageCtx {
    fn page_rng(&self) -> Rng {
        Rng::new(derive(self.seed, DOMAIN_PAGE, self.pfn))
    }

    fn run_rng(&self) -> Rng {
        Rng::new(derive(self.seed, DOMAIN_RUN, self.run_pfn))
    }
}

/// Fills `out` (exactly one page) with content of `kind`.
pub(crate) fn fill_page(kind: PageKind, ctx: PageCtx, out: &mut [u8]) {
    debug_assert_eq!(out.len(), PAGE_SIZE);
    match kind {
        PageKind::Zero => out.fill(0),
        PageKind::Random => ctx.page_rng().fill(out),
        PageKind::Kernel => fill_kernel(ctx, out),
        PageKind::Text => text::fill_text(&mut ctx.run_rng(), &mut ctx.page_rng(), out),
    }
}

/// Kernel-like data; which structure a run holds is a property of the run.
fn fill_kernel(ctx: PageCtx, out: &mut [u8]) {
    let mut run = ctx.run_rng();
    let mut rng = ctx.page_rng();
    // x86-64 has at most 52 physical address bits; folding the frame number
    // keeps the address arithmetic below free of overflow for any spec.
    let pfn = ctx.pfn & ((1 << 34) - 1);
    match run.below(10) {
        0..=5 => fill_slab(pfn, &mut run, &mut rng, out),
        6..=7 => fill_struct_pages(pfn, &mut rng, out),
        _ => fill_page_table(&mut rng, out),
    }
}

/// One 8-byte word of a synthetic structure layout.
#[derive(Debug, Clone, Copy)]
enum Field {
    /// Always zero: NULL pointers, padding, unused fields.
    Zero,
    /// A pointer to some object in a nearby direct-map page.
    Ptr,
    /// `list_head.next`; the following word is `list_head.prev`. Objects of a
    /// page are chained to their neighbours, as slab free lists and
    /// per-cache lists are.
    ListNext,
    /// `list_head.prev`, written together with `ListNext`.
    ListPrev,
    /// Constant per layout: an ops-table or function pointer into kernel text.
    Ops(u64),
    /// Constant per layout: flags, magic numbers, enum values.
    Const(u64),
    /// A small counter (refcounts, lengths, states).
    Counter,
    /// A 32-bit identifier or hash, the least compressible field.
    Id,
}

/// Draws a structure layout of `words` 8-byte fields.
fn draw_layout(run: &mut Rng, words: usize, layout: &mut [Field; 64]) {
    let mut i = 0;
    while i < words {
        let f = match run.below(100) {
            0..=29 => Field::Zero,
            30..=44 if i + 1 < words => {
                layout[i] = Field::ListNext;
                layout[i + 1] = Field::ListPrev;
                i += 2;
                continue;
            }
            30..=56 => Field::Ptr,
            57..=66 => Field::Ops(KERNEL_TEXT + (run.below(0x100_0000) & !0xf)),
            67..=76 => {
                let bytes = 1 + run.below(4);
                Field::Const(run.below(1 << (8 * bytes)))
            }
            77..=94 => Field::Counter,
            _ => Field::Id,
        };
        layout[i] = f;
        i += 1;
    }
}

/// A slab page: an array of equal-size objects whose layout is fixed per run.
fn fill_slab(pfn: u64, run: &mut Rng, rng: &mut Rng, out: &mut [u8]) {
    const OBJECT_WORDS: [usize; 7] = [4, 8, 12, 16, 24, 32, 64];
    let words = OBJECT_WORDS[run.below(OBJECT_WORDS.len() as u64) as usize];
    let mut layout = [Field::Zero; 64];
    draw_layout(run, words, &mut layout);
    let obj_size = (words * 8) as u64;
    let page_va = DIRECT_MAP + pfn * PAGE_SIZE as u64;
    let objects = out.len() / (words * 8);
    out.fill(0);
    for (obj, chunk) in out.chunks_exact_mut(words * 8).enumerate() {
        // A free slot in a slab is mostly stale or zero: leave some empty.
        if rng.chance(10) {
            continue;
        }
        let obj = obj as u64;
        for (w, field) in layout[..words].iter().enumerate() {
            let field_va = |o: u64| page_va + o * obj_size + w as u64 * 8;
            let v = match *field {
                Field::Zero => 0,
                Field::Ptr => {
                    let target = pfn.saturating_sub(32) + rng.below(64);
                    DIRECT_MAP + (target << 12) + rng.below(64) * 64
                }
                Field::ListNext => field_va((obj + 1) % objects as u64),
                Field::ListPrev => field_va((obj + objects as u64 - 1) % objects as u64) - 8,
                Field::Ops(p) | Field::Const(p) => p,
                Field::Counter => {
                    let limit = 1 + rng.below(64);
                    rng.below(limit)
                }
                Field::Id => rng.next_u64() & 0xffff_ffff,
            };
            let at = w * 8;
            chunk[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// A page of the `struct page` array: 64 descriptors of 64 bytes.
fn fill_struct_pages(pfn: u64, rng: &mut Rng, out: &mut [u8]) {
    // The frames this page of vmemmap describes.
    let first = pfn * 64;
    for (i, desc) in out.chunks_exact_mut(64).enumerate() {
        let described = first + i as u64;
        let me = VMEMMAP + described * 64;
        let state = rng.below(4);
        let (flags, next, prev, mapping, index, count) = match state {
            // Free (buddy): only the lru list links and a buddy mapcount.
            0 => (
                0x17_ffff_c000_0000,
                me + 64,
                me - 64,
                0,
                0,
                0xffff_ff7f_0000_0000,
            ),
            // Anonymous page: mapping points at an anon_vma with bit 0 set.
            1 => (
                0x17_ffff_c008_0024 | rng.below(4),
                me + 64 * rng.below(16),
                me - 64,
                DIRECT_MAP + (rng.below(1 << 20) << 6) + 1,
                rng.below(1 << 16),
                0x0000_0001_0000_0000,
            ),
            // Page cache page.
            2 => (
                0x17_ffff_c000_2068,
                me + 64,
                VMEMMAP + rng.below(1 << 22) * 64,
                DIRECT_MAP + (rng.below(1 << 20) << 6),
                described & 0xfff,
                0x0000_0002_ffff_ffff,
            ),
            // Slab page.
            _ => (0x17_ffff_c000_0200, 0, 0, 0, 0, 0x0000_0001_ffff_ffff),
        };
        let words = [flags, next, prev, mapping, index, 0, count, 0];
        for (w, v) in desc.chunks_exact_mut(8).zip(words) {
            w.copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// A page-table page: runs of present entries mapping consecutive frames,
/// separated by empty slots.
fn fill_page_table(rng: &mut Rng, out: &mut [u8]) {
    let mut frame = rng.below(1 << 24);
    let mut present = rng.chance(70);
    let mut left = 0;
    let flags = if rng.chance(50) {
        0x8000_0000_0000_0063
    } else {
        0x0000_0000_0000_0067
    };
    for entry in out.chunks_exact_mut(8) {
        if left == 0 {
            present = !present || rng.chance(30);
            left = 1 + rng.below(64);
            frame = rng.below(1 << 24);
        }
        left -= 1;
        let v = if present {
            frame += 1;
            (frame << 12) | flags
        } else {
            0
        };
        entry.copy_from_slice(&v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(kind: PageKind, pfn: u64, run_pfn: u64) -> Vec<u8> {
        let mut out = vec![0xaa; PAGE_SIZE];
        let ctx = PageCtx {
            seed: 1,
            pfn,
            run_pfn,
        };
        fill_page(kind, ctx, &mut out);
        out
    }

    #[test]
    fn zero_is_zero_and_others_are_not() {
        assert!(page(PageKind::Zero, 5, 5).iter().all(|b| *b == 0));
        for kind in [PageKind::Kernel, PageKind::Text, PageKind::Random] {
            for pfn in 0..200 {
                let p = page(kind, pfn, pfn - pfn % 7);
                assert!(p.iter().any(|b| *b != 0), "{kind:?} page {pfn} all zero");
            }
        }
    }

    #[test]
    fn pages_are_deterministic_and_distinct() {
        for kind in [PageKind::Kernel, PageKind::Text, PageKind::Random] {
            assert_eq!(page(kind, 9, 8), page(kind, 9, 8));
            assert_ne!(page(kind, 9, 8), page(kind, 10, 8));
        }
    }

    #[test]
    fn kernel_pages_hold_direct_map_pointers() {
        let mut pointers = 0;
        for pfn in 0..64 {
            let p = page(PageKind::Kernel, pfn, pfn);
            pointers += p
                .chunks_exact(8)
                .filter(|w| w[4..8] == [0x80, 0x88, 0xff, 0xff] || w[5..8] == [0xea, 0xff, 0xff])
                .count();
        }
        assert!(pointers > 64 * 16, "only {pointers} pointers");
    }
}

//! PT_LOAD segments that cover the same physical bytes.
//!
//! Each x86_64 kdump core has them: the kernel text mapping's PT_LOAD
//! repeats bytes of a "System RAM" PT_LOAD. The shared bytes are compared
//! once, a bounded piece at a time, and then read from one segment only.

use kjump_image_format::{PhysAddr, PhysRange};

use super::{ElfError, LoadSegment, Overlap};

/// Bytes of each segment read at a time when comparing an overlap: small
/// enough that the allocator hands the same memory back each time, rather
/// than map fresh pages that fault in one by one.
pub(super) const COMPARE_CHUNK: u64 = 64 << 10;

/// Sorts the segments by address and cuts away from each the bytes that
/// segments before it cover, once those bytes are found equal.
///
/// Every segment before `s` in this order starts at or below `s`'s start, so
/// what they cover of `s` is one run from its start to the highest end so
/// far: the kept pieces that hold that run are compared with `s`, and the
/// rest of `s`, if any, becomes a piece of its own.
pub(super) fn merge_overlaps<F>(
    mut segments: Vec<LoadSegment>,
    read: &mut F,
) -> Result<(Vec<LoadSegment>, Vec<Overlap>), ElfError>
where
    F: FnMut(u64, usize) -> std::io::Result<Vec<u8>>,
{
    // At equal starts the longer segment first: it is kept whole and a
    // segment inside it (the kernel text mapping) disappears.
    segments.sort_by_key(|s| (s.range.start(), std::cmp::Reverse(s.range.end()), s.index));
    let originals = segments.clone();
    let mut kept: Vec<LoadSegment> = Vec::with_capacity(segments.len());
    let mut overlaps: Vec<Overlap> = Vec::new();
    let mut covered_end: Option<u64> = None;
    for s in segments {
        let (start, end) = (s.range.start().0, s.range.end().0);
        let Some(cover) = covered_end.filter(|&c| c > start) else {
            kept.push(s);
            covered_end = Some(end);
            continue;
        };
        let shared_end = cover.min(end);
        let first = kept.partition_point(|p| p.range.end().0 <= start);
        for p in kept[first..]
            .iter()
            .take_while(|p| p.range.start().0 < shared_end)
        {
            let lo = start.max(p.range.start().0);
            let hi = shared_end.min(p.range.end().0);
            if let Some(at) = first_difference(p, &s, lo, hi, read)? {
                let original = |i: usize| {
                    originals
                        .iter()
                        .find(|o| o.index == i)
                        .map_or(s.range, |o| o.range)
                };
                return Err(ElfError::OverlapDiffers {
                    kept: p.index,
                    kept_range: original(p.index),
                    other: s.index,
                    other_range: s.range,
                    at,
                });
            }
            record_overlap(&mut overlaps, p.index, s.index, lo, hi);
        }
        if end > cover {
            let cut = cover - start;
            kept.push(LoadSegment {
                index: s.index,
                range: PhysRange::new(PhysAddr(cover), PhysAddr(end)).map_err(ElfError::Map)?,
                file_offset: s.file_offset + cut.min(s.file_len),
                file_len: s.file_len.saturating_sub(cut),
            });
            covered_end = Some(end);
        }
    }
    Ok((kept, overlaps))
}

/// Adds `[lo, hi)` shared by `kept` and `other`, joined to the previous
/// record when it continues it.
fn record_overlap(overlaps: &mut Vec<Overlap>, kept: usize, other: usize, lo: u64, hi: u64) {
    if let Some(last) = overlaps.last_mut() {
        if last.kept == kept && last.other == other && last.range.end().0 == lo {
            if let Ok(r) = PhysRange::new(last.range.start(), PhysAddr(hi)) {
                last.range = r;
                return;
            }
        }
    }
    if let Ok(range) = PhysRange::new(PhysAddr(lo), PhysAddr(hi)) {
        overlaps.push(Overlap { kept, other, range });
    }
}

/// The first physical address in `[lo, hi)` where `a` and `b` (both
/// covering it) hold different bytes, reading at most [`COMPARE_CHUNK`]
/// of each at a time. Past a segment's file bytes it reads as zero.
fn first_difference<F>(
    a: &LoadSegment,
    b: &LoadSegment,
    lo: u64,
    hi: u64,
    read: &mut F,
) -> Result<Option<u64>, ElfError>
where
    F: FnMut(u64, usize) -> std::io::Result<Vec<u8>>,
{
    let mut at = lo;
    while at < hi {
        let (in_a, in_b) = (at < a.file_end(), at < b.file_end());
        if !in_a && !in_b {
            // Both zero from here on.
            return Ok(None);
        }
        let mut n = (hi - at).min(COMPARE_CHUNK);
        for s in [a, b] {
            if at < s.file_end() {
                n = n.min(s.file_end() - at);
            }
        }
        let mut bytes = |s: &LoadSegment| -> Result<Option<Vec<u8>>, ElfError> {
            if at >= s.file_end() {
                return Ok(None);
            }
            let offset = s.offset_of(at);
            read(offset, n as usize)
                .and_then(|b| {
                    if b.len() as u64 == n {
                        Ok(b)
                    } else {
                        Err(std::io::ErrorKind::UnexpectedEof.into())
                    }
                })
                .map(Some)
                .map_err(|source| ElfError::OverlapRead {
                    index: s.index,
                    offset,
                    phys: at,
                    len: n,
                    source,
                })
        };
        let (x, y) = (bytes(a)?, bytes(b)?);
        // Whole-slice comparisons (memcmp) first: the bytes are almost
        // always equal, and a byte-by-byte search is several times slower.
        let differs = match (&x, &y) {
            (Some(x), Some(y)) if x != y => x.iter().zip(y).position(|(p, q)| p != q),
            (Some(z), None) | (None, Some(z)) => first_nonzero(z),
            _ => None,
        };
        if let Some(i) = differs {
            return Ok(Some(at + i as u64));
        }
        at += n;
    }
    Ok(None)
}

/// The index of the first non-zero byte of `bytes`, a page at a time.
fn first_nonzero(bytes: &[u8]) -> Option<usize> {
    const ZERO: [u8; 4096] = [0; 4096];
    let page = bytes
        .chunks(ZERO.len())
        .position(|c| c != &ZERO[..c.len()])?;
    let from = page * ZERO.len();
    bytes[from..].iter().position(|&v| v != 0).map(|i| from + i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::tests::{header, parse_bytes, phdr};
    use crate::elf::{parse, PT_LOAD, PT_NOTE};

    /// A kdump core's shape: PT_NOTE, the kernel text mapping, RAM. The
    /// text segment's bytes are a copy of the RAM's at `text_paddr`.
    fn kdump_core(text_paddr: u64, text_len: u64, ram_len: u64) -> Vec<u8> {
        let ram_paddr = 0x10_0000;
        let mut f = header(3);
        f.extend(phdr(PT_NOTE, 232, 0, 8, 8));
        f.extend(phdr(PT_LOAD, 0x1000, text_paddr, text_len, text_len));
        let ram_off = 0x1000 + text_len;
        f.extend(phdr(PT_LOAD, ram_off, ram_paddr, ram_len, ram_len));
        f.extend([1, 2, 3, 4, 5, 6, 7, 8]);
        f.resize(ram_off as usize, 0);
        let ram: Vec<u8> = (0..ram_len).map(|i| (i % 251) as u8 + 1).collect();
        let at = (text_paddr - ram_paddr) as usize;
        let text = ram[at..at + text_len as usize].to_vec();
        f[0x1000..0x1000 + text_len as usize].copy_from_slice(&text);
        f.extend(ram);
        f
    }

    #[test]
    fn kernel_text_inside_ram_is_read_from_ram_once() {
        let f = kdump_core(0x20_0000, 0x3_0000, 0x40_0000);
        let c = parse_bytes(&f).unwrap();
        assert_eq!(c.segments.len(), 1);
        assert_eq!(c.segments[0].index, 2);
        assert_eq!(c.segments[0].range.to_string(), "0x100000-0x4fffff");
        assert_eq!(c.map.ranges(), [c.segments[0].range]);
        assert_eq!(c.overlaps.len(), 1);
        let o = c.overlaps[0];
        assert_eq!((o.kept, o.other), (2, 1));
        assert_eq!(o.range.to_string(), "0x200000-0x22ffff");
    }

    #[test]
    fn overlap_that_differs_names_both_segments_and_the_address() {
        let mut f = kdump_core(0x20_0000, 0x3_0000, 0x40_0000);
        f[0x1000 + 0x1_2345] ^= 0x80;
        let e = parse_bytes(&f).unwrap_err();
        assert!(
            matches!(
                e,
                ElfError::OverlapDiffers {
                    kept: 2,
                    other: 1,
                    at: 0x21_2345,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "PT_LOAD 2 (paddr 0x100000-0x4fffff) and PT_LOAD 1 (paddr 0x200000-0x22ffff) \
             overlap in physical memory but differ, first at physical 0x212345"
        );
    }

    #[test]
    fn overlap_is_compared_in_bounded_reads() {
        let f = kdump_core(0x20_0000, 3 * COMPARE_CHUNK + 0x123, 0x80_0000);
        let mut largest = 0;
        let c = parse(f.len() as u64, |off, len| {
            largest = largest.max(len);
            Ok(f[off as usize..off as usize + len].to_vec())
        })
        .unwrap();
        assert_eq!(c.overlaps[0].range.len(), 3 * COMPARE_CHUNK + 0x123);
        assert_eq!(largest as u64, COMPARE_CHUNK);
    }

    #[test]
    fn partial_overlap_keeps_the_rest_of_the_later_segment() {
        // [0x1000, 0x3000) from offset 0x1000; [0x2000, 0x5000) from 0x3000,
        // agreeing on [0x2000, 0x3000).
        let mut f = header(2);
        f.extend(phdr(PT_LOAD, 0x1000, 0x1000, 0x2000, 0x2000));
        f.extend(phdr(PT_LOAD, 0x3000, 0x2000, 0x3000, 0x3000));
        f.resize(0x6000, 0);
        for (i, b) in f[0x1000..0x3000].iter_mut().enumerate() {
            *b = (i / 7) as u8;
        }
        let shared = f[0x2000..0x3000].to_vec();
        f[0x3000..0x4000].copy_from_slice(&shared);
        f[0x4000..0x6000].fill(0xee);
        let c = parse_bytes(&f).unwrap();
        assert_eq!(c.segments.len(), 2);
        let rest = c.segments[1];
        assert_eq!(rest.index, 1);
        assert_eq!(rest.range.to_string(), "0x3000-0x4fff");
        assert_eq!((rest.file_offset, rest.file_len), (0x4000, 0x2000));
        assert_eq!(c.overlaps[0].range.to_string(), "0x2000-0x2fff");
        assert_eq!(c.map.ranges().len(), 2);
        // A differing byte in the shared part is refused.
        f[0x3000 + 0x800] ^= 1;
        let e = parse_bytes(&f).unwrap_err();
        assert!(
            matches!(
                e,
                ElfError::OverlapDiffers {
                    kept: 0,
                    other: 1,
                    at: 0x2800,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn zero_tails_take_part_in_the_comparison() {
        // Segment 0 holds 0x1000 bytes of file and 0x3000 of memory; segment
        // 1 covers its zero tail with file bytes that must be zero.
        let mut f = header(2);
        f.extend(phdr(PT_LOAD, 0x1000, 0x10000, 0x1000, 0x3000));
        f.extend(phdr(PT_LOAD, 0x2000, 0x11000, 0x1000, 0x1000));
        f.resize(0x3000, 0);
        f[0x1000..0x2000].fill(0x55);
        let c = parse_bytes(&f).unwrap();
        assert_eq!(c.segments.len(), 1);
        assert_eq!(c.segments[0].file_len, 0x1000);
        f[0x2000 + 0x10] = 9;
        let e = parse_bytes(&f).unwrap_err();
        assert!(
            matches!(e, ElfError::OverlapDiffers { at: 0x11010, .. }),
            "{e:?}"
        );
    }

    #[test]
    fn huge_zero_overlaps_read_nothing() {
        let mut f = header(3);
        f.extend(phdr(PT_LOAD, 0, 0x1000, 0, 1 << 60));
        f.extend(phdr(PT_LOAD, 0, 0x2000, 0, 1 << 59));
        f.extend(phdr(PT_LOAD, 0, 0x1000, 0, 1 << 61));
        let mut reads = 0;
        let c = parse(f.len() as u64, |off, len| {
            reads += 1;
            Ok(f[off as usize..off as usize + len].to_vec())
        })
        .unwrap();
        // The header and the program headers only.
        assert_eq!(reads, 2);
        assert_eq!(c.segments.len(), 1);
        assert_eq!(c.segments[0].index, 2, "the longest at the same start");
        assert_eq!(c.overlaps.len(), 2);
    }

    #[test]
    fn overlap_read_errors_name_the_segment() {
        let f = kdump_core(0x20_0000, 0x3_0000, 0x40_0000);
        let e = parse(f.len() as u64, |off, len| {
            if off == 0x1000 {
                Err(std::io::ErrorKind::Other.into())
            } else {
                Ok(f[off as usize..off as usize + len].to_vec())
            }
        })
        .unwrap_err();
        assert!(
            matches!(
                e,
                ElfError::OverlapRead {
                    index: 1,
                    offset: 0x1000,
                    phys: 0x20_0000,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    /// A segment of the property test: physical start, memory and file
    /// lengths, and one file byte replaced (position, value) or not.
    type Spec = (u64, u64, u64, Option<(usize, u8)>);
    /// A written segment: paddr, memsz, file offset, filesz.
    type Written = (u64, u64, u64, u64);

    /// A core whose segments copy `mem` (zero past each one's file part),
    /// then have their replacements applied; returns it and each segment's
    /// [`Written`] fields.
    fn oracle_core(mem: &[u8], specs: &[Spec]) -> (Vec<u8>, Vec<Written>) {
        let data_at = (64 + 56 * specs.len()) as u64;
        let mut f = header(specs.len() as u16);
        let (mut data, mut segs) = (Vec::new(), Vec::new());
        for &(paddr, memsz, filesz, swap) in specs {
            let off = data_at + data.len() as u64;
            let mut bytes = mem[paddr as usize..(paddr + filesz) as usize].to_vec();
            if let Some((i, v)) = swap.filter(|_| filesz > 0) {
                bytes[i % filesz as usize] = v;
            }
            data.extend(bytes);
            f.extend(phdr(PT_LOAD, off, paddr, filesz, memsz));
            segs.push((paddr, memsz, off, filesz));
        }
        f.extend(data);
        (f, segs)
    }

    proptest::proptest! {
        /// Against a naive oracle: the core is accepted exactly when every
        /// physical byte has one value in all segments that cover it; then
        /// the kept segments are disjoint, cover the same bytes and read
        /// that value; else the two segments named differ at the address.
        #[test]
        fn merge_matches_a_byte_by_byte_oracle(
            mem in proptest::collection::vec(0u8..3, 300),
            raw in proptest::collection::vec(
                (0u64..200, 1u64..100, 0u64..100, proptest::option::of((0usize..100, 0u8..3))),
                1..6,
            ),
        ) {
            let specs: Vec<Spec> = raw.iter().map(|&(p, m, f, x)| (p, m, f.min(m), x)).collect();
            let (f, segs) = oracle_core(&mem, &specs);
            let byte = |i: usize, a: u64| {
                let (p, _, off, filesz) = segs[i];
                if a < p + filesz { f[(off + a - p) as usize] } else { 0 }
            };
            let covers = |i: usize, a: u64| segs[i].0 <= a && a < segs[i].0 + segs[i].1;
            let agree = (0..300u64).all(|a| {
                let mut vals = (0..segs.len()).filter(|&i| covers(i, a)).map(|i| byte(i, a));
                vals.next().is_none_or(|v| vals.all(|w| w == v))
            });
            match parse_bytes(&f) {
                Ok(c) => {
                    proptest::prop_assert!(agree);
                    for w in c.segments.windows(2) {
                        proptest::prop_assert!(w[0].range.end() <= w[1].range.start());
                    }
                    for a in 0..300u64 {
                        let held: Vec<_> = c.segments.iter().filter(|s| s.range.contains(PhysAddr(a))).collect();
                        let any = (0..segs.len()).find(|&i| covers(i, a));
                        proptest::prop_assert_eq!(held.len(), usize::from(any.is_some()));
                        if let (Some(s), Some(i)) = (held.first(), any) {
                            let v = if a < s.file_end() { f[s.offset_of(a) as usize] } else { 0 };
                            proptest::prop_assert_eq!(v, byte(i, a), "physical {:#x}", a);
                        }
                    }
                }
                Err(ElfError::OverlapDiffers { kept, other, at, .. }) => {
                    proptest::prop_assert!(!agree);
                    proptest::prop_assert!(covers(kept, at) && covers(other, at));
                    proptest::prop_assert_ne!(byte(kept, at), byte(other, at));
                }
                Err(e) => proptest::prop_assert!(false, "unexpected error {e}"),
            }
        }
    }
}

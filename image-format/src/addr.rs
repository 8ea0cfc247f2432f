//! Address newtypes and physical range algebra.
//!
//! A physical address, a page frame number and an offset inside an image are
//! all `u64` underneath; keeping them apart in the type system stops a frame
//! number from being written where a byte address was meant.

use std::fmt;

use crate::layout::PAGE_SIZE;

/// A physical byte address of the saved machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PhysAddr(pub u64);

/// A page frame number: a physical address divided by the page size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pfn(pub u64);

/// A byte offset inside an image file or device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ImageOffset(pub u64);

impl fmt::Display for PhysAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl fmt::Display for Pfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pfn {:#x}", self.0)
    }
}

impl fmt::Display for ImageOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl PhysAddr {
    /// The frame that holds this address.
    pub fn pfn(self) -> Pfn {
        Pfn(self.0 / PAGE_SIZE as u64)
    }

    /// The offset of this address inside its page.
    pub fn page_offset(self) -> usize {
        (self.0 % PAGE_SIZE as u64) as usize
    }
}

impl Pfn {
    /// The first byte of this frame.
    pub fn addr(self) -> PhysAddr {
        PhysAddr(self.0 * PAGE_SIZE as u64)
    }
}

impl ImageOffset {
    /// This offset moved forward by `len` bytes, or `None` on overflow.
    pub fn checked_add(self, len: u64) -> Option<ImageOffset> {
        self.0.checked_add(len).map(ImageOffset)
    }
}

/// A half-open range `[start, end)` of physical bytes. Never empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PhysRange {
    start: PhysAddr,
    end: PhysAddr,
}

/// Why a range could not be built or a set of ranges is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// `start >= end`, or the end does not fit in 64 bits.
    #[error("range {start:#x}-{end:#x} is empty or inverted")]
    Empty {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// The range ends past the last byte a 64-bit address can name.
    #[error("range starting at {start:#x} with length {len:#x} overflows 64 bits")]
    Overflow {
        /// First byte.
        start: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Two ranges share bytes.
    #[error("ranges {a} and {b} overlap")]
    Overlap {
        /// The earlier range.
        a: PhysRange,
        /// The later range.
        b: PhysRange,
    },
    /// Ranges are not sorted by start address.
    #[error("range {b} comes after {a} but starts before it")]
    Unsorted {
        /// The earlier range.
        a: PhysRange,
        /// The later range.
        b: PhysRange,
    },
}

impl PhysRange {
    /// `[start, end)`; fails when empty.
    pub fn new(start: PhysAddr, end: PhysAddr) -> Result<Self, RangeError> {
        if start >= end {
            return Err(RangeError::Empty {
                start: start.0,
                end: end.0,
            });
        }
        Ok(PhysRange { start, end })
    }

    /// `[start, start + len)`; fails when empty or overflowing.
    pub fn from_start_len(start: PhysAddr, len: u64) -> Result<Self, RangeError> {
        let end = start.0.checked_add(len).ok_or(RangeError::Overflow {
            start: start.0,
            len,
        })?;
        PhysRange::new(start, PhysAddr(end))
    }

    /// First byte.
    pub fn start(&self) -> PhysAddr {
        self.start
    }

    /// One past the last byte.
    pub fn end(&self) -> PhysAddr {
        self.end
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.end.0 - self.start.0
    }

    /// Always false: a `PhysRange` is never empty.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// First frame that holds a byte of this range.
    pub fn first_pfn(&self) -> Pfn {
        self.start.pfn()
    }

    /// One past the last frame that holds a byte of this range.
    pub fn end_pfn(&self) -> Pfn {
        Pfn(self.end.0.div_ceil(PAGE_SIZE as u64))
    }

    /// Number of frames that hold at least one byte of this range.
    pub fn page_count(&self) -> u64 {
        self.end_pfn().0 - self.first_pfn().0
    }

    /// Whether `addr` lies inside.
    pub fn contains(&self, addr: PhysAddr) -> bool {
        self.start <= addr && addr < self.end
    }

    /// The bytes both ranges hold, if any.
    pub fn intersect(&self, other: &PhysRange) -> Option<PhysRange> {
        let start = self.start.max(other.start);
        let end = self.end.min(other.end);
        PhysRange::new(start, end).ok()
    }

    /// Whether the two ranges touch without a gap (or overlap).
    pub fn adjacent_or_overlapping(&self, other: &PhysRange) -> bool {
        self.start <= other.end && other.start <= self.end
    }

    /// The parts of `self` not covered by `other` (zero, one or two ranges).
    pub fn subtract(&self, other: &PhysRange) -> Vec<PhysRange> {
        let Some(cut) = self.intersect(other) else {
            return vec![*self];
        };
        let mut out = Vec::with_capacity(2);
        if let Ok(r) = PhysRange::new(self.start, cut.start) {
            out.push(r);
        }
        if let Ok(r) = PhysRange::new(cut.end, self.end) {
            out.push(r);
        }
        out
    }
}

impl fmt::Display for PhysRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}-{:#x}", self.start.0, self.end.0 - 1)
    }
}

/// A sorted set of non-overlapping physical ranges: the memory of one machine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryMap {
    ranges: Vec<PhysRange>,
}

impl MemoryMap {
    /// Ranges exactly as given; they must be sorted and must not overlap.
    /// Adjacent ranges stay separate (an ELF core's segments keep their identity).
    pub fn from_sorted(ranges: Vec<PhysRange>) -> Result<Self, RangeError> {
        for pair in ranges.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if b.start < a.start {
                return Err(RangeError::Unsorted { a, b });
            }
            if b.start < a.end {
                return Err(RangeError::Overlap { a, b });
            }
        }
        Ok(MemoryMap { ranges })
    }

    /// Any ranges: sorted, and overlapping or adjacent ones merged.
    pub fn merged(mut ranges: Vec<PhysRange>) -> Self {
        ranges.sort();
        let mut out: Vec<PhysRange> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match out.last_mut() {
                Some(last) if last.adjacent_or_overlapping(&r) => {
                    last.end = last.end.max(r.end);
                }
                _ => out.push(r),
            }
        }
        MemoryMap { ranges: out }
    }

    /// The ranges, sorted by address.
    pub fn ranges(&self) -> &[PhysRange] {
        &self.ranges
    }

    /// Total bytes covered.
    pub fn total_bytes(&self) -> u64 {
        self.ranges.iter().map(PhysRange::len).sum()
    }

    /// Total frames that hold at least one byte of a range.
    pub fn total_pages(&self) -> u64 {
        self.ranges.iter().map(PhysRange::page_count).sum()
    }

    /// This map with every byte of `other` removed.
    pub fn subtract(&self, other: &MemoryMap) -> MemoryMap {
        let mut cur = self.ranges.clone();
        for cut in &other.ranges {
            cur = cur.iter().flat_map(|r| r.subtract(cut)).collect();
        }
        MemoryMap { ranges: cur }
    }

    /// The bytes present in both maps.
    pub fn intersect(&self, other: &MemoryMap) -> MemoryMap {
        let mut out = Vec::new();
        for a in &self.ranges {
            for b in &other.ranges {
                if let Some(r) = a.intersect(b) {
                    out.push(r);
                }
            }
        }
        MemoryMap::merged(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: u64, e: u64) -> PhysRange {
        PhysRange::new(PhysAddr(s), PhysAddr(e)).unwrap()
    }

    #[test]
    fn page_arithmetic_covers_partial_pages() {
        let x = r(0x1000, 0x9fc00);
        assert_eq!(x.first_pfn(), Pfn(1));
        assert_eq!(x.end_pfn(), Pfn(0xa0));
        assert_eq!(x.page_count(), 0x9f);
        assert_eq!(x.to_string(), "0x1000-0x9fbff");
    }

    #[test]
    fn empty_and_overflowing_ranges_are_rejected() {
        assert!(PhysRange::new(PhysAddr(5), PhysAddr(5)).is_err());
        assert!(PhysRange::from_start_len(PhysAddr(u64::MAX), 2).is_err());
    }

    #[test]
    fn subtract_splits_and_trims() {
        assert_eq!(r(0, 100).subtract(&r(10, 20)), vec![r(0, 10), r(20, 100)]);
        assert_eq!(r(0, 100).subtract(&r(0, 100)), vec![]);
        assert_eq!(r(0, 100).subtract(&r(200, 300)), vec![r(0, 100)]);
        assert_eq!(r(0, 100).subtract(&r(50, 300)), vec![r(0, 50)]);
    }

    #[test]
    fn merged_joins_adjacent_and_overlapping() {
        let m = MemoryMap::merged(vec![r(30, 40), r(0, 10), r(10, 20), r(35, 50)]);
        assert_eq!(m.ranges(), &[r(0, 20), r(30, 50)]);
        assert_eq!(m.total_bytes(), 40);
    }

    #[test]
    fn from_sorted_rejects_overlap_and_disorder() {
        assert!(matches!(
            MemoryMap::from_sorted(vec![r(0, 10), r(5, 20)]),
            Err(RangeError::Overlap { .. })
        ));
        assert!(matches!(
            MemoryMap::from_sorted(vec![r(20, 30), r(0, 10)]),
            Err(RangeError::Unsorted { .. })
        ));
        assert!(MemoryMap::from_sorted(vec![r(0, 10), r(10, 20)]).is_ok());
    }

    #[test]
    fn map_algebra() {
        let a = MemoryMap::merged(vec![r(0, 100), r(200, 300)]);
        let b = MemoryMap::merged(vec![r(50, 250)]);
        assert_eq!(a.subtract(&b).ranges(), &[r(0, 50), r(250, 300)]);
        assert_eq!(a.intersect(&b).ranges(), &[r(50, 100), r(200, 250)]);
    }
}

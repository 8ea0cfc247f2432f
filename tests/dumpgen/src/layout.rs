//! Preset physical memory layouts.

use std::fmt;
use std::str::FromStr;

use crate::{DumpgenError, ElfStyle, Result, SegmentSpec, PAGE_SIZE};

const PAGE: u64 = PAGE_SIZE as u64;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A preset shape of physical memory, scaled to a RAM size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// A QEMU `pc` guest: low RAM `0..0xa0000`, main RAM from 1 MiB up to
    /// `min(size, 3 GiB)`, the rest from 4 GiB, plus the 16 MiB VGA RAM at
    /// `0xfd000000` and the 256 KiB BIOS at `0xfffc0000` that QEMU dumps
    /// too. The 384 KiB below 1 MiB is a hole, as in the guest.
    Qemu,
    /// Five segments of unequal sizes separated by holes from 1 MiB to 1 GiB.
    Holes,
    /// One segment at physical address 0.
    Single,
    /// Boundaries off page alignment: `0x1000..0x9fc00` as in
    /// `/proc/iomem`, a sub-page segment, segments ending and starting
    /// mid-page, one with `filesz < memsz` and one with `filesz == 0`.
    /// Uses [`ElfStyle::Packed`] so file offsets are unaligned too.
    Unaligned,
}

impl Layout {
    /// Every layout.
    pub const ALL: [Layout; 4] = [
        Layout::Qemu,
        Layout::Holes,
        Layout::Single,
        Layout::Unaligned,
    ];

    /// The layout's name, as the command line spells it.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Qemu => "qemu",
            Layout::Holes => "holes",
            Layout::Single => "single",
            Layout::Unaligned => "unaligned",
        }
    }

    /// The [`ElfStyle`] a dump of this layout gets by default.
    pub fn style(self) -> ElfStyle {
        match self {
            Layout::Unaligned => ElfStyle::Packed,
            _ => ElfStyle::Vmcore,
        }
    }

    /// The least RAM size the layout supports.
    pub fn min_size(self) -> u64 {
        match self {
            Layout::Qemu => 2 * MIB,
            Layout::Holes => 128 * PAGE,
            Layout::Single => 1,
            Layout::Unaligned => 4 * MIB,
        }
    }

    /// The segments for `size` bytes of RAM. Except for `qemu` (which loses
    /// the ISA hole and adds VGA and BIOS), their `memsz` add up to `size`.
    pub fn segments(self, size: u64) -> Result<Vec<SegmentSpec>> {
        if size < self.min_size() {
            return Err(DumpgenError::SizeTooSmall {
                layout: self,
                size,
                min: self.min_size(),
            });
        }
        Ok(match self {
            Layout::Qemu => qemu(size),
            Layout::Holes => holes(size),
            Layout::Single => vec![SegmentSpec::new(0, size)],
            Layout::Unaligned => unaligned(size),
        })
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Layout {
    type Err = DumpgenError;

    fn from_str(s: &str) -> Result<Self> {
        Layout::ALL
            .into_iter()
            .find(|l| l.name() == s)
            .ok_or_else(|| DumpgenError::UnknownLayout { name: s.to_owned() })
    }
}

fn qemu(size: u64) -> Vec<SegmentSpec> {
    let main_end = size.min(3 * GIB);
    let mut segs = vec![
        SegmentSpec::new(0, 0xa_0000),
        SegmentSpec::new(MIB, main_end - MIB),
        SegmentSpec::new(0xfd00_0000, 16 * MIB),
        SegmentSpec::new(0xfffc_0000, 256 << 10),
    ];
    if size > 3 * GIB {
        segs.push(SegmentSpec::new(4 * GIB, size - 3 * GIB));
    }
    segs
}

fn holes(size: u64) -> Vec<SegmentSpec> {
    const WEIGHTS: [u64; 5] = [1, 8, 2, 16, 5];
    const GAPS: [u64; 4] = [MIB, 64 * MIB + PAGE, 2 * MIB, GIB];
    let total: u64 = WEIGHTS.iter().sum();
    let mut segs = Vec::new();
    let mut paddr = PAGE;
    let mut left = size;
    for (i, w) in WEIGHTS.iter().enumerate() {
        let len = match GAPS.get(i) {
            Some(_) => (size / total * w) / PAGE * PAGE,
            None => left,
        };
        segs.push(SegmentSpec::new(paddr, len));
        left -= len;
        paddr += len + GAPS.get(i).copied().unwrap_or(0);
    }
    segs
}

fn unaligned(size: u64) -> Vec<SegmentSpec> {
    let low = SegmentSpec::new(0x1000, 0x9_ec00);
    let tiny = SegmentSpec::new(0xf_0010, 0x123);
    let empty_len = 0x1_0000;
    let rest = size - low.memsz - tiny.memsz - empty_len;
    let main = SegmentSpec::new(MIB, (rest / 2) / PAGE * PAGE + 0x7ff);
    let next = (main.paddr + main.memsz).next_multiple_of(PAGE) + MIB + 0x800;
    let partial_len = rest - main.memsz;
    let partial = SegmentSpec::new(next, partial_len).with_filesz(partial_len - 0x3456);
    let last = (next + partial_len).next_multiple_of(PAGE) + 2 * MIB;
    let empty = SegmentSpec::new(last, empty_len).with_filesz(0);
    vec![low, tiny, main, partial, empty]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DumpSpec;

    #[test]
    fn layouts_are_valid_and_sized() {
        for layout in Layout::ALL {
            for size in [layout.min_size(), 64 * MIB + 0x123, 4 * GIB, 5 * GIB + 7] {
                let segs = layout.segments(size).unwrap();
                DumpSpec::new(0, segs.clone()).validate().unwrap();
                let memsz: u64 = segs.iter().map(|s| s.memsz).sum();
                if layout != Layout::Qemu {
                    assert_eq!(memsz, size, "{layout} {size:#x}");
                }
            }
            assert!(matches!(
                layout.segments(layout.min_size() - 1),
                Err(DumpgenError::SizeTooSmall { .. })
            ));
            assert_eq!(layout.name().parse::<Layout>().unwrap(), layout);
        }
    }

    #[test]
    fn qemu_matches_a_4g_guest() {
        let segs = Layout::Qemu.segments(4 * GIB).unwrap();
        let ranges: Vec<(u64, u64)> = segs.iter().map(|s| (s.paddr, s.memsz)).collect();
        assert_eq!(
            ranges,
            [
                (0, 0xa_0000),
                (0x10_0000, 0xc000_0000 - 0x10_0000),
                (0xfd00_0000, 0x100_0000),
                (0xfffc_0000, 0x4_0000),
                (0x1_0000_0000, 0x4000_0000),
            ]
        );
        assert_eq!(Layout::Qemu.segments(64 * MIB).unwrap().len(), 4);
    }

    #[test]
    fn unaligned_has_the_edge_cases() {
        let segs = Layout::Unaligned.segments(64 * MIB).unwrap();
        assert_eq!((segs[0].paddr, segs[0].memsz), (0x1000, 0x9_ec00));
        assert!(segs.iter().any(|s| s.memsz < PAGE));
        assert!(segs.iter().any(|s| s.filesz < s.memsz && s.filesz > 0));
        assert!(segs.iter().any(|s| s.filesz == 0));
        assert!(segs.iter().any(|s| (s.paddr + s.memsz) % PAGE != 0));
        assert!(segs.iter().any(|s| s.paddr % PAGE != 0));
        assert!("bogus".parse::<Layout>().is_err());
    }
}

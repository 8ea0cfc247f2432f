//! The capture and restore kernels' tripwire: before they touch anything,
//! B and R check that the memory their own kernel uses lies inside the
//! `crashkernel=` region (and B's low 64 KiB for the real-mode trampoline).
//!
//! The command line confines them ([`kjump_handoff::plan::CONFINEMENT`] and
//! the `memmap=` words), but a kernel that ignores a word, or a boot path
//! that allocates before the memory map is applied, would put the kernel
//! into the saved RAM: it has already overwritten part of it, and a capture
//! would save its own kernel in place of the saved one's memory. So a
//! kernel that finds itself outside writes nothing and says so.

use std::fmt;

use kjump_image_format::{MemoryMap, PhysAddr, PhysRange};
use kjump_sys::ranges;

use kjump_handoff::plan::{B_LOW_MEMORY, HEADER_RESERVE};

/// The /proc/iomem resources that show where a kernel lives: its RAM and
/// its own image.
pub const CHECKED: [&str; 5] = [
    "System RAM",
    "Kernel code",
    "Kernel rodata",
    "Kernel data",
    "Kernel bss",
];

/// Memory a capture or restore kernel running in `region` may use: the
/// region less its top [`HEADER_RESERVE`], and [`B_LOW_MEMORY`].
pub fn allowed(region: PhysRange) -> MemoryMap {
    let mut ranges = vec![PhysRange::new(
        PhysAddr(B_LOW_MEMORY.0),
        PhysAddr(B_LOW_MEMORY.1),
    )];
    if region.len() > HEADER_RESERVE {
        ranges.push(PhysRange::new(
            region.start(),
            PhysAddr(region.end().0 - HEADER_RESERVE),
        ));
    }
    MemoryMap::merged(ranges.into_iter().filter_map(Result::ok).collect())
}

/// A kernel found running outside its region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Escape {
    /// The /proc/iomem resource ("System RAM", "Kernel code", ...).
    pub resource: &'static str,
    /// Its whole range.
    pub range: PhysRange,
    /// The first part of it outside the allowed memory.
    pub outside: PhysRange,
    /// The region the kernel should run in.
    pub region: PhysRange,
}

impl fmt::Display for Escape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "this kernel runs outside its region {}: its \"{}\" {} reaches {}, outside the memory it may use",
            self.region, self.resource, self.range, self.outside
        )
    }
}

impl std::error::Error for Escape {}

/// Checks /proc/iomem's `text` of the running kernel against `region`:
/// `Ok(None)` when every [`CHECKED`] resource lies inside [`allowed`], else
/// the first one that does not.
pub fn check(text: &str, region: PhysRange) -> Result<Option<Escape>, ranges::RangesError> {
    let allowed = allowed(region);
    for resource in CHECKED {
        if resource != "System RAM" && !text.contains(resource) {
            // Not every kernel lists every section of its image.
            continue;
        }
        let found = ranges::parse_iomem_named("/proc/iomem", text, resource)?;
        for range in found {
            let outside = MemoryMap::merged(vec![range]).subtract(&allowed);
            if let Some(first) = outside.ranges().first() {
                return Ok(Some(Escape {
                    resource,
                    range,
                    outside: *first,
                    region,
                }));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(s: u64, e: u64) -> PhysRange {
        PhysRange::new(PhysAddr(s), PhysAddr(e)).unwrap()
    }

    const REGION: (u64, u64) = (0x6f000000, 0x7f000000);

    /// B's /proc/iomem on a q35 machine with 4 GiB, confined.
    const INSIDE: &str = "00000000-00000fff : Reserved\n\
        00001000-0000ffff : ACPI Tables\n\
        00010000-0001ffff : System RAM\n\
        00020000-0009fbff : ACPI Tables\n\
        000a0000-000bffff : PCI Bus 0000:00\n\
        00100000-6effffff : ACPI Tables\n\
        6f000000-7eefffff : System RAM\n\
        \x20\x2070e00000-71dfffff : Kernel code\n\
        \x20\x2071e00000-7249ffff : Kernel rodata\n\
        \x20\x2072600000-728fffff : Kernel data\n\
        \x20\x2072f00000-733fffff : Kernel bss\n\
        7f000000-7ffdbfff : ACPI Tables\n\
        100000000-17fffffff : ACPI Tables\n";

    #[test]
    fn a_confined_kernel_passes() {
        let region = range(REGION.0, REGION.1);
        assert_eq!(check(INSIDE, region).unwrap(), None);
    }

    #[test]
    fn a_kernel_image_in_saved_ram_is_caught() {
        let region = range(REGION.0, REGION.1);
        let text = INSIDE.replace(
            "  70e00000-71dfffff : Kernel code",
            "128200000-1291fffff : System RAM\n  128200000-1291fffff : Kernel code",
        );
        let e = check(&text, region).unwrap().unwrap();
        assert_eq!(e.resource, "System RAM");
        assert_eq!(e.outside, range(0x128200000, 0x129200000));
        let msg = e.to_string();
        assert!(
            msg.contains("outside its region 0x6f000000-0x7effffff"),
            "{msg}"
        );
        assert!(msg.contains("0x128200000"), "{msg}");
    }

    #[test]
    fn kernel_sections_are_checked_on_their_own() {
        let region = range(REGION.0, REGION.1);
        let text = INSIDE.replace(
            "72f00000-733fffff : Kernel bss",
            "7ef00000-7f0fffff : Kernel bss",
        );
        let e = check(&text, region).unwrap().unwrap();
        assert_eq!(e.resource, "Kernel bss");
        assert_eq!(e.outside, range(0x7ef00000, 0x7f100000));
    }

    #[test]
    fn ram_in_the_header_reserve_or_low_memory_is_caught() {
        let region = range(REGION.0, REGION.1);
        let text = INSIDE.replace(
            "6f000000-7eefffff : System RAM",
            "6f000000-7effffff : System RAM",
        );
        let e = check(&text, region).unwrap().unwrap();
        assert_eq!(e.outside, range(0x7ef00000, 0x7f000000));
        let text = INSIDE.replace(
            "00010000-0001ffff : System RAM",
            "0000b000-0001ffff : System RAM",
        );
        let e = check(&text, region).unwrap().unwrap();
        assert_eq!(e.outside, range(0xb000, 0x10000));
    }

    #[test]
    fn no_ram_is_an_error() {
        let region = range(REGION.0, REGION.1);
        assert!(check("00000000-00000fff : Reserved\n", region).is_err());
    }
}

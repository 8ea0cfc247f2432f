//! Where a confined kernel runs and what it must leave alone: the plan
//! of a jump, from the jumping kernel's /proc/iomem.
//!
//! The capture kernel B runs inside the `crashkernel=` region A reserved.
//! Its command line confines it there (`memmap=exactmap` with the region, a
//! little low memory for its real-mode trampoline, and the region minus its
//! top megabyte, where kexec-tools puts the ELF core header), and describes
//! the rest of A's RAM as reserved (`memmap=SIZE#START`) so that B's kexec
//! identity map covers A's memory for the jump back. `iomem=relaxed` lets B
//! read that memory through /dev/mem. The restore kernel R runs under the
//! same plan, made from the image.
//!
//! The memory map alone does not keep B inside the region: the
//! decompressor's KASLR picks a physical address from the firmware's map
//! and avoids only the first four `memmap=` regions it parses, and a
//! kernel with memory hotplug may hot-add A's RAM that `exactmap` took
//! away. [`CONFINEMENT`] turns both off; B and R still check at their
//! start that they run inside the region.

use kjump_image_format::{MemoryMap, PhysAddr, PhysRange};
use kjump_sys::ranges::{self, RangesError};

/// Low memory the capture kernel takes for its real-mode trampoline.
pub const B_LOW_MEMORY: (u64, u64) = (0x10000, 0x20000);
/// Top of the region kexec-tools keeps for the ELF core header.
pub const HEADER_RESERVE: u64 = 1 << 20;

/// Kernel parameters that keep a capture or restore kernel where its
/// memory map puts it, as kdump's crash kernels have them:
/// - `nokaslr`: the decompressor's KASLR (arch/x86/boot/compressed/kaslr.c)
///   chooses from the firmware memory map kexec passes and avoids only the
///   first four `memmap=` regions (MAX_MEMMAP_REGIONS), so with five or
///   more saved ranges it can decompress the kernel into A's RAM. Without
///   KASLR a relocatable kernel runs where kexec-tools loaded it, inside
///   `--mem-min`/`--mem-max`, which reserve its whole `init_size`.
/// - `acpi_no_memhotplug` and `memhp_default_state=offline`: a kernel with
///   ACPI memory hotplug would add, and online, the memory devices that
///   `memmap=exactmap` took away, which are A's RAM.
///
/// Unknown to a kernel built without the feature, a word reaches /init as
/// an argument or an environment variable, which kjump's /init ignores.
pub const CONFINEMENT: [&str; 3] = [
    "nokaslr",
    "acpi_no_memhotplug",
    "memhp_default_state=offline",
];

/// The memory layout of a jump, derived from A's /proc/iomem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JumpPlan {
    /// The `crashkernel=` region B runs in.
    pub region: PhysRange,
    /// A's RAM that B must not touch and the capture saves: System RAM minus
    /// the region and B's low memory.
    pub saved: MemoryMap,
}

fn range(start: u64, end: u64) -> PhysRange {
    // Callers pass start < end.
    PhysRange::new(PhysAddr(start), PhysAddr(end)).unwrap_or_else(|_| unreachable!("empty range"))
}

/// The first RAM in /proc/iomem's `text` that a driver added: "System
/// RAM" followed by the driver's name, at any depth.
fn driver_ram(text: &str) -> Option<PlanError> {
    let name = text.lines().find_map(|line| {
        let (_, name) = line.split_once(" : ")?;
        let name = name.trim();
        name.starts_with("System RAM (").then_some(name)
    })?;
    // The lines named so parse, or the whole map is refused as unreadable.
    match ranges::parse_iomem_named("/proc/iomem", text, name) {
        Ok(found) => Some(PlanError::DriverRam {
            range: found[0],
            name: name.to_string(),
        }),
        Err(e) => Some(PlanError::Ram(e)),
    }
}

/// Why no jump can be planned on this machine.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// No `crashkernel=` region.
    #[error("no crashkernel region is reserved (\"Crash kernel\" missing from /proc/iomem): boot with crashkernel=256M")]
    NoRegion,
    /// A region too small for a kernel.
    #[error("the crashkernel region {0} is too small for a capture kernel")]
    SmallRegion(PhysRange),
    /// /proc/iomem lists no usable RAM.
    #[error(transparent)]
    Ram(#[from] RangesError),
    /// RAM a driver added ("System RAM (virtio_mem)", "System RAM (kmem)").
    #[error(
        "{range} is {name:?} in /proc/iomem: RAM that a driver (virtio-mem, dax/kmem) \
         plugged in may be absent or elsewhere at the next boot, so kjump can neither \
         restore it nor leave it out; unplug it (or take it offline and remove it) before hibernating"
    )]
    DriverRam {
        /// Where.
        range: PhysRange,
        /// Its name in /proc/iomem.
        name: String,
    },
}

impl JumpPlan {
    /// Derives the plan from /proc/iomem's text.
    pub fn from_iomem(text: &str) -> Result<JumpPlan, PlanError> {
        let crash = ranges::parse_iomem_named("/proc/iomem", text, "Crash kernel")
            .map_err(|_| PlanError::NoRegion)?;
        let region = crash[0];
        if region.len() <= 2 * HEADER_RESERVE {
            return Err(PlanError::SmallRegion(region));
        }
        if let Some(e) = driver_ram(text) {
            return Err(e);
        }
        let ram = MemoryMap::merged(ranges::parse_iomem("/proc/iomem", text)?);
        let taken = MemoryMap::merged(vec![region, range(B_LOW_MEMORY.0, B_LOW_MEMORY.1)]);
        Ok(JumpPlan {
            region,
            saved: ram.subtract(&taken),
        })
    }

    /// The capture kernel's memory map and confinement arguments.
    pub fn memmap_args(&self) -> Vec<String> {
        let r = self.region;
        let mut args = vec![
            "memmap=exactmap".to_string(),
            format!(
                "memmap={:#x}@{:#x}",
                B_LOW_MEMORY.1 - B_LOW_MEMORY.0,
                B_LOW_MEMORY.0
            ),
            format!("memmap={:#x}@{:#x}", r.len() - HEADER_RESERVE, r.start().0),
        ];
        for s in self.saved.ranges() {
            args.push(format!("memmap={:#x}#{:#x}", s.len(), s.start().0));
        }
        args.push("iomem=relaxed".into());
        args.extend(CONFINEMENT.iter().map(|w| w.to_string()));
        args
    }

    /// The saved ranges as a list with inclusive ends, for the tests to
    /// compare plans (feature `test-hooks`).
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn ram_list(&self) -> String {
        let parts: Vec<String> = self
            .saved
            .ranges()
            .iter()
            .map(ToString::to_string)
            .collect();
        parts.join(",")
    }

    /// B's low memory, for its real-mode trampoline, as a range.
    pub fn low_memory() -> PhysRange {
        range(B_LOW_MEMORY.0, B_LOW_MEMORY.1)
    }
}

/// The capture (or restore) kernel's whole command line: the running
/// kernel's console settings, the confinement, a panic timeout so a
/// failing kernel restarts the machine, and last the user's `extra` words
/// (`--append`), which can override any of them.
pub fn capture_cmdline(plan: &JumpPlan, a_cmdline: &str, extra: &[String]) -> String {
    let mut args: Vec<String> = a_cmdline
        .split_ascii_whitespace()
        .filter(|w| w.starts_with("console=") || w.starts_with("earlyprintk="))
        .map(String::from)
        .collect();
    args.extend(plan.memmap_args());
    args.push("panic=10".into());
    args.extend(extra.iter().cloned());
    args.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const IOMEM: &str = "00000000-00000fff : Reserved\n00001000-0009fbff : System RAM\n\
        000a0000-000fffff : Reserved\n00100000-3ffdffff : System RAM\n  \
        01000000-01ffffff : Kernel code\n  2f000000-3effffff : Crash kernel\n\
        3ffe0000-3fffffff : Reserved\n";

    #[test]
    fn plan_excludes_the_region_and_low_memory() {
        let p = JumpPlan::from_iomem(IOMEM).unwrap();
        assert_eq!(p.region.to_string(), "0x2f000000-0x3effffff");
        assert_eq!(
            p.ram_list(),
            "0x1000-0xffff,0x20000-0x9fbff,0x100000-0x2effffff,0x3f000000-0x3ffdffff"
        );
        assert_eq!(
            p.memmap_args(),
            [
                "memmap=exactmap",
                "memmap=0x10000@0x10000",
                "memmap=0xff00000@0x2f000000",
                "memmap=0xf000#0x1000",
                "memmap=0x7fc00#0x20000",
                "memmap=0x2ef00000#0x100000",
                "memmap=0xfe0000#0x3f000000",
                "iomem=relaxed",
                "nokaslr",
                "acpi_no_memhotplug",
                "memhp_default_state=offline",
            ]
        );
    }

    #[test]
    fn ram_a_driver_added_is_refused_with_its_name() {
        for name in ["System RAM (virtio_mem)", "System RAM (kmem)"] {
            let text = format!("{IOMEM}140000000-17fffffff : {name}\n");
            let e = JumpPlan::from_iomem(&text).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!(
                    "0x140000000-0x17fffffff is {name:?} in /proc/iomem: RAM that a driver"
                )),
                "{e}"
            );
        }
        // Nested under a device's resource, as dax regions are.
        let text = format!(
            "{IOMEM}140000000-17fffffff : dax0.0\n  140000000-17fffffff : System RAM (kmem)\n"
        );
        assert!(matches!(
            JumpPlan::from_iomem(&text),
            Err(PlanError::DriverRam { .. })
        ));
    }

    #[test]
    fn cmdline_keeps_only_the_console() {
        let p = JumpPlan::from_iomem(IOMEM).unwrap();
        let c = capture_cmdline(
            &p,
            "root=/dev/vda ro console=ttyS0,115200 quiet crashkernel=256M",
            &[],
        );
        assert!(
            c.starts_with("console=ttyS0,115200 memmap=exactmap "),
            "{c}"
        );
        assert!(
            c.ends_with(
                " iomem=relaxed nokaslr acpi_no_memhotplug memhp_default_state=offline panic=10"
            ),
            "{c}"
        );
        assert!(!c.contains("root="), "{c}");
        let c = capture_cmdline(
            &p,
            "console=ttyS0",
            &["console=tty0".into(), "nomodeset".into()],
        );
        assert!(c.ends_with(" panic=10 console=tty0 nomodeset"), "{c}");
    }

    #[test]
    fn missing_region_is_explained() {
        let e = JumpPlan::from_iomem("00001000-0009fbff : System RAM\n").unwrap_err();
        assert!(e.to_string().contains("boot with crashkernel=256M"), "{e}");
    }
}

//! `kjump hibernate`, on the running kernel A: preflight, the capture
//! initramfs, the capture kernel's command line, the kexec load and the jump.
//!
//! The capture kernel B runs inside the `crashkernel=` region A reserved.
//! Its command line confines it there (`memmap=exactmap` with the region, a
//! little low memory for its real-mode trampoline, and the region minus its
//! top megabyte, where kexec-tools puts the ELF core header), and describes
//! the rest of A's RAM as reserved (`memmap=SIZE#START`) so that B's kexec
//! identity map covers A's memory for the jump back. `iomem=relaxed` lets B
//! read that memory through /dev/mem.
//!
//! The memory map alone does not keep B inside the region: the
//! decompressor's KASLR picks a physical address from the firmware's map
//! and avoids only the first four `memmap=` regions it parses, and a
//! kernel with memory hotplug may hot-add A's RAM that `exactmap` took
//! away. [`CONFINEMENT`] turns both off; B and R still check at their
//! start that they run inside the region ([`crate::confine`]).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use kjump_image_format::{MemoryMap, Metadata, PhysAddr, PhysRange, Placement};
use kjump_sys::freemem::{free_memory, MemInfo};
use kjump_sys::kexec;
use kjump_sys::swap::{shortfall, SwapArea};
use kjump_sys::{ranges, Place, Target};

use crate::mailbox::{Mailbox, Report};
use crate::manifest::{Manifest, Mode};

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

/// The kernel series kjump's VM tests run the whole cycle on
/// (KERNELS.md). Other kernels are not refused: the preflight probes
/// what it can and says so.
pub const TESTED_SERIES: [&str; 2] = ["6.12", "7.2"];

/// The `major.minor` series of a kernel release ("7.2.13-amd64" -> "7.2").
pub fn series(release: &str) -> Option<String> {
    let mut parts = release.split(['.', '-', '+', ' ']);
    let major = parts.next().filter(|p| p.parse::<u32>().is_ok())?;
    let minor = parts.next().filter(|p| p.parse::<u32>().is_ok())?;
    Some(format!("{major}.{minor}"))
}

/// What to tell the user of a kernel release outside [`TESTED_SERIES`], or
/// `None` on a tested one.
pub fn untested_note(release: &str) -> Option<String> {
    if series(release).is_some_and(|s| TESTED_SERIES.contains(&s.as_str())) {
        return None;
    }
    Some(format!(
        "note: kjump was tested on Linux {} only, and this kernel is {release}: hibernation goes ahead, but whether this kernel can be jumped back into is unknown; `kjump selftest` tries that on its own, before an image depends on it (KERNELS.md)",
        TESTED_SERIES.join(" and ")
    ))
}

/// Why hibernation cannot start, or failed.
#[derive(Debug, thiserror::Error)]
pub enum HibernateError {
    /// Something the jump needs is missing or wrong; nothing was changed.
    #[error("preflight: {0}")]
    Preflight(String),
    /// Reading a system file failed.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// kexec-tools failed to load the capture kernel.
    #[error("loading the capture kernel: {0}")]
    Load(String),
    /// The jump failed.
    #[error(transparent)]
    Jump(#[from] kexec::KexecError),
}

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

impl JumpPlan {
    /// Derives the plan from /proc/iomem's text.
    pub fn from_iomem(text: &str) -> Result<JumpPlan, HibernateError> {
        let pre = |e: ranges::RangesError| HibernateError::Preflight(e.to_string());
        let crash = ranges::parse_iomem_named("/proc/iomem", text, "Crash kernel").map_err(|_| {
            HibernateError::Preflight(
                "no crashkernel region is reserved (\"Crash kernel\" missing from /proc/iomem): boot with crashkernel=256M".into(),
            )
        })?;
        let region = crash[0];
        if region.len() <= 2 * HEADER_RESERVE {
            return Err(HibernateError::Preflight(format!(
                "the crashkernel region {region} is too small for a capture kernel"
            )));
        }
        let ram = MemoryMap::merged(ranges::parse_iomem("/proc/iomem", text).map_err(pre)?);
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

    /// The saved ranges as a manifest `ram=` value (inclusive ends).
    pub fn ram_list(&self) -> String {
        let parts: Vec<String> = self
            .saved
            .ranges()
            .iter()
            .map(|r| format!("{:#x}-{:#x}", r.start().0, r.end().0 - 1))
            .collect();
        parts.join(",")
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

/// How to hibernate.
#[derive(Debug)]
pub struct HibernateOptions {
    /// Where the image goes, as both kernels name it.
    pub target: PathBuf,
    /// The capture kernel (bzImage).
    pub kernel: PathBuf,
    /// What B does after the commit.
    pub mode: Mode,
    /// kexec-tools' `kexec`.
    pub kexec: PathBuf,
    /// Extra files for the capture initramfs (e.g. busybox for a rescue shell).
    pub extra: Vec<crate::ExtraFile>,
    /// Only print what would be done.
    pub dry_run: bool,
    /// Drop caches and zero free RAM first, for a smaller image.
    pub free_memory: bool,
    /// Encrypt the image with this key file or passphrase; it reaches the
    /// capture kernel in RAM only.
    pub encrypt: Option<kjump_image_format::Secret>,
    /// More words for the capture kernel's command line.
    pub append: Vec<String>,
}

fn read(path: &str) -> Result<String, HibernateError> {
    std::fs::read_to_string(path).map_err(|source| HibernateError::Read {
        path: path.into(),
        source,
    })
}

/// Refuses early, with the reason, what would make the jump fail later;
/// returns where the image will go.
fn preflight(opts: &HibernateOptions, plan: &JumpPlan) -> Result<Place, HibernateError> {
    let fail = |s: String| Err(HibernateError::Preflight(s));
    if let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/kexec_load_disabled") {
        if v.trim() == "1" {
            return fail("kexec_load is disabled (sysctl kernel.kexec_load_disabled=1, which cannot be undone until reboot)".into());
        }
    }
    if let Ok(v) = std::fs::read_to_string("/sys/kernel/security/lockdown") {
        if !v.contains("[none]") {
            return fail(format!("the kernel is locked down ({}): kexec_load and /dev/mem are refused (Secure Boot?)", v.trim()));
        }
    }
    let release = read("/proc/sys/kernel/osrelease")?;
    if !probe_kexec_jump(opts.dry_run)? {
        let config = format!("/boot/config-{}", release.trim());
        if let Ok(c) = std::fs::read_to_string(&config) {
            if !c.lines().any(|l| l == "CONFIG_KEXEC_JUMP=y") {
                return fail(format!(
                    "{config}: the running kernel lacks CONFIG_KEXEC_JUMP"
                ));
            }
        }
    }
    if let Some(note) = untested_note(release.trim()) {
        println!("{note}");
    }
    if !opts.kernel.is_file() {
        return fail(format!(
            "capture kernel {} not found",
            opts.kernel.display()
        ));
    }
    if !opts.kexec.is_file() && which(&opts.kexec).is_none() {
        return fail(format!(
            "{} not found: install kexec-tools",
            opts.kexec.display()
        ));
    }
    let metadata = Metadata {
        ranges: plan.saved.clone(),
        ..Metadata::default()
    };
    let worst = kjump_writer::worst_case_len(&metadata).unwrap_or(u64::MAX);
    let (place, capacity) = target_place(opts, worst)?;
    match capacity {
        Some(capacity) if capacity < worst => fail(format!(
            "target {} holds {capacity} bytes, but the image of {} bytes of RAM can take up to {worst}",
            place.describe(),
            plan.saved.total_bytes()
        )),
        _ => Ok(place),
    }
}

/// Whether this kernel takes a preserve-context kexec load, found by
/// loading one (and unloading it) rather than from its version or a
/// /boot/config that may be missing or stale; the error says why not.
/// Returns `false` without probing on a dry run while a kexec image is
/// loaded: the probe would replace it, and a dry run changes nothing.
fn probe_kexec_jump(dry_run: bool) -> Result<bool, HibernateError> {
    let loaded = std::fs::read_to_string("/sys/kernel/kexec_loaded").is_ok_and(|v| v.trim() == "1");
    if dry_run && loaded {
        return Ok(false);
    }
    kexec::probe_preserve_context()
        .map_err(|e| HibernateError::Preflight(crate::error_chain(&e)))?;
    Ok(true)
}

/// Where the image goes and how many bytes it may take there. A regular
/// file becomes a file target: allocated (on a dry run only when it is
/// one already) and written by the capture kernel through its extents on
/// the raw device. A block device takes the image whole, or after the
/// header of a swap area that is not in use.
fn target_place(
    opts: &HibernateOptions,
    worst: u64,
) -> Result<(Place, Option<u64>), HibernateError> {
    let pre = |e: &dyn std::error::Error| HibernateError::Preflight(crate::error_chain(e));
    let is_dev = std::fs::metadata(&opts.target)
        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()));
    if !is_dev {
        let place = if opts.dry_run {
            Place::locate(&opts.target, None).map_err(|e| pre(&e))?
        } else {
            kjump_sys::place::prepare_file(&opts.target, worst).map_err(|e| pre(&e))?
        };
        if place.placement == Placement::Whole {
            // Dry run on a file not yet prepared: the real run allocates it.
            println!(
                "file target {}: the real run allocates {worst} bytes for it",
                opts.target.display()
            );
            return Ok((place, None));
        }
        let room = place.reader().map_err(|e| pre(&e))?.len();
        return Ok((place, Some(room)));
    }
    let place = Place::locate(&opts.target, None).map_err(|e| pre(&e))?;
    let size = match SwapArea::of(&place).filter(SwapArea::is_active) {
        // The kernel holds it: no exclusive open until it is swapped off.
        Some(swap) => {
            check_swapoff_fits(&swap)?;
            kjump_sys::place::device_size(&opts.target).map_err(|e| pre(&e))?
        }
        None => Target::open_check(&opts.target)
            .map_err(|e| pre(&e))?
            .unwrap_or(0),
    };
    let room = place.placement.segments(size).iter().map(|s| s.len).sum();
    Ok((place, Some(room)))
}

/// An active swap area can take the image once it is swapped off, which
/// needs room in RAM for every page swapped out to it.
fn check_swapoff_fits(swap: &SwapArea) -> Result<(), HibernateError> {
    let used = swap.used_bytes().unwrap_or(0);
    let mem = MemInfo::read().map_err(|e| HibernateError::Preflight(crate::error_chain(&e)))?;
    match shortfall(used, &mem) {
        None => Ok(()),
        Some(missing) => Err(HibernateError::Preflight(format!(
            "{} is an active swap area holding {} MiB of swapped-out pages; swapping it off needs that much RAM and a margin for the kernel, and {} MiB is available: {} MiB is missing (close programs, or hibernate to another target)",
            swap.device().display(),
            used >> 20,
            mem.available >> 20,
            missing.div_ceil(1 << 20)
        ))),
    }
}

/// Before the jump: swap off an active swap target and, when asked, free
/// memory. Returns whether the target was swapped off (and so is swapped on
/// again afterwards).
fn prepare_ram(opts: &HibernateOptions, place: &Place) -> Result<bool, HibernateError> {
    let active = SwapArea::of(place).filter(SwapArea::is_active);
    if let Some(swap) = &active {
        let used = swap.used_bytes().unwrap_or(0);
        if opts.dry_run {
            println!(
                "would swap off {} ({} MiB in use) and swap it on again after the resume",
                place.holder.display(),
                used >> 20
            );
        } else {
            swap.swap_off()
                .map_err(|e| HibernateError::Preflight(crate::error_chain(&e)))?;
            println!(
                "swapped off {} ({} MiB read back into RAM); it is swapped on again after the resume",
                place.holder.display(),
                used >> 20
            );
        }
    }
    if opts.free_memory {
        if opts.dry_run {
            println!("would drop the page cache and zero free RAM (--free-memory)");
        } else {
            match free_memory() {
                Ok(report) => report.lines().iter().for_each(|l| println!("{l}")),
                Err(e) => {
                    if let Some(swap) = &active {
                        let _ = swap.swap_on();
                    }
                    return Err(HibernateError::Preflight(crate::error_chain(&e)));
                }
            }
        }
    }
    Ok(active.is_some() && !opts.dry_run)
}

/// After this kernel runs again: a swap area it swapped off is given back
/// (its signature restored if the capture left it held) and swapped on,
/// unless it holds a checkpoint image that a later boot may still resume.
fn give_swap_back(place: &Place, mode: Mode, image: &Result<&'static str, String>) -> String {
    let dev = place.holder.display();
    if mode == Mode::Checkpoint && matches!(image, Ok("committed")) {
        return format!(
            "{dev} stays swapped off: it holds the checkpoint image (kjump discard {dev} gives it back)"
        );
    }
    let back = SwapArea::new(&place.holder).return_to_swap();
    match back {
        Ok(()) => format!("{dev} is swapped on again"),
        Err(e) => format!(
            "{dev} could not be swapped on again: {}",
            crate::error_chain(&e)
        ),
    }
}

fn which(name: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// What `hibernate` found when this kernel ran again.
#[derive(Debug)]
pub struct Return {
    /// Wall time away.
    pub away: std::time::Duration,
    /// The state of the image this hibernation wrote ("committed" after a
    /// checkpoint, "consumed" after a resume from disk), or why there is none:
    /// the capture kernel failed and jumped back without saving.
    pub image: Result<&'static str, String>,
    /// What else happened on the way back, for the user.
    pub notes: Vec<String>,
    /// Why the capture kernel jumped back without saving, as it reported
    /// it through the mailbox.
    pub report: Option<Report>,
}

/// Whether the target holds the image this hibernation asked for (the
/// uuid it gave the capture kernel), and its state. Only the superblock is
/// read: it is all an encrypted image shows without its key, and its
/// checksum and uuid are enough to tell the capture's outcome.
fn saved_image(place: &Place, uuid: &[u8; 16]) -> Result<&'static str, String> {
    let place = Place::locate(&place.holder, place.map_at()).map_err(|e| crate::error_chain(&e))?;
    let file = place.reader().map_err(|e| crate::error_chain(&e))?;
    let sb =
        kjump_image_format::reader::read_superblock(&file).map_err(|e| crate::error_chain(&e))?;
    if sb.uuid != *uuid {
        return Err("the image on the target is from another hibernation".into());
    }
    if sb.state == kjump_image_format::ImageState::Writing {
        return Err(kjump_image_format::FormatError::NotCommitted {
            state: sb.state.name(),
        }
        .to_string());
    }
    Ok(sb.state.name())
}

/// Hibernates: returns when this kernel runs again (or `None` for a dry
/// run).
///
/// The secret of an encrypted image is taken out of `opts` and wiped as
/// soon as the capture kernel is loaded with it: this kernel's memory,
/// which the image saves, keeps no copy of it.
pub fn hibernate(opts: &mut HibernateOptions) -> Result<Option<Return>, HibernateError> {
    let secret = opts.encrypt.take();
    let opts = &*opts;
    let plan = JumpPlan::from_iomem(&read("/proc/iomem")?)?;
    let place = preflight(opts, &plan)?;
    let a_cmdline = read("/proc/cmdline")?;
    let cmdline = capture_cmdline(&plan, &a_cmdline, &opts.append);
    let uuid = kjump_sys::random::uuid();
    let swap_active = SwapArea::of(&place).is_some_and(|s| s.is_active());
    // Without a mailbox the capture kernel can still fail safely; only its
    // reason then stays on its console.
    let mut mailbox = match Mailbox::open(&plan.saved) {
        Ok(m) => Some(m),
        Err(e) => {
            println!("no mailbox for the capture kernel's report ({e}): if it fails, its console says why");
            None
        }
    };
    let manifest = Manifest {
        encrypt: secret.as_ref().map(|s| match s {
            kjump_image_format::Secret::KeyFile(_) => crate::manifest::SecretKind::KeyFile,
            kjump_image_format::Secret::Passphrase(_) => crate::manifest::SecretKind::Passphrase,
        }),
        key_source: crate::manifest::KeySource::Initramfs,
        tty: None,
        image_uuid: Some(uuid),
        swap_was_active: swap_active,
        mailbox: mailbox.as_ref().map(Mailbox::address),
        mode: opts.mode,
        target: crate::kernel_name(&place.holder),
        target_offset: place.map_at(),
        ram: plan.ram_list(),
        region: format!(
            "{:#x}-{:#x}",
            plan.region.start().0,
            plan.region.end().0 - 1
        ),
        kernel_release: read("/proc/sys/kernel/osrelease")?.trim().to_string(),
        started_ns: kjump_sys::clock::now_ns(),
        filesystems: crate::fsguard::mounted_block_devices(&read("/proc/self/mountinfo")?)
            .iter()
            .map(|d| crate::kernel_name(Path::new(d)))
            .collect(),
    };
    let load = crate::load::KexecLoad {
        kexec: &opts.kexec,
        flag: "--load-preserve-context",
        region: plan.region,
        kernel: &opts.kernel,
        cmdline,
    };
    println!("capture kernel region: {}", plan.region);
    println!(
        "RAM to save: {} bytes in {} ranges",
        plan.saved.total_bytes(),
        plan.saved.ranges().len()
    );
    println!("manifest:\n{}", manifest.encode().trim_end());
    println!("{}", load.shown());
    if opts.dry_run {
        prepare_ram(opts, &place)?;
        return Ok(None);
    }
    let bytes = secret.as_ref().map(|s| match s {
        kjump_image_format::Secret::KeyFile(b) | kjump_image_format::Secret::Passphrase(b) => {
            b.as_slice()
        }
    });
    let loaded = load.run(&manifest, &opts.extra, bytes);
    drop(secret);
    loaded.map_err(HibernateError::Load)?;
    // After the load, so that its memory is taken while the swap area can
    // still absorb the pressure: swap off, free memory, jump.
    let swapped_off = match prepare_ram(opts, &place) {
        Ok(off) => off,
        Err(e) => {
            load.unload();
            return Err(e);
        }
    };
    // The wall clock: the monotonic clock stands still while this kernel is
    // away, and the kernel sets the wall clock from the RTC when it resumes.
    let left = SystemTime::now();
    if let Err(e) = kexec::jump() {
        load.unload();
        if swapped_off {
            let _ = SwapArea::new(&place.holder).swap_on();
        }
        return Err(e.into());
    }
    let away = SystemTime::now().duration_since(left).unwrap_or_default();
    // The capture kernel stays loaded after it jumped back, holding its
    // segments' pages (tens of MiB, and the secret's initramfs): give them
    // back, as a resume or the next hibernation needs none of it.
    load.unload();
    let report = mailbox.as_mut().and_then(Mailbox::take);
    let mut image = saved_image(&place, &uuid);
    let mut notes = Vec::new();
    if opts.mode == Mode::Suspend && matches!(image, Ok("committed")) {
        // The capture kernel woke from suspend to RAM and jumped back: this
        // kernel runs on, so the image on disk is stale from now on.
        match kjump_restorer::consume(&place) {
            Ok(_) => {
                image = Ok("consumed");
                notes.push(
                    "woke from suspend to RAM: the disk image is marked consumed, as this kernel runs on"
                        .into(),
                );
            }
            Err(e) => notes.push(format!(
                "woke from suspend to RAM, but marking the disk image consumed failed: {} (run kjump discard before the next boot)",
                crate::error_chain(&e)
            )),
        }
    }
    if swapped_off {
        notes.push(give_swap_back(&place, opts.mode, &image));
    }
    Ok(Some(Return {
        away,
        image,
        notes,
        report,
    }))
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
    fn series_of_kernel_releases() {
        assert_eq!(series("6.12.117").as_deref(), Some("6.12"));
        assert_eq!(series("7.2.13-amd64").as_deref(), Some("7.2"));
        assert_eq!(
            series("6.12.0-124.8.1.el10_1.x86_64").as_deref(),
            Some("6.12")
        );
        assert_eq!(series("7.0-rc3").as_deref(), Some("7.0"));
        assert_eq!(series("6.18+deb14-amd64").as_deref(), Some("6.18"));
        assert_eq!(series("linux"), None);
        assert!(untested_note("6.12.117").is_none());
        assert!(untested_note("7.2.13-amd64").is_none());
        let note = untested_note("6.19.4-200.fc43.x86_64").unwrap();
        assert!(
            note.contains("Linux 6.12 and 7.2") && note.contains("6.19.4-200.fc43.x86_64"),
            "{note}"
        );
        assert!(note.contains("kjump selftest"), "{note}");
    }

    #[test]
    fn missing_region_is_explained() {
        let e = JumpPlan::from_iomem("00001000-0009fbff : System RAM\n").unwrap_err();
        assert!(e.to_string().contains("boot with crashkernel=256M"), "{e}");
    }
}

//! What `kjump hibernate` checks before it changes anything: that the
//! kernel can kexec-jump, that the capture kernel and kexec-tools are
//! there, that the capture kernel can read every mounted filesystem for
//! the stale-filesystem guard, and that the target can take the
//! worst-case image.

use std::path::{Path, PathBuf};

use kjump_handoff::fsguard::{self, UnguardedMounts};
use kjump_handoff::plan::{JumpPlan, PlanError};
use kjump_image_format::{
    chunk_count, worst_case_len, Kdf, Layout, MemoryMap, Metadata, MetadataSection, Placement,
};
use kjump_restorer::budget::{RegionTooSmall, RestoreMemory};
use kjump_sys::freemem::{FreeMemError, MemInfo};
use kjump_sys::kexec::{self, KexecError};
use kjump_sys::swap::{shortfall, SwapArea};
use kjump_sys::{Place, PlaceError, Target, TargetError};

/// What the preflight checks: the files `kjump hibernate` was given.
#[derive(Clone, Copy, Debug)]
pub struct Given<'a> {
    /// Where the image goes.
    pub target: &'a Path,
    /// The capture kernel.
    pub kernel: &'a Path,
    /// kexec-tools' `kexec`.
    pub kexec: &'a Path,
    /// Only print what would be done: change nothing.
    pub dry_run: bool,
    /// The key derivation when the image will be encrypted (--encrypt):
    /// sealed chunks and metadata take more room than plain ones, and the
    /// restore kernel derives the key in its region.
    pub sealed: Option<Kdf>,
    /// Write over a target that holds data kjump did not write (--force).
    pub force: bool,
}

/// The kernel series kjump's VM tests run the whole cycle on
/// (KERNELS.md). Other kernels are not refused: the preflight probes
/// what it can and says so.
pub const TESTED_SERIES: [&str; 2] = ["6.12", "7.2"];

/// Something the jump needs is missing or wrong; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// No jump can be planned on this machine's memory map.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// `kexec_load` is off until the next boot.
    #[error("kexec_load is disabled (sysctl kernel.kexec_load_disabled=1, which cannot be undone until reboot)")]
    LoadDisabled,
    /// The kernel is locked down.
    #[error("the kernel is locked down ({0}): kexec_load and /dev/mem are refused (Secure Boot?)")]
    Lockdown(String),
    /// The kernel refused a preserve-context load.
    #[error(transparent)]
    Probe(KexecError),
    /// The kernel's configuration has no kexec jump.
    #[error("{config}: the running kernel lacks CONFIG_KEXEC_JUMP")]
    NoKexecJump {
        /// The configuration file.
        config: String,
    },
    /// No capture kernel.
    #[error("capture kernel {} not found", .0.display())]
    NoKernel(PathBuf),
    /// No kexec-tools.
    #[error("{} not found: install kexec-tools", .0.display())]
    NoKexec(PathBuf),
    /// Filesystems are mounted from device-mapper or md, which the
    /// capture kernel cannot read to record their fingerprints: every
    /// resume of the image would be refused.
    #[error("{0}")]
    Unguarded(UnguardedMounts),
    /// The target cannot be found, prepared or measured.
    #[error(transparent)]
    Place(#[from] PlaceError),
    /// The target cannot be opened.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// The target is smaller than the worst-case image.
    #[error("target {place} holds {capacity} bytes, but the image of {ram} bytes of RAM can take up to {worst} bytes{}", if *.encrypted { " encrypted (a tag on every chunk and the resume record in the clear)" } else { "" })]
    TooSmall {
        /// The target, described.
        place: String,
        /// Its room.
        capacity: u64,
        /// Bytes of RAM to save.
        ram: u64,
        /// The worst-case image.
        worst: u64,
        /// The worst case is an encrypted image's.
        encrypted: bool,
    },
    /// The crashkernel region is too small for the restore kernel to
    /// resume an image of this machine's RAM.
    #[error("the restore kernel could not resume an image of this machine's {} MiB of RAM{}", .ram >> 20, if *.encrypted { " encrypted" } else { "" })]
    RestoreRegion {
        /// Bytes of RAM to save.
        ram: u64,
        /// The image would be encrypted.
        encrypted: bool,
        /// What the restore kernel needs against the region.
        #[source]
        source: RegionTooSmall,
    },
    /// An active swap target whose pages do not fit in RAM.
    #[error("{} is an active swap area holding {} MiB of swapped-out pages; swapping it off needs that much RAM and a margin for the kernel, and {} MiB is available: {} MiB is missing (close programs, or hibernate to another target)", .device.display(), .used >> 20, .available >> 20, .missing.div_ceil(1 << 20))]
    SwapFull {
        /// The swap area.
        device: PathBuf,
        /// Bytes swapped out to it.
        used: u64,
        /// Bytes of RAM available.
        available: u64,
        /// Bytes missing.
        missing: u64,
    },
    /// Swapping the target off failed.
    #[error(transparent)]
    SwapOff(PlaceError),
    /// Measuring or freeing memory failed.
    #[error(transparent)]
    Memory(#[from] FreeMemError),
}

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

/// Refuses early, with the reason, what would make the jump fail later;
/// returns where the image will go. `release` is the running kernel's,
/// `mountinfo` its /proc/self/mountinfo.
pub(crate) fn preflight(
    opts: Given,
    plan: &JumpPlan,
    release: &str,
    mountinfo: &str,
) -> Result<Place, PreflightError> {
    if kexec::load_disabled() {
        return Err(PreflightError::LoadDisabled);
    }
    if let Some(state) = kexec::lockdown() {
        return Err(PreflightError::Lockdown(state));
    }
    if !probe_kexec_jump(opts.dry_run)? {
        let config = format!("/boot/config-{release}");
        if let Ok(c) = std::fs::read_to_string(&config) {
            if !c.lines().any(|l| l == "CONFIG_KEXEC_JUMP=y") {
                return Err(PreflightError::NoKexecJump { config });
            }
        }
    }
    if let Some(note) = untested_note(release) {
        println!("{note}");
    }
    if !opts.kernel.is_file() {
        return Err(PreflightError::NoKernel(opts.kernel.to_path_buf()));
    }
    if !opts.kexec.is_file() && which(opts.kexec).is_none() {
        return Err(PreflightError::NoKexec(opts.kexec.to_path_buf()));
    }
    check_guardable(fsguard::unguarded(mountinfo))?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    check_restore_region(plan, opts.sealed.as_ref(), threads)?;
    let encrypted = opts.sealed.is_some();
    let worst = worst_case(&plan.saved, encrypted);
    let (place, capacity) = target_place(opts, worst)?;
    match capacity {
        Some(capacity) => {
            check_room(&place.describe(), capacity, &plan.saved, encrypted).map(|()| place)
        }
        None => Ok(place),
    }
}

/// Refuses filesystems mounted where the capture kernel cannot read them
/// (`unguarded`): it would record them as unreadable, and every resume of
/// the image would be refused, which the user would learn only after the
/// power-off.
fn check_guardable(unguarded: UnguardedMounts) -> Result<(), PreflightError> {
    match unguarded.0.is_empty() {
        true => Ok(()),
        false => Err(PreflightError::Unguarded(unguarded)),
    }
}

/// The largest image of the RAM `saved` (encrypted or not), by the
/// format's own sizes.
fn worst_case(saved: &MemoryMap, encrypted: bool) -> u64 {
    let metadata = Metadata {
        ranges: saved.clone(),
        ..Metadata::default()
    };
    worst_case_len(&metadata, encrypted).unwrap_or(u64::MAX)
}

/// Bytes of metadata an image holds besides its ranges: the kernel
/// release, the capture region, the jump-back entry, one fingerprint per
/// mounted filesystem and the free-form records. A few KiB in practice; a
/// bound with a wide margin.
const OTHER_RECORDS_BOUND: u64 = 64 << 10;

/// What the restore kernel will hold to restore an image of the RAM
/// `saved`, sealed with `kdf` (`None`: plain), on `threads` threads: the
/// layout such an image has (its chunk count, its metadata within a bound).
fn restore_memory(saved: &MemoryMap, kdf: Option<&Kdf>, threads: usize) -> RestoreMemory {
    let metadata = Metadata {
        ranges: saved.clone(),
        ..Metadata::default()
    };
    let layout = Layout {
        chunk_count: chunk_count(saved),
        metadata_len: MetadataSection::len_of(&metadata, kdf.is_some())
            .saturating_add(OTHER_RECORDS_BOUND),
        ..Layout::default()
    };
    RestoreMemory::of(&layout, kdf, threads)
}

/// Refuses, before anything is changed, a machine whose crashkernel region
/// cannot hold the restore kernel and what it needs for an image of this
/// RAM: `kjump resume` would refuse the image after the hibernation, and
/// the session it saved would be lost.
fn check_restore_region(
    plan: &JumpPlan,
    kdf: Option<&Kdf>,
    threads: usize,
) -> Result<(), PreflightError> {
    restore_memory(&plan.saved, kdf, threads)
        .check_region(plan.region)
        .map_err(|source| PreflightError::RestoreRegion {
            ram: plan.saved.total_bytes(),
            encrypted: kdf.is_some(),
            source,
        })
}

/// Refuses a target (`place`, `capacity` bytes) too small for the worst
/// case image of the RAM `saved`.
fn check_room(
    place: &str,
    capacity: u64,
    saved: &MemoryMap,
    encrypted: bool,
) -> Result<(), PreflightError> {
    let worst = worst_case(saved, encrypted);
    if capacity >= worst {
        return Ok(());
    }
    Err(PreflightError::TooSmall {
        place: place.to_string(),
        capacity,
        ram: saved.total_bytes(),
        worst,
        encrypted,
    })
}

/// Whether this kernel takes a preserve-context kexec load, found by
/// loading one (and unloading it) rather than from its version or a
/// /boot/config that may be missing or stale; the error says why not.
/// Returns `false` without probing on a dry run while a kexec image is
/// loaded: the probe would replace it, and a dry run changes nothing.
fn probe_kexec_jump(dry_run: bool) -> Result<bool, PreflightError> {
    if dry_run && kexec::image_loaded() {
        return Ok(false);
    }
    kexec::probe_preserve_context().map_err(PreflightError::Probe)?;
    Ok(true)
}

/// Where the image goes and how many bytes it may take there. A regular
/// file becomes a file target: allocated (on a dry run only when it is
/// one already) and written by the capture kernel through its extents on
/// the raw device. A block device takes the image whole, or after the
/// header of a swap area that is not in use.
fn target_place(opts: Given, worst: u64) -> Result<(Place, Option<u64>), PreflightError> {
    let is_dev = std::fs::metadata(opts.target)
        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()));
    if !is_dev {
        let place = if opts.dry_run {
            Place::locate(opts.target, None)?
        } else {
            kjump_sys::place::prepare_file(opts.target, worst)?
        };
        if place.placement == Placement::Whole {
            // Dry run on a file not yet prepared: the real run allocates it.
            println!(
                "file target {}: the real run allocates {worst} bytes for it",
                opts.target.display()
            );
            return Ok((place, None));
        }
        let room = place.reader()?.len();
        return Ok((place, Some(room)));
    }
    let place = Place::locate(opts.target, None)?;
    if !opts.force {
        kjump_sys::place::refuse_foreign(&place)?;
    }
    let size = match SwapArea::of(&place).filter(SwapArea::is_active) {
        // The kernel holds it: no exclusive open until it is swapped off.
        Some(swap) => {
            check_swapoff_fits(&swap)?;
            kjump_sys::place::device_size(opts.target)?
        }
        None => Target::open_check(opts.target)?.unwrap_or(0),
    };
    let room = place.placement.segments(size).iter().map(|s| s.len).sum();
    Ok((place, Some(room)))
}

/// An active swap area can take the image once it is swapped off, which
/// needs room in RAM for every page swapped out to it.
fn check_swapoff_fits(swap: &SwapArea) -> Result<(), PreflightError> {
    let used = swap.used_bytes().unwrap_or(0);
    let mem = MemInfo::read()?;
    match shortfall(used, &mem) {
        None => Ok(()),
        Some(missing) => Err(PreflightError::SwapFull {
            device: swap.device().to_path_buf(),
            used,
            available: mem.available,
            missing,
        }),
    }
}

fn which(name: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kjump_image_format::crypto::DEFAULT_KDF;
    use kjump_image_format::{Image, PhysAddr, PhysRange};

    #[test]
    fn a_target_with_room_for_a_plain_image_only_is_refused_when_encrypted() {
        // 1 GiB of RAM in two ranges.
        let r = |a, b| PhysRange::new(PhysAddr(a), PhysAddr(b)).unwrap();
        let saved =
            MemoryMap::from_sorted(vec![r(0x1000, 0x9f000), r(0x10_0000, 0x4006_2000)]).unwrap();
        let (plain, sealed) = (worst_case(&saved, false), worst_case(&saved, true));
        assert!(sealed > plain, "sealed {sealed} <= plain {plain}");
        check_room("/dev/vdb", plain, &saved, false).unwrap();
        check_room("/dev/vdb", sealed, &saved, true).unwrap();
        let err = check_room("/dev/vdb", plain, &saved, true).unwrap_err();
        let PreflightError::TooSmall {
            capacity,
            worst,
            ram,
            encrypted,
            ..
        } = &err
        else {
            panic!("not TooSmall: {err:?}");
        };
        assert_eq!((*capacity, *worst, *ram), (plain, sealed, 1 << 30));
        assert!(encrypted);
        assert_eq!(
            err.to_string(),
            format!(
                "target /dev/vdb holds {plain} bytes, but the image of {} bytes of RAM can take up to {sealed} bytes encrypted (a tag on every chunk and the resume record in the clear)",
                1u64 << 30
            )
        );
        let err = check_room("/dev/vdb", plain - 1, &saved, false).unwrap_err();
        assert!(
            err.to_string()
                .ends_with(&format!("can take up to {plain} bytes")),
            "{err}"
        );
    }

    fn plan(saved_gib: u64, region_mib: u64) -> JumpPlan {
        let r = |a, len| PhysRange::from_start_len(PhysAddr(a), len).unwrap();
        let saved =
            MemoryMap::from_sorted(vec![r(0x1000, 0x9e000), r(0x1_0000_0000, saved_gib << 30)])
                .unwrap();
        JumpPlan {
            region: r(0x1000_0000, region_mib << 20),
            saved,
        }
    }

    #[test]
    fn the_restore_memory_counts_the_chunks_metadata_kdf_and_buffers() {
        let p = plan(16, 256);
        let m = restore_memory(&p.saved, Some(&DEFAULT_KDF), 4);
        // 16 GiB and 632 KiB of RAM: at least 65536 whole chunks and one
        // more (the format splits a chunk where it must).
        let chunks = chunk_count(&p.saved);
        assert!((65_537..65_600).contains(&chunks), "{chunks}");
        let per_chunk = Image::memory_needed(&Layout {
            chunk_count: 1,
            ..Layout::default()
        });
        let index = m.index / 2 - chunks * per_chunk;
        assert!(
            index > OTHER_RECORDS_BOUND && index < OTHER_RECORDS_BOUND + 4096,
            "metadata bound {index}"
        );
        assert_eq!(m.kdf, 64 << 20);
        assert_eq!(m.pass, kjump_restorer::scan::pass_memory(4));
        let plain = restore_memory(&p.saved, None, 4);
        assert_eq!(plain.kdf, 0);
        assert!(plain.index < m.index, "a sealed section is longer");
    }

    #[test]
    fn a_region_too_small_for_the_restore_kernel_is_refused_with_the_size_it_needs() {
        check_restore_region(&plan(16, 256), Some(&DEFAULT_KDF), 4).unwrap();
        check_restore_region(&plan(16, 192), None, 4).unwrap();
        // 192 MiB holds a plain image's restore, not one with 64 MiB of
        // Argon2id.
        let err = check_restore_region(&plan(16, 192), Some(&DEFAULT_KDF), 4).unwrap_err();
        let PreflightError::RestoreRegion {
            ram,
            encrypted,
            source,
        } = &err
        else {
            panic!("not RestoreRegion: {err:?}");
        };
        assert_eq!(*ram, (16 << 30) + 0x9e000);
        assert!(*encrypted);
        assert!(source.needs.region_needed() > 192 << 20);
        let text = kjump_sys::error_chain(&err);
        assert!(
            text.starts_with(
                "the restore kernel could not resume an image of this machine's 16384 MiB of RAM encrypted: "
            ),
            "{text}"
        );
        assert!(text.ends_with("boot with crashkernel=256M"), "{text}");
        // 1 TiB of RAM: the index alone outgrows 256 MiB.
        let err = check_restore_region(&plan(1024, 256), None, 4).unwrap_err();
        let text = kjump_sys::error_chain(&err);
        let want = err_needs(&err);
        assert!(want > 256, "{text}");
        assert!(
            text.ends_with(&format!("boot with crashkernel={want}M")),
            "{text}"
        );
    }

    /// The crashkernel= size in MiB a refusal asks for.
    fn err_needs(err: &PreflightError) -> u64 {
        match err {
            PreflightError::RestoreRegion { source, .. } => {
                kjump_restorer::budget::crashkernel_mib(source.needs.region_needed())
            }
            other => panic!("not RestoreRegion: {other:?}"),
        }
    }

    #[test]
    fn mounts_the_capture_kernel_cannot_read_are_refused_up_front() {
        let mountinfo = "22 27 0:21 / /proc rw - proc proc rw\n\
            30 1 254:1 / / rw - ext4 /dev/mapper/kjump--test-root rw\n\
            31 30 8:1 / /boot rw - ext4 /dev/kjump-test-sda1 rw\n\
            32 30 9:0 / /srv rw - xfs /dev/md/kjump-test rw\n";
        let err = check_guardable(fsguard::unguarded(mountinfo)).unwrap_err();
        let PreflightError::Unguarded(mounts) = &err else {
            panic!("not Unguarded: {err:?}");
        };
        let named: Vec<(&str, &str)> = mounts
            .0
            .iter()
            .map(|m| (m.mount_point.as_str(), m.source.as_str()))
            .collect();
        assert_eq!(
            named,
            [
                ("/", "/dev/mapper/kjump--test-root"),
                ("/srv", "/dev/md/kjump-test")
            ]
        );
        assert_eq!(
            err.to_string(),
            "/ on /dev/mapper/kjump--test-root (device-mapper), /srv on /dev/md/kjump-test (md): \
             mounted from device-mapper or md, which the capture kernel cannot read through, so \
             it cannot record their state and every resume would be refused (the \
             stale-filesystem guard could not check that they are unchanged)"
        );
        let plain = "31 30 8:1 / /boot rw - ext4 /dev/kjump-test-sda1 rw\n";
        check_guardable(fsguard::unguarded(plain)).unwrap();
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
}

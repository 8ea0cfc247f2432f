//! `kjump hibernate`, in the running kernel A: the preflight, the capture
//! kernel's manifest, the load and the jump ([`crate::next`]), and what
//! to do once A runs again (a wake from suspend, a swap area to give back).

use std::path::PathBuf;
use std::time::SystemTime;

use kjump_handoff::claim::{self, ClaimError, PlacementKind};
use kjump_handoff::mailbox::Report;
use kjump_handoff::manifest::{Manifest, Mode, SecretKind};
use kjump_handoff::plan::JumpPlan;
use kjump_handoff::uuid::Uuid;
use kjump_handoff::{error_chain, fsguard, kernel_name};
use kjump_image_format::crypto::DEFAULT_KDF;
use kjump_image_format::{FormatError, ImageState, Kdf, Secret};
use kjump_initramfs::ExtraFile;
use kjump_sys::freemem::free_memory;
use kjump_sys::kexec::KexecError;
use kjump_sys::swap::SwapArea;
use kjump_sys::{Place, PlaceError};

use crate::next::{LoadError, NextKernel, Role};
use crate::preflight::{preflight, Given, PreflightError};

/// Why hibernation cannot start, or failed.
#[derive(Debug, thiserror::Error)]
pub enum HibernateError {
    /// Something the jump needs is missing or wrong; nothing was changed.
    #[error("preflight")]
    Preflight(#[from] PreflightError),
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
    #[error("loading the capture kernel")]
    Load(#[source] LoadError),
    /// The RAM map changed between the plan and the jump (memory plugged in
    /// or out): the capture kernel would save the wrong ranges.
    #[error(
        "the RAM map in /proc/iomem changed while hibernate prepared the jump \
         (saved ranges {before} before, {after} now): nothing was saved; hibernate again"
    )]
    MapChanged {
        /// The plan's saved ranges and region, before.
        before: String,
        /// And now.
        after: String,
    },
    /// The target could not be claimed for the capture kernel.
    #[error(transparent)]
    Claim(#[from] ClaimError),
    /// The jump failed.
    #[error(transparent)]
    Jump(#[from] KexecError),
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
    pub extra: Vec<ExtraFile>,
    /// Only print what would be done.
    pub dry_run: bool,
    /// Drop caches and zero free RAM first, for a smaller image.
    pub free_memory: bool,
    /// Encrypt the image with this key file or passphrase; it reaches the
    /// capture kernel in RAM only.
    pub encrypt: Option<Secret>,
    /// More words for the capture kernel's command line.
    pub append: Vec<String>,
    /// Write the image over a target that holds data kjump did not write.
    pub force: bool,
    /// Seconds B offers its rescue shell before it goes on (the manifest's
    /// `prompt-timeout`; `None`: its default).
    pub prompt_timeout: Option<u64>,
}

impl HibernateOptions {
    /// What the preflight checks; `secret` since it is taken out of the
    /// options before. The capture kernel derives a passphrase's key with
    /// [`DEFAULT_KDF`] (init's capture step), a key file's with HKDF.
    fn given(&self, secret: Option<&Secret>) -> Given<'_> {
        Given {
            target: &self.target,
            kernel: &self.kernel,
            kexec: &self.kexec,
            dry_run: self.dry_run,
            sealed: secret.map(|s| match s {
                Secret::KeyFile(_) => Kdf::KeyFile,
                Secret::Passphrase(_) => DEFAULT_KDF,
            }),
            force: self.force,
        }
    }
}

/// Why the target holds no image from this hibernation.
#[derive(Debug, thiserror::Error)]
pub enum NotSaved {
    /// The target cannot be found or read.
    #[error(transparent)]
    Place(#[from] PlaceError),
    /// The target holds no whole superblock, or an uncommitted image.
    #[error(transparent)]
    Image(#[from] FormatError),
    /// The target holds another hibernation's image.
    #[error("the image on the target is from another hibernation")]
    Other,
}

/// What `hibernate` found when this kernel ran again.
#[derive(Debug)]
pub struct Return {
    /// Wall time away.
    pub away: std::time::Duration,
    /// The state of the image this hibernation wrote ("committed" after a
    /// checkpoint, "consumed" after a resume from disk), or why there is none:
    /// the capture kernel failed and jumped back without saving.
    pub image: Result<&'static str, NotSaved>,
    /// What else happened on the way back, for the user.
    pub notes: Vec<String>,
    /// Why the capture kernel jumped back without saving, as it reported
    /// it through the mailbox.
    pub report: Option<Report>,
}

fn read(path: &str) -> Result<String, HibernateError> {
    std::fs::read_to_string(path).map_err(|source| HibernateError::Read {
        path: path.into(),
        source,
    })
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
    let plan = JumpPlan::from_iomem(&read("/proc/iomem")?).map_err(PreflightError::from)?;
    let release = read("/proc/sys/kernel/osrelease")?.trim().to_string();
    let mountinfo = read("/proc/self/mountinfo")?;
    let place = preflight(opts.given(secret.as_ref()), &plan, &release, &mountinfo)?;
    let a_cmdline = read("/proc/cmdline")?;
    let mut next = NextKernel::new(
        Role::Capture,
        &opts.kexec,
        &opts.kernel,
        &plan,
        &a_cmdline,
        &opts.append,
    );
    let uuid = Uuid::random();
    let manifest = capture_manifest(
        opts,
        &next,
        &place,
        secret.as_ref(),
        uuid,
        release,
        &mountinfo,
    );
    show(&plan, &manifest, &next);
    if opts.dry_run {
        prepare_ram(opts, &place)?;
        return Ok(None);
    }
    next.load(&manifest, &opts.extra, secret)
        .map_err(HibernateError::Load)?;
    // After the load, so that its memory is taken while the swap area can
    // still absorb the pressure: swap off, free memory, jump.
    let swapped_off = prepare_ram(opts, &place).inspect_err(|_| next.unload())?;
    let undo = || {
        if swapped_off {
            let _ = SwapArea::new(&place.holder).return_to_swap();
        }
    };
    last_steps(&place, uuid, &manifest, &plan).inspect_err(|_| {
        next.unload();
        undo();
    })?;
    // The wall clock: the monotonic clock stands still while this kernel is
    // away, and the kernel sets the wall clock from the RTC when it resumes.
    let left = SystemTime::now();
    let report = next.jump().inspect_err(|_| undo())?;
    let away = SystemTime::now().duration_since(left).unwrap_or_default();
    Ok(Some(back_again(
        opts,
        &place,
        uuid,
        swapped_off,
        away,
        report,
    )))
}

/// Right before the jump: the claim on the target (the last write; the
/// capture kernel writes only to a device that carries it, whatever name
/// its kernel gives the device), and /proc/iomem read again (memory plugged
/// in or out since the plan would be saved wrongly).
fn last_steps(
    place: &Place,
    uuid: Uuid,
    manifest: &Manifest,
    plan: &JumpPlan,
) -> Result<(), HibernateError> {
    claim::stake(place, uuid, manifest.started_ns, manifest.swap_was_active)?;
    let now = JumpPlan::from_iomem(&read("/proc/iomem")?).map_err(PreflightError::from)?;
    if now == *plan {
        return Ok(());
    }
    Err(HibernateError::MapChanged {
        before: described(plan),
        after: described(&now),
    })
}

/// What the capture kernel is told: the image `uuid` it writes, where and
/// how, whether it is sealed, and the filesystems it fingerprints.
fn capture_manifest(
    opts: &HibernateOptions,
    next: &NextKernel,
    place: &Place,
    secret: Option<&Secret>,
    uuid: Uuid,
    release: String,
    mountinfo: &str,
) -> Manifest {
    Manifest {
        encrypt: secret.map(|s| match s {
            Secret::KeyFile(_) => SecretKind::KeyFile,
            Secret::Passphrase(_) => SecretKind::Passphrase,
        }),
        image_uuid: Some(uuid),
        placement: Some(PlacementKind::of(&place.placement)),
        prompt_timeout: opts.prompt_timeout,
        swap_was_active: SwapArea::of(place).is_some_and(|s| s.is_active()),
        kernel_release: release,
        filesystems: fsguard::mounted_block_devices(mountinfo)
            .iter()
            .map(|d| kernel_name(d.as_ref()))
            .collect(),
        ..next.manifest(opts.mode, kernel_name(&place.holder), place.map_at())
    }
}

/// A plan's saved ranges and region, for messages.
fn described(plan: &JumpPlan) -> String {
    let ranges: Vec<String> = plan
        .saved
        .ranges()
        .iter()
        .map(ToString::to_string)
        .collect();
    format!("{} (region {})", ranges.join(","), plan.region)
}

/// What the capture kernel will do, for the user (and all of a dry run).
fn show(plan: &JumpPlan, manifest: &Manifest, next: &NextKernel) {
    println!("capture kernel region: {}", plan.region);
    println!(
        "RAM to save: {} bytes in {} ranges",
        plan.saved.total_bytes(),
        plan.saved.ranges().len()
    );
    println!("manifest:\n{}", manifest.encode().trim_end());
    println!("{}", next.shown());
}

/// Once this kernel runs again: what became of the image, and what else
/// to do for it (mark it consumed after a wake from suspend, give a swap
/// area back).
fn back_again(
    opts: &HibernateOptions,
    place: &Place,
    uuid: Uuid,
    swapped_off: bool,
    away: std::time::Duration,
    report: Option<Report>,
) -> Return {
    let mut image = saved_image(place, uuid);
    let mut notes = Vec::new();
    // The image is stale while this kernel runs on: after a wake from
    // suspend to RAM (the capture kernel jumped back), or after a resume
    // whose restore kernel wrote all of memory but could not mark it (it
    // said why on its console). Marked here, or the next boot resumes it.
    let stale = match opts.mode {
        Mode::Suspend => Some("woke from suspend to RAM"),
        Mode::Poweroff | Mode::Reboot if report.is_none() => {
            Some("resumed, but the restore kernel could not mark the image consumed")
        }
        _ => None,
    };
    if let Some(why) = stale.filter(|_| matches!(image, Ok("committed"))) {
        match kjump_restorer::consume(place) {
            Ok(_) => {
                image = Ok("consumed");
                notes.push(format!(
                    "{why}: the disk image is now marked consumed, as this kernel runs on"
                ));
            }
            Err(e) => notes.push(format!(
                "{why}, and marking the disk image consumed failed: {} (run kjump discard before the next boot)",
                error_chain(&e)
            )),
        }
    }
    if swapped_off {
        notes.push(give_swap_back(place, opts.mode, &image));
    }
    Return {
        away,
        image,
        notes,
        report,
    }
}

/// Before the jump: swap off an active swap target and, when asked, free
/// memory. Returns whether the target was swapped off (and so is swapped on
/// again afterwards).
fn prepare_ram(opts: &HibernateOptions, place: &Place) -> Result<bool, PreflightError> {
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
            swap.swap_off().map_err(PreflightError::SwapOff)?;
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
            let report = free_memory().inspect_err(|_| {
                if let Some(swap) = &active {
                    let _ = swap.swap_on();
                }
            })?;
            report.lines().iter().for_each(|l| println!("{l}"));
        }
    }
    Ok(active.is_some() && !opts.dry_run)
}

/// After this kernel runs again: a swap area it swapped off is given back
/// (its signature restored if the capture left it held) and swapped on,
/// unless it holds a checkpoint image that a later boot may still resume.
fn give_swap_back(place: &Place, mode: Mode, image: &Result<&'static str, NotSaved>) -> String {
    let dev = place.holder.display();
    if mode == Mode::Checkpoint && matches!(image, Ok("committed")) {
        return format!(
            "{dev} stays swapped off: it holds the checkpoint image (kjump discard {dev} gives it back)"
        );
    }
    match SwapArea::new(&place.holder).return_to_swap() {
        Ok(()) => format!("{dev} is swapped on again"),
        Err(e) => format!("{dev} could not be swapped on again: {}", error_chain(&e)),
    }
}

/// Whether the target holds the image this hibernation asked for (the
/// uuid it gave the capture kernel), and its state. Only the superblock is
/// read: it is all an encrypted image shows without its key, and its
/// checksum and uuid are enough to tell the capture's outcome.
fn saved_image(place: &Place, uuid: Uuid) -> Result<&'static str, NotSaved> {
    let place = Place::locate(&place.holder, place.map_at())?;
    let file = place.reader()?;
    let sb = kjump_image_format::reader::read_superblock(&file)?;
    if sb.uuid != uuid.0 {
        return Err(NotSaved::Other);
    }
    if sb.state == ImageState::Writing {
        return Err(FormatError::NotCommitted {
            state: sb.state.name(),
        }
        .into());
    }
    Ok(sb.state.name())
}

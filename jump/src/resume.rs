//! `kjump resume`, early in a normal boot (R0): find a committed image and
//! kexec-jump into the restore kernel R, confined as the capture kernel
//! was. Anything short of a whole image on the same memory layout is
//! reported and the normal boot goes on.
//!
//! R0 never holds the key of an encrypted image. It decides from the
//! image's resume record (ranges, capture region, filesystem fingerprints,
//! readable without the key), and R asks for the passphrase on the console
//! or reads the key from a named device, then authenticates everything,
//! the record included, before it writes memory. Because R0 jumps with its
//! context preserved, R hands control back to it when it does not resume
//! (no passphrase, a wrong one three times, a failed check): the normal
//! boot then goes on where it stopped.

use std::path::{Path, PathBuf};

use kjump_handoff::fsguard::{self, Change};
use kjump_handoff::kernel_name;
use kjump_handoff::mailbox::{Report, ReportKind};
use kjump_handoff::manifest::{KeySource, Manifest, Mode, SecretKind};
use kjump_handoff::plan::JumpPlan;
use kjump_handoff::uuid::Uuid;
use kjump_image_format::metadata::{KEY_FS_FINGERPRINT, KEY_REGION};
use kjump_image_format::placement::SwapSignature;
use kjump_image_format::reader::{read_resume_record, read_superblock};
use kjump_image_format::{
    CryptoParams, FormatError, Image, ImageKeys, ImageState, Kdf, MemoryMap, Metadata, PhysRange,
    Placement, Secret, SecretError, Superblock,
};
use kjump_restorer::budget::{RegionTooSmall, RestoreMemory};
use kjump_sys::kexec::KexecError;
use kjump_sys::ranges::{self, RangesError};
use kjump_sys::{Place, PlaceError, PlaceReader};

use crate::next::{LoadError, NextKernel, Role};

/// What `resume` found or did.
#[derive(Debug)]
pub enum Outcome {
    /// Nothing to resume; the reason, for the boot log.
    Nothing(NoImage),
    /// A dry run stopped before loading R.
    DryRun,
}

/// Why there is nothing to resume: the normal boot goes on.
#[derive(Debug, thiserror::Error)]
pub enum NoImage {
    /// The device holds no place an image could be found in.
    #[error("no image found")]
    NotFound(#[source] PlaceError),
    /// A swap area in use as swap.
    #[error("{0} is a swap area with its swap signature in place, so it holds no image to resume")]
    FreeSwap(String),
    /// The image's place cannot be opened.
    #[error("cannot open {device}")]
    CannotOpen {
        /// The place, described.
        device: String,
        /// The cause.
        #[source]
        source: PlaceError,
    },
    /// No kjump superblock.
    #[error("no kjump image on {device}")]
    NotKjump {
        /// The place, described.
        device: String,
        /// What the superblock's check found.
        #[source]
        error: FormatError,
    },
    /// An image whose capture never committed it.
    #[error("the image on {0} is incomplete (its capture never committed it)")]
    Incomplete(String),
    /// An image resumed before.
    #[error("the image on {0} was already resumed once")]
    Consumed(String),
    /// An image whose restore failed after it began writing memory.
    #[error("the image on {device} cannot be resumed: an earlier restore failed part way ({reason}); the session it saved is lost (kjump discard {device} frees the target)")]
    Failed {
        /// The place, described.
        device: String,
        /// What the image's restore record says.
        reason: String,
    },
    /// R handed back and said why.
    #[error("the restore kernel handed control back without resuming: {0}")]
    HandedBack(String),
    /// R handed back without a report.
    #[error(
        "the restore kernel handed control back without resuming (its reason is on its console)"
    )]
    HandedBackSilently,
}

/// Why an image is not resumed though it is there: it is left as it is.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// This machine's memory map cannot be read.
    #[error("reading /proc/iomem")]
    Iomem(#[source] std::io::Error),
    /// The memory map lists no usable RAM.
    #[error(transparent)]
    Ram(#[from] RangesError),
    /// The image fails a check.
    #[error(transparent)]
    Image(#[from] FormatError),
    /// Restores of the image began as often as allowed and none finished.
    #[error("{attempts} restores of this image began and none finished (the machine stopped while memory was written back); the limit is {limit} (KJUMP_RESUME_ATTEMPTS in kjump.conf, or --max-attempts), so it is not tried again")]
    Attempts {
        /// Restores begun.
        attempts: u32,
        /// The limit.
        limit: u32,
    },
    /// A plain image where encryption is required.
    #[error("the image is not encrypted, and encryption is required (KJUMP_REQUIRE_ENCRYPTION=1 in kjump.conf, or --require-encryption): a plain image may have been put in place of this machine's encrypted one")]
    NotEncrypted,
    /// Counting the restore attempt in the image failed; R was not loaded.
    #[error("recording the restore attempt in the image")]
    RecordAttempt(#[source] kjump_sys::TargetError),
    /// No capture region recorded.
    #[error("the image records no capture region: it was not written by kjump hibernate")]
    NoRegion,
    /// RAM the image needs is not there.
    #[error("this machine's RAM lacks {0}, which the image saved or ran its capture kernel in: the memory map changed")]
    RamMissing(PhysRange),
    /// Saved RAM where R would run.
    #[error("the image's ranges overlap the restore kernel's memory")]
    Overlap,
    /// The capture region cannot hold the restore kernel and what it needs
    /// for this image.
    #[error(transparent)]
    RegionTooSmall(#[from] RegionTooSmall),
    /// A filesystem written since the hibernation.
    #[error("{0} (boot normally; --force-stale-filesystems resumes anyway)")]
    StaleFilesystem(Change),
    /// An image sealed with a key file, and none given.
    #[error("the image is sealed with a key file: give --key-file (a file, or a device with --key-size)")]
    KeyFileNeeded,
    /// A key file given for a passphrase.
    #[error("the image is sealed with a passphrase, not a key file ({} was given); leave out --key-file and the restore kernel asks for it", .0.display())]
    NotAKeyFile(PathBuf),
    /// A key device without its size.
    #[error("{} is a device: say how many of its bytes are the key (--key-size)", .0.display())]
    KeySizeNeeded(PathBuf),
    /// The key file cannot be read.
    #[error("{what} {}", .path.display())]
    KeyRead {
        /// What was being done.
        what: String,
        /// The key file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The key file is no key.
    #[error(transparent)]
    Key(#[from] SecretError),
}

/// Why an image is refused or resuming failed.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// The image is there but fails a check: it is left as it is.
    #[error("image on {device} refused")]
    Refused {
        /// The device.
        device: String,
        /// Why.
        #[source]
        reason: Refusal,
    },
    /// Loading or starting the restore kernel failed.
    #[error("loading the restore kernel")]
    Load(#[source] LoadError),
    /// The jump into R failed.
    #[error(transparent)]
    Jump(#[from] KexecError),
    /// R found itself running outside its region and handed back without
    /// writing anything; this boot's memory may be damaged.
    #[error("the restore kernel ran outside its region; this boot's memory may be damaged: reboot (the image is left as it is; it said: {0})")]
    Escaped(String),
}

/// Restores of one image that may begin, none finishing, before it is
/// refused: a power cut during one is retried, a machine that stops every
/// time is not looped.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 2;

/// How to resume.
#[derive(Clone, Debug)]
pub struct ResumeOptions {
    /// Device (or file) that may hold an image.
    pub device: PathBuf,
    /// With a device: the offset of a file target's extent map on it.
    pub offset: Option<u64>,
    /// The restore kernel (bzImage with CONFIG_KEXEC_JUMP).
    pub kernel: PathBuf,
    /// kexec-tools' `kexec`.
    pub kexec: PathBuf,
    /// Print what would be done and stop.
    pub dry_run: bool,
    /// Resume even when a filesystem changed since the hibernation.
    pub force_stale: bool,
    /// For an encrypted image: its key file, or a device holding it (with
    /// `key_size`), which R reads itself; without one, R asks for the
    /// passphrase on `tty`.
    pub key_file: Option<PathBuf>,
    /// Bytes of `key_file` that are the key (all of a regular file when
    /// `None`; required for a device).
    pub key_size: Option<usize>,
    /// The terminal R asks the passphrase on, as R names it
    /// (default /dev/console).
    pub tty: Option<PathBuf>,
    /// More words for the restore kernel's command line.
    pub append: Vec<String>,
    /// Restores of one image that may begin without one finishing before
    /// the image is refused ([`DEFAULT_MAX_ATTEMPTS`] by default).
    pub max_attempts: u32,
    /// Refuse an image that is not encrypted.
    pub require_encryption: bool,
    /// Seconds R waits for the passphrase before it hands back (the
    /// manifest's `prompt-timeout`; `None`: its default).
    pub prompt_timeout: Option<u64>,
}

/// What [`check`] decided: resume under this plan (with the saved
/// kernel's release, empty for an encrypted image, whose release is
/// sealed), or nothing to resume and why.
pub type Decision = Result<(JumpPlan, String), NoImage>;

/// A resumable image, as R0 sees it.
struct Found {
    plan: JumpPlan,
    release: String,
    /// An encrypted image's crypto parameters, which a key is checked
    /// against; `None` for a plain image.
    sealed: Option<CryptoParams>,
    /// The image's uuid, which R checks it is restoring.
    uuid: Uuid,
    /// Where it is, and its superblock, which counts the attempt.
    place: Place,
    superblock: Superblock,
}

/// Checks the image on `device` against this machine's /proc/iomem text;
/// returns the plan R will run under.
///
/// With `force_stale`, a filesystem that changed since the hibernation is
/// reported but does not stop the resume.
///
/// No chunk is read here: R reads each once, checks it and writes it. A
/// plain image's superblock, metadata, index, trailer and padding are
/// checked; an encrypted one is judged by its resume record, whose bytes
/// its metadata CRC covers, and R checks the image seal over it with the
/// key. An image with `max_attempts` unfinished restores is refused.
pub fn check(
    device_path: &Path,
    offset: Option<u64>,
    iomem: &str,
    force_stale: bool,
    max_attempts: u32,
    require_encryption: bool,
) -> Result<Decision, ResumeError> {
    let found = examine(
        device_path,
        offset,
        iomem,
        force_stale,
        max_attempts,
        require_encryption,
    )?;
    Ok(found.map(|f| (f.plan, f.release)))
}

fn examine(
    device_path: &Path,
    offset: Option<u64>,
    iomem: &str,
    force_stale: bool,
    max_attempts: u32,
    require_encryption: bool,
) -> Result<Result<Found, NoImage>, ResumeError> {
    let (place, file, sb) = match committed_image(device_path, offset) {
        Ok(found) => found,
        Err(nothing) => return Ok(Err(nothing)),
    };
    let refused = |reason| ResumeError::Refused {
        device: place.describe(),
        reason,
    };
    if require_encryption && sb.crypto.is_none() {
        return Err(refused(Refusal::NotEncrypted));
    }
    if sb.restore.attempts >= max_attempts {
        return Err(refused(Refusal::Attempts {
            attempts: sb.restore.attempts,
            limit: max_attempts,
        }));
    }
    let (meta, release) = resume_record(&file, sb.crypto.is_some()).map_err(refused)?;
    let plan = plan_of(&meta, iomem).map_err(refused)?;
    fits_region(&sb, &plan).map_err(refused)?;
    check_filesystems(&meta, force_stale).map_err(refused)?;
    Ok(Ok(Found {
        plan,
        release,
        sealed: sb.crypto,
        uuid: Uuid(sb.uuid),
        place,
        superblock: sb,
    }))
}

/// The place on `device_path`, a reader of it and the image's superblock,
/// when it holds a committed image that was never resumed.
fn committed_image(
    device_path: &Path,
    offset: Option<u64>,
) -> Result<(Place, PlaceReader, Superblock), NoImage> {
    let place = Place::locate(device_path, offset).map_err(NoImage::NotFound)?;
    let device = place.describe();
    if place.placement == Placement::Swap(SwapSignature::Free) {
        return Err(NoImage::FreeSwap(device));
    }
    let file = place.reader().map_err(|source| NoImage::CannotOpen {
        device: device.clone(),
        source,
    })?;
    let sb = read_superblock(&file).map_err(|error| NoImage::NotKjump {
        device: device.clone(),
        error,
    })?;
    match sb.state {
        ImageState::Writing => Err(NoImage::Incomplete(device)),
        ImageState::Consumed => Err(NoImage::Consumed(device)),
        ImageState::Failed => Err(NoImage::Failed {
            reason: kjump_restorer::restore::failure_of(&sb),
            device,
        }),
        ImageState::Committed => Ok((place, file, sb)),
    }
}

/// What a resume is decided on, and the saved kernel's release: a plain
/// image's metadata once its structures check (every chunk is R's to
/// check, as it writes it), or an encrypted image's resume record (its
/// release is sealed).
fn resume_record(file: &PlaceReader, sealed: bool) -> Result<(Metadata, String), Refusal> {
    if sealed {
        return Ok((read_resume_record(file)?, String::new()));
    }
    let image = Image::open(file)?;
    image.check_padding(file)?;
    let release = image.metadata.kernel_release.clone().unwrap_or_default();
    Ok((image.metadata, release))
}

/// The plan R runs under, from the image's ranges and capture region,
/// once this machine's RAM (`iomem`) is found to hold them and they leave
/// R's memory alone.
fn plan_of(meta: &Metadata, iomem: &str) -> Result<JumpPlan, Refusal> {
    let region = meta
        .get(KEY_REGION)
        .and_then(|text| ranges::parse_range_list(text).ok())
        .filter(|r| r.len() == 1)
        .map(|r| r[0])
        .ok_or(Refusal::NoRegion)?;
    let ram = ranges::memory_map(ranges::parse_iomem("/proc/iomem", iomem)?);
    let wanted = MemoryMap::merged(
        meta.ranges
            .ranges()
            .iter()
            .copied()
            .chain([region])
            .collect(),
    );
    if let Some(r) = wanted.subtract(&ram).ranges().first() {
        return Err(Refusal::RamMissing(*r));
    }
    let low = JumpPlan::low_memory();
    if meta
        .ranges
        .ranges()
        .iter()
        .any(|r| r.intersect(&low).is_some() || r.intersect(&region).is_some())
    {
        return Err(Refusal::Overlap);
    }
    Ok(JumpPlan {
        region,
        saved: meta.ranges.clone(),
    })
}

/// Refuses, before R is loaded, an image that R could not restore in
/// `plan`'s region: its key derivation, its open index and the restore's
/// buffers on as many threads as this machine has CPUs (R runs on them
/// all), besides R's own kernel and initramfs. R would refuse it too, or
/// run out of memory as PID 1; here the reason reaches the normal boot's
/// log.
fn fits_region(sb: &Superblock, plan: &JumpPlan) -> Result<(), Refusal> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kdf = sb.crypto.map(|c| c.kdf);
    RestoreMemory::of(&sb.layout, kdf.as_ref(), threads).check_region(plan.region)?;
    Ok(())
}

/// The stale-filesystem guard: refuses when a filesystem the saved kernel
/// had mounted changed since, unless `force_stale`.
fn check_filesystems(meta: &Metadata, force_stale: bool) -> Result<(), Refusal> {
    let recorded: Vec<(String, String)> = meta
        .extra
        .iter()
        .filter_map(|(k, v)| {
            let dev = k.strip_prefix(KEY_FS_FINGERPRINT)?;
            Some((dev.to_string(), v.clone()))
        })
        .collect();
    if let Some(change) = fsguard::first_change(&recorded) {
        if !force_stale {
            return Err(Refusal::StaleFilesystem(change));
        }
        eprintln!("kjump: resuming despite a changed filesystem, as forced: {change}");
    }
    Ok(())
}

/// Where R gets the key of an encrypted image sealed with `kdf`: a key in
/// a regular file is read here, checked against the image's key check
/// value and handed over in R's in-memory initramfs (R cannot reach R0's
/// files); a device is named for R to read; a passphrase is asked by R.
fn key_source(opts: &ResumeOptions, kdf: Kdf) -> Result<(KeySource, Option<Secret>), Refusal> {
    let Some(path) = &opts.key_file else {
        return match kdf {
            Kdf::Argon2id { .. } => Ok((KeySource::Ask, None)),
            Kdf::KeyFile => Err(Refusal::KeyFileNeeded),
        };
    };
    if matches!(kdf, Kdf::Argon2id { .. }) {
        return Err(Refusal::NotAKeyFile(path.clone()));
    }
    let is_dev = std::fs::metadata(path)
        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()));
    if is_dev {
        let size = opts
            .key_size
            .ok_or_else(|| Refusal::KeySizeNeeded(path.clone()))?;
        let device = kernel_name(path);
        return Ok((KeySource::Device { device, size }, None));
    }
    let secret = Secret::key_file(read_key(path, opts.key_size)?)?;
    Ok((KeySource::Initramfs, Some(secret)))
}

/// Reads a key file: all of it, or its first `size` bytes.
fn read_key(path: &Path, size: Option<usize>) -> Result<Vec<u8>, Refusal> {
    // A buffer that never moves, locked in RAM and out of core dumps; the
    // Secret made of it wipes it. Moved out, not copied.
    kjump_sys::secmem::read_secret(path, size)
        .map(|mut bytes| std::mem::take(&mut *bytes))
        .map_err(|source| Refusal::KeyRead {
            what: match size {
                Some(n) => format!("reading {n} key bytes from"),
                None => "reading the key file".into(),
            },
            path: path.to_path_buf(),
            source,
        })
}

/// The key of an encrypted image, as R gets it (`None` for a plain
/// image). A key file given here is checked against the image's key check
/// value, so that a wrong one is refused before R is loaded.
fn image_key(opts: &ResumeOptions, found: &Found) -> Result<(KeySource, Option<Secret>), Refusal> {
    let Some(params) = &found.sealed else {
        return Ok((KeySource::Initramfs, None));
    };
    let (source, secret) = key_source(opts, params.kdf)?;
    if let Some(s) = &secret {
        ImageKeys::unlock(s, params, &found.uuid.0)?;
    }
    Ok((source, secret))
}

/// What R is told: the image R0 checked, where it is, and how R gets its
/// key.
fn restore_manifest(
    opts: &ResumeOptions,
    found: &Found,
    key_source: KeySource,
    next: &NextKernel,
) -> Manifest {
    Manifest {
        encrypt: found.sealed.map(|params| match params.kdf {
            Kdf::KeyFile => SecretKind::KeyFile,
            Kdf::Argon2id { .. } => SecretKind::Passphrase,
        }),
        key_source,
        tty: opts.tty.clone(),
        prompt_timeout: opts.prompt_timeout,
        image_uuid: Some(found.uuid),
        kernel_release: found.release.clone(),
        ..next.manifest(Mode::Restore, kernel_name(&opts.device), opts.offset)
    }
}

/// Runs R0. Returns when there is nothing to resume, on a dry run, on
/// failure, or when R handed control back without resuming; otherwise the
/// machine is in R, and then in the saved kernel.
pub fn resume(opts: &ResumeOptions) -> Result<Outcome, ResumeError> {
    let refused = |reason| ResumeError::Refused {
        device: opts.device.display().to_string(),
        reason,
    };
    let iomem = std::fs::read_to_string("/proc/iomem").map_err(|e| refused(Refusal::Iomem(e)))?;
    let found = match examine(
        &opts.device,
        opts.offset,
        &iomem,
        opts.force_stale,
        opts.max_attempts,
        opts.require_encryption,
    )? {
        Ok(f) => f,
        Err(nothing) => return Ok(Outcome::Nothing(nothing)),
    };
    let (key_source, secret) = image_key(opts, &found).map_err(refused)?;
    // R tells why it hands back, when it does, through the mailbox.
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let mut next = NextKernel::new(
        Role::Restore,
        &opts.kexec,
        &opts.kernel,
        &found.plan,
        &cmdline,
        &opts.append,
    );
    let manifest = restore_manifest(opts, &found, key_source, &next);
    println!(
        "restore kernel: {} in {}",
        opts.kernel.display(),
        found.plan.region
    );
    println!("{}", next.shown());
    if opts.dry_run {
        return Ok(Outcome::DryRun);
    }
    let attempt = kjump_restorer::restore::begin_attempt(&found.place, found.superblock)
        .map_err(|e| refused(Refusal::RecordAttempt(e)))?;
    println!(
        "restore attempt {attempt} of at most {} recorded in the image",
        opts.max_attempts
    );
    let outcome = load_and_jump(&mut next, &manifest, secret);
    // Back in R0: R was not loaded, the jump failed, or R handed back. A
    // restore kernel that wrote memory never hands back, so this attempt
    // left memory and the image as they were, and does not count.
    if let Err(e) =
        kjump_restorer::restore::take_back_attempt(&found.place, found.superblock.uuid, attempt)
    {
        eprintln!(
            "kjump: could not take back restore attempt {attempt} in the image: {}",
            kjump_handoff::error_chain(&e)
        );
    }
    outcome
}

/// Loads R and jumps into it. Returns when R was not loaded, the jump
/// failed, or R handed control back without resuming (it said why on the
/// console and in the mailbox); the normal boot goes on then.
fn load_and_jump(
    next: &mut NextKernel,
    manifest: &Manifest,
    secret: Option<Secret>,
) -> Result<Outcome, ResumeError> {
    next.load(manifest, &[], secret)
        .map_err(ResumeError::Load)?;
    match next.jump()? {
        Some(Report {
            kind: ReportKind::Escaped,
            message,
        }) => Err(ResumeError::Escaped(message)),
        Some(Report { message, .. }) => Ok(Outcome::Nothing(NoImage::HandedBack(message))),
        None => Ok(Outcome::Nothing(NoImage::HandedBackSilently)),
    }
}

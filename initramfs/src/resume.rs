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

use std::path::PathBuf;

use kjump_image_format::metadata::{KEY_FS_FINGERPRINT, KEY_REGION};
use kjump_image_format::placement::SwapSignature;
use kjump_image_format::reader::read_resume_record;
use kjump_image_format::reader::read_superblock;
use kjump_image_format::{
    CryptoParams, Image, ImageKeys, ImageState, Kdf, PhysAddr, PhysRange, Placement, Secret,
};
use kjump_sys::kexec;
use kjump_sys::{ranges, Place};

use crate::hibernate::{capture_cmdline, JumpPlan};
use crate::mailbox::{Mailbox, Report, ReportKind};
use crate::manifest::{KeySource, Manifest, Mode, SecretKind};

/// What `resume` found or did.
#[derive(Debug)]
pub enum Outcome {
    /// Nothing to resume; the reason, for the boot log.
    Nothing(String),
    /// A dry run stopped before loading R.
    DryRun,
}

/// Why an image is refused or resuming failed.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// The image is there but fails a check: it is left as it is.
    #[error("image on {device} refused: {reason}")]
    Refused {
        /// The device.
        device: String,
        /// Why.
        reason: String,
    },
    /// Loading or starting the restore kernel failed.
    #[error("loading the restore kernel: {0}")]
    Load(String),
    /// The jump into R failed.
    #[error(transparent)]
    Jump(#[from] kexec::KexecError),
    /// R found itself running outside its region and handed back without
    /// writing anything; this boot's memory may be damaged.
    #[error("the restore kernel ran outside its region; this boot's memory may be damaged: reboot (the image is left as it is; it said: {0})")]
    Escaped(String),
}

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
}

/// Passphrase attempts before R hands back to the normal boot.
pub const PASSPHRASE_TRIES: u32 = 3;

fn parse_region(text: &str) -> Option<PhysRange> {
    let r = ranges::parse_range_list(text).ok()?;
    (r.len() == 1).then(|| r[0])
}

/// What [`check`] decided: resume under this plan (with the saved
/// kernel's release, empty for an encrypted image, whose release is
/// sealed), or nothing to resume and why.
pub type Decision = Result<(JumpPlan, String), String>;

/// A resumable image, as R0 sees it.
struct Found {
    plan: JumpPlan,
    release: String,
    /// An encrypted image's crypto parameters and uuid, which a key is
    /// checked against; `None` for a plain image.
    sealed: Option<(CryptoParams, [u8; 16])>,
    /// The image's uuid, which R checks it is restoring.
    uuid: [u8; 16],
}

/// Checks the image on `device` against this machine's /proc/iomem text;
/// returns the plan R will run under.
///
/// With `force_stale`, a filesystem that changed since the hibernation is
/// reported but does not stop the resume.
///
/// A plain image is verified whole here. An encrypted one is judged by its
/// resume record, whose bytes its metadata CRC covers; R checks the image
/// seal over it, and every chunk, with the key.
pub fn check(
    device_path: &std::path::Path,
    offset: Option<u64>,
    iomem: &str,
    force_stale: bool,
) -> Result<Decision, ResumeError> {
    Ok(examine(device_path, offset, iomem, force_stale)?.map(|f| (f.plan, f.release)))
}

fn examine(
    device_path: &std::path::Path,
    offset: Option<u64>,
    iomem: &str,
    force_stale: bool,
) -> Result<Result<Found, String>, ResumeError> {
    let place = match Place::locate(device_path, offset) {
        Ok(p) => p,
        Err(e) => return Ok(Err(format!("no image found: {}", crate::error_chain(&e)))),
    };
    let device = place.describe();
    let refuse = |reason: String| ResumeError::Refused {
        device: device.clone(),
        reason,
    };
    if place.placement == Placement::Swap(SwapSignature::Free) {
        return Ok(Err(format!(
            "{device} is a swap area with its swap signature in place, so it holds no image to resume"
        )));
    }
    let file = match place.reader() {
        Ok(f) => f,
        Err(e) => {
            return Ok(Err(format!(
                "cannot open {device}: {}",
                crate::error_chain(&e)
            )))
        }
    };
    let sb = match read_superblock(&file) {
        Ok(sb) => sb,
        Err(e) => return Ok(Err(format!("no kjump image on {device} ({e})"))),
    };
    match sb.state {
        ImageState::Writing => {
            return Ok(Err(format!(
                "the image on {device} is incomplete (its capture never committed it)"
            )))
        }
        ImageState::Consumed => {
            return Ok(Err(format!(
                "the image on {device} was already resumed once"
            )))
        }
        ImageState::Committed => {}
    }
    let (meta, release) = match &sb.crypto {
        None => {
            let image = Image::open(&file).map_err(|e| refuse(crate::error_chain(&e)))?;
            kjump_restorer::verify(&file, &image, 2, false)
                .map_err(|e| refuse(crate::error_chain(&e)))?;
            let release = image.metadata.kernel_release.clone().unwrap_or_default();
            (image.metadata, release)
        }
        Some(_) => (
            read_resume_record(&file).map_err(|e| refuse(crate::error_chain(&e)))?,
            String::new(),
        ),
    };
    let region = meta.get(KEY_REGION).and_then(parse_region).ok_or_else(|| {
        refuse("the image records no capture region: it was not written by kjump hibernate".into())
    })?;
    let ram = ranges::memory_map(
        ranges::parse_iomem("/proc/iomem", iomem).map_err(|e| refuse(e.to_string()))?,
    );
    let wanted = kjump_image_format::MemoryMap::merged(
        meta.ranges
            .ranges()
            .iter()
            .copied()
            .chain([region])
            .collect(),
    );
    let missing = wanted.subtract(&ram);
    if let Some(r) = missing.ranges().first() {
        return Err(refuse(format!(
            "this machine's RAM lacks {r}, which the image saved or ran its capture kernel in: the memory map changed"
        )));
    }
    let low = PhysRange::new(
        PhysAddr(crate::hibernate::B_LOW_MEMORY.0),
        PhysAddr(crate::hibernate::B_LOW_MEMORY.1),
    )
    .map_err(|e| refuse(e.to_string()))?;
    let plan = JumpPlan {
        region,
        saved: meta.ranges.clone(),
    };
    if meta
        .ranges
        .ranges()
        .iter()
        .any(|r| r.intersect(&low).is_some() || r.intersect(&region).is_some())
    {
        return Err(refuse(
            "the image's ranges overlap the restore kernel's memory".into(),
        ));
    }
    let recorded: Vec<(String, String)> = meta
        .extra
        .iter()
        .filter_map(|(k, v)| {
            let dev = k.strip_prefix(KEY_FS_FINGERPRINT)?;
            Some((dev.to_string(), v.clone()))
        })
        .collect();
    if let Some(change) = crate::fsguard::first_change(&recorded) {
        if !force_stale {
            return Err(refuse(format!(
                "{change} (boot normally; --force-stale-filesystems resumes anyway)"
            )));
        }
        eprintln!("kjump: resuming despite a changed filesystem, as forced: {change}");
    }
    Ok(Ok(Found {
        plan,
        release,
        sealed: sb.crypto.map(|c| (c, sb.uuid)),
        uuid: sb.uuid,
    }))
}

/// Where R gets the key of an encrypted image sealed with `kdf`: a key in
/// a regular file is read here, checked against the image's key check
/// value and handed over in R's in-memory initramfs (R cannot reach R0's
/// files); a device is named for R to read; a passphrase is asked by R.
fn key_source(
    opts: &ResumeOptions,
    kdf: Kdf,
    refuse: impl Fn(String) -> ResumeError,
) -> Result<(KeySource, Option<Secret>), ResumeError> {
    let Some(path) = &opts.key_file else {
        return match kdf {
            Kdf::Argon2id { .. } => Ok((KeySource::Ask, None)),
            Kdf::KeyFile => Err(refuse(
                "the image is sealed with a key file: give --key-file (a file, or a device with --key-size)"
                    .into(),
            )),
        };
    };
    if matches!(kdf, Kdf::Argon2id { .. }) {
        return Err(refuse(format!(
            "the image is sealed with a passphrase, not a key file ({} was given); leave out --key-file and the restore kernel asks for it",
            path.display()
        )));
    }
    let is_dev = std::fs::metadata(path)
        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()));
    if is_dev {
        let size = opts.key_size.ok_or_else(|| {
            refuse(format!(
                "{} is a device: say how many of its bytes are the key (--key-size)",
                path.display()
            ))
        })?;
        return Ok((
            KeySource::Device {
                device: crate::kernel_name(path),
                size,
            },
            None,
        ));
    }
    let bytes = read_key(path, opts.key_size).map_err(&refuse)?;
    let secret = Secret::key_file(bytes).map_err(|e| refuse(e.to_string()))?;
    Ok((KeySource::Initramfs, Some(secret)))
}

/// Reads a key file: all of it, or its first `size` bytes.
fn read_key(path: &std::path::Path, size: Option<usize>) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let mut f = std::fs::File::open(path)
        .map_err(|e| format!("opening the key file {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    match size {
        Some(n) => {
            bytes.resize(n, 0);
            f.read_exact(&mut bytes)
                .map_err(|e| format!("reading {n} key bytes from {}: {e}", path.display()))?;
        }
        None => {
            f.read_to_end(&mut bytes)
                .map_err(|e| format!("reading the key file {}: {e}", path.display()))?;
        }
    }
    Ok(bytes)
}

/// Runs R0. Returns when there is nothing to resume, on a dry run, on
/// failure, or when R handed control back without resuming; otherwise the
/// machine is in R, and then in the saved kernel.
pub fn resume(opts: &ResumeOptions) -> Result<Outcome, ResumeError> {
    let shown = opts.device.display().to_string();
    let refuse = |reason: String| ResumeError::Refused {
        device: shown.clone(),
        reason,
    };
    let iomem = std::fs::read_to_string("/proc/iomem")
        .map_err(|e| refuse(format!("reading /proc/iomem: {e}")))?;
    let found = match examine(&opts.device, opts.offset, &iomem, opts.force_stale)? {
        Ok(f) => f,
        Err(nothing) => return Ok(Outcome::Nothing(nothing)),
    };
    let (key_source, secret) = match &found.sealed {
        None => (KeySource::Initramfs, None),
        Some((params, _)) => key_source(opts, params.kdf, refuse)?,
    };
    // A key file given here is checked against the image's key check
    // value, so that a wrong one is refused before R is loaded.
    if let (Some(s), Some((params, uuid))) = (&secret, &found.sealed) {
        ImageKeys::unlock(s, params, uuid).map_err(|e| refuse(crate::error_chain(&e)))?;
    }
    let plan = found.plan;
    // R tells why it hands back, when it does, through this page.
    let mut mailbox = match Mailbox::open(&plan.saved) {
        Ok(m) => Some(m),
        Err(e) => {
            println!("no mailbox for the restore kernel's report ({e}): if it refuses, its console says why");
            None
        }
    };
    let cmdline = capture_cmdline(
        &plan,
        &std::fs::read_to_string("/proc/cmdline").unwrap_or_default(),
        &opts.append,
    );
    let manifest = Manifest {
        mode: Mode::Restore,
        target: crate::kernel_name(opts.device.as_path()),
        target_offset: opts.offset,
        encrypt: found.sealed.map(|(params, _)| match params.kdf {
            Kdf::KeyFile => SecretKind::KeyFile,
            Kdf::Argon2id { .. } => SecretKind::Passphrase,
        }),
        key_source,
        tty: opts.tty.as_ref().map(|t| t.display().to_string()),
        image_uuid: Some(found.uuid),
        swap_was_active: false,
        mailbox: mailbox.as_ref().map(Mailbox::address),
        ram: plan.ram_list(),
        region: format!(
            "{:#x}-{:#x}",
            plan.region.start().0,
            plan.region.end().0 - 1
        ),
        kernel_release: found.release,
        started_ns: kjump_sys::clock::now_ns(),
        filesystems: Vec::new(),
    };
    // Preserve-context: R jumps back here when it does not resume.
    let load = crate::load::KexecLoad {
        kexec: &opts.kexec,
        flag: "--load-preserve-context",
        region: plan.region,
        kernel: &opts.kernel,
        cmdline,
    };
    println!(
        "restore kernel: {} in {}",
        opts.kernel.display(),
        plan.region
    );
    println!("{}", load.shown());
    if opts.dry_run {
        return Ok(Outcome::DryRun);
    }
    let bytes = secret.as_ref().map(|s| match s {
        Secret::KeyFile(b) | Secret::Passphrase(b) => b.as_slice(),
    });
    load.run(&manifest, &[], bytes).map_err(ResumeError::Load)?;
    drop(secret);
    let jumped = kexec::jump();
    // Back in R0: R did not resume (it said why on the console and in
    // the mailbox), or the jump itself failed. Either way the normal boot
    // goes on.
    load.unload();
    jumped?;
    match mailbox.as_mut().and_then(Mailbox::take) {
        Some(Report {
            kind: ReportKind::Escaped,
            message,
        }) => Err(ResumeError::Escaped(message)),
        Some(Report { message, .. }) => Ok(Outcome::Nothing(format!(
            "the restore kernel handed control back without resuming: {message}"
        ))),
        None => Ok(Outcome::Nothing(
            "the restore kernel handed control back without resuming (its reason is on its console)"
                .into(),
        )),
    }
}

//! `kjump resume`, early in a normal boot (R0): find a committed image and
//! kexec the restore kernel R into the same confinement the capture kernel
//! had. Anything short of a whole image on the same memory layout is
//! reported and the normal boot goes on.

use std::path::PathBuf;

use kjump_image_format::placement::SwapSignature;
use kjump_image_format::reader::read_superblock;
use kjump_image_format::{Image, ImageKeys, ImageState, PhysAddr, PhysRange, Placement, Secret};
use kjump_restorer::kexec;
use kjump_writer::{ranges, Place};

use crate::hibernate::{capture_cmdline, JumpPlan};
use crate::manifest::{Manifest, Mode, SecretKind};

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
    /// For an encrypted image: its key file (or a device holding it, with
    /// `key_size`); without one, the passphrase is asked on `tty`.
    pub key_file: Option<PathBuf>,
    /// Bytes of `key_file` that are the key (all of a regular file when
    /// `None`; required for a device).
    pub key_size: Option<usize>,
    /// Where the passphrase is asked.
    pub tty: PathBuf,
}

/// Passphrase attempts before the normal boot goes on.
pub const PASSPHRASE_TRIES: u32 = 3;

fn parse_region(text: &str) -> Option<PhysRange> {
    let r = ranges::parse_range_list(text).ok()?;
    (r.len() == 1).then(|| r[0])
}

/// What [`check`] decided: resume under this plan (with the saved
/// kernel's release), or nothing to resume and why.
pub type Decision = Result<(JumpPlan, String), String>;

/// Checks the image on `device` against this machine's /proc/iomem text;
/// returns the plan R will run under.
///
/// With `force_stale`, a filesystem that changed since the hibernation is
/// reported but does not stop the resume.
pub fn check(
    device_path: &std::path::Path,
    offset: Option<u64>,
    iomem: &str,
    force_stale: bool,
) -> Result<Decision, ResumeError> {
    check_with(device_path, offset, iomem, force_stale, None)
}

/// [`check`], with the secret of an encrypted image.
pub fn check_with(
    device_path: &std::path::Path,
    offset: Option<u64>,
    iomem: &str,
    force_stale: bool,
    secret: Option<&Secret>,
) -> Result<Decision, ResumeError> {
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
    let image = Image::open_with(&file, secret).map_err(|e| refuse(crate::error_chain(&e)))?;
    kjump_restorer::verify(&file, &image, 2, false).map_err(|e| refuse(crate::error_chain(&e)))?;
    let meta = &image.metadata;
    let region = meta
        .extra
        .iter()
        .find(|(k, _)| k == "region")
        .and_then(|(_, v)| parse_region(v))
        .ok_or_else(|| {
            refuse(
                "the image records no capture region: it was not written by kjump hibernate".into(),
            )
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
            let dev = k.strip_prefix(crate::fsguard::META_PREFIX)?;
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
    Ok(Ok((plan, meta.kernel_release.clone().unwrap_or_default())))
}

/// The secret of the image on the device, when it is a committed,
/// encrypted one: the key file named, or a passphrase asked on the
/// terminal, each checked against the image's key check value. `None` for
/// anything else, which [`check`] then judges.
fn image_secret(opts: &ResumeOptions) -> Result<Option<Secret>, ResumeError> {
    let Ok(place) = Place::locate(&opts.device, opts.offset) else {
        return Ok(None);
    };
    let Ok(file) = place.reader() else {
        return Ok(None);
    };
    let sb = match read_superblock(&file) {
        Ok(sb) if sb.state == ImageState::Committed => sb,
        _ => return Ok(None),
    };
    let Some(params) = sb.crypto.as_ref() else {
        return Ok(None);
    };
    let refuse = |reason: String| ResumeError::Refused {
        device: place.describe(),
        reason,
    };
    let unlock = |secret: Secret| {
        ImageKeys::unlock(&secret, params, &sb.uuid)
            .map(|_| secret)
            .map_err(|e| crate::error_chain(&e))
    };
    if let Some(path) = &opts.key_file {
        let bytes = read_key(path, opts.key_size).map_err(refuse)?;
        let secret = Secret::key_file(bytes).map_err(|e| refuse(e.to_string()))?;
        return unlock(secret).map(Some).map_err(refuse);
    }
    let prompt = format!(
        "kjump: passphrase for the encrypted image on {}: ",
        place.describe()
    );
    crate::prompt::ask(&opts.tty, &prompt, PASSPHRASE_TRIES, |mut line| {
        let secret = Secret::passphrase(std::mem::take(&mut *line)).map_err(|e| e.to_string())?;
        unlock(secret)
    })
    .map(Some)
    .map_err(refuse)
}

/// Reads a key: all of a regular file, or `size` bytes of a file or device.
fn read_key(path: &std::path::Path, size: Option<usize>) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let mut f = std::fs::File::open(path)
        .map_err(|e| format!("opening the key file {}: {e}", path.display()))?;
    let is_dev = f
        .metadata()
        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()));
    let mut bytes = Vec::new();
    match size {
        Some(n) => {
            bytes.resize(n, 0);
            f.read_exact(&mut bytes)
                .map_err(|e| format!("reading {n} key bytes from {}: {e}", path.display()))?;
        }
        None if is_dev => {
            return Err(format!(
                "{} is a device: say how many of its bytes are the key (--key-size)",
                path.display()
            ))
        }
        None => {
            f.read_to_end(&mut bytes)
                .map_err(|e| format!("reading the key file {}: {e}", path.display()))?;
        }
    }
    Ok(bytes)
}

/// Runs R0. Returns only when there is nothing to resume, on a dry run, or
/// on failure; otherwise the machine is in R.
pub fn resume(opts: &ResumeOptions) -> Result<Outcome, ResumeError> {
    let iomem = std::fs::read_to_string("/proc/iomem").map_err(|e| ResumeError::Refused {
        device: opts.device.display().to_string(),
        reason: format!("reading /proc/iomem: {e}"),
    })?;
    let secret = image_secret(opts)?;
    let decision = check_with(
        &opts.device,
        opts.offset,
        &iomem,
        opts.force_stale,
        secret.as_ref(),
    )?;
    let (plan, release) = match decision {
        Ok(p) => p,
        Err(nothing) => return Ok(Outcome::Nothing(nothing)),
    };
    let cmdline = capture_cmdline(
        &plan,
        &std::fs::read_to_string("/proc/cmdline").unwrap_or_default(),
    );
    let manifest = Manifest {
        mode: Mode::Restore,
        target: crate::kernel_name(opts.device.as_path()),
        target_offset: opts.offset,
        encrypt: secret.as_ref().map(|s| match s {
            Secret::KeyFile(_) => SecretKind::KeyFile,
            Secret::Passphrase(_) => SecretKind::Passphrase,
        }),
        image_uuid: None,
        swap_was_active: false,
        ram: plan.ram_list(),
        region: format!(
            "{:#x}-{:#x}",
            plan.region.start().0,
            plan.region.end().0 - 1
        ),
        kernel_release: release,
        started_ns: kjump_writer::now_ns(),
        filesystems: Vec::new(),
    };
    let load = crate::load::KexecLoad {
        kexec: &opts.kexec,
        flag: "--load",
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
    kexec::jump()?;
    Err(ResumeError::Load("the restore kernel returned".into()))
}

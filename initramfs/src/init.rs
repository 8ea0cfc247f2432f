//! kjump as `/init` of the capture kernel B and of the restore kernel R.
//!
//! In B, the saved kernel A jumped here with its memory intact. This program
//! mounts what it needs, reads the manifest A left in the initramfs and the
//! re-entry point A left on the command line, captures A's RAM from /dev/mem
//! to the target, commits the image, then powers off, reboots or jumps back
//! to A.
//!
//! In R (manifest mode `restore`, written by `kjump resume` on a fresh boot),
//! it restores the image on the target into memory and jumps to A's
//! re-entry point; a refusal restarts the machine into a normal boot.
//!
//! It is PID 1: it never panics out (a panic in PID 1 is a kernel panic) and
//! every failure ends in a message on the console and a defined action. In B:
//! a rescue shell when the initramfs has one, else a jump back to A so the
//! user loses nothing, else a power-off after a visible countdown. In R: a
//! restart after a visible countdown.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use kjump_image_format::MemoryMap;
use kjump_sys::kexec;
use kjump_sys::power::{power, PowerAction};
use kjump_sys::{ranges, Place, Target};
use kjump_writer::{capture, CaptureOptions, MemorySource};

use crate::error_chain;
use crate::mailbox::{MailboxAddress, Report, ReportKind};
use crate::manifest::{KeySource, Manifest, Mode, SecretKind};
use kjump_image_format::{Kdf, Secret};

/// A filesystem /init mounts.
#[derive(Clone, Copy, Debug)]
pub struct MountStep {
    /// Filesystem type (also the source name).
    pub fstype: &'static str,
    /// Where.
    pub target: &'static str,
}

impl fmt::Display for MountStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mount -t {} {} {}",
            self.fstype, self.fstype, self.target
        )
    }
}

/// What /init mounts, in order.
pub const MOUNTS: [MountStep; 3] = [
    MountStep {
        fstype: "proc",
        target: "/proc",
    },
    MountStep {
        fstype: "sysfs",
        target: "/sys",
    },
    MountStep {
        fstype: "devtmpfs",
        target: "/dev",
    },
];

/// Shell started when a capture fails, if the initramfs carries one.
pub const RESCUE_SHELL: &str = "/bin/sh";
const COUNTDOWN: u64 = 10;

/// One console line, in one write: stderr is unbuffered, so `eprintln!`
/// writes each formatted piece separately and the kernel's own messages land
/// in the middle of the line.
fn say(msg: impl fmt::Display) {
    use std::io::Write as _;
    let line = format!("kjump: {msg}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// What a phase decided.
struct Plan {
    mode: Mode,
    entry: u64,
}

/// What is known when something fails: decides the fallback.
#[derive(Default)]
struct State {
    entry: Option<u64>,
    restoring: bool,
    /// In R: the normal boot's re-entry point while it can still take
    /// control back (no byte of memory written yet).
    hand_back: Option<u64>,
    /// Where the kernel jumped back to learns why.
    mailbox: Option<MailboxAddress>,
    /// This kernel found itself outside its region.
    escaped: bool,
}

/// Runs /init. Never returns.
pub fn main() -> ! {
    let mut state = State::default();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&mut state)));
    match result {
        Ok(Ok(plan)) => finish(plan),
        Ok(Err(e)) => fail(&e, &state),
        Err(_) => fail("internal error (a bug in kjump: please report it)", &state),
    }
}

fn run(state: &mut State) -> Result<Plan, String> {
    mount_all()?;
    let path = Path::new("/").join(crate::manifest::PATH);
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let manifest = Manifest::parse(&text).map_err(|e| e.to_string())?;
    state.mailbox = manifest.mailbox;
    if manifest.mode == Mode::Restore {
        state.restoring = true;
        say("restore kernel started");
        // The normal boot jumped here with its context preserved: until
        // memory is written, a refusal hands control back to it.
        state.hand_back = std::fs::read_to_string("/proc/cmdline")
            .ok()
            .and_then(|c| kexec::jump_back_entry(&c).ok());
        check_confinement(&manifest, state)?;
        return restore_phase(&manifest, state);
    }
    say("capture kernel started");
    let cmdline = std::fs::read_to_string("/proc/cmdline")
        .map_err(|e| format!("reading /proc/cmdline: {e}"))?;
    let entry = kexec::jump_back_entry(&cmdline).map_err(|e| e.to_string())?;
    state.entry = Some(entry);
    check_confinement(&manifest, state)?;
    capture_phase(&manifest, entry)
}

/// The tripwire: this kernel's RAM and image must lie inside the region
/// the manifest names, or it touches nothing ([`crate::confine`]).
fn check_confinement(manifest: &Manifest, state: &mut State) -> Result<(), String> {
    let region = manifest_region(manifest)?;
    let iomem =
        std::fs::read_to_string("/proc/iomem").map_err(|e| format!("reading /proc/iomem: {e}"))?;
    match crate::confine::check(&iomem, region) {
        Ok(None) => {
            let ram: Vec<String> = ranges::parse_iomem("/proc/iomem", &iomem)
                .unwrap_or_default()
                .iter()
                .map(ToString::to_string)
                .collect();
            say(format_args!(
                "running inside the region {region} (System RAM {})",
                ram.join(", ")
            ));
            Ok(())
        }
        Ok(Some(escape)) => {
            state.escaped = true;
            Err(escape.to_string())
        }
        Err(e) => Err(format!(
            "cannot tell whether this kernel runs inside its region {region}: {e}"
        )),
    }
}

fn mount_all() -> Result<(), String> {
    for m in MOUNTS {
        kjump_sys::mount::mount_kernel_fs(m.fstype, m.target).map_err(|e| format!("{m}: {e}"))?;
    }
    Ok(())
}

/// B: the saved kernel's RAM to the target.
fn capture_phase(manifest: &Manifest, entry: u64) -> Result<Plan, String> {
    let list = ranges::parse_range_list(&manifest.ram).map_err(|e| format!("manifest ram: {e}"))?;
    let map = MemoryMap::merged(list);
    say(format_args!(
        "saving {} bytes of RAM of kernel {} to {}",
        map.total_bytes(),
        manifest.kernel_release,
        manifest.target
    ));
    let source =
        MemorySource::open(Path::new("/dev/mem"), Some(map)).map_err(|e| error_chain(&e))?;
    let mut metadata = source.metadata();
    metadata.kernel_release = Some(manifest.kernel_release.clone());
    metadata.jump_back_entry = Some(entry);
    let extra = [
        ("mode", manifest.mode.name().to_string()),
        (
            kjump_image_format::metadata::KEY_REGION,
            manifest.region.clone(),
        ),
        ("started-ns", manifest.started_ns.to_string()),
    ];
    metadata
        .extra
        .extend(extra.into_iter().map(|(k, v)| (k.to_string(), v)));
    // The on-disk state of the saved kernel's filesystems, for the
    // stale-filesystem guard of the resume.
    for dev in &manifest.filesystems {
        let fp = crate::fsguard::fingerprint(Path::new(dev))
            .unwrap_or_else(|e| format!("unreadable in the capture kernel: {e}"));
        say(format_args!("filesystem on {dev}: {fp}"));
        metadata
            .extra
            .push((format!("{}{dev}", crate::fsguard::META_PREFIX), fp));
    }
    let place = Place::locate(Path::new(&manifest.target), manifest.target_offset)
        .map_err(|e| error_chain(&e))?;
    say(format_args!("writing the image to {}", place.describe()));
    let mut target = Target::open_place(&place).map_err(|e| error_chain(&e))?;
    target.set_swap_was_active(manifest.swap_was_active);
    let mut opts = CaptureOptions::new();
    if let Some(uuid) = manifest.image_uuid {
        opts.uuid = uuid;
    }
    let report = match manifest.encrypt {
        None => capture(&source, &target, &metadata, &opts),
        Some(kind) => {
            let secret = take_secret(kind)?;
            let kdf = match kind {
                SecretKind::KeyFile => Kdf::KeyFile,
                SecretKind::Passphrase => kjump_image_format::crypto::DEFAULT_KDF,
            };
            say("the image is encrypted (AES-256-GCM)");
            let enc = kjump_writer::Encryption {
                secret: &secret,
                kdf,
            };
            kjump_writer::capture_encrypted(&source, &target, &metadata, &opts, &enc)
        }
    }
    .map_err(|e| error_chain(&e))?;
    let secs = report.elapsed.as_secs_f64();
    say(format_args!(
        "image committed: {} pages ({} zero), {} bytes in {secs:.2} s ({:.0} MB/s)",
        report.layout.total_pages,
        report.layout.zero_pages,
        report.layout.image_len,
        report.input_bytes as f64 / secs.max(1e-9) / 1e6
    ));
    Ok(Plan {
        mode: manifest.mode,
        entry,
    })
}

/// R: the image on the target back into memory.
fn restore_phase(manifest: &Manifest, state: &mut State) -> Result<Plan, String> {
    let iomem =
        std::fs::read_to_string("/proc/iomem").map_err(|e| format!("reading /proc/iomem: {e}"))?;
    let own = ranges::parse_iomem("/proc/iomem", &iomem).map_err(|e| e.to_string())?;
    if manifest.kernel_release.is_empty() {
        say(format_args!("restoring {}", manifest.target));
    } else {
        say(format_args!(
            "restoring {} (kernel {})",
            manifest.target, manifest.kernel_release
        ));
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let place = Place::locate(Path::new(&manifest.target), manifest.target_offset)
        .map_err(|e| error_chain(&e))?;
    let secret = match manifest.encrypt {
        None => None,
        Some(kind) => Some(restore_secret(manifest, kind, &place)?),
    };
    let pin = pin(manifest)?;
    let report = kjump_restorer::restore::restore_with_key(
        &place,
        Path::new("/dev/mem"),
        &MemoryMap::merged(own),
        threads,
        secret.as_ref(),
        Some(&pin),
    )
    .map_err(|e| {
        if !e.memory_untouched() {
            state.hand_back = None;
        }
        error_chain(&e)
    })?;
    drop(secret);
    state.hand_back = None;
    let mb = report.bytes as f64 / 1e6;
    say(format_args!(
        "verified in {:.2} s, wrote {mb:.0} MB of memory in {:.2} s ({:.0} MB/s)",
        report.verify.as_secs_f64(),
        report.write.as_secs_f64(),
        mb / report.write.as_secs_f64().max(1e-9)
    ));
    Ok(Plan {
        mode: Mode::Restore,
        entry: report.entry,
    })
}

/// R: what R0 checked, from the manifest: the image must still be that
/// image, with the ranges and the region R is confined by.
fn pin(manifest: &Manifest) -> Result<kjump_restorer::restore::Pin, String> {
    let uuid = manifest.image_uuid.ok_or(
        "the manifest names no image uuid: the restore kernel was not loaded by this kjump",
    )?;
    let ranges =
        ranges::parse_range_list(&manifest.ram).map_err(|e| format!("manifest ram: {e}"))?;
    Ok(kjump_restorer::restore::Pin {
        uuid,
        ranges: MemoryMap::merged(ranges),
        region: manifest_region(manifest)?,
    })
}

/// The manifest's `region`: one range.
fn manifest_region(manifest: &Manifest) -> Result<kjump_image_format::PhysRange, String> {
    ranges::parse_range_list(&manifest.region)
        .ok()
        .filter(|r| r.len() == 1)
        .map(|r| r[0])
        .ok_or_else(|| format!("manifest region {:?} is not one range", manifest.region))
}

/// R: the secret of an encrypted image, from where the manifest says. A
/// passphrase is asked on the console (echo off) and checked against the
/// image's key check value, up to three times; an empty line gives up.
fn restore_secret(manifest: &Manifest, kind: SecretKind, place: &Place) -> Result<Secret, String> {
    if manifest.key_source == KeySource::Initramfs {
        return take_secret(kind);
    }
    // The superblock once: every passphrase try is checked against it.
    let file = place.reader().map_err(|e| error_chain(&e))?;
    let sb = kjump_image_format::reader::read_superblock(&file).map_err(|e| e.to_string())?;
    let crypto = sb
        .crypto
        .ok_or_else(|| format!("the image on {} is not encrypted", place.describe()))?;
    let unlock = |secret: Secret| -> Result<Secret, String> {
        kjump_image_format::ImageKeys::unlock(&secret, &crypto, &sb.uuid)
            .map(|_| secret)
            .map_err(|e| error_chain(&e))
    };
    match (&manifest.key_source, kind) {
        (KeySource::Device { device, size }, SecretKind::KeyFile) => {
            let mut bytes = read_key_device(Path::new(device), *size)?;
            say(format_args!("read the key from {device} ({size} bytes)"));
            unlock(Secret::key_file(std::mem::take(&mut *bytes)).map_err(|e| e.to_string())?)
        }
        (KeySource::Ask, SecretKind::Passphrase) => {
            let tty = manifest.tty.as_deref().unwrap_or("/dev/console");
            let prompt = format!(
                "kjump: passphrase for the encrypted image on {} (an empty line boots without resuming): ",
                place.describe()
            );
            crate::prompt::ask(
                Path::new(tty),
                &prompt,
                crate::resume::PASSPHRASE_TRIES,
                |mut line| {
                    unlock(
                        Secret::passphrase(std::mem::take(&mut *line))
                            .map_err(|e| e.to_string())?,
                    )
                },
            )
        }
        (source, kind) => Err(format!(
            "the manifest pairs a {} with key source {source:?}",
            kind.name()
        )),
    }
}

/// The first `size` bytes of a device holding a key file.
fn read_key_device(device: &Path, size: usize) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
    use std::io::Read as _;
    let mut bytes = zeroize::Zeroizing::new(vec![0u8; size]);
    std::fs::File::open(device)
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| format!("reading {size} key bytes from {}: {e}", device.display()))?;
    Ok(bytes)
}

/// The secret of an encrypted image, which the saved or normal kernel put
/// into this initramfs (RAM only): read, then overwritten and removed, so
/// that only the copy in use remains until it is wiped on drop.
fn take_secret(kind: SecretKind) -> Result<Secret, String> {
    let path = Path::new("/").join(crate::load::SECRET_PATH);
    let bytes = std::fs::read(&path).map_err(|e| {
        format!(
            "the manifest says the image is encrypted, and the secret is missing ({}: {e})",
            path.display()
        )
    })?;
    let len = bytes.len();
    let _ = std::fs::write(&path, vec![0u8; len]);
    let _ = std::fs::remove_file(&path);
    match kind {
        SecretKind::KeyFile => Secret::key_file(bytes),
        SecretKind::Passphrase => Secret::passphrase(bytes),
    }
    .map_err(|e| e.to_string())
}

fn finish(plan: Plan) -> ! {
    match plan.mode {
        Mode::Checkpoint => {
            say("checkpoint: jumping back to the saved kernel");
            jump_back(plan.entry);
            say("the jump back failed; powering off (the image is committed)");
            power_off_now()
        }
        Mode::Restore => {
            say(format_args!(
                "jumping to the saved kernel at {:#x}",
                plan.entry
            ));
            jump_back(plan.entry);
            say("the jump failed; restarting into a normal boot (the image is consumed)");
            restart_now()
        }
        Mode::Reboot => {
            say("rebooting");
            restart_now()
        }
        Mode::Suspend => suspend_then_jump_back(plan.entry),
        Mode::Poweroff => {
            say("powering off");
            power_off_now()
        }
    }
}

/// Suspends to RAM; on wake, jumps back to the saved kernel, which then
/// marks the image consumed. The image is committed and on stable storage
/// already: if the power fails while suspended, the next boot resumes from
/// it. A machine that cannot suspend is powered off instead.
fn suspend_then_jump_back(entry: u64) -> ! {
    say("suspending to RAM; on wake this kernel jumps back to the saved one, if the power fails the next boot resumes from the image");
    // The wall clock: the monotonic clock stands still while suspended.
    let slept = std::time::SystemTime::now();
    match kjump_sys::power::suspend_to_ram() {
        Ok(()) => {
            say(format_args!(
                "woke from suspend to RAM after {:.1} s: RAM is intact, jumping back to the saved kernel at {entry:#x}",
                slept.elapsed().unwrap_or_default().as_secs_f64()
            ));
            jump_back(entry);
            say("the jump back failed; powering off (the image is committed: the next boot resumes from it)");
        }
        Err(e) => say(format_args!(
            "suspend to RAM failed (writing mem to /sys/power/state: {e}); powering off instead (the image is committed: the next boot resumes from it)"
        )),
    }
    power_off_now()
}

fn jump_back(entry: u64) {
    match kexec::load_jump_back(entry).and_then(|()| kexec::jump()) {
        // A jump that returns means the saved kernel jumped here again: it
        // has no further use for this kernel.
        Ok(()) => say("the saved kernel returned here"),
        Err(e) => say(error_chain(&e)),
    }
}

fn restart_now() -> ! {
    let e = power(PowerAction::Restart);
    say(format_args!("restart failed: {e}"));
    power_off_now()
}

fn power_off_now() -> ! {
    loop {
        let e = power(PowerAction::PowerOff);
        say(format_args!(
            "power-off failed: {e}; retrying in {COUNTDOWN} s"
        ));
        std::thread::sleep(Duration::from_secs(COUNTDOWN));
    }
}

fn countdown(what: &str) {
    for left in (1..=COUNTDOWN).rev() {
        say(format_args!("{what} in {left} s"));
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Leaves `what` in the mailbox of the kernel this one jumps back to.
fn report(what: &str, state: &State) {
    let Some(at) = &state.mailbox else { return };
    let kind = if state.escaped {
        ReportKind::Escaped
    } else {
        ReportKind::Failed
    };
    let report = Report {
        kind,
        message: what.to_string(),
    };
    if let Err(e) = crate::mailbox::post(Path::new("/dev/mem"), at, &report) {
        say(format_args!(
            "could not leave the reason in the mailbox: {e}"
        ));
    }
}

fn fail(what: impl fmt::Display, state: &State) -> ! {
    let what = what.to_string();
    if let Some(entry) = state.hand_back {
        if state.escaped {
            say(format_args!("not resuming: {what}"));
            say("this kernel wrote nothing; the normal boot's memory may be damaged: reboot it");
        } else {
            say(format_args!("not resuming: {what}"));
            say("memory is untouched");
        }
        report(&what, state);
        say(format_args!(
            "handing control back to the normal boot at {entry:#x}"
        ));
        jump_back(entry);
        say("the hand-back failed");
        countdown("restarting into a normal boot");
        restart_now();
    }
    if state.restoring {
        say(format_args!("resume failed: {what}"));
        countdown("restarting into a normal boot");
        restart_now();
    }
    say(format_args!("capture failed: {what}"));
    if state.escaped {
        say("nothing was written; the saved kernel's memory may be damaged: it must save its work and reboot");
    } else {
        say("no image was committed; the saved kernel's memory is untouched");
    }
    if state.entry.is_some() {
        report(&what, state);
    }
    // A kernel outside its region jumps back at once: the saved kernel's
    // session is to be saved before anything else happens.
    if Path::new(RESCUE_SHELL).exists() && !state.escaped {
        let then = if state.entry.is_some() {
            "jump back to the saved kernel"
        } else {
            "power off"
        };
        say(format_args!(
            "starting a rescue shell ({RESCUE_SHELL}); exit it to {then}"
        ));
        let _ = std::process::Command::new(RESCUE_SHELL).status();
    }
    // The saved kernel runs on as if it had never left: its session is
    // worth more than a clean power-off.
    if let Some(entry) = state.entry {
        say(format_args!(
            "jumping back to the saved kernel at {entry:#x}"
        ));
        jump_back(entry);
        say("the jump back failed");
    }
    countdown("powering off");
    power_off_now()
}

//! kjump as `/init` of the confined kernels: the capture kernel B and the
//! restore kernel R, which a jumping kernel (`kjump-jump`) loaded into the
//! crashkernel region with a manifest in their initramfs.
//!
//! In B, the saved kernel A jumped here with its memory intact. This program
//! mounts what it needs, reads the manifest A left in the initramfs and the
//! re-entry point A left on the command line, captures A's RAM from /dev/mem
//! to the target, commits the image, then powers off, reboots or jumps back
//! to A ([`capture`]).
//!
//! In R (manifest mode `restore`, written by `kjump resume` on a fresh boot),
//! it restores the image on the target into memory and jumps to A's
//! re-entry point ([`restore`]); a refusal hands control back to the boot
//! that loaded R while memory is untouched, else restarts the machine into
//! a normal boot.
//!
//! It is PID 1: it never panics out (a panic in PID 1 is a kernel panic) and
//! every failure ends in a message on the console and a defined action. In B:
//! a rescue shell when the initramfs has one, else a jump back to A so the
//! user loses nothing, else a power-off after a visible countdown. In R: a
//! restart after a visible countdown.

#![forbid(unsafe_code)]

pub mod capture;
pub mod confine;
pub mod prompt;
pub mod restore;
pub mod secret;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kjump_handoff::claim::ClaimError;
use kjump_handoff::error_chain;
use kjump_handoff::mailbox::{MailboxAddress, Report, ReportKind};
use kjump_handoff::manifest::{Manifest, ManifestError, Mode};
use kjump_image_format::{FormatError, PhysRange};
use kjump_restorer::RestoreError;
use kjump_sys::kexec::{self, KexecError};
use kjump_sys::power::{power, PowerAction};
use kjump_sys::ranges::{self, RangesError};
use kjump_sys::{PlaceError, TargetError};
use kjump_writer::{CaptureError, SourceError};

use crate::confine::Escape;
use crate::prompt::AskError;
use crate::secret::KeyError;

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

/// Why B did not capture, or R did not restore.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A mount failed.
    #[error("{step}")]
    Mount {
        /// The mount.
        step: MountStep,
        /// The cause.
        #[source]
        source: kjump_sys::mount::Errno,
    },
    /// A file could not be read.
    #[error("reading {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The manifest is unusable.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// No re-entry point on the command line.
    #[error(transparent)]
    Entry(#[from] KexecError),
    /// This kernel runs outside its region.
    #[error(transparent)]
    Escaped(Escape),
    /// Whether this kernel runs inside its region cannot be told.
    #[error("cannot tell whether this kernel runs inside its region {region}")]
    Confinement {
        /// The region.
        region: PhysRange,
        /// The cause.
        #[source]
        source: RangesError,
    },
    /// This kernel's own RAM is unknown.
    #[error(transparent)]
    OwnRam(RangesError),
    /// The memory to capture cannot be read.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The target cannot be found.
    #[error(transparent)]
    Place(#[from] PlaceError),
    /// The target cannot be opened.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// The target does not carry the saved kernel's claim.
    #[error(transparent)]
    Claim(#[from] ClaimError),
    /// The capture failed.
    #[error(transparent)]
    Capture(#[from] CaptureError),
    /// The restore refused or failed.
    #[error(transparent)]
    Restore(#[from] RestoreError),
    /// The image's superblock is unusable.
    #[error(transparent)]
    Image(#[from] FormatError),
    /// The key is missing or wrong.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// No passphrase opened the image.
    #[error(transparent)]
    Passphrase(#[from] AskError<KeyError>),
    /// The manifest's secret is unusable.
    #[error(transparent)]
    Secret(#[from] secret::SecretSourceError),
    /// R's manifest names no image.
    #[error("the manifest names no image uuid: the restore kernel was not loaded by this kjump")]
    NoUuid,
}

/// One console line, in one write: stderr is unbuffered, so `eprintln!`
/// writes each formatted piece separately and the kernel's own messages land
/// in the middle of the line.
fn say(msg: impl fmt::Display) {
    use std::io::Write as _;
    let line = format!("kjump: {msg}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// What a phase decided.
pub struct Plan {
    mode: Mode,
    entry: u64,
}

/// What is known when something fails: decides the fallback.
#[derive(Default)]
pub struct State {
    entry: Option<u64>,
    restoring: bool,
    /// In R: the normal boot's re-entry point while it can still take
    /// control back (no byte of memory written yet).
    hand_back: Option<u64>,
    /// Where the kernel jumped back to learns why.
    mailbox: Option<MailboxAddress>,
    /// This kernel found itself outside its region.
    escaped: bool,
    /// How long a prompt waits for an answer (the manifest's).
    prompt_limit: Option<std::time::Duration>,
}

/// Runs /init. Never returns.
pub fn main() -> ! {
    let mut state = State::default();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&mut state)));
    match result {
        Ok(Ok(plan)) => finish(plan),
        Ok(Err(e)) => fail(&error_chain(&e), &state),
        Err(_) => fail("internal error (a bug in kjump: please report it)", &state),
    }
}

fn read(path: &Path) -> Result<String, InitError> {
    std::fs::read_to_string(path).map_err(|source| InitError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn run(state: &mut State) -> Result<Plan, InitError> {
    mount_all()?;
    let text = read(&Path::new("/").join(kjump_handoff::manifest::PATH))?;
    let manifest = Manifest::parse(&text)?;
    state.mailbox = manifest.mailbox;
    state.prompt_limit = Some(manifest.prompt_limit());
    if manifest.mode == Mode::Restore {
        state.restoring = true;
        say("restore kernel started");
        // The normal boot jumped here with its context preserved: until
        // memory is written, a refusal hands control back to it.
        state.hand_back = std::fs::read_to_string("/proc/cmdline")
            .ok()
            .and_then(|c| kexec::jump_back_entry(&c).ok());
        check_confinement(&manifest, state)?;
        return restore::restore_phase(&manifest, state);
    }
    say("capture kernel started");
    let cmdline = read(Path::new("/proc/cmdline"))?;
    let entry = kexec::jump_back_entry(&cmdline)?;
    state.entry = Some(entry);
    check_confinement(&manifest, state)?;
    capture::capture_phase(&manifest, entry)
}

/// The tripwire: this kernel's RAM and image must lie inside the region
/// the manifest names, or it touches nothing ([`crate::confine`]).
fn check_confinement(manifest: &Manifest, state: &mut State) -> Result<(), InitError> {
    let region = manifest.region;
    let iomem = read(Path::new("/proc/iomem"))?;
    match confine::check(&iomem, region) {
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
            Err(InitError::Escaped(escape))
        }
        Err(source) => Err(InitError::Confinement { region, source }),
    }
}

fn mount_all() -> Result<(), InitError> {
    for step in MOUNTS {
        kjump_sys::mount::mount_kernel_fs(step.fstype, step.target)
            .map_err(|source| InitError::Mount { step, source })?;
    }
    Ok(())
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
    if let Err(e) = kjump_handoff::mailbox::post(Path::new("/dev/mem"), at, &report) {
        say(format_args!(
            "could not leave the reason in the mailbox: {}",
            error_chain(&e)
        ));
    }
}

/// Offers the rescue shell on the console: Enter within the manifest's
/// prompt timeout takes it; no answer, or a console that cannot be read,
/// goes on to `then` (an unattended machine never waits forever).
fn wants_rescue_shell(then: &str, state: &State) -> bool {
    let limit = state.prompt_limit.unwrap_or(std::time::Duration::from_secs(
        kjump_handoff::manifest::DEFAULT_PROMPT_TIMEOUT,
    ));
    let prompt = format!(
        "kjump: press Enter within {} s for a rescue shell ({RESCUE_SHELL}), or wait to {then}\n",
        limit.as_secs()
    );
    match kjump_sys::tty::read_secret_line(Path::new("/dev/console"), &prompt, Some(limit)) {
        Ok(Some(_)) => true,
        Ok(None) => {
            say("the console closed: no rescue shell");
            false
        }
        Err(e) => {
            say(format_args!("no rescue shell: {e}"));
            false
        }
    }
}

fn fail(what: &str, state: &State) -> ! {
    // Whatever failed (an error or a panic), once a byte of the saved
    // memory was written the kernel that jumped here must not run on it.
    let may_hand_back = !kjump_sys::physmem::memory_written();
    if let Some(entry) = state.hand_back.filter(|_| may_hand_back) {
        hand_back(what, entry, state);
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
        report(what, state);
    }
    // A kernel outside its region jumps back at once: the saved kernel's
    // session is to be saved before anything else happens.
    if Path::new(RESCUE_SHELL).exists() && !state.escaped {
        let then = if state.entry.is_some() {
            "jump back to the saved kernel"
        } else {
            "power off"
        };
        if wants_rescue_shell(then, state) {
            say(format_args!(
                "starting a rescue shell ({RESCUE_SHELL}); exit it to {then}"
            ));
            let _ = std::process::Command::new(RESCUE_SHELL).status();
        }
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

/// R, before it wrote a byte of memory: hands control back to the normal
/// boot that loaded it, saying why on the console and in the mailbox.
fn hand_back(what: &str, entry: u64, state: &State) -> ! {
    say(format_args!("not resuming: {what}"));
    if state.escaped {
        say("this kernel wrote nothing; the normal boot's memory may be damaged: reboot it");
    } else {
        say("memory is untouched");
    }
    report(what, state);
    say(format_args!(
        "handing control back to the normal boot at {entry:#x}"
    ));
    jump_back(entry);
    say("the hand-back failed");
    countdown("restarting into a normal boot");
    restart_now()
}

//! kjump as `/init` of the capture kernel.
//!
//! The saved kernel A jumped here with its memory intact. This program mounts
//! what it needs, reads the manifest A left in the initramfs and the re-entry
//! point A left on the command line, captures A's RAM from /dev/mem to the
//! target, commits the image, then powers off, reboots or jumps back to A.
//!
//! It is PID 1: it never panics out (a panic in PID 1 is a kernel panic) and
//! every failure ends in a message on the console and a defined action: a
//! rescue shell when the initramfs has one, else a jump back to A so the user
//! loses nothing, else a power-off after a visible countdown.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use kjump_image_format::MemoryMap;
use kjump_restorer::kexec::{self, PowerAction};
use kjump_writer::{capture, ranges, CaptureOptions, MemorySource, Target};
use nix::mount::{mount, MsFlags};

use crate::manifest::{Manifest, Mode};

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

/// Shell started when something fails, if the initramfs carries one.
pub const RESCUE_SHELL: &str = "/bin/sh";
const COUNTDOWN: u64 = 10;

fn say(msg: impl fmt::Display) {
    eprintln!("kjump: {msg}");
}

/// What the capture phase learned and decided.
struct Plan {
    mode: Mode,
    entry: u64,
}

/// Runs /init. Never returns.
pub fn main() -> ! {
    say("capture kernel started");
    let mut entry = None;
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| capture_phase(&mut entry)));
    match result {
        Ok(Ok(plan)) => finish(plan),
        Ok(Err(e)) => fail(&e, entry),
        Err(_) => fail("internal error (a bug in kjump: please report it)", entry),
    }
}

fn capture_phase(entry: &mut Option<u64>) -> Result<Plan, String> {
    for m in MOUNTS {
        let _ = std::fs::create_dir_all(m.target);
        mount(
            Some(m.fstype),
            m.target,
            Some(m.fstype),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| format!("{m}: {e}"))?;
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline")
        .map_err(|e| format!("reading /proc/cmdline: {e}"))?;
    *entry = Some(kexec::jump_back_entry(&cmdline).map_err(|e| e.to_string())?);
    let text = std::fs::read_to_string(Path::new("/").join(crate::manifest::PATH))
        .map_err(|e| format!("reading /{}: {e}", crate::manifest::PATH))?;
    let manifest = Manifest::parse(&text).map_err(|e| e.to_string())?;
    let map = MemoryMap::merged(
        ranges::parse_range_list(&manifest.ram).map_err(|e| format!("manifest ram: {e}"))?,
    );
    say(format_args!(
        "saving {} bytes of {} (kernel {}) to {}",
        map.total_bytes(),
        "/dev/mem",
        manifest.kernel_release,
        manifest.target
    ));
    let source =
        MemorySource::open(Path::new("/dev/mem"), Some(map)).map_err(|e| crate::error_chain(&e))?;
    let mut metadata = source.metadata();
    metadata.kernel_release = Some(manifest.kernel_release.clone());
    metadata.jump_back_entry = *entry;
    metadata
        .extra
        .push(("mode".into(), manifest.mode.name().into()));
    metadata
        .extra
        .push(("region".into(), manifest.region.clone()));
    metadata
        .extra
        .push(("started-ns".into(), manifest.started_ns.to_string()));
    let target = Target::open(Path::new(&manifest.target)).map_err(|e| crate::error_chain(&e))?;
    let opts = CaptureOptions::new();
    let report = capture(&source, &target, &metadata, &opts).map_err(|e| crate::error_chain(&e))?;
    let secs = report.elapsed.as_secs_f64();
    say(format_args!(
        "image committed: {} pages ({} zero), {} bytes in {:.2} s ({:.0} MB/s)",
        report.layout.total_pages,
        report.layout.zero_pages,
        report.layout.image_len,
        secs,
        report.input_bytes as f64 / secs.max(1e-9) / 1e6
    ));
    Ok(Plan {
        mode: manifest.mode,
        entry: entry.unwrap_or_default(),
    })
}

fn finish(plan: Plan) -> ! {
    match plan.mode {
        Mode::Checkpoint => {
            say("checkpoint: jumping back to the saved kernel");
            jump_back(plan.entry);
            say("the jump back failed; powering off (the image is committed)");
            power_off_now();
        }
        Mode::Reboot => {
            say("rebooting");
            let e = kexec::power(PowerAction::Restart);
            say(format_args!("reboot failed: {e}"));
            power_off_now();
        }
        Mode::Poweroff => {
            say("powering off");
            power_off_now();
        }
    }
}

fn jump_back(entry: u64) {
    match kexec::load_jump_back(entry).and_then(|()| kexec::jump()) {
        // A jump back that returns means the saved kernel jumped here again:
        // it has no further use for this kernel.
        Ok(()) => say("the saved kernel returned to the capture kernel"),
        Err(e) => say(crate::error_chain(&e)),
    }
}

fn power_off_now() -> ! {
    loop {
        let e = kexec::power(PowerAction::PowerOff);
        say(format_args!(
            "power-off failed: {e}; retrying in {COUNTDOWN} s"
        ));
        std::thread::sleep(Duration::from_secs(COUNTDOWN));
    }
}

fn fail(what: impl fmt::Display, entry: Option<u64>) -> ! {
    say(format_args!("capture failed: {what}"));
    say("no image was committed; the saved kernel's memory is untouched");
    if Path::new(RESCUE_SHELL).exists() {
        say(format_args!(
            "starting a rescue shell ({RESCUE_SHELL}); exit it to power off"
        ));
        let _ = std::process::Command::new(RESCUE_SHELL).status();
    } else if let Some(entry) = entry {
        say(format_args!(
            "jumping back to the saved kernel at {entry:#x}"
        ));
        jump_back(entry);
    }
    for left in (1..=COUNTDOWN).rev() {
        say(format_args!("powering off in {left} s"));
        std::thread::sleep(Duration::from_secs(1));
    }
    power_off_now()
}

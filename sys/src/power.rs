//! Ending a kernel's life: power off, restart, suspend to RAM.

use std::io;

use nix::sys::reboot::{reboot, RebootMode};

/// How to end a kernel's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerAction {
    /// Switch the machine off.
    PowerOff,
    /// Restart the machine.
    Restart,
}

/// Flushes filesystems and powers off or restarts. Returns only on failure.
pub fn power(action: PowerAction) -> io::Error {
    let mode = match action {
        PowerAction::PowerOff => RebootMode::RB_POWER_OFF,
        PowerAction::Restart => RebootMode::RB_AUTOBOOT,
    };
    nix::unistd::sync();
    match reboot(mode) {
        Ok(never) => match never {},
        Err(e) => e.into(),
    }
}

/// Suspends the machine to RAM (`mem` to /sys/power/state); returns once
/// it woke up.
pub fn suspend_to_ram() -> io::Result<()> {
    std::fs::write("/sys/power/state", "mem")
}

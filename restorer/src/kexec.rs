//! kexec jump: loading a jump back into a kernel that is waiting in memory,
//! and the jump itself.
//!
//! A kernel that kexec-jumped (`KEXEC_PRESERVE_CONTEXT`) into another left
//! its re-entry point on that kernel's command line as
//! `kexec_jump_back_entry=0x...`. Jumping back needs no new kernel in memory:
//! one zero-size segment at a nonzero page is enough to make `kexec_load`
//! accept the load (a segment at address 0 makes the kernel treat it as
//! covering all memory, and allocating the control page then fails).

use std::io;

/// Physical address of the placeholder segment of a jump-back load.
pub const JUMP_BACK_SEGMENT: usize = 0x1000;
/// `KEXEC_ARCH_DEFAULT`: the architecture of the running kernel.
const KEXEC_ARCH_DEFAULT: libc::c_ulong = 0;

/// `struct kexec_segment` of `<linux/kexec.h>` (not in the libc crate).
#[repr(C)]
struct KexecSegment {
    buf: *const libc::c_void,
    bufsz: libc::size_t,
    mem: *const libc::c_void,
    memsz: libc::size_t,
}

/// Why a kexec step failed, with what the error number means for kexec.
#[derive(Debug, thiserror::Error)]
pub enum KexecError {
    /// `kexec_load` refused.
    #[error("kexec_load of the jump back to {entry:#x} failed: {hint}")]
    Load {
        /// The re-entry point.
        entry: u64,
        /// What the error means.
        hint: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// `reboot(LINUX_REBOOT_CMD_KEXEC)` refused.
    #[error("reboot(LINUX_REBOOT_CMD_KEXEC) failed: {hint}")]
    Jump {
        /// What the error means.
        hint: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// No `kexec_jump_back_entry=` on the command line.
    #[error("the kernel command line has no kexec_jump_back_entry= (this kernel was not entered by a kexec jump)")]
    NoEntry,
    /// The entry on the command line is not a hex address.
    #[error("kexec_jump_back_entry={0:?} is not a hex address")]
    BadEntry(String),
}

/// What an errno from `kexec_load` means, from the kernel's own checks.
pub fn load_hint(errno: Option<i32>) -> &'static str {
    match errno {
        Some(libc::EINVAL) => "the kernel rejects KEXEC_PRESERVE_CONTEXT: it was built without CONFIG_KEXEC_JUMP",
        Some(libc::EPERM) => "not permitted: kjump needs root (CAP_SYS_BOOT), and kexec_load is refused under Secure Boot lockdown or with sysctl kernel.kexec_load_disabled=1",
        Some(libc::ENOSYS) => "the kernel was built without CONFIG_KEXEC",
        Some(libc::EBUSY) => "another kexec image is being loaded or executed",
        Some(libc::ENOMEM) => "the kernel could not allocate kexec's control pages",
        _ => "unexpected error",
    }
}

/// Loads a jump back to `entry`, replacing any loaded kexec image.
pub fn load_jump_back(entry: u64) -> Result<(), KexecError> {
    let segment = KexecSegment {
        buf: std::ptr::null(),
        bufsz: 0,
        mem: JUMP_BACK_SEGMENT as *const libc::c_void,
        memsz: 0,
    };
    let flags = libc::KEXEC_PRESERVE_CONTEXT as libc::c_ulong | KEXEC_ARCH_DEFAULT;
    // SAFETY: kexec_load reads `nr_segments` (1) kexec_segment structs from
    // the pointer, which points at a live, properly laid out struct; the
    // zero-size segment has no buffer for the kernel to read.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_kexec_load,
            entry as libc::c_ulong,
            1 as libc::c_ulong,
            &segment as *const KexecSegment,
            flags,
        )
    };
    if rc != 0 {
        let source = io::Error::last_os_error();
        return Err(KexecError::Load {
            entry,
            hint: load_hint(source.raw_os_error()),
            source,
        });
    }
    Ok(())
}

/// Jumps into the loaded kexec image with its context preserved. Returns
/// when something jumps back into this kernel.
pub fn jump() -> Result<(), KexecError> {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
    // SAFETY: reboot with LINUX_REBOOT_CMD_KEXEC takes no pointer; with a
    // preserve-context image loaded it returns 0 once we are jumped back to.
    let rc = unsafe { libc::reboot(libc::LINUX_REBOOT_CMD_KEXEC) };
    if rc != 0 {
        let source = io::Error::last_os_error();
        let hint = match source.raw_os_error() {
            Some(libc::EPERM) => "not permitted (kjump needs root)",
            Some(libc::EINVAL) => "no kexec image is loaded",
            _ => "unexpected error",
        };
        return Err(KexecError::Jump { hint, source });
    }
    Ok(())
}

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
    let cmd = match action {
        PowerAction::PowerOff => libc::RB_POWER_OFF,
        PowerAction::Restart => libc::RB_AUTOBOOT,
    };
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
    // SAFETY: reboot with these commands takes no pointer and does not
    // return on success.
    unsafe { libc::reboot(cmd) };
    io::Error::last_os_error()
}

/// The re-entry point the jumping kernel left on `cmdline`.
pub fn jump_back_entry(cmdline: &str) -> Result<u64, KexecError> {
    let value = cmdline
        .split_ascii_whitespace()
        .filter_map(|w| w.strip_prefix("kexec_jump_back_entry="))
        .next_back()
        .ok_or(KexecError::NoEntry)?;
    let digits = value.strip_prefix("0x").unwrap_or(value);
    u64::from_str_radix(digits, 16).map_err(|_| KexecError::BadEntry(value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_is_read_from_the_command_line() {
        let c = "console=ttyS0 memmap=exactmap iomem=relaxed kexec_jump_back_entry=0x100000c7a";
        assert_eq!(jump_back_entry(c).unwrap(), 0x1_0000_0c7a);
        assert!(matches!(
            jump_back_entry("console=ttyS0"),
            Err(KexecError::NoEntry)
        ));
        assert!(matches!(
            jump_back_entry("kexec_jump_back_entry=0xzz"),
            Err(KexecError::BadEntry(_))
        ));
    }

    #[test]
    fn errnos_are_explained() {
        assert!(load_hint(Some(libc::EINVAL)).contains("CONFIG_KEXEC_JUMP"));
        assert!(load_hint(Some(libc::EPERM)).contains("lockdown"));
    }
}

//! kexec jump: loading a jump back into a kernel that is waiting in memory,
//! the jump itself, and a selftest of the jump on the running kernel.
//!
//! A kernel that kexec-jumped (`KEXEC_PRESERVE_CONTEXT`) into another left
//! its re-entry point on that kernel's command line as
//! `kexec_jump_back_entry=0x...`. Jumping back needs no new kernel in memory:
//! one zero-size segment at a nonzero page is enough to make `kexec_load`
//! accept the load (a segment at address 0 makes the kernel treat it as
//! covering all memory, and allocating the control page then fails).
//!
//! [`selftest`] checks the running kernel's half of every kjump jump, as
//! Linux's own selftest (tools/testing/selftests/kexec/test_kexec_jump, 6.16)
//! does: it jumps into a one-page payload that jumps straight back, twice.
//! [`probe_preserve_context`] only loads and unloads that payload: whether
//! the kernel accepts a preserve-context load at all, and if not, why.

use std::io;
use std::time::{Duration, Instant};

/// Physical address of the placeholder segment of a jump-back load.
pub const JUMP_BACK_SEGMENT: usize = 0x1000;
/// `KEXEC_ARCH_DEFAULT`: the architecture of the running kernel.
const KEXEC_ARCH_DEFAULT: libc::c_ulong = 0;
/// Physical address the selftest payload runs at, as in Linux's selftest.
/// Any page will do: a preserve-context jump swaps the payload with the
/// page there and swaps it back on return.
pub const SELFTEST_ADDRESS: usize = 0x40_0000;

/// The selftest payload, x86-64 machine code that jumps straight back into
/// the kernel that jumped to it, the way a kernel jumps back: by calling the
/// return address it was entered with. The kernel takes the address after
/// that `call` as the entry of its next jump, which does the same again.
///
/// ```text
/// 0: 58      pop  %rax    the jumping kernel's return address
/// 1: ff d0   call *%rax   back into it; its next jump enters at 3
/// 3: eb fb   jmp  0
/// ```
///
/// A plain `ret` is not enough: the kernel then reads the next entry from
/// the callee's stack, since 6.14 from a slot it pushed itself, before that
/// from the word above the stack's top, in the page after the swap page,
/// which the payload does not own (on 6.12 a payload that only returns
/// reset the test machine; Linux's selftest, written for 6.16, stores its
/// next entry in that slot and returns). The `call` leaves the entry where
/// both look: in the slot the return address held. The payload needs no
/// stack of its own and takes no exception (6.16 invalidates the IDT
/// inside the jump).
pub const SELFTEST_PAYLOAD: [u8; 5] = [0x58, 0xff, 0xd0, 0xeb, 0xfb];

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
    /// `kexec_load` of the selftest payload refused.
    #[error("kexec_load of a preserve-context payload at {SELFTEST_ADDRESS:#x} failed: {hint}")]
    LoadPayload {
        /// What the error means.
        hint: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Unloading the loaded kexec image failed.
    #[error("kexec_load unloading the kexec image failed")]
    Unload(#[source] io::Error),
    /// A selftest jump failed; the payload is unloaded.
    #[error("selftest jump {jump} of {jumps}")]
    SelftestJump {
        /// Which jump, from 1.
        jump: u32,
        /// Jumps asked for.
        jumps: u32,
        /// What failed.
        #[source]
        source: Box<KexecError>,
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

/// Whether a preserve-context load failed because this kernel cannot do
/// one at all (`EINVAL`: no CONFIG_KEXEC_JUMP; `ENOSYS`: no kexec), not
/// for a reason of the moment (lockdown, a sysctl, a busy kexec, memory).
pub fn refuses_preserve_context(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS))
}

/// `kexec_load` of `segments` with entry `entry` and context preserved,
/// replacing any loaded kexec image; `None` segments unload it.
fn preserve_context_load(entry: u64, segment: Option<&KexecSegment>) -> io::Result<()> {
    let (count, segments, flags) = match segment {
        Some(s) => (
            1,
            s as *const KexecSegment,
            libc::KEXEC_PRESERVE_CONTEXT as libc::c_ulong | KEXEC_ARCH_DEFAULT,
        ),
        None => (0, std::ptr::null(), KEXEC_ARCH_DEFAULT),
    };
    // SAFETY: kexec_load reads `count` kexec_segment structs from
    // `segments` (one live, properly laid out struct, or none), and from
    // each `bufsz` bytes at `buf`, which the caller's segment owns for the
    // duration of the call (or 0 bytes when `buf` is null).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_kexec_load,
            entry as libc::c_ulong,
            count as libc::c_ulong,
            segments,
            flags,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Loads a jump back to `entry`, replacing any loaded kexec image.
pub fn load_jump_back(entry: u64) -> Result<(), KexecError> {
    let segment = KexecSegment {
        buf: std::ptr::null(),
        bufsz: 0,
        mem: JUMP_BACK_SEGMENT as *const libc::c_void,
        memsz: 0,
    };
    preserve_context_load(entry, Some(&segment)).map_err(|source| KexecError::Load {
        entry,
        hint: load_hint(source.raw_os_error()),
        source,
    })
}

/// Loads [`SELFTEST_PAYLOAD`] at [`SELFTEST_ADDRESS`] with its context
/// preserved, replacing any loaded kexec image.
pub fn load_selftest() -> Result<(), KexecError> {
    let segment = KexecSegment {
        buf: SELFTEST_PAYLOAD.as_ptr().cast(),
        bufsz: SELFTEST_PAYLOAD.len(),
        mem: SELFTEST_ADDRESS as *const libc::c_void,
        memsz: 0x1000,
    };
    preserve_context_load(SELFTEST_ADDRESS as u64, Some(&segment)).map_err(|source| {
        KexecError::LoadPayload {
            hint: load_hint(source.raw_os_error()),
            source,
        }
    })
}

/// Unloads the loaded kexec image (not a crash kernel), if any.
pub fn unload() -> Result<(), KexecError> {
    preserve_context_load(0, None).map_err(KexecError::Unload)
}

/// Whether this kernel takes a preserve-context load: loads the selftest
/// payload and unloads it again, replacing any loaded kexec image. The
/// error says why not (no CONFIG_KEXEC_JUMP, lockdown, no CONFIG_KEXEC).
pub fn probe_preserve_context() -> Result<(), KexecError> {
    load_selftest()?;
    unload()
}

/// Jumps `jumps` times into [`SELFTEST_PAYLOAD`], which jumps straight
/// back; returns how long each round trip took (the kernel freezes tasks
/// and suspends devices, as for hibernation, and resumes them). Replaces any
/// loaded kexec image and leaves none loaded. A kernel whose jump is broken
/// does not return here: it crashes or resets the machine.
pub fn selftest(jumps: u32) -> Result<Vec<Duration>, KexecError> {
    load_selftest()?;
    let mut times = Vec::new();
    for jump in 1..=jumps {
        let started = Instant::now();
        if let Err(e) = self::jump() {
            let _ = unload();
            return Err(KexecError::SelftestJump {
                jump,
                jumps,
                source: Box::new(e),
            });
        }
        times.push(started.elapsed());
    }
    unload()?;
    Ok(times)
}

/// Jumps into the loaded kexec image with its context preserved. Returns
/// when something jumps back into this kernel.
pub fn jump() -> Result<(), KexecError> {
    nix::unistd::sync();
    // Not nix's reboot(), which takes every return for a failure: with a
    // preserve-context image loaded, 0 means we were jumped back into.
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

/// Whether a kexec image is loaded (/sys/kernel/kexec_loaded).
pub fn image_loaded() -> bool {
    std::fs::read_to_string("/sys/kernel/kexec_loaded").is_ok_and(|v| v.trim() == "1")
}

/// Whether `kexec_load` is switched off until the next boot (sysctl
/// `kernel.kexec_load_disabled`).
pub fn load_disabled() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/kexec_load_disabled").is_ok_and(|v| v.trim() == "1")
}

/// The kernel's lockdown state when it is locked down (which refuses
/// `kexec_load` and /dev/mem), as /sys/kernel/security/lockdown shows it
/// (`none [integrity] confidentiality`); `None` when it is not, or when the
/// kernel has no lockdown.
pub fn lockdown() -> Option<String> {
    lockdown_modes().filter(|v| !v.contains("[none]"))
}

/// /sys/kernel/security/lockdown as it reads (`[none] integrity
/// confidentiality`), or `None` when the kernel has no lockdown.
pub fn lockdown_modes() -> Option<String> {
    let v = std::fs::read_to_string("/sys/kernel/security/lockdown").ok()?;
    Some(v.trim().to_string())
}

/// How many more `kexec_load` calls the kernel allows before the next
/// reboot (sysctl `kernel.kexec_load_limit_reboot`, Linux 6.6 and later;
/// -1: no limit), or `None` when the kernel has no such limit.
pub fn load_limit_reboot() -> Option<i64> {
    std::fs::read_to_string("/proc/sys/kernel/kexec_load_limit_reboot")
        .ok()?
        .trim()
        .parse()
        .ok()
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
    fn selftest_payload_calls_back_and_loops() {
        // pop %rax; call *%rax; jmp back to the pop (rel8 from the end of
        // the jmp at 5 to 0).
        assert_eq!(SELFTEST_PAYLOAD[0], 0x58);
        assert_eq!(SELFTEST_PAYLOAD[1..3], [0xff, 0xd0]);
        assert_eq!(SELFTEST_PAYLOAD[3], 0xeb);
        assert_eq!(5 + i64::from(SELFTEST_PAYLOAD[4] as i8), 0);
        assert_eq!(SELFTEST_ADDRESS % 4096, 0);
    }

    #[test]
    fn errnos_are_explained() {
        assert!(load_hint(Some(libc::EINVAL)).contains("CONFIG_KEXEC_JUMP"));
        assert!(load_hint(Some(libc::EPERM)).contains("lockdown"));
    }
}

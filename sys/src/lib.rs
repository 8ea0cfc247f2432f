//! kjump's interface to the machine it runs on: every system call, every
//! device and /proc or /sys file whose meaning takes more than reading its
//! text (the kernel's kexec, lockdown and swap switches, memory maps,
//! block devices, mounts), and all of its unsafe code. Plain text the
//! other crates only pass on or parse with this crate's parsers
//! (/proc/cmdline, /proc/iomem, /proc/sys/kernel/osrelease) they read
//! themselves.
//!
//! The other crates say what to do; this one does it on Linux:
//!
//! | module | what |
//! |---|---|
//! | [`physmem`] | physical memory: read mappings of /dev/mem, /proc/vmcore or a dump, write mappings for a restore, one page through /dev/mem |
//! | [`pagemap`] | a locked page of this process and its physical address |
//! | [`kexec`] | `kexec_load`, the jump (`reboot(LINUX_REBOOT_CMD_KEXEC)`), the selftest, what the kernel allows |
//! | [`power`] | power off, restart, suspend to RAM |
//! | [`block`] | opening targets with `O_DIRECT` (one fallback), device sizes, free space (`statvfs`), owner-only files |
//! | [`fiemap`] | where a file's blocks lie on its device (`FS_IOC_FIEMAP`) |
//! | [`place`], [`target`] | where an image lies on this machine (the device under a file's filesystem, through sysfs), and writing it there |
//! | [`swap`] | a swap area that holds an image, from hold to give-back (`swapon`, `swapoff`, its signature) |
//! | [`freemem`] | /proc/meminfo, dropping caches and zeroing free RAM |
//! | [`ranges`] | physical ranges as the kernel lists them (/proc/iomem) |
//! | [`random`], [`clock`] | `getrandom`, the wall clock |
//! | [`secmem`] | a secret's pages locked in RAM and out of core dumps |
//! | [`mount`], [`memfd`], [`tty`], [`signal`] | mounts for /init, in-memory files, a terminal with echo off, SIGPIPE |
//! | [`progress`] | progress of a long pass, on a terminal or in the log |
//!
//! Unsafe code is denied in the crate and allowed only in the modules that
//! make system calls the safe wrappers do not cover or map physical
//! memory; each block says why it is sound (`// SAFETY:`).

#![deny(unsafe_code)]

pub mod block;
pub mod clock;
#[allow(unsafe_code)]
pub mod fiemap;
pub mod freemem;
#[allow(unsafe_code)]
pub mod kexec;
pub mod memfd;
pub mod mount;
pub mod pagemap;
#[allow(unsafe_code)]
pub mod physmem;
pub mod place;
pub mod power;
pub mod progress;
#[allow(unsafe_code)]
pub mod random;
pub mod ranges;
#[allow(unsafe_code)]
pub mod secmem;
#[allow(unsafe_code)]
pub mod signal;
#[allow(unsafe_code)]
pub mod swap;
pub mod target;
pub mod tty;

pub use place::{Place, PlaceError, PlaceReader};
pub use target::{Target, TargetError};

/// The machine kjump runs on, as ELF names it (`e_machine` and a name).
#[cfg(target_arch = "x86_64")]
pub const ELF_MACHINE: (u16, &str) = (62, "x86_64");
/// The machine kjump runs on, as ELF names it (`e_machine` and a name).
#[cfg(target_arch = "aarch64")]
pub const ELF_MACHINE: (u16, &str) = (183, "aarch64");

/// An error with its causes, as the CLI prints them (`a: b: c`).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

//! The VM suite's main scenarios on Linux 7.2 (Debian sid's
//! linux-source-7.2, built from the same configuration fragment as the 6.12
//! test kernel by `tests/vm/build-kernel.sh 7.2`). The kexec jump code was
//! reworked between 6.12 and 7.2 (KERNELS.md): these run what the 6.12
//! suite runs, through the same `common::hibvm::scenarios`, so that a newer
//! kernel that breaks a jump fails here.
//!
//! - the kexec-jump selftest (also run by the rig before any other boot of
//!   this kernel: a kernel that cannot be jumped back into fails every test
//!   below with that message)
//! - power off and resume with 1 and 2 CPUs, a consumed image not resumed
//!   twice, a corrupt image refused; a checkpoint resumed later
//! - `--then suspend` woken by QMP
//! - an encrypted cycle, the passphrase typed on the restore kernel's console
//! - a q35 machine with 4 GiB and 2 CPUs, every word of 1 GiB of A's memory
//!   checked across the cycle
//!
//! Not repeated on 7.2 (6.12 only): I/O errors and too small targets, stale
//! filesystems, swap and file targets, `--free-memory`, a power loss while
//! suspended, a key on a device, the confinement tripwire and a failed
//! capture on q35, and the kdump core. They exercise kjump's own code more
//! than the kernel's jump.
//!
//! Needs what hibernate_vm.rs needs; the first run builds the 7.2 kernel
//! (`sudo tests/setup.sh` does it ahead). Console logs stay in
//! target/tmp/kernel-7-2-vm/; run with --nocapture for the phase times.

mod common;

use common::hibvm::scenarios;
use common::hibvm::Kernel;
use common::vm::{machine, machine_cpus};

const KERNEL: Kernel = Kernel::Linux7_2;

#[test]
fn kexec_jump_selftest() {
    let Some(_machine) = machine() else { return };
    scenarios::kexec_jump_selftest(KERNEL);
}

#[test]
fn poweroff_resume_refuse_corrupt_and_consumed() {
    let Some(_machine) = machine() else { return };
    scenarios::poweroff_resume_refuse_corrupt_and_consumed(KERNEL);
}

#[test]
fn poweroff_resume_two_cpus() {
    let Some(_machine) = machine_cpus(2) else {
        return;
    };
    scenarios::poweroff_resume_two_cpus(KERNEL);
}

#[test]
fn checkpoint_then_resume() {
    let Some(_machine) = machine() else { return };
    scenarios::checkpoint_then_resume(KERNEL);
}

#[test]
fn suspend_then_wake_jumps_back_and_consumes_the_image() {
    let Some(_machine) = machine() else { return };
    scenarios::suspend_then_wake(KERNEL);
}

#[test]
fn encrypted_hibernation_asks_for_the_passphrase_on_the_console() {
    let Some(_machine) = machine() else { return };
    scenarios::encrypted_passphrase_cycle(KERNEL);
}

#[test]
fn q35_4g_two_cpus_cycle_keeps_every_word() {
    let Some(_machine) = machine_cpus(2) else {
        return;
    };
    scenarios::q35_4g_cycle_keeps_every_word(KERNEL);
}

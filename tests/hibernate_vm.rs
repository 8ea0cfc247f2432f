//! kjump's whole hibernation cycle in QEMU (TCG): kernel A runs `kjump
//! hibernate`, the capture kernel B saves A's RAM to a virtio disk, and a
//! later boot's `kjump resume` (R0) loads the restore kernel R, which writes
//! the RAM back and jumps into A. A proves it is the same A: a 16 MiB tmpfs
//! file keeps its md5, and a shell loop counting in memory goes on counting.
//!
//! Scenarios: the kexec-jump selftest, power off and resume (1 and 2 CPUs), a
//! corrupted image refused, a consumed image not resumed twice, a checkpoint
//! (B jumps straight back) resumed later, and a failed capture. The disk
//! file is the raw image, so the host checks it with `kjump verify` and
//! `kjump info --json`. All but the failed capture are
//! `common::hibvm::scenarios`, which kernel_7_2_vm.rs runs on Linux 7.2
//! too. I/O errors and a too small target are in io_faults_vm.rs, the
//! stale-filesystem guard in stale_fs_vm.rs.
//!
//! Needs qemu-system-x86 (skipped without it, except under CI),
//! busybox-static, kexec-tools, cpio, and the KEXEC_JUMP kernel that
//! tests/vm/build-kernel.sh prints (building it first if needed). The
//! console logs stay in target/tmp/hibernate-vm/. Run with --nocapture for
//! the phase times.

mod common;

use common::hibvm::flows::{
    assert_counter_continues, disk, find, kjump, machine, md5s, split_at, PHASE,
};
use common::hibvm::scenarios;
use common::hibvm::{Boot, BootOpts, Kernel};

const KERNEL: Kernel = Kernel::Linux6_12;

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
    let Some(_machine) = machine() else { return };
    scenarios::poweroff_resume_two_cpus(KERNEL);
}

#[test]
fn checkpoint_then_resume() {
    let Some(_machine) = machine() else { return };
    scenarios::checkpoint_then_resume(KERNEL);
}

/// A capture kernel that cannot write its target (a read-only disk, which A's
/// checks cannot tell from a writable one) says why, saves nothing, and
/// jumps back: A runs on with its memory as it was, and `kjump hibernate`
/// fails with the reason instead of claiming a resume.
#[test]
fn failed_capture_jumps_back_to_a() {
    let Some(_machine) = machine() else { return };
    let disk = disk("readonly");
    let mut boot = Boot::start_opts("readonly", &BootOpts::new(&disk, "poweroff").readonly());
    let failed = boot.wait_for("kjump: capture failed", PHASE);
    assert!(failed.text.contains("/dev/vda"), "{}", failed.text);
    boot.wait_for("kjump: jumping back to the saved kernel", PHASE);
    let exit = boot.wait_for("A: HIBERNATE-EXIT", PHASE);
    assert_eq!(
        exit.text.trim_end(),
        "A: HIBERNATE-EXIT 1",
        "{}",
        boot.logs()
    );
    let resumed = boot.wait_for("RESUMED", PHASE);
    boot.wait_for("A: DONE", PHASE);
    boot.wait_exit(PHASE);
    let lines = boot.lines();
    // B's reason reaches A through the mailbox.
    let said = find(&lines, "the capture kernel did not save this machine: ")
        .unwrap_or_else(|| panic!("A did not report B's reason\n{}", boot.logs()));
    assert!(said.text.contains("/dev/vda"), "{}", said.text);
    let (before, after) = split_at(&lines, resumed.at);
    assert_eq!(md5s(&before), md5s(&after), "{}", boot.logs());
    assert_counter_continues(&boot, failed.at);
    let (code, out) = kjump(&["verify", disk.to_str().expect("utf-8 path")]);
    assert_eq!(code, 1, "nothing was saved, so nothing verifies: {out}");
}

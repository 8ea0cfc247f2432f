//! kjump's whole hibernation cycle in QEMU (TCG): kernel A runs `kjump
//! hibernate`, the capture kernel B saves A's RAM to a virtio disk, and a
//! later boot's `kjump resume` (R0) loads the restore kernel R, which writes
//! the RAM back and jumps into A. A proves it is the same A: a 16 MiB tmpfs
//! file keeps its md5, and a shell loop counting in memory goes on counting.
//!
//! Scenarios: the kexec-jump selftest, power off and resume (1 and 2 CPUs), a
//! corrupted image stopped at its damaged chunk and then refused, a
//! consumed image not resumed twice, a restore cut off by a power failure
//! and resumed by the next boot (and the attempt limit), a checkpoint (B
//! jumps straight back) resumed later, and a failed capture. The disk
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

use common::hibvm::flows::{disk, failed_capture, PHASE};
use common::hibvm::scenarios;
use common::hibvm::{start, BootOpts, Kernel, WriteError};
use common::kjump::{kjump, Run};
use common::vm::{find, line, machine, machine_cpus};

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
fn restore_cut_off_is_resumed_again() {
    let Some(_machine) = machine() else { return };
    scenarios::restore_cut_off_is_resumed_again(KERNEL);
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

/// A capture kernel that cannot write its target (writes past A's claim
/// fail with EIO, injected by QEMU's blkdebug) says why, saves nothing,
/// and jumps back: A runs on with its memory as it was, and `kjump
/// hibernate` fails with the reason instead of claiming a resume. A target
/// that takes no write at all (a read-only disk, which the preflight cannot
/// tell from a writable one) is found by A's claim before the jump.
#[test]
fn failed_capture_jumps_back_to_a() {
    let Some(_machine) = machine() else { return };
    let eio = disk("eio-at-4m");
    // B has a rescue shell; nobody takes it, so B jumps back after 5 s.
    let opts = BootOpts::new(&eio, "poweroff")
        .write_error(WriteError::eio_at(4 << 20))
        .arg("kjump.shell=5");
    let (boot, failed) = failed_capture("eio-at-4m", &opts);
    let lines = boot.lines();
    let offer = line(
        &lines,
        "kjump: press Enter within 5 s for a rescue shell (/bin/sh), or wait to jump back to the saved kernel",
        &boot.name,
    );
    let gave_up = line(
        &lines,
        "kjump: no rescue shell: no answer within 5 s",
        &boot.name,
    );
    let back = line(
        &lines,
        "kjump: jumping back to the saved kernel",
        &boot.name,
    );
    assert!(failed.at <= offer.at && offer.at <= gave_up.at && gave_up.at <= back.at);
    assert!(
        gave_up.at - offer.at >= 4.5,
        "B gave up after {:.1} s",
        gave_up.at - offer.at
    );
    let Run {
        code, text: out, ..
    } = kjump(&["verify", eio.to_str().expect("utf-8 path")]);
    assert_eq!(code, 1, "nothing was saved, so nothing verifies: {out}");

    let readonly = disk("readonly");
    let mut boot = start("readonly", &BootOpts::new(&readonly, "poweroff").readonly());
    let claim = boot.wait_for("kjump: claiming the target", PHASE);
    let exit = boot.wait_for("A: HIBERNATE-EXIT", PHASE);
    boot.wait_for("A: DONE", PHASE);
    boot.wait_exit(PHASE);
    let lines = boot.lines();
    assert!(
        claim.text.contains("/dev/vda") && exit.text.trim_end() == "A: HIBERNATE-EXIT 2",
        "{}",
        boot.logs()
    );
    assert!(
        find(&lines, "kjump: capture kernel started").is_none(),
        "the capture kernel ran\n{}",
        boot.logs()
    );
    println!("[readonly] {}", claim.text);
}

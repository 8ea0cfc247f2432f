//! kjump's whole hibernation cycle in QEMU (TCG): kernel A runs `kjump
//! hibernate`, the capture kernel B saves A's RAM to a virtio disk, and a
//! later boot's `kjump resume` (R0) loads the restore kernel R, which writes
//! the RAM back and jumps into A. A proves it is the same A: a 16 MiB tmpfs
//! file keeps its md5, and a shell loop counting in memory goes on counting.
//!
//! Scenarios: power off and resume (1 and 2 CPUs), a corrupted image refused,
//! a consumed image not resumed twice, and a checkpoint (B jumps straight
//! back) resumed later. The disk file is the raw image, so the host checks it
//! with `kjump verify` and `kjump info --json`. I/O errors and a too small
//! target are in io_faults_vm.rs, the stale-filesystem guard in
//! stale_fs_vm.rs.
//!
//! Needs qemu-system-x86 (skipped without it, except under CI),
//! busybox-static, kexec-tools, cpio, and the KEXEC_JUMP kernel that
//! tests/vm/build-kernel.sh prints (building it first if needed). The
//! console logs stay in target/tmp/hibernate-vm/. Run with --nocapture for
//! the phase times.

mod common;

use std::path::Path;
use std::process::Command;

use common::hibvm::flows::{
    assert_counter_continues, assert_disk_works, check_committed, disk, find, hibernate_poweroff,
    info, kjump, machine, md5s, no_resume, print_phases, resume, split_at, state, Saved, PHASE,
};
use common::hibvm::{self, Boot, BootOpts};

/// The superblock field holding the offset of the first chunk (FORMAT.md).
const DATA_OFFSET_FIELD: u64 = 104;

fn flip_chunk_byte(disk: &Path) -> u64 {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .unwrap_or_else(|e| panic!("opening {}: {e}", disk.display()));
    let mut field = [0u8; 8];
    f.read_exact_at(&mut field, DATA_OFFSET_FIELD)
        .expect("read data_offset");
    let data_len = info(disk)["data_bytes"].as_u64().expect("data_bytes");
    let at = u64::from_le_bytes(field) + data_len / 2;
    let mut byte = [0u8; 1];
    f.read_exact_at(&mut byte, at).expect("read the byte");
    byte[0] ^= 0x40;
    f.write_all_at(&byte, at).expect("write the byte");
    at
}

#[test]
fn poweroff_resume_refuse_corrupt_and_consumed() {
    let Some(_machine) = machine() else { return };
    let disk = disk("poweroff-smp1");
    let (saved, _) = hibernate_poweroff("smp1-hibernate", &BootOpts::new(&disk, "poweroff"));

    let corrupt = hibvm::dir().join("corrupt.img");
    let out = Command::new("cp")
        .arg("--sparse=always")
        .arg(&disk)
        .arg(&corrupt)
        .output()
        .expect("cp");
    assert!(out.status.success(), "cp: {out:?}");

    resume("smp1-resume", &BootOpts::new(&disk, "none"), &saved);
    assert_eq!(state(&disk), "consumed");
    no_resume(
        "smp1-consumed",
        &BootOpts::new(&disk, "none"),
        0,
        "already resumed once",
    );

    let at = flip_chunk_byte(&corrupt);
    println!("[corrupt] flipped the byte at image offset {at:#x}");
    let (code, text) = kjump(&["verify", &corrupt.display().to_string()]);
    assert_eq!(code, 1, "host verify of the corrupted image: {text}");
    no_resume("corrupt", &BootOpts::new(&corrupt, "none"), 1, "refused");
    assert_eq!(
        state(&corrupt),
        "committed",
        "a refused image is left alone"
    );
}

#[test]
fn poweroff_resume_two_cpus() {
    let Some(_machine) = machine() else { return };
    let disk = disk("poweroff-smp2");
    let (saved, _) = hibernate_poweroff("smp2-hibernate", &BootOpts::new(&disk, "poweroff").smp(2));
    resume("smp2-resume", &BootOpts::new(&disk, "none").smp(2), &saved);
    assert_eq!(state(&disk), "consumed");
}

#[test]
fn checkpoint_then_resume() {
    let Some(_machine) = machine() else { return };
    let disk = disk("checkpoint");
    let name = "checkpoint";
    let mut boot = Boot::start(name, &disk, 1, "checkpoint");
    let captured = boot.wait_for("kjump: capture kernel started", PHASE);
    boot.wait_for("kjump: image committed", PHASE);
    let resumed = boot.wait_for("RESUMED", PHASE);
    boot.wait_for("A: DONE", PHASE);
    boot.wait_exit(PHASE);
    print_phases(&boot);
    let lines = boot.lines();
    let (before, after) = split_at(&lines, resumed.at);
    let md5 = md5s(&before).into_iter().next().expect("an MD5 line");
    assert_eq!(md5s(&after), std::slice::from_ref(&md5), "{}", boot.logs());
    assert_disk_works(&after, "committed", &boot);
    let last = assert_counter_continues(&boot, captured.at);
    check_committed(name, &disk, "checkpoint");
    // The checkpoint resumes A as it was when B saved it.
    resume(
        "checkpoint-resume",
        &BootOpts::new(&disk, "none"),
        &Saved {
            md5,
            last_count: last,
            memcheck: false,
        },
    );
    assert_eq!(state(&disk), "consumed");
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

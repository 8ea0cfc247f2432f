//! The capture and restore kernels stay inside the crashkernel region on a
//! machine unlike the 1 GiB pc rig, and a kernel that finds itself outside
//! writes nothing and says so (`init/src/confine.rs`).
//!
//! - A q35 machine with 4 GiB and 2 CPUs: RAM above 4 GiB, and five saved
//!   ranges around the region, one more than the decompressor's KASLR
//!   avoids. A process re-checks every word of 1 GiB of its memory every
//!   2 s before the hibernation and after the resume; the same across a
//!   capture that fails and jumps back.
//! - The tripwire, for real: `--append memmap=1M@...` gives the capture
//!   kernel, and then the restore kernel, the region's top megabyte as RAM,
//!   which kjump keeps out of their memory map (kexec-tools' segments
//!   live there) and which is not the saved kernel's RAM. Each refuses
//!   before it touches anything, hands back, and the kernel it hands back
//!   to reports it; A's memory is checked word by word across both, and the
//!   image then resumes.
//!
//! Needs what hibernate_vm.rs needs. Run with --nocapture for the phase
//! times.

mod common;

use common::hibvm::flows::{
    assert_memcheck_passed, check_committed, counts, failed_capture, info, md5s, print_phases,
    resume, state, Saved, PHASE,
};
use common::hibvm::scenarios::{self, big_disk, q35};
use common::hibvm::{self, start, BootOpts, Kernel, WriteError};
use common::kjump::{kjump, Run};
use common::vm::{self, find, machine, machine_cpus};

#[test]
fn q35_4g_two_cpus_cycle_keeps_every_word() {
    let Some(_machine) = machine_cpus(2) else {
        return;
    };
    scenarios::q35_4g_cycle_keeps_every_word(Kernel::Linux6_12);
}

#[test]
fn q35_4g_failed_capture_keeps_every_word() {
    let Some(_machine) = machine_cpus(2) else {
        return;
    };
    // Writes past A's claim fail: B fails and jumps back.
    let disk = big_disk("q35-eio");
    let opts =
        q35(Kernel::Linux6_12, &disk, "poweroff", 1024).write_error(WriteError::eio_at(4 << 20));
    let (boot, failed) = failed_capture("q35-eio", &opts);
    assert_memcheck_passed(&boot, failed.at, "A: MEMCHECK-AFTER");
}

/// `memmap=` words that give a kernel the top megabyte of the region the
/// image on `disk` recorded as RAM, and that megabyte's start.
fn header_as_ram(disk: &std::path::Path) -> (String, u64) {
    let v = info(disk);
    let region = v["extra"]["region"]
        .as_str()
        .unwrap_or_else(|| panic!("no region in {v:#}"));
    let end = region
        .split_once('-')
        .and_then(|(_, e)| u64::from_str_radix(e.trim_start_matches("0x"), 16).ok())
        .unwrap_or_else(|| panic!("region {region:?}"));
    let top = end + 1 - (1 << 20);
    (format!("memmap=1M@{top:#x}"), top)
}

#[test]
fn kernels_outside_their_region_write_nothing_and_say_so() {
    let Some(_machine) = machine() else { return };
    let disk = hibvm::new_disk(&vm::dir().join("escape.img"));
    let opts = BootOpts::new(&disk, "poweroff")
        .arg("kjump.memcheck=256")
        .arg("kjump.escape=1");

    // B: refuses, jumps back; A reports it, and its memory is as it was.
    let name = "escape-capture";
    let mut boot = start(name, &opts);
    let tripped = boot.wait_for(
        "kjump: capture failed: this kernel runs outside its region",
        PHASE,
    );
    let exit = boot.wait_for("A: ESCAPE-EXIT", PHASE);
    assert_eq!(exit.text.trim_end(), "A: ESCAPE-EXIT 1", "{}", boot.logs());
    boot.wait_for("A: MEMCHECK-AFTER-ESCAPE", PHASE);
    let lines = boot.lines();
    let report = find(
        &lines,
        "the capture kernel ran outside its region; this machine's memory may be damaged: save your work and reboot",
    )
    .unwrap_or_else(|| panic!("A did not report the escape\n{}", boot.logs()));
    assert!(
        report.text.contains("its \"System RAM\""),
        "{}",
        report.text
    );
    assert!(
        find(&lines, "kjump: saving").is_none(),
        "B captured anyway\n{}",
        boot.logs()
    );
    assert_memcheck_passed(&boot, tripped.at, "A: MEMCHECK-AFTER-ESCAPE");
    // Then the real hibernation, with kjump's own command line.
    boot.wait_for("kjump: image committed", PHASE);
    boot.wait_exit(PHASE);
    print_phases(&boot);
    let lines = boot.lines();
    check_committed(name, &disk, "poweroff");
    let saved = Saved {
        md5: md5s(&lines).into_iter().next().expect("an MD5 line"),
        last_count: counts(&lines).into_iter().max().expect("COUNT lines"),
        memcheck: true,
    };

    // R: refuses before it writes memory and hands back; R0 reports it,
    // and the image stays committed.
    let name = "escape-restore";
    let (words, top) = header_as_ram(&disk);
    let mut boot = start(
        name,
        &BootOpts::new(&disk, "none").arg(&format!("kjump.rappend={words}")),
    );
    let tripped = boot.wait_for(
        "kjump: not resuming: this kernel runs outside its region",
        PHASE,
    );
    assert!(
        tripped.text.contains(&format!("reaches {top:#x}-")),
        "{}",
        tripped.text
    );
    let exit = boot.wait_for("A: RESUME-EXIT", PHASE);
    assert_eq!(exit.text.trim_end(), "A: RESUME-EXIT 2", "{}", boot.logs());
    boot.wait_for("A: DONE", PHASE);
    boot.wait_exit(PHASE);
    let lines = boot.lines();
    assert!(
        find(
            &lines,
            "the restore kernel ran outside its region; this boot's memory may be damaged"
        )
        .is_some(),
        "R0 did not report the escape\n{}",
        boot.logs()
    );
    assert!(
        find(&lines, "kjump: restored ").is_none() && !lines.iter().any(|l| l.text == "RESUMED"),
        "R restored anyway\n{}",
        boot.logs()
    );
    assert_eq!(state(&disk), "committed", "R changed the image");
    let Run {
        code, text: out, ..
    } = kjump(&["verify", disk.to_str().expect("utf-8 path")]);
    assert_eq!(code, 0, "{out}");

    // And the image resumes, every word of A's buffer intact.
    resume("escape-resume", &BootOpts::new(&disk, "none"), &saved);
    assert_eq!(state(&disk), "consumed");
}

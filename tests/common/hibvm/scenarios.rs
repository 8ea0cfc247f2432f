//! Whole VM tests that run on more than one kernel: the 6.12 suite's test
//! files (hibernate_vm.rs, suspend_vm.rs, encrypt_vm.rs, confinement_vm.rs)
//! and kernel_7_2_vm.rs call the same function with their [`Kernel`], so a
//! scenario is written once and a newer kernel runs exactly what 6.12 runs.
//!
//! Each one expects the caller to hold the machine ([`vm::machine`]) and
//! panics with the console tail when the kernel misbehaves.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::flows::{
    assert_counter_continues, assert_disk_works, assert_resumed, check_committed, counts, disk,
    hibernate_poweroff, hibernate_poweroff_unchecked, info, md5s, no_resume, print_phases,
    restore_fails_after_writes, resume, split_at, state, Saved, PHASE,
};
use super::{new_disk_of, rig_for, start, BootOpts, Kernel};
use crate::common::kjump::{kjump, Run};
use crate::common::vm::{dir, find, line, Line, Vm};

/// The superblock field holding the offset of the first chunk.
const DATA_OFFSET_FIELD: u64 = kjump_image_format::layout::superblock::DATA_OFFSET as u64;
/// The encrypted cycle's passphrase.
pub const PASSPHRASE: &str = "correct-horse-battery";

/// The default machine on `kernel`: 1 CPU, 1 GiB, `disk` as /dev/vda.
pub fn on(kernel: Kernel, disk: &Path, mode: &str) -> BootOpts {
    BootOpts::new(disk, mode).kernel(kernel)
}

/// The rig's kexec-jump selftest passed on `kernel`: two jumps out of A
/// into a payload that jumps straight back. (The rig runs it before any
/// boot of that kernel; this prints what it found.)
pub fn kexec_jump_selftest(kernel: Kernel) {
    let rig = rig_for(kernel);
    let said = |prefix: &str| rig.selftest.iter().any(|l| l.contains(prefix));
    assert!(
        said("jump 1: back after") && said("jump 2: back after") && said("kexec jump works"),
        "{:#?}",
        rig.selftest
    );
    println!(
        "[selftest] Linux {} ({}):\n{}",
        rig.release,
        rig.kernel.display(),
        rig.selftest.join("\n")
    );
}

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

/// Power off and resume with one CPU; the consumed image is not resumed
/// twice. A copy of the image with one chunk byte flipped in its second
/// half: R0 reads no chunk, so R begins, writes memory up to that chunk,
/// finds it damaged, marks the image failed (naming the chunk) and
/// restarts the machine; the next boot's R0 refuses the image with that
/// reason and the boot goes on.
pub fn poweroff_resume_refuse_corrupt_and_consumed(kernel: Kernel) {
    let disk = disk("poweroff-smp1");
    let (saved, _) = hibernate_poweroff("smp1-hibernate", &on(kernel, &disk, "poweroff"));

    let corrupt = dir().join("corrupt.img");
    let out = Command::new("cp")
        .arg("--sparse=always")
        .arg(&disk)
        .arg(&corrupt)
        .output()
        .expect("cp");
    assert!(out.status.success(), "cp: {out:?}");

    resume("smp1-resume", &on(kernel, &disk, "none"), &saved);
    assert_eq!(state(&disk), "consumed");
    no_resume(
        "smp1-consumed",
        &on(kernel, &disk, "none"),
        0,
        "already resumed once",
    );

    let at = flip_chunk_byte(&corrupt);
    println!("[corrupt] flipped the byte at image offset {at:#x}");
    let Run { code, text, .. } = kjump(&["verify", &corrupt.display().to_string()]);
    assert_eq!(code, 1, "host verify of the corrupted image: {text}");
    let chunk = chunk_named(&text);
    restore_stops_at_chunk("corrupt", &on(kernel, &corrupt, "none"), &chunk);
    assert_eq!(state(&corrupt), "failed");
    let record = info(&corrupt)["restore_failure"].clone();
    assert!(
        record["reason"].as_str().unwrap_or("").contains(&chunk),
        "{record:#}"
    );
    no_resume(
        "corrupt-refused",
        &on(kernel, &corrupt, "none"),
        0,
        &format!("an earlier restore failed part way (it stopped at {chunk}"),
    );
}

/// "chunk N" from a verify error that names one.
fn chunk_named(text: &str) -> String {
    let at = text
        .find("chunk ")
        .unwrap_or_else(|| panic!("no chunk named in {text:?}"));
    let digits: String = text[at + 6..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    assert!(!digits.is_empty(), "no chunk number in {text:?}");
    format!("chunk {digits}")
}

/// A boot whose R finds `chunk` damaged after it began writing memory: R
/// says so, never hands back (memory is no longer the normal boot's) and
/// restarts the machine.
fn restore_stops_at_chunk(name: &str, opts: &BootOpts, chunk: &str) {
    let (_, failed) = restore_fails_after_writes(name, opts);
    assert!(
        failed.text.contains(&format!("failed part way at {chunk}")),
        "{}",
        failed.text
    );
}

/// The power fails while R writes memory: QEMU is killed once R's
/// progress passed a tenth of the image. The image stays committed and
/// whole with one restore attempt counted, and the next boot resumes A
/// intact (same tmpfs md5, the memcheck buffer's every word, the counter
/// going on). Before that, a second cut-off attempt reaches the limit of
/// two: that boot's R0 refuses and the normal boot goes on; a limit of
/// three then lets the resume through.
pub fn restore_cut_off_is_resumed_again(kernel: Kernel) {
    let disk = disk("cut-off");
    let (saved, _) = hibernate_poweroff("cut-hibernate", &on(kernel, &disk, "poweroff"));
    for n in 1..=2u64 {
        let name = format!("cut-{n}");
        let mut boot = start(&name, &on(kernel, &disk, "none"));
        boot.wait_for(&format!("restore attempt {n} of at most 2"), PHASE);
        boot.wait_for("kjump: reading each chunk once", PHASE);
        let cut = boot.wait_for("kjump_sys::progress] restore", PHASE);
        boot.kill();
        let lines = boot.lines();
        assert!(
            find(&lines, "kjump: restored ").is_none(),
            "[{name}] R finished before the cut\n{}",
            boot.logs()
        );
        println!(
            "[{name}] killed QEMU at {:.2} s, after {:?}",
            cut.at, cut.text
        );
        assert_eq!(state(&disk), "committed", "[{name}]");
        assert_eq!(info(&disk)["restore_attempts"], n, "[{name}]");
    }
    no_resume(
        "cut-limit",
        &on(kernel, &disk, "none"),
        1,
        "2 restores of this image began and none finished",
    );
    assert_eq!(state(&disk), "committed");
    let lines = resume(
        "cut-resume",
        &on(kernel, &disk, "none").arg("kjump.attempts=3"),
        &saved,
    );
    assert!(
        find(&lines, "restore attempt 3 of at most 3").is_some(),
        "R0 did not count the third attempt"
    );
    assert_eq!(state(&disk), "consumed");
    assert_eq!(info(&disk)["restore_attempts"], 3);
}

/// Power off and resume with two CPUs (the second goes offline for each
/// jump and comes back).
pub fn poweroff_resume_two_cpus(kernel: Kernel) {
    let disk = disk("poweroff-smp2");
    let opts = on(kernel, &disk, "poweroff").smp(2);
    let (saved, _) = hibernate_poweroff("smp2-hibernate", &opts);
    resume("smp2-resume", &on(kernel, &disk, "none").smp(2), &saved);
    assert_eq!(state(&disk), "consumed");
}

/// A checkpoint: B saves and jumps straight back, A runs on; a later boot
/// resumes A as it was when B saved it.
pub fn checkpoint_then_resume(kernel: Kernel) {
    let disk = disk("checkpoint");
    let name = "checkpoint";
    let mut boot = start(name, &on(kernel, &disk, "checkpoint"));
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
    resume(
        "checkpoint-resume",
        &on(kernel, &disk, "none"),
        &Saved {
            md5,
            last_count: last,
            memcheck: false,
        },
    );
    assert_eq!(state(&disk), "consumed");
}

/// Waits until QMP `query-status` says the guest is suspended; returns when.
fn wait_suspended(boot: &Vm, timeout: Duration) -> Instant {
    boot.qmp()
        .wait_status("suspended", timeout)
        .unwrap_or_else(|e| panic!("[{}] {e}\n{}", boot.name, boot.logs()))
}

/// Boots A on `kernel` with `--then suspend` and waits until B has
/// suspended the machine. Returns the boot, what A held, and when the
/// hibernate call happened (seconds since QEMU started).
pub fn hibernate_and_suspend(name: &str, disk: &Path, kernel: Kernel) -> (Vm, Saved, f64) {
    let mut boot = start(name, &on(kernel, disk, "suspend").s3());
    boot.wait_for("A: RESUME-EXIT 0", PHASE);
    let called = boot.wait_for("A: HIBERNATE --then suspend", PHASE);
    boot.wait_for("kjump: image committed", PHASE);
    boot.wait_for("kjump: suspending to RAM", PHASE);
    let t0 = Instant::now();
    wait_suspended(&boot, PHASE);
    let lines = boot.lines();
    let suspending = line(&lines, "kjump: suspending to RAM", &boot.name).at;
    println!(
        "[{name}] hibernate called -> B suspends: {:.2} s (QMP saw it suspended {:.2} s after B said so)",
        suspending - called.at,
        t0.elapsed().as_secs_f64()
    );
    let saved = Saved {
        md5: md5s(&lines).into_iter().next().expect("an MD5 line"),
        last_count: counts(&lines).into_iter().max().expect("COUNT lines"),
        memcheck: false,
    };
    (boot, saved, called.at)
}

/// `--then suspend`, woken by QMP `system_wakeup`: B jumps back to A,
/// which runs on and marks the image consumed.
pub fn suspend_then_wake(kernel: Kernel) {
    let disk = disk("suspend-wake");
    let (mut boot, saved, _) = hibernate_and_suspend("suspend-wake", &disk, kernel);
    // Suspended with the image committed: the disk is a complete fallback.
    assert_eq!(state(&disk), "committed");
    std::thread::sleep(Duration::from_secs(2));
    let mut qmp = boot.qmp();
    let woken = Instant::now();
    qmp.command("system_wakeup")
        .unwrap_or_else(|e| panic!("{e}\n{}", boot.logs()));
    boot.wait_for("kjump: woke from suspend to RAM", PHASE);
    let resumed = boot.wait_for("RESUMED", PHASE);
    let wake_to_a = woken.elapsed().as_secs_f64();
    let lines = assert_resumed("suspend-wake", &mut boot, &saved);
    line(
        &lines,
        "woke from suspend to RAM: the disk image is now marked consumed",
        &boot.name,
    );
    line(&lines, "its image is consumed", &boot.name);
    assert_eq!(state(&disk), "consumed");
    println!(
        "[suspend-wake] system_wakeup -> A prints RESUMED at {:.2} s: {wake_to_a:.2} s",
        resumed.at
    );
}

/// An encrypted hibernation (`--encrypt --passphrase-file`): the host
/// cannot read the image without the passphrase, R0 never asks for it, and
/// the restore kernel R asks on the serial console. An empty answer
/// declines (R hands back, the normal boot goes on); the next boot a wrong
/// passphrase is refused and the right one resumes A.
pub fn encrypted_passphrase_cycle(kernel: Kernel) {
    let disk = disk("encrypted");
    let opts = on(kernel, &disk, "poweroff").arg(&format!("kjump.pass={PASSPHRASE}"));
    let (saved, lines) = hibernate_poweroff_unchecked("encrypt-hibernate", &opts);
    assert!(
        find(&lines, "kjump: the image is encrypted (AES-256-GCM)").is_some(),
        "B did not say it encrypts"
    );
    assert!(
        find(&lines, "encrypt=passphrase").is_some(),
        "the manifest names no secret"
    );
    assert!(
        find(&lines, PASSPHRASE).is_none()
            || lines
                .iter()
                .filter(|l| l.text.contains(PASSPHRASE))
                .all(|l| l.text.contains("kjump.pass=")),
        "the passphrase appeared on the console other than on A's command line"
    );
    check_sealed(&disk, &rig_for(kernel).release);
    decline_then_resume(kernel, &disk, &saved);
}

/// The host's view of the encrypted image on `disk` of a kernel `release`:
/// nothing without the passphrase but the resume record, everything with it.
fn check_sealed(disk: &Path, release: &str) {
    let host = disk.display().to_string();
    let Run { code, text, .. } = kjump(&["verify", &host]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("encrypted"), "{text}");
    let pass_file = dir().join("passphrase");
    std::fs::write(&pass_file, PASSPHRASE).unwrap();
    let pass = pass_file.display().to_string();
    let Run { code, text, .. } = kjump(&["verify", &host, "--passphrase-file", &pass]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("encrypted and authentic"), "{text}");
    assert_eq!(state(disk), "committed");
    let image = std::fs::read(disk).unwrap();
    for plain in [release.as_bytes(), b"System RAM", b"OSRELEASE="] {
        assert!(
            !image.windows(plain.len()).any(|w| w == plain),
            "{:?} in plain text in the encrypted image",
            String::from_utf8_lossy(plain)
        );
    }
    let Run { code, text, .. } = kjump(&["info", &host]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("from the resume record") && text.contains("meta:       region=0x"),
        "{text}"
    );
}

/// Two boots of the encrypted image on `disk`: an empty passphrase
/// declines, then a wrong one is refused and the right one resumes.
fn decline_then_resume(kernel: Kernel, disk: &Path, saved: &Saved) {
    // Nobody at the console: R waits its prompt timeout, then hands back.
    let mut boot = start(
        "encrypt-decline",
        &on(kernel, disk, "none").arg("kjump.rtimeout=8"),
    );
    let started = boot.wait_for("kjump: restore kernel started", PHASE);
    let prompt = boot.wait_for_prompt("passphrase for the encrypted image", PHASE);
    assert!(prompt.at >= started.at, "the passphrase was asked before R");
    assert!(prompt.text.contains("none within 8 s"), "{}", prompt.text);
    let gave_up = boot.wait_for(
        "kjump: not resuming: no passphrase was given on /dev/console within 8 s",
        PHASE,
    );
    assert!(
        gave_up.at - prompt.at >= 7.5,
        "R gave up {:.1} s after it asked",
        gave_up.at - prompt.at
    );
    boot.wait_for("handing control back to the normal boot", PHASE);
    let back = boot.wait_for("A: RESUME-EXIT 0", PHASE);
    boot.wait_for("A: DONE", PHASE);
    boot.wait_exit(PHASE);
    let lines = boot.lines();
    let before_r: Vec<_> = lines.iter().filter(|l| l.at < started.at).collect();
    assert!(
        !before_r.iter().any(|l| l.text.contains("passphrase for")),
        "R0 asked for the passphrase\n{}",
        boot.logs()
    );
    let (_, after) = split_at(&lines, back.at);
    assert!(
        find(
            &lines,
            "nothing to resume: the restore kernel handed control back"
        )
        .is_some(),
        "R0 did not say R handed back\n{}",
        boot.logs()
    );
    assert_eq!(md5s(&after).len(), 1, "no fresh workload\n{}", boot.logs());
    assert!(
        counts(&after).len() >= 2,
        "R0's boot did not go on\n{}",
        boot.logs()
    );
    assert!(!lines.iter().any(|l| l.text == "RESUMED"), "resumed anyway");
    assert_eq!(state(disk), "committed");
    // R handed back without writing memory: the attempt does not count.
    assert_eq!(
        info(disk)["restore_attempts"],
        0,
        "the declined attempt counts"
    );
    println!(
        "[encrypt-decline] R asked {:.1} s after R started, gave up {:.1} s later; handed back, R0 went on at {:.1} s",
        prompt.at - started.at,
        gave_up.at - prompt.at,
        back.at
    );

    // The boot after: a wrong passphrase, then the right one, typed on the
    // serial console while R asks.
    let mut boot = start("encrypt-resume", &on(kernel, disk, "none"));
    boot.wait_for("kjump: restore kernel started", PHASE);
    boot.wait_for_prompt("passphrase for the encrypted image", PHASE);
    std::thread::sleep(Duration::from_secs(1));
    boot.type_line("wrong-horse");
    let refused = boot.wait_for("(2 more tries)", PHASE);
    assert!(
        refused.text.contains("wrong key or passphrase"),
        "{}",
        refused.text
    );
    boot.type_line(PASSPHRASE);
    boot.wait_for("kjump: restored ", PHASE);
    let lines = assert_resumed("encrypt-resume", &mut boot, saved);
    assert!(
        !lines.iter().any(|l| l.text.contains(PASSPHRASE)),
        "the passphrase was echoed on the console\n{}",
        boot.logs()
    );
    assert_eq!(state(disk), "consumed");
    println!(
        "[encrypt] wrong passphrase refused: {}",
        refused.text.trim()
    );
}

/// A disk with room for the worst case of a 4 GiB machine's image.
pub fn big_disk(name: &str) -> PathBuf {
    new_disk_of(&dir().join(format!("{name}.img")), 6 << 30)
}

/// A q35 machine with 4 GiB and 2 CPUs on `kernel`, whose A re-checks every
/// word of `memcheck_mib` MiB of its memory.
pub fn q35(kernel: Kernel, disk: &Path, mode: &str, memcheck_mib: u32) -> BootOpts {
    on(kernel, disk, mode)
        .machine("q35", "4G")
        .smp(2)
        .arg(&format!("kjump.memcheck={memcheck_mib}"))
}

/// The number in A's `RAM to save: N bytes in K ranges` line.
fn saved_ranges(lines: &[Line]) -> usize {
    let line = find(lines, "RAM to save:").expect("a RAM to save line");
    line.text
        .split_whitespace()
        .rev()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no range count in {:?}", line.text))
}

/// The whole cycle on a q35 machine with 4 GiB and 2 CPUs: RAM above
/// 4 GiB, five saved ranges or more, and every word of 1 GiB of A's memory
/// checked before the hibernation and after the resume.
pub fn q35_4g_cycle_keeps_every_word(kernel: Kernel) {
    let disk = big_disk("q35-cycle");
    let (saved, lines) = hibernate_poweroff("q35-hibernate", &q35(kernel, &disk, "poweroff", 1024));
    assert!(saved.memcheck, "memcheck did not start");
    let ranges = saved_ranges(&lines);
    assert!(
        ranges >= 5,
        "only {ranges} saved ranges: not the machine this test is for"
    );
    let high = find(&lines, "BIOS-e820: [mem 0x0000000100000000-")
        .unwrap_or_else(|| panic!("no RAM above 4 GiB in A's e820 map"));
    println!("[q35] {ranges} saved ranges; {}", high.text);
    assert!(
        find(&lines, "kjump: running inside the region").is_some(),
        "B did not check its confinement"
    );
    let resumed = resume("q35-resume", &q35(kernel, &disk, "none", 1024), &saved);
    assert_eq!(state(&disk), "consumed");
    // B and R log their progress to the console like every other line
    // (a tenth of a 4 GiB capture or restore takes longer than a second).
    for (lines, started, what) in [
        (&lines, "kjump: capture kernel started", "capture"),
        (&resumed, "kjump: restore kernel started", "restore"),
    ] {
        let from = find(lines, started).expect("the kernel started").at;
        let progress = lines
            .iter()
            .filter(|l| l.at >= from)
            .find(|l| l.text.contains(" INFO ") && l.text.contains(what) && l.text.contains("MB/s"))
            .unwrap_or_else(|| panic!("no {what} progress on the console after {started:?}"));
        println!("[q35] {}", progress.text);
    }
}

//! kjump's whole hibernation cycle in QEMU (TCG): kernel A runs `kjump
//! hibernate`, the capture kernel B saves A's RAM to a virtio disk, and a
//! later boot's `kjump resume` (R0) loads the restore kernel R, which writes
//! the RAM back and jumps into A. A proves it is the same A: a 16 MiB tmpfs
//! file keeps its md5, and a shell loop counting in memory goes on counting.
//!
//! Scenarios: power off and resume (1 and 2 CPUs), a corrupted image refused,
//! a consumed image not resumed twice, and a checkpoint (B jumps straight
//! back) resumed later. The disk file is the raw image, so the host checks it
//! with `kjump verify` and `kjump info --json`.
//!
//! Needs qemu-system-x86 (skipped without it, except under CI),
//! busybox-static, kexec-tools, cpio, and the KEXEC_JUMP kernel that
//! tests/vm/build-kernel.sh prints (building it first if needed). The
//! console logs stay in target/tmp/hibernate-vm/. Run with --nocapture for
//! the phase times.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use common::hibvm::{self, Boot, Line};
use common::vm;

/// One boot phase (boot to hibernate, capture, resume) under TCG.
const PHASE: Duration = Duration::from_secs(180);
/// The superblock field holding the offset of the first chunk (FORMAT.md).
const DATA_OFFSET_FIELD: u64 = 104;

/// The machines are heavy (1 GiB, one host core per vCPU): one at a time.
static MACHINE: Mutex<()> = Mutex::new(());

fn machine() -> Option<std::sync::MutexGuard<'static, ()>> {
    if !vm::require_qemu() {
        return None;
    }
    Some(MACHINE.lock().unwrap_or_else(|p| p.into_inner()))
}

/// Runs the host's kjump; returns its exit code and output.
fn kjump(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kjump"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running kjump {args:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn info(disk: &Path) -> serde_json::Value {
    let (code, text) = kjump(&["info", "--json", &disk.display().to_string()]);
    assert_eq!(code, 0, "kjump info --json {}: {text}", disk.display());
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("kjump info --json: {e}\n{text}"))
}

fn state(disk: &Path) -> String {
    info(disk)["state"].as_str().unwrap_or_default().to_owned()
}

fn disk(name: &str) -> PathBuf {
    hibvm::new_disk(&hibvm::rig().dir.join(format!("{name}.img")))
}

/// Values of `PREFIX value` lines, with their times.
fn values<'a>(lines: &'a [Line], prefix: &'a str) -> impl Iterator<Item = (f64, &'a str)> + 'a {
    lines.iter().filter_map(move |l| {
        l.text
            .strip_prefix(prefix)
            .map(|v| (l.at, v.split_whitespace().next().unwrap_or("")))
    })
}

fn counts(lines: &[Line]) -> Vec<u64> {
    values(lines, "COUNT ")
        .filter_map(|(_, v)| v.parse().ok())
        .collect()
}

fn md5s(lines: &[Line]) -> Vec<String> {
    values(lines, "MD5 ").map(|(_, v)| v.to_owned()).collect()
}

/// Prints the lines that mark the phases of a boot, with their times.
fn print_phases(boot: &Boot) {
    const MARKS: [&str; 16] = [
        "Linux version",
        "A: up",
        "A: DD-BASELINE",
        "A: HIBERNATE",
        "kjump: capture kernel started",
        "kjump: saving",
        "kjump: image committed",
        "kjump: powering off",
        "kjump: checkpoint",
        "A: resume start",
        "restore kernel:",
        "kjump: restore kernel started",
        "kjump: verified in",
        "kjump: jumping",
        "RESUMED",
        "resumed: this kernel was away",
    ];
    /// Durations worth naming: (label, from, to); `to` is looked for after `from`.
    const SPANS: [(&str, &str, &str); 9] = [
        (
            "A: hibernate called -> B's kernel booting",
            "A: HIBERNATE",
            "Linux version",
        ),
        (
            "A: hibernate called -> B's /init",
            "A: HIBERNATE",
            "kjump: capture kernel started",
        ),
        ("B: capture", "kjump: saving", "kjump: image committed"),
        (
            "B: commit -> back in A (checkpoint)",
            "kjump: checkpoint",
            "RESUMED",
        ),
        (
            "boot -> kjump resume (A or R0)",
            "Linux version",
            "A: resume start",
        ),
        (
            "R0: kjump resume checks the image",
            "A: resume start",
            "restore kernel:",
        ),
        (
            "R0 -> R's /init (kexec load, R boots)",
            "restore kernel:",
            "kjump: restore kernel started",
        ),
        (
            "R: verify and write memory",
            "kjump: restore kernel started",
            "kjump: verified in",
        ),
        ("R -> A prints RESUMED", "kjump: jumping", "RESUMED"),
    ];
    let lines = boot.lines();
    println!("[{}] phases (seconds since qemu started):", boot.name);
    for l in &lines {
        if MARKS.iter().any(|m| l.text.contains(m)) {
            println!("[{}] {:7.2}  {}", boot.name, l.at, l.text);
        }
    }
    for (label, from, to) in SPANS {
        let Some(start) = lines.iter().find(|l| l.text.contains(from)) else {
            continue;
        };
        let end = lines
            .iter()
            .find(|l| l.at >= start.at && !std::ptr::eq(*l, start) && l.text.contains(to));
        if let Some(end) = end {
            println!("[{}] {label}: {:.2} s", boot.name, end.at - start.at);
        }
    }
}

/// What boot 1 left: A's file checksum and the counter before the jump.
struct Saved {
    md5: String,
    last_count: u64,
}

/// Boot 1: A hibernates with `--then poweroff`; B saves and powers off.
fn hibernate_poweroff(name: &str, disk: &Path, smp: u32) -> Saved {
    let mut boot = Boot::start(name, disk, smp, "poweroff");
    boot.wait_for("A: RESUME-EXIT 0", PHASE);
    // The dry run prints the plan and the load, and changes nothing.
    let dry = boot.wait_for("A: DRY-RUN-EXIT", PHASE);
    assert_eq!(dry.text.trim_end(), "A: DRY-RUN-EXIT 0", "{}", boot.logs());
    let before_dry: Vec<Line> = boot
        .lines()
        .into_iter()
        .filter(|l| l.at <= dry.at)
        .collect();
    for want in [
        "dry run: nothing was changed",
        "kexec --load-preserve-context --mem-min=",
        "mode=poweroff",
    ] {
        assert!(
            before_dry.iter().any(|l| l.text.contains(want)),
            "dry run lacks {want:?}\n{}",
            boot.logs()
        );
    }
    boot.wait_for("A: HIBERNATE", PHASE);
    boot.wait_for("kjump: capture kernel started", PHASE);
    boot.wait_for("kjump: image committed", PHASE);
    let status = boot.wait_exit(PHASE);
    print_phases(&boot);
    let lines = boot.lines();
    assert!(
        !lines.iter().any(|l| l.text == "RESUMED"),
        "A went on after --then poweroff\n{}",
        boot.logs()
    );
    println!("[{name}] qemu exited: {status}");
    let md5 = md5s(&lines).into_iter().next().expect("an MD5 line");
    let last_count = counts(&lines).into_iter().max().expect("COUNT lines");
    check_committed(name, disk, "poweroff");
    Saved { md5, last_count }
}

/// Host side: the disk holds a whole, committed image.
fn check_committed(name: &str, disk: &Path, mode: &str) {
    let (code, text) = kjump(&["verify", &disk.display().to_string()]);
    assert_eq!(code, 0, "kjump verify after {name}: {text}");
    let v = info(disk);
    assert_eq!(v["state"], "committed", "{v:#}");
    assert_eq!(v["extra"]["mode"], mode, "{v:#}");
    let mib = |key: &str| v[key].as_f64().unwrap_or(0.0) / f64::from(1 << 20);
    println!(
        "[{name}] image: {:.1} MiB for {:.1} MiB of RAM ({:.1} MiB of chunk data, {} of {} pages zero)",
        mib("image_bytes"),
        mib("memory_bytes"),
        mib("data_bytes"),
        v["pages"]["zero"],
        v["pages"]["total"],
    );
}

/// A later boot: R0 finds the image, R restores it, A runs on.
fn resume(name: &str, disk: &Path, smp: u32, saved: &Saved) {
    let mut boot = Boot::start(name, disk, smp, "none");
    boot.wait_for("kjump: restore kernel started", PHASE);
    boot.wait_for("kjump: verified in", PHASE);
    let resumed = boot.wait_for("RESUMED", PHASE);
    boot.wait_for("A: DONE", PHASE);
    boot.wait_exit(PHASE);
    print_phases(&boot);
    let lines = boot.lines();
    let after: Vec<Line> = lines
        .iter()
        .filter(|l| l.at >= resumed.at)
        .cloned()
        .collect();
    assert_eq!(
        md5s(&after),
        std::slice::from_ref(&saved.md5),
        "A's tmpfs file changed across the resume\n{}",
        boot.logs()
    );
    assert_disk_works(&after, "consumed", &boot);
    let resumed_counts = counts(&lines);
    let first = *resumed_counts.first().unwrap_or(&0);
    assert!(
        first > saved.last_count && first <= saved.last_count + 3,
        "the counter did not continue: last {} before, {resumed_counts:?} after\n{}",
        saved.last_count,
        boot.logs()
    );
    assert!(
        resumed_counts.windows(2).all(|w| w[1] == w[0] + 1),
        "the counter skipped: {resumed_counts:?}"
    );
    assert!(
        !lines.iter().any(|l| l.text.starts_with("A: RESUME-EXIT")),
        "R0's kjump resume returned\n{}",
        boot.logs()
    );
    println!(
        "[{name}] resumed: md5 {} intact, counter {} -> {first}..{}",
        saved.md5,
        saved.last_count,
        resumed_counts.last().unwrap_or(&0)
    );
}

/// A boot where `kjump resume` must not resume: it exits with `code`, prints
/// `why`, and the normal boot goes on to a fresh workload.
fn no_resume(name: &str, disk: &Path, code: i32, why: &str) {
    let mut boot = Boot::start(name, disk, 1, "none");
    boot.wait_for(&format!("A: RESUME-EXIT {code}"), PHASE);
    boot.wait_for("A: DONE", PHASE);
    boot.wait_exit(PHASE);
    print_phases(&boot);
    let lines = boot.lines();
    assert!(
        lines.iter().any(|l| l.text.contains(why)),
        "kjump resume did not say {why:?}\n{}",
        boot.logs()
    );
    assert!(
        !lines.iter().any(|l| l.text == "RESUMED"),
        "resumed anyway\n{}",
        boot.logs()
    );
    assert_eq!(md5s(&lines).len(), 1, "no fresh workload\n{}", boot.logs());
    for l in lines.iter().filter(|l| l.text.contains(why)) {
        println!("[{name}] {:7.2}  {}", l.at, l.text);
    }
}

/// A, resumed, read its disk again: `kjump info /dev/vda` printed `state`.
fn assert_disk_works(after: &[Line], state: &str, boot: &Boot) {
    let want = format!("state:      {state}");
    assert!(
        after.iter().any(|l| l.text.starts_with(&want)),
        "A's kjump info /dev/vda after the resume did not print {want:?}\n{}",
        boot.logs()
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

#[test]
fn poweroff_resume_refuse_corrupt_and_consumed() {
    let Some(_machine) = machine() else { return };
    let disk = disk("poweroff-smp1");
    let saved = hibernate_poweroff("smp1-hibernate", &disk, 1);

    let corrupt = hibvm::rig().dir.join("corrupt.img");
    let out = Command::new("cp")
        .arg("--sparse=always")
        .arg(&disk)
        .arg(&corrupt)
        .output()
        .expect("cp");
    assert!(out.status.success(), "cp: {out:?}");

    resume("smp1-resume", &disk, 1, &saved);
    assert_eq!(state(&disk), "consumed");
    no_resume("smp1-consumed", &disk, 0, "already resumed once");

    let at = flip_chunk_byte(&corrupt);
    println!("[corrupt] flipped the byte at image offset {at:#x}");
    let (code, text) = kjump(&["verify", &corrupt.display().to_string()]);
    assert_eq!(code, 1, "host verify of the corrupted image: {text}");
    no_resume("corrupt", &corrupt, 1, "refused");
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
    let saved = hibernate_poweroff("smp2-hibernate", &disk, 2);
    resume("smp2-resume", &disk, 2, &saved);
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
    let before: Vec<Line> = lines
        .iter()
        .filter(|l| l.at < resumed.at)
        .cloned()
        .collect();
    let after: Vec<Line> = lines
        .iter()
        .filter(|l| l.at >= resumed.at)
        .cloned()
        .collect();
    let md5 = md5s(&before).into_iter().next().expect("an MD5 line");
    assert_eq!(md5s(&after), std::slice::from_ref(&md5), "{}", boot.logs());
    assert_disk_works(&after, "committed", &boot);
    let (b, a): (Vec<Line>, Vec<Line>) = lines.iter().cloned().partition(|l| l.at < captured.at);
    let (b, a) = (counts(&b), counts(&a));
    let last = *b.last().expect("COUNT before");
    assert!(
        a.first().is_some_and(|&f| f > last && f <= last + 3),
        "counter {b:?} then {a:?}"
    );
    check_committed(name, &disk, "checkpoint");
    // The checkpoint resumes A as it was when B saved it.
    resume(
        "checkpoint-resume",
        &disk,
        1,
        &Saved {
            md5,
            last_count: last,
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
    let mut boot = Boot::start_with("readonly", &disk, 1, "poweroff", true);
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
    assert!(
        lines.iter().any(|l| l
            .text
            .contains("the capture kernel did not save this machine")),
        "{}",
        boot.logs()
    );
    let (before, after): (Vec<Line>, Vec<Line>) =
        lines.iter().cloned().partition(|l| l.at < resumed.at);
    assert_eq!(md5s(&before), md5s(&after), "{}", boot.logs());
    let (b, a): (Vec<Line>, Vec<Line>) = lines.iter().cloned().partition(|l| l.at < failed.at);
    let (b, a) = (counts(&b), counts(&a));
    let last = *b.last().expect("COUNT before");
    assert!(
        a.first().is_some_and(|&f| f > last && f <= last + 3),
        "counter {b:?} then {a:?}"
    );
    let (code, out) = kjump(&["verify", disk.to_str().expect("utf-8 path")]);
    assert_eq!(code, 1, "nothing was saved, so nothing verifies: {out}");
}

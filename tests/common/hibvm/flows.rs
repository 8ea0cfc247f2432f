//! The steps the QEMU hibernation tests share, with their assertions: a
//! boot that hibernates and powers off, a boot that resumes, a boot that
//! must not resume, and the host's view of the image disk (`kjump info
//! --json`, `kjump verify`).
//!
//! A proves it is the same A after a resume: its 16 MiB tmpfs file keeps its
//! md5 (`MD5` lines) and its shell loop goes on counting (`COUNT` lines).
//! With `kjump.memcheck=N`, a process re-checks every word of N MiB of its
//! memory every 2 s (`MEMCHECK` lines) before and after.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{start, BootOpts};
use crate::common::kjump::{kjump, Run};
use crate::common::vm::{self, find, Line, Vm};

/// One boot phase (boot to hibernate, capture, resume) under TCG.
pub const PHASE: Duration = Duration::from_secs(180);

/// A fresh image disk in the rig's directory.
pub fn disk(name: &str) -> PathBuf {
    super::new_disk(&vm::dir().join(format!("{name}.img")))
}

/// `kjump info --json` of an image disk.
pub fn info(disk: &Path) -> serde_json::Value {
    let Run { code, text, .. } = kjump(&["info", "--json", &disk.display().to_string()]);
    assert_eq!(code, 0, "kjump info --json {}: {text}", disk.display());
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("kjump info --json: {e}\n{text}"))
}

/// The image's state: writing, committed or consumed.
pub fn state(disk: &Path) -> String {
    info(disk)["state"].as_str().unwrap_or_default().to_owned()
}

/// Values of `PREFIX value` lines, with their times.
pub fn values<'a>(lines: &'a [Line], prefix: &'a str) -> impl Iterator<Item = (f64, &'a str)> + 'a {
    lines.iter().filter_map(move |l| {
        l.text
            .strip_prefix(prefix)
            .map(|v| (l.at, v.split_whitespace().next().unwrap_or("")))
    })
}

/// A's counter values, in order.
pub fn counts(lines: &[Line]) -> Vec<u64> {
    values(lines, "COUNT ")
        .filter_map(|(_, v)| v.parse().ok())
        .collect()
}

/// The md5s A printed of its tmpfs file, in order.
pub fn md5s(lines: &[Line]) -> Vec<String> {
    values(lines, "MD5 ").map(|(_, v)| v.to_owned()).collect()
}

/// The lines before `at` and from `at` on.
pub fn split_at(lines: &[Line], at: f64) -> (Vec<Line>, Vec<Line>) {
    lines.iter().cloned().partition(|l| l.at < at)
}

/// A's counter went on across `at` (a jump away and back): the first value
/// after it follows the last before it within 3 s. Returns that last value.
pub fn assert_counter_continues(boot: &Vm, at: f64) -> u64 {
    let (before, after) = split_at(&boot.lines(), at);
    let (b, a) = (counts(&before), counts(&after));
    let last = *b
        .last()
        .unwrap_or_else(|| panic!("no COUNT before {at} s\n{}", boot.logs()));
    assert!(
        a.first().is_some_and(|&f| f > last && f <= last + 3),
        "the counter did not continue across {at} s: {b:?} then {a:?}\n{}",
        boot.logs()
    );
    last
}

/// Prints the lines that mark the phases of a boot, with their times.
pub fn print_phases(boot: &Vm) {
    const MARKS: [&str; 23] = [
        "Linux version",
        "A: up",
        "A: MEMCHECK",
        "kjump: running inside the region",
        "RAM to save:",
        "A: DD-BASELINE",
        "A: HIBERNATE",
        "A: FS-",
        "A: OTHER-BOOT",
        "kjump: capture kernel started",
        "kjump: saving",
        "kjump: filesystem on",
        "kjump: image committed",
        "kjump: capture failed",
        "kjump: powering off",
        "kjump: checkpoint",
        "A: resume start",
        "restore kernel:",
        "kjump: restore kernel started",
        "kjump: restored ",
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
            "R: read, check and write memory (one pass)",
            "kjump: restore kernel started",
            "kjump: restored ",
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

/// What a hibernating boot left: A's file checksum and the counter before
/// the jump.
pub struct Saved {
    /// md5 of A's tmpfs file.
    pub md5: String,
    /// The last COUNT A printed before it went away.
    pub last_count: u64,
    /// A ran memcheck: after the resume it must go on passing.
    pub memcheck: bool,
}

/// memcheck, where A ran it, found every word of its buffer as written in
/// every pass, and went on passing after `since` (two passes at least:
/// the `A: MEMCHECK-AFTER` line that /init prints once it has seen them).
pub fn assert_memcheck_passed(boot: &Vm, since: f64, after_marker: &str) {
    let lines = boot.lines();
    if let Some(bad) = lines
        .iter()
        .find(|l| l.text.contains("MEMCHECK-BAD") || l.text.contains("MEMCHECK-DIED"))
    {
        panic!("A's memory changed: {}\n{}", bad.text, boot.logs());
    }
    let after: Vec<&Line> = lines
        .iter()
        .filter(|l| l.at >= since && l.text.starts_with("MEMCHECK pass"))
        .collect();
    assert!(
        after.len() >= 2 && find(&lines, after_marker).is_some(),
        "memcheck did not pass twice after {since} s (no {after_marker:?})\n{}",
        boot.logs()
    );
    println!(
        "[{}] memcheck: {} good passes after {since:.1} s, the last: {}",
        boot.name,
        after.len(),
        after.last().map_or("", |l| l.text.as_str())
    );
}

/// A hibernates with `--then poweroff`; B saves and powers off. Returns what
/// A held and the boot's console.
pub fn hibernate_poweroff(name: &str, opts: &BootOpts) -> (Saved, Vec<Line>) {
    let saved = hibernate_poweroff_unchecked(name, opts);
    check_committed(name, &opts.disk, "poweroff");
    saved
}

/// [`hibernate_poweroff`] without the host's check of the disk, for
/// images the host finds only with what the boot printed.
pub fn hibernate_poweroff_unchecked(name: &str, opts: &BootOpts) -> (Saved, Vec<Line>) {
    assert_eq!(opts.mode, "poweroff", "{name}: hibernate_poweroff's mode");
    let mut boot = start(name, opts);
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
            find(&before_dry, want).is_some(),
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
    let memcheck = find(&lines, "A: MEMCHECK-READY").is_some();
    (
        Saved {
            md5,
            last_count,
            memcheck,
        },
        lines,
    )
}

/// Host side: the disk holds a whole, committed image.
pub fn check_committed(name: &str, disk: &Path, mode: &str) {
    check_committed_at(name, &[&disk.display().to_string()], mode);
}

/// [`check_committed`] for the image `at` names: a disk, and `--offset`
/// for a file target's map.
pub fn check_committed_at(name: &str, at: &[&str], mode: &str) {
    let mut args = vec!["verify"];
    args.extend_from_slice(at);
    let Run { code, text, .. } = kjump(&args);
    assert_eq!(code, 0, "kjump verify after {name}: {text}");
    let mut args = vec!["info", "--json"];
    args.extend_from_slice(at);
    let Run { code, text, .. } = kjump(&args);
    assert_eq!(code, 0, "kjump info {at:?}: {text}");
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("info --json: {e}: {text}"));
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

/// A back after a resume or a wake: waits for it to say RESUMED and to
/// finish, and checks that its tmpfs file and counter went on and that it
/// reads its image as consumed. Returns the boot's console.
pub fn assert_resumed(name: &str, boot: &mut Vm, saved: &Saved) -> Vec<Line> {
    let resumed = boot.wait_for("RESUMED", PHASE);
    boot.wait_for("A: DONE", PHASE);
    boot.wait_exit(PHASE);
    print_phases(boot);
    let lines = boot.lines();
    let (_, after) = split_at(&lines, resumed.at);
    assert_eq!(
        md5s(&after),
        std::slice::from_ref(&saved.md5),
        "A's tmpfs file changed across the resume\n{}",
        boot.logs()
    );
    assert_disk_works(&after, "consumed", boot);
    let resumed_counts = counts(&after);
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
    if saved.memcheck {
        assert_memcheck_passed(boot, resumed.at, "A: MEMCHECK-AFTER");
    }
    println!(
        "[{name}] resumed: md5 {} intact, counter {} -> {first}..{}",
        saved.md5,
        saved.last_count,
        resumed_counts.last().unwrap_or(&0)
    );
    lines
}

/// A boot whose capture kernel cannot write its target (started with
/// `opts`, a read-only /dev/vda): B says why, saves nothing and jumps back;
/// A runs on with its file as it was, and `kjump hibernate` fails with B's
/// reason, which reaches it through the mailbox. Returns the finished boot
/// and B's failure line.
pub fn failed_capture(name: &str, opts: &BootOpts) -> (Vm, Line) {
    failed_capture_of(start(name, opts))
}

/// [`failed_capture`] of a machine already started.
pub fn failed_capture_of(mut boot: Vm) -> (Vm, Line) {
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
    print_phases(&boot);
    let lines = boot.lines();
    let said = find(&lines, "the capture kernel did not save this machine: ")
        .unwrap_or_else(|| panic!("A did not report B's reason\n{}", boot.logs()));
    assert!(said.text.contains("/dev/vda"), "{}", said.text);
    let (before, after) = split_at(&lines, resumed.at);
    assert_eq!(md5s(&before), md5s(&after), "{}", boot.logs());
    assert_counter_continues(&boot, failed.at);
    (boot, failed)
}

/// A boot whose R fails after it began writing memory: R says why and that
/// the image is marked failed, never hands back (memory is no longer the
/// normal boot's) and restarts the machine. Returns the finished boot and
/// R's failure line.
pub fn restore_fails_after_writes(name: &str, opts: &BootOpts) -> (Vm, Line) {
    let mut boot = start(name, opts);
    boot.wait_for("kjump: reading each chunk once", PHASE);
    let failed = boot.wait_for("kjump: resume failed", PHASE);
    boot.wait_for("restarting into a normal boot", PHASE);
    boot.wait_exit(PHASE);
    print_phases(&boot);
    let lines = boot.lines();
    assert!(
        failed.text.contains("is marked failed"),
        "{}\n{}",
        failed.text,
        boot.logs()
    );
    for never in ["handing control back", "RESUMED", "A: RESUME-EXIT"] {
        assert!(
            find(&lines, never).is_none(),
            "[{name}] {never:?} after memory was written\n{}",
            boot.logs()
        );
    }
    println!("[{name}] {:7.2}  {}", failed.at, failed.text);
    (boot, failed)
}

/// A later boot: R0 finds the image, R restores it, A runs on with the
/// same file and counter. Returns the boot's console.
pub fn resume(name: &str, opts: &BootOpts, saved: &Saved) -> Vec<Line> {
    let mut boot = start(name, opts);
    boot.wait_for("kjump: restore kernel started", PHASE);
    boot.wait_for("kjump: restored ", PHASE);
    let lines = assert_resumed(name, &mut boot, saved);
    assert!(
        !lines.iter().any(|l| l.text.starts_with("A: RESUME-EXIT")),
        "R0's kjump resume returned\n{}",
        boot.logs()
    );
    lines
}

/// A boot where `kjump resume` must not resume: it exits with `code`, prints
/// `why`, and the normal boot goes on to a fresh workload. Returns the
/// boot's console.
pub fn no_resume(name: &str, opts: &BootOpts, code: i32, why: &str) -> Vec<Line> {
    assert_eq!(opts.mode, "none", "{name}: a no-resume boot hibernates not");
    let mut boot = start(name, opts);
    boot.wait_for(&format!("A: RESUME-EXIT {code}"), PHASE);
    boot.wait_for("A: DONE", PHASE);
    boot.wait_exit(PHASE);
    print_phases(&boot);
    let lines = boot.lines();
    assert!(
        find(&lines, why).is_some(),
        "kjump resume did not say {why:?}\n{}",
        boot.logs()
    );
    assert!(
        !lines.iter().any(|l| l.text == "RESUMED"),
        "resumed anyway\n{}",
        boot.logs()
    );
    assert!(
        find(&lines, "kjump: restore kernel started").is_none(),
        "the restore kernel ran\n{}",
        boot.logs()
    );
    assert_eq!(md5s(&lines).len(), 1, "no fresh workload\n{}", boot.logs());
    for l in lines.iter().filter(|l| l.text.contains(why)) {
        println!("[{name}] {:7.2}  {}", l.at, l.text);
    }
    lines
}

/// A, resumed, read its disk again: `kjump info` of its target printed
/// `state`.
pub fn assert_disk_works(after: &[Line], state: &str, boot: &Vm) {
    let want = format!("state:      {state}");
    assert!(
        after.iter().any(|l| l.text.starts_with(&want)),
        "A's kjump info after the resume did not print {want:?}\n{}",
        boot.logs()
    );
}

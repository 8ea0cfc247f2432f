//! The first and last steps of a hibernation, in QEMU (TCG):
//!
//! - `--then suspend`: B commits the image, then suspends to RAM (S3
//!   enabled in QEMU's PIIX4). Woken with QMP `system_wakeup`, B jumps back
//!   to A, which runs on and marks the image consumed. Killed while
//!   suspended (the power fails), the next boot resumes from the image.
//! - `--free-memory`: with 256 MiB of file data in A's page cache, the same
//!   hibernation without and with it; the image shrinks, and after a resume
//!   the file reads back the same from disk.
//!
//! Needs what hibernate_vm.rs needs, and e2fsprogs. Console logs stay in
//! target/tmp/suspend-vm/.

mod common;

use common::hibvm::flows::{check_committed, disk, info, resume, state, Saved};
use common::hibvm::scenarios::{self, hibernate_and_suspend};
use common::hibvm::{self, BootOpts, Kernel};
use common::vm::{self, find, machine};

const KERNEL: Kernel = Kernel::Linux6_12;

#[test]
fn suspend_then_wake_jumps_back_and_consumes_the_image() {
    let Some(_machine) = machine() else { return };
    scenarios::suspend_then_wake(KERNEL);
}

#[test]
fn power_lost_while_suspended_resumes_from_the_image() {
    let Some(_machine) = machine() else { return };
    let disk = disk("suspend-power-lost");
    let (mut boot, saved, _) = hibernate_and_suspend("suspend-power-lost", &disk, KERNEL);
    boot.kill();
    check_committed("suspend-power-lost", &disk, "suspend");
    resume(
        "suspend-power-lost-resume",
        &BootOpts::new(&disk, "none"),
        &saved,
    );
    assert_eq!(state(&disk), "consumed");
}

/// One hibernation with 256 MiB of file data cached; returns the image's
/// size and B's capture time.
struct Cached {
    image_bytes: u64,
    capture_secs: f64,
    saved: Saved,
    disk: std::path::PathBuf,
    fs: std::path::PathBuf,
    cache_md5: String,
}

fn cached_hibernation(name: &str, free: bool) -> Cached {
    let disk = disk(name);
    let fs = hibvm::new_ext4_disk(&vm::dir().join(format!("{name}-fs.img")), 512 << 20);
    let mut opts = BootOpts::new(&disk, "poweroff")
        .disk(&fs)
        .arg("kjump.fs=/dev/vdb")
        .arg("kjump.cache=256");
    if free {
        opts = opts.arg("kjump.free=1");
    }
    let (saved, lines) = common::hibvm::flows::hibernate_poweroff(name, &opts);
    let cache = find(&lines, "A: CACHE-FILE 256 MiB, md5 ")
        .unwrap_or_else(|| panic!("[{name}] no cache file"))
        .text
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    let committed = find(&lines, "kjump: image committed")
        .unwrap_or_else(|| panic!("[{name}] no commit"))
        .text
        .clone();
    let secs: f64 = committed
        .split(" in ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("[{name}] no time in {committed:?}"));
    if free {
        for want in [
            "free memory: RAM in use",
            "of free RAM zeroed, so the capture skips it",
        ] {
            assert!(find(&lines, want).is_some(), "[{name}] no {want:?}");
        }
        for l in lines.iter().filter(|l| l.text.starts_with("free memory:")) {
            println!("[{name}] {}", l.text);
        }
    }
    let bytes = info(&disk)["image_bytes"].as_u64().expect("image_bytes");
    println!("[{name}] {committed}");
    Cached {
        image_bytes: bytes,
        capture_secs: secs,
        saved,
        disk,
        fs,
        cache_md5: cache,
    }
}

#[test]
fn free_memory_shrinks_the_image_and_the_resume_reads_the_files_back() {
    let Some(_machine) = machine() else { return };
    let plain = cached_hibernation("cache-plain", false);
    let freed = cached_hibernation("cache-free", true);
    let (plain_secs, freed_secs) = (plain.capture_secs, freed.capture_secs);
    let (cache, saved) = (freed.cache_md5.clone(), &freed.saved);
    let (plain, fs, freed_disk, freed) = (
        plain.image_bytes,
        freed.fs.clone(),
        freed.disk.clone(),
        freed.image_bytes,
    );
    println!(
        "[free-memory] image {:.1} MiB -> {:.1} MiB ({:.2}x smaller), capture {plain_secs:.2} s -> {freed_secs:.2} s",
        plain as f64 / f64::from(1 << 20),
        freed as f64 / f64::from(1 << 20),
        plain as f64 / freed as f64
    );
    // 256 MiB of random file data stop being saved.
    assert!(
        plain > freed + (200 << 20),
        "--free-memory saved too little: {plain} -> {freed} bytes"
    );
    let lines = resume(
        "cache-free-resume",
        &BootOpts::new(&freed_disk, "none").disk(&fs),
        saved,
    );
    let after = find(&lines, "A: CACHE-AFTER md5 ")
        .expect("the cache file's md5 after the resume")
        .text
        .clone();
    assert!(after.ends_with(&cache), "{after} vs {cache}");
}

//! The stale-filesystem guard in a real hibernation cycle in QEMU (TCG).
//!
//! A has an ext4 filesystem on /dev/vdb mounted and written while it
//! hibernates, as a root filesystem would be. Resuming A after another boot
//! mounted and wrote that filesystem would corrupt it (A's caches and
//! journal no longer match the disk), so `kjump resume` must refuse, name
//! the device, and let the boot go on; the image stays committed for a
//! forced resume, which does resume A. Without the intervening write the
//! guard lets the resume through (the control, checked with `kjump resume
//! --dry-run` in the same boot, before the write).
//!
//! tests/stale_fs.rs tests the fingerprints on a loop device; this is the
//! guard at work in the capture kernel and in a later boot.
//!
//! Needs what hibernate_vm.rs needs, and mkfs.ext4 (e2fsprogs). The console
//! logs stay in target/tmp/stale-fs-vm/.

mod common;

use common::hibvm::flows::{
    check_committed, disk, hibernate_poweroff, info, no_resume, resume, state, PHASE,
};
use common::hibvm::{self, BootOpts};
use common::vm::{self, find, line, machine, Line};

/// The ext4 disk A mounts (/dev/vdb).
const FS_DISK: u64 = 64 << 20;
/// What the guard records, and says when it refuses.
const FINGERPRINT_KEY: &str = "fs-fingerprint:/dev/vdb";
const CHANGED: &str = "the filesystem on /dev/vdb changed since the hibernation";

#[test]
fn written_filesystem_refused_then_forced() {
    let Some(_machine) = machine() else { return };
    let disk = disk("stale");
    let fs = hibvm::new_ext4_disk(&vm::dir().join("stale-fs.img"), FS_DISK);

    // Boot 1: A mounts and writes /dev/vdb, hibernates, B records the
    // filesystem's fingerprint and powers off.
    let opts = BootOpts::new(&disk, "poweroff")
        .disk(&fs)
        .arg("kjump.fs=/dev/vdb");
    let (saved, lines) = hibernate_poweroff("stale-hibernate", &opts);
    line(&lines, "A: FS-MOUNTED /dev/vdb", "stale-hibernate");
    let recorded = line(&lines, "kjump: filesystem on /dev/vdb: ", "stale-hibernate");
    let fingerprint = info(&disk)["extra"][FINGERPRINT_KEY]
        .as_str()
        .unwrap_or_else(|| panic!("the image records no {FINGERPRINT_KEY}"))
        .to_owned();
    assert!(
        fingerprint.starts_with("ext wtime=") && recorded.text.ends_with(&fingerprint),
        "B said {:?}, the image records {fingerprint:?}",
        recorded.text
    );
    println!("[stale] {}", recorded.text);

    // Boot 2, another boot: the guard passes before the write (the
    // control), refuses after it, and the boot goes on.
    let other = BootOpts::new(&disk, "none")
        .disk(&fs)
        .arg("kjump.precheck=1")
        .arg("kjump.otherboot=/dev/vdb");
    let lines = no_resume("stale-other-boot", &other, 1, CHANGED);
    let name = "stale-other-boot";
    let dry = line(&lines, "A: RESUME-DRY-RUN-EXIT", name);
    let wrote = line(&lines, "A: OTHER-BOOT wrote to /dev/vdb", name);
    let refused = line(&lines, CHANGED, name);
    assert_eq!(
        dry.text.trim_end(),
        "A: RESUME-DRY-RUN-EXIT 0",
        "the unchanged filesystem was refused"
    );
    let before_write: Vec<&Line> = lines.iter().filter(|l| l.at < wrote.at).collect();
    assert!(
        before_write
            .iter()
            .any(|l| l.text.contains("dry run: nothing was changed"))
            && !before_write.iter().any(|l| l.text.contains(CHANGED)),
        "before the write, the dry run should pass the guard"
    );
    assert!(dry.at < wrote.at && wrote.at < refused.at);
    assert!(
        refused.text.contains("refused") && refused.text.contains("--force-stale-filesystems"),
        "the refusal should say the image was refused and how to force it: {}",
        refused.text
    );
    check_committed(name, &disk, "poweroff");
    assert_eq!(
        info(&disk)["extra"][FINGERPRINT_KEY].as_str(),
        Some(fingerprint.as_str()),
        "a refusal changes nothing in the image"
    );

    // Boot 3: forced, the resume goes ahead and A runs on.
    let forced = BootOpts::new(&disk, "none").disk(&fs).arg("kjump.force=1");
    let lines = resume("stale-forced", &forced, &saved);
    let name = "stale-forced";
    let warned = line(&lines, "kjump: resuming despite a changed filesystem", name);
    assert!(
        warned.text.contains(CHANGED),
        "the forced resume should name what changed: {}",
        warned.text
    );
    assert_eq!(state(&disk), "consumed");
    for l in [warned, line(&lines, "A: FS-AFTER", name)] {
        println!("[{name}] {:7.2}  {}", l.at, l.text);
    }
}

/// A checkpoint leaves the image committed while A runs on and writes its
/// filesystems; after a crash, the next boot must not resume it over a
/// filesystem written since. A checkpoints with /dev/vdb mounted, writes a
/// file there and syncs (the filesystem stays mounted: only its journal
/// moves on), then resets without unmounting; the next boot refuses the
/// image, naming the device.
#[test]
fn checkpoint_over_a_filesystem_written_since_is_refused() {
    let Some(_machine) = machine() else { return };
    let disk = disk("checkpoint-moved-on");
    let fs = hibvm::new_ext4_disk(&vm::dir().join("checkpoint-fs.img"), FS_DISK);
    let opts = BootOpts::new(&disk, "checkpoint")
        .disk(&fs)
        .arg("kjump.fs=/dev/vdb")
        .arg("kjump.crash=1");
    let name = "checkpoint-crash";
    let mut boot = hibvm::start(name, &opts);
    boot.wait_for("kjump: image committed", PHASE);
    boot.wait_for("RESUMED", PHASE);
    let wrote = boot.wait_for("A: WROTE-AFTER /dev/vdb", PHASE);
    boot.wait_exit(PHASE);
    let lines = boot.lines();
    assert!(
        find(&lines, "A: FS-UNMOUNTED").is_none(),
        "A unmounted before the crash\n{}",
        boot.logs()
    );
    check_committed(name, &disk, "checkpoint");
    println!("[{name}] {:7.2}  {}", wrote.at, wrote.text);

    let after = BootOpts::new(&disk, "none").disk(&fs);
    let lines = no_resume("checkpoint-after-crash", &after, 1, CHANGED);
    let refused = line(&lines, CHANGED, "checkpoint-after-crash");
    println!("[checkpoint-after-crash] {}", refused.text);
    check_committed("checkpoint-after-crash", &disk, "checkpoint");
}

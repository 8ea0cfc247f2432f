//! The stale-filesystem guard on real filesystems: an ext4 filesystem on a
//! loop device is fingerprinted as the capture kernel does it, then mounted
//! and written as another boot would; `kjump resume` must then refuse the
//! image, naming the device, unless forced.

mod common;

use std::path::{Path, PathBuf};

use common::loopdev::{self, Loop};
use common::tempdir::TempDir;
use kjump_handoff::fsguard;
use kjump_image_format::{MemoryMap, PhysAddr, PhysRange};
use kjump_jump::resume::{check, ResumeError, DEFAULT_MAX_ATTEMPTS};
use kjump_writer::{capture, CaptureOptions, MemorySource, Target};

const IOMEM: &str = "00001000-0009fbff : System RAM\n00100000-3fffffff : System RAM\n";

fn ready() -> bool {
    loopdev::ready(&["losetup", "mkfs.ext4", "mount", "umount"])
}

/// An image recording `dev`'s fingerprint as the capture kernel would.
fn image_with_fingerprint(dir: &TempDir, dev: &Path) -> PathBuf {
    std::fs::write(dir.path("mem"), vec![7u8; 0x14_0000]).unwrap();
    let map = MemoryMap::from_sorted(vec![PhysRange::from_start_len(
        PhysAddr(0x10_0000),
        0x4_0000,
    )
    .unwrap()])
    .unwrap();
    let source = MemorySource::open(&dir.path("mem"), Some(map)).unwrap();
    let mut meta = source.metadata();
    meta.jump_back_entry = Some(0x1000);
    meta.extra
        .push(("region".into(), "0x10000000-0x1fffffff".into()));
    let fp = fsguard::fingerprint(dev).unwrap();
    assert!(fp.starts_with("ext wtime="), "{fp}");
    meta.extra
        .push((format!("{}{}", fsguard::META_PREFIX, dev.display()), fp));
    let img = dir.path("img");
    capture(
        &source,
        &Target::open(&img).unwrap(),
        &meta,
        &CaptureOptions::new(),
    )
    .unwrap();
    img
}

#[test]
fn a_filesystem_written_by_another_boot_stops_the_resume() {
    if !ready() {
        return;
    }
    let dir = TempDir::new("stale-fs");
    let dev = Loop::ext4(&dir.path("fs.img"));
    // As A left it: mounted, written, synced and unmounted by the jump.
    dev.write_as_another_boot(&dir.path("mnt"));
    let img = image_with_fingerprint(&dir, &dev.0);
    assert!(
        matches!(
            check(&img, None, IOMEM, false, DEFAULT_MAX_ATTEMPTS, false),
            Ok(Ok(_))
        ),
        "unchanged filesystem must not block"
    );
    dev.write_as_another_boot(&dir.path("mnt"));
    match check(&img, None, IOMEM, false, DEFAULT_MAX_ATTEMPTS, false) {
        Err(ResumeError::Refused { reason, .. }) => {
            let reason = kjump_handoff::error_chain(&reason);
            let name = dev.0.display().to_string();
            assert!(
                reason.contains(&format!(
                    "the filesystem on {name} changed since the hibernation"
                )),
                "{reason}"
            );
            assert!(reason.contains("--force-stale-filesystems"), "{reason}");
        }
        other => panic!("a written filesystem must refuse the resume, got {other:?}"),
    }
    assert!(
        matches!(
            check(&img, None, IOMEM, true, DEFAULT_MAX_ATTEMPTS, false),
            Ok(Ok(_))
        ),
        "forced resume goes on"
    );
}

#[test]
fn a_journal_replay_by_a_read_only_mount_is_a_change() {
    if !ready() {
        return;
    }
    let dir = TempDir::new("stale-fs-replay");
    let fs = dir.path("fs.img");
    let live = Loop::ext4(&fs);
    // A: mounted read-write and written; its disk says "needs recovery".
    let mnt = dir.path("mnt");
    let _a = loopdev::Mount::new(&live.0, &mnt);
    std::fs::write(mnt.join("a-file"), vec![1u8; 1 << 20]).unwrap();
    loopdev::sh("sync");
    // The disk as the capture kernel sees it while A is away.
    let copy = dir.path("copy.img");
    std::fs::copy(&fs, &copy).unwrap();
    let disk = Loop::over(&copy);
    let then = fsguard::fingerprint(&disk.0).unwrap();
    assert!(then.contains("incompat=0x"), "{then}");
    // Another boot mounts it read-only, which replays the journal.
    let other = dir.path("other");
    drop(loopdev::Mount::new_with(&disk.0, &other, "-o ro"));
    let now = fsguard::fingerprint(&disk.0).unwrap();
    println!("then: {then}\nnow:  {now}");
    assert_ne!(
        then, now,
        "a read-only mount replayed the journal and the fingerprint did not change"
    );
}

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

/// A filesystem the guard fingerprints, as the tests make it.
struct Kind {
    name: &'static str,
    /// The sparse file's size (`truncate -s`): above the mkfs's minimum.
    size: &'static str,
    /// The mkfs command, which takes the file last.
    mkfs: &'static str,
    /// How its fingerprint begins.
    prefix: &'static str,
}

/// Without lazy initialisation: a kernel thread zeroing inode tables
/// after the mount would commit transactions of its own.
const EXT4: Kind = Kind {
    name: "ext4",
    size: "64M",
    mkfs: "mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0",
    prefix: "ext wtime=",
};
const BTRFS: Kind = Kind {
    name: "btrfs",
    size: "128M",
    mkfs: "mkfs.btrfs -q -f",
    prefix: "btrfs ",
};
const XFS: Kind = Kind {
    name: "xfs",
    size: "320M",
    mkfs: "mkfs.xfs -q -f",
    prefix: "xfs ",
};

fn ready_for(kind: &Kind) -> bool {
    let mkfs = kind.mkfs.split_whitespace().next().unwrap_or_default();
    loopdev::ready(&["losetup", mkfs, "mount", "umount"])
}

/// Writes `mib` MiB to `name` under `mnt` and syncs, as A does when it
/// runs on after a checkpoint.
fn write_synced(mnt: &Path, name: &str, mib: usize) {
    std::fs::write(mnt.join(name), vec![0x5a; mib << 20]).unwrap();
    loopdev::sh("sync");
}

/// `kind` on a loop device, mounted and written. With `settled` it is then
/// unmounted (which empties an ext4 journal) and mounted again; else its
/// journal or log holds the first write's transactions. A few MiB written
/// and synced while it stays mounted must change its fingerprint.
/// Returns the fingerprint before the write.
fn mounted_writes_change_the_fingerprint(kind: &Kind, settled: bool) -> String {
    let state = if settled { "settled" } else { "busy" };
    let dir = TempDir::new(&format!("stale-fs-mounted-{}-{state}", kind.name));
    let dev = Loop::mkfs(&dir.path("fs.img"), kind.size, kind.mkfs);
    let mnt = dir.path("mnt");
    let mut mount = loopdev::Mount::new(&dev.0, &mnt);
    write_synced(&mnt, "first", 2);
    if settled {
        drop(mount);
        mount = loopdev::Mount::new(&dev.0, &mnt);
        loopdev::sh("sync");
    }
    let then = fsguard::fingerprint(&dev.0).unwrap();
    write_synced(&mnt, "second", 4);
    let now = fsguard::fingerprint(&dev.0).unwrap();
    drop(mount);
    println!("{} ({state})\nthen: {then}\nnow:  {now}", kind.name);
    assert_ne!(
        then, now,
        "4 MiB written and synced on a mounted {} ({state}) left its fingerprint as it was",
        kind.name
    );
    assert!(then.starts_with(kind.prefix), "{then}");
    then
}

#[test]
fn ext4_written_while_mounted_from_an_empty_journal_changes() {
    if !ready_for(&EXT4) {
        return;
    }
    let then = mounted_writes_change_the_fingerprint(&EXT4, true);
    assert!(then.contains(" journal-start=0 "), "not empty: {then}");
}

#[test]
fn ext4_written_while_mounted_with_transactions_in_the_journal_changes() {
    if !ready_for(&EXT4) {
        return;
    }
    let then = mounted_writes_change_the_fingerprint(&EXT4, false);
    assert!(!then.contains(" journal-start=0 "), "empty: {then}");
}

#[test]
fn btrfs_written_while_mounted_changes() {
    if !ready_for(&BTRFS) {
        return;
    }
    mounted_writes_change_the_fingerprint(&BTRFS, true);
    mounted_writes_change_the_fingerprint(&BTRFS, false);
}

#[test]
fn xfs_written_while_mounted_changes() {
    if !ready_for(&XFS) {
        return;
    }
    mounted_writes_change_the_fingerprint(&XFS, true);
    mounted_writes_change_the_fingerprint(&XFS, false);
}

/// The fingerprint of `file` through a fresh loop device, as a capture
/// kernel and a later boot each see the disk.
fn fingerprint_of_file(file: &Path) -> Result<String, std::io::Error> {
    let dev = Loop::over(file);
    fsguard::fingerprint(&dev.0)
}

/// The disk of `kind` as a capture kernel finds it: mounted, written and
/// synced, its journal or log not yet checkpointed (copied while mounted).
fn disk_left_mounted(dir: &TempDir, kind: &Kind) -> PathBuf {
    let fs = dir.path("fs.img");
    let dev = Loop::mkfs(&fs, kind.size, kind.mkfs);
    let mnt = dir.path("mnt");
    let mount = loopdev::Mount::new(&dev.0, &mnt);
    write_synced(&mnt, "written", 3);
    let copy = dir.path("copy.img");
    loopdev::sh(&format!(
        "cp --sparse=always {} {}",
        fs.display(),
        copy.display()
    ));
    drop(mount);
    copy
}

#[test]
fn unchanged_filesystems_keep_their_fingerprint() {
    for kind in [&EXT4, &BTRFS, &XFS] {
        if !ready_for(kind) {
            return;
        }
        let dir = TempDir::new(&format!("stale-fs-unchanged-{}", kind.name));
        // Left mounted (as B finds A's disks), then cleanly unmounted.
        let mounted = disk_left_mounted(&dir, kind);
        let clean = dir.path("fs.img");
        for file in [&mounted, &clean] {
            let first = fingerprint_of_file(file).unwrap();
            let second = fingerprint_of_file(file).unwrap();
            println!("{}: {first}", kind.name);
            assert!(first.starts_with(kind.prefix), "{first}");
            assert_eq!(first, second, "{} unchanged", kind.name);
        }
    }
}

/// Where block 0 of the ext4 journal lies in the image `file`, in bytes,
/// and the filesystem's block size.
fn ext4_journal_start(file: &Path) -> (u64, u64) {
    let block: u64 = loopdev::sh(&format!(
        "debugfs -R 'bmap <8> 0' {} 2>/dev/null",
        file.display()
    ))
    .parse()
    .unwrap();
    let size: u64 = loopdev::sh(&format!(
        "dumpe2fs -h {} 2>/dev/null | sed -n 's/^Block size: *//p'",
        file.display()
    ))
    .parse()
    .unwrap();
    (block * size, size)
}

#[test]
fn a_garbage_or_truncated_journal_is_an_error_or_a_stable_fingerprint() {
    if !ready_for(&EXT4) || !loopdev::ready(&["debugfs", "dumpe2fs", "dd"]) {
        return;
    }
    let dir = TempDir::new("stale-fs-garbage");
    let disk = disk_left_mounted(&dir, &EXT4);
    let (journal, block) = ext4_journal_start(&disk);
    let spoil = |name: &str, cmd: &str| {
        let file = dir.path(name);
        std::fs::copy(&disk, &file).unwrap();
        let f = file.display();
        loopdev::sh(&cmd.replace("FILE", &f.to_string()));
        let first = fingerprint_of_file(&file);
        let second = fingerprint_of_file(&file);
        println!("{name}: {first:?}");
        match (first, second) {
            (Ok(a), Ok(b)) => {
                assert!(a.starts_with("ext wtime="), "{name}: {a}");
                assert_eq!(a, b, "{name}: read twice");
                a
            }
            (Err(_), Err(_)) => String::new(),
            other => panic!("{name}: {other:?}"),
        }
    };
    let whole = fingerprint_of_file(&disk).unwrap();
    // Its superblock, then its log after the superblock.
    let sb = spoil(
        "sb.img",
        &format!(
            "dd if=/dev/urandom of=FILE bs={block} seek={} count=1 conv=notrunc status=none",
            journal / block
        ),
    );
    let log = spoil(
        "log.img",
        &format!(
            "dd if=/dev/urandom of=FILE bs={block} seek={} count=64 conv=notrunc status=none",
            journal / block + 1
        ),
    );
    // Cut in the middle of the journal.
    let cut = spoil(
        "cut.img",
        &format!("truncate -s {} FILE", journal + 8 * block),
    );
    for (name, spoilt) in [("superblock", sb), ("log", log), ("truncated", cut)] {
        assert_ne!(spoilt, whole, "a journal with a garbage {name}");
    }
}

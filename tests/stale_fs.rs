//! The stale-filesystem guard on real filesystems: an ext4 filesystem on a
//! loop device is fingerprinted as the capture kernel does it, then mounted
//! and written as another boot would; `kjump resume` must then refuse the
//! image, naming the device, unless forced.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::cores::TempDir;
use kjump_image_format::{MemoryMap, PhysAddr, PhysRange};
use kjump_initramfs::fsguard;
use kjump_initramfs::resume::{check, ResumeError};
use kjump_writer::{capture, CaptureOptions, MemorySource, Target};

const IOMEM: &str = "00001000-0009fbff : System RAM\n00100000-3fffffff : System RAM\n";

fn ready() -> bool {
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    });
    let tools = ["losetup", "mkfs.ext4", "mount", "umount"].iter().all(|t| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {t}"))
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if root && tools {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run this test (root: {root}, tools: {tools})"
    );
    common::skip(format!(
        "needs root and losetup/mkfs.ext4/mount (root: {root})"
    ));
    false
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A loop device over a fresh ext4 filesystem, detached on drop.
struct Loop(PathBuf);

impl Loop {
    fn ext4(file: &Path) -> Loop {
        sh(&format!(
            "truncate -s 32M {0} && mkfs.ext4 -q -F {0}",
            file.display()
        ));
        Loop(PathBuf::from(sh(&format!(
            "losetup -f --show {}",
            file.display()
        ))))
    }

    /// Mounts, writes a file, unmounts: what another boot does.
    fn write_as_another_boot(&self, mnt: &Path) {
        std::fs::create_dir_all(mnt).unwrap();
        sh(&format!("mount {} {}", self.0.display(), mnt.display()));
        let _ = std::fs::write(mnt.join("written-by-another-boot"), b"x");
        sh(&format!("umount {}", mnt.display()));
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
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
        .push(("region".into(), "0x1000000-0x1ffffff".into()));
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
        matches!(check(&img, None, IOMEM, false), Ok(Ok(_))),
        "unchanged filesystem must not block"
    );
    dev.write_as_another_boot(&dir.path("mnt"));
    match check(&img, None, IOMEM, false) {
        Err(ResumeError::Refused { reason, .. }) => {
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
        matches!(check(&img, None, IOMEM, true), Ok(Ok(_))),
        "forced resume goes on"
    );
}

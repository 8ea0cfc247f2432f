//! Loop devices for tests that need real block devices: they need root and
//! util-linux. Outside CI a test without them is skipped; in CI it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether this process is root and has `tools`; skips (or, under CI,
/// fails) the test when not.
pub fn ready(tools: &[&str]) -> bool {
    let root = super::is_root();
    let have = tools.iter().all(|t| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {t}"))
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if root && have {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run this test (root: {root}, tools {tools:?}: {have})"
    );
    super::skip(format!("needs root and {tools:?} (root: {root})"));
    false
}

/// Runs `cmd` in sh; panics with its stderr when it fails. Returns stdout.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A loop device over a file, detached on drop.
pub struct Loop(pub PathBuf);

impl Loop {
    /// A loop device over `file`, which must exist.
    pub fn over(file: &Path) -> Loop {
        Loop(PathBuf::from(sh(&format!(
            "losetup -f --show {}",
            file.display()
        ))))
    }

    /// A loop device over a fresh 32 MiB ext4 filesystem.
    pub fn ext4(file: &Path) -> Loop {
        Loop::mkfs(file, "32M", "mkfs.ext4 -q -F")
    }

    /// A loop device over a sparse file of `size` (`truncate -s` units)
    /// made into a filesystem by `mkfs`, a command that takes the file
    /// last (`mkfs.xfs -q -f`).
    pub fn mkfs(file: &Path, size: &str, mkfs: &str) -> Loop {
        sh(&format!(
            "truncate -s {size} {0} && {mkfs} {0} >/dev/null",
            file.display()
        ));
        Loop::over(file)
    }

    /// Mounts, writes a file, unmounts: what another boot does.
    pub fn write_as_another_boot(&self, mnt: &Path) {
        std::fs::create_dir_all(mnt).unwrap();
        sh(&format!("mount {} {}", self.0.display(), mnt.display()));
        let _ = std::fs::write(mnt.join("written-by-another-boot"), b"x");
        sh(&format!("umount {}", mnt.display()));
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        // A swap area left active by a failed test would keep the device.
        let _ = Command::new("swapoff")
            .arg(&self.0)
            .stderr(std::process::Stdio::null())
            .status();
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// A mount, unmounted on drop.
pub struct Mount(pub PathBuf);

impl Mount {
    /// Mounts `dev` at `at`, creating the directory.
    pub fn new(dev: &Path, at: &Path) -> Mount {
        Mount::new_with(dev, at, "")
    }

    /// Mounts `dev` at `at` with extra `mount` options, e.g. `-o ro`.
    pub fn new_with(dev: &Path, at: &Path, options: &str) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        sh(&format!(
            "mount {options} {} {}",
            dev.display(),
            at.display()
        ));
        Mount(at.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

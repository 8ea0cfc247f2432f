//! Guest root file systems: a directory laid out on the host, then packed
//! with `cpio -H newc` uncompressed (the kernel unpacks it faster, and no
//! compressor is needed), its names sorted so the archive is reproducible.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The host's busybox-static: the shell and tools of every test guest.
pub const BUSYBOX: &str = "/bin/busybox";

/// A guest root being laid out in a host directory.
pub struct Initramfs {
    root: PathBuf,
}

impl Initramfs {
    /// An empty tree at `root` (whatever was there is removed), with
    /// `dirs` created in it.
    pub fn new(root: &Path, dirs: &[&str]) -> Result<Initramfs, String> {
        if root.exists() {
            fs::remove_dir_all(root).map_err(|e| format!("removing {}: {e}", root.display()))?;
        }
        for d in dirs {
            let dir = root.join(d);
            fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        Ok(Initramfs {
            root: root.to_path_buf(),
        })
    }

    /// Copies the host file `from` to `to` in the tree, making its parents.
    pub fn copy(&self, from: &Path, to: &str) -> Result<(), String> {
        let dest = self.root.join(to);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| format!("creating {}: {e}", parent.display()))?;
        }
        fs::copy(from, &dest)
            .map(drop)
            .map_err(|e| format!("copying {} to {}: {e}", from.display(), dest.display()))
    }

    /// Copies the host's busybox-static to /bin/busybox.
    pub fn busybox(&self) -> Result<(), String> {
        self.copy(Path::new(BUSYBOX), "bin/busybox")
            .map_err(|e| format!("{e} (apt-get install busybox-static)"))
    }

    /// Copies a dynamically linked host program to `to`, with the
    /// libraries `ldd` lists for it at their host paths.
    pub fn program(&self, from: &Path, to: &str) -> Result<(), String> {
        self.copy(from, to)?;
        let out = Command::new("ldd")
            .arg(from)
            .output()
            .map_err(|e| format!("running ldd {}: {e}", from.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        for lib in text.split_whitespace().filter(|w| w.starts_with('/')) {
            self.copy(Path::new(lib), lib.trim_start_matches('/'))?;
        }
        Ok(())
    }

    /// Writes `bytes` to `to` in the tree with permissions `mode`.
    pub fn write(&self, to: &str, bytes: &[u8], mode: u32) -> Result<(), String> {
        let dest = self.root.join(to);
        fs::write(&dest, bytes).map_err(|e| format!("writing {}: {e}", dest.display()))?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(mode))
            .map_err(|e| format!("chmod {}: {e}", dest.display()))
    }

    /// Where `to` lies on the host.
    pub fn path(&self, to: &str) -> PathBuf {
        self.root.join(to)
    }

    /// Packs the tree into the newc archive `cpio`, owned by root.
    pub fn pack(&self, cpio: &Path) -> Result<PathBuf, String> {
        let mut names = vec![".".to_owned()];
        walk(&self.root, Path::new(""), &mut names)?;
        names[1..].sort();
        let archive =
            fs::File::create(cpio).map_err(|e| format!("creating {}: {e}", cpio.display()))?;
        let mut child = Command::new("cpio")
            .args(["--create", "--format=newc", "--quiet", "--owner=0:0"])
            .arg("--reproducible")
            .current_dir(&self.root)
            .stdin(Stdio::piped())
            .stdout(archive)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("running cpio (apt-get install cpio): {e}"))?;
        let fed = match child.stdin.take() {
            Some(mut stdin) => stdin.write_all((names.join("\n") + "\n").as_bytes()),
            None => Err(std::io::Error::other("cpio has no stdin pipe")),
        };
        let out = child
            .wait_with_output()
            .map_err(|e| format!("waiting for cpio: {e}"))?;
        fed.map_err(|e| format!("feeding file names to cpio: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cpio --create of {} failed ({}): {}",
                self.root.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(cpio.to_path_buf())
    }
}

/// The names below `dir` (`rel` from the root), directories before what
/// they hold once sorted.
fn walk(dir: &Path, rel: &Path, names: &mut Vec<String>) -> Result<(), String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("reading {}: {e}", dir.display()))?;
        let name = rel.join(entry.file_name());
        let kind = entry
            .file_type()
            .map_err(|e| format!("stat {}: {e}", entry.path().display()))?;
        names.push(
            name.to_str()
                .ok_or_else(|| format!("{} is not UTF-8", name.display()))?
                .to_owned(),
        );
        if kind.is_dir() {
            walk(&entry.path(), &name, names)?;
        }
    }
    Ok(())
}

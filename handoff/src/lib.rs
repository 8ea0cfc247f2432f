//! What passes between a kernel that jumps and the confined kernel it
//! loads: the plan of the jump (where the confined kernel runs, what it
//! saves or restores), the manifest in the confined kernel's initramfs, the
//! mailbox page it reports back through, and the filesystem fingerprints a
//! capture records and a resume checks.
//!
//! The jumping side is `kjump-jump` (`hibernate` in the saved kernel A,
//! `resume` in the normal boot R0), the confined side `kjump-init` (the
//! capture kernel B and the restore kernel R, running kjump as `/init`).

#![forbid(unsafe_code)]

pub mod claim;
pub mod fsguard;
pub mod mailbox;
pub mod manifest;
pub mod plan;
pub mod uuid;

use std::path::{Path, PathBuf};

/// Path of the file in an initramfs that carries the secret of an
/// encrypted image (a key file's bytes or a passphrase).
pub const SECRET_PATH: &str = "etc/kjump/secret";

/// Passphrase attempts before R hands back to the normal boot.
pub const PASSPHRASE_TRIES: u32 = 3;

/// The name the next kernel gives a device: the capture and restore kernels
/// run no udev, so `/dev/disk/by-*` links do not exist there, while the
/// devtmpfs node the link points to (`/dev/sdb2`) does.
pub fn kernel_name(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

pub use kjump_sys::error_chain;

#[cfg(test)]
mod tests {
    #[test]
    fn links_resolve_to_the_node_the_next_kernel_has() {
        let dir = std::env::temp_dir().join(format!("kjump-kernel-name-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let node = dir.join("sdb2");
        std::fs::write(&node, b"").unwrap();
        let link = dir.join("by-partlabel-kjump");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&node, &link).unwrap();
        assert_eq!(super::kernel_name(&link), node);
        assert_eq!(
            super::kernel_name(std::path::Path::new("/nonexistent/x")),
            std::path::Path::new("/nonexistent/x")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

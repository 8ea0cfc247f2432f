//! Mounting the kernel's own filesystems (proc, sysfs, devtmpfs), as /init
//! does first.

use nix::mount::MsFlags;

/// The error number a mount fails with.
pub use nix::errno::Errno;

/// Mounts the kernel filesystem `fstype` (also the source's name) on
/// `target`, creating the directory if need be. One mounted there already
/// (the kernel may mount devtmpfs itself) is left as it is.
pub fn mount_kernel_fs(fstype: &str, target: &str) -> Result<(), Errno> {
    let _ = std::fs::create_dir_all(target);
    match nix::mount::mount(
        Some(fstype),
        target,
        Some(fstype),
        MsFlags::empty(),
        None::<&str>,
    ) {
        Ok(()) | Err(Errno::EBUSY) => Ok(()),
        Err(e) => Err(e),
    }
}

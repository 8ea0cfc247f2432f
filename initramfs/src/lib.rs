//! The initramfs kjump boots its capture and restore kernels with: this
//! kjump binary as `/init` (which runs `kjump-init` there), the mount
//! points and console it needs, and files generated in memory (the
//! manifest, an encrypted image's secret).
//!
//! [`cpio`] writes (and reads back) the kernel's initramfs format, newc cpio,
//! reproducibly: the same files give the same bytes, whatever the build
//! machine's clock, user or directory order.

#![forbid(unsafe_code)]

pub mod cpio;

use cpio::{Archive, CpioError, Kind};
use zeroize::Zeroizing;

/// Why an initramfs could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// A host file could not be read.
    #[error("reading {path}")]
    Read {
        /// The host file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The archive rejected an entry.
    #[error(transparent)]
    Archive(#[from] CpioError),
}

/// A file to place in the initramfs.
#[derive(Clone, Debug)]
pub struct ExtraFile {
    /// Path on the build machine.
    pub host: std::path::PathBuf,
    /// Path inside the initramfs, relative (`bin/busybox`).
    pub dest: String,
}

/// The skeleton every kjump initramfs has: `/init` (the static kjump
/// binary), the console node the kernel opens before running it, and the
/// mount points /init uses. Extra files follow; their modes are kept.
pub fn build(
    init: &std::path::Path,
    extra: &[ExtraFile],
) -> Result<Zeroizing<Vec<u8>>, InitramfsError> {
    build_with(init, extra, Vec::new())
}

/// [`build`], plus files generated in memory: `(path, mode, contents)`.
/// The contents are moved into the archive, not copied, and wiped with it
/// (an encrypted image's secret is one of them); the archive bytes are
/// wiped when the caller drops them.
pub fn build_with(
    init: &std::path::Path,
    extra: &[ExtraFile],
    generated: Vec<(&str, u32, Vec<u8>)>,
) -> Result<Zeroizing<Vec<u8>>, InitramfsError> {
    use std::os::unix::fs::PermissionsExt;
    let read = |p: &std::path::Path| {
        let data = std::fs::read(p).map_err(|source| InitramfsError::Read {
            path: p.display().to_string(),
            source,
        })?;
        let mode = std::fs::metadata(p).map_or(0o644, |m| m.permissions().mode());
        Ok::<_, InitramfsError>((data, mode))
    };
    let mut a = Archive::new();
    for dir in ["dev", "proc", "sys", "tmp", "run"] {
        a.add(dir, 0o755, Kind::Dir)?;
    }
    a.add("dev/console", 0o600, Kind::CharDev(5, 1))?;
    let (data, _) = read(init)?;
    a.add("init", 0o755, Kind::File(data))?;
    for f in extra {
        let (data, mode) = read(&f.host)?;
        a.add(f.dest.trim_start_matches('/'), mode, Kind::File(data))?;
    }
    for (path, mode, data) in generated {
        a.add(path, mode, Kind::File(data))?;
    }
    Ok(a.to_bytes())
}

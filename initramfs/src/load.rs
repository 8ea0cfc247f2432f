//! Loading the capture or restore kernel with kexec-tools, confined to the
//! crashkernel region, with kjump's initramfs carrying a manifest.
//!
//! The initramfs never touches a disk: it is built in memory and handed to
//! kexec-tools as an anonymous memory file (memfd) it reads through
//! /proc/self/fd, so the key of an encrypted image it may carry stays in RAM, and
//! that memory is overwritten once the kernel is loaded.

use std::path::Path;
use std::process::Command;

use zeroize::Zeroizing;

use kjump_image_format::PhysRange;
use kjump_sys::memfd::MemFile;

use crate::manifest::Manifest;

/// One kexec-tools load.
pub struct KexecLoad<'a> {
    /// kexec-tools' `kexec`.
    pub kexec: &'a Path,
    /// `--load-preserve-context` for a capture kernel, `--load` for a
    /// restore kernel.
    pub flag: &'static str,
    /// The region the kernel must stay in.
    pub region: PhysRange,
    /// The kernel image.
    pub kernel: &'a Path,
    /// Its command line.
    pub cmdline: String,
}

/// Path of the file in an initramfs that carries the secret of an
/// encrypted image (a key file's bytes or a passphrase).
pub const SECRET_PATH: &str = "etc/kjump/secret";

impl KexecLoad<'_> {
    /// kexec's arguments, with the initramfs at `initrd`.
    pub fn args(&self, initrd: &str) -> Vec<String> {
        vec![
            self.flag.to_string(),
            format!("--mem-min={:#x}", self.region.start().0),
            format!("--mem-max={:#x}", self.region.end().0 - 1),
            self.kernel.display().to_string(),
            format!("--initrd={initrd}"),
            format!("--append={}", self.cmdline),
        ]
    }

    /// The command as a shell line, for dry runs and logs.
    pub fn shown(&self) -> String {
        format!(
            "{} {}",
            self.kexec.display(),
            self.args("/proc/self/fd/N").join(" ")
        )
    }

    /// Builds the initramfs (this kjump as /init, `extra` files, the
    /// manifest, and the secret of an encrypted image if any) in memory and
    /// loads the kernel with it; every copy of the initramfs is overwritten
    /// afterwards.
    pub fn run(
        &self,
        manifest: &Manifest,
        extra: &[crate::ExtraFile],
        secret: Option<&[u8]>,
    ) -> Result<(), String> {
        let exe = std::env::current_exe().map_err(|e| format!("finding this kjump binary: {e}"))?;
        let mut generated = vec![(crate::manifest::PATH, 0o644, manifest.encode().into_bytes())];
        if let Some(s) = secret {
            generated.push((SECRET_PATH, 0o600, s.to_vec()));
        }
        let built = crate::build_with(&exe, extra, &generated);
        // The secret's copy in `generated`.
        for (_, _, bytes) in &mut generated {
            zeroize::Zeroize::zeroize(bytes);
        }
        let initrd = Zeroizing::new(built.map_err(|e| crate::error_chain(&e))?);
        let file = MemFile::with_contents(c"kjump-initramfs", &initrd)
            .map_err(|e| format!("writing the initramfs to an in-memory file: {e}"))?;
        // The child inherits the descriptor and reads it through
        // /proc/self/fd.
        let out = Command::new(self.kexec)
            .args(self.args(&file.child_path()))
            .output();
        file.wipe();
        let out = out.map_err(|e| format!("running {}: {e}", self.kexec.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} exited with {}: {}",
                self.kexec.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(())
    }

    /// Unloads the kernel again (`kexec -u`), when what was to follow the
    /// load failed or once the loaded kernel has jumped back. Best effort:
    /// a loaded kernel only waits for a jump.
    pub fn unload(&self) {
        let _ = Command::new(self.kexec).arg("-u").output();
    }
}

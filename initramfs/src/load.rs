//! Loading the capture or restore kernel with kexec-tools, confined to the
//! crashkernel region, with kjump's initramfs carrying a manifest.

use std::path::{Path, PathBuf};
use std::process::Command;

use kjump_image_format::PhysRange;

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
    /// Where the initramfs is written for kexec-tools to read.
    pub initrd: PathBuf,
}

impl KexecLoad<'_> {
    /// kexec's arguments.
    pub fn args(&self) -> Vec<String> {
        vec![
            self.flag.to_string(),
            format!("--mem-min={:#x}", self.region.start().0),
            format!("--mem-max={:#x}", self.region.end().0 - 1),
            self.kernel.display().to_string(),
            format!("--initrd={}", self.initrd.display()),
            format!("--append={}", self.cmdline),
        ]
    }

    /// The command as a shell line, for dry runs and logs.
    pub fn shown(&self) -> String {
        format!("{} {}", self.kexec.display(), self.args().join(" "))
    }

    /// Builds the initramfs (this kjump as /init, `extra` files, the
    /// manifest), loads the kernel, and removes the initramfs file again.
    pub fn run(&self, manifest: &Manifest, extra: &[crate::ExtraFile]) -> Result<(), String> {
        let exe = std::env::current_exe().map_err(|e| format!("finding this kjump binary: {e}"))?;
        let generated = [(crate::manifest::PATH, 0o644, manifest.encode().into_bytes())];
        let initrd =
            crate::build_with(&exe, extra, &generated).map_err(|e| crate::error_chain(&e))?;
        std::fs::write(&self.initrd, initrd)
            .map_err(|e| format!("writing {}: {e}", self.initrd.display()))?;
        let out = Command::new(self.kexec).args(self.args()).output();
        let _ = std::fs::remove_file(&self.initrd);
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
    /// load failed. Best effort: a loaded kernel only waits for a jump.
    pub fn unload(&self) {
        let _ = Command::new(self.kexec).arg("-u").output();
    }
}

//! The one step both jumping kernels take: load the next kernel, confined
//! to the crashkernel region, with kjump's initramfs carrying a manifest
//! (and an encrypted image's secret), jump into it with the context
//! preserved, and learn on the way back why it handed back, if it did.
//!
//! The initramfs never touches a disk: it is built in memory and handed to
//! kexec-tools as an anonymous memory file (memfd) it reads through
//! /proc/self/fd, so the key of an encrypted image it may carry stays in
//! RAM, and that memory is overwritten once the kernel is loaded.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use kjump_handoff::mailbox::{Mailbox, Report};
use kjump_handoff::manifest::{KeySource, Manifest, Mode};
use kjump_handoff::plan::JumpPlan;
use kjump_handoff::{error_chain, SECRET_PATH};
use kjump_image_format::{PhysRange, Secret};
use kjump_initramfs::{ExtraFile, InitramfsError};
use kjump_sys::kexec::{self, KexecError};
use kjump_sys::memfd::MemFile;

/// Which confined kernel is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The capture kernel B, loaded by the saved kernel A.
    Capture,
    /// The restore kernel R, loaded by the normal boot R0.
    Restore,
}

impl Role {
    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Role::Capture => "capture kernel",
            Role::Restore => "restore kernel",
        }
    }

    /// What it does when it does not do its work.
    fn gives_up(self) -> &'static str {
        match self {
            Role::Capture => "fails",
            Role::Restore => "refuses",
        }
    }
}

/// Why kexec-tools did not load the next kernel.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// This program's own path is unknown (it is the initramfs's /init).
    #[error("finding this kjump binary")]
    Exe(#[source] std::io::Error),
    /// The initramfs could not be built.
    #[error(transparent)]
    Initramfs(#[from] InitramfsError),
    /// The in-memory file for the initramfs failed.
    #[error("writing the initramfs to an in-memory file")]
    MemFile(#[source] std::io::Error),
    /// kexec-tools could not be run.
    #[error("running {kexec}")]
    Spawn {
        /// kexec-tools' `kexec`.
        kexec: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// kexec-tools failed.
    #[error("{kexec} exited with {status}: {stderr}")]
    Failed {
        /// kexec-tools' `kexec`.
        kexec: PathBuf,
        /// Its exit status.
        status: ExitStatus,
        /// What it said.
        stderr: String,
    },
}

/// One kexec-tools load.
pub struct KexecLoad<'a> {
    /// kexec-tools' `kexec`.
    pub kexec: &'a Path,
    /// `--load-preserve-context`: the next kernel can jump back.
    pub flag: &'static str,
    /// The region the kernel must stay in.
    pub region: PhysRange,
    /// The kernel image.
    pub kernel: &'a Path,
    /// Its command line.
    pub cmdline: String,
}

impl KexecLoad<'_> {
    /// kexec's arguments, with the initramfs at `initrd`.
    ///
    /// `--kexec-syscall`: kexec-tools 2.0.27 and later try
    /// `kexec_file_load` first, which has no preserve-context mode and
    /// refuses the load; `kexec_load` has it, and every kexec-tools that
    /// knows `--load-preserve-context` takes this word.
    ///
    /// `--no-checks`: no SHA-256 of the segments, neither by kexec-tools at
    /// load time nor by its purgatory at the jump. The digest guards a
    /// crash kernel loaded at boot and entered much later from a crashed
    /// kernel whose devices may still write into memory by DMA. Here the
    /// segments sit in the reserved crashkernel region, the jump follows
    /// the load within seconds and only after every device is suspended,
    /// and a digest that failed would leave the machine spinning in
    /// purgatory with nothing on the console. Each jump saves two passes
    /// over kernel and initramfs (about 19 MB): 25 s of the 27 s from
    /// `kjump hibernate` to the capture kernel's first line under QEMU's
    /// TCG (KERNELS.md), a fraction of a second on hardware.
    pub fn args(&self, initrd: &str) -> Vec<String> {
        vec![
            self.flag.to_string(),
            format!("--mem-min={:#x}", self.region.start().0),
            format!("--mem-max={:#x}", self.region.end().0 - 1),
            "--kexec-syscall".to_string(),
            "--no-checks".to_string(),
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
        extra: &[ExtraFile],
        secret: Option<&[u8]>,
    ) -> Result<(), LoadError> {
        let exe = std::env::current_exe().map_err(LoadError::Exe)?;
        let mut generated = vec![(
            kjump_handoff::manifest::PATH,
            0o644,
            manifest.encode().into_bytes(),
        )];
        let _secret_pages = secret.and_then(keep_in_ram);
        if let Some(s) = secret {
            // Moved into the archive, which wipes it.
            generated.push((SECRET_PATH, 0o600, s.to_vec()));
        }
        let initrd = kjump_initramfs::build_with(&exe, extra, generated)?;
        let initrd_pages = secret.and_then(|_| keep_in_ram(&initrd));
        let file =
            MemFile::with_contents(c"kjump-initramfs", &initrd).map_err(LoadError::MemFile)?;
        // The child inherits the descriptor and reads it through
        // /proc/self/fd.
        let out = Command::new(self.kexec)
            .args(self.args(&file.child_path()))
            .output();
        file.wipe();
        // Wiped before its pages are unlocked.
        drop(initrd);
        drop(initrd_pages);
        let out = out.map_err(|source| LoadError::Spawn {
            kexec: self.kexec.to_path_buf(),
            source,
        })?;
        if !out.status.success() {
            return Err(LoadError::Failed {
                kexec: self.kexec.to_path_buf(),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
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

/// Locks the pages of a buffer holding a secret in RAM and out of core
/// dumps until the guard is dropped; where the kernel refuses (no
/// CAP_IPC_LOCK, RLIMIT_MEMLOCK), says so and goes on: the buffer is still
/// wiped, only a copy may reach swap.
fn keep_in_ram(buf: &[u8]) -> Option<kjump_sys::secmem::Locked> {
    kjump_sys::secmem::lock(buf)
        .inspect_err(|e| println!("note: {}; going on", error_chain(e)))
        .ok()
        .flatten()
}

/// The next kernel: a capture or restore kernel confined to a jump plan's
/// region, which can jump back here (its context is preserved) and says
/// why through a mailbox when it does so without doing its work.
pub struct NextKernel<'a> {
    role: Role,
    plan: &'a JumpPlan,
    load: KexecLoad<'a>,
    mailbox: Option<Mailbox>,
}

impl<'a> NextKernel<'a> {
    /// Prepares the load of `kernel` with kexec-tools' `kexec` under
    /// `plan`: its command line keeps the running kernel's console words
    /// (from `cmdline`) and ends with the user's `append` words, and a
    /// mailbox is set up for its report. Without a mailbox the next kernel
    /// can still fail safely; only its reason then stays on its console.
    pub fn new(
        role: Role,
        kexec: &'a Path,
        kernel: &'a Path,
        plan: &'a JumpPlan,
        cmdline: &str,
        append: &[String],
    ) -> NextKernel<'a> {
        let mailbox = match Mailbox::open(&plan.saved) {
            Ok(m) => Some(m),
            Err(e) => {
                println!(
                    "no mailbox for the {}'s report ({}): if it {}, its console says why",
                    role.name(),
                    error_chain(&e),
                    role.gives_up()
                );
                None
            }
        };
        let load = KexecLoad {
            kexec,
            flag: "--load-preserve-context",
            region: plan.region,
            kernel,
            cmdline: kjump_handoff::plan::capture_cmdline(plan, cmdline, append),
        };
        NextKernel {
            role,
            plan,
            load,
            mailbox,
        }
    }

    /// A manifest that has it do `mode` with the image on `target`: its
    /// memory as the plan says, its mailbox, the time now. The rest is for
    /// the caller to fill in.
    pub fn manifest(&self, mode: Mode, target: PathBuf, target_offset: Option<u64>) -> Manifest {
        Manifest {
            mode,
            target,
            target_offset,
            placement: None,
            ram: self.plan.saved.clone(),
            region: self.plan.region,
            kernel_release: String::new(),
            started_ns: kjump_sys::clock::now_ns(),
            filesystems: Vec::new(),
            encrypt: None,
            key_source: KeySource::Initramfs,
            tty: None,
            prompt_timeout: None,
            image_uuid: None,
            swap_was_active: false,
            mailbox: self.mailbox.as_ref().map(Mailbox::address),
        }
    }

    /// Which kernel it is.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The kexec command, for dry runs and logs.
    pub fn shown(&self) -> String {
        self.load.shown()
    }

    /// Loads it, its initramfs carrying `manifest`, the `extra` files and
    /// the secret of an encrypted image, which is wiped once loaded.
    pub fn load(
        &self,
        manifest: &Manifest,
        extra: &[ExtraFile],
        secret: Option<Secret>,
    ) -> Result<(), LoadError> {
        let bytes = secret.as_ref().map(|s| match s {
            Secret::KeyFile(b) | Secret::Passphrase(b) => b.as_slice(),
        });
        self.load.run(manifest, extra, bytes)
    }

    /// Unloads it again, when what was to follow the load failed.
    pub fn unload(&self) {
        self.load.unload();
    }

    /// Jumps into it. Returns when something jumps back here, with the
    /// report it left in the mailbox, if any; it is unloaded then, as
    /// nothing here needs it any more (its segments hold tens of MiB, and
    /// an encrypted image's secret).
    pub fn jump(&mut self) -> Result<Option<Report>, KexecError> {
        let jumped = kexec::jump();
        self.load.unload();
        jumped?;
        Ok(self.mailbox.as_mut().and_then(Mailbox::take))
    }
}

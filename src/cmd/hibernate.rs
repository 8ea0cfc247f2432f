//! `kjump hibernate`.

use std::path::PathBuf;

use clap::Args;
use kjump_initramfs::hibernate::{hibernate, HibernateOptions};
use kjump_initramfs::manifest::Mode;
use kjump_initramfs::resume::{self, Outcome, ResumeError, ResumeOptions};
use kjump_initramfs::ExtraFile;

use crate::Failure;

#[derive(Args)]
pub struct HibernateArgs {
    /// Where the image goes: a block device (not mounted), a swap partition (not in use; the image goes after its header), or a file on ext2/3/4 or XFS (allocated, and written on the raw device beneath)
    #[arg(long)]
    target: PathBuf,
    /// Capture kernel, built with CONFIG_KEXEC_JUMP (default: /boot/vmlinuz-$(uname -r))
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// What the capture kernel does once the image is committed: poweroff, reboot, checkpoint (jump straight back), or suspend (to RAM; on wake it jumps back and the image is marked consumed; if the power fails, the next boot resumes from it)
    #[arg(long, default_value = "poweroff", value_parser = parse_mode)]
    then: Mode,
    /// kexec-tools' kexec binary
    #[arg(long, default_value = "kexec")]
    kexec: PathBuf,
    /// Extra file for the capture initramfs as HOST_PATH:PATH (e.g. /bin/busybox:bin/sh for a rescue shell)
    #[arg(long = "file", value_parser = super::initramfs::parse_extra)]
    files: Vec<ExtraFile>,
    /// Print the plan, the manifest and the kexec command, and change nothing
    #[arg(long)]
    dry_run: bool,
    /// Drop the page cache and zero free RAM first: a smaller image and a faster capture; cached files are read from disk again after the resume
    #[arg(long)]
    free_memory: bool,
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    match Mode::parse(s) {
        Some(Mode::Restore) | None => Err(format!(
            "{s:?} is not poweroff, reboot, checkpoint or suspend"
        )),
        Some(m) => Ok(m),
    }
}

/// The kernel to load: as given, or the running kernel's image in /boot.
fn kernel_or_running(kernel: Option<PathBuf>) -> Result<PathBuf, Failure> {
    match kernel {
        Some(k) => Ok(k),
        None => {
            let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").map_err(|e| {
                Failure::error(anyhow::anyhow!("reading /proc/sys/kernel/osrelease: {e}"))
            })?;
            Ok(PathBuf::from(format!("/boot/vmlinuz-{}", release.trim())))
        }
    }
}

pub fn resume_boot(
    device: PathBuf,
    offset: Option<u64>,
    kernel: Option<PathBuf>,
    kexec: PathBuf,
    dry_run: bool,
    force_stale: bool,
) -> Result<(), Failure> {
    let opts = ResumeOptions {
        device,
        offset,
        kernel: kernel_or_running(kernel)?,
        kexec,
        dry_run,
        force_stale,
    };
    match resume::resume(&opts) {
        Ok(Outcome::Nothing(why)) => {
            println!("nothing to resume: {why}; continuing the normal boot");
            Ok(())
        }
        Ok(Outcome::DryRun) => {
            println!("dry run: nothing was changed");
            Ok(())
        }
        Err(e @ ResumeError::Refused { .. }) => Err(Failure::invalid(
            anyhow::Error::new(e).context("continuing the normal boot"),
        )),
        Err(e) => Err(Failure::error(e)),
    }
}

pub fn run(args: HibernateArgs) -> Result<(), Failure> {
    let kernel = kernel_or_running(args.kernel)?;
    let opts = HibernateOptions {
        target: args.target,
        kernel,
        mode: args.then,
        kexec: args.kexec,
        extra: args.files,
        dry_run: args.dry_run,
        free_memory: args.free_memory,
    };
    match hibernate(&opts).map_err(Failure::error)? {
        None => println!("dry run: nothing was changed"),
        Some(back) => {
            let away = back.away.as_secs_f64();
            for note in &back.notes {
                println!("{note}");
            }
            match back.image {
                Ok(state) => println!("resumed: this kernel was away for {away:.1} s; its image is {state}"),
                Err(why) => {
                    return Err(Failure::invalid(anyhow::anyhow!(
                        "the capture kernel did not save this machine ({why}); it jumped back after {away:.1} s: see its messages on the console"
                    )))
                }
            }
        }
    }
    Ok(())
}

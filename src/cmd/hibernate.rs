//! `kjump hibernate`.

use std::path::PathBuf;

use clap::Args;
use kjump_initramfs::hibernate::{hibernate, HibernateOptions};
use kjump_initramfs::manifest::Mode;
use kjump_initramfs::ExtraFile;

use crate::Failure;

#[derive(Args)]
pub struct HibernateArgs {
    /// Block device (not mounted) or file to write the image to
    #[arg(long)]
    target: PathBuf,
    /// Capture kernel, built with CONFIG_KEXEC_JUMP (default: /boot/vmlinuz-$(uname -r))
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// What the capture kernel does once the image is committed
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
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    Mode::parse(s).ok_or_else(|| format!("{s:?} is not poweroff, reboot or checkpoint"))
}

pub fn run(args: HibernateArgs) -> Result<(), Failure> {
    let kernel = match args.kernel {
        Some(k) => k,
        None => {
            let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").map_err(|e| {
                Failure::error(anyhow::anyhow!("reading /proc/sys/kernel/osrelease: {e}"))
            })?;
            PathBuf::from(format!("/boot/vmlinuz-{}", release.trim()))
        }
    };
    let opts = HibernateOptions {
        target: args.target,
        kernel,
        mode: args.then,
        kexec: args.kexec,
        extra: args.files,
        dry_run: args.dry_run,
    };
    match hibernate(&opts).map_err(Failure::error)? {
        None => println!("dry run: nothing was changed"),
        Some(away) => println!(
            "resumed: this kernel was away for {:.1} s",
            away.as_secs_f64()
        ),
    }
    Ok(())
}

//! `kjump hibernate`.

use std::path::PathBuf;

use clap::Args;
use kjump_handoff::error_chain;
use kjump_handoff::mailbox::ReportKind;
use kjump_handoff::manifest::Mode;
use kjump_image_format::Secret;
use kjump_initramfs::ExtraFile;
use kjump_jump::hibernate::{hibernate, HibernateOptions};
use kjump_jump::resume::{self, Outcome, ResumeError, ResumeOptions};

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
    /// Write the image over a target that holds something kjump did not write (a filesystem, a partition table, any data that is not a kjump image); without it such a target is refused
    #[arg(long)]
    force: bool,
    /// Seconds the capture kernel offers its rescue shell (when --file gave it one) after a failed capture before it goes on [default: 120]
    #[arg(long, value_name = "SECS")]
    prompt_timeout: Option<u64>,
    /// Encrypt the image (AES-256-GCM): with --key-file or --passphrase-file, else a passphrase asked twice on the terminal. The secret reaches the capture kernel in RAM only
    #[arg(long)]
    encrypt: bool,
    #[command(flatten)]
    key: super::KeyArgs,
    /// More words for the capture kernel's command line, after kjump's own (e.g. "console=tty0 nomodeset"); repeatable
    #[arg(long, value_name = "WORDS", allow_hyphen_values = true)]
    append: Vec<String>,
}

/// `--append` values, each possibly several words, as single words.
fn words(values: &[String]) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| v.split_ascii_whitespace())
        .map(String::from)
        .collect()
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

#[derive(Args)]
pub struct ResumeArgs {
    /// Device (or file) that may hold an image
    #[arg(long)]
    device: PathBuf,
    /// The device offset (hex) of a file target's extent map, as `kjump prepare` prints it
    #[arg(long, value_parser = super::parse_hex)]
    offset: Option<u64>,
    /// Restore kernel, built with CONFIG_KEXEC_JUMP (default: /boot/vmlinuz-$(uname -r))
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// kexec-tools' kexec binary
    #[arg(long, default_value = "kexec")]
    kexec: PathBuf,
    /// Check the image and print the kexec command, and change nothing
    #[arg(long)]
    dry_run: bool,
    /// Resume even when a filesystem the saved kernel had mounted was written since (risks corrupting it)
    #[arg(long)]
    force_stale_filesystems: bool,
    /// Key of an encrypted image: a key file (handed to the restore kernel in RAM), or a device holding it (with --key-size; the restore kernel reads it). Without it the restore kernel asks for the passphrase
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// Bytes of --key-file that are the key (default: the whole file)
    #[arg(long, value_name = "BYTES", requires = "key_file")]
    key_size: Option<usize>,
    /// Terminal the restore kernel asks the passphrase on, as it names it (default: /dev/console)
    #[arg(long)]
    tty: Option<PathBuf>,
    /// Seconds the restore kernel waits for the passphrase before it hands back to the normal boot [default: 120]
    #[arg(long, value_name = "SECS")]
    prompt_timeout: Option<u64>,
    /// More words for the restore kernel's command line, after kjump's own; repeatable
    #[arg(long, value_name = "WORDS", allow_hyphen_values = true)]
    append: Vec<String>,
    /// Restores of one image that may begin without one finishing (the machine stopped while memory was written back) before the image is refused
    #[arg(long, value_name = "N", default_value_t = resume::DEFAULT_MAX_ATTEMPTS, value_parser = clap::value_parser!(u32).range(1..))]
    max_attempts: u32,
    /// Refuse an image that is not encrypted, so that a plain image put in place of this machine's encrypted one is never resumed
    #[arg(long)]
    require_encryption: bool,
}

pub fn resume_boot(args: ResumeArgs) -> Result<(), Failure> {
    let opts = ResumeOptions {
        device: args.device,
        offset: args.offset,
        kernel: kernel_or_running(args.kernel)?,
        kexec: args.kexec,
        dry_run: args.dry_run,
        force_stale: args.force_stale_filesystems,
        key_file: args.key_file,
        key_size: args.key_size,
        tty: args.tty,
        append: words(&args.append),
        prompt_timeout: args.prompt_timeout,
        max_attempts: args.max_attempts,
        require_encryption: args.require_encryption,
    };
    match resume::resume(&opts) {
        Ok(Outcome::Nothing(why)) => {
            println!(
                "nothing to resume: {}; continuing the normal boot",
                error_chain(&why)
            );
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

/// The secret to encrypt with: from the files named, or asked twice.
fn encryption_secret(args: &HibernateArgs) -> Result<Option<Secret>, Failure> {
    let named = args.key.new_secret()?;
    if named.is_some() && !args.encrypt {
        return Err(Failure::error(anyhow::anyhow!(
            "--key-file, --passphrase-file and --passphrase need --encrypt"
        )));
    }
    if !args.encrypt || named.is_some() {
        return Ok(named);
    }
    super::ask_passphrase(true).map(Some)
}

pub fn run(args: HibernateArgs) -> Result<(), Failure> {
    let encrypt = encryption_secret(&args)?;
    let kernel = kernel_or_running(args.kernel)?;
    let mut opts = HibernateOptions {
        target: args.target,
        kernel,
        mode: args.then,
        kexec: args.kexec,
        extra: args.files,
        dry_run: args.dry_run,
        free_memory: args.free_memory,
        encrypt,
        append: words(&args.append),
        force: args.force,
        prompt_timeout: args.prompt_timeout,
    };
    match hibernate(&mut opts).map_err(Failure::error)? {
        None => println!("dry run: nothing was changed"),
        Some(back) => {
            let away = back.away.as_secs_f64();
            for note in &back.notes {
                println!("{note}");
            }
            if let Some(report) = &back.report {
                if report.kind == ReportKind::Escaped {
                    return Err(Failure::invalid(anyhow::anyhow!(
                        "the capture kernel ran outside its region; this machine's memory may be damaged: save your work and reboot (it jumped back after {away:.1} s and said: {})",
                        report.message
                    )));
                }
            }
            match (back.image, back.report) {
                (Ok(state), _) => println!("resumed: this kernel was away for {away:.1} s; its image is {state}"),
                (Err(why), Some(report)) => {
                    return Err(Failure::invalid(anyhow::anyhow!(
                        "the capture kernel did not save this machine: {} ({}); it jumped back after {away:.1} s",
                        report.message,
                        error_chain(&why)
                    )))
                }
                (Err(why), None) => {
                    return Err(Failure::invalid(anyhow::anyhow!(
                        "the capture kernel did not save this machine ({}); it jumped back after {away:.1} s: see its messages on the console",
                        error_chain(&why)
                    )))
                }
            }
        }
    }
    Ok(())
}

/// `kjump selftest`: the running kernel's half of every kjump jump, tried
/// on its own (Linux's tools/testing/selftests/kexec/test_kexec_jump).
pub fn selftest(jumps: u32) -> Result<(), Failure> {
    use kjump_sys::kexec;
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_owned())
        .unwrap_or_else(|_| "an unknown release".into());
    println!(
        "kexec-jump selftest on Linux {release}: {jumps} jumps into a {}-byte payload at {:#x} that jumps straight back",
        kexec::SELFTEST_PAYLOAD.len(),
        kexec::SELFTEST_ADDRESS
    );
    let times = kexec::selftest(jumps).map_err(Failure::error)?;
    for (i, t) in times.iter().enumerate() {
        println!("jump {}: back after {:.3} s", i + 1, t.as_secs_f64());
    }
    println!("kexec jump works on this kernel: {jumps} jumps out and back");
    Ok(())
}

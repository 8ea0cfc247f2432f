//! `kjump`: Linux hibernation through kexec jump.
//!
//! This binary parses the command line, sets up logging and maps failures to
//! documented exit codes; the work lives in the library crates, and every
//! system call with unsafe code in `kjump-sys`.

#![forbid(unsafe_code)]

mod cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// Exit code of a command that found an image invalid, corrupt or incomplete.
pub const EXIT_INVALID: u8 = 1;
/// Exit code of a usage error or an I/O failure.
pub const EXIT_ERROR: u8 = 2;

#[derive(Parser)]
#[command(
    name = "kjump",
    version,
    about = "Linux hibernation through kexec jump"
)]
#[command(
    after_help = "Exit codes: 0 success, 1 invalid, corrupt or incomplete image, 2 usage or I/O error (a missing or wrong key included), 3 (check) this machine cannot hibernate with kjump.\nLogging: RUST_LOG=debug|info|warn (default info)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Capture physical memory (an ELF core, or /dev/mem with ranges) into an image
    Capture(cmd::capture::CaptureArgs),
    /// Describe an image
    Info {
        #[command(flatten)]
        at: cmd::ImageAt,
        #[command(flatten)]
        key: cmd::KeyArgs,
        /// Print JSON for scripts
        #[arg(long)]
        json: bool,
    },
    /// Check every checksum of an image; exit 0 only when it is whole
    Verify {
        #[command(flatten)]
        at: cmd::ImageAt,
        #[command(flatten)]
        key: cmd::KeyArgs,
        /// Worker threads (default: all CPUs)
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Write the saved memory out as an ELF64 core (for crash, drgn, gdb) or a kdump-compressed file (for crash, drgn)
    Export {
        #[command(flatten)]
        at: cmd::ImageAt,
        #[command(flatten)]
        key: cmd::KeyArgs,
        /// The file to write
        #[arg(long, short)]
        output: PathBuf,
        /// elf: an ELF64 core; kdump: makedumpfile's kdump-compressed format (frames a filtered capture left out are marked excluded)
        #[arg(long, value_enum, default_value = "elf")]
        format: ExportFormat,
        /// With --format kdump: how pages are compressed
        #[arg(long, value_enum, default_value = "snappy")]
        compress: cmd::kdump::KdumpCodec,
        /// Worker threads (default: all CPUs)
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Save a crashed kernel's memory as kdump's collector: called as makedumpfile is, `kjump collect [-d LEVEL] [-l|-c|-p|-z] /proc/vmcore DEST`; exit 0 only when the image is committed
    Collect(cmd::kdump::CollectArgs),
    /// Invalidate an image so that it is never resumed, and give a swap area back to swap
    Discard {
        #[command(flatten)]
        at: cmd::ImageAt,
    },
    /// Allocate a file target on ext2/3/4 or XFS for `hibernate --target FILE` and print where its map lies
    Prepare {
        /// The file to allocate (or check and grow)
        file: PathBuf,
        /// Room for the image: a size like 4G, or the worst case for this machine's RAM when omitted
        #[arg(long, value_parser = cmd::parse_size)]
        size: Option<u64>,
    },
    /// Hibernate this machine: jump into a capture kernel that saves RAM to TARGET
    Hibernate(cmd::hibernate::HibernateArgs),
    /// Early in a normal boot: resume the image on DEVICE if there is a whole one
    Resume(cmd::hibernate::ResumeArgs),
    /// Check that this kernel can be kexec-jumped out of and back into, as hibernation needs: jump into a one-page payload that jumps straight back (root; devices are suspended and resumed as for a hibernation; a kernel that fails crashes or resets the machine)
    Selftest {
        /// Round trips to make
        #[arg(long, default_value_t = 2)]
        jumps: u32,
    },
    /// Say whether this machine can hibernate with kjump and, if not, why (root; exit 0 it can, 3 it cannot)
    Check(cmd::check::CheckArgs),
    /// Write a reproducible initramfs (newc cpio) with kjump as /init
    Mkinitramfs {
        /// The cpio archive to write
        #[arg(long, short)]
        output: PathBuf,
        /// Program to install as /init (default: this kjump binary)
        #[arg(long)]
        init: Option<PathBuf>,
        /// Extra file as HOST_PATH:PATH_IN_INITRAMFS (repeatable), e.g. /bin/busybox:bin/busybox
        #[arg(long = "file", value_parser = cmd::initramfs::parse_extra)]
        files: Vec<kjump_initramfs::ExtraFile>,
    },
    /// What systemd-hibernate.service and systemd-hybrid-sleep.service run with kjump's drop-ins, in place of systemd-sleep: the sleep hooks, then hibernation with kjump (hybrid-sleep: --then suspend); systemd's own systemd-sleep when kjump.conf names no target
    SystemdSleep(cmd::systemd_sleep::SleepArgs),
    /// Write the man pages and shell completions (for packaging)
    #[command(hide = true)]
    Generate(cmd::generate::GenerateArgs),
}

/// What `kjump export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// An ELF64 core
    Elf,
    /// The kdump-compressed format
    Kdump,
}

/// A failed command: what to print and which exit code to use.
pub struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl Failure {
    /// An image that is not whole.
    pub fn invalid(error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code: EXIT_INVALID,
            error: error.into(),
        }
    }

    /// A usage or I/O error.
    pub fn error(error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code: EXIT_ERROR,
            error: error.into(),
        }
    }
}

fn main() -> ExitCode {
    let logger = |style| {
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
            .format_timestamp_millis()
            .write_style(style)
            .init()
    };
    // The capture and restore kernels run kjump as /init, in an initramfs
    // that carries its manifest. PID 1 elsewhere (a container's entrypoint)
    // is an ordinary command line.
    let manifest = std::path::Path::new("/").join(kjump_handoff::manifest::PATH);
    if std::process::id() == 1 && manifest.is_file() {
        // The capture's and the restore's progress and warnings go to the
        // console, as everything else /init says: plain text, which any
        // console (a serial line, a log) shows as it is.
        logger(env_logger::WriteStyle::Never);
        kjump_init::main();
    }
    // Die quietly of SIGPIPE, as command-line tools do, when the reader of
    // the output goes away (`kjump info DEV | head`), rather than fail a
    // write and panic.
    kjump_sys::signal::die_on_sigpipe();
    logger(env_logger::WriteStyle::Auto);
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            // One write, so a console's kernel messages cannot split the line.
            use std::io::Write as _;
            let line = format!("kjump: {:#}\n", f.error);
            let _ = std::io::stderr().write_all(line.as_bytes());
            ExitCode::from(f.code)
        }
    }
}

/// Runs one command line's command.
fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Capture(args) => cmd::capture::run(args),
        Command::Info { at, key, json } => cmd::inspect::info(&at, &key, json),
        Command::Verify { at, key, threads } => cmd::inspect::verify(&at, &key, threads),
        Command::Export {
            at,
            key,
            output,
            format,
            compress,
            threads,
        } => cmd::inspect::export(&at, &key, &output, (format, compress), threads),
        Command::Collect(args) => cmd::kdump::collect(args),
        Command::Discard { at } => cmd::discard::discard(&at),
        Command::Prepare { file, size } => cmd::discard::prepare(&file, size),
        Command::Hibernate(args) => cmd::hibernate::run(args),
        Command::Resume(args) => cmd::hibernate::resume_boot(args),
        Command::Selftest { jumps } => cmd::hibernate::selftest(jumps),
        Command::Mkinitramfs {
            output,
            init,
            files,
        } => cmd::initramfs::mkinitramfs(&output, init.as_deref(), &files),
        Command::Check(args) => cmd::check::run(&args),
        Command::SystemdSleep(args) => cmd::systemd_sleep::run(&args),
        Command::Generate(args) => cmd::generate::run(&args, Cli::command()),
    }
}

//! `kjump capture`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use kjump_image_format::crypto::MAX_KDF_MEMORY_KIB;
use kjump_image_format::{Kdf, MemoryMap, Secret, PAGE_SIZE};
use kjump_sys::{ranges, Place, Target};
use kjump_writer::{
    capture, capture_encrypted, CaptureOptions, CaptureReport, Encryption, MemorySource,
};

use crate::Failure;

#[derive(Args)]
pub struct CaptureArgs {
    /// ELF core (/proc/vmcore, QEMU dump-guest-memory), or /dev/mem (or a file standing in for it) with --ranges/--memmap
    #[arg(long)]
    source: PathBuf,
    /// Image to write: a regular file, a block device (not mounted), a swap partition (not in use: the image goes after its header), or a file target made by `kjump prepare`
    #[arg(long)]
    target: PathBuf,
    /// With a block device as --target: the device offset (hex) of a file target's extent map
    #[arg(long, value_parser = super::parse_hex)]
    offset: Option<u64>,
    /// Physical ranges to read, hex with inclusive ends: 0x1000-0x9ffff,0x100000-0x3ffdffff
    #[arg(long)]
    ranges: Option<String>,
    /// A file in /proc/iomem's format whose "System RAM" lines give the ranges
    #[arg(long)]
    memmap: Option<PathBuf>,
    /// Compression threads (default: all CPUs)
    #[arg(long)]
    threads: Option<usize>,
    /// Input read per window, in MiB: bounds memory use
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    window_mib: u64,
    /// Release of the saved kernel (when the source does not carry VMCOREINFO)
    #[arg(long)]
    kernel_release: Option<String>,
    /// Physical address at which the saved kernel re-enters (kexec_jump_back_entry)
    #[arg(long, value_parser = parse_addr)]
    jump_back_entry: Option<u64>,
    /// Free-form KEY=VALUE recorded in the image (repeatable)
    #[arg(long = "meta", value_parser = parse_kv)]
    meta: Vec<(String, String)>,
    /// Skip the up-front check that the worst-case image fits the target
    #[arg(long)]
    assume_fits: bool,
    /// Write over a target that holds something kjump did not write (a filesystem, a partition table, any data that is not a kjump image); without it such a target is refused
    #[arg(long)]
    force: bool,
    /// Encrypt and authenticate the image with this key or passphrase
    #[command(flatten)]
    key: super::KeyArgs,
    /// With --passphrase-file: Argon2id memory cost in MiB, 8 to 128 (the restore kernel must have it)
    #[arg(long, default_value_t = 64, value_parser = parse_kdf_memory_mib)]
    kdf_memory_mib: u32,
    /// With --passphrase-file: Argon2id passes
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=64))]
    kdf_iterations: u32,
}

fn parse_addr(s: &str) -> Result<u64, String> {
    let digits = s.strip_prefix("0x").unwrap_or(s);
    u64::from_str_radix(digits, 16).map_err(|e| format!("{s:?} is not a hex address: {e}"))
}

/// An Argon2id memory cost in MiB that every reader accepts: at least 8,
/// at most [`MAX_KDF_MEMORY_KIB`], which a restore kernel in a 256 MiB
/// crashkernel region can always pay.
fn parse_kdf_memory_mib(s: &str) -> Result<u32, String> {
    let max = MAX_KDF_MEMORY_KIB / 1024;
    let mib: u32 = s
        .parse()
        .map_err(|e| format!("{s:?} is not a number of MiB: {e}"))?;
    if mib < 8 {
        return Err(format!(
            "{mib} MiB is below Argon2id's useful minimum of 8 MiB"
        ));
    }
    if mib > max {
        return Err(format!(
            "{mib} MiB is more than the {max} MiB a restore kernel in a 256 MiB crashkernel region can always spare; readers refuse such images (FORMAT.md, crypto area)"
        ));
    }
    Ok(mib)
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))?;
    if k.is_empty() || k.len() > usize::from(u16::MAX) {
        return Err(format!("bad key in {s:?}"));
    }
    Ok((k.to_string(), v.to_string()))
}

fn given_ranges(args: &CaptureArgs) -> Result<Option<MemoryMap>, Failure> {
    let mut all = Vec::new();
    if let Some(list) = &args.ranges {
        all.extend(ranges::parse_range_list(list).map_err(Failure::error)?);
    }
    if let Some(path) = &args.memmap {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading memory map {}", path.display()))
            .map_err(Failure::error)?;
        let shown = path.display().to_string();
        all.extend(ranges::parse_iomem(&shown, &text).map_err(Failure::error)?);
    }
    Ok((!all.is_empty()).then(|| ranges::memory_map(all)))
}

pub fn run(args: CaptureArgs) -> Result<(), Failure> {
    let map = given_ranges(&args)?;
    let source = MemorySource::open(&args.source, map).map_err(Failure::error)?;
    let mut metadata = source.metadata();
    if let Some(r) = &args.kernel_release {
        metadata.kernel_release = Some(r.clone());
    }
    metadata.jump_back_entry = args.jump_back_entry.or(metadata.jump_back_entry);
    metadata.extra.extend(args.meta.iter().cloned());
    let place = Place::locate(&args.target, args.offset).map_err(Failure::error)?;
    if super::same_file(&args.source, &args.target) || super::same_file(&args.source, &place.holder)
    {
        return Err(Failure::error(anyhow::anyhow!(
            "--source {} and --target {} are the same file: the capture would overwrite the memory it reads",
            args.source.display(),
            args.target.display()
        )));
    }
    // Opened first: it refuses a link in the target's place by name.
    let target = Target::open_place(&place).map_err(Failure::error)?;
    if !args.force {
        kjump_sys::place::refuse_foreign(&place).map_err(Failure::error)?;
    }
    let mut opts = CaptureOptions::new();
    opts.threads = super::threads(args.threads);
    opts.window_pages = (args.window_mib as usize) << 20 >> 12;
    opts.check_worst_case = !args.assume_fits;
    opts.progress_line = super::progress_line();
    log::info!(
        "capturing {} ({} in {} ranges) to {} with {} threads",
        args.source.display(),
        super::human(metadata.ranges.total_bytes()),
        metadata.ranges.ranges().len(),
        place.describe(),
        opts.threads
    );
    let secret = args.key.new_secret()?;
    let report = match &secret {
        None => capture(&source, &target, &metadata, &opts),
        Some(secret) => {
            let kdf = kdf_for(secret, &args);
            log::info!("encrypting with AES-256-GCM, key from a {}", kdf.describe());
            capture_encrypted(
                &source,
                &target,
                &metadata,
                &opts,
                &Encryption { secret, kdf },
            )
        }
    }
    .map_err(Failure::error)?;
    print_report(&place, secret.is_some(), &report);
    Ok(())
}

/// The key derivation for `secret`: a key file's, or Argon2id at the cost
/// the arguments ask for a passphrase.
fn kdf_for(secret: &Secret, args: &CaptureArgs) -> Kdf {
    match secret {
        Secret::KeyFile(_) => Kdf::KeyFile,
        Secret::Passphrase(_) => Kdf::Argon2id {
            memory_kib: args.kdf_memory_mib * 1024,
            iterations: args.kdf_iterations,
            lanes: 1,
        },
    }
}

fn print_report(place: &Place, encrypted: bool, report: &CaptureReport) {
    let l = &report.layout;
    let secs = report.elapsed.as_secs_f64();
    println!(
        "committed {}{}: {} of memory, {} pages ({} zero, {:.1}%), image {} (ratio {:.2}), {:.2} s, {:.2} GB/s",
        place.describe(),
        if encrypted { " (encrypted)" } else { "" },
        super::human(report.input_bytes),
        l.total_pages,
        l.zero_pages,
        l.zero_pages as f64 * 100.0 / l.total_pages.max(1) as f64,
        super::human(l.image_len),
        report.input_bytes as f64 / l.image_len.max(1) as f64,
        secs,
        report.input_bytes as f64 / secs.max(1e-9) / 1e9,
    );
    debug_assert_eq!(report.input_bytes, l.total_pages * PAGE_SIZE as u64);
}

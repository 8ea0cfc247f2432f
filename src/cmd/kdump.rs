//! kjump as the kdump dump collector: `kjump collect`, called as
//! makedumpfile is (options, the source, the destination), and `kjump
//! export --format kdump`. The logic lives in the kjump-kdump crate; this
//! is the glue to the capture and the image reader.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use kjump_image_format::{ExcludedPages, Image, PAGE_SIZE};
use kjump_kdump::core::Core;
use kjump_kdump::diskdump::{DiskdumpWriter, DumpInfo, PageCodec, Utsname};
use kjump_kdump::{filter, DumpLevel, VmcoreInfo};
use kjump_sys::{Place, PlaceReader};
use kjump_writer::{capture, CaptureOptions, CaptureReport, MemorySource, Target};

use crate::Failure;

/// Most excluded runs an image records (16 bytes each: 32 MiB of the
/// 64 MiB metadata a reader accepts). Past it the shortest runs are kept in
/// the image instead: leaving out less is always allowed.
const MAX_EXCLUDED_RUNS: usize = 2 << 20;

/// `kjump collect`: makedumpfile's calling convention, for kdump-tools and
/// Fedora's kdump service.
#[derive(Args)]
pub struct CollectArgs {
    /// Dump level as makedumpfile's: the sum of 1 zero pages, 2 cache
    /// pages without private data, 4 all cache pages, 8 user pages, 16 free
    /// pages (kjump always leaves zero pages out of the image)
    #[arg(short = 'd', long = "dump-level", default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=31))]
    dump_level: u8,
    /// makedumpfile's zlib, lzo, snappy and zstd switches: kjump's image is
    /// always lz4-compressed, so these are accepted and change nothing
    #[arg(short = 'c', hide = true)]
    zlib: bool,
    #[arg(short = 'l', hide = true)]
    lzo: bool,
    #[arg(short = 'p', hide = true)]
    snappy: bool,
    #[arg(short = 'z', hide = true)]
    zstd: bool,
    /// makedumpfile's message level: accepted, kjump logs through RUST_LOG
    #[arg(long = "message-level", hide = true)]
    message_level: Option<u32>,
    /// Compression threads (default: all CPUs)
    #[arg(long = "num-threads")]
    threads: Option<usize>,
    /// makedumpfile's flattened output to standard output: refused, a kjump
    /// image needs a seekable destination
    #[arg(short = 'F', hide = true)]
    flattened: bool,
    /// Write over a destination that holds something else (makedumpfile's
    /// -f); without it a destination holding data that is not a kjump
    /// image is refused
    #[arg(short = 'f', long = "force")]
    force: bool,
    /// Write the crashed kernel's log (its printk ring buffer, Linux 5.10
    /// and later) to DESTINATION as text instead of saving its memory, as
    /// makedumpfile --dump-dmesg does; SOURCE may also be a kjump image of
    /// a core
    #[arg(long = "dump-dmesg")]
    dump_dmesg: bool,
    /// The crashed kernel's memory: /proc/vmcore in a kdump crash kernel,
    /// or any ELF core
    source: PathBuf,
    /// The image to write: a file (created 0600) or a block device; with
    /// --dump-dmesg, the text file to write
    destination: PathBuf,
}

/// Decides the frames to leave out of `source`; on bad input, says why and
/// falls back to zero pages only.
fn plan_exclusions(
    path: &Path,
    source: &MemorySource,
    metadata: &kjump_image_format::Metadata,
    level: DumpLevel,
) -> (DumpLevel, Option<ExcludedPages>) {
    if !level.needs_struct_pages() {
        return (level, None);
    }
    let plan = match filter_plan(source, metadata, level) {
        Ok(p) => p,
        Err(e) => {
            log::warn!(
                "{}: dump level {level} refused: {e:#}; dumping with zero pages left out only",
                path.display()
            );
            return (level.zero_only(), None);
        }
    };
    let c = &plan.counts;
    log::info!(
        "dump level {level}: leaving out {} frames (free {}, cache {}, cache with private data {}, user {}, hwpoison {}, offline {}); {} frames kept because their struct page was unreadable",
        c.total(),
        c.free,
        c.cache,
        c.cache_private,
        c.user,
        c.hwpoison,
        c.offline,
        c.unreadable
    );
    let level_bits = u32::from(level.bits());
    (
        level,
        Some(ExcludedPages {
            level: level_bits,
            runs: recordable_runs(plan.excluded.runs()),
        }),
    )
}

/// The filter plan for `source` over the frames of its `metadata`.
fn filter_plan(
    source: &MemorySource,
    metadata: &kjump_image_format::Metadata,
    level: DumpLevel,
) -> anyhow::Result<filter::FilterPlan> {
    let ranges: Vec<(u64, u64)> = metadata
        .ranges
        .ranges()
        .iter()
        .map(|r| (r.first_pfn().0, r.end_pfn().0))
        .collect();
    let info = metadata
        .vmcoreinfo
        .as_deref()
        .map(VmcoreInfo::parse)
        .transpose()?;
    Ok(filter::plan(source, info.as_ref(), &ranges, level)?)
}

/// The excluded `runs`, or as many as an image records, the longest: the
/// shortest are kept in the image.
fn recordable_runs(runs: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut kept = runs.to_vec();
    if kept.len() > MAX_EXCLUDED_RUNS {
        kept.sort_unstable_by_key(|r| std::cmp::Reverse(r.1));
        kept.truncate(MAX_EXCLUDED_RUNS);
        kept.sort_unstable();
        log::warn!(
            "{} runs of excluded frames are more than an image records: the shortest are kept in the image",
            runs.len()
        );
    }
    kept
}

pub fn collect(args: CollectArgs) -> Result<(), Failure> {
    if args.dump_dmesg {
        return dump_dmesg(&args.source, &args.destination).map_err(Failure::error);
    }
    if args.flattened {
        return Err(Failure::error(anyhow::anyhow!(
            "-F (flattened output to standard output) is not supported: kjump writes a seekable image; give a file or device as the destination"
        )));
    }
    let level = DumpLevel::new(args.dump_level).expect("bounded by clap");
    let source = MemorySource::open(&args.source, None).map_err(Failure::error)?;
    let mut metadata = source.metadata();
    let (level, excluded) = plan_exclusions(&args.source, &source, &metadata, level);
    metadata.excluded = excluded;
    metadata
        .extra
        .push(("dump-level".to_string(), level.bits().to_string()));
    let place = Place::locate(&args.destination, None).map_err(Failure::error)?;
    if super::same_file(&args.source, &args.destination) {
        return Err(Failure::error(anyhow::anyhow!(
            "the source {} and the destination {} are the same file",
            args.source.display(),
            args.destination.display()
        )));
    }
    // Opened first: it refuses a link in the target's place by name.
    let target = Target::open_place(&place).map_err(Failure::error)?;
    if !args.force {
        kjump_sys::place::refuse_foreign(&place).map_err(Failure::error)?;
    }
    let mut opts = CaptureOptions::new();
    opts.threads = super::threads(args.threads);
    // A dump disk is sized for the filtered, compressed dump, as for
    // makedumpfile: running out of room is found when it happens, and the
    // image is then left uncommitted.
    opts.check_worst_case = false;
    opts.progress_line = super::progress_line();
    let report = capture(&source, &target, &metadata, &opts)
        .with_context(|| {
            format!(
                "collecting {} into {}",
                args.source.display(),
                place.describe()
            )
        })
        .map_err(Failure::error)?;
    let left_out = metadata.excluded.as_ref().map_or(0, ExcludedPages::pages);
    say_committed(&place, level, left_out, &report);
    Ok(())
}

/// The line a committed dump ends with.
fn say_committed(place: &Place, level: DumpLevel, left_out: u64, report: &CaptureReport) {
    let l = &report.layout;
    let secs = report.elapsed.as_secs_f64();
    println!(
        "committed {}: dump level {level}, {} of memory, {} frames ({} left out, {} zero), image {}, {:.2} s, {:.2} GB/s",
        place.describe(),
        super::human(report.input_bytes),
        l.total_pages,
        left_out,
        l.zero_pages - left_out,
        super::human(l.image_len),
        secs,
        report.input_bytes as f64 / secs.max(1e-9) / 1e9,
    );
}

/// `collect --dump-dmesg`: the kernel log of the core or kjump image at
/// `source`, written as text to `output`.
fn dump_dmesg(source: &Path, output: &Path) -> anyhow::Result<()> {
    if super::same_file(source, output) {
        anyhow::bail!(
            "the source {} and the output {} are the same file",
            source.display(),
            output.display()
        );
    }
    let records = read_kernel_log(source)
        .with_context(|| format!("reading the kernel log of {}", source.display()))?;
    let write = || -> std::io::Result<()> {
        let mut out = std::io::BufWriter::new(std::fs::File::create(output)?);
        for r in &records {
            r.write_line(&mut out)?;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()
    };
    write().with_context(|| format!("writing the kernel log to {}", output.display()))?;
    println!(
        "wrote {} records of the kernel log of {} to {}",
        records.len(),
        source.display(),
        output.display()
    );
    Ok(())
}

/// The kernel log records of an ELF core, or of a kjump image of one.
fn read_kernel_log(source: &Path) -> anyhow::Result<Vec<kjump_kdump::dmesg::Record>> {
    let file = std::fs::File::open(source)?;
    let len = file.metadata()?.len();
    let mut magic = [0u8; 4];
    let is_elf = std::os::unix::fs::FileExt::read_exact_at(&file, &mut magic, 0).is_ok()
        && magic == *b"\x7fELF";
    let no_info = || anyhow::anyhow!("no VMCOREINFO: the kernel log cannot be found without it");
    if is_elf {
        let core = Core::open(file, len)?;
        let info = VmcoreInfo::parse(core.vmcoreinfo().ok_or_else(no_info)?)?;
        return Ok(kjump_kdump::dmesg::read_log(&core, &info)?);
    }
    let place = Place::locate(source, None)?;
    let reader = place.reader()?;
    let image = Image::open(&reader).context("neither an ELF core nor a readable kjump image")?;
    let info = VmcoreInfo::parse(image.metadata.vmcoreinfo.as_deref().ok_or_else(no_info)?)?;
    let mem = kjump_kdump::image::ImageMemory::new(&reader, &image);
    Ok(kjump_kdump::dmesg::read_log(&mem, &info)?)
}

/// How `export --format kdump` compresses pages.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum KdumpCodec {
    /// Snappy: the fastest codec the format has
    Snappy,
    /// Zstandard level 1: smaller, slower
    Zstd,
    /// Uncompressed pages
    None,
}

impl From<KdumpCodec> for PageCodec {
    fn from(c: KdumpCodec) -> Self {
        match c {
            KdumpCodec::Snappy => PageCodec::Snappy,
            KdumpCodec::Zstd => PageCodec::Zstd,
            KdumpCodec::None => PageCodec::None,
        }
    }
}

/// NT_PRSTATUS notes: one per CPU of the dumped machine.
fn cpus(notes: &[u8]) -> i32 {
    let n = kjump_writer::elf::notes(notes)
        .filter(|n| n.kind == 1 && n.name.starts_with(b"CORE"))
        .count();
    i32::try_from(n).unwrap_or(i32::MAX).max(1)
}

/// Writes `image` as a kdump-compressed file at `output`; returns its
/// length and the frames it dumps.
pub fn export_kdump(
    file: &PlaceReader,
    image: &Image,
    output: &Path,
    codec: KdumpCodec,
    threads: usize,
) -> anyhow::Result<(u64, u64)> {
    let m = &image.metadata;
    let ranges: Vec<(u64, u64)> = m
        .ranges
        .ranges()
        .iter()
        .map(|r| (r.first_pfn().0, r.end_pfn().0))
        .collect();
    let excluded = kjump_kdump::Exclusions::from_runs(
        m.excluded
            .as_ref()
            .map(|x| x.runs.clone())
            .unwrap_or_default(),
    );
    let vmcoreinfo = m.vmcoreinfo.as_deref().map(VmcoreInfo::parse).transpose()?;
    let mut info = dump_info(image, vmcoreinfo.as_ref());
    let out = kjump_sys::block::create_private(output)
        .with_context(|| format!("creating {}", output.display()))?;
    let writer = DiskdumpWriter::create(
        std::io::BufWriter::new(out),
        &ranges,
        &excluded,
        &info,
        codec.into(),
    )?;
    let dumpable = writer.layout().dumpable;
    let uts_at = vmcoreinfo.as_ref().and_then(utsname_address);
    let uts = std::sync::Mutex::new(None::<Utsname>);
    kjump_restorer::scan_chunks(file, image, threads, false, |i, pages| {
        let spec = &image.specs[i];
        let first = spec.first_pfn.0;
        let skip = excluded.mask(spec.first_pfn, u32::from(spec.page_count));
        let zero = image.index[i].zero_bitmap & !skip;
        if let Some(u) = uts_at.and_then(|at| utsname_in(at, first, pages)) {
            *uts.lock().unwrap_or_else(|p| p.into_inner()) = Some(u);
        }
        writer.write_pages(first, pages, zero, skip)
    })
    .map_err(anyhow::Error::new)?;
    if let Some(u) = uts.into_inner().unwrap_or_else(|p| p.into_inner()) {
        info.utsname = u;
    }
    let (out, len) = writer.finish(&info)?;
    let f = out.into_inner().map_err(|e| e.into_error())?;
    f.set_len(len)?;
    f.sync_all()?;
    Ok((len, dumpable))
}

/// The dump's header facts, from the image's metadata; the utsname is a
/// stand-in until the kernel's own is found in the pages.
fn dump_info(image: &Image, vmcoreinfo: Option<&VmcoreInfo>) -> DumpInfo {
    let m = &image.metadata;
    DumpInfo {
        utsname: Utsname::from_fields(&[
            "Linux",
            "(none)",
            m.kernel_release.as_deref().unwrap_or(""),
            "",
            kjump_image_format::ARCH_NAME,
            "(none)",
        ]),
        time_sec: (image.superblock.capture_time_ns / 1_000_000_000) as i64,
        nr_cpus: cpus(m.elf_notes.as_deref().unwrap_or(&[])),
        phys_base: vmcoreinfo.and_then(|i| i.number("phys_base")).unwrap_or(0) as u64,
        // Zero pages are dumped (they read as zero); the rest of the level
        // is what the capture left out.
        dump_level: m.excluded.as_ref().map_or(0, |x| x.level & !1) as i32,
        notes: m.elf_notes.clone().unwrap_or_default(),
        vmcoreinfo: vmcoreinfo.map(|i| i.raw().to_vec()).unwrap_or_default(),
    }
}

/// Where the kernel's utsname lies (its init_uts_ns), which makedumpfile
/// writes in the dump's header.
fn utsname_address(i: &VmcoreInfo) -> Option<u64> {
    let k = kjump_kdump::vmcoreinfo::KernelLayout::from_info(i).ok()?;
    k.text_to_phys(i.symbol("init_uts_ns")? + i.offset("uts_namespace.name")?)
}

/// The utsname at physical address `at` when the `pages` from frame
/// `first` hold all of it and it names Linux.
fn utsname_in(at: u64, first: u64, pages: &[u8]) -> Option<Utsname> {
    let start = first * PAGE_SIZE as u64;
    if at < start || at + 390 > start + pages.len() as u64 {
        return None;
    }
    let o = (at - start) as usize;
    let b: &[u8; 390] = pages[o..o + 390].try_into().ok()?;
    let u = Utsname::from_bytes(b);
    (u.field(0) == "Linux").then_some(u)
}

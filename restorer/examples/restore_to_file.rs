//! Runs the restore kernel's one pass on the host, for benchmarks: the
//! image's memory is written into a regular file standing in for /dev/mem
//! (file offset = physical address), through exactly the code R runs
//! ([`kjump_restorer::restore::write_memory`]: each chunk read once,
//! checked completely, written, then flushed).
//!
//! The image is opened read-only and never marked: no attempt is counted
//! and it is not consumed, so one image serves any number of runs.
//!
//! Usage: `restore_to_file IMAGE MEMFILE [--threads N] [--direct]`
//!
//! MEMFILE is created, or resized, to the highest saved address; pages it
//! already holds stay (a benchmark can allocate them beforehand, as RAM
//! is, so that the pass does not pay for a tmpfs allocating them). With
//! `--direct` the image is read with `O_DIRECT` (through an aligned bounce
//! buffer) instead of through the page cache as [`kjump_sys::PlaceReader`]
//! reads it, to compare the two on a disk. Prints one line: bytes of RAM
//! restored, seconds of the pass, and image bytes.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kjump_image_format::{Image, MemoryMap, ReadAt};
use kjump_restorer::restore::write_memory;
use kjump_sys::physmem::PhysMem;
use kjump_sys::progress::Progress;
use kjump_sys::{error_chain, Place};

/// What the command line asks for.
struct Args {
    image: PathBuf,
    memfile: PathBuf,
    threads: usize,
    direct: bool,
}

const USAGE: &str = "usage: restore_to_file IMAGE MEMFILE [--threads N] [--direct]";

fn parse_args() -> Result<Args, String> {
    let mut paths = Vec::new();
    let mut threads = std::thread::available_parallelism().map_or(1, usize::from);
    let mut direct = false;
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--threads") => {
                let n = args.next().ok_or("--threads needs a number")?;
                threads = n
                    .to_str()
                    .and_then(|s| s.parse().ok())
                    .filter(|&n: &usize| n > 0)
                    .ok_or_else(|| format!("--threads: {n:?} is not a positive number"))?;
            }
            Some("--direct") => direct = true,
            Some(s) if s.starts_with('-') => return Err(format!("unknown option {s}")),
            _ => paths.push(PathBuf::from(a)),
        }
    }
    let [image, memfile]: [PathBuf; 2] = paths
        .try_into()
        .map_err(|p: Vec<PathBuf>| format!("two paths expected, {} given", p.len()))?;
    Ok(Args {
        image,
        memfile,
        threads,
        direct,
    })
}

/// An image file read with `O_DIRECT`: each read goes to the device in
/// block-aligned pieces through a bounce buffer (the pass's window buffers
/// are not page aligned), then is copied out. Only the pass's reader
/// thread reads once the image is open, so the lock is not contended.
struct DirectFile {
    file: File,
    len: u64,
    bounce: Mutex<Vec<u8>>,
}

/// The alignment `O_DIRECT` asks of offsets, lengths and buffers.
const ALIGN: usize = 4096;

impl DirectFile {
    fn open(path: &Path) -> std::io::Result<DirectFile> {
        let file = File::options()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)?;
        let len = file.metadata()?.len();
        Ok(DirectFile {
            file,
            len,
            bounce: Mutex::new(Vec::new()),
        })
    }
}

impl ReadAt for DirectFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let eof = || std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        let end = offset.checked_add(buf.len() as u64).ok_or_else(eof)?;
        if end > self.len {
            return Err(eof());
        }
        let start = offset - offset % ALIGN as u64;
        let span = (end.next_multiple_of(ALIGN as u64) - start) as usize;
        let mut bounce = self.bounce.lock().unwrap_or_else(|p| p.into_inner());
        if bounce.len() < span + ALIGN {
            bounce.resize(span + ALIGN, 0);
        }
        let skew = bounce.as_ptr().align_offset(ALIGN);
        let aligned = &mut bounce[skew..skew + span];
        // The last block may be short: the file ends there.
        let mut done = 0;
        while done < span {
            match self.file.read_at(&mut aligned[done..], start + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let from = (offset - start) as usize;
        if done < from + buf.len() {
            return Err(eof());
        }
        buf.copy_from_slice(&aligned[from..from + buf.len()]);
        Ok(())
    }

    fn size(&self) -> std::io::Result<u64> {
        Ok(self.len)
    }
}

/// This process's resident anonymous and file-backed memory in KiB, from
/// /proc/self/status: what it holds apart from shared memory, which is
/// where a mapped tmpfs file standing in for /dev/mem is counted (the
/// pages of a /dev/mem mapping count toward no RSS).
fn own_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .filter(|l| l.starts_with("RssAnon:") || l.starts_with("RssFile:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// Samples [`own_rss_kib`] every few milliseconds until `stop`; the peak.
fn sample_own_rss(stop: &AtomicBool) -> u64 {
    let mut peak = 0;
    loop {
        peak = peak.max(own_rss_kib());
        if stop.load(Ordering::Relaxed) {
            return peak;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Opens the image, sizes MEMFILE, runs the pass; returns the line to print.
fn run(args: &Args) -> Result<String, Box<dyn std::error::Error>> {
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let sampler = scope.spawn(|| sample_own_rss(&stop));
        let line = restore(args);
        stop.store(true, Ordering::Relaxed);
        let peak = sampler.join().unwrap_or(0);
        line.map(|l| format!("{l}, peak own RSS {peak} KiB"))
    })
}

/// Opens the image, sizes MEMFILE, runs the pass.
fn restore(args: &Args) -> Result<String, Box<dyn std::error::Error>> {
    let opened = Instant::now();
    let source: Box<dyn ReadAt> = if args.direct {
        Box::new(DirectFile::open(&args.image)?)
    } else {
        Box::new(Place::locate(&args.image, None)?.reader()?)
    };
    let image = Image::open(&*source)?;
    let ranges = &image.metadata.ranges;
    let top = ranges.ranges().iter().map(|r| r.end().0).max().unwrap_or(0);
    let mem = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&args.memfile)?;
    mem.set_len(top)?;
    drop(mem);
    let mem = PhysMem::open(&args.memfile, ranges, &MemoryMap::default())?;
    let open_secs = opened.elapsed().as_secs_f64();
    let started = Instant::now();
    let progress = Progress::new("restore", 0, false);
    write_memory(&*source, &image, &mem, args.threads, progress).map_err(|s| match s.chunk {
        Some(c) => format!("chunk {c}: {}", error_chain(&s.error)),
        None => error_chain(&s.error),
    })?;
    Ok(format!(
        "restored {} bytes of RAM in {:.3} s (open {:.3} s), image {} bytes, {} threads, {} reads",
        ranges.total_bytes(),
        started.elapsed().as_secs_f64(),
        open_secs,
        image.superblock.layout.image_len,
        args.threads,
        if args.direct { "O_DIRECT" } else { "cached" },
    ))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("restore_to_file: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("restore_to_file: {}", error_chain(&*e));
            ExitCode::FAILURE
        }
    }
}

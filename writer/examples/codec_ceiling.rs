//! The capture's encoding alone: every chunk of an ELF core encoded as
//! `kjump capture` encodes it (zero-page test, lz4, both CRCs), from
//! memory, on a pool of threads, with no reading of the source and no
//! writing of the image. It is what a capture could reach on this machine
//! if its input and output cost nothing; `tests/bench/capture-bench.sh`
//! prints it beside the capture's own figure.
//!
//! Usage: codec_ceiling CORE [THREADS] [RUNS]
//!
//! The core's chunks are first copied into memory (as many bytes as the
//! core holds: the bench's 4 GiB dump needs 4 GiB of free RAM). Prints one
//! line per run and the median.

use std::path::PathBuf;
use std::time::Instant;

use kjump_image_format::{chunk_specs, ChunkCodec, ChunkSpec, CHUNK_HEADER_SIZE, PAGE_SIZE};
use kjump_writer::MemorySource;
use rayon::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let usage = "usage: codec_ceiling CORE [THREADS] [RUNS]";
    let core = PathBuf::from(args.next().ok_or(usage)?);
    let number = |arg: Option<std::ffi::OsString>, default: usize| -> Result<usize, String> {
        match arg {
            None => Ok(default),
            Some(a) => a
                .to_str()
                .and_then(|s| s.parse().ok())
                .filter(|n| *n > 0)
                .ok_or(format!("{a:?} is not a positive number; {usage}")),
        }
    };
    let threads = number(args.next(), std::thread::available_parallelism()?.get())?;
    let runs = number(args.next(), 3)?;

    let source = MemorySource::open(&core, None)?;
    let metadata = source.metadata();
    let chunks = chunk_specs(&metadata.ranges)
        .map(|s| {
            let window = source.window(s.range, s.first_pfn, usize::from(s.page_count))?;
            Ok((s, window.pages().to_vec()))
        })
        .collect::<Result<Vec<(ChunkSpec, Vec<u8>)>, kjump_writer::SourceError>>()?;
    let input: u64 = chunks.iter().map(|(_, b)| b.len() as u64).sum();
    debug_assert_eq!(
        input,
        metadata.ranges.total_pages() * PAGE_SIZE as u64,
        "every frame read"
    );

    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    let mut seconds = Vec::with_capacity(runs);
    for run in 1..=runs {
        let started = Instant::now();
        let output: u64 = pool.install(|| {
            chunks
                .par_iter()
                .enumerate()
                .map(|(seq, (spec, pages))| {
                    let c = ChunkCodec::Plain.encode(spec, seq as u32, [0; 16], pages);
                    (c.payload.len() + CHUNK_HEADER_SIZE) as u64
                })
                .sum()
        });
        let s = started.elapsed().as_secs_f64();
        println!(
            "run {run}: {s:.3} s, {:.2} GB/s of input, {output} bytes of chunks",
            input as f64 / s / 1e9
        );
        seconds.push(s);
    }
    seconds.sort_by(f64::total_cmp);
    let median = seconds[seconds.len() / 2];
    println!(
        "encoding alone, {threads} threads, {input} bytes from memory: median {median:.3} s, {:.2} GB/s",
        input as f64 / median / 1e9
    );
    Ok(())
}

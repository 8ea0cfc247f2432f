//! One parallel pass over every chunk of an image: read a window of chunks
//! with one positional read, check and decode its chunks on a thread pool,
//! hand each chunk's pages to a consumer. Verification and export are both
//! such a pass; memory stays bounded by the window whatever the image size.

use kjump_image_format::{FormatError, Image, ImageOffset, ReadAt, PAGE_SIZE};
use kjump_sys::progress::Progress;
use rayon::prelude::*;

/// Encoded bytes read per window.
pub const WINDOW_BYTES: u64 = 16 << 20;

/// A pass that stopped: either the image is bad or the consumer failed.
#[derive(Debug, thiserror::Error)]
pub enum ScanError<E: std::error::Error + 'static> {
    /// The image failed a check.
    #[error(transparent)]
    Image(#[from] FormatError),
    /// The consumer failed.
    #[error(transparent)]
    Consumer(E),
    /// The thread pool could not be started.
    #[error("starting {threads} threads: {reason}")]
    Threads {
        /// Threads asked for.
        threads: usize,
        /// The cause.
        reason: String,
    },
}

/// Groups consecutive chunks into windows of about [`WINDOW_BYTES`].
fn windows(image: &Image) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0u64;
    for (i, e) in image.index.iter().enumerate() {
        if i > start && bytes + e.encoded_len() > WINDOW_BYTES {
            out.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += e.encoded_len();
    }
    if start < image.index.len() {
        out.push(start..image.index.len());
    }
    out
}

/// Checks and decodes every chunk, calling `consume(i, pages)` for each (in
/// no particular order). The first error by chunk order is returned.
pub fn scan_chunks<R, E, F>(
    src: &R,
    image: &Image,
    threads: usize,
    progress_line: bool,
    consume: F,
) -> Result<(), ScanError<E>>
where
    R: ReadAt + ?Sized,
    E: std::error::Error + Send + 'static,
    F: Fn(usize, &[u8]) -> Result<(), E> + Sync,
{
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .map_err(|e| ScanError::Threads {
            threads,
            reason: e.to_string(),
        })?;
    let total: u64 = image.index.iter().map(|e| e.encoded_len()).sum();
    let mut progress = Progress::new("verify", total, progress_line);
    let mut buf = Vec::new();
    for w in windows(image) {
        let first = &image.index[w.start];
        let last = &image.index[w.end - 1];
        let len = (last.offset.0 + last.encoded_len() - first.offset.0) as usize;
        buf.resize(len, 0);
        src.read_exact_at(&mut buf, first.offset.0)
            .map_err(|source| FormatError::Io {
                what: "chunks",
                offset: ImageOffset(first.offset.0),
                source,
            })?;
        let base = first.offset.0;
        let results: Vec<Result<(), ScanError<E>>> = pool.install(|| {
            w.clone()
                .into_par_iter()
                .map_init(
                    || (Vec::new(), Vec::new()),
                    |(out, scratch), i| {
                        let e = &image.index[i];
                        let at = (e.offset.0 - base) as usize;
                        let encoded = &buf[at..at + e.encoded_len() as usize];
                        out.resize(usize::from(e.page_count) * PAGE_SIZE, 0);
                        image.check_chunk(i, encoded, out, scratch)?;
                        consume(i, out).map_err(ScanError::Consumer)
                    },
                )
                .collect()
        });
        if let Some(err) = results.into_iter().find_map(Result::err) {
            return Err(err);
        }
        progress.advance(len as u64);
    }
    progress.finish();
    Ok(())
}

//! `kjump verify`: every checksum of an image, in parallel.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use kjump_image_format::{Image, ReadAt, ZeroPages};
use kjump_sys::progress::Progress;

use crate::scan::{scan_chunks_at, ScanError};

/// Why verification failed: the image is bad, or the threads did not start.
pub type VerifyError = ScanError<Infallible>;

/// What a successful verification covered.
#[derive(Clone, Debug)]
pub struct VerifyReport {
    /// Chunks checked.
    pub chunks: u64,
    /// Pages stored in them.
    pub stored_pages: u64,
    /// Pages recorded as zero.
    pub zero_pages: u64,
    /// Bytes of image read.
    pub image_bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// Checks an opened image's padding and every chunk: headers against the
/// index, payload and content CRCs, decompression, bytes outside ranges.
pub fn verify<R: ReadAt + ?Sized>(
    src: &R,
    image: &Image,
    threads: usize,
    progress_line: bool,
) -> Result<VerifyReport, VerifyError> {
    let started = Instant::now();
    image.check_padding(src)?;
    // Nothing reads the decoded pages: zero pages are not filled in.
    let progress = Progress::new("verify", 0, progress_line);
    scan_chunks_at(src, image, threads, progress, ZeroPages::Leave, |_, _| {
        Ok::<(), Infallible>(())
    })
    .map_err(|stopped| stopped.error)?;
    let l = &image.superblock.layout;
    Ok(VerifyReport {
        chunks: l.chunk_count,
        stored_pages: image.stored_pages(),
        zero_pages: l.zero_pages,
        image_bytes: l.image_len,
        elapsed: started.elapsed(),
    })
}

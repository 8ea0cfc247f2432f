//! One parallel pass over every chunk of an image: windows of chunks are
//! read with one positional read each, by a reader thread that reads the
//! next window while the current one is checked and decoded on a thread
//! pool; each chunk's pages go to a consumer. Verification, export and
//! restore are all such a pass; memory stays bounded by two windows and a
//! chunk per thread, whatever the image size, and is all taken before the
//! first chunk reaches the consumer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use kjump_image_format::{
    FormatError, Image, ImageOffset, ReadAt, ZeroPages, CHUNK_HEADER_SIZE, CHUNK_PAGES, PAGE_SIZE,
    TAG_SIZE,
};
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
    /// A thread of the pass panicked.
    #[error("a thread of the pass panicked (a bug in kjump: please report it)")]
    Panicked,
    /// The thread pool, the reader thread or the buffers could not be had.
    #[error("starting {threads} threads: {reason}")]
    Threads {
        /// Threads asked for.
        threads: usize,
        /// The cause.
        reason: String,
    },
}

/// Where a pass stopped: the chunk it was checking or handing over, when
/// the failure is one chunk's, and why.
#[derive(Debug)]
pub struct Stopped<E: std::error::Error + 'static> {
    /// The chunk, by its position in the index.
    pub chunk: Option<usize>,
    /// Why.
    pub error: ScanError<E>,
}

impl<E: std::error::Error + 'static> From<ScanError<E>> for Stopped<E> {
    fn from(error: ScanError<E>) -> Self {
        Stopped { chunk: None, error }
    }
}

/// Bytes a pass with `threads` threads holds besides the open image: two
/// window buffers (a window may end with one whole chunk past
/// [`WINDOW_BYTES`]) and, per thread, a decoded chunk and its scratch.
pub fn pass_memory(threads: usize) -> u64 {
    let chunk = (CHUNK_PAGES * PAGE_SIZE + CHUNK_HEADER_SIZE + TAG_SIZE) as u64;
    2 * (WINDOW_BYTES + chunk) + threads.max(1) as u64 * 2 * chunk
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

/// The image offset and length of a window's bytes.
fn span(image: &Image, w: &std::ops::Range<usize>) -> (u64, usize) {
    let first = &image.index[w.start];
    let last = &image.index[w.end - 1];
    let len = last.offset.0 + last.encoded_len() - first.offset.0;
    (first.offset.0, len as usize)
}

/// Checks and decodes every chunk, calling `consume(i, pages)` for each (in
/// no particular order within a window, windows in order). The first error
/// by chunk order is returned.
pub fn scan_chunks<R, E, F>(
    src: &R,
    image: &Image,
    threads: usize,
    progress_line: bool,
    consume: F,
) -> Result<(), ScanError<E>>
where
    R: ReadAt + Sync + ?Sized,
    E: std::error::Error + Send + 'static,
    F: Fn(usize, &[u8]) -> Result<(), E> + Sync,
{
    let progress = Progress::new("verify", 0, progress_line);
    scan_chunks_at(src, image, threads, progress, ZeroPages::Fill, consume).map_err(|s| s.error)
}

/// [`scan_chunks`], saying which chunk a failure is about, and reporting
/// progress (of image bytes read) as `progress` says. With
/// [`ZeroPages::Leave`], the slots of a chunk's zero pages hold bytes left
/// over in the buffer (the consumer goes by the index's zero bitmap).
pub fn scan_chunks_at<R, E, F>(
    src: &R,
    image: &Image,
    threads: usize,
    mut progress: Progress,
    zeros: ZeroPages,
    consume: F,
) -> Result<(), Stopped<E>>
where
    R: ReadAt + Sync + ?Sized,
    E: std::error::Error + Send + 'static,
    F: Fn(usize, &[u8]) -> Result<(), E> + Sync,
{
    let no_threads = |reason: String| ScanError::Threads { threads, reason };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .map_err(|e| no_threads(e.to_string()))?;
    let windows = windows(image);
    let biggest = windows.iter().map(|w| span(image, w).1).max().unwrap_or(0);
    progress.set_total(image.index.iter().map(|e| e.encoded_len()).sum());
    std::thread::scope(|scope| {
        // The channels live in this closure: when it returns, early or not,
        // they close, and the reader thread, which the scope then waits
        // for, stops at its next send or receive.
        let (empty_tx, empty_rx) = window_buffers(biggest).map_err(no_threads)?;
        let (full_tx, full_rx) = sync_channel::<Read>(1);
        let windows = &windows;
        std::thread::Builder::new()
            .name("kjump-read".into())
            .spawn_scoped(scope, move || {
                read_windows(src, image, windows, empty_rx, full_tx)
            })
            .map_err(|e| no_threads(format!("the reader thread: {e}")))?;
        for w in windows {
            let Ok(Read { buf, result }) = full_rx.recv() else {
                return Err(no_threads("the reader thread stopped".into()).into());
            };
            let (base, len) = span(image, w);
            result.map_err(|source| Stopped {
                chunk: None,
                error: FormatError::Io {
                    what: "chunks",
                    offset: ImageOffset(base),
                    source,
                }
                .into(),
            })?;
            if let Some(stopped) =
                pool.install(|| decode_window(image, w, base, &buf, zeros, &consume))
            {
                return Err(stopped);
            }
            // The reader may have stopped after its last window.
            let _ = empty_tx.send(buf);
            progress.advance(len as u64);
        }
        progress.finish();
        Ok(())
    })
}

/// The two ends of the channel of empty window buffers.
type Buffers = (SyncSender<Vec<u8>>, Receiver<Vec<u8>>);

/// Two window buffers of `len` bytes, one to read while the other is
/// decoded, ready in a channel; the reason when they cannot be had.
fn window_buffers(len: usize) -> Result<Buffers, String> {
    let (tx, rx) = sync_channel::<Vec<u8>>(2);
    for _ in 0..2 {
        let mut buf = Vec::new();
        buf.try_reserve_exact(len)
            .map_err(|e| format!("{len} bytes for a window of chunks: {e}"))?;
        buf.resize(len, 0);
        let _ = tx.send(buf);
    }
    Ok((tx, rx))
}

/// Checks and decodes the chunks `w` of a window read from image offset
/// `base` into `buf`, in parallel, handing each to `consume`; returns the
/// first failure by chunk order. Once a chunk failed, the chunks after it
/// are not handed over: a consumer that writes memory writes as little as
/// it can.
fn decode_window<E, F>(
    image: &Image,
    w: &std::ops::Range<usize>,
    base: u64,
    buf: &[u8],
    zeros: ZeroPages,
    consume: &F,
) -> Option<Stopped<E>>
where
    E: std::error::Error + Send + 'static,
    F: Fn(usize, &[u8]) -> Result<(), E> + Sync,
{
    let failed_at = AtomicUsize::new(usize::MAX);
    w.clone()
        .into_par_iter()
        .map_init(
            || (Vec::new(), Vec::new()),
            |(out, scratch), i| {
                if i > failed_at.load(Ordering::SeqCst) {
                    return Ok(());
                }
                let e = &image.index[i];
                let at = (e.offset.0 - base) as usize;
                let encoded = &buf[at..at + e.encoded_len() as usize];
                out.resize(usize::from(e.page_count) * PAGE_SIZE, 0);
                // A panic is this chunk's failure like any other: the chunks
                // after it are not handed over, and the chunk is named.
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    image
                        .check_chunk(i, encoded, out, scratch, zeros)
                        .map_err(ScanError::Image)
                        .and_then(|()| consume(i, out).map_err(ScanError::Consumer))
                }))
                .unwrap_or(Err(ScanError::Panicked))
                .map_err(|error| {
                    failed_at.fetch_min(i, Ordering::SeqCst);
                    Stopped {
                        chunk: Some(i),
                        error,
                    }
                })
            },
        )
        .collect::<Vec<_>>()
        .into_iter()
        .find_map(Result::err)
}

/// Windows past the one being read whose reads the reader thread asks for
/// ahead ([`ReadAt::prefetch`]): through the page cache, the device keeps
/// that many requests of up to 16 MiB in flight.
const PREFETCH_WINDOWS: usize = 2;

/// A window's bytes as the reader thread read them.
struct Read {
    buf: Vec<u8>,
    result: std::io::Result<()>,
}

/// The reader thread: reads each window into an empty buffer and passes
/// it on, until the windows end, a read fails or the pass stops.
fn read_windows<R: ReadAt + ?Sized>(
    src: &R,
    image: &Image,
    windows: &[std::ops::Range<usize>],
    empty: Receiver<Vec<u8>>,
    full: SyncSender<Read>,
) {
    // The device reads the windows ahead while this thread waits for a
    // buffer and the pool decodes: one synchronous read at a time would
    // leave it idle between requests.
    let mut prefetched = 0;
    for (i, w) in windows.iter().enumerate() {
        while prefetched < windows.len() && prefetched <= i + PREFETCH_WINDOWS {
            let (base, len) = span(image, &windows[prefetched]);
            src.prefetch(base, len);
            prefetched += 1;
        }
        let Ok(mut buf) = empty.recv() else { return };
        let (base, len) = span(image, w);
        buf.truncate(len);
        buf.resize(len, 0);
        let result = src.read_exact_at(&mut buf, base);
        let failed = result.is_err();
        if full.send(Read { buf, result }).is_err() || failed {
            return;
        }
    }
}

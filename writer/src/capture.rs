//! The capture pipeline: read a window of memory, compress its chunks in
//! parallel, hand them in order to a writer thread, repeat; then the index,
//! the trailer, a flush, and the commit.
//!
//! Memory stays bounded whatever the source size: two windows of input are
//! mapped and compressed at a time (one when memory is short), and at most
//! two more windows of compressed output wait for the writer (one in the
//! channel, one being written).

use std::sync::mpsc::{sync_channel, Receiver};
use std::time::{Duration, Instant};

use kjump_image_format::crypto::SALT_SIZE;
use kjump_image_format::{
    chunk_count, chunk_specs, plan_layout, ChunkCodec, ChunkSpec, CryptoParams, EncodedChunk,
    FormatError, ImageKeys, ImageSeal, ImageState, IndexEntry, Kdf, Layout, Metadata,
    MetadataSection, Secret, Superblock, SuperblockSeal, Trailer, BLOCK_SIZE, INDEX_ENTRY_SIZE,
    PAGE_SIZE,
};
use rayon::prelude::*;

use kjump_sys::progress::Progress;
use kjump_sys::target::{AlignedBuf, Target, TargetError, DIRECT_ALIGN};

use crate::source::{MemorySource, SourceError, Window};

/// Default window: 16 MiB of input.
pub const DEFAULT_WINDOW_PAGES: usize = 4096;
const FLUSH_BYTES: usize = 4 << 20;

/// Why a capture failed. The image on the target is then never committed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// Reading the source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Writing the target failed.
    #[error("the image is left uncommitted")]
    Target(#[from] TargetError),
    /// The worst case image does not fit on the target.
    #[error("target {path} has room for {capacity} bytes, but the image of this source can take up to {worst_case} bytes when nothing compresses (pass --assume-fits to try anyway)")]
    TooSmall {
        /// The target.
        path: String,
        /// Bytes available.
        capacity: u64,
        /// Largest possible image.
        worst_case: u64,
    },
    /// The metadata disagrees with the source.
    #[error("metadata ranges differ from the source's ranges")]
    RangesMismatch,
    /// The ranges are too large to describe in an image.
    #[error("the source's ranges are too large for an image")]
    TooLarge,
    /// The worker threads could not be started.
    #[error("starting {threads} compression threads: {reason}")]
    Threads {
        /// Threads asked for.
        threads: usize,
        /// The cause.
        reason: String,
    },
    /// A pipeline thread died.
    #[error("the image writer thread stopped unexpectedly")]
    WriterDied,
    /// The image keys could not be derived.
    #[error("deriving the image keys")]
    Keys(#[source] FormatError),
    /// The kernel gave no random bytes for the image's salt.
    #[error("reading random bytes for the image salt (getrandom)")]
    Random(#[source] std::io::Error),
}

/// How to capture.
#[derive(Clone, Debug)]
pub struct CaptureOptions {
    /// Compression threads.
    pub threads: usize,
    /// Pages of input per window (rounded to whole chunks).
    pub window_pages: usize,
    /// Identity of the new image.
    pub uuid: [u8; 16],
    /// Capture time, nanoseconds since the Unix epoch.
    pub capture_time_ns: u64,
    /// Refuse up front when the worst case does not fit the target.
    pub check_worst_case: bool,
    /// Draw a progress line (for terminals); otherwise log progress.
    pub progress_line: bool,
}

impl CaptureOptions {
    /// Defaults: all available CPUs, a random uuid, the current time.
    pub fn new() -> Self {
        CaptureOptions {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            window_pages: DEFAULT_WINDOW_PAGES,
            uuid: kjump_sys::random::uuid(),
            capture_time_ns: kjump_sys::clock::now_ns(),
            check_worst_case: true,
            progress_line: false,
        }
    }
}

impl Default for CaptureOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// What a capture wrote.
#[derive(Clone, Debug)]
pub struct CaptureReport {
    /// The committed layout.
    pub layout: Layout,
    /// Pages stored in chunks.
    pub stored_pages: u64,
    /// Bytes of memory read (whole pages).
    pub input_bytes: u64,
    /// Wall time from start to commit.
    pub elapsed: Duration,
}

/// How to encrypt a capture: the user's secret, and where the master key
/// comes from ([`Kdf::KeyFile`] for a key file, an Argon2id cost for a
/// passphrase, such as [`kjump_image_format::crypto::DEFAULT_KDF`]).
#[derive(Debug)]
pub struct Encryption<'a> {
    /// The key file's contents or the passphrase.
    pub secret: &'a Secret,
    /// The key derivation, recorded in the image.
    pub kdf: Kdf,
}

/// The keys and public parameters of an encrypted capture.
struct Sealing {
    keys: ImageKeys,
    params: CryptoParams,
}

impl Sealing {
    fn new(enc: &Encryption, uuid: &[u8; 16]) -> Result<Sealing, CaptureError> {
        // An image whose costs a reader refuses could never be opened.
        enc.kdf.check_costs().map_err(CaptureError::Keys)?;
        let salt = random_salt().map_err(CaptureError::Random)?;
        let keys =
            ImageKeys::derive(enc.secret, &enc.kdf, &salt, uuid).map_err(CaptureError::Keys)?;
        let params = CryptoParams {
            kdf: enc.kdf,
            salt,
            check: keys.check_value(),
            seal: [0; 32],
            resume_record_len: 0,
        };
        Ok(Sealing { keys, params })
    }
}

/// A salt from the kernel's random pool, waiting for it to be ready: a
/// repeated salt and uuid would repeat nonces under one key, so unlike the
/// uuid there is no fallback to the clock.
fn random_salt() -> std::io::Result<[u8; SALT_SIZE]> {
    let mut b = [0u8; SALT_SIZE];
    kjump_sys::random::fill(&mut b)?;
    Ok(b)
}

/// Captures `source` into `target` and commits the image.
pub fn capture(
    source: &MemorySource,
    target: &Target,
    metadata: &Metadata,
    opts: &CaptureOptions,
) -> Result<CaptureReport, CaptureError> {
    capture_with(source, target, metadata, opts, None)
}

/// Captures `source` into `target` as an encrypted image and commits it:
/// every chunk payload and the metadata sealed with AES-256-GCM, and the
/// structures tied together by the image seal (FORMAT.md, Encryption).
pub fn capture_encrypted(
    source: &MemorySource,
    target: &Target,
    metadata: &Metadata,
    opts: &CaptureOptions,
    encryption: &Encryption,
) -> Result<CaptureReport, CaptureError> {
    capture_with(source, target, metadata, opts, Some(encryption))
}

fn capture_with(
    source: &MemorySource,
    target: &Target,
    metadata: &Metadata,
    opts: &CaptureOptions,
    encryption: Option<&Encryption>,
) -> Result<CaptureReport, CaptureError> {
    let started = Instant::now();
    if metadata.ranges != *source.map() {
        return Err(CaptureError::RangesMismatch);
    }
    check_room(target, metadata, opts, encryption.is_some())?;
    let pool = thread_pool(opts.threads)?;
    // Keys first: a passphrase that cannot be used must not cost the
    // target its old image.
    let sealing = encryption
        .map(|e| Sealing::new(e, &opts.uuid))
        .transpose()?;
    let mut sb = Superblock::writing(opts.uuid, opts.capture_time_ns);
    sb.crypto = sealing.as_ref().map(|s| s.params);
    invalidate(target, &sb)?;

    let keys = sealing.as_ref().map(|s| &s.keys);
    let (section, codec) = encoding(metadata, keys, &opts.uuid);
    let pipeline = Pipeline {
        source,
        target,
        metadata,
        opts,
        pool: &pool,
    };
    let stream = pipeline.run(&section, codec, keys)?;
    commit(
        target,
        &mut sb,
        stream.layout,
        stream.seal,
        &section,
        sealing.as_ref(),
    )?;
    Ok(CaptureReport {
        layout: stream.layout,
        stored_pages: stream.stored_pages,
        input_bytes: metadata.ranges.total_pages() * PAGE_SIZE as u64,
        elapsed: started.elapsed(),
    })
}

/// The compression threads.
fn thread_pool(threads: usize) -> Result<rayon::ThreadPool, CaptureError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .map_err(|e| CaptureError::Threads {
            threads,
            reason: e.to_string(),
        })
}

/// The metadata section and the chunk codec of the image `uuid`, sealed
/// under `keys` when there are keys. An encrypted image's metadata is
/// sealed, then followed by its resume record in the clear (what a normal
/// boot needs before the key is asked); the image seal covers both.
fn encoding<'k>(
    metadata: &Metadata,
    keys: Option<&'k ImageKeys>,
    uuid: &[u8; 16],
) -> (MetadataSection, ChunkCodec<'k>) {
    match keys {
        Some(k) => (
            MetadataSection::seal(metadata, k, uuid),
            ChunkCodec::Sealed(k),
        ),
        None => (MetadataSection::plain(metadata), ChunkCodec::Plain),
    }
}

/// Refuses a target without room for the worst case image (unless asked
/// not to): better said now than after the old image is gone.
fn check_room(
    target: &Target,
    metadata: &Metadata,
    opts: &CaptureOptions,
    sealed: bool,
) -> Result<(), CaptureError> {
    let worst_case =
        kjump_image_format::worst_case_len(metadata, sealed).ok_or(CaptureError::TooLarge)?;
    match target.capacity() {
        Some(capacity) if opts.check_worst_case && worst_case > capacity => {
            Err(CaptureError::TooSmall {
                path: target.path().display().to_string(),
                capacity,
                worst_case,
            })
        }
        _ => Ok(()),
    }
}

/// Invalidates whatever the target held before the first byte of the new
/// image lands: from here on, until the commit, it reads as incomplete.
fn invalidate(target: &Target, writing: &Superblock) -> Result<(), CaptureError> {
    target.claim()?;
    target.write_copy_at(&writing.encode(), 0)?;
    target.sync()?;
    Ok(())
}

/// What the capture reads and writes, and the threads that compress.
struct Pipeline<'a> {
    source: &'a MemorySource,
    target: &'a Target,
    metadata: &'a Metadata,
    opts: &'a CaptureOptions,
    pool: &'a rayon::ThreadPool,
}

impl Pipeline<'_> {
    /// Compresses (and seals) the chunks on the pool while a writer thread
    /// writes the metadata `section`, the chunks in order, the index and
    /// the trailer.
    fn run(
        &self,
        section: &MetadataSection,
        codec: ChunkCodec,
        keys: Option<&ImageKeys>,
    ) -> Result<Stream, CaptureError> {
        let count = chunk_count(&self.metadata.ranges);
        let (tx, rx) = sync_channel::<Vec<EncodedChunk>>(1);
        let (target, meta, uuid) = (self.target, section.bytes(), self.opts.uuid);
        std::thread::scope(|s| {
            let seal = keys.map(|k| ImageSeal::over_metadata(k, meta));
            let writer = s.spawn(move || write_stream(target, meta, count, uuid, seal, rx));
            let produced = produce(self.source, self.metadata, self.opts, codec, self.pool, tx);
            let written = writer.join().map_err(|_| CaptureError::WriterDied)?;
            // A producer that stops on a write error returns Ok and leaves the
            // error to the writer; a writer that runs short of chunks leaves it
            // to the producer. Report the producer's first.
            produced?;
            written
        })
    }
}

/// Commits the image once every other byte is on stable storage: its
/// length, then the superblock `sb` with the `layout` written and, for an
/// encrypted image, its `seal`.
fn commit(
    target: &Target,
    sb: &mut Superblock,
    layout: Layout,
    seal: Option<SuperblockSeal>,
    section: &MetadataSection,
    sealing: Option<&Sealing>,
) -> Result<(), CaptureError> {
    target.set_len(layout.image_len)?;
    target.sync()?;
    sb.state = ImageState::Committed;
    sb.layout = layout;
    if let (Some(seal), Some(sealing)) = (seal, sealing) {
        let params = CryptoParams {
            resume_record_len: section.resume_record_len(),
            ..sealing.params
        };
        seal.store(sb, params);
    }
    target.write_copy_at(&sb.encode(), 0)?;
    target.sync()?;
    Ok(())
}

/// Groups the chunk sequence into windows of consecutive frames of one range.
fn windows(
    metadata: &Metadata,
    window_pages: usize,
) -> impl Iterator<Item = Vec<(u32, ChunkSpec)>> + '_ {
    // Produced one at a time: the whole chunk plan of a large machine would
    // itself be tens of megabytes, more than the capture kernel should hold.
    let per_window = (window_pages / kjump_image_format::CHUNK_PAGES).max(1);
    let mut specs = chunk_specs(&metadata.ranges).enumerate().peekable();
    std::iter::from_fn(move || {
        let (seq, first) = specs.next()?;
        let mut window = Vec::with_capacity(per_window);
        window.push((seq as u32, first));
        while window.len() < per_window {
            match specs.next_if(|(_, s)| s.range == first.range) {
                Some((seq, spec)) => window.push((seq as u32, spec)),
                None => break,
            }
        }
        Some(window)
    })
}

/// Windows compressed at once, as memory allows. While one thread
/// finishes the last chunks of a window, the others take the next
/// window's, so no core waits at a window's end. What the capture holds
/// stays bounded: this many windows of input mapped and of compressed
/// output, one more in the channel to the writer and one being written.
/// The second window costs up to two windows of memory (its output, and
/// its input where a mapping takes RAM), so it is taken only when
/// MemAvailable holds eight windows: a small kdump or capture kernel runs
/// one at a time, as before.
fn windows_in_flight(available: u64, window_pages: usize) -> u64 {
    let window = (window_pages.max(1) * PAGE_SIZE) as u64;
    if available / 8 >= window {
        2
    } else {
        1
    }
}

fn produce(
    source: &MemorySource,
    metadata: &Metadata,
    opts: &CaptureOptions,
    codec: ChunkCodec,
    pool: &rayon::ThreadPool,
    tx: std::sync::mpsc::SyncSender<Vec<EncodedChunk>>,
) -> Result<(), CaptureError> {
    let total = metadata.ranges.total_pages() * PAGE_SIZE as u64;
    let mut progress = Progress::new("capture", total, opts.progress_line);
    let (done_tx, done_rx) = std::sync::mpsc::channel::<(u64, usize, Vec<EncodedChunk>)>();
    let in_flight = windows_in_flight(kjump_sys::freemem::MemInfo::spare(), opts.window_pages);
    log::debug!("capture: {in_flight} windows compressed at once");
    let mut result = Ok(());
    // The producer runs here, outside the pool, and only waits: the pool's
    // threads compress. The scope ends when every window spawned is done,
    // also when the loop stops early.
    pool.in_place_scope(|scope| {
        let mut windows = windows(metadata, opts.window_pages);
        let mut pending = std::collections::BTreeMap::new();
        let (mut started, mut sent, mut more) = (0u64, 0u64, true);
        loop {
            if more && started - sent < in_flight {
                let Some(window) = windows.next() else {
                    more = false;
                    continue;
                };
                let first = window[0].1.first_pfn;
                let pages: usize = window.iter().map(|(_, s)| usize::from(s.page_count)).sum();
                let bytes = match source.window(window[0].1.range, first, pages) {
                    Ok(b) => b,
                    Err(e) => {
                        result = Err(e.into());
                        return;
                    }
                };
                let (done, k) = (done_tx.clone(), started);
                scope.spawn(move |_| {
                    let batch = encode_window(&window, &bytes, metadata, opts, codec);
                    // Unmapped before the next window is: the bound above.
                    drop(bytes);
                    let _ = done.send((k, pages, batch));
                });
                started += 1;
                continue;
            }
            if sent == started {
                return;
            }
            let Ok((k, pages, batch)) = done_rx.recv() else {
                return;
            };
            pending.insert(k, (pages, batch));
            while let Some((pages, batch)) = pending.remove(&sent) {
                if tx.send(batch).is_err() {
                    // The writer failed and says why; stop reading.
                    return;
                }
                sent += 1;
                progress.advance((pages * PAGE_SIZE) as u64);
            }
        }
    });
    if result.is_ok() {
        progress.finish();
    }
    result
}

/// Compresses (and seals) the chunks of one window on the pool; `bytes`
/// holds the window's pages from its first chunk's first frame.
fn encode_window(
    window: &[(u32, ChunkSpec)],
    bytes: &Window,
    metadata: &Metadata,
    opts: &CaptureOptions,
    codec: ChunkCodec,
) -> Vec<EncodedChunk> {
    let first = window[0].1.first_pfn;
    let data = bytes.pages();
    window
        .par_iter()
        .map(|(seq, spec)| {
            let at = ((spec.first_pfn.0 - first.0) as usize) * PAGE_SIZE;
            let len = usize::from(spec.page_count) * PAGE_SIZE;
            let pages = &data[at..at + len];
            // Frames a filtered capture leaves out are encoded as not
            // stored, like zero pages, and never read; the metadata tells
            // them apart (FORMAT.md, tag 9).
            let left_out = metadata
                .excluded
                .as_ref()
                .map_or(0, |x| x.mask(spec.first_pfn.0, u32::from(spec.page_count)));
            codec.encode_leaving_out(spec, *seq, opts.uuid, pages, left_out)
        })
        .collect()
}

struct Stream {
    layout: Layout,
    stored_pages: u64,
    seal: Option<SuperblockSeal>,
}

/// Positional writes gathered into large aligned blocks.
struct BlockWriter<'a> {
    target: &'a Target,
    buf: AlignedBuf,
    buf_start: u64,
}

impl BlockWriter<'_> {
    fn pos(&self) -> u64 {
        self.buf_start + self.buf.len() as u64
    }

    fn push(&mut self, mut bytes: &[u8]) -> Result<(), TargetError> {
        while !bytes.is_empty() {
            let n = bytes.len().min(self.buf.room());
            self.buf.push(&bytes[..n]);
            bytes = &bytes[n..];
            if self.buf.len() >= FLUSH_BYTES || self.buf.room() == 0 {
                self.flush_blocks()?;
            }
        }
        Ok(())
    }

    fn pad_to(&mut self, offset: u64) -> Result<(), TargetError> {
        let mut gap = offset.saturating_sub(self.pos()) as usize;
        while gap > 0 {
            let n = gap.min(self.buf.room());
            self.buf.push_zeros(n);
            gap -= n;
            if self.buf.room() == 0 {
                self.flush_blocks()?;
            }
        }
        Ok(())
    }

    /// Writes the whole blocks held; a partial block waits for more bytes.
    fn flush_blocks(&mut self) -> Result<(), TargetError> {
        let n = self.buf.len() / DIRECT_ALIGN * DIRECT_ALIGN;
        if n > 0 {
            self.target
                .write_at(&self.buf.as_slice()[..n], self.buf_start)?;
            self.buf.consume(n);
            self.buf_start += n as u64;
        }
        Ok(())
    }
}

/// Writes metadata, chunks as they arrive, the index and the trailer.
fn write_stream(
    target: &Target,
    meta_bytes: &[u8],
    count: u64,
    uuid: [u8; 16],
    mut seal: Option<ImageSeal>,
    rx: Receiver<Vec<EncodedChunk>>,
) -> Result<Stream, CaptureError> {
    let meta_len = meta_bytes.len() as u64;
    let start = plan_layout(meta_len, 0, 0).ok_or(CaptureError::TooLarge)?;
    let mut w = BlockWriter {
        target,
        buf: AlignedBuf::with_capacity(FLUSH_BYTES + (64 << 10)),
        buf_start: start.metadata_offset,
    };
    w.push(meta_bytes)?;
    w.pad_to(start.data_offset)?;
    let chunks = Chunks::write(&mut w, rx, count)?;
    if chunks.index.len() as u64 != count {
        // The producer stopped early; its error is reported by the caller.
        return Err(CaptureError::WriterDied);
    }
    let data_len = w.pos() - start.data_offset;
    let mut layout = plan_layout(meta_len, data_len, count).ok_or(CaptureError::TooLarge)?;
    w.pad_to(layout.index_offset)?;
    layout.index_crc = chunks.write_index(&mut w, seal.as_mut())?;
    debug_assert_eq!(
        w.pos(),
        layout.index_offset + count * INDEX_ENTRY_SIZE as u64
    );
    layout.metadata_crc = crc32fast::hash(meta_bytes);
    layout.total_pages = chunks.stored_pages + chunks.zero_pages;
    layout.zero_pages = chunks.zero_pages;
    let trailer = Trailer::of(uuid, &layout).encode();
    let seal = seal.map(|s| s.trailer(&trailer));
    w.push(&trailer)?;
    w.pad_to(layout.image_len)?;
    debug_assert_eq!(w.pos() % BLOCK_SIZE as u64, 0);
    w.flush_blocks()?;
    Ok(Stream {
        layout,
        stored_pages: chunks.stored_pages,
        seal,
    })
}

/// The chunks written: their index entries and page counts.
struct Chunks {
    index: Vec<IndexEntry>,
    stored_pages: u64,
    zero_pages: u64,
}

impl Chunks {
    /// Writes the chunks of the batches from `rx` as they arrive, back to
    /// back; stops when the producer hangs up.
    fn write(
        w: &mut BlockWriter,
        rx: Receiver<Vec<EncodedChunk>>,
        count: u64,
    ) -> Result<Chunks, CaptureError> {
        let mut chunks = Chunks {
            index: Vec::with_capacity(count as usize),
            stored_pages: 0,
            zero_pages: 0,
        };
        for batch in rx {
            for chunk in batch {
                let offset = kjump_image_format::ImageOffset(w.pos());
                w.push(&chunk.header.encode())?;
                w.push(&chunk.payload)?;
                chunks.stored_pages += u64::from(chunk.header.stored_pages());
                chunks.zero_pages += u64::from(chunk.header.zero_bitmap.count_ones());
                chunks.index.push(chunk.header.index_entry(offset));
            }
        }
        Ok(chunks)
    }

    /// Writes the index (into the image seal too, when there is one) and
    /// returns its CRC.
    fn write_index(
        &self,
        w: &mut BlockWriter,
        mut seal: Option<&mut ImageSeal>,
    ) -> Result<u32, CaptureError> {
        let mut crc = crc32fast::Hasher::new();
        for e in &self.index {
            let b = e.encode();
            crc.update(&b);
            if let Some(s) = seal.as_mut() {
                s.index(&b);
            }
            w.push(&b)?;
        }
        Ok(crc.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_window_only_with_room_for_eight() {
        let window = (DEFAULT_WINDOW_PAGES * PAGE_SIZE) as u64;
        assert_eq!(windows_in_flight(8 * window, DEFAULT_WINDOW_PAGES), 2);
        assert_eq!(windows_in_flight(8 * window - 1, DEFAULT_WINDOW_PAGES), 1);
        assert_eq!(windows_in_flight(0, DEFAULT_WINDOW_PAGES), 1);
        // Without /proc/meminfo nothing bounds it.
        assert_eq!(windows_in_flight(u64::MAX, DEFAULT_WINDOW_PAGES), 2);
        // Larger windows need more room.
        assert_eq!(windows_in_flight(8 * window, 4 * DEFAULT_WINDOW_PAGES), 1);
    }
}

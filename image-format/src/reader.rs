//! Opening an image: every structure except the chunk payloads is read and
//! checked here, so that after [`Image::open`] the index can be trusted to
//! name every page of the saved ranges exactly once.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;

use crate::addr::{ImageOffset, Pfn};
use crate::chunk::{chunk_count, chunk_specs, ChunkHeader, ChunkSpec, IndexEntry};
use crate::chunk::{CHUNK_HEADER_SIZE, INDEX_ENTRY_SIZE};
use crate::codec::{ChunkCodec, ZeroPages};
use crate::crypto::{ImageKeys, Secret};
use crate::error::FormatError;
use crate::layout::superblock as sb_field;
use crate::layout::{plan_layout, Layout, BLOCK_SIZE, PAGE_SIZE};
use crate::metadata::{Metadata, MAX_METADATA_LEN};
use crate::seal::ImageSeal;
use crate::section::MetadataSection;
use crate::superblock::{ImageState, Superblock};
use crate::trailer::{Trailer, TRAILER_SIZE};

/// Positional reads from an image: a file, a block device or bytes in memory.
pub trait ReadAt: Sync {
    /// Fills `buf` from `offset`; a short read is an error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
    /// Size of the image source in bytes.
    fn size(&self) -> std::io::Result<u64>;
    /// A hint that `len` bytes at `offset` will be read soon: a source with
    /// a page cache starts reading them now, so that the device works while
    /// the reader decodes. Nothing else changes; a source may ignore it.
    fn prefetch(&self, _offset: u64, _len: usize) {}
}

impl ReadAt for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }

    /// POSIX_FADV_WILLNEED: the kernel queues the reads and returns. A
    /// refusal (a pipe, an old kernel) only loses the head start.
    fn prefetch(&self, offset: u64, len: usize) {
        if let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) {
            let _ = nix::fcntl::posix_fadvise(
                self,
                offset,
                len,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_WILLNEED,
            );
        }
    }

    fn size(&self) -> std::io::Result<u64> {
        // metadata().len() is 0 for block devices; seeking to the end is not.
        let mut f = self;
        f.seek(SeekFrom::End(0))
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match start.checked_add(buf.len()) {
            Some(end) if end <= self.len() => {
                buf.copy_from_slice(&self[start..end]);
                Ok(())
            }
            _ => Err(std::io::ErrorKind::UnexpectedEof.into()),
        }
    }

    fn size(&self) -> std::io::Result<u64> {
        Ok(self.len() as u64)
    }
}

impl ReadAt for Vec<u8> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }

    fn size(&self) -> std::io::Result<u64> {
        Ok(self.len() as u64)
    }
}

/// Reads `len` bytes at `offset`, refusing reads past the end of the source.
pub fn read_region<R: ReadAt + ?Sized>(
    src: &R,
    what: &'static str,
    offset: u64,
    len: u64,
    size: u64,
) -> Result<Vec<u8>, FormatError> {
    let fits = offset.checked_add(len).is_some_and(|end| end <= size);
    if !fits {
        return Err(FormatError::Truncated {
            what,
            offset: ImageOffset(offset),
            needed: len,
            available: size,
        });
    }
    let mut buf = Vec::new();
    buf.try_reserve_exact(len as usize)
        .map_err(|_| FormatError::OutOfMemory {
            what,
            needed: len,
            available: None,
        })?;
    buf.resize(len as usize, 0);
    src.read_exact_at(&mut buf, offset)
        .map_err(|source| FormatError::Io {
            what,
            offset: ImageOffset(offset),
            source,
        })?;
    Ok(buf)
}

/// Reads and checks the superblock alone. A capture that never finished
/// still has a valid superblock, in state [`ImageState::Writing`].
pub fn read_superblock<R: ReadAt + ?Sized>(src: &R) -> Result<Superblock, FormatError> {
    let size = src.size().map_err(|source| FormatError::Io {
        what: "image size",
        offset: ImageOffset(0),
        source,
    })?;
    let block = read_region(src, "superblock", 0, BLOCK_SIZE as u64, size)?;
    Superblock::decode(&block)
}

/// A committed (or consumed) image whose structure checked out.
#[derive(Debug)]
pub struct Image {
    /// The superblock.
    pub superblock: Superblock,
    /// The metadata.
    pub metadata: Metadata,
    /// One entry per chunk, in physical address order.
    pub index: Vec<IndexEntry>,
    /// Where each chunk lies, derived from the ranges.
    pub specs: Vec<ChunkSpec>,
    /// Bytes in the image source (at least the image's own length).
    pub source_size: u64,
    /// The keys of an encrypted image.
    keys: Option<ImageKeys>,
}

impl Image {
    /// Reads the superblock, metadata, trailer and index and checks them
    /// against each other. Chunk payloads are not read: see
    /// [`Image::read_chunk`] and [`Image::check_padding`].
    pub fn open<R: ReadAt + ?Sized>(src: &R) -> Result<Image, FormatError> {
        Self::open_with(src, None)
    }

    /// [`Image::open`], with the key or passphrase of an encrypted image. A
    /// wrong one is refused first; then the image seal is checked over the
    /// superblock, metadata, index and trailer before the metadata is
    /// decrypted. A secret given for an unencrypted image is not used.
    pub fn open_with<R: ReadAt + ?Sized>(
        src: &R,
        secret: Option<&Secret>,
    ) -> Result<Image, FormatError> {
        Self::open_within(src, secret, u64::MAX)
    }

    /// [`Image::open_with`], refusing before it reads the index an image
    /// whose metadata and index would take more than `budget` bytes of
    /// memory once opened ([`Image::memory_needed`]): what a small
    /// restore kernel, or any reader of an untrusted image, checks so that
    /// the superblock's counts cannot make it run out of memory.
    pub fn open_within<R: ReadAt + ?Sized>(
        src: &R,
        secret: Option<&Secret>,
        budget: u64,
    ) -> Result<Image, FormatError> {
        let sb = committed_superblock(src)?;
        let needed = Self::memory_needed(&sb.layout);
        if needed > budget {
            return Err(FormatError::OutOfMemory {
                what: "the metadata and chunk index",
                needed,
                available: Some(budget),
            });
        }
        let keys = match (&sb.crypto, secret) {
            (None, _) => None,
            (Some(_), None) => return Err(FormatError::KeyRequired),
            (Some(c), Some(s)) => Some(ImageKeys::unlock(s, c, &sb.uuid)?),
        };
        let (size, section_bytes) = metadata_section(src, &sb)?;
        let l = sb.layout;
        let section = MetadataSection::split(&sb, &section_bytes)?;
        // An encrypted image's trailer and index are read (and CRC-checked,
        // so that bit rot still reads as a checksum error) for the image
        // seal, which is checked before the metadata is decrypted.
        let sealed_index = keys
            .as_ref()
            .map(|k| check_seal(src, &sb, size, k, &section_bytes))
            .transpose()?;
        let metadata = section.open(keys.as_ref(), &sb.uuid)?;
        check_totals(&metadata, &l)?;
        let index_bytes = match sealed_index {
            Some(index_bytes) => index_bytes,
            None => {
                check_trailer(src, &sb, size)?;
                read_index(src, &sb, size)?
            }
        };
        let specs: Vec<ChunkSpec> = chunk_specs(&metadata.ranges).collect();
        let index = decode_index(&index_bytes, &specs, &sb)?;
        if let Some(x) = &metadata.excluded {
            check_excluded(x, &index, &sb)?;
        }
        Ok(Image {
            superblock: sb,
            metadata,
            index,
            specs,
            source_size: size,
            keys,
        })
    }

    /// Bytes of memory an open image of this layout holds: its metadata
    /// and, per chunk, the index entry as read, as decoded and the chunk's
    /// place in the ranges.
    pub fn memory_needed(l: &Layout) -> u64 {
        let per_chunk = (INDEX_ENTRY_SIZE
            + std::mem::size_of::<IndexEntry>()
            + std::mem::size_of::<ChunkSpec>()) as u64;
        l.chunk_count
            .saturating_mul(per_chunk)
            .saturating_add(l.metadata_len)
    }

    /// Whether the image is encrypted (and was opened with its key).
    pub fn is_encrypted(&self) -> bool {
        self.keys.is_some()
    }

    /// How its chunk payloads are encoded.
    pub fn codec(&self) -> ChunkCodec<'_> {
        match &self.keys {
            Some(k) => ChunkCodec::Sealed(k),
            None => ChunkCodec::Plain,
        }
    }

    /// Pages stored in chunks (neither zero nor outside the ranges).
    pub fn stored_pages(&self) -> u64 {
        self.index.iter().map(|e| u64::from(e.stored_pages())).sum()
    }

    /// Reads chunk `i`, checks its header against the index and its payload
    /// against both CRCs, and decodes its pages into `out`
    /// (`page_count * PAGE_SIZE` bytes). `buf` and `scratch` are reused.
    pub fn read_chunk<R: ReadAt + ?Sized>(
        &self,
        src: &R,
        i: usize,
        out: &mut [u8],
        buf: &mut Vec<u8>,
        scratch: &mut Vec<u8>,
    ) -> Result<(), FormatError> {
        let e = &self.index[i];
        buf.resize(e.encoded_len() as usize, 0);
        src.read_exact_at(buf, e.offset.0)
            .map_err(|source| FormatError::Io {
                what: "chunk",
                offset: e.offset,
                source,
            })?;
        self.check_chunk(i, buf, out, scratch, ZeroPages::Fill)
    }

    /// Checks and decodes chunk `i` from its encoded bytes (header and
    /// payload), as read from the image, its zero pages filled or left as
    /// `zeros` says (the index's zero bitmap, which the header was checked
    /// against, tells them).
    pub fn check_chunk(
        &self,
        i: usize,
        encoded: &[u8],
        out: &mut [u8],
        scratch: &mut Vec<u8>,
        zeros: ZeroPages,
    ) -> Result<(), FormatError> {
        let e = &self.index[i];
        let mut hb = [0u8; CHUNK_HEADER_SIZE];
        hb.copy_from_slice(&encoded[..CHUNK_HEADER_SIZE]);
        let h = ChunkHeader::decode_as(&hb, e.offset.0, self.is_encrypted())?;
        let what = || format!("chunk {i} header");
        if h.uuid != self.superblock.uuid {
            return Err(FormatError::ForeignUuid {
                what: what(),
                offset: e.offset,
            });
        }
        if u64::from(h.seq) != i as u64 {
            return Err(FormatError::mismatch(
                what(),
                "sequence",
                e.offset.0,
                i as u64,
                h.seq.into(),
            ));
        }
        if let Some((field, indexed, found)) = e.first_difference(&h.index_entry(e.offset)) {
            return Err(FormatError::mismatch(
                what(),
                field,
                e.offset.0,
                indexed,
                found,
            ));
        }
        let payload = &encoded[CHUNK_HEADER_SIZE..];
        self.codec()
            .decode(&h, e.offset, i as u64, payload, out, scratch, zeros)?;
        self.check_edges(i, out)
    }

    /// Bytes of a partially covered first or last page of a range must be
    /// zero outside the range: nothing unaccounted is ever stored. A zero
    /// page is zero throughout; its slot in `pages` is not read.
    fn check_edges(&self, i: usize, pages: &[u8]) -> Result<(), FormatError> {
        let spec = &self.specs[i];
        let range = self.metadata.ranges.ranges()[spec.range];
        let first = spec.first_pfn;
        let last = Pfn(first.0 + u64::from(spec.page_count) - 1);
        let zero = |p: Pfn| self.index[i].zero_bitmap >> (p.0 - first.0) & 1 == 1;
        let mut bad = None;
        if first == range.first_pfn() && range.start().page_offset() != 0 && !zero(first) {
            let head = &pages[..range.start().page_offset()];
            if crate::le::first_nonzero(head).is_some() {
                bad = Some(first);
            }
        }
        let end_off = range.end().page_offset();
        if bad.is_none() && last.0 + 1 == range.end_pfn().0 && end_off != 0 && !zero(last) {
            let at = (spec.page_count as usize - 1) * PAGE_SIZE;
            if crate::le::first_nonzero(&pages[at + end_off..at + PAGE_SIZE]).is_some() {
                bad = Some(last);
            }
        }
        match bad {
            None => Ok(()),
            Some(p) => Err(FormatError::OutsideRangeNotZero {
                index: i as u64,
                offset: self.index[i].offset,
                addr: p.addr().0,
                range: range.to_string(),
            }),
        }
    }

    /// Checks that the gaps between sections are zero: after the metadata,
    /// after the chunk stream and after the trailer.
    pub fn check_padding<R: ReadAt + ?Sized>(&self, src: &R) -> Result<(), FormatError> {
        let l = &self.superblock.layout;
        let gaps = [
            (
                "after the metadata",
                l.metadata_offset + l.metadata_len,
                l.data_offset,
            ),
            (
                "after the chunks",
                l.data_offset + l.data_len,
                l.index_offset,
            ),
            (
                "after the trailer",
                l.trailer_offset + TRAILER_SIZE as u64,
                l.image_len,
            ),
        ];
        for (what, start, end) in gaps {
            let bytes = read_region(src, "padding", start, end - start, self.source_size)?;
            if let Some(p) = crate::le::first_nonzero(&bytes) {
                return Err(FormatError::PaddingNotZero {
                    what,
                    offset: ImageOffset(start + p as u64),
                });
            }
        }
        Ok(())
    }
}

/// The layout must be the one a writer derives from its three free numbers.
fn check_layout(sb: &Superblock, size: u64) -> Result<(), FormatError> {
    let l = sb.layout;
    if l.metadata_len > MAX_METADATA_LEN {
        return Err(FormatError::TooLarge {
            what: "metadata length",
            offset: ImageOffset(sb_field::METADATA_LEN as u64),
            value: l.metadata_len,
            limit: MAX_METADATA_LEN,
        });
    }
    // Every chunk takes at least a header in the stream and an index entry.
    let max_chunks = size / (CHUNK_HEADER_SIZE + INDEX_ENTRY_SIZE) as u64;
    if l.chunk_count > max_chunks {
        return Err(FormatError::TooLarge {
            what: "chunk count",
            offset: ImageOffset(sb_field::CHUNK_COUNT as u64),
            value: l.chunk_count,
            limit: max_chunks,
        });
    }
    let Some(want) = plan_layout(l.metadata_len, l.data_len, l.chunk_count) else {
        return Err(FormatError::TooLarge {
            what: "data length",
            offset: ImageOffset(sb_field::DATA_LEN as u64),
            value: l.data_len,
            limit: size,
        });
    };
    let fields = [
        ("metadata offset", want.metadata_offset, l.metadata_offset),
        ("data offset", want.data_offset, l.data_offset),
        ("index offset", want.index_offset, l.index_offset),
        ("trailer offset", want.trailer_offset, l.trailer_offset),
        ("image length", want.image_len, l.image_len),
    ];
    for (field, expected, found) in fields {
        if expected != found {
            return Err(FormatError::mismatch(
                "superblock",
                field,
                0,
                expected,
                found,
            ));
        }
    }
    if l.image_len > size {
        return Err(FormatError::Truncated {
            what: "image",
            offset: ImageOffset(0),
            needed: l.image_len,
            available: size,
        });
    }
    Ok(())
}

fn check_trailer<R: ReadAt + ?Sized>(
    src: &R,
    sb: &Superblock,
    size: u64,
) -> Result<[u8; TRAILER_SIZE], FormatError> {
    let l = sb.layout;
    let bytes = read_region(src, "trailer", l.trailer_offset, TRAILER_SIZE as u64, size)?;
    let mut b = [0u8; TRAILER_SIZE];
    b.copy_from_slice(&bytes);
    Trailer::decode(&b, l.trailer_offset)?.check_against(&sb.uuid, &l, l.trailer_offset)?;
    Ok(b)
}

/// Reads the index and checks its CRC.
fn read_index<R: ReadAt + ?Sized>(
    src: &R,
    sb: &Superblock,
    size: u64,
) -> Result<Vec<u8>, FormatError> {
    let l = sb.layout;
    let index_len = l.chunk_count * INDEX_ENTRY_SIZE as u64;
    read_checked(
        src,
        "chunk index",
        l.index_offset,
        index_len,
        l.index_crc,
        size,
    )
}

/// Reads `len` bytes at `offset` and checks them against the CRC `crc`.
fn read_checked<R: ReadAt + ?Sized>(
    src: &R,
    what: &'static str,
    offset: u64,
    len: u64,
    crc: u32,
    size: u64,
) -> Result<Vec<u8>, FormatError> {
    let bytes = read_region(src, what, offset, len, size)?;
    let computed = crc32fast::hash(&bytes);
    if computed != crc {
        return Err(FormatError::checksum(what, offset, crc, computed));
    }
    Ok(bytes)
}

/// The superblock of an image that was committed (and maybe consumed).
fn committed_superblock<R: ReadAt + ?Sized>(src: &R) -> Result<Superblock, FormatError> {
    let sb = read_superblock(src)?;
    if sb.state == ImageState::Writing {
        return Err(FormatError::NotCommitted {
            state: sb.state.name(),
        });
    }
    Ok(sb)
}

/// The size of `src`, once the layout `sb` describes is checked against
/// it, and the metadata section, checked against its CRC.
fn metadata_section<R: ReadAt + ?Sized>(
    src: &R,
    sb: &Superblock,
) -> Result<(u64, Vec<u8>), FormatError> {
    let size = src.size().map_err(|source| FormatError::Io {
        what: "image size",
        offset: ImageOffset(0),
        source,
    })?;
    let l = sb.layout;
    check_layout(sb, size)?;
    let meta_bytes = read_checked(
        src,
        "metadata",
        l.metadata_offset,
        l.metadata_len,
        l.metadata_crc,
        size,
    )?;
    Ok((size, meta_bytes))
}

/// The resume record of the committed (or consumed) image in `src`: what a
/// normal boot reads to decide on a resume and to confine the restore
/// kernel, without the key of an encrypted image. Its bytes are checked
/// against the metadata CRC here; the image seal, which covers them, is
/// checked by whoever opens the image with its key. For a plain image it
/// is drawn from the metadata.
pub fn read_resume_record<R: ReadAt + ?Sized>(src: &R) -> Result<Metadata, FormatError> {
    let sb = committed_superblock(src)?;
    let (_, section_bytes) = metadata_section(src, &sb)?;
    MetadataSection::split(&sb, &section_bytes)?.resume_record()
}

/// Every excluded frame must be marked not stored in its chunk.
fn check_excluded(
    x: &crate::metadata::ExcludedPages,
    index: &[IndexEntry],
    sb: &Superblock,
) -> Result<(), FormatError> {
    for (i, e) in index.iter().enumerate() {
        let mask = x.mask(e.first_pfn.0, u32::from(e.page_count));
        if e.zero_bitmap & mask != mask {
            return Err(FormatError::mismatch(
                format!("index entry {i} (an excluded frame stored)"),
                "zero bitmap",
                sb.layout.index_offset + (i * INDEX_ENTRY_SIZE) as u64,
                e.zero_bitmap | mask,
                e.zero_bitmap,
            ));
        }
    }
    Ok(())
}

/// Checks the image seal of an encrypted image over its superblock
/// `sb`, metadata section, index and trailer (each read and CRC-checked
/// first, so that bit rot still reads as a checksum error); returns the
/// index bytes.
fn check_seal<R: ReadAt + ?Sized>(
    src: &R,
    sb: &Superblock,
    size: u64,
    keys: &ImageKeys,
    section_bytes: &[u8],
) -> Result<Vec<u8>, FormatError> {
    let trailer = check_trailer(src, sb, size)?;
    let index_bytes = read_index(src, sb, size)?;
    let mut seal = ImageSeal::over_metadata(keys, section_bytes);
    seal.index(&index_bytes);
    seal.trailer(&trailer).check(sb)?;
    Ok(index_bytes)
}

/// The superblock's chunk and page counts agree with the metadata's ranges.
fn check_totals(metadata: &Metadata, l: &Layout) -> Result<(), FormatError> {
    let expected_chunks = chunk_count(&metadata.ranges);
    if expected_chunks != l.chunk_count {
        return Err(FormatError::mismatch(
            "superblock",
            "chunk count",
            0,
            expected_chunks,
            l.chunk_count,
        ));
    }
    let total = metadata.ranges.total_pages();
    if total != l.total_pages {
        return Err(FormatError::mismatch(
            "superblock",
            "total pages",
            0,
            total,
            l.total_pages,
        ));
    }
    Ok(())
}

/// Index entry `e`, the `i`-th, at image offset `at`, is for the chunk
/// `spec` and lies at `next`, right after the chunk before it.
fn check_entry(
    e: &IndexEntry,
    i: usize,
    at: u64,
    spec: &ChunkSpec,
    next: u64,
) -> Result<(), FormatError> {
    let what = || format!("index entry {i}");
    if e.first_pfn != spec.first_pfn {
        return Err(FormatError::mismatch(
            what(),
            "first pfn",
            at,
            spec.first_pfn.0,
            e.first_pfn.0,
        ));
    }
    if e.page_count != spec.page_count {
        return Err(FormatError::mismatch(
            what(),
            "page count",
            at,
            spec.page_count.into(),
            e.page_count.into(),
        ));
    }
    if e.offset.0 != next {
        return Err(FormatError::mismatch(
            what(),
            "chunk offset",
            at,
            next,
            e.offset.0,
        ));
    }
    Ok(())
}

/// Decodes the index and checks it against the chunk sequence the ranges
/// imply: same frames, contiguous offsets, totals as the superblock says.
fn decode_index(
    bytes: &[u8],
    specs: &[ChunkSpec],
    sb: &Superblock,
) -> Result<Vec<IndexEntry>, FormatError> {
    let l = sb.layout;
    let mut index = Vec::with_capacity(specs.len());
    let mut next = l.data_offset;
    let mut zero_pages = 0u64;
    for (i, (raw, spec)) in bytes.chunks_exact(INDEX_ENTRY_SIZE).zip(specs).enumerate() {
        let at = l.index_offset + (i * INDEX_ENTRY_SIZE) as u64;
        let e = IndexEntry::decode_as(raw, at, sb.crypto.is_some())?;
        check_entry(&e, i, at, spec, next)?;
        next += e.encoded_len();
        zero_pages += u64::from(e.zero_bitmap.count_ones());
        index.push(e);
    }
    if next != l.data_offset + l.data_len {
        return Err(FormatError::mismatch(
            "superblock",
            "data length",
            0,
            next - l.data_offset,
            l.data_len,
        ));
    }
    if zero_pages != l.zero_pages {
        return Err(FormatError::mismatch(
            "superblock",
            "zero pages",
            0,
            zero_pages,
            l.zero_pages,
        ));
    }
    Ok(index)
}

//! The chunk codec: a chunk's pages to its header and payload and back,
//! plain or sealed, both directions side by side.
//!
//! Encoding marks all-zero pages in the bitmap and leaves them out, then
//! compresses the other pages together as one lz4 block, or keeps them raw
//! when lz4 does not make them smaller. A sealed codec then encrypts that
//! payload with AES-256-GCM, the header as associated data, and appends the
//! tag. Decoding checks the payload CRC first (so bit rot reads as a
//! checksum error, and only a deliberate change as a failed
//! authentication), then opens, decompresses, checks the contents CRC of a
//! plain chunk and puts every page in its slot.

use crate::addr::ImageOffset;
use crate::chunk::{ChunkHeader, ChunkSpec, Codec};
use crate::crypto::{ImageKeys, Nonce};
use crate::error::FormatError;
use crate::layout::{chunk_header, PAGE_SIZE, TAG_SIZE, UUID_LEN};

const ZERO_PAGE: [u8; PAGE_SIZE] = [0; PAGE_SIZE];

/// What a decode does with a chunk's zero pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZeroPages {
    /// Zero-fills their slots: the decoded chunk is its pages, whole.
    Fill,
    /// Does not fill them: they hold bytes left over in the buffer (from
    /// the decode, or from before it). For a consumer that reads the
    /// chunk's zero bitmap and writes zero pages on its own (the restore
    /// writes them straight to memory), or not at all (verify): filling a
    /// buffer with zeros nobody reads was, on a machine whose RAM is
    /// mostly free, nearly half the stores a resume made.
    Leave,
}

/// How an image's chunk payloads are encoded.
#[derive(Clone, Copy, Debug)]
pub enum ChunkCodec<'k> {
    /// Compressed, with a CRC of the stored pages.
    Plain,
    /// Compressed, then sealed under the image's data key.
    Sealed(&'k ImageKeys),
}

/// A chunk ready to be written: its header and payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedChunk {
    /// The header (its `seq` and `uuid` as given to [`ChunkCodec::encode`]).
    pub header: ChunkHeader,
    /// The payload bytes.
    pub payload: Vec<u8>,
}

impl ChunkCodec<'_> {
    /// The most a chunk can add to its pages on disk: its header, and
    /// when `sealed` the tag after its payload. The payload itself is at
    /// most the pages raw: lz4 is kept only when it is smaller.
    pub const fn max_overhead(sealed: bool) -> u64 {
        let tag = if sealed { TAG_SIZE } else { 0 };
        (chunk_header::SIZE + tag) as u64
    }

    /// Encodes the pages of one chunk, the `seq`-th of the image `uuid`.
    /// `pages` holds `spec.page_count` whole pages back to back.
    pub fn encode(
        &self,
        spec: &ChunkSpec,
        seq: u32,
        uuid: [u8; UUID_LEN],
        pages: &[u8],
    ) -> EncodedChunk {
        self.encode_leaving_out(spec, seq, uuid, pages, 0)
    }

    /// As [`encode`](Self::encode), with the pages whose bits are set in
    /// `left_out` (bit i for page i) encoded as zero pages without being
    /// read: a filtered dump's excluded frames, which the metadata tells
    /// apart from zero pages. A mapped source never touches them.
    pub fn encode_leaving_out(
        &self,
        spec: &ChunkSpec,
        seq: u32,
        uuid: [u8; UUID_LEN],
        pages: &[u8],
        left_out: u64,
    ) -> EncodedChunk {
        let mut c = compress(spec, seq, uuid, pages, left_out);
        if let ChunkCodec::Sealed(keys) = self {
            seal(keys, &mut c);
        }
        c
    }

    /// Checks a chunk's payload against its header (already checked
    /// against the index) and decodes its pages into `out`
    /// (`page_count` whole pages), the zero pages filled or left as
    /// `zeros` says; every check is the same either way. `at` is where
    /// the chunk lies and `index` its position, for messages; `scratch`
    /// is reused between calls.
    #[allow(clippy::too_many_arguments)]
    pub fn decode(
        &self,
        header: &ChunkHeader,
        at: ImageOffset,
        index: u64,
        payload: &[u8],
        out: &mut [u8],
        scratch: &mut Vec<u8>,
        zeros: ZeroPages,
    ) -> Result<(), FormatError> {
        let fill = zeros == ZeroPages::Fill;
        let payload_crc = check_payload(header, at, index, payload)?;
        let raw_len = header.raw_len();
        match self {
            ChunkCodec::Plain => match header.codec {
                Codec::Zero if fill => out.fill(0),
                Codec::Zero => {}
                Codec::Raw => {
                    // The payload is the contents: its CRC, just checked,
                    // is theirs.
                    contents_crc_matches(header, at, index, payload_crc)?;
                    out[..raw_len].copy_from_slice(payload);
                }
                Codec::Lz4 => {
                    decompress_exact(payload, &mut out[..raw_len], index, at)?;
                    check_contents(header, at, index, &out[..raw_len])?;
                }
            },
            ChunkCodec::Sealed(keys) => {
                let Some(body) = payload.len().checked_sub(TAG_SIZE) else {
                    // A zero chunk: nothing stored, nothing sealed; its header
                    // and index entry are covered by the image seal.
                    if fill {
                        out.fill(0);
                    }
                    return Ok(());
                };
                let (cipher, tag) = payload.split_at(body);
                let auth = || FormatError::Authentication {
                    what: format!("chunk {index}"),
                    offset: at,
                };
                match header.codec {
                    Codec::Zero if fill => out.fill(0),
                    Codec::Zero => {}
                    Codec::Raw => {
                        out[..raw_len].copy_from_slice(cipher);
                        if !open(keys, header, &mut out[..raw_len], tag) {
                            return Err(auth());
                        }
                    }
                    Codec::Lz4 => {
                        scratch.clear();
                        scratch.extend_from_slice(cipher);
                        if !open(keys, header, scratch, tag) {
                            return Err(auth());
                        }
                        decompress_exact(scratch, &mut out[..raw_len], index, at)?;
                    }
                }
            }
        }
        if header.codec != Codec::Zero && header.zero_bitmap != 0 {
            scatter_in_place(header.zero_bitmap, out, zeros);
        }
        Ok(())
    }
}

/// The plain encoding: the zero bitmap (the pages of `left_out` set
/// without a look), then lz4 or raw.
fn compress(
    spec: &ChunkSpec,
    seq: u32,
    uuid: [u8; UUID_LEN],
    pages: &[u8],
    left_out: u64,
) -> EncodedChunk {
    debug_assert_eq!(pages.len(), spec.page_count as usize * PAGE_SIZE);
    let mut zero_bitmap = left_out & crate::chunk::page_mask(spec.page_count);
    for (i, page) in pages.chunks_exact(PAGE_SIZE).enumerate() {
        if zero_bitmap & (1 << i) == 0 && page == ZERO_PAGE {
            zero_bitmap |= 1 << i;
        }
    }
    let header = |codec, stored_len, payload_crc, data_crc| ChunkHeader {
        codec,
        page_count: spec.page_count,
        first_pfn: spec.first_pfn,
        zero_bitmap,
        stored_len,
        payload_crc,
        data_crc,
        seq,
        uuid,
    };
    if zero_bitmap == crate::chunk::page_mask(spec.page_count) {
        return EncodedChunk {
            header: header(Codec::Zero, 0, 0, 0),
            payload: Vec::new(),
        };
    }
    SCRATCH.with_borrow_mut(|(gathered, out)| {
        let raw: &[u8] = if zero_bitmap == 0 {
            pages
        } else {
            gathered.clear();
            for (i, page) in pages.chunks_exact(PAGE_SIZE).enumerate() {
                if zero_bitmap & (1 << i) == 0 {
                    gathered.extend_from_slice(page);
                }
            }
            gathered
        };
        let data_crc = crc32fast::hash(raw);
        // Grows once per thread; lz4 writes at most this much.
        let max = lz4_flex::block::get_maximum_output_size(raw.len());
        if out.len() < max {
            out.resize(max, 0);
        }
        let compressed = match lz4_flex::block::compress_into(raw, out) {
            Ok(n) => &out[..n],
            // Not expected with the output sized as lz4_flex asks.
            Err(_) => {
                *out = lz4_flex::block::compress(raw);
                &out[..]
            }
        };
        let (codec, payload, payload_crc) = if compressed.len() < raw.len() {
            let crc = crc32fast::hash(compressed);
            (Codec::Lz4, compressed.to_vec(), crc)
        } else {
            // A raw payload is the data itself: its CRC is the data CRC.
            (Codec::Raw, raw.to_vec(), data_crc)
        };
        EncodedChunk {
            header: header(codec, payload.len() as u32, payload_crc, data_crc),
            payload,
        }
    })
}

thread_local! {
    /// Each encoding thread's buffers: a chunk's gathered non-zero pages
    /// and its lz4 output. Kept between chunks, because a new 256 KiB
    /// buffer is fresh memory that faults in page by page (on a filtered
    /// dump, most of the system time of a collect).
    static SCRATCH: std::cell::RefCell<(Vec<u8>, Vec<u8>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// The associated data of a sealed chunk: its header with the payload CRC
/// (which covers the ciphertext, so follows the sealing) and the header
/// CRC zero.
fn chunk_aad(h: &ChunkHeader) -> [u8; chunk_header::SIZE] {
    let mut b = h.encode();
    b[chunk_header::PAYLOAD_CRC..chunk_header::PAYLOAD_CRC + 4].fill(0);
    b[chunk_header::CRC..chunk_header::CRC + 4].fill(0);
    b
}

/// Seals an encoded chunk in place: the payload is encrypted with the
/// header as associated data and gains a tag; the contents CRC (over
/// plaintext) becomes zero and the payload CRC covers the ciphertext.
/// An all-zero chunk stores nothing and stays as it is.
fn seal(keys: &ImageKeys, c: &mut EncodedChunk) {
    c.header.data_crc = 0;
    if c.header.codec == Codec::Zero {
        return;
    }
    c.header.stored_len += TAG_SIZE as u32;
    c.header.payload_crc = 0;
    let aad = chunk_aad(&c.header);
    keys.seal_in_place(Nonce::Chunk(c.header.seq), &aad, &mut c.payload);
    c.header.payload_crc = crc32fast::hash(&c.payload);
}

/// Opens a sealed chunk's body in place; false when it fails
/// authentication.
fn open(keys: &ImageKeys, h: &ChunkHeader, body: &mut [u8], tag: &[u8]) -> bool {
    keys.open_in_place(Nonce::Chunk(h.seq), &chunk_aad(h), body, tag)
}

/// Checks a payload's length and CRC against its header; returns the CRC.
fn check_payload(
    h: &ChunkHeader,
    at: ImageOffset,
    index: u64,
    payload: &[u8],
) -> Result<u32, FormatError> {
    if payload.len() != h.stored_len as usize {
        return Err(FormatError::mismatch(
            format!("chunk {index}"),
            "payload length",
            at.0,
            h.stored_len.into(),
            payload.len() as u64,
        ));
    }
    let computed = crc32fast::hash(payload);
    if computed != h.payload_crc {
        return Err(FormatError::checksum(
            format!("chunk {index} payload"),
            at.0,
            h.payload_crc,
            computed,
        ));
    }
    Ok(computed)
}

/// Checks the stored pages of a plain chunk against its contents CRC.
fn check_contents(
    h: &ChunkHeader,
    at: ImageOffset,
    index: u64,
    raw: &[u8],
) -> Result<(), FormatError> {
    contents_crc_matches(h, at, index, crc32fast::hash(raw))
}

/// Compares `computed`, the CRC of a plain chunk's stored pages, with its
/// contents CRC.
fn contents_crc_matches(
    h: &ChunkHeader,
    at: ImageOffset,
    index: u64,
    computed: u32,
) -> Result<(), FormatError> {
    if computed == h.data_crc {
        Ok(())
    } else {
        Err(FormatError::checksum(
            format!("chunk {index} contents"),
            at.0,
            h.data_crc,
            computed,
        ))
    }
}

/// Decompresses an lz4 block into exactly `target.len()` bytes.
fn decompress_exact(
    src: &[u8],
    target: &mut [u8],
    index: u64,
    at: ImageOffset,
) -> Result<(), FormatError> {
    let n = lz4_flex::block::decompress_into(src, target).map_err(|e| FormatError::Decompress {
        index,
        offset: at,
        reason: e.to_string(),
    })?;
    if n != target.len() {
        return Err(FormatError::Decompress {
            index,
            offset: at,
            reason: format!("produced {n} bytes, expected {}", target.len()),
        });
    }
    Ok(())
}

/// Moves the stored pages, packed at the front of `out`, to their slots
/// and zero-fills the others. Working from the last slot down, a page is
/// never overwritten before it is moved (its slot is at or after it).
fn scatter_in_place(zero_bitmap: u64, out: &mut [u8], zeros: ZeroPages) {
    let slots = out.len() / PAGE_SIZE;
    let mut stored = slots - zero_bitmap.count_ones() as usize;
    for slot in (0..slots).rev() {
        let at = slot * PAGE_SIZE;
        if zero_bitmap & (1 << slot) != 0 {
            if zeros == ZeroPages::Fill {
                out[at..at + PAGE_SIZE].fill(0);
            }
        } else {
            stored -= 1;
            if stored != slot {
                out.copy_within(stored * PAGE_SIZE..(stored + 1) * PAGE_SIZE, at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::Pfn;
    use crate::chunk::IndexEntry;
    use crate::crypto::{Kdf, Secret};
    use proptest::prelude::*;

    fn spec(first: u64, n: u8) -> ChunkSpec {
        ChunkSpec {
            first_pfn: Pfn(first),
            page_count: n,
            range: 0,
        }
    }

    fn keys(uuid: [u8; 16]) -> ImageKeys {
        let s = Secret::key_file(vec![7; 32]).unwrap();
        ImageKeys::derive(&s, &Kdf::KeyFile, &[1; 32], &uuid).unwrap()
    }

    /// Encodes, passes the header and its index entry through their
    /// encodings, and decodes.
    fn through(codec: ChunkCodec, c: &EncodedChunk) -> Result<Vec<u8>, FormatError> {
        let sealed = matches!(codec, ChunkCodec::Sealed(_));
        let h = ChunkHeader::decode_as(&c.header.encode(), 0, sealed)?;
        assert_eq!(h, c.header);
        let e = IndexEntry::decode_as(&h.index_entry(ImageOffset(4096)).encode(), 0, sealed)?;
        assert_eq!(e, h.index_entry(ImageOffset(4096)));
        let mut out = vec![0xee; usize::from(h.page_count) * PAGE_SIZE];
        codec.decode(
            &h,
            e.offset,
            0,
            &c.payload,
            &mut out,
            &mut Vec::new(),
            ZeroPages::Fill,
        )?;
        Ok(out)
    }

    fn round_trip(pages: &[u8], n: u8) -> EncodedChunk {
        let c = ChunkCodec::Plain.encode(&spec(64, n), 3, [9; 16], pages);
        assert_eq!(through(ChunkCodec::Plain, &c).unwrap(), pages);
        c
    }

    fn page_kinds(kinds: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, k) in kinds.iter().enumerate() {
            let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            out.extend((0..PAGE_SIZE).map(|j| match k % 3 {
                0 => 0,
                1 => (j % 13) as u8,
                _ => {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                }
            }));
        }
        out
    }

    fn sealed(pages: &[u8], seq: u32, k: &ImageKeys) -> EncodedChunk {
        let n = (pages.len() / PAGE_SIZE) as u8;
        ChunkCodec::Sealed(k).encode(&spec(128, n), seq, [3; 16], pages)
    }

    #[test]
    fn left_out_pages_encode_as_zero_pages_without_being_read() {
        // Pages 1 and 3 hold data but are left out; page 2 is zero.
        let pages = page_kinds(&[1, 1, 0, 2, 1]);
        let left_out = 0b01010;
        for codec in [ChunkCodec::Plain, ChunkCodec::Sealed(&keys([5; 16]))] {
            let c = codec.encode_leaving_out(&spec(64, 5), 3, [5; 16], &pages, left_out);
            assert_eq!(c.header.zero_bitmap, 0b01110);
            let mut zeroed = pages.clone();
            zeroed[PAGE_SIZE..2 * PAGE_SIZE].fill(0);
            zeroed[3 * PAGE_SIZE..4 * PAGE_SIZE].fill(0);
            assert_eq!(through(codec, &c).unwrap(), zeroed);
            let same = codec.encode(&spec(64, 5), 3, [5; 16], &zeroed);
            assert_eq!(same.header.zero_bitmap, c.header.zero_bitmap);
            if let ChunkCodec::Plain = codec {
                assert_eq!(same, c);
            }
        }
        // Bits past the chunk's pages change nothing; all left out stores nothing.
        let c = ChunkCodec::Plain.encode_leaving_out(&spec(64, 5), 3, [9; 16], &pages, !0b11111);
        assert_eq!(
            c,
            ChunkCodec::Plain.encode(&spec(64, 5), 3, [9; 16], &pages)
        );
        let c = ChunkCodec::Plain.encode_leaving_out(&spec(64, 5), 3, [9; 16], &pages, u64::MAX);
        assert_eq!((c.header.codec, c.payload.len()), (Codec::Zero, 0));
    }

    #[test]
    fn scatter_in_place_matches_the_bitmap() {
        let mut out = vec![0u8; 4 * PAGE_SIZE];
        out[..PAGE_SIZE].fill(1);
        out[PAGE_SIZE..2 * PAGE_SIZE].fill(2);
        out[2 * PAGE_SIZE..].fill(9);
        let mut left = out.clone();
        scatter_in_place(0b1010, &mut out, ZeroPages::Fill);
        let firsts: Vec<u8> = out.chunks(PAGE_SIZE).map(|p| p[0]).collect();
        assert_eq!(firsts, [1, 0, 2, 0]);
        assert!(out.chunks(PAGE_SIZE).all(|p| p.iter().all(|&b| b == p[0])));
        // Left: the stored pages in the same slots, the zero slots as they were.
        scatter_in_place(0b1010, &mut left, ZeroPages::Leave);
        let firsts: Vec<u8> = left.chunks(PAGE_SIZE).map(|p| p[0]).collect();
        assert_eq!(firsts, [1, 2, 2, 9]);
    }

    #[test]
    fn codecs_are_chosen_by_content() {
        let zero = vec![0u8; 4 * PAGE_SIZE];
        assert_eq!(round_trip(&zero, 4).header.codec, Codec::Zero);
        let text: Vec<u8> = (0..4 * PAGE_SIZE).map(|i| b"kjump "[i % 6]).collect();
        assert_eq!(round_trip(&text, 4).header.codec, Codec::Lz4);
        let mut x = 0x1234_5678_9abc_def0u64;
        let random: Vec<u8> = (0..4 * PAGE_SIZE)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let c = round_trip(&random, 4);
        assert_eq!(c.header.codec, Codec::Raw);
        let mut mixed = random.clone();
        mixed[PAGE_SIZE..2 * PAGE_SIZE].fill(0);
        let c = round_trip(&mixed, 4);
        assert_eq!(c.header.zero_bitmap, 0b10);
        assert_eq!(c.payload.len(), 3 * PAGE_SIZE);
    }

    #[test]
    fn zero_pages_are_left_or_filled_as_asked() {
        // Pages: text, zero, text, zero (a mixed chunk), and a zero chunk.
        for (pages, n) in [(page_kinds(&[1, 0, 1, 0]), 4u8), (page_kinds(&[0, 0]), 2)] {
            let c = ChunkCodec::Plain.encode(&spec(64, n), 0, [0; 16], &pages);
            let decode = |out: &mut [u8], how| {
                ChunkCodec::Plain.decode(
                    &c.header,
                    ImageOffset(0),
                    0,
                    &c.payload,
                    out,
                    &mut Vec::new(),
                    how,
                )
            };
            // Left: the stored pages in their slots; a zero page's slot
            // holds what the decode left there (a zero chunk's, what the
            // buffer held).
            let mut left = vec![0xee; pages.len()];
            decode(&mut left, ZeroPages::Leave).unwrap();
            let stored = left.chunks(PAGE_SIZE).zip(pages.chunks(PAGE_SIZE));
            for (i, (got, want)) in stored.enumerate() {
                if c.header.zero_bitmap >> i & 1 == 0 {
                    assert_eq!(got, want, "stored page {i}");
                }
            }
            if c.header.codec == Codec::Zero {
                assert!(left.iter().all(|&b| b == 0xee), "a zero chunk was written");
            } else {
                assert!(left != pages, "the zero pages were filled");
            }
            let mut filled = vec![0xee; pages.len()];
            decode(&mut filled, ZeroPages::Fill).unwrap();
            assert_eq!(filled, pages);
        }
    }

    #[test]
    fn a_raw_chunk_is_checked_against_its_contents_crc() {
        let random = page_kinds(&[2, 2]);
        let mut c = ChunkCodec::Plain.encode(&spec(64, 2), 0, [0; 16], &random);
        assert_eq!(c.header.codec, Codec::Raw);
        assert_eq!(c.header.payload_crc, crc32fast::hash(&random));
        assert_eq!(c.header.data_crc, c.header.payload_crc);
        // A header whose payload CRC holds and whose contents CRC does not
        // (as a writer that checksummed other bytes would leave it).
        c.header.data_crc ^= 1;
        let err = through(ChunkCodec::Plain, &c).unwrap_err();
        assert!(
            matches!(&err, FormatError::Checksum { what, .. } if what.contains("contents")),
            "{err}"
        );
    }

    #[test]
    fn corrupt_payload_is_caught_by_crc() {
        let text: Vec<u8> = (0..2 * PAGE_SIZE).map(|i| (i % 7) as u8).collect();
        let mut c = ChunkCodec::Plain.encode(&spec(64, 2), 0, [0; 16], &text);
        c.payload[3] ^= 1;
        let mut out = vec![0; text.len()];
        let err = ChunkCodec::Plain
            .decode(
                &c.header,
                ImageOffset(0),
                0,
                &c.payload,
                &mut out,
                &mut Vec::new(),
                ZeroPages::Fill,
            )
            .unwrap_err();
        assert!(matches!(err, FormatError::Checksum { .. }), "{err}");
    }

    proptest! {
        #[test]
        fn sealed_chunks_round_trip(kinds in proptest::collection::vec(0u8..3, 1..=64), seq: u32) {
            let k = keys([3; 16]);
            let pages = page_kinds(&kinds);
            let c = sealed(&pages, seq, &k);
            prop_assert_eq!(c.header.data_crc, 0);
            prop_assert_eq!(through(ChunkCodec::Sealed(&k), &c).unwrap(), pages);
        }
    }

    #[test]
    fn any_change_to_a_sealed_chunk_fails_authentication() {
        let k = keys([3; 16]);
        let open = |c: &EncodedChunk, k: &ImageKeys| through(ChunkCodec::Sealed(k), c);
        let pages = page_kinds(&[1, 0, 2, 1]);
        let c = sealed(&pages, 5, &k);
        assert_eq!(c.header.codec, Codec::Lz4);
        // A change the CRC does not see (the CRC is updated with it).
        for at in [0, c.payload.len() / 2, c.payload.len() - 1] {
            let mut d = c.clone();
            d.payload[at] ^= 0x40;
            d.header.payload_crc = crc32fast::hash(&d.payload);
            let e = open(&d, &k).unwrap_err();
            assert!(matches!(e, FormatError::Authentication { .. }), "{e}");
        }
        // The header is associated data: another sequence number or frame.
        let mut d = c.clone();
        d.header.seq = 6;
        assert!(matches!(
            open(&d, &k),
            Err(FormatError::Authentication { .. })
        ));
        let mut d = c.clone();
        d.header.first_pfn = Pfn(192);
        assert!(matches!(
            open(&d, &k),
            Err(FormatError::Authentication { .. })
        ));
        // Another image's key (another uuid), same secret and salt.
        assert!(matches!(
            open(&c, &keys([4; 16])),
            Err(FormatError::Authentication { .. })
        ));
    }
}

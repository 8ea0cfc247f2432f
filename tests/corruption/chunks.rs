//! Index entries and chunks behind their CRCs, and pieces of another image.

use kjump_image_format::{BLOCK_SIZE, CHUNK_HEADER_SIZE, TRAILER_SIZE};

use crate::expect;
use crate::fixture::{self, entry, hdr, image_a, image_b, Fixture};

/// Writes `bytes` into index entry `i` at `field`, re-signs the index and
/// asserts the outcome.
fn check_entry(f: &Fixture, name: &str, i: usize, field: usize, bytes: &[u8], want: &str) {
    let edit = |b: &mut Vec<u8>| {
        let at = f.entry_at(i) + field;
        b[at..at + bytes.len()].copy_from_slice(bytes);
        f.resign_index(b);
    };
    expect(f, name, edit, want);
}

#[test]
fn index_entries_are_checked_behind_the_crc() {
    let f = image_a();
    let e = |i: usize| f.entry_at(i);
    let h = |i: usize| f.chunk_at(i) as u64;
    let c = |name, i, field, bytes: &[u8], want: &str| check_entry(f, name, i, field, bytes, want);
    let iv =
        |i, field: &str, v: u64| format!("InvalidValue(index entry.{field}@{:#x} {v:#x})", e(i));
    let mm = |i, field: &str, expected: u64, found: u64| {
        format!(
            "Mismatch(index entry {i}.{field}@{:#x} expected {expected:#x} found {found:#x})",
            e(i)
        )
    };
    c(
        "first pfn",
        2,
        entry::FIRST_PFN,
        &[1, 1],
        &mm(2, "first pfn", 0x100, 0x101),
    );
    let v = h(3) + 1;
    c(
        "chunk offset",
        3,
        entry::OFFSET,
        &v.to_le_bytes(),
        &mm(3, "chunk offset", v - 1, v),
    );
    let want = iv(1, "zero bitmap", 0x400);
    c(
        "bitmap beyond page count",
        1,
        entry::ZERO_BITMAP + 1,
        &[4],
        &want,
    );
    c(
        "page count 63",
        3,
        entry::PAGE_COUNT,
        &[63],
        &mm(3, "page count", 64, 63),
    );
    c(
        "page count 0",
        3,
        entry::PAGE_COUNT,
        &[0],
        &iv(3, "page count", 0),
    );
    c(
        "page count 65",
        3,
        entry::PAGE_COUNT,
        &[65],
        &iv(3, "page count", 65),
    );
    c("codec 7", 3, entry::CODEC, &[7], &iv(3, "codec", 7));
    let v = f.index[4].stored_len + 1;
    let want = iv(4, "stored length", v.into());
    c(
        "raw stored length",
        4,
        entry::STORED_LEN,
        &v.to_le_bytes(),
        &want,
    );
    let v = f.index[3].stored_len - 1;
    let want = mm(4, "chunk offset", h(4) - 1, h(4));
    c(
        "lz4 stored length one short",
        3,
        entry::STORED_LEN,
        &v.to_le_bytes(),
        &want,
    );
    let want = format!("ReservedNotZero(index entry@{:#x} 0x1)", e(2) + 38);
    c("reserved", 2, entry::RESERVED, &[1], &want);
    let want = format!("ReservedNotZero(index entry@{:#x} 0x8000)", e(2) + 38);
    c("reserved high", 2, entry::RESERVED + 1, &[0x80], &want);
    let v = f.index[0].zero_bitmap & !(1 << 15);
    let z = f.layout.zero_pages;
    let want = format!(
        "Mismatch(superblock.zero pages@0x0 expected {:#x} found {z:#x})",
        z - 1
    );
    c(
        "one zero page fewer",
        0,
        entry::ZERO_BITMAP,
        &v.to_le_bytes(),
        &want,
    );
    let want = format!(
        "Mismatch(chunk 0 header.data crc@{:#x} expected 0x0 found {:#x})",
        h(0),
        f.index[0].data_crc
    );
    c(
        "data crc unlike the header's",
        0,
        hdr::DATA_CRC,
        &[0; 4],
        &want,
    );
}

/// Writes `bytes` into chunk `i`'s header at `field`, re-signs the header
/// and asserts the outcome.
fn check_header(f: &Fixture, name: &str, i: usize, field: usize, bytes: &[u8], want: &str) {
    let edit = |b: &mut Vec<u8>| {
        let at = f.chunk_at(i) + field;
        b[at..at + bytes.len()].copy_from_slice(bytes);
        f.resign_header(b, i);
    };
    expect(f, name, edit, want);
}

#[test]
fn chunk_headers_are_checked_behind_their_crc() {
    let f = image_a();
    let h = |i: usize| f.chunk_at(i);
    let c = |name, i, field, bytes: &[u8], want: &str| check_header(f, name, i, field, bytes, want);
    let iv =
        |i, field: &str, v: u64| format!("InvalidValue(chunk header.{field}@{:#x} {v:#x})", h(i));
    let want = format!(
        "Mismatch(chunk 3 header.sequence@{:#x} expected 0x3 found 0x9)",
        h(3)
    );
    c("sequence", 3, hdr::SEQ, &[9], &want);
    c(
        "uuid",
        2,
        hdr::UUID,
        b"X",
        &format!("ForeignUuid(chunk 2 header@{:#x})", h(2)),
    );
    let want = format!("ReservedNotZero(chunk header@{:#x} 0x1)", h(0) + 6);
    c("reserved a", 0, hdr::RESERVED_A, &[1], &want);
    let want = format!("ReservedNotZero(chunk header@{:#x} 0x4)", h(0) + 59);
    c("reserved b", 0, hdr::RESERVED_B + 3, &[4], &want);
    c("codec", 1, hdr::CODEC, &[3], &iv(1, "codec", 3));
    c(
        "page count",
        1,
        hdr::PAGE_COUNT,
        &[0],
        &iv(1, "page count", 0),
    );
    c(
        "bitmap beyond page count",
        1,
        hdr::ZERO_BITMAP,
        &[0x20],
        &iv(1, "zero bitmap", 0x20),
    );
    c(
        "zero chunk with a payload",
        2,
        hdr::STORED_LEN,
        &[1],
        &iv(2, "stored length", 1),
    );
    let want = format!(
        "Mismatch(chunk 1 header.first pfn@{:#x} expected 0x40 found 0x41)",
        h(1)
    );
    c(
        "first pfn unlike the index's",
        1,
        hdr::FIRST_PFN,
        &[0x41],
        &want,
    );
}

fn payload(f: &Fixture, i: usize) -> std::ops::Range<usize> {
    let start = f.chunk_at(i) + CHUNK_HEADER_SIZE;
    start..start + f.index[i].stored_len as usize
}

/// Payloads whose CRC is made to match: what decompression, the content CRC
/// and the range edges still catch.
#[test]
fn chunk_payloads_are_checked_behind_their_crc() {
    let f = image_a();
    let h = |i: usize| f.chunk_at(i);
    let zeros = |b: &mut Vec<u8>| {
        b[payload(f, 3)].fill(0);
        f.resign_payload(b, 3);
    };
    expect(
        f,
        "lz4 payload of zeros",
        zeros,
        &format!("Decompress(chunk 3@{:#x})", h(3)),
    );
    // One run of literals shorter than the chunk: it decodes, to too few bytes.
    let mut b = f.copy();
    let p = payload(f, 3);
    let (k, r) = ((p.len() - 17) / 256, (p.len() - 17) % 256);
    assert!(r < 255, "pick another payload length");
    b[p.start] = 0xf0;
    b[p.start + 1..p.start + 1 + k].fill(255);
    b[p.start + 1 + k] = r as u8;
    f.resign_payload(&mut b, 3);
    let e = fixture::open_and_verify(&b).expect_err("short lz4 output");
    assert_eq!(fixture::sig(&e), format!("Decompress(chunk 3@{:#x})", h(3)));
    let want = format!(
        "produced {} bytes, expected {}",
        15 + 255 * k + r,
        64 * 4096
    );
    assert!(e.to_string().contains(&want), "{e}");
    let literal = |b: &mut Vec<u8>| {
        let p = payload(f, 0);
        let at = p.start + first_literal(&b[p]);
        b[at] ^= 1;
        f.resign_payload(b, 0);
    };
    let want = format!("Checksum(chunk 0 contents@{:#x})", h(0));
    expect(f, "lz4 literal changed", literal, &want);
    let data_crc = |b: &mut Vec<u8>| f.set_chunk_crc(b, 4, hdr::DATA_CRC, f.index[4].data_crc ^ 1);
    expect(
        f,
        "raw data crc",
        data_crc,
        &format!("Checksum(chunk 4 contents@{:#x})", h(4)),
    );
    // Bytes of the unaligned range's first and last pages that lie outside
    // it, made nonzero with every CRC fixed.
    for (at, page) in [(0, 0x40000), (f.index[1].stored_len as usize - 1, 0x43000)] {
        let outside = |b: &mut Vec<u8>| {
            let p = payload(f, 1);
            b[p.start + at] = 0x77;
            let data = crc32fast::hash(&b[p]);
            f.set_chunk_crc(b, 1, hdr::DATA_CRC, data);
            f.resign_payload(b, 1);
        };
        let want = format!(
            "OutsideRangeNotZero(chunk 1@{:#x} page {page:#x} of 0x40010-0x43fef)",
            h(1)
        );
        expect(f, "nonzero outside the range", outside, &want);
    }
}

/// Where the first literal byte of an lz4 block is (after the token and
/// any length bytes).
fn first_literal(block: &[u8]) -> usize {
    assert!(block[0] >> 4 > 0, "the block starts with literals");
    let mut at = 1;
    if block[0] >> 4 == 15 {
        while block[at] == 255 {
            at += 1;
        }
        at += 1;
    }
    at
}

/// The same memory captured twice gives two images that differ only in
/// their uuid: pieces of one never pass in the other.
#[test]
fn pieces_of_another_image_are_refused() {
    let (a, b) = (image_a(), image_b());
    assert_eq!(a.layout.index_offset, b.layout.index_offset);
    assert_eq!(a.index, b.index);
    // Copies each `(start, len)` of image B over image A.
    let splice = |name: &str, spans: &[(usize, usize)], want: &str| {
        let edit = |x: &mut Vec<u8>| {
            for &(start, len) in spans {
                x[start..start + len].copy_from_slice(&b.bytes[start..start + len]);
            }
        };
        expect(a, name, edit, want);
    };
    for i in 0..a.index.len() {
        let h = a.chunk_at(i);
        let want = format!("ForeignUuid(chunk {i} header@{h:#x})");
        splice("chunk", &[(h, a.index[i].encoded_len() as usize)], &want);
    }
    let t = a.trailer_at();
    let want = format!("ForeignUuid(trailer@{t:#x})");
    splice("trailer", &[(t, TRAILER_SIZE)], &want);
    splice("superblock", &[(0, BLOCK_SIZE)], &want);
    let ix = a.layout.index_offset as usize;
    let (m, data) = (a.meta_at(), a.layout.data_offset as usize);
    let spans = [(ix, t - ix), (m, data - m)];
    splice("index and metadata carry no identity", &spans, "ok");
}

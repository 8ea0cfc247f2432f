//! Negative tests of the image format: every structure of a small committed
//! image is damaged in turn and the exact `FormatError` is asserted, after
//! one flipped byte, after a cut, and after a change re-signed with fresh
//! CRCs so that it reaches the check behind the checksum. Nothing may pass
//! and nothing may panic.
//!
//! The image (84 KiB from 624 KiB of memory in three ranges, one unaligned
//! at both ends; five chunks: lz4 with and without zero pages, raw with and
//! without zero pages, all zero) is captured once per test process with the
//! writer library (`fixture`). `superblock`, `metadata` and `chunks` re-sign
//! their edits; `cli` runs the `kjump` binary on damaged images and the
//! writer's failure paths on a full tmpfs and a small loop device (as root).

#[path = "corruption/chunks.rs"]
mod chunks;
#[path = "corruption/cli.rs"]
mod cli;
mod common;
#[path = "corruption/fixture.rs"]
mod fixture;
#[path = "corruption/metadata.rs"]
mod metadata;
#[path = "corruption/superblock.rs"]
mod superblock;

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};

use fixture::{entry, hdr, image_a, outcome, put_u32, records, sb, trl, Fixture, CODECS};
use kjump_image_format::reader::read_superblock;
use kjump_image_format::{
    ImageState, Superblock, ARCH_NAME, BLOCK_SIZE, CHUNK_HEADER_SIZE, TRAILER_SIZE,
};

/// Applies `edit` to a copy of image A and asserts the outcome.
fn expect(f: &Fixture, name: &str, edit: impl FnOnce(&mut Vec<u8>), want: &str) {
    let mut b = f.copy();
    edit(&mut b);
    assert_eq!(outcome(&b), want, "{name}");
}

#[test]
fn fixture_is_whole_and_has_every_kind_of_chunk() {
    let f = image_a();
    assert_eq!(outcome(&f.bytes), "ok");
    let codecs: Vec<_> = f.index.iter().map(|e| e.codec).collect();
    assert_eq!(codecs, CODECS);
    assert_ne!(f.index[0].zero_bitmap, 0, "lz4 chunk with zero pages");
    assert_ne!(f.index[4].zero_bitmap, 0, "raw chunk with zero pages");
    for (what, start, end) in f.gaps() {
        assert!(start < end, "the fixture has no gap {what}");
    }
    assert!(f.bytes.len() <= 256 << 10, "{} bytes", f.bytes.len());
}

/// Flips bit 0 of the byte at `at` in a copy of image A and asserts the
/// outcome.
fn flip(f: &Fixture, name: &str, at: usize, want: &str) {
    expect(f, &format!("{name} at {at:#x}"), |b| b[at] ^= 1, want);
}

/// One flipped byte in each field of the superblock, the metadata and the
/// gaps, with the error written out by hand.
#[test]
fn one_flip_in_each_field_of_the_superblock_and_metadata() {
    let f = image_a();
    let c = |name, at, want: &str| flip(f, name, at, want);
    c("magic", 3, "BadMagic(superblock@0x0)");
    let mut arch = ARCH_NAME.as_bytes().to_vec();
    arch[1] ^= 1;
    let arch = String::from_utf8(arch).expect("an ascii name");
    c("architecture", 9, &format!("WrongArchitecture({arch})"));
    let minor = kjump_image_format::superblock::VERSION_MINOR;
    c(
        "major version",
        sb::MAJOR,
        &format!("UnsupportedVersion(0.{minor})"),
    );
    let fields = [
        ("minor version", sb::MINOR),
        ("size", sb::SIZE_FIELD),
        ("incompat flags", sb::INCOMPAT),
        ("compat flags", sb::COMPAT + 7),
        ("page size", sb::PAGE_SIZE + 1),
        ("state", sb::STATE),
        ("uuid", sb::UUID + 15),
        ("capture time", sb::CAPTURE_TIME),
        ("metadata crc", sb::METADATA_CRC),
        ("data length", sb::DATA_LEN),
        ("zero pages", sb::ZERO_PAGES),
        ("first reserved byte", sb::RESERVED),
        ("last reserved byte", sb::CRC - 1),
        ("crc", sb::CRC + 3),
    ];
    for (name, at) in fields {
        c(name, at, "Checksum(superblock@0x0)");
    }
    for at in [512, 2048, 4095] {
        let want = format!("PaddingNotZero(after the superblock@{at:#x})");
        c("superblock padding", at, &want);
    }
    let m = f.meta_at();
    let recs = records(&f.bytes, m, f.layout.metadata_len as usize);
    let (src, _, src_len) = *recs.iter().find(|r| r.1 == 7).expect("source record");
    assert_ne!(src_len % 8, 0, "the source record needs padding");
    let want = format!("Checksum(metadata@{m:#x})");
    c("record tag", m, &want);
    c("record flags", m + 2, &want);
    c("record length", m + 4, &want);
    c("record value", m + 8, &want);
    c("source value", src + 8, &want);
    c("record padding", src + 8 + src_len, &want);
    c(
        "last metadata byte",
        m + f.layout.metadata_len as usize - 1,
        &want,
    );
    for (what, start, end) in f.gaps() {
        for at in [start, end - 1] {
            c(what, at, &format!("PaddingNotZero({what}@{at:#x})"));
        }
    }
}

/// One flipped byte in each field of the chunk headers, index and trailer
/// and in each kind of payload.
#[test]
fn one_flip_in_each_field_of_the_chunks_index_and_trailer() {
    let f = image_a();
    let c = |name, at, want: &str| flip(f, name, at, want);
    let fields = [
        ("codec", hdr::CODEC),
        ("page count", hdr::PAGE_COUNT),
        ("reserved a", hdr::RESERVED_A),
        ("first pfn", hdr::FIRST_PFN),
        ("zero bitmap", hdr::ZERO_BITMAP),
        ("stored length", hdr::STORED_LEN),
        ("payload crc", hdr::PAYLOAD_CRC),
        ("data crc", hdr::DATA_CRC),
        ("sequence", hdr::SEQ),
        ("uuid", hdr::UUID),
        ("reserved b", hdr::RESERVED_B),
        ("crc", hdr::CRC),
    ];
    for i in 0..f.index.len() {
        let h = f.chunk_at(i);
        c("chunk magic", h, &format!("BadMagic(chunk header@{h:#x})"));
        for (name, at) in fields {
            c(name, h + at, &format!("Checksum(chunk header@{h:#x})"));
        }
    }
    // lz4 with zero pages, raw over the unaligned range, lz4, raw with zero
    // pages: first, middle and last byte.
    for i in [0, 1, 3, 4] {
        let (h, len) = (f.chunk_at(i), f.index[i].stored_len as usize);
        let want = format!("Checksum(chunk {i} payload@{h:#x})");
        for at in [h + 64, h + 64 + len / 2, h + 63 + len] {
            c("payload", at, &want);
        }
    }
    let ix = f.layout.index_offset as usize;
    let want = format!("Checksum(chunk index@{ix:#x})");
    for (name, at) in [
        ("offset", entry::OFFSET),
        ("first pfn", entry::FIRST_PFN),
        ("zero bitmap", entry::ZERO_BITMAP),
        ("stored length", entry::STORED_LEN),
        ("codec", entry::CODEC),
        ("page count", entry::PAGE_COUNT),
        ("reserved", entry::RESERVED),
        ("reserved", entry::RESERVED + 1),
    ] {
        c(name, f.entry_at(2) + at, &want);
    }
    let t = f.trailer_at();
    c("trailer magic", t + 7, &format!("BadMagic(trailer@{t:#x})"));
    let want = format!("Checksum(trailer@{t:#x})");
    for (name, at) in [
        ("uuid", trl::UUID),
        ("index offset", trl::INDEX_OFFSET),
        ("chunk count", trl::CHUNK_COUNT),
        ("index crc", trl::INDEX_CRC),
        ("metadata crc", trl::METADATA_CRC),
        ("data length", trl::DATA_LEN),
        ("reserved", trl::RESERVED),
        ("crc", trl::CRC),
    ] {
        c(name, t + at, &want);
    }
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// Stride through the inside of chunk payloads in the flip-everything test
/// (1 flips every byte: about 3x slower). A payload is one CRC's business
/// from its first byte to its last, and its first and last 64 bytes are
/// always flipped; every other byte of the image always is.
const PAYLOAD_STRIDE: usize = 7;

/// The offsets to flip: every byte but the inside of payloads, there every
/// `stride`th byte.
fn flip_offsets(f: &Fixture, stride: usize) -> Vec<usize> {
    let mut inside = vec![false; f.bytes.len()];
    for (i, e) in f.index.iter().enumerate() {
        let p = f.chunk_at(i) + CHUNK_HEADER_SIZE;
        let len = e.stored_len as usize;
        if len > 128 {
            inside[p + 64..p + len - 64].fill(true);
        }
    }
    (0..f.bytes.len())
        .filter(|&o| !inside[o] || o % stride == 0)
        .collect()
}

/// Every byte of the image (see [`PAYLOAD_STRIDE`]), flipped one at a time
/// (a different bit by offset), must be refused with the error its position
/// implies. `KJUMP_FLIP_STRIDE=1` flips every byte of the payloads too.
#[test]
fn every_flipped_byte_is_refused_with_its_exact_error() {
    let f = image_a();
    let stride = std::env::var("KJUMP_FLIP_STRIDE")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&s: &usize| s > 0)
        .unwrap_or(PAYLOAD_STRIDE);
    let offsets = flip_offsets(f, stride);
    let threads = std::thread::available_parallelism().map_or(2, |t| t.get().min(8));
    let misjudged: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let offsets = &offsets;
                s.spawn(move || {
                    let mut b = f.copy();
                    let mut bad = Vec::new();
                    for &off in offsets.iter().skip(t).step_by(threads) {
                        let bit = 1u8 << (off % 8);
                        b[off] ^= bit;
                        let got = catch_unwind(AssertUnwindSafe(|| outcome(&b)))
                            .unwrap_or_else(|p| format!("PANIC {}", panic_text(p)));
                        let want = f.flip_outcome(off, &b);
                        if got != want {
                            bad.push(format!("{off:#x} ^ {bit:#04x}: got {got}, want {want}"));
                        }
                        b[off] ^= bit;
                    }
                    bad
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("flip worker"))
            .collect()
    });
    let shown: Vec<_> = misjudged.iter().take(20).cloned().collect();
    assert!(
        misjudged.is_empty(),
        "{} of {} flips misjudged, first ones:\n{}",
        misjudged.len(),
        offsets.len(),
        shown.join("\n")
    );
}

/// A cut every 512 bytes and at every structure boundary ±1 is `Truncated`.
#[test]
fn truncation_anywhere_is_refused() {
    let f = image_a();
    let n = f.bytes.len();
    let l = &f.layout;
    let mut bounds = vec![
        512,
        BLOCK_SIZE,
        (l.metadata_offset + l.metadata_len) as usize,
        l.data_offset as usize,
        (l.data_offset + l.data_len) as usize,
        l.index_offset as usize,
        f.trailer_at(),
        f.trailer_at() + TRAILER_SIZE,
        n,
    ];
    for i in 0..f.index.len() {
        let h = f.chunk_at(i);
        bounds.extend([h, h + CHUNK_HEADER_SIZE, f.entry_at(i)]);
    }
    let mut cuts: BTreeSet<usize> = (0..n).step_by(512).collect();
    cuts.extend((1..16).chain([100, 511]));
    for b in bounds {
        cuts.extend([b - 1, b, b + 1]);
    }
    for cut in cuts.into_iter().filter(|&c| c < n) {
        let want = if cut < BLOCK_SIZE {
            format!("Truncated(superblock@0x0 needs {BLOCK_SIZE} of {cut})")
        } else {
            format!("Truncated(image@0x0 needs {n} of {cut})")
        };
        let got = catch_unwind(|| outcome(&f.bytes[..cut]))
            .unwrap_or_else(|p| format!("PANIC {}", panic_text(p)));
        assert_eq!(got, want, "cut at {cut:#x}");
    }
    // Bytes after the image's end are not its business (a block device is
    // larger than the image it holds).
    let mut longer = f.copy();
    longer.extend_from_slice(&[0x5a; 10_000]);
    assert_eq!(outcome(&longer), "ok");
}

#[test]
fn uncommitted_images_are_refused_as_incomplete() {
    let f = image_a();
    let writing = Superblock::writing(fixture::UUID_A, 1).encode();
    expect(
        f,
        "a capture's first superblock over a whole image",
        |b| b[..BLOCK_SIZE].copy_from_slice(&writing),
        "NotCommitted(incomplete)",
    );
    expect(
        f,
        "the committed superblock set back to writing",
        |b| {
            put_u32(b, sb::STATE, 1);
            f.resign_superblock(b);
        },
        "NotCommitted(incomplete)",
    );
    expect(
        f,
        "a torn writing superblock is corrupt, not incomplete",
        |b| {
            b[..BLOCK_SIZE].copy_from_slice(&writing);
            b[sb::UUID] ^= 1;
        },
        "Checksum(superblock@0x0)",
    );
    // `kjump info` still reads its superblock.
    let s = read_superblock(writing.as_slice()).expect("a writing superblock decodes");
    assert_eq!(
        (s.state, s.state.name()),
        (ImageState::Writing, "incomplete")
    );
    let e = fixture::open_and_verify(&writing)
        .expect_err("incomplete")
        .to_string();
    assert!(e.contains("incomplete"), "{e}");
}

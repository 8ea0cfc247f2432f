//! Superblock fields behind its CRC: each edit is re-signed, so the check
//! that answers is the one for that field.

use kjump_image_format::{ARCH_NAME, CHUNK_HEADER_SIZE, INDEX_ENTRY_SIZE};

use crate::expect;
use crate::fixture::{self, image_a, sb, Fixture};

/// Writes `bytes` at `at` in a copy of the image, re-signs the superblock
/// and asserts the outcome.
fn check(f: &Fixture, name: &str, at: usize, bytes: &[u8], want: &str) {
    let edit = |b: &mut Vec<u8>| {
        b[at..at + bytes.len()].copy_from_slice(bytes);
        f.resign_superblock(b);
    };
    expect(f, name, edit, want);
}

#[test]
fn magic_architecture_version_and_features_are_checked() {
    let f = image_a();
    let c = |name, at, bytes: &[u8], want: &str| check(f, name, at, bytes, want);
    let bad = "BadMagic(superblock@0x0)";
    c("wrong magic", 0, b"NOTKJUMP", bad);
    c("no architecture", 8, &[0; 8], bad);
    c("architecture with trailing junk", 14, b"\0j", bad);
    let other: &[u8] = if ARCH_NAME == "x86_64" {
        b"aarch64\0"
    } else {
        b"x86_64\0\0"
    };
    let name = String::from_utf8_lossy(other)
        .trim_end_matches('\0')
        .to_string();
    c(
        "wrong architecture",
        8,
        other,
        &format!("WrongArchitecture({name})"),
    );
    let mut b = f.copy();
    b[8..16].copy_from_slice(other);
    f.resign_superblock(&mut b);
    let e = fixture::open_and_verify(&b).expect_err("wrong architecture");
    let e = e.to_string();
    assert!(
        e.contains(&format!("this kjump handles {ARCH_NAME}")),
        "{e}"
    );

    let minor = kjump_image_format::superblock::VERSION_MINOR;
    c(
        "major 2",
        sb::MAJOR,
        &[2, 0],
        &format!("UnsupportedVersion(2.{minor})"),
    );
    c(
        "major 2 minor 7",
        sb::MAJOR,
        &[2, 0, 7, 0],
        "UnsupportedVersion(2.7)",
    );
    c(
        "major 0",
        sb::MAJOR,
        &[0, 0],
        &format!("UnsupportedVersion(0.{minor})"),
    );
    let unknown = "UnknownIncompatFeatures(@0x18";
    // Bit 0 (encrypted) is known: without a crypto area it names the cipher.
    c(
        "incompat bit 0",
        sb::INCOMPAT,
        &[1],
        "InvalidValue(superblock.cipher@0xa8 0x0)",
    );
    c(
        "incompat bit 1",
        sb::INCOMPAT,
        &[2],
        &format!("{unknown} 0x2)"),
    );
    let high = format!("{unknown} 0x8000000000000000)");
    c("incompat bit 63", sb::INCOMPAT + 7, &[0x80], &high);
}

#[test]
fn sizes_reserved_bytes_and_state_are_checked() {
    let f = image_a();
    let c = |name, at, bytes: &[u8], want: &str| check(f, name, at, bytes, want);
    let mm = "Mismatch(superblock.";
    let want = format!("{mm}size@0x0 expected 0x200 found 0x400)");
    c("superblock size", sb::SIZE_FIELD, &[0, 4], &want);
    let want = format!("{mm}page size@0x0 expected 0x1000 found 0x2000)");
    c("page size", sb::PAGE_SIZE, &[0, 0x20], &want);
    let want = "ReservedNotZero(superblock@0xa8 0x1)";
    c("first reserved byte", sb::RESERVED, &[1], want);
    let want = "ReservedNotZero(superblock@0x1fb 0x80)";
    c("last reserved byte", sb::CRC - 1, &[0x80], want);
    let state = "InvalidValue(superblock.state@0x2c";
    c("state 0", sb::STATE, &[0], &format!("{state} 0x0)"));
    c("state 5", sb::STATE, &[5], &format!("{state} 0x5)"));
    let want = "ReservedNotZero(superblock@0x144 0x2)";
    c(
        "reserved byte in the restore record",
        sb::RESERVED_B,
        &[2],
        want,
    );
    c(
        "state ~0",
        sb::STATE,
        &[0xff; 4],
        &format!("{state} 0xffffffff)"),
    );
}

/// What a reader must accept: these prove that the edits of the other
/// tests are the only thing wrong with their images.
#[test]
fn compatible_superblock_changes_are_accepted() {
    let f = image_a();
    let c = |name, at, bytes: &[u8]| check(f, name, at, bytes, "ok");
    c("consumed", sb::STATE, &[3]);
    c("consumed time", sb::CONSUMED_TIME, &[1; 8]);
    c("newer minor version", sb::MINOR, &[9, 0]);
    c("unknown compatible flags", sb::COMPAT, &[0xff; 8]);
    c("other capture time", sb::CAPTURE_TIME, &[1; 8]);
}

fn set(f: &Fixture, name: &str, at: usize, v: u64, want: &str) {
    check(f, name, at, &v.to_le_bytes(), want);
}

/// Absurd counts and lengths are bounded before anything is read or
/// allocated for them.
#[test]
fn absurd_counts_and_lengths_are_bounded() {
    let f = image_a();
    let n = f.bytes.len() as u64;
    let max_chunks = n / (CHUNK_HEADER_SIZE + INDEX_ENTRY_SIZE) as u64;
    let huge = 1u64 << 40;
    let max = u64::MAX;
    let chunks = |v| format!("TooLarge(chunk count@0x80 {v} > {max_chunks})");
    set(f, "chunk count huge", sb::CHUNK_COUNT, huge, &chunks(huge));
    set(f, "chunk count max", sb::CHUNK_COUNT, max, &chunks(max));
    let meta = |v| format!("TooLarge(metadata length@0x58 {v} > {})", 64 << 20);
    set(
        f,
        "metadata length huge",
        sb::METADATA_LEN,
        huge,
        &meta(huge),
    );
    set(f, "metadata length max", sb::METADATA_LEN, max, &meta(max));
    let v = max - 4000;
    let want = format!("TooLarge(data length@0x70 {v} > {n})");
    set(f, "data length overflowing", sb::DATA_LEN, v, &want);
    let v = 1 << 62;
    let l = f.layout;
    let want = mismatch("index offset", v + l.data_offset, l.index_offset);
    set(f, "data length huge", sb::DATA_LEN, v, &want);
}

fn mismatch(field: &str, expected: u64, found: u64) -> String {
    format!("Mismatch(superblock.{field}@0x0 expected {expected:#x} found {found:#x})")
}

/// Every layout field must be what the three free numbers (metadata length,
/// data length, chunk count) imply, and agree with the trailer.
#[test]
fn layout_must_be_the_planned_one() {
    let f = image_a();
    let (l, n) = (f.layout, f.bytes.len() as u64);
    let t = l.trailer_offset;
    let c = |name, at, v, (field, expected, found)| {
        set(f, name, at, v, &mismatch(field, expected, found));
    };
    c(
        "metadata offset",
        sb::METADATA_OFFSET,
        8192,
        ("metadata offset", 4096, 8192),
    );
    let v = l.data_offset + 4096;
    c(
        "data offset",
        sb::DATA_OFFSET,
        v,
        ("data offset", l.data_offset, v),
    );
    let v = l.index_offset - 4096;
    c(
        "index offset",
        sb::INDEX_OFFSET,
        v,
        ("index offset", l.index_offset, v),
    );
    c(
        "trailer offset",
        sb::TRAILER_OFFSET,
        t + 8,
        ("trailer offset", t, t + 8),
    );
    c(
        "image length",
        sb::IMAGE_LEN,
        n + 4096,
        ("image length", n, n + 4096),
    );
    c("image length 0", sb::IMAGE_LEN, 0, ("image length", n, 0));
    c(
        "chunk count 4",
        sb::CHUNK_COUNT,
        4,
        ("trailer offset", t - 40, t),
    );
    let v = l.total_pages + 1;
    c("total pages", sb::TOTAL_PAGES, v, ("total pages", v - 1, v));
    let v = l.zero_pages - 1;
    c("zero pages", sb::ZERO_PAGES, v, ("zero pages", v + 1, v));

    let trailer = |field: &str, expected: u64, found: u64| {
        format!("Mismatch(trailer.{field}@{t:#x} expected {expected:#x} found {found:#x})")
    };
    let v = l.data_len + 1;
    let want = trailer("data length", v, v - 1);
    set(f, "data length in the same block", sb::DATA_LEN, v, &want);
    let crc = l.index_crc ^ 1;
    let want = trailer("index crc", crc.into(), l.index_crc.into());
    check(f, "index crc", sb::INDEX_CRC, &crc.to_le_bytes(), &want);
    let crc = (l.metadata_crc ^ 1).to_le_bytes();
    let want = format!("Checksum(metadata@{:#x})", l.metadata_offset);
    check(f, "metadata crc", sb::METADATA_CRC, &crc, &want);
    let want = format!("ForeignUuid(trailer@{t:#x})");
    check(f, "uuid", sb::UUID, b"another capture!", &want);
}

//! Metadata records and the trailer behind their CRCs: each edit is
//! re-signed (the CRC recomputed wherever the image records it).

use crate::expect;
use crate::fixture::{image_a, put_u64, records, sb, trl, Fixture};

const TAG_RANGES: u16 = 1;
const TAG_RELEASE: u16 = 2;
const TAG_JUMP_BACK: u16 = 6;
const TAG_SOURCE: u16 = 7;
const TAG_KEY_VALUE: u16 = 8;

/// Where the records of image A are.
struct Records {
    start: usize,
    len: usize,
    all: Vec<(usize, u16, usize)>,
}

impl Records {
    fn of(f: &Fixture) -> Records {
        let (start, len) = (f.meta_at(), f.layout.metadata_len as usize);
        let all = records(&f.bytes, start, len);
        Records { start, len, all }
    }

    /// Offset and value length of the record with `tag`.
    fn find(&self, tag: u16) -> (usize, usize) {
        let r = self.all.iter().find(|r| r.1 == tag).expect("record");
        (r.0, r.2)
    }
}

/// Writes each `(offset, bytes)`, sets the metadata length to `len` and
/// re-signs, then asserts the outcome.
fn check(f: &Fixture, name: &str, len: usize, writes: &[(usize, &[u8])], want: &str) {
    let mut b = f.copy();
    for (at, bytes) in writes {
        b[*at..at + bytes.len()].copy_from_slice(bytes);
    }
    put_u64(&mut b, sb::METADATA_LEN, len as u64);
    f.resign_metadata(&mut b, len);
    expect(f, name, |x| *x = b, want);
}

fn u16s(v: u16) -> [u8; 2] {
    v.to_le_bytes()
}

#[test]
fn metadata_records_are_checked_behind_the_crc() {
    let f = image_a();
    let r = Records::of(f);
    let c = |name, writes: &[(usize, &[u8])], want: &str| check(f, name, r.len, writes, want);
    let (ranges, _) = r.find(TAG_RANGES);
    let (kv, _) = r.find(TAG_KEY_VALUE);
    let at = |o: usize| format!("Metadata(@{o:#x} ");

    let want = at(ranges) + "reserved flags 0x8001 set)";
    c(
        "reserved record flag",
        &[(ranges + 2, &u16s(0x8001))],
        &want,
    );
    let rest = r.len - (ranges + 8 - r.start);
    let want = at(ranges)
        + &format!(
            "record of 4294967280 bytes runs past the end of the section ({rest} bytes remain))"
        );
    c(
        "record past the section",
        &[(ranges + 4, &[0xf0, 0xff, 0xff, 0xff])],
        &want,
    );
    let (src, src_len) = r.find(TAG_SOURCE);
    let pad = src + 8 + src_len;
    let want = format!("PaddingNotZero(of a metadata record@{pad:#x})");
    c("record padding", &[(pad, b" ")], &want);

    let (tag, required) = (u16s(999), u16s(1));
    let want = at(kv) + "unknown required record tag 999 (written by a newer kjump?))";
    c(
        "unknown required record",
        &[(kv, &tag), (kv + 2, &required)],
        &want,
    );
    c("unknown optional record is skipped", &[(kv, &tag)], "ok");
    let want = at(kv) + "ranges recorded twice)";
    c("ranges twice", &[(kv, &u16s(TAG_RANGES))], &want);
    let want = at(r.start) + "no memory ranges recorded)";
    c(
        "no ranges",
        &[(ranges, &tag), (ranges + 2, &u16s(0))],
        &want,
    );
    let (jump, _) = r.find(TAG_JUMP_BACK);
    let want = at(jump) + "jump-back entry has 4 bytes, expected 8)";
    c("short jump-back entry", &[(jump + 4, &[4])], &want);

    let (release, _) = r.find(TAG_RELEASE);
    let mut b = f.copy();
    b[release + 8] = 0xff;
    f.resign_metadata(&mut b, r.len);
    let got = crate::fixture::outcome(&b);
    let want = at(release) + "KernelRelease is not UTF-8";
    assert!(got.starts_with(&want), "got {got}, want {want}…");
}

#[test]
fn recorded_ranges_are_checked_behind_the_crc() {
    let f = image_a();
    let r = Records::of(f);
    let (ranges, _) = r.find(TAG_RANGES);
    // Range `i`'s start (field 0) or length (field 8).
    let field = |i: usize, field: usize| ranges + 8 + 16 * i + field;
    let c = |name, writes: &[(usize, u64)], want: &str| {
        let bytes: Vec<(usize, [u8; 8])> =
            writes.iter().map(|&(a, v)| (a, v.to_le_bytes())).collect();
        let writes: Vec<(usize, &[u8])> = bytes.iter().map(|(a, v)| (*a, &v[..])).collect();
        check(f, name, r.len, &writes, want);
    };
    let at = format!("Metadata(@{ranges:#x} ");

    let want = at.clone() + "range 0: range 0x1000-0x1000 is empty or inverted)";
    c("empty range", &[(field(0, 8), 0)], &want);
    let want = at.clone()
        + &format!(
            "range 2: range starting at 0x100000 with length {:#x} overflows 64 bits)",
            u64::MAX
        );
    c("overflowing range", &[(field(2, 8), u64::MAX)], &want);
    let want = at.clone() + "ranges 0x1000-0x10fff and 0x10000-0x13fdf overlap)";
    c("overlapping ranges", &[(field(1, 0), 0x10000)], &want);
    let want = at + "range 0x40010-0x43fef comes after 0x50000-0x5ffff but starts before it)";
    c("unsorted ranges", &[(field(0, 0), 0x50000)], &want);

    let want = "Mismatch(superblock.chunk count@0x0 expected 0x6 found 0x5)";
    c("a range one chunk longer", &[(field(2, 8), 0xd0000)], want);
    let total = f.layout.total_pages;
    let want = format!(
        "Mismatch(superblock.total pages@0x0 expected {:#x} found {total:#x})",
        total - 1
    );
    c("a range one page shorter", &[(field(2, 8), 0x87000)], &want);
    // Same pages, same chunks: only the stored bytes before the new start
    // tell.
    let moved = [(field(1, 0), 0x40020), (field(1, 8), 0x3fd0)];
    let h = f.chunk_at(1);
    let want = format!("OutsideRangeNotZero(chunk 1@{h:#x} page 0x40000 of 0x40020-0x43fef)");
    c("a range start moved inside its page", &moved, &want);
}

/// The metadata length is the superblock's to say: a record cut off, a
/// record left in the gap after the section, a record added.
#[test]
fn metadata_length_is_checked() {
    let f = image_a();
    let r = Records::of(f);
    let (kv, kv_len) = r.find(TAG_KEY_VALUE);
    let remain = r.start + r.len - 3 - (kv + 8);
    let want = format!(
        "Metadata(@{kv:#x} record of {kv_len} bytes runs past the end of the section ({remain} bytes remain))"
    );
    check(f, "cut inside the last record", r.len - 3, &[], &want);
    let want = format!("PaddingNotZero(after the metadata@{kv:#x})");
    check(f, "last record left in the gap", kv - r.start, &[], &want);
    let end = r.start + r.len;
    let tag = u16s(999);
    check(f, "optional record added", r.len + 8, &[(end, &tag)], "ok");
    let want =
        format!("Metadata(@{end:#x} unknown required record tag 999 (written by a newer kjump?))");
    let writes: &[(usize, &[u8])] = &[(end, &tag), (end + 2, &u16s(1))];
    check(f, "required record added", r.len + 8, writes, &want);
}

#[test]
fn trailer_fields_are_checked_behind_the_crc() {
    let f = image_a();
    let (t, l) = (f.trailer_at(), f.layout);
    let c = |name: &str, field: usize, want: &str| {
        let edit = |b: &mut Vec<u8>| {
            b[t + field] ^= 1;
            f.resign_trailer(b);
        };
        expect(f, name, edit, want);
    };
    let mm = |field: &str, expected: u64, found: u64| {
        format!("Mismatch(trailer.{field}@{t:#x} expected {expected:#x} found {found:#x})")
    };
    let (io, cc) = (l.index_offset, l.chunk_count);
    c(
        "index offset",
        trl::INDEX_OFFSET,
        &mm("index offset", io, io ^ 1),
    );
    c(
        "chunk count",
        trl::CHUNK_COUNT,
        &mm("chunk count", cc, cc ^ 1),
    );
    let crc = u64::from(l.index_crc);
    c("index crc", trl::INDEX_CRC, &mm("index crc", crc, crc ^ 1));
    let crc = u64::from(l.metadata_crc);
    c(
        "metadata crc",
        trl::METADATA_CRC,
        &mm("metadata crc", crc, crc ^ 1),
    );
    c(
        "data length",
        trl::DATA_LEN,
        &mm("data length", l.data_len, l.data_len ^ 1),
    );
    let want = format!("ReservedNotZero(trailer@{:#x} 0x1)", t + 57);
    c("reserved", trl::RESERVED + 1, &want);
    c(
        "uuid",
        trl::UUID + 3,
        &format!("ForeignUuid(trailer@{t:#x})"),
    );
    c("magic", 0, &format!("BadMagic(trailer@{t:#x})"));
}

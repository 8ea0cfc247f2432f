//! Image bytes pinned: two small committed images, one plain and one
//! encrypted, kept in `tests/fixtures/` with the recipe below that wrote
//! them. A change to the format's code that changes a byte of a new image
//! fails here, whatever the other tests (which build their images with the
//! code under test) say.
//!
//! - `pin-plain.kjump`: the writer's capture of [`memory`] with fixed
//!   identity and time must come out equal to it, byte for byte.
//! - `pin-sealed.kjump`: the same memory captured with `--encrypt` (an
//!   Argon2id passphrase). Its salt is random, so a new capture cannot equal
//!   it; instead it must open, verify and hold [`memory`], and a plain
//!   sequential assembly of the sealed format ([`sealed_oracle`], straight
//!   from FORMAT.md) given its salt must rebuild it byte for byte. The same
//!   assembly must also rebuild what the writer seals today under a fresh
//!   salt, which ties today's writer to the committed bytes.
//!
//! - `pin-plain-1.0.kjump`, `pin-sealed-1.0.kjump`: the same images as
//!   format 1.0 wrote them (before the restore record): they must still
//!   open, verify and hold [`memory`].
//!
//! Regenerate (only for a deliberate format change, with a version bump):
//! `KJUMP_WRITE_PINNED_IMAGES=1 cargo test --test format_pin`, then commit
//! both files.

mod common;
#[path = "corruption/fixture.rs"]
#[allow(dead_code)]
mod fixture;

use std::path::{Path, PathBuf};

use common::tempdir::TempDir;
use fixture::random_fill;
use kjump_image_format::reader::{read_resume_record, read_superblock};
use kjump_image_format::{
    chunk_specs, plan_layout, ChunkCodec, CryptoParams, Image, ImageKeys, ImageSeal, ImageState,
    Kdf, MemoryMap, Metadata, MetadataSection, PhysAddr, PhysRange, Secret, Superblock, Trailer,
    PAGE_SIZE,
};
use kjump_writer::{capture, capture_encrypted, CaptureOptions, Encryption, MemorySource, Target};

const UUID: [u8; 16] = *b"kjump-format-pin";
const CAPTURE_TIME_NS: u64 = 1_765_432_100_000_000_007;
const PASSPHRASE: &[u8] = b"kjump format pin: not a secret\n";
/// A cheap Argon2id: the fixture pins the format, not the cost.
const KDF: Kdf = Kdf::Argon2id {
    memory_kib: 64,
    iterations: 1,
    lanes: 1,
};
const WRITE_VAR: &str = "KJUMP_WRITE_PINNED_IMAGES";

fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn range(start: u64, end: u64) -> PhysRange {
    PhysRange::new(PhysAddr(start), PhysAddr(end)).expect("pin range")
}

/// Four ranges, five chunks of every kind: lz4 with zero pages, raw (a
/// range unaligned at both ends), all zero, lz4 without zero pages, raw
/// with a zero page (the last two split at frame 0x80).
fn ranges() -> Vec<PhysRange> {
    vec![
        range(0x1000, 0x9000),
        range(0x20010, 0x21ff0),
        range(0x40000, 0x42000),
        range(0x7f000, 0x82000),
    ]
}

fn text_fill(buf: &mut [u8], pfn: u64) {
    let mut text = String::new();
    let mut line = 0;
    while text.len() < buf.len() {
        text.push_str(&format!("pin page {pfn:#x} line {line:03}: kjump\n"));
        line += 1;
    }
    buf.copy_from_slice(&text.as_bytes()[..buf.len()]);
}

/// Physical memory as a flat file (offset = address).
fn memory() -> Vec<u8> {
    let mut m = vec![0u8; 0x82000];
    let page = |pfn: u64| pfn as usize * PAGE_SIZE..(pfn as usize + 1) * PAGE_SIZE;
    for pfn in [0x1, 0x3, 0x4, 0x7, 0x8, 0x7f] {
        text_fill(&mut m[page(pfn)], pfn);
    }
    random_fill(&mut m[0x20010..0x21ff0], 0x20);
    random_fill(&mut m[page(0x80)], 0x80);
    m
}

fn metadata(source: &MemorySource) -> Metadata {
    let mut meta = source.metadata();
    meta.source = Some("format pin memory".into());
    meta.kernel_release = Some("6.12.0-kjump-pin".into());
    meta.jump_back_entry = Some(0x0123_4000);
    meta.extra = vec![
        ("region".into(), "0x2f000000-0x3effffff".into()),
        ("purpose".into(), "format pin".into()),
        (
            "fs-fingerprint:/dev/vda1".into(),
            "ext4 wtime=1 mounts=2 writes=3".into(),
        ),
    ];
    meta
}

fn options() -> CaptureOptions {
    CaptureOptions {
        threads: 2,
        window_pages: 64,
        uuid: UUID,
        capture_time_ns: CAPTURE_TIME_NS,
        check_worst_case: true,
        progress_line: false,
    }
}

fn passphrase() -> Secret {
    Secret::passphrase(PASSPHRASE.to_vec()).unwrap()
}

/// Captures [`memory`] into a new file in `dir`, sealed when `sealed`.
fn capture_now(dir: &TempDir, sealed: bool) -> Vec<u8> {
    let mem = dir.path("memory");
    std::fs::write(&mem, memory()).unwrap();
    let map = MemoryMap::from_sorted(ranges()).unwrap();
    let source = MemorySource::open(&mem, Some(map)).unwrap();
    let meta = metadata(&source);
    let img = dir.path(if sealed { "sealed" } else { "plain" });
    let target = Target::open(&img).unwrap();
    if sealed {
        let secret = passphrase();
        let enc = Encryption {
            secret: &secret,
            kdf: KDF,
        };
        capture_encrypted(&source, &target, &meta, &options(), &enc).unwrap();
    } else {
        capture(&source, &target, &meta, &options()).unwrap();
    }
    std::fs::read(&img).unwrap()
}

/// The pinned bytes, or (when regenerating) `fresh` written in their place.
fn pinned(name: &str, fresh: &[u8]) -> Vec<u8> {
    let path = fixture_path(name);
    if std::env::var_os(WRITE_VAR).is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, fresh).unwrap();
    }
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn assert_same_bytes(what: &str, got: &[u8], want: &[u8]) {
    if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at offset {at:#x} (got {:#04x}, pinned {:#04x})",
            got[at], want[at]
        );
    }
    assert_eq!(got.len(), want.len(), "{what}: length");
}

/// Opens `bytes`, verifies every chunk and compares every saved byte
/// with [`memory`].
fn check_holds_memory(bytes: &[u8], secret: Option<&Secret>) {
    let image = Image::open_with(bytes, secret).unwrap();
    image.check_padding(bytes).unwrap();
    assert_eq!(image.superblock.state, ImageState::Committed);
    assert_eq!(image.superblock.uuid, UUID);
    assert_eq!(image.superblock.capture_time_ns, CAPTURE_TIME_NS);
    assert_eq!(image.metadata.ranges.ranges(), ranges().as_slice());
    assert_eq!(
        image.metadata.kernel_release.as_deref(),
        Some("6.12.0-kjump-pin")
    );
    let codecs: Vec<_> = image.index.iter().map(|e| e.codec).collect();
    use kjump_image_format::Codec::{Lz4, Raw, Zero};
    assert_eq!(codecs, [Lz4, Raw, Zero, Lz4, Raw]);
    let mem = memory();
    let specs = image.specs.clone();
    kjump_restorer::scan_chunks(bytes, &image, 1, false, |i, pages| {
        let at = specs[i].first_pfn.0 as usize * PAGE_SIZE;
        assert!(pages == &mem[at..at + pages.len()], "chunk {i} differs");
        Ok::<(), std::convert::Infallible>(())
    })
    .unwrap();
    let record = read_resume_record(bytes).unwrap();
    assert_eq!(record.ranges.ranges(), ranges().as_slice());
    let keys: Vec<_> = record.extra.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["region", "fs-fingerprint:/dev/vda1"]);
}

/// The encrypted image FORMAT.md describes, assembled in one plain loop
/// from the memory, the metadata, the identity and the salt: sealed
/// chunks, the sealed metadata followed by the resume record, the index,
/// the trailer, and the image seal over them and the superblock.
fn sealed_oracle(salt: [u8; 32], secret: &Secret) -> Vec<u8> {
    let dir = TempDir::new("format-pin-oracle");
    let mem_path = dir.path("memory");
    let mem = memory();
    std::fs::write(&mem_path, &mem).unwrap();
    let map = MemoryMap::from_sorted(ranges()).unwrap();
    let meta = metadata(&MemorySource::open(&mem_path, Some(map)).unwrap());
    let keys = ImageKeys::derive(secret, &KDF, &salt, &UUID).unwrap();

    let sealed_section = MetadataSection::seal(&meta, &keys, &UUID);
    let section = sealed_section.bytes();

    let data_offset = plan_layout(section.len() as u64, 0, 0).unwrap().data_offset;
    let (mut chunks, mut entries, mut zero, mut total) = (Vec::new(), Vec::new(), 0u64, 0u64);
    for (seq, spec) in chunk_specs(&meta.ranges).enumerate() {
        let at = spec.first_pfn.0 as usize * PAGE_SIZE;
        let pages = &mem[at..at + usize::from(spec.page_count) * PAGE_SIZE];
        let c = ChunkCodec::Sealed(&keys).encode(&spec, seq as u32, UUID, pages);
        let offset = kjump_image_format::ImageOffset(data_offset + chunks.len() as u64);
        entries.push(c.header.index_entry(offset));
        chunks.extend_from_slice(&c.header.encode());
        chunks.extend_from_slice(&c.payload);
        zero += u64::from(c.header.zero_bitmap.count_ones());
        total += u64::from(spec.page_count);
    }
    let mut l = plan_layout(
        section.len() as u64,
        chunks.len() as u64,
        entries.len() as u64,
    )
    .unwrap();
    let index: Vec<u8> = entries.iter().flat_map(|e| e.encode()).collect();
    l.index_crc = crc32fast::hash(&index);
    l.metadata_crc = crc32fast::hash(section);
    l.total_pages = total;
    l.zero_pages = zero;
    let trailer = Trailer {
        uuid: UUID,
        index_offset: l.index_offset,
        chunk_count: l.chunk_count,
        index_crc: l.index_crc,
        metadata_crc: l.metadata_crc,
        data_len: l.data_len,
    }
    .encode();
    let mut sb = Superblock::writing(UUID, CAPTURE_TIME_NS);
    sb.state = ImageState::Committed;
    sb.layout = l;
    let params = CryptoParams {
        kdf: KDF,
        salt,
        check: keys.check_value(),
        seal: [0; 32],
        resume_record_len: sealed_section.resume_record_len(),
    };
    let mut seal = ImageSeal::over_metadata(&keys, section);
    seal.index(&index);
    seal.trailer(&trailer).store(&mut sb, params);

    let mut img = sb.encode();
    img.extend_from_slice(section);
    img.resize(l.data_offset as usize, 0);
    img.extend_from_slice(&chunks);
    img.resize(l.index_offset as usize, 0);
    img.extend_from_slice(&index);
    img.extend_from_slice(&trailer);
    img.resize(l.image_len as usize, 0);
    img
}

fn salt_of(bytes: &[u8]) -> [u8; 32] {
    let sb = read_superblock(bytes).unwrap();
    assert_eq!(sb.crypto.unwrap().kdf, KDF);
    sb.crypto.unwrap().salt
}

#[test]
fn plain_image_bytes_are_pinned() {
    let dir = TempDir::new("format-pin-plain");
    let fresh = capture_now(&dir, false);
    let pinned = pinned("pin-plain.kjump", &fresh);
    check_holds_memory(&pinned, None);
    assert_same_bytes("a new plain capture", &fresh, &pinned);
}

#[test]
fn sealed_image_bytes_are_pinned() {
    let dir = TempDir::new("format-pin-sealed");
    let fresh = capture_now(&dir, true);
    let pinned = pinned("pin-sealed.kjump", &fresh);
    let secret = passphrase();
    check_holds_memory(&pinned, Some(&secret));
    let rebuilt = sealed_oracle(salt_of(&pinned), &secret);
    assert_same_bytes("the sealed oracle under the pinned salt", &rebuilt, &pinned);
    // Today's writer, under its own fresh salt, seals as the oracle does.
    check_holds_memory(&fresh, Some(&secret));
    let rebuilt = sealed_oracle(salt_of(&fresh), &secret);
    assert_same_bytes(
        "the sealed oracle under a new capture's salt",
        &rebuilt,
        &fresh,
    );
}

/// Images of format 1.0, written before the restore record existed (its
/// bytes zero there), still open, verify and hold their memory.
#[test]
fn images_of_format_1_0_still_open() {
    let sealed = passphrase();
    for (name, secret) in [
        ("pin-plain-1.0.kjump", None),
        ("pin-sealed-1.0.kjump", Some(&sealed)),
    ] {
        let bytes = std::fs::read(fixture_path(name)).unwrap();
        let sb = read_superblock(&bytes[..]).unwrap();
        assert_eq!((sb.version_minor, sb.restore.attempts), (0, 0), "{name}");
        check_holds_memory(&bytes, secret);
    }
}

/// A superblock that claims a huge index (its CRC made to match, the file
/// sparse and large enough for the count) is refused with a reason, not a
/// failed allocation that aborts: before reading anything when the reader
/// gives a memory budget, and when the allocation fails otherwise. An
/// encrypted image reads its index for the seal before its metadata bounds
/// the count, so it is the one such a superblock reaches furthest in.
#[test]
fn a_superblock_claiming_a_huge_index_is_refused_not_aborted() {
    use kjump_image_format::layout::superblock as sb;
    use kjump_image_format::FormatError;
    let dir = TempDir::new("format-pin-huge");
    let mut b = std::fs::read(fixture_path("pin-sealed.kjump")).unwrap();
    let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    let index_at = u64_at(&b, sb::INDEX_OFFSET);
    let chunks: u64 = 1 << 35;
    let trailer = index_at + chunks * 40;
    let len = (trailer + 64).div_ceil(4096) * 4096;
    b[sb::CHUNK_COUNT..sb::CHUNK_COUNT + 8].copy_from_slice(&chunks.to_le_bytes());
    b[sb::TRAILER_OFFSET..sb::TRAILER_OFFSET + 8].copy_from_slice(&trailer.to_le_bytes());
    b[sb::IMAGE_LEN..sb::IMAGE_LEN + 8].copy_from_slice(&len.to_le_bytes());
    let crc = crc32fast::hash(&b[..sb::CRC]);
    b[sb::CRC..sb::CRC + 4].copy_from_slice(&crc.to_le_bytes());
    let path = dir.path("huge.kjump");
    std::fs::write(&path, &b).unwrap();
    // A trailer that agrees, as whoever crafted the superblock writes.
    let original = std::fs::read(fixture_path("pin-sealed.kjump")).unwrap();
    let pinned = Image::open_with(&original[..], Some(&passphrase())).unwrap();
    let l = pinned.superblock.layout;
    let t = Trailer {
        uuid: UUID,
        index_offset: l.index_offset,
        chunk_count: chunks,
        index_crc: l.index_crc,
        metadata_crc: l.metadata_crc,
        data_len: l.data_len,
    }
    .encode();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(chunks * 104 + 8192).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &t, trailer).unwrap();
    let f = std::fs::File::open(&path).unwrap();
    let secret = passphrase();
    match Image::open_within(&f, Some(&secret), 1 << 30) {
        Err(FormatError::OutOfMemory {
            needed,
            available: Some(budget),
            ..
        }) => assert!(needed > chunks * 40 && budget == 1 << 30),
        other => panic!("expected a refusal within the budget, got {other:?}"),
    }
    match Image::open_with(&f, Some(&secret)) {
        Err(FormatError::OutOfMemory { needed, .. }) => assert_eq!(needed, chunks * 40),
        other => panic!("expected a refusal of the allocation, got {other:?}"),
    }
}

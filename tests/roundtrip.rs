//! Capture -> verify -> export -> compare, over many seeds and shapes, and
//! the parallel writer against a sequential oracle.

mod common;

use std::fs::File;
use std::path::Path;

use common::cores::{assert_same_memory, read_core};
use common::tempdir::TempDir;
use kjump_dumpgen::{write_dump, DumpSpec, Layout, PageMix, SegmentSpec};
use kjump_image_format::{
    chunk_specs, plan_layout, ChunkCodec, Image, ImageState, Metadata, Superblock, Trailer,
    BLOCK_SIZE, PAGE_SIZE,
};
use kjump_writer::{capture, CaptureOptions, CaptureReport, MemorySource, Target};
use proptest::prelude::*;

fn options(threads: usize, window_pages: usize, seed: u64) -> CaptureOptions {
    let mut uuid = [0u8; 16];
    uuid[..8].copy_from_slice(&seed.to_le_bytes());
    uuid[8] = 0x4b;
    CaptureOptions {
        threads,
        window_pages,
        uuid,
        capture_time_ns: 1_700_000_000_000_000_000u64.wrapping_add(seed),
        check_worst_case: true,
        progress_line: false,
    }
}

/// Captures `dump` into `image` and returns the report.
fn capture_file(dump: &Path, image: &Path, opts: &CaptureOptions) -> CaptureReport {
    let source = MemorySource::open(dump, None).expect("opening the dump");
    let target = Target::open(image).expect("opening the target");
    capture(&source, &target, &source.metadata(), opts).expect("capture")
}

/// The whole cycle on one spec; returns the capture report.
fn cycle(
    dir: &TempDir,
    name: &str,
    spec: &DumpSpec,
    threads: usize,
    window_pages: usize,
) -> CaptureReport {
    let dump = dir.path(&format!("{name}.elf"));
    let img = dir.path(&format!("{name}.img"));
    let out = dir.path(&format!("{name}.out.elf"));
    let info = write_dump(spec, &dump).expect("writing the dump");
    let report = capture_file(&dump, &img, &options(threads, window_pages, spec.seed));
    let file = File::open(&img).unwrap();
    let image = Image::open(&file).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(image.superblock.state, ImageState::Committed);
    kjump_restorer::verify(&file, &image, threads, false).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        image.metadata.kernel_release.as_deref(),
        Some(info.os_release.as_str())
    );
    assert_eq!(
        image.metadata.build_id.as_deref(),
        Some(info.build_id.as_str())
    );
    kjump_restorer::export(&file, &image, &out, threads, false)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_same_memory(&dump, &out);
    for p in [dump, img, out] {
        let _ = std::fs::remove_file(p);
    }
    report
}

#[test]
fn every_layout_and_mix_round_trips() {
    let dir = TempDir::new("roundtrip-layouts");
    let mixes = [
        ("default", PageMix::default()),
        ("zero", PageMix::all_zero()),
        ("random", PageMix::all_random()),
    ];
    for layout in [
        Layout::Qemu,
        Layout::Holes,
        Layout::Single,
        Layout::Unaligned,
    ] {
        for (mix_name, mix) in mixes {
            for seed in 1..=2u64 {
                let size = layout.min_size().max(6 << 20);
                let spec = DumpSpec::from_layout(layout, size, seed)
                    .unwrap()
                    .with_mix(mix);
                let name = format!("{}-{mix_name}-{seed}", layout.name());
                let r = cycle(&dir, &name, &spec, 2, 512);
                if mix_name == "zero" {
                    assert_eq!(r.stored_pages, 0, "{name}: all-zero dump stored pages");
                }
                // Partial edge pages of unaligned ranges hold zeros, which compress.
                if mix_name == "random" && !matches!(layout, Layout::Unaligned) {
                    assert!(
                        r.layout.image_len > r.input_bytes,
                        "{name}: random data cannot shrink"
                    );
                }
            }
        }
    }
}

#[test]
fn awkward_shapes_round_trip() {
    let dir = TempDir::new("roundtrip-shapes");
    let k = 4096u64;
    let shapes: Vec<(&str, Vec<SegmentSpec>)> = vec![
        ("single-page", vec![SegmentSpec::new(0x7000, k)]),
        ("single-byte", vec![SegmentSpec::new(0x7123, 1)]),
        ("straddles-chunk", vec![SegmentSpec::new(63 * k, 2 * k)]),
        (
            "iomem-like",
            vec![
                SegmentSpec::new(0x1000, 0x9ec00),
                SegmentSpec::new(0x100000, 300 * k),
            ],
        ),
        (
            "shared-page",
            vec![
                SegmentSpec::new(0x10000, 0x800),
                SegmentSpec::new(0x10800, 0x1800),
            ],
        ),
        (
            "zero-tail",
            vec![SegmentSpec::new(0x200000, 200 * k).with_filesz(70 * k + 5)],
        ),
        (
            "many-small",
            (0..40)
                .map(|i| SegmentSpec::new(i * 100 * k + (i % 3) * 512, k * (1 + i % 5)))
                .collect(),
        ),
        (
            "high-address",
            vec![SegmentSpec::new(0x1_0000_0000, 130 * k)],
        ),
    ];
    for (name, segments) in shapes {
        for threads in [1, 2] {
            let spec = DumpSpec::new(7, segments.clone());
            cycle(&dir, &format!("{name}-{threads}"), &spec, threads, 64);
        }
    }
}

/// The bytes of frame `pfn` of a segment, zero outside it.
fn page_of(seg: &common::cores::Segment, pfn: u64) -> Vec<u8> {
    let mut page = vec![0u8; PAGE_SIZE];
    let (ps, pe) = (pfn * PAGE_SIZE as u64, (pfn + 1) * PAGE_SIZE as u64);
    let (rs, re) = (seg.paddr, seg.paddr + seg.bytes.len() as u64);
    let (from, to) = (ps.max(rs), pe.min(re));
    if from < to {
        page[(from - ps) as usize..(to - ps) as usize]
            .copy_from_slice(&seg.bytes[(from - rs) as usize..(to - rs) as usize]);
    }
    page
}

/// The image a plain sequential loop writes, straight from FORMAT.md.
fn oracle_image(dump: &Path, metadata: &Metadata, opts: &CaptureOptions) -> Vec<u8> {
    let (segments, _) = read_core(dump);
    let meta = metadata.encode();
    let mut chunks = Vec::new();
    let mut entries = Vec::new();
    let (mut zero, mut total) = (0u64, 0u64);
    let data_offset = plan_layout(meta.len() as u64, 0, 0).unwrap().data_offset;
    for (seq, spec) in chunk_specs(&metadata.ranges).enumerate() {
        let seg = &segments[spec.range];
        let mut pages = Vec::new();
        for p in 0..u64::from(spec.page_count) {
            pages.extend(page_of(seg, spec.first_pfn.0 + p));
        }
        let c = ChunkCodec::Plain.encode(&spec, seq as u32, opts.uuid, &pages);
        entries.push(c.header.index_entry(kjump_image_format::ImageOffset(
            data_offset + chunks.len() as u64,
        )));
        chunks.extend_from_slice(&c.header.encode());
        chunks.extend_from_slice(&c.payload);
        zero += u64::from(c.header.zero_bitmap.count_ones());
        total += u64::from(spec.page_count);
    }
    let mut l = plan_layout(meta.len() as u64, chunks.len() as u64, entries.len() as u64).unwrap();
    let index: Vec<u8> = entries.iter().flat_map(|e| e.encode()).collect();
    l.index_crc = crc32fast::hash(&index);
    l.metadata_crc = crc32fast::hash(&meta);
    l.total_pages = total;
    l.zero_pages = zero;
    let mut sb = Superblock::writing(opts.uuid, opts.capture_time_ns);
    sb.state = ImageState::Committed;
    sb.layout = l;
    let trailer = Trailer {
        uuid: opts.uuid,
        index_offset: l.index_offset,
        chunk_count: l.chunk_count,
        index_crc: l.index_crc,
        metadata_crc: l.metadata_crc,
        data_len: l.data_len,
    };
    let mut img = sb.encode();
    assert_eq!(img.len(), BLOCK_SIZE);
    img.extend_from_slice(&meta);
    img.resize(l.data_offset as usize, 0);
    img.extend_from_slice(&chunks);
    img.resize(l.index_offset as usize, 0);
    img.extend_from_slice(&index);
    img.extend_from_slice(&trailer.encode());
    img.resize(l.image_len as usize, 0);
    img
}

#[test]
fn parallel_writer_matches_sequential_oracle() {
    let dir = TempDir::new("roundtrip-oracle");
    for (seed, layout) in [
        (11u64, Layout::Qemu),
        (12, Layout::Unaligned),
        (13, Layout::Holes),
    ] {
        let spec = DumpSpec::from_layout(layout, layout.min_size().max(8 << 20), seed).unwrap();
        let dump = dir.path("oracle.elf");
        let img = dir.path("oracle.img");
        write_dump(&spec, &dump).unwrap();
        let metadata = MemorySource::open(&dump, None).unwrap().metadata();
        // Small windows and two threads: many batches cross the channel.
        for (threads, window) in [(2, 64), (2, 448), (1, 4096)] {
            let opts = options(threads, window, seed);
            capture_file(&dump, &img, &opts);
            let written = std::fs::read(&img).unwrap();
            let expected = oracle_image(&dump, &metadata, &opts);
            assert_eq!(written.len(), expected.len(), "image length, seed {seed}");
            if let Some(at) = written.iter().zip(&expected).position(|(a, b)| a != b) {
                panic!("seed {seed} threads {threads} window {window}: image differs from the oracle at offset {at:#x}");
            }
        }
    }
}

fn segments_strategy() -> impl Strategy<Value = Vec<SegmentSpec>> {
    // Gaps and lengths in bytes, some page aligned and some not.
    prop::collection::vec(
        (
            0u64..3 * 1024 * 1024,
            1u64..600 * 1024,
            any::<bool>(),
            0u8..=100,
        ),
        1..6,
    )
    .prop_map(|parts| {
        let mut at = 0u64;
        parts
            .into_iter()
            .map(|(gap, len, aligned, file_pct)| {
                let (gap, len) = if aligned {
                    (gap & !0xfff, (len + 0xfff) & !0xfff)
                } else {
                    (gap, len)
                };
                at += gap;
                let seg = SegmentSpec::new(at, len).with_filesz(len * u64::from(file_pct) / 100);
                at += len;
                seg
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn random_shapes_round_trip(segments in segments_strategy(), seed in any::<u64>(), threads in 1usize..=2) {
        let dir = TempDir::new(&format!("roundtrip-prop-{seed:x}"));
        let spec = DumpSpec::new(seed, segments);
        cycle(&dir, "prop", &spec, threads, 64 * (1 + (seed % 4) as usize));
    }
}

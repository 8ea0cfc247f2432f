//! The restore path against a file standing in for /dev/mem: every byte of
//! every saved range comes back, nothing outside them is touched, and every
//! refusal happens before the image or memory changes.

mod common;

use std::path::Path;

use common::cores::read_core;
use common::tempdir::TempDir;
use kjump_dumpgen::{write_dump, DumpSpec, SegmentSpec};
use kjump_image_format::metadata::KEY_REGION;
use kjump_image_format::{Image, ImageState, MemoryMap, PhysAddr, PhysRange, ZeroPages};
use kjump_restorer::{restore, RestoreError};
use kjump_sys::{Place, Target};
use kjump_writer::{capture, CaptureOptions, MemorySource};

const FILL: u8 = 0xee;
/// The capture region the images record.
const REGION: &str = "0x2f000000-0x3effffff";

/// Physical memory as a file (offset = address) holding a synthetic dump's
/// segments, and the image of its ranges.
fn setup(dir: &TempDir, entry: Option<u64>) -> (Vec<u8>, MemoryMap) {
    let k = 4096u64;
    let segments = vec![
        SegmentSpec::new(0x1000, 0x9ec00),
        SegmentSpec::new(0x100000, 300 * k),
        SegmentSpec::new(0x300123, 5 * k + 77),
    ];
    let dump = dir.path("d.elf");
    write_dump(&DumpSpec::new(21, segments), &dump).unwrap();
    let (segs, _) = read_core(&dump);
    let end = segs
        .iter()
        .map(|s| s.paddr + s.bytes.len() as u64)
        .max()
        .unwrap()
        + 2 * k;
    let mut mem = vec![0u8; end as usize];
    for s in &segs {
        mem[s.paddr as usize..s.paddr as usize + s.bytes.len()].copy_from_slice(&s.bytes);
    }
    std::fs::write(dir.path("mem"), &mem).unwrap();
    let map = MemoryMap::from_sorted(
        segs.iter()
            .map(|s| PhysRange::from_start_len(PhysAddr(s.paddr), s.bytes.len() as u64).unwrap())
            .collect(),
    )
    .unwrap();
    let source = MemorySource::open(&dir.path("mem"), Some(map.clone())).unwrap();
    let mut meta = source.metadata();
    meta.jump_back_entry = entry;
    meta.extra.push((KEY_REGION.into(), REGION.into()));
    let target = Target::open(&dir.path("img")).unwrap();
    capture(&source, &target, &meta, &CaptureOptions::new()).unwrap();
    (mem, map)
}

fn place(path: &Path) -> Place {
    Place::locate(path, None).unwrap()
}

fn blank_memory(dir: &TempDir, len: usize) {
    std::fs::write(dir.path("blank"), vec![FILL; len]).unwrap();
}

fn state(path: &Path) -> ImageState {
    let f = std::fs::File::open(path).unwrap();
    kjump_image_format::reader::read_superblock(&f)
        .unwrap()
        .state
}

fn own_ram() -> MemoryMap {
    MemoryMap::merged(vec![PhysRange::from_start_len(
        PhysAddr(0x2f00_0000),
        0x1000_0000,
    )
    .unwrap()])
}

#[test]
fn restore_writes_exactly_the_saved_bytes_and_consumes_the_image() {
    let dir = TempDir::new("restore-ok");
    let (mem, map) = setup(&dir, Some(0x1234_5000));
    blank_memory(&dir, mem.len());
    let report = restore(&place(&dir.path("img")), &dir.path("blank"), &own_ram(), 2).unwrap();
    assert_eq!(report.entry, 0x1234_5000);
    assert_eq!(report.bytes, map.total_bytes());
    let got = std::fs::read(dir.path("blank")).unwrap();
    let mut at = 0usize;
    for r in map.ranges() {
        let (s, e) = (r.start().0 as usize, r.end().0 as usize);
        assert!(
            got[at..s].iter().all(|&b| b == FILL),
            "bytes before {r} were touched"
        );
        assert!(got[s..e] == mem[s..e], "range {r} differs");
        at = e;
    }
    assert!(
        got[at..].iter().all(|&b| b == FILL),
        "bytes after the last range were touched"
    );
    assert_eq!(state(&dir.path("img")), ImageState::Consumed);
    assert!(report.not_consumed.is_none());
    // A consumed image still verifies, and is never resumed again.
    let f = std::fs::File::open(dir.path("img")).unwrap();
    let image = Image::open(&f).unwrap();
    assert!(image.superblock.consumed_time_ns > 0);
    kjump_restorer::verify(&f, &image, 2, false).unwrap();
    let e = restore(&place(&dir.path("img")), &dir.path("blank"), &own_ram(), 2).unwrap_err();
    assert!(matches!(e, RestoreError::Consumed { .. }), "{e}");
}

fn assert_refused_untouched(dir: &TempDir, own: &MemoryMap, check: impl Fn(&RestoreError) -> bool) {
    let len = std::fs::metadata(dir.path("mem")).unwrap().len() as usize;
    blank_memory(dir, len);
    let e = restore(&place(&dir.path("img")), &dir.path("blank"), own, 2).unwrap_err();
    assert!(check(&e), "unexpected refusal: {e}");
    assert_eq!(state(&dir.path("img")), ImageState::Committed, "{e}");
    let got = std::fs::read(dir.path("blank")).unwrap();
    assert!(
        got.iter().all(|&b| b == FILL),
        "memory was touched although restore refused: {e}"
    );
}

#[test]
fn refusals_change_nothing() {
    let dir = TempDir::new("restore-refuse");
    setup(&dir, Some(0x1000));
    let overlapping =
        MemoryMap::merged(vec![
            PhysRange::from_start_len(PhysAddr(0x140000), 0x1000).unwrap()
        ]);
    assert_refused_untouched(
        &dir,
        &overlapping,
        |e| matches!(e, RestoreError::Overlap { range, own } if range == "0x100000-0x22bfff" && own == "0x140000-0x140fff"),
    );
    // A nonzero byte in the padding after the chunks: refused before the
    // pass begins.
    let good = std::fs::read(dir.path("img")).unwrap();
    let f = std::fs::File::open(dir.path("img")).unwrap();
    let image = Image::open(&f).unwrap();
    let l = image.superblock.layout;
    let mut img = good.clone();
    if l.data_offset + l.data_len < l.index_offset {
        img[(l.data_offset + l.data_len) as usize] = 1;
        std::fs::write(dir.path("img"), &img).unwrap();
        assert_refused_untouched(&dir, &own_ram(), |e| {
            matches!(e, RestoreError::Invalid { .. })
        });
    }
    // The first chunk's header damaged: with one thread, it fails before
    // any page is written, so this is a refusal too.
    let mut img = good.clone();
    img[image.index[0].offset.0 as usize + 36] ^= 0x01;
    std::fs::write(dir.path("img"), &img).unwrap();
    let len = std::fs::metadata(dir.path("mem")).unwrap().len() as usize;
    blank_memory(&dir, len);
    let e = restore(&place(&dir.path("img")), &dir.path("blank"), &own_ram(), 1).unwrap_err();
    assert!(matches!(e, RestoreError::Invalid { .. }), "{e}");
    assert!(e.memory_untouched());
    assert_eq!(state(&dir.path("img")), ImageState::Committed);
    let got = std::fs::read(dir.path("blank")).unwrap();
    assert!(got.iter().all(|&b| b == FILL), "memory was touched: {e}");
}

/// One read: a chunk that fails once earlier chunks were written stops the
/// restore, and the image records which chunk and why, so that it is never
/// resumed again (neither by R nor by R0), while the pages before it are
/// in memory.
#[test]
fn a_chunk_failing_after_memory_was_written_marks_the_image_failed() {
    let dir = TempDir::new("restore-failed");
    let (mem, map) = setup(&dir, Some(0x1000));
    let mut img = std::fs::read(dir.path("img")).unwrap();
    let f = std::fs::File::open(dir.path("img")).unwrap();
    let image = Image::open(&f).unwrap();
    let (last, e) = image
        .index
        .iter()
        .enumerate()
        .rev()
        .find(|(_, e)| e.stored_len > 0)
        .unwrap();
    assert!(last > 2, "the image needs chunks before the damaged one");
    img[(e.offset.0 + 64 + u64::from(e.stored_len) / 2) as usize] ^= 0x01;
    std::fs::write(dir.path("img"), &img).unwrap();
    blank_memory(&dir, mem.len());
    for threads in [1, 2] {
        let e = restore(
            &place(&dir.path("img")),
            &dir.path("blank"),
            &own_ram(),
            threads,
        )
        .unwrap_err();
        if threads == 2 {
            // The image says it failed: no restore tries it again.
            assert!(matches!(e, RestoreError::FailedBefore { .. }), "{e}");
            assert!(e.to_string().contains(&format!("chunk {last}")), "{e}");
            break;
        }
        assert!(!e.memory_untouched(), "{e}");
        let shown = kjump_handoff::error_chain(&e);
        assert!(
            shown.contains(&format!("failed part way at chunk {last}"))
                && shown.contains("is marked failed"),
            "{shown}"
        );
        let f = std::fs::File::open(dir.path("img")).unwrap();
        let sb = kjump_image_format::reader::read_superblock(&f).unwrap();
        assert_eq!(sb.state, ImageState::Failed);
        assert_eq!(sb.restore.failed_chunk, Some(last as u64));
        assert!(
            sb.restore.failure.text().contains(&format!("chunk {last}")),
            "{:?}",
            sb.restore.failure
        );
    }
    // The first range came back before the damaged chunk was reached.
    let got = std::fs::read(dir.path("blank")).unwrap();
    let first = map.ranges()[0];
    let (s, e) = (first.start().0 as usize, first.end().0 as usize);
    assert!(got[s..e] == mem[s..e], "range {first} was not written");
}

#[test]
fn an_image_without_a_jump_back_entry_is_refused() {
    let dir = TempDir::new("restore-noentry");
    setup(&dir, None);
    assert_refused_untouched(&dir, &own_ram(), |e| {
        matches!(e, RestoreError::NoEntry { .. })
    });
}

/// The restore kernel restores only the image the resume checked: the same
/// uuid, ranges, capture region and encryption, or nothing changes. (A
/// plain image with an encrypted one's uuid, ranges and region, all in the
/// clear, would otherwise be restored without the key R was given.)
#[test]
fn a_pinned_restore_refuses_another_image() {
    use kjump_restorer::restore::{restore_with_key, Pin};
    let dir = TempDir::new("restore-pin");
    let (_, map) = setup(&dir, Some(0x1000));
    let f = std::fs::File::open(dir.path("img")).unwrap();
    let uuid = Image::open(&f).unwrap().superblock.uuid;
    let region = PhysRange::new(PhysAddr(0x2f00_0000), PhysAddr(0x3f00_0000)).unwrap();
    let right = Pin {
        uuid,
        ranges: MemoryMap::merged(map.ranges().to_vec()),
        region,
        encrypted: false,
    };
    let other_range = MemoryMap::merged(vec![map.ranges()[0]]);
    let other_region = PhysRange::new(PhysAddr(0x2000_0000), PhysAddr(0x3000_0000)).unwrap();
    let wrong = [
        (
            Pin {
                uuid: [7; 16],
                ..right.clone()
            },
            "uuid 07070707",
        ),
        (
            Pin {
                ranges: other_range,
                ..right.clone()
            },
            "saved ranges",
        ),
        (
            Pin {
                region: other_region,
                ..right.clone()
            },
            "capture region 0x20000000-0x2fffffff expected, \"0x2f000000-0x3effffff\" found",
        ),
        (
            Pin {
                encrypted: true,
                ..right.clone()
            },
            "an encrypted image expected, a plain image found",
        ),
    ];
    let len = std::fs::metadata(dir.path("mem")).unwrap().len() as usize;
    for (pin, want) in wrong {
        blank_memory(&dir, len);
        let e = restore_with_key(
            &place(&dir.path("img")),
            &dir.path("blank"),
            &own_ram(),
            2,
            None,
            Some(&pin),
        )
        .unwrap_err();
        assert!(matches!(e, RestoreError::NotPinned { .. }), "{e}");
        assert!(e.to_string().contains(want), "{e}");
        assert!(e.memory_untouched());
        assert_eq!(state(&dir.path("img")), ImageState::Committed, "{e}");
        let got = std::fs::read(dir.path("blank")).unwrap();
        assert!(got.iter().all(|&b| b == FILL), "memory was touched: {e}");
    }
    blank_memory(&dir, len);
    restore_with_key(
        &place(&dir.path("img")),
        &dir.path("blank"),
        &own_ram(),
        2,
        None,
        Some(&right),
    )
    .unwrap();
    assert_eq!(state(&dir.path("img")), ImageState::Consumed);
}

/// `len` bytes of seeded random RAM from 1 MiB (DIR/mem, returned whole),
/// captured into DIR/img with a jump-back entry and a region.
fn random_image(dir: &TempDir, len: usize, seed: u64) -> Vec<u8> {
    let mut mem = vec![0u8; 0x10_0000 + len];
    kjump_dumpgen::Rng::new(seed).fill(&mut mem[0x10_0000..]);
    std::fs::write(dir.path("mem"), &mem).unwrap();
    let map = MemoryMap::from_sorted(vec![PhysRange::from_start_len(
        PhysAddr(0x10_0000),
        len as u64,
    )
    .unwrap()])
    .unwrap();
    let source = MemorySource::open(&dir.path("mem"), Some(map)).unwrap();
    let mut meta = source.metadata();
    meta.jump_back_entry = Some(0x1000);
    meta.extra.push((KEY_REGION.into(), REGION.into()));
    let target = Target::open(&dir.path("img")).unwrap();
    capture(&source, &target, &meta, &CaptureOptions::new()).unwrap();
    mem
}

/// An image of several read windows, damaged in its first chunk: the pass
/// stops there and returns (the reader thread, a window ahead, is told to
/// stop), for verify and for a restore alike.
#[test]
fn a_pass_over_many_windows_stops_at_a_failure_in_the_first() {
    let dir = TempDir::new("restore-windows");
    let len = 3 * kjump_restorer::scan::WINDOW_BYTES as usize + (1 << 20);
    let mem = random_image(&dir, len, 7);
    let mut img = std::fs::read(dir.path("img")).unwrap();
    let f = std::fs::File::open(dir.path("img")).unwrap();
    let image = Image::open(&f).unwrap();
    img[image.index[0].offset.0 as usize + 64 + 100] ^= 0x01;
    std::fs::write(dir.path("img"), &img).unwrap();
    blank_memory(&dir, mem.len());
    let (done, wait) = std::sync::mpsc::channel();
    let img_path = dir.path("img");
    let blank = dir.path("blank");
    std::thread::spawn(move || {
        let f = std::fs::File::open(&img_path).unwrap();
        let image = Image::open(&f).unwrap();
        let verified = kjump_restorer::verify(&f, &image, 2, false).map(drop);
        let restored = restore(&place(&img_path), &blank, &own_ram(), 1).map(drop);
        let _ = done.send((verified.map_err(|e| e.to_string()), restored));
    });
    let (verified, restored) = wait
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the passes did not return within 60 s");
    assert!(verified.unwrap_err().contains("chunk 0"));
    let e = restored.unwrap_err();
    assert!(matches!(e, RestoreError::Invalid { .. }), "{e}");
    assert_eq!(state(&dir.path("img")), ImageState::Committed);
}

/// A consumer that panics at one chunk stops the pass there like a failed
/// check: the chunk is named, no chunk after it reaches the consumer.
#[test]
fn a_panic_at_a_chunk_stops_the_pass_there_and_names_it() {
    use kjump_restorer::scan::{scan_chunks_at, ScanError};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dir = TempDir::new("restore-panic");
    random_image(&dir, 2 * kjump_restorer::scan::WINDOW_BYTES as usize, 9);
    let f = std::fs::File::open(dir.path("img")).unwrap();
    let image = Image::open(&f).unwrap();
    let at = 5;
    let last = AtomicUsize::new(0);
    let progress = kjump_sys::progress::Progress::new("restore", 0, false);
    let stopped = scan_chunks_at(&f, &image, 1, progress, ZeroPages::Fill, |i, _pages| {
        last.fetch_max(i, Ordering::SeqCst);
        if i == at {
            panic!("a test consumer's panic at chunk {i}");
        }
        Ok::<(), std::io::Error>(())
    })
    .unwrap_err();
    assert_eq!(stopped.chunk, Some(at));
    assert!(
        matches!(stopped.error, ScanError::Panicked),
        "{:?}",
        stopped.error
    );
    assert_eq!(
        last.load(Ordering::SeqCst),
        at,
        "chunks after the panic were handed over"
    );
}

/// The reader asks the source for each window before it reads it, up to
/// two windows ahead (through the page cache, the device then reads ahead
/// while the pool decodes), and reads every window once.
#[test]
fn the_reader_asks_for_windows_ahead_of_its_reads() {
    use kjump_image_format::ReadAt;
    use kjump_restorer::scan::{scan_chunks_at, WINDOW_BYTES};
    use std::sync::Mutex;

    /// A file that logs what it is asked for.
    struct Logged {
        file: std::fs::File,
        log: Mutex<Vec<(char, u64, usize)>>,
    }
    impl ReadAt for Logged {
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            self.log.lock().unwrap().push(('r', offset, buf.len()));
            self.file.read_exact_at(buf, offset)
        }
        fn size(&self) -> std::io::Result<u64> {
            self.file.size()
        }
        fn prefetch(&self, offset: u64, len: usize) {
            self.log.lock().unwrap().push(('p', offset, len));
            self.file.prefetch(offset, len);
        }
    }

    let dir = TempDir::new("restore-prefetch");
    random_image(&dir, 4 * WINDOW_BYTES as usize + (1 << 20), 11);
    let src = Logged {
        file: std::fs::File::open(dir.path("img")).unwrap(),
        log: Mutex::new(Vec::new()),
    };
    let image = Image::open(&src).unwrap();
    src.log.lock().unwrap().clear();
    let progress = kjump_sys::progress::Progress::new("verify", 0, false);
    scan_chunks_at(&src, &image, 2, progress, ZeroPages::Fill, |_, _| {
        Ok::<(), std::io::Error>(())
    })
    .unwrap();
    let log = src.log.into_inner().unwrap();
    let reads: Vec<(u64, usize)> = log
        .iter()
        .filter(|e| e.0 == 'r')
        .map(|e| (e.1, e.2))
        .collect();
    let asked: Vec<(u64, usize)> = log
        .iter()
        .filter(|e| e.0 == 'p')
        .map(|e| (e.1, e.2))
        .collect();
    assert!(reads.len() >= 5, "{} windows read", reads.len());
    assert_eq!(asked, reads, "each window asked for once, in order");
    for (i, w) in reads.iter().enumerate() {
        let read_at = log
            .iter()
            .position(|e| e.0 == 'r' && (e.1, e.2) == *w)
            .unwrap();
        let ahead = log[..read_at].iter().filter(|e| e.0 == 'p').count();
        assert_eq!(
            ahead,
            (i + 3).min(reads.len()),
            "asked for before reading window {i}"
        );
    }
}

//! Power cuts and bit rot. A capture cut off after N bytes, for N across
//! every phase (the invalidating superblock, metadata, chunks, index,
//! trailer, commit), over a target that held a committed image: the target
//! must then hold either that earlier image, whole, or an image every tool
//! calls incomplete or corrupt, and a restore must refuse it before touching
//! memory; never a mix. Then random byte flips over a whole image: verify
//! fails every time, and restore refuses before writing memory or stops at
//! the rotten chunk and marks the image failed.

mod common;

use std::path::Path;

use common::tempdir::TempDir;
use kjump_dumpgen::{fill_page, PageKind, Rng, PAGE_SIZE};
use kjump_image_format::reader::read_superblock;
use kjump_image_format::{
    FormatError, Image, ImageState, MemoryMap, Metadata, PhysAddr, PhysRange,
};
use kjump_restorer::{restore, RestoreError};
use kjump_writer::{capture, CaptureOptions, MemorySource, Target};

const MEM_LEN: usize = 0x60_0000;

fn ranges() -> MemoryMap {
    let r = |s: u64, l: u64| PhysRange::from_start_len(PhysAddr(s), l).unwrap();
    MemoryMap::from_sorted(vec![
        r(0x1000, 0x9_f000),
        r(0x10_0000, 0x30_0000),
        r(0x50_0123, 0x5_0000),
    ])
    .unwrap()
}

/// Memory with a mix of zero, kernel-like and random pages; `salt` makes
/// two different machines.
fn memory(salt: u64) -> Vec<u8> {
    let mut mem = vec![0u8; MEM_LEN];
    for (pfn, page) in mem.chunks_mut(PAGE_SIZE).enumerate() {
        let kind = match (pfn as u64 + salt) % 5 {
            0 | 1 => PageKind::Zero,
            2 => PageKind::Kernel,
            _ => PageKind::Random,
        };
        fill_page(kind, salt, pfn as u64, page);
    }
    mem
}

struct Machine {
    mem: Vec<u8>,
    opts: CaptureOptions,
}

fn machine(dir: &TempDir, salt: u64) -> Machine {
    let mem = memory(salt);
    std::fs::write(dir.path(&format!("mem{salt}")), &mem).unwrap();
    let mut opts = CaptureOptions::new();
    opts.uuid = [salt as u8; 16];
    opts.threads = 2;
    opts.window_pages = 128;
    Machine { mem, opts }
}

fn metadata(source: &MemorySource) -> Metadata {
    let mut m = source.metadata();
    m.jump_back_entry = Some(0x1000);
    m
}

/// Captures machine `salt` into `target`, cutting power after `cut` bytes.
fn capture_cut(dir: &TempDir, m: &Machine, salt: u64, target: &Path, cut: Option<u64>) -> bool {
    let source = MemorySource::open(&dir.path(&format!("mem{salt}")), Some(ranges())).unwrap();
    let t = Target::open(target).unwrap();
    if let Some(n) = cut {
        t.cut_power_after(n);
    }
    capture(&source, &t, &metadata(&source), &m.opts).is_ok()
}

/// What a restore puts in memory, or why it refused (memory then untouched).
fn restored(dir: &TempDir, image: &Path) -> Result<Vec<u8>, RestoreError> {
    let blank = dir.path("blank");
    std::fs::write(&blank, vec![0xeeu8; MEM_LEN]).unwrap();
    let own = MemoryMap::merged(vec![PhysRange::from_start_len(
        PhysAddr(0x100_0000),
        0x1000,
    )
    .unwrap()]);
    match restore(
        &kjump_sys::Place::locate(image, None).unwrap(),
        &blank,
        &own,
        2,
    ) {
        Ok(_) => Ok(std::fs::read(&blank).unwrap()),
        Err(e) => {
            let after = std::fs::read(&blank).unwrap();
            assert_eq!(
                after.iter().all(|&b| b == 0xee),
                e.memory_untouched(),
                "memory written or not, against what the restore says: {e}"
            );
            Err(e)
        }
    }
}

fn saved_bytes(mem: &[u8]) -> Vec<u8> {
    ranges()
        .ranges()
        .iter()
        .flat_map(|r| mem[r.start().0 as usize..r.end().0 as usize].to_vec())
        .collect()
}

fn restored_bytes(out: &[u8]) -> Vec<u8> {
    saved_bytes(out)
}

#[test]
fn a_capture_cut_at_any_byte_never_leaves_an_image_that_looks_whole() {
    let dir = TempDir::new("power-cut");
    let (old, new) = (machine(&dir, 1), machine(&dir, 2));
    let pristine = dir.path("old.img");
    assert!(capture_cut(&dir, &old, 1, &pristine, None));
    let old_bytes = std::fs::read(&pristine).unwrap();
    // Bytes a whole capture of the new machine writes: the invalidating
    // superblock block, everything from the metadata on, and the commit.
    let scratch = dir.path("scratch.img");
    assert!(capture_cut(&dir, &new, 2, &scratch, None));
    let new_len = std::fs::metadata(&scratch).unwrap().len();
    let total = 4096 + (new_len - 4096) + 4096;
    let l = Image::open(&std::fs::File::open(&scratch).unwrap())
        .unwrap()
        .superblock
        .layout;
    let mut cuts: Vec<u64> = vec![0, 1, 100, 511, 512, 513, 4095, 4096, 4097, 8191, 8192];
    for edge in [l.data_offset, l.index_offset, l.trailer_offset, l.image_len] {
        cuts.extend([edge - 1, edge, edge + 1]);
    }
    cuts.extend((0..total).step_by(7919));
    cuts.extend([
        total - 4097,
        total - 4096,
        total - 4095,
        total - 513,
        total - 512,
        total - 1,
        total,
    ]);
    cuts.sort_unstable();
    cuts.dedup();
    let (mut old_whole, mut new_whole, mut refused) = (0, 0, 0);
    let target = dir.path("target.img");
    for &cut in &cuts {
        std::fs::write(&target, &old_bytes).unwrap();
        let ok = capture_cut(&dir, &new, 2, &target, Some(cut));
        assert_eq!(
            ok,
            cut >= total,
            "capture with a cut after {cut} of {total} bytes"
        );
        let file = std::fs::File::open(&target).unwrap();
        let opened = read_superblock(&file).and_then(|sb| Image::open(&file).map(|i| (sb, i)));
        match opened {
            Ok((sb, image)) => {
                assert_eq!(sb.state, ImageState::Committed, "cut {cut}");
                kjump_restorer::verify(&file, &image, 2, false)
                    .unwrap_or_else(|e| panic!("cut {cut}: whole-looking image fails verify: {e}"));
                let out = restored(&dir, &target).unwrap_or_else(|e| panic!("cut {cut}: {e}"));
                let (want, counter) = if sb.uuid == old.opts.uuid {
                    // Only while what landed of the new superblock equals the
                    // old one's bytes (the magic and version, before the uuid).
                    assert!(cut < 48, "cut {cut} left the old image committed");
                    (saved_bytes(&old.mem), &mut old_whole)
                } else {
                    assert_eq!(sb.uuid, new.opts.uuid, "cut {cut}");
                    // Only once the commit's first sector (all its fields) landed.
                    assert!(
                        cut >= total - 4096 + 512,
                        "cut {cut} of {total} committed the new image"
                    );
                    (saved_bytes(&new.mem), &mut new_whole)
                };
                assert!(
                    restored_bytes(&out) == want,
                    "cut {cut}: restored memory is neither image whole"
                );
                *counter += 1;
            }
            Err(e) => {
                assert!(
                    matches!(
                        e,
                        FormatError::NotCommitted { .. } | FormatError::Checksum { .. }
                    ),
                    "cut {cut}: unexpected error {e}"
                );
                let r = restored(&dir, &target).unwrap_err();
                assert!(matches!(r, RestoreError::Invalid { .. }), "cut {cut}: {r}");
                refused += 1;
            }
        }
    }
    println!(
        "power cuts: {} points over {total} bytes: {old_whole} left the old image whole, \
         {new_whole} committed the new one, {refused} reported incomplete or corrupt",
        cuts.len()
    );
    assert!(old_whole >= 1 && new_whole >= 1 && refused > 200);
}

#[test]
fn random_bit_rot_is_always_caught_and_never_restored() {
    let dir = TempDir::new("bit-rot");
    let m = machine(&dir, 3);
    let img = dir.path("img");
    assert!(capture_cut(&dir, &m, 3, &img, None));
    let bytes = std::fs::read(&img).unwrap();
    let mut rng = Rng::new(0x2545_f491_4f6c_dd1d);
    let trials = 300;
    let (mut refused, mut stopped) = (0, 0);
    for _ in 0..trials {
        let at = rng.below(bytes.len() as u64) as usize;
        let bit = 1u8 << rng.below(8);
        let mut rotten = bytes.clone();
        rotten[at] ^= bit;
        let path = dir.path("rotten");
        std::fs::write(&path, &rotten).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let caught = match Image::open(&file) {
            Err(_) => true,
            Ok(image) => kjump_restorer::verify(&file, &image, 2, false).is_err(),
        };
        assert!(caught, "flip of bit {bit:#x} at {at:#x} passed verify");
        // Refused before memory is written, or stopped at the rotten chunk
        // with the image marked failed: never restored, never consumed.
        let e = restored(&dir, &path).unwrap_err();
        let state = read_superblock(&file).map(|sb| sb.state).ok();
        match e {
            RestoreError::Invalid { .. } => {
                refused += 1;
                assert_ne!(state, Some(ImageState::Consumed), "flip at {at:#x}");
            }
            RestoreError::Failed { chunk: Some(_), .. } => {
                stopped += 1;
                assert_eq!(state, Some(ImageState::Failed), "flip at {at:#x}");
            }
            e => panic!("flip at {at:#x}: {e}"),
        }
    }
    println!(
        "bit rot: {trials} random flips over a {}-byte image: {refused} refused before memory \
         was written, {stopped} stopped at their chunk and marked the image failed",
        bytes.len()
    );
    assert!(refused > 0 && stopped > 0);
}

//! Real places for an image: a swap partition and a preallocated file on
//! ext4, on loop devices, through the kjump binary and the restore path;
//! and the extent mapping itself on a plain file standing in for a device.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::kjump::{kjump, Arg, Run};
use common::loopdev::{ready, sh, Loop, Mount};
use common::tempdir::TempDir;
use kjump_dumpgen::{fill_page, PageKind, PAGE_SIZE};
use kjump_image_format::placement::{Extent, ExtentMap, SWAP_MAGIC_OFFSET};
use kjump_image_format::{Image, ImageState, MemoryMap, PhysAddr, PhysRange, Placement};
use kjump_jump::resume::{check, DEFAULT_MAX_ATTEMPTS};
use kjump_restorer::restore;
use kjump_sys::Place;

const RANGES: &str = "0x100000-0x13ffff,0x200000-0x27ffff";
const IOMEM: &str = "00001000-0009fbff : System RAM\n00100000-3fffffff : System RAM\n";
const MEM_LEN: usize = 0x28_0000;

/// Memory standing in for /dev/mem: pages of a few kinds, some zero.
fn memory(dir: &TempDir) -> PathBuf {
    let mut mem = vec![0u8; MEM_LEN];
    for (pfn, page) in mem.chunks_mut(PAGE_SIZE).enumerate() {
        let kind = match pfn % 5 {
            0 => PageKind::Zero,
            1 => PageKind::Kernel,
            _ => PageKind::Random,
        };
        fill_page(kind, 0x7a, pfn as u64, page);
    }
    let path = dir.path("mem");
    std::fs::write(&path, mem).unwrap();
    path
}

/// Captures the test memory into `target` with the kjump binary, recording
/// what `kjump resume` needs.
fn capture(mem: &Path, target: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
        &"capture",
        &"--source",
        &mem,
        &"--ranges",
        &RANGES,
        &"--jump-back-entry",
        &"0x1000",
        &"--meta",
        &"region=0x10000000-0x1fffffff",
        &"--target",
    ];
    args.extend_from_slice(target);
    kjump(&args).ok().stdout
}

/// Restores the image at `place` into blank memory and checks every saved
/// byte came back.
fn restore_and_compare(dir: &TempDir, place: &Place, mem: &Path) {
    let blank = dir.path("blank");
    std::fs::write(&blank, vec![0xeeu8; MEM_LEN]).unwrap();
    let own = MemoryMap::merged(vec![PhysRange::from_start_len(
        PhysAddr(0x100_0000),
        0x100_0000,
    )
    .unwrap()]);
    restore(place, &blank, &own, 2).unwrap();
    let (want, got) = (std::fs::read(mem).unwrap(), std::fs::read(&blank).unwrap());
    for (s, e) in [(0x10_0000, 0x14_0000), (0x20_0000, 0x28_0000)] {
        assert!(want[s..e] == got[s..e], "range {s:#x}-{e:#x} differs");
    }
    assert!(got[..0x10_0000].iter().all(|&b| b == 0xee), "wrote outside");
}

fn state(place: &Place) -> ImageState {
    let r = place.reader().unwrap();
    kjump_image_format::reader::read_superblock(&r)
        .unwrap()
        .state
}

fn swap_magic(file: &Path) -> Vec<u8> {
    let b = std::fs::read(file).unwrap();
    b[SWAP_MAGIC_OFFSET..SWAP_MAGIC_OFFSET + 10].to_vec()
}

#[test]
fn mapped_writes_land_only_in_the_extents() {
    let dir = TempDir::new("targets-mapped");
    let mem = memory(&dir);
    let dev = dir.path("device");
    std::fs::write(&dev, vec![0xa5u8; 0x80_0000]).unwrap();
    let ext = |logical, physical, len| Extent {
        logical,
        physical,
        len,
    };
    // Three runs out of order on the device, the map in the first.
    let extents = [
        ext(0, 0x10_0000, 0x1_0000),
        ext(0x1_0000, 0x60_0000, 0x4_0000),
        ext(0x5_0000, 0x20_0000, 0x3b_0000),
    ];
    let map = ExtentMap::new(0x40_0000, &extents).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&dev).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &map.encode(), 0x10_0000).unwrap();
    let place = Place {
        named: dev.clone(),
        holder: dev.clone(),
        block_device: false,
        placement: Placement::Extents(map),
    };
    let target = kjump_sys::Target::open_place(&place).unwrap();
    let ranges = kjump_sys::ranges::parse_range_list(RANGES).unwrap();
    let source =
        kjump_writer::MemorySource::open(&mem, Some(kjump_sys::ranges::memory_map(ranges)))
            .unwrap();
    let mut meta = source.metadata();
    meta.jump_back_entry = Some(0x1000);
    let report = kjump_writer::capture(
        &source,
        &target,
        &meta,
        &kjump_writer::CaptureOptions::new(),
    )
    .unwrap();
    // The image spans the second extent into the third.
    assert!(report.layout.image_len > 0x4_0000, "{report:?}");
    let image = Image::open(&place.reader().unwrap()).unwrap();
    assert_eq!(image.superblock.state, ImageState::Committed);
    restore_and_compare(&dir, &place, &mem);
    assert_eq!(state(&place), ImageState::Consumed);
    // Nothing outside the file's extents changed.
    let bytes = std::fs::read(&dev).unwrap();
    let inside = |o: u64| {
        extents
            .iter()
            .any(|e| e.physical <= o && o < e.physical + e.len)
    };
    let stray = (0..bytes.len() as u64).find(|&o| !inside(o) && bytes[o as usize] != 0xa5);
    assert_eq!(stray, None, "a byte outside the extents was written");
}

#[test]
fn swap_partition_holds_an_image_and_gets_its_signature_back() {
    if !ready(&["losetup", "mkswap", "swapon", "swapoff", "blkid"]) {
        return;
    }
    let dir = TempDir::new("targets-swap");
    let mem = memory(&dir);
    let file = dir.path("swap.img");
    sh(&format!(
        "truncate -s 16M {0} && chmod 600 {0} && mkswap -L kjumptest {0} >/dev/null",
        file.display()
    ));
    let header = std::fs::read(&file).unwrap()[..4096].to_vec();
    let dev = Loop::over(&file);
    let uuid = sh(&format!("blkid -o value -s UUID {}", dev.0.display()));

    // An active swap area is refused by name, and left alone.
    sh(&format!("swapon {}", dev.0.display()));
    let Run {
        code, stderr: err, ..
    } = kjump::<Arg>(&[
        &"capture",
        &"--source",
        &mem,
        &"--ranges",
        &RANGES,
        &"--target",
        &dev.0,
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("{} is an active swap area", dev.0.display())),
        "{err}"
    );
    sh(&format!("swapoff {}", dev.0.display()));
    assert_eq!(std::fs::read(&file).unwrap()[..4096], header[..]);

    // The image goes after the header; only the signature changes.
    let out = capture(&mem, &[&dev.0]);
    assert!(out.contains("(after its swap header)"), "{out}");
    assert_eq!(swap_magic(&file), b"KJUMPSWAP1");
    let now = std::fs::read(&file).unwrap();
    let changed: Vec<usize> = (0..4096).filter(|&i| now[i] != header[i]).collect();
    assert!(
        changed
            .iter()
            .all(|&i| (SWAP_MAGIC_OFFSET..SWAP_MAGIC_OFFSET + 10).contains(&i)),
        "header bytes outside the signature changed: {changed:?}"
    );
    let (code, _, err) = {
        let o = Command::new("swapon").arg(&dev.0).output().unwrap();
        (
            o.status.code(),
            (),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    assert_ne!(code, Some(0), "swapon took a swap area holding an image");
    assert!(!err.is_empty());
    let info = kjump::<Arg>(&[&"info", &"--json", &dev.0]).ok().stdout;
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["placement"], "swap");
    assert_eq!(v["state"], "committed");
    kjump::<Arg>(&[&"verify", &dev.0]).ok();
    // A copy of the partition in a file reads the same way.
    let out = kjump::<Arg>(&[&"verify", &file]).ok().stdout;
    assert!(out.contains("(after its swap header) is whole"), "{out}");

    // R0 would resume it; R restores it, marks it consumed and gives the
    // swap area back with its header as it was.
    assert!(matches!(
        check(&dev.0, None, IOMEM, false, DEFAULT_MAX_ATTEMPTS, false),
        Ok(Ok(_))
    ));
    let place = Place::locate(&dev.0, None).unwrap();
    restore_and_compare(&dir, &place, &mem);
    assert_eq!(std::fs::read(&file).unwrap()[..4096], header[..]);
    assert_eq!(
        sh(&format!("blkid -o value -s UUID {}", dev.0.display())),
        uuid
    );
    match check(&dev.0, None, IOMEM, false, DEFAULT_MAX_ATTEMPTS, false) {
        Ok(Err(why)) => {
            let why = kjump_handoff::error_chain(&why);
            assert!(why.contains("swap signature in place"), "{why}")
        }
        other => panic!("a given-back swap area must hold nothing to resume: {other:?}"),
    }
    sh(&format!("swapon {0} && swapoff {0}", dev.0.display()));

    // Discard gives it back too; a second discard finds nothing.
    capture(&mem, &[&dev.0]);
    assert_eq!(swap_magic(&file), b"KJUMPSWAP1");
    let out = kjump::<Arg>(&[&"discard", &dev.0]).ok().stdout;
    assert!(out.contains("discarded the committed image"), "{out}");
    assert_eq!(std::fs::read(&file).unwrap()[..4096], header[..]);
    let Run {
        code, stderr: err, ..
    } = kjump::<Arg>(&[&"discard", &dev.0]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("nothing discarded"), "{err}");
    let Run {
        code, stderr: err, ..
    } = kjump::<Arg>(&[&"verify", &dev.0]);
    assert_eq!(code, 1, "{err}");
    sh(&format!("swapon {0} && swapoff {0}", dev.0.display()));

    // An area that was swapped on when its image was written (the held
    // signature says so, as the capture kernel writes it for hibernate)
    // is swapped on again by the discard.
    capture(&mem, &[&dev.0]);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&dev.0)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"KJUMPSWAPA", SWAP_MAGIC_OFFSET as u64).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let out = kjump::<Arg>(&[&"discard", &dev.0]).ok().stdout;
    assert!(
        out.contains("swapped on as before the hibernation"),
        "{out}"
    );
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap();
    assert!(
        swaps
            .lines()
            .any(|l| l.starts_with(&dev.0.display().to_string())),
        "{swaps}"
    );
    sh(&format!("swapoff {}", dev.0.display()));
    assert_eq!(std::fs::read(&file).unwrap()[..4096], header[..]);
}

#[test]
fn file_on_ext4_is_written_on_the_raw_device() {
    if !ready(&["losetup", "mkfs.ext4", "mount", "umount", "e2fsck"]) {
        return;
    }
    let dir = TempDir::new("targets-file");
    let mem = memory(&dir);
    let fs = dir.path("fs.img");
    sh(&format!(
        "truncate -s 64M {0} && mkfs.ext4 -q -F -b 4096 {0}",
        fs.display()
    ));
    let dev = Loop::over(&fs);
    let mnt = dir.path("mnt");
    let img = mnt.join("kjump.img");
    let offset;
    {
        let _m = Mount::new(&dev.0, &mnt);
        std::fs::write(mnt.join("keep"), b"a file that must survive").unwrap();
        let out = kjump::<Arg>(&[&"prepare", &img, &"--size", &"16M"])
            .ok()
            .stdout;
        assert!(out.contains("16.00 MiB for the image"), "{out}");
        let hint = out
            .lines()
            .find_map(|l| l.strip_prefix("resume from it with: "))
            .unwrap_or_else(|| panic!("no resume hint: {out}"));
        let want = format!("kjump resume --device {} --offset 0x", dev.0.display());
        assert!(hint.starts_with(&want), "{hint}");
        offset = hint.rsplit(' ').next().unwrap().to_string();

        let out = capture(&mem, &[&img]);
        assert!(out.contains("committed"), "{out}");
        kjump::<Arg>(&[&"verify", &img]).ok();
        let v: serde_json::Value =
            serde_json::from_str(&kjump::<Arg>(&[&"info", &"--json", &img]).ok().stdout).unwrap();
        assert_eq!(v["placement"], "file");
        assert_eq!(v["holder"], dev.0.display().to_string());
        assert_eq!(format!("{:#x}", v["map_offset"].as_u64().unwrap()), offset);
        // Preparing again keeps the same blocks.
        let again = kjump::<Arg>(&[&"prepare", &img, &"--size", &"16M"])
            .ok()
            .stdout;
        assert!(again.contains(&offset), "{again}");
    }
    // Unmounted, as in the restore kernel: the device and the offset find
    // it, the filesystem is clean and its other files intact.
    sh(&format!("e2fsck -fn {} >/dev/null", dev.0.display()));
    kjump::<Arg>(&[&"verify", &dev.0, &"--offset", &offset]).ok();
    let map_at = u64::from_str_radix(offset.trim_start_matches("0x"), 16).unwrap();
    assert!(matches!(
        check(
            &dev.0,
            Some(map_at),
            IOMEM,
            false,
            DEFAULT_MAX_ATTEMPTS,
            false
        ),
        Ok(Ok(_))
    ));
    let place = Place::locate(&dev.0, Some(map_at)).unwrap();
    restore_and_compare(&dir, &place, &mem);
    assert_eq!(state(&place), ImageState::Consumed);
    let out = kjump::<Arg>(&[&"discard", &dev.0, &"--offset", &offset])
        .ok()
        .stdout;
    assert!(out.contains("discarded the consumed image"), "{out}");
    let Run {
        code, stderr: err, ..
    } = kjump::<Arg>(&[&"info", &dev.0, &"--offset", &offset]);
    assert_eq!(code, 1, "{err}");
    // A wrong offset names what is there instead.
    let Run {
        code, stderr: err, ..
    } = kjump::<Arg>(&[&"verify", &dev.0, &"--offset", &"0x0"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("bad magic in extent map at offset 0x0"),
        "{err}"
    );
    // The filesystem's disk image file, read with the offset, says the same.
    let Run {
        code, stderr: err, ..
    } = kjump::<Arg>(&[&"info", &fs, &"--offset", &offset]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("bad magic in superblock"), "{err}");
    sh(&format!("e2fsck -fn {} >/dev/null", dev.0.display()));
    let _m = Mount::new(&dev.0, &mnt);
    assert_eq!(
        std::fs::read(mnt.join("keep")).unwrap(),
        b"a file that must survive"
    );
}

#[test]
fn file_targets_kjump_cannot_keep_in_place_are_refused() {
    if !ready(&["losetup", "mkfs.ext4", "mount", "umount"]) {
        return;
    }
    let dir = TempDir::new("targets-refused");
    // 1 KiB blocks: extents that are not page aligned on the device.
    let fs = dir.path("fs1k.img");
    sh(&format!(
        "truncate -s 64M {0} && mkfs.ext4 -q -F -b 1024 {0}",
        fs.display()
    ));
    let dev = Loop::over(&fs);
    let mnt = dir.path("mnt1k");
    let _m = Mount::new(&dev.0, &mnt);
    let Run {
        code, stderr: err, ..
    } = kjump::<Arg>(&[&"prepare", &mnt.join("img"), &"--size", &"8M"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unaligned"), "{err}");
    // tmpfs has no device beneath it.
    let tmp = dir.path("tmpfs");
    std::fs::create_dir_all(&tmp).unwrap();
    sh(&format!(
        "mount -t tmpfs -o size=32M none {}",
        tmp.display()
    ));
    let _t = Mount(tmp.clone());
    let Run {
        code, stderr: err, ..
    } = kjump::<Arg>(&[&"prepare", &tmp.join("img"), &"--size", &"8M"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("tmpfs: it lives in RAM"), "{err}");
}

#[test]
fn discard_touches_nothing_that_is_not_a_kjump_image() {
    let dir = TempDir::new("targets-discard");
    let path = dir.path("data");
    let bytes: Vec<u8> = (0..0x2_0000u32).map(|i| (i * 7 % 256) as u8).collect();
    std::fs::write(&path, &bytes).unwrap();
    let Run {
        code, stderr: err, ..
    } = kjump::<Arg>(&[&"discard", &path]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no kjump image on"), "{err}");
    assert!(err.contains("nothing discarded"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    // Nor does prepare overwrite it.
    let Run {
        code, stderr: err, ..
    } = kjump::<Arg>(&[&"prepare", &path, &"--size", &"1M"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is not a kjump file target"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    // An incomplete image (a capture cut short) is discarded.
    let mem = memory(&dir);
    let img = dir.path("img");
    capture(&mem, &[&img]);
    let mut b = std::fs::read(&img).unwrap();
    b.truncate(b.len() / 2);
    std::fs::write(&img, &b).unwrap();
    let out = kjump::<Arg>(&[&"discard", &img]).ok().stdout;
    assert!(out.contains("discarded the committed image"), "{out}");
    assert!(std::fs::read(&img).unwrap()[..4096].iter().all(|&x| x == 0));
}

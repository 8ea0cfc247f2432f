//! The `kjump` binary on damaged images (exit codes, messages, no output
//! left behind) and the writer's failure paths on targets too small for the
//! image: a full tmpfs and a small loop device, which need root.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use kjump_image_format::worst_case_len;
use kjump_image_format::{FormatError, Image, MemoryMap, PhysAddr, PhysRange};
use kjump_writer::{capture, CaptureError, MemorySource, Target, TargetError};

use crate::common::kjump::{kjump, Arg};
use crate::common::tempdir::TempDir;
use crate::fixture::{self, image_a, put_u32, RANGES_ARG};

/// ENOSPC: the root package's tests do not depend on libc.
const ENOSPC: i32 = 28;

fn write_image(dir: &TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.path(name);
    fs::write(&p, bytes).expect("writing a test image");
    p
}

#[test]
fn cli_verify_exit_codes_name_the_structure_and_offset() {
    let f = image_a();
    let dir = TempDir::new("cli-verify");
    let good = write_image(&dir, "good", &f.bytes);
    let out = kjump::<Arg>(&[&"verify", &good]).exits(0).stdout;
    assert!(out.contains("is whole"), "{out}");

    let h = f.chunk_at(3);
    let mut b = f.copy();
    b[h + 200] ^= 0x40;
    let bad = write_image(&dir, "bad-payload", &b);
    let err = kjump::<Arg>(&[&"verify", &bad]).exits(1).stderr;
    assert!(
        err.contains(&format!(
            "checksum mismatch in chunk 3 payload at offset {h:#x}"
        )),
        "{err}"
    );

    let mut b = f.copy();
    b[fixture::sb::DATA_LEN] ^= 1;
    let bad = write_image(&dir, "bad-superblock", &b);
    let err = kjump::<Arg>(&[&"verify", &bad]).exits(1).stderr;
    assert!(
        err.contains("checksum mismatch in superblock at offset 0x0"),
        "{err}"
    );

    let t = f.trailer_at();
    let mut b = f.copy();
    b[t + 70] = 1;
    let bad = write_image(&dir, "bad-gap", &b);
    let err = kjump::<Arg>(&[&"verify", &bad]).exits(1).stderr;
    assert!(
        err.contains(&format!(
            "padding after the trailer at offset {:#x} is not zero",
            t + 70
        )),
        "{err}"
    );

    let err = kjump::<Arg>(&[&"verify", &dir.path("missing")])
        .exits(2)
        .stderr;
    assert!(err.contains("opening image"), "{err}");
    let err = kjump::<Arg>(&[&"verify"]).exits(2).stderr;
    assert!(err.contains("Usage"), "{err}");

    let mut noise = vec![0u8; 64 << 10];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for v in &mut noise {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        *v = (x >> 33) as u8;
    }
    let noise = write_image(&dir, "noise", &noise);
    let err = kjump::<Arg>(&[&"verify", &noise]).exits(1).stderr;
    assert!(
        err.contains("bad magic in superblock at offset 0x0"),
        "{err}"
    );

    let empty = write_image(&dir, "empty", &[]);
    let err = kjump::<Arg>(&[&"verify", &empty]).exits(1).stderr;
    assert!(
        err.contains("image is truncated: superblock at offset 0x0"),
        "{err}"
    );
    let cut = write_image(&dir, "cut", &f.bytes[..f.bytes.len() / 2]);
    let err = kjump::<Arg>(&[&"verify", &cut]).exits(1).stderr;
    assert!(
        err.contains("image is truncated: image at offset 0x0"),
        "{err}"
    );
    // A directory is not an image: a usage error that says what it is not.
    let err = kjump::<Arg>(&[&"verify", &dir.0]).exits(2).stderr;
    let want = "neither a regular file nor a block device";
    assert!(err.contains(want), "{err}");
    assert_eq!(err.matches(want).count(), 1, "{err}");
    // Nor is a path that does not exist.
    let missing = dir.0.join("missing");
    let err = kjump::<Arg>(&[&"verify", &missing]).exits(2).stderr;
    assert!(err.contains("No such file or directory"), "{err}");
}

#[test]
fn cli_reports_an_uncommitted_image_as_incomplete() {
    let f = image_a();
    let dir = TempDir::new("cli-incomplete");
    let mut b = f.copy();
    put_u32(&mut b, fixture::sb::STATE, 1);
    f.resign_superblock(&mut b);
    let img = write_image(&dir, "incomplete", &b);
    let err = kjump::<Arg>(&[&"verify", &img]).exits(1).stderr;
    assert!(err.contains("image is incomplete"), "{err}");
    let out = kjump::<Arg>(&[&"info", &img]).exits(0).stdout;
    assert!(out.contains("state:      incomplete"), "{out}");
    let out = kjump::<Arg>(&[&"info", &img, &"--json"]).exits(0).stdout;
    let v: serde_json::Value = serde_json::from_str(&out).expect("info --json");
    assert_eq!(v["state"], "incomplete", "{out}");
    let core = dir.path("core");
    let err = kjump::<Arg>(&[&"export", &img, &"--output", &core])
        .exits(1)
        .stderr;
    assert!(err.contains("incomplete"), "{err}");
    assert!(
        !core.exists(),
        "export of an incomplete image left {}",
        core.display()
    );
    let good = write_image(&dir, "good", &f.bytes);
    let out = kjump::<Arg>(&[&"info", &good, &"--json"]).exits(0).stdout;
    let v: serde_json::Value = serde_json::from_str(&out).expect("info --json");
    assert_eq!(v["state"], "committed", "{out}");
}

#[test]
fn cli_export_of_a_corrupt_image_leaves_no_output() {
    let f = image_a();
    let dir = TempDir::new("cli-export");
    let core = dir.path("core");
    let good = write_image(&dir, "good", &f.bytes);
    kjump::<Arg>(&[&"export", &good, &"--output", &core]).exits(0);
    assert!(core.exists());
    // The last chunk is bad: export has written the others by then.
    let h = f.chunk_at(4);
    let mut b = f.copy();
    b[h + 100] ^= 2;
    let bad = write_image(&dir, "bad-last-chunk", &b);
    let err = kjump::<Arg>(&[&"export", &bad, &"--output", &core])
        .exits(1)
        .stderr;
    assert!(
        err.contains(&format!("chunk 4 payload at offset {h:#x}")),
        "{err}"
    );
    assert!(!core.exists(), "a failed export left {}", core.display());
    let mut b = f.copy();
    b[f.meta_at() + 9] ^= 1;
    let bad = write_image(&dir, "bad-metadata", &b);
    let err = kjump::<Arg>(&[&"export", &bad, &"--output", &core])
        .exits(1)
        .stderr;
    assert!(
        err.contains("checksum mismatch in metadata at offset 0x1000"),
        "{err}"
    );
    assert!(!core.exists(), "a failed export left {}", core.display());
}

/// Whether a test that needs `what` can run; says so when it cannot, and
/// fails instead under CI, where every test must run.
fn available(test: &str, what: &str, ok: bool) -> bool {
    if ok {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs {what}, and CI is set"
    );
    {
        use std::io::Write as _;
        // Uncaptured, so a plain `cargo test` shows it.
        let _ = std::io::stderr().write_all(format!("SKIPPED: {test}: needs {what}\n").as_bytes());
    }
    false
}

fn sh(cmd: &str, args: &[&dyn AsRef<OsStr>]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A tmpfs of a given size, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let opts = format!("size={size}");
        sh("mount", &[&"-t", &"tmpfs", &"-o", &opts, &"tmpfs", &at])?;
        Ok(Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(e) = sh("umount", &[&self.0]) {
            eprintln!("leaving tmpfs mounted at {}: {e}", self.0.display());
        }
    }
}

/// A loop device over a file, detached on drop.
struct LoopDevice(PathBuf);

impl LoopDevice {
    fn attach(file: &Path) -> Result<LoopDevice, String> {
        sh("losetup", &[&"--find", &"--show", &file]).map(|dev| LoopDevice(dev.into()))
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if let Err(e) = sh("losetup", &[&"--detach", &self.0]) {
            eprintln!("leaving {} attached: {e}", self.0.display());
        }
    }
}

fn assert_incomplete(img: &Path) {
    let file = fs::File::open(img).expect("opening the failed image");
    match Image::open(&file) {
        Err(FormatError::NotCommitted { state }) => assert_eq!(state, "incomplete"),
        other => panic!("{}: expected NotCommitted, got {other:?}", img.display()),
    }
    let err = kjump::<Arg>(&[&"verify", &img]).exits(1).stderr;
    assert!(err.contains("image is incomplete"), "{err}");
}

const TMPFS_BYTES: u64 = 64 << 10;

/// The first two pages of the test memory as a source.
fn two_pages(mem: &Path) -> MemorySource {
    let range = PhysRange::new(PhysAddr(0x1000), PhysAddr(0x3000)).expect("a range");
    let map = MemoryMap::from_sorted(vec![range]).expect("one range");
    MemorySource::open(mem, Some(map)).expect("opening the test memory")
}

#[test]
fn capture_onto_a_full_filesystem_fails_and_leaves_it_uncommitted() {
    let test = "capture_onto_a_full_filesystem";
    if !available(test, "root (to mount a tmpfs)", crate::common::is_root()) {
        return;
    }
    let dir = TempDir::new("full-fs");
    let mem = dir.path("memory");
    fs::write(&mem, fixture::memory()).expect("writing the test memory");
    let mnt = match Tmpfs::mount(&dir.path("mnt"), "64k") {
        Ok(m) => m,
        Err(e) => {
            available(test, &format!("a tmpfs mount ({e})"), false);
            return;
        }
    };
    // A small committed image already there: a capture refused up front
    // must leave it whole, and counts its space as usable.
    let img = mnt.0.join("lib.img");
    let small = two_pages(&mem);
    let target = Target::open(&img).expect("opening the target");
    let opts = fixture::options(fixture::UUID_B);
    capture(&small, &target, &small.metadata(), &opts).expect("a two-page capture");
    drop(target);
    let (src, meta) = fixture::source(&mem);
    let target = Target::open(&img).expect("opening the target");
    assert_eq!(target.capacity(), Some(TMPFS_BYTES));
    let worst = worst_case_len(&meta, false).expect("worst case");
    match capture(&src, &target, &meta, &fixture::options(fixture::UUID_A)) {
        Err(CaptureError::TooSmall {
            capacity,
            worst_case,
            ..
        }) => assert_eq!((capacity, worst_case), (TMPFS_BYTES, worst)),
        other => panic!("expected TooSmall, got {other:?}"),
    }
    let old = fs::read(&img).expect("reading the earlier image");
    assert_eq!(fixture::outcome(&old), "ok", "a refused capture damaged it");
    let mut opts = fixture::options(fixture::UUID_A);
    opts.check_worst_case = false;
    match capture(&src, &target, &meta, &opts) {
        Err(CaptureError::Target(TargetError::Write { offset, source, .. })) => {
            assert_eq!(source.raw_os_error(), Some(ENOSPC), "{source}");
            assert!((4096..=TMPFS_BYTES).contains(&offset.0), "{offset}");
        }
        other => panic!("expected ENOSPC, got {other:?}"),
    }
    drop(target);
    assert_incomplete(&img);
    fs::remove_file(&img).expect("freeing the tmpfs");

    let img = mnt.0.join("cli.img");
    let capture = |extra: Option<&str>, code| {
        let mut args: Vec<OsString> = vec!["capture".into(), "--source".into(), mem.clone().into()];
        args.extend([
            "--ranges".into(),
            RANGES_ARG.into(),
            "--target".into(),
            img.clone().into(),
        ]);
        args.extend(extra.map(OsString::from));
        kjump(&args).exits(code).stderr
    };
    let err = capture(None, 2);
    assert!(
        err.contains(&format!("has room for {TMPFS_BYTES} bytes")),
        "{err}"
    );
    assert!(err.contains("--assume-fits"), "{err}");
    let err = capture(Some("--assume-fits"), 2);
    let want = "the image is left uncommitted: writing ";
    assert!(err.contains(want), "{err}");
    assert!(err.contains(" at offset 0x"), "{err}");
    assert_eq!(err.matches("No space left on device").count(), 1, "{err}");
    assert_incomplete(&img);
    let out = kjump::<Arg>(&[&"info", &img]).exits(0).stdout;
    assert!(out.contains("state:      incomplete"), "{out}");
}

#[test]
fn capture_onto_a_small_block_device_fails_and_leaves_it_uncommitted() {
    let test = "capture_onto_a_small_block_device";
    if !available(
        test,
        "root (to attach a loop device)",
        crate::common::is_root(),
    ) {
        return;
    }
    let dir = TempDir::new("small-dev");
    let mem = dir.path("memory");
    fs::write(&mem, fixture::memory()).expect("writing the test memory");
    let backing = dir.path("device");
    fs::write(&backing, vec![0u8; TMPFS_BYTES as usize]).expect("writing the backing file");
    let dev = match LoopDevice::attach(&backing) {
        Ok(d) => d,
        Err(e) => {
            available(test, &format!("a loop device ({e})"), false);
            return;
        }
    };
    let (src, meta) = fixture::source(&mem);
    let target = Target::open(&dev.0).expect("opening the loop device");
    assert!(target.is_block_device());
    assert_eq!(target.capacity(), Some(TMPFS_BYTES));
    match capture(&src, &target, &meta, &fixture::options(fixture::UUID_A)) {
        Err(CaptureError::TooSmall { capacity, .. }) => assert_eq!(capacity, TMPFS_BYTES),
        other => panic!("expected TooSmall, got {other:?}"),
    }
    let mut opts = fixture::options(fixture::UUID_A);
    opts.check_worst_case = false;
    match capture(&src, &target, &meta, &opts) {
        Err(CaptureError::Target(TargetError::Write { offset, source, .. })) => {
            assert_eq!(source.raw_os_error(), Some(ENOSPC), "{source}");
            assert_eq!(offset.0, TMPFS_BYTES, "the write fails at the device's end");
        }
        other => panic!("expected ENOSPC, got {other:?}"),
    }
    drop(target);
    assert_incomplete(&dev.0);
}

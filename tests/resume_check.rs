//! What `kjump resume` (R0) decides for each state of the device and each
//! memory layout of the machine, before anything is loaded.

mod common;

use std::path::Path;

use common::tempdir::TempDir;
use kjump_image_format::crypto::DEFAULT_KDF;
use kjump_image_format::{Kdf, Secret};
use kjump_image_format::{MemoryMap, Metadata, PhysAddr, PhysRange, Superblock};
use kjump_jump::resume::{check, ResumeError, DEFAULT_MAX_ATTEMPTS};
use kjump_writer::{capture, capture_encrypted, CaptureOptions, Encryption, MemorySource, Target};

const IOMEM: &str = "00000000-00000fff : Reserved\n00001000-0009fbff : System RAM\n\
                     000a0000-000fffff : Reserved\n00100000-3fffffff : System RAM\n";

fn range(start: u64, len: u64) -> PhysRange {
    PhysRange::from_start_len(PhysAddr(start), len).unwrap()
}

/// An image of two ranges captured from a file standing in for /dev/mem.
fn image(dir: &TempDir, name: &str, region: Option<&str>) -> std::path::PathBuf {
    image_sealed(dir, name, region, None)
}

/// [`image`], encrypted when `key` gives a secret and its derivation.
fn image_kdf_opt(
    dir: &TempDir,
    name: &str,
    region: Option<&str>,
    key: Option<(&Secret, Kdf)>,
) -> std::path::PathBuf {
    let mem: Vec<u8> = (0..0x24_0000u32).map(|i| (i / 4096 % 7) as u8).collect();
    std::fs::write(dir.path("mem"), &mem).unwrap();
    let map = MemoryMap::from_sorted(vec![range(0x10_0000, 0x4_0000), range(0x20_0000, 0x4_0000)])
        .unwrap();
    let source = MemorySource::open(&dir.path("mem"), Some(map)).unwrap();
    let mut meta: Metadata = source.metadata();
    meta.jump_back_entry = Some(0x1_0000_0000);
    meta.kernel_release = Some("6.12.117".into());
    if let Some(r) = region {
        meta.extra.push(("region".into(), r.into()));
    }
    let path = dir.path(name);
    let target = Target::open(&path).unwrap();
    match key {
        None => capture(&source, &target, &meta, &CaptureOptions::new()).unwrap(),
        Some((secret, kdf)) => {
            let enc = Encryption { secret, kdf };
            capture_encrypted(&source, &target, &meta, &CaptureOptions::new(), &enc).unwrap()
        }
    };
    path
}

/// [`image`], encrypted under `key` when one is given.
fn image_sealed(
    dir: &TempDir,
    name: &str,
    region: Option<&str>,
    key: Option<&Secret>,
) -> std::path::PathBuf {
    image_kdf_opt(dir, name, region, key.map(|k| (k, Kdf::KeyFile)))
}

/// [`image`], encrypted under `secret` whose key derivation is `kdf`.
fn image_kdf(
    dir: &TempDir,
    name: &str,
    region: Option<&str>,
    secret: &Secret,
    kdf: Kdf,
) -> std::path::PathBuf {
    image_kdf_opt(dir, name, region, Some((secret, kdf)))
}

fn nothing(path: &Path, iomem: &str) -> String {
    match check(path, None, iomem, false, DEFAULT_MAX_ATTEMPTS, false) {
        Ok(Err(why)) => kjump_handoff::error_chain(&why),
        other => panic!("expected nothing to resume, got {other:?}"),
    }
}

fn refused(path: &Path, iomem: &str) -> String {
    match check(path, None, iomem, false, DEFAULT_MAX_ATTEMPTS, false) {
        Err(ResumeError::Refused { reason, .. }) => kjump_handoff::error_chain(&reason),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_whole_image_on_the_same_layout_is_resumed() {
    let dir = TempDir::new("resume-ok");
    let img = image(&dir, "img", Some("0x10000000-0x1fffffff"));
    let (plan, release) = check(&img, None, IOMEM, false, DEFAULT_MAX_ATTEMPTS, false)
        .unwrap()
        .unwrap();
    assert_eq!(release, "6.12.117");
    assert_eq!(plan.ram_list(), "0x100000-0x13ffff,0x200000-0x23ffff");
    let args = plan.memmap_args();
    assert!(
        args.contains(&"memmap=0xff00000@0x10000000".to_string()),
        "{args:?}"
    );
    assert!(
        args.contains(&"memmap=0x40000#0x200000".to_string()),
        "{args:?}"
    );
}

#[test]
fn nothing_to_resume_lets_the_boot_continue() {
    let dir = TempDir::new("resume-nothing");
    std::fs::write(dir.path("zeros"), vec![0u8; 8192]).unwrap();
    assert!(nothing(&dir.path("zeros"), IOMEM).contains("no kjump image"));
    assert!(nothing(&dir.path("absent"), IOMEM).contains("cannot open"));
    let img = image(&dir, "img", Some("0x10000000-0x1fffffff"));
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[..4096].copy_from_slice(&Superblock::writing([3; 16], 1).encode());
    std::fs::write(dir.path("incomplete"), &bytes).unwrap();
    assert!(nothing(&dir.path("incomplete"), IOMEM).contains("incomplete"));
    let f = std::fs::File::open(&img).unwrap();
    let mut sb = kjump_image_format::reader::read_superblock(&f).unwrap();
    sb.state = kjump_image_format::ImageState::Consumed;
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[..4096].copy_from_slice(&sb.encode());
    std::fs::write(dir.path("consumed"), &bytes).unwrap();
    assert!(nothing(&dir.path("consumed"), IOMEM).contains("already resumed once"));
}

#[test]
fn bad_images_and_changed_machines_are_refused() {
    let dir = TempDir::new("resume-refuse");
    let img = image(&dir, "img", Some("0x10000000-0x1fffffff"));
    // R0 checks the structures around the chunks, the index among them...
    let f = std::fs::File::open(&img).unwrap();
    let opened = kjump_image_format::Image::open(&f).unwrap();
    let layout = opened.superblock.layout;
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[layout.index_offset as usize + 9] ^= 0x40;
    std::fs::write(dir.path("flipped"), &bytes).unwrap();
    assert!(refused(&dir.path("flipped"), IOMEM).contains("index"));
    // ...but reads no chunk: R checks each as it writes it.
    let mut bytes = std::fs::read(&img).unwrap();
    let chunk = opened.index.iter().find(|e| e.stored_len > 0).unwrap();
    bytes[(chunk.offset.0 + 64) as usize] ^= 0x40;
    std::fs::write(dir.path("chunk-flipped"), &bytes).unwrap();
    assert!(matches!(
        check(
            &dir.path("chunk-flipped"),
            None,
            IOMEM,
            false,
            DEFAULT_MAX_ATTEMPTS,
            false
        ),
        Ok(Ok(_))
    ));
    // Where encryption is required, a plain image is refused.
    match check(&img, None, IOMEM, false, DEFAULT_MAX_ATTEMPTS, true) {
        Err(ResumeError::Refused { reason, .. }) => {
            assert!(
                reason
                    .to_string()
                    .contains("the image is not encrypted, and encryption is required"),
                "{reason}"
            )
        }
        other => panic!("a plain image where encryption is required: {other:?}"),
    }
    let small = "00001000-0009fbff : System RAM\n00100000-001fffff : System RAM\n";
    let why = refused(&img, small);
    assert!(
        why.contains("lacks 0x200000-0x23ffff") && why.contains("memory map changed"),
        "{why}"
    );
    let why = refused(
        &img,
        "00100000-00ffffff : System RAM\n00200000-00ffffff : System RAM\n",
    );
    assert!(why.contains("lacks 0x10000000-0x1fffffff"), "{why}");
    let no_region = image(&dir, "noregion", None);
    assert!(refused(&no_region, IOMEM).contains("records no capture region"));
    let inside = image(&dir, "inside", Some("0x100000-0x1ffffff"));
    assert!(refused(&inside, IOMEM).contains("overlap the restore kernel"));
}

#[test]
fn an_encrypted_image_is_judged_without_its_key() {
    let dir = TempDir::new("resume-sealed");
    let key = Secret::key_file(vec![0x5a; 32]).unwrap();
    let img = image_sealed(&dir, "img", Some("0x10000000-0x1fffffff"), Some(&key));
    // The same plan as for a plain image, from the resume record; the
    // kernel release is sealed, so R0 does not know it.
    // An encrypted image passes where encryption is required.
    assert!(check(&img, None, IOMEM, false, DEFAULT_MAX_ATTEMPTS, true)
        .unwrap()
        .is_ok());
    let (plan, release) = check(&img, None, IOMEM, false, DEFAULT_MAX_ATTEMPTS, false)
        .unwrap()
        .unwrap();
    assert_eq!(release, "");
    assert_eq!(plan.ram_list(), "0x100000-0x13ffff,0x200000-0x23ffff");
    assert_eq!(plan.region.to_string(), "0x10000000-0x1fffffff");
    // The same refusals.
    let small = "00001000-0009fbff : System RAM\n00100000-001fffff : System RAM\n";
    assert!(refused(&img, small).contains("lacks 0x200000-0x23ffff"));
    let inside = image_sealed(&dir, "inside", Some("0x100000-0x1ffffff"), Some(&key));
    assert!(refused(&inside, IOMEM).contains("overlap the restore kernel"));
    // A damaged resume record is refused by its CRC, without the key.
    let mut bytes = std::fs::read(&img).unwrap();
    let at = bytes
        .windows(21)
        .position(|w| w == b"0x10000000-0x1fffffff")
        .expect("the region in the clear");
    bytes[at + 3] ^= 1;
    std::fs::write(dir.path("flipped"), &bytes).unwrap();
    assert!(refused(&dir.path("flipped"), IOMEM).contains("metadata"));
}

/// A capture region too small for the restore kernel, its key derivation,
/// the image's index and the restore buffers is refused before R is
/// loaded, saying what crashkernel= to boot with: R would otherwise run out
/// of memory as PID 1. A passphrase's Argon2 memory counts.
#[test]
fn a_region_too_small_for_the_restore_kernel_is_refused_up_front() {
    let dir = TempDir::new("resume-region");
    // 64 MiB: not even the restore kernel's own image and initramfs.
    let img = image(&dir, "small", Some("0x10000000-0x13ffffff"));
    let why = refused(&img, IOMEM);
    assert!(
        why.contains("the crashkernel region 0x10000000-0x13ffffff holds 64 MiB")
            && why.contains("boot with crashkernel="),
        "{why}"
    );
    // 176 MiB: enough for a plain image, not with 64 MiB of Argon2id.
    let region = "0x10000000-0x1affffff";
    let plain = image(&dir, "plain", Some(region));
    assert!(
        check(&plain, None, IOMEM, false, DEFAULT_MAX_ATTEMPTS, false)
            .unwrap()
            .is_ok()
    );
    let pass = Secret::passphrase(b"correct horse".to_vec()).unwrap();
    let sealed = image_kdf(&dir, "sealed", Some(region), &pass, DEFAULT_KDF);
    let why = refused(&sealed, IOMEM);
    assert!(
        why.contains("key derivation 64 MiB") && why.contains("holds 176 MiB"),
        "{why}"
    );
    assert!(why.ends_with("boot with crashkernel=256M"), "{why}");
}

/// The restore record: restores begun count against a limit, and an image
/// whose restore failed part way is refused with the chunk and the reason.
#[test]
fn unfinished_and_failed_restores_are_refused_with_their_record() {
    use kjump_image_format::{FailureText, ImageState};
    let dir = TempDir::new("resume-record");
    let img = image(&dir, "img", Some("0x10000000-0x1fffffff"));
    let place = kjump_sys::Place::locate(&img, None).unwrap();
    let superblock = || {
        let f = std::fs::File::open(&img).unwrap();
        kjump_image_format::reader::read_superblock(&f).unwrap()
    };
    for n in 1..=DEFAULT_MAX_ATTEMPTS {
        assert!(check(&img, None, IOMEM, false, DEFAULT_MAX_ATTEMPTS, false)
            .unwrap()
            .is_ok());
        assert_eq!(
            kjump_restorer::restore::begin_attempt(&place, superblock()).unwrap(),
            n
        );
        assert_eq!(superblock().restore.attempts, n);
        assert_eq!(superblock().state, ImageState::Committed);
    }
    // A restore kernel that handed back takes its attempt back; only for
    // this image, this count, still committed.
    let uuid = superblock().uuid;
    kjump_restorer::restore::take_back_attempt(&place, [9; 16], DEFAULT_MAX_ATTEMPTS).unwrap();
    kjump_restorer::restore::take_back_attempt(&place, uuid, 1).unwrap();
    assert_eq!(superblock().restore.attempts, DEFAULT_MAX_ATTEMPTS);
    kjump_restorer::restore::take_back_attempt(&place, uuid, DEFAULT_MAX_ATTEMPTS).unwrap();
    assert_eq!(superblock().restore.attempts, DEFAULT_MAX_ATTEMPTS - 1);
    kjump_restorer::restore::begin_attempt(&place, superblock()).unwrap();
    let why = refused(&img, IOMEM);
    assert!(
        why.contains("2 restores of this image began and none finished")
            && why.contains("the limit is 2"),
        "{why}"
    );
    // A higher limit lets it be tried again.
    assert!(check(&img, None, IOMEM, false, 3, false).unwrap().is_ok());
    let mut sb = superblock();
    sb.state = ImageState::Failed;
    sb.restore.failed_chunk = Some(17);
    sb.restore.failure =
        FailureText::new("chunk 17 at offset 0x9000: payload CRC32 0x1 expected, 0x2 found");
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[..4096].copy_from_slice(&sb.encode());
    std::fs::write(&img, &bytes).unwrap();
    let why = nothing(&img, IOMEM);
    assert!(
        why.contains("an earlier restore failed part way (it stopped at chunk 17: chunk 17 at offset 0x9000: payload CRC32")
            && why.contains("the session it saved is lost"),
        "{why}"
    );
}

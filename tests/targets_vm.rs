//! The whole cycle on the targets a machine usually has, in QEMU (TCG):
//! a swap partition and a preallocated file on A's ext4 filesystem.
//!
//! - **Swap:** /dev/vda is a swap area (mkswap on the host), active while A
//!   runs. `kjump hibernate` swaps it off; B writes the image after the
//!   header and sets the signature aside; a later boot resumes A, the header
//!   is as it was, and hibernate has swapped the area on again.
//! - **File:** /dev/vda is A's ext4 filesystem, mounted at /mnt/a. `kjump
//!   hibernate --target /mnt/a/kjump.img` allocates the file and maps its
//!   extents; B writes them on the raw device without mounting anything; a
//!   later boot resumes from `--device /dev/vda --offset`, A's file and
//!   mounted filesystem are intact, and e2fsck finds the filesystem clean.
//!
//! Needs what hibernate_vm.rs needs, and mkswap and e2fsprogs on the host.
//! The console logs stay in target/tmp/targets-vm/.

mod common;

use std::path::Path;
use std::process::Command;

use common::hibvm::flows::{
    check_committed_at, failed_capture_of, hibernate_poweroff, hibernate_poweroff_unchecked,
    resume, PHASE,
};
use common::hibvm::{self, BootOpts, DISK_BYTES};
use common::kjump::{kjump, Run};
use common::vm::{self, line, machine};
use kjump_image_format::placement::SWAP_MAGIC_OFFSET;

fn header(disk: &Path) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    let f = std::fs::File::open(disk).unwrap();
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, 0).unwrap();
    b
}

#[test]
fn swap_partition_cycle() {
    let Some(_machine) = machine() else { return };
    let disk = hibvm::new_disk(&vm::dir().join("swap.img"));
    let out = Command::new("mkswap")
        .args(["-L", "kjump-vm"])
        .arg(&disk)
        .output()
        .expect("running mkswap (util-linux)");
    assert!(out.status.success(), "mkswap: {out:?}");
    let original = header(&disk);

    // Two 400 MiB files in a tmpfs push part of A's memory out to the swap
    // area: too much to swap back in, until one of them is removed.
    let opts = BootOpts::new(&disk, "poweroff")
        .arg("kjump.swap=1")
        .arg("kjump.hog=400");
    let (saved, lines) = hibernate_poweroff("swap-hibernate", &opts);
    line(&lines, "A: SWAPON /dev/vda", "swap-hibernate");
    let refused = line(&lines, "is missing (close programs", "swap-hibernate");
    assert!(
        refused
            .text
            .contains("/dev/vda is an active swap area holding"),
        "{}",
        refused.text
    );
    line(&lines, "A: HOG-REFUSED-EXIT 2", "swap-hibernate");
    let kept = line(&lines, "A: HOG-KEPT md5 ", "swap-hibernate");
    let hog_md5 = kept.text.split_whitespace().nth(3).unwrap().to_string();
    line(&lines, "would swap off /dev/vda (", "swap-hibernate");
    let off = line(&lines, "swapped off /dev/vda (", "swap-hibernate");
    for l in [refused, kept, off] {
        println!("[swap-hibernate] {}", l.text);
    }
    line(
        &lines,
        "writing the image to /dev/vda (after its swap header)",
        "swap-hibernate",
    );
    let held = header(&disk);
    // Held, and marked as swapped on before: whoever gives it back swaps
    // it on again.
    assert_eq!(&held[SWAP_MAGIC_OFFSET..], b"KJUMPSWAPA");
    assert_eq!(held[..SWAP_MAGIC_OFFSET], original[..SWAP_MAGIC_OFFSET]);

    let lines = resume("swap-resume", &BootOpts::new(&disk, "none"), &saved);
    line(&lines, "/dev/vda is swapped on again", "swap-resume");
    line(
        &lines,
        &format!("A: HOG-AFTER md5 {hog_md5}"),
        "swap-resume",
    );
    line(&lines, "A: SWAP-ACTIVE-AFTER /dev/vda", "swap-resume");
    assert_eq!(header(&disk), original, "the swap header did not come back");
    let Run { code, text, .. } = kjump(&["info", &disk.display().to_string()]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("state:      consumed"), "{text}");
}

#[test]
fn file_on_ext4_cycle() {
    let Some(_machine) = machine() else { return };
    let disk = hibvm::new_ext4_disk(&vm::dir().join("ext4.img"), DISK_BYTES);
    let opts = BootOpts::new(&disk, "poweroff")
        .arg("kjump.fs=/dev/vda")
        .arg("kjump.target=/mnt/a/kjump.img");
    // The image is found on the host from the map's offset, which
    // hibernate prints in the capture manifest.
    let (saved, lines) = hibernate_poweroff_unchecked("file-hibernate", &opts);
    let manifest = line(&lines, "target-offset=0x", "file-hibernate");
    let offset = manifest
        .text
        .trim()
        .trim_start_matches("target-offset=")
        .to_string();
    let mounted = line(
        &lines,
        "A: FS-MOUNTED /dev/vda, a-file md5 ",
        "file-hibernate",
    );
    let a_file = mounted.text.rsplit(' ').next().unwrap().to_string();
    line(&lines, "target=/dev/vda", "file-hibernate");
    line(
        &lines,
        "writing the image to /dev/vda (a file's blocks, map at offset",
        "file-hibernate",
    );
    let host = disk.display().to_string();
    check_committed_at("file-hibernate", &[&host, "--offset", &offset], "poweroff");

    let resume_opts = BootOpts::new(&disk, "none").arg(&format!("kjump.offset={offset}"));
    let lines = resume("file-resume", &resume_opts, &saved);
    line(
        &lines,
        &format!("A: FS-AFTER a-file md5 {a_file}"),
        "file-resume",
    );
    line(&lines, "A: FS-UNMOUNTED /dev/vda", "file-resume");
    let Run { code, text, .. } = kjump(&["info", &host, "--offset", &offset]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("state:      consumed"), "{text}");
    let fsck = Command::new("e2fsck")
        .args(["-fn"])
        .arg(&disk)
        .output()
        .expect("running e2fsck (e2fsprogs)");
    assert!(
        fsck.status.success(),
        "e2fsck -fn after the cycle: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    println!("[file] e2fsck -fn: clean; a-file md5 {a_file} intact; map at {offset}");
}

/// A disk plugged in while A runs takes a lower PCI slot than A's target:
/// A names it /dev/vdb, the capture kernel, booting afresh, names it
/// /dev/vda. B finds no claim of A's on its /dev/vda and writes nothing
/// there: it jumps back and A reports why. The target keeps A's claim and
/// no committed image.
#[test]
fn a_disk_the_capture_kernel_names_otherwise_is_not_written() {
    let Some(_machine) = machine() else { return };
    let target = hibvm::new_disk(&vm::dir().join("claimed.img"));
    let plugged = vm::dir().join("plugged.img");
    // Something of the user's: a pattern that must stay as it is.
    let pattern: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&plugged, &pattern).unwrap();
    let opts = BootOpts::new(&target, "poweroff")
        .vda_slot(0x10)
        .arg("kjump.waitdisk=/dev/vdb");
    let mut boot = hibvm::start("plugged", &opts);
    boot.wait_for("A: WAITING-FOR-DISK /dev/vdb", PHASE);
    boot.qmp()
        .plug_disk("plugged", &plugged, 0x5)
        .unwrap_or_else(|e| panic!("{e}\n{}", boot.logs()));
    boot.wait_for("A: DISK-PLUGGED /dev/vdb", PHASE);
    let (boot, failed) = failed_capture_of(boot);
    assert!(
        failed
            .text
            .contains("/dev/vda does not carry the saved kernel's claim"),
        "{}",
        failed.text
    );
    let lines = boot.lines();
    line(&lines, "target=/dev/vda", "plugged");
    line(&lines, "placement=whole", "plugged");
    assert!(
        std::fs::read(&plugged).unwrap() == pattern,
        "the plugged disk was written\n{}",
        boot.logs()
    );
    let Run { code, text, .. } = kjump(&["info", &target.display().to_string()]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("state:      incomplete"), "{text}");
    // The claim B looked for is the one on the target.
    let uuid = text
        .lines()
        .find_map(|l| l.strip_prefix("uuid:"))
        .map(|u| u.trim().replace('-', ""))
        .unwrap_or_else(|| panic!("no uuid in kjump info\n{text}"));
    assert!(
        failed
            .text
            .contains(&format!("(an image {uuid} being written)")),
        "{}",
        failed.text
    );
    println!("[plugged] B refused: {}", failed.text);
}

//! A real Linux kernel's memory as test input: boots a Debian kernel in QEMU
//! (TCG), lets its /init hold a known pattern and marker in RAM, dumps guest
//! memory with QMP `dump-guest-memory` and checks the ELF core QEMU wrote.
//!
//! Needs qemu-system-x86 (skipped without it, except under CI), busybox-static,
//! cpio and apt access to Debian's kernel packages (see tests/vm/debian-kernel.sh).

mod common;

use std::fs;
use std::path::Path;

use common::cores::{assert_same_memory, assert_x86_64_core, core_headers, page_copies, Load};
use common::dumpvm::{self, GuestDump};
use common::kjump::kjump;
use common::vm::{self, machine};
use kjump_dumpgen::PAGE_SIZE;

const GUEST_MEM_MIB: u32 = 256;

/// How often each page of the pattern the guest held occurs in `core`.
fn pattern_page_copies(core: &Path, pattern: &[u8]) -> Vec<u32> {
    let pages: Vec<&[u8]> = pattern.chunks_exact(PAGE_SIZE).collect();
    page_copies(core, &pages)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    let mut from = 0;
    while let Some(i) = haystack[from..].iter().position(|&b| b == first) {
        let at = from + i;
        if haystack[at + 1..].starts_with(rest) {
            return true;
        }
        from = at + 1;
    }
    false
}

fn describe(dump: &GuestDump, loads: &[Load]) {
    let len = fs::metadata(&dump.path).map_or(0, |m| m.len());
    eprintln!(
        "guest: boot to READY {:.2?}, dump {:.2?}, {len} bytes in {}",
        dump.boot_time,
        dump.dump_time,
        dump.path.display()
    );
    for l in loads {
        eprintln!(
            "  PT_LOAD {:2} offset {:#12x} paddr {:#12x} filesz {:#12x} memsz {:#12x}",
            l.index, l.offset, l.paddr, l.filesz, l.memsz
        );
    }
}

/// The real path a user takes: capture the guest's memory, verify the image,
/// export it back, and find every byte of the guest's memory (and the
/// pattern) in the exported core.
fn capture_and_export(work_dir: &Path, dump: &GuestDump) -> [std::path::PathBuf; 2] {
    let image = work_dir.join("guest.img");
    let exported = work_dir.join("guest.export.elf");
    let captured = kjump(&[
        "capture".as_ref(),
        "--source".as_ref(),
        dump.path.as_os_str(),
        "--target".as_ref(),
        image.as_os_str(),
    ])
    .ok();
    eprintln!("{}", captured.stdout.trim());
    let verified = kjump(&["verify".as_ref(), image.as_os_str()]).ok();
    eprintln!("{}", verified.stdout.trim());
    kjump(&[
        "export".as_ref(),
        image.as_os_str(),
        "--output".as_ref(),
        exported.as_os_str(),
    ])
    .ok();
    assert_same_memory(&dump.path, &exported);
    assert_x86_64_core(&exported);
    let copies = pattern_page_copies(&exported, &dump.pattern);
    assert!(
        copies.iter().all(|&n| n > 0),
        "pattern pages missing from the exported core"
    );
    let image_len = fs::metadata(&image).expect("image").len();
    let dump_len = fs::metadata(&dump.path).expect("dump").len();
    eprintln!(
        "image {image_len} bytes for a {dump_len}-byte dump (ratio {:.2})",
        dump_len as f64 / image_len as f64
    );
    [image, exported]
}

#[test]
fn qemu_dump_of_a_real_kernel_holds_the_guest_data() {
    let Some(_machine) = machine() else { return };
    let dump = dumpvm::boot_and_dump("guest", GUEST_MEM_MIB);
    assert_x86_64_core(&dump.path);
    let (loads, notes) = core_headers(&dump.path);
    describe(&dump, &loads);

    assert!(!notes.is_empty(), "no PT_NOTE");
    let ram: u64 = loads.iter().map(|s| s.memsz).sum();
    assert!(
        ram >= u64::from(GUEST_MEM_MIB) << 20,
        "PT_LOADs cover {ram:#x} bytes, less than the guest's {GUEST_MEM_MIB} MiB"
    );

    let copies = pattern_page_copies(&dump.path, &dump.pattern);
    let missing = copies.iter().filter(|&&n| n == 0).count();
    let doubled = copies.iter().filter(|&&n| n >= 2).count();
    eprintln!(
        "pattern (seed {:#x}): {} pages, {doubled} found twice or more",
        dump.seed,
        copies.len()
    );
    assert_eq!(missing, 0, "pattern pages missing from the dump");
    let core = fs::read(&dump.path).expect("read the dump");
    assert!(
        contains(&core, dump.marker.as_bytes()),
        "marker {} not in the dump",
        dump.marker
    );

    drop(core);

    let made = capture_and_export(vm::dir(), &dump);

    // Keep the ~300 MB dump only when something failed.
    for p in made.iter().chain([&dump.path]) {
        fs::remove_file(p).unwrap_or_else(|e| panic!("removing {}: {e}", p.display()));
    }
}

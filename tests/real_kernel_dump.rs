//! A real Linux kernel's memory as test input: boots a Debian kernel in QEMU
//! (TCG), lets its /init hold a known pattern and marker in RAM, dumps guest
//! memory with QMP `dump-guest-memory` and checks the ELF core QEMU wrote.
//!
//! Needs qemu-system-x86 (skipped without it, except under CI), busybox-static,
//! cpio and apt access to Debian's kernel packages (see tests/vm/debian-kernel.sh).

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use common::vm::{self, GuestDump, PAGE_SIZE};

const GUEST_MEM_MIB: u32 = 256;

const ELF_HEADER_LEN: usize = 64;
const PHDR_LEN: usize = 56;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const ET_CORE: u16 = 4;
const EM_X86_64: u16 = 62;
/// `e_phnum` value meaning "the real count is in section header 0".
const PN_XNUM: u16 = 0xffff;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;

/// One ELF program header, the fields a memory dump needs.
#[derive(Debug)]
struct Segment {
    kind: u32,
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut le = [0; 4];
    le.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(le)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut le = [0; 8];
    le.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(le)
}

/// Checks the ELF header of an x86-64 core file and returns its program headers.
fn core_segments(core: &[u8]) -> Vec<Segment> {
    assert!(
        core.len() >= ELF_HEADER_LEN,
        "dump shorter than an ELF header"
    );
    assert_eq!(&core[..4], b"\x7fELF", "no ELF magic");
    assert_eq!(core[4], ELFCLASS64, "not ELFCLASS64");
    assert_eq!(core[5], ELFDATA2LSB, "not little-endian");
    assert_eq!(u16_at(core, 16), ET_CORE, "e_type is not ET_CORE");
    assert_eq!(u16_at(core, 18), EM_X86_64, "e_machine is not x86-64");
    let phoff = usize::try_from(u64_at(core, 32)).expect("e_phoff fits usize");
    assert_eq!(usize::from(u16_at(core, 54)), PHDR_LEN, "e_phentsize");
    let phnum = u16_at(core, 56);
    assert_ne!(
        phnum, PN_XNUM,
        "more program headers than this test handles"
    );
    let table_end = phoff + usize::from(phnum) * PHDR_LEN;
    assert!(table_end <= core.len(), "program headers run past the file");
    let segments: Vec<Segment> = core[phoff..table_end]
        .chunks_exact(PHDR_LEN)
        .map(|h| Segment {
            kind: u32_at(h, 0),
            offset: u64_at(h, 8),
            paddr: u64_at(h, 24),
            filesz: u64_at(h, 32),
            memsz: u64_at(h, 40),
        })
        .collect();
    for s in &segments {
        let end = s
            .offset
            .checked_add(s.filesz)
            .expect("segment end overflows");
        assert!(end <= core.len() as u64, "segment {s:?} runs past the file");
        assert!(
            s.filesz <= s.memsz || s.kind != PT_LOAD,
            "filesz > memsz: {s:?}"
        );
    }
    segments
}

/// How often each pattern page occurs in the dump at a page-aligned guest
/// physical address. The guest keeps the pattern in page-cache pages, which
/// need not be physically contiguous, so the search goes page by page.
fn pattern_page_copies(core: &[u8], loads: &[&Segment], pattern: &[u8]) -> Vec<u32> {
    const KEY: usize = 16;
    let pages: Vec<&[u8]> = pattern.chunks_exact(PAGE_SIZE).collect();
    let by_prefix: HashMap<&[u8], usize> = pages
        .iter()
        .enumerate()
        .map(|(i, page)| (&page[..KEY], i))
        .collect();
    assert_eq!(by_prefix.len(), pages.len(), "pattern pages share a prefix");
    let page = PAGE_SIZE as u64;
    let mut copies = vec![0; pages.len()];
    for load in loads {
        let end = load.paddr + load.filesz;
        let mut paddr = load.paddr.next_multiple_of(page);
        while paddr + page <= end {
            let at = usize::try_from(load.offset + (paddr - load.paddr)).expect("offset fits");
            let bytes = &core[at..at + PAGE_SIZE];
            if let Some(&i) = by_prefix.get(&bytes[..KEY]) {
                if bytes == pages[i] {
                    copies[i] += 1;
                }
            }
            paddr += page;
        }
    }
    copies
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

fn describe(dump: &GuestDump, core: &[u8], segments: &[Segment]) {
    eprintln!(
        "guest: boot to READY {:.2?}, dump {:.2?}, {} bytes in {}",
        dump.boot_time,
        dump.dump_time,
        core.len(),
        dump.path.display()
    );
    for s in segments {
        let kind = match s.kind {
            PT_LOAD => "PT_LOAD",
            PT_NOTE => "PT_NOTE",
            _ => "other",
        };
        eprintln!(
            "  {kind:8} offset {:#12x} paddr {:#12x} filesz {:#12x} memsz {:#12x}",
            s.offset, s.paddr, s.filesz, s.memsz
        );
    }
}

/// Runs the kjump binary with `args`, asserting success; returns stdout.
fn kjump(args: &[&std::ffi::OsStr]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kjump"))
        .args(args)
        .output()
        .expect("running kjump");
    assert!(
        out.status.success(),
        "kjump {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The real path a user takes: capture the guest's memory, verify the image,
/// export it back, and find every byte of the guest's memory (and the
/// pattern) in the exported core.
fn capture_and_export(work_dir: &Path, dump: &GuestDump) {
    let image = work_dir.join("guest.img");
    let exported = work_dir.join("guest.export.elf");
    let os = |p: &Path| p.as_os_str().to_owned();
    let captured = kjump(&[
        "capture".as_ref(),
        "--source".as_ref(),
        &os(&dump.path),
        "--target".as_ref(),
        &os(&image),
    ]);
    eprintln!("{}", captured.trim());
    let verified = kjump(&["verify".as_ref(), &os(&image)]);
    eprintln!("{}", verified.trim());
    kjump(&[
        "export".as_ref(),
        &os(&image),
        "--output".as_ref(),
        &os(&exported),
    ]);
    common::cores::assert_same_memory(&dump.path, &exported);
    let core = fs::read(&exported).expect("read the exported core");
    let segments = core_segments(&core);
    let loads: Vec<&Segment> = segments.iter().filter(|s| s.kind == PT_LOAD).collect();
    let copies = pattern_page_copies(&core, &loads, &dump.pattern);
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
}

#[test]
fn qemu_dump_of_a_real_kernel_holds_the_guest_data() {
    if !vm::require_qemu() {
        return;
    }
    let work_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("real_kernel_dump");
    if work_dir.exists() {
        fs::remove_dir_all(&work_dir).expect("remove the previous run's work directory");
    }
    let dump = vm::boot_and_dump(&work_dir, GUEST_MEM_MIB).unwrap_or_else(|e| panic!("{e}"));
    let core = fs::read(&dump.path).expect("read the dump");
    let segments = core_segments(&core);
    describe(&dump, &core, &segments);

    assert!(segments.iter().any(|s| s.kind == PT_NOTE), "no PT_NOTE");
    let loads: Vec<&Segment> = segments.iter().filter(|s| s.kind == PT_LOAD).collect();
    let ram: u64 = loads.iter().map(|s| s.memsz).sum();
    assert!(
        ram >= u64::from(GUEST_MEM_MIB) << 20,
        "PT_LOADs cover {ram:#x} bytes, less than the guest's {GUEST_MEM_MIB} MiB"
    );

    let copies = pattern_page_copies(&core, &loads, &dump.pattern);
    let missing = copies.iter().filter(|&&n| n == 0).count();
    let doubled = copies.iter().filter(|&&n| n >= 2).count();
    eprintln!(
        "pattern (seed {:#x}): {} pages, {doubled} found twice or more",
        dump.seed,
        copies.len()
    );
    assert_eq!(missing, 0, "pattern pages missing from the dump");
    assert!(
        contains(&core, dump.marker.as_bytes()),
        "marker {} not in the dump",
        dump.marker
    );

    capture_and_export(&work_dir, &dump);

    // Keep the ~300 MB dump only when something failed.
    fs::remove_dir_all(&work_dir).expect("remove the work directory");
}

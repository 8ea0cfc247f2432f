//! Kdump cores, whose PT_LOADs overlap: on x86_64 the kernel text mapping
//! (`p_vaddr` 0xffffffff8...) has a PT_LOAD of its own whose physical bytes
//! also lie in a "System RAM" PT_LOAD. kjump reads such bytes once, after
//! checking that both copies agree, and refuses a core where they differ.
//!
//! - Synthetic: `kjump-dumpgen` cores with a kernel text PT_LOAD, captured,
//!   verified and exported through the CLI; and the same with one byte of the
//!   copy changed, which capture refuses naming both segments and the address.
//! - Real (QEMU, TCG): A boots with `kjump.kdump=SEED` (hibvm/init.sh's kdump
//!   block), writes a pattern made from SEED to a tmpfs file, loads the test
//!   kernel with `kexec -p` and crashes through sysrq. In the crash kernel,
//!   the same init.sh copies /proc/vmcore raw to /dev/vdb and runs `kjump
//!   capture --source /proc/vmcore --target /dev/vdc`, then collects it
//!   as kdump's tooling runs makedumpfile (`kjump collect -l -d 31
//!   /proc/vmcore /dev/vdd`). The host captures the raw copy, verifies and
//!   exports both images, and finds the raw core's memory at every physical
//!   address of every PT_LOAD in both exports, and the pattern in memory;
//!   `kjump collect --dump-dmesg` finds the panic in the kernel log of all
//!   three. The collected image verifies, and its kdump-compressed export
//!   holds every page it dumps as the raw core has it and marks the rest
//!   (the pattern's page-cache pages among them) excluded. A byte flipped
//!   in the raw copy's kernel text makes the host capture fail with the
//!   clear error.
//! - The same with Debian 12's own kernel (6.1, cloud flavour) as A and
//!   the rig's kernel as the crash kernel: another VMCOREINFO (no
//!   `SYMBOL(vmemmap)`, compound order in the second struct page) for the
//!   collector, and Debian 12's `crash`, with the debug information Debian
//!   ships for that kernel, opens the collector's kdump-compressed export
//!   and prints the release, the panic and the kernel log.
//!
//! Needs what hibernate_vm.rs needs (qemu-system-x86, busybox-static,
//! kexec-tools, cpio, the test kernel with CRASH_DUMP and PROC_VMCORE),
//! and `crash` and tests/vm/debian-kernel.sh's kernels (tests/setup.sh); the
//! QEMU test is skipped without QEMU, except under CI. Console logs stay in
//! target/tmp/kdump-vm/; run with --nocapture for the figures.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::cores::for_each_page;
use common::cores::{assert_same_memory, core_headers, page_copies, Load};
use common::hibvm::flows::PHASE;
use common::hibvm::{self, start, BootOpts};
use common::kjump::{kjump, kjump_info, Run};
use common::tempdir::TempDir;
use common::vm::{self, machine, Vm};
use kjump_dumpgen::{write_dump, DumpSpec, KernelText, Layout, PAGE_SIZE, START_KERNEL_MAP};
use kjump_kdump::diskdump_read::{Diskdump, ReadError};

/// Lines of the pattern; init.sh's kdump block writes the same number.
const PATTERN_LINES: usize = 110_000;
/// The raw copy of /proc/vmcore and the crash kernel's image: a 1 GiB guest
/// minus the 256 MiB crash region gives a core of about 0.8 GB.
const CORE_DISK_BYTES: u64 = 2 << 30;
/// Crash kernel boot, raw copy and capture of the core under TCG, with
/// another test's machine possibly on the same 2 cores.
const CRASH_PHASE: Duration = Duration::from_secs(900);

fn os(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Capture, verify and export through the CLI; returns the exported core.
fn capture_verify_export(dir: &Path, name: &str, core: &Path) -> std::path::PathBuf {
    let (img, out) = (
        dir.join(format!("{name}.img")),
        dir.join(format!("{name}.export.elf")),
    );
    let Run { text, secs, .. } =
        kjump_info(&["capture", "--source", os(core), "--target", os(&img)]).ok();
    println!("[{name}] capture {secs:.2} s: {}", text.trim());
    assert!(
        text.contains("with the same bytes: read once"),
        "capture did not report the overlap: {text}"
    );
    verify_export(name, &img, &out);
    out
}

fn verify_export(name: &str, img: &Path, out: &Path) {
    let Run { text, secs, .. } = kjump(&["verify", os(img)]).ok();
    println!("[{name}] verify {secs:.2} s: {}", text.trim());
    let Run { secs, .. } = kjump(&["export", os(img), "--output", os(out)]).ok();
    let len = fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    println!("[{name}] export {secs:.2} s: {len} bytes");
}

/// The PT_LOAD of the kernel text mapping and the one whose physical bytes
/// hold it; asserts there is such a pair.
fn text_and_home(loads: &[Load]) -> (Load, Load) {
    let text = *loads
        .iter()
        .find(|l| l.vaddr >= START_KERNEL_MAP)
        .unwrap_or_else(|| panic!("no kernel text PT_LOAD among {loads:#x?}"));
    let home = *loads
        .iter()
        .find(|l| l.index != text.index && l.paddr <= text.paddr && text.end() <= l.end())
        .unwrap_or_else(|| panic!("no PT_LOAD holds the kernel text {text:#x?}"));
    (text, home)
}

/// The error a capture gives when `text`'s copy of its bytes differs from
/// `home`'s at `at` (the segment first by address is named first).
fn differ_message(text: &Load, home: &Load, at: u64) -> String {
    let r = |l: &Load| format!("{:#x}-{:#x}", l.paddr, l.end() - 1);
    format!(
        "PT_LOAD {} (paddr {}) and PT_LOAD {} (paddr {}) overlap in physical memory but differ, first at physical {at:#x}",
        home.index,
        r(home),
        text.index,
        r(text)
    )
}

/// Capture must refuse `core` with `want` in its error, exit code 2, and
/// leave no image behind.
fn assert_refused(core: &Path, img: &Path, want: &str) {
    let Run { code, text, .. } = kjump(&["capture", "--source", os(core), "--target", os(img)]);
    assert_eq!(code, 2, "capture of a core whose copies differ: {text}");
    assert!(text.contains("is not a usable ELF core"), "{text}");
    assert!(text.contains(want), "expected {want:?} in: {text}");
    assert!(!img.exists(), "a refused capture wrote {}", img.display());
    println!("refused as expected: {}", text.trim());
}

#[test]
fn synthetic_kdump_core_round_trips() {
    let dir = TempDir::new("kdump-synthetic");
    let core = dir.path("kdump.elf");
    let spec = DumpSpec::from_layout(Layout::Qemu, 64 << 20, 17)
        .expect("spec")
        .with_kernel_text(KernelText::at_16m((9 << 20) + 0x3000));
    write_dump(&spec, &core).expect("writing the dump");
    let (loads, _) = core_headers(&core);
    let (text, home) = text_and_home(&loads);
    assert_eq!(
        text.index, 1,
        "kexec-tools' order: PT_NOTE, kernel text, RAM"
    );
    let out = capture_verify_export(&dir.0, "synthetic", &core);
    assert_same_memory(&core, &out);
    let (exported, _) = core_headers(&out);
    assert_eq!(
        exported.len(),
        loads.len() - 1,
        "the kernel text is held once, in its RAM segment"
    );
    assert!(exported
        .iter()
        .any(|l| l.paddr == home.paddr && l.memsz == home.memsz));
}

#[test]
fn synthetic_kdump_core_whose_copies_differ_is_refused() {
    let dir = TempDir::new("kdump-synthetic-differ");
    let core = dir.path("kdump-differ.elf");
    let text = KernelText::at_16m(8 << 20).differing_at(0x12345);
    let spec = DumpSpec::from_layout(Layout::Qemu, 64 << 20, 18)
        .expect("spec")
        .with_kernel_text(text);
    write_dump(&spec, &core).expect("writing the dump");
    let (loads, _) = core_headers(&core);
    let (t, home) = text_and_home(&loads);
    let want = differ_message(&t, &home, text.paddr + 0x12345);
    assert_eq!(
        want,
        "PT_LOAD 3 (paddr 0x100000-0x3ffffff) and PT_LOAD 1 (paddr 0x1000000-0x17fffff) \
         overlap in physical memory but differ, first at physical 0x1012345"
    );
    assert_refused(&core, &dir.path("differ.img"), &want);
}

/// The pattern A writes from `seed` (init.sh's kdump block, line for line).
fn pattern(seed: &str) -> Vec<u8> {
    (0..PATTERN_LINES)
        .map(|i| format!("kjump-kdump {seed} {i:08}\n"))
        .collect::<String>()
        .into_bytes()
}

fn md5_hex(bytes: &[u8]) -> String {
    let mut child = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("running md5sum");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(bytes)
        .expect("feeding md5sum");
    let out = child.wait_with_output().expect("md5sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// How many of the pattern's whole pages `core` holds at a page-aligned
/// physical address, of how many.
fn pattern_pages_found(core: &Path, pattern: &[u8]) -> (usize, usize) {
    let pages: Vec<&[u8]> = pattern.chunks_exact(PAGE_SIZE).collect();
    let copies = page_copies(core, &pages);
    (copies.iter().filter(|&&n| n > 0).count(), copies.len())
}

/// The raw disk is /proc/vmcore followed by zeros: cuts it to the core's
/// `size`.
fn cut_to_core(raw: &Path, size: u64) {
    File::options()
        .write(true)
        .open(raw)
        .and_then(|f| f.set_len(size))
        .expect("cutting the raw copy to the core's size");
}

/// A value printed after `prefix` on the console.
fn console_value(boot: &mut Vm, prefix: &str, timeout: Duration) -> String {
    let line = boot.wait_for(prefix, timeout);
    let rest = &line.text[line.text.find(prefix).map_or(0, |i| i + prefix.len())..];
    rest.trim().to_owned()
}

fn print_layout(core: &Path, loads: &[Load]) {
    let len = fs::metadata(core).map(|m| m.len()).unwrap_or(0);
    println!("[kdump] {}: {len} bytes", core.display());
    for l in loads {
        println!(
            "[kdump]   PT_LOAD {:2} vaddr {:#018x} paddr {:#012x} memsz {:#011x} filesz {:#011x} offset {:#011x}",
            l.index, l.vaddr, l.paddr, l.memsz, l.filesz, l.offset
        );
    }
}

/// Flips the file byte of `load` at physical `at`; returns its offset.
fn flip(core: &Path, load: &Load, at: u64) -> u64 {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(core)
        .expect("open the raw core");
    let off = load.offset + (at - load.paddr);
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, off).expect("read a byte");
    b[0] ^= 0x01;
    f.write_all_at(&b, off).expect("write a byte");
    off
}

/// `kjump collect --dump-dmesg` on `core` (a vmcore or a kjump image of
/// one) finds what the crashed kernel certainly printed.
fn assert_kernel_log(dir: &Path, name: &str, core: &Path) {
    let out = dir.join(format!("{name}-dmesg.txt"));
    let Run { text, secs, .. } = kjump_info(&["collect", "--dump-dmesg", os(core), os(&out)]).ok();
    println!("[{name}] {} in {secs:.2} s", text.trim());
    let log = fs::read_to_string(&out).expect("the kernel log as text");
    for want in [
        "] Linux version ",
        "] sysrq: Trigger a crash",
        "] Kernel panic - not syncing: sysrq triggered crash",
    ] {
        assert!(
            log.contains(want),
            "{want:?} not in the kernel log of {}:\n{log}",
            core.display()
        );
    }
    let _ = fs::remove_file(&out);
}

/// The collector's image of the core (`kjump collect -d 31`) verifies, and
/// its kdump-compressed and ELF exports hold each page it dumps as the raw
/// core has it; the pages it left out are marked excluded in the first and
/// lie in no PT_LOAD of the second, the pattern's page-cache pages (a tmpfs
/// file) among them. Returns the kdump-compressed export.
fn collected_matches_the_core(
    dir: &Path,
    name: &str,
    img: &Path,
    raw: &Path,
    pattern: &[u8],
) -> std::path::PathBuf {
    kjump(&["verify", os(img)]).ok();
    let kd = dir.join(format!("{name}-collected.kdump"));
    let Run { secs, .. } = kjump(&["export", os(img), "-o", os(&kd), "--format", "kdump"]).ok();
    let d = Diskdump::open(File::open(&kd).expect("the kdump-compressed export"))
        .expect("a kdump-compressed file kjump reads back");
    let elf = dir.join(format!("{name}-collected.elf"));
    kjump(&["export", os(img), "-o", os(&elf)]).ok();
    let (loads, _) = core_headers(&elf);
    let elf_file = File::open(&elf).expect("the ELF export");
    let pattern_pages: std::collections::HashSet<&[u8]> = pattern.chunks_exact(PAGE_SIZE).collect();
    let (mut dumped, mut excluded, mut pattern_dumped, mut pattern_seen) = (0u64, 0u64, 0, 0);
    for_each_page(raw, |paddr, page| {
        let is_pattern = pattern_pages.contains(page);
        pattern_seen += usize::from(is_pattern);
        let in_elf = loads
            .iter()
            .find(|l| l.paddr <= paddr && paddr < l.end())
            .map(|l| {
                let mut b = vec![0u8; PAGE_SIZE];
                elf_file
                    .read_exact_at(&mut b, l.offset + paddr - l.paddr)
                    .expect("reading the ELF export");
                b
            });
        match d.read_page(paddr / PAGE_SIZE as u64) {
            Ok(p) => {
                assert_eq!(p, page, "frame {:#x} of the kdump export", paddr / 4096);
                assert_eq!(
                    in_elf.as_deref(),
                    Some(page),
                    "frame {:#x} of the ELF export",
                    paddr / 4096
                );
                dumped += 1;
                pattern_dumped += usize::from(is_pattern);
            }
            Err(ReadError::NotDumped(_)) => {
                assert!(
                    in_elf.is_none(),
                    "left-out frame {:#x} in a PT_LOAD of the ELF export",
                    paddr / 4096
                );
                excluded += 1;
            }
            Err(e) => panic!("frame {:#x}: {e}", paddr / 4096),
        }
    });
    let size = fs::metadata(&kd).map_or(0, |m| m.len());
    println!(
        "[{name}] collected (-d 31): {dumped} frames dumped, {excluded} excluded; kdump export {size} bytes in {secs:.2} s; ELF export {} PT_LOADs; pattern pages {pattern_seen} in the core, {pattern_dumped} dumped",
        loads.len()
    );
    assert!(
        excluded > 0 && dumped > 0,
        "{dumped} dumped, {excluded} excluded"
    );
    assert!(pattern_seen > 0, "no pattern page in the raw core");
    assert_eq!(
        pattern_dumped, 0,
        "page-cache pages of the pattern were dumped at -d 31"
    );
    kd
}

/// `crash -s VMLINUX DUMP` with `sys` and `log` on its input: it opens
/// `dump`, finds the release and the panic, and prints the kernel log.
fn crash_reads(vmlinux: &Path, dump: &Path, release: &str) {
    let started = std::time::Instant::now();
    let mut child = Command::new("crash")
        .args(["-s", os(vmlinux), os(dump)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running crash (tests/setup.sh installs it): {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"sys\nlog\nquit\n")
        .expect("feeding crash");
    let out = child.wait_with_output().expect("crash");
    let text = String::from_utf8_lossy(&out.stdout);
    let all = format!("{text}\n{}", String::from_utf8_lossy(&out.stderr));
    println!(
        "[crash] {} in {:.2?}, exit {}:\n{}",
        dump.display(),
        started.elapsed(),
        out.status,
        text.lines()
            .filter(|l| l.contains("RELEASE") || l.contains("PANIC") || l.contains("sysrq"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        out.status.success(),
        "crash failed on {}:\n{all}",
        dump.display()
    );
    for want in [
        format!("RELEASE: {release}"),
        "] Linux version ".to_owned(),
        "] Kernel panic - not syncing: sysrq triggered crash".to_owned(),
    ] {
        assert!(
            text.contains(&want),
            "{want:?} not in crash's output:\n{all}"
        );
    }
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("PANIC:") && l.contains("sysrq")),
        "crash's sys names no sysrq panic:\n{all}"
    );
}

#[test]
fn real_kdump_core_is_captured_and_exported() {
    let Some(_machine) = machine() else { return };
    real_crash("kdump", None, |_| {});
}

/// The crashed kernel is Debian 12's own (6.1, cloud flavour), the crash
/// kernel the rig's: a struct page layout and VMCOREINFO of another kernel
/// for the collector's filter, and a dump `crash` reads. Debian ships that
/// kernel's debug information (tests/vm/debian-kernel.sh --debug), and
/// Debian 12's `crash` knows its release. `crash` opens the collector's
/// kdump-compressed export with it, names the release and the panic, and
/// prints the kernel log up to the panic.
#[test]
fn debian_kernel_crash_opens_in_crash() {
    let Some(_machine) = machine() else { return };
    let kernel = vm::kernel::from_script("debian-kernel.sh", &[]).unwrap_or_else(|e| panic!("{e}"));
    let vmlinux =
        vm::kernel::from_script("debian-kernel.sh", &["--debug"]).unwrap_or_else(|e| panic!("{e}"));
    let release = vm::kernel::release(&kernel).unwrap_or_else(|e| panic!("{e}"));
    real_crash("kdump-debian", Some(&kernel), |kd| {
        crash_reads(&vmlinux, kd, &release)
    });
}

/// A crashes into a kdump kernel that copies /proc/vmcore raw, captures it
/// and collects it (init.sh's kdump block); the host checks all three
/// against each other and the pattern A held, then hands the collector's
/// kdump-compressed export to `read` before the files go. A boots
/// `first_kernel` when given, else the rig's kernel.
fn real_crash(name: &str, first_kernel: Option<&Path>, read: impl FnOnce(&Path)) {
    let dir = vm::dir();
    let seed = format!(
        "{:016x}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id())
    );
    let file = |what: &str| dir.join(format!("{name}-{what}"));
    let vda = hibvm::new_disk_of(&file("unused.img"), 64 << 20);
    let raw = hibvm::new_disk_of(&file("vmcore.raw"), CORE_DISK_BYTES);
    let crash_img = hibvm::new_disk_of(&file("crash.img"), CORE_DISK_BYTES);
    let collected_img = hibvm::new_disk_of(&file("collected.img"), CORE_DISK_BYTES);
    let mut opts = BootOpts::new(&vda, "none")
        .disk(&raw)
        .disk(&crash_img)
        .disk(&collected_img)
        .arg(&format!("kjump.kdump={seed}"));
    if let Some(k) = first_kernel {
        opts = opts.first_kernel(k);
    }
    let mut boot = start(name, &opts);
    let printed = console_value(&mut boot, "KDUMP-A: PATTERN ", PHASE);
    let load = console_value(&mut boot, "KDUMP-A: LOAD-EXIT ", PHASE);
    assert!(
        load.starts_with("0 crash loaded 1"),
        "{load}\n{}",
        boot.logs()
    );
    let crashed = boot.wait_for("KDUMP-A: CRASH", PHASE);
    let up = boot.wait_for("KDUMP: crash kernel up", CRASH_PHASE);
    let size: u64 = console_value(&mut boot, "KDUMP: VMCORE-SIZE ", CRASH_PHASE)
        .parse()
        .expect("a size");
    let copied = console_value(&mut boot, "KDUMP: RAW-COPY-EXIT ", CRASH_PHASE);
    let captured = console_value(&mut boot, "KDUMP: CAPTURE-EXIT ", CRASH_PHASE);
    let collected = console_value(&mut boot, "KDUMP: COLLECT-EXIT ", CRASH_PHASE);
    boot.wait_for("KDUMP: DONE", CRASH_PHASE);
    boot.wait_exit(PHASE);
    let lines = boot.lines();
    for l in lines.iter().filter(|l| {
        ["KDUMP", "kjump", "committed", "Kernel panic"]
            .iter()
            .any(|m| l.text.contains(m))
    }) {
        println!("[{name}] {:7.2}  {}", l.at, l.text);
    }
    println!(
        "[{name}] crash -> crash kernel's /init: {:.2} s",
        up.at - crashed.at
    );
    assert!(
        copied.starts_with("0 "),
        "raw copy: {copied}\n{}",
        boot.logs()
    );
    assert!(
        captured.starts_with("0 "),
        "kjump capture of /proc/vmcore: {captured}\n{}",
        boot.logs()
    );
    assert!(
        collected.starts_with("0 "),
        "kjump collect -d 31 of /proc/vmcore: {collected}\n{}",
        boot.logs()
    );
    let left_out = lines
        .iter()
        .find(|l| l.text.contains("leaving out ") && l.text.contains(" frames (free "))
        .unwrap_or_else(|| panic!("the collector named no frames left out\n{}", boot.logs()));
    println!("[{name}] collector: {}", left_out.text);
    assert!(
        size > 512 << 20 && size < CORE_DISK_BYTES,
        "/proc/vmcore of {size} bytes"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.text.contains("/proc/vmcore: PT_LOAD")
                && l.text.contains("with the same bytes: read once")),
        "the crash kernel's capture did not read an overlap once\n{}",
        boot.logs()
    );

    cut_to_core(&raw, size);
    let (loads, notes) = core_headers(&raw);
    print_layout(&raw, &loads);
    assert!(!notes.is_empty(), "no PT_NOTE in the vmcore");
    let (text, home) = text_and_home(&loads);
    println!(
        "[{name}] kernel text: PT_LOAD {} ({:#x} bytes at physical {:#x}) inside PT_LOAD {}",
        text.index, text.memsz, text.paddr, home.index
    );

    let pattern = pattern(&seed);
    let md5 = md5_hex(&pattern);
    assert!(
        printed.starts_with(&format!("{md5} {} bytes", pattern.len())),
        "A's pattern {printed} is not the host's {md5}"
    );

    // The kernel log, from the core and from the crash kernel's images.
    for core in [&raw, &crash_img, &collected_img] {
        assert_kernel_log(dir, name, core);
    }

    // The host's capture of the raw copy, and the crash kernel's image.
    let host_out = capture_verify_export(dir, &format!("{name}-host"), &raw);
    assert_same_memory(&raw, &host_out);
    let (found, of) = pattern_pages_found(&host_out, &pattern);
    println!("[{name}] pattern: {found} of {of} pages found in the exported core");
    assert_eq!(found, of, "pattern pages missing from the exported core");
    let crash_out = file("crash.export.elf");
    verify_export(&format!("{name}-crash"), &crash_img, &crash_out);
    assert_same_memory(&raw, &crash_out);
    assert_eq!(pattern_pages_found(&crash_out, &pattern), (of, of));
    let info = kjump(&["info", os(&crash_img)]).ok().text;
    println!("[{name}] crash kernel's image:\n{}", info.trim());

    let kd = collected_matches_the_core(dir, name, &collected_img, &raw, &pattern);
    read(&kd);

    // One byte of the kernel text copy changed: refused with the address.
    let at = text.paddr + text.filesz / 2 + 0x123;
    flip(&raw, &text, at);
    assert_refused(&raw, &file("differ.img"), &differ_message(&text, &home, at));

    // Kept only when something failed.
    for p in [
        &raw,
        &crash_img,
        &collected_img,
        &kd,
        &file("collected.elf"),
        &host_out,
        &crash_out,
        &file("host.img"),
        &vda,
    ] {
        let _ = fs::remove_file(p);
    }
}

/// Not part of the suite: the input of tests/bench/collect-bench.sh, run
/// by it. A 2 GiB guest with 1280 MiB of its memory in use by a process
/// that re-checks it crashes into its kdump kernel, which copies
/// /proc/vmcore raw to a disk; the core, cut to its size, is moved to the
/// file `KJUMP_BENCH_VMCORE` names.
#[test]
#[ignore = "the input generator of tests/bench/collect-bench.sh"]
fn busy_guest_vmcore_for_the_collect_bench() {
    let Some(_machine) = machine() else { return };
    let out =
        std::env::var_os("KJUMP_BENCH_VMCORE").expect("KJUMP_BENCH_VMCORE: where the core goes");
    let dir = vm::dir();
    let vda = hibvm::new_disk_of(&dir.join("busy-unused.img"), 64 << 20);
    let raw = hibvm::new_disk_of(&dir.join("busy-vmcore.raw"), 3 << 30);
    let opts = BootOpts::new(&vda, "none")
        .machine("pc", "2G")
        .disk(&raw)
        .arg("kjump.kdump=busy")
        .arg("kjump.memcheck=1280");
    let mut boot = start("busy-kdump", &opts);
    let busy = console_value(&mut boot, "KDUMP-A: BUSY ", CRASH_PHASE);
    boot.wait_for("KDUMP: crash kernel up", CRASH_PHASE);
    let size: u64 = console_value(&mut boot, "KDUMP: VMCORE-SIZE ", CRASH_PHASE)
        .parse()
        .expect("a size");
    let copied = console_value(&mut boot, "KDUMP: RAW-COPY-EXIT ", CRASH_PHASE);
    boot.wait_for("KDUMP: DONE", CRASH_PHASE);
    boot.wait_exit(PHASE);
    assert!(
        copied.starts_with("0 "),
        "raw copy: {copied}\n{}",
        boot.logs()
    );
    cut_to_core(&raw, size);
    fs::rename(&raw, &out)
        .or_else(|_| fs::copy(&raw, &out).map(|_| ()))
        .expect("moving the core into place");
    let _ = fs::remove_file(&raw);
    let _ = fs::remove_file(&vda);
    println!(
        "[busy-kdump] busy {busy}; core of {size} bytes at {}",
        Path::new(&out).display()
    );
}

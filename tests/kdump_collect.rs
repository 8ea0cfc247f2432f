//! `kjump collect` (makedumpfile's calling convention) and `kjump export
//! --format kdump` on a synthetic kernel core: 8 MiB of RAM whose struct
//! pages, page tables and VMCOREINFO (the real 6.12 one, with this core's
//! addresses) say which frames are free, page cache, user or kernel pages.
//! The filtered image verifies, the left-out frames are recorded as
//! excluded and read back as excluded (never as zero) from the
//! kdump-compressed export, and bad input falls back to zero pages only.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use common::cores::core_headers;
use common::kjump::{kjump_info as kjump, Run};
use common::tempdir::TempDir;
use kjump_dumpgen::{elf, note, NT_VMCOREINFO};
use kjump_kdump::diskdump_read::{Diskdump, ReadError};

const REAL: &str = include_str!("../kdump/tests/fixtures/vmcoreinfo-6.12.117.txt");
const PAGE: usize = 4096;
/// RAM: frames 0x100..0x800 (1 MiB to 8 MiB).
const FIRST: u64 = 0x100;
const END: u64 = 0x800;
const VMEMMAP: u64 = 0xffff_ea00_0000_0000;
const TEXT: u64 = 0xffff_ffff_8000_0000;
/// Page tables at 1 MiB, the struct page array at 2 MiB (0x800 × 64 bytes).
const TABLES: u64 = 0x10_0000;
const ARRAY: u64 = 0x20_0000;

/// kjump at its default log level, which must succeed: what it printed.
fn ok(args: &[&str]) -> String {
    let Run { text, .. } = kjump(args).ok();
    text
}

/// What each frame of the synthetic RAM is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Kernel,
    /// The first frame of a free order-3 block.
    FreeHead,
    FreeTail,
    Cache,
    User,
    Zero,
}

fn kind(pfn: u64) -> Kind {
    match pfn {
        _ if pfn < 0x300 => Kind::Kernel,
        0x300..=0x3ff if pfn % 8 == 0 => Kind::FreeHead,
        0x300..=0x3ff => Kind::FreeTail,
        0x400..=0x4ff if pfn % 2 == 0 => Kind::Cache,
        0x400..=0x4ff => Kind::User,
        0x500..=0x57f => Kind::Zero,
        _ => Kind::Kernel,
    }
}

fn put(mem: &mut [u8], at: u64, v: u64) {
    mem[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
}

/// The RAM: page contents, struct pages and 4-level page tables that map
/// the struct page array at `VMEMMAP`.
fn ram() -> Vec<u8> {
    let mut mem = vec![0u8; (END * PAGE as u64) as usize];
    for pfn in FIRST..END {
        if kind(pfn) == Kind::Zero {
            continue;
        }
        let at = (pfn * PAGE as u64) as usize;
        let line = format!("frame {pfn:#x} {:?} ", kind(pfn)).into_bytes();
        for (i, b) in mem[at..at + PAGE].iter_mut().enumerate() {
            *b = line[i % line.len()];
        }
    }
    // Page tables: top, then one table per level for the vmemmap range.
    let (top, l3, l2, l1) = (TABLES, TABLES + 0x1000, TABLES + 0x2000, TABLES + 0x3000);
    for t in [top, l3, l2, l1] {
        mem[t as usize..(t + 0x1000) as usize].fill(0);
    }
    put(&mut mem, top + ((VMEMMAP >> 39) & 0x1ff) * 8, l3 | 3);
    put(&mut mem, l3 + ((VMEMMAP >> 30) & 0x1ff) * 8, l2 | 3);
    put(&mut mem, l2 + ((VMEMMAP >> 21) & 0x1ff) * 8, l1 | 3);
    for i in 0..(END * 64).div_ceil(PAGE as u64) {
        put(&mut mem, l1 + i * 8, (ARRAY + i * PAGE as u64) | 3);
    }
    let array = ARRAY as usize;
    mem[array..array + (END * 64) as usize].fill(0);
    for pfn in 0..END {
        let p = ARRAY + pfn * 64;
        let (flags, mapping, mapcount, private) = match kind(pfn) {
            Kind::FreeHead => (0u64, 0u64, 0xf000_0000u32, 3u64),
            Kind::Cache => (1 << 5, 0xffff_8880_0100_0000, 0, 0),
            Kind::User => (1 << 5 | 1 << 17, 0xffff_8880_0200_0001, 0, 0),
            _ => (0, 0, 0xffff_ffff, 0),
        };
        put(&mut mem, p, flags);
        put(&mut mem, p + 24, mapping);
        put(&mut mem, p + 40, private);
        mem[(p + 48) as usize..(p + 52) as usize].copy_from_slice(&mapcount.to_le_bytes());
    }
    mem
}

/// The real VMCOREINFO with this core's page tables and vmemmap, less
/// the keys named in `drop`.
fn vmcoreinfo(drop: &[&str]) -> String {
    let own = [
        "NUMBER(phys_base)",
        "SYMBOL(init_top_pgt)",
        "NUMBER(pgtable_l5_enabled)",
        "SYMBOL(vmemmap)",
    ];
    let mut text: String = REAL
        .lines()
        .filter(|l| !own.iter().chain(drop).any(|k| l.starts_with(k)))
        .map(|l| format!("{l}\n"))
        .collect();
    for (k, v) in [
        ("NUMBER(phys_base)", "0".to_string()),
        ("SYMBOL(init_top_pgt)", format!("{:x}", TEXT + TABLES)),
        ("NUMBER(pgtable_l5_enabled)", "0".to_string()),
        ("SYMBOL(vmemmap)", format!("{VMEMMAP:x}")),
    ] {
        if !drop.contains(&k) {
            text += &format!("{k}={v}\n");
        }
    }
    text
}

/// An ELF core of the RAM from frame `FIRST` with `info` as its
/// VMCOREINFO note (none when `None`).
fn write_core(path: &Path, mem: &[u8], info: Option<&str>) {
    let notes = info.map_or_else(Vec::new, |i| {
        note("VMCOREINFO", NT_VMCOREINFO, i.as_bytes())
    });
    let first = FIRST * PAGE as u64;
    let core = elf::core(&notes, &[(first, &mem[first as usize..])]);
    std::fs::write(path, core).expect("writing the core");
}

fn excluded_at_31(pfn: u64) -> bool {
    matches!(
        kind(pfn),
        Kind::FreeHead | Kind::FreeTail | Kind::Cache | Kind::User
    )
}

#[test]
fn collect_filters_and_the_kdump_export_marks_excluded_frames() {
    let dir = TempDir::new("kdump-collect");
    let mem = ram();
    let core = dir.path("vmcore");
    write_core(&core, &mem, Some(&vmcoreinfo(&[])));
    let img = dir.path("dump.img");
    let (c, i) = (core.to_str().unwrap(), img.to_str().unwrap());
    let text = ok(&["collect", "-l", "--message-level", "7", "-d", "31", c, i]);
    assert!(
        text.contains(
            "leaving out 512 frames (free 256, cache 128, cache with private data 0, user 128"
        ),
        "{text}"
    );
    assert!(text.contains("(512 left out, 128 zero)"), "{text}");
    ok(&["verify", i]);
    let kd = dir.path("dump.kdump");
    let k = kd.to_str().unwrap();
    for codec in ["snappy", "zstd", "none"] {
        ok(&[
            "export",
            i,
            "-o",
            k,
            "--format",
            "kdump",
            "--compress",
            codec,
        ]);
        let d = Diskdump::open(std::fs::File::open(&kd).unwrap()).unwrap();
        assert_eq!(d.dump_level, 30, "zero pages are dumped, the rest left out");
        assert_eq!(d.vmcoreinfo, vmcoreinfo(&[]).as_bytes());
        for pfn in FIRST..END {
            let at = (pfn * PAGE as u64) as usize;
            match d.read_page(pfn) {
                Ok(p) => {
                    assert!(!excluded_at_31(pfn), "{codec}: frame {pfn:#x} dumped");
                    assert_eq!(p, &mem[at..at + PAGE], "{codec}: frame {pfn:#x}");
                }
                Err(ReadError::NotDumped(_)) => {
                    assert!(excluded_at_31(pfn), "{codec}: frame {pfn:#x} excluded")
                }
                Err(e) => panic!("{codec}: frame {pfn:#x}: {e}"),
            }
        }
    }
    // An ELF core marks a frame left out by covering it with no PT_LOAD:
    // every frame dumped lies in one, with its bytes, and no frame left out.
    let elf = dir.path("dump.elf");
    let text = ok(&["export", i, "-o", elf.to_str().unwrap()]);
    let (loads, _) = core_headers(&elf);
    assert!(loads.len() > 1, "the range was not split: {text}");
    let bytes = std::fs::read(&elf).unwrap();
    for pfn in FIRST..END {
        let addr = pfn * PAGE as u64;
        let covering: Vec<_> = loads
            .iter()
            .filter(|l| l.paddr <= addr && addr < l.end())
            .collect();
        if excluded_at_31(pfn) {
            assert!(
                covering.is_empty(),
                "left-out frame {pfn:#x} in {covering:?}"
            );
        } else {
            assert_eq!(covering.len(), 1, "frame {pfn:#x}");
            let at = (covering[0].offset + addr - covering[0].paddr) as usize;
            let want = &mem[addr as usize..addr as usize + PAGE];
            assert_eq!(
                &bytes[at..at + PAGE],
                want,
                "frame {pfn:#x} of the ELF export"
            );
        }
    }
    // Level 2 leaves out the cache pages only.
    let img2 = dir.path("dump2.img");
    ok(&["collect", "-d", "2", c, img2.to_str().unwrap()]);
    ok(&[
        "export",
        img2.to_str().unwrap(),
        "-o",
        k,
        "--format",
        "kdump",
    ]);
    let d = Diskdump::open(std::fs::File::open(&kd).unwrap()).unwrap();
    for pfn in FIRST..END {
        assert_eq!(d.is_dumped(pfn), kind(pfn) != Kind::Cache, "frame {pfn:#x}");
    }
}

#[test]
fn bad_input_falls_back_to_zero_pages_and_says_why() {
    let dir = TempDir::new("kdump-collect-bad");
    let mem = ram();
    let cases: [(Option<String>, &str); 4] = [
        (None, "the dump has no VMCOREINFO note"),
        (
            Some(vmcoreinfo(&["OFFSET(page.mapping)", "NUMBER(PG_lru)"])),
            "VMCOREINFO lacks OFFSET(page.mapping), NUMBER(PG_lru)",
        ),
        (
            Some(vmcoreinfo(&["SYMBOL(vmemmap)", "SYMBOL(mem_section)"])),
            "VMCOREINFO gives neither SYMBOL(vmemmap), the struct page array's address, nor the mem_section keys to find it (no SYMBOL(mem_section))",
        ),
        // The sections this synthetic memory does not hold.
        (
            Some(vmcoreinfo(&["SYMBOL(vmemmap)"])),
            "finding the struct page array through mem_section (SYMBOL(mem_section)=0x",
        ),
    ];
    for (n, (info, want)) in cases.iter().enumerate() {
        let core = dir.path(&format!("vmcore{n}"));
        write_core(&core, &mem, info.as_deref());
        let img = dir.path(&format!("dump{n}.img"));
        let text = ok(&[
            "collect",
            "-d",
            "31",
            core.to_str().unwrap(),
            img.to_str().unwrap(),
        ]);
        assert!(
            text.contains("dump level 31 (zero, cache, cache-private, user, free) refused"),
            "{text}"
        );
        assert!(text.contains(want), "{want:?} in {text}");
        assert!(
            text.contains("dumping with zero pages left out only"),
            "{text}"
        );
        assert!(text.contains("dump level 1 (zero)"), "{text}");
        ok(&["verify", img.to_str().unwrap()]);
        let kd = dir.path(&format!("dump{n}.kdump"));
        ok(&[
            "export",
            img.to_str().unwrap(),
            "-o",
            kd.to_str().unwrap(),
            "--format",
            "kdump",
        ]);
        let d = Diskdump::open(std::fs::File::open(&kd).unwrap()).unwrap();
        assert!((FIRST..END).all(|p| d.is_dumped(p)), "nothing left out");
    }
}

#[test]
fn dump_dmesg_names_what_the_core_lacks() {
    let dir = TempDir::new("kdump-collect-dmesg");
    let mem = ram();
    let cases: [(Option<String>, &str); 2] = [
        (
            None,
            "no VMCOREINFO: the kernel log cannot be found without it",
        ),
        (
            Some(vmcoreinfo(&["SYMBOL(prb)", "OFFSET(printk_info.text_len)"])),
            "the kernel log cannot be found: VMCOREINFO lacks SYMBOL(prb), OFFSET(printk_info.text_len)",
        ),
    ];
    for (n, (info, want)) in cases.iter().enumerate() {
        let core = dir.path(&format!("vmcore{n}"));
        write_core(&core, &mem, info.as_deref());
        let out = dir.path(&format!("dmesg{n}.txt"));
        let run = kjump(&[
            "collect",
            "--dump-dmesg",
            core.to_str().unwrap(),
            out.to_str().unwrap(),
        ]);
        assert_eq!(run.code, 2, "{}", run.text);
        let err = run.stderr;
        assert!(
            err.contains(&format!("reading the kernel log of {}", core.display())),
            "{err}"
        );
        assert!(err.contains(want), "{want:?} in {err}");
        assert!(!out.exists(), "no log file on failure");
    }
}

/// Runs `script` under sh after sourcing the kdump-tools snippet, as
/// kdump-config does, with `kjump` and a stand-in `makedumpfile` (which
/// prints its arguments) on the PATH: the exit status, stdout and stderr.
fn kdump_config(dir: &TempDir, script: &str) -> (bool, String, String) {
    let bin = dir.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let stub = bin.join("makedumpfile");
    std::fs::write(&stub, "#!/bin/sh\necho \"makedumpfile $*\"\n").unwrap();
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    let link = bin.join("kjump");
    if !link.exists() {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kjump"), &link).unwrap();
    }
    let snippet =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("initramfs/integration/kdump-tools/kjump.sh");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(". {}\n{script}", snippet.display()))
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .output()
        .expect("running sh");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn the_kdump_tools_snippet_makes_kjump_the_collector() {
    let dir = TempDir::new("kdump-collect-kdump-tools");
    let core = dir.path("vmcore");
    write_core(&core, &ram(), Some(&vmcoreinfo(&[])));
    let stamp = dir.path("202612020102");
    std::fs::create_dir_all(&stamp).unwrap();
    // kdump-config's local save: MAKEDUMP_ARGS with its -F, the stream
    // through its compressor into dump-incomplete.
    let save = |args: &str| {
        kdump_config(
            &dir,
            &format!(
                "KDUMP_STAMPDIR={s}; KDUMP_STAMP=202612020102\n\
                 makedumpfile {args} {c} | cat > {s}/dump-incomplete",
                s = stamp.display(),
                c = core.display()
            ),
        )
    };
    let image = stamp.join("dump.202612020102.kjump");
    let incomplete = stamp.join("dump-incomplete");
    let (done, _, err) = save("-c -d 31 -F");
    assert!(done, "{err}");
    assert!(err.contains("leaving out 512 frames"), "{err}");
    assert_eq!(std::fs::read(&incomplete).unwrap(), b"", "nothing streamed");
    ok(&["verify", image.to_str().unwrap()]);

    // An option kjump does not take: its image goes, makedumpfile runs.
    let (done, _, err) = save("-c -d 31 --split -F");
    assert!(done, "{err}");
    assert!(err.contains("kjump collect failed: removing"), "{err}");
    assert!(!image.exists(), "the partial image is removed");
    assert_eq!(
        std::fs::read_to_string(&incomplete).unwrap(),
        format!("makedumpfile -F -c -d 31 --split {}\n", core.display())
    );

    // FTP and SSH stream the dump: makedumpfile, untouched.
    let (done, out, err) = kdump_config(&dir, &format!("makedumpfile -F -d 31 {}", core.display()));
    assert!(done, "{err}");
    assert_eq!(out, format!("makedumpfile -F -d 31 {}\n", core.display()));

    // The log: this core has no printk ring, so kjump fails and says so,
    // and makedumpfile gets its turn.
    let log = dir.path("dmesg");
    let (done, out, err) = kdump_config(
        &dir,
        &format!(
            "makedumpfile --dump-dmesg {} {}",
            core.display(),
            log.display()
        ),
    );
    assert!(done, "{err}");
    assert!(err.contains("reading the kernel log of"), "{err}");
    assert!(err.contains("failed: running makedumpfile"), "{err}");
    assert!(out.starts_with("makedumpfile --dump-dmesg "), "{out}");
}

#[test]
fn flattened_output_is_refused() {
    let out = kjump(&["collect", "-F", "-d", "31", "/proc/vmcore", "/tmp/x"]);
    assert_eq!(out.code, 2);
    let err = out.stderr;
    assert!(
        err.contains("-F (flattened output to standard output) is not supported"),
        "{err}"
    );
}

#[test]
fn a_full_destination_leaves_the_image_uncommitted_and_fails() {
    if !common::is_root() {
        common::skip("a_full_destination_leaves_the_image_uncommitted_and_fails needs root to mount a small tmpfs");
        return;
    }
    let dir = TempDir::new("kdump-collect-full");
    let mnt = dir.path("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let m = mnt.to_str().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16k", "kjump-full", m])
        .status()
        .expect("mount");
    assert!(mounted.success(), "mounting a tmpfs on {m}");
    let result = std::panic::catch_unwind(|| {
        let mem = ram();
        let core = dir.path("vmcore");
        write_core(&core, &mem, Some(&vmcoreinfo(&[])));
        let img = mnt.join("dump.img");
        let out = kjump(&[
            "collect",
            "-d",
            "1",
            core.to_str().unwrap(),
            img.to_str().unwrap(),
        ]);
        let err = out.stderr;
        assert_eq!(out.code, 2, "{err}");
        assert!(err.contains("the image is left uncommitted"), "{err}");
        assert!(
            err.contains("at offset 0x") || err.contains("offset"),
            "{err}"
        );
        assert!(err.contains("No space left on device"), "{err}");
        let info = kjump(&["info", img.to_str().unwrap()]);
        let text = info.stdout;
        assert!(text.contains("state:      incomplete"), "{text}");
        eprintln!("full destination: {}", err.trim());
    });
    let _ = Command::new("umount").arg(m).status();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

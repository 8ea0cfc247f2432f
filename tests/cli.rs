//! The kjump binary as users call it: /dev/mem-style sources with explicit
//! ranges or a memory-map file, `info --json`, and the errors of capture.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::cores::read_core;
use common::kjump::{kjump, Run};
use common::tempdir::TempDir;
use kjump_dumpgen::{write_dump, DumpSpec, SegmentSpec};

/// A file standing in for /dev/mem: byte `a` of the file is physical `a`.
/// Returns it with the memory of each segment, from a synthetic dump.
fn physical_memory(dir: &TempDir, segments: Vec<SegmentSpec>) -> (String, Vec<(u64, Vec<u8>)>) {
    let dump = dir.path("mem.elf");
    write_dump(&DumpSpec::new(5, segments), &dump).unwrap();
    let (segs, _) = read_core(&dump);
    let end = segs
        .iter()
        .map(|s| s.paddr + s.bytes.len() as u64)
        .max()
        .unwrap();
    let mut mem = vec![0xa5u8; end as usize];
    for s in &segs {
        mem[s.paddr as usize..s.paddr as usize + s.bytes.len()].copy_from_slice(&s.bytes);
    }
    let path = dir.path("physmem");
    std::fs::write(&path, &mem).unwrap();
    let segs = segs.into_iter().map(|s| (s.paddr, s.bytes)).collect();
    (path.display().to_string(), segs)
}

/// `kjump capture` of the pages at 0x1000-0x3fff of `mem` (a file from
/// [`physical_memory`]) onto `target`, with `extra` arguments after.
fn capture_pages(mem: &str, target: &str, extra: &[&str]) -> Run {
    let mut args = vec![
        "capture",
        "--source",
        mem,
        "--target",
        target,
        "--ranges",
        "0x1000-0x3fff",
    ];
    args.extend_from_slice(extra);
    kjump(&args)
}

fn assert_exported(image: &str, out: &Path, want: &[(u64, Vec<u8>)]) {
    kjump(&["export", image, "--output", out.to_str().unwrap()]).ok();
    let (got, _) = read_core(out);
    let got: Vec<(u64, Vec<u8>)> = got.into_iter().map(|s| (s.paddr, s.bytes)).collect();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.0, w.0, "segment address");
        assert!(g.1 == w.1, "segment at {:#x} differs", g.0);
    }
}

#[test]
fn raw_memory_with_ranges_and_memmap() {
    let dir = TempDir::new("cli-raw");
    let k = 4096;
    let (mem, segs) = physical_memory(
        &dir,
        vec![
            SegmentSpec::new(0x1000, 0x9ec00),
            SegmentSpec::new(0x100000, 700 * k),
        ],
    );
    let img = dir.path("a.img");
    let img = img.to_str().unwrap();
    let ranges = "0x1000-0x9fbff,0x100000-0x3bbfff";
    kjump(&[
        "capture",
        "--source",
        &mem,
        "--target",
        img,
        "--ranges",
        ranges,
        "--meta",
        "mode=test",
    ])
    .ok();
    kjump(&["verify", img]).ok();
    assert_exported(img, &dir.path("a.elf"), &segs);

    let iomem = dir.path("iomem");
    std::fs::write(
        &iomem,
        "00000000-00000fff : Reserved\n00001000-0009fbff : System RAM\n\
         000a0000-000fffff : Reserved\n00100000-003bbfff : System RAM\n  \
         00200000-00300000 : Kernel code\n",
    )
    .unwrap();
    let img2 = dir.path("b.img");
    let img2 = img2.to_str().unwrap();
    kjump(&[
        "capture",
        "--source",
        &mem,
        "--target",
        img2,
        "--memmap",
        iomem.to_str().unwrap(),
    ])
    .ok();
    assert_exported(img2, &dir.path("b.elf"), &segs);

    let info: serde_json::Value =
        serde_json::from_str(&kjump(&["info", "--json", img]).ok().stdout).unwrap();
    assert_eq!(info["state"], "committed");
    assert_eq!(info["ranges"][0]["start"], 0x1000);
    assert_eq!(info["ranges"][0]["end"], 0x9fc00);
    assert_eq!(info["ranges"][1]["bytes"], 700 * k);
    assert_eq!(info["pages"]["total"], 0x9f + 700);
    assert_eq!(info["extra"]["mode"], "test");
    assert_eq!(info["source"], mem.as_str());
}

#[test]
fn info_shows_the_kernel_of_an_elf_core() {
    let dir = TempDir::new("cli-info");
    let dump = dir.path("d.elf");
    let spec = DumpSpec::new(
        9,
        vec![
            SegmentSpec::new(0, 1 << 20),
            SegmentSpec::new(1 << 30, 4 << 20),
        ],
    );
    let dinfo = write_dump(&spec, &dump).unwrap();
    let img = dir.path("d.img");
    let (dump, img) = (dump.to_str().unwrap(), img.to_str().unwrap());
    kjump(&[
        "capture",
        "--source",
        dump,
        "--target",
        img,
        "--jump-back-entry",
        "0x1234000",
        "--threads",
        "1",
    ])
    .ok();
    let text = kjump(&["info", img]).ok().stdout;
    assert!(text.contains("state:      committed"), "{text}");
    assert!(
        text.contains(&format!("kernel:     {}", dinfo.os_release)),
        "{text}"
    );
    assert!(
        text.contains(&format!("build id:   {}", dinfo.build_id)),
        "{text}"
    );
    assert!(text.contains("re-entry:   0x1234000"), "{text}");
    assert!(text.contains("0x40000000-0x403fffff"), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&kjump(&["info", "--json", img]).ok().stdout).unwrap();
    assert_eq!(json["kernel"]["jump_back_entry"], 0x1234000);
    assert_eq!(json["kernel"]["vmcoreinfo_bytes"], dinfo.vmcoreinfo.len());
    assert_eq!(json["pages"]["total"], 256 + 1024);
}

#[test]
fn capture_errors_name_what_is_wrong() {
    let dir = TempDir::new("cli-errors");
    let (mem, _) = physical_memory(&dir, vec![SegmentSpec::new(0x1000, 0x3000)]);
    let img = dir.path("e.img");
    let img = img.to_str().unwrap();
    let iomem = dir.path("iomem");
    std::fs::write(&iomem, "00000000-00000000 : System RAM\n").unwrap();
    let cases: [(&str, &str, &[&str], &str); 6] = [
        (
            &mem,
            img,
            &[],
            "is not an ELF core: give the physical ranges",
        ),
        (
            &mem,
            img,
            &["--ranges", "0x1000-0x8fff"],
            "range 0x1000-0x8fff lies beyond the end of",
        ),
        (
            &mem,
            img,
            &["--ranges", "0x1000"],
            "range 0 (\"0x1000\") of the list: expected START-END",
        ),
        (
            "/nonexistent/mem",
            img,
            &["--ranges", "0-0xfff"],
            "opening source /nonexistent/mem",
        ),
        (
            &mem,
            "/dev/null",
            &["--ranges", "0x1000-0x1fff"],
            "neither a regular file nor a block device",
        ),
        (
            &mem,
            img,
            &["--memmap", iomem.to_str().unwrap()],
            "read /proc/iomem as root",
        ),
    ];
    for (source, target, extra, want) in cases {
        let mut args = vec!["capture", "--source", source, "--target", target];
        args.extend_from_slice(extra);
        let e = kjump(&args).exits(2).stderr;
        assert!(e.contains(want), "{args:?}: {e}");
    }
}

/// What a user can point kjump at by mistake loses nothing: a capture
/// whose target is its source, an export over the image it reads or into
/// a device node, an export through a symbolic link.
#[test]
fn capture_and_export_refuse_to_destroy_their_input() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("cli-destroy");
    let (mem, segs) = physical_memory(&dir, vec![SegmentSpec::new(0x1000, 0x3000)]);
    let before = std::fs::read(&mem).unwrap();
    let link = dir.path("mem-link");
    std::os::unix::fs::symlink(&mem, &link).unwrap();
    for target in [mem.as_str(), link.to_str().unwrap()] {
        let e = capture_pages(&mem, target, &[]).exits(2).stderr;
        assert!(e.contains("are the same file"), "{target}: {e}");
    }
    assert!(std::fs::read(&mem).unwrap() == before, "the source changed");

    let img = dir.path("a.img");
    let img = img.to_str().unwrap();
    capture_pages(&mem, img, &[]).ok();
    let image = std::fs::read(img).unwrap();
    let e = kjump(&["export", img, "-o", img]).exits(2).stderr;
    assert!(e.contains("is the image"), "{e}");
    let e = kjump(&["export", img, "-o", "/dev/null"]).exits(2).stderr;
    assert!(e.contains("is a device node"), "{e}");
    assert!(std::fs::read(img).unwrap() == image, "the image changed");
    kjump(&["verify", img]).ok();

    // A link as the last component is not followed, and the core is the
    // owner's alone, also when it replaces a file readable by others.
    let victim = dir.path("victim");
    std::fs::write(&victim, b"not kjump's").unwrap();
    let out_link = dir.path("core-link");
    std::os::unix::fs::symlink(&victim, &out_link).unwrap();
    kjump(&["export", img, "-o", out_link.to_str().unwrap()]).exits(2);
    assert_eq!(std::fs::read(&victim).unwrap(), b"not kjump's");
    let out = dir.path("core.elf");
    std::fs::write(&out, b"old").unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_exported(img, &out, &segs);
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
}

/// A target that holds what kjump did not write (a real ext4 filesystem,
/// a GPT partition table, anyone's data) is refused, named with what it
/// holds and where, and left byte for byte as it was; `--force` (collect:
/// makedumpfile's `-f`) writes over it; an empty file and a kjump image
/// are written without it.
#[test]
fn targets_holding_other_data_are_refused_without_force() {
    let dir = TempDir::new("cli-foreign");
    let (mem, segs) = physical_memory(&dir, vec![SegmentSpec::new(0x1000, 0x3000)]);
    // The ELF core physical_memory made the file from, for collect.
    let core = dir.path("mem.elf").display().to_string();
    let mut cases: Vec<(PathBuf, &str)> = Vec::new();
    let data = dir.path("thesis.txt");
    std::fs::write(&data, b"\0\0\0chapter one").unwrap();
    cases.push((
        data,
        "data that is not a kjump image (first non-zero byte at offset 0x3)",
    ));
    if common::have("mkfs.ext4") {
        let fs = dir.path("ext4.img");
        std::fs::write(&fs, vec![0u8; 4 << 20]).unwrap();
        common::run(
            std::process::Command::new("mkfs.ext4")
                .args(["-q", "-F"])
                .arg(&fs),
        );
        cases.push((fs, "an ext2/3/4 filesystem (signature at offset 0x438)"));
    }
    if common::have("sgdisk") {
        let gpt = dir.path("gpt.img");
        std::fs::write(&gpt, vec![0u8; 4 << 20]).unwrap();
        common::run(
            std::process::Command::new("sgdisk")
                .args(["-o", "-n", "1:2048:0"])
                .arg(&gpt),
        );
        cases.push((gpt, "a GPT partition table (signature at offset 0x200)"));
    }
    for (path, what) in &cases {
        let target = path.to_str().unwrap();
        let before = std::fs::read(path).unwrap();
        let e = capture_pages(&mem, target, &[]).exits(2).stderr;
        assert!(e.contains(&format!("{target} holds {what}")), "{e}");
        assert!(e.contains("--force"), "{e}");
        let e = kjump(&["collect", "-d", "1", &core, target])
            .exits(2)
            .stderr;
        assert!(e.contains(what), "collect: {e}");
        assert!(std::fs::read(path).unwrap() == before, "{target} changed");
    }
    // Forced, the first is overwritten and holds a good image; a second
    // capture onto that image needs no force.
    let (path, _) = &cases[0];
    let target = path.to_str().unwrap();
    capture_pages(&mem, target, &["--force"]).ok();
    capture_pages(&mem, target, &[]).ok();
    assert_exported(target, &dir.path("forced.elf"), &segs);
    if let Some((fs, _)) = cases.get(1) {
        kjump(&["collect", "-d", "1", "-f", &core, fs.to_str().unwrap()]).ok();
        kjump(&["verify", fs.to_str().unwrap()]).ok();
    }
    // An empty file and a new one are nobody's data.
    let empty = dir.path("empty.img");
    std::fs::write(&empty, b"").unwrap();
    capture_pages(&mem, empty.to_str().unwrap(), &[]).ok();
    capture_pages(&mem, dir.path("new.img").to_str().unwrap(), &[]).ok();
}

/// A new image file is its owner's alone, and an image is never written
/// through a symbolic link in the target's place.
#[test]
fn image_files_are_private_and_never_written_through_a_link() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("cli-private");
    let (mem, _) = physical_memory(&dir, vec![SegmentSpec::new(0x1000, 0x3000)]);
    let img = dir.path("a.img");
    capture_pages(&mem, img.to_str().unwrap(), &[]).ok();
    let mode = std::fs::metadata(&img).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
    let victim = dir.path("victim");
    std::fs::write(&victim, b"not kjump's").unwrap();
    let link = dir.path("b.img");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let e = capture_pages(&mem, link.to_str().unwrap(), &[])
        .exits(2)
        .stderr;
    assert!(e.contains("b.img is a symbolic link to a file"), "{e}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"not kjump's");
}

/// kjump acts as /init only in its own initramfs, where the manifest is:
/// as PID 1 anywhere else (a container's entrypoint) it is the command it
/// was asked to be.
#[test]
fn pid_1_without_a_manifest_is_an_ordinary_command() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n");
    let unshare = Path::new("/usr/bin/unshare");
    if !matches!(root, Ok(true)) || !unshare.exists() {
        common::skip("needs root and unshare (util-linux) for a PID namespace");
        return;
    }
    let dir = TempDir::new("cli-pid1");
    let (mem, _) = physical_memory(&dir, vec![SegmentSpec::new(0x1000, 0x3000)]);
    let img = dir.path("a.img");
    let img = img.to_str().unwrap();
    capture_pages(&mem, img, &[]).ok();
    // Its own mount namespace: were kjump to act as /init, its mounts
    // would stay inside.
    let out = Command::new(unshare)
        .args(["--pid", "--fork", "--mount", "--mount-proc", "--"])
        .arg(env!("CARGO_BIN_EXE_kjump"))
        .args(["verify", img])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running unshare");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(!stderr.contains("capture failed"), "{stderr}");
    assert!(stdout.contains("whole"), "{stdout}");
}

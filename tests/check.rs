//! `kjump check` on this machine, as root: whatever the machine is, the
//! verdict and the exit code agree with the lines printed, and facts read
//! here independently (the crashkernel reservation, a target that does
//! not exist) show up as the reasons.

mod common;

use common::kjump::kjump_info;

/// `kjump check ARGS` at kjump's default log level: its exit code, stdout
/// and stderr.
fn check(args: &[&str]) -> (i32, String, String) {
    let run = kjump_info(&[&["check"], args].concat());
    (run.code, run.stdout, run.stderr)
}

#[test]
fn check_on_this_machine_gives_its_reasons_and_exit_code() {
    if !common::is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs the tests as root"
        );
        common::skip("kjump check needs root");
        return;
    }
    // A file target in a directory that does not exist.
    let dir = std::env::temp_dir().join(format!("kjump-check-{}", std::process::id()));
    let dir = dir.to_str().unwrap();
    let missing = format!("{dir}/image");
    let missing = missing.as_str();
    let (code, stdout, stderr) = check(&["--target", missing, "--config", "/nonexistent"]);
    eprintln!("{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("kjump check: Linux "), "{stdout}");
    let whats: Vec<&str> = lines[1..]
        .iter()
        .take_while(|l| l.starts_with("ok ") || l.starts_with("FAIL "))
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(
        whats,
        [
            "kernel",
            "lockdown",
            "kexec_load",
            "crashkernel",
            "capture",
            "target",
            "filesystems"
        ],
        "{stdout}"
    );
    // A target that cannot exist is always a reason.
    assert_eq!(code, 3, "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("FAIL  target       {dir} does not exist")),
        "{stdout}"
    );
    // Every FAIL line is in the error, which is what systemd logs.
    assert!(
        stderr.starts_with("kjump: this machine cannot hibernate with kjump: "),
        "{stderr}"
    );
    for l in lines.iter().filter(|l| l.starts_with("FAIL")) {
        let (what, said) = l["FAIL".len()..].trim_start().split_once(' ').unwrap();
        let reason = format!("{what}: {}", said.trim_start());
        assert!(stderr.contains(&reason), "{reason:?} missing from {stderr}");
    }
    // The crashkernel line agrees with /proc/iomem, read here.
    let iomem = std::fs::read_to_string("/proc/iomem").unwrap();
    let reserved = iomem.contains(" : Crash kernel");
    assert_eq!(
        stdout.contains("FAIL  crashkernel  no crashkernel= region is reserved")
            || stdout.contains("FAIL  crashkernel  the kernel command line asks"),
        !reserved,
        "{stdout}"
    );
    // The kernel line agrees with kexec_load's presence: without
    // CONFIG_KEXEC the sysctl is absent and the probe says so.
    if !std::path::Path::new("/proc/sys/kernel/kexec_load_disabled").exists() {
        assert!(stdout.contains("FAIL  kernel "), "{stdout}");
        assert!(stdout.contains("without CONFIG_KEXEC"), "{stdout}");
    }
    // A missing capture kernel is named.
    let (code, stdout, _) = check(&["--kernel", "/nonexistent/vmlinuz", "--target", missing]);
    assert_eq!(code, 3);
    assert!(
        stdout.contains("FAIL  capture      capture kernel /nonexistent/vmlinuz not found"),
        "{stdout}"
    );
}

/// A loop device mounted read-write is named as a filesystem the guard
/// cannot protect (the capture kernel has no loop devices); mounted
/// read-only only (a snap's squashfs, an ISO image) it is left out.
#[test]
fn check_names_a_read_write_loop_mount_and_leaves_a_read_only_one_out() {
    use common::loopdev::{ready, Loop, Mount};
    if !ready(&["losetup", "mkfs.ext4", "mount"]) {
        return;
    }
    let dir = common::tempdir::TempDir::new("check-loop");
    let dev = Loop::ext4(&dir.path("fs.img"));
    let name = dev.0.display().to_string();
    let said = |stdout: &str| {
        stdout
            .lines()
            .find(|l| l.contains(" filesystems "))
            .unwrap_or_default()
            .to_string()
    };
    {
        let _rw = Mount::new(&dev.0, &dir.path("rw"));
        let (_, stdout, _) = check(&["--config", "/nonexistent"]);
        let line = said(&stdout);
        assert!(
            line.starts_with("FAIL  filesystems")
                && line.contains(&format!("on {name} (a loop device)")),
            "{stdout}"
        );
    }
    let _ro = Mount::new_with(&dev.0, &dir.path("ro"), "-o ro");
    let (_, stdout, _) = check(&["--config", "/nonexistent"]);
    assert!(!said(&stdout).contains(&name), "{stdout}");
}

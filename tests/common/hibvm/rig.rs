//! The rig of one kernel series: its bzImage (built or found by
//! tests/vm/build-kernel.sh), A's initramfs, and the kexec-jump selftest
//! that must pass on it before any test of that kernel boots.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::{flows, new_disk_of, start_on, BootOpts};
use crate::common::vm::initramfs::Initramfs;
use crate::common::vm::{dir, kernel, Vm};

/// kexec-tools, dynamically linked: its libraries come along.
const KEXEC: &str = "/usr/sbin/kexec";
/// A's /init: busybox sh. Its keys on the kernel command line
/// (`kjump.mode=`, `kjump.target=`, `kjump.fs=`, `kjump.precheck=`,
/// `kjump.otherboot=`, `kjump.force=`, `kjump.selftest=`) are described at
/// its top. After a resume it continues where `kjump hibernate` returned,
/// with the command line of the boot that hibernated.
const INIT: &str = include_str!("init.sh");
/// A's memory workload (`kjump.memcheck=MIB`), built by the rig.
const MEMCHECK: &str = "tests/common/hibvm/memcheck.rs";

/// A kernel series the VM tests run on. A, B and R are one bzImage, built
/// by tests/vm/build-kernel.sh from the same configuration fragment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kernel {
    /// Linux 6.12 from Debian 12's linux-source-6.12: the whole suite.
    #[default]
    Linux6_12,
    /// Linux 7.2 from Debian sid's linux-source-7.2 (kernel_7_2_vm.rs).
    Linux7_2,
}

impl Kernel {
    /// The series, as build-kernel.sh takes it.
    pub fn series(self) -> &'static str {
        match self {
            Kernel::Linux6_12 => "6.12",
            Kernel::Linux7_2 => "7.2",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One kernel's bzImage and A's initramfs.
#[derive(Debug)]
pub struct Rig {
    /// The series.
    pub series: Kernel,
    /// The bzImage (A, B and R).
    pub kernel: PathBuf,
    /// Its release, as `uname -r` prints it (from the bzImage's header).
    pub release: String,
    /// A's initramfs.
    pub initramfs: PathBuf,
    /// What `kjump selftest` printed in A on this kernel.
    pub selftest: Vec<String>,
}

/// The rig of `kernel`, built once per test process (the kernel itself
/// once per machine: build-kernel.sh caches it), and passed through the
/// kexec-jump selftest. A rig that could not be set up fails every test
/// that asks for it with the same message, without trying again.
pub fn rig_for(kernel: Kernel) -> &'static Rig {
    static RIGS: [OnceLock<Result<Rig, String>>; 2] = [OnceLock::new(), OnceLock::new()];
    let rig = RIGS[kernel.index()].get_or_init(|| build_rig(kernel));
    rig.as_ref()
        .unwrap_or_else(|e| panic!("setting up the VM rig for Linux {}: {e}", kernel.series()))
}

/// The rig of Linux 6.12 with a kjump built with its test hooks (feature
/// `test-hooks`: fault injection armed by words on the kernel command
/// line, such as `kjump.test-panic=write`), built once per test process.
/// The kernel passed the selftest in [`rig_for`]'s rig.
pub fn hooked_rig() -> &'static Rig {
    static RIG: OnceLock<Result<Rig, String>> = OnceLock::new();
    let rig = RIG.get_or_init(|| {
        let plain = rig_for(Kernel::Linux6_12);
        let dir = dir().join("hooked");
        fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let kjump = build_hooked_kjump()?;
        Ok(Rig {
            series: plain.series,
            kernel: plain.kernel.clone(),
            release: plain.release.clone(),
            initramfs: build_initramfs(&dir, &plain.kernel, &kjump)?,
            selftest: plain.selftest.clone(),
        })
    });
    rig.as_ref()
        .unwrap_or_else(|e| panic!("setting up the VM rig with kjump's test hooks: {e}"))
}

/// Builds kjump with `--features test-hooks` in a target directory of its
/// own (the build of the tests holds the usual one, and its kjump must stay
/// without hooks); returns the executable.
fn build_hooked_kjump() -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("hooked");
    let out = Command::new(&cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "--bin",
            "kjump",
            "--features",
            "test-hooks",
            "--target-dir",
        ])
        .arg(&target)
        .output()
        .map_err(|e| format!("running {cargo}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo build --features test-hooks failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // Under the target triple that .cargo/config.toml names.
    let kjump = target.join("x86_64-unknown-linux-gnu/debug/kjump");
    kjump
        .is_file()
        .then_some(kjump.clone())
        .ok_or_else(|| format!("cargo built no {}", kjump.display()))
}

fn build_rig(series: Kernel) -> Result<Rig, String> {
    let dir = dir().join(series.series());
    fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let kernel = kernel::from_script("build-kernel.sh", &[series.series()])?;
    let release = kernel::release(&kernel)?;
    let kjump = Path::new(env!("CARGO_BIN_EXE_kjump"));
    let initramfs = build_initramfs(&dir, &kernel, kjump)?;
    let mut rig = Rig {
        series,
        kernel,
        release,
        initramfs,
        selftest: Vec::new(),
    };
    rig.selftest = jump_selftest(&rig)?;
    Ok(rig)
}

/// Boots A to run `kjump selftest` (two jumps into a payload that jumps
/// straight back) and power off; returns what it printed, or why this
/// kernel cannot run the tests.
fn jump_selftest(rig: &Rig) -> Result<Vec<String>, String> {
    let name = format!("selftest-{}", rig.series.series());
    let disk = new_disk_of(&dir().join(format!("{name}.img")), 1 << 20);
    let opts = BootOpts::new(&disk, "none")
        .kernel(rig.series)
        .arg("kjump.selftest=1");
    let mut boot = start_on(rig, &name, &opts);
    let failed = |why: &str, boot: &Vm| {
        format!(
            "the kexec-jump selftest failed on Linux {}: {why}; a kernel that cannot jump out and back cannot hibernate with kjump, so no test tries\n{}",
            rig.release,
            boot.logs()
        )
    };
    let exit = boot
        .try_wait_for("A: SELFTEST-EXIT", flows::PHASE)
        .map_err(|why| failed(&why, &boot))?;
    let lines: Vec<String> = boot
        .lines()
        .into_iter()
        .filter(|l| {
            l.text.starts_with("kexec-jump selftest")
                || l.text.starts_with("jump ")
                || l.text.starts_with("kexec jump works")
                || l.text.starts_with("kjump: ")
        })
        .map(|l| format!("{:7.2} {}", l.at, l.text))
        .collect();
    if exit.text.trim_end() != "A: SELFTEST-EXIT 0" {
        let said = lines.last().cloned().unwrap_or_default();
        return Err(failed(&format!("`kjump selftest` said {said:?}"), &boot));
    }
    boot.wait_exit(flows::PHASE);
    for l in &lines {
        println!("[{name}] {l}");
    }
    Ok(lines)
}

/// The kjump under test, without its debug information: `kjump hibernate`
/// and `kjump resume` put their own executable into the capture and restore
/// initramfs, and a test build's 60 MB of DWARF would slow every kexec load
/// and fill the 256 MiB the capture kernel lives in. Falls back to a plain
/// copy where `strip` is missing.
fn install_kjump(root: &Initramfs, kjump: &Path, to: &str) -> Result<(), String> {
    let stripped = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(root.path(to))
        .arg(kjump)
        .status()
        .is_ok_and(|s| s.success());
    if stripped {
        return Ok(());
    }
    println!("strip failed: installing kjump with its debug information");
    root.copy(kjump, to)
}

/// Builds `hibvm/memcheck.rs` (std only) with the rustc that builds the
/// tests, statically, into `dir`, as A's memory workload.
fn build_memcheck(dir: &Path) -> Result<PathBuf, String> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(MEMCHECK);
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(&rustc)
        .args([
            "--edition",
            "2021",
            "-O",
            "-C",
            "target-feature=+crt-static",
        ])
        .args(["-C", "debuginfo=0", "--out-dir"])
        .arg(dir)
        .arg(&source)
        .output()
        .map_err(|e| format!("running {rustc}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{rustc} {} failed ({}): {}",
            source.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(dir.join("memcheck"))
}

/// A's initramfs: busybox, kjump, kexec-tools, the bzImage B and R boot,
/// memcheck and init.sh.
fn build_initramfs(dir: &Path, kernel: &Path, kjump: &Path) -> Result<PathBuf, String> {
    let root = Initramfs::new(
        &dir.join("root"),
        &["bin", "sbin", "dev", "proc", "sys", "tmp", "boot"],
    )?;
    root.busybox()?;
    install_kjump(&root, kjump, "bin/kjump")?;
    root.program(Path::new(KEXEC), "sbin/kexec")
        .map_err(|e| format!("{e} (apt-get install kexec-tools)"))?;
    root.copy(kernel, "boot/bzImage")?;
    root.copy(&build_memcheck(dir)?, "bin/memcheck")?;
    root.write("init", INIT.as_bytes(), 0o755)?;
    root.pack(&dir.join("a.cpio"))
}

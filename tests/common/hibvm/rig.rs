//! The rig of one kernel series: its bzImage (built or found by
//! tests/vm/build-kernel.sh), A's initramfs, and the kexec-jump selftest
//! that must pass on it before any test of that kernel boots; and the work
//! directory of the test binary.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::{flows, new_disk_of, Boot, BootOpts};

/// The host's busybox-static, copied into A's initramfs.
const BUSYBOX: &str = "/bin/busybox";
/// kexec-tools, dynamically linked: its libraries come along.
const KEXEC: &str = "/usr/sbin/kexec";
const KERNEL_SCRIPT: &str = "tests/vm/build-kernel.sh";
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

/// The test binary's work directory (hibernate_vm -> target/tmp/hibernate-vm),
/// emptied once per process: disks and logs go here.
pub fn dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // Each binary has its own, and must not delete another's logs.
        let name = env!("CARGO_CRATE_NAME").replace('_', "-");
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
        if dir.exists() {
            fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("removing {}: {e}", dir.display()));
        }
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        dir
    })
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

fn build_rig(series: Kernel) -> Result<Rig, String> {
    let dir = dir().join(series.series());
    fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let kernel = kernel(series)?;
    let release = release(&kernel)?;
    let initramfs = build_initramfs(&dir, &kernel)?;
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

/// The KEXEC_JUMP kernel's path; builds it (minutes) when not cached.
fn kernel(series: Kernel) -> Result<PathBuf, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(KERNEL_SCRIPT);
    let out = Command::new("bash")
        .arg(&script)
        .arg(series.series())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || !Path::new(&printed).is_file() {
        return Err(format!(
            "{} {} exited with {} and printed {printed:?}",
            script.display(),
            series.series(),
            out.status
        ));
    }
    Ok(PathBuf::from(printed))
}

/// The release a bzImage's setup header names: the first word of the
/// version string at 0x200 + the `kernel_version` field (offset 0x20e;
/// Documentation/arch/x86/boot.rst).
fn release(bzimage: &Path) -> Result<String, String> {
    let bytes = fs::read(bzimage).map_err(|e| format!("reading {}: {e}", bzimage.display()))?;
    let field = bytes
        .get(0x20e..0x210)
        .ok_or_else(|| format!("{} has no setup header", bzimage.display()))?;
    let at = 0x200 + usize::from(u16::from_le_bytes([field[0], field[1]]));
    let text = bytes.get(at..).unwrap_or_default();
    let end = text.iter().position(|&b| b == 0 || b == b' ').unwrap_or(0);
    let release = String::from_utf8_lossy(&text[..end]).into_owned();
    if release.is_empty() {
        return Err(format!(
            "{}: no version string at {at:#x}",
            bzimage.display()
        ));
    }
    Ok(release)
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
    let mut boot = Boot::start_on(rig, &name, &opts);
    let failed = |why: &str, boot: &Boot| {
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

fn copy(from: &Path, to: &Path) -> Result<(), String> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    fs::copy(from, to)
        .map(drop)
        .map_err(|e| format!("copying {} to {}: {e}", from.display(), to.display()))
}

/// The kjump under test, without its debug information: `kjump hibernate`
/// and `kjump resume` put their own executable into the capture and restore
/// initramfs, and a test build's 60 MB of DWARF would slow every kexec load
/// and fill the 256 MiB the capture kernel lives in. Falls back to a plain
/// copy where `strip` is missing.
fn install_kjump(dest: &Path) -> Result<(), String> {
    let kjump = Path::new(env!("CARGO_BIN_EXE_kjump"));
    let stripped = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(dest)
        .arg(kjump)
        .status()
        .is_ok_and(|s| s.success());
    if stripped {
        return Ok(());
    }
    println!("strip failed: installing kjump with its debug information");
    copy(kjump, dest)
}

/// The libraries `ldd` lists for `program`.
fn libraries(program: &str) -> Result<Vec<PathBuf>, String> {
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .map_err(|e| format!("running ldd {program}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect())
}

/// Builds `hibvm/memcheck.rs` (std only) with the rustc that builds the
/// tests, statically, as A's memory workload.
fn build_memcheck(dir: &Path, dest: &Path) -> Result<(), String> {
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
    copy(&dir.join("memcheck"), dest)
}

fn build_initramfs(dir: &Path, kernel: &Path) -> Result<PathBuf, String> {
    let root = dir.join("root");
    for d in ["bin", "sbin", "dev", "proc", "sys", "tmp", "boot"] {
        fs::create_dir_all(root.join(d)).map_err(|e| format!("creating {d}: {e}"))?;
    }
    copy(Path::new(BUSYBOX), &root.join("bin/busybox"))
        .map_err(|e| format!("{e} (apt-get install busybox-static)"))?;
    install_kjump(&root.join("bin/kjump"))?;
    copy(Path::new(KEXEC), &root.join("sbin/kexec"))
        .map_err(|e| format!("{e} (apt-get install kexec-tools)"))?;
    for lib in libraries(KEXEC)? {
        let dest = root.join(lib.strip_prefix("/").unwrap_or(&lib));
        copy(&lib, &dest)?;
    }
    copy(kernel, &root.join("boot/bzImage"))?;
    build_memcheck(dir, &root.join("bin/memcheck"))?;
    let init = root.join("init");
    fs::write(&init, INIT).map_err(|e| format!("writing {}: {e}", init.display()))?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {}: {e}", init.display()))?;
    let cpio = dir.join("a.cpio");
    let script = format!(
        "cd '{}' && find . | sort | cpio -o -H newc --quiet --owner=0:0 > '{}'",
        root.display(),
        cpio.display()
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .output()
        .map_err(|e| format!("running cpio: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cpio failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(cpio)
}

//! Boots a real Linux kernel in QEMU (TCG), puts known data in its RAM and
//! dumps the guest's physical memory to an ELF core with the QMP command
//! `dump-guest-memory`: real memory to feed kjump in tests.
//!
//! Host tools: `qemu-system-x86_64`, `/bin/busybox` (busybox-static), `cpio`,
//! and a Debian kernel that `tests/vm/debian-kernel.sh` fetches into a cache
//! outside the repository.
//!
//! The guest is a Debian cloud kernel with an initramfs made of busybox and a
//! shell `/init`. The initramfs carries an 8 MiB pseudo-random pattern that
//! `/init` copies into a tmpfs, so the guest holds it, page aligned, in at
//! least two page-cache copies. Each page of a tmpfs file is its own physical
//! page, so the copies are generally *not* contiguous in physical memory:
//! search a dump page by page, not for the whole pattern in one piece.
//!
//! What [`boot_and_dump`] leaves in its `work_dir` (kept for post-mortems):
//! `initramfs/` and `initramfs.cpio` (the guest's root), `console.log` (guest
//! serial console), `qemu.log` (QEMU's own output), `qmp.sock` and
//! `guest.core` (the dump).

use std::fmt;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The QEMU binary the guests run in.
pub const QEMU: &str = "qemu-system-x86_64";
/// Length of the pattern the guest keeps in RAM.
pub const PATTERN_LEN: usize = 8 << 20;
/// Guest page size: the pattern sits in RAM in pages of this size.
pub const PAGE_SIZE: usize = 4096;

const BUSYBOX: &str = "/bin/busybox";
const KERNEL_SCRIPT: &str = "tests/vm/debian-kernel.sh";
// no_timer_check: under TCG on a loaded host the IO-APIC timer check can
// miss ticks and panic, which KVM guests avoid the same way.
const KERNEL_CMDLINE: &str = "console=ttyS0 panic=-1 rdinit=/init no_timer_check";
/// Printed by the guest's /init, followed by the marker, once the data is in RAM.
const READY: &str = "KJUMP-READY";
/// Printed by the guest's /init when one of its steps fails.
const FAILED: &str = "KJUMP-FAILED";

/// Boot to READY takes ~3 s under TCG on a 2-core machine; leave room for a
/// loaded CI machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const DUMP_TIMEOUT: Duration = Duration::from_secs(120);
const QMP_TIMEOUT: Duration = Duration::from_secs(30);
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How much of the console log an error message quotes.
const LOG_TAIL_LINES: usize = 60;
/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// A finished memory dump of a guest and what was put in its memory.
#[derive(Debug)]
pub struct GuestDump {
    /// The ELF core file written by `dump-guest-memory` (paging off).
    pub path: PathBuf,
    /// The data the guest held in RAM, in 4 KiB pages (see [`pattern`]).
    pub pattern: Vec<u8>,
    /// The seed [`pattern`] made `pattern` from.
    pub seed: u64,
    /// A string unique to this run that the guest held in RAM.
    pub marker: String,
    /// The guest's serial console up to the dump.
    pub console_log: String,
    /// From starting QEMU to the guest's READY line.
    pub boot_time: Duration,
    /// From asking for the dump to its completion.
    pub dump_time: Duration,
}

/// Why a guest could not be booted or dumped.
#[derive(Debug)]
pub enum VmError {
    /// A file system or process operation failed.
    Io {
        /// What was being done.
        what: String,
        /// The file or program involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A helper program ran but failed.
    Tool {
        /// The program and its purpose.
        command: String,
        /// Exit status and output.
        detail: String,
    },
    /// A path QEMU cannot take in its option syntax.
    BadPath {
        /// The offending path.
        path: PathBuf,
        /// Why it cannot be used.
        why: &'static str,
    },
    /// QEMU exited before the guest was dumped.
    QemuExited {
        /// QEMU's exit status.
        status: ExitStatus,
        /// Console and QEMU log excerpts.
        logs: String,
    },
    /// The guest's /init reported a failed step.
    GuestFailed {
        /// Console and QEMU log excerpts.
        logs: String,
    },
    /// Something did not happen in time.
    Timeout {
        /// What was awaited.
        waiting_for: &'static str,
        /// How long it was awaited.
        after: Duration,
        /// Console and QEMU log excerpts.
        logs: String,
    },
    /// A QMP exchange failed.
    Qmp {
        /// The QMP command (or `greeting`).
        command: &'static str,
        /// The error response or the I/O error.
        detail: String,
        /// Console and QEMU log excerpts.
        logs: String,
    },
}

impl fmt::Display for VmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { what, path, source } => {
                write!(f, "cannot {what} ({}): {source}", path.display())
            }
            Self::Tool { command, detail } => write!(f, "{command} failed: {detail}"),
            Self::BadPath { path, why } => write!(f, "unusable path {}: {why}", path.display()),
            Self::QemuExited { status, logs } => {
                write!(f, "{QEMU} exited early ({status})\n{logs}")
            }
            Self::GuestFailed { logs } => write!(f, "guest /init failed\n{logs}"),
            Self::Timeout {
                waiting_for,
                after,
                logs,
            } => write!(
                f,
                "timed out after {after:?} waiting for {waiting_for}\n{logs}"
            ),
            Self::Qmp {
                command,
                detail,
                logs,
            } => write!(f, "qmp {command} failed: {detail}\n{logs}"),
        }
    }
}

impl std::error::Error for VmError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_error(what: impl Into<String>, path: &Path) -> impl FnOnce(io::Error) -> VmError {
    let what = what.into();
    let path = path.to_path_buf();
    move |source| VmError::Io { what, path, source }
}

/// Whether `qemu-system-x86_64` is on `PATH`.
pub fn qemu_available() -> bool {
    find_in_path(QEMU).is_some()
}

/// For a test that boots QEMU: true when it can. Without QEMU it prints a
/// visible `SKIPPED:` line and returns false, except under CI, which
/// installs QEMU and so fails instead.
pub fn require_qemu() -> bool {
    if qemu_available() {
        return true;
    }
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
    assert!(
        !ci,
        "{QEMU} not found, but CI is set: CI must install qemu-system-x86"
    );
    super::skip(format!(
        "{QEMU} not found (apt-get install qemu-system-x86)"
    ));
    false
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            fs::metadata(candidate)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// `len` bytes of SplitMix64 output from `seed`: reproducible anywhere with a
/// few lines of code, incompressible, and with no zero page in practice (a
/// hibernation image may drop zero pages, so they would prove nothing).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A different seed per run, so a stale dump cannot pass for a fresh one.
fn fresh_seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// Boots the Debian kernel with `mem_mib` MiB of RAM, waits until its /init
/// has put a fresh pattern and marker in RAM, dumps all guest memory into
/// `work_dir/guest.core` and shuts QEMU down. QEMU is killed on every error.
pub fn boot_and_dump(work_dir: &Path, mem_mib: u32) -> Result<GuestDump, VmError> {
    fs::create_dir_all(work_dir).map_err(io_error("create work directory", work_dir))?;
    let work_dir = fs::canonicalize(work_dir).map_err(io_error("resolve", work_dir))?;
    let files = GuestFiles::new(&work_dir)?;
    let kernel = debian_kernel()?;

    let seed = fresh_seed();
    let marker = format!("KJUMP-MARKER-{seed:016x}");
    let pattern = pattern(seed, PATTERN_LEN);
    let initramfs = build_initramfs(&work_dir, &pattern, &marker)?;

    let started = Instant::now();
    let mut guest = Guest::spawn(&kernel, &initramfs, mem_mib, &files)?;
    guest.wait_for_ready(&marker)?;
    let boot_time = started.elapsed();

    let mut qmp = Qmp::connect(&files.qmp_socket).map_err(|e| e.into_vm_error(&guest))?;
    let dump_started = Instant::now();
    qmp.dump_guest_memory(&files.core)
        .map_err(|e| e.into_vm_error(&guest))?;
    let dump_time = dump_started.elapsed();
    qmp.quit().map_err(|e| e.into_vm_error(&guest))?;
    guest.wait_for_exit()?;

    Ok(GuestDump {
        path: files.core.clone(),
        pattern,
        seed,
        marker,
        console_log: read_lossy(&files.console),
        boot_time,
        dump_time,
    })
}

/// Prints the Debian kernel's path, downloading it into the cache first if needed.
fn debian_kernel() -> Result<PathBuf, VmError> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(KERNEL_SCRIPT);
    let output = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .map_err(io_error("run bash", &script))?;
    let command = format!("{} (fetching the guest kernel)", script.display());
    if !output.status.success() {
        return Err(VmError::Tool {
            command,
            detail: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    let printed = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let kernel = PathBuf::from(&printed);
    if printed.is_empty() || !kernel.is_file() {
        return Err(VmError::Tool {
            command,
            detail: format!("printed {printed:?}, which is not a file"),
        });
    }
    Ok(kernel)
}

/// The guest's /init. It must not exit: PID 1 exiting panics the kernel, and
/// `panic=-1` with `-no-reboot` then ends QEMU, which the host notices.
fn init_script(marker: &str) -> String {
    format!(
        r#"#!/bin/busybox sh
# Written by tests/common/vm.rs. Keeps known data in RAM for a memory dump.
/bin/busybox mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
fail() {{ echo "{FAILED}: $*"; /bin/busybox poweroff -f; }}
/bin/busybox --install -s /bin || fail "busybox --install"
mount -t proc proc /proc || fail "mount /proc"
mount -t sysfs sysfs /sys || fail "mount /sys"
mount -t tmpfs -o size=16m,mode=0755 tmpfs /run || fail "mount tmpfs /run"
cp /pattern.bin /run/pattern.bin || fail "copy the pattern into tmpfs"
cmp /pattern.bin /run/pattern.bin || fail "pattern copy differs"
echo "{marker}" >/run/marker || fail "write the marker"
echo "{READY} {marker}"
while :; do sleep 3600; done
"#
    )
}

/// Lays out the guest's root file system and packs it with `cpio -H newc`,
/// uncompressed: the kernel unpacks it faster and no compressor is needed.
fn build_initramfs(work_dir: &Path, pattern: &[u8], marker: &str) -> Result<PathBuf, VmError> {
    let root = work_dir.join("initramfs");
    if root.exists() {
        fs::remove_dir_all(&root).map_err(io_error("remove old initramfs tree", &root))?;
    }
    for dir in ["bin", "dev", "proc", "run", "sys"] {
        let path = root.join(dir);
        fs::create_dir_all(&path).map_err(io_error("create directory", &path))?;
    }
    let busybox = root.join("bin/busybox");
    fs::copy(BUSYBOX, &busybox).map_err(io_error(
        "copy busybox (apt-get install busybox-static)",
        Path::new(BUSYBOX),
    ))?;
    let init = root.join("init");
    fs::write(&init, init_script(marker)).map_err(io_error("write", &init))?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))
        .map_err(io_error("make executable", &init))?;
    let pattern_file = root.join("pattern.bin");
    fs::write(&pattern_file, pattern).map_err(io_error("write", &pattern_file))?;

    let cpio_path = work_dir.join("initramfs.cpio");
    let archive = fs::File::create(&cpio_path).map_err(io_error("create", &cpio_path))?;
    let mut cpio = Command::new("cpio")
        .args(["--create", "--format=newc", "--quiet", "--owner=0:0"])
        .arg("--reproducible")
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(archive)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_error(
            "run cpio (apt-get install cpio)",
            Path::new("cpio"),
        ))?;
    let names = ".\nbin\nbin/busybox\ndev\ninit\npattern.bin\nproc\nrun\nsys\n";
    let written = match cpio.stdin.take() {
        Some(mut stdin) => stdin.write_all(names.as_bytes()),
        None => Err(io::Error::other("cpio has no stdin pipe")),
    };
    let output = cpio
        .wait_with_output()
        .map_err(io_error("wait for cpio", Path::new("cpio")))?;
    written.map_err(io_error("feed file names to cpio", &root))?;
    if !output.status.success() {
        return Err(VmError::Tool {
            command: "cpio --create --format=newc".to_owned(),
            detail: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(cpio_path)
}

/// Where one guest's files go.
struct GuestFiles {
    console: PathBuf,
    qemu_log: PathBuf,
    qmp_socket: PathBuf,
    core: PathBuf,
}

impl GuestFiles {
    fn new(work_dir: &Path) -> Result<Self, VmError> {
        // QEMU splits chardev options at commas.
        if work_dir.to_string_lossy().contains(',') {
            return Err(VmError::BadPath {
                path: work_dir.to_path_buf(),
                why: "qemu options cannot hold a comma",
            });
        }
        if work_dir.to_str().is_none() {
            return Err(VmError::BadPath {
                path: work_dir.to_path_buf(),
                why: "not UTF-8, so not expressible in QMP's JSON",
            });
        }
        let qmp_socket = work_dir.join("qmp.sock");
        if qmp_socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(VmError::BadPath {
                path: qmp_socket,
                why: "longer than a unix socket path may be (107 bytes)",
            });
        }
        Ok(Self {
            console: work_dir.join("console.log"),
            qemu_log: work_dir.join("qemu.log"),
            qmp_socket,
            core: work_dir.join("guest.core"),
        })
    }
}

/// A running QEMU process; dropping it kills and reaps QEMU.
struct Guest<'a> {
    child: Option<Child>,
    files: &'a GuestFiles,
}

impl<'a> Guest<'a> {
    fn spawn(
        kernel: &Path,
        initramfs: &Path,
        mem_mib: u32,
        files: &'a GuestFiles,
    ) -> Result<Self, VmError> {
        for stale in [&files.console, &files.qmp_socket, &files.core] {
            match fs::remove_file(stale) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(io_error("remove stale file", stale)(e))
                }
                _ => {}
            }
        }
        let log = fs::File::create(&files.qemu_log).map_err(io_error("create", &files.qemu_log))?;
        let log2 = log.try_clone().map_err(io_error("dup", &files.qemu_log))?;
        let mut command = Command::new(QEMU);
        command
            .args(["-accel", "tcg", "-cpu", "max", "-smp", "1"])
            .args(["-m", &format!("{mem_mib}M")])
            .args(["-display", "none", "-monitor", "none", "-nic", "none"])
            .arg("-no-reboot")
            .arg("-serial")
            .arg(format!("file:{}", files.console.display()))
            .arg("-qmp")
            .arg(format!(
                "unix:{},server=on,wait=off",
                files.qmp_socket.display()
            ))
            .arg("-kernel")
            .arg(kernel)
            .arg("-initrd")
            .arg(initramfs)
            .args(["-append", KERNEL_CMDLINE])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = command.spawn().map_err(io_error(
            "start qemu (apt-get install qemu-system-x86)",
            Path::new(QEMU),
        ))?;
        Ok(Self {
            child: Some(child),
            files,
        })
    }

    /// The tail of the console and QEMU's own output, for error messages.
    fn logs(&self) -> String {
        let console = read_lossy(&self.files.console);
        let qemu = read_lossy(&self.files.qemu_log);
        format!(
            "--- last {LOG_TAIL_LINES} lines of {} ---\n{}\n--- {} ---\n{}",
            self.files.console.display(),
            tail(&console, LOG_TAIL_LINES),
            self.files.qemu_log.display(),
            tail(&qemu, LOG_TAIL_LINES),
        )
    }

    /// `Some(status)` once QEMU has exited.
    fn exited(&mut self) -> Result<Option<ExitStatus>, VmError> {
        match self.child.as_mut() {
            Some(child) => child
                .try_wait()
                .map_err(io_error("poll qemu", Path::new(QEMU))),
            None => Ok(None),
        }
    }

    fn wait_for_ready(&mut self, marker: &str) -> Result<(), VmError> {
        let ready = format!("{READY} {marker}");
        let started = Instant::now();
        loop {
            let console = read_lossy(&self.files.console);
            if console.contains(&ready) {
                return Ok(());
            }
            if console.contains(FAILED) {
                return Err(VmError::GuestFailed { logs: self.logs() });
            }
            if let Some(status) = self.exited()? {
                return Err(VmError::QemuExited {
                    status,
                    logs: self.logs(),
                });
            }
            if started.elapsed() > BOOT_TIMEOUT {
                return Err(VmError::Timeout {
                    waiting_for: "the guest's READY line",
                    after: BOOT_TIMEOUT,
                    logs: self.logs(),
                });
            }
            sleep(POLL_INTERVAL);
        }
    }

    /// Waits for QEMU to exit after `quit`, then forgets the process.
    fn wait_for_exit(&mut self) -> Result<(), VmError> {
        let started = Instant::now();
        while self.exited()?.is_none() {
            if started.elapsed() > EXIT_TIMEOUT {
                return Err(VmError::Timeout {
                    waiting_for: "qemu to exit after quit",
                    after: EXIT_TIMEOUT,
                    logs: self.logs(),
                });
            }
            sleep(POLL_INTERVAL);
        }
        self.child = None;
        Ok(())
    }
}

impl Drop for Guest<'_> {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // Errors here mean the process is already gone.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A failed QMP exchange, before the guest's logs are attached.
#[derive(Debug)]
pub struct QmpError {
    /// The command.
    pub command: &'static str,
    /// What went wrong.
    pub detail: String,
    /// QEMU closed the socket (expected after `quit`).
    pub closed: bool,
}

impl QmpError {
    fn into_vm_error(self, guest: &Guest<'_>) -> VmError {
        VmError::Qmp {
            command: self.command,
            detail: self.detail,
            logs: guest.logs(),
        }
    }
}

/// A minimal QMP client: one JSON object per line each way, responses told
/// apart from asynchronous events by their first key.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects to QEMU's QMP socket and negotiates capabilities.
    pub fn connect(socket: &Path) -> Result<Self, QmpError> {
        let error = |detail: String| QmpError {
            command: "greeting",
            detail,
            closed: false,
        };
        // QEMU listens before it starts the guest, so by READY the socket is there.
        let stream = UnixStream::connect(socket)
            .map_err(|e| error(format!("connect to {}: {e}", socket.display())))?;
        stream
            .set_read_timeout(Some(QMP_TIMEOUT))
            .map_err(|e| error(format!("set read timeout: {e}")))?;
        let writer = stream
            .try_clone()
            .map_err(|e| error(format!("clone socket: {e}")))?;
        let mut qmp = Self {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = qmp.read_line("greeting")?;
        if !greeting.contains("\"QMP\"") {
            return Err(error(format!("unexpected greeting {greeting:?}")));
        }
        qmp.execute("qmp_capabilities", r#"{"execute":"qmp_capabilities"}"#)?;
        Ok(qmp)
    }

    fn read_line(&mut self, command: &'static str) -> Result<String, QmpError> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err(QmpError {
                command,
                detail: "qemu closed the qmp socket".to_owned(),
                closed: true,
            }),
            Ok(_) => Ok(line),
            Err(e) => Err(QmpError {
                command,
                detail: format!("read from qmp socket: {e}"),
                closed: false,
            }),
        }
    }

    /// Sends `request` and returns its `{"return": ...}` line, skipping events.
    pub fn execute(&mut self, command: &'static str, request: &str) -> Result<String, QmpError> {
        writeln!(self.writer, "{request}").map_err(|e| QmpError {
            command,
            detail: format!("write to qmp socket: {e}"),
            // QEMU on its way out may close the socket before the request.
            closed: matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
        })?;
        loop {
            let line = self.read_line(command)?;
            let head = line.trim_start();
            if head.starts_with("{\"return\"") {
                return Ok(line);
            }
            if head.starts_with("{\"error\"") {
                return Err(QmpError {
                    command,
                    detail: line.trim_end().to_owned(),
                    closed: false,
                });
            }
            // Otherwise an event such as DUMP_COMPLETED or SHUTDOWN: not needed.
        }
    }

    /// Asks QEMU to exit. QEMU may close the socket before its answer arrives.
    fn quit(&mut self) -> Result<(), QmpError> {
        match self.execute("quit", r#"{"execute":"quit"}"#) {
            Err(e) if !e.closed => Err(e),
            _ => Ok(()),
        }
    }

    /// Dumps guest physical memory as an ELF core (no paging: every RAM byte,
    /// by physical address) and waits until QEMU reports it complete.
    fn dump_guest_memory(&mut self, core: &Path) -> Result<(), QmpError> {
        let command = "dump-guest-memory";
        let protocol = format!("file:{}", core.display());
        // Detached, so the wait is bounded here rather than by a socket timeout.
        let request = format!(
            r#"{{"execute":"{command}","arguments":{{"paging":false,"detach":true,"protocol":{}}}}}"#,
            json_string(&protocol)
        );
        self.execute(command, &request)?;
        let started = Instant::now();
        loop {
            let reply = self.execute("query-dump", r#"{"execute":"query-dump"}"#)?;
            match json_string_field(&reply, "status") {
                Some("completed") => return Ok(()),
                Some("active") if started.elapsed() <= DUMP_TIMEOUT => sleep(POLL_INTERVAL),
                Some("active") => {
                    return Err(QmpError {
                        command,
                        detail: format!("not complete after {DUMP_TIMEOUT:?}: {}", reply.trim()),
                        closed: false,
                    })
                }
                _ => {
                    return Err(QmpError {
                        command,
                        detail: format!("query-dump answered {}", reply.trim()),
                        closed: false,
                    })
                }
            }
        }
    }
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The value of the first `"key": "value"` in a line of JSON, if the value is
/// a string without escapes (enough for QMP status words).
fn json_string_field<'j>(json: &'j str, key: &str) -> Option<&'j str> {
    let quoted = format!("\"{key}\"");
    let after_key = &json[json.find(&quoted)? + quoted.len()..];
    let value = after_key.trim_start().strip_prefix(':')?.trim_start();
    let value = value.strip_prefix('"')?;
    Some(&value[..value.find('"')?])
}

/// A log file's text; empty if it does not exist (yet).
fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

fn tail(text: &str, lines: usize) -> &str {
    let text = text.trim_end();
    let mut start = text.len();
    for _ in 0..=lines {
        match text[..start].rfind('\n') {
            Some(i) => start = i,
            None => return text,
        }
    }
    &text[start + 1..]
}

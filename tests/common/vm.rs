//! The one QEMU harness of the tests: a [`Vm`] is one QEMU process (TCG)
//! started as a [`VmSpec`] says, its serial console read as bytes as they
//! come ([`console`]), one wait loop over it, QMP in [`qmp`], guest root
//! file systems packed by [`initramfs`], kernels found or built by the
//! scripts of tests/vm ([`kernel`]), and the host cores the machines of one
//! test binary may keep busy ([`machine`]).
//!
//! The tests build their guests on it: `hibvm` the machines that hibernate
//! with kjump (a KEXEC_JUMP kernel and a busybox /init), `dumpvm` a Debian
//! kernel whose memory QEMU dumps. Each test binary has its work directory
//! ([`dir`], `target/tmp/<test binary>/`), emptied once per process: a
//! machine named N writes `console-N.log` (the stamped console) and
//! `qemu-N.log` (QEMU's own output) there, and `qmp-N.sock`. Dropping a
//! `Vm` kills and reaps QEMU.

pub mod console;
pub mod initramfs;
pub mod kernel;
pub mod qmp;

pub use console::{find, line, Found, Line, Upto, Waited};
pub use qmp::Qmp;

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Condvar, Mutex, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant};

use console::Console;

/// The QEMU binary the guests run in.
pub const QEMU: &str = "qemu-system-x86_64";
/// How much console an error quotes.
const TAIL_LINES: usize = 80;
const POLL: Duration = Duration::from_millis(50);
/// On every guest kernel's command line: under TCG on a loaded host the
/// IO-APIC timer check can miss ticks and panic ("IO-APIC + timer doesn't
/// work"), which says nothing about kjump; KVM guests skip it the same way.
/// The kernels a guest loads itself get it from their own command lines
/// (tests/common/hibvm/init.sh).
pub const TCG_CMDLINE: &str = "no_timer_check";
/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// Whether `qemu-system-x86_64` is on `PATH`.
pub fn qemu_available() -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        fs::metadata(dir.join(QEMU))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
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

/// Host cores the tests' machines may keep busy at once: under TCG each
/// vCPU is one host thread. `KJUMP_VM_CORES` overrides the machine's count.
fn core_budget() -> u32 {
    std::env::var("KJUMP_VM_CORES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32))
}

/// Cores in use by running machines, against [`core_budget`].
static CORES: Mutex<u32> = Mutex::new(0);
static CORES_FREED: Condvar = Condvar::new();

/// The right to run machines with `cores` vCPUs between them until it is
/// dropped. Tests in one binary run on several threads; this lets as many
/// machines run side by side as the host has cores for, and no more, so a
/// phase's time limit means the same on a 2-core CI machine as on a big one.
pub struct Machine {
    cores: u32,
}

impl Drop for Machine {
    fn drop(&mut self) {
        let mut used = CORES.lock().unwrap_or_else(|p| p.into_inner());
        *used -= self.cores;
        CORES_FREED.notify_all();
    }
}

/// The right to run one single-CPU machine at a time, or `None` when QEMU
/// is missing (the test is then skipped, except under CI).
pub fn machine() -> Option<Machine> {
    machine_cpus(1)
}

/// As [`machine`], for a test whose machines have `cpus` vCPUs. A test that
/// needs more cores than the host has waits until it runs alone.
pub fn machine_cpus(cpus: u32) -> Option<Machine> {
    if !require_qemu() {
        return None;
    }
    let cores = cpus.clamp(1, core_budget());
    let budget = core_budget();
    let mut used = CORES.lock().unwrap_or_else(|p| p.into_inner());
    while *used + cores > budget {
        used = CORES_FREED.wait(used).unwrap_or_else(|p| p.into_inner());
    }
    *used += cores;
    Some(Machine { cores })
}

/// The test binary's work directory (hibernate_vm -> target/tmp/hibernate-vm),
/// emptied once per process: disks, guest roots and logs go here.
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

/// `path` as QEMU's option syntax can take it: UTF-8 without commas.
pub fn qemu_path(path: &Path) -> String {
    let s = path
        .to_str()
        .unwrap_or_else(|| panic!("{} is not UTF-8", path.display()));
    assert!(
        !s.contains(','),
        "qemu options cannot name a path with a comma: {s}"
    );
    s.to_owned()
}

/// How to start a [`Vm`].
#[derive(Clone, Debug)]
pub struct VmSpec {
    /// The kernel (`-kernel`).
    pub kernel: PathBuf,
    /// Its initramfs (`-initrd`).
    pub initrd: PathBuf,
    /// The kernel command line.
    pub append: String,
    /// QEMU's machine type: `pc` (i440FX) or `q35`.
    pub machine: &'static str,
    /// Guest RAM, as QEMU's `-m` takes it.
    pub mem: String,
    /// Virtual CPUs.
    pub smp: u32,
    /// `-drive` values, /dev/vda first.
    pub drives: Vec<String>,
    /// `-device` values (a drive given `if=none` is attached here).
    pub devices: Vec<String>,
    /// A QMP socket ([`Vm::qmp`]).
    pub qmp: bool,
    /// ACPI S3 (suspend to RAM) enabled.
    pub s3: bool,
}

impl VmSpec {
    /// A `pc` machine with one CPU and `mem` of RAM, no disk and no QMP;
    /// its kernel command line is `append` and [`TCG_CMDLINE`].
    pub fn new(kernel: &Path, initrd: &Path, append: &str, mem: &str) -> VmSpec {
        VmSpec {
            kernel: kernel.to_path_buf(),
            initrd: initrd.to_path_buf(),
            append: format!("{} {TCG_CMDLINE}", append.trim()),
            machine: "pc",
            mem: mem.to_owned(),
            smp: 1,
            drives: Vec::new(),
            devices: Vec::new(),
            qmp: false,
            s3: false,
        }
    }

    /// QEMU's arguments, with the QMP socket at `qmp` when there is one.
    fn args(&self, qmp: Option<&Path>) -> Vec<String> {
        let mut args: Vec<String> = ["-accel", "tcg", "-cpu", "max", "-machine", self.machine]
            .map(str::to_owned)
            .to_vec();
        args.extend(["-m".to_owned(), self.mem.clone()]);
        args.extend(["-smp".to_owned(), self.smp.to_string()]);
        args.extend(["-display", "none", "-monitor", "none", "-nic", "none"].map(str::to_owned));
        args.extend(["-serial", "stdio", "-no-reboot"].map(str::to_owned));
        for d in &self.drives {
            args.extend(["-drive".to_owned(), d.clone()]);
        }
        for d in &self.devices {
            args.extend(["-device".to_owned(), d.clone()]);
        }
        if self.s3 {
            let pm = if self.machine == "q35" {
                "ICH9-LPC.disable_s3=0"
            } else {
                "PIIX4_PM.disable_s3=0"
            };
            args.extend(["-global".to_owned(), pm.to_owned()]);
        }
        if let Some(sock) = qmp {
            args.extend([
                "-qmp".to_owned(),
                format!("unix:{},server=on,wait=off", qemu_path(sock)),
            ]);
        }
        args.extend(["-kernel".to_owned(), qemu_path(&self.kernel)]);
        args.extend(["-initrd".to_owned(), qemu_path(&self.initrd)]);
        args.extend(["-append".to_owned(), self.append.clone()]);
        args
    }
}

/// One QEMU process and its console.
pub struct Vm {
    /// Name used in file names and messages.
    pub name: String,
    started: Instant,
    child: Option<Child>,
    /// How QEMU ended, once it has.
    exit: Option<ExitStatus>,
    console: Console,
    qemu_log: PathBuf,
    qmp_socket: Option<PathBuf>,
    serial_in: Option<ChildStdin>,
}

impl Vm {
    /// Starts QEMU as `spec` says, its files in [`dir`] under `name`.
    pub fn start(name: &str, spec: &VmSpec) -> Vm {
        let dir = dir();
        let qemu_log = dir.join(format!("qemu-{name}.log"));
        let log = fs::File::create(&qemu_log)
            .unwrap_or_else(|e| panic!("creating {}: {e}", qemu_log.display()));
        let qmp_socket = (spec.qmp || spec.s3).then(|| dir.join(format!("qmp-{name}.sock")));
        if let Some(sock) = &qmp_socket {
            assert!(
                sock.as_os_str().len() <= MAX_SOCKET_PATH,
                "{} is longer than a unix socket path may be ({MAX_SOCKET_PATH} bytes)",
                sock.display()
            );
            let _ = fs::remove_file(sock);
        }
        let started = Instant::now();
        let mut child = Command::new(QEMU)
            .args(spec.args(qmp_socket.as_deref()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {QEMU} (apt-get install qemu-system-x86): {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let serial_in = child.stdin.take();
        let console_log = dir.join(format!("console-{name}.log"));
        Vm {
            name: name.to_owned(),
            started,
            child: Some(child),
            exit: None,
            console: Console::start(stdout, started, &console_log),
            qemu_log,
            qmp_socket,
            serial_in,
        }
    }

    /// Types `line` and a newline on the guest's serial console.
    pub fn type_line(&mut self, line: &str) {
        let name = self.name.clone();
        let input = self
            .serial_in
            .as_mut()
            .unwrap_or_else(|| panic!("[{name}] the serial console's input is closed"));
        input
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| input.flush())
            .unwrap_or_else(|e| panic!("[{name}] typing on the serial console: {e}"));
    }

    /// A QMP connection to this QEMU (started with [`VmSpec::qmp`] or
    /// [`VmSpec::s3`]).
    pub fn qmp(&self) -> Qmp {
        let sock = self
            .qmp_socket
            .as_ref()
            .unwrap_or_else(|| panic!("[{}] started without a QMP socket", self.name));
        Qmp::connect(sock).unwrap_or_else(|e| panic!("[{}] {e}\n{}", self.name, self.logs()))
    }

    /// Kills QEMU at once, as a power failure would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.console.join();
    }

    /// Every console line so far.
    pub fn lines(&self) -> Vec<Line> {
        self.console.lines()
    }

    /// The time since QEMU started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The console's last lines and QEMU's log, for failure messages.
    pub fn logs(&self) -> String {
        let lines = self.lines();
        let from = lines.len().saturating_sub(TAIL_LINES);
        let mut s = format!(
            "--- last {} console lines of {} ({}) ---\n",
            lines.len() - from,
            self.name,
            self.console.log_path().display()
        );
        for l in &lines[from..] {
            s.push_str(&format!("{:7.2} {}\n", l.at, l.text));
        }
        let qemu = fs::read_to_string(&self.qemu_log).unwrap_or_default();
        s.push_str(&format!(
            "--- {} ---\n{}",
            self.qemu_log.display(),
            qemu.trim()
        ));
        s
    }

    /// The first whole line containing `needle`, waiting up to `timeout`
    /// for it. Panics with the console tail when it does not come or QEMU
    /// ends.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Line {
        self.try_wait_for(needle, timeout)
            .unwrap_or_else(|why| panic!("[{}] {why}\n{}", self.name, self.logs()))
    }

    /// The prompt containing `needle`, seen as soon as it is printed: a
    /// prompt waits for its input and ends its line only after it, so the
    /// line returned may be the unended one. Panics as [`Vm::wait_for`].
    pub fn wait_for_prompt(&mut self, needle: &str, timeout: Duration) -> Line {
        match self.wait_from(0, &[needle], Upto::Printed, timeout) {
            Ok(found) => found.line,
            Err(waited) => panic!(
                "[{}] {}\n{}",
                self.name,
                self.why(waited, &[needle], timeout),
                self.logs()
            ),
        }
    }

    /// [`Vm::wait_for`], saying why instead of panicking.
    pub fn try_wait_for(&mut self, needle: &str, timeout: Duration) -> Result<Line, String> {
        self.try_wait_for_any(&[needle], timeout).map(|(_, l)| l)
    }

    /// The first whole line containing one of `needles`, and which; waits
    /// up to `timeout` for it, saying why when it does not come. Whole
    /// lines, because callers read what follows the needle on its line.
    pub fn try_wait_for_any(
        &mut self,
        needles: &[&str],
        timeout: Duration,
    ) -> Result<(usize, Line), String> {
        self.wait_from(0, needles, Upto::Ended, timeout)
            .map(|f| (f.needle, f.line))
            .map_err(|waited| self.why(waited, needles, timeout))
    }

    /// The first line from index `from` on that holds one of `needles`,
    /// looking as far as `upto` says; waits up to `timeout` for it. When
    /// QEMU ends first, it is reaped and [`Waited::Closed`] returned.
    pub fn wait_from(
        &mut self,
        from: usize,
        needles: &[&str],
        upto: Upto,
        timeout: Duration,
    ) -> Result<Found, Waited> {
        let waited = self.console.wait_for_any(from, needles, upto, timeout);
        if let Err(Waited::Closed) = waited {
            self.reap();
        }
        waited
    }

    /// Why a wait for `needles` ended without them, for a message.
    pub fn why(&self, waited: Waited, needles: &[&str], timeout: Duration) -> String {
        let what = match needles {
            [one] => format!("{one:?}"),
            many => format!("any of {many:?}"),
        };
        match waited {
            Waited::Closed => format!("qemu ended ({:?}) without printing {what}", self.exit),
            Waited::Timeout => format!("no {what} on the console after {timeout:?}"),
        }
    }

    /// Waits for QEMU to exit by itself (power off, `quit`, or a panic
    /// with `panic=-1 -no-reboot`).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.exit {
                return status;
            }
            let polled = self.child.as_mut().map(|c| c.try_wait());
            match polled {
                Some(Ok(Some(status))) => {
                    self.child = None;
                    self.exit = Some(status);
                    self.console.join();
                    continue;
                }
                Some(Ok(None)) => {}
                Some(Err(e)) => panic!("[{}] polling qemu: {e}", self.name),
                None => panic!("[{}] qemu was killed", self.name),
            }
            if started.elapsed() > timeout {
                panic!(
                    "[{}] qemu still running after {timeout:?}\n{}",
                    self.name,
                    self.logs()
                );
            }
            sleep(POLL);
        }
    }

    fn reap(&mut self) {
        if let Some(mut child) = self.child.take() {
            self.exit = child.wait().ok();
        }
        self.console.join();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // Errors mean the process is gone already.
            let _ = child.kill();
            let _ = child.wait();
        }
        self.console.join();
    }
}

//! QEMU machines that hibernate with kjump for real: the kernel A boots a
//! busybox /init that runs `kjump resume`, puts a workload in RAM and runs
//! `kjump hibernate`; the capture kernel B and the restore kernel R are the
//! same bzImage (tests/vm/build-kernel.sh builds it with CONFIG_KEXEC_JUMP).
//!
//! The kernel is a parameter: a [`Kernel`] series, 6.12 unless a boot's
//! [`BootOpts::kernel`] names another. Each series has its own [`Rig`] (the
//! bzImage, A's initramfs), built once per test process when a boot first
//! needs it, and checked by the kexec-jump selftest (`kjump selftest` in A)
//! before any test of that kernel hibernates: a kernel that cannot be jumped
//! back into fails every test with that message, not with a hang in B.
//!
//! A [`Boot`] is one QEMU process, started as a [`BootOpts`] says: the image
//! disk (/dev/vda), optionally read-only or with write errors injected by
//! QEMU's blkdebug driver, more disks (/dev/vdb, ...), CPUs, and the kernel
//! command-line words that steer A's /init (`hibvm/init.sh`). Its serial
//! console is a pipe read by a thread that stamps every line with the time
//! since QEMU started, so the phases of a hibernation can be timed from the
//! host. The stamped console goes to `console-<name>.log` in the work
//! directory ([`dir`], `target/tmp/<test binary>/`); QEMU's own output to
//! `qemu-<name>.log`. Dropping a `Boot` kills and reaps QEMU.
//!
//! [`flows`] has the boots the tests share and their assertions,
//! [`scenarios`] whole tests that run on more than one kernel.

pub mod flows;
mod rig;
pub mod scenarios;

pub use rig::{dir, rig_for, Kernel, Rig};

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, sleep, JoinHandle};
use std::time::{Duration, Instant};

use super::vm::QEMU;

/// Guest RAM of the default machine.
pub const MEM: &str = "1G";
/// Size of the sparse raw disk that holds the image (/dev/vda).
pub const DISK_BYTES: u64 = 1536 << 20;
/// How much console an error quotes.
const TAIL_LINES: usize = 80;
const POLL: Duration = Duration::from_millis(50);

/// Creates a fresh sparse disk of [`DISK_BYTES`].
pub fn new_disk(path: &Path) -> PathBuf {
    new_disk_of(path, DISK_BYTES)
}

/// Creates a fresh sparse disk of `bytes`.
pub fn new_disk_of(path: &Path, bytes: u64) -> PathBuf {
    let _ = fs::remove_file(path);
    let f = fs::File::create(path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    f.set_len(bytes)
        .unwrap_or_else(|e| panic!("sizing {}: {e}", path.display()));
    path.to_path_buf()
}

/// Creates a fresh sparse disk of `bytes` holding an empty ext4 filesystem
/// (mkfs.ext4 from e2fsprogs).
pub fn new_ext4_disk(path: &Path, bytes: u64) -> PathBuf {
    new_disk_of(path, bytes);
    let out = Command::new("mkfs.ext4")
        .args(["-F", "-q"])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("running mkfs.ext4 (apt-get install e2fsprogs): {e}"));
    assert!(
        out.status.success(),
        "mkfs.ext4 {} failed ({}): {}",
        path.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    path.to_path_buf()
}

/// A QEMU blkdebug rule on the main disk: every guest write that overlaps
/// `sector` fails with `errno`, or only the first one with `once`.
#[derive(Clone, Copy, Debug)]
pub struct WriteError {
    /// The 512-byte sector.
    pub sector: u64,
    /// The errno the guest's request completes with (QEMU passes EIO on to
    /// a virtio-blk guest as an I/O error; ENOSPC would stop the VM).
    pub errno: i32,
    /// Only the first matching write fails.
    pub once: bool,
}

impl WriteError {
    /// Every write that overlaps the byte at `offset` fails with EIO.
    pub fn eio_at(offset: u64) -> WriteError {
        WriteError {
            sector: offset / 512,
            errno: 5,
            once: false,
        }
    }

    /// blkdebug's configuration file (docs/devel/blkdebug.txt in QEMU):
    /// `write_aio` is the event the raw format driver raises for a guest
    /// write, so the rule is armed for every write and fires on those that
    /// overlap the sector.
    fn config(&self) -> String {
        format!(
            "[inject-error]\nevent = \"write_aio\"\niotype = \"write\"\nerrno = \"{}\"\nsector = \"{}\"\nonce = \"{}\"\n",
            self.errno,
            self.sector,
            if self.once { "on" } else { "off" }
        )
    }
}

/// How to start a [`Boot`]: the machine, and the words that steer A's
/// /init (see [`INIT`]).
#[derive(Clone, Debug)]
pub struct BootOpts {
    /// /dev/vda: where `kjump resume` looks, and the image's target unless
    /// a `kjump.target=` word names another disk.
    pub disk: PathBuf,
    /// Virtual CPUs.
    pub smp: u32,
    /// `kjump.mode=`: poweroff, reboot, checkpoint, or none (no hibernation).
    pub mode: String,
    /// /dev/vda read-only: the guest sees a writable disk whose writes fail.
    pub readonly: bool,
    /// Write errors injected into /dev/vda by QEMU's blkdebug driver.
    pub write_error: Option<WriteError>,
    /// More virtio disks: /dev/vdb, /dev/vdc, ...
    pub extra_disks: Vec<PathBuf>,
    /// More kernel command-line words.
    pub cmdline: Vec<String>,
    /// ACPI S3 (suspend to RAM) enabled, and a QMP socket to wake the guest.
    pub s3: bool,
    /// QEMU's machine type: `pc` (i440FX, the default) or `q35`.
    pub machine: &'static str,
    /// Guest RAM, as QEMU's `-m` takes it.
    pub mem: &'static str,
    /// The kernel A, B and R run.
    pub kernel: Kernel,
}

impl BootOpts {
    /// One CPU, `disk` as /dev/vda, `kjump.mode=mode`.
    pub fn new(disk: &Path, mode: &str) -> BootOpts {
        BootOpts {
            disk: disk.to_path_buf(),
            smp: 1,
            mode: mode.to_owned(),
            readonly: false,
            write_error: None,
            extra_disks: Vec::new(),
            cmdline: Vec::new(),
            s3: false,
            machine: "pc",
            mem: MEM,
            kernel: Kernel::default(),
        }
    }

    /// On `kernel` (A, B and R).
    pub fn kernel(mut self, kernel: Kernel) -> BootOpts {
        self.kernel = kernel;
        self
    }

    /// On QEMU's `machine` type with `mem` of RAM. A q35 machine with more
    /// than 2.75 GiB keeps 2 GiB below 4 GiB and the rest above it: RAM
    /// above 4 GiB, and five saved ranges around a crashkernel region.
    pub fn machine(mut self, machine: &'static str, mem: &'static str) -> BootOpts {
        self.machine = machine;
        self.mem = mem;
        self
    }

    /// With suspend to RAM (S3) enabled and a QMP socket ([`Boot::qmp`]).
    pub fn s3(mut self) -> BootOpts {
        self.s3 = true;
        self
    }

    /// With `smp` CPUs.
    pub fn smp(mut self, smp: u32) -> BootOpts {
        self.smp = smp;
        self
    }

    /// With /dev/vda read-only.
    pub fn readonly(mut self) -> BootOpts {
        self.readonly = true;
        self
    }

    /// With `error` injected into /dev/vda's writes.
    pub fn write_error(mut self, error: WriteError) -> BootOpts {
        self.write_error = Some(error);
        self
    }

    /// With `disk` as the next virtio disk (/dev/vdb first).
    pub fn disk(mut self, disk: &Path) -> BootOpts {
        self.extra_disks.push(disk.to_path_buf());
        self
    }

    /// With `word` on the kernel command line (e.g. `kjump.fs=/dev/vdb`).
    pub fn arg(mut self, word: &str) -> BootOpts {
        self.cmdline.push(word.to_owned());
        self
    }

    /// The kernel command line.
    fn append(&self) -> String {
        let mut words = vec![
            "console=ttyS0".to_owned(),
            "crashkernel=256M".to_owned(),
            "panic=-1".to_owned(),
            // Under TCG on a loaded host the IO-APIC timer check can miss
            // ticks and panic; KVM guests skip it the same way (init.sh
            // gives the capture and restore kernels the same word).
            "no_timer_check".to_owned(),
            format!("kjump.mode={}", self.mode),
        ];
        words.extend(self.cmdline.iter().cloned());
        words.join(" ")
    }

    /// QEMU's `-drive` values, /dev/vda first; writes the blkdebug
    /// configuration next to the logs.
    fn drives(&self, name: &str, dir: &Path) -> Vec<String> {
        let main = qemu_path(&self.disk);
        let file = match &self.write_error {
            None => main,
            Some(e) => {
                let conf = dir.join(format!("blkdebug-{name}.conf"));
                fs::write(&conf, e.config())
                    .unwrap_or_else(|err| panic!("writing {}: {err}", conf.display()));
                let (conf, main) = (qemu_path(&conf), main);
                assert!(
                    !conf.contains(':') && !main.contains(':'),
                    "blkdebug:CONFIG:IMAGE cannot name paths with a colon: {conf}, {main}"
                );
                format!("blkdebug:{conf}:{main}")
            }
        };
        let readonly = if self.readonly { "on" } else { "off" };
        let mut drives = vec![format!(
            "file={file},format=raw,if=virtio,readonly={readonly}"
        )];
        for d in &self.extra_disks {
            drives.push(format!("file={},format=raw,if=virtio", qemu_path(d)));
        }
        drives
    }
}

/// `path` as QEMU's option syntax can take it: UTF-8 without commas.
fn qemu_path(path: &Path) -> String {
    let s = path
        .to_str()
        .unwrap_or_else(|| panic!("{} is not UTF-8", path.display()));
    assert!(
        !s.contains(','),
        "qemu options cannot name a path with a comma: {s}"
    );
    s.to_owned()
}

/// One console line and when it arrived, since QEMU started.
#[derive(Clone, Debug)]
pub struct Line {
    /// Seconds since QEMU started.
    pub at: f64,
    /// The text, without line end.
    pub text: String,
}

#[derive(Default)]
struct Console {
    lines: Vec<Line>,
    closed: bool,
    /// The line not ended yet: a program's line the kernel's printk cut,
    /// or text with no newline so far, such as a prompt that waits for its
    /// input (a prompt is often both).
    pending: Option<Line>,
}

/// One QEMU run of the rig's kernel and initramfs.
pub struct Boot {
    /// Name used in file names and messages.
    pub name: String,
    child: Option<Child>,
    console: Arc<Mutex<Console>>,
    reader: Option<JoinHandle<()>>,
    qemu_log: PathBuf,
    console_log: PathBuf,
    qmp_socket: Option<PathBuf>,
    serial_in: Option<std::process::ChildStdin>,
}

impl Boot {
    /// Starts QEMU with `disk` as /dev/vda, `smp` CPUs and `kjump.mode=mode`.
    pub fn start(name: &str, disk: &Path, smp: u32, mode: &str) -> Boot {
        Boot::start_opts(name, &BootOpts::new(disk, mode).smp(smp))
    }

    /// Starts QEMU as `opts` say.
    pub fn start_opts(name: &str, opts: &BootOpts) -> Boot {
        Boot::start_on(rig_for(opts.kernel), name, opts)
    }

    /// Starts QEMU as `opts` say, with `rig`'s kernel and initramfs.
    fn start_on(rig: &Rig, name: &str, opts: &BootOpts) -> Boot {
        let dir = dir();
        let qemu_log = dir.join(format!("qemu-{name}.log"));
        let console_log = dir.join(format!("console-{name}.log"));
        let log = fs::File::create(&qemu_log)
            .unwrap_or_else(|e| panic!("creating {}: {e}", qemu_log.display()));
        let append = opts.append();
        let drives = opts.drives(name, dir);
        let mut qemu = Command::new(QEMU);
        qemu.args(["-accel", "tcg", "-cpu", "max", "-machine", opts.machine])
            .args(["-m", opts.mem])
            .args(["-smp", &opts.smp.to_string()])
            .args(["-display", "none", "-monitor", "none", "-nic", "none"])
            .args(["-serial", "stdio", "-no-reboot"]);
        for d in &drives {
            qemu.arg("-drive").arg(d);
        }
        let qmp_socket = opts.s3.then(|| dir.join(format!("qmp-{name}.sock")));
        if let Some(sock) = &qmp_socket {
            let _ = fs::remove_file(sock);
            let pm = if opts.machine == "q35" {
                "ICH9-LPC.disable_s3=0"
            } else {
                "PIIX4_PM.disable_s3=0"
            };
            qemu.args(["-global", pm])
                .arg("-qmp")
                .arg(format!("unix:{},server=on,wait=off", sock.display()));
        }
        qemu.arg("-kernel")
            .arg(&rig.kernel)
            .arg("-initrd")
            .arg(&rig.initramfs)
            .args(["-append", &append])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log);
        let started = Instant::now();
        let mut child = qemu
            .spawn()
            .unwrap_or_else(|e| panic!("starting {QEMU}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let serial_in = child.stdin.take();
        let console = Arc::new(Mutex::new(Console::default()));
        let shared = Arc::clone(&console);
        let log_path = console_log.clone();
        let reader = thread::spawn(move || read_console(stdout, started, &shared, &log_path));
        println!(
            "[{name}] Linux {}: qemu -machine {} -m {} -smp {} -drive {} -append {append:?}",
            rig.release,
            opts.machine,
            opts.mem,
            opts.smp,
            drives.join(" -drive ")
        );
        Boot {
            name: name.to_owned(),
            child: Some(child),
            console,
            reader: Some(reader),
            qemu_log,
            console_log,
            qmp_socket,
            serial_in,
        }
    }

    /// Types `line` and a newline on the guest's serial console.
    pub fn type_line(&mut self, line: &str) {
        use std::io::Write as _;
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

    /// A QMP connection to this QEMU (started with [`BootOpts::s3`]).
    pub fn qmp(&self) -> super::vm::Qmp {
        let sock = self
            .qmp_socket
            .as_ref()
            .unwrap_or_else(|| panic!("[{}] started without a QMP socket", self.name));
        super::vm::Qmp::connect(sock)
            .unwrap_or_else(|e| panic!("[{}] QMP: {e:?}\n{}", self.name, self.logs()))
    }

    /// Kills QEMU at once, as a power failure would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.join_reader();
    }

    /// Every console line so far.
    pub fn lines(&self) -> Vec<Line> {
        self.console
            .lock()
            .map(|c| c.lines.clone())
            .unwrap_or_default()
    }

    /// The console's last lines and QEMU's log, for failure messages.
    pub fn logs(&self) -> String {
        let lines = self.lines();
        let from = lines.len().saturating_sub(TAIL_LINES);
        let mut s = format!(
            "--- last {} console lines of {} ({}) ---\n",
            lines.len() - from,
            self.name,
            self.console_log.display()
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

    /// The first line containing `needle`, waiting up to `timeout` for it.
    /// Panics with the console tail when it does not come or QEMU ends.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Line {
        self.try_wait_for(needle, timeout)
            .unwrap_or_else(|why| panic!("[{}] {why}\n{}", self.name, self.logs()))
    }

    /// [`Boot::wait_for`], saying why instead of panicking.
    pub fn try_wait_for(&mut self, needle: &str, timeout: Duration) -> Result<Line, String> {
        let started = Instant::now();
        loop {
            let closed = {
                let c = self.console.lock().expect("console lock");
                if let Some(l) = c.lines.iter().find(|l| l.text.contains(needle)) {
                    return Ok(l.clone());
                }
                if let Some(l) = c.pending.as_ref().filter(|l| l.text.contains(needle)) {
                    return Ok(l.clone());
                }
                c.closed
            };
            if closed {
                let status = self.reap();
                return Err(format!(
                    "qemu ended ({status:?}) without printing {needle:?}"
                ));
            }
            if started.elapsed() > timeout {
                return Err(format!("no {needle:?} on the console after {timeout:?}"));
            }
            sleep(POLL);
        }
    }

    /// Waits for QEMU to exit by itself (power off, or a panic with
    /// `panic=-1 -no-reboot`).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let started = Instant::now();
        loop {
            let polled = self.child.as_mut().map(|c| c.try_wait());
            match polled {
                Some(Ok(Some(status))) => {
                    self.child = None;
                    self.join_reader();
                    return status;
                }
                Some(Ok(None)) => {}
                Some(Err(e)) => panic!("[{}] polling qemu: {e}", self.name),
                None => panic!("[{}] qemu was already reaped", self.name),
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

    fn reap(&mut self) -> Option<ExitStatus> {
        let status = self.child.take().and_then(|mut c| c.wait().ok());
        self.join_reader();
        status
    }

    fn join_reader(&mut self) {
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for Boot {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // Errors mean the process is gone already.
            let _ = child.kill();
            let _ = child.wait();
        }
        self.join_reader();
    }
}

fn read_console(
    mut stdout: impl io::Read,
    started: Instant,
    console: &Mutex<Console>,
    log_path: &Path,
) {
    let mut log = fs::File::create(log_path).ok();
    let mut chunk = [0u8; 4096];
    // What came after the last newline: a line on its way, or a prompt
    // that waits for its input and sends no newline until then.
    let mut partial = Vec::new();
    // A program's line the kernel's printk cut in two: its first part.
    let mut pending = String::new();
    let mut at = 0.0;
    loop {
        let n = match stdout.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        at = started.elapsed().as_secs_f64();
        partial.extend_from_slice(&chunk[..n]);
        while let Some(end) = partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = partial.drain(..=end).collect();
            take_line(&line, at, &mut pending, &mut log, console);
        }
        let tail = String::from_utf8_lossy(&partial);
        let text = pending.clone() + tail.trim_end_matches('\r');
        if let Ok(mut c) = console.lock() {
            c.pending = (!text.is_empty()).then_some(Line { at, text });
        }
    }
    if !partial.is_empty() {
        take_line(&partial, at, &mut pending, &mut log, console);
    }
    if let Ok(mut c) = console.lock() {
        c.closed = true;
    }
}

/// Logs one console line and records it; a program's line cut by a kernel
/// message is recorded whole once its end comes.
fn take_line(
    bytes: &[u8],
    at: f64,
    pending: &mut String,
    log: &mut Option<fs::File>,
    console: &Mutex<Console>,
) {
    use std::io::Write as _;
    let raw = String::from_utf8_lossy(bytes);
    let raw = raw.trim_end_matches(['\r', '\n']);
    if let Some(f) = log.as_mut() {
        let _ = writeln!(f, "{at:7.2} {raw}");
    }
    let text = match printk_start(raw) {
        Some(cut) if cut > 0 => {
            pending.push_str(&raw[..cut]);
            raw[cut..].to_owned()
        }
        Some(_) => raw.to_owned(),
        None => std::mem::take(pending) + raw,
    };
    if let Ok(mut c) = console.lock() {
        c.lines.push(Line { at, text });
    }
}

/// Where a kernel message (`[    8.613697] ...`) starts in a console line.
fn printk_start(line: &str) -> Option<usize> {
    line.match_indices('[').map(|(i, _)| i).find(|&i| {
        let rest = &line[i + 1..];
        let Some(close) = rest.find(']') else {
            return false;
        };
        let stamp = rest[..close].trim_start();
        let (secs, micros) = stamp.split_once('.').unwrap_or(("", ""));
        !secs.is_empty()
            && secs.bytes().all(|b| b.is_ascii_digit())
            && micros.len() == 6
            && micros.bytes().all(|b| b.is_ascii_digit())
    })
}

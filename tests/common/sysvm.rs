//! A QEMU machine that boots a whole Debian system (tests/vm/debian-system.sh)
//! and is driven through its serial console, where root is logged in: the
//! harness of tests/system_vm.rs.
//!
//! The console is QEMU's stdio. A reader thread keeps everything it prints
//! and writes it, stamped with the seconds since QEMU started, to
//! `console-<name>.log`. [`Machine::sh`] runs a shell command and returns its
//! exit code and output, found between two markers the command prints
//! (`printf '@@%s\n' B7` prints `@@B7`, which its echoed command line does
//! not contain).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::vm::QEMU;

/// Guest RAM.
pub const MEM: &str = "1536M";
/// The kernel command line every boot has; a boot may add words.
pub const APPEND: &str = "root=/dev/vda1 console=ttyS0 crashkernel=256M panic=10";

/// The built system: what debian-system.sh printed the directory of.
pub struct System {
    /// The kernel (also /boot/vmlinuz-RELEASE in the image).
    pub kernel: PathBuf,
    /// The image's own initramfs, made by its generator.
    pub initrd: PathBuf,
    /// The disk this test boots (a copy of the cached one).
    pub disk: PathBuf,
}

/// One QEMU process.
pub struct Machine {
    child: Child,
    stdin: ChildStdin,
    console: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
    /// When QEMU was started.
    pub started: Instant,
    /// Console offset up to which [`Machine::wait_for`] has consumed.
    seen: usize,
    seq: u32,
    name: String,
    log: PathBuf,
}

impl Machine {
    /// Starts QEMU on `sys` with the kernel command line [`APPEND`] plus
    /// `append`; the console log goes to `dir/console-<name>.log`.
    pub fn boot(dir: &Path, sys: &System, append: &str, name: &str) -> Machine {
        let log = dir.join(format!("console-{name}.log"));
        let qemu_log = std::fs::File::create(dir.join(format!("qemu-{name}.log"))).unwrap();
        let mut cmd = Command::new(QEMU);
        cmd.args(["-accel", "tcg", "-cpu", "max", "-machine", "pc"])
            .args(["-m", MEM, "-smp", "2"])
            .args(["-display", "none", "-monitor", "none", "-nic", "none"])
            .args(["-serial", "stdio", "-no-reboot"])
            .arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", sys.disk.display()))
            .arg("-kernel")
            .arg(&sys.kernel)
            .arg("-initrd")
            .arg(&sys.initrd)
            .arg("-append")
            .arg(format!("{APPEND} {append}").trim())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(qemu_log);
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {QEMU}: {e}"));
        let stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let console = Arc::new(Mutex::new(String::new()));
        let shared = console.clone();
        let log_path = log.clone();
        let reader = thread::spawn(move || {
            let mut file = std::fs::File::create(&log_path).unwrap();
            let mut buf = [0u8; 4096];
            let mut line_start = true;
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buf[..n]).replace('\r', "");
                let mut stamped = String::new();
                for ch in text.chars() {
                    if line_start {
                        stamped.push_str(&format!("[{:8.3}] ", started.elapsed().as_secs_f64()));
                    }
                    stamped.push(ch);
                    line_start = ch == '\n';
                }
                let _ = file.write_all(stamped.as_bytes());
                shared.lock().unwrap().push_str(&text);
            }
        });
        Machine {
            child,
            stdin,
            console,
            reader: Some(reader),
            started,
            seen: 0,
            seq: 0,
            name: name.into(),
            log,
        }
    }

    fn tail(&self) -> String {
        let c = self.console.lock().unwrap();
        let lines: Vec<&str> = c.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// Fails the test with the console's last lines.
    pub fn fail(&self, why: impl std::fmt::Display) -> ! {
        panic!(
            "{}: {why} after {:.1} s; console ({}) ends with:\n{}",
            self.name,
            self.started.elapsed().as_secs_f64(),
            self.log.display(),
            self.tail()
        )
    }

    /// Waits until the console shows `pattern` past what earlier waits
    /// consumed; returns the time since QEMU started.
    pub fn wait_for(&mut self, pattern: &str, timeout: Duration) -> Duration {
        match self.wait_or_exit(pattern, timeout) {
            Some(t) => t,
            None => self.fail(format!("QEMU exited before {pattern:?}")),
        }
    }

    /// As [`Machine::wait_for`], but `None` when QEMU exits first.
    pub fn wait_or_exit(&mut self, pattern: &str, timeout: Duration) -> Option<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let c = self.console.lock().unwrap();
                if let Some(at) = c[self.seen..].find(pattern) {
                    self.seen += at + pattern.len();
                    return Some(self.started.elapsed());
                }
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                // What it printed last is in the console now.
                thread::sleep(Duration::from_millis(200));
                let c = self.console.lock().unwrap();
                return c[self.seen..].find(pattern).map(|at| {
                    self.seen += at + pattern.len();
                    self.started.elapsed()
                });
            }
            if Instant::now() > deadline {
                self.fail(format!("no {pattern:?} within {} s", timeout.as_secs()));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Types `line` and Enter on the console.
    pub fn send(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|_| self.stdin.flush())
            .unwrap_or_else(|e| self.fail(format!("typing {line:?}: {e}")));
    }

    /// Runs `cmd` in the console's shell; returns its exit code and output.
    pub fn sh(&mut self, cmd: &str, timeout: Duration) -> (i32, String) {
        self.seq += 1;
        let n = self.seq;
        self.send(&format!(
            "printf '@@%s\\n' B{n}; {cmd}; printf '@@%s:%s@@\\n' E{n} $?"
        ));
        self.wait_for(&format!("@@B{n}\n"), timeout);
        let from = self.seen;
        self.wait_for(&format!("@@E{n}:"), timeout);
        let c = self.console.lock().unwrap();
        let end = self.seen - format!("@@E{n}:").len();
        let output = c[from..end].to_string();
        let rest = &c[self.seen..];
        let code = rest
            .split("@@")
            .next()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(-1);
        (code, output)
    }

    /// [`Machine::sh`] that must exit 0; returns its output, trimmed.
    pub fn ok(&mut self, cmd: &str) -> String {
        let (code, out) = self.sh(cmd, Duration::from_secs(300));
        if code != 0 {
            self.fail(format!("{cmd:?} exited {code}:\n{out}"));
        }
        out.trim().to_string()
    }

    /// Waits for QEMU to exit (the guest powered off).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                return status;
            }
            if Instant::now() > deadline {
                self.fail(format!("still running after {} s", timeout.as_secs()));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The whole console so far.
    pub fn console(&self) -> String {
        self.console.lock().unwrap().clone()
    }
}

/// Boots as [`Machine::boot`] does, and once more when QEMU stops before
/// the kernel runs /init: under TCG with two CPUs the kernel now and then
/// fails that early, before kjump or the system did anything
/// (KEXEC-JUMP.md); the retry is said on stderr.
pub fn boot_once_more(dir: &Path, sys: &System, append: &str, name: &str) -> Machine {
    let mut m = Machine::boot(dir, sys, append, name);
    if m.wait_or_exit("Run /init as init process", Duration::from_secs(600))
        .is_some()
    {
        return m;
    }
    eprintln!(
        "{name}: QEMU stopped before the kernel ran /init (console in {}): booting again, once",
        m.log.display()
    );
    drop(m);
    let mut m = Machine::boot(dir, sys, append, &format!("{name}-again"));
    m.wait_for("Run /init as init process", Duration::from_secs(600));
    m
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

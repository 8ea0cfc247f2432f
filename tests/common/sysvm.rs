//! A QEMU machine that boots a whole Debian system (tests/vm/debian-system.sh)
//! and is driven through its serial console, where root is logged in: the
//! guest of tests/system_vm.rs, on the one harness ([`Vm`]).
//!
//! A [`Machine`] reads its console in order: each wait starts past the line
//! the previous one found. [`Machine::sh`] runs a shell command and returns
//! its exit code and output, the lines between two markers the command
//! prints (`printf '@@%s\n' B7` prints `@@B7`, which its echoed command
//! line does not contain).

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use super::vm::{self, Qmp, Upto, Vm, VmSpec, Waited};

/// Guest RAM.
pub const MEM: &str = "1536M";
/// Virtual CPUs.
pub const CPUS: u32 = 2;
/// The kernel command line every boot has; a boot may add words.
pub const APPEND: &str = "root=/dev/vda1 console=ttyS0 crashkernel=256M panic=10";

/// The built system: what debian-system.sh printed the directory of.
pub struct System {
    /// The variant (initramfs-tools, dracut): its machines' logs are
    /// named after it.
    pub variant: String,
    /// The kernel (also /boot/vmlinuz-RELEASE in the image).
    pub kernel: PathBuf,
    /// The image's own initramfs, made by its generator.
    pub initrd: PathBuf,
    /// The disk this test boots (a copy of the cached one).
    pub disk: PathBuf,
}

/// One boot of the system: a QEMU process and how far its console has
/// been read.
pub struct Machine {
    vm: Vm,
    /// The index of the first console line later waits look at.
    seen: usize,
    seq: u32,
}

impl Machine {
    /// Starts QEMU on `sys` with the kernel command line [`APPEND`] plus
    /// `append`; its logs are `console-VARIANT-NAME.log` and
    /// `qemu-VARIANT-NAME.log` in [`vm::dir`].
    pub fn boot(sys: &System, append: &str, name: &str) -> Machine {
        let mut spec = VmSpec::new(&sys.kernel, &sys.initrd, &format!("{APPEND} {append}"), MEM);
        spec.smp = CPUS;
        // S3 for hybrid sleep, woken through QMP.
        spec.s3 = true;
        spec.drives = vec![format!(
            "file={},format=raw,if=virtio",
            vm::qemu_path(&sys.disk)
        )];
        Machine {
            vm: Vm::start(&format!("{}-{name}", sys.variant), &spec),
            seen: 0,
            seq: 0,
        }
    }

    /// A QMP connection to this QEMU.
    pub fn qmp(&self) -> Qmp {
        self.vm.qmp()
    }

    /// Fails the test with the console's last lines.
    pub fn fail(&self, why: impl std::fmt::Display) -> ! {
        panic!(
            "[{}] {why} after {:.1} s\n{}",
            self.vm.name,
            self.uptime().as_secs_f64(),
            self.vm.logs()
        )
    }

    /// The time since QEMU started.
    pub fn uptime(&self) -> Duration {
        self.vm.uptime()
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
        self.wait_line(pattern, Upto::Printed, timeout)
            .map(|(_, at)| at)
    }

    /// The index of the next line holding `pattern`, looking as far as
    /// `upto` says, and when it came; `None` when QEMU exits first.
    fn wait_line(
        &mut self,
        pattern: &str,
        upto: Upto,
        timeout: Duration,
    ) -> Option<(usize, Duration)> {
        match self.vm.wait_from(self.seen, &[pattern], upto, timeout) {
            Ok(found) => {
                self.seen = found.index + 1;
                Some((found.index, Duration::from_secs_f64(found.line.at)))
            }
            Err(Waited::Closed) => None,
            Err(waited) => {
                let why = self.vm.why(waited, &[pattern], timeout);
                self.fail(why)
            }
        }
    }

    /// Types `line` and Enter on the console.
    pub fn send(&mut self, line: &str) {
        self.vm.type_line(line);
    }

    /// Runs `cmd` in the console's shell; returns its exit code and output.
    pub fn sh(&mut self, cmd: &str, timeout: Duration) -> (i32, String) {
        self.seq += 1;
        let n = self.seq;
        self.send(&format!(
            "printf '@@%s\\n' B{n}; {cmd}; printf '@@%s:%s@@\\n' E{n} $?"
        ));
        let (begin, end) = (format!("@@B{n}"), format!("@@E{n}:"));
        let (from, _) = self
            .wait_line(&begin, Upto::Ended, timeout)
            .unwrap_or_else(|| self.fail(format!("QEMU exited before {begin:?}")));
        // Whole lines only: the exit code follows the marker on its line.
        let (to, _) = self
            .wait_line(&end, Upto::Ended, timeout)
            .unwrap_or_else(|| self.fail(format!("QEMU exited before {end:?}")));
        let lines = self.vm.lines();
        let mut output: String = lines[from + 1..to]
            .iter()
            .map(|l| format!("{}\n", l.text.replace('\r', "")))
            .collect();
        let (last, rest) = lines[to].text.split_once(&end).expect("the marker's line");
        output.push_str(&last.replace('\r', ""));
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
        self.vm.wait_exit(timeout)
    }

    /// Whether the console printed `needle` at any time.
    pub fn printed(&self, needle: &str) -> bool {
        vm::find(&self.vm.lines(), needle).is_some()
    }
}

/// Boots as [`Machine::boot`] does, and once more when QEMU stops before
/// the kernel runs /init: under TCG with two CPUs the kernel now and then
/// fails that early, before kjump or the system did anything
/// (KEXEC-JUMP.md); the retry is said on stderr.
pub fn boot_once_more(sys: &System, append: &str, name: &str) -> Machine {
    let mut m = Machine::boot(sys, append, name);
    if m.wait_or_exit("Run /init as init process", Duration::from_secs(600))
        .is_some()
    {
        return m;
    }
    eprintln!(
        "[{}] QEMU stopped before the kernel ran /init (logs in {}): booting again, once",
        m.vm.name,
        vm::dir().display()
    );
    drop(m);
    let mut m = Machine::boot(sys, append, &format!("{name}-again"));
    m.wait_for("Run /init as init process", Duration::from_secs(600));
    m
}

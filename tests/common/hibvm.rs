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
//! A boot ([`start`]) is one QEMU machine of the harness ([`Vm`]), started
//! as a [`BootOpts`] says: the image disk (/dev/vda), optionally read-only
//! or with write errors injected by QEMU's blkdebug driver, more disks
//! (/dev/vdb, ...), CPUs, and the kernel command-line words that steer A's
//! /init (`hibvm/init.sh`). Its console lines are stamped with the time
//! since QEMU started, so the phases of a hibernation can be timed from the
//! host; disks and logs go to the test binary's work directory
//! ([`vm::dir`]).
//!
//! [`flows`] has the boots the tests share and their assertions,
//! [`scenarios`] whole tests that run on more than one kernel.

pub mod flows;
mod rig;
pub mod scenarios;

pub use rig::{rig_for, Kernel, Rig};

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::vm::{self, qemu_path, Vm, VmSpec};

/// Guest RAM of the default machine.
pub const MEM: &str = "1G";
/// Size of the sparse raw disk that holds the image (/dev/vda).
pub const DISK_BYTES: u64 = 1536 << 20;

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

/// How to [`start`] a boot: the machine, and the words that steer A's
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
    /// /dev/vda's PCI slot on a `pc` machine, when not QEMU's choice.
    pub vda_slot: Option<u8>,
    /// A QMP socket ([`Vm::qmp`]).
    pub qmp: bool,
    /// kjump built with its test hooks ([`rig::hooked_rig`]; Linux 6.12).
    pub hooks: bool,
    /// A bzImage A boots instead of the rig's kernel; the kernels A loads
    /// (B, R, a crash kernel) are still the rig's, from A's /boot.
    pub first_kernel: Option<PathBuf>,
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
            vda_slot: None,
            qmp: false,
            hooks: false,
            first_kernel: None,
        }
    }

    /// With A booting `bzimage` (another kernel than the rig's, such as a
    /// distribution's) and loading the rig's kernel from its /boot.
    pub fn first_kernel(mut self, bzimage: &Path) -> BootOpts {
        self.first_kernel = Some(bzimage.to_path_buf());
        self
    }

    /// With a kjump built with its test hooks, which words on the kernel
    /// command line arm ([`rig::hooked_rig`]).
    pub fn hooked(mut self) -> BootOpts {
        self.hooks = true;
        self
    }

    /// With /dev/vda in PCI slot `slot` (a disk plugged in later into a
    /// lower slot is named before it by a kernel that boots afresh), and a
    /// QMP socket to plug it in with.
    pub fn vda_slot(mut self, slot: u8) -> BootOpts {
        self.vda_slot = Some(slot);
        self.qmp = true;
        self
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

    /// With suspend to RAM (S3) enabled and a QMP socket ([`Vm::qmp`]).
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
        let attach = match self.vda_slot {
            None => "if=virtio",
            Some(_) => "if=none,id=vda",
        };
        let mut drives = vec![format!(
            "file={file},format=raw,{attach},readonly={readonly}"
        )];
        for d in &self.extra_disks {
            drives.push(format!("file={},format=raw,if=virtio", qemu_path(d)));
        }
        drives
    }

    /// The machine on `rig`'s kernel and initramfs; `name`'s blkdebug
    /// configuration goes next to its logs.
    fn spec(&self, rig: &Rig, name: &str) -> VmSpec {
        let kernel = self.first_kernel.as_deref().unwrap_or(&rig.kernel);
        let mut spec = VmSpec::new(kernel, &rig.initramfs, &self.append(), self.mem);
        spec.machine = self.machine;
        spec.smp = self.smp;
        spec.drives = self.drives(name, vm::dir());
        if let Some(slot) = self.vda_slot {
            spec.devices = vec![format!("virtio-blk-pci,drive=vda,addr={slot:#x}")];
        }
        spec.s3 = self.s3;
        spec.qmp = self.qmp;
        spec
    }
}

/// Starts QEMU as `opts` say.
pub fn start(name: &str, opts: &BootOpts) -> Vm {
    if opts.hooks {
        assert_eq!(
            opts.kernel,
            Kernel::Linux6_12,
            "{name}: hooked rigs run 6.12"
        );
        return start_on(rig::hooked_rig(), name, opts);
    }
    start_on(rig_for(opts.kernel), name, opts)
}

/// Starts QEMU as `opts` say, with `rig`'s kernel and initramfs.
fn start_on(rig: &Rig, name: &str, opts: &BootOpts) -> Vm {
    let spec = opts.spec(rig, name);
    let release = match &opts.first_kernel {
        None => rig.release.clone(),
        Some(k) => format!("{} (A: {})", rig.release, k.display()),
    };
    println!(
        "[{name}] Linux {release}: qemu -machine {} -m {} -smp {} -drive {} -append {:?}",
        spec.machine,
        spec.mem,
        spec.smp,
        spec.drives.join(" -drive "),
        spec.append
    );
    Vm::start(name, &spec)
}

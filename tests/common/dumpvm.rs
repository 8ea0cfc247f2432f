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
//! What [`boot_and_dump`] leaves in the test binary's work directory
//! ([`vm::dir`], kept for post-mortems): `NAME-root/` and `NAME.cpio` (the
//! guest's root), `console-NAME.log`, `qemu-NAME.log` and `NAME.core` (the
//! dump).

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::vm::initramfs::Initramfs;
use super::vm::{self, kernel, Vm, VmSpec};

/// Length of the pattern the guest keeps in RAM.
pub const PATTERN_LEN: usize = 8 << 20;

const KERNEL_CMDLINE: &str = "console=ttyS0 panic=-1 rdinit=/init";
/// Printed by the guest's /init, followed by the marker, once the data is in RAM.
const READY: &str = "KJUMP-READY";
/// Printed by the guest's /init when one of its steps fails.
const FAILED: &str = "KJUMP-FAILED";

/// Boot to READY takes ~3 s under TCG on a 2-core machine; leave room for a
/// loaded CI machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const DUMP_TIMEOUT: Duration = Duration::from_secs(120);
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);

/// A finished memory dump of a guest and what was put in its memory.
#[derive(Debug)]
pub struct GuestDump {
    /// The ELF core file written by `dump-guest-memory` (paging off).
    pub path: PathBuf,
    /// The data the guest held in RAM, in 4 KiB pages.
    pub pattern: Vec<u8>,
    /// The seed the pattern was made from.
    pub seed: u64,
    /// A string unique to this run that the guest held in RAM.
    pub marker: String,
    /// From starting QEMU to the guest's READY line.
    pub boot_time: Duration,
    /// From asking for the dump to its completion.
    pub dump_time: Duration,
}

/// A different seed per run, so a stale dump cannot pass for a fresh one.
fn fresh_seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// The guest's /init. It must not exit: PID 1 exiting panics the kernel, and
/// `panic=-1` with `-no-reboot` then ends QEMU, which the host notices.
fn init_script(marker: &str) -> String {
    format!(
        r#"#!/bin/busybox sh
# Written by tests/common/dumpvm.rs. Keeps known data in RAM for a memory dump.
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

/// Boots the Debian kernel as machine `name` with `mem_mib` MiB of RAM,
/// waits until its /init has put a fresh pattern and marker in RAM, dumps
/// all guest memory into `NAME.core` in the work directory and shuts QEMU
/// down. Panics with the console tail on every error; QEMU is killed then.
pub fn boot_and_dump(name: &str, mem_mib: u32) -> GuestDump {
    let dir = vm::dir();
    let kernel = kernel::from_script("debian-kernel.sh", &[]).unwrap_or_else(|e| panic!("{e}"));
    let seed = fresh_seed();
    let marker = format!("KJUMP-MARKER-{seed:016x}");
    let mut pattern = vec![0u8; PATTERN_LEN];
    kjump_dumpgen::Rng::new(seed).fill(&mut pattern);
    let initrd = (|| {
        let root = Initramfs::new(
            &dir.join(format!("{name}-root")),
            &["bin", "dev", "proc", "run", "sys"],
        )?;
        root.busybox()?;
        root.write("init", init_script(&marker).as_bytes(), 0o755)?;
        root.write("pattern.bin", &pattern, 0o644)?;
        root.pack(&dir.join(format!("{name}.cpio")))
    })()
    .unwrap_or_else(|e| panic!("[{name}] the guest's initramfs: {e}"));

    let mut spec = VmSpec::new(&kernel, &initrd, KERNEL_CMDLINE, &format!("{mem_mib}M"));
    spec.qmp = true;
    let started = Instant::now();
    let mut guest = Vm::start(name, &spec);
    let ready = format!("{READY} {marker}");
    match guest.try_wait_for_any(&[&ready, FAILED], BOOT_TIMEOUT) {
        Ok((0, _)) => {}
        Ok((_, failed)) => panic!(
            "[{name}] guest /init failed: {}\n{}",
            failed.text,
            guest.logs()
        ),
        Err(why) => panic!("[{name}] {why}\n{}", guest.logs()),
    }
    let boot_time = started.elapsed();

    let core = dir.join(format!("{name}.core"));
    let mut qmp = guest.qmp();
    let dump_started = Instant::now();
    let dumped = qmp.dump_guest_memory(&core, DUMP_TIMEOUT);
    let dump_time = dump_started.elapsed();
    dumped
        .and_then(|()| qmp.quit())
        .unwrap_or_else(|e| panic!("[{name}] {e}\n{}", guest.logs()));
    guest.wait_exit(EXIT_TIMEOUT);

    GuestDump {
        path: core,
        pattern,
        seed,
        marker,
        boot_time,
        dump_time,
    }
}

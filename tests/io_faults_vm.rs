//! Faults during a real hibernation in QEMU (TCG): the image disk fails
//! writes with EIO in the middle of the capture (QEMU's blkdebug driver), a
//! target too small for the image, and a panic in the restore kernel after
//! it began writing memory (a kjump built with its test hooks).
//!
//! A failed capture must cost the user nothing: the capture kernel B says
//! what failed and where, jumps back to A with A's memory untouched, `kjump
//! hibernate` fails with the reason, and the half-written image is never
//! resumed. A too small target is refused before any jump.
//!
//! Needs what hibernate_vm.rs needs (skipped without QEMU, except under CI).
//! The console logs stay in target/tmp/io-faults-vm/.

mod common;

use std::io::Read;
use std::path::Path;

use common::hibvm::flows::{
    assert_counter_continues, disk, hibernate_poweroff, info, md5s, no_resume, print_phases,
    restore_fails_after_writes, split_at, state, PHASE,
};
use common::hibvm::{self, start, BootOpts, WriteError};
use common::kjump::{kjump, Run};
use common::vm::console::{hex_after, number_after};
use common::vm::{self, find, machine, Line, Vm};

/// Where writes fail: 32 MiB into /dev/vda, inside the chunk area (the image
/// of this 1 GiB guest is about 75 MiB, 16 MiB of it A's incompressible
/// tmpfs file) and past the superblock and metadata B writes first.
const ERROR_AT: u64 = 32 << 20;
/// A target far smaller than the RAM to save.
const TINY_DISK: u64 = 64 << 20;

/// B's failure names the write that failed, its offset and EIO; the offset
/// range covers the sector blkdebug fails.
fn assert_names_the_failed_write(failed: &Line, boot: &Vm) {
    let text = &failed.text;
    assert!(
        text.contains("Input/output error (os error 5)"),
        "the capture failure does not name EIO: {text}\n{}",
        boot.logs()
    );
    let (Some(len), Some(offset)) = (
        number_after(text, "writing "),
        hex_after(text, "at offset "),
    ) else {
        panic!(
            "the capture failure does not name the write's length and offset: {text}\n{}",
            boot.logs()
        );
    };
    assert!(
        offset <= ERROR_AT && ERROR_AT < offset + len,
        "the failed write [{offset:#x}, +{len}) does not cover the injected error at {ERROR_AT:#x}: {text}"
    );
}

/// The capture kernel's writes to the image disk fail with EIO 32 MiB in:
/// B reports the failed write and jumps back to A, A runs on with the same
/// memory, `kjump hibernate` exits 1 saying no image was saved, the disk
/// holds an uncommitted image that does not verify, and the next boot's
/// `kjump resume` passes it by.
#[test]
fn write_error_during_capture_jumps_back_and_is_never_resumed() {
    let Some(_machine) = machine() else { return };
    let disk = disk("eio");
    let opts = BootOpts::new(&disk, "poweroff").write_error(WriteError::eio_at(ERROR_AT));
    let mut boot = start("eio", &opts);
    boot.wait_for("kjump: capture kernel started", PHASE);
    let failed = boot.wait_for("kjump: capture failed", PHASE);
    boot.wait_for("kjump: no image was committed", PHASE);
    boot.wait_for("kjump: jumping back to the saved kernel", PHASE);
    let exit = boot.wait_for("A: HIBERNATE-EXIT", PHASE);
    let resumed = boot.wait_for("RESUMED", PHASE);
    boot.wait_for("A: DONE", PHASE);
    boot.wait_exit(PHASE);
    print_phases(&boot);
    let lines = boot.lines();
    assert_names_the_failed_write(&failed, &boot);
    // The error came from the device, as the guest kernel saw it.
    let kernel = find(&lines, "I/O error, dev vda").unwrap_or_else(|| {
        panic!(
            "B's kernel logged no I/O error on vda: was blkdebug applied?\n{}",
            boot.logs()
        )
    });
    assert!(
        find(&lines, "kjump: image committed").is_none(),
        "{}",
        boot.logs()
    );
    assert_eq!(
        exit.text.trim_end(),
        "A: HIBERNATE-EXIT 1",
        "{}",
        boot.logs()
    );
    let why = find(&lines, "the capture kernel did not save this machine")
        .unwrap_or_else(|| panic!("kjump hibernate gave no reason\n{}", boot.logs()));
    assert!(
        why.text.contains("never committed"),
        "kjump hibernate's reason does not say the image is uncommitted: {}",
        why.text
    );
    let (before, after) = split_at(&lines, resumed.at);
    let (b, a) = (md5s(&before), md5s(&after));
    assert!(
        b.len() == 1 && a == b,
        "A's tmpfs file changed: {b:?} then {a:?}\n{}",
        boot.logs()
    );
    assert_counter_continues(&boot, failed.at);
    for l in [kernel, &failed, why] {
        println!("[eio] {:7.2}  {}", l.at, l.text);
    }

    let v = info(&disk);
    assert_eq!(v["state"], "incomplete", "{v:#}");
    let Run { code, text, .. } = kjump(&["verify", &disk.display().to_string()]);
    assert_eq!(code, 1, "an uncommitted image must not verify: {text}");
    assert!(text.contains("incomplete"), "kjump verify: {text}");
    println!("[eio] host: kjump verify exited {code}: {}", text.trim());

    no_resume(
        "eio-next-boot",
        &BootOpts::new(&disk, "none"),
        0,
        "is incomplete (its capture never committed it)",
    );
    assert_eq!(
        state(&disk),
        "incomplete",
        "the next boot left the image alone"
    );
}

/// Whether a file holds nothing but zero bytes.
fn all_zero(path: &Path) -> bool {
    let mut f =
        std::fs::File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        if n == 0 {
            return true;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return false;
        }
    }
}

/// A 64 MiB target cannot take the image of 1 GiB of RAM: `kjump hibernate`
/// (and its dry run) refuses up front, naming both sizes, before any kexec;
/// A goes on and the disk stays untouched.
#[test]
fn too_small_target_refused_before_any_jump() {
    let Some(_machine) = machine() else { return };
    let disk = hibvm::new_disk_of(&vm::dir().join("tiny.img"), TINY_DISK);
    let mut boot = start("tiny", &BootOpts::new(&disk, "poweroff"));
    let dry = boot.wait_for("A: DRY-RUN-EXIT", PHASE);
    let called = boot.wait_for("A: HIBERNATE --then", PHASE);
    let exit = boot.wait_for("A: HIBERNATE-EXIT", PHASE);
    boot.wait_for("A: DONE", PHASE);
    boot.wait_exit(PHASE);
    print_phases(&boot);
    let lines = boot.lines();
    assert_eq!(dry.text.trim_end(), "A: DRY-RUN-EXIT 2", "{}", boot.logs());
    assert_eq!(
        exit.text.trim_end(),
        "A: HIBERNATE-EXIT 2",
        "{}",
        boot.logs()
    );
    let (_, after_call) = split_at(&lines, called.at);
    let refusal = find(&after_call, "holds").unwrap_or_else(|| {
        panic!(
            "kjump hibernate did not say how much the target holds\n{}",
            boot.logs()
        )
    });
    let text = &refusal.text;
    let holds = number_after(text, "holds ");
    let ram = number_after(text, "the image of ");
    let worst = number_after(text, "can take up to ");
    assert!(
        text.contains("preflight") && text.contains("/dev/vda"),
        "not a preflight refusal naming the target: {text}"
    );
    assert_eq!(holds, Some(TINY_DISK), "{text}");
    assert!(
        ram.is_some_and(|r| r > 512 << 20) && worst > ram,
        "the refusal should name the RAM to save and a larger worst case: {text}"
    );
    println!("[tiny] {:7.2}  {text}", refusal.at);
    for not in [
        "Linux version",
        "kjump: capture kernel started",
        "the capture kernel did not save",
    ] {
        assert!(
            find(&after_call, not).is_none(),
            "{not:?} after the refusal: something jumped\n{}",
            boot.logs()
        );
    }
    let (_, after_exit) = split_at(&lines, exit.at);
    let (all, after) = (md5s(&lines), md5s(&after_exit));
    assert!(
        after.len() == 1 && all.len() == 2 && all[0] == all[1],
        "A did not go on with its file after the refusal: {all:?}\n{}",
        boot.logs()
    );
    assert_counter_continues(&boot, exit.at);
    assert!(all_zero(&disk), "a refused hibernation wrote to the target");
}

/// A panic in the restore kernel after its first write to memory (armed by
/// `kjump.test-panic=write` on R's command line, in a kjump built with its
/// test hooks): R never hands control back to the normal boot, whose memory
/// it overwrote; it marks the image failed with the reason and restarts
/// the machine, and the next boot refuses the image and boots normally.
#[test]
fn a_panic_in_the_restore_after_its_first_write_never_hands_back() {
    let Some(_machine) = machine() else { return };
    let disk = disk("panic");
    hibernate_poweroff("panic-hibernate", &BootOpts::new(&disk, "poweroff"));
    let opts = BootOpts::new(&disk, "none")
        .hooked()
        .arg("kjump.rappend=kjump.test-panic=write");
    let (boot, failed) = restore_fails_after_writes("panic-resume", &opts);
    let lines = boot.lines();
    let panic = find(&lines, "test hook: a panic after a write to memory")
        .unwrap_or_else(|| panic!("R did not panic\n{}", boot.logs()));
    assert!(failed.text.contains("panicked"), "{}", failed.text);
    assert_eq!(state(&disk), "failed");
    println!("[panic-resume] {:7.2}  {}", panic.at, panic.text);
    no_resume(
        "panic-refused",
        &BootOpts::new(&disk, "none"),
        0,
        "an earlier restore failed part way",
    );
}

//! Encrypted hibernations in QEMU (TCG).
//!
//! A runs `kjump hibernate --encrypt --passphrase-file`: the passphrase
//! reaches the capture kernel in its initramfs, in RAM, and B seals every
//! chunk with AES-256-GCM. The host cannot read or verify the image without
//! the passphrase. The normal boot (R0) never asks for it: it reads the
//! image's resume record and jumps into the restore kernel R, which asks on
//! the serial console. The test first answers with an empty line: R hands
//! control back and the normal boot goes on, the image still committed. The
//! next boot it types a wrong passphrase (refused, two tries left), then the
//! right one, and A resumes with its tmpfs file and counter.
//!
//! That cycle is `common::hibvm::scenarios::encrypted_passphrase_cycle`,
//! which kernel_7_2_vm.rs runs on Linux 7.2 too. Then a key file on a named
//! device: A hibernates with the first 64 bytes
//! of /dev/vdb as its key, and `kjump resume --key-file /dev/vdb --key-size
//! 64` has R read them there itself.
//!
//! Needs what hibernate_vm.rs needs. Console logs stay in
//! target/tmp/encrypt-vm/.

mod common;

use common::hibvm::flows::{assert_resumed, disk, hibernate_poweroff_unchecked, state, PHASE};
use common::hibvm::scenarios;
use common::hibvm::{self, start, BootOpts, Kernel};
use common::kjump::{kjump, Run};
use common::vm::{self, find, machine};
use kjump_dumpgen::Rng;

#[test]
fn encrypted_hibernation_asks_for_the_passphrase_on_the_console() {
    let Some(_machine) = machine() else { return };
    scenarios::encrypted_passphrase_cycle(Kernel::Linux6_12);
}

#[test]
fn the_restore_kernel_reads_a_key_from_a_named_device() {
    let Some(_machine) = machine() else { return };
    let disk = disk("encrypted-keydev");
    let key_disk = hibvm::new_disk_of(&vm::dir().join("key-disk.img"), 1 << 20);
    let mut key = vec![0u8; 64];
    Rng::new(64).fill(&mut key);
    {
        use std::os::unix::fs::FileExt as _;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&key_disk)
            .unwrap();
        f.write_all_at(&key, 0).unwrap();
    }
    let opts = BootOpts::new(&disk, "poweroff")
        .disk(&key_disk)
        .arg("kjump.keydev=/dev/vdb");
    let (saved, _) = hibernate_poweroff_unchecked("keydev-hibernate", &opts);
    let key_file = vm::dir().join("keydev.key");
    std::fs::write(&key_file, &key).unwrap();
    let host = disk.display().to_string();
    let Run { code, text, .. } = kjump(&[
        "verify",
        &host,
        "--key-file",
        &key_file.display().to_string(),
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("encrypted and authentic"), "{text}");

    let opts = BootOpts::new(&disk, "none")
        .disk(&key_disk)
        .arg("kjump.keydev=/dev/vdb");
    let mut boot = start("keydev-resume", &opts);
    boot.wait_for("kjump: restore kernel started", PHASE);
    let read = boot.wait_for("kjump: read the key from /dev/vdb (64 bytes)", PHASE);
    boot.wait_for("kjump: restored ", PHASE);
    let lines = assert_resumed("keydev-resume", &mut boot, &saved);
    assert!(
        find(&lines, "passphrase for").is_none(),
        "a passphrase was asked\n{}",
        boot.logs()
    );
    assert_eq!(state(&disk), "consumed");
    println!("[keydev] {}", read.text.trim());
}

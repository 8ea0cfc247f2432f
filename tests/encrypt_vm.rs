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
//! Then a key file on a named device: A hibernates with the first 64 bytes
//! of /dev/vdb as its key, and `kjump resume --key-file /dev/vdb --key-size
//! 64` has R read them there itself.
//!
//! Needs what hibernate_vm.rs needs. Console logs stay in
//! target/tmp/encrypt-vm/.

mod common;

use std::time::Duration;

use common::hibvm::flows::{
    assert_resumed, counts, disk, find, hibernate_poweroff_unchecked, kjump, machine, md5s,
    split_at, state, PHASE,
};
use common::hibvm::{self, Boot, BootOpts};

const PASSPHRASE: &str = "correct-horse-battery";

#[test]
fn encrypted_hibernation_asks_for_the_passphrase_on_the_console() {
    let Some(_machine) = machine() else { return };
    let disk = disk("encrypted");
    let opts = BootOpts::new(&disk, "poweroff").arg(&format!("kjump.pass={PASSPHRASE}"));
    let (saved, lines) = hibernate_poweroff_unchecked("encrypt-hibernate", &opts);
    assert!(
        find(&lines, "kjump: the image is encrypted (AES-256-GCM)").is_some(),
        "B did not say it encrypts"
    );
    assert!(
        find(&lines, "encrypt=passphrase").is_some(),
        "the manifest names no secret"
    );
    assert!(
        find(&lines, PASSPHRASE).is_none()
            || lines
                .iter()
                .filter(|l| l.text.contains(PASSPHRASE))
                .all(|l| l.text.contains("kjump.pass=")),
        "the passphrase appeared on the console other than on A's command line"
    );

    // The host: nothing without the passphrase, everything with it.
    let host = disk.display().to_string();
    let (code, text) = kjump(&["verify", &host]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("encrypted"), "{text}");
    let pass_file = hibvm::dir().join("passphrase");
    std::fs::write(&pass_file, PASSPHRASE).unwrap();
    let pass = pass_file.display().to_string();
    let (code, text) = kjump(&["verify", &host, "--passphrase-file", &pass]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("encrypted and authentic"), "{text}");
    assert_eq!(state(&disk), "committed");
    let image = std::fs::read(&disk).unwrap();
    for plain in [&b"6.12.117"[..], b"System RAM", b"OSRELEASE="] {
        assert!(
            !image.windows(plain.len()).any(|w| w == plain),
            "{:?} in plain text in the encrypted image",
            String::from_utf8_lossy(plain)
        );
    }

    // The host reads the resume record without the passphrase.
    let (code, text) = kjump(&["info", &host]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("from the resume record") && text.contains("meta:       region=0x"),
        "{text}"
    );

    // The next boot: R0 asks nothing and jumps into R, which asks. An
    // empty line declines: R hands back and the normal boot goes on.
    let mut boot = Boot::start_opts("encrypt-decline", &BootOpts::new(&disk, "none"));
    let started = boot.wait_for("kjump: restore kernel started", PHASE);
    let prompt = boot.wait_for("passphrase for the encrypted image", PHASE);
    assert!(prompt.at >= started.at, "the passphrase was asked before R");
    std::thread::sleep(Duration::from_secs(1));
    boot.type_line("");
    boot.wait_for("kjump: not resuming: no passphrase was given", PHASE);
    boot.wait_for("handing control back to the normal boot", PHASE);
    let back = boot.wait_for("A: RESUME-EXIT 0", PHASE);
    boot.wait_for("A: DONE", PHASE);
    boot.wait_exit(PHASE);
    let lines = boot.lines();
    let before_r: Vec<_> = lines.iter().filter(|l| l.at < started.at).collect();
    assert!(
        !before_r.iter().any(|l| l.text.contains("passphrase for")),
        "R0 asked for the passphrase\n{}",
        boot.logs()
    );
    let (_, after) = split_at(&lines, back.at);
    assert!(
        find(
            &lines,
            "nothing to resume: the restore kernel handed control back"
        )
        .is_some(),
        "R0 did not say R handed back\n{}",
        boot.logs()
    );
    assert_eq!(md5s(&after).len(), 1, "no fresh workload\n{}", boot.logs());
    assert!(
        counts(&after).len() >= 2,
        "R0's boot did not go on\n{}",
        boot.logs()
    );
    assert!(!lines.iter().any(|l| l.text == "RESUMED"), "resumed anyway");
    assert_eq!(state(&disk), "committed");
    println!(
        "[encrypt-decline] R asked {:.1} s after R started; handed back, R0 went on at {:.1} s",
        prompt.at - started.at,
        back.at
    );

    // The boot after: a wrong passphrase, then the right one, typed on the
    // serial console while R asks.
    let mut boot = Boot::start_opts("encrypt-resume", &BootOpts::new(&disk, "none"));
    boot.wait_for("kjump: restore kernel started", PHASE);
    boot.wait_for("passphrase for the encrypted image", PHASE);
    std::thread::sleep(Duration::from_secs(1));
    boot.type_line("wrong-horse");
    let refused = boot.wait_for("(2 more tries)", PHASE);
    assert!(
        refused.text.contains("wrong key or passphrase"),
        "{}",
        refused.text
    );
    boot.type_line(PASSPHRASE);
    boot.wait_for("kjump: verified in", PHASE);
    let lines = assert_resumed("encrypt-resume", &mut boot, &saved);
    assert!(
        !lines.iter().any(|l| l.text.contains(PASSPHRASE)),
        "the passphrase was echoed on the console\n{}",
        boot.logs()
    );
    assert_eq!(state(&disk), "consumed");
    println!(
        "[encrypt] wrong passphrase refused: {}",
        refused.text.trim()
    );
}

#[test]
fn the_restore_kernel_reads_a_key_from_a_named_device() {
    let Some(_machine) = machine() else { return };
    let disk = disk("encrypted-keydev");
    let key_disk = hibvm::new_disk_of(&hibvm::dir().join("key-disk.img"), 1 << 20);
    let key: Vec<u8> = (0..64u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
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
    let key_file = hibvm::dir().join("keydev.key");
    std::fs::write(&key_file, &key).unwrap();
    let host = disk.display().to_string();
    let (code, text) = kjump(&[
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
    let mut boot = Boot::start_opts("keydev-resume", &opts);
    boot.wait_for("kjump: restore kernel started", PHASE);
    let read = boot.wait_for("kjump: read the key from /dev/vdb (64 bytes)", PHASE);
    boot.wait_for("kjump: verified in", PHASE);
    let lines = assert_resumed("keydev-resume", &mut boot, &saved);
    assert!(
        find(&lines, "passphrase for").is_none(),
        "a passphrase was asked\n{}",
        boot.logs()
    );
    assert_eq!(state(&disk), "consumed");
    println!("[keydev] {}", read.text.trim());
}

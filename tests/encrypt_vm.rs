//! An encrypted hibernation in QEMU (TCG): A runs `kjump hibernate
//! --encrypt --passphrase-file`, and the passphrase reaches the capture
//! kernel in its initramfs, in RAM; B seals every chunk with AES-256-GCM.
//! The host cannot read or verify the image without the passphrase. On the
//! next boot `kjump resume` asks for it on the serial console: the test
//! types a wrong one first (refused, two tries left), then the right one;
//! the restore kernel gets it in RAM again, and A resumes with its tmpfs
//! file and counter.
//!
//! Needs what hibernate_vm.rs needs. Console logs stay in
//! target/tmp/encrypt-vm/.

mod common;

use std::time::Duration;

use common::hibvm::flows::{
    assert_resumed, disk, find, hibernate_poweroff_unchecked, kjump, machine, state, PHASE,
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
    let pass_file = hibvm::rig().dir.join("passphrase");
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

    // The next boot: a wrong passphrase, then the right one, typed on the
    // serial console while `kjump resume` asks.
    let mut boot = Boot::start_opts("encrypt-resume", &BootOpts::new(&disk, "none"));
    boot.wait_for("A: resume start", PHASE);
    std::thread::sleep(Duration::from_secs(2));
    boot.type_line("wrong-horse");
    let refused = boot.wait_for("(2 more tries)", PHASE);
    assert!(
        refused.text.contains("wrong key or passphrase"),
        "{}",
        refused.text
    );
    boot.type_line(PASSPHRASE);
    boot.wait_for("kjump: restore kernel started", PHASE);
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

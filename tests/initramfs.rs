//! `kjump mkinitramfs` checked with the real cpio tool: what GNU cpio lists
//! and extracts must be what kjump put in, byte for byte, and two builds of
//! the same inputs must be identical.

mod common;

use std::process::Command;

use common::kjump::{kjump, Arg};
use common::tempdir::TempDir;

fn have_cpio() -> bool {
    let found = Command::new("cpio").arg("--version").output().is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "cpio missing under CI: tests/setup.sh installs it"
        );
        common::skip("cpio not found (apt-get install cpio)");
    }
    found
}

fn mkinitramfs(out: &std::path::Path, extra: &std::path::Path) {
    let file = format!("{}:usr/share/kjump/extra", extra.display());
    kjump::<Arg>(&[&"mkinitramfs", &"-o", &out, &"--file", &file]).ok();
}

#[test]
fn gnu_cpio_reads_what_kjump_writes() {
    if !have_cpio() {
        return;
    }
    let dir = TempDir::new("initramfs");
    let extra = dir.path("extra");
    std::fs::write(&extra, b"kjump extra file\n").unwrap();
    let (a, b) = (dir.path("a.cpio"), dir.path("b.cpio"));
    mkinitramfs(&a, &extra);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    mkinitramfs(&b, &extra);
    assert!(
        std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
        "two builds differ"
    );

    let list = Command::new("cpio")
        .args(["-t", "--quiet", "-F"])
        .arg(&a)
        .output()
        .unwrap();
    assert!(list.status.success());
    let names: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(String::from)
        .collect();
    for want in ["init", "dev/console", "proc", "usr/share/kjump/extra"] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    let root = dir.path("root");
    std::fs::create_dir(&root).unwrap();
    let st = Command::new("cpio")
        .args(["-i", "-d", "--quiet", "--no-absolute-filenames", "-F"])
        .arg(&a)
        .current_dir(&root)
        .status()
        .unwrap();
    assert!(st.success());
    let init = std::fs::read(root.join("init")).unwrap();
    assert!(
        init == std::fs::read(env!("CARGO_BIN_EXE_kjump")).unwrap(),
        "/init is not the kjump binary"
    );
    assert_eq!(
        std::fs::read(root.join("usr/share/kjump/extra")).unwrap(),
        b"kjump extra file\n"
    );
}

//! The files that hook kjump into real systems, built by the real tools:
//! initramfs-tools' mkinitramfs with kjump's hook and premount script,
//! dracut with kjump's module, and systemd-analyze on the units and drop-ins.
//! Each initramfs must carry kjump, kexec, the restore kernel, the config and
//! the resume step in its place.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::kjump::{kjump, Arg};
use common::run;
use common::tempdir::TempDir;

const KVER: &str = "0.0.0-kjump-test";

fn integration(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("initramfs/integration")
        .join(path)
}

/// Whether the tools are here and we are root (mkinitramfs needs a
/// /boot/config and /lib/modules entry for the kernel version it packs).
fn ready(tools: &[&str]) -> bool {
    let ci = std::env::var_os("CI").is_some();
    let root = common::is_root();
    let missing: Vec<&&str> = tools.iter().filter(|t| !common::have(t)).collect();
    if root && missing.is_empty() {
        return true;
    }
    let why = format!("root: {root}, missing tools: {missing:?} (tests/setup.sh installs them)");
    assert!(!ci, "CI must run this test: {why}");
    common::skip(why);
    false
}

/// A kjump.conf naming a kernel image to pack (any file will do for a build).
fn config(dir: &TempDir) -> PathBuf {
    let kernel = dir.path("vmlinuz");
    std::fs::write(&kernel, b"kernel image stand-in").unwrap();
    let conf = dir.path("kjump.conf");
    let text = std::fs::read_to_string(integration("kjump.conf")).unwrap();
    let text = text.replace(
        "KJUMP_KERNEL=\n",
        &format!("KJUMP_KERNEL={}\n", kernel.display()),
    );
    std::fs::write(&conf, text).unwrap();
    conf
}

fn assert_contains(listing: &str, paths: &[&str]) {
    for p in paths {
        assert!(
            listing.lines().any(|l| l.trim_start_matches("./") == *p),
            "{p} missing from:\n{listing}"
        );
    }
}

/// Creates what mkinitramfs wants for KVER and removes it again.
struct FakeKernel {
    created_modules_root: bool,
}

impl FakeKernel {
    fn new() -> Self {
        let created_modules_root = !Path::new("/lib/modules").exists();
        std::fs::create_dir_all(format!("/lib/modules/{KVER}")).unwrap();
        std::fs::write(
            format!("/boot/config-{KVER}"),
            "CONFIG_RD_GZIP=y\nCONFIG_BLK_DEV_INITRD=y\n",
        )
        .unwrap();
        FakeKernel {
            created_modules_root,
        }
    }
}

impl Drop for FakeKernel {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(format!("/boot/config-{KVER}"));
        let _ = std::fs::remove_dir_all(format!("/lib/modules/{KVER}"));
        if self.created_modules_root {
            let _ = std::fs::remove_dir("/lib/modules");
        }
    }
}

#[test]
fn initramfs_tools_hook_and_script_build_into_an_initramfs() {
    if !ready(&["mkinitramfs", "lsinitramfs", "kexec"]) {
        return;
    }
    let dir = TempDir::new("it-initramfs-tools");
    let conf = config(&dir);
    let confdir = dir.path("initramfs-tools");
    std::fs::create_dir_all(confdir.join("hooks")).unwrap();
    std::fs::create_dir_all(confdir.join("scripts/local-premount")).unwrap();
    std::fs::copy(
        "/etc/initramfs-tools/initramfs.conf",
        confdir.join("initramfs.conf"),
    )
    .unwrap();
    for f in ["hooks/kjump", "scripts/local-premount/kjump"] {
        std::fs::copy(
            integration(&format!("initramfs-tools/{f}")),
            confdir.join(f),
        )
        .unwrap();
    }
    let out = dir.path("initrd.img");
    let _fake = FakeKernel::new();
    run(Command::new("mkinitramfs")
        .arg("-d")
        .arg(&confdir)
        .arg("-o")
        .arg(&out)
        .arg(KVER)
        .env("KJUMP_BIN", env!("CARGO_BIN_EXE_kjump"))
        .env("KJUMP_CONF", &conf));
    let listing = run(Command::new("lsinitramfs").arg(&out));
    assert_contains(
        &listing,
        &[
            "usr/bin/kjump",
            "usr/sbin/kexec",
            "etc/kjump/kjump.conf",
            "usr/lib/kjump/vmlinuz",
            "scripts/local-premount/kjump",
        ],
    );
    let order = run(Command::new("sh").arg("-c").arg(format!(
        "cd {} && unmkinitramfs {} x >/dev/null && cat x/scripts/local-premount/ORDER",
        dir.0.display(),
        out.display()
    )));
    assert!(
        order.contains("/scripts/local-premount/kjump"),
        "premount ORDER lacks kjump:\n{order}"
    );
}

#[test]
fn dracut_module_builds_into_an_initramfs() {
    if !ready(&["dracut", "kexec", "cpio"]) {
        return;
    }
    let dir = TempDir::new("it-dracut");
    let conf = config(&dir);
    // A private copy of dracut's modules with kjump's added, so nothing is
    // installed on this machine.
    let base = dir.path("dracut");
    run(Command::new("cp")
        .arg("-a")
        .arg("/usr/lib/dracut")
        .arg(&base));
    run(Command::new("cp")
        .arg("-a")
        .arg(integration("dracut/90kjump"))
        .arg(base.join("modules.d")));
    std::fs::create_dir(dir.path("conf.d")).unwrap();
    let out = dir.path("initrd.img");
    run(Command::new("dracut")
        .args([
            "--no-kernel",
            "--kver",
            KVER,
            "--force",
            "--no-hostonly",
            "--no-compress",
        ])
        .args([
            "--modules",
            "bash kjump",
            "--conf",
            "/dev/null",
            "--confdir",
        ])
        .arg(dir.path("conf.d"))
        .arg(&out)
        .env("dracutbasedir", &base)
        .env("KJUMP_BIN", env!("CARGO_BIN_EXE_kjump"))
        .env("KJUMP_CONF", &conf));
    let listing = run(Command::new("cpio").args(["-t", "--quiet", "-F"]).arg(&out));
    assert_contains(
        &listing,
        &[
            "usr/bin/kjump",
            "etc/kjump/kjump.conf",
            "usr/lib/kjump/vmlinuz",
            "usr/lib/dracut/hooks/pre-mount/10-kjump-resume.sh",
        ],
    );
    assert!(
        listing.lines().any(|l| l.ends_with("bin/kexec")),
        "kexec missing:\n{listing}"
    );
}

/// A unit directory for systemd-analyze: systemd's sleep and logind units
/// with kjump's drop-ins, and kjump's own units, with kjump's path
/// replaced by `kjump` (verify checks that ExecStart exists).
fn unit_dir(dir: &TempDir, name: &str, kjump: &str) -> PathBuf {
    let units = dir.path(name);
    std::fs::create_dir_all(&units).unwrap();
    for unit in [
        "systemd-hibernate.service",
        "systemd-hybrid-sleep.service",
        "systemd-logind.service",
    ] {
        std::fs::copy(
            Path::new("/lib/systemd/system").join(unit),
            units.join(unit),
        )
        .unwrap_or_else(|e| panic!("/lib/systemd/system/{unit}: {e}"));
    }
    let ours = integration("systemd");
    run(Command::new("cp")
        .arg("-r")
        .arg(format!("{}/.", ours.display()))
        .arg(&units));
    run(Command::new("sh").arg("-c").arg(format!(
        "sed -i 's|/usr/bin/kjump |{kjump} |' {0}/*.service {0}/*.d/*.conf",
        units.display()
    )));
    units
}

/// systemd-analyze verify of `names` in `units`: whether it passed, and
/// its debug log.
fn verify(units: &Path, man: Option<&Path>, names: &[&str]) -> (bool, String) {
    let mut cmd = Command::new("systemd-analyze");
    cmd.arg("verify")
        .arg(format!(
            "--man={}",
            if man.is_some() { "yes" } else { "no" }
        ))
        .args(names.iter().map(|n| units.join(n)))
        .env("SYSTEMD_UNIT_PATH", format!("{}:", units.display()))
        .env("SYSTEMD_LOG_LEVEL", "debug");
    if let Some(m) = man {
        cmd.env("MANPATH", m);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn systemd_units_and_drop_ins_verify() {
    if !common::have("systemd-analyze") {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have systemd-analyze"
        );
        common::skip("systemd-analyze not found (apt-get install systemd)");
        return;
    }
    let dir = TempDir::new("it-systemd");
    let units = unit_dir(&dir, "units", env!("CARGO_BIN_EXE_kjump"));
    // kjump's units name man pages that `kjump generate` writes.
    kjump::<Arg>(&[&"generate", &"--man", &dir.path("man/man1")]).ok();
    let man = dir.path("man");
    let (ok, log) = verify(
        &units,
        Some(&man),
        &["kjump-check.service", "kjump-check.path"],
    );
    assert!(ok, "{log}");
    // systemd's man pages may be missing here: no --man for its units.
    let sleep = ["systemd-hibernate.service", "systemd-hybrid-sleep.service"];
    let (ok, log) = verify(
        &units,
        None,
        &[sleep[0], sleep[1], "systemd-logind.service"],
    );
    assert!(ok, "{log}");
    for unit in sleep {
        // Only kjump's drop-in documents that page.
        let doc = format!("{unit}: Found documentation item: man:kjump-systemd-sleep(1)");
        assert!(log.contains(&doc), "{doc} missing from:\n{log}");
    }
    // The drop-ins' ExecStart is the one that counts: pointed at a missing
    // program, verify names it.
    let broken = unit_dir(&dir, "broken", "/nonexistent/kjump");
    for unit in sleep {
        let (ok, log) = verify(&broken, None, &[unit]);
        assert!(!ok && log.contains("/nonexistent/kjump"), "{unit}:\n{log}");
    }
}

//! The Debian package as a user builds it (packaging/deb/build.sh, with
//! cargo-deb): its name, control fields, files, conffile, trigger and
//! maintainer scripts, a man page for every command, and lintian's verdict.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;

use common::deb::{build_package, ready, repo};
use common::kjump::kjump;
use common::run;
use common::tempdir::TempDir;

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commands `kjump --help` lists, `help` aside.
fn commands() -> Vec<String> {
    let help = kjump(&["--help"]).ok().stdout;
    let list = help
        .split("Commands:\n")
        .nth(1)
        .expect("--help lists commands");
    list.lines()
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(String::from)
        .collect()
}

#[test]
fn package_builds_with_its_files_and_passes_lintian() {
    if !ready(&["cargo-deb", "lintian", "dpkg-deb", "file"]) {
        return;
    }
    let dir = TempDir::new("deb-package");
    let deb = build_package(&dir.0);
    assert_eq!(
        deb.file_name().unwrap().to_string_lossy(),
        format!("kjump_{VERSION}_amd64.deb")
    );

    let field = |name: &str| run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(name));
    assert_eq!(field("Package").trim(), "kjump");
    assert_eq!(field("Version").trim(), VERSION);
    assert_eq!(field("Architecture").trim(), "amd64");
    let depends = field("Depends");
    assert!(depends.contains("kexec-tools"), "Depends: {depends}");
    assert!(
        depends.contains("initramfs-tools | linux-initramfs-tool"),
        "Depends: {depends}"
    );

    let listing = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    let files: BTreeSet<String> = listing
        .lines()
        .filter_map(|l| l.split(" -> ").next()?.split_whitespace().last())
        .map(|p| p.trim_start_matches('.').to_string())
        .collect();
    let mut wanted: Vec<String> = [
        "/usr/bin/kjump",
        "/etc/kjump/kjump.conf",
        "/usr/share/initramfs-tools/hooks/kjump",
        "/usr/share/initramfs-tools/scripts/local-premount/kjump",
        "/usr/lib/dracut/modules.d/90kjump/module-setup.sh",
        "/usr/lib/dracut/modules.d/90kjump/kjump-resume.sh",
        "/usr/lib/systemd/system/kjump-check.service",
        "/usr/lib/systemd/system/kjump-check.path",
        "/usr/lib/systemd/system/multi-user.target.wants/kjump-check.service",
        "/usr/lib/systemd/system/paths.target.wants/kjump-check.path",
        "/usr/lib/systemd/system/systemd-hibernate.service.d/kjump.conf",
        "/usr/lib/systemd/system/systemd-hybrid-sleep.service.d/kjump.conf",
        "/usr/lib/systemd/system/systemd-logind.service.d/kjump.conf",
        "/usr/share/kjump/kdump-tools.sh",
        "/usr/share/bash-completion/completions/kjump",
        "/usr/share/zsh/vendor-completions/_kjump",
        "/usr/share/fish/vendor_completions.d/kjump.fish",
        "/usr/share/doc/kjump/copyright",
        "/usr/share/doc/kjump/changelog.gz",
        "/usr/share/man/man1/kjump.1.gz",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let commands = commands();
    assert!(commands.len() >= 10, "commands: {commands:?}");
    for c in &commands {
        wanted.push(format!("/usr/share/man/man1/kjump-{c}.1.gz"));
    }
    let missing: Vec<&String> = wanted.iter().filter(|w| !files.contains(*w)).collect();
    assert!(missing.is_empty(), "missing {missing:?} from:\n{listing}");
    assert!(
        !files.iter().any(|f| f.contains("kjump-generate")),
        "the hidden generate command has no man page:\n{listing}"
    );

    let unpacked = dir.path("unpacked");
    run(Command::new("dpkg-deb").arg("-R").arg(&deb).arg(&unpacked));
    let control = |name: &str| {
        std::fs::read_to_string(unpacked.join("DEBIAN").join(name))
            .unwrap_or_else(|e| panic!("DEBIAN/{name}: {e}"))
    };
    assert_eq!(control("conffiles").trim(), "/etc/kjump/kjump.conf");
    assert!(
        control("triggers")
            .lines()
            .any(|l| l.trim() == "activate-noawait update-initramfs"),
        "triggers:\n{}",
        control("triggers")
    );
    for script in ["postinst", "postrm"] {
        run(Command::new("sh")
            .arg("-n")
            .arg(unpacked.join("DEBIAN").join(script)));
    }
    // The kdump-tools snippet is sourced, never run: plain shell, no
    // execute bit, and it defines the makedumpfile that kdump-config calls.
    let snippet = unpacked.join("usr/share/kjump/kdump-tools.sh");
    run(Command::new("sh").arg("-n").arg(&snippet));
    let mode = std::fs::metadata(&snippet).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o644, "{}", snippet.display());
    let text = std::fs::read_to_string(&snippet).unwrap();
    assert!(text.contains("\nmakedumpfile() {"), "{text}");
    assert!(
        text.contains(". /usr/share/kjump/kdump-tools.sh"),
        "the snippet says how to source it:\n{text}"
    );

    // The binary is the static one, as the initramfs needs, and this version.
    let kjump = unpacked.join("usr/bin/kjump");
    let kind = run(Command::new("file").arg("-b").arg(&kjump));
    assert!(kind.contains("static-pie linked"), "{kind}");
    let version = run(Command::new(&kjump).arg("--version"));
    assert_eq!(version.trim(), format!("kjump {VERSION}"));
    // The page a user reads for `kjump hibernate` names its options.
    let page = run(Command::new("sh").arg("-c").arg(format!(
        "gzip -dc {}",
        unpacked
            .join("usr/share/man/man1/kjump-hibernate.1.gz")
            .display()
    )));
    for option in ["\\-\\-target", "\\-\\-then", "\\-\\-kernel"] {
        assert!(page.contains(option), "{option} missing from:\n{page}");
    }
    let changelog = std::fs::read_to_string(repo().join("packaging/deb/changelog")).unwrap();
    assert!(
        changelog.starts_with(&format!("kjump ({VERSION}) ")),
        "packaging/deb/changelog's first entry is not version {VERSION}"
    );

    let lintian = Command::new("lintian")
        .args(["--pedantic", "--no-tag-display-limit"])
        .arg(&deb)
        .output()
        .expect("running lintian");
    let report = String::from_utf8_lossy(&lintian.stdout);
    let flagged: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("E:") || l.starts_with("W:"))
        .collect();
    assert!(
        lintian.status.success() && flagged.is_empty(),
        "lintian ({}):\n{report}{}",
        lintian.status,
        String::from_utf8_lossy(&lintian.stderr)
    );
}

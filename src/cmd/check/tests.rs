use super::gather::target_state;
use super::*;
use kjump_handoff::fsguard::UnguardedMounts;

/// A 4 GiB machine with a 256 MiB region at 0x2f000000.
const IOMEM: &str = "00000000-00000fff : Reserved\n00001000-0009fbff : System RAM\n\
    000a0000-000fffff : Reserved\n00100000-bffdffff : System RAM\n  \
    01000000-01ffffff : Kernel code\n  2f000000-3effffff : Crash kernel\n\
    bffe0000-bfffffff : Reserved\n100000000-13fffffff : System RAM\n";

fn machine() -> Facts {
    Facts {
        release: "6.12.117".into(),
        jump: JumpSupport::Probed,
        lockdown: Some("[none] integrity confidentiality\n".into()),
        secure_boot: Some(false),
        kexec_load_disabled: false,
        kexec_load_limit: Some(-1),
        iomem: IOMEM.into(),
        crashkernel_asked: true,
        // The kernel runs `judge` on a path that must exist as a file.
        kernel: (std::env::current_exe().unwrap(), Some(40 << 20)),
        initramfs: 6 << 20,
        kexec: Some("/usr/sbin/kexec".into()),
        target: TargetState::Room("/dev/disk/by-partlabel/kjump".into(), 8 << 30),
        unguarded: UnguardedMounts(vec![]),
    }
}

use super::sleep_conf::problems;

fn one_problem(f: &Facts, what: &str, words: &[&str]) {
    let p = problems(f);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(p[0].starts_with(&format!("{what}: ")), "{p:#?}");
    for w in words {
        assert!(p[0].contains(w), "{w:?} missing from {:?}", p[0]);
    }
}

#[test]
fn a_machine_that_can_hibernate_has_no_problem() {
    let f = machine();
    assert_eq!(problems(&f), Vec::<String>::new());
    let all = judge(&f);
    assert_eq!(
        all.iter().map(|f| f.what).collect::<Vec<_>>(),
        [
            "kernel",
            "lockdown",
            "kexec_load",
            "crashkernel",
            "capture",
            "target",
            "filesystems"
        ]
    );
}

#[test]
fn no_kexec_jump_in_the_running_kernel() {
    let mut f = machine();
    f.jump = JumpSupport::ProbeFailed(
        "kexec_load refused a preserve-context load: the kernel rejects KEXEC_PRESERVE_CONTEXT: it was built without CONFIG_KEXEC_JUMP".into(),
    );
    one_problem(&f, "kernel", &["CONFIG_KEXEC_JUMP", "6.12.117"]);
    f.jump = JumpSupport::Config {
        why: "a kexec image is loaded, which a probe would replace".into(),
        path: "/boot/config-6.1.0-40-amd64".into(),
        set: false,
    };
    one_problem(
        &f,
        "kernel",
        &["lacks CONFIG_KEXEC_JUMP", "/boot/config-6.1.0-40-amd64"],
    );
    f.jump = JumpSupport::Config {
        why: "loaded".into(),
        path: "/boot/config-x".into(),
        set: true,
    };
    assert!(problems(&f).is_empty());
    // Unknown does not block: hibernate probes it itself.
    f.jump = JumpSupport::Unknown("no config".into());
    assert!(problems(&f).is_empty());
}

#[test]
fn lockdown_and_secure_boot() {
    let mut f = machine();
    f.lockdown = Some("none [integrity] confidentiality\n".into());
    f.secure_boot = Some(true);
    one_problem(
        &f,
        "lockdown",
        &["locked down", "[integrity]", "Secure Boot is on"],
    );
    f.lockdown = None;
    f.secure_boot = None;
    assert!(problems(&f).is_empty());
}

#[test]
fn kexec_load_disabled_limited_or_kexec_tools_missing() {
    let mut f = machine();
    f.kexec_load_disabled = true;
    one_problem(&f, "kexec_load", &["kexec_load_disabled=1"]);
    f.kexec_load_disabled = false;
    f.kexec_load_limit = Some(0);
    one_problem(&f, "kexec_load", &["kexec_load_limit_reboot=0"]);
    f.kexec_load_limit = None;
    f.kexec = None;
    one_problem(&f, "kexec_load", &["install kexec-tools"]);
}

#[test]
fn no_region_a_failed_reservation_and_one_too_small_for_this_ram() {
    let mut f = machine();
    f.iomem = IOMEM.replace("  2f000000-3effffff : Crash kernel\n", "");
    f.crashkernel_asked = false;
    one_problem(&f, "crashkernel", &["add crashkernel=256M", "reboot"]);
    f.crashkernel_asked = true;
    one_problem(&f, "crashkernel", &["no region is reserved", "dmesg"]);
    // 96 MiB: less than the kernel, its initramfs and the working memory.
    f.iomem = IOMEM.replace(
        "2f000000-3effffff : Crash kernel",
        "2f000000-34ffffff : Crash kernel",
    );
    one_problem(
        &f,
        "crashkernel",
        &["holds 96 MiB", "boot with crashkernel="],
    );
}

#[test]
fn the_region_needed_grows_with_ram() {
    let base = region_needed(Some(40 << 20), 6 << 20, 0);
    assert_eq!(base, (40 + 6 + 1 + 128) << 20);
    // 1 TiB saved: 4 Mi chunks of 256 KiB, 40 bytes of index each, twice.
    assert_eq!(
        region_needed(Some(40 << 20), 6 << 20, 1 << 40) - base,
        320 << 20
    );
    assert_eq!(region_needed(None, 0, 0), (64 + 1 + 128) << 20);
    // So a 256 MiB region serves 4 GiB but not 1 TiB.
    let mut f = machine();
    assert!(problems(&f).is_empty());
    f.iomem = format!("{IOMEM}140000000-1013fffffff : System RAM\n");
    f.target = TargetState::Room("/dev/sdb".into(), 2 << 40);
    one_problem(&f, "crashkernel", &["holds 256 MiB", "crashkernel=512M"]);
}

#[test]
fn target_unset_missing_unusable_or_too_small() {
    let mut f = machine();
    f.target = TargetState::Unset;
    one_problem(&f, "target", &["KJUMP_DEVICE or KJUMP_FILE", CONF]);
    f.target = TargetState::Missing("/dev/disk/by-partlabel/kjump".into());
    one_problem(
        &f,
        "target",
        &["/dev/disk/by-partlabel/kjump does not exist"],
    );
    f.target = TargetState::Unusable("/dev/sda2".into(), "in use (mounted...)".into());
    one_problem(&f, "target", &["/dev/sda2: in use"]);
    // 4 GiB of RAM minus the region: the worst case is a little more.
    let worst = worst_case(&saved_ram(IOMEM));
    let saved = saved_ram(IOMEM).total_bytes();
    assert!(
        worst > saved && worst < saved + (64 << 20),
        "{worst} {saved}"
    );
    f.target = TargetState::Room("/dev/sdb1".into(), worst - 1);
    one_problem(&f, "target", &["/dev/sdb1 has room for", "can take up to"]);
    f.target = TargetState::Room("/dev/sdb1".into(), worst);
    assert!(problems(&f).is_empty());
}

#[test]
fn capture_kernel_missing_or_not_a_bzimage() {
    let mut f = machine();
    f.kernel = ("/boot/vmlinuz-none".into(), None);
    one_problem(
        &f,
        "capture",
        &["/boot/vmlinuz-none not found", "KJUMP_KERNEL"],
    );
    f.kernel.0 = std::env::current_exe().unwrap();
    one_problem(&f, "capture", &["not an x86 bzImage"]);
}

#[test]
fn filesystems_on_device_mapper_or_md_cannot_be_guarded() {
    let mut f = machine();
    f.unguarded = kjump_handoff::fsguard::unguarded(
        "30 1 254:1 / / rw - ext4 /dev/mapper/kjump--test-root rw\n\
         31 30 8:1 / /boot rw - ext4 /dev/kjump-test-sda1 rw\n",
    );
    one_problem(
        &f,
        "filesystems",
        &[
            "/ on /dev/mapper/kjump--test-root (device-mapper): ",
            "the capture kernel cannot read through",
            "every resume would be refused",
        ],
    );
    let text = sleep_conf::sleep_conf_text(true, &problems(&f)).unwrap();
    assert!(text.contains("AllowHibernation=no"), "{text}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let mut f = machine();
    f.jump = JumpSupport::ProbeFailed("no CONFIG_KEXEC_JUMP".into());
    f.lockdown = Some("none integrity [confidentiality]".into());
    f.iomem = IOMEM.replace("  2f000000-3effffff : Crash kernel\n", "");
    f.target = TargetState::Unset;
    let p = problems(&f);
    assert_eq!(p.len(), 4, "{p:#?}");
}

#[test]
fn bzimage_header() {
    let mut image = vec![0u8; 0x300];
    assert_eq!(bzimage_init_size(&image), None);
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    image[0x260..0x264].copy_from_slice(&0x0260_0000u32.to_le_bytes());
    assert_eq!(bzimage_init_size(&image), Some(0x0260_0000));
    // Boot protocol 2.09 has no init_size.
    image[0x206..0x208].copy_from_slice(&0x0209u16.to_le_bytes());
    assert_eq!(bzimage_init_size(&image), None);
    assert_eq!(bzimage_init_size(&image[..0x100]), None);
}

#[test]
fn conf_parsing() {
    let text = "# comment\nKJUMP_DEVICE=/dev/disk/by-partlabel/kjump\nKJUMP_FILE=\n\
        KJUMP_KERNEL=\"/boot/vmlinuz-kjump\"\nKJUMP_THEN='suspend'\n  \nnot a line\n";
    let s = Settings::from_conf(text).unwrap();
    assert_eq!(
        s,
        Settings {
            target: Some("/dev/disk/by-partlabel/kjump".into()),
            file_target: false,
            kernel: Some("/boot/vmlinuz-kjump".into()),
            then: Some("suspend".into()),
            prompt_timeout: None,
        }
    );
    let s =
        Settings::from_conf("KJUMP_DEVICE=/dev/sda3\nKJUMP_FILE=/var/lib/kjump/image\n").unwrap();
    assert_eq!(s.target, Some("/var/lib/kjump/image".into()));
    assert!(s.file_target);
    assert_eq!(
        Settings::from_conf("KJUMP_DEVICE=\n"),
        Ok(Settings::default())
    );
    let s = Settings::from_conf("KJUMP_PROMPT_TIMEOUT=30\n").unwrap();
    assert_eq!(s.prompt_timeout, Some(30));
    assert_eq!(
        Settings::from_conf("KJUMP_PROMPT_TIMEOUT=2m\n"),
        Err("KJUMP_PROMPT_TIMEOUT=2m is not a number of seconds".to_string())
    );
    // The shipped configuration names the default partition.
    let shipped = include_str!("../../../initramfs/integration/kjump.conf");
    let s = Settings::from_conf(shipped).unwrap();
    assert_eq!(s.target, Some("/dev/disk/by-partlabel/kjump".into()));
    assert_eq!(s.then.as_deref(), Some("poweroff"));
    assert_eq!(s.kernel, None);
}

#[test]
fn target_state_of_real_paths() {
    let dir = std::env::temp_dir().join(format!("kjump-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    assert_eq!(target_state(None, false), TargetState::Unset);
    let absent = dir.join("absent");
    assert_eq!(
        target_state(Some(&absent), false),
        TargetState::Missing(absent.clone())
    );
    // A file target not allocated yet: the free space of its directory.
    assert!(matches!(target_state(Some(&absent), true), TargetState::Room(_, n) if n > 0));
    let nowhere = dir.join("no-such-dir/image");
    assert_eq!(
        target_state(Some(&nowhere), true),
        TargetState::Missing(dir.join("no-such-dir"))
    );
    assert!(matches!(
        target_state(Some(Path::new("/proc")), false),
        TargetState::Unusable(..)
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

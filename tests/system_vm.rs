//! kjump on a real Debian 12 system in QEMU (TCG): systemd as PID 1, udev,
//! journald, dbus and logind, an ext4 root on a GPT disk with a partition
//! named kjump, the project's KEXEC_JUMP kernel as the system kernel, kjump
//! installed with `apt-get install ./kjump_*.deb` and the initramfs made by
//! the distribution's generator (tests/vm/debian-system.sh builds it, cached
//! in /var/cache/kjump/debian-system). QEMU loads the image's kernel and
//! initramfs itself (no bootloader).
//!
//! The system runs kjump-workload.service (tests/vm/workload.c): 512 MiB of
//! memory with a known checksum it re-checks every pass, a counter, and a
//! log on the root filesystem it appends to. `systemctl hibernate` goes
//! through logind and kjump's systemd-hibernate.service drop-in; the
//! capture kernel powers the machine off; a new QEMU process boots, and the
//! initramfs's resume step restores the same systemd instance before the
//! root filesystem is mounted. Each cycle checks: the same boot id and
//! workload process, its checksum and its counter going on, the log
//! consistent, `systemctl is-system-running` says running, the journal's
//! line with the time away and the image size, the sleep hooks run with
//! pre and post, the clock right. Phase times are printed. The dracut
//! variant also arms a calendar timer that falls due while the machine is
//! off and must run once the system is back, and ends with a `systemctl
//! hybrid-sleep` (the image saved, then suspend to RAM) woken through QMP.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::deb::repo;
use common::sysvm::{boot_once_more, Machine, System};

const SECS: fn(u64) -> Duration = Duration::from_secs;
/// The workload's memory and seed (debian-system.sh's unit).
const WORKLOAD_MIB: &str = "512";
const WORKLOAD_SEED: &str = "42";

fn run(cmd: &mut Command) -> String {
    common::run(cmd).trim().to_string()
}

/// Builds (or takes from the cache) the `variant` system and copies its
/// disk into `dir`; returns it and the workload's expected checksum.
fn system(dir: &Path, variant: &str) -> (System, String) {
    let started = Instant::now();
    let kernel = run(Command::new("bash")
        .arg(repo().join("tests/vm/build-kernel.sh"))
        .arg("6.12"));
    let deb = common::deb::build_package(&dir.join("deb"));
    let workload = dir.join("kjump-workload");
    run(Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&workload)
        .arg(repo().join("tests/vm/workload.c")));
    let sum = run(Command::new(&workload).args(["--sum", WORKLOAD_MIB, WORKLOAD_SEED]));
    let built = PathBuf::from(run(Command::new("bash")
        .arg(repo().join("tests/vm/debian-system.sh"))
        .arg(variant)
        .arg(&kernel)
        .arg(&deb)
        .arg(&workload)));
    let log = std::fs::read_to_string(built.join("build.log")).unwrap();
    // The package's trigger rebuilt the initramfs on install and removal.
    for fact in [
        "package: installed with apt-get install ./kjump_",
        "package: removed; the trigger rebuilt",
        "package: installed again; the initramfs has kjump's resume step",
    ] {
        assert!(
            log.contains(fact),
            "{fact:?} missing from {}",
            built.display()
        );
    }
    let disk = dir.join("disk.raw");
    run(Command::new("cp")
        .arg("--sparse=always")
        .arg(built.join("disk.raw"))
        .arg(&disk));
    eprintln!(
        "{variant} system ready in {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        built.display()
    );
    let sys = System {
        variant: variant.to_owned(),
        kernel: PathBuf::from(kernel),
        initrd: built.join("initrd.img"),
        disk,
    };
    (sys, sum)
}

/// The workload's status line: (pid, pass, checksum).
fn status(m: &mut Machine, sum: &str) -> (u32, u64) {
    let line = m.ok("cat /run/kjump-workload.status");
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .unwrap_or_else(|| m.fail(format!("no {name} in {line:?}")))
            .to_string()
    };
    assert!(line.ends_with(" ok"), "workload: {line}");
    assert_eq!(field("sum="), sum, "workload checksum: {line}");
    (
        field("pid=").parse().unwrap(),
        field("pass=").parse().unwrap(),
    )
}

/// Waits until the workload has made a pass after `after`; returns it.
fn next_pass(m: &mut Machine, sum: &str, pid: u32, after: u64) -> u64 {
    let deadline = Instant::now() + SECS(180);
    loop {
        let (p, pass) = status(m, sum);
        assert_eq!(p, pid, "the workload process changed");
        if pass > after {
            return pass;
        }
        if Instant::now() > deadline {
            m.fail(format!("the workload made no pass after {after}"));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Waits for the workload's first pass after a boot (filling 512 MiB
/// takes a while under emulation).
fn first_pass(m: &mut Machine) {
    let deadline = Instant::now() + SECS(600);
    while m.sh("test -e /run/kjump-workload.status", SECS(60)).0 != 0 {
        if Instant::now() > deadline {
            m.fail("the workload wrote no status");
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Checks a freshly booted or resumed system: running, and the workload's
/// log consistent: each line "pass N sum S" with S the known checksum and N
/// the previous line's plus one, or 1 where a boot started the workload
/// anew, which happened `starts` times. Returns the boot id.
fn healthy(m: &mut Machine, sum: &str, starts: u32) -> String {
    let state = m
        .sh("timeout 300 systemctl is-system-running --wait", SECS(330))
        .1;
    if state.trim() != "running" {
        let failed = m.sh("systemctl --failed --no-legend", SECS(60)).1;
        m.fail(format!(
            "system state {:?}; failed units:\n{failed}",
            state.trim()
        ));
    }
    let check = m.ok(&format!(
        "awk -v s={sum} '$2 == 1 {{ starts++ }} $1 != \"pass\" || $4 != s || ($2 != 1 && $2 != prev + 1) {{ bad++ }} {{ prev = $2 }} END {{ print NR, bad + 0, starts + 0 }}' /var/lib/kjump-workload/log"
    ));
    let words: Vec<u64> = check
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect();
    assert_eq!(
        words[1..],
        [0, u64::from(starts)],
        "workload log (lines, bad lines, starts): {check}"
    );
    assert!(words[0] >= 1, "empty workload log");
    m.ok("cat /proc/sys/kernel/random/boot_id")
}

fn wait_login(m: &mut Machine) -> Duration {
    let t = m.wait_for("root@kjump-test:~#", SECS(600));
    // Quiet the kernel on the console the shell shares.
    m.ok("dmesg -n 1");
    t
}

/// The sleep hook the test installs: it logs its arguments and writes a
/// line to the console, which tells the harness the machine is back.
const HOOK: &str = "mkdir -p /usr/lib/systemd/system-sleep && printf '%s\\n' '#!/bin/sh' \
    'echo \"$1 $2 $SYSTEMD_SLEEP_ACTION\" >> /var/lib/kjump-test-hooks.log' \
    'echo \"kjump-test-hook: $1 $2\" > /dev/ttyS0' > /usr/lib/systemd/system-sleep/kjump-test \
    && chmod 755 /usr/lib/systemd/system-sleep/kjump-test";

fn host_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// What logind offers for `method` (CanHibernate, CanHybridSleep).
fn logind_can(m: &mut Machine, method: &str) -> String {
    m.ok(&format!(
        "busctl call org.freedesktop.login1 /org/freedesktop/login1 org.freedesktop.login1.Manager {method}"
    ))
}

/// Polls `cmd` until it exits 0.
fn until(m: &mut Machine, cmd: &str, what: &str) {
    let deadline = Instant::now() + SECS(120);
    while m.sh(cmd, SECS(60)).0 != 0 {
        if Instant::now() > deadline {
            m.fail(format!("no {what}"));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// kjump configured with a target that does not exist: kjump-check (run
/// again by kjump-check.path) tells logind, which refuses `systemctl
/// hibernate` at once; the journal says why; nothing else changes. Then
/// the configuration is put back.
fn refused_when_kjump_cannot(m: &mut Machine) {
    let conf = "/etc/kjump/kjump.conf";
    let missing = "/dev/disk/by-partlabel/missing";
    m.ok(&format!(
        "sed -i 's|^KJUMP_DEVICE=.*|KJUMP_DEVICE={missing}|' {conf}"
    ));
    let sleep_conf = "/run/systemd/sleep.conf.d/kjump.conf";
    until(
        m,
        &format!("grep -qx AllowHibernation=no {sleep_conf}"),
        "refusal for logind",
    );
    assert_eq!(logind_can(m, "CanHibernate"), "s \"na\"");
    assert_eq!(logind_can(m, "CanHybridSleep"), "s \"na\"");
    let t = Instant::now();
    let (code, out) = m.sh("systemctl hibernate 2>&1", SECS(120));
    assert!(
        code != 0 && out.contains("not supported"),
        "systemctl hibernate with kjump unable: exit {code}: {out}"
    );
    let reason = format!("cannot hibernate with kjump: target: {missing} does not exist");
    let journal = m.ok("journalctl -b -o cat -u kjump-check.service");
    assert!(
        journal.contains(&reason),
        "{reason:?} missing from:\n{journal}"
    );
    eprintln!(
        "kjump unable: systemctl hibernate refused in {:.1} s: {}",
        t.elapsed().as_secs_f64(),
        out.trim()
    );
    m.ok(&format!(
        "sed -i 's|^KJUMP_DEVICE=.*|KJUMP_DEVICE=/dev/disk/by-partlabel/kjump|' {conf}"
    ));
    until(
        m,
        &format!("grep -qx AllowHibernation=yes {sleep_conf}"),
        "permission for logind",
    );
}

/// `systemctl hibernate` and the power-off: returns the time it took.
fn hibernate(m: &mut Machine) -> Duration {
    assert_eq!(logind_can(m, "CanHibernate"), "s \"yes\"");
    let t = Instant::now();
    m.send("systemctl hibernate");
    let status = m.wait_exit(SECS(900));
    assert!(status.success(), "QEMU: {status}");
    assert!(
        m.printed("kjump-test-hook: pre hibernate"),
        "the pre hook did not run"
    );
    t.elapsed()
}

/// Boots the hibernated system and checks that the same one came back;
/// `n` is the cycle number. Returns the machine and the phase times.
fn resume(
    sys: &System,
    sum: &str,
    n: usize,
    starts: u32,
    before: (&str, u32, u64),
) -> (Machine, Duration, Duration) {
    let (boot_id, pid, pass) = before;
    let mut m = boot_once_more(sys, "", &format!("resume{n}-{starts}"));
    let back = m.wait_for("kjump-test-hook: post hibernate", SECS(900));
    let running = next_pass(&mut m, sum, pid, pass);
    let service = m.uptime();
    assert_eq!(
        healthy(&mut m, sum, starts),
        boot_id,
        "a new boot, not a resume"
    );
    let resumed = m.ok(
        "journalctl -b -o cat -u systemd-hibernate.service | grep '^kjump: resumed from hibernate'",
    );
    let lines: Vec<&str> = resumed.lines().collect();
    assert_eq!(lines.len(), n, "journal:\n{resumed}");
    assert!(
        lines[n - 1].contains(": away ") && lines[n - 1].contains(" image "),
        "{}",
        lines[n - 1]
    );
    let hooks = m.ok("cat /var/lib/kjump-test-hooks.log");
    let want: Vec<String> = (0..n)
        .flat_map(|_| ["pre hibernate hibernate", "post hibernate hibernate"])
        .map(String::from)
        .collect();
    assert_eq!(hooks.lines().collect::<Vec<_>>(), want, "sleep hooks");
    let guest: i64 = m.ok("date +%s").parse().unwrap();
    assert!(
        (guest - host_now()).abs() < 15,
        "guest clock {guest}, host {}",
        host_now()
    );
    eprintln!("cycle {n}: {} (workload pass {running})", lines[n - 1]);
    (m, back, service)
}

/// How long after the pre hook the timer of [`timer_hook`] falls due. The
/// jump follows the hooks after the capture kernel is loaded and the
/// disks synced: seconds on a fast host, 39 s seen under TCG on a slow
/// one, where a timer due 20 s after the hook ran before the jump.
const TIMER_DELAY_SECS: u64 = 90;

/// A sleep hook that, at its first `pre`, arms a calendar timer due
/// [`TIMER_DELAY_SECS`] later, so that it falls due while the machine is
/// off (the test keeps it off until then); it writes the time it ran.
fn timer_hook() -> String {
    format!(
        "printf '%s\\n' '#!/bin/sh' \
    '[ \"$1\" = pre ] && [ ! -e /var/lib/kjump-test-timer.due ] || exit 0' \
    'due=$(( $(date +%s) + {TIMER_DELAY_SECS} ))' \
    'echo $due > /var/lib/kjump-test-timer.due' \
    'systemd-run --unit=kjump-test-timer --timer-property=AccuracySec=1s --on-calendar=\"$(date -u -d @$due \"+%F %T UTC\")\" sh -c \"date +%s > /var/lib/kjump-test-timer\"' \
    > /usr/lib/systemd/system-sleep/kjump-test-timer \
    && chmod 755 /usr/lib/systemd/system-sleep/kjump-test-timer"
    )
}

/// The timer [`timer_hook`] armed fell due while the machine was off and
/// ran once the system was back: systemd caught up with the clock jump.
fn timer_caught_up(m: &mut Machine) {
    until(m, "test -s /var/lib/kjump-test-timer", "run of the timer");
    let due: i64 = m.ok("cat /var/lib/kjump-test-timer.due").parse().unwrap();
    let ran: i64 = m.ok("cat /var/lib/kjump-test-timer").parse().unwrap();
    let resumed: f64 = m
        .ok("journalctl -b -o short-unix -u systemd-hibernate.service | grep 'kjump: resumed from' | tail -n 1 | cut -d' ' -f1")
        .parse()
        .unwrap();
    assert!(
        (due as f64) < resumed && ran as f64 >= resumed.floor(),
        "timer due at {due} ran at {ran}; the system resumed at {resumed}"
    );
    eprintln!(
        "a timer due {:.0} s before the resume ran {} s after it (whole seconds)",
        resumed - due as f64,
        ran - resumed.floor() as i64
    );
}

/// `systemctl hybrid-sleep`: kjump saves the image and the capture kernel
/// suspends the machine to RAM; QMP's system_wakeup wakes it, the capture
/// kernel jumps back, and the same system goes on with its image, the
/// fallback had the power gone, marked consumed.
fn hybrid_sleep_and_wake(m: &mut Machine, sum: &str, boot_id: &str, starts: u32) {
    assert_eq!(logind_can(m, "CanHybridSleep"), "s \"yes\"");
    let (pid, pass) = status(m, sum);
    m.ok("rm -f /var/lib/kjump-test-hooks.log");
    let t = Instant::now();
    m.send("systemctl hybrid-sleep");
    m.wait_for("kjump: image committed", SECS(900));
    m.wait_for("kjump: suspending to RAM", SECS(300));
    if let Err(e) = m.qmp().wait_status("suspended", SECS(120)) {
        m.fail(e);
    }
    let down = t.elapsed();
    std::thread::sleep(SECS(2));
    if let Err(e) = m.qmp().command("system_wakeup") {
        m.fail(e);
    }
    let woken = Instant::now();
    m.wait_for("kjump-test-hook: post hybrid-sleep", SECS(600));
    let back = woken.elapsed();
    next_pass(m, sum, pid, pass);
    assert_eq!(
        healthy(m, sum, starts),
        boot_id,
        "a new boot after hybrid-sleep"
    );
    let hooks = m.ok("cat /var/lib/kjump-test-hooks.log");
    assert_eq!(
        hooks.lines().collect::<Vec<_>>(),
        [
            "pre hybrid-sleep hybrid-sleep",
            "post hybrid-sleep hybrid-sleep"
        ],
        "sleep hooks"
    );
    let line = m.ok(
        "journalctl -b -o cat -u systemd-hybrid-sleep.service | grep '^kjump: resumed from hybrid-sleep' | tail -n 1",
    );
    assert!(line.ends_with("now consumed"), "journal: {line:?}");
    eprintln!(
        "hybrid-sleep: systemctl hybrid-sleep to suspended {:.1} s; system_wakeup to the post hook {:.1} s; {line}",
        down.as_secs_f64(),
        back.as_secs_f64()
    );
}

/// Three cycles, a boot that skips the resume and hibernates again, a
/// fourth resume, a clean shutdown and a host e2fsck of the root. With
/// `extras`, a timer falls due while the machine is off in the first
/// cycle, and a hybrid sleep woken from suspend follows the last.
fn cycles(variant: &str, hibernations: usize, refusal: bool, extras: bool) {
    if !common::deb::ready(&["cargo-deb", "mmdebstrap", "sgdisk", "cc"]) {
        return;
    }
    // Two vCPUs: with the host's cores as the budget, the variants take
    // turns, and so do their package builds in the shared target directory.
    let Some(_machine) = common::vm::machine_cpus(2) else {
        return;
    };
    // Kept after a failure, beside the console logs; the next run clears it.
    let dir = common::vm::dir().join(variant);
    std::fs::create_dir_all(&dir).unwrap();
    let (sys, sum) = system(&dir, variant);
    let mut times = Vec::new();

    let mut m = boot_once_more(&sys, "", "boot");
    let login = wait_login(&mut m);
    first_pass(&mut m);
    let mut starts = 1;
    let mut boot_id = healthy(&mut m, &sum, starts);
    eprintln!(
        "{variant}: first boot to a shell in {:.1} s",
        login.as_secs_f64()
    );
    m.ok(HOOK);
    assert_eq!(logind_can(&mut m, "CanHybridSleep"), "s \"yes\"");
    m.ok("kjump check");
    if refusal {
        refused_when_kjump_cannot(&mut m);
    }
    let (mut pid, mut pass) = status(&mut m, &sum);
    for n in 1..=hibernations {
        if n == hibernations && hibernations > 1 {
            // Skip the resume once: a normal boot, and a hibernation after it.
            let down = hibernate(&mut m);
            m = boot_once_more(&sys, "kjump.noresume", "noresume");
            m.wait_for("kjump: resume skipped (kjump.noresume)", SECS(600));
            wait_login(&mut m);
            first_pass(&mut m);
            starts += 1;
            let id = healthy(&mut m, &sum, starts);
            assert_ne!(id, boot_id, "kjump.noresume resumed");
            boot_id = id;
            m.ok(HOOK);
            m.ok("rm -f /var/lib/kjump-test-hooks.log");
            (pid, pass) = status(&mut m, &sum);
            eprintln!(
                "{variant}: kjump.noresume boot ran normally ({:.1} s to power-off before it)",
                down.as_secs_f64()
            );
        }
        if extras && n == 1 {
            m.ok(&timer_hook());
        }
        let down = hibernate(&mut m);
        drop(m);
        if extras && n == 1 {
            // The hook ran before the power-off, so the timer is due by
            // TIMER_DELAY_SECS from now (guest and host clocks agree to a
            // second or two, as resume checks): stay off until it is.
            std::thread::sleep(Duration::from_secs(TIMER_DELAY_SECS + 3));
        }
        let cycle = if n == hibernations && hibernations > 1 {
            1
        } else {
            n
        };
        let (back, up, service) = resume(&sys, &sum, cycle, starts, (&boot_id, pid, pass));
        m = back;
        if extras && n == 1 {
            timer_caught_up(&mut m);
        }
        (_, pass) = status(&mut m, &sum);
        eprintln!(
            "{variant} cycle {n}: systemctl hibernate to power-off {:.1} s; power-on to the post hook {:.1} s, to the workload's next pass {:.1} s",
            down.as_secs_f64(),
            up.as_secs_f64(),
            service.as_secs_f64()
        );
        times.push((down, up, service));
    }
    if extras {
        hybrid_sleep_and_wake(&mut m, &sum, &boot_id, starts);
    }
    m.send("systemctl poweroff");
    assert!(m.wait_exit(SECS(300)).success());
    drop(m);
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(format!("{}?offset={}", sys.disk.display(), 1 << 20))
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck -fn of the root after {hibernations} hibernations: {}\n{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    eprintln!("{variant}: e2fsck -fn of the root found nothing after a clean shutdown");
    let _ = std::fs::remove_file(&sys.disk);
}

#[test]
fn debian_initramfs_tools_three_cycles_noresume_and_fsck() {
    // Three cycles, then a kjump.noresume boot and one more.
    cycles("initramfs-tools", 4, false, false);
}

#[test]
fn debian_dracut_refusal_cycle_timer_and_hybrid_sleep() {
    // Kjump configured with a missing target and refused; one cycle, with
    // a timer due while the machine is off; a hybrid sleep woken from RAM.
    cycles("dracut", 1, true, true);
}

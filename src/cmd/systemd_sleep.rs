//! kjump behind systemd's sleep verbs. With the package's drop-ins,
//! systemd-hibernate.service and systemd-hybrid-sleep.service run
//! `kjump systemd-sleep hibernate|hybrid-sleep` where they ran
//! systemd-sleep, so `systemctl hibernate`, logind's HandleLidSwitch= and
//! HandlePowerKey= actions and a desktop's Hibernate button (all through
//! logind) hibernate with kjump, doing what systemd-sleep does around it:
//! the hooks in /usr/lib/systemd/system-sleep run with `pre OPERATION`
//! before the jump and `post OPERATION` after the return, in parallel,
//! their failures ignored, with SYSTEMD_SLEEP_ACTION set.
//!
//! logind offers hibernation only when its own checks pass: the package
//! sets SYSTEMD_BYPASS_HIBERNATION_MEMORY_CHECK=1 for systemd-logind, so
//! that no swap space is asked for, and `kjump check --sleep-conf` (at
//! boot, when kjump.conf changes, and before every hibernation) writes
//! [`SLEEP_CONF`](super::check::sleep_conf::SLEEP_CONF) saying whether kjump can hibernate this machine, so that
//! logind refuses at once, and `systemctl hibernate` fails, when it cannot.
//! With no target in kjump.conf, kjump stays out of the way: the file is
//! removed and systemd's own systemd-sleep runs.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use clap::Args;
use kjump_handoff::manifest::Mode;
use kjump_jump::hibernate::{hibernate, HibernateOptions, Return};

use super::check::sleep_conf::{problems, write_sleep_conf, SLEEP_CONF};
use super::check::{Facts, Settings, CONF, EXIT_CANNOT};
use crate::Failure;

/// systemd-sleep's hook directories, earlier first (Debian has /lib
/// merged into /usr/lib; the second counts only where it is not).
const HOOK_DIRS: [&str; 2] = ["/usr/lib/systemd/system-sleep", "/lib/systemd/system-sleep"];

/// How long the hooks of one phase may run together (systemd-sleep's
/// DEFAULT_TIMEOUT_USEC).
const HOOK_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Args)]
pub struct SleepArgs {
    /// The sleep verb, as systemd-sleep takes it
    #[arg(value_parser = ["hibernate", "hybrid-sleep"])]
    operation: String,
    /// kjump's configuration
    #[arg(long, default_value = CONF)]
    config: PathBuf,
    /// systemd's own systemd-sleep, run when the configuration names no target
    #[arg(long, default_value = "/usr/lib/systemd/systemd-sleep")]
    systemd_sleep: PathBuf,
    /// Directory of sleep hooks (repeatable; default systemd-sleep's)
    #[arg(long = "hooks", value_name = "DIR")]
    hooks: Vec<PathBuf>,
    /// Where to say whether kjump can hibernate, for logind
    #[arg(long, default_value = SLEEP_CONF)]
    sleep_conf: PathBuf,
}

/// The executable hooks in `dirs`, by name, the first directory's first;
/// a directory met twice (a symlink to another) counts once.
fn hooks(dirs: &[PathBuf]) -> Vec<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let mut seen_dirs = Vec::new();
    let mut by_name = BTreeMap::new();
    for dir in dirs {
        let Ok(real) = dir.canonicalize() else {
            continue;
        };
        if seen_dirs.contains(&real) {
            continue;
        }
        seen_dirs.push(real);
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let exec = std::fs::metadata(&path)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
            if exec {
                by_name.entry(e.file_name()).or_insert(path);
            }
        }
    }
    by_name.into_values().collect()
}

/// Runs every hook with `phase operation` in parallel, as systemd-sleep
/// does; a hook that fails or outlives [`HOOK_TIMEOUT`] is reported and
/// ignored (killed, when it is too slow).
pub fn run_hooks(hooks: &[PathBuf], phase: &str, operation: &str) {
    let mut running: Vec<(&PathBuf, Child)> = Vec::new();
    for hook in hooks {
        match Command::new(hook)
            .args([phase, operation])
            .env("SYSTEMD_SLEEP_ACTION", operation)
            .spawn()
        {
            Ok(child) => running.push((hook, child)),
            Err(e) => eprintln!("kjump: sleep hook {} failed to start: {e}", hook.display()),
        }
    }
    let deadline = Instant::now() + HOOK_TIMEOUT;
    while !running.is_empty() {
        running.retain_mut(|(hook, child)| match child.try_wait() {
            Ok(Some(status)) => {
                if !status.success() {
                    eprintln!(
                        "kjump: sleep hook {} {phase} {operation} failed ({status}), ignored",
                        hook.display()
                    );
                }
                false
            }
            Ok(None) if Instant::now() >= deadline => {
                eprintln!(
                    "kjump: sleep hook {} {phase} {operation} still runs after {} s: killed",
                    hook.display(),
                    HOOK_TIMEOUT.as_secs()
                );
                let _ = child.kill();
                let _ = child.wait();
                false
            }
            Ok(None) => true,
            Err(e) => {
                eprintln!("kjump: sleep hook {}: {e}", hook.display());
                false
            }
        });
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Size and state of the image on `target`, for the line logged after a
/// resume.
fn image_summary(target: &Path) -> Result<String, String> {
    let place = kjump_sys::Place::locate(target, None).map_err(|e| e.to_string())?;
    let reader = place.reader().map_err(|e| e.to_string())?;
    let sb = kjump_image_format::reader::read_superblock(&reader).map_err(|e| e.to_string())?;
    Ok(format!(
        "image {} for {} of RAM",
        super::human(sb.layout.image_len),
        super::human(sb.layout.total_pages * kjump_image_format::PAGE_SIZE as u64)
    ))
}

fn mode_for(operation: &str, settings: &Settings) -> Result<Mode, Failure> {
    if operation == "hybrid-sleep" {
        return Ok(Mode::Suspend);
    }
    let then = settings.then.as_deref().unwrap_or("poweroff");
    match Mode::parse(then) {
        Some(Mode::Restore) | None => Err(Failure::error(anyhow::anyhow!(
            "KJUMP_THEN={then:?} in {CONF} is not poweroff, reboot, checkpoint or suspend"
        ))),
        Some(m) => Ok(m),
    }
}

/// `kjump systemd-sleep OPERATION`.
pub fn run(args: &SleepArgs) -> Result<(), Failure> {
    let settings = Settings::read(&args.config)?;
    let Some(target) = settings.target.clone() else {
        write_sleep_conf(&args.sleep_conf, false, &[])?;
        return Err(systemd_sleep(args));
    };
    let mode = mode_for(&args.operation, &settings)?;
    let facts = Facts::gather(&settings);
    let problems = problems(&facts);
    write_sleep_conf(&args.sleep_conf, true, &problems)?;
    if !problems.is_empty() {
        return Err(Failure {
            code: EXIT_CANNOT,
            error: anyhow::anyhow!(
                "this machine cannot hibernate with kjump: {}",
                problems.join("; ")
            ),
        });
    }
    let dirs: Vec<PathBuf> = if args.hooks.is_empty() {
        HOOK_DIRS.iter().map(PathBuf::from).collect()
    } else {
        args.hooks.clone()
    };
    let hooks = hooks(&dirs);
    run_hooks(&hooks, "pre", &args.operation);
    println!(
        "kjump: entering sleep state '{}': saving RAM to {} with kjump, then {}",
        args.operation,
        target.display(),
        mode.name()
    );
    let mut opts = HibernateOptions {
        target: target.clone(),
        kernel: facts.kernel.0.clone(),
        mode,
        kexec: PathBuf::from("kexec"),
        extra: Vec::new(),
        dry_run: false,
        free_memory: false,
        encrypt: None,
        append: Vec::new(),
        force: false,
        prompt_timeout: settings.prompt_timeout,
    };
    let result = match hibernate(&mut opts) {
        Err(e) => Err(Failure::error(
            anyhow::Error::new(e).context("hibernating with kjump"),
        )),
        Ok(None) => Ok(()),
        Ok(Some(back)) => came_back(&back, &args.operation, &target),
    };
    run_hooks(&hooks, "post", &args.operation);
    result
}

/// Nothing for kjump to do: systemd's own hibernation, as without kjump.
/// Returns only when systemd-sleep cannot be run.
fn systemd_sleep(args: &SleepArgs) -> Failure {
    let err = Command::new(&args.systemd_sleep)
        .arg(&args.operation)
        .exec();
    Failure::error(anyhow::anyhow!(
        "{} names no target, and running {} failed: {err}",
        args.config.display(),
        args.systemd_sleep.display()
    ))
}

/// Says what the hibernation `back` from did: resumed from the image on
/// `target`, or not saved at all (an error).
fn came_back(back: &Return, operation: &str, target: &Path) -> Result<(), Failure> {
    for note in &back.notes {
        println!("kjump: {note}");
    }
    match (&back.image, &back.report) {
        (Ok(state), _) => {
            let image = image_summary(target)
                .unwrap_or_else(|e| format!("image {state} (its size unread: {e})"));
            println!(
                "kjump: resumed from {operation}: away {:.1} s, {image}, now {state}",
                back.away.as_secs_f64()
            );
            Ok(())
        }
        (Err(why), report) => {
            Err(Failure::invalid(anyhow::anyhow!(
            "the capture kernel did not save this machine{} ({why}); it jumped back after {:.1} s",
            report.as_ref().map(|r| format!(": {}", r.message)).unwrap_or_default(),
            back.away.as_secs_f64()
        )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_run_in_parallel_with_their_arguments_and_failures_ignored() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("kjump-hooks-{}", std::process::id()));
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let log = dir.join("log");
        let hook = |d: &Path, name: &str, body: &str| {
            let p = d.join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        let line = format!(
            "echo \"$0 $1 $2 $SYSTEMD_SLEEP_ACTION\" >> {}",
            log.display()
        );
        hook(&a, "10-first", &format!("sleep 1; {line}"));
        hook(&a, "20-fails", &format!("{line}; exit 3"));
        hook(&b, "10-first", "echo shadowed >&2; exit 1");
        hook(&b, "30-other", &line);
        std::fs::write(a.join("40-not-executable"), "#!/bin/sh\nexit 1\n").unwrap();
        let found = hooks(&[a.clone(), b.clone(), a.clone()]);
        assert_eq!(
            found,
            [a.join("10-first"), a.join("20-fails"), b.join("30-other")]
        );
        let started = Instant::now();
        run_hooks(&found, "pre", "hibernate");
        // In parallel: the slow hook does not hold the others back, so the
        // fast ones write first.
        assert!(started.elapsed() < Duration::from_secs(3));
        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[2].ends_with("10-first pre hibernate hibernate"),
            "{text}"
        );
        for l in &lines {
            assert!(l.ends_with(" pre hibernate hibernate"), "{text}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn then_action() {
        let mut s = Settings::default();
        assert_eq!(mode_for("hibernate", &s).ok(), Some(Mode::Poweroff));
        assert_eq!(mode_for("hybrid-sleep", &s).ok(), Some(Mode::Suspend));
        s.then = Some("reboot".into());
        assert_eq!(mode_for("hibernate", &s).ok(), Some(Mode::Reboot));
        assert_eq!(mode_for("hybrid-sleep", &s).ok(), Some(Mode::Suspend));
        s.then = Some("restore".into());
        assert!(mode_for("hibernate", &s).is_err());
    }
}

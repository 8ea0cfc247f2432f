//! `kjump check`: whether this machine can hibernate with kjump and, when
//! it cannot, exactly why. The facts are gathered first ([`Facts`]), then
//! judged by a pure function ([`judge`]) that the unit tests drive with
//! made-up machines.

use std::path::{Path, PathBuf};

use clap::Args;
use kjump_handoff::fsguard::UnguardedMounts;
use kjump_handoff::plan::{JumpPlan, HEADER_RESERVE};
use kjump_image_format::{MemoryMap, Metadata};
use kjump_sys::ranges;

use crate::Failure;

mod gather;
pub mod sleep_conf;

/// Exit code of `kjump check` when this machine cannot hibernate with kjump.
pub const EXIT_CANNOT: u8 = 3;

/// kjump's configuration file, read by the units and the initramfs too.
pub const CONF: &str = "/etc/kjump/kjump.conf";

/// Memory the capture kernel needs in its region besides its own image,
/// its initramfs and the ELF header kexec-tools writes: the kernel's
/// allocations at boot and kjump's buffers. An estimate with a margin: the
/// VM tests run with 256 MiB regions, and the capture kernel's image and
/// initramfs take 40 to 50 MiB of that.
pub const WORKING_MEMORY: u64 = 128 << 20;

/// Kernel image size assumed when the bzImage header cannot be read.
const KERNEL_GUESS: u64 = 64 << 20;

#[derive(Args)]
pub struct CheckArgs {
    /// Configuration to read the target and kernel from
    #[arg(long, default_value = CONF)]
    config: PathBuf,
    /// Check this target instead of the configuration's KJUMP_FILE or KJUMP_DEVICE
    #[arg(long)]
    target: Option<PathBuf>,
    /// Check this capture kernel instead of the configuration's KJUMP_KERNEL
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Also write the verdict as a sleep.conf drop-in for logind (kjump-check.service: /run/systemd/sleep.conf.d/kjump.conf); removed when no target is configured
    #[arg(long, value_name = "PATH")]
    sleep_conf: Option<PathBuf>,
}

/// `KEY=VALUE` lines of a shell-style configuration (kjump.conf): comments
/// and blank lines skipped, one level of quotes removed.
pub fn parse_conf(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .map(|(k, v)| {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// The settings kjump.conf gives, empty values as absent.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `KJUMP_FILE`, else `KJUMP_DEVICE`, as the units choose.
    pub target: Option<PathBuf>,
    /// Whether the target is a file target (`KJUMP_FILE`).
    pub file_target: bool,
    /// `KJUMP_KERNEL`.
    pub kernel: Option<PathBuf>,
    /// `KJUMP_THEN`.
    pub then: Option<String>,
    /// `KJUMP_PROMPT_TIMEOUT`: seconds the capture and restore kernels
    /// wait for an answer on the console.
    pub prompt_timeout: Option<u64>,
}

impl Settings {
    /// The settings in kjump.conf's text; a value that cannot be used is
    /// an error naming it.
    pub fn from_conf(text: &str) -> Result<Settings, String> {
        let pairs = parse_conf(text);
        let get = |key: &str| {
            pairs
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .filter(|v| !v.is_empty())
        };
        let file = get("KJUMP_FILE");
        let prompt_timeout = get("KJUMP_PROMPT_TIMEOUT")
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| format!("KJUMP_PROMPT_TIMEOUT={v} is not a number of seconds"))
            })
            .transpose()?;
        Ok(Settings {
            file_target: file.is_some(),
            target: file.or_else(|| get("KJUMP_DEVICE")).map(PathBuf::from),
            kernel: get("KJUMP_KERNEL").map(PathBuf::from),
            then: get("KJUMP_THEN"),
            prompt_timeout,
        })
    }

    /// Reads `path`; a missing file gives no settings.
    pub fn read(path: &Path) -> Result<Settings, Failure> {
        match std::fs::read_to_string(path) {
            Ok(text) => Settings::from_conf(&text)
                .map_err(|why| Failure::error(anyhow::anyhow!("{}: {why}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Settings::default()),
            Err(e) => Err(Failure::error(anyhow::anyhow!(
                "reading {}: {e}",
                path.display()
            ))),
        }
    }
}

/// What was learnt about CONFIG_KEXEC_JUMP in the running kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JumpSupport {
    /// A preserve-context kexec_load was accepted (and unloaded).
    Probed,
    /// The probe failed with this reason.
    ProbeFailed(String),
    /// Not probed (why); the kernel's config file says yes or no.
    Config {
        /// Why no probe.
        why: String,
        /// The config file read.
        path: String,
        /// Whether it has CONFIG_KEXEC_JUMP=y.
        set: bool,
    },
    /// Neither probed nor found in a config file.
    Unknown(String),
}

/// Where an image would go, and how much room it has there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetState {
    /// No target is configured.
    Unset,
    /// The device or file (and, for a file, its directory) does not exist.
    Missing(PathBuf),
    /// It cannot take an image (in use, not a device or file): why.
    Unusable(PathBuf, String),
    /// Bytes an image may take there.
    Room(PathBuf, u64),
}

/// Everything `kjump check` looks at, read from the running system.
#[derive(Debug, Clone)]
pub struct Facts {
    /// /proc/sys/kernel/osrelease.
    pub release: String,
    /// The running kernel and KEXEC_JUMP.
    pub jump: JumpSupport,
    /// /sys/kernel/security/lockdown, when present.
    pub lockdown: Option<String>,
    /// Whether the firmware says Secure Boot is on.
    pub secure_boot: Option<bool>,
    /// /proc/sys/kernel/kexec_load_disabled.
    pub kexec_load_disabled: bool,
    /// /proc/sys/kernel/kexec_load_limit_reboot (Linux 6.6 and later).
    pub kexec_load_limit: Option<i64>,
    /// /proc/iomem.
    pub iomem: String,
    /// Whether /proc/cmdline asks for a crashkernel= reservation.
    pub crashkernel_asked: bool,
    /// The capture kernel and its image size in memory (bzImage init_size).
    pub kernel: (PathBuf, Option<u64>),
    /// Bytes of kjump's own binary, the bulk of the capture initramfs.
    pub initramfs: u64,
    /// The kexec binary, when found.
    pub kexec: Option<PathBuf>,
    /// The target, judged against [`Facts::saved`].
    pub target: TargetState,
    /// Mounted filesystems the capture kernel cannot read for the
    /// stale-filesystem guard (on device-mapper or md).
    pub unguarded: UnguardedMounts,
}

/// One line of the verdict: what was checked, and the problem if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What was checked, one word.
    pub what: &'static str,
    /// What was found.
    pub said: String,
    /// Whether it stops kjump from hibernating.
    pub blocks: bool,
}

impl Finding {
    fn ok(what: &'static str, said: impl Into<String>) -> Self {
        Finding {
            what,
            said: said.into(),
            blocks: false,
        }
    }

    fn problem(what: &'static str, said: impl Into<String>) -> Self {
        Finding {
            what,
            said: said.into(),
            blocks: true,
        }
    }
}

fn mib(n: u64) -> u64 {
    n.div_ceil(1 << 20)
}

/// The RAM a hibernation saves: System RAM outside the crashkernel region
/// (all of it when there is none yet).
pub fn saved_ram(iomem: &str) -> MemoryMap {
    match JumpPlan::from_iomem(iomem) {
        Ok(plan) => plan.saved,
        Err(_) => MemoryMap::merged(ranges::parse_iomem("/proc/iomem", iomem).unwrap_or_default()),
    }
}

/// Bytes an image of `saved` may take at worst, unencrypted: `kjump
/// check` does not know whether hibernations will pass --encrypt, and
/// `kjump hibernate --encrypt` checks the larger sealed worst case itself.
pub fn worst_case(saved: &MemoryMap) -> u64 {
    let metadata = Metadata {
        ranges: saved.clone(),
        ..Metadata::default()
    };
    kjump_image_format::worst_case_len(&metadata, false).unwrap_or(u64::MAX)
}

/// Bytes the crashkernel region needs: the capture kernel's image, its
/// initramfs, the ELF header kexec-tools puts at the top, the capture
/// kernel's working memory, and the chunk index the capture builds (and a
/// restore reads back) for `saved` bytes of RAM, once for each side.
pub fn region_needed(kernel: Option<u64>, initramfs: u64, saved: u64) -> u64 {
    let chunks =
        saved.div_ceil((kjump_image_format::CHUNK_PAGES * kjump_image_format::PAGE_SIZE) as u64);
    let index = chunks * kjump_image_format::INDEX_ENTRY_SIZE as u64;
    kernel.unwrap_or(KERNEL_GUESS) + initramfs + HEADER_RESERVE + WORKING_MEMORY + 2 * index
}

fn judge_kernel(f: &Facts) -> Finding {
    const W: &str = "kernel";
    match &f.jump {
        JumpSupport::Probed => Finding::ok(
            W,
            format!(
                "Linux {} takes a preserve-context kexec_load (CONFIG_KEXEC_JUMP)",
                f.release
            ),
        ),
        JumpSupport::ProbeFailed(why) => Finding::problem(W, format!("Linux {}: {why}", f.release)),
        JumpSupport::Config { why, path, set: true } => Finding::ok(
            W,
            format!("{path} has CONFIG_KEXEC_JUMP=y (not probed: {why})"),
        ),
        JumpSupport::Config { path, .. } => Finding::problem(
            W,
            format!("the running kernel lacks CONFIG_KEXEC_JUMP ({path}): boot a kernel built with it (README, Kernels)"),
        ),
        JumpSupport::Unknown(why) => Finding::ok(
            W,
            format!("whether Linux {} has CONFIG_KEXEC_JUMP is unknown ({why}); hibernate probes it", f.release),
        ),
    }
}

fn judge_lockdown(f: &Facts) -> Finding {
    const W: &str = "lockdown";
    let sb = match f.secure_boot {
        Some(true) => ", Secure Boot is on",
        _ => "",
    };
    match &f.lockdown {
        Some(l) if !l.contains("[none]") => Finding::problem(
            W,
            format!(
                "the kernel is locked down ({}{sb}): kexec_load and /dev/mem are refused; turn Secure Boot off or boot with lockdown=none where the kernel allows it",
                l.trim()
            ),
        ),
        Some(_) => Finding::ok(W, format!("none{sb}")),
        None => Finding::ok(W, format!("no lockdown in this kernel{sb}")),
    }
}

fn judge_kexec_load(f: &Facts) -> Finding {
    const W: &str = "kexec_load";
    if f.kexec_load_disabled {
        return Finding::problem(
            W,
            "disabled (sysctl kernel.kexec_load_disabled=1, which stays until the next boot)",
        );
    }
    if f.kexec_load_limit == Some(0) {
        return Finding::problem(
            W,
            "no loads left (sysctl kernel.kexec_load_limit_reboot=0, which stays until the next boot)",
        );
    }
    match &f.kexec {
        None => Finding::problem(W, "kexec not found: install kexec-tools"),
        Some(k) => Finding::ok(
            W,
            format!("not disabled by sysctl; kexec-tools at {}", k.display()),
        ),
    }
}

fn judge_region(f: &Facts, saved: &MemoryMap) -> Finding {
    const W: &str = "crashkernel";
    let plan = match JumpPlan::from_iomem(&f.iomem) {
        Ok(plan) => plan,
        Err(_) if f.crashkernel_asked => {
            return Finding::problem(
                W,
                "the kernel command line asks for crashkernel= but no region is reserved (\"Crash kernel\" missing from /proc/iomem; dmesg says why): try crashkernel=256M",
            )
        }
        Err(_) => {
            return Finding::problem(
                W,
                "no crashkernel= region is reserved: add crashkernel=256M to the kernel command line (GRUB_CMDLINE_LINUX in /etc/default/grub, then update-grub) and reboot",
            )
        }
    };
    let have = plan.region.len();
    let need = region_needed(f.kernel.1, f.initramfs, saved.total_bytes());
    if have < need {
        return Finding::problem(
            W,
            format!(
                "the crashkernel region {} holds {} MiB, and the capture kernel needs about {} MiB for this machine's {} MiB of RAM: boot with crashkernel={}M",
                plan.region,
                mib(have),
                mib(need),
                mib(saved.total_bytes()),
                mib(need).next_multiple_of(64)
            ),
        );
    }
    Finding::ok(
        W,
        format!(
            "{} MiB at {} (about {} MiB needed)",
            mib(have),
            plan.region,
            mib(need)
        ),
    )
}

fn judge_target(f: &Facts, worst: u64) -> Finding {
    const W: &str = "target";
    match &f.target {
        TargetState::Unset => Finding::problem(
            W,
            format!("none configured: set KJUMP_DEVICE or KJUMP_FILE in {CONF}"),
        ),
        TargetState::Missing(p) => Finding::problem(W, format!("{} does not exist", p.display())),
        TargetState::Unusable(p, why) if why.contains(&*p.to_string_lossy()) => {
            Finding::problem(W, why.clone())
        }
        TargetState::Unusable(p, why) => Finding::problem(W, format!("{}: {why}", p.display())),
        TargetState::Room(p, room) if *room < worst => Finding::problem(
            W,
            format!(
                "{} has room for {} MiB, and an image of this machine's RAM can take up to {} MiB",
                p.display(),
                room >> 20,
                mib(worst)
            ),
        ),
        TargetState::Room(p, room) => Finding::ok(
            W,
            format!(
                "{}: room for {} MiB, at most {} MiB needed",
                p.display(),
                room >> 20,
                mib(worst)
            ),
        ),
    }
}

fn judge_capture_kernel(f: &Facts) -> Finding {
    const W: &str = "capture";
    let (path, init_size) = &f.kernel;
    if !path.is_file() {
        return Finding::problem(
            W,
            format!(
                "capture kernel {} not found (KJUMP_KERNEL in {CONF})",
                path.display()
            ),
        );
    }
    match init_size {
        Some(n) => Finding::ok(
            W,
            format!("kernel {} ({} MiB in memory)", path.display(), mib(*n)),
        ),
        None => Finding::problem(W, format!("{} is not an x86 bzImage", path.display())),
    }
}

fn judge_filesystems(f: &Facts) -> Finding {
    const W: &str = "filesystems";
    match f.unguarded.0.is_empty() {
        true => Finding::ok(
            W,
            "none mounted from device-mapper or md: the capture kernel can read each to guard it",
        ),
        false => Finding::problem(W, f.unguarded.to_string()),
    }
}

/// Judges the facts: one finding per thing checked.
pub fn judge(f: &Facts) -> Vec<Finding> {
    let saved = saved_ram(&f.iomem);
    let worst = worst_case(&saved);
    vec![
        judge_kernel(f),
        judge_lockdown(f),
        judge_kexec_load(f),
        judge_region(f, &saved),
        judge_capture_kernel(f),
        judge_target(f, worst),
        judge_filesystems(f),
    ]
}

/// The size the kernel takes in memory, from a bzImage's setup header
/// (`init_size`, boot protocol 2.10 and later), or `None` when `image` is
/// not one.
pub fn bzimage_init_size(image: &[u8]) -> Option<u64> {
    let u16_at = |at: usize| Some(u16::from_le_bytes(image.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(image.get(at..at + 4)?.try_into().ok()?));
    if image.get(0x202..0x206)? != b"HdrS" || u16_at(0x206)? < 0x020a {
        return None;
    }
    Some(u64::from(u32_at(0x260)?))
}

/// Prints the findings; `Ok` when none blocks.
fn report(facts: &Facts, findings: &[Finding]) -> Result<(), Failure> {
    let saved = saved_ram(&facts.iomem);
    println!(
        "kjump check: Linux {}, {} MiB of RAM to save",
        facts.release,
        mib(saved.total_bytes())
    );
    for f in findings {
        let mark = if f.blocks { "FAIL" } else { "ok" };
        println!("{mark:<5} {:<12} {}", f.what, f.said);
    }
    let problems: Vec<String> = findings
        .iter()
        .filter(|f| f.blocks)
        .map(|f| format!("{}: {}", f.what, f.said))
        .collect();
    if problems.is_empty() {
        println!("this machine can hibernate with kjump");
        return Ok(());
    }
    Err(Failure {
        code: EXIT_CANNOT,
        error: anyhow::anyhow!(
            "this machine cannot hibernate with kjump: {}",
            problems.join("; ")
        ),
    })
}

/// The settings to check: the configuration's, with the command line's
/// overrides.
fn settings(args: &CheckArgs) -> Result<Settings, Failure> {
    let mut settings = Settings::read(&args.config)?;
    if let Some(t) = &args.target {
        settings.file_target = !std::fs::metadata(t)
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()));
        settings.target = Some(t.clone());
    }
    if let Some(k) = &args.kernel {
        settings.kernel = Some(k.clone());
    }
    Ok(settings)
}

/// `kjump check`.
pub fn run(args: &CheckArgs) -> Result<(), Failure> {
    let root = std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata("/proc/self")
            .map_err(|e| Failure::error(anyhow::anyhow!("reading /proc/self: {e}")))?,
    ) == 0;
    if !root {
        return Err(Failure::error(anyhow::anyhow!(
            "kjump check needs root: it probes the kernel with a kexec_load, reads the addresses in /proc/iomem and opens the target exclusively (sudo kjump check)"
        )));
    }
    let settings = settings(args)?;
    let facts = Facts::gather(&settings);
    if let Some(path) = &args.sleep_conf {
        let problems = sleep_conf::problems(&facts);
        sleep_conf::write_sleep_conf(path, settings.target.is_some(), &problems)?;
    }
    report(&facts, &judge(&facts))
}

#[cfg(test)]
mod tests;

//! Reading the [`Facts`] `kjump check` judges from the running system.

use std::path::{Path, PathBuf};

use kjump_sys::kexec::{self, KexecError};
use kjump_sys::swap::SwapArea;
use kjump_sys::{Place, Target};

use super::{bzimage_init_size, Facts, JumpSupport, Settings, TargetState};

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// Whether the running kernel has CONFIG_KEXEC_JUMP: probed with a
/// preserve-context kexec_load of a one-page payload that is unloaded at
/// once, as `hibernate` does, unless a kexec image is loaded (the probe
/// would replace it); then, or when the probe is refused for another
/// reason (lockdown, a sysctl), from /boot/config-RELEASE.
fn jump_support(release: &str) -> JumpSupport {
    let loaded = kexec::image_loaded();
    let why = if loaded {
        "a kexec image is loaded, which a probe would replace".to_string()
    } else {
        match kexec::probe_preserve_context() {
            Ok(()) => return JumpSupport::Probed,
            Err(KexecError::LoadPayload { source, hint })
                if kexec::refuses_preserve_context(&source) =>
            {
                return JumpSupport::ProbeFailed(format!(
                    "kexec_load refused a preserve-context load: {hint}"
                ));
            }
            Err(e) => format!("the probe failed: {}", kjump_handoff::error_chain(&e)),
        }
    };
    let path = format!("/boot/config-{release}");
    match read(&path) {
        Some(c) => JumpSupport::Config {
            why,
            set: c.lines().any(|l| l.trim() == "CONFIG_KEXEC_JUMP=y"),
            path,
        },
        None => JumpSupport::Unknown(format!("{why}, and {path} is missing")),
    }
}

/// The firmware's SecureBoot variable, when this is an EFI boot.
fn secure_boot() -> Option<bool> {
    let var = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";
    // 4 bytes of attributes, then the value.
    std::fs::read(var).ok()?.get(4).map(|v| *v == 1)
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Where an image would go and how much it may take there, as
/// `hibernate` finds it, without changing anything: a block device held
/// by nobody (an active swap area is swapped off at hibernation, so its
/// size counts), or a file with the free space of its filesystem.
pub fn target_state(path: Option<&Path>, file_target: bool) -> TargetState {
    let Some(p) = path else {
        return TargetState::Unset;
    };
    let unusable = |why: String| TargetState::Unusable(p.to_path_buf(), why);
    let meta = match std::fs::metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = p.parent().filter(|d| !d.as_os_str().is_empty());
            return match dir.and_then(kjump_sys::block::free_space_in) {
                Some(free) if file_target => TargetState::Room(p.to_path_buf(), free),
                _ if file_target => TargetState::Missing(dir.unwrap_or(p).to_path_buf()),
                _ => TargetState::Missing(p.to_path_buf()),
            };
        }
        Err(e) => return unusable(e.to_string()),
    };
    let place = match Place::locate(p, None) {
        Ok(place) => place,
        Err(e) => return unusable(kjump_handoff::error_chain(&e)),
    };
    let block = std::os::unix::fs::FileTypeExt::is_block_device(&meta.file_type());
    if block {
        if let Err(e) = kjump_sys::place::refuse_foreign(&place) {
            return unusable(e.to_string());
        }
    }
    let active = block && SwapArea::of(&place).is_some_and(|swap| swap.is_active());
    let size = if active {
        kjump_sys::place::device_size(p).map_err(|e| kjump_handoff::error_chain(&e))
    } else {
        Target::open_check(p).map(|n| n.unwrap_or(0)).map_err(|e| {
            let why = kjump_handoff::error_chain(&e);
            if block {
                format!("in use (mounted, or held open by another program): {why}")
            } else {
                why
            }
        })
    };
    match size {
        Ok(size) if block => TargetState::Room(
            p.to_path_buf(),
            place.placement.segments(size).iter().map(|s| s.len).sum(),
        ),
        Ok(size) => TargetState::Room(p.to_path_buf(), size),
        Err(why) => unusable(why),
    }
}

impl Facts {
    /// Reads the facts for `settings`; `kernel` and `target` override its
    /// KJUMP_KERNEL and target.
    pub fn gather(settings: &Settings) -> Facts {
        let release = read("/proc/sys/kernel/osrelease")
            .map(|r| r.trim().to_string())
            .unwrap_or_default();
        let kernel = settings
            .kernel
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/boot/vmlinuz-{release}")));
        let head = std::fs::File::open(&kernel).and_then(|f| {
            use std::io::Read as _;
            let mut head = Vec::with_capacity(0x1000);
            f.take(0x1000).read_to_end(&mut head)?;
            Ok(head)
        });
        let init_size = head.ok().and_then(|h| bzimage_init_size(&h));
        Facts {
            jump: jump_support(&release),
            lockdown: kexec::lockdown_modes(),
            secure_boot: secure_boot(),
            kexec_load_disabled: kexec::load_disabled(),
            kexec_load_limit: kexec::load_limit_reboot(),
            iomem: read("/proc/iomem").unwrap_or_default(),
            crashkernel_asked: read("/proc/cmdline").is_some_and(|c| {
                c.split_ascii_whitespace()
                    .any(|w| w.starts_with("crashkernel="))
            }),
            kernel: (kernel, init_size),
            initramfs: std::env::current_exe()
                .and_then(std::fs::metadata)
                .map_or(8 << 20, |m| m.len()),
            kexec: which("kexec"),
            target: target_state(settings.target.as_deref(), settings.file_target),
            unguarded: kjump_handoff::fsguard::unguarded(
                &read("/proc/self/mountinfo").unwrap_or_default(),
            ),
            release,
        }
    }
}

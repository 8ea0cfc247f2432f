//! B, the capture kernel: the saved kernel's RAM to the target.

use std::path::Path;

use kjump_handoff::manifest::{Manifest, SecretKind};
use kjump_handoff::{claim, fsguard};
use kjump_image_format::{Kdf, Metadata};
use kjump_sys::{Place, Target};
use kjump_writer::{capture, capture_encrypted, CaptureOptions, Encryption, MemorySource};

use crate::{say, InitError, Plan};

/// Captures the RAM the manifest names from /dev/mem and commits the
/// image; `entry` is where the saved kernel re-enters.
pub(crate) fn capture_phase(manifest: &Manifest, entry: u64) -> Result<Plan, InitError> {
    say(format_args!(
        "saving {} bytes of RAM of kernel {} to {}",
        manifest.ram.total_bytes(),
        manifest.kernel_release,
        manifest.target.display()
    ));
    let source = MemorySource::open(Path::new("/dev/mem"), Some(manifest.ram.clone()))?;
    let metadata = metadata(manifest, &source, entry);
    let place = Place::locate(&manifest.target, manifest.target_offset)?;
    claim::check(&place, manifest.image_uuid, manifest.placement)?;
    say(format_args!("writing the image to {}", place.describe()));
    let mut target = Target::open_place(&place)?;
    target.set_swap_was_active(manifest.swap_was_active);
    let mut opts = CaptureOptions::new();
    if let Some(uuid) = manifest.image_uuid {
        opts.uuid = uuid.0;
    }
    let report = match manifest.encrypt {
        None => capture(&source, &target, &metadata, &opts)?,
        Some(kind) => {
            let secret = crate::secret::take_secret(kind)?;
            let kdf = match kind {
                SecretKind::KeyFile => Kdf::KeyFile,
                SecretKind::Passphrase => kjump_image_format::crypto::DEFAULT_KDF,
            };
            say("the image is encrypted (AES-256-GCM)");
            let enc = Encryption {
                secret: &secret,
                kdf,
            };
            capture_encrypted(&source, &target, &metadata, &opts, &enc)?
        }
    };
    let secs = report.elapsed.as_secs_f64();
    say(format_args!(
        "image committed: {} pages ({} zero), {} bytes in {secs:.2} s ({:.0} MB/s)",
        report.layout.total_pages,
        report.layout.zero_pages,
        report.layout.image_len,
        report.input_bytes as f64 / secs.max(1e-9) / 1e6
    ));
    Ok(Plan {
        mode: manifest.mode,
        entry,
    })
}

/// The image's metadata: what the source says, the saved kernel's release
/// and re-entry point, what the manifest asks to record, and the on-disk
/// state of the saved kernel's filesystems for the stale-filesystem guard
/// of the resume.
fn metadata(manifest: &Manifest, source: &MemorySource, entry: u64) -> Metadata {
    let mut metadata = source.metadata();
    metadata.kernel_release = Some(manifest.kernel_release.clone());
    metadata.jump_back_entry = Some(entry);
    let extra = [
        ("mode", manifest.mode.name().to_string()),
        (
            kjump_image_format::metadata::KEY_REGION,
            manifest.region.to_string(),
        ),
        ("started-ns", manifest.started_ns.to_string()),
    ];
    metadata
        .extra
        .extend(extra.into_iter().map(|(k, v)| (k.to_string(), v)));
    for dev in &manifest.filesystems {
        let fp = fsguard::fingerprint(dev)
            .unwrap_or_else(|e| format!("unreadable in the capture kernel: {e}"));
        say(format_args!("filesystem on {}: {fp}", dev.display()));
        metadata
            .extra
            .push((format!("{}{}", fsguard::META_PREFIX, dev.display()), fp));
    }
    metadata
}

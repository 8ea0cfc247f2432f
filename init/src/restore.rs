//! R, the restore kernel: the image on the target back into memory.

use std::path::Path;

use kjump_handoff::manifest::Manifest;
use kjump_image_format::MemoryMap;
use kjump_restorer::restore::{restore_with_key, Pin};
use kjump_sys::{ranges, Place};

use crate::{read, say, InitError, Plan, State};

/// Restores the image the manifest names, once it is found to be the
/// image R0 checked; gives up the hand-back to the normal boot once
/// memory is being written.
pub(crate) fn restore_phase(manifest: &Manifest, state: &mut State) -> Result<Plan, InitError> {
    let iomem = read(Path::new("/proc/iomem"))?;
    let own = ranges::parse_iomem("/proc/iomem", &iomem).map_err(InitError::OwnRam)?;
    if manifest.kernel_release.is_empty() {
        say(format_args!("restoring {}", manifest.target.display()));
    } else {
        say(format_args!(
            "restoring {} (kernel {})",
            manifest.target.display(),
            manifest.kernel_release
        ));
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if let Ok(m) = kjump_sys::freemem::MemInfo::read() {
        // What this kernel and its initramfs left of the region, which
        // kjump's restore budget (restorer::budget) estimates up front.
        say(format_args!(
            "memory: {} MiB of {} MiB to spare (MemAvailable of MemTotal)",
            m.available >> 20,
            m.total >> 20
        ));
    }
    let place = Place::locate(&manifest.target, manifest.target_offset)?;
    let secret = match manifest.encrypt {
        None => None,
        Some(kind) => Some(crate::secret::restore_secret(manifest, kind, &place)?),
    };
    let pin = pin(manifest)?;
    say(format_args!(
        "reading each chunk once, checking it and writing its pages ({:.0} MB of memory)",
        manifest.ram.total_bytes() as f64 / 1e6
    ));
    let report = restore_with_key(
        &place,
        Path::new("/dev/mem"),
        &MemoryMap::merged(own),
        threads,
        secret.as_ref(),
        Some(&pin),
    )
    .inspect_err(|e| {
        if !e.memory_untouched() {
            state.hand_back = None;
        }
    })?;
    drop(secret);
    state.hand_back = None;
    let mb = report.bytes as f64 / 1e6;
    let secs = report.write.as_secs_f64();
    say(format_args!(
        "restored {mb:.0} MB of memory in {secs:.2} s ({:.0} MB/s), reading {:.0} MB of image once",
        mb / secs.max(1e-9),
        report.image_bytes as f64 / 1e6
    ));
    match &report.not_consumed {
        None => say("image marked consumed"),
        Some(e) => say(format_args!(
            "memory is whole, but marking the image consumed failed ({e}); the saved kernel marks it when it runs again"
        )),
    }
    Ok(Plan {
        mode: kjump_handoff::manifest::Mode::Restore,
        entry: report.entry,
    })
}

/// What R0 checked, from the manifest: the image must still be that
/// image, with the ranges and the region R is confined by.
fn pin(manifest: &Manifest) -> Result<Pin, InitError> {
    let uuid = manifest.image_uuid.ok_or(InitError::NoUuid)?;
    Ok(Pin {
        uuid: uuid.0,
        ranges: manifest.ram.clone(),
        region: manifest.region,
        encrypted: manifest.encrypt.is_some(),
    })
}

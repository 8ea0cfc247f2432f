//! `kjump discard` and `kjump prepare`.

use std::path::Path;

use anyhow::Context;
use kjump_handoff::plan::JumpPlan;
use kjump_image_format::reader::read_superblock;
use kjump_image_format::{Metadata, Placement, BLOCK_SIZE};
use kjump_sys::swap::SwapArea;
use kjump_sys::Target;

use super::{human, ImageAt};
use crate::Failure;

/// Invalidates the image at `at`: its superblock block is zeroed, so no
/// kjump reads an image there again, and a swap area gets its swap
/// signature back. Refuses, changing nothing, where there is no kjump
/// image (a device that holds something else is not touched).
pub fn discard(at: &ImageAt) -> Result<(), Failure> {
    let (place, reader) = at.open()?;
    let shown = place.describe();
    let target = || Target::open_place(&place).map_err(Failure::error);
    let held = matches!(place.placement, Placement::Swap(sig) if sig.is_held());
    let was_active = match read_superblock(&reader) {
        Ok(sb) => {
            let t = target()?;
            t.write_at_zeroed(BLOCK_SIZE, 0).map_err(Failure::error)?;
            t.sync().map_err(Failure::error)?;
            let was_active = t.release().map_err(Failure::error)?;
            println!(
                "discarded the {} image on {shown}; it will not be resumed",
                sb.state.name()
            );
            was_active
        }
        Err(e) if held => {
            // A capture cut off before its first superblock: the swap area
            // is held for nothing.
            let was_active = target()?.release().map_err(Failure::error)?;
            println!("no image on {shown} ({e}); its swap signature is restored");
            was_active
        }
        Err(e) => {
            return Err(Failure::invalid(
                anyhow::Error::new(e)
                    .context(format!("no kjump image on {shown}: nothing discarded")),
            ))
        }
    };
    let dev = place.holder.display();
    if was_active {
        // It was swapped on when the image was written: as it was.
        SwapArea::new(&place.holder)
            .swap_on()
            .map_err(Failure::error)?;
        println!("{dev} is a swap area again, swapped on as before the hibernation");
    } else if matches!(place.placement, Placement::Swap(_)) {
        println!("{dev} is a swap area again (swapon it)");
    }
    Ok(())
}

/// Allocates a file target with room for `size` bytes of image, or the
/// worst case for this machine's RAM, and prints how to find it at resume.
/// The worst case is an unencrypted image's: `kjump hibernate --encrypt`
/// grows the file to the sealed worst case before it writes.
pub fn prepare(file: &Path, size: Option<u64>) -> Result<(), Failure> {
    let size = match size {
        Some(s) => s,
        None => {
            let iomem = std::fs::read_to_string("/proc/iomem")
                .context("reading /proc/iomem")
                .map_err(Failure::error)?;
            let plan = JumpPlan::from_iomem(&iomem).map_err(Failure::error)?;
            let metadata = Metadata {
                ranges: plan.saved,
                ..Metadata::default()
            };
            kjump_image_format::worst_case_len(&metadata, false)
                .context("the worst-case image size overflows")
                .map_err(Failure::error)?
        }
    };
    let place = kjump_sys::place::prepare_file(file, size).map_err(Failure::error)?;
    let Placement::Extents(map) = &place.placement else {
        unreachable!("prepare_file returns a file's extents")
    };
    println!(
        "prepared {}: {} for the image in {} extents on {}, extent map at offset {:#x}",
        file.display(),
        human(map.file_len - map.map_len),
        map.extents.len(),
        place.holder.display(),
        map.map_at()
    );
    println!(
        "resume from it with: kjump resume --device {} --offset {:#x}",
        place.holder.display(),
        map.map_at()
    );
    Ok(())
}

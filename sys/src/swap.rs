//! A swap partition that holds an image, from hold to give-back.
//!
//! The image goes after the area's 4 KiB header. Its life:
//! 1. The saved kernel (A), when the area is swapped on: checks that the
//!    pages swapped out to it fit in RAM ([`shortfall`]) and swaps it off
//!    ([`SwapArea::swap_off`]); a failure before the jump swaps it on again.
//! 2. The capture kernel, before the image's first byte: sets the swap
//!    signature aside for kjump's, so that `swapon` refuses the area, noting
//!    whether it was swapped on ([`SwapArea::hold`]).
//! 3. Whoever retires the image (the restore kernel marking it consumed,
//!    `kjump discard`, the saved kernel after a failed capture or a wake
//!    from suspend): writes the swap signature back ([`SwapArea::give_back`]).
//! 4. The saved kernel once it runs again, or `kjump discard`: swaps the
//!    area on again when it was swapped on before ([`SwapArea::swap_on`],
//!    [`SwapArea::return_to_swap`]); after a checkpoint it stays off,
//!    holding the image, until `kjump discard`.

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use kjump_image_format::placement::{
    swap_signature, SwapSignature, SWAP_HEADER_LEN, SWAP_MAGIC_OFFSET,
};
use kjump_image_format::Placement;

use crate::freemem::MemInfo;
use crate::place::{io, Place, PlaceError};

/// A swap partition that holds, held or may hold an image.
#[derive(Clone, Debug)]
pub struct SwapArea {
    device: PathBuf,
}

impl SwapArea {
    /// The swap area `device`.
    pub fn new(device: &Path) -> SwapArea {
        SwapArea {
            device: device.to_path_buf(),
        }
    }

    /// The swap area an image's place is, if it is one.
    pub fn of(place: &Place) -> Option<SwapArea> {
        matches!(place.placement, Placement::Swap(_)).then(|| SwapArea::new(&place.holder))
    }

    /// The device.
    pub fn device(&self) -> &Path {
        &self.device
    }

    /// Whether the kernel swaps to it now (it is listed in /proc/swaps).
    pub fn is_active(&self) -> bool {
        swaps_entry(&self.device).is_some()
    }

    /// Bytes of swapped-out pages on it (the `Used` column of
    /// /proc/swaps), or `None` when it is not active.
    pub fn used_bytes(&self) -> Option<u64> {
        let fields = swaps_entry(&self.device)?;
        fields.get(3)?.parse::<u64>().ok().map(|kib| kib * 1024)
    }

    /// Stops swapping to it (swapoff(2)): the kernel reads every page
    /// swapped out there back into RAM first.
    pub fn swap_off(&self) -> Result<(), PlaceError> {
        let c = c_path(&self.device)?;
        // SAFETY: `c` is a NUL-terminated path that outlives the call, which
        // only reads it.
        let rc = unsafe { libc::swapoff(c.as_ptr()) };
        if rc != 0 {
            return Err(io("swapping off", &self.device)(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Swaps to it again (swapon(2), default priority).
    pub fn swap_on(&self) -> Result<(), PlaceError> {
        let c = c_path(&self.device)?;
        // SAFETY: as in swap_off: a NUL-terminated path, only read.
        let rc = unsafe { libc::swapon(c.as_ptr(), 0) };
        if rc != 0 {
            return Err(io("swapping on", &self.device)(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Marks the area as holding an image, so that `swapon` refuses it,
    /// noting whether it was swapped on before. Returns whether the
    /// signature changed.
    pub fn hold(&self, was_active: bool) -> Result<bool, PlaceError> {
        let to = if was_active {
            SwapSignature::HeldWasActive
        } else {
            SwapSignature::Held
        };
        Ok(self.set_signature(to)? != to)
    }

    /// Gives the area back to swap: writes its swap signature back. `None`
    /// when it was not held; else whether it was swapped on when kjump took
    /// it, so that the caller swaps it on again.
    pub fn give_back(&self) -> Result<Option<bool>, PlaceError> {
        let was = self.set_signature(SwapSignature::Free)?;
        Ok(was.is_held().then_some(was == SwapSignature::HeldWasActive))
    }

    /// Gives the area back and swaps it on again, as it was before the
    /// saved kernel swapped it off.
    pub fn return_to_swap(&self) -> Result<(), PlaceError> {
        self.give_back()?;
        self.swap_on()
    }

    /// Rewrites the signature of the swap header; returns the one it had.
    fn set_signature(&self, to: SwapSignature) -> Result<SwapSignature, PlaceError> {
        let device = &self.device;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(device)
            .map_err(io("opening", device))?;
        let mut head = vec![0u8; SWAP_HEADER_LEN as usize];
        FileExt::read_exact_at(&f, &mut head, 0)
            .map_err(io("reading the swap header of", device))?;
        let now = swap_signature(&head).ok_or_else(|| PlaceError::Unsupported {
            path: device.to_path_buf(),
            why: "its swap header has no swap signature any more".into(),
        })?;
        if now == to {
            return Ok(now);
        }
        f.write_all_at(to.magic(), SWAP_MAGIC_OFFSET as u64)
            .map_err(io("writing the swap signature of", device))?;
        f.sync_data()
            .map_err(io("flushing the swap signature of", device))?;
        Ok(now)
    }
}

/// Bytes of RAM missing to swap off an area holding `used` bytes of
/// swapped-out pages, keeping the kernel a margin (5% of RAM, at least
/// 64 MiB); `None` when it fits.
pub fn shortfall(used: u64, mem: &MemInfo) -> Option<u64> {
    let margin = (mem.total / 20).max(64 << 20);
    let need = used.saturating_add(margin);
    (need > mem.available).then(|| need - mem.available)
}

/// The fields of `path`'s line in /proc/swaps (a device, or a swap file),
/// when it is listed there.
fn swaps_entry(path: &Path) -> Option<Vec<String>> {
    let text = std::fs::read_to_string("/proc/swaps").ok()?;
    let want = std::fs::metadata(path).ok()?;
    let same = |m: &std::fs::Metadata| {
        if want.file_type().is_block_device() {
            m.file_type().is_block_device() && m.rdev() == want.rdev()
        } else {
            m.dev() == want.dev() && m.ino() == want.ino()
        }
    };
    text.lines().skip(1).find_map(|l| {
        let fields: Vec<String> = l.split_whitespace().map(String::from).collect();
        let name = fields.first()?.replace("\\040", " ");
        std::fs::metadata(&name)
            .is_ok_and(|m| same(&m))
            .then_some(fields)
    })
}

fn c_path(path: &Path) -> Result<std::ffi::CString, PlaceError> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| PlaceError::Unsupported {
        path: path.to_path_buf(),
        why: "the path holds a NUL byte".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swapoff_needs_room_for_the_swapped_pages_and_a_margin() {
        let mem = MemInfo {
            total: 1 << 30,
            free: 300 << 20,
            available: 500 << 20,
            cached: 0,
        };
        // 1 GiB of RAM: a 64 MiB margin (5% is 51 MiB).
        assert_eq!(shortfall(0, &mem), None);
        assert_eq!(shortfall(436 << 20, &mem), None);
        assert_eq!(shortfall(437 << 20, &mem), Some(1 << 20));
        assert_eq!(
            shortfall(2 << 30, &mem),
            Some((2 << 30) + (64 << 20) - (500 << 20))
        );
        assert_eq!(shortfall(u64::MAX, &mem), Some(u64::MAX - (500 << 20)));
    }

    #[test]
    fn hold_and_give_back_rewrite_the_signature() {
        let path = std::env::temp_dir().join(format!("kjump-swap-{}", std::process::id()));
        let mut head = vec![0u8; 2 * SWAP_HEADER_LEN as usize];
        head[SWAP_MAGIC_OFFSET..SWAP_MAGIC_OFFSET + 10]
            .copy_from_slice(SwapSignature::Free.magic());
        std::fs::write(&path, &head).unwrap();
        let area = SwapArea::new(&path);
        assert_eq!(area.give_back().unwrap(), None);
        assert!(area.hold(true).unwrap());
        assert!(!area.hold(true).unwrap());
        let back = std::fs::read(&path).unwrap();
        assert_eq!(
            &back[SWAP_MAGIC_OFFSET..SWAP_MAGIC_OFFSET + 10],
            SwapSignature::HeldWasActive.magic()
        );
        assert_eq!(area.give_back().unwrap(), Some(true));
        assert_eq!(std::fs::read(&path).unwrap(), head);
        assert!(!area.is_active());
        std::fs::remove_file(&path).unwrap();
    }
}

//! The saved kernel's claim on the target, and the capture kernel's check
//! of it.
//!
//! The capture kernel B opens the target by the kernel name A resolved
//! (`/dev/vdb`, see [`crate::kernel_name`]), and B's kernel may give that
//! name to another disk: a disk plugged in while A ran is named in slot
//! order by B, a controller may be probed in another order. So before the
//! jump A writes the superblock of the coming image where the image will
//! lie, in state "writing" with the uuid it gives B, and B writes only to a
//! target that carries that claim at the same kind of placement. Any other
//! device is refused before its first byte is written, and B jumps back to
//! A with the reason.

use kjump_image_format::placement::Placement;
use kjump_image_format::reader::read_superblock;
use kjump_image_format::superblock::{ImageState, Superblock};
use kjump_image_format::FormatError;
use kjump_sys::{Place, PlaceError, Target, TargetError};

use std::os::unix::fs::{FileExt, OpenOptionsExt};

use crate::uuid::Uuid;

/// How an image lies in its target, as the manifest names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlacementKind {
    /// From the device's first byte.
    Whole,
    /// After a swap partition's header.
    Swap,
    /// In a file's blocks, through its extent map.
    File,
}

impl PlacementKind {
    /// The kind of `placement`.
    pub fn of(placement: &Placement) -> PlacementKind {
        match placement {
            Placement::Whole => PlacementKind::Whole,
            Placement::Swap(_) => PlacementKind::Swap,
            Placement::Extents(_) => PlacementKind::File,
        }
    }

    /// The manifest's word.
    pub fn name(self) -> &'static str {
        match self {
            PlacementKind::Whole => "whole",
            PlacementKind::Swap => "swap",
            PlacementKind::File => "file",
        }
    }

    /// Reads the manifest's word.
    pub fn parse(word: &str) -> Option<PlacementKind> {
        [
            PlacementKind::Whole,
            PlacementKind::Swap,
            PlacementKind::File,
        ]
        .into_iter()
        .find(|k| k.name() == word)
    }
}

/// Why the target cannot be claimed, or does not carry the claim.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// The target cannot be opened or written (in A).
    #[error("claiming the target")]
    Write(#[from] TargetError),
    /// A file target's claim cannot be written through the file (in A).
    #[error("writing the claim to {}", .path.display())]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The target cannot be found or read (in B).
    #[error(transparent)]
    Place(#[from] PlaceError),
    /// The manifest names no image uuid, so no claim can be checked.
    #[error("the manifest names no image uuid: the target's claim cannot be checked")]
    NoUuid,
    /// The device this kernel found holds the image otherwise than the
    /// saved kernel placed it.
    #[error(
        "{device} holds an image {found} where the saved kernel placed it {expected}: \
         this kernel names another device {device}, and writes nothing to it"
    )]
    OtherPlacement {
        /// The device, as this kernel names it.
        device: String,
        /// The placement the manifest names.
        expected: &'static str,
        /// The placement found.
        found: &'static str,
    },
    /// The device does not carry the claim.
    #[error(
        "{device} does not carry the saved kernel's claim (an image {uuid} being written): \
         it holds {found}; this kernel names another device {device}, and writes nothing to it"
    )]
    NotClaimed {
        /// The device, as this kernel describes it.
        device: String,
        /// The uuid of the claim.
        uuid: Uuid,
        /// What the device holds instead.
        found: String,
    },
}

/// Where the name of a placement goes in messages.
fn placement_words(kind: PlacementKind) -> &'static str {
    match kind {
        PlacementKind::Whole => "from its first byte",
        PlacementKind::Swap => "after a swap header",
        PlacementKind::File => "in a file's blocks",
    }
}

/// In A, right before the jump: writes the claim (the superblock of image
/// `uuid` in state "writing", begun at `started_ns`) where the image will
/// lie in `place`, syncs it, and reads it back from the device as the
/// capture kernel will. A swap area is held first, as the capture holds it
/// ([`Target::claim`]): `swapon` then leaves it alone; `swap_was_active` is
/// what the held signature records. A file target's claim is written
/// through the file: its filesystem is mounted, and its device may not be
/// opened for writing while it is (CONFIG_BLK_DEV_WRITE_MOUNTED).
pub fn stake(
    place: &Place,
    uuid: Uuid,
    started_ns: u64,
    swap_was_active: bool,
) -> Result<(), ClaimError> {
    let claim = Superblock::writing(uuid.0, started_ns).encode();
    match &place.placement {
        Placement::Extents(map) => {
            let write = |source| ClaimError::File {
                path: place.named.clone(),
                source,
            };
            let file = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&place.named)
                .map_err(write)?;
            file.write_all_at(&claim, map.map_len).map_err(write)?;
            file.sync_all().map_err(write)?;
        }
        _ => {
            let mut target = Target::open_place(place)?;
            target.set_swap_was_active(swap_was_active);
            target.claim()?;
            target.write_copy_at(&claim, 0)?;
            target.sync()?;
        }
    }
    let now = Place::locate(&place.holder, place.map_at())?;
    check(&now, Some(uuid), Some(PlacementKind::of(&place.placement)))
}

/// In B, before the first write: whether `place` carries the claim of
/// image `uuid` at the placement kind `kind` (when the manifest names one).
pub fn check(
    place: &Place,
    uuid: Option<Uuid>,
    kind: Option<PlacementKind>,
) -> Result<(), ClaimError> {
    let uuid = uuid.ok_or(ClaimError::NoUuid)?;
    let device = place.describe();
    let found = PlacementKind::of(&place.placement);
    if let Some(expected) = kind.filter(|k| *k != found) {
        return Err(ClaimError::OtherPlacement {
            device,
            expected: placement_words(expected),
            found: placement_words(found),
        });
    }
    let reader = place.reader()?;
    let found = match read_superblock(&reader) {
        Ok(sb) if sb.uuid == uuid.0 && sb.state == ImageState::Writing => return Ok(()),
        Ok(sb) if sb.uuid == uuid.0 => format!("that image in state {}", sb.state.name()),
        Ok(sb) => format!(
            "another kjump image ({}, state {})",
            Uuid(sb.uuid),
            sb.state.name()
        ),
        Err(FormatError::BadMagic { .. }) => "no kjump image".to_string(),
        Err(e) => format!("no usable kjump superblock ({e})"),
    };
    Err(ClaimError::NotClaimed {
        device,
        uuid,
        found,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn file(dir: &Path, name: &str, bytes: &[u8]) -> Place {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        Place::locate(&path, None).unwrap()
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("kjump-claim-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_claimed_target_passes_and_any_other_is_refused() {
        let dir = scratch("check");
        let uuid = Uuid([7; 16]);
        let place = file(&dir, "claimed", &vec![0u8; 1 << 20]);
        stake(&place, uuid, 1, false).unwrap();
        let place = Place::locate(&place.named, None).unwrap();
        check(&place, Some(uuid), Some(PlacementKind::Whole)).unwrap();
        check(&place, Some(uuid), None).unwrap();

        let other = check(&place, Some(Uuid([8; 16])), None).unwrap_err();
        let text = other.to_string();
        assert!(
            text.contains("does not carry the saved kernel's claim (an image 0808")
                && text.contains("another kjump image (0707"),
            "{text}"
        );
        let kind = check(&place, Some(uuid), Some(PlacementKind::Swap)).unwrap_err();
        assert!(
            kind.to_string()
                .contains("holds an image from its first byte where the saved kernel placed it after a swap header"),
            "{kind}"
        );
        assert!(matches!(check(&place, None, None), Err(ClaimError::NoUuid)));

        let zeros = file(&dir, "zeros", &vec![0u8; 1 << 20]);
        let e = check(&zeros, Some(uuid), None).unwrap_err().to_string();
        assert!(e.contains("it holds no kjump image"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn placement_words_round_trip() {
        for k in [
            PlacementKind::Whole,
            PlacementKind::Swap,
            PlacementKind::File,
        ] {
            assert_eq!(PlacementKind::parse(k.name()), Some(k));
        }
        assert_eq!(PlacementKind::parse("disk"), None);
    }
}

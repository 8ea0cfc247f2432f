//! Where an image lies on the device that holds it.
//!
//! An image is a run of bytes from image offset 0 to its length. It is
//! stored in one of three ways:
//!
//! - **Whole**: from offset 0 of a block device or regular file.
//! - **Swap**: on a Linux swap partition, after its 4 KiB header. The header
//!   is kept as it is except for its 10-byte signature, which kjump changes
//!   from `SWAPSPACE2` to [`HELD_SWAP_MAGIC`] while the partition holds an
//!   image (so that `swapon` leaves it alone), and changes back when the
//!   image is resumed or discarded.
//! - **Extents**: in the blocks of a preallocated file on a filesystem,
//!   written and read on the raw device beneath it. The file's first blocks
//!   hold an [`ExtentMap`]: the file's extents on the device. The image starts
//!   after the map, at file offset [`ExtentMap::map_len`], and is found from
//!   the map's device offset alone, as hibernation's `resume_offset` finds a
//!   swap file.
//!
//! A [`Mapped`] reader presents any of them as image offsets.

use crate::addr::ImageOffset;
use crate::error::FormatError;
use crate::layout::extent_map as map;
use crate::layout::BLOCK_SIZE;
use crate::le::{put_u32, put_u64, u32_at, u64_at};
use crate::reader::ReadAt;

/// Bytes of the swap header kept in front of an image on a swap partition.
pub const SWAP_HEADER_LEN: u64 = 4096;
/// Where the swap signature lies in the header.
pub const SWAP_MAGIC_OFFSET: usize = 4086;
/// The signature of a Linux swap area (version 1).
pub const SWAP_MAGIC: &[u8; 10] = b"SWAPSPACE2";
/// The signature while kjump holds the swap area for an image.
pub const HELD_SWAP_MAGIC: &[u8; 10] = b"KJUMPSWAP1";
/// The signature while kjump holds a swap area that was in use when the
/// image was written: whoever gives it back swaps it on again.
pub const HELD_ACTIVE_SWAP_MAGIC: &[u8; 10] = b"KJUMPSWAPA";

/// Magic of an extent map.
pub const MAP_MAGIC: &[u8; 8] = b"KJUMPMAP";
/// Version of the extent map layout.
pub const MAP_VERSION: u32 = 1;
/// Bytes of an extent map's header.
pub const MAP_HEADER_LEN: usize = map::HEADER_SIZE;
/// Bytes of one extent record.
pub const MAP_EXTENT_LEN: usize = map::EXTENT_SIZE;
/// Room reserved for a map: the map block and the records, block aligned.
pub const MAP_LEN: u64 = 64 * 1024;
/// The most extents a map of [`MAP_LEN`] holds.
pub const MAP_MAX_EXTENTS: usize = (MAP_LEN as usize - MAP_HEADER_LEN) / MAP_EXTENT_LEN;

/// What a swap header's signature says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwapSignature {
    /// `SWAPSPACE2`: a swap area free for `swapon`.
    Free,
    /// [`HELD_SWAP_MAGIC`]: kjump keeps an image after the header.
    Held,
    /// [`HELD_ACTIVE_SWAP_MAGIC`]: the same, and the area was swapped on
    /// before kjump took it.
    HeldWasActive,
}

impl SwapSignature {
    /// Whether kjump holds the area for an image.
    pub fn is_held(self) -> bool {
        self != SwapSignature::Free
    }

    /// The 10 bytes written for this signature.
    pub fn magic(self) -> &'static [u8; 10] {
        match self {
            SwapSignature::Free => SWAP_MAGIC,
            SwapSignature::Held => HELD_SWAP_MAGIC,
            SwapSignature::HeldWasActive => HELD_ACTIVE_SWAP_MAGIC,
        }
    }
}

/// Reads the swap signature of a device's first 4 KiB, if it has one.
pub fn swap_signature(header: &[u8]) -> Option<SwapSignature> {
    let magic = header.get(SWAP_MAGIC_OFFSET..SWAP_MAGIC_OFFSET + 10)?;
    if magic == SWAP_MAGIC {
        Some(SwapSignature::Free)
    } else if magic == HELD_SWAP_MAGIC {
        Some(SwapSignature::Held)
    } else if magic == HELD_ACTIVE_SWAP_MAGIC {
        Some(SwapSignature::HeldWasActive)
    } else {
        None
    }
}

/// One run of a file's bytes on its device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Offset in the file.
    pub logical: u64,
    /// Offset on the device.
    pub physical: u64,
    /// Bytes.
    pub len: u64,
}

/// A run of image bytes at a device offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Image offset of the first byte.
    pub image: u64,
    /// Device offset of the first byte.
    pub device: u64,
    /// Bytes.
    pub len: u64,
}

/// A file's extents, as stored at the start of the file.
///
/// | offset | field |
/// |---|---|
/// | 0 | magic `KJUMPMAP` |
/// | 8 | version (u32) |
/// | 12 | CRC32 of the whole map with this field zero (u32) |
/// | 16 | map length in bytes, block aligned (u64) |
/// | 24 | file length in bytes, block aligned (u64) |
/// | 32 | extent count (u32) |
/// | 36 | reserved, zero (28 bytes) |
/// | 64 | extents: logical, physical, length (3 × u64 each) |
///
/// The rest of the map up to its length is zero. Extents are block aligned,
/// sorted, follow each other without gaps from file offset 0 to the file
/// length, do not overlap on the device, and the first covers the map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtentMap {
    /// Bytes the map takes at the start of the file; the image follows.
    pub map_len: u64,
    /// Bytes of the file the extents cover.
    pub file_len: u64,
    /// The extents.
    pub extents: Vec<Extent>,
}

fn map_error(offset: u64, problem: impl Into<String>) -> FormatError {
    FormatError::ExtentMap {
        offset: ImageOffset(offset),
        problem: problem.into(),
    }
}

impl ExtentMap {
    /// Builds a map from a file's extents, merging neighbours that are
    /// contiguous on the device, and checks it.
    pub fn new(file_len: u64, extents: &[Extent]) -> Result<ExtentMap, FormatError> {
        let mut merged: Vec<Extent> = Vec::with_capacity(extents.len());
        for e in extents {
            match merged.last_mut() {
                Some(last)
                    if last.logical + last.len == e.logical
                        && last.physical.checked_add(last.len) == Some(e.physical) =>
                {
                    last.len += e.len
                }
                _ => merged.push(*e),
            }
        }
        // The file may be longer than asked for: keep what `file_len` covers.
        let mut kept = Vec::with_capacity(merged.len());
        for mut e in merged {
            if e.logical >= file_len {
                break;
            }
            e.len = e.len.min(file_len - e.logical);
            kept.push(e);
        }
        let map = ExtentMap {
            map_len: MAP_LEN,
            file_len,
            extents: kept,
        };
        map.check(map.extents.first().map_or(0, |e| e.physical))?;
        Ok(map)
    }

    /// Checks the invariants the format promises; `at` is the map's device
    /// offset, for messages.
    fn check(&self, at: u64) -> Result<(), FormatError> {
        self.check_sizes(at)?;
        self.check_cover(at)?;
        self.check_no_overlap(at)
    }

    /// The map's length, the room it has for extents and the file's length.
    fn check_sizes(&self, at: u64) -> Result<(), FormatError> {
        let block = BLOCK_SIZE as u64;
        if self.map_len < block || self.map_len % block != 0 || self.map_len > MAP_LEN {
            return Err(map_error(
                at,
                format!(
                    "map length {:#x} is not a multiple of {block:#x} up to {MAP_LEN:#x}",
                    self.map_len
                ),
            ));
        }
        let room = (self.map_len as usize - MAP_HEADER_LEN) / MAP_EXTENT_LEN;
        if self.extents.len() > room {
            return Err(map_error(
                at,
                format!(
                    "the file has {} extents, the map holds {room}: the file is too fragmented",
                    self.extents.len()
                ),
            ));
        }
        if self.file_len % block != 0 || self.file_len <= self.map_len {
            return Err(map_error(
                at,
                format!(
                    "file length {:#x} is not block aligned or leaves no room after the map",
                    self.file_len
                ),
            ));
        }
        Ok(())
    }

    /// The extents cover the file from its start without a hole, each
    /// non-empty and block aligned, the first holding the map.
    fn check_cover(&self, at: u64) -> Result<(), FormatError> {
        let block = BLOCK_SIZE as u64;
        let mut next = 0u64;
        for (i, e) in self.extents.iter().enumerate() {
            if e.logical != next {
                return Err(map_error(
                    at,
                    format!(
                        "extent {i} starts at file offset {:#x}, expected {next:#x} (a hole)",
                        e.logical
                    ),
                ));
            }
            let aligned = e.physical % block == 0 && e.len % block == 0 && e.len > 0;
            if !aligned || e.physical.checked_add(e.len).is_none() {
                return Err(map_error(
                    at,
                    format!(
                        "extent {i} (device offset {:#x}, {:#x} bytes) is empty, unaligned or overflows",
                        e.physical, e.len
                    ),
                ));
            }
            next = e
                .logical
                .checked_add(e.len)
                .ok_or_else(|| map_error(at, format!("extent {i} runs past the largest offset")))?;
        }
        if next != self.file_len {
            return Err(map_error(
                at,
                format!(
                    "extents cover {next:#x} bytes of a {:#x}-byte file",
                    self.file_len
                ),
            ));
        }
        if self.extents[0].len < self.map_len {
            return Err(map_error(
                at,
                format!(
                    "the first extent ({:#x} bytes) does not hold the {:#x}-byte map",
                    self.extents[0].len, self.map_len
                ),
            ));
        }
        Ok(())
    }

    /// No two extents share a device block.
    fn check_no_overlap(&self, at: u64) -> Result<(), FormatError> {
        let mut by_device: Vec<&Extent> = self.extents.iter().collect();
        by_device.sort_by_key(|e| e.physical);
        for w in by_device.windows(2) {
            if w[0].physical + w[0].len > w[1].physical {
                return Err(map_error(
                    at,
                    format!(
                        "extents at device offsets {:#x} and {:#x} overlap",
                        w[0].physical, w[1].physical
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Device offset of the map itself: where the file begins.
    pub fn map_at(&self) -> u64 {
        self.extents[0].physical
    }

    /// The map's bytes, [`ExtentMap::map_len`] of them.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; self.map_len as usize];
        b[map::MAGIC..map::MAGIC + 8].copy_from_slice(MAP_MAGIC);
        put_u32(&mut b, map::VERSION, MAP_VERSION);
        put_u64(&mut b, map::MAP_LEN, self.map_len);
        put_u64(&mut b, map::FILE_LEN, self.file_len);
        put_u32(&mut b, map::COUNT, self.extents.len() as u32);
        for (i, e) in self.extents.iter().enumerate() {
            let at = MAP_HEADER_LEN + i * MAP_EXTENT_LEN;
            put_u64(&mut b, at + map::EXTENT_LOGICAL, e.logical);
            put_u64(&mut b, at + map::EXTENT_PHYSICAL, e.physical);
            put_u64(&mut b, at + map::EXTENT_LEN, e.len);
        }
        let crc = crc32fast::hash(&b);
        put_u32(&mut b, map::CRC, crc);
        b
    }

    /// Reads the map lying at device offset `at` of `dev`.
    pub fn read<R: ReadAt + ?Sized>(dev: &R, at: u64) -> Result<ExtentMap, FormatError> {
        let io = |source| FormatError::Io {
            what: "extent map",
            offset: ImageOffset(at),
            source,
        };
        let mut head = vec![0u8; BLOCK_SIZE];
        dev.read_exact_at(&mut head, at).map_err(io)?;
        let magic = &head[map::MAGIC..map::MAGIC + 8];
        if magic != MAP_MAGIC {
            return Err(FormatError::BadMagic {
                what: "extent map",
                offset: ImageOffset(at),
                expected: String::from_utf8_lossy(MAP_MAGIC).into_owned(),
                found: String::from_utf8_lossy(magic).into_owned(),
            });
        }
        let map_len = u64_at(&head, map::MAP_LEN);
        if map_len < BLOCK_SIZE as u64 || map_len > MAP_LEN || map_len % BLOCK_SIZE as u64 != 0 {
            return Err(map_error(
                at,
                format!("map length {map_len:#x} is not a multiple of 0x1000 up to {MAP_LEN:#x}"),
            ));
        }
        let mut b = vec![0u8; map_len as usize];
        dev.read_exact_at(&mut b, at).map_err(io)?;
        Self::decode(&b, at)
    }

    /// Decodes and checks a whole map; `at` is its device offset, for
    /// messages.
    pub fn decode(b: &[u8], at: u64) -> Result<ExtentMap, FormatError> {
        let (map_len, count) = Self::check_header(b, at)?;
        let extents = (0..count)
            .map(|i| {
                let o = MAP_HEADER_LEN + i * MAP_EXTENT_LEN;
                Extent {
                    logical: u64_at(b, o + map::EXTENT_LOGICAL),
                    physical: u64_at(b, o + map::EXTENT_PHYSICAL),
                    len: u64_at(b, o + map::EXTENT_LEN),
                }
            })
            .collect();
        let map = ExtentMap {
            map_len,
            file_len: u64_at(b, map::FILE_LEN),
            extents,
        };
        map.check(at)?;
        if map.map_at() != at {
            return Err(map_error(
                at,
                format!(
                    "the map says the file begins at device offset {:#x}",
                    map.map_at()
                ),
            ));
        }
        Ok(map)
    }

    /// Checks the map `b` read at device offset `at`: magic, version,
    /// length, CRC, extent count and zero padding; returns its length and
    /// extent count.
    fn check_header(b: &[u8], at: u64) -> Result<(u64, usize), FormatError> {
        if b.len() < MAP_HEADER_LEN || &b[map::MAGIC..map::MAGIC + 8] != MAP_MAGIC {
            return Err(map_error(at, "no extent map magic"));
        }
        let version = u32_at(b, map::VERSION);
        if version != MAP_VERSION {
            return Err(map_error(
                at,
                format!("version {version}, this kjump reads {MAP_VERSION}"),
            ));
        }
        let map_len = u64_at(b, map::MAP_LEN);
        if map_len != b.len() as u64 {
            return Err(map_error(
                at,
                format!("map length {map_len:#x}, {:#x} bytes read", b.len()),
            ));
        }
        let stored = u32_at(b, map::CRC);
        let mut copy = b.to_vec();
        put_u32(&mut copy, map::CRC, 0);
        let computed = crc32fast::hash(&copy);
        if stored != computed {
            return Err(FormatError::Checksum {
                what: "extent map".into(),
                offset: ImageOffset(at),
                stored,
                computed,
            });
        }
        let count = u32_at(b, map::COUNT) as usize;
        let room = (b.len() - MAP_HEADER_LEN) / MAP_EXTENT_LEN;
        if count == 0 || count > room {
            return Err(map_error(
                at,
                format!("extent count {count}, the map holds 1 to {room}"),
            ));
        }
        if b[map::RESERVED..MAP_HEADER_LEN].iter().any(|&x| x != 0)
            || b[MAP_HEADER_LEN + count * MAP_EXTENT_LEN..]
                .iter()
                .any(|&x| x != 0)
        {
            return Err(FormatError::PaddingNotZero {
                what: "extent map",
                offset: ImageOffset(at),
            });
        }
        Ok((map_len, count))
    }

    /// The image's bytes on the device: the file after the map.
    pub fn segments(&self) -> Vec<Segment> {
        self.extents
            .iter()
            .filter_map(|e| {
                let start = e.logical.max(self.map_len);
                let end = e.logical + e.len;
                (start < end).then(|| Segment {
                    image: start - self.map_len,
                    device: e.physical + (start - e.logical),
                    len: end - start,
                })
            })
            .collect()
    }
}

/// How an image lies on its device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// From the device's first byte.
    Whole,
    /// After a swap partition's header.
    Swap(SwapSignature),
    /// In a file's extents, described by the map at the file's start.
    Extents(ExtentMap),
}

impl Placement {
    /// The image's bytes on a device of `device_len` bytes.
    pub fn segments(&self, device_len: u64) -> Vec<Segment> {
        match self {
            Placement::Whole => vec![Segment {
                image: 0,
                device: 0,
                len: device_len,
            }],
            Placement::Swap(_) => vec![Segment {
                image: 0,
                device: SWAP_HEADER_LEN,
                len: device_len.saturating_sub(SWAP_HEADER_LEN),
            }],
            Placement::Extents(map) => map.segments(),
        }
    }

    /// A word for messages: whole, swap or file.
    pub fn kind(&self) -> &'static str {
        match self {
            Placement::Whole => "whole",
            Placement::Swap(_) => "swap",
            Placement::Extents(_) => "file",
        }
    }
}

/// Works out how an image lies on `dev`: with `map_at`, the extent map
/// there; otherwise after a swap header when the device starts with one,
/// else from offset 0.
pub fn detect<R: ReadAt + ?Sized>(dev: &R, map_at: Option<u64>) -> Result<Placement, FormatError> {
    if let Some(at) = map_at {
        return ExtentMap::read(dev, at).map(Placement::Extents);
    }
    let size = dev.size().map_err(|source| FormatError::Io {
        what: "device size",
        offset: ImageOffset(0),
        source,
    })?;
    if size < SWAP_HEADER_LEN {
        return Ok(Placement::Whole);
    }
    let mut head = vec![0u8; SWAP_HEADER_LEN as usize];
    dev.read_exact_at(&mut head, 0)
        .map_err(|source| FormatError::Io {
            what: "first block",
            offset: ImageOffset(0),
            source,
        })?;
    Ok(match swap_signature(&head) {
        Some(sig) => Placement::Swap(sig),
        None => Placement::Whole,
    })
}

/// Splits `len` bytes at image offset `offset` into device runs: calls
/// `f(device_offset, start, end)` for each piece `start..end` of the
/// request. Fails with the first image offset no segment holds.
pub fn for_each_piece<E>(
    segments: &[Segment],
    offset: u64,
    len: usize,
    mut f: impl FnMut(u64, usize, usize) -> Result<(), E>,
    outside: impl FnOnce(u64) -> E,
) -> Result<(), E> {
    let mut done = 0usize;
    // Segments are sorted by image offset and follow each other.
    let mut i = segments.partition_point(|s| s.image + s.len <= offset);
    while done < len {
        let at = offset + done as u64;
        let Some(s) = segments
            .get(i)
            .filter(|s| s.image <= at && at < s.image + s.len)
        else {
            return Err(outside(at));
        };
        let n = ((s.image + s.len - at) as usize).min(len - done);
        f(s.device + (at - s.image), done, done + n)?;
        done += n;
        i += 1;
    }
    Ok(())
}

impl<R: ReadAt + ?Sized> ReadAt for &R {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }

    fn size(&self) -> std::io::Result<u64> {
        (**self).size()
    }

    fn prefetch(&self, offset: u64, len: usize) {
        (**self).prefetch(offset, len)
    }
}

/// Image offsets read through a placement's segments of a device `D`:
/// one borrowed (`&File`, `&[u8]`) or an open device the reader owns.
pub struct Mapped<D> {
    dev: D,
    segments: Vec<Segment>,
    len: u64,
}

impl<D: ReadAt> Mapped<D> {
    /// Reads the image placed on `dev` as `placement` says.
    pub fn new(dev: D, placement: &Placement) -> std::io::Result<Self> {
        let segments = placement.segments(dev.size()?);
        let len = segments.iter().map(|s| s.len).sum();
        Ok(Mapped { dev, segments, len })
    }

    /// The device runs, in image order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Bytes of room for the image.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether there is no room at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Fills `buf` from image offset `offset` of an image lying in `segments`
/// of `dev`; a read past the segments is `UnexpectedEof`.
pub fn read_mapped<R: ReadAt + ?Sized>(
    dev: &R,
    segments: &[Segment],
    buf: &mut [u8],
    offset: u64,
) -> std::io::Result<()> {
    let len = buf.len();
    for_each_piece(
        segments,
        offset,
        len,
        |dev_off, a, b| dev.read_exact_at(&mut buf[a..b], dev_off),
        |_| std::io::ErrorKind::UnexpectedEof.into(),
    )
}

impl<D: ReadAt> ReadAt for Mapped<D> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        read_mapped(&self.dev, &self.segments, buf, offset)
    }

    fn prefetch(&self, offset: u64, len: usize) {
        // Past the segments there is nothing to read ahead.
        let _: std::io::Result<()> = for_each_piece(
            &self.segments,
            offset,
            len,
            |dev_off, a, b| {
                self.dev.prefetch(dev_off, b - a);
                Ok(())
            },
            |_| std::io::ErrorKind::UnexpectedEof.into(),
        );
    }

    fn size(&self) -> std::io::Result<u64> {
        Ok(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(logical: u64, physical: u64, len: u64) -> Extent {
        Extent {
            logical,
            physical,
            len,
        }
    }

    fn sample() -> ExtentMap {
        ExtentMap::new(
            0x40_0000,
            &[
                ext(0, 0x10_0000, 0x1_0000),
                ext(0x1_0000, 0x11_0000, 0x1_0000),
                ext(0x2_0000, 0x80_0000, 0x20_0000),
                ext(0x22_0000, 0x20_0000, 0x1e_0000),
            ],
        )
        .unwrap()
    }

    #[test]
    fn neighbours_merge_and_map_round_trips() {
        let map = sample();
        assert_eq!(map.extents.len(), 3);
        assert_eq!(map.extents[0], ext(0, 0x10_0000, 0x2_0000));
        let mut dev = vec![0u8; 0x100_0000];
        let bytes = map.encode();
        dev[0x10_0000..0x10_0000 + bytes.len()].copy_from_slice(&bytes);
        assert_eq!(ExtentMap::read(&dev, 0x10_0000).unwrap(), map);
        assert!(matches!(
            ExtentMap::read(&dev, 0x20_0000),
            Err(FormatError::BadMagic { .. })
        ));
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let bytes = sample().encode();
        for i in 0..MAP_HEADER_LEN + 4 * MAP_EXTENT_LEN {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(ExtentMap::decode(&b, 0x10_0000).is_err(), "byte {i}");
        }
    }

    #[test]
    fn bad_shapes_are_refused() {
        let hole = ExtentMap::new(
            0x40_0000,
            &[ext(0, 0, 0x1_0000), ext(0x2_0000, 0x10_0000, 0x3e_0000)],
        );
        assert!(hole.unwrap_err().to_string().contains("a hole"));
        let overlap = ExtentMap::new(
            0x40_0000,
            &[
                ext(0, 0x10_0000, 0x20_0000),
                ext(0x20_0000, 0x1f_0000, 0x20_0000),
            ],
        );
        assert!(overlap.unwrap_err().to_string().contains("overlap"));
        let small_first = ExtentMap::new(
            0x40_0000,
            &[ext(0, 0, 0x1000), ext(0x1000, 0x10_0000, 0x3f_f000)],
        );
        assert!(small_first
            .unwrap_err()
            .to_string()
            .contains("does not hold"));
        let unaligned = ExtentMap::new(0x40_0000, &[ext(0, 0x200, 0x40_0000)]);
        assert!(unaligned.unwrap_err().to_string().contains("unaligned"));
        let many: Vec<Extent> = (0..MAP_MAX_EXTENTS as u64 + 1)
            .map(|i| ext(i * 0x10_0000, i * 0x20_0000, 0x10_0000))
            .collect();
        let frag = ExtentMap::new(many.len() as u64 * 0x10_0000, &many);
        assert!(frag.unwrap_err().to_string().contains("too fragmented"));
    }

    #[test]
    fn mapped_reads_cross_extents() {
        let map = sample();
        let mut dev = vec![0u8; 0x100_0000];
        // Fill the file's bytes with their file offset's low byte.
        for e in &map.extents {
            for k in 0..e.len {
                dev[(e.physical + k) as usize] = ((e.logical + k) % 251) as u8;
            }
        }
        let p = Placement::Extents(map.clone());
        let r = Mapped::new(&dev, &p).unwrap();
        assert_eq!(r.size().unwrap(), map.file_len - map.map_len);
        let mut buf = vec![0u8; 0x30_0000];
        r.read_exact_at(&mut buf, 0x1000).unwrap();
        for (k, &b) in buf.iter().enumerate() {
            assert_eq!(
                b,
                ((map.map_len + 0x1000 + k as u64) % 251) as u8,
                "byte {k}"
            );
        }
        let end = r.size().unwrap();
        assert!(r.read_exact_at(&mut [0u8; 2], end - 1).is_err());
    }

    #[test]
    fn swap_header_is_recognised() {
        let mut dev = vec![0u8; 0x10_0000];
        assert_eq!(detect(&dev, None).unwrap(), Placement::Whole);
        dev[SWAP_MAGIC_OFFSET..SWAP_MAGIC_OFFSET + 10].copy_from_slice(SWAP_MAGIC);
        let p = detect(&dev, None).unwrap();
        assert_eq!(p, Placement::Swap(SwapSignature::Free));
        assert_eq!(
            p.segments(0x10_0000),
            vec![Segment {
                image: 0,
                device: 4096,
                len: 0x10_0000 - 4096
            }]
        );
        dev[SWAP_MAGIC_OFFSET..SWAP_MAGIC_OFFSET + 10].copy_from_slice(HELD_SWAP_MAGIC);
        assert_eq!(
            detect(&dev, None).unwrap(),
            Placement::Swap(SwapSignature::Held)
        );
        dev[SWAP_MAGIC_OFFSET..SWAP_MAGIC_OFFSET + 10].copy_from_slice(HELD_ACTIVE_SWAP_MAGIC);
        assert_eq!(
            detect(&dev, None).unwrap(),
            Placement::Swap(SwapSignature::HeldWasActive)
        );
    }
}

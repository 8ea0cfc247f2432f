//! The metadata section: what a restore needs and a debugger wants.
//!
//! A sequence of records `tag: u16, flags: u16, len: u32, value[len]`, each
//! padded with zeros to 8 bytes. Flag bit 0 marks a record a reader must
//! understand: an unknown tag without it is skipped, with it the image is
//! refused. This lets later versions add records without a format break.

use crate::addr::{ImageOffset, MemoryMap, PhysAddr, PhysRange};
use crate::error::FormatError;
use crate::layout::metadata_record as rec;
use crate::le::{put_u16, put_u32, put_u64, u16_at, u32_at, u64_at};

/// Largest metadata section a reader accepts.
pub const MAX_METADATA_LEN: u64 = 64 << 20;
/// Record flag: a reader that does not know the tag must refuse the image.
pub const FLAG_REQUIRED: u16 = 1;

const REC_HEADER: usize = rec::SIZE;

/// Record tags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Tag {
    /// The saved physical ranges: pairs of `start: u64, len: u64`.
    Ranges = 1,
    /// `uname -r` of the saved kernel (UTF-8).
    KernelRelease = 2,
    /// The saved kernel's build id as hex text.
    BuildId = 3,
    /// The saved kernel's VMCOREINFO text.
    Vmcoreinfo = 4,
    /// The PT_NOTE contents of the source ELF core, verbatim.
    ElfNotes = 5,
    /// Physical address at which the saved kernel re-enters (`u64`).
    JumpBackEntry = 6,
    /// Where the capture read from (UTF-8).
    Source = 7,
    /// A free-form `key_len: u16, key, value` pair (UTF-8); may repeat.
    KeyValue = 8,
    /// Frames a filtered capture left out (kdump dump levels): `level: u32`,
    /// zero `u32`, then runs `first_pfn: u64, count: u64`. Required: a
    /// reader that does not know it would take them for zero pages.
    ExcludedPages = 9,
}

impl Tag {
    fn from_u16(v: u16) -> Option<Tag> {
        Some(match v {
            1 => Tag::Ranges,
            2 => Tag::KernelRelease,
            3 => Tag::BuildId,
            4 => Tag::Vmcoreinfo,
            5 => Tag::ElfNotes,
            6 => Tag::JumpBackEntry,
            7 => Tag::Source,
            8 => Tag::KeyValue,
            9 => Tag::ExcludedPages,
            _ => return None,
        })
    }
}

/// The decoded metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    /// Physical ranges saved, in address order; holes lie between them.
    pub ranges: MemoryMap,
    /// Release of the saved kernel.
    pub kernel_release: Option<String>,
    /// Build id of the saved kernel (hex).
    pub build_id: Option<String>,
    /// VMCOREINFO text of the saved kernel.
    pub vmcoreinfo: Option<Vec<u8>>,
    /// ELF notes of the source core, verbatim.
    pub elf_notes: Option<Vec<u8>>,
    /// Re-entry point of the saved kernel.
    pub jump_back_entry: Option<u64>,
    /// Where the capture read from.
    pub source: Option<String>,
    /// Free-form pairs, in order.
    pub extra: Vec<(String, String)>,
    /// Frames left out by a filtered capture (a kdump dump level), which
    /// are not stored and are not zero.
    pub excluded: Option<ExcludedPages>,
}

/// Frames a filtered capture left out: stored nowhere, marked in their
/// chunks' zero bitmaps, and never to be read as zero.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExcludedPages {
    /// The makedumpfile dump level the capture filtered at (0 to 31).
    pub level: u32,
    /// Runs `(first frame, count)`: sorted, non-empty, with gaps between
    /// them, each inside one saved range.
    pub runs: Vec<(u64, u64)>,
}

impl ExcludedPages {
    /// Frames left out.
    pub fn pages(&self) -> u64 {
        self.runs.iter().map(|r| r.1).sum()
    }

    /// Bit `i` set when frame `first + i` is left out, for up to 64 frames.
    pub fn mask(&self, first: u64, count: u32) -> u64 {
        let end = first + u64::from(count);
        let mut mask = 0u64;
        let mut i = self.runs.partition_point(|r| r.0 + r.1 <= first);
        while let Some(&(f, n)) = self.runs.get(i) {
            if f >= end {
                break;
            }
            let (lo, hi) = (f.max(first) - first, (f + n).min(end) - first);
            mask |= if hi - lo >= 64 {
                u64::MAX
            } else {
                ((1u64 << (hi - lo)) - 1) << lo
            };
            i += 1;
        }
        mask
    }

    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(8 + 16 * self.runs.len());
        b.extend_from_slice(&self.level.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        for &(f, n) in &self.runs {
            b.extend_from_slice(&f.to_le_bytes());
            b.extend_from_slice(&n.to_le_bytes());
        }
        b
    }

    fn decode(v: &[u8]) -> Result<Self, String> {
        if v.len() < 8 || (v.len() - 8) % 16 != 0 {
            return Err(format!(
                "excluded pages record of {} bytes is not 8 plus a multiple of 16",
                v.len()
            ));
        }
        let level = u32_at(v, 0);
        if level > 31 || u32_at(v, 4) != 0 {
            return Err(format!(
                "excluded pages record: dump level {level} (0 to 31) or reserved {:#x} (0)",
                u32_at(v, 4)
            ));
        }
        let mut runs: Vec<(u64, u64)> = Vec::with_capacity((v.len() - 8) / 16);
        for (i, pair) in v[8..].chunks_exact(16).enumerate() {
            let (f, n) = (u64_at(pair, 0), u64_at(pair, 8));
            let after_last = runs.last().map_or(Some(0), |l| (l.0 + l.1).checked_add(1));
            if n == 0 || f.checked_add(n).is_none() || after_last.map_or(true, |a| f < a) {
                return Err(format!(
                    "excluded run {i} (frame {f:#x}, {n} frames) is empty, overflows or does not follow the previous one with a gap"
                ));
            }
            runs.push((f, n));
        }
        Ok(ExcludedPages { level, runs })
    }

    /// Checks that every run lies inside one range of `map`.
    fn check_inside(&self, map: &MemoryMap) -> Result<(), String> {
        for &(f, n) in &self.runs {
            let inside = map
                .ranges()
                .iter()
                .any(|r| r.first_pfn().0 <= f && f + n <= r.end_pfn().0);
            if !inside {
                return Err(format!(
                    "excluded frames {f:#x}..{:#x} lie outside the saved ranges",
                    f + n
                ));
            }
        }
        Ok(())
    }
}

/// Key of the key/value record holding the capture kernel's region
/// (`0xSTART-0xEND`, inclusive), which the restore kernel must run in.
pub const KEY_REGION: &str = "region";
/// Prefix of the keys of filesystem fingerprints (the rest is the device).
pub const KEY_FS_FINGERPRINT: &str = "fs-fingerprint:";

/// Whether a key/value record belongs to the resume record.
pub fn in_resume_record(key: &str) -> bool {
    key == KEY_REGION || key.starts_with(KEY_FS_FINGERPRINT)
}

fn push_record(out: &mut Vec<u8>, tag: Tag, flags: u16, value: &[u8]) {
    let mut h = [0u8; REC_HEADER];
    put_u16(&mut h, rec::TAG, tag as u16);
    put_u16(&mut h, rec::FLAGS, flags);
    put_u32(&mut h, rec::LEN, value.len() as u32);
    out.extend_from_slice(&h);
    out.extend_from_slice(value);
    out.resize(out.len().next_multiple_of(rec::ALIGN), 0);
}

/// The record at `pos` of the section `bytes` (at image offset `base`):
/// its tag, flags and value, and where the next record starts. Its header
/// must fit, its value and padding lie in the section, no reserved flag be
/// set and its padding be zero.
fn record_at(bytes: &[u8], pos: usize, base: u64) -> Result<(u16, u16, &[u8], usize), FormatError> {
    let err = |reason: String| FormatError::Metadata {
        offset: ImageOffset(base + pos as u64),
        reason,
    };
    if bytes.len() - pos < REC_HEADER {
        return Err(err(format!(
            "record header needs {REC_HEADER} bytes, {} remain",
            bytes.len() - pos
        )));
    }
    let tag = u16_at(bytes, pos + rec::TAG);
    let flags = u16_at(bytes, pos + rec::FLAGS);
    let len = u32_at(bytes, pos + rec::LEN) as usize;
    let start = pos + REC_HEADER;
    let padded = len.next_multiple_of(rec::ALIGN);
    if padded > bytes.len() - start {
        return Err(err(format!(
            "record of {len} bytes runs past the end of the section ({} bytes remain)",
            bytes.len() - start
        )));
    }
    if flags & !FLAG_REQUIRED != 0 {
        return Err(err(format!("reserved flags {flags:#x} set")));
    }
    if let Some(p) = crate::le::first_nonzero(&bytes[start + len..start + padded]) {
        return Err(FormatError::PaddingNotZero {
            what: "of a metadata record",
            offset: ImageOffset(base + (start + len + p) as u64),
        });
    }
    Ok((tag, flags, &bytes[start..start + len], start + padded))
}

impl Metadata {
    /// The resume record: what a normal boot needs to decide on a resume
    /// and to confine the restore kernel, and nothing else: the ranges, the
    /// capture region and the filesystem fingerprints. An encrypted image
    /// stores it in the clear after its sealed metadata, so that the key is
    /// asked by the restore kernel and not before (FORMAT.md).
    pub fn resume_record(&self) -> Metadata {
        Metadata {
            ranges: self.ranges.clone(),
            extra: self
                .extra
                .iter()
                .filter(|(k, _)| in_resume_record(k))
                .cloned()
                .collect(),
            ..Metadata::default()
        }
    }

    /// The value of the first key/value record named `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.extra
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Encodes the records.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut ranges = Vec::with_capacity(self.ranges.ranges().len() * 16);
        for r in self.ranges.ranges() {
            let mut b = [0u8; 16];
            put_u64(&mut b, 0, r.start().0);
            put_u64(&mut b, 8, r.len());
            ranges.extend_from_slice(&b);
        }
        push_record(&mut out, Tag::Ranges, FLAG_REQUIRED, &ranges);
        let texts = [
            (Tag::KernelRelease, &self.kernel_release),
            (Tag::BuildId, &self.build_id),
            (Tag::Source, &self.source),
        ];
        for (tag, v) in texts {
            if let Some(v) = v {
                push_record(&mut out, tag, 0, v.as_bytes());
            }
        }
        for (tag, v) in [
            (Tag::Vmcoreinfo, &self.vmcoreinfo),
            (Tag::ElfNotes, &self.elf_notes),
        ] {
            if let Some(v) = v {
                push_record(&mut out, tag, 0, v);
            }
        }
        if let Some(e) = self.jump_back_entry {
            push_record(
                &mut out,
                Tag::JumpBackEntry,
                FLAG_REQUIRED,
                &e.to_le_bytes(),
            );
        }
        if let Some(x) = &self.excluded {
            push_record(&mut out, Tag::ExcludedPages, FLAG_REQUIRED, &x.encode());
        }
        for (k, v) in &self.extra {
            let mut b = Vec::with_capacity(2 + k.len() + v.len());
            b.extend_from_slice(&(k.len() as u16).to_le_bytes());
            b.extend_from_slice(k.as_bytes());
            b.extend_from_slice(v.as_bytes());
            push_record(&mut out, Tag::KeyValue, 0, &b);
        }
        out
    }

    /// Decodes the section found at image offset `base`; its CRC was checked
    /// by the caller.
    pub fn decode(bytes: &[u8], base: u64) -> Result<Self, FormatError> {
        let mut m = Metadata::default();
        let mut seen_ranges = false;
        let mut pos = 0usize;
        while pos < bytes.len() {
            let at = base + pos as u64;
            let err = |reason: String| FormatError::Metadata {
                offset: ImageOffset(at),
                reason,
            };
            let (tag, flags, value, next) = record_at(bytes, pos, base)?;
            match Tag::from_u16(tag) {
                Some(Tag::Ranges) => {
                    if seen_ranges {
                        return Err(err("ranges recorded twice".into()));
                    }
                    seen_ranges = true;
                    m.ranges = decode_ranges(value).map_err(err)?;
                }
                Some(t) => m.set(t, value).map_err(err)?,
                None if flags & FLAG_REQUIRED != 0 => {
                    return Err(err(format!(
                        "unknown required record tag {tag} (written by a newer kjump?)"
                    )))
                }
                None => {}
            }
            pos = next;
        }
        if !seen_ranges || m.ranges.ranges().is_empty() {
            return Err(FormatError::Metadata {
                offset: ImageOffset(base),
                reason: "no memory ranges recorded".into(),
            });
        }
        if let Some(x) = &m.excluded {
            x.check_inside(&m.ranges)
                .map_err(|reason| FormatError::Metadata {
                    offset: ImageOffset(base),
                    reason,
                })?;
        }
        Ok(m)
    }

    fn set(&mut self, tag: Tag, v: &[u8]) -> Result<(), String> {
        fn once<T>(slot: &mut Option<T>, tag: Tag, value: T) -> Result<(), String> {
            if slot.is_some() {
                return Err(format!("{tag:?} recorded twice"));
            }
            *slot = Some(value);
            Ok(())
        }
        let text = |v: &[u8]| {
            String::from_utf8(v.to_vec()).map_err(|e| format!("{tag:?} is not UTF-8: {e}"))
        };
        match tag {
            Tag::KernelRelease => once(&mut self.kernel_release, tag, text(v)?),
            Tag::BuildId => once(&mut self.build_id, tag, text(v)?),
            Tag::Source => once(&mut self.source, tag, text(v)?),
            Tag::Vmcoreinfo => once(&mut self.vmcoreinfo, tag, v.to_vec()),
            Tag::ElfNotes => once(&mut self.elf_notes, tag, v.to_vec()),
            Tag::JumpBackEntry => {
                if v.len() != 8 {
                    return Err(format!("jump-back entry has {} bytes, expected 8", v.len()));
                }
                once(&mut self.jump_back_entry, tag, u64_at(v, 0))
            }
            Tag::KeyValue => {
                if v.len() < 2 || 2 + u16_at(v, 0) as usize > v.len() {
                    return Err("key/value record shorter than its key".into());
                }
                let k = 2 + u16_at(v, 0) as usize;
                self.extra.push((text(&v[2..k])?, text(&v[k..])?));
                Ok(())
            }
            Tag::ExcludedPages => once(&mut self.excluded, tag, ExcludedPages::decode(v)?),
            Tag::Ranges => Err("ranges handled by the caller".into()),
        }
    }
}

fn decode_ranges(v: &[u8]) -> Result<MemoryMap, String> {
    if v.len() % 16 != 0 {
        return Err(format!(
            "ranges record of {} bytes is not a multiple of 16",
            v.len()
        ));
    }
    let mut ranges = Vec::with_capacity(v.len() / 16);
    for (i, pair) in v.chunks_exact(16).enumerate() {
        let r = PhysRange::from_start_len(PhysAddr(u64_at(pair, 0)), u64_at(pair, 8))
            .map_err(|e| format!("range {i}: {e}"))?;
        ranges.push(r);
    }
    MemoryMap::from_sorted(ranges).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Metadata {
        let r = |s, l| PhysRange::from_start_len(PhysAddr(s), l).unwrap();
        Metadata {
            ranges: MemoryMap::from_sorted(vec![r(0x1000, 0x9ec00), r(0x100000, 1 << 30)]).unwrap(),
            kernel_release: Some("6.12.0".into()),
            build_id: Some("abcdef".into()),
            vmcoreinfo: Some(b"OSRELEASE=6.12.0\n".to_vec()),
            elf_notes: Some(vec![1, 2, 3]),
            jump_back_entry: Some(0x1234_5000),
            source: Some("/dev/mem".into()),
            extra: vec![
                ("mode".into(), "poweroff".into()),
                ("k".into(), String::new()),
            ],
            excluded: None,
        }
    }

    fn excluded(runs: Vec<(u64, u64)>) -> Metadata {
        Metadata {
            excluded: Some(ExcludedPages { level: 31, runs }),
            ..sample()
        }
    }

    #[test]
    fn excluded_pages_round_trip_as_a_required_record() {
        let m = excluded(vec![(0x10, 4), (0x100, 0x200), (0x400ff, 1)]);
        let b = m.encode();
        assert_eq!(Metadata::decode(&b, 4096).unwrap(), m);
        let x = m.excluded.unwrap();
        assert_eq!(x.pages(), 0x205);
        assert_eq!(x.mask(0x0, 64), 0xf << 0x10);
        assert_eq!(x.mask(0x100, 64), u64::MAX);
        assert_eq!(x.mask(0x2e0, 64), u64::MAX >> 32);
        assert_eq!(x.mask(0x400ff, 1), 1);
        // The record carries the required flag: an older reader refuses it.
        let at = b.windows(4).position(|w| w == [9, 0, 1, 0]).unwrap();
        assert_eq!(u16_at(&b, at + 2), FLAG_REQUIRED);
    }

    #[test]
    fn bad_excluded_runs_are_refused() {
        let cases: [(Vec<(u64, u64)>, &str); 4] = [
            (vec![(0x10, 0)], "is empty"),
            (vec![(0x10, 4), (0x14, 1)], "with a gap"),
            (vec![(0x10, 4), (0x8, 1)], "with a gap"),
            (vec![(0x9f, 2)], "outside the saved ranges"),
        ];
        for (runs, want) in cases {
            let e = Metadata::decode(&excluded(runs.clone()).encode(), 0)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{runs:?}: {e}");
        }
        let mut b = excluded(vec![(0x10, 1)]).encode();
        let at = b.windows(4).position(|w| w == [9, 0, 1, 0]).unwrap() + 8;
        b[at] = 32;
        let e = Metadata::decode(&b, 0).unwrap_err().to_string();
        assert!(e.contains("dump level 32"), "{e}");
    }

    #[test]
    fn round_trip() {
        let m = sample();
        let b = m.encode();
        assert_eq!(b.len() % 8, 0);
        assert_eq!(Metadata::decode(&b, 4096).unwrap(), m);
    }

    #[test]
    fn unknown_optional_record_is_skipped_required_is_refused() {
        let mut b = sample().encode();
        let mut extra = vec![0u8; 8];
        put_u16(&mut extra, 0, 999);
        put_u32(&mut extra, 4, 0);
        b.extend_from_slice(&extra);
        assert!(Metadata::decode(&b, 0).is_ok());
        let n = b.len();
        put_u16(&mut b, n - 6, FLAG_REQUIRED);
        let e = Metadata::decode(&b, 0).unwrap_err().to_string();
        assert!(e.contains("unknown required record tag 999"), "{e}");
    }

    #[test]
    fn truncated_and_overlong_records_are_refused() {
        let b = sample().encode();
        for cut in [1, 7, 9, b.len() - 1] {
            assert!(Metadata::decode(&b[..cut], 0).is_err(), "cut {cut}");
        }
        let mut b2 = b.clone();
        put_u32(&mut b2, 4, u32::MAX);
        let e = Metadata::decode(&b2, 0).unwrap_err().to_string();
        assert!(e.contains("runs past the end"), "{e}");
    }

    #[test]
    fn missing_ranges_are_refused() {
        let e = Metadata::decode(&[], 4096).unwrap_err().to_string();
        assert!(e.contains("no memory ranges"), "{e}");
    }
}

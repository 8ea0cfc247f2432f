//! An ELF64 core (`/proc/vmcore`, a copy of it, QEMU's `dump-guest-memory`)
//! as physical memory: its PT_LOAD segments by physical address and its
//! notes. Everything comes from an untrusted file: sizes are bounded and
//! offsets checked before use.
//!
//! kjump's capture reads cores through its own reader (which also merges
//! overlapping segments); this one serves the tools that read a core's
//! kernel structures: filtering, the kernel log, and the tests.

use std::os::unix::fs::FileExt;

use crate::mem::{PhysMemory, PhysReadError};
use kjump_image_format::le::{u16_at, u32_at, u64_at};

const EHDR: usize = 64;
const PHDR: usize = 56;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
/// Most notes kept (a vmcore's are a few KiB per CPU).
const MAX_NOTES: u64 = 16 << 20;

/// Why a file is not a usable core.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// Reading the file failed.
    #[error("reading {what} at offset {offset:#x}")]
    Io {
        /// What was read.
        what: &'static str,
        /// Where.
        offset: u64,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not an x86_64 ELF64 little-endian core.
    #[error("not an ELF64 little-endian x86_64 core: {0}")]
    NotCore(&'static str),
    /// A segment or the notes are larger than the file or bounds allow.
    #[error("{what} {index} at offset {offset:#x} with {len:#x} bytes lies outside the {file_len:#x}-byte file")]
    OutOfFile {
        /// PT_LOAD or PT_NOTE.
        what: &'static str,
        /// Program header index.
        index: usize,
        /// File offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Length of the file.
        file_len: u64,
    },
    /// The notes are larger than kjump keeps.
    #[error("PT_NOTE contents of {0} bytes, more than the {MAX_NOTES} kjump keeps")]
    NotesTooLarge(u64),
}

/// A PT_LOAD segment: physical bytes `[paddr, paddr + memsz)`, of which the
/// first `filesz` are at `offset` in the file and the rest read as zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load {
    /// Program header index.
    pub index: usize,
    /// `p_vaddr`.
    pub vaddr: u64,
    /// `p_paddr`.
    pub paddr: u64,
    /// `p_offset`.
    pub offset: u64,
    /// `p_filesz`.
    pub filesz: u64,
    /// `p_memsz`.
    pub memsz: u64,
}

/// An opened core.
pub struct Core<F: FileExt> {
    file: F,
    /// PT_LOAD segments in file order.
    pub loads: Vec<Load>,
    /// PT_NOTE contents, concatenated.
    pub notes: Vec<u8>,
    /// Segment indexes sorted by physical start; where segments overlap
    /// (a kdump core's kernel text), the longer one comes first.
    by_paddr: Vec<usize>,
}

/// `len` bytes of `file` at `offset`, `what` naming them for errors.
fn read_at<F: FileExt>(
    file: &F,
    what: &'static str,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>, CoreError> {
    let mut b = vec![0u8; len];
    file.read_exact_at(&mut b, offset)
        .map_err(|source| CoreError::Io {
            what,
            offset,
            source,
        })?;
    Ok(b)
}

/// Checks that `h` is the ELF header of an x86_64 ELF64 core with a
/// program header table this reader knows; returns the table's offset and
/// entry count.
fn check_elf_header(h: &[u8]) -> Result<(u64, usize), CoreError> {
    if h[..4] != *b"\x7fELF" {
        return Err(CoreError::NotCore("no ELF magic"));
    }
    if h[4] != 2 || h[5] != 1 {
        return Err(CoreError::NotCore("not ELF64 little-endian"));
    }
    if u16_at(h, 16) != 4 {
        return Err(CoreError::NotCore("e_type is not ET_CORE"));
    }
    if u16_at(h, 18) != 62 {
        return Err(CoreError::NotCore("e_machine is not x86_64"));
    }
    let (phoff, phnum) = (u64_at(h, 32), usize::from(u16_at(h, 56)));
    if phnum == 0xffff || (phnum > 0 && usize::from(u16_at(h, 54)) != PHDR) {
        return Err(CoreError::NotCore("unsupported program header table"));
    }
    Ok((phoff, phnum))
}

/// The PT_LOAD segments and the notes (every PT_NOTE read, back to back)
/// of the program header table `ph`, each checked to lie in the file.
fn read_segments<F: FileExt>(
    file: &F,
    ph: &[u8],
    file_len: u64,
) -> Result<(Vec<Load>, Vec<u8>), CoreError> {
    let (mut loads, mut notes) = (Vec::new(), Vec::new());
    for (index, p) in ph.chunks_exact(PHDR).enumerate() {
        let (kind, offset, filesz) = (u32_at(p, 0), u64_at(p, 8), u64_at(p, 32));
        let inside = offset.checked_add(filesz).is_some_and(|e| e <= file_len);
        let out = |what| CoreError::OutOfFile {
            what,
            index,
            offset,
            len: filesz,
            file_len,
        };
        match kind {
            PT_NOTE => {
                if !inside {
                    return Err(out("PT_NOTE"));
                }
                let total = notes.len() as u64 + filesz;
                if total > MAX_NOTES {
                    return Err(CoreError::NotesTooLarge(total));
                }
                notes.extend(read_at(file, "a PT_NOTE", offset, filesz as usize)?);
            }
            PT_LOAD => {
                let memsz = u64_at(p, 40);
                if !inside || filesz > memsz {
                    return Err(out("PT_LOAD"));
                }
                loads.push(Load {
                    index,
                    vaddr: u64_at(p, 16),
                    paddr: u64_at(p, 24),
                    offset,
                    filesz,
                    memsz,
                });
            }
            _ => {}
        }
    }
    Ok((loads, notes))
}

impl<F: FileExt> Core<F> {
    /// Reads the headers and notes of the core in `file`, `file_len` bytes.
    pub fn open(file: F, file_len: u64) -> Result<Self, CoreError> {
        let h = read_at(&file, "the ELF header", 0, EHDR)?;
        let (phoff, phnum) = check_elf_header(&h)?;
        let ph = read_at(&file, "the program headers", phoff, phnum * PHDR)?;
        let (loads, notes) = read_segments(&file, &ph, file_len)?;
        let mut by_paddr: Vec<usize> = (0..loads.len()).collect();
        by_paddr.sort_by_key(|&i| (loads[i].paddr, std::cmp::Reverse(loads[i].memsz)));
        Ok(Core {
            file,
            loads,
            notes,
            by_paddr,
        })
    }

    /// The VMCOREINFO note's text, if the core has one.
    pub fn vmcoreinfo(&self) -> Option<&[u8]> {
        crate::vmcoreinfo::find_in_notes(&self.notes)
    }

    /// The segment holding physical `addr`.
    fn load_at(&self, addr: u64) -> Option<&Load> {
        let i = self
            .by_paddr
            .partition_point(|&i| self.loads[i].paddr <= addr);
        self.by_paddr[..i]
            .iter()
            .rev()
            .map(|&i| &self.loads[i])
            .find(|l| addr - l.paddr < l.memsz)
    }

    /// Physical ranges `[start, end)` the core holds, sorted and joined.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        let mut r: Vec<(u64, u64)> = self
            .by_paddr
            .iter()
            .map(|&i| {
                (
                    self.loads[i].paddr,
                    self.loads[i].paddr + self.loads[i].memsz,
                )
            })
            .collect();
        r.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (s, e) in r {
            match out.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => out.push((s, e)),
            }
        }
        out
    }
}

impl<F: FileExt> PhysMemory for Core<F> {
    fn read_phys(&self, addr: u64, buf: &mut [u8]) -> Result<(), PhysReadError> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = addr + done as u64;
            let l = self.load_at(at).ok_or(PhysReadError::NotInDump {
                addr: at,
                len: buf.len() - done,
            })?;
            let rel = at - l.paddr;
            let n = ((l.memsz - rel) as usize).min(buf.len() - done);
            let part = &mut buf[done..done + n];
            let in_file = l.filesz.saturating_sub(rel).min(n as u64) as usize;
            self.file
                .read_exact_at(&mut part[..in_file], l.offset + rel)
                .map_err(|source| PhysReadError::Io {
                    addr: at,
                    len: n,
                    source,
                })?;
            part[in_file..].fill(0);
            done += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phdr(t: u32, off: u64, vaddr: u64, paddr: u64, filesz: u64, memsz: u64) -> Vec<u8> {
        let mut p = vec![0u8; PHDR];
        p[0..4].copy_from_slice(&t.to_le_bytes());
        p[8..16].copy_from_slice(&off.to_le_bytes());
        p[16..24].copy_from_slice(&vaddr.to_le_bytes());
        p[24..32].copy_from_slice(&paddr.to_le_bytes());
        p[32..40].copy_from_slice(&filesz.to_le_bytes());
        p[40..48].copy_from_slice(&memsz.to_le_bytes());
        p
    }

    /// PT_NOTE with VMCOREINFO, a kernel text segment inside RAM, RAM with
    /// a zero tail past its file bytes.
    fn core_bytes() -> Vec<u8> {
        let mut f = vec![0u8; EHDR];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[16..18].copy_from_slice(&4u16.to_le_bytes());
        f[18..20].copy_from_slice(&62u16.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[54..56].copy_from_slice(&(PHDR as u16).to_le_bytes());
        f[56..58].copy_from_slice(&3u16.to_le_bytes());
        let mut note = Vec::new();
        note.extend(11u32.to_le_bytes());
        note.extend(16u32.to_le_bytes());
        note.extend(0u32.to_le_bytes());
        note.extend(b"VMCOREINFO\0\0");
        note.extend(b"OSRELEASE=6.12\n\0");
        f.extend(phdr(
            PT_NOTE,
            0x200,
            0,
            0,
            note.len() as u64,
            note.len() as u64,
        ));
        f.extend(phdr(
            PT_LOAD,
            0x1000,
            0xffff_ffff_8100_0000,
            0x3000,
            0x1000,
            0x1000,
        ));
        f.extend(phdr(
            PT_LOAD,
            0x2000,
            0xffff_8880_0000_0000,
            0x1000,
            0x3000,
            0x5000,
        ));
        f.resize(0x200, 0);
        f.extend(note);
        f.resize(0x5000, 0);
        for (i, b) in f[0x2000..0x5000].iter_mut().enumerate() {
            *b = (i % 251) as u8 + 1;
        }
        let text = f[0x4000..0x5000].to_vec();
        f[0x1000..0x2000].copy_from_slice(&text);
        f
    }

    struct Bytes(Vec<u8>);
    impl FileExt for Bytes {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
            let at = (offset as usize).min(self.0.len());
            let n = buf.len().min(self.0.len() - at);
            buf[..n].copy_from_slice(&self.0[at..at + n]);
            Ok(n)
        }
        fn write_at(&self, _: &[u8], _: u64) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::Unsupported.into())
        }
    }

    #[test]
    fn reads_physical_memory_and_notes() {
        let f = core_bytes();
        let core = Core::open(Bytes(f.clone()), f.len() as u64).unwrap();
        assert_eq!(core.vmcoreinfo(), Some(&b"OSRELEASE=6.12\n\0"[..]));
        assert_eq!(core.ranges(), [(0x1000, 0x6000)]);
        let mut b = vec![0u8; 0x5000];
        core.read_phys(0x1000, &mut b).unwrap();
        assert_eq!(&b[..0x3000], &f[0x2000..0x5000]);
        assert!(b[0x3000..].iter().all(|&x| x == 0), "zero tail");
        let e = core.read_phys(0x5ff8, &mut [0u8; 16]).unwrap_err();
        assert!(
            matches!(
                e,
                PhysReadError::NotInDump {
                    addr: 0x6000,
                    len: 8
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn bad_cores_are_refused() {
        let f = core_bytes();
        let open = |f: Vec<u8>| {
            let len = f.len() as u64;
            Core::open(Bytes(f), len).err().map(|e| e.to_string())
        };
        let mut g = f.clone();
        g[18] = 183;
        assert_eq!(
            open(g).unwrap(),
            "not an ELF64 little-endian x86_64 core: e_machine is not x86_64"
        );
        let short = f[..0x4000].to_vec();
        assert_eq!(
            open(short).unwrap(),
            "PT_LOAD 2 at offset 0x2000 with 0x3000 bytes lies outside the 0x4000-byte file"
        );
        assert!(open(b"\x7fELF".to_vec())
            .unwrap()
            .starts_with("reading the ELF header"));
    }
}

//! An ELF64 core (`/proc/vmcore`, a copy of it, QEMU's `dump-guest-memory`)
//! as physical memory, for the tools that read a core's kernel structures:
//! filtering and the kernel log.
//!
//! The core is parsed by kjump's one ELF core reader, the capture's
//! ([`kjump_writer::elf`]): the same checks of an untrusted file, and the
//! same answer where PT_LOAD segments overlap (a kdump core's kernel text
//! is read once, from one segment, after both copies were found equal).

use std::os::unix::fs::FileExt;

use crate::mem::{PhysMemory, PhysReadError};
use kjump_writer::elf::{self, ElfCore, ElfError};

/// An opened core.
pub struct Core<F: FileExt> {
    file: F,
    elf: ElfCore,
}

impl<F: FileExt> Core<F> {
    /// Reads the headers and notes of the core in `file`, `file_len` bytes.
    pub fn open(file: F, file_len: u64) -> Result<Self, ElfError> {
        let elf = elf::parse(file_len, |offset, len| {
            let mut b = vec![0u8; len];
            file.read_exact_at(&mut b, offset)?;
            Ok(b)
        })?;
        Ok(Core { file, elf })
    }

    /// The PT_NOTE contents, concatenated.
    pub fn notes(&self) -> &[u8] {
        &self.elf.notes
    }

    /// The VMCOREINFO note's text, if the core has one.
    pub fn vmcoreinfo(&self) -> Option<&[u8]> {
        elf::vmcoreinfo(&self.elf.notes)
    }

    /// Physical ranges `[start, end)` the core holds, sorted and joined.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for r in self.elf.map.ranges() {
            let (s, e) = (r.start().0, r.end().0);
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
        let len = buf.len();
        match elf::read_phys(&self.file, &self.elf.segments, addr, buf) {
            Ok(n) if n == len => Ok(()),
            Ok(n) => Err(PhysReadError::NotInDump {
                addr: addr + n as u64,
                len: len - n,
            }),
            Err(e) => Err(PhysReadError::Io {
                addr: e.phys,
                len: e.len,
                source: e.source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EHDR: usize = 64;
    const PHDR: usize = 56;
    const PT_LOAD: u32 = 1;
    const PT_NOTE: u32 = 4;

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
    fn bad_cores_are_refused_as_the_capture_refuses_them() {
        let f = core_bytes();
        let open = |f: Vec<u8>| {
            let len = f.len() as u64;
            Core::open(Bytes(f), len).err().map(|e| e.to_string())
        };
        let mut g = f.clone();
        g[18] = 183;
        assert_eq!(
            open(g).unwrap(),
            "ELF header field e_machine is 0xb7: the core is for another architecture"
        );
        let short = f[..0x4000].to_vec();
        assert_eq!(
            open(short).unwrap(),
            "PT_LOAD 2 (paddr 0x1000) at file offset 0x2000 with size 0x3000 runs past the end of the file (0x4000 bytes)"
        );
        // The kernel text copy differs from RAM: neither copy is believed.
        let mut g = f.clone();
        g[0x1010] ^= 1;
        assert!(open(g)
            .unwrap()
            .contains("overlap in physical memory but differ, first at physical 0x3010"));
    }
}

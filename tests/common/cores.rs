//! Reading ELF cores with the `object` crate, independently of kjump's own
//! parser, so a round trip is checked by code that shares nothing with it.

use std::path::{Path, PathBuf};

use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
use object::Endianness;

/// One PT_LOAD as memory: its physical address and `p_memsz` bytes (the part
/// past `p_filesz` reads as zero).
#[derive(Debug, PartialEq, Eq)]
pub struct Segment {
    pub paddr: u64,
    pub bytes: Vec<u8>,
}

/// PT_LOAD segments with memory, sorted by physical address, and the
/// concatenated PT_NOTE contents.
pub fn read_core(path: &Path) -> (Vec<Segment>, Vec<u8>) {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let file = ElfFile64::<Endianness>::parse(&*data)
        .unwrap_or_else(|e| panic!("{} is not an ELF64 file: {e}", path.display()));
    let endian = file.endian();
    let header = file.elf_header();
    assert_eq!(
        header.e_type(endian),
        object::elf::ET_CORE,
        "{}",
        path.display()
    );
    let mut segments = Vec::new();
    let mut notes = Vec::new();
    for ph in file.elf_program_headers() {
        let body = ph.data(endian, &*data).expect("segment inside the file");
        match ph.p_type(endian) {
            object::elf::PT_LOAD if ph.p_memsz(endian) > 0 => {
                let mut bytes = body.to_vec();
                bytes.resize(ph.p_memsz(endian) as usize, 0);
                segments.push(Segment {
                    paddr: ph.p_paddr(endian),
                    bytes,
                });
            }
            object::elf::PT_NOTE => notes.extend_from_slice(body),
            _ => {}
        }
    }
    segments.sort_by_key(|s| s.paddr);
    (segments, notes)
}

/// Asserts that two cores hold the same memory segment by segment and the
/// same notes.
pub fn assert_same_memory(source: &Path, exported: &Path) {
    let (a, na) = read_core(source);
    let (b, nb) = read_core(exported);
    assert_eq!(
        a.len(),
        b.len(),
        "segment count of {} vs {}",
        source.display(),
        exported.display()
    );
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.paddr, y.paddr, "segment addresses");
        assert_eq!(
            x.bytes.len(),
            y.bytes.len(),
            "length of segment at {:#x}",
            x.paddr
        );
        if x.bytes != y.bytes {
            let at = x
                .bytes
                .iter()
                .zip(&y.bytes)
                .position(|(p, q)| p != q)
                .unwrap_or(0);
            panic!(
                "segment at {:#x} differs first at physical {:#x}",
                x.paddr,
                x.paddr + at as u64
            );
        }
    }
    assert_eq!(na, nb, "PT_NOTE contents");
}

/// A fresh directory under the target's temporary area, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let dir = base.join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating test directory");
        TempDir(dir)
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

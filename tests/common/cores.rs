//! Reading ELF cores with the `object` crate, independently of kjump's own
//! parser, so a round trip is checked by code that shares nothing with it.
//!
//! Memory is compared by physical address, not segment by segment: a source
//! core may cover the same physical bytes with several PT_LOADs (a kdump
//! core's kernel text mapping), which an export holds once.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use object::elf::FileHeader64;
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

/// One PT_LOAD's header, as the file says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load {
    /// Program header index.
    pub index: usize,
    pub vaddr: u64,
    pub paddr: u64,
    pub offset: u64,
    pub filesz: u64,
    pub memsz: u64,
}

impl Load {
    /// One past the last physical byte.
    pub fn end(&self) -> u64 {
        self.paddr + self.memsz
    }
}

/// Bytes read at a time when comparing or scanning large cores.
const CHUNK: u64 = 8 << 20;

fn read_at(file: &File, path: &Path, buf: &mut [u8], offset: u64) {
    file.read_exact_at(buf, offset).unwrap_or_else(|e| {
        panic!(
            "reading {:#x} bytes of {} at {offset:#x}: {e}",
            buf.len(),
            path.display()
        )
    });
}

/// The ELF header of the core `file` (at `path`) and its byte order,
/// asserting it is an ELF64 core.
fn elf_header(file: &File, path: &Path) -> (FileHeader64<Endianness>, Endianness) {
    let mut head = vec![0u8; 64];
    read_at(file, path, &mut head, 0);
    let header = *FileHeader64::<Endianness>::parse(&*head)
        .unwrap_or_else(|e| panic!("{} is not an ELF64 file: {e}", path.display()));
    let endian = header.endian().expect("a known byte order");
    assert_eq!(
        header.e_type(endian),
        object::elf::ET_CORE,
        "{}",
        path.display()
    );
    (header, endian)
}

/// The PT_LOADs with memory (in program header order) and the concatenated
/// PT_NOTE contents of a core of any size: only the headers and the notes
/// are read, with `object`'s header parser.
pub fn core_headers(path: &Path) -> (Vec<Load>, Vec<u8>) {
    let file = File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let (header, endian) = elf_header(&file, path);
    let phoff = header.e_phoff(endian);
    let ph_end = phoff + u64::from(header.e_phnum(endian)) * 56;
    let mut head = vec![0u8; ph_end as usize];
    read_at(&file, path, &mut head, 0);
    let header = FileHeader64::<Endianness>::parse(&*head).expect("parsed above");
    let phdrs = header
        .program_headers(endian, &*head)
        .unwrap_or_else(|e| panic!("program headers of {}: {e}", path.display()));
    let mut loads = Vec::new();
    let mut notes = Vec::new();
    for (index, ph) in phdrs.iter().enumerate() {
        match ph.p_type(endian) {
            object::elf::PT_LOAD if ph.p_memsz(endian) > 0 => loads.push(Load {
                index,
                vaddr: ph.p_vaddr(endian),
                paddr: ph.p_paddr(endian),
                offset: ph.p_offset(endian),
                filesz: ph.p_filesz(endian),
                memsz: ph.p_memsz(endian),
            }),
            object::elf::PT_NOTE => {
                let mut n = vec![0u8; ph.p_filesz(endian) as usize];
                read_at(&file, path, &mut n, ph.p_offset(endian));
                notes.extend_from_slice(&n);
            }
            _ => {}
        }
    }
    (loads, notes)
}

/// Bytes `[paddr, paddr + buf.len())` of `load` into `buf`; past `p_filesz`
/// they are zero.
fn load_bytes(file: &File, path: &Path, load: &Load, paddr: u64, buf: &mut [u8]) {
    let rel = paddr - load.paddr;
    let in_file = load.filesz.saturating_sub(rel).min(buf.len() as u64) as usize;
    read_at(file, path, &mut buf[..in_file], load.offset + rel);
    buf[in_file..].fill(0);
}

/// The physical ranges covered by `loads`, sorted, overlaps and adjacent
/// ranges joined.
fn union(loads: &[Load]) -> Vec<(u64, u64)> {
    let mut r: Vec<(u64, u64)> = loads.iter().map(|l| (l.paddr, l.end())).collect();
    r.sort();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in r {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// Asserts that two cores hold the same memory at every physical address
/// and the same notes: every byte of every PT_LOAD of `source` (several
/// may cover the same bytes, as in kdump cores) equals the byte at the same
/// physical address in `exported`, whose PT_LOADs must not overlap and must
/// cover exactly the physical addresses `source` covers. Reads both files
/// a few MiB at a time, so cores of any size can be compared.
pub fn assert_same_memory(source: &Path, exported: &Path) {
    let (src, na) = core_headers(source);
    let (mut out, nb) = core_headers(exported);
    out.sort_by_key(|l| l.paddr);
    for w in out.windows(2) {
        assert!(
            w[0].end() <= w[1].paddr,
            "PT_LOAD {} and {} of {} overlap",
            w[0].index,
            w[1].index,
            exported.display()
        );
    }
    assert_eq!(
        union(&src),
        union(&out),
        "physical ranges of {} vs {}",
        source.display(),
        exported.display()
    );
    let (fa, fb) = (
        File::open(source).expect("open the source core"),
        File::open(exported).expect("open the exported core"),
    );
    let (mut x, mut y) = (vec![0u8; CHUNK as usize], vec![0u8; CHUNK as usize]);
    for s in &src {
        let mut at = s.paddr;
        while at < s.end() {
            // The exported PT_LOAD holding `at`; the unions match, so one does.
            let o = out
                .iter()
                .find(|o| o.paddr <= at && at < o.end())
                .unwrap_or_else(|| panic!("physical {at:#x} missing from {}", exported.display()));
            let n = (s.end() - at).min(o.end() - at).min(CHUNK) as usize;
            load_bytes(&fa, source, s, at, &mut x[..n]);
            load_bytes(&fb, exported, o, at, &mut y[..n]);
            if x[..n] != y[..n] {
                let i = x[..n]
                    .iter()
                    .zip(&y[..n])
                    .position(|(p, q)| p != q)
                    .unwrap_or(0);
                panic!(
                    "PT_LOAD {} of {} (paddr {:#x}) differs from PT_LOAD {} of {} first at physical {:#x}",
                    s.index,
                    source.display(),
                    s.paddr,
                    o.index,
                    exported.display(),
                    at + i as u64
                );
            }
            at += n as u64;
        }
    }
    assert_eq!(na, nb, "PT_NOTE contents");
}

/// Calls `f(paddr, page)` for every whole 4 KiB page at a page-aligned
/// physical address in each PT_LOAD of `path`, reading a few MiB at a time.
pub fn for_each_page(path: &Path, mut f: impl FnMut(u64, &[u8])) {
    const PAGE: u64 = 4096;
    let (loads, _) = core_headers(path);
    let file = File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let mut buf = vec![0u8; CHUNK as usize];
    for l in &loads {
        let mut at = l.paddr.next_multiple_of(PAGE);
        let end = l.end() / PAGE * PAGE;
        while at < end {
            let n = (end - at).min(CHUNK) as usize;
            load_bytes(&file, path, l, at, &mut buf[..n]);
            for (i, page) in buf[..n].chunks_exact(PAGE as usize).enumerate() {
                f(at + i as u64 * PAGE, page);
            }
            at += n as u64;
        }
    }
}

/// How often each of `pages` (4 KiB each, all different) occurs in the
/// PT_LOADs of the core at `path`, at a page-aligned physical address. A
/// guest keeps a file in page-cache pages, which need not be physically
/// contiguous, so a search for its contents goes page by page.
pub fn page_copies(path: &Path, pages: &[&[u8]]) -> Vec<u32> {
    let index: HashMap<&[u8], usize> = pages.iter().enumerate().map(|(i, p)| (*p, i)).collect();
    assert_eq!(
        index.len(),
        pages.len(),
        "the pages looked for are not all different"
    );
    let mut copies = vec![0; pages.len()];
    for_each_page(path, |_, page| {
        if let Some(&i) = index.get(page) {
            copies[i] += 1;
        }
    });
    copies
}

/// Asserts what the tests expect of a core from a real x86-64 machine
/// beyond what [`core_headers`] reads: its machine is x86-64, and every
/// PT_LOAD lies inside the file with no more bytes there than in memory.
pub fn assert_x86_64_core(path: &Path) {
    let file = File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let (header, endian) = elf_header(&file, path);
    assert_eq!(
        header.e_machine(endian),
        object::elf::EM_X86_64,
        "e_machine of {} is not x86-64",
        path.display()
    );
    let (loads, _) = core_headers(path);
    for l in &loads {
        let end = l
            .offset
            .checked_add(l.filesz)
            .expect("segment end overflows");
        assert!(end <= len, "segment {l:?} runs past the file");
        assert!(l.filesz <= l.memsz, "filesz > memsz: {l:?}");
    }
}

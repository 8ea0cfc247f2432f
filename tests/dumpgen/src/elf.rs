//! ELF64 little-endian header and program header encoding, for x86-64 cores.

/// Size of the ELF64 file header.
pub const EHDR_SIZE: u64 = 64;
/// Size of one ELF64 program header.
pub const PHDR_SIZE: u64 = 56;
/// `e_type` of a core file.
pub const ET_CORE: u16 = 4;
/// `e_machine` of x86-64.
pub const EM_X86_64: u16 = 62;
/// `p_type` of a loadable segment (here: a range of physical memory).
pub const PT_LOAD: u32 = 1;
/// `p_type` of the note segment.
pub const PT_NOTE: u32 = 4;
/// The largest `e_phnum`; beyond it ELF needs the `PN_XNUM` escape through a
/// section header, which no dump generated here needs.
pub const MAX_PHNUM: usize = 0xfffe;

/// One program header's fields.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Phdr {
    pub(crate) p_type: u32,
    pub(crate) p_flags: u32,
    pub(crate) offset: u64,
    pub(crate) vaddr: u64,
    pub(crate) paddr: u64,
    pub(crate) filesz: u64,
    pub(crate) memsz: u64,
    pub(crate) align: u64,
}

/// The file header of a core with `phnum` program headers right after it.
pub(crate) fn ehdr(phnum: u16) -> [u8; EHDR_SIZE as usize] {
    let mut h = [0u8; EHDR_SIZE as usize];
    // EI_CLASS = ELFCLASS64, EI_DATA = ELFDATA2LSB, EI_VERSION = EV_CURRENT,
    // EI_OSABI = SYSV, as the kernel and QEMU write them.
    h[..7].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1]);
    h[16..18].copy_from_slice(&ET_CORE.to_le_bytes());
    h[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
    h[20..24].copy_from_slice(&1u32.to_le_bytes()); // e_version
    h[32..40].copy_from_slice(&EHDR_SIZE.to_le_bytes()); // e_phoff
    h[52..54].copy_from_slice(&(EHDR_SIZE as u16).to_le_bytes()); // e_ehsize
    h[54..56].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes()); // e_phentsize
    h[56..58].copy_from_slice(&phnum.to_le_bytes());
    h
}

/// One encoded program header.
pub(crate) fn phdr(p: &Phdr) -> [u8; PHDR_SIZE as usize] {
    let mut h = [0u8; PHDR_SIZE as usize];
    h[0..4].copy_from_slice(&p.p_type.to_le_bytes());
    h[4..8].copy_from_slice(&p.p_flags.to_le_bytes());
    let words = [p.offset, p.vaddr, p.paddr, p.filesz, p.memsz, p.align];
    for (i, w) in words.iter().enumerate() {
        h[8 + i * 8..16 + i * 8].copy_from_slice(&w.to_le_bytes());
    }
    h
}

/// A core of given memory, for a test whose pages must hold what it put
/// there rather than generated pages: the note segment `notes` (none when
/// empty) right after the program headers, then each of `loads`
/// (physical address, bytes) from the next 4 KiB boundary on, packed. The
/// header values are QEMU's (`p_vaddr`, `p_flags` and a load's `p_align`
/// 0).
pub fn core(notes: &[u8], loads: &[(u64, &[u8])]) -> Vec<u8> {
    let note = !notes.is_empty();
    let phnum = loads.len() + usize::from(note);
    assert!(phnum <= MAX_PHNUM, "{phnum} program headers");
    let notes_at = EHDR_SIZE + PHDR_SIZE * phnum as u64;
    let data_at = (notes_at + notes.len() as u64).next_multiple_of(4096);
    let mut out = ehdr(phnum as u16).to_vec();
    if note {
        out.extend(phdr(&Phdr {
            p_type: PT_NOTE,
            p_flags: 0,
            offset: notes_at,
            vaddr: 0,
            paddr: 0,
            filesz: notes.len() as u64,
            memsz: notes.len() as u64,
            align: 4,
        }));
    }
    let mut at = data_at;
    for (paddr, bytes) in loads {
        let len = bytes.len() as u64;
        out.extend(phdr(&Phdr {
            p_type: PT_LOAD,
            p_flags: 0,
            offset: at,
            vaddr: 0,
            paddr: *paddr,
            filesz: len,
            memsz: len,
            align: 0,
        }));
        at += len;
    }
    out.extend_from_slice(notes);
    out.resize(data_at as usize, 0);
    for (_, bytes) in loads {
        out.extend_from_slice(bytes);
    }
    out
}

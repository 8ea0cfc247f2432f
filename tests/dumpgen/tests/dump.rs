//! Whole-dump tests: reproducibility, the ELF structure read back with the
//! `object` crate's parser (which shares nothing with the writer, and reads
//! the cores in kjump's own tests too), and the page mix as seen in the file.

use kjump_dumpgen::{
    elf, note, write_dump, write_dump_to, DumpInfo, DumpSpec, DumpgenError, ElfStyle, KernelText,
    Layout, PageMix, SegmentSpec, NT_PRSTATUS, NT_VMCOREINFO, PAGE_SIZE, START_KERNEL_MAP,
};
use object::elf::FileHeader64;
use object::read::elf::{FileHeader, ProgramHeader};
use object::Endianness;

const MIB: u64 = 1 << 20;

fn dump(spec: &DumpSpec) -> (Vec<u8>, DumpInfo) {
    let mut bytes = Vec::new();
    let info = write_dump_to(spec, &mut bytes).expect("in-memory dump");
    (bytes, info)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// (type, offset, vaddr, paddr, filesz, memsz, align) of each program header.
type Phdr = (u32, u64, u64, u64, u64, u64, u64);

fn parse_phdrs(b: &[u8]) -> Vec<Phdr> {
    // Class 64, little-endian, version 1, the System V ABI.
    assert_eq!(&b[..8], &[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    let h = FileHeader64::<Endianness>::parse(b).expect("an ELF64 header");
    let e = h.endian().expect("a known byte order");
    assert_eq!(h.e_type(e), elf::ET_CORE);
    assert_eq!(h.e_machine(e), elf::EM_X86_64);
    assert_eq!(h.e_version(e), 1);
    assert_eq!(h.e_phoff(e), 64, "e_phoff right after the header");
    assert_eq!(h.e_ehsize(e), 64);
    assert_eq!(h.e_phentsize(e), 56);
    h.program_headers(e, b)
        .expect("program headers inside the file")
        .iter()
        .map(|p| {
            (
                p.p_type(e),
                p.p_offset(e),
                p.p_vaddr(e),
                p.p_paddr(e),
                p.p_filesz(e),
                p.p_memsz(e),
                p.p_align(e),
            )
        })
        .collect()
}

/// Checks headers against `info` and the file's extent; returns each
/// segment's file bytes.
fn check_structure<'a>(b: &'a [u8], info: &DumpInfo, style: ElfStyle) -> Vec<&'a [u8]> {
    let phdrs = parse_phdrs(b);
    assert_eq!(phdrs.len(), info.segments.len() + 1);
    let (ty, off, _, _, filesz, memsz, _) = phdrs[0];
    assert_eq!(ty, elf::PT_NOTE);
    assert_eq!(
        (off, filesz, memsz),
        (info.notes_offset, info.notes.len() as u64, filesz)
    );
    assert_eq!(
        off,
        64 + 56 * phdrs.len() as u64,
        "notes follow the headers"
    );
    assert_eq!(&b[off as usize..(off + filesz) as usize], &info.notes[..]);
    assert_eq!(b.len() as u64, info.file_size);
    let mut end = off + filesz;
    let mut prev_pend = 0;
    let mut data = Vec::new();
    for (p, s) in phdrs[1..].iter().zip(&info.segments) {
        let &(ty, off, vaddr, paddr, filesz, memsz, align) = p;
        assert_eq!(ty, elf::PT_LOAD);
        assert_eq!(
            (off, vaddr, paddr, filesz, memsz),
            (s.offset, s.vaddr, s.paddr, s.filesz, s.memsz)
        );
        assert!(filesz <= memsz);
        assert!(paddr >= prev_pend, "segments sorted, not overlapping");
        prev_pend = paddr + memsz;
        assert!(off >= end, "segment data must not overlap");
        assert!(
            b[end as usize..off as usize].iter().all(|x| *x == 0),
            "padding is zero"
        );
        match style {
            ElfStyle::Vmcore => {
                assert_eq!(off % 4096, paddr % 4096, "offset congruent to paddr");
                assert!(off - end < 4096);
                assert_eq!(align, 4096);
            }
            ElfStyle::Packed => {
                assert_eq!(off, end, "packed data");
                assert_eq!((vaddr, align), (0, 0));
            }
        }
        end = off + filesz;
        data.push(&b[off as usize..end as usize]);
    }
    assert_eq!(
        end, info.file_size,
        "file ends with the last segment's data"
    );
    data
}

#[test]
fn every_layout_is_well_formed() {
    for layout in Layout::ALL {
        let spec = DumpSpec::from_layout(layout, 4 * MIB + 0x321, 3).unwrap();
        let (bytes, info) = dump(&spec);
        let data = check_structure(&bytes, &info, spec.style);
        assert_eq!(data.len(), spec.segments.len());
        let filesz: u64 = data.iter().map(|d| d.len() as u64).sum();
        assert_eq!(filesz, spec.total_filesz(), "{layout}");
    }
}

#[test]
fn same_seed_same_bytes_different_seed_different_bytes() {
    let spec = DumpSpec::from_layout(Layout::Unaligned, 6 * MIB, 11).unwrap();
    let (a, info_a) = dump(&spec);
    let (b, info_b) = dump(&spec);
    assert_eq!(a, b);
    assert_eq!(info_a, info_b);
    let other = DumpSpec {
        seed: 12,
        ..spec.clone()
    };
    let (c, info_c) = dump(&other);
    assert_eq!(a.len(), c.len(), "the layout does not depend on the seed");
    assert_ne!(info_a.build_id, info_c.build_id);
    for (da, dc) in check_structure(&a, &info_a, spec.style)
        .iter()
        .zip(check_structure(&c, &info_c, spec.style))
    {
        // A segment of a few pages may be all zero pages in both.
        if da.len() > 64 * PAGE_SIZE {
            assert!(*da != dc);
        }
    }
}

#[test]
fn bytes_do_not_depend_on_thread_count() {
    let spec = DumpSpec::from_layout(Layout::Holes, 24 * MIB, 5).unwrap();
    let (many, _) = dump(&spec);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let (one, _) = pool.install(|| dump(&spec));
    assert_eq!(many, one);
}

#[test]
fn content_follows_physical_address_across_unaligned_cuts() {
    // Same first and last page, so the same plan: the second segment's bytes
    // must be the first's shifted by 0x800, across batch and piece edges.
    let len = 17 * MIB + 0x345;
    let a = DumpSpec::new(9, vec![SegmentSpec::new(0x1000, len + 0x800)]);
    let b = DumpSpec::new(9, vec![SegmentSpec::new(0x1800, len)]);
    let (da, ia) = dump(&a);
    let (db, ib) = dump(&b);
    let sa = check_structure(&da, &ia, ElfStyle::Vmcore)[0];
    let sb = check_structure(&db, &ib, ElfStyle::Vmcore)[0];
    assert!(sa[0x800..] == *sb);
}

fn zero_page_share(mix: PageMix) -> f64 {
    let spec = DumpSpec::from_layout(Layout::Single, 32 * MIB, 21)
        .unwrap()
        .with_mix(mix);
    let (bytes, info) = dump(&spec);
    let data = check_structure(&bytes, &info, spec.style)[0];
    let zero = data
        .chunks_exact(PAGE_SIZE)
        .filter(|p| p.iter().all(|b| *b == 0))
        .count();
    zero as f64 / (data.len() / PAGE_SIZE) as f64
}

#[test]
fn page_mix_is_honoured() {
    let share = zero_page_share(PageMix::default());
    assert!((0.40..=0.50).contains(&share), "zero share {share}");
    assert_eq!(zero_page_share(PageMix::all_zero()), 1.0);
    assert_eq!(zero_page_share(PageMix::all_random()), 0.0);
    let mostly_zero = PageMix {
        zero: 80,
        kernel: 10,
        text: 5,
        random: 5,
    };
    let share = zero_page_share(mostly_zero);
    assert!((0.75..=0.85).contains(&share), "zero share {share}");
}

#[test]
fn page_counts_match_the_mix() {
    let spec = DumpSpec::from_layout(Layout::Qemu, 8 * MIB, 2).unwrap();
    let (_, info) = dump(&spec);
    let total = info.pages.total() as f64;
    assert!((info.pages.zero as f64 / total - 0.45).abs() < 0.01);
    assert!((info.pages.random as f64 / total - 0.15).abs() < 0.01);
    let sum: u64 = info.segments.iter().map(|s| s.pages.total()).sum();
    assert_eq!(sum, info.pages.total());
}

#[test]
fn notes_hold_prstatus_and_vmcoreinfo() {
    let spec = DumpSpec::from_layout(Layout::Single, MIB, 4).unwrap();
    let (bytes, info) = dump(&spec);
    let mut notes = &bytes[info.notes_offset as usize..][..info.notes.len()];
    let mut seen = Vec::new();
    while !notes.is_empty() {
        let (namesz, descsz) = (u32_at(notes, 0) as usize, u32_at(notes, 4) as usize);
        let name = &notes[12..12 + namesz];
        let desc_at = 12 + namesz.next_multiple_of(4);
        let desc = &notes[desc_at..desc_at + descsz];
        seen.push((name.to_vec(), u32_at(notes, 8), desc.to_vec()));
        notes = &notes[desc_at + descsz.next_multiple_of(4)..];
    }
    let prstatus = seen
        .iter()
        .filter(|n| n.0 == b"CORE\0" && n.1 == NT_PRSTATUS);
    assert_eq!(prstatus.count(), spec.notes.cpus as usize);
    let (_, _, text) = seen
        .iter()
        .find(|n| n.0 == b"VMCOREINFO\0" && n.1 == NT_VMCOREINFO)
        .expect("VMCOREINFO note");
    let text = std::str::from_utf8(text).unwrap();
    let head = format!(
        "OSRELEASE={}\nPAGESIZE=4096\nBUILD-ID={}\n",
        info.os_release, info.build_id
    );
    assert!(text.contains(&head), "{text}");
    assert!(info.build_id.len() == 40 && info.build_id.bytes().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(text, info.vmcoreinfo);
}

#[test]
fn file_and_memory_dumps_agree() {
    let spec = DumpSpec::from_layout(Layout::Unaligned, 4 * MIB, 8).unwrap();
    let path = std::env::temp_dir().join(format!("kjump-dumpgen-test-{}.elf", std::process::id()));
    let info = write_dump(&spec, &path).unwrap();
    let from_file = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let (in_memory, info_mem) = dump(&spec);
    assert_eq!(info, info_mem);
    assert!(from_file == in_memory);
}

#[test]
fn io_errors_carry_path_and_offset() {
    let spec = DumpSpec::from_layout(Layout::Single, MIB, 1).unwrap();
    let missing = std::path::Path::new("/nonexistent-dir/dump.elf");
    assert!(matches!(
        write_dump(&spec, missing),
        Err(DumpgenError::Create { path, .. }) if path == missing
    ));
    // /dev/full accepts the open and fails every write with ENOSPC.
    let full = std::path::Path::new("/dev/full");
    if full.exists() {
        let err = write_dump(&spec, full).unwrap_err();
        assert!(
            matches!(&err, DumpgenError::WriteFile { path, offset: 0, .. } if path == full),
            "{err:?}"
        );
    }
}

#[test]
fn invalid_specs_are_rejected_before_writing() {
    let bad = DumpSpec::new(1, vec![SegmentSpec::new(0, 10).with_filesz(20)]);
    let mut out = Vec::new();
    assert!(matches!(
        write_dump_to(&bad, &mut out),
        Err(DumpgenError::FileszExceedsMemsz { .. })
    ));
    assert!(out.is_empty());
}

/// The kernel text PT_LOAD of `bytes` (program header 1) and its file bytes,
/// with the RAM segment's bytes at the same physical addresses.
fn text_and_ram<'a>(bytes: &'a [u8], info: &DumpInfo) -> (&'a [u8], &'a [u8]) {
    let text = info.kernel_text.as_ref().expect("a kernel text segment");
    let phdrs = parse_phdrs(bytes);
    assert_eq!(phdrs.len(), info.segments.len() + 2);
    let (ty, off, vaddr, paddr, filesz, memsz, _) = phdrs[1];
    assert_eq!(ty, elf::PT_LOAD);
    assert_eq!(
        (off, vaddr, paddr, filesz, memsz),
        (text.offset, text.vaddr, text.paddr, text.filesz, text.memsz)
    );
    assert_eq!(vaddr, START_KERNEL_MAP + paddr);
    assert!(
        off >= info.notes_offset + info.notes.len() as u64,
        "data after the notes"
    );
    let home = info
        .segments
        .iter()
        .find(|s| s.paddr <= paddr && paddr + filesz <= s.paddr + s.filesz)
        .expect("a RAM segment holding the text");
    let ram_at = (home.offset + (paddr - home.paddr)) as usize;
    (
        &bytes[off as usize..(off + filesz) as usize],
        &bytes[ram_at..ram_at + filesz as usize],
    )
}

#[test]
fn kernel_text_repeats_ram_bytes_or_differs_in_one() {
    let text = KernelText::at_16m(9 * MIB + 0x1000);
    for style in [ElfStyle::Vmcore, ElfStyle::Packed] {
        let mut spec = DumpSpec::from_layout(Layout::Qemu, 64 * MIB, 6)
            .unwrap()
            .with_kernel_text(text);
        spec.style = style;
        let (bytes, info) = dump(&spec);
        assert_eq!(bytes.len() as u64, info.file_size);
        let (copy, ram) = text_and_ram(&bytes, &info);
        assert!(copy == ram, "{style:?}: the copy equals the RAM bytes");
        assert!(copy.chunks(PAGE_SIZE).any(|p| p.iter().any(|b| *b != 0)));
        // The RAM segments are the same as without the text segment.
        let plain = DumpSpec {
            kernel_text: None,
            ..spec.clone()
        };
        let (plain_bytes, plain_info) = dump(&plain);
        for (a, b) in info.segments.iter().zip(&plain_info.segments) {
            let at = |i: &kjump_dumpgen::SegmentInfo, all: &[u8]| {
                all[i.offset as usize..(i.offset + i.filesz) as usize].to_vec()
            };
            assert!(at(a, &bytes) == at(b, &plain_bytes));
        }
        assert_eq!(
            info.pages, plain_info.pages,
            "the copy is not counted twice"
        );

        let (bytes, info) = dump(&spec.clone().with_kernel_text(text.differing_at(0x12345)));
        let (copy, ram) = text_and_ram(&bytes, &info);
        let differing: Vec<usize> = (0..copy.len()).filter(|&i| copy[i] != ram[i]).collect();
        assert_eq!(differing, [0x12345]);
    }
}

#[test]
fn a_core_of_given_memory_holds_its_note_and_bytes() {
    let info = "OSRELEASE=6.12.0\nPAGESIZE=4096\n";
    let notes = note("VMCOREINFO", NT_VMCOREINFO, info.as_bytes());
    assert_eq!(
        (u32_at(&notes, 0), u32_at(&notes, 4), u32_at(&notes, 8)),
        (11, info.len() as u32, NT_VMCOREINFO),
        "namesz counts the NUL"
    );
    assert_eq!(&notes[12..24], b"VMCOREINFO\0\0");
    assert_eq!(&notes[24..24 + info.len()], info.as_bytes());
    assert_eq!(notes.len(), 24 + info.len().next_multiple_of(4));

    let low = vec![0x5a; 4096];
    let high: Vec<u8> = (0..8192u32).map(|i| i as u8).collect();
    let b = elf::core(&notes, &[(0x1000, &low), (0x10_0000, &high)]);
    let notes_at = 64 + 3 * 56;
    let len = notes.len() as u64;
    assert_eq!(
        parse_phdrs(&b),
        [
            (elf::PT_NOTE, notes_at, 0, 0, len, len, 4),
            (elf::PT_LOAD, 4096, 0, 0x1000, 4096, 4096, 0),
            (elf::PT_LOAD, 8192, 0, 0x10_0000, 8192, 8192, 0),
        ]
    );
    assert_eq!(&b[notes_at as usize..][..notes.len()], &notes[..]);
    assert_eq!((&b[4096..8192], &b[8192..]), (&low[..], &high[..]));

    // Without notes, no PT_NOTE.
    let bare = elf::core(&[], &[(0x1000, &low)]);
    assert_eq!(
        parse_phdrs(&bare),
        [(elf::PT_LOAD, 4096, 0, 0x1000, 4096, 4096, 0)]
    );
}

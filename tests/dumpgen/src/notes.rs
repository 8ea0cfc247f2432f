//! The PT_NOTE segment: one `CORE`/`NT_PRSTATUS` note per CPU and a
//! `VMCOREINFO` note, in the order the kernel's /proc/vmcore presents them.

use crate::rng::{derive, Rng};
use crate::DumpgenError;

/// `n_type` of the kernel's VMCOREINFO note.
pub const NT_VMCOREINFO: u32 = 0;
/// `n_type` of a `CORE` note holding a `struct elf_prstatus`.
pub const NT_PRSTATUS: u32 = 1;
/// `sizeof(struct elf_prstatus)` on x86-64.
pub const PRSTATUS_SIZE: usize = 336;

const DOMAIN_BUILD_ID: u64 = 3;
/// Offset of `pr_pid` in `struct elf_prstatus`.
const PR_PID: usize = 32;
/// Offset of `pr_reg` (a `struct user_regs_struct`) in `struct elf_prstatus`.
const PR_REG: usize = 112;

/// What the notes say about the "crashed" kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotesSpec {
    /// `OSRELEASE=` in VMCOREINFO (the `uname -r` of the dumped kernel).
    pub os_release: String,
    /// `BUILD-ID=` in VMCOREINFO; `None` derives 20 bytes from the dump seed.
    pub build_id: Option<[u8; 20]>,
    /// Number of `NT_PRSTATUS` notes (one per CPU); at least 1.
    pub cpus: u32,
}

impl Default for NotesSpec {
    fn default() -> Self {
        Self {
            os_release: "6.1.0-28-amd64".to_owned(),
            build_id: None,
            cpus: 2,
        }
    }
}

impl NotesSpec {
    pub(crate) fn validate(&self) -> Result<(), DumpgenError> {
        let bad = self.os_release.is_empty()
            || self
                .os_release
                .bytes()
                .any(|b| b.is_ascii_control() || b == b' ' || !b.is_ascii());
        if bad {
            return Err(DumpgenError::InvalidRelease {
                release: self.os_release.clone(),
            });
        }
        if self.cpus == 0 {
            return Err(DumpgenError::NoCpus);
        }
        Ok(())
    }
}

/// The built note segment and the values a test compares against.
#[derive(Debug, Clone)]
pub(crate) struct Notes {
    pub(crate) bytes: Vec<u8>,
    pub(crate) build_id: String,
    pub(crate) vmcoreinfo: String,
}

/// Builds the note segment for `spec` (already validated).
pub(crate) fn build(spec: &NotesSpec, seed: u64) -> Notes {
    let id = spec.build_id.unwrap_or_else(|| {
        let mut id = [0u8; 20];
        Rng::new(derive(seed, DOMAIN_BUILD_ID, 0)).fill(&mut id);
        id
    });
    let build_id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let vmcoreinfo = vmcoreinfo_text(&spec.os_release, &build_id);
    let mut bytes = Vec::new();
    for cpu in 0..spec.cpus {
        push_note(&mut bytes, "CORE", NT_PRSTATUS, &prstatus(cpu));
    }
    push_note(
        &mut bytes,
        "VMCOREINFO",
        NT_VMCOREINFO,
        vmcoreinfo.as_bytes(),
    );
    Notes {
        bytes,
        build_id,
        vmcoreinfo,
    }
}

/// One ELF note as a core holds it, for a test that builds a core of its
/// own notes and memory ([`crate::elf::core`]).
pub fn note(name: &str, n_type: u32, desc: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    push_note(&mut out, name, n_type, desc);
    out
}

/// Appends one ELF note: `namesz` counts the NUL, and name and descriptor are
/// each padded to 4 bytes (the 64-bit gABI's 8 is not what Linux uses for
/// core notes).
fn push_note(out: &mut Vec<u8>, name: &str, n_type: u32, desc: &[u8]) {
    let namesz = name.len() + 1;
    out.extend_from_slice(&(namesz as u32).to_le_bytes());
    out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    out.extend_from_slice(&n_type.to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    // The NUL terminator, then padding.
    out.resize(out.len() + pad4(namesz) - name.len(), 0);
    out.extend_from_slice(desc);
    out.resize(out.len() + pad4(desc.len()) - desc.len(), 0);
}

fn pad4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

/// A `struct elf_prstatus` as kdump saves it for a CPU stopped by NMI: the
/// pid of the task it was running and its registers; the rest zero.
fn prstatus(cpu: u32) -> Vec<u8> {
    let mut d = vec![0u8; PRSTATUS_SIZE];
    let pid = if cpu == 0 { 1234 } else { 0 };
    d[PR_PID..PR_PID + 4].copy_from_slice(&(pid as u32).to_le_bytes());
    let cpu = u64::from(cpu);
    // user_regs_struct order: r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx
    // rdx rsi rdi orig_rax rip cs eflags rsp ss fs_base gs_base ds es fs gs.
    let stack = 0xffff_c900_0000_3e00 + cpu * 0x4000;
    let regs: [(usize, u64); 8] = [
        (4, stack + 0x40),                            // rbp
        (15, u64::MAX),                               // orig_rax
        (16, 0xffff_ffff_81b2_c5a1),                  // rip, in the idle loop
        (17, 0x10),                                   // cs
        (18, 0x246),                                  // eflags
        (19, stack),                                  // rsp
        (20, 0x18),                                   // ss
        (22, 0xffff_8881_7bc0_0000 + cpu * 0x4_0000), // gs_base, per-CPU area
    ];
    for (i, v) in regs {
        let at = PR_REG + i * 8;
        d[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
    d
}

/// VMCOREINFO text like a Debian 6.1 x86-64 kernel's, abridged. The first
/// three lines are the ones kjump reads; the rest make parsers meet the
/// real variety of keys.
fn vmcoreinfo_text(release: &str, build_id: &str) -> String {
    let mut s = format!("OSRELEASE={release}\nPAGESIZE=4096\nBUILD-ID={build_id}\n");
    s.push_str(concat!(
        "SYMBOL(init_uts_ns)=ffffffff82a15720\n",
        "OFFSET(uts_namespace.name)=0\n",
        "SYMBOL(node_online_map)=ffffffff82b3f2a8\n",
        "SYMBOL(swapper_pg_dir)=ffffffff82a0c000\n",
        "SYMBOL(_stext)=ffffffff81000000\n",
        "SYMBOL(vmap_area_list)=ffffffff82a7a2b0\n",
        "SYMBOL(mem_section)=ffff88817ffd6000\n",
        "LENGTH(mem_section)=2048\n",
        "SIZE(mem_section)=16\n",
        "OFFSET(mem_section.section_mem_map)=0\n",
        "NUMBER(SECTION_SIZE_BITS)=27\n",
        "NUMBER(MAX_PHYSMEM_BITS)=46\n",
        "SIZE(page)=64\n",
        "SIZE(pglist_data)=174336\n",
        "SIZE(zone)=1600\n",
        "SIZE(free_area)=104\n",
        "SIZE(list_head)=16\n",
        "SIZE(nodemask_t)=128\n",
        "OFFSET(page.flags)=0\n",
        "OFFSET(page._refcount)=52\n",
        "OFFSET(page.mapping)=24\n",
        "OFFSET(page.lru)=8\n",
        "OFFSET(page._mapcount)=48\n",
        "OFFSET(page.private)=40\n",
        "OFFSET(pglist_data.node_zones)=0\n",
        "OFFSET(pglist_data.nr_zones)=173792\n",
        "OFFSET(zone.free_area)=192\n",
        "OFFSET(free_area.free_list)=0\n",
        "OFFSET(list_head.next)=0\n",
        "OFFSET(list_head.prev)=8\n",
        "LENGTH(zone.free_area)=11\n",
        "LENGTH(free_area.free_list)=6\n",
        "NUMBER(NR_FREE_PAGES)=0\n",
        "NUMBER(PG_lru)=4\n",
        "NUMBER(PG_private)=13\n",
        "NUMBER(PG_swapcache)=10\n",
        "NUMBER(PG_swapbacked)=19\n",
        "NUMBER(PG_slab)=9\n",
        "NUMBER(PG_hwpoison)=23\n",
        "NUMBER(PG_head_mask)=65536\n",
        "NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)=-129\n",
        "NUMBER(phys_base)=0\n",
        "SYMBOL(init_top_pgt)=ffffffff82a0c000\n",
        "NUMBER(pgtable_l5_enabled)=0\n",
        "SYMBOL(node_data)=ffffffff82b3c8e0\n",
        "LENGTH(node_data)=1024\n",
        "KERNELOFFSET=0\n",
        "NUMBER(KERNEL_IMAGE_SIZE)=1073741824\n",
        "NUMBER(sme_mask)=0\n",
        "CRASHTIME=1764210000\n",
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the notes the way a reader would and returns (name, type, desc).
    fn parse(mut b: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let word = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        while !b.is_empty() {
            let (namesz, descsz, ty) = (word(b, 0) as usize, word(b, 4) as usize, word(b, 8));
            let name = std::str::from_utf8(&b[12..12 + namesz - 1])
                .unwrap()
                .to_owned();
            assert_eq!(b[12 + namesz - 1], 0, "name not NUL-terminated");
            let d = 12 + pad4(namesz);
            out.push((name, ty, b[d..d + descsz].to_vec()));
            b = &b[d + pad4(descsz)..];
        }
        out
    }

    #[test]
    fn notes_parse_back() {
        let notes = build(&NotesSpec::default(), 9);
        assert_eq!(notes.bytes.len() % 4, 0);
        let parsed = parse(&notes.bytes);
        assert_eq!(parsed.len(), 3);
        assert_eq!(parsed[0].0, "CORE");
        assert_eq!(parsed[0].1, NT_PRSTATUS);
        assert_eq!(parsed[0].2.len(), PRSTATUS_SIZE);
        assert_eq!(parsed[2].0, "VMCOREINFO");
        assert_eq!(parsed[2].1, NT_VMCOREINFO);
        let text = String::from_utf8(parsed[2].2.clone()).unwrap();
        assert_eq!(text, notes.vmcoreinfo);
        let head = format!(
            "OSRELEASE=6.1.0-28-amd64\nPAGESIZE=4096\nBUILD-ID={}\n",
            notes.build_id
        );
        assert!(text.starts_with(&head));
        assert_eq!(notes.build_id.len(), 40);
        assert!(text.contains("SYMBOL(swapper_pg_dir)=ffffffff82a0c000\n"));
    }

    #[test]
    fn build_id_follows_seed_unless_given() {
        let spec = NotesSpec::default();
        assert_eq!(build(&spec, 1).build_id, build(&spec, 1).build_id);
        assert_ne!(build(&spec, 1).build_id, build(&spec, 2).build_id);
        let fixed = NotesSpec {
            build_id: Some([0xab; 20]),
            ..NotesSpec::default()
        };
        assert_eq!(build(&fixed, 1).build_id, "ab".repeat(20));
    }

    #[test]
    fn release_is_validated() {
        for bad in ["", "6.1\n", "a b"] {
            let spec = NotesSpec {
                os_release: bad.to_owned(),
                ..NotesSpec::default()
            };
            assert!(matches!(
                spec.validate(),
                Err(DumpgenError::InvalidRelease { .. })
            ));
        }
    }
}

//! Any bytes as the memory of a crashed kernel, read for its kernel log:
//! the real 6.12 VMCOREINFO with fixed page tables (the direct map as one
//! 1 GiB page at physical 0) and `prb` pointing into the fuzzer's bytes,
//! which hold the ring's head, descriptors, infos and text. Every count
//! and size read from them is bounded, whatever they hold.
#![no_main]

use std::sync::OnceLock;

use kjump_kdump::{dmesg, VmcoreInfo};
use libfuzzer_sys::fuzz_target;

const REAL: &str = include_str!("../../kdump/tests/fixtures/vmcoreinfo-6.12.117.txt");
const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
const DIRECT: u64 = 0xffff_8880_0000_0000;
/// The top page table, the one below it, then the fuzzer's bytes.
const TOP: u64 = 0x1000;
const PDPT: u64 = 0x2000;
const DATA: u64 = 0x3000;

fn info() -> &'static VmcoreInfo {
    static INFO: OnceLock<VmcoreInfo> = OnceLock::new();
    INFO.get_or_init(|| {
        let set = [
            ("NUMBER(phys_base)", "0".to_string()),
            (
                "SYMBOL(init_top_pgt)",
                format!("{:x}", START_KERNEL_MAP + TOP),
            ),
            ("NUMBER(pgtable_l5_enabled)", "0".to_string()),
            ("SYMBOL(prb)", format!("{:x}", DIRECT + DATA)),
        ];
        let mut text: String = REAL
            .lines()
            .filter(|l| !set.iter().any(|(k, _)| l.split('=').next() == Some(k)))
            .map(|l| format!("{l}\n"))
            .collect();
        for (k, v) in set {
            text += &format!("{k}={v}\n");
        }
        VmcoreInfo::parse(text.as_bytes()).expect("the fixture parses")
    })
}

fuzz_target!(|data: &[u8]| {
    let mut mem = vec![0u8; DATA as usize];
    let mut put = |at: u64, v: u64| {
        mem[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
    };
    // Present and writable; the PDPT entry is a 1 GiB page.
    put(TOP + ((DIRECT >> 39) & 0x1ff) * 8, PDPT | 0x3);
    put(PDPT + ((DIRECT >> 30) & 0x1ff) * 8, 0x83);
    mem.extend_from_slice(data);
    if let Ok(records) = dmesg::read_log(&mem[..], info()) {
        for r in records {
            let _ = r.write_line(&mut std::io::sink());
        }
    }
});

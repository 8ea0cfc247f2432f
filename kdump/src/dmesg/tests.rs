//! A ring buffer laid out by hand with the real 6.12 kernel's offsets, in
//! memory with page tables: records of every kind a reader meets.

use super::*;
use crate::mem::tests::Tables;

/// The real VMCOREINFO of the 6.12 test kernel (see tests/fixtures/README.md).
const REAL: &str = include_str!("../../tests/fixtures/vmcoreinfo-6.12.117.txt");
/// The direct mapping: virtual `DIRECT + p` is physical `p`.
const DIRECT: u64 = 0xffff_8880_0000_0000;
/// The `prb` variable, in the kernel text mapping, at physical 0x10_0000.
const PRB_SYM: u64 = 0xffff_ffff_8200_0008;
const RING: u64 = 0x20_0000;
const DESCS: u64 = 0x21_0000;
const INFOS: u64 = 0x22_0000;
const DATA: u64 = 0x23_0000;
/// 8 descriptors, 256 bytes of text.
const COUNT_BITS: u32 = 3;
const SIZE: u64 = 256;

struct Dump {
    t: Tables,
}

impl Dump {
    fn new() -> Self {
        let mut t = Tables::new(4 << 20, 0x1000);
        t.map(DIRECT, 0, 0x4000_0000);
        t.map(PRB_SYM & !0xfff, 0x10_0000, 0x1000);
        let mut d = Dump { t };
        d.put(0x10_0008, DIRECT + RING);
        // printk_ringbuffer: desc_ring at 0, text_data_ring at 48.
        d.put32(RING, COUNT_BITS);
        d.put(RING + 8, DIRECT + DESCS);
        d.put(RING + 16, DIRECT + INFOS);
        d.put32(RING + 48, SIZE.trailing_zeros());
        d.put(RING + 56, DIRECT + DATA);
        d
    }

    fn put(&mut self, at: u64, v: u64) {
        self.t.mem[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
    }

    fn put32(&mut self, at: u64, v: u32) {
        self.t.mem[at as usize..at as usize + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn ids(&mut self, tail: u64, head: u64) {
        self.put(RING + 32, tail);
        self.put(RING + 24, head);
    }

    /// Descriptor `id` in state `state` with the block `[begin, next)`,
    /// and its info.
    fn desc(&mut self, id: u64, state: u64, (begin, next): (u64, u64), text_len: u16) {
        let slot = id & ((1 << COUNT_BITS) - 1);
        let d = DESCS + slot * 24;
        self.put(d, state << 62 | id);
        self.put(d + 8, begin);
        self.put(d + 16, next);
        let i = INFOS + slot * 88;
        self.put(i, 1000 + id);
        self.put(i + 8, id * 1_500_000_000 + 123_456_789);
        self.t.mem[(i + 16) as usize..(i + 18) as usize].copy_from_slice(&text_len.to_le_bytes());
    }

    /// A finalized record whose block starts at logical position `begin`;
    /// returns the position after it.
    fn record(&mut self, id: u64, begin: u64, text: &[u8]) -> u64 {
        let next = begin + 8 + (text.len() as u64).next_multiple_of(8);
        self.desc(id, 2, (begin, next), text.len() as u16);
        self.block(begin % SIZE, id, text);
        next
    }

    fn block(&mut self, at: u64, id: u64, text: &[u8]) {
        self.put(DATA + at, id);
        let t = (DATA + at + 8) as usize;
        self.t.mem[t..t + text.len()].copy_from_slice(text);
    }

    /// The fixture's VMCOREINFO with this memory's page tables and prb,
    /// less the keys in `drop`.
    fn info(&self, drop: &[&str]) -> VmcoreInfo {
        let prb = format!("{PRB_SYM:x}");
        self.t.vmcoreinfo(&[("SYMBOL(prb)", prb)], drop)
    }

    fn read(&self, drop: &[&str]) -> Result<Vec<Record>, DmesgError> {
        read_log(&self.t.mem[..], &self.info(drop))
    }
}

fn text(records: &[Record]) -> String {
    let mut out = Vec::new();
    for r in records {
        r.write_line(&mut out).unwrap();
    }
    String::from_utf8(out).unwrap()
}

/// Ids 6 to 11 in slots 6, 7, 0, 1, 2, 3: two records, one being
/// written, an empty line, one whose text was lost, and one whose block
/// wraps to the ring's start.
fn ring_of_every_kind() -> Dump {
    let mut d = Dump::new();
    d.ids(6, 11);
    let lap = 4 * SIZE;
    let next = d.record(6, lap + 64, b"Linux version 6.12.117");
    let next = d.record(7, next, b"two\nlines and \x01 a control");
    d.desc(8, 0, (next, next + 16), 8);
    d.desc(9, 2, (EMPTY_LINE_LPOS, EMPTY_LINE_LPOS), 0);
    d.desc(10, 2, (1, 1), 12);
    // Does not fit before the ring's end: stored at its start.
    let wrapped = b"Kernel panic - not syncing: sysrq";
    let begin = lap + 240;
    let end = lap + SIZE + 8 + (wrapped.len() as u64).next_multiple_of(8);
    d.desc(11, 1, (begin, end), wrapped.len() as u16);
    d.block(0, 11, wrapped);
    d
}

#[test]
fn reads_every_readable_record_in_order() {
    let records = ring_of_every_kind().read(&[]).unwrap();
    assert_eq!(
        records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [1006, 1007, 1009, 1011]
    );
    assert_eq!(
        text(&records),
        "[    9.123456] Linux version 6.12.117\n\
         [   10.623456] two\nlines and \\x01 a control\n\
         [   13.623456] \n\
         [   16.623456] Kernel panic - not syncing: sysrq\n"
    );
}

#[test]
fn stale_and_overwritten_records_are_skipped() {
    let mut d = ring_of_every_kind();
    // Slot 6 reused by id 14 (same slot, a later lap).
    d.desc(14, 2, (0, 16), 4);
    // Id 7's block overwritten by another record's.
    let begin = 4 * SIZE + 64 + 8 + 24;
    d.put(DATA + begin % SIZE, 99);
    let records = d.read(&[]).unwrap();
    assert_eq!(
        records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [1009, 1011]
    );
}

#[test]
fn a_text_longer_than_its_block_is_cut_to_the_block() {
    let mut d = Dump::new();
    d.ids(2, 2);
    d.record(2, 16, b"12345678");
    d.desc(2, 2, (16, 32), 200);
    assert_eq!(d.read(&[]).unwrap()[0].text, b"12345678");
}

#[test]
fn blocks_past_the_ring_or_the_address_space_are_skipped() {
    let mut d = ring_of_every_kind();
    // A block longer than the ring, and arrays at the top of the address
    // space: skipped or refused, never a wrapped index.
    d.desc(6, 2, (4 * SIZE + 64, u64::MAX - 7), 4);
    let records = d.read(&[]).unwrap();
    assert_eq!(records[0].seq, 1007);
    d.put(RING + 16, u64::MAX - 8);
    let e = d.read(&[]).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("reading a printk record's info at virtual 0x"),
        "{e}"
    );
}

#[test]
fn missing_keys_are_named() {
    let e = ring_of_every_kind()
        .read(&["OFFSET(printk_info.text_len)", "SIZE(prb_desc)"])
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "the kernel log cannot be found: VMCOREINFO lacks SIZE(prb_desc), OFFSET(printk_info.text_len)"
    );
    let e = ring_of_every_kind().read(&["SYMBOL(prb)"]).unwrap_err();
    assert!(matches!(e, DmesgError::Missing(_)), "{e}");
    assert!(e.to_string().ends_with("lacks SYMBOL(prb)"), "{e}");
}

#[test]
fn a_kernel_before_5_10_is_named() {
    let mut d = Dump::new();
    d.ids(0, 0);
    let mut info = String::from_utf8(d.info(&["SYMBOL(prb)"]).raw().to_vec()).unwrap();
    info += "SYMBOL(log_buf)=ffffffff82000000\n";
    let e = read_log(&d.t.mem[..], &VmcoreInfo::parse(info.as_bytes()).unwrap()).unwrap_err();
    assert!(matches!(e, DmesgError::LegacyLogBuf), "{e}");
}

#[test]
fn an_implausible_ring_is_refused() {
    let mut d = ring_of_every_kind();
    d.put32(RING, 40);
    let e = d.read(&[]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "prb_desc_ring.count_bits is 40, more than a kernel's 26"
    );
    let mut d = ring_of_every_kind();
    d.ids(6, 14);
    let e = d.read(&[]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "the distance from prb_desc_ring.tail_id to head_id is 8, more than a kernel's 7"
    );
}

#[test]
fn an_unmapped_ring_is_a_read_error_naming_it() {
    let mut d = ring_of_every_kind();
    d.put(0x10_0008, 0xffff_c900_0000_0000);
    let e = d.read(&[]).unwrap_err();
    assert!(
        e.to_string().starts_with(
            "reading the printk_ringbuffer prb points to at virtual 0xffffc90000000000"
        ),
        "{e}"
    );
}

#[test]
fn the_real_kernels_layout_is_complete() {
    let info = VmcoreInfo::parse(REAL.as_bytes()).unwrap();
    let l = RingLayout::from_info(&info).unwrap();
    assert_eq!((l.ring_size, l.desc_size, l.info_size), (88, 24, 88));
    assert_eq!((l.text_data_ring, l.tail_id, l.info_text_len), (48, 32, 16));
}

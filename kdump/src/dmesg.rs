//! The kernel log of a dumped kernel, as makedumpfile's `--dump-dmesg`
//! prints it: the lockless printk ring buffer of Linux 5.10 and later,
//! found through VMCOREINFO's `SYMBOL(prb)` and the offsets and sizes it
//! exports for `printk_ringbuffer`, `prb_desc_ring`, `prb_desc`,
//! `prb_data_ring`, `prb_data_blk_lpos` and `printk_info`.
//!
//! The ring is read as the kernel's own reader does (`prb_read_valid`):
//! the descriptors from the tail id to the head id, each taken only when
//! its state word holds its id and says committed or finalized, and its
//! text only when the data block starts with the same id. Everything is
//! read from the dump a record at a time, so a corrupt size cannot make
//! kjump allocate the machine's memory; counts are bounded before use.

use kjump_image_format::le::{u16_at, u32_at, u64_at};

use crate::mem::{PhysMemory, TranslateError, Translator};
use crate::vmcoreinfo::{KernelLayout, MissingKeys, Need, VmcoreInfo};

/// The two top bits of a descriptor's state word are its state; the rest
/// is the id of the record it holds (`DESC_ID_MASK`).
const DESC_ID_MASK: u64 = !(3 << 62);
/// `desc_committed` and `desc_finalized`: the states a reader may take.
const READABLE_STATES: [u64; 2] = [1, 2];
/// The data-less block position of a record that is an empty line
/// (`EMPTY_LINE_LPOS`, `NO_LPOS` in 5.10); any other data-less position
/// means the text was lost.
const EMPTY_LINE_LPOS: u64 = 3;
/// Most descriptors a ring may have: the kernel's largest log buffer
/// (`LOG_BUF_LEN_MAX`, 2 GiB) at its smallest average record (32 bytes).
const MAX_COUNT_BITS: u32 = 26;
/// Largest text data ring: `LOG_BUF_LEN_MAX`.
const MAX_SIZE_BITS: u32 = 31;
/// Largest structure size taken from VMCOREINFO for the structures read
/// whole (a descriptor, a record's info, the ring head).
const MAX_STRUCT: u64 = 4096;

/// Why the kernel log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DmesgError {
    /// The kernel keeps its log in the `log_buf` of Linux before 5.10.
    #[error("VMCOREINFO lacks SYMBOL(prb) but has SYMBOL(log_buf): the kernel keeps its log in the printk buffer of Linux before 5.10, which kjump does not read")]
    LegacyLogBuf,
    /// VMCOREINFO lacks keys the ring buffer's layout needs.
    #[error("the kernel log cannot be found: {0}")]
    Missing(MissingKeys),
    /// The page tables cannot be found.
    #[error("SYMBOL(init_top_pgt) {0:#x} is not in the kernel text mapping: the kernel's page tables cannot be found")]
    NoPageTables(u64),
    /// Reading a part of the ring buffer failed.
    #[error("reading {what} at virtual {vaddr:#x}")]
    Read {
        /// What was read.
        what: &'static str,
        /// Its kernel virtual address.
        vaddr: u64,
        /// The cause.
        #[source]
        source: TranslateError,
    },
    /// A value read from the dump is beyond what a kernel can have.
    #[error("{what} is {value}, more than a kernel's {max}")]
    Implausible {
        /// The field.
        what: &'static str,
        /// Its value.
        value: u64,
        /// The largest value a kernel uses.
        max: u64,
    },
}

/// One record of the kernel log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Sequence number.
    pub seq: u64,
    /// Time stamp, nanoseconds since boot.
    pub ts_nsec: u64,
    /// The text, without a trailing newline; empty for an empty line.
    pub text: Vec<u8>,
}

impl Record {
    /// Writes the record as makedumpfile and `dmesg` print it:
    /// `[seconds.microseconds] text`, with bytes other than printable
    /// ASCII, tab and newline written as `\xNN`.
    pub fn write_line<W: std::io::Write>(&self, out: &mut W) -> std::io::Result<()> {
        let (s, ns) = (self.ts_nsec / 1_000_000_000, self.ts_nsec % 1_000_000_000);
        write!(out, "[{s:5}.{:06}] ", ns / 1000)?;
        for &b in &self.text {
            if b == b'\n' || b == b'\t' || (0x20..0x7f).contains(&b) {
                out.write_all(&[b])?;
            } else {
                write!(out, "\\x{b:02x}")?;
            }
        }
        out.write_all(b"\n")
    }
}

/// A field to check: its name, offset in its structure and width.
type Field<'a> = (&'a str, u64, u64);

/// Where the fields of the ring buffer's structures are, from VMCOREINFO.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RingLayout {
    /// `SYMBOL(prb)`: the pointer to the ring in use.
    prb: u64,
    ring_size: u64,
    desc_ring: u64,
    text_data_ring: u64,
    count_bits: u64,
    descs: u64,
    infos: u64,
    head_id: u64,
    tail_id: u64,
    desc_size: u64,
    state_var: u64,
    text_blk_lpos: u64,
    lpos_begin: u64,
    lpos_next: u64,
    info_size: u64,
    info_seq: u64,
    info_ts_nsec: u64,
    info_text_len: u64,
    size_bits: u64,
    data: u64,
    /// `OFFSET(atomic_long_t.counter)`: the state word and the head and
    /// tail ids are `atomic_long_t`.
    counter: u64,
}

impl RingLayout {
    fn from_info(info: &VmcoreInfo) -> Result<Self, DmesgError> {
        if info.symbol("prb").is_none() && info.symbol("log_buf").is_some() {
            return Err(DmesgError::LegacyLogBuf);
        }
        let mut n = Need::new(info);
        let l = RingLayout {
            prb: n.symbol("prb"),
            ring_size: n.size("printk_ringbuffer"),
            desc_ring: n.offset("printk_ringbuffer.desc_ring"),
            text_data_ring: n.offset("printk_ringbuffer.text_data_ring"),
            count_bits: n.offset("prb_desc_ring.count_bits"),
            descs: n.offset("prb_desc_ring.descs"),
            infos: n.offset("prb_desc_ring.infos"),
            head_id: n.offset("prb_desc_ring.head_id"),
            tail_id: n.offset("prb_desc_ring.tail_id"),
            desc_size: n.size("prb_desc"),
            state_var: n.offset("prb_desc.state_var"),
            text_blk_lpos: n.offset("prb_desc.text_blk_lpos"),
            lpos_begin: n.offset("prb_data_blk_lpos.begin"),
            lpos_next: n.offset("prb_data_blk_lpos.next"),
            info_size: n.size("printk_info"),
            info_seq: n.offset("printk_info.seq"),
            info_ts_nsec: n.offset("printk_info.ts_nsec"),
            info_text_len: n.offset("printk_info.text_len"),
            size_bits: n.offset("prb_data_ring.size_bits"),
            data: n.offset("prb_data_ring.data"),
            counter: n.offset("atomic_long_t.counter"),
        };
        if n.missing.is_empty() {
            n.missing.extend(l.outside());
        }
        n.done(l).map_err(DmesgError::Missing)
    }

    /// Fields that would lie outside the structure read whole: each with
    /// its width, in the structure of the given size. (Most of its length
    /// is the table of structures and fields, one row a field.)
    fn outside(&self) -> Vec<String> {
        let (ring, data, lpos) = (self.desc_ring, self.text_data_ring, self.text_blk_lpos);
        let structs: [(&str, u64, &[Field]); 3] = [
            (
                "printk_ringbuffer",
                self.ring_size,
                &[
                    ("prb_desc_ring.count_bits", ring + self.count_bits, 4),
                    ("prb_desc_ring.descs", ring + self.descs, 8),
                    ("prb_desc_ring.infos", ring + self.infos, 8),
                    (
                        "prb_desc_ring.head_id",
                        ring + self.head_id + self.counter,
                        8,
                    ),
                    (
                        "prb_desc_ring.tail_id",
                        ring + self.tail_id + self.counter,
                        8,
                    ),
                    ("prb_data_ring.size_bits", data + self.size_bits, 4),
                    ("prb_data_ring.data", data + self.data, 8),
                ],
            ),
            (
                "prb_desc",
                self.desc_size,
                &[
                    ("prb_desc.state_var", self.state_var + self.counter, 8),
                    ("prb_data_blk_lpos.begin", lpos + self.lpos_begin, 8),
                    ("prb_data_blk_lpos.next", lpos + self.lpos_next, 8),
                ],
            ),
            (
                "printk_info",
                self.info_size,
                &[
                    ("printk_info.seq", self.info_seq, 8),
                    ("printk_info.ts_nsec", self.info_ts_nsec, 8),
                    ("printk_info.text_len", self.info_text_len, 2),
                ],
            ),
        ];
        let mut wrong = Vec::new();
        for (within, size, fields) in structs {
            if size > MAX_STRUCT {
                wrong.push(format!(
                    "SIZE({within}) of at most {MAX_STRUCT} (found {size})"
                ));
                continue;
            }
            for &(field, off, width) in fields {
                if off + width > size {
                    wrong.push(format!(
                        "OFFSET({field}) inside SIZE({within}) ({off} + {width} > {size})"
                    ));
                }
            }
        }
        wrong
    }
}

/// The ring as found in the dump: where its arrays are and how large.
struct Ring<'t, 'm, M: PhysMemory + ?Sized> {
    tr: &'t Translator<'m, M>,
    l: RingLayout,
    /// Descriptors (and infos) in the ring: a power of two.
    count: u64,
    descs: u64,
    infos: u64,
    /// Bytes of text data: a power of two.
    data_size: u64,
    data: u64,
}

impl<M: PhysMemory + ?Sized> Ring<'_, '_, M> {
    /// `len` bytes at `vaddr`. Addresses come from the dump: one past the
    /// top of the address space wraps, and is then not mapped.
    fn read(&self, what: &'static str, vaddr: u64, len: u64) -> Result<Vec<u8>, DmesgError> {
        let mut b = vec![0u8; len as usize];
        self.tr
            .read_virt(vaddr, &mut b)
            .map_err(|source| DmesgError::Read {
                what,
                vaddr,
                source,
            })?;
        Ok(b)
    }

    /// The record of descriptor `id`, or `None` when it is not readable
    /// (being written, reused, lost, or its data overwritten).
    fn record(&self, id: u64) -> Result<Option<Record>, DmesgError> {
        let l = &self.l;
        let slot = id & (self.count - 1);
        let d = self.read(
            "a printk descriptor",
            self.descs.wrapping_add(slot * l.desc_size),
            l.desc_size,
        )?;
        let state = u64_at(&d, (l.state_var + l.counter) as usize);
        if state & DESC_ID_MASK != id || !READABLE_STATES.contains(&(state >> 62)) {
            return Ok(None);
        }
        let lpos = l.text_blk_lpos as usize;
        let begin = u64_at(&d, lpos + l.lpos_begin as usize);
        let next = u64_at(&d, lpos + l.lpos_next as usize);
        let info = self.read(
            "a printk record's info",
            self.infos.wrapping_add(slot * l.info_size),
            l.info_size,
        )?;
        let text_len = u64::from(u16_at(&info, l.info_text_len as usize));
        let mut record = Record {
            seq: u64_at(&info, l.info_seq as usize),
            ts_nsec: u64_at(&info, l.info_ts_nsec as usize),
            text: Vec::new(),
        };
        // A data-less block (bit 0 of its positions) is an empty line, or
        // a record whose text was lost.
        if begin & 1 != 0 || next & 1 != 0 {
            return Ok((begin == EMPTY_LINE_LPOS && next == EMPTY_LINE_LPOS).then_some(record));
        }
        let Some((at, len)) = self.block(begin, next) else {
            return Ok(None);
        };
        let block = self.read(
            "a printk record's text",
            self.data.wrapping_add(at),
            8 + len.min(text_len),
        )?;
        if u64_at(&block, 0) != id {
            return Ok(None);
        }
        record.text = block[8..].to_vec();
        Ok(Some(record))
    }

    /// The data block `[begin, next)` as an offset in the data ring and the
    /// length of its text (after the id that starts it), as the kernel's
    /// `get_data` finds it: a block that would wrap is stored at the
    /// ring's start instead.
    fn block(&self, begin: u64, next: u64) -> Option<(u64, u64)> {
        let size = self.data_size;
        let wraps = |lpos: u64| lpos / size;
        let (at, len) = if wraps(begin) == wraps(next) {
            (begin % size, next.checked_sub(begin)?)
        } else if wraps(begin.wrapping_add(size)) == wraps(next) {
            (0, next % size)
        } else {
            return None;
        };
        let len = len.checked_sub(8)?;
        (at.checked_add(8)?.checked_add(len)? <= size).then_some((at, len))
    }
}

fn usize_of(offset: u64) -> usize {
    // Bounded by MAX_STRUCT in RingLayout::outside.
    offset as usize
}

/// Refuses ring sizes no kernel has, read from the dump before they size
/// anything.
fn check_ring_bits(count_bits: u32, size_bits: u32) -> Result<(), DmesgError> {
    for (what, value, max) in [
        ("prb_desc_ring.count_bits", count_bits, MAX_COUNT_BITS),
        ("prb_data_ring.size_bits", size_bits, MAX_SIZE_BITS),
    ] {
        if value > max {
            return Err(DmesgError::Implausible {
                what,
                value: value.into(),
                max: max.into(),
            });
        }
    }
    Ok(())
}

/// The records of the kernel log in the dump `mem` described by `info`,
/// oldest first.
pub fn read_log<M: PhysMemory + ?Sized>(
    mem: &M,
    info: &VmcoreInfo,
) -> Result<Vec<Record>, DmesgError> {
    let l = RingLayout::from_info(info)?;
    let kernel = KernelLayout::from_info(info).map_err(DmesgError::Missing)?;
    let tr = Translator::new(mem, &kernel).ok_or(DmesgError::NoPageTables(kernel.init_top_pgt))?;
    let read_u64 = |what, vaddr| {
        tr.read_virt_u64(vaddr).map_err(|source| DmesgError::Read {
            what,
            vaddr,
            source,
        })
    };
    let prb = read_u64("the pointer prb", l.prb)?;
    let mut head = vec![0u8; l.ring_size as usize];
    tr.read_virt(prb, &mut head)
        .map_err(|source| DmesgError::Read {
            what: "the printk_ringbuffer prb points to",
            vaddr: prb,
            source,
        })?;
    let count_bits = u32_at(&head, usize_of(l.desc_ring + l.count_bits));
    let size_bits = u32_at(&head, usize_of(l.text_data_ring + l.size_bits));
    check_ring_bits(count_bits, size_bits)?;
    let ring = Ring {
        tr: &tr,
        count: 1 << count_bits,
        descs: u64_at(&head, usize_of(l.desc_ring + l.descs)),
        infos: u64_at(&head, usize_of(l.desc_ring + l.infos)),
        data_size: 1 << size_bits,
        data: u64_at(&head, usize_of(l.text_data_ring + l.data)),
        l,
    };
    let id_at = |off: u64| u64_at(&head, usize_of(ring.l.desc_ring + off + ring.l.counter));
    let (tail, head_id) = (
        id_at(ring.l.tail_id) & DESC_ID_MASK,
        id_at(ring.l.head_id) & DESC_ID_MASK,
    );
    // The ring holds the records from the tail to the head: never more
    // than it has descriptors.
    let span = head_id.wrapping_sub(tail) & DESC_ID_MASK;
    if span >= ring.count {
        return Err(DmesgError::Implausible {
            what: "the distance from prb_desc_ring.tail_id to head_id",
            value: span,
            max: ring.count - 1,
        });
    }
    let mut records = Vec::new();
    for i in 0..=span {
        records.extend(ring.record((tail + i) & DESC_ID_MASK)?);
    }
    Ok(records)
}

#[cfg(test)]
mod tests;

//! Code and text pages: x86-64-like functions and kernel-like ASCII strings.
//!
//! The instruction templates are real x86-64 encodings of the most common
//! kernel instructions, so the byte statistics (opcode repetition, small
//! displacements, rel32 operands with 0x00/0xff high bytes, int3 padding)
//! resemble `.text`; nothing here needs to decode into meaningful programs.

use std::io::Write as _;

use crate::rng::Rng;

/// Writes into a page, silently dropping whatever does not fit.
struct Cursor<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn put(&mut self, bytes: &[u8]) {
        let room = self.buf.len() - self.pos;
        let n = bytes.len().min(room);
        self.buf[self.pos..self.pos + n].copy_from_slice(&bytes[..n]);
        self.pos += n;
    }

    fn full(&self) -> bool {
        self.pos >= self.buf.len()
    }
}

/// The operand that follows an instruction's fixed bytes.
#[derive(Clone, Copy)]
enum Operand {
    None,
    /// A small, 8-aligned displacement or immediate.
    Disp8,
    /// A short branch offset.
    Rel8,
    /// A near call/jump offset within ±1 MiB.
    Rel32,
    /// A structure offset beyond 127 bytes.
    Disp32,
    /// A small 32-bit immediate.
    Imm32,
    /// A per-CPU variable offset (`%gs:` addressing).
    PerCpu,
    /// A sign-extended kernel address.
    KernelAddr,
}

/// (fixed bytes, operand, relative frequency).
const INSTRUCTIONS: &[(&[u8], Operand, u8)] = &[
    (&[0x48, 0x89, 0xc7], Operand::None, 4),   // mov rdi, rax
    (&[0x48, 0x89, 0xde], Operand::None, 3),   // mov rsi, rbx
    (&[0x4c, 0x89, 0xe7], Operand::None, 3),   // mov rdi, r12
    (&[0x48, 0x8b, 0x47], Operand::Disp8, 5),  // mov rax, [rdi+d8]
    (&[0x48, 0x8b, 0x43], Operand::Disp8, 5),  // mov rax, [rbx+d8]
    (&[0x48, 0x89, 0x43], Operand::Disp8, 3),  // mov [rbx+d8], rax
    (&[0x8b, 0x43], Operand::Disp8, 3),        // mov eax, [rbx+d8]
    (&[0x48, 0x8b, 0x87], Operand::Disp32, 2), // mov rax, [rdi+d32]
    (&[0xe8], Operand::Rel32, 8),              // call
    (&[0x85, 0xc0], Operand::None, 4),         // test eax, eax
    (&[0x48, 0x85, 0xc0], Operand::None, 3),   // test rax, rax
    (&[0x74], Operand::Rel8, 4),               // je
    (&[0x75], Operand::Rel8, 4),               // jne
    (&[0x0f, 0x84], Operand::Rel32, 2),        // je near
    (&[0x31, 0xc0], Operand::None, 3),         // xor eax, eax
    (&[0x31, 0xd2], Operand::None, 2),         // xor edx, edx
    (&[0x48, 0x83, 0xc4], Operand::Disp8, 1),  // add rsp, imm8
    (&[0x48, 0x83, 0xec], Operand::Disp8, 1),  // sub rsp, imm8
    (&[0xb8], Operand::Imm32, 2),              // mov eax, imm32
    (&[0xbe], Operand::Imm32, 2),              // mov esi, imm32
    (&[0x65, 0x48, 0x8b, 0x04, 0x25], Operand::PerCpu, 1), // mov rax, gs:[off]
    (&[0x48, 0x8d, 0x7b], Operand::Disp8, 2),  // lea rdi, [rbx+d8]
    (&[0x48, 0xc7, 0xc7], Operand::KernelAddr, 2), // mov rdi, imm32
    (&[0x0f, 0x1f, 0x44, 0x00, 0x00], Operand::None, 1), // nopl 0(rax,rax)
    (&[0x48, 0x39, 0xc3], Operand::None, 2),   // cmp rbx, rax
    (&[0x41, 0x89, 0xc4], Operand::None, 2),   // mov r12d, eax
    (&[0xe9], Operand::Rel32, 1),              // jmp
    (&[0x0f, 0xb6, 0x43], Operand::Disp8, 1),  // movzx eax, byte [rbx+d8]
    (&[0x83, 0xf8], Operand::Disp8, 2),        // cmp eax, imm8
];

const PROLOGUES: &[&[u8]] = &[
    // endbr64; push rbp; mov rbp, rsp
    &[0xf3, 0x0f, 0x1e, 0xfa, 0x55, 0x48, 0x89, 0xe5],
    // ftrace nop; push rbp; mov rbp, rsp; push r15; push r14; push rbx
    &[
        0x0f, 0x1f, 0x44, 0x00, 0x00, 0x55, 0x48, 0x89, 0xe5, 0x41, 0x57, 0x41, 0x56, 0x53,
    ],
    // push r12; push rbp; push rbx; mov rbx, rdi
    &[0x41, 0x54, 0x55, 0x53, 0x48, 0x89, 0xfb],
];

const EPILOGUES: &[&[u8]] = &[
    &[0x5b, 0x5d, 0xc3],                   // pop rbx; pop rbp; ret
    &[0x5b, 0x41, 0x5e, 0x41, 0x5f, 0x5d], // pops, then a return-thunk jmp
    &[0xc9, 0xc3],                         // leave; ret
];

/// Words of kernel log messages and identifiers.
const WORDS: &[&str] = &[
    "kernel",
    "device",
    "memory",
    "failed",
    "driver",
    "module",
    "error",
    "cpu",
    "irq",
    "page",
    "mapping",
    "buffer",
    "request",
    "queue",
    "timeout",
    "resource",
    "invalid",
    "unable",
    "to",
    "allocate",
    "register",
    "for",
    "the",
    "of",
    "in",
    "not",
    "found",
    "link",
    "is",
    "up",
    "down",
    "pci",
    "usb",
    "acpi",
    "firmware",
    "version",
    "loaded",
    "probe",
    "with",
    "status",
    "reset",
    "enabled",
    "disabled",
    "interrupt",
    "bridge",
    "port",
    "slot",
    "bus",
    "node",
    "zone",
    "dma",
    "virtio",
    "block",
    "net",
    "fs",
    "ext4",
    "mount",
    "inode",
    "cache",
    "swap",
];

/// Subsystem prefixes of kernel log lines.
const PREFIXES: &[&str] = &[
    "pci 0000:00:02.0: ",
    "pci 0000:00:1f.2: ",
    "usb 1-1: ",
    "ACPI: ",
    "virtio_net virtio1: ",
    "EXT4-fs (vda1): ",
    "systemd[1]: ",
    "xhci_hcd 0000:00:04.0: ",
    "NET: ",
    "",
];

/// Fills a text page; whether a run holds code, string constants or a log
/// buffer is a run property.
pub(crate) fn fill_text(run: &mut Rng, rng: &mut Rng, out: &mut [u8]) {
    let mut cur = Cursor { buf: out, pos: 0 };
    match run.below(10) {
        0..=3 => {
            while !cur.full() {
                put_function(rng, &mut cur);
            }
        }
        4..=6 => {
            while !cur.full() {
                put_string(rng, &mut cur);
            }
        }
        _ => put_log(run, rng, &mut cur),
    }
}

/// A stretch of the printk log: lines drawn from a few per-run templates,
/// each with a rising timestamp, as a boot log looks.
fn put_log(run: &mut Rng, rng: &mut Rng, cur: &mut Cursor<'_>) {
    let templates: Vec<Vec<u8>> = (0..8)
        .map(|_| {
            let mut t = pick(run, PREFIXES).as_bytes().to_vec();
            for i in 0..3 + run.below(6) {
                if i > 0 {
                    t.push(b' ');
                }
                t.extend_from_slice(pick(run, WORDS).as_bytes());
            }
            t
        })
        .collect();
    let mut usecs = rng.below(100_000_000);
    while !cur.full() {
        usecs += rng.below(50_000);
        let mut stamp = [0u8; 24];
        let len = {
            let mut w = &mut stamp[..];
            // Cannot fail: 24 bytes hold any "[sssss.uuuuuu] " up to 10^10 s.
            let _ = write!(w, "[{:5}.{:06}] ", usecs / 1_000_000, usecs % 1_000_000);
            24 - w.len()
        };
        cur.put(&stamp[..len]);
        cur.put(&templates[rng.below(templates.len() as u64) as usize]);
        if rng.chance(40) {
            let mut num = [0u8; 24];
            let mut w = &mut num[..];
            let _ = write!(w, " {}", rng.below(4096));
            let n = 24 - w.len();
            cur.put(&num[..n]);
        }
        cur.put(b"\n");
    }
}

fn pick<T: Copy>(rng: &mut Rng, items: &[T]) -> T {
    items[rng.below(items.len() as u64) as usize]
}

/// One function: prologue, a body of common instructions, epilogue, and int3
/// padding to a 16-byte boundary.
fn put_function(rng: &mut Rng, cur: &mut Cursor<'_>) {
    let total_weight: u64 = INSTRUCTIONS.iter().map(|i| u64::from(i.2)).sum();
    cur.put(pick(rng, PROLOGUES));
    for _ in 0..4 + rng.below(40) {
        let mut w = rng.below(total_weight);
        let mut chosen = &INSTRUCTIONS[0];
        for ins in INSTRUCTIONS {
            if w < u64::from(ins.2) {
                chosen = ins;
                break;
            }
            w -= u64::from(ins.2);
        }
        cur.put(chosen.0);
        put_operand(rng, chosen.1, cur);
    }
    cur.put(pick(rng, EPILOGUES));
    let pad = (16 - cur.pos % 16) % 16;
    cur.put(&[0xcc; 16][..pad]);
}

fn put_operand(rng: &mut Rng, operand: Operand, cur: &mut Cursor<'_>) {
    match operand {
        Operand::None => {}
        Operand::Disp8 => cur.put(&[(rng.below(16) * 8) as u8]),
        Operand::Rel8 => cur.put(&[rng.below(0x60) as u8]),
        Operand::Rel32 => {
            let rel = rng.below(1 << 21) as i64 - (1 << 20);
            cur.put(&(rel as i32).to_le_bytes());
        }
        Operand::Disp32 => cur.put(&((rng.below(0x100) * 8) as u32).to_le_bytes()),
        Operand::Imm32 => cur.put(&(rng.below(32) as u32).to_le_bytes()),
        Operand::PerCpu => cur.put(&(0x0002_0000 + (rng.below(0x800) * 8) as u32).to_le_bytes()),
        Operand::KernelAddr => {
            cur.put(&(0x8200_0000 + (rng.below(0x10_0000) * 8) as u32).to_le_bytes())
        }
    }
}

/// One NUL-terminated string, often a printk format.
fn put_string(rng: &mut Rng, cur: &mut Cursor<'_>) {
    match rng.below(4) {
        0 => cur.put(b"\x013%s: "),
        1 => cur.put(b"\x016"),
        _ => {}
    }
    for i in 0..2 + rng.below(7) {
        if i > 0 {
            cur.put(if rng.chance(85) { b" " } else { b"_" });
        }
        cur.put(pick(rng, WORDS).as_bytes());
    }
    match rng.below(5) {
        0 => cur.put(b" %d\n"),
        1 => cur.put(b": %pa\n"),
        2 => cur.put(b" (%u)\n"),
        _ => cur.put(b"\n"),
    }
    cur.put(&[0]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_fills_whole_page() {
        for seed in 0..20 {
            let mut out = vec![0u8; 4096];
            fill_text(&mut Rng::new(seed), &mut Rng::new(seed + 100), &mut out);
            // The last bytes are written too (a full page of content).
            assert!(out[4000..].iter().any(|b| *b != 0), "seed {seed}");
        }
    }
}

//! Little-endian field access on fixed-size records; the readers serve
//! the other crates' binary headers too (ELF cores, diskdump, ext4).

/// The little-endian `u16` at `off` in `b` (panics past the end).
pub fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

/// The little-endian `u32` at `off` in `b` (panics past the end).
pub fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

/// The little-endian `u64` at `off` in `b` (panics past the end).
pub fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

pub(crate) fn put_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Offset of the first nonzero byte, if any.
pub(crate) fn first_nonzero(b: &[u8]) -> Option<usize> {
    // Compare whole blocks first: `==` on slices becomes a memcmp.
    const ZERO: [u8; 512] = [0; 512];
    let mut base = 0;
    for block in b.chunks(512) {
        if block != &ZERO[..block.len()] {
            return block.iter().position(|&x| x != 0).map(|p| base + p);
        }
        base += block.len();
    }
    None
}

/// Printable form of a magic field for error messages.
pub(crate) fn show_bytes(b: &[u8]) -> String {
    b.iter()
        .map(|&c| {
            if c.is_ascii_graphic() {
                (c as char).to_string()
            } else {
                format!("\\x{c:02x}")
            }
        })
        .collect()
}

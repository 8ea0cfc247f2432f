//! A source for the image fuzz targets: the fuzzer's bytes at the start of
//! a sparse terabyte, zeros after them, as a crafted file or device reads.

use kjump_image_format::reader::ReadAt;

/// `bytes`, then zeros up to a terabyte.
pub struct Sparse<'a>(pub &'a [u8]);

impl ReadAt for Sparse<'_> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        offset
            .checked_add(buf.len() as u64)
            .filter(|e| *e <= SPARSE_LEN)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        buf.fill(0);
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        if let Some(have) = self.0.get(start..) {
            let n = have.len().min(buf.len());
            buf[..n].copy_from_slice(&have[..n]);
        }
        Ok(())
    }

    fn size(&self) -> std::io::Result<u64> {
        Ok(SPARSE_LEN)
    }
}

/// The size the source claims.
pub const SPARSE_LEN: u64 = 1 << 40;
/// What the restore kernel might have to spare for an image's structures.
pub const BUDGET: u64 = 64 << 20;

//! A kjump image of a core as physical memory, so that what reads a core's
//! kernel structures (the kernel log) reads an image the same way. Each
//! chunk read is checked against its checksums; the last one decoded is
//! kept, since kernel structures are read a few bytes at a time.

use std::cell::RefCell;

use kjump_image_format::{Image, ReadAt, PAGE_SIZE};

use crate::filter::Exclusions;
use crate::mem::{PhysMemory, PhysReadError};

/// The memory an image holds: frames left out by a dump level are not in
/// it, zero pages read as zero.
pub struct ImageMemory<'a, R: ReadAt + ?Sized> {
    src: &'a R,
    image: &'a Image,
    excluded: Exclusions,
    /// The chunk decoded last: its index and pages.
    chunk: RefCell<Option<(usize, Vec<u8>)>>,
}

impl<'a, R: ReadAt + ?Sized> ImageMemory<'a, R> {
    /// The memory of `image`, opened from `src`.
    pub fn new(src: &'a R, image: &'a Image) -> Self {
        let runs = image.metadata.excluded.as_ref().map(|x| x.runs.clone());
        ImageMemory {
            src,
            image,
            excluded: Exclusions::from_runs(runs.unwrap_or_default()),
            chunk: RefCell::new(None),
        }
    }

    /// The chunk holding frame `pfn`.
    fn chunk_of(&self, pfn: u64) -> Option<usize> {
        let specs = &self.image.specs;
        let i = specs
            .partition_point(|s| s.first_pfn.0 <= pfn)
            .checked_sub(1)?;
        (pfn < specs[i].first_pfn.0 + u64::from(specs[i].page_count)).then_some(i)
    }

    /// Copies the bytes of chunk `i` from physical `addr` into `buf`.
    fn copy_from_chunk(&self, i: usize, addr: u64, buf: &mut [u8]) -> Result<(), PhysReadError> {
        let mut cached = self.chunk.borrow_mut();
        if !matches!(cached.as_ref(), Some((at, _)) if *at == i) {
            let pages = usize::from(self.image.specs[i].page_count) * PAGE_SIZE;
            let mut out = vec![0u8; pages];
            self.image
                .read_chunk(self.src, i, &mut out, &mut Vec::new(), &mut Vec::new())
                .map_err(|e| PhysReadError::Io {
                    addr,
                    len: buf.len(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                })?;
            *cached = Some((i, out));
        }
        let (_, pages) = cached.as_ref().expect("filled above");
        let start = self.image.specs[i].first_pfn.addr().0;
        let at = (addr - start) as usize;
        buf.copy_from_slice(&pages[at..at + buf.len()]);
        Ok(())
    }
}

impl<R: ReadAt + ?Sized> PhysMemory for ImageMemory<'_, R> {
    fn read_phys(&self, addr: u64, buf: &mut [u8]) -> Result<(), PhysReadError> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = addr + done as u64;
            let pfn = at / PAGE_SIZE as u64;
            let i = self
                .chunk_of(pfn)
                .filter(|_| !self.excluded.contains(pfn))
                .ok_or(PhysReadError::NotInDump {
                    addr: at,
                    len: buf.len() - done,
                })?;
            let page_end = (pfn + 1) * PAGE_SIZE as u64;
            let n = ((page_end - at) as usize).min(buf.len() - done);
            self.copy_from_chunk(i, at, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }
}

//! Reading a dumped kernel's memory: physical reads from any source.

/// Why physical memory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PhysReadError {
    /// The address is not in the dump.
    #[error("physical {addr:#x} (+{len:#x}) is not in the dump")]
    NotInDump {
        /// First byte asked for.
        addr: u64,
        /// Bytes asked for.
        len: usize,
    },
    /// The source failed.
    #[error("reading physical {addr:#x} (+{len:#x})")]
    Io {
        /// First byte asked for.
        addr: u64,
        /// Bytes asked for.
        len: usize,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Physical memory of a dumped machine: an ELF core, /dev/mem, a kjump
/// image, or a buffer in a test.
pub trait PhysMemory {
    /// Fills `buf` with the bytes at physical `addr`.
    fn read_phys(&self, addr: u64, buf: &mut [u8]) -> Result<(), PhysReadError>;

    /// The little-endian `u64` at physical `addr`.
    fn read_u64(&self, addr: u64) -> Result<u64, PhysReadError> {
        let mut b = [0u8; 8];
        self.read_phys(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}

/// A flat buffer standing for physical memory from address 0.
impl PhysMemory for [u8] {
    fn read_phys(&self, addr: u64, buf: &mut [u8]) -> Result<(), PhysReadError> {
        let err = || PhysReadError::NotInDump {
            addr,
            len: buf.len(),
        };
        let start = usize::try_from(addr).map_err(|_| err())?;
        let end = start.checked_add(buf.len()).ok_or_else(err)?;
        let src = self.get(start..end).ok_or_else(err)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl<T: PhysMemory + ?Sized> PhysMemory for &T {
    fn read_phys(&self, addr: u64, buf: &mut [u8]) -> Result<(), PhysReadError> {
        (**self).read_phys(addr, buf)
    }
}

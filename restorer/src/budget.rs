//! The memory the restore kernel R needs for an image, against what its
//! crashkernel region gives it. R checks the key derivation against what
//! it has to spare before it derives a key; `kjump resume` (R0) checks the
//! whole of it against the region before it loads R; `kjump hibernate`
//! checks it for an image of this machine's RAM before anything is
//! written. All three use these numbers, so that an image hibernate lets
//! through is one R0 and R accept.

use kjump_image_format::{Image, Kdf, Layout, PhysRange};

use crate::scan::pass_memory;

const MIB: u64 = 1 << 20;

/// What R's kernel and initramfs take of its region before its /init
/// runs: the kernel's image in memory (its bzImage `init_size`, 38 MiB for
/// the test kernels), the initramfs (about 6 MiB, held twice while it is
/// unpacked), the page structures and the kernel's own boot allocations.
/// Not measured on each machine, which R0 cannot do before R boots: a
/// conservative constant, twice the 40 to 50 MiB that `kjump check` counts
/// for the same kernel's image and initramfs (README, "kjump check").
pub const RESTORE_KERNEL_FOOTPRINT: u64 = 96 * MIB;

/// Bytes Argon2id holds while it derives the master key of an image
/// sealed with `kdf` (none for a key file).
pub fn kdf_memory(kdf: &Kdf) -> u64 {
    match kdf {
        Kdf::KeyFile => 0,
        Kdf::Argon2id { memory_kib, .. } => u64::from(*memory_kib) * 1024,
    }
}

/// The `crashkernel=` size, in MiB, to suggest for a region that must hold
/// `bytes`: rounded up to a multiple of 64 MiB.
pub fn crashkernel_mib(bytes: u64) -> u64 {
    bytes.div_ceil(MIB).next_multiple_of(64)
}

/// What R holds to restore one image, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestoreMemory {
    /// Argon2id's memory while it derives the key (0 for a plain image or
    /// a key file).
    pub kdf: u64,
    /// The open image: metadata and chunk index ([`Image::memory_needed`]),
    /// twice, since R opens an image only within half of what it has.
    pub index: u64,
    /// The pass's windows and per-thread buffers ([`pass_memory`]).
    pub pass: u64,
}

impl RestoreMemory {
    /// What R needs for an image of `layout`, sealed with `kdf` (`None`
    /// when plain), restored by `threads` threads.
    pub fn of(layout: &Layout, kdf: Option<&Kdf>, threads: usize) -> RestoreMemory {
        RestoreMemory {
            kdf: kdf.map_or(0, kdf_memory),
            index: Image::memory_needed(layout).saturating_mul(2),
            pass: pass_memory(threads),
        }
    }

    /// All of it together. Argon2's memory is freed before the index is
    /// read, but the allocator need not hand it back to the kernel, and
    /// counting it twice costs no more than a margin.
    pub fn total(&self) -> u64 {
        self.kdf
            .saturating_add(self.index)
            .saturating_add(self.pass)
    }

    /// The smallest region that holds R and this.
    pub fn region_needed(&self) -> u64 {
        self.total().saturating_add(RESTORE_KERNEL_FOOTPRINT)
    }

    /// Refuses a crashkernel region too small for R to hold this.
    pub fn check_region(&self, region: PhysRange) -> Result<(), RegionTooSmall> {
        if self.region_needed() <= region.len() {
            return Ok(());
        }
        Err(RegionTooSmall {
            needs: *self,
            region,
        })
    }
}

/// The crashkernel region cannot hold the restore kernel and what it
/// needs for the image.
#[derive(Debug, thiserror::Error)]
#[error("the restore kernel needs about {} MiB for this image (key derivation {} MiB, chunk index and metadata {} MiB, restore buffers {} MiB) besides itself (about {} MiB, an estimate), and the crashkernel region {region} holds {} MiB: boot with crashkernel={}M", mib(needs.total()), mib(needs.kdf), mib(needs.index), mib(needs.pass), RESTORE_KERNEL_FOOTPRINT / MIB, region.len() / MIB, crashkernel_mib(needs.region_needed()))]
pub struct RegionTooSmall {
    /// What the restore kernel needs.
    pub needs: RestoreMemory,
    /// The region it would run in.
    pub region: PhysRange,
}

/// An image's key derivation needs more memory than the restore kernel
/// has to spare.
#[derive(Debug, thiserror::Error)]
#[error("deriving the key (Argon2id) needs {} MiB of memory, and this restore kernel has {} MiB to spare: refused before deriving it; boot with a larger crashkernel= ({})", mib(*needed), spare / MIB, match region { Some(r) => format!("at least crashkernel={}M for its {} MiB region", crashkernel_mib(r.len() + needed - spare), r.len() / MIB), None => "by the difference at least".to_string() })]
pub struct KdfTooCostly {
    /// Bytes the key derivation holds.
    pub needed: u64,
    /// Bytes the restore kernel has to spare.
    pub spare: u64,
    /// The region the restore kernel runs in, when known.
    pub region: Option<PhysRange>,
}

/// Refuses, before the key is derived, a key derivation that needs more
/// memory than the `spare` bytes R has (MemAvailable): out of memory in
/// PID 1 is a kernel panic, a refusal hands back to the normal boot.
pub fn check_kdf(kdf: &Kdf, spare: u64, region: Option<PhysRange>) -> Result<(), KdfTooCostly> {
    let needed = kdf_memory(kdf);
    if needed <= spare {
        return Ok(());
    }
    Err(KdfTooCostly {
        needed,
        spare,
        region,
    })
}

/// Bytes in MiB, rounded up: a need is never shown smaller than it is.
fn mib(bytes: u64) -> u64 {
    bytes.div_ceil(MIB)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kjump_image_format::crypto::{DEFAULT_KDF, MAX_KDF_MEMORY_KIB};
    use kjump_image_format::PhysAddr;

    fn region(mib: u64) -> PhysRange {
        PhysRange::new(PhysAddr(0x1000_0000), PhysAddr(0x1000_0000 + mib * MIB)).unwrap()
    }

    fn argon(memory_kib: u32) -> Kdf {
        Kdf::Argon2id {
            memory_kib,
            iterations: 3,
            lanes: 1,
        }
    }

    #[test]
    fn the_capped_kdf_fits_what_a_256_mib_region_spares() {
        let spare = 256 * MIB - RESTORE_KERNEL_FOOTPRINT;
        check_kdf(&argon(MAX_KDF_MEMORY_KIB), spare, None).unwrap();
        check_kdf(&Kdf::KeyFile, 0, None).unwrap();
    }

    #[test]
    fn a_kdf_above_what_r_spares_is_refused_naming_both_and_the_fix() {
        let err = check_kdf(&argon(128 * 1024), 100 * MIB, Some(region(256))).unwrap_err();
        assert_eq!((err.needed, err.spare), (128 * MIB, 100 * MIB));
        assert_eq!(
            err.to_string(),
            "deriving the key (Argon2id) needs 128 MiB of memory, and this restore kernel has 100 MiB to spare: refused before deriving it; boot with a larger crashkernel= (at least crashkernel=320M for its 256 MiB region)"
        );
        let err = check_kdf(&DEFAULT_KDF, 10 * MIB, None).unwrap_err();
        assert!(err.to_string().ends_with("(by the difference at least)"));
    }

    #[test]
    fn the_region_holds_the_kernel_the_kdf_the_index_and_the_buffers() {
        let layout = Layout {
            chunk_count: 4096,
            metadata_len: 8192,
            ..Layout::default()
        };
        let m = RestoreMemory::of(&layout, Some(&DEFAULT_KDF), 4);
        assert_eq!(m.kdf, 64 * MIB);
        assert_eq!(m.index, 2 * Image::memory_needed(&layout));
        assert_eq!(m.pass, pass_memory(4));
        assert_eq!(m.region_needed(), m.total() + RESTORE_KERNEL_FOOTPRINT);
        m.check_region(region(256)).unwrap();
        let plain = RestoreMemory::of(&layout, None, 4);
        assert_eq!(plain.total(), m.total() - 64 * MIB);
        let small = region(m.region_needed() / MIB - 1);
        let err = m.check_region(small).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("key derivation 64 MiB"), "{text}");
        assert!(text.ends_with("boot with crashkernel=256M"), "{text}");
    }
}

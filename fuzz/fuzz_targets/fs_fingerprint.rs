//! Any bytes as a block device for the stale-filesystem guard: an ext
//! superblock and its journal's block map and log, an XFS superblock and
//! its log's cycles, a btrfs superblock, or the checksum fallback.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kjump_handoff::fsguard::fingerprint_of(data);
});

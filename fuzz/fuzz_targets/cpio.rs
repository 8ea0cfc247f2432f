//! Any bytes as a newc cpio archive.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kjump_initramfs::cpio::read(data);
});

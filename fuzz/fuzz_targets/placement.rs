//! Any bytes as a device that may hold an image after a swap header or in a
//! file's extents: finding the placement, decoding the extent map (at the
//! offset the input's first 8 bytes name, or 0), and reading an image
//! through it must return, never panic, and never allocate beyond what the
//! bytes describe.
#![no_main]

use kjump_image_format::placement::{detect, ExtentMap, Mapped};
use kjump_image_format::Image;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dev = data.to_vec();
    let at = data
        .get(..8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()) % 0x4_0000);
    let _ = ExtentMap::decode(data, at);
    for map_at in [None, Some(0), Some(at)] {
        if let Ok(placement) = detect(&dev, map_at) {
            if let Ok(mapped) = Mapped::new(&dev, &placement) {
                let _ = Image::open(&mapped);
            }
        }
    }
});

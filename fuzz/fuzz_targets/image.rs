//! Any bytes as an image: opening and verifying must return, never panic,
//! and never allocate beyond what the bytes can describe.
#![no_main]

use kjump_image_format::Image;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let bytes = data.to_vec();
    if let Ok(image) = Image::open(&bytes) {
        let _ = kjump_restorer::verify(&bytes, &image, 1, false);
    }
});

//! Any bytes as an image: opening and verifying must return, never panic,
//! and never allocate beyond what the bytes can describe. The same bytes
//! at the start of a sparse terabyte (zeros after them, as a crafted file
//! or device reads) are opened within a budget, as the restore kernel
//! opens an image: a superblock claiming a huge index or metadata must be
//! refused, not allocated (libFuzzer's malloc limit reports it).
#![no_main]

use kjump_image_format::Image;
use libfuzzer_sys::fuzz_target;

#[path = "sparse.rs"]
mod sparse;
use sparse::{Sparse, BUDGET};

fuzz_target!(|data: &[u8]| {
    let bytes = data.to_vec();
    if let Ok(image) = Image::open(&bytes) {
        let _ = kjump_restorer::verify(&bytes, &image, 1, false);
    }
    let _ = Image::open_within(&Sparse(data), None, BUDGET);
});

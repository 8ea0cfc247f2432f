//! Any bytes as an encrypted image, opened with a fixed key file: the crypto
//! area, the key check, the image seal and every sealed structure must be
//! refused cleanly when they do not hold, and never panic or allocate beyond
//! what the bytes describe. The seeds are images sealed with this key, so
//! mutations reach the authenticated paths past the key check. The resume
//! record, which a normal boot reads without the key, is read too, and the
//! bytes are opened within a budget at the start of a sparse terabyte
//! (sparse.rs).
#![no_main]

use kjump_image_format::reader::read_resume_record;
use kjump_image_format::{Image, Secret};
use libfuzzer_sys::fuzz_target;

#[path = "sparse.rs"]
mod sparse;
use sparse::{Sparse, BUDGET};

/// The seeds' key file: 32 bytes of 0x4b (`head -c 32 /dev/zero | tr '\0' K`).
const KEY: [u8; 32] = [0x4b; 32];

fuzz_target!(|data: &[u8]| {
    let bytes = data.to_vec();
    let _ = read_resume_record(&bytes);
    let Ok(secret) = Secret::key_file(KEY.to_vec()) else {
        return;
    };
    if let Ok(image) = Image::open_with(&bytes, Some(&secret)) {
        let _ = kjump_restorer::verify(&bytes, &image, 1, false);
    }
    // An encrypted image's index is read for its seal before the sealed
    // metadata bounds it: within a budget, a huge one is refused unread.
    let _ = Image::open_within(&Sparse(data), Some(&secret), BUDGET);
});

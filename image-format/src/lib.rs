//! The kjump hibernation image.
//!
//! A kjump image holds the physical memory of a suspended kernel. This crate
//! defines its on-disk layout (specified in `FORMAT.md` beside this crate),
//! encodes and decodes every structure, and checks an image's structure
//! against itself. It does no I/O of its own beyond positional reads through
//! [`ReadAt`], and sets no policy on where images live.
//!
//! | offset | structure |
//! |---|---|
//! | 0 | superblock (512 bytes, rest of the 4 KiB block zero) |
//! | 4096 | metadata records |
//! | `data_offset` (block aligned) | chunks: 64-byte header + payload, back to back |
//! | `index_offset` (block aligned) | chunk index: 40 bytes per chunk |
//! | `trailer_offset` | trailer (64 bytes), zero padding to the block |
//!
//! All integers are little-endian; every byte is covered by a CRC32 or must
//! be zero. An encrypted image (incompatible feature bit 0, [`crypto`])
//! seals its metadata and chunk payloads with AES-256-GCM and ties every
//! structure together with an HMAC-SHA256 image seal.

#![forbid(unsafe_code)]

pub mod addr;
pub mod chunk;
pub mod crypto;
mod error;
mod le;
pub mod metadata;
pub mod placement;
pub mod reader;
pub mod superblock;
pub mod trailer;

pub use addr::{ImageOffset, MemoryMap, Pfn, PhysAddr, PhysRange, RangeError};
pub use chunk::{
    chunk_count, chunk_specs, decode_chunk, encode_chunk, ChunkHeader, ChunkSpec, Codec,
    EncodedChunk, IndexEntry, CHUNK_HEADER_SIZE, CHUNK_PAGES, INDEX_ENTRY_SIZE,
};
pub use crypto::{CryptoParams, ImageKeys, Kdf, Secret, SecretError};
pub use error::FormatError;
pub use metadata::{ExcludedPages, Metadata};
pub use placement::{Placement, Segment};
pub use reader::{Image, ReadAt};
pub use superblock::{ImageState, Layout, Superblock, SUPERBLOCK_SIZE};
pub use trailer::{Trailer, TRAILER_SIZE};

/// Size of a page of the saved machine.
pub const PAGE_SIZE: usize = 4096;
/// Alignment of the image's sections.
pub const BLOCK_SIZE: usize = 4096;
/// Architecture named in the magic.
#[cfg(target_arch = "x86_64")]
pub const ARCH_NAME: &str = "x86_64";
/// Architecture named in the magic.
#[cfg(target_arch = "aarch64")]
pub const ARCH_NAME: &str = "aarch64";

/// Rounds `n` up to the next block boundary, `None` on overflow.
pub fn block_align(n: u64) -> Option<u64> {
    n.checked_next_multiple_of(BLOCK_SIZE as u64)
}

/// Where every section of an image goes, given what the writer knows at the
/// end: the metadata size, the chunk stream size and the chunk count.
pub fn plan_layout(metadata_len: u64, data_len: u64, chunk_count: u64) -> Option<Layout> {
    let metadata_offset = BLOCK_SIZE as u64;
    let data_offset = block_align(metadata_offset.checked_add(metadata_len)?)?;
    let index_offset = block_align(data_offset.checked_add(data_len)?)?;
    let index_len = chunk_count.checked_mul(INDEX_ENTRY_SIZE as u64)?;
    let trailer_offset = index_offset.checked_add(index_len)?;
    let image_len = block_align(trailer_offset.checked_add(TRAILER_SIZE as u64)?)?;
    Some(Layout {
        metadata_offset,
        metadata_len,
        data_offset,
        data_len,
        index_offset,
        chunk_count,
        trailer_offset,
        image_len,
        ..Layout::default()
    })
}

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
//!
//! Each structure has one module that holds both directions, encode and
//! decode: [`superblock`], [`section`] (the metadata section: the
//! [`metadata`] records, sealed with the resume record after them in an
//! encrypted image), [`chunk`] (header, index entry, the chunk sequence),
//! [`codec`] (a chunk's payload, plain or sealed), [`trailer`], [`seal`]
//! (the image seal, in its order) and [`placement`] (where an image lies
//! on its device). [`layout`] gives every field's offset and size, checked
//! at compile time and held to FORMAT.md's tables by a test; [`reader`]
//! opens an image and checks its structures against each other.

#![forbid(unsafe_code)]

pub mod addr;
pub mod chunk;
pub mod codec;
pub mod crypto;
mod error;
pub mod foreign;
pub mod layout;
pub mod le;
pub mod metadata;
pub mod placement;
pub mod reader;
pub mod seal;
pub mod section;
pub mod superblock;
pub mod trailer;

pub use addr::{ImageOffset, MemoryMap, Pfn, PhysAddr, PhysRange, RangeError};
pub use chunk::{
    chunk_count, chunk_specs, ChunkHeader, ChunkSpec, Codec, IndexEntry, CHUNK_HEADER_SIZE,
    INDEX_ENTRY_SIZE,
};
pub use codec::{ChunkCodec, EncodedChunk, ZeroPages};
pub use crypto::{CryptoParams, ImageKeys, Kdf, Secret, SecretError};
pub use error::FormatError;
pub use layout::{
    block_align, plan_layout, worst_case_len, Layout, ARCH_NAME, BLOCK_SIZE, CHUNK_PAGES,
    PAGE_SIZE, TAG_SIZE,
};
pub use metadata::{ExcludedPages, Metadata};
pub use placement::{Placement, Segment};
pub use reader::{Image, ReadAt};
pub use seal::{ImageSeal, SuperblockSeal};
pub use section::{MetadataSection, SectionParts};
pub use superblock::{FailureText, ImageState, RestoreRecord, Superblock, SUPERBLOCK_SIZE};
pub use trailer::{Trailer, TRAILER_SIZE};

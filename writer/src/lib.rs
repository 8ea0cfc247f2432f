//! Capturing physical memory into a kjump image.
//!
//! [`MemorySource`] reads memory from an ELF core (/proc/vmcore, QEMU's
//! `dump-guest-memory`) or from /dev/mem over given ranges; [`capture()`]
//! compresses it in parallel into a [`Target`] and commits the image only
//! once every other byte is on stable storage. The devices and mappings
//! underneath are [`kjump_sys`]'s.

#![forbid(unsafe_code)]

pub mod capture;
pub mod elf;
pub mod source;

pub use capture::{
    capture, capture_encrypted, CaptureError, CaptureOptions, CaptureReport, Encryption,
};
pub use kjump_sys::{Target, TargetError};
pub use source::{MemorySource, SourceError};

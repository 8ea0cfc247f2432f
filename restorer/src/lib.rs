//! Reading kjump images back: checking every byte in parallel
//! ([`verify()`]), writing the saved memory out as an ELF core
//! ([`export()`]) for crash, drgn and gdb, and jumping back into a saved
//! kernel ([`kexec`]).
//!
//! Unsafe code is confined to [`kexec`] (system calls) and [`physmem`]
//! (writes through a mapping of physical memory).

#![deny(unsafe_code)]

pub mod export;
#[allow(unsafe_code)]
pub mod kexec;
#[allow(unsafe_code)]
pub mod physmem;
pub mod restore;
pub mod scan;
pub mod verify;

pub use export::{export, ExportError, ExportReport};
pub use restore::{consume, restore, RestoreError, RestoreReport};
pub use scan::{scan_chunks, ScanError};
pub use verify::{verify, VerifyError, VerifyReport};

//! Reading kjump images back: checking every byte in parallel
//! ([`verify()`]), writing the saved memory out as an ELF core
//! ([`export()`]) for crash, drgn and gdb, and writing it back into
//! physical memory ([`restore()`]) through [`kjump_sys::physmem`].

#![forbid(unsafe_code)]

pub mod budget;
pub mod export;
pub mod restore;
pub mod scan;
pub mod verify;

pub use export::{export, ExportError, ExportReport};
pub use restore::{consume, restore, RestoreError, RestoreReport};
pub use scan::{scan_chunks, ScanError};
pub use verify::{verify, VerifyError, VerifyReport};

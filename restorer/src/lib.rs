//! Reading kjump images back: checking every byte in parallel
//! ([`verify()`]) and writing the saved memory out as an ELF core
//! ([`export()`]) for crash, drgn and gdb.

#![forbid(unsafe_code)]

pub mod export;
pub mod scan;
pub mod verify;

pub use export::{export, ExportError, ExportReport};
pub use scan::{scan_chunks, ScanError};
pub use verify::{verify, VerifyError, VerifyReport};

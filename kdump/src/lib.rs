//! kjump as a kdump dump collector.
//!
//! - [`vmcoreinfo`]: the `KEY=VALUE` text a kernel publishes for dump
//!   tools, and the struct page layout and address-translation facts taken
//!   from it.
//! - [`mem`]: physical memory behind a trait, and the dumped kernel's own
//!   x86_64 page tables (4- and 5-level) to read its virtual addresses.
//! - [`filter`]: makedumpfile's dump levels (`-d`), decided per page frame
//!   from its struct page.
//! - [`core`]: an ELF64 core (`/proc/vmcore` and copies of it) as
//!   physical memory, parsed by the capture's reader (`kjump_writer::elf`).
//! - [`dmesg`]: the kernel log, read from the printk ring buffer
//!   (`--dump-dmesg`).
//! - [`image`]: a kjump image of a core as physical memory.
//! - [`diskdump`]: the kdump-compressed format makedumpfile writes and
//!   `crash` reads. Its reader, `diskdump_read`, serves the tests only
//!   (feature `test-hooks`).
//!
//! Nothing here touches a system interface: memory comes through
//! [`mem::PhysMemory`], output goes to any `Write + Seek`.

#![forbid(unsafe_code)]

pub mod core;
pub mod diskdump;
#[cfg(any(test, feature = "test-hooks"))]
pub mod diskdump_read;
pub mod dmesg;
pub mod filter;
pub mod image;
pub mod mem;
pub mod vmcoreinfo;

pub use filter::{DumpLevel, Exclusions, FilterError, FilterPlan, KindCounts};
pub use mem::{PhysMemory, PhysReadError};
pub use vmcoreinfo::{VmcoreInfo, VmcoreInfoError};

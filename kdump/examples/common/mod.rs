//! What the examples share: their arguments, and a core opened with its
//! VMCOREINFO and the page frames it holds.

// Each example compiles this module and uses part of it.
#![allow(dead_code)]

use std::error::Error;
use std::fs::File;

use kjump_kdump::core::Core;
use kjump_kdump::{DumpLevel, VmcoreInfo};

/// The `N` arguments after the program name, or `usage` as the error.
pub fn args<const N: usize>(usage: &str) -> Result<[String; N], Box<dyn Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    a.try_into().map_err(|_| format!("usage: {usage}").into())
}

/// A dump level argument, 0 to 31.
pub fn dump_level(arg: &str) -> Result<DumpLevel, Box<dyn Error>> {
    let n = arg
        .parse()
        .map_err(|e| format!("dump level {arg:?}: {e}"))?;
    Ok(DumpLevel::new(n).ok_or_else(|| format!("dump level {n}: a level is 0 to 31"))?)
}

/// An ELF core as the examples read it.
pub struct OpenCore {
    /// The core.
    pub core: Core<File>,
    /// Its VMCOREINFO, if it has one.
    pub info: Option<VmcoreInfo>,
    /// Its page frames, `[first, end)` runs.
    pub ranges: Vec<(u64, u64)>,
}

/// The core at `path`.
pub fn open(path: &str) -> Result<Core<File>, Box<dyn Error>> {
    let file = File::open(path).map_err(|e| format!("opening {path}: {e}"))?;
    let len = file.metadata()?.len();
    Ok(Core::open(file, len).map_err(|e| format!("{path}: {e}"))?)
}

/// The core at `path`, its VMCOREINFO parsed and its frames listed.
pub fn open_core(path: &str) -> Result<OpenCore, Box<dyn Error>> {
    let core = open(path)?;
    let info = core.vmcoreinfo().map(VmcoreInfo::parse).transpose()?;
    let ranges = core
        .ranges()
        .iter()
        .map(|&(s, e)| (s / 4096, e.div_ceil(4096)))
        .collect();
    Ok(OpenCore { core, info, ranges })
}

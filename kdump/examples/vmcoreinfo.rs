//! Prints the VMCOREINFO note of an ELF core (the fixture recipe in
//! tests/fixtures/README.md): `vmcoreinfo CORE`.

use std::io::Write as _;

use kjump_kdump::core::Core;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args_os().nth(1).ok_or("usage: vmcoreinfo CORE")?;
    let file = std::fs::File::open(&path)?;
    let len = file.metadata()?.len();
    let core = Core::open(file, len)?;
    let info = core.vmcoreinfo().ok_or("the core has no VMCOREINFO note")?;
    let end = info.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    std::io::stdout().write_all(&info[..end])?;
    Ok(())
}

//! Prints the VMCOREINFO note of an ELF core (the fixture recipe in
//! tests/fixtures/README.md): `vmcoreinfo CORE`.

use std::io::Write as _;

mod common;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let [path] = common::args("vmcoreinfo CORE")?;
    let core = common::open(&path)?;
    let info = core.vmcoreinfo().ok_or("the core has no VMCOREINFO note")?;
    let end = info.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    std::io::stdout().write_all(&info[..end])?;
    Ok(())
}

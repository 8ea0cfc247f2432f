//! Any bytes as an ELF core: the parser checks every offset against the
//! file before it reads, and the note walker stops at malformed notes.
#![no_main]

use kjump_writer::elf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = elf::parse(data.len() as u64, |off, len| {
        let start = usize::try_from(off).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        data.get(start..start.saturating_add(len))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| std::io::ErrorKind::UnexpectedEof.into())
    });
    if let Ok(core) = parsed {
        if let Some(info) = elf::vmcoreinfo(&core.notes) {
            let _ = elf::vmcoreinfo_value(info, "OSRELEASE");
        }
    }
    let _ = elf::notes(data).count();
});

//! Converts an ELF core straight to a kdump-compressed file at a dump
//! level, single-threaded: `todiskdump CORE OUT LEVEL none|snappy|zstd`.
//! kjump's own path goes through an image (`kjump export --format kdump`);
//! this one checks the format against readers on any core.

use kjump_kdump::diskdump::{DiskdumpWriter, DumpInfo, PageCodec, Utsname};
use kjump_kdump::{filter, PhysMemory};

mod common;

use common::OpenCore;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let [core, out, level, codec] = common::args("todiskdump CORE OUT LEVEL none|snappy|zstd")?;
    let level = common::dump_level(&level)?;
    let codec = match codec.as_str() {
        "none" => PageCodec::None,
        "snappy" => PageCodec::Snappy,
        "zstd" => PageCodec::Zstd,
        other => return Err(format!("unknown codec {other}").into()),
    };
    let OpenCore { core, info, ranges } = common::open_core(&core)?;
    let plan = filter::plan(&core, info.as_ref(), &ranges, level)?;
    let dump = DumpInfo {
        utsname: info
            .as_ref()
            .map(|i| Utsname::of_kernel(&core, i))
            .unwrap_or_default(),
        phys_base: info
            .as_ref()
            .and_then(|i| i.number("phys_base"))
            .unwrap_or(0) as u64,
        nr_cpus: 1,
        dump_level: i32::from(level.bits() & !1),
        notes: core.notes().to_vec(),
        vmcoreinfo: info.as_ref().map(|i| i.raw().to_vec()).unwrap_or_default(),
        ..DumpInfo::default()
    };
    let out = std::fs::File::create(out)?;
    let w = DiskdumpWriter::create(out, &ranges, &plan.excluded, &dump, codec)?;
    for &(s, e) in &ranges {
        let mut pfn = s;
        while pfn < e {
            let n = (e - pfn).min(64);
            let mut pages = vec![0u8; (n * 4096) as usize];
            let (mut zero, mut skip) = (0u64, 0u64);
            for i in 0..n {
                let page = &mut pages[(i * 4096) as usize..((i + 1) * 4096) as usize];
                // Bytes outside the core (a partial page) read as zero.
                let at = (pfn + i) * 4096;
                for (j, chunk) in page.chunks_mut(512).enumerate() {
                    let _ = core.read_phys(at + 512 * j as u64, chunk);
                }
                zero |= u64::from(page.iter().all(|&b| b == 0)) << i;
                skip |= u64::from(plan.excluded.contains(pfn + i)) << i;
            }
            w.write_pages(pfn, &pages, zero, skip)?;
            pfn += n;
        }
    }
    let (_, len) = w.finish(&dump)?;
    eprintln!("{len} bytes, {:?}", plan.counts);
    Ok(())
}

//! Decides a core's page frames at a dump level and prints the frames kept,
//! as `0xFIRST 0xEND` runs (end exclusive), then the counts on stderr:
//! `filter CORE LEVEL`. The kdump tests compare this with makedumpfile.

use std::io::Write as _;

use kjump_kdump::core::Core;
use kjump_kdump::{filter, DumpLevel, VmcoreInfo};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (path, level) = (args.next(), args.next());
    let (Some(path), Some(level)) = (path, level) else {
        return Err("usage: filter CORE LEVEL".into());
    };
    let level = DumpLevel::new(level.parse()?).ok_or("a level is 0 to 31")?;
    let file = std::fs::File::open(&path)?;
    let len = file.metadata()?.len();
    let core = Core::open(file, len)?;
    let info = core.vmcoreinfo().map(VmcoreInfo::parse).transpose()?;
    let ranges: Vec<(u64, u64)> = core
        .ranges()
        .iter()
        .map(|&(s, e)| (s / 4096, e.div_ceil(4096)))
        .collect();
    let started = std::time::Instant::now();
    let plan = filter::plan(&core, info.as_ref(), &ranges, level)?;
    let secs = started.elapsed().as_secs_f64();
    let mut out = std::io::BufWriter::new(std::io::stdout());
    for &(s, e) in &ranges {
        let mut run: Option<u64> = None;
        for pfn in s..e {
            match (plan.excluded.contains(pfn), run) {
                (false, None) => run = Some(pfn),
                (true, Some(r)) => {
                    writeln!(out, "{r:#x} {pfn:#x}")?;
                    run = None;
                }
                _ => {}
            }
        }
        if let Some(r) = run {
            writeln!(out, "{r:#x} {e:#x}")?;
        }
    }
    eprintln!(
        "{:?} in {secs:.3} s, {} runs",
        plan.counts,
        plan.excluded.runs().len()
    );
    Ok(())
}

//! Decides a core's page frames at a dump level and prints the frames kept,
//! as `0xFIRST 0xEND` runs (end exclusive), then the counts on stderr:
//! `filter CORE LEVEL`. The kdump tests compare this with makedumpfile.

use std::io::Write as _;

use kjump_kdump::filter;

mod common;

use common::OpenCore;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let [path, level] = common::args("filter CORE LEVEL")?;
    let level = common::dump_level(&level)?;
    let OpenCore { core, info, ranges } = common::open_core(&path)?;
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

//! `kjump-dumpgen`: writes a seeded synthetic memory dump as an ELF64 core.
//!
//! ```text
//! kjump-dumpgen --seed 1 --size 4G [--layout qemu|holes|single|unaligned]
//!               [--mix default|zero|random] [--style vmcore|packed]
//!               [--kernel-text LEN [--kernel-text-differs-at OFFSET]] OUTPUT
//! ```

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use kjump_dumpgen::{write_dump, DumpSpec, ElfStyle, KernelText, Layout, PageKind, PageMix};

/// Write a seeded, reproducible synthetic memory dump (ELF64 x86-64 core).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Seed of all randomness: the same arguments give the same file.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// RAM size in bytes, or with a binary suffix: 512K, 64M, 4G, 1T.
    #[arg(long, value_parser = parse_size)]
    size: u64,
    /// Physical memory layout: qemu, holes, single or unaligned.
    #[arg(long, default_value_t = Layout::Qemu)]
    layout: Layout,
    /// Page mix: default (45% zero, 25% kernel, 15% text, 15% random),
    /// zero, random, or four percentages ZERO,KERNEL,TEXT,RANDOM.
    #[arg(long, value_parser = parse_mix, default_value = "default")]
    mix: PageMix,
    /// Placement of data in the file; default: the layout's (packed for
    /// unaligned, vmcore otherwise).
    #[arg(long, value_enum)]
    style: Option<StyleArg>,
    /// Add a kernel text PT_LOAD of this many bytes at physical 16 MiB, as
    /// x86_64 kdump cores have: a second copy of RAM bytes (sizes as --size).
    #[arg(long, value_parser = parse_size)]
    kernel_text: Option<u64>,
    /// With --kernel-text: flip the byte at this offset of the text copy, so
    /// the two copies differ (a core kjump must refuse).
    #[arg(long, value_parser = parse_size, requires = "kernel_text")]
    kernel_text_differs_at: Option<u64>,
    /// The dump file to write (replaced if it exists).
    output: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StyleArg {
    Vmcore,
    Packed,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut spec = DumpSpec::from_layout(args.layout, args.size, args.seed)?.with_mix(args.mix);
    match args.style {
        Some(StyleArg::Vmcore) => spec.style = ElfStyle::Vmcore,
        Some(StyleArg::Packed) => spec.style = ElfStyle::Packed,
        None => {}
    }
    if let Some(len) = args.kernel_text {
        let text = KernelText::at_16m(len);
        spec = spec.with_kernel_text(match args.kernel_text_differs_at {
            Some(at) => text.differing_at(at),
            None => text,
        });
    }
    let started = Instant::now();
    let info = write_dump(&spec, &args.output)
        .with_context(|| format!("generating {}", args.output.display()))?;
    let secs = started.elapsed().as_secs_f64();
    let total = info.pages.total().max(1);
    let shares: Vec<String> = PageKind::ALL
        .iter()
        .map(|k| {
            let pct = 100.0 * info.pages.get(*k) as f64 / total as f64;
            format!("{k:?}={pct:.0}%").to_lowercase()
        })
        .collect();
    println!(
        "{}: {} bytes ({:.2} GB), {} segments{}, layout {}, style {:?}, seed {}, pages {}, \
         build-id {}, {:.1} s ({:.2} GB/s)",
        args.output.display(),
        info.file_size,
        info.file_size as f64 / 1e9,
        info.segments.len(),
        if info.kernel_text.is_some() {
            " and kernel text"
        } else {
            ""
        },
        args.layout,
        spec.style,
        args.seed,
        shares.join(" "),
        info.build_id,
        secs,
        info.file_size as f64 / 1e9 / secs.max(1e-9),
    );
    Ok(())
}

/// Parses a page mix name or `ZERO,KERNEL,TEXT,RANDOM` percentages.
fn parse_mix(s: &str) -> Result<PageMix, String> {
    match s {
        "default" => return Ok(PageMix::default()),
        "zero" => return Ok(PageMix::all_zero()),
        "random" => return Ok(PageMix::all_random()),
        _ => {}
    }
    let parts: Vec<u8> = s
        .split(',')
        .map(|p| p.trim().parse::<u8>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("mix {s:?}: {e} (expected default, zero, random or Z,K,T,R)"))?;
    let [zero, kernel, text, random] = parts[..] else {
        return Err(format!("mix {s:?}: expected four percentages Z,K,T,R"));
    };
    let mix = PageMix {
        zero,
        kernel,
        text,
        random,
    };
    mix.validate().map_err(|e| e.to_string())?;
    Ok(mix)
}

/// Parses `4096`, `0x1000`, `64M`, `4G`, `4GiB`, `1T` (binary multiples).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits_end = if t.starts_with("0x") || t.starts_with("0X") {
        t.len()
    } else {
        t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len())
    };
    let (num, suffix) = t.split_at(digits_end);
    let value = match num.strip_prefix("0x").or_else(|| num.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => num.parse::<u64>(),
    }
    .map_err(|e| format!("size {s:?}: {e}"))?;
    let shift = match suffix.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => {
            return Err(format!(
                "size {s:?}: unknown suffix {suffix:?} (use K, M, G or T)"
            ))
        }
    };
    value
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("size {s:?} does not fit in 64 bits"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0x1000"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("2t"), Ok(2 << 40));
        assert!(parse_size("").is_err());
        assert!(parse_size("4X").is_err());
        assert!(parse_size("99999999T").is_err());
    }

    #[test]
    fn mixes_parse() {
        assert_eq!(parse_mix("default"), Ok(PageMix::default()));
        assert_eq!(parse_mix("random"), Ok(PageMix::all_random()));
        assert_eq!(parse_mix("0,100,0,0").map(|m| m.kernel), Ok(100));
        assert!(parse_mix("50,50,50,0").is_err());
        assert!(parse_mix("50,50").is_err());
        assert!(parse_mix("bogus").is_err());
    }

    #[test]
    fn cli_parses() {
        let args = Args::try_parse_from([
            "kjump-dumpgen",
            "--seed",
            "3",
            "--size",
            "64M",
            "--layout",
            "unaligned",
            "--mix",
            "zero",
            "out.elf",
        ])
        .unwrap();
        assert_eq!(args.layout, Layout::Unaligned);
        assert_eq!(args.kernel_text, None);
        let args = Args::try_parse_from([
            "kjump-dumpgen",
            "--size",
            "64M",
            "--kernel-text",
            "8M",
            "--kernel-text-differs-at",
            "0x1234",
            "out.elf",
        ])
        .unwrap();
        assert_eq!(args.kernel_text, Some(8 << 20));
        assert_eq!(args.kernel_text_differs_at, Some(0x1234));
        assert!(Args::try_parse_from([
            "kjump-dumpgen",
            "--size",
            "1M",
            "--kernel-text-differs-at",
            "1",
            "o"
        ])
        .is_err());
        assert_eq!(args.size, 64 << 20);
        assert!(
            Args::try_parse_from(["kjump-dumpgen", "--size", "1M", "--layout", "x", "o"]).is_err()
        );
    }
}

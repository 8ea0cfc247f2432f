//! Memory maps given by hand: `--ranges` lists and /proc/iomem files.

use kjump_image_format::{MemoryMap, PhysAddr, PhysRange};

/// A range list or memory-map file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RangesError {
    /// An entry of a `--ranges` list is malformed.
    #[error("range {index} ({text:?}) of the list: {reason}")]
    ListEntry {
        /// Position in the list, from 0.
        index: usize,
        /// The entry as given.
        text: String,
        /// What is wrong.
        reason: String,
    },
    /// A line of a memory-map file is malformed.
    #[error("{path}:{line}: {reason}")]
    MapLine {
        /// The file.
        path: String,
        /// Line number, from 1.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The memory-map file lists no System RAM, or lists it as zeros.
    #[error("{path}: {reason}")]
    MapFile {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

fn parse_hex(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    u64::from_str_radix(digits, 16).map_err(|e| format!("{t:?} is not a hex address: {e}"))
}

/// `start-end` with an inclusive end, as /proc/iomem writes ranges.
fn parse_inclusive(s: &str) -> Result<PhysRange, String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("expected START-END, got {s:?}"))?;
    let (start, last) = (parse_hex(a)?, parse_hex(b)?);
    if last < start {
        return Err(format!("end {last:#x} lies before start {start:#x}"));
    }
    let end = last
        .checked_add(1)
        .ok_or_else(|| format!("end {last:#x} overflows"))?;
    PhysRange::new(PhysAddr(start), PhysAddr(end)).map_err(|e| e.to_string())
}

/// Parses `0x1000-0x9ffff,0x100000-0x3ffdffff` (hex, inclusive ends, as in
/// /proc/iomem). Entries must not overlap.
pub fn parse_range_list(list: &str) -> Result<Vec<PhysRange>, RangesError> {
    list.split(',')
        .enumerate()
        .map(|(index, text)| {
            parse_inclusive(text).map_err(|reason| RangesError::ListEntry {
                index,
                text: text.to_string(),
                reason,
            })
        })
        .collect()
}

/// Takes the "System RAM" lines of a file in /proc/iomem's format
/// (`00100000-3ffdffff : System RAM`, any indentation).
pub fn parse_iomem(path: &str, text: &str) -> Result<Vec<PhysRange>, RangesError> {
    parse_iomem_named(path, text, "System RAM")
}

/// Takes the lines of /proc/iomem-format text whose name is `wanted`
/// (e.g. "Crash kernel"), any indentation.
pub fn parse_iomem_named(
    path: &str,
    text: &str,
    wanted: &str,
) -> Result<Vec<PhysRange>, RangesError> {
    let mut out = Vec::new();
    let mut all_zero = true;
    for (n, line) in text.lines().enumerate() {
        let Some((span, name)) = line.split_once(" : ") else {
            if line.trim().is_empty() {
                continue;
            }
            return Err(RangesError::MapLine {
                path: path.into(),
                line: n + 1,
                reason: format!("expected \"START-END : NAME\", got {line:?}"),
            });
        };
        if name.trim() != wanted {
            continue;
        }
        let span = span.trim();
        if span.split('-').all(|x| x.chars().all(|c| c == '0')) {
            continue;
        }
        all_zero = false;
        out.push(
            parse_inclusive(span).map_err(|reason| RangesError::MapLine {
                path: path.into(),
                line: n + 1,
                reason,
            })?,
        );
    }
    if out.is_empty() {
        let reason = if all_zero && text.contains(wanted) {
            format!("all {wanted} addresses read as zero: read /proc/iomem as root")
        } else {
            format!("no \"{wanted}\" lines")
        };
        return Err(RangesError::MapFile {
            path: path.into(),
            reason,
        });
    }
    Ok(out)
}

/// Joins ranges from every source into one map.
pub fn memory_map(ranges: Vec<PhysRange>) -> MemoryMap {
    MemoryMap::merged(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_list_uses_inclusive_ends() {
        let r = parse_range_list("0x1000-0x9ffff,100000-3ffdffff").unwrap();
        assert_eq!(r[0].start(), PhysAddr(0x1000));
        assert_eq!(r[0].end(), PhysAddr(0xa0000));
        assert_eq!(r[1].end(), PhysAddr(0x3ffe0000));
    }

    #[test]
    fn bad_entries_are_named() {
        let e = parse_range_list("0x1000-0x1fff,0x5000")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("range 1 (\"0x5000\")"), "{e}");
        let e = parse_range_list("0x2000-0x1000").unwrap_err().to_string();
        assert!(e.contains("lies before start"), "{e}");
        let e = parse_range_list("0xzz-0x1000").unwrap_err().to_string();
        assert!(e.contains("not a hex address"), "{e}");
    }

    #[test]
    fn iomem_system_ram_lines_only() {
        let text = "00000000-00000fff : Reserved\n00001000-0009fbff : System RAM\n\
                    000a0000-000bffff : PCI Bus 0000:00\n00100000-3ffdffff : System RAM\n\
                      01000000-01e03fff : Kernel code\n3ffe0000-3fffffff : Reserved\n";
        let r = parse_iomem("iomem", text).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].to_string(), "0x1000-0x9fbff");
        assert_eq!(r[1].to_string(), "0x100000-0x3ffdffff");
    }

    #[test]
    fn iomem_read_without_root_is_explained() {
        let text = "00000000-00000000 : System RAM\n00000000-00000000 : System RAM\n";
        let e = parse_iomem("/proc/iomem", text).unwrap_err().to_string();
        assert!(e.contains("as root"), "{e}");
        let e = parse_iomem("f", "garbage\n").unwrap_err().to_string();
        assert_eq!(e, "f:1: expected \"START-END : NAME\", got \"garbage\"");
    }
}

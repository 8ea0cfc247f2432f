//! FORMAT.md and the code agree: every field table of the specification
//! lists exactly the offsets and sizes of the matching `layout` table, the
//! ranges its prose gives for the crypto area and the sealed-off fields
//! are the layout's, and every magic and signature the code writes is
//! named there.

use kjump_image_format::layout::{
    chunk_header, crypto_area, extent_map, index_entry, superblock, trailer, Field,
};
use kjump_image_format::placement::{
    HELD_ACTIVE_SWAP_MAGIC, HELD_SWAP_MAGIC, MAP_MAGIC, SWAP_MAGIC, SWAP_MAGIC_OFFSET,
};

const FORMAT_MD: &str = include_str!("../FORMAT.md");

/// The `(offset, size)` rows of the first table after the line that
/// starts with `heading` (a table's first two columns; "24 each" is 24).
fn table_after(heading: &str) -> Vec<(usize, usize)> {
    let mut lines = FORMAT_MD.lines().skip_while(|l| !l.starts_with(heading));
    assert!(lines.next().is_some(), "FORMAT.md has no {heading:?}");
    let rows: Vec<Vec<String>> = lines
        .map(str::trim)
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect();
    assert!(rows.len() > 2, "no table after {heading:?}");
    let number = |cell: &str, row: &[String]| -> usize {
        let digits: String = cell.chars().take_while(char::is_ascii_digit).collect();
        digits
            .parse()
            .unwrap_or_else(|_| panic!("under {heading:?}: {cell:?} is not a number in {row:?}"))
    };
    // Skip the header row and the |---| row.
    rows[2..]
        .iter()
        .map(|r| (number(&r[0], r), number(&r[1], r)))
        .collect()
}

fn rows(fields: &[Field]) -> Vec<(usize, usize)> {
    fields.iter().map(|f| (f.offset, f.size)).collect()
}

#[test]
fn every_field_table_matches_the_layout() {
    let tables = [
        ("## Superblock", rows(superblock::FIELDS)),
        ("### Crypto area", rows(crypto_area::FIELDS)),
        ("Each chunk is a 64-byte header", rows(chunk_header::FIELDS)),
        ("## Chunk index", rows(index_entry::FIELDS)),
        ("## Trailer", rows(trailer::FIELDS)),
        ("- **File extents**", {
            let mut r = rows(extent_map::FIELDS);
            r.push((extent_map::HEADER_SIZE, extent_map::EXTENT_SIZE));
            r
        }),
    ];
    for (heading, code) in tables {
        assert_eq!(
            table_after(heading),
            code,
            "FORMAT.md table after {heading:?}"
        );
    }
}

#[test]
fn sizes_in_the_headings_are_the_layout_sizes() {
    for heading in [
        format!("## Superblock (offset 0, {} bytes)", superblock::SIZE),
        format!(
            "## Chunk index (at `index_offset`, {} bytes per chunk)",
            index_entry::SIZE
        ),
        format!("## Trailer (at `trailer_offset`, {} bytes)", trailer::SIZE),
        format!("Each chunk is a {}-byte header", chunk_header::SIZE),
    ] {
        assert!(FORMAT_MD.contains(&heading), "FORMAT.md lacks {heading:?}");
    }
}

#[test]
fn the_crypto_area_and_the_sealed_fields_have_one_extent() {
    let area = format!("{}..{}", crypto_area::START, crypto_area::END);
    let mut mentions = 0;
    for line in FORMAT_MD
        .lines()
        .filter(|l| l.to_lowercase().contains("crypto area"))
    {
        if let Some(at) = line.find(&format!("{}..", crypto_area::START)) {
            let given: String = line[at..]
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            assert_eq!(given, area, "FORMAT.md: {line:?}");
            mentions += 1;
        }
    }
    let heading = format!("### Crypto area (superblock {area})");
    assert!(FORMAT_MD.contains(&heading), "FORMAT.md lacks {heading:?}");
    assert!(
        mentions >= 2,
        "the crypto area's extent is given {mentions} times"
    );
    let rest = format!(
        "{}..{} stays reserved and zero",
        crypto_area::END,
        superblock::RESTORE_ATTEMPTS
    );
    assert!(FORMAT_MD.contains(&rest), "FORMAT.md lacks {rest:?}");
    let flat = FORMAT_MD.split_whitespace().collect::<Vec<_>>().join(" ");
    for (what, start, len) in [
        ("the state", superblock::STATE, 4),
        ("the consumed time", superblock::CONSUMED_TIME, 8),
        ("the seal itself", crypto_area::SEAL, crypto_area::SEAL_LEN),
        (
            "the restore record",
            superblock::RESTORE_ATTEMPTS,
            superblock::CRC - superblock::RESTORE_ATTEMPTS,
        ),
    ] {
        let want = format!("{what} ({}..{})", start, start + len);
        assert!(flat.contains(&want), "FORMAT.md lacks {want:?}");
    }
}

#[test]
fn every_magic_and_signature_is_named() {
    let text = |b: &[u8]| {
        String::from_utf8_lossy(b)
            .trim_end_matches('\0')
            .to_string()
    };
    for magic in [
        text(&kjump_image_format::superblock::MAGIC_PREFIX),
        text(&kjump_image_format::chunk::CHUNK_MAGIC),
        text(&kjump_image_format::trailer::TRAILER_MAGIC) + "\\0",
        text(MAP_MAGIC),
        text(SWAP_MAGIC),
        text(HELD_SWAP_MAGIC),
        text(HELD_ACTIVE_SWAP_MAGIC),
    ] {
        assert!(
            FORMAT_MD.contains(&format!("`{magic}`")),
            "FORMAT.md does not name `{magic}`"
        );
    }
    let at = format!("signature at offset {SWAP_MAGIC_OFFSET}");
    assert!(FORMAT_MD.contains(&at), "FORMAT.md lacks {at:?}");
}

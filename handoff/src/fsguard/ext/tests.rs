//! ext filesystems laid out by hand, 1 KiB blocks: a superblock, the
//! journal inode's block map in its backup and the journal's blocks where
//! the map says.

use crate::fsguard::fingerprint_of;

const BS: usize = 1024;
const JBD2_MAGIC: u32 = 0xc03b_3998;

fn le16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn le32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn be32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// A filesystem of `blocks` blocks whose journal has `journal` blocks;
/// its block map is for the test to write.
fn image(blocks: usize, journal: u32) -> Vec<u8> {
    let mut img = vec![0u8; blocks * BS];
    let sb = &mut img[1024..2048];
    le16(sb, 0x38, 0xef53);
    le32(sb, 0x5c, 0x4);
    le32(sb, 0x60, 0x246);
    le32(sb, 0xe0, 8);
    sb[0xfd] = 1;
    le32(sb, 0x10c + 64, journal * BS as u32);
    img
}

/// Block map entries of `s_jnl_blocks` (its `i_block`), in bytes.
const I_BLOCK: usize = 1024 + 0x10c;

/// An extent-tree node at `at` of depth `depth`: leaf entries are
/// (logical, physical, len), index entries (logical, child, _).
fn node(img: &mut [u8], at: usize, depth: u16, entries: &[(u32, u32, u16)]) {
    le16(img, at, 0xf30a);
    le16(img, at + 2, entries.len() as u16);
    le16(img, at + 4, 4);
    le16(img, at + 6, depth);
    for (i, &(logical, physical, len)) in entries.iter().enumerate() {
        let e = at + 12 + 12 * i;
        le32(img, e, logical);
        if depth == 0 {
            le16(img, e + 4, len);
            le32(img, e + 8, physical);
        } else {
            le32(img, e + 4, physical);
            le32(img, e + 8, 0);
        }
    }
}

/// The journal's blocks: journal block n lies at device block map(n).
/// Writes its superblock (sequence 5, log from `start`) and a
/// transaction from `start`: a descriptor of one tag, its data block
/// and the commit.
fn journal(img: &mut [u8], map: impl Fn(u32) -> u32, blocks: u32, start: u32) {
    fn block(img: &mut [u8], at: u32, blocktype: u32, sequence: u32) -> &mut [u8] {
        let b = &mut img[at as usize * BS..][..BS];
        be32(b, 0, JBD2_MAGIC);
        be32(b, 4, blocktype);
        be32(b, 8, sequence);
        b
    }
    let sb = block(img, map(0), 4, 0);
    be32(sb, 0xc, BS as u32);
    be32(sb, 0x10, blocks);
    be32(sb, 0x14, 1);
    be32(sb, 0x18, 5);
    be32(sb, 0x1c, start);
    // One tag, the last.
    block(img, map(start), 1, 5)[12 + 6..12 + 8].copy_from_slice(&0xau16.to_be_bytes());
    block(img, map(start + 2), 2, 5);
}

fn journal_of(img: &[u8]) -> String {
    let fp = fingerprint_of(img).unwrap();
    fp.split_once(" incompat=0x246 ")
        .unwrap_or_else(|| panic!("{fp}"))
        .1
        .to_string()
}

/// One extent of 64 blocks at device block 100, in a 256-block filesystem.
fn one_extent() -> Vec<u8> {
    let mut img = image(256, 64);
    node(&mut img, I_BLOCK, 0, &[(0, 100, 64)]);
    journal(&mut img, |n| 100 + n, 64, 1);
    img
}

#[test]
fn a_journal_in_one_extent() {
    assert_eq!(
        journal_of(&one_extent()),
        "journal-sequence=5 journal-start=1 log-end=6@4"
    );
}

#[test]
fn a_log_across_two_extents_of_a_tree_one_level_deep() {
    let map = |n| if n < 30 { 100 + n } else { 170 + n };
    let mut inline = image(256, 64);
    node(&mut inline, I_BLOCK, 0, &[(0, 100, 30), (30, 200, 34)]);
    journal(&mut inline, map, 64, 29);
    let want = "journal-sequence=5 journal-start=29 log-end=6@32";
    assert_eq!(journal_of(&inline), want);
    let mut deep = image(256, 64);
    node(&mut deep, I_BLOCK, 1, &[(0, 50, 0)]);
    node(&mut deep, 50 * BS, 0, &[(0, 100, 30), (30, 200, 34)]);
    journal(&mut deep, map, 64, 29);
    assert_eq!(journal_of(&deep), want);
}

#[test]
fn an_ext3_journal_in_a_block_map() {
    // 300 blocks: 12 direct, 256 through the single indirect block (90),
    // 32 through the double (91, then 92).
    let mut img = image(600, 300);
    for i in 0..12 {
        le32(&mut img, I_BLOCK + 4 * i, 100 + i as u32);
    }
    le32(&mut img, I_BLOCK + 48, 90);
    le32(&mut img, I_BLOCK + 52, 91);
    for i in 0..256 {
        le32(&mut img, 90 * BS + 4 * i, 112 + i as u32);
    }
    le32(&mut img, 91 * BS, 92);
    for i in 0..32 {
        le32(&mut img, 92 * BS + 4 * i, 368 + i as u32);
    }
    journal(&mut img, |n| 100 + n, 300, 280);
    assert_eq!(
        journal_of(&img),
        "journal-sequence=5 journal-start=280 log-end=6@283"
    );
}

#[test]
fn journals_that_are_not_read_say_why() {
    let mut img = one_extent();
    img[1024 + 0xfd] = 0;
    assert_eq!(
        journal_of(&img),
        "journal=unknown (inode 8; the superblock keeps no copy of its block map)"
    );
    le32(&mut img, 1024 + 0xe0, 0);
    le32(&mut img, 1024 + 0xe4, 0x801);
    assert_eq!(
        journal_of(&img),
        "journal=external (device 0x801, not read: writes while mounted are not seen)"
    );
    le32(&mut img, 1024 + 0x5c, 0);
    assert_eq!(journal_of(&img), "journal=none");
}

#[test]
fn malformed_block_maps_say_how() {
    let spoilt = |spoil: &dyn Fn(&mut Vec<u8>)| {
        let mut img = one_extent();
        spoil(&mut img);
        journal_of(&img)
    };
    // Without its magic the map is taken for an ext3 block map, whose
    // first block is then far beyond the device.
    assert_eq!(
        spoilt(&|img| img[I_BLOCK] = 0),
        "journal=invalid (1024 bytes at byte 130809856 lie beyond the device's end at 262144)"
    );
    assert_eq!(
        spoilt(&|img| le32(img, I_BLOCK + 12 + 8, 300)),
        "journal=invalid (1024 bytes at byte 307200 lie beyond the device's end at 262144)"
    );
    assert_eq!(
        spoilt(&|img| img.truncate(102 * BS)),
        "journal=invalid (1024 bytes at byte 105472 lie beyond the device's end at 104448)"
    );
    assert_eq!(
        spoilt(&|img| le16(img, I_BLOCK + 6, 6)),
        "journal=invalid (eh_depth is 6, outside 0..=5, one less than its parent's)"
    );
    assert_eq!(
        spoilt(&|img| le16(img, I_BLOCK + 2, 5)),
        "journal=invalid (eh_entries is 5, outside the entries that fit in the node)"
    );
    assert_eq!(
        spoilt(&|img| le32(img, 1024 + 0x18, 7)),
        "journal=invalid (s_log_block_size is 7, outside 0..=6 (1 to 64 KiB blocks))"
    );
    assert_eq!(
        spoilt(&|img| le32(img, I_BLOCK + 60, 16)),
        "journal=invalid (the journal's size in blocks is 67108928, outside mke2fs's 10240000)"
    );
    // A leaf without its magic.
    let mut img = one_extent();
    node(&mut img, I_BLOCK, 1, &[(0, 50, 0)]);
    assert_eq!(
        journal_of(&img),
        "journal=invalid (no extent-tree magic at byte 51200)"
    );
    // A tree node that points at itself is one level too deep.
    let mut img = one_extent();
    node(&mut img, I_BLOCK, 2, &[(0, 50, 0)]);
    node(&mut img, 50 * BS, 1, &[(0, 50, 0)]);
    assert_eq!(
        journal_of(&img),
        "journal=invalid (eh_depth is 1, outside 0..=5, one less than its parent's)"
    );
}

#[test]
fn any_one_byte_changed_gives_a_fingerprint_and_the_same_twice() {
    let img = one_extent();
    // The superblock, the journal's superblock and its log.
    let spots = (1024..2048).chain(100 * BS..104 * BS);
    for at in spots {
        for value in [0x00, 0xff, 0x80] {
            let mut img = img.clone();
            img[at] = value;
            let first = fingerprint_of(&img).unwrap();
            assert_eq!(first, fingerprint_of(&img).unwrap(), "byte {at}={value}");
        }
    }
}

/// A 16 KiB ext4 whose 10-block journal (64-bit, checksum v3 tags) holds
/// two transactions: the fuzz target's seed.
pub(in crate::fsguard) fn seed() -> Vec<u8> {
    let mut img = image(16, 10);
    node(&mut img, I_BLOCK, 0, &[(0, 4, 10)]);
    journal(&mut img, |n| 4 + n, 10, 1);
    let j = |n: usize| 4 * BS + n * BS;
    // 64-bit and checksum v3: 16-byte tags. The first transaction's
    // descriptor gets a second tag, the second transaction its own.
    be32(&mut img, j(0) + 0x28, 0x2 | 0x10);
    let d = j(1) + 12;
    img[d + 6..d + 8].copy_from_slice(&0u16.to_be_bytes());
    img[d + 32 + 6..d + 32 + 8].copy_from_slice(&0xau16.to_be_bytes());
    let (commit, desc2) = (j(4), j(5));
    img.copy_within(j(3)..j(3) + BS, commit);
    img[j(3)..j(3) + BS].fill(0x11);
    img.copy_within(j(1)..j(1) + 12, desc2);
    be32(&mut img, desc2 + 8, 6);
    img[desc2 + 12 + 6..desc2 + 12 + 8].copy_from_slice(&0xau16.to_be_bytes());
    img.copy_within(commit..commit + 12, j(7));
    be32(&mut img, j(7) + 8, 6);
    img
}

#[test]
fn the_fuzz_seed_holds_two_transactions() {
    assert_eq!(
        journal_of(&seed()),
        "journal-sequence=5 journal-start=1 log-end=7@8"
    );
}

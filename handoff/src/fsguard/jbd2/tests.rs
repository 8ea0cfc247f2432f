use super::*;

const BS: usize = 1024;

/// A journal in memory: block 0 its superblock.
struct Mem(Vec<Vec<u8>>);

impl Journal for Mem {
    fn blocks(&self) -> u64 {
        self.0.len() as u64
    }

    fn block(&mut self, n: u64) -> Result<Vec<u8>, Fault> {
        Ok(self.0[n as usize].clone())
    }
}

fn put(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn header(blocktype: u32, sequence: u32) -> Vec<u8> {
    let mut b = vec![0u8; BS];
    put(&mut b, 0, MAGIC);
    put(&mut b, 4, blocktype);
    put(&mut b, 8, sequence);
    b
}

/// A descriptor of `tags` tags of `tag_bytes`, a UUID after the first.
fn descriptor(sequence: u32, tags: usize, tag_bytes: usize) -> Vec<u8> {
    let mut b = header(DESCRIPTOR, sequence);
    let mut at = 12;
    for i in 0..tags {
        let mut flags = if i == 0 { 0 } else { FLAG_SAME_UUID };
        if i + 1 == tags {
            flags |= FLAG_LAST_TAG;
        }
        put(&mut b, at, 1000 + i as u32);
        b[at + 6..at + 8].copy_from_slice(&flags.to_be_bytes());
        at += tag_bytes + if i == 0 { 16 } else { 0 };
    }
    b
}

/// A 32-block journal: the log's area is blocks 1..32.
fn journal(sequence: u32, start: u32, incompat: u32) -> Mem {
    let mut sb = header(SUPER_V2, 0);
    put(&mut sb, 0xc, BS as u32);
    put(&mut sb, 0x10, 32);
    put(&mut sb, 0x14, 1);
    put(&mut sb, 0x18, sequence);
    put(&mut sb, 0x1c, start);
    put(&mut sb, 0x28, incompat);
    let mut blocks = vec![sb];
    blocks.resize(32, vec![0u8; BS]);
    Mem(blocks)
}

fn state(j: &mut Mem) -> LogState {
    LogState::read(j).unwrap()
}

#[test]
fn an_empty_journal_is_not_followed() {
    let mut j = journal(7, 0, 0);
    // What lies in the log's area is left from before and not read.
    j.0[1] = header(COMMIT, 7);
    let s = state(&mut j);
    assert_eq!(s.end, None);
    assert_eq!(
        s.to_string(),
        "journal-sequence=7 journal-start=0 log-end=empty"
    );
}

#[test]
fn the_log_ends_after_its_last_commit() {
    let mut j = journal(7, 1, 0);
    j.0[1] = descriptor(7, 2, 8);
    // Data blocks are skipped by their count, even one that looks like a
    // header of the expected sequence.
    j.0[2] = header(COMMIT, 7);
    j.0[4] = header(COMMIT, 7);
    j.0[5] = header(REVOKE, 8);
    j.0[6] = descriptor(8, 1, 8);
    j.0[8] = header(COMMIT, 8);
    // A commit left by an older pass round the log.
    j.0[9] = header(COMMIT, 3);
    let s = state(&mut j);
    assert_eq!(s.end, Some((9, 9)));
    assert_eq!(
        s.to_string(),
        "journal-sequence=7 journal-start=1 log-end=9@9"
    );
    // One more commit appended moves the end.
    j.0[9] = descriptor(9, 1, 8);
    j.0[11] = header(COMMIT, 9);
    assert_eq!(state(&mut j).end, Some((10, 12)));
    // A transaction without its commit block yet ends where it is.
    j.0[11] = vec![0u8; BS];
    assert_eq!(state(&mut j).end, Some((9, 11)));
}

#[test]
fn the_log_wraps_to_s_first() {
    let mut j = journal(40, 29, 0);
    j.0[29] = descriptor(40, 3, 8);
    // Its data: 30, 31, then 1 after the wrap.
    j.0[2] = header(COMMIT, 40);
    j.0[3] = header(COMMIT, 40);
    assert_eq!(state(&mut j).end, Some((41, 3)));
}

#[test]
fn tag_sizes_follow_the_features() {
    // (incompat, bytes of a tag)
    for (incompat, bytes) in [
        (0, 8),
        (INCOMPAT_64BIT, 12),
        (INCOMPAT_CSUM_V2, 10),
        (INCOMPAT_CSUM_V2 | INCOMPAT_64BIT, 14),
        (INCOMPAT_CSUM_V3, 16),
        (INCOMPAT_CSUM_V3 | INCOMPAT_64BIT, 16),
    ] {
        let j = journal(1, 1, incompat);
        let sb = Superblock::parse(&j.0[0], 32).unwrap();
        assert_eq!(sb.tag_bytes, bytes, "{incompat:#x}");
        assert_eq!(sb.tags(&descriptor(1, 5, bytes)), 5, "{incompat:#x}");
        // A full block of tags without the last-tag flag: as many as fit
        // before the checksum tail.
        let full = header(DESCRIPTOR, 1);
        let room = BS
            - if incompat & (INCOMPAT_CSUM_V2 | INCOMPAT_CSUM_V3) != 0 {
                4
            } else {
                0
            };
        assert_eq!(
            sb.tags(&full) as usize,
            (room - 12 - bytes) / (bytes + 16) + 1,
            "{incompat:#x}"
        );
    }
}

#[test]
fn a_version_1_superblock_has_no_features() {
    let mut j = journal(5, 1, INCOMPAT_CSUM_V3);
    put(&mut j.0[0], 4, SUPER_V1);
    let sb = Superblock::parse(&j.0[0], 32).unwrap();
    assert_eq!(sb.tag_bytes, 8);
}

#[test]
fn fast_commits_show_in_their_area() {
    let mut j = journal(5, 0, INCOMPAT_FAST_COMMIT);
    put(&mut j.0[0], 0x54, 8);
    let sb = Superblock::parse(&j.0[0], 32).unwrap();
    assert_eq!((sb.first, sb.last, sb.maxlen), (1, 24, 32));
    let before = state(&mut j);
    assert!(
        before.to_string().contains(" fast-commit-crc32="),
        "{before}"
    );
    j.0[25][100] = 1;
    assert_ne!(state(&mut j), before);
    // The log's area ends before it: a wrap goes to s_first.
    let mut j = journal(5, 23, INCOMPAT_FAST_COMMIT);
    put(&mut j.0[0], 0x54, 8);
    j.0[23] = descriptor(5, 1, 8);
    // Its data block is 1.
    j.0[2] = header(COMMIT, 5);
    assert_eq!(state(&mut j).end, Some((6, 3)));
}

#[test]
fn a_log_that_does_not_end_is_malformed() {
    let mut j = journal(9, 1, 0);
    for b in &mut j.0[1..] {
        *b = header(REVOKE, 9);
    }
    match LogState::read(&mut j) {
        Err(Fault::Malformed(Malformed::Endless(31))) => {}
        other => panic!("{other:?}"),
    }
    // Descriptors that claim more data blocks than the log holds.
    for b in &mut j.0[1..] {
        *b = descriptor(9, 60, 8);
    }
    assert!(matches!(
        LogState::read(&mut j),
        Err(Fault::Malformed(Malformed::Endless(31)))
    ));
}

#[test]
fn superblock_fields_outside_the_format_are_malformed() {
    let field = |at: usize, v: u32| {
        let mut j = journal(1, 1, 0);
        put(&mut j.0[0], at, v);
        match LogState::read(&mut j) {
            Err(Fault::Malformed(m)) => m,
            other => panic!("{at:#x}={v}: {other:?}"),
        }
    };
    assert!(matches!(
        field(0, 0x1234),
        Malformed::JournalSuperblock { magic: 0x1234, .. }
    ));
    assert!(matches!(
        field(4, COMMIT),
        Malformed::JournalSuperblock { blocktype: 2, .. }
    ));
    let named = |m: Malformed| match m {
        Malformed::Field { field, .. } => field,
        other => panic!("{other:?}"),
    };
    assert_eq!(named(field(0xc, 4096)), "s_blocksize");
    assert_eq!(named(field(0x10, 33)), "s_maxlen");
    assert_eq!(named(field(0x14, 0)), "s_first");
    assert_eq!(named(field(0x14, 32)), "s_first");
    assert_eq!(named(field(0x1c, 32)), "s_start");
    let mut j = journal(1, 0, INCOMPAT_FAST_COMMIT);
    put(&mut j.0[0], 0x54, 31);
    assert!(matches!(
        LogState::read(&mut j),
        Err(Fault::Malformed(Malformed::Field {
            field: "s_num_fc_blks",
            ..
        }))
    ));
}

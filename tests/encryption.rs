//! Encrypted images: round trips with a key file and a passphrase through
//! capture, open, verify, export and restore; wrong keys; every tamper an
//! attacker with write access to the disk can try (a flipped byte anywhere,
//! re-signed CRCs, swapped and spliced chunks, another image's metadata or
//! index, a cut); no plaintext and no CRC of plaintext in the image; and the
//! CLI. The memory and ranges are the corruption tests' fixture.

mod common;
#[path = "corruption/fixture.rs"]
#[allow(dead_code)]
mod fixture;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::process::Command;

use common::kjump::{kjump, Arg, Run};
use common::tempdir::TempDir;
use fixture::{entry, hdr, put_u32, sb, Fixture};
use kjump_image_format::crypto::DEFAULT_KDF;
use kjump_image_format::reader::{read_resume_record, read_superblock};
use kjump_image_format::{
    FormatError, Image, ImageState, Kdf, Secret, CHUNK_HEADER_SIZE, INDEX_ENTRY_SIZE,
};
use kjump_restorer::restore::restore_with_key;
use kjump_restorer::ScanError;
use kjump_sys::{Place, Target};
use kjump_writer::{capture, capture_encrypted, Encryption};

const KEY: &[u8] = b"kjump-test-key-0123456789abcdef-0123456789abcdef";
const OTHER_KEY: &[u8] = b"kjump-test-key-fedcba9876543210-fedcba9876543210";
/// Cheap Argon2id for tests; the default cost is measured in the benchmark.
const TEST_KDF: Kdf = Kdf::Argon2id {
    memory_kib: 256,
    iterations: 1,
    lanes: 1,
};

fn key(k: &[u8]) -> Secret {
    Secret::key_file(k.to_vec()).unwrap()
}

/// Captures the fixture memory into `dir/name`, encrypted when `enc` is
/// given, and returns the image bytes.
fn capture_to(dir: &TempDir, name: &str, uuid: [u8; 16], enc: Option<(&Secret, Kdf)>) -> Vec<u8> {
    let mem = dir.path("memory");
    if !mem.exists() {
        std::fs::write(&mem, fixture::memory()).unwrap();
    }
    let (src, meta) = fixture::source(&mem);
    let img = dir.path(name);
    let target = Target::open(&img).unwrap();
    let opts = fixture::options(uuid);
    match enc {
        None => capture(&src, &target, &meta, &opts).unwrap(),
        Some((secret, kdf)) => {
            capture_encrypted(&src, &target, &meta, &opts, &Encryption { secret, kdf }).unwrap()
        }
    };
    std::fs::read(&img).unwrap()
}

fn open_and_verify(bytes: &[u8], secret: Option<&Secret>) -> Result<(), FormatError> {
    let image = Image::open_with(bytes, secret)?;
    image.check_padding(bytes)?;
    match kjump_restorer::verify(bytes, &image, 1, false) {
        Ok(_) => Ok(()),
        Err(ScanError::Image(e)) => Err(e),
        Err(e) => panic!("verify failed for a reason other than the image: {e}"),
    }
}

fn outcome(bytes: &[u8], secret: &Secret) -> String {
    match catch_unwind(AssertUnwindSafe(|| open_and_verify(bytes, Some(secret)))) {
        Ok(Ok(())) => "ok".into(),
        Ok(Err(e)) => fixture::sig(&e),
        Err(_) => "PANIC".into(),
    }
}

/// The fixture helpers (offsets, re-signing) over an encrypted image.
fn fixture_of(bytes: Vec<u8>, secret: &Secret) -> Fixture {
    let image = Image::open_with(bytes.as_slice(), Some(secret)).unwrap();
    Fixture {
        layout: image.superblock.layout,
        index: image.index,
        bytes,
    }
}

/// Image A and its twin B: the same memory under the same key file, as
/// two captures would make them.
fn twins(dir: &TempDir) -> (Fixture, Fixture) {
    let k = key(KEY);
    let a = capture_to(dir, "a", fixture::UUID_A, Some((&k, Kdf::KeyFile)));
    let b = capture_to(dir, "b", fixture::UUID_B, Some((&k, Kdf::KeyFile)));
    (fixture_of(a, &k), fixture_of(b, &k))
}

#[test]
fn key_file_and_passphrase_images_round_trip_through_restore_and_export() {
    let dir = TempDir::new("enc-roundtrip");
    let mem = fixture::memory();
    let pass = Secret::passphrase(b"correct horse battery staple\n".to_vec()).unwrap();
    for (name, secret, kdf) in [
        ("keyfile", key(KEY), Kdf::KeyFile),
        ("passphrase", pass, TEST_KDF),
    ] {
        let bytes = capture_to(&dir, name, fixture::UUID_A, Some((&secret, kdf)));
        let image = Image::open_with(bytes.as_slice(), Some(&secret)).unwrap();
        assert!(image.is_encrypted());
        assert_eq!(image.superblock.crypto.unwrap().kdf, kdf);
        assert_eq!(
            image.metadata.kernel_release.as_deref(),
            Some("6.1.0-kjump-test")
        );
        assert_eq!(
            open_and_verify(&bytes, Some(&secret)).map_err(|e| e.to_string()),
            Ok(())
        );
        let core = dir.path(&format!("{name}.elf"));
        kjump_restorer::export(bytes.as_slice(), &image, &core, 2, false).unwrap();
        assert!(std::fs::metadata(&core).unwrap().len() > 0);
        // Restore into a blank memory file: every saved byte comes back.
        let blank = dir.path(&format!("{name}.mem"));
        std::fs::write(&blank, vec![0xee; mem.len()]).unwrap();
        let place = Place::locate(&dir.path(name), None).unwrap();
        let own = kjump_image_format::MemoryMap::default();
        restore_with_key(&place, &blank, &own, 2, Some(&secret), None).unwrap();
        let got = std::fs::read(&blank).unwrap();
        for r in fixture::ranges() {
            let (s, e) = (r.start().0 as usize, r.end().0 as usize);
            assert!(got[s..e] == mem[s..e], "{name}: range {r} differs");
        }
        assert_eq!(state(&dir.path(name)), ImageState::Consumed);
        // A consumed image still verifies: the state is not sealed.
        assert_eq!(
            open_and_verify(&std::fs::read(dir.path(name)).unwrap(), Some(&secret))
                .map_err(|e| e.to_string()),
            Ok(())
        );
    }
}

fn state(path: &Path) -> ImageState {
    let f = std::fs::File::open(path).unwrap();
    read_superblock(&f).unwrap().state
}

#[test]
fn missing_wrong_and_mismatched_keys_are_refused_before_anything_else() {
    let dir = TempDir::new("enc-keys");
    let k = key(KEY);
    let bytes = capture_to(&dir, "k", fixture::UUID_A, Some((&k, Kdf::KeyFile)));
    let err = |s: Option<&Secret>| fixture::sig(&open_and_verify(&bytes, s).unwrap_err());
    assert_eq!(err(None), "KeyRequired");
    assert_eq!(err(Some(&key(OTHER_KEY))), "WrongKey(@0xd8)");
    let p = Secret::passphrase(KEY.to_vec()).unwrap();
    assert_eq!(err(Some(&p)), "KeyKind(a key file, a passphrase)");
    let msg = open_and_verify(&bytes, Some(&key(OTHER_KEY)))
        .unwrap_err()
        .to_string();
    assert!(msg.starts_with("wrong key or passphrase"), "{msg}");

    let pass = Secret::passphrase(b"right".to_vec()).unwrap();
    let bytes = capture_to(&dir, "p", fixture::UUID_A, Some((&pass, TEST_KDF)));
    let wrong = Secret::passphrase(b"wrong".to_vec()).unwrap();
    assert_eq!(
        fixture::sig(&open_and_verify(&bytes, Some(&wrong)).unwrap_err()),
        "WrongKey(@0xd8)"
    );

    // A restore with the wrong key changes neither the image nor memory.
    let blank = dir.path("blank");
    std::fs::write(&blank, vec![0xee; 0x188000]).unwrap();
    let place = Place::locate(&dir.path("p"), None).unwrap();
    let own = kjump_image_format::MemoryMap::default();
    let e = restore_with_key(&place, &blank, &own, 2, Some(&wrong), None).unwrap_err();
    assert!(kjump_handoff::error_chain(&e).contains("wrong key"), "{e}");
    assert_eq!(state(&dir.path("p")), ImageState::Committed);
    assert!(std::fs::read(&blank).unwrap().iter().all(|&b| b == 0xee));
    assert_eq!(std::fs::read(dir.path("p")).unwrap(), bytes);
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn an_encrypted_image_holds_no_plaintext_and_no_crc_of_plaintext() {
    let dir = TempDir::new("enc-plain");
    let plain = capture_to(&dir, "plain", fixture::UUID_A, None);
    let (a, _) = twins(&dir);
    let markers: [&[u8]; 4] = [
        b"kjump keeps this page, lz4 folds it",
        b"6.1.0-kjump-test",
        b"negative tests",
        b"corruption-test-memory",
    ];
    for m in markers {
        assert!(
            contains(&plain, m),
            "the plain image should show {:?}",
            String::from_utf8_lossy(m)
        );
        assert!(
            !contains(&a.bytes, m),
            "the encrypted image shows {:?}",
            String::from_utf8_lossy(m)
        );
    }
    // The contents CRCs (over plaintext) are zero in headers and index; the
    // payload and metadata CRCs cover ciphertext.
    let plain_image = Image::open(plain.as_slice()).unwrap();
    for (i, e) in a.index.iter().enumerate() {
        assert_eq!(e.data_crc, 0);
        let h = a.chunk_at(i);
        assert_eq!(&a.bytes[h + hdr::DATA_CRC..h + hdr::DATA_CRC + 4], &[0; 4]);
        let p = h + CHUNK_HEADER_SIZE;
        let payload = &a.bytes[p..p + e.stored_len as usize];
        assert_eq!(crc32fast::hash(payload), e.payload_crc);
        let pe = &plain_image.index[i];
        if pe.data_crc != 0 {
            assert!(
                !contains(&a.bytes, &pe.data_crc.to_le_bytes()),
                "chunk {i}'s plaintext CRC is stored"
            );
        }
    }
    let m = a.meta_at();
    let meta = &a.bytes[m..m + a.layout.metadata_len as usize];
    assert_eq!(crc32fast::hash(meta), a.layout.metadata_crc);
}

/// Every byte flipped (payload insides with a stride) is refused; none
/// passes, none panics.
#[test]
fn every_flipped_byte_of_an_encrypted_image_is_refused() {
    let dir = TempDir::new("enc-flip");
    let (a, _) = twins(&dir);
    let k = key(KEY);
    assert_eq!(outcome(&a.bytes, &k), "ok");
    let mut b = a.copy();
    let mut passed = Vec::new();
    for off in 0..b.len() {
        let inside_payload = a.index.iter().enumerate().any(|(i, e)| {
            let p = a.chunk_at(i) + CHUNK_HEADER_SIZE;
            (p + 64..p + (e.stored_len as usize).saturating_sub(64)).contains(&off)
        });
        if inside_payload && off % 7 != 0 {
            continue;
        }
        b[off] ^= 1 << (off % 8);
        let got = outcome(&b, &k);
        if got == "ok" || got == "PANIC" {
            passed.push(format!("{off:#x}: {got}"));
        }
        b[off] ^= 1 << (off % 8);
    }
    assert!(passed.is_empty(), "{passed:?}");
}

/// A change behind every CRC (the CRCs recomputed, as an attacker does) is
/// caught by the seal: each byte of the superblock but its state and
/// consumed time, each field of the trailer and index.
#[test]
fn re_signed_changes_fail_the_seal_or_the_key_check() {
    let dir = TempDir::new("enc-resign");
    let (a, _) = twins(&dir);
    let k = key(KEY);
    let mut bad = Vec::new();
    let record = |o: &usize| {
        (sb::RESTORE_ATTEMPTS..sb::RESERVED_B).contains(o)
            || (sb::FAILED_CHUNK..sb::RESERVED_C).contains(o)
    };
    for off in (0..sb::CRC).filter(|o| {
        !(sb::STATE..sb::STATE + 4).contains(o)
            && !(sb::CONSUMED_TIME..sb::CONSUMED_TIME + 8).contains(o)
            && !record(o)
    }) {
        let mut b = a.copy();
        b[off] ^= 0x04;
        a.resign_superblock(&mut b);
        let got = outcome(&b, &k);
        if got == "ok" || got == "PANIC" {
            bad.push(format!("superblock {off:#x}: {got}"));
        }
    }
    assert!(bad.is_empty(), "{bad:?}");
    // The restore record is outside the seal, as a restore rewrites it.
    for off in (0..sb::CRC).filter(record).step_by(7) {
        let mut b = a.copy();
        b[off] ^= 0x04;
        a.resign_superblock(&mut b);
        assert_eq!(outcome(&b, &k), "ok", "restore record byte {off:#x}");
    }
    // The state is outside the seal: a consumed image set back to committed
    // opens (the rollback FORMAT.md admits).
    let mut b = a.copy();
    put_u32(&mut b, sb::STATE, 3);
    a.resign_superblock(&mut b);
    assert_eq!(outcome(&b, &k), "ok");
    let seal = "Authentication(image seal (superblock, metadata, index and trailer)@0xf8)";
    for (name, at) in [
        ("zero bitmap", entry::ZERO_BITMAP),
        ("payload crc", hdr::PAYLOAD_CRC),
    ] {
        let mut b = a.copy();
        b[a.entry_at(3) + at] ^= 1;
        a.resign_index(&mut b);
        assert_eq!(outcome(&b, &k), seal, "index {name}");
    }
}

/// Finds 4 bytes at `at` that give `data` the CRC32 `want`: CRC32 is affine,
/// so each of the 32 bits moves the CRC by a fixed vector; solve over GF(2).
fn forge_crc(data: &mut [u8], at: usize, want: u32) {
    let base = crc32fast::hash(data);
    let mut rows: Vec<(u32, u32)> = (0..32)
        .map(|bit| {
            data[at + bit / 8] ^= 1 << (bit % 8);
            let v = crc32fast::hash(data) ^ base;
            data[at + bit / 8] ^= 1 << (bit % 8);
            (v, 1u32 << bit)
        })
        .collect();
    let mut target = (base ^ want, 0u32);
    for col in 0..32 {
        let Some(p) = (col..32).find(|&r| rows[r].0 >> col & 1 == 1) else {
            continue;
        };
        rows.swap(col, p);
        let pivot = rows[col];
        for (r, row) in rows.iter_mut().enumerate() {
            if r != col && row.0 >> col & 1 == 1 {
                *row = (row.0 ^ pivot.0, row.1 ^ pivot.1);
            }
        }
        if target.0 >> col & 1 == 1 {
            target = (target.0 ^ pivot.0, target.1 ^ pivot.1);
        }
    }
    assert_eq!(target.0, 0, "CRC32 forging failed");
    for bit in 0..32 {
        if target.1 >> bit & 1 == 1 {
            data[at + bit / 8] ^= 1 << (bit % 8);
        }
    }
    assert_eq!(crc32fast::hash(data), want);
}

#[test]
fn chunks_spliced_swapped_or_forged_past_their_crc_fail_authentication() {
    let dir = TempDir::new("enc-splice");
    let (a, b) = twins(&dir);
    let k = key(KEY);
    let span = |f: &Fixture, i: usize| {
        let h = f.chunk_at(i);
        h..h + CHUNK_HEADER_SIZE + f.index[i].stored_len as usize
    };
    for i in [0, 1, 3, 4] {
        // Another image's chunk (same key, same memory, same length) in its
        // place, its uuid set to this image's and its payload bent so that
        // its CRC is the one the authentic index names: only AES-GCM sees it.
        assert_eq!(span(&a, i).len(), span(&b, i).len());
        let mut x = a.copy();
        x[span(&a, i)].copy_from_slice(&b.bytes[span(&b, i)]);
        let h = a.chunk_at(i);
        x[h + hdr::UUID..h + hdr::UUID + 16].copy_from_slice(&fixture::UUID_A);
        let p = h + CHUNK_HEADER_SIZE;
        let len = a.index[i].stored_len as usize;
        forge_crc(&mut x[p..p + len], 0, a.index[i].payload_crc);
        put_u32(&mut x, h + hdr::PAYLOAD_CRC, a.index[i].payload_crc);
        a.resign_header(&mut x, i);
        assert_eq!(
            outcome(&x, &k),
            format!("Authentication(chunk {i}@{h:#x})"),
            "splice {i}"
        );
        // This image's own payload changed in the middle, CRC kept.
        let mut y = a.copy();
        y[p + len / 2] ^= 0x80;
        forge_crc(&mut y[p..p + len], len / 2 + 1, a.index[i].payload_crc);
        assert_eq!(
            outcome(&y, &k),
            format!("Authentication(chunk {i}@{h:#x})"),
            "forged {i}"
        );
    }
    // Chunks 0 and 3 swapped whole, headers and index rewritten to match
    // and re-signed: the index is no longer the sealed one.
    let mut x = a.copy();
    let (s0, s3) = (span(&a, 0), span(&a, 3));
    let mut stream = Vec::new();
    let mut order: Vec<std::ops::Range<usize>> = (0..a.index.len()).map(|i| span(&a, i)).collect();
    order.swap(0, 3);
    for r in &order {
        stream.extend_from_slice(&a.bytes[r.clone()]);
    }
    let start = s0.start.min(s3.start);
    x[start..start + stream.len()].copy_from_slice(&stream);
    let mut at = start;
    for (i, r) in order.iter().enumerate() {
        let orig = a
            .index
            .iter()
            .position(|e| e.offset.0 as usize == r.start)
            .unwrap();
        // Header claims slot i; the entry mirrors the moved header.
        x[at + hdr::SEQ..at + hdr::SEQ + 4].copy_from_slice(&(i as u32).to_le_bytes());
        for f in [hdr::FIRST_PFN, hdr::PAGE_COUNT] {
            let n = if f == hdr::PAGE_COUNT { 1 } else { 8 };
            let own = a.chunk_at(i);
            x[at + f..at + f + n].copy_from_slice(&a.bytes[own + f..own + f + n]);
        }
        let crc = crc32fast::hash(&x[at..at + hdr::CRC]);
        put_u32(&mut x, at + hdr::CRC, crc);
        let e = a.entry_at(i);
        let src_entry = a.entry_at(orig);
        let entry_bytes: Vec<u8> = a.bytes[src_entry..src_entry + INDEX_ENTRY_SIZE].to_vec();
        x[e..e + INDEX_ENTRY_SIZE].copy_from_slice(&entry_bytes);
        x[e..e + 8].copy_from_slice(&(at as u64).to_le_bytes());
        x[e + 8..e + 16].copy_from_slice(&a.bytes[a.entry_at(i) + 8..a.entry_at(i) + 16]);
        x[e + entry::PAGE_COUNT] = a.bytes[a.entry_at(i) + entry::PAGE_COUNT];
        at += r.len();
    }
    a.resign_index(&mut x);
    let got = outcome(&x, &k);
    assert!(got != "ok" && got != "PANIC", "swapped chunks: {got}");
}

#[test]
fn another_images_metadata_or_index_fails_the_seal_and_cuts_are_refused() {
    let dir = TempDir::new("enc-replace");
    let (a, b) = twins(&dir);
    let k = key(KEY);
    let seal = "Authentication(image seal (superblock, metadata, index and trailer)@0xf8)";
    assert_eq!(a.layout.metadata_len, b.layout.metadata_len);
    let (m, len) = (a.meta_at(), a.layout.metadata_len as usize);
    let mut x = a.copy();
    x[m..m + len].copy_from_slice(&b.bytes[m..m + len]);
    assert_eq!(outcome(&x, &k), format!("Checksum(metadata@{m:#x})"));
    a.resign_metadata(&mut x, len);
    assert_eq!(outcome(&x, &k), seal);
    let ix = a.layout.index_offset as usize;
    let n = a.index.len() * INDEX_ENTRY_SIZE;
    let mut x = a.copy();
    x[ix..ix + n].copy_from_slice(&b.bytes[ix..ix + n]);
    a.resign_index(&mut x);
    assert_eq!(outcome(&x, &k), seal);
    // B's superblock on A's body: B's key check and seal do not fit.
    let mut x = a.copy();
    x[..512].copy_from_slice(&b.bytes[..512]);
    let got = outcome(&x, &k);
    assert!(got != "ok" && got != "PANIC", "{got}");
    for cut in (0..a.bytes.len()).step_by(509) {
        let got = outcome(&a.bytes[..cut], &k);
        assert!(got.starts_with("Truncated("), "cut at {cut:#x}: {got}");
    }
}

#[test]
fn cli_encrypts_verifies_exports_and_refuses_wrong_keys_without_showing_them() {
    let dir = TempDir::new("enc-cli");
    let mem = dir.path("memory");
    std::fs::write(&mem, fixture::memory()).unwrap();
    let (keyf, wrongf, passf) = (dir.path("key"), dir.path("wrong"), dir.path("pass"));
    std::fs::write(&keyf, KEY).unwrap();
    std::fs::write(&wrongf, OTHER_KEY).unwrap();
    std::fs::write(&passf, "hunter2 but longer\n").unwrap();
    let img = dir.path("img");
    let r = fixture::RANGES_ARG;
    let Run {
        code,
        stdout: out,
        stderr: err,
        ..
    } = kjump::<Arg>(&[
        &"capture",
        &"--source",
        &mem,
        &"--target",
        &img,
        &"--ranges",
        &r,
        &"--key-file",
        &keyf,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("(encrypted)"), "{out}");
    let Run {
        code, stdout: out, ..
    } = kjump::<Arg>(&[&"info", &img]);
    assert_eq!(code, 0);
    assert!(
        out.contains("encryption: AES-256-GCM, key from a key file (HKDF-SHA256)"),
        "{out}"
    );
    assert!(
        out.contains("give --key-file or --passphrase-file"),
        "{out}"
    );
    let Run {
        code, stdout: out, ..
    } = kjump::<Arg>(&[&"info", &img, &"--key-file", &keyf]);
    assert_eq!(code, 0);
    assert!(out.contains("ranges:     3"), "{out}");
    let Run {
        code, stderr: err, ..
    } = kjump::<Arg>(&[&"verify", &img]);
    assert_eq!(code, 2);
    assert!(
        err.contains("image is encrypted: give --key-file or --passphrase-file"),
        "{err}"
    );
    let Run {
        code, stderr: err, ..
    } = kjump::<Arg>(&[&"verify", &img, &"--key-file", &wrongf]);
    assert_eq!(code, 2);
    assert!(err.contains("wrong key or passphrase"), "{err}");
    for k in [KEY, OTHER_KEY] {
        assert!(
            !err.contains(std::str::from_utf8(&k[..20]).unwrap()),
            "{err}"
        );
    }
    let Run {
        code,
        stdout: out,
        stderr: err,
        ..
    } = kjump::<Arg>(&[&"verify", &img, &"--key-file", &keyf]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("encrypted and authentic"), "{out}");
    let core = dir.path("core");
    let Run {
        code, stderr: err, ..
    } = kjump::<Arg>(&[&"export", &img, &"--key-file", &keyf, &"-o", &core]);
    assert_eq!(code, 0, "{err}");
    // A flipped payload byte is exit 1 and names the structure.
    let mut bytes = std::fs::read(&img).unwrap();
    let image = Image::open_with(bytes.as_slice(), Some(&key(KEY))).unwrap();
    let at = image.index[0].offset.0 as usize + CHUNK_HEADER_SIZE + 3;
    bytes[at] ^= 1;
    std::fs::write(&img, &bytes).unwrap();
    let Run {
        code, stderr: err, ..
    } = kjump::<Arg>(&[&"verify", &img, &"--key-file", &keyf]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("chunk 0 payload"), "{err}");

    let pimg = dir.path("pimg");
    let Run {
        code, stderr: err, ..
    } = kjump::<Arg>(&[
        &"capture",
        &"--source",
        &mem,
        &"--target",
        &pimg,
        &"--ranges",
        &r,
        &"--passphrase-file",
        &passf,
        &"--kdf-memory-mib",
        &"8",
        &"--kdf-iterations",
        &"1",
    ]);
    assert_eq!(code, 0, "{err}");
    let Run {
        code, stdout: out, ..
    } = kjump::<Arg>(&[&"info", &pimg, &"--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["encryption"]["kdf"], "argon2id");
    assert_eq!(v["encryption"]["memory_kib"], 8192);
    assert_eq!(v["locked"], true);
    let Run {
        code, stderr: err, ..
    } = kjump::<Arg>(&[&"verify", &pimg, &"--passphrase-file", &passf]);
    assert_eq!(code, 0, "{err}");
    let Run {
        code, stderr: err, ..
    } = kjump::<Arg>(&[&"verify", &pimg, &"--key-file", &keyf]);
    assert_eq!(code, 2);
    assert!(
        err.contains("encrypted with a passphrase, but a key file was given"),
        "{err}"
    );
}

#[test]
fn the_default_kdf_fits_a_small_kernel() {
    match DEFAULT_KDF {
        Kdf::Argon2id { memory_kib, .. } => assert!(memory_kib <= 64 * 1024),
        Kdf::KeyFile => panic!("the default is for passphrases"),
    }
}

/// An Argon2id cost above what every reader accepts is refused by the
/// writer, saying the limit and why, before anything is written: at 200
/// MiB a 256 MiB restore kernel could not derive the key.
#[test]
fn capture_refuses_a_kdf_memory_cost_readers_refuse() {
    let dir = TempDir::new("enc-kdf-cap");
    let mem = dir.path("memory");
    std::fs::write(&mem, fixture::memory()).unwrap();
    let passf = dir.path("pass");
    std::fs::write(&passf, "hunter2 but longer\n").unwrap();
    let img = dir.path("img");
    let Run {
        code, stderr: err, ..
    } = kjump::<Arg>(&[
        &"capture",
        &"--source",
        &mem,
        &"--target",
        &img,
        &"--ranges",
        &fixture::RANGES_ARG,
        &"--passphrase-file",
        &passf,
        &"--kdf-memory-mib",
        &"200",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("200 MiB is more than the 128 MiB a restore kernel in a 256 MiB crashkernel region can always spare"),
        "{err}"
    );
    assert!(!img.exists(), "nothing is written");
    // The library refuses it too: an image no reader could open.
    let secret = Secret::passphrase(b"hunter2 but longer".to_vec()).unwrap();
    let kdf = Kdf::Argon2id {
        memory_kib: 200 * 1024,
        iterations: 1,
        lanes: 1,
    };
    let (src, meta) = fixture::source(&mem);
    let target = Target::open(&img).unwrap();
    let enc = Encryption {
        secret: &secret,
        kdf,
    };
    let err =
        capture_encrypted(&src, &target, &meta, &fixture::options([5; 16]), &enc).unwrap_err();
    assert!(
        kjump_sys::error_chain(&err).contains("argon2 memory cost (KiB)"),
        "{}",
        kjump_sys::error_chain(&err)
    );
}

/// `--passphrase` asks on the terminal, with echo off: through a pseudo
/// terminal (util-linux `script`), a capture asks twice and a verify once;
/// a wrong passphrase is refused with exit 2 and the passphrase is never
/// echoed.
#[test]
fn passphrase_asked_on_a_terminal() {
    let has_script = Command::new("sh")
        .args(["-c", "command -v script"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_script {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs util-linux's script"
        );
        return;
    }
    let dir = TempDir::new("enc-tty");
    let mem = dir.0.join("mem");
    std::fs::write(&mem, vec![0x5au8; 1 << 20]).unwrap();
    let img = dir.0.join("img");
    let kjump = env!("CARGO_BIN_EXE_kjump");
    // Each line is typed a second after the last, as a person would type
    // after the prompt: what arrives before echo is off is echoed.
    let on_tty = |input: &str, cmd: String| {
        let typed: String = input
            .split("\\n")
            .filter(|l| !l.is_empty())
            .map(|l| format!("sleep 1; printf '%s\\n' '{l}'; "))
            .collect();
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("({typed}) | script -q -e -c \"{cmd}\" /dev/null"))
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = on_tty(
        "tty-secret-42\\ntty-secret-42\\n",
        format!(
            "{kjump} capture --source {} --ranges 0x0-0xfffff --target {} --passphrase",
            mem.display(),
            img.display()
        ),
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("the same passphrase again"), "{out}");
    assert!(!out.contains("tty-secret-42"), "echoed: {out}");
    let verify = |pass: &str| {
        on_tty(
            &format!("{pass}\\n"),
            format!("{kjump} verify {} --passphrase", img.display()),
        )
    };
    let (code, out) = verify("tty-secret-42");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("encrypted and authentic"), "{out}");
    let (code, out) = verify("tty-secret-41");
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("wrong key or passphrase"), "{out}");
    assert!(!out.contains("tty-secret"), "echoed: {out}");
}

#[test]
fn the_resume_record_is_readable_without_the_key_and_sealed_with_the_rest() {
    let dir = TempDir::new("enc-record");
    std::fs::write(dir.path("memory"), fixture::memory()).unwrap();
    let (src, mut meta) = fixture::source(&dir.path("memory"));
    const REGION: &[u8] = b"0x2f000000-0x3effffff";
    meta.extra
        .push(("region".into(), String::from_utf8(REGION.to_vec()).unwrap()));
    meta.extra
        .push(("fs-fingerprint:/dev/vdb".into(), "ext4 mounts=3".into()));
    let img = dir.path("img");
    let k = key(KEY);
    let enc = Encryption {
        secret: &k,
        kdf: Kdf::KeyFile,
    };
    let opts = fixture::options(fixture::UUID_A);
    capture_encrypted(&src, &Target::open(&img).unwrap(), &meta, &opts, &enc).unwrap();
    let bytes = std::fs::read(&img).unwrap();

    // Without the key: the ranges, the region and the fingerprint, and
    // nothing else of the metadata.
    let record = read_resume_record(bytes.as_slice()).unwrap();
    assert_eq!(record, meta.resume_record());
    assert_eq!(record.ranges, meta.ranges);
    assert_eq!(record.extra.len(), 2, "{:?}", record.extra);
    assert!(record.kernel_release.is_none() && record.jump_back_entry.is_none());
    assert!(contains(&bytes, REGION));
    for sealed in [
        &b"6.1.0-kjump-test"[..],
        b"negative tests",
        b"corruption-test-memory",
    ] {
        assert!(!contains(&bytes, sealed));
    }
    // With the key the image opens whole, the record checked against the
    // sealed metadata.
    assert_eq!(outcome(&bytes, &k), "ok");

    // A region changed behind the CRCs: a normal boot would read the forged
    // one, and the key holder's open refuses the image.
    let f = fixture_of(bytes.clone(), &k);
    let at = bytes
        .windows(REGION.len())
        .position(|w| w == REGION)
        .unwrap();
    let mut b = f.copy();
    b[at..at + REGION.len()].copy_from_slice(b"0x1f000000-0x3effffff");
    f.resign_metadata(&mut b, f.layout.metadata_len as usize);
    let forged = read_resume_record(b.as_slice()).unwrap();
    assert_eq!(forged.get("region"), Some("0x1f000000-0x3effffff"));
    assert_eq!(
        outcome(&b, &k),
        "Authentication(image seal (superblock, metadata, index and trailer)@0xf8)"
    );
    // Flipped without forging, the metadata CRC refuses it even keyless.
    let mut b = f.copy();
    b[at] ^= 1;
    assert!(matches!(
        read_resume_record(b.as_slice()),
        Err(FormatError::Checksum { .. })
    ));
    // A record length that leaves no room for the sealed metadata's tag,
    // or cuts a record, is refused; so is a record length of zero.
    for bad in [f.layout.metadata_len as u32, 12] {
        let mut b = f.copy();
        put_u32(&mut b, 280, bad);
        f.resign_superblock(&mut b);
        let e = read_resume_record(b.as_slice()).unwrap_err();
        assert!(e.to_string().contains("resume record length"), "{bad}: {e}");
    }
    let mut b = f.copy();
    put_u32(&mut b, 280, 0);
    f.resign_superblock(&mut b);
    assert!(matches!(
        read_resume_record(b.as_slice()),
        Err(FormatError::NoResumeRecord)
    ));
}

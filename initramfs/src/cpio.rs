//! newc cpio archives, as the kernel unpacks an initramfs
//! (Documentation/driver-api/early-userspace/buffer-format.rst).
//!
//! Each entry is a 110-byte ASCII header (`070701` and thirteen 8-digit hex
//! fields), the NUL-terminated name padded to 4 bytes, then the data padded
//! to 4 bytes; `TRAILER!!!` ends the archive. Entries are written sorted by
//! path with parents first, owned by root, timestamped 0 and numbered in
//! order, so an archive depends on nothing but its contents.

use std::collections::BTreeMap;

use zeroize::{Zeroize, Zeroizing};

const MAGIC: &[u8; 6] = b"070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";
/// Largest archive member [`read`] accepts.
pub const MAX_MEMBER: u64 = 1 << 30;

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file with these contents.
    File(Vec<u8>),
    /// A symbolic link to this target.
    Symlink(String),
    /// A character device node (major, minor).
    CharDev(u32, u32),
}

/// One archive member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Permission bits (the type comes from `kind`).
    pub mode: u32,
    /// What it is.
    pub kind: Kind,
}

/// Why an archive could not be built or read.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// A path is empty, absolute, or has `.`/`..` or empty components.
    #[error("invalid archive path {0:?}: use relative paths like \"bin/busybox\"")]
    BadPath(String),
    /// Two entries claim the same path differently.
    #[error("{0:?} is added twice with different contents")]
    Duplicate(String),
    /// A path's parent is not a directory.
    #[error("{path:?} lies under {parent:?}, which is not a directory")]
    NotADirectory {
        /// The entry.
        path: String,
        /// Its parent.
        parent: String,
    },
    /// The archive is malformed.
    #[error("cpio archive at offset {offset:#x}: {reason}")]
    Malformed {
        /// Where.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
}

/// An archive being assembled. Its files may hold an encrypted image's
/// key or passphrase (the initramfs of a capture or restore kernel): their
/// contents are wiped when the archive is dropped ([`Kind`]'s drop).
#[derive(Clone, Debug, Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

/// A file's contents are wiped when its entry is dropped: with the
/// archive, and also when [`Archive::add`] refuses or replaces it.
impl Drop for Kind {
    fn drop(&mut self) {
        if let Kind::File(data) = self {
            data.zeroize();
        }
    }
}

impl zeroize::ZeroizeOnDrop for Kind {}

fn check_path(path: &str) -> Result<(), CpioError> {
    let bad = path.is_empty()
        || path.starts_with('/')
        || path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        || path.contains('\0');
    if bad {
        Err(CpioError::BadPath(path.to_string()))
    } else {
        Ok(())
    }
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `path` (relative, like `bin/busybox`); missing parent directories
    /// are added with mode 0755.
    pub fn add(&mut self, path: &str, mode: u32, kind: Kind) -> Result<(), CpioError> {
        check_path(path)?;
        let mut parent = String::new();
        for component in path
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |(_, p)| p)
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(component);
            let e = self.entries.entry(parent.clone()).or_insert(Entry {
                mode: 0o755,
                kind: Kind::Dir,
            });
            if e.kind != Kind::Dir {
                return Err(CpioError::NotADirectory {
                    path: path.to_string(),
                    parent,
                });
            }
        }
        let new = Entry {
            mode: mode & 0o7777,
            kind,
        };
        match self.entries.get(path) {
            Some(old) if *old != new && !(old.kind == Kind::Dir && new.kind == Kind::Dir) => {
                Err(CpioError::Duplicate(path.to_string()))
            }
            _ => {
                self.entries.insert(path.to_string(), new);
                Ok(())
            }
        }
    }

    /// The entries, sorted by path.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(p, e)| (p.as_str(), e))
    }

    /// The archive bytes, wiped on drop. The buffer is reserved at its
    /// exact size up front, so it never grows: a growing buffer would leave
    /// copies of the files written so far (a key among them) in the memory
    /// it frees.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let len = self
            .entries
            .iter()
            .map(|(path, e)| entry_len(path, e.kind.data().len()))
            .sum::<usize>()
            + entry_len(TRAILER, 0);
        let mut out = Zeroizing::new(Vec::with_capacity(len));
        for (ino, (path, e)) in self.entries.iter().enumerate() {
            let (type_bits, data, rdev): (u32, &[u8], (u32, u32)) = match &e.kind {
                Kind::Dir => (S_IFDIR, &[], (0, 0)),
                Kind::File(d) => (S_IFREG, d, (0, 0)),
                Kind::Symlink(t) => (S_IFLNK, t.as_bytes(), (0, 0)),
                Kind::CharDev(ma, mi) => (S_IFCHR, &[], (*ma, *mi)),
            };
            let nlink = if e.kind == Kind::Dir { 2 } else { 1 };
            push_entry(
                &mut out,
                ino as u32 + 1,
                type_bits | e.mode,
                nlink,
                rdev,
                path,
                data,
            );
        }
        push_entry(&mut out, 0, 0, 1, (0, 0), TRAILER, &[]);
        debug_assert_eq!((out.len(), out.capacity()), (len, len));
        out
    }
}

impl Kind {
    /// The bytes an entry of this kind carries in the archive.
    fn data(&self) -> &[u8] {
        match self {
            Kind::File(d) => d,
            Kind::Symlink(t) => t.as_bytes(),
            Kind::Dir | Kind::CharDev(..) => &[],
        }
    }
}

/// Bytes [`push_entry`] writes for `name` with `data_len` bytes of data.
fn entry_len(name: &str, data_len: usize) -> usize {
    (HEADER_LEN + name.len() + 1).next_multiple_of(4) + data_len.next_multiple_of(4)
}

fn pad4(out: &mut Vec<u8>) {
    out.resize(out.len().next_multiple_of(4), 0);
}

fn push_entry(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    name: &str,
    data: &[u8],
) {
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        data.len() as u32,
        0, // dev major
        0, // dev minor
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0, // check
    ];
    out.extend_from_slice(MAGIC);
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn hex_field(b: &[u8], at: usize, i: usize) -> Result<u32, CpioError> {
    let s = &b[at + 6 + i * 8..at + 14 + i * 8];
    std::str::from_utf8(s)
        .ok()
        .and_then(|t| u32::from_str_radix(t, 16).ok())
        .ok_or_else(|| CpioError::Malformed {
            offset: at + 6 + i * 8,
            reason: format!(
                "header field {i} is not hex: {:?}",
                String::from_utf8_lossy(s)
            ),
        })
}

/// Reads a newc archive back into `(path, mode with type bits, data)`
/// triples, in archive order, up to the trailer.
pub fn read(bytes: &[u8]) -> Result<Vec<(String, u32, Vec<u8>)>, CpioError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    loop {
        let malformed = |offset, reason: String| CpioError::Malformed { offset, reason };
        if bytes.len() - at < HEADER_LEN {
            return Err(malformed(at, "archive ends before the trailer".into()));
        }
        if &bytes[at..at + 6] != MAGIC {
            return Err(malformed(at, "bad magic (not a newc cpio header)".into()));
        }
        let mut f = [0u32; 13];
        for (i, v) in f.iter_mut().enumerate() {
            *v = hex_field(bytes, at, i)?;
        }
        let (mode, size, namesize) = (f[1], f[6] as usize, f[11] as usize);
        let name_at = at + HEADER_LEN;
        let data_at = (name_at + namesize).next_multiple_of(4);
        let end = data_at.checked_add(size).filter(|&e| e <= bytes.len());
        let Some(end) = end.filter(|_| namesize > 0 && name_at + namesize <= bytes.len()) else {
            return Err(malformed(
                at,
                format!("entry of name size {namesize} and size {size} runs past the archive"),
            ));
        };
        if size as u64 > MAX_MEMBER {
            return Err(malformed(
                at,
                format!("member of {size} bytes is larger than {MAX_MEMBER}"),
            ));
        }
        let name = &bytes[name_at..name_at + namesize - 1];
        if bytes[name_at + namesize - 1] != 0 {
            return Err(malformed(name_at, "name is not NUL-terminated".into()));
        }
        let name = String::from_utf8_lossy(name).into_owned();
        if name == TRAILER {
            return Ok(out);
        }
        out.push((name, mode, bytes[data_at..end].to_vec()));
        at = end.next_multiple_of(4).min(bytes.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Archive {
        let mut a = Archive::new();
        a.add("init", 0o755, Kind::File(b"#!/bin/sh\n".to_vec()))
            .unwrap();
        a.add("bin/busybox", 0o755, Kind::File(vec![7; 10]))
            .unwrap();
        a.add("bin/sh", 0o777, Kind::Symlink("busybox".into()))
            .unwrap();
        a.add("dev/console", 0o600, Kind::CharDev(5, 1)).unwrap();
        a.add("etc/kjump/manifest", 0o644, Kind::File(b"x=1\n".to_vec()))
            .unwrap();
        a
    }

    /// File contents, a key among them, are wiped when their entry is
    /// dropped: this fails to compile if `Kind` stops doing so.
    const _: () = {
        const fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        wiped_on_drop::<Kind>()
    };

    /// The archive buffer is reserved whole and never grows, so no freed
    /// smaller buffer keeps a copy of a key written before a large file;
    /// it is a wiped-on-drop buffer.
    #[test]
    fn the_archive_buffer_never_grows_past_its_reservation() {
        let mut a = sample();
        a.add("etc/kjump/secret", 0o600, Kind::File(vec![0xa5; 33]))
            .unwrap();
        a.add("kjump", 0o755, Kind::File(vec![7; 3 << 20])).unwrap();
        a.add("z/link", 0o777, Kind::Symlink("../kjump".into()))
            .unwrap();
        let b: Zeroizing<Vec<u8>> = a.to_bytes();
        assert_eq!(b.capacity(), b.len());
        assert_eq!(read(&b).unwrap().len(), a.entries().count());
    }

    #[test]
    fn parents_first_sorted_and_reproducible() {
        let b = sample().to_bytes();
        assert_eq!(b, sample().to_bytes());
        let names: Vec<String> = read(&b).unwrap().into_iter().map(|e| e.0).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/busybox",
                "bin/sh",
                "dev",
                "dev/console",
                "etc",
                "etc/kjump",
                "etc/kjump/manifest",
                "init"
            ]
        );
        assert_eq!(b.len() % 4, 0);
    }

    #[test]
    fn contents_and_modes_round_trip() {
        let entries = read(&sample().to_bytes()).unwrap();
        let sh = entries.iter().find(|e| e.0 == "bin/sh").unwrap();
        assert_eq!(sh.1, S_IFLNK | 0o777);
        assert_eq!(sh.2, b"busybox");
        let init = entries.iter().find(|e| e.0 == "init").unwrap();
        assert_eq!(init.1, S_IFREG | 0o755);
    }

    #[test]
    fn bad_paths_and_conflicts_are_refused() {
        let mut a = sample();
        for p in ["", "/init", "a//b", "a/../b", "./x"] {
            assert!(
                matches!(a.add(p, 0o644, Kind::Dir), Err(CpioError::BadPath(_))),
                "{p}"
            );
        }
        assert!(matches!(
            a.add("init", 0o644, Kind::Dir),
            Err(CpioError::Duplicate(_))
        ));
        assert!(matches!(
            a.add("init/x", 0o644, Kind::Dir),
            Err(CpioError::NotADirectory { .. })
        ));
        a.add("bin", 0o755, Kind::Dir).unwrap();
    }

    #[test]
    fn truncated_or_garbled_archives_are_refused() {
        let b = sample().to_bytes();
        for cut in [0, 5, 109, 200, b.len() - 4] {
            assert!(read(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut g = b.clone();
        g[10] = b'z';
        assert!(read(&g).unwrap_err().to_string().contains("not hex"));
    }
}

//! The subcommands.

pub mod capture;
pub mod check;
pub mod discard;
pub mod generate;
pub mod hibernate;
pub mod initramfs;
pub mod inspect;
pub mod kdump;
pub mod systemd_sleep;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use kjump_image_format::Secret;
use kjump_sys::{Place, PlaceReader};

use crate::Failure;

/// Where an image is: a file or device, and for a file target's blocks
/// named by their device, the device offset of the file's extent map.
#[derive(Args, Clone)]
pub struct ImageAt {
    /// Image file, block device, swap partition, or a file target (prepared by `kjump prepare` or `kjump hibernate`)
    pub image: PathBuf,
    /// With a block device: the device offset (hex) of a file target's extent map, as `kjump prepare` prints it
    #[arg(long, value_parser = parse_hex)]
    pub offset: Option<u64>,
}

/// Whether `a` and `b` name the same file (device and inode, through
/// links), or two nodes of the same device.
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) else {
        return false;
    };
    let is_dev =
        |m: &std::fs::Metadata| m.file_type().is_block_device() || m.file_type().is_char_device();
    (x.dev() == y.dev() && x.ino() == y.ino()) || (is_dev(&x) && is_dev(&y) && x.rdev() == y.rdev())
}

impl ImageAt {
    /// Finds the image's place and opens it for reading.
    pub fn open(&self) -> Result<(Place, PlaceReader), Failure> {
        let place = Place::locate(&self.image, self.offset).map_err(Failure::error)?;
        let reader = place
            .reader()
            .with_context(|| format!("opening image {}", place.describe()))
            .map_err(Failure::error)?;
        Ok((place, reader))
    }
}

/// The key of an encrypted image: a key file or a passphrase in a file.
#[derive(Args, Clone, Default)]
pub struct KeyArgs {
    /// Key file of an encrypted image: 32 bytes or more (e.g. head -c 64 /dev/urandom)
    #[arg(long, value_name = "FILE", conflicts_with = "passphrase_file")]
    pub key_file: Option<PathBuf>,
    /// File holding the passphrase of an encrypted image (a trailing newline is dropped)
    #[arg(long, value_name = "FILE", conflicts_with = "key_file")]
    pub passphrase_file: Option<PathBuf>,
    /// Ask for the passphrase of an encrypted image on the terminal (echo off)
    #[arg(long, conflicts_with_all = ["key_file", "passphrase_file"])]
    pub passphrase: bool,
}

/// The terminal to ask on: this process's own, else the console (early in
/// a boot there may be no controlling terminal).
pub fn default_tty() -> PathBuf {
    let own = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .is_ok();
    PathBuf::from(if own { "/dev/tty" } else { "/dev/console" })
}

/// Asks for a passphrase on the terminal; `twice` for a new one, which
/// must be typed the same way again.
pub fn ask_passphrase(twice: bool) -> Result<Secret, Failure> {
    let tty = default_tty();
    let ask = |prompt: &str| {
        kjump_sys::tty::read_secret_line(&tty, prompt, None)
            .map_err(|e| anyhow::anyhow!("reading a passphrase from {}: {e}", tty.display()))?
            .ok_or_else(|| {
                anyhow::anyhow!("{} closed before a passphrase was given", tty.display())
            })
    };
    let mut first = ask("kjump: passphrase for the image: ").map_err(Failure::error)?;
    if twice {
        let again = ask("kjump: the same passphrase again: ").map_err(Failure::error)?;
        if *first != *again {
            return Err(Failure::error(anyhow::anyhow!(
                "the two passphrases differ"
            )));
        }
    }
    // Moved out, not copied: the same locked buffer.
    Secret::passphrase(std::mem::take(&mut *first)).map_err(Failure::error)
}

impl KeyArgs {
    /// The secret for a new image: as [`KeyArgs::secret`], but a passphrase
    /// asked on the terminal is asked twice.
    pub fn new_secret(&self) -> Result<Option<Secret>, Failure> {
        if self.passphrase {
            return ask_passphrase(true).map(Some);
        }
        self.secret()
    }

    /// Reads the secret named or asks for it, if any. Errors name the
    /// file, never its bytes.
    pub fn secret(&self) -> Result<Option<Secret>, Failure> {
        if self.passphrase {
            return ask_passphrase(false).map(Some);
        }
        // Read into a buffer that never moves, locked in RAM and out of
        // core dumps; Secret wipes it when dropped.
        let read = |path: &PathBuf, what: &str| {
            kjump_sys::secmem::read_secret(path, None)
                // Moved out, not copied: the same heap buffer.
                .map(|mut bytes| std::mem::take(&mut *bytes))
                .with_context(|| format!("reading the {what} {}", path.display()))
                .map_err(Failure::error)
        };
        let secret = if let Some(p) = &self.key_file {
            Secret::key_file(read(p, "key file")?)
                .with_context(|| format!("key file {}", p.display()))
        } else if let Some(p) = &self.passphrase_file {
            Secret::passphrase(read(p, "passphrase file")?)
                .with_context(|| format!("passphrase file {}", p.display()))
        } else {
            return Ok(None);
        };
        secret.map(Some).map_err(Failure::error)
    }
}

/// A hex number, with or without `0x`.
pub fn parse_hex(s: &str) -> Result<u64, String> {
    let digits = s.strip_prefix("0x").unwrap_or(s);
    u64::from_str_radix(digits, 16).map_err(|e| format!("{s:?} is not a hex number: {e}"))
}

/// A size in bytes with an optional K, M, G or T suffix (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (digits, shift) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 30),
        Some('T' | 't') => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|e| format!("{s:?} is not a size (like 512M or 4G): {e}"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Threads to use: as asked, or every CPU available.
pub fn threads(asked: Option<usize>) -> usize {
    asked.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Whether to draw progress lines (stderr is a terminal).
pub fn progress_line() -> bool {
    std::io::stderr().is_terminal()
}

/// `n` bytes in the largest binary unit that keeps it above 1.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

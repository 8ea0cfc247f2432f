//! The manifest: what the kernel being saved tells the capture kernel.
//!
//! `kjump hibernate` writes it into the capture initramfs as
//! `etc/kjump/manifest`; kjump as `/init` in the capture kernel reads it. One
//! `key=value` per line, `#` comments; every key known, every required key
//! present, nothing repeated. The restore kernel gets one too, from
//! `kjump resume`.

use std::fmt::Write as _;
use std::num::ParseIntError;
use std::path::PathBuf;

use kjump_image_format::{MemoryMap, PhysRange};
use kjump_sys::ranges::{parse_range_list, RangesError};

use crate::claim::PlacementKind;
use crate::mailbox::MailboxAddress;
use crate::uuid::Uuid;

/// Path of the manifest inside the initramfs.
pub const PATH: &str = "etc/kjump/manifest";
/// Version of the manifest format.
pub const VERSION: u32 = 1;

/// What the capture kernel does once the image is committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Power the machine off (hibernation).
    Poweroff,
    /// Reboot the machine.
    Reboot,
    /// Jump straight back to the saved kernel: a whole-machine checkpoint.
    Checkpoint,
    /// Suspend to RAM; on wake, jump back to the saved kernel. If the power
    /// fails meanwhile, the next boot resumes from the image.
    Suspend,
    /// Not a capture: restore the image on `target` and jump into it.
    Restore,
}

impl Mode {
    /// The word used in manifests and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Poweroff => "poweroff",
            Mode::Reboot => "reboot",
            Mode::Checkpoint => "checkpoint",
            Mode::Suspend => "suspend",
            Mode::Restore => "restore",
        }
    }

    /// Parses [`Mode::name`].
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "poweroff" => Some(Mode::Poweroff),
            "reboot" => Some(Mode::Reboot),
            "checkpoint" => Some(Mode::Checkpoint),
            "suspend" => Some(Mode::Suspend),
            "restore" => Some(Mode::Restore),
            _ => None,
        }
    }
}

/// A manifest line that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("manifest line {line}: {problem}")]
pub struct ManifestError {
    /// Line number, from 1 (0 for the manifest as a whole).
    pub line: usize,
    /// What is wrong.
    #[source]
    pub problem: Problem,
}

/// What is wrong with a manifest line.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    /// Not a `key=value` line.
    #[error("expected key=value, got {0:?}")]
    NotKeyValue(String),
    /// A key this kjump does not know.
    #[error("unknown key {0:?}")]
    UnknownKey(String),
    /// A key given on two lines.
    #[error("{0} given twice")]
    Twice(&'static str),
    /// A required key is missing.
    #[error("required key {0} is missing")]
    Missing(&'static str),
    /// Another manifest version.
    #[error("version {0:?}, this kjump reads {VERSION}")]
    Version(String),
    /// An unknown mode.
    #[error("mode {0:?} is not poweroff, reboot, checkpoint, suspend or restore")]
    Mode(String),
    /// A value that is not the number it should be.
    #[error("{key} {value:?}{expected}")]
    Number {
        /// The key.
        key: &'static str,
        /// The value.
        value: String,
        /// What it should be, after the value (empty, or " is not ...").
        expected: &'static str,
        /// The cause.
        #[source]
        source: ParseIntError,
    },
    /// A value that is not one of the words its key takes.
    #[error("{key} {value:?} is not {expected}")]
    Word {
        /// The key.
        key: &'static str,
        /// The value.
        value: String,
        /// What it may be.
        expected: &'static str,
    },
    /// A list of ranges that cannot be read.
    #[error("{key} {value:?}")]
    Ranges {
        /// The key.
        key: &'static str,
        /// The value.
        value: String,
        /// The cause.
        #[source]
        source: RangesError,
    },
}

/// The decoded manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// What to do after the commit.
    pub mode: Mode,
    /// The block device (or file) to write the image to, as the capture
    /// kernel names it.
    pub target: PathBuf,
    /// When the image goes into a file's blocks on `target`: the device
    /// offset of the file's extent map (optional key `target-offset`, hex).
    pub target_offset: Option<u64>,
    /// How the image lies in `target` (optional key `placement`: `whole`,
    /// `swap` or `file`): the capture kernel checks the claim there
    /// ([`crate::claim`]).
    pub placement: Option<PlacementKind>,
    /// The saved kernel's physical memory to capture (key `ram`: `start-end`
    /// pairs with inclusive ends, as in /proc/iomem).
    pub ram: MemoryMap,
    /// The reserved region the capture kernel runs in (key `region`,
    /// `start-end`).
    pub region: PhysRange,
    /// `uname -r` of the saved kernel.
    pub kernel_release: String,
    /// When the saved kernel started hibernating, ns since the epoch.
    pub started_ns: u64,
    /// Block devices the saved kernel had filesystems mounted on, whose
    /// fingerprints the capture records for the stale-filesystem guard.
    pub filesystems: Vec<PathBuf>,
    /// The image is encrypted with this kind of secret (optional key
    /// `encrypt`).
    pub encrypt: Option<SecretKind>,
    /// Where the secret of an encrypted image comes from (optional key
    /// `key`: `initramfs`, the default, `ask`, or `device:DEV:BYTES`).
    pub key_source: KeySource,
    /// The terminal a passphrase is asked on (optional key `tty`; default
    /// /dev/console).
    pub tty: Option<PathBuf>,
    /// Seconds the kernel waits for an answer on the console (R's
    /// passphrase, B's offer of a rescue shell) before it goes on without
    /// one (optional key `prompt-timeout`; default
    /// [`DEFAULT_PROMPT_TIMEOUT`]): an unattended machine never waits
    /// forever.
    pub prompt_timeout: Option<u64>,
    /// The uuid the image gets, so that the saved kernel can tell its own
    /// image (optional key `image-uuid`, 32 hex digits).
    pub image_uuid: Option<Uuid>,
    /// The target is a swap area the saved kernel had swapped on: its held
    /// signature records that (optional key `swap-was-active=1`).
    pub swap_was_active: bool,
    /// Where to report why this kernel jumps back without doing its work
    /// (optional key `mailbox`, `0xADDR:TOKEN`).
    pub mailbox: Option<MailboxAddress>,
}

/// What kind of secret an encrypted image is sealed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretKind {
    /// A key file's bytes.
    KeyFile,
    /// A passphrase.
    Passphrase,
}

impl SecretKind {
    /// The manifest's word.
    pub fn name(self) -> &'static str {
        match self {
            SecretKind::KeyFile => "key-file",
            SecretKind::Passphrase => "passphrase",
        }
    }

    fn parse(v: &str) -> Option<SecretKind> {
        match v {
            "key-file" => Some(SecretKind::KeyFile),
            "passphrase" => Some(SecretKind::Passphrase),
            _ => None,
        }
    }
}

/// Where the secret of an encrypted image comes from.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum KeySource {
    /// The initramfs carries it (etc/kjump/secret), put there in RAM by
    /// the kernel that loaded this one.
    #[default]
    Initramfs,
    /// Asked on the terminal (a passphrase).
    Ask,
    /// The first `size` bytes of a block device (a key file).
    Device {
        /// The device, as the kernel names it.
        device: PathBuf,
        /// Bytes of it that are the key.
        size: usize,
    },
}

impl KeySource {
    fn encode(&self) -> Option<String> {
        match self {
            KeySource::Initramfs => None,
            KeySource::Ask => Some("ask".into()),
            KeySource::Device { device, size } => {
                Some(format!("device:{}:{size}", device.display()))
            }
        }
    }

    fn parse(v: &str) -> Option<KeySource> {
        match v {
            "initramfs" => Some(KeySource::Initramfs),
            "ask" => Some(KeySource::Ask),
            _ => {
                let (device, size) = v.strip_prefix("device:")?.rsplit_once(':')?;
                let size = size.parse().ok().filter(|&n| n > 0)?;
                (!device.is_empty()).then(|| KeySource::Device {
                    device: device.into(),
                    size,
                })
            }
        }
    }
}

/// Seconds a prompt waits when the manifest names no `prompt-timeout`.
pub const DEFAULT_PROMPT_TIMEOUT: u64 = 120;

/// Every key a manifest may have.
const KEYS: [&str; 17] = [
    "mailbox",
    "version",
    "mode",
    "target",
    "target-offset",
    "placement",
    "encrypt",
    "key",
    "tty",
    "prompt-timeout",
    "image-uuid",
    "swap-was-active",
    "ram",
    "region",
    "kernel-release",
    "started-ns",
    "filesystems",
];

/// A manifest's lines, by key: where each key stands and its value.
struct Lines<'a> {
    found: Vec<(&'static str, usize, &'a str)>,
}

impl<'a> Lines<'a> {
    /// Splits `text` into known keys, each given once.
    fn read(text: &'a str) -> Result<Lines<'a>, ManifestError> {
        let mut found: Vec<(&'static str, usize, &'a str)> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let at = |problem| ManifestError {
                line: n + 1,
                problem,
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| at(Problem::NotKeyValue(line.into())))?;
            let key = *KEYS
                .iter()
                .find(|name| **name == k)
                .ok_or_else(|| at(Problem::UnknownKey(k.into())))?;
            if found.iter().any(|(name, _, _)| *name == key) {
                return Err(at(Problem::Twice(key)));
            }
            found.push((key, n + 1, v));
        }
        Ok(Lines { found })
    }

    /// The value of an optional key, and its line.
    fn get(&self, key: &str) -> Option<(usize, &'a str)> {
        self.found
            .iter()
            .find(|(name, _, _)| *name == key)
            .map(|(_, line, v)| (*line, *v))
    }

    /// The value of a required key.
    fn required(&self, key: &'static str) -> Result<&'a str, ManifestError> {
        self.get(key).map(|(_, v)| v).ok_or(ManifestError {
            line: 0,
            problem: Problem::Missing(key),
        })
    }

    /// An optional key's value, decoded by `decode`; its problem names
    /// the key's line.
    fn decode<T>(
        &self,
        key: &str,
        decode: impl FnOnce(&'a str) -> Result<T, Problem>,
    ) -> Result<Option<T>, ManifestError> {
        self.get(key)
            .map(|(line, v)| decode(v).map_err(|problem| ManifestError { line, problem }))
            .transpose()
    }

    /// A required key's value, decoded by `decode`.
    fn decode_required<T>(
        &self,
        key: &'static str,
        decode: impl FnOnce(&'a str) -> Result<T, Problem>,
    ) -> Result<T, ManifestError> {
        self.required(key)?;
        self.decode(key, decode)?.ok_or(ManifestError {
            line: 0,
            problem: Problem::Missing(key),
        })
    }
}

fn word<T>(
    key: &'static str,
    expected: &'static str,
    v: Option<T>,
    value: &str,
) -> Result<T, Problem> {
    v.ok_or_else(|| Problem::Word {
        key,
        value: value.into(),
        expected,
    })
}

fn decode_mode(v: &str) -> Result<Mode, Problem> {
    Mode::parse(v).ok_or_else(|| Problem::Mode(v.into()))
}

fn decode_offset(v: &str) -> Result<u64, Problem> {
    u64::from_str_radix(v.strip_prefix("0x").unwrap_or(v), 16).map_err(|source| Problem::Number {
        key: "target-offset",
        value: v.into(),
        expected: " is not a hex offset",
        source,
    })
}

fn decode_ranges(key: &'static str, v: &str) -> Result<Vec<PhysRange>, Problem> {
    parse_range_list(v).map_err(|source| Problem::Ranges {
        key,
        value: v.into(),
        source,
    })
}

fn decode_region(v: &str) -> Result<PhysRange, Problem> {
    let ranges = decode_ranges("region", v)?;
    let one = (ranges.len() == 1).then(|| ranges[0]);
    word("region", "one range", one, v)
}

impl Manifest {
    /// How long a prompt of this kernel waits for an answer.
    pub fn prompt_limit(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.prompt_timeout.unwrap_or(DEFAULT_PROMPT_TIMEOUT))
    }

    /// The manifest as text.
    pub fn encode(&self) -> String {
        let mut s = String::from("# kjump capture manifest\n");
        let _ = writeln!(s, "version={VERSION}");
        let _ = writeln!(s, "mode={}", self.mode.name());
        let _ = writeln!(s, "target={}", self.target.display());
        if let Some(at) = self.target_offset {
            let _ = writeln!(s, "target-offset={at:#x}");
        }
        if let Some(kind) = self.placement {
            let _ = writeln!(s, "placement={}", kind.name());
        }
        let ram: Vec<String> = self.ram.ranges().iter().map(ToString::to_string).collect();
        let _ = writeln!(s, "ram={}", ram.join(","));
        let _ = writeln!(s, "region={}", self.region);
        let _ = writeln!(s, "kernel-release={}", self.kernel_release);
        let _ = writeln!(s, "started-ns={}", self.started_ns);
        let filesystems: Vec<String> = self
            .filesystems
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        let _ = writeln!(s, "filesystems={}", filesystems.join(","));
        if let Some(k) = self.encrypt {
            let _ = writeln!(s, "encrypt={}", k.name());
        }
        if let Some(k) = self.key_source.encode() {
            let _ = writeln!(s, "key={k}");
        }
        if let Some(t) = &self.tty {
            let _ = writeln!(s, "tty={}", t.display());
        }
        if let Some(t) = self.prompt_timeout {
            let _ = writeln!(s, "prompt-timeout={t}");
        }
        if let Some(u) = &self.image_uuid {
            let _ = writeln!(s, "image-uuid={u}");
        }
        if self.swap_was_active {
            let _ = writeln!(s, "swap-was-active=1");
        }
        if let Some(m) = &self.mailbox {
            let _ = writeln!(s, "mailbox={m}");
        }
        s
    }

    /// Parses and checks a manifest.
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let lines = Lines::read(text)?;
        lines.decode_required("version", |v| {
            (v == VERSION.to_string())
                .then_some(())
                .ok_or_else(|| Problem::Version(v.into()))
        })?;
        Ok(Manifest {
            mode: lines.decode_required("mode", decode_mode)?,
            swap_was_active: lines
                .decode("swap-was-active", |v| {
                    word("swap-was-active", "1", (v == "1").then_some(true), v)
                })?
                .unwrap_or(false),
            mailbox: lines.decode("mailbox", |v| {
                let expected = "0xADDR:TOKEN (a page address, 32 hex digits)";
                word("mailbox", expected, MailboxAddress::parse(v), v)
            })?,
            target: lines.required("target")?.into(),
            target_offset: lines.decode("target-offset", decode_offset)?,
            placement: lines.decode("placement", |v| {
                word(
                    "placement",
                    "whole, swap or file",
                    PlacementKind::parse(v),
                    v,
                )
            })?,
            ram: MemoryMap::merged(lines.decode_required("ram", |v| decode_ranges("ram", v))?),
            region: lines.decode_required("region", decode_region)?,
            kernel_release: lines.required("kernel-release")?.to_string(),
            started_ns: lines.decode_required("started-ns", number("started-ns", ""))?,
            filesystems: lines
                .required("filesystems")?
                .split(',')
                .filter(|d| !d.is_empty())
                .map(PathBuf::from)
                .collect(),
            encrypt: lines.decode("encrypt", |v| {
                word("encrypt", "key-file or passphrase", SecretKind::parse(v), v)
            })?,
            key_source: lines
                .decode("key", |v| {
                    let expected = "initramfs, ask or device:DEV:BYTES";
                    word("key", expected, KeySource::parse(v), v)
                })?
                .unwrap_or_default(),
            tty: lines.get("tty").map(|(_, v)| PathBuf::from(v)),
            prompt_timeout: lines.decode(
                "prompt-timeout",
                number("prompt-timeout", " is not a number of seconds"),
            )?,
            image_uuid: lines.decode("image-uuid", |v| {
                word("image-uuid", "32 hex digits", Uuid::parse(v), v)
            })?,
        })
    }
}

/// The decoder of a decimal number under `key` (`expected`: what the value
/// should be, after it, as [`Problem::Number`] says it).
fn number(key: &'static str, expected: &'static str) -> impl Fn(&str) -> Result<u64, Problem> {
    move |v| {
        v.parse().map_err(|source| Problem::Number {
            key,
            value: v.into(),
            expected,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kjump_image_format::PhysAddr;

    fn range(s: u64, e: u64) -> PhysRange {
        PhysRange::new(PhysAddr(s), PhysAddr(e)).unwrap()
    }

    fn sample() -> Manifest {
        Manifest {
            mode: Mode::Checkpoint,
            target: "/dev/vdb".into(),
            target_offset: None,
            placement: Some(PlacementKind::Swap),
            ram: MemoryMap::merged(vec![range(0x1000, 0x10000), range(0x20000, 0x9f000)]),
            region: range(0x2f00_0000, 0x3f00_0000),
            kernel_release: "6.12.117".into(),
            started_ns: 42,
            filesystems: vec!["/dev/vdb".into(), "/dev/vda1".into()],
            encrypt: None,
            key_source: KeySource::Initramfs,
            tty: None,
            prompt_timeout: None,
            image_uuid: None,
            swap_was_active: false,
            mailbox: None,
        }
    }

    #[test]
    fn round_trip() {
        assert_eq!(Manifest::parse(&sample().encode()).unwrap(), sample());
        let mut m = sample();
        m.target_offset = Some(0x1234_5000);
        assert!(m.encode().contains("target-offset=0x12345000\n"));
        assert_eq!(Manifest::parse(&m.encode()).unwrap(), m);
        let e = Manifest::parse(&m.encode().replace("0x12345000", "0xg")).unwrap_err();
        assert!(e.to_string().contains("not a hex offset"), "{e}");
        assert!(m.encode().contains("placement=swap\n"));
        let e =
            Manifest::parse(&m.encode().replace("placement=swap", "placement=disk")).unwrap_err();
        assert!(e.to_string().contains("whole, swap or file"), "{e}");
        m.encrypt = Some(SecretKind::Passphrase);
        m.image_uuid = Some(Uuid(*b"0123456789abcdef"));
        m.swap_was_active = true;
        let text = m.encode();
        assert!(
            text.contains(
                "encrypt=passphrase\nimage-uuid=30313233343536373839616263646566\nswap-was-active=1\n"
            ),
            "{text}"
        );
        assert_eq!(Manifest::parse(&text).unwrap(), m);
        let e = Manifest::parse(&text.replace("encrypt=passphrase", "encrypt=rot13")).unwrap_err();
        assert!(e.to_string().contains("not key-file or passphrase"), "{e}");
        let e = Manifest::parse(&text.replace("image-uuid=3031", "image-uuid=zz31")).unwrap_err();
        assert!(e.to_string().contains("not 32 hex digits"), "{e}");
        m.mailbox = Some(MailboxAddress {
            phys: 0x7654_3000,
            token: Uuid([0xab; 16]),
        });
        let text = m.encode();
        assert!(
            text.ends_with("mailbox=0x76543000:abababababababababababababababab\n"),
            "{text}"
        );
        assert_eq!(Manifest::parse(&text).unwrap(), m);
        let e = Manifest::parse(&text.replace("0x76543000:", "0x76543001:")).unwrap_err();
        assert!(e.to_string().contains("not 0xADDR:TOKEN"), "{e}");
    }

    #[test]
    fn key_sources_round_trip() {
        let mut m = sample();
        m.mode = Mode::Restore;
        m.encrypt = Some(SecretKind::KeyFile);
        for source in [
            KeySource::Initramfs,
            KeySource::Ask,
            KeySource::Device {
                device: "/dev/vdc".into(),
                size: 64,
            },
        ] {
            m.key_source = source;
            m.tty = Some("/dev/ttyS0".into());
            m.prompt_timeout = Some(30);
            assert_eq!(Manifest::parse(&m.encode()).unwrap(), m);
        }
        assert!(m
            .encode()
            .contains("key=device:/dev/vdc:64\ntty=/dev/ttyS0\nprompt-timeout=30\n"));
        for bad in [
            "device:/dev/vdc",
            "device:/dev/vdc:0",
            "device::64",
            "prompt",
        ] {
            let text = m.encode().replace("device:/dev/vdc:64", bad);
            let e = Manifest::parse(&text).unwrap_err();
            assert!(
                e.to_string()
                    .contains("not initramfs, ask or device:DEV:BYTES"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn errors_name_the_line() {
        let text = sample().encode();
        let e = Manifest::parse(&format!("{text}mode=poweroff\n")).unwrap_err();
        assert_eq!(e.to_string(), "manifest line 11: mode given twice");
        let e = Manifest::parse(&text.replace("mode=checkpoint", "mode=sleep")).unwrap_err();
        assert_eq!(e.line, 3);
        let e = Manifest::parse(&text.replace("version=1", "version=2")).unwrap_err();
        assert!(e.to_string().contains("this kjump reads 1"), "{e}");
        let e = Manifest::parse(&text.replace("target=/dev/vdb\n", "")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "manifest line 0: required key target is missing"
        );
        let e = Manifest::parse("bogus\n").unwrap_err();
        assert!(e.to_string().contains("expected key=value"), "{e}");
        let e = Manifest::parse("color=blue\n").unwrap_err();
        assert!(e.to_string().contains("unknown key \"color\""), "{e}");
    }
}

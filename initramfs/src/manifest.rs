//! The manifest: what the kernel being saved tells the capture kernel.
//!
//! `kjump hibernate` writes it into the capture initramfs as
//! `etc/kjump/manifest`; kjump as `/init` in the capture kernel reads it. One
//! `key=value` per line, `#` comments; every key known, every required key
//! present, nothing repeated.

use std::fmt::Write as _;

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
#[error("manifest line {line}: {reason}")]
pub struct ManifestError {
    /// Line number, from 1 (0 for the manifest as a whole).
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// The decoded manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// What to do after the commit.
    pub mode: Mode,
    /// The block device (or file) to write the image to, as the capture
    /// kernel names it.
    pub target: String,
    /// When the image goes into a file's blocks on `target`: the device
    /// offset of the file's extent map (optional key `target-offset`, hex).
    pub target_offset: Option<u64>,
    /// The saved kernel's physical memory to capture: `start-end` pairs with
    /// inclusive ends, as in /proc/iomem.
    pub ram: String,
    /// The reserved region the capture kernel runs in (`start-end`).
    pub region: String,
    /// `uname -r` of the saved kernel.
    pub kernel_release: String,
    /// When the saved kernel started hibernating, ns since the epoch.
    pub started_ns: u64,
    /// Block devices the saved kernel had filesystems mounted on, whose
    /// fingerprints the capture records for the stale-filesystem guard.
    pub filesystems: Vec<String>,
    /// The image is encrypted with this kind of secret (optional key
    /// `encrypt`).
    pub encrypt: Option<SecretKind>,
    /// Where the secret of an encrypted image comes from (optional key
    /// `key`: `initramfs`, the default, `ask`, or `device:DEV:BYTES`).
    pub key_source: KeySource,
    /// The terminal a passphrase is asked on (optional key `tty`; default
    /// /dev/console).
    pub tty: Option<String>,
    /// The uuid the image gets, so that the saved kernel can tell its own
    /// image (optional key `image-uuid`, 32 hex digits).
    pub image_uuid: Option<[u8; 16]>,
    /// The target is a swap area the saved kernel had swapped on: its held
    /// signature records that (optional key `swap-was-active=1`).
    pub swap_was_active: bool,
    /// Where to report why this kernel jumps back without doing its work
    /// (optional key `mailbox`, `0xADDR:TOKEN`).
    pub mailbox: Option<crate::mailbox::MailboxAddress>,
}

/// What kind of secret an encrypted image is sealed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretKind {
    /// A key file's bytes.
    KeyFile,
    /// A passphrase.
    Passphrase,
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
        device: String,
        /// Bytes of it that are the key.
        size: usize,
    },
}

impl KeySource {
    fn encode(&self) -> Option<String> {
        match self {
            KeySource::Initramfs => None,
            KeySource::Ask => Some("ask".into()),
            KeySource::Device { device, size } => Some(format!("device:{device}:{size}")),
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

impl SecretKind {
    /// The manifest's word.
    pub fn name(self) -> &'static str {
        match self {
            SecretKind::KeyFile => "key-file",
            SecretKind::Passphrase => "passphrase",
        }
    }
}

/// A uuid as 32 hex digits.
pub fn uuid_hex(u: &[u8; 16]) -> String {
    u.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    let mut u = [0u8; 16];
    for (i, b) in u.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(u)
}

impl Manifest {
    /// The manifest as text.
    pub fn encode(&self) -> String {
        let mut s = String::from("# kjump capture manifest\n");
        let _ = writeln!(s, "version={VERSION}");
        let _ = writeln!(s, "mode={}", self.mode.name());
        let _ = writeln!(s, "target={}", self.target);
        if let Some(at) = self.target_offset {
            let _ = writeln!(s, "target-offset={at:#x}");
        }
        let _ = writeln!(s, "ram={}", self.ram);
        let _ = writeln!(s, "region={}", self.region);
        let _ = writeln!(s, "kernel-release={}", self.kernel_release);
        let _ = writeln!(s, "started-ns={}", self.started_ns);
        let _ = writeln!(s, "filesystems={}", self.filesystems.join(","));
        if let Some(k) = self.encrypt {
            let _ = writeln!(s, "encrypt={}", k.name());
        }
        if let Some(k) = self.key_source.encode() {
            let _ = writeln!(s, "key={k}");
        }
        if let Some(t) = &self.tty {
            let _ = writeln!(s, "tty={t}");
        }
        if let Some(u) = &self.image_uuid {
            let _ = writeln!(s, "image-uuid={}", uuid_hex(u));
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
        let mut fields: [(&str, Option<(usize, &str)>); 15] = [
            ("mailbox", None),
            ("version", None),
            ("mode", None),
            ("target", None),
            ("target-offset", None),
            ("encrypt", None),
            ("key", None),
            ("tty", None),
            ("image-uuid", None),
            ("swap-was-active", None),
            ("ram", None),
            ("region", None),
            ("kernel-release", None),
            ("started-ns", None),
            ("filesystems", None),
        ];
        for (n, line) in text.lines().enumerate() {
            let line_no = n + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |reason: String| ManifestError {
                line: line_no,
                reason,
            };
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| err(format!("expected key=value, got {line:?}")))?;
            let slot = fields
                .iter_mut()
                .find(|(name, _)| *name == k)
                .ok_or_else(|| err(format!("unknown key {k:?}")))?;
            if slot.1.is_some() {
                return Err(err(format!("{k} given twice")));
            }
            slot.1 = Some((line_no, v));
        }
        let get = |key: &str| {
            fields
                .iter()
                .find(|(name, _)| *name == key)
                .and_then(|(_, v)| *v)
                .ok_or_else(|| ManifestError {
                    line: 0,
                    reason: format!("required key {key} is missing"),
                })
        };
        let (line, version) = get("version")?;
        if version != VERSION.to_string() {
            return Err(ManifestError {
                line,
                reason: format!("version {version:?}, this kjump reads {VERSION}"),
            });
        }
        let (line, mode) = get("mode")?;
        let mode = Mode::parse(mode).ok_or_else(|| ManifestError {
            line,
            reason: format!(
                "mode {mode:?} is not poweroff, reboot, checkpoint, suspend or restore"
            ),
        })?;
        let (line, started) = get("started-ns")?;
        let started_ns = started.parse().map_err(|e| ManifestError {
            line,
            reason: format!("started-ns {started:?}: {e}"),
        })?;
        let target_offset = match get("target-offset") {
            Ok((line, v)) => Some(
                u64::from_str_radix(v.strip_prefix("0x").unwrap_or(v), 16).map_err(|e| {
                    ManifestError {
                        line,
                        reason: format!("target-offset {v:?} is not a hex offset: {e}"),
                    }
                })?,
            ),
            Err(_) => None,
        };
        let encrypt = match get("encrypt") {
            Ok((_, "key-file")) => Some(SecretKind::KeyFile),
            Ok((_, "passphrase")) => Some(SecretKind::Passphrase),
            Ok((line, v)) => {
                return Err(ManifestError {
                    line,
                    reason: format!("encrypt {v:?} is not key-file or passphrase"),
                })
            }
            Err(_) => None,
        };
        let key_source = match get("key") {
            Ok((line, v)) => KeySource::parse(v).ok_or_else(|| ManifestError {
                line,
                reason: format!("key {v:?} is not initramfs, ask or device:DEV:BYTES"),
            })?,
            Err(_) => KeySource::Initramfs,
        };
        let image_uuid = match get("image-uuid") {
            Ok((line, v)) => Some(parse_uuid(v).ok_or_else(|| ManifestError {
                line,
                reason: format!("image-uuid {v:?} is not 32 hex digits"),
            })?),
            Err(_) => None,
        };
        let swap_was_active = match get("swap-was-active") {
            Ok((_, "1")) => true,
            Ok((line, v)) => {
                return Err(ManifestError {
                    line,
                    reason: format!("swap-was-active {v:?} is not 1"),
                })
            }
            Err(_) => false,
        };
        let mailbox =
            match get("mailbox") {
                Ok((line, v)) => Some(crate::mailbox::MailboxAddress::parse(v).ok_or_else(
                    || ManifestError {
                        line,
                        reason: format!(
                            "mailbox {v:?} is not 0xADDR:TOKEN (a page address, 32 hex digits)"
                        ),
                    },
                )?),
                Err(_) => None,
            };
        Ok(Manifest {
            mode,
            swap_was_active,
            mailbox,
            target: get("target")?.1.to_string(),
            target_offset,
            ram: get("ram")?.1.to_string(),
            region: get("region")?.1.to_string(),
            kernel_release: get("kernel-release")?.1.to_string(),
            started_ns,
            filesystems: get("filesystems")?
                .1
                .split(',')
                .filter(|d| !d.is_empty())
                .map(String::from)
                .collect(),
            encrypt,
            key_source,
            tty: get("tty").ok().map(|(_, v)| v.to_string()),
            image_uuid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            mode: Mode::Checkpoint,
            target: "/dev/vdb".into(),
            target_offset: None,
            ram: "0x1000-0xffff,0x20000-0x9efff".into(),
            region: "0x2f000000-0x3effffff".into(),
            kernel_release: "6.12.117".into(),
            started_ns: 42,
            filesystems: vec!["/dev/vdb".into(), "/dev/vda1".into()],
            encrypt: None,
            key_source: KeySource::Initramfs,
            tty: None,
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
        m.encrypt = Some(SecretKind::Passphrase);
        m.image_uuid = Some(*b"0123456789abcdef");
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
        m.mailbox = Some(crate::mailbox::MailboxAddress {
            phys: 0x7654_3000,
            token: [0xab; 16],
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
            assert_eq!(Manifest::parse(&m.encode()).unwrap(), m);
        }
        assert!(m
            .encode()
            .contains("key=device:/dev/vdc:64\ntty=/dev/ttyS0\n"));
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
        assert_eq!(e.to_string(), "manifest line 10: mode given twice");
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

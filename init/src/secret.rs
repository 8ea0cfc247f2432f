//! The secret of an encrypted image, in B and R: from the initramfs, from
//! a device, or asked on the console.

use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use kjump_handoff::manifest::{KeySource, Manifest, SecretKind};
use kjump_handoff::{PASSPHRASE_TRIES, SECRET_PATH};
use kjump_image_format::{CryptoParams, FormatError, ImageKeys, Secret, SecretError};
use kjump_sys::Place;

use crate::{say, InitError};

/// A secret that is not the image's key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not a key or passphrase at all.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// Not the image's key.
    #[error(transparent)]
    Unlock(#[from] FormatError),
}

/// The secret is not where the manifest says.
#[derive(Debug, thiserror::Error)]
pub enum SecretSourceError {
    /// The initramfs carries no secret.
    #[error("the manifest says the image is encrypted, and the secret is missing ({}: {error})", .path.display())]
    Missing {
        /// Where it should be.
        path: PathBuf,
        /// Why it cannot be read.
        error: std::io::Error,
    },
    /// The key device cannot be read.
    #[error("reading {size} key bytes from {}", .device.display())]
    Device {
        /// The device.
        device: PathBuf,
        /// Bytes of key.
        size: usize,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The image has no key to check a secret against.
    #[error("the image on {0} is not encrypted")]
    NotEncrypted(String),
    /// A secret kind the key source cannot give.
    #[error("the manifest pairs a {} with key source {:?}", .kind.name(), .key_source)]
    Pairing {
        /// The kind of secret.
        kind: SecretKind,
        /// Where it was to come from.
        key_source: KeySource,
    },
}

/// The secret of an encrypted image, which the saved or normal kernel put
/// into this initramfs (RAM only): read, then overwritten and removed, so
/// that only the copy in use remains until it is wiped on drop.
pub(crate) fn take_secret(kind: SecretKind) -> Result<Secret, InitError> {
    let path = Path::new("/").join(SECRET_PATH);
    let bytes = std::fs::read(&path).map_err(|error| SecretSourceError::Missing {
        path: path.clone(),
        error,
    })?;
    let len = bytes.len();
    let _ = std::fs::write(&path, vec![0u8; len]);
    let _ = std::fs::remove_file(&path);
    let secret = match kind {
        SecretKind::KeyFile => Secret::key_file(bytes),
        SecretKind::Passphrase => Secret::passphrase(bytes),
    };
    Ok(secret.map_err(KeyError::from)?)
}

/// R: the secret of an encrypted image, from where the manifest says. A
/// passphrase is asked on the console (echo off) and checked against the
/// image's key check value, up to three times; an empty line gives up.
pub(crate) fn restore_secret(
    manifest: &Manifest,
    kind: SecretKind,
    place: &Place,
) -> Result<Secret, InitError> {
    if manifest.key_source == KeySource::Initramfs {
        return take_secret(kind);
    }
    // The superblock once: every passphrase try is checked against it.
    let file = place.reader()?;
    let sb = kjump_image_format::reader::read_superblock(&file)?;
    let crypto = sb
        .crypto
        .ok_or_else(|| SecretSourceError::NotEncrypted(place.describe()))?;
    // Before a key is derived: Argon2 out of memory in PID 1 is a panic.
    kjump_restorer::restore::check_kdf_memory(
        &place.describe(),
        Some(&crypto.kdf),
        kjump_sys::freemem::MemInfo::spare(),
        Some(manifest.region),
    )?;
    let open = |secret: Secret| unlock(secret, &crypto, &sb.uuid);
    match (&manifest.key_source, kind) {
        (KeySource::Device { device, size }, SecretKind::KeyFile) => {
            let mut bytes = read_key_device(device, *size)?;
            say(format_args!(
                "read the key from {} ({size} bytes)",
                device.display()
            ));
            let secret = Secret::key_file(std::mem::take(&mut *bytes)).map_err(KeyError::from)?;
            Ok(open(secret)?)
        }
        (KeySource::Ask, SecretKind::Passphrase) => {
            let tty = manifest.tty.as_deref().unwrap_or(Path::new("/dev/console"));
            let limit = manifest.prompt_limit();
            let prompt = format!(
                "kjump: passphrase for the encrypted image on {} (an empty line, or none within {} s, boots without resuming): ",
                place.describe(),
                limit.as_secs()
            );
            let secret = crate::prompt::ask(tty, &prompt, PASSPHRASE_TRIES, limit, |mut line| {
                open(Secret::passphrase(std::mem::take(&mut *line))?)
            })?;
            Ok(secret)
        }
        (source, kind) => Err(SecretSourceError::Pairing {
            kind,
            key_source: source.clone(),
        }
        .into()),
    }
}

/// `secret`, once it is found to open the image.
fn unlock(secret: Secret, crypto: &CryptoParams, uuid: &[u8; 16]) -> Result<Secret, KeyError> {
    ImageKeys::unlock(&secret, crypto, uuid)?;
    Ok(secret)
}

/// The first `size` bytes of a device holding a key file.
fn read_key_device(device: &Path, size: usize) -> Result<Zeroizing<Vec<u8>>, SecretSourceError> {
    use std::io::Read as _;
    let mut bytes = Zeroizing::new(vec![0u8; size]);
    std::fs::File::open(device)
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|source| SecretSourceError::Device {
            device: device.to_path_buf(),
            size,
            source,
        })?;
    Ok(bytes)
}

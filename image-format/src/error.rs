//! Errors of the image format: each names the structure, where it is and what
//! was expected. A cause is the error's `source()` and is not repeated in its
//! message: the CLI prints the whole chain.

use crate::addr::ImageOffset;

/// Everything that can be wrong with an image.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Reading the image failed.
    #[error("reading {what} at offset {offset}")]
    Io {
        /// The structure being read.
        what: &'static str,
        /// Where.
        offset: ImageOffset,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The image ends before a structure does.
    #[error("image is truncated: {what} at offset {offset} needs {needed} bytes, the image holds {available} bytes")]
    Truncated {
        /// The structure cut short.
        what: &'static str,
        /// Where it starts.
        offset: ImageOffset,
        /// Bytes needed from `offset`.
        needed: u64,
        /// Size of the image.
        available: u64,
    },
    /// An extent map (the start of a file that holds an image) is malformed.
    #[error("extent map at device offset {offset}: {problem}")]
    ExtentMap {
        /// Device offset of the map.
        offset: ImageOffset,
        /// What is wrong.
        problem: String,
    },
    /// A structure does not start with its magic.
    #[error("bad magic in {what} at offset {offset}: expected {expected:?}, found {found:?}")]
    BadMagic {
        /// The structure.
        what: &'static str,
        /// Where.
        offset: ImageOffset,
        /// The magic this build accepts.
        expected: String,
        /// The bytes found.
        found: String,
    },
    /// The image was written for another architecture.
    #[error("image is for architecture {found}, this kjump handles {expected}")]
    WrongArchitecture {
        /// Architecture of this build.
        expected: &'static str,
        /// Architecture named by the image.
        found: String,
    },
    /// A major version this build cannot read.
    #[error("unsupported image version {major}.{minor} (this kjump reads {supported}.x)")]
    UnsupportedVersion {
        /// Major version in the image.
        major: u16,
        /// Minor version in the image.
        minor: u16,
        /// Major version this build reads.
        supported: u16,
    },
    /// Incompatible feature flags this build does not know.
    #[error("image uses unknown incompatible features {flags:#x} (superblock offset {offset})")]
    UnknownIncompatFeatures {
        /// Where the flags are.
        offset: ImageOffset,
        /// The unknown bits.
        flags: u64,
    },
    /// A field that must be zero is not.
    #[error("reserved field of {what} at offset {offset} is not zero (found {found:#x})")]
    ReservedNotZero {
        /// The structure.
        what: &'static str,
        /// The byte offset of the field.
        offset: ImageOffset,
        /// Its value (the first nonzero byte for byte runs).
        found: u64,
    },
    /// Padding between structures is not zero.
    #[error("padding {what} at offset {offset} is not zero")]
    PaddingNotZero {
        /// Which padding.
        what: &'static str,
        /// The first nonzero byte.
        offset: ImageOffset,
    },
    /// A checksum does not match.
    #[error("checksum mismatch in {what} at offset {offset}: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// The structure.
        what: String,
        /// Where it starts.
        offset: ImageOffset,
        /// CRC32 recorded in the image.
        stored: u32,
        /// CRC32 of the bytes read.
        computed: u32,
    },
    /// The capture that wrote the image never committed it.
    #[error("image is incomplete: its capture never committed it")]
    NotCommitted {
        /// The state found.
        state: &'static str,
    },
    /// A field has a value outside its allowed set.
    #[error("invalid {field} in {what} at offset {offset}: {value:#x}")]
    InvalidValue {
        /// The structure.
        what: &'static str,
        /// The field.
        field: &'static str,
        /// Where the structure starts.
        offset: ImageOffset,
        /// The value found.
        value: u64,
    },
    /// A field disagrees with what the rest of the image implies.
    #[error("{what} at offset {offset}: {field} is {found:#x}, expected {expected:#x}")]
    Mismatch {
        /// The structure.
        what: String,
        /// The field.
        field: &'static str,
        /// Where the structure starts.
        offset: ImageOffset,
        /// What the image implies.
        expected: u64,
        /// What the structure says.
        found: u64,
    },
    /// A length or count is beyond what this build accepts or the image holds.
    #[error("{what} at offset {offset} is {value}, above the limit {limit}")]
    TooLarge {
        /// The length or count.
        what: &'static str,
        /// Where it is recorded.
        offset: ImageOffset,
        /// Its value.
        value: u64,
        /// The bound.
        limit: u64,
    },
    /// The metadata section is malformed.
    #[error("metadata record at offset {offset}: {reason}")]
    Metadata {
        /// Where the record starts.
        offset: ImageOffset,
        /// What is wrong.
        reason: String,
    },
    /// A structure carries another capture's uuid: a leftover of an earlier
    /// image, or a piece of another one.
    #[error("{what} at offset {offset} belongs to another image (its uuid differs from the superblock's)")]
    ForeignUuid {
        /// The structure.
        what: String,
        /// Where it starts.
        offset: ImageOffset,
    },
    /// A chunk's payload does not decompress to its recorded size.
    #[error("chunk {index} at offset {offset} does not decompress: {reason}")]
    Decompress {
        /// The chunk's position in the index.
        index: u64,
        /// Where the chunk header is.
        offset: ImageOffset,
        /// What went wrong.
        reason: String,
    },
    /// Bytes that lie outside the saved ranges but inside a stored page are not zero.
    #[error("chunk {index} at offset {offset}: page at {addr:#x} holds nonzero bytes outside the saved range {range}")]
    OutsideRangeNotZero {
        /// The chunk's position in the index.
        index: u64,
        /// Where the chunk header is.
        offset: ImageOffset,
        /// Physical address of the page.
        addr: u64,
        /// The range the page belongs to.
        range: String,
    },
    /// Opening the image would take more memory than there is to spare.
    #[error("{what} of the image needs {needed} bytes of memory, {}: refused rather than run out of memory", match available { Some(a) => format!("more than the {a} this system has to spare"), None => "which this system cannot give".to_string() })]
    OutOfMemory {
        /// What would be held in memory.
        what: &'static str,
        /// Bytes it needs.
        needed: u64,
        /// Bytes there are to spare, when known.
        available: Option<u64>,
    },
    /// The image is encrypted and no key or passphrase was given.
    #[error("image is encrypted: give --key-file or --passphrase-file")]
    KeyRequired,
    /// An encrypted image without the plain resume record a normal boot
    /// reads before the key is asked.
    #[error("the encrypted image has no resume record (it was captured by an earlier kjump), so no boot can resume it; `kjump export` still reads it with its key")]
    NoResumeRecord,
    /// The key or passphrase does not open the image: it fails the image's
    /// key check value. Nothing of the key is shown.
    #[error("wrong key or passphrase: it does not match the image's key check value (superblock offset {offset})")]
    WrongKey {
        /// Where the key check value is.
        offset: ImageOffset,
    },
    /// A key file was given for a passphrase image, or the reverse.
    #[error("the image is encrypted with {sealed_with}, but {given} was given")]
    KeyKind {
        /// What the image was sealed with.
        sealed_with: &'static str,
        /// What was given.
        given: &'static str,
    },
    /// A sealed structure fails authentication: it was changed, or comes
    /// from another image.
    #[error("{what} at offset {offset} fails authentication: it was altered or comes from another image")]
    Authentication {
        /// The structure.
        what: String,
        /// Where it starts.
        offset: ImageOffset,
    },
    /// The key derivation refused its parameters.
    #[error("key derivation failed: {0}")]
    Kdf(String),
}

impl FormatError {
    /// Short constructor for a checksum mismatch.
    pub fn checksum(what: impl Into<String>, offset: u64, stored: u32, computed: u32) -> Self {
        FormatError::Checksum {
            what: what.into(),
            offset: ImageOffset(offset),
            stored,
            computed,
        }
    }

    /// Short constructor for a field mismatch.
    pub fn mismatch(
        what: impl Into<String>,
        field: &'static str,
        offset: u64,
        expected: u64,
        found: u64,
    ) -> Self {
        FormatError::Mismatch {
            what: what.into(),
            field,
            offset: ImageOffset(offset),
            expected,
            found,
        }
    }
}

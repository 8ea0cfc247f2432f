//! Asking for a passphrase on a terminal, a few tries, each read with echo
//! off ([`kjump_sys::tty`]).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use kjump_handoff::error_chain;
use kjump_sys::tty::read_secret_line;
use zeroize::Zeroizing;

/// Why no passphrase was accepted.
#[derive(Debug, thiserror::Error)]
pub enum AskError<E: std::error::Error + 'static> {
    /// The terminal cannot be read or written.
    #[error("{what} {}", .tty.display())]
    Terminal {
        /// What was being done.
        what: &'static str,
        /// The terminal.
        tty: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The terminal closed.
    #[error("{} closed before a passphrase was given", .0.display())]
    Closed(PathBuf),
    /// An empty line, or no try at all.
    #[error("no passphrase was given")]
    NoPassphrase,
    /// The last try was refused.
    #[error(transparent)]
    Refused(E),
}

/// Asks up to `tries` times for a secret on `tty`, until `accept` takes
/// one; `accept` returns why it refused, which is shown before the next
/// try. Returns the accepted value, or the last refusal. An empty line
/// stops asking at once: it is how a user says "not now".
pub fn ask<T, E: std::error::Error + 'static>(
    tty: &Path,
    prompt: &str,
    tries: u32,
    mut accept: impl FnMut(Zeroizing<Vec<u8>>) -> Result<T, E>,
) -> Result<T, AskError<E>> {
    let terminal = |what| {
        move |source| AskError::Terminal {
            what,
            tty: tty.to_path_buf(),
            source,
        }
    };
    let mut last = None;
    for left in (0..tries).rev() {
        let line =
            read_secret_line(tty, prompt).map_err(terminal("reading the passphrase from"))?;
        let Some(line) = line else {
            return Err(AskError::Closed(tty.to_path_buf()));
        };
        if line.is_empty() {
            return Err(AskError::NoPassphrase);
        }
        match accept(line) {
            Ok(v) => return Ok(v),
            Err(why) => {
                if left > 0 {
                    let mut t = OpenOptions::new()
                        .write(true)
                        .open(tty)
                        .map_err(terminal("opening"))?;
                    let word = if left == 1 { "try" } else { "tries" };
                    let _ = writeln!(t, "{} ({left} more {word})", error_chain(&why));
                }
                last = Some(why);
            }
        }
    }
    Err(last.map_or(AskError::NoPassphrase, AskError::Refused))
}

//! A line read from a terminal with echo off, for passphrases: the prompt
//! goes to the terminal, echo is off while the user types, and the
//! terminal is left as it was.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::Path;

use nix::sys::termios::{self, LocalFlags, SetArg};
use zeroize::Zeroizing;

/// The longest passphrase read; the rest of a longer line is refused.
pub const MAX_PASSPHRASE: usize = 1024;

/// Prints `prompt` on the terminal `tty` (e.g. /dev/console or /dev/tty)
/// and reads one line with echo off. The line comes back without its end;
/// `None` when the terminal closed before a line came.
pub fn read_secret_line(tty: &Path, prompt: &str) -> std::io::Result<Option<Zeroizing<Vec<u8>>>> {
    let mut t = OpenOptions::new().read(true).write(true).open(tty)?;
    // Not a terminal (a pipe in a test, a serial line without termios):
    // read all the same, without touching the echo.
    let saved = termios::tcgetattr(&t).ok();
    if let Some(old) = &saved {
        let mut quiet = old.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        quiet.local_flags.insert(LocalFlags::ECHONL);
        // TCSADRAIN, not TCSAFLUSH: what was typed ahead is kept.
        termios::tcsetattr(&t, SetArg::TCSADRAIN, &quiet)?;
    }
    let result = (|| {
        t.write_all(prompt.as_bytes())?;
        t.flush()?;
        let mut line = Zeroizing::new(Vec::with_capacity(64));
        let mut byte = [0u8; 1];
        loop {
            match t.read(&mut byte)? {
                0 if line.is_empty() => return Ok(None),
                0 => break,
                _ if byte[0] == b'\n' || byte[0] == b'\r' => break,
                _ if line.len() >= MAX_PASSPHRASE => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("the passphrase is longer than {MAX_PASSPHRASE} bytes"),
                    ))
                }
                _ => line.push(byte[0]),
            }
        }
        Ok(Some(line))
    })();
    if let Some(old) = &saved {
        let _ = termios::tcsetattr(&t, SetArg::TCSADRAIN, old);
    }
    result
}

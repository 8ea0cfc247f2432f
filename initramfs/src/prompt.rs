//! Asking for a passphrase on a terminal: the prompt goes to the terminal,
//! echo is off while the user types, and the terminal is left as it was.

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

/// Asks up to `tries` times for a secret on `tty`, until `accept` takes
/// one; `accept` returns why it refused, which is shown before the next
/// try. Returns the accepted value, or the last refusal. An empty line
/// stops asking at once: it is how a user says "not now".
pub fn ask<T>(
    tty: &Path,
    prompt: &str,
    tries: u32,
    mut accept: impl FnMut(Zeroizing<Vec<u8>>) -> Result<T, String>,
) -> Result<T, String> {
    let mut last = String::from("no passphrase was given");
    for left in (0..tries).rev() {
        let line = read_secret_line(tty, prompt)
            .map_err(|e| format!("reading the passphrase from {}: {e}", tty.display()))?;
        let Some(line) = line else {
            return Err(format!(
                "{} closed before a passphrase was given",
                tty.display()
            ));
        };
        if line.is_empty() {
            return Err("no passphrase was given".into());
        }
        match accept(line) {
            Ok(v) => return Ok(v),
            Err(why) => {
                last = why;
                if left > 0 {
                    let mut t = OpenOptions::new()
                        .write(true)
                        .open(tty)
                        .map_err(|e| e.to_string())?;
                    let word = if left == 1 { "try" } else { "tries" };
                    let _ = writeln!(t, "{last} ({left} more {word})");
                }
            }
        }
    }
    Err(last)
}

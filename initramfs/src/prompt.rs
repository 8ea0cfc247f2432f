//! Asking for a passphrase on a terminal, a few tries, each read with echo
//! off ([`kjump_sys::tty`]).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use kjump_sys::tty::read_secret_line;
use zeroize::Zeroizing;

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

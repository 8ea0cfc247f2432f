//! Asking for a passphrase on a terminal, a few tries, each read with echo
//! off ([`kjump_sys::tty`]).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    /// Nobody answered in time.
    #[error("no passphrase was given on {} within {} s", .tty.display(), .limit.as_secs())]
    TimedOut {
        /// The terminal.
        tty: PathBuf,
        /// How long it waited.
        limit: Duration,
    },
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
/// stops asking at once: it is how a user says "not now"; so does no
/// answer within `limit` for a try.
pub fn ask<T, E: std::error::Error + 'static>(
    tty: &Path,
    prompt: &str,
    tries: u32,
    limit: Duration,
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
        let line = match read_secret_line(tty, prompt, Some(limit)) {
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(AskError::TimedOut {
                    tty: tty.to_path_buf(),
                    limit,
                })
            }
            other => other.map_err(terminal("reading the passphrase from"))?,
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Write;
    use std::time::Instant;

    #[derive(Debug, thiserror::Error)]
    #[error("wrong passphrase")]
    struct Wrong;

    /// A pseudo-terminal standing in for the console: returns the path of
    /// its terminal end, which `ask` opens, and a thread that types
    /// `lines` at the other end, one every 100 ms, then keeps it open a
    /// while.
    fn console(lines: &'static [&'static str]) -> (PathBuf, std::thread::JoinHandle<()>) {
        let pty = nix::pty::openpty(None, None).unwrap();
        let tty = nix::unistd::ttyname(&pty.slave).unwrap();
        let mut master = File::from(pty.master);
        let slave = pty.slave;
        let typist = std::thread::spawn(move || {
            for line in lines {
                std::thread::sleep(Duration::from_millis(100));
                master.write_all(format!("{line}\n").as_bytes()).unwrap();
            }
            std::thread::sleep(Duration::from_millis(1500));
            drop(slave);
        });
        (tty, typist)
    }

    fn check(line: Zeroizing<Vec<u8>>) -> Result<String, Wrong> {
        (line.as_slice() == b"right")
            .then(|| "opened".to_string())
            .ok_or(Wrong)
    }

    #[test]
    fn a_wrong_passphrase_then_the_right_one() {
        let (tty, typist) = console(&["wrong", "right"]);
        let got = ask(&tty, "", 3, Duration::from_secs(5), check).unwrap();
        assert_eq!(got, "opened");
        typist.join().unwrap();
    }

    #[test]
    fn an_empty_line_stops_asking() {
        let (tty, typist) = console(&[""]);
        let e = ask(&tty, "", 3, Duration::from_secs(5), check).unwrap_err();
        assert!(matches!(e, AskError::NoPassphrase), "{e}");
        typist.join().unwrap();
    }

    #[test]
    fn no_answer_in_time_gives_up() {
        let (tty, typist) = console(&[]);
        let started = Instant::now();
        let e = ask(&tty, "", 3, Duration::from_secs(1), check).unwrap_err();
        assert!(started.elapsed() >= Duration::from_secs(1));
        assert_eq!(
            e.to_string(),
            format!("no passphrase was given on {} within 1 s", tty.display())
        );
        typist.join().unwrap();
    }
}

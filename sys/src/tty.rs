//! A line read from a terminal with echo off, for passphrases: the prompt
//! goes to the terminal, echo is off while the user types, and the
//! terminal is left as it was. An unattended machine never waits forever:
//! with a time limit, no line in time is an error of kind `TimedOut`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{self, LocalFlags, SetArg};
use zeroize::{Zeroize, Zeroizing};

/// The longest passphrase read; the rest of a longer line is refused.
pub const MAX_PASSPHRASE: usize = 1024;

/// Waits until `t` has a byte to read, at most until `deadline`.
fn wait_readable(t: &File, deadline: Option<Instant>, limit: Duration) -> std::io::Result<()> {
    let Some(deadline) = deadline else {
        return Ok(());
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(t.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) if Instant::now() >= deadline => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {} s", limit.as_secs()),
                ))
            }
            Ok(0) | Err(nix::errno::Errno::EINTR) => {}
            Ok(_) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Prints `prompt` on the terminal `tty` (e.g. /dev/console or /dev/tty)
/// and reads one line with echo off. The line comes back without its end;
/// `None` when the terminal closed before a line came. With `limit`, a
/// line not ended within it is an error of kind `TimedOut`.
pub fn read_secret_line(
    tty: &Path,
    prompt: &str,
    limit: Option<Duration>,
) -> std::io::Result<Option<Zeroizing<Vec<u8>>>> {
    let deadline = limit.map(|l| Instant::now() + l);
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
        // Its whole room at once, locked and out of core dumps: the line
        // never moves, so no copy of it is left in freed memory.
        crate::secmem::no_core_dumps();
        let mut line = Zeroizing::new(vec![0u8; MAX_PASSPHRASE]);
        crate::secmem::keep(&line);
        let mut len = 0;
        let mut byte = [0u8; 1];
        loop {
            wait_readable(&t, deadline, limit.unwrap_or_default())?;
            match t.read(&mut byte)? {
                0 if len == 0 => return Ok(None),
                0 => break,
                _ if byte[0] == b'\n' || byte[0] == b'\r' => break,
                _ if len >= MAX_PASSPHRASE => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("the passphrase is longer than {MAX_PASSPHRASE} bytes"),
                    ))
                }
                _ => {
                    line[len] = byte[0];
                    len += 1;
                }
            }
        }
        byte.zeroize();
        line.truncate(len);
        Ok(Some(line))
    })();
    if let Some(old) = &saved {
        let _ = termios::tcsetattr(&t, SetArg::TCSADRAIN, old);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A FIFO stands in for a terminal nobody types on, then for one that
    /// gets a line in time.
    #[test]
    fn a_line_not_given_in_time_times_out() {
        let dir = std::env::temp_dir().join(format!("kjump-tty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("console");
        let _ = std::fs::remove_file(&fifo);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let started = Instant::now();
        let e = read_secret_line(&fifo, "", Some(Duration::from_millis(300))).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(e.to_string(), "no answer within 0 s");
        assert!(started.elapsed() >= Duration::from_millis(300));
        // A writer that keeps the FIFO open answers in time.
        let path = fifo.clone();
        let writer = std::thread::spawn(move || {
            let mut w = OpenOptions::new().write(true).open(path).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            w.write_all(b"secret\n").unwrap();
            std::thread::sleep(Duration::from_millis(500));
        });
        let line = read_secret_line(&fifo, "", Some(Duration::from_secs(5))).unwrap();
        assert_eq!(line.as_deref().map(Vec::as_slice), Some(&b"secret"[..]));
        writer.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

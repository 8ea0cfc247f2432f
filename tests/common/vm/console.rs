//! A guest's serial console as the host sees it: a thread reads QEMU's
//! output as bytes as they come, stamps every line with the time since the
//! machine started and keeps the line not ended yet visible, so a prompt
//! that waits for its input (and prints no newline until it has it) is
//! found as soon as it is printed. The stamped console is also written to a
//! log file.

use std::fs;
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::{self, sleep, JoinHandle};
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(50);

/// One console line and when it arrived, since the machine started.
#[derive(Clone, Debug)]
pub struct Line {
    /// Seconds since the machine started.
    pub at: f64,
    /// The text, without line end.
    pub text: String,
}

/// Why a wait on the console ended without what it waited for.
#[derive(Debug, PartialEq, Eq)]
pub enum Waited {
    /// The console closed (the machine ended).
    Closed,
    /// The time was up.
    Timeout,
}

/// How far a wait on the console looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upto {
    /// Up to the last line ended with a newline.
    Ended,
    /// Up to the last byte printed: the line not ended yet too, such as a
    /// prompt that waits for its input.
    Printed,
}

/// A line a wait found.
#[derive(Clone, Debug)]
pub struct Found {
    /// Its index among the console's lines.
    pub index: usize,
    /// Which of the needles it holds (the first that matches).
    pub needle: usize,
    /// The line.
    pub line: Line,
}

#[derive(Default)]
struct State {
    lines: Vec<Line>,
    closed: bool,
    /// The line not ended yet: a program's line the kernel's printk cut,
    /// or text with no newline so far, such as a prompt that waits for its
    /// input (a prompt is often both).
    pending: Option<Line>,
}

/// The lines read so far from one console, and the thread reading it.
pub struct Console {
    state: Arc<Mutex<State>>,
    reader: Option<JoinHandle<()>>,
    log: PathBuf,
}

impl Console {
    /// Reads `input` on a thread of its own until it ends, stamping lines
    /// with the time since `started` and writing them to `log`.
    pub fn start(input: impl Read + Send + 'static, started: Instant, log: &Path) -> Console {
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::clone(&state);
        let log_path = log.to_path_buf();
        let reader = thread::spawn(move || read_console(input, started, &shared, &log_path));
        Console {
            state,
            reader: Some(reader),
            log: log.to_path_buf(),
        }
    }

    /// The log file of the stamped console.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Every ended line so far.
    pub fn lines(&self) -> Vec<Line> {
        self.state
            .lock()
            .map(|c| c.lines.clone())
            .unwrap_or_default()
    }

    /// The first line from index `from` on that holds one of `needles`:
    /// its index, which needle, and the line. With [`Upto::Printed`] the
    /// line not ended yet counts too (as index `lines().len()`); waits up to
    /// `timeout` for it.
    pub fn wait_for_any(
        &self,
        from: usize,
        needles: &[&str],
        upto: Upto,
        timeout: Duration,
    ) -> Result<Found, Waited> {
        let started = Instant::now();
        loop {
            {
                let c = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let unended = match upto {
                    Upto::Printed => c.pending.as_ref(),
                    Upto::Ended => None,
                };
                let found = c
                    .lines
                    .iter()
                    .chain(unended)
                    .enumerate()
                    .skip(from)
                    .find_map(|(index, l)| {
                        let needle = needles.iter().position(|n| l.text.contains(n))?;
                        Some(Found {
                            index,
                            needle,
                            line: l.clone(),
                        })
                    });
                if let Some(found) = found {
                    return Ok(found);
                }
                if c.closed {
                    return Err(Waited::Closed);
                }
            }
            if started.elapsed() > timeout {
                return Err(Waited::Timeout);
            }
            sleep(POLL);
        }
    }

    /// Waits for the reading thread, once the input has ended.
    pub fn join(&mut self) {
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

fn read_console(mut input: impl Read, started: Instant, console: &Mutex<State>, log_path: &Path) {
    let mut log = fs::File::create(log_path).ok();
    let mut chunk = [0u8; 4096];
    // What came after the last newline: a line on its way, or a prompt
    // that waits for its input and sends no newline until then.
    let mut partial = Vec::new();
    // A program's line the kernel's printk cut in two: its first part.
    let mut pending = String::new();
    let mut at = 0.0;
    loop {
        let n = match input.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        at = started.elapsed().as_secs_f64();
        partial.extend_from_slice(&chunk[..n]);
        while let Some(end) = partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = partial.drain(..=end).collect();
            take_line(&line, at, &mut pending, &mut log, console);
        }
        let tail = String::from_utf8_lossy(&partial);
        let text = pending.clone() + tail.trim_end_matches('\r');
        if let Ok(mut c) = console.lock() {
            c.pending = (!text.is_empty()).then_some(Line { at, text });
        }
    }
    if !partial.is_empty() {
        take_line(&partial, at, &mut pending, &mut log, console);
    }
    if let Ok(mut c) = console.lock() {
        c.pending = None;
        c.closed = true;
    }
}

/// Logs one console line and records it; a program's line cut by a kernel
/// message is recorded whole once its end comes.
fn take_line(
    bytes: &[u8],
    at: f64,
    pending: &mut String,
    log: &mut Option<fs::File>,
    console: &Mutex<State>,
) {
    let raw = String::from_utf8_lossy(bytes);
    let raw = raw.trim_end_matches(['\r', '\n']);
    if let Some(f) = log.as_mut() {
        let _ = writeln!(f, "{at:7.2} {raw}");
    }
    let text = match printk_start(raw) {
        Some(cut) if cut > 0 => {
            pending.push_str(&raw[..cut]);
            raw[cut..].to_owned()
        }
        Some(_) => raw.to_owned(),
        None => std::mem::take(pending) + raw,
    };
    if let Ok(mut c) = console.lock() {
        c.lines.push(Line { at, text });
    }
}

/// Where a kernel message (`[    8.613697] ...`) starts in a console line.
fn printk_start(line: &str) -> Option<usize> {
    line.match_indices('[').map(|(i, _)| i).find(|&i| {
        let rest = &line[i + 1..];
        let Some(close) = rest.find(']') else {
            return false;
        };
        let stamp = rest[..close].trim_start();
        let (secs, micros) = stamp.split_once('.').unwrap_or(("", ""));
        !secs.is_empty()
            && secs.bytes().all(|b| b.is_ascii_digit())
            && micros.len() == 6
            && micros.bytes().all(|b| b.is_ascii_digit())
    })
}

/// The first line holding `needle`.
pub fn find<'a>(lines: &'a [Line], needle: &str) -> Option<&'a Line> {
    lines.iter().find(|l| l.text.contains(needle))
}

/// The first line holding `needle`, or a panic that names the machine and
/// quotes the console's last lines.
pub fn line<'a>(lines: &'a [Line], needle: &str, machine: &str) -> &'a Line {
    find(lines, needle).unwrap_or_else(|| {
        let from = lines.len().saturating_sub(60);
        let tail: Vec<String> = lines[from..]
            .iter()
            .map(|l| format!("{:7.2} {}", l.at, l.text))
            .collect();
        panic!(
            "[{machine}] no {needle:?} on the console; its last lines:\n{}",
            tail.join("\n")
        )
    })
}

/// The decimal number right after `prefix` in `text`.
pub fn number_after(text: &str, prefix: &str) -> Option<u64> {
    let rest = &text[text.find(prefix)? + prefix.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The `0x` hex number right after `prefix` in `text`.
pub fn hex_after(text: &str, prefix: &str) -> Option<u64> {
    let rest = text[text.find(prefix)? + prefix.len()..].strip_prefix("0x")?;
    let digits: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
    u64::from_str_radix(&digits, 16).ok()
}

//! Progress of a long pass over memory: a redrawn line on a terminal, log
//! lines elsewhere (the console of a capture kernel, a CI log).

use std::io::Write;
use std::time::{Duration, Instant};

const REDRAW: Duration = Duration::from_millis(250);
const LOG_AT_MOST: Duration = Duration::from_secs(1);

/// Tracks bytes done against a total.
pub struct Progress {
    what: &'static str,
    total: u64,
    done: u64,
    started: Instant,
    last: Instant,
    line: bool,
}

impl Progress {
    /// Starts tracking; `line` draws on stderr, otherwise `log::info!`.
    pub fn new(what: &'static str, total: u64, line: bool) -> Self {
        let now = Instant::now();
        Progress {
            what,
            total,
            done: 0,
            started: now,
            last: now,
            line,
        }
    }

    /// Sets the total, once it is known.
    pub fn set_total(&mut self, total: u64) {
        self.total = total;
    }

    /// Records `bytes` more done and reports when due: a terminal's line
    /// is redrawn every quarter second; a log gets a line at each tenth of
    /// the total, at most one per second, so a console shows where a long
    /// pass is without scrolling away.
    pub fn advance(&mut self, bytes: u64) {
        let tenth = |done: u64| done.saturating_mul(10) / self.total.max(1);
        let before = tenth(self.done);
        self.done += bytes;
        let due = if self.line {
            self.last.elapsed() >= REDRAW
        } else {
            tenth(self.done) > before && self.last.elapsed() >= LOG_AT_MOST
        };
        if due {
            self.last = Instant::now();
            self.report();
        }
    }

    fn report(&self) {
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let rate = self.done as f64 / secs;
        let pct = if self.total == 0 {
            100.0
        } else {
            self.done as f64 * 100.0 / self.total as f64
        };
        let eta = if rate > 0.0 {
            (self.total.saturating_sub(self.done)) as f64 / rate
        } else {
            0.0
        };
        let text = format!(
            "{} {:5.1}%  {:8.1} MB/s  ETA {:4.0}s",
            self.what,
            pct,
            rate / 1e6,
            eta
        );
        if self.line {
            let mut e = std::io::stderr().lock();
            let _ = write!(e, "\r{text}");
            let _ = e.flush();
        } else {
            log::info!("{text}");
        }
    }

    /// Ends the progress line.
    pub fn finish(&mut self) {
        if self.line {
            self.report();
            eprintln!();
        }
    }
}

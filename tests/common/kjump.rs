//! The one way the integration tests run the `kjump` binary under test.

use std::ffi::OsStr;
use std::fmt;
use std::process::{Command, Stdio};
use std::time::Instant;

/// An argument of any kind, for a list of mixed ones:
/// `kjump::<Arg>(&[&"verify", &path])`.
pub type Arg<'a> = &'a dyn AsRef<OsStr>;

/// What one run of kjump did.
#[derive(Debug)]
pub struct Run {
    /// The exit code (-1 when a signal ended it).
    pub code: i32,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error: errors, and the log at the level it ran with.
    pub stderr: String,
    /// Standard output then standard error, as a terminal shows them.
    pub text: String,
    /// Wall time, in seconds.
    pub secs: f64,
    /// The command line, for messages.
    pub shown: String,
}

impl Run {
    /// This run, asserting it succeeded.
    #[track_caller]
    pub fn ok(self) -> Run {
        self.exits(0)
    }

    /// This run, asserting it exited with `code`.
    #[track_caller]
    pub fn exits(self, code: i32) -> Run {
        assert_eq!(self.code, code, "{self}");
        self
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} exited {}\nstdout: {}\nstderr: {}",
            self.shown, self.code, self.stdout, self.stderr
        )
    }
}

/// Runs kjump with `args`, logging warnings and errors only (`RUST_LOG=warn`):
/// what it prints of its results and errors. Stdin is empty.
pub fn kjump<S: AsRef<OsStr>>(args: &[S]) -> Run {
    run(args, "warn")
}

/// [`kjump`] with kjump's default log level, `info`, whose messages some
/// tests look for.
pub fn kjump_info<S: AsRef<OsStr>>(args: &[S]) -> Run {
    run(args, "info")
}

fn run<S: AsRef<OsStr>>(args: &[S], log: &str) -> Run {
    let args: Vec<&OsStr> = args.iter().map(AsRef::as_ref).collect();
    let shown = format!(
        "kjump {}",
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_kjump"))
        .args(&args)
        .env("RUST_LOG", log)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {shown}: {e}"));
    let secs = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    Run {
        code: out.status.code().unwrap_or(-1),
        text: format!("{stdout}{stderr}"),
        stdout,
        stderr,
        secs,
        shown,
    }
}

//! The Debian package, built as a user builds it (packaging/deb/build.sh,
//! which runs cargo-deb), for the tests that inspect or install it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository's root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Whether the tools a package test needs are here; under CI their absence
/// fails the test (tests/setup.sh installs them), elsewhere it is skipped.
pub fn ready(tools: &[&str]) -> bool {
    let missing: Vec<&&str> = tools.iter().filter(|t| !super::have(t)).collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!("missing {missing:?} (tests/setup.sh installs them)");
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run this test: {why}"
    );
    super::skip(why);
    false
}

/// Builds `kjump_<version>_amd64.deb` into `out` and returns its path.
pub fn build_package(out: &Path) -> PathBuf {
    let started = std::time::Instant::now();
    let output = Command::new(repo().join("packaging/deb/build.sh"))
        .arg(out)
        .output()
        .expect("running packaging/deb/build.sh");
    assert!(
        output.status.success(),
        "packaging/deb/build.sh failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    assert!(path.is_file(), "build.sh printed {}", path.display());
    eprintln!(
        "built {} in {:.1} s",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    path
}

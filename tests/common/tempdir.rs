//! Scratch directories for tests that write files.

use std::fs;
use std::path::PathBuf;

/// A fresh directory under the target's temporary area, named after the
/// test and the process, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// An empty `target/tmp/NAME-PID`.
    pub fn new(name: &str) -> TempDir {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("creating test directory {}: {e}", dir.display()));
        TempDir(dir)
    }

    /// `file` in this directory.
    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

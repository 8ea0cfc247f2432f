//! The guests' kernels: a script under tests/vm/ prints a bzImage's path
//! (fetching or building it first when it is not cached), and the release
//! a bzImage carries in its setup header.

use std::fs;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;

/// How much of a failed script's stderr an error quotes.
const TAIL_LINES: usize = 40;

/// Runs `tests/vm/<script>` with `args` under bash. The script prints the
/// kernel's path on stdout and its progress on stderr, which is shown as it
/// comes (a kernel build takes minutes) and quoted when the script fails.
pub fn from_script(script: &str, args: &[&str]) -> Result<PathBuf, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vm")
        .join(script);
    let shown = format!("{} {}", path.display(), args.join(" "));
    let mut child = Command::new("bash")
        .arg(&path)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {shown}: {e}"))?;
    let stderr = child.stderr.take().expect("piped stderr");
    // libtest captures print!, not writes to the stderr handle.
    let progress = thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = writeln!(std::io::stderr(), "{line}");
            lines.push(line);
        }
        lines
    });
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for {shown}: {e}"))?;
    let said = progress.join().unwrap_or_default();
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if out.status.success() && !printed.is_empty() && Path::new(&printed).is_file() {
        return Ok(PathBuf::from(printed));
    }
    let from = said.len().saturating_sub(TAIL_LINES);
    Err(format!(
        "{shown} exited with {} and printed {printed:?}, which is not a kernel; its last words:\n{}",
        out.status,
        said[from..].join("\n")
    ))
}

/// The release a bzImage's setup header names: the first word of the
/// version string at 0x200 + the `kernel_version` field (offset 0x20e;
/// Documentation/arch/x86/boot.rst).
pub fn release(bzimage: &Path) -> Result<String, String> {
    let bytes = fs::read(bzimage).map_err(|e| format!("reading {}: {e}", bzimage.display()))?;
    let field = bytes
        .get(0x20e..0x210)
        .ok_or_else(|| format!("{} has no setup header", bzimage.display()))?;
    let at = 0x200 + usize::from(u16::from_le_bytes([field[0], field[1]]));
    let text = bytes.get(at..).unwrap_or_default();
    let end = text.iter().position(|&b| b == 0 || b == b' ').unwrap_or(0);
    let release = String::from_utf8_lossy(&text[..end]).into_owned();
    if release.is_empty() {
        return Err(format!(
            "{}: no version string at {at:#x}",
            bzimage.display()
        ));
    }
    Ok(release)
}

//! `kjump mkinitramfs`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use kjump_initramfs::ExtraFile;

use crate::Failure;

pub fn parse_extra(s: &str) -> Result<ExtraFile, String> {
    let (host, dest) = s
        .split_once(':')
        .ok_or_else(|| format!("expected HOST_PATH:PATH_IN_INITRAMFS, got {s:?}"))?;
    if host.is_empty() || dest.is_empty() {
        return Err(format!("expected HOST_PATH:PATH_IN_INITRAMFS, got {s:?}"));
    }
    Ok(ExtraFile {
        host: PathBuf::from(host),
        dest: dest.to_string(),
    })
}

pub fn mkinitramfs(output: &Path, init: Option<&Path>, files: &[ExtraFile]) -> Result<(), Failure> {
    let init = match init {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()
            .context("finding this kjump binary to install as /init")
            .map_err(Failure::error)?,
    };
    let bytes = kjump_initramfs::build(&init, files).map_err(Failure::error)?;
    // Write beside the output and rename, so a failure never leaves half an archive.
    let tmp = output.with_extension("kjump-tmp");
    std::fs::write(&tmp, &bytes)
        .and_then(|()| std::fs::rename(&tmp, output))
        .with_context(|| format!("writing {}", output.display()))
        .map_err(Failure::error)?;
    println!(
        "wrote {}: {} bytes, /init from {}, {} extra files",
        output.display(),
        bytes.len(),
        init.display(),
        files.len()
    );
    Ok(())
}

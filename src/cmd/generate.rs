//! `kjump generate`: the man pages and shell completions the Debian
//! package ships, made from the same clap definitions that parse the
//! command line, so they cannot drift from it (ripgrep's `--generate`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use clap_complete::Shell;

use crate::Failure;

#[derive(Args)]
pub struct GenerateArgs {
    /// Directory for the man pages: kjump.1 and one kjump-COMMAND.1 per command
    #[arg(long, value_name = "DIR")]
    man: Option<PathBuf>,
    /// Directory for the completions: kjump.bash, _kjump (zsh) and kjump.fish
    #[arg(long, value_name = "DIR")]
    completions: Option<PathBuf>,
}

/// The shells completions are written for, and each one's file name.
const SHELLS: [(Shell, &str); 3] = [
    (Shell::Bash, "kjump.bash"),
    (Shell::Zsh, "_kjump"),
    (Shell::Fish, "kjump.fish"),
];

fn create_dir(dir: &Path) -> Result<(), Failure> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating {}", dir.display()))
        .map_err(Failure::error)
}

/// Writes what `args` asks for, from `cli`, the whole command line's
/// definition; prints each file written.
pub fn run(args: &GenerateArgs, cli: clap::Command) -> Result<(), Failure> {
    if args.man.is_none() && args.completions.is_none() {
        return Err(Failure::error(anyhow::anyhow!(
            "nothing to generate: give --man DIR, --completions DIR or both"
        )));
    }
    if let Some(dir) = &args.man {
        create_dir(dir)?;
        clap_mangen::generate_to(cli.clone(), dir)
            .with_context(|| format!("writing man pages into {}", dir.display()))
            .map_err(Failure::error)?;
        let mut pages: Vec<_> = std::fs::read_dir(dir)
            .and_then(|d| d.map(|e| e.map(|e| e.path())).collect())
            .with_context(|| format!("listing {}", dir.display()))
            .map_err(Failure::error)?;
        pages.sort();
        for p in pages {
            println!("{}", p.display());
        }
    }
    if let Some(dir) = &args.completions {
        create_dir(dir)?;
        for (shell, name) in SHELLS {
            let path = dir.join(name);
            // Into memory first: the generators panic on a failed write.
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut cli.clone(), "kjump", &mut text);
            std::fs::write(&path, text)
                .with_context(|| format!("writing {}", path.display()))
                .map_err(Failure::error)?;
            println!("{}", path.display());
        }
    }
    Ok(())
}

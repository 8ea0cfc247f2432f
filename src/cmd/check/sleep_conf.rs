//! What `kjump check --sleep-conf` tells logind: a sleep.conf drop-in that
//! allows hibernation and hybrid sleep exactly when kjump can do them, so
//! that `systemctl hibernate` is refused at once when it cannot.

use std::path::Path;

use super::{judge, Facts};
use crate::Failure;

/// The sleep.conf drop-in that tells logind whether kjump can hibernate.
pub const SLEEP_CONF: &str = "/run/systemd/sleep.conf.d/kjump.conf";

/// The sleep.conf drop-in for a verdict: `None` when kjump leaves
/// hibernation to systemd (no target configured), else the text, which
/// allows hibernation and hybrid sleep exactly when kjump can do them.
/// Suspend-then-hibernate is never offered: systemd-sleep runs its
/// hibernation step itself, through the kernel's swap hibernation.
pub fn sleep_conf_text(configured: bool, problems: &[String]) -> Option<String> {
    if !configured {
        return None;
    }
    let allow = if problems.is_empty() { "yes" } else { "no" };
    let mut text = String::from(
        "# Written by kjump check --sleep-conf: whether logind offers hibernation,\n\
         # which kjump does (kjump-check.service; rewritten before each hibernation).\n",
    );
    for p in problems {
        text.push_str(&format!("# cannot hibernate with kjump: {p}\n"));
    }
    text.push_str(&format!(
        "[Sleep]\nAllowHibernation={allow}\nAllowHybridSleep={allow}\nAllowSuspendThenHibernate=no\n"
    ));
    Some(text)
}

/// Writes (or removes) the drop-in at `path` for this verdict.
pub fn write_sleep_conf(path: &Path, configured: bool, problems: &[String]) -> Result<(), Failure> {
    let fail = |what: &str, e: std::io::Error| {
        Failure::error(anyhow::anyhow!("{what} {}: {e}", path.display()))
    };
    match sleep_conf_text(configured, problems) {
        None => match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(fail("removing", e)),
            _ => Ok(()),
        },
        Some(text) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| fail("creating the directory of", e))?;
            }
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).map_err(|e| fail("writing", e))?;
            std::fs::rename(&tmp, path).map_err(|e| fail("writing", e))
        }
    }
}

/// The problems `kjump check` finds, as its error lists them.
pub fn problems(facts: &Facts) -> Vec<String> {
    judge(facts)
        .into_iter()
        .filter(|f| f.blocks)
        .map(|f| format!("{}: {}", f.what, f.said))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_conf_says_what_logind_may_offer() {
        assert_eq!(sleep_conf_text(false, &[]), None);
        let yes = sleep_conf_text(true, &[]).unwrap();
        assert!(yes.ends_with(
            "[Sleep]\nAllowHibernation=yes\nAllowHybridSleep=yes\nAllowSuspendThenHibernate=no\n"
        ));
        let no = sleep_conf_text(true, &["target: /dev/sdb1 does not exist".into()]).unwrap();
        assert!(no.contains("# cannot hibernate with kjump: target: /dev/sdb1 does not exist\n"));
        assert!(no.contains("AllowHibernation=no\nAllowHybridSleep=no\n"));
    }
}

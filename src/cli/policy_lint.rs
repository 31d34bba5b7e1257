//! `weft policy lint DIR`: what an agent would make of a policy directory, without one.

use std::fmt::Write as _;
use std::path::Path;

use crate::policy::source::read_once;
use crate::status::counted;

/// The report on `dir`, and whether an agent starting now would take every file; an error
/// if `dir` is no directory that can be read.
pub fn lint(dir: &Path) -> anyhow::Result<(String, bool)> {
    check_directory(dir)?;
    let merged = read_once(dir);
    let mut out = String::new();
    for rejected in &merged.rejected {
        let _ = writeln!(out, "rejected {}: {}", rejected.file, rejected.reason);
    }
    let objects = &merged.objects;
    let set = objects.compile();
    for conflict in &set.conflicts {
        let _ = writeln!(
            out,
            "warning: {} is claimed by {} and {}; policy judges it as {}",
            conflict.ip,
            conflict.owner,
            conflict.others.join(", "),
            conflict.owner
        );
    }
    let _ = writeln!(
        out,
        "{}, {}, {} taken from {}",
        counted(set.accepted.len(), "NetworkPolicy", "NetworkPolicies"),
        counted(objects.pods.len(), "Pod", "Pods"),
        counted(objects.namespaces.len(), "Namespace", "Namespaces"),
        dir.display()
    );
    if merged.incomplete {
        let _ = writeln!(
            out,
            "an agent starting now would publish no rule set (and deliver nothing decrypted) \
             until the files above are fixed or removed"
        );
    }
    Ok((out, merged.rejected.is_empty()))
}

/// Whether `dir` is a directory that can be listed, said plainly if not.
fn check_directory(dir: &Path) -> anyhow::Result<()> {
    let shown = dir.display();
    match std::fs::read_dir(dir) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!("directory {shown} does not exist")
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotADirectory => {
            anyhow::bail!("{shown} is not a directory")
        }
        Err(error) => anyhow::bail!("cannot read directory {shown}: {error}"),
    }
}

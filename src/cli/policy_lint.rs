//! `weft policy lint DIR`: what an agent would make of a policy directory, without one.

use std::fmt::Write as _;
use std::path::Path;

use crate::policy::source::read_once;

/// The report on `dir`, and whether an agent starting now would take every file.
pub fn lint(dir: &Path) -> (String, bool) {
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
        "{} NetworkPolicies, {} Pods, {} Namespaces taken from {}",
        set.accepted.len(),
        objects.pods.len(),
        objects.namespaces.len(),
        dir.display()
    );
    if merged.incomplete {
        let _ = writeln!(
            out,
            "an agent starting now would publish no rule set (and deliver nothing decrypted) \
             until the files above are fixed or removed"
        );
    }
    (out, merged.rejected.is_empty())
}

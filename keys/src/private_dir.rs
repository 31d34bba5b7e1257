//! Directories only weft may look into (mode 0700).

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Makes `dir` a private directory: creates it with mode 0700, or tightens an existing
/// *empty* one to 0700 (a fresh hostPath or `mkdir -p` leaves 0755). A non-empty directory is
/// left alone: it may be shared (`--key-dir /tmp` must not lock everyone else out), and
/// whether its mode is acceptable is the caller's check. Returns whether the mode changed.
pub fn make_private_dir(dir: &Path) -> io::Result<bool> {
    if !dir.exists() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        return Ok(true);
    }
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 || std::fs::read_dir(dir)?.next().is_some() {
        return Ok(false);
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn creates_0700_tightens_an_empty_dir_and_leaves_a_used_one_alone() {
        let root = tempfile::tempdir().unwrap();
        let fresh = root.path().join("a/b");
        assert!(make_private_dir(&fresh).unwrap());
        assert_eq!(mode(&fresh), 0o700);

        let empty = root.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(make_private_dir(&empty).unwrap());
        assert_eq!(mode(&empty), 0o700);

        let used = root.path().join("used");
        std::fs::create_dir(&used).unwrap();
        std::fs::write(used.join("someone-else"), "x").unwrap();
        std::fs::set_permissions(&used, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(!make_private_dir(&used).unwrap());
        assert_eq!(mode(&used), 0o755);
    }
}

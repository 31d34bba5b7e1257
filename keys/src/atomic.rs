//! Atomic file replacement: write a temp file beside the target (created exclusively with the
//! final mode), fsync it, rename it over the target, fsync the directory. Readers see the old
//! content or the new, never a mix; a crash leaves at most a hidden temp file.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Atomically replaces `path` with `bytes`, the file created with permission bits `mode`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let temp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = write_then_rename(&temp, path, bytes, mode);
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result?;
    sync_dir(dir, path)
}

/// Makes the rename into `path` durable.
pub(crate) fn sync_dir(dir: &Path, path: &Path) -> io::Result<()> {
    if dir_sync_fault(path) {
        return Err(io::Error::other("injected directory fsync failure"));
    }
    File::open(dir)?.sync_all()
}

#[cfg(not(test))]
fn dir_sync_fault(_path: &Path) -> bool {
    false
}

#[cfg(test)]
use tests::dir_sync_fault;

fn write_then_rename(temp: &PathBuf, path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    // A temp file left by a crashed earlier attempt of this same process id is stale.
    let _ = std::fs::remove_file(temp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(temp, path)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::os::unix::fs::PermissionsExt;

    thread_local! {
        /// A target whose directory fsync fails after the rename (this thread only).
        static FAIL_DIR_SYNC: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
    }

    /// Makes the directory fsync after renaming into `path` fail on this thread (`None`: stop).
    pub(crate) fn fail_dir_sync(path: Option<PathBuf>) {
        FAIL_DIR_SYNC.with(|slot| *slot.borrow_mut() = path);
    }

    pub(super) fn dir_sync_fault(path: &Path) -> bool {
        FAIL_DIR_SYNC.with(|slot| slot.borrow().as_deref() == Some(path))
    }

    #[test]
    fn an_injected_dir_sync_failure_comes_after_the_rename() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("record.json");
        fail_dir_sync(Some(path.clone()));
        let result = write_atomic(&path, b"new", 0o600);
        fail_dir_sync(None);
        assert!(result.is_err());
        // The rename happened: the caller has to deal with a file it was told failed.
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
    }

    #[test]
    fn replaces_content_with_mode_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("record.json");
        write_atomic(&path, b"first", 0o600).unwrap();
        write_atomic(&path, b"second", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("record.json")]);
    }

    #[test]
    fn failure_leaves_the_old_file_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("sub");
        std::fs::create_dir(&target).unwrap();
        // Renaming a file over a non-empty directory fails.
        std::fs::write(target.join("keep"), b"x").unwrap();
        assert!(write_atomic(&target, b"new", 0o600).is_err());
        assert!(target.join("keep").exists());
        let temps = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".tmp")
            })
            .count();
        assert_eq!(temps, 0);
    }
}

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::{KeyError, PrivateKey, atomic};

/// Where node keys live unless configured otherwise.
pub const DEFAULT_KEY_DIR: &str = "/var/lib/weft/keys";
const PRIVATE_KEY_FILE: &str = "private.key";
/// A key file is 44 base64 characters and a newline; anything much larger is not a key.
const MAX_KEY_FILE_BYTES: u64 = 1024;

/// The on-disk key store: a directory (0700) holding `private.key` (0600, base64).
#[derive(Debug, Clone)]
pub struct KeyStore {
    dir: PathBuf,
}

impl KeyStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn private_key_path(&self) -> PathBuf {
        self.dir.join(PRIVATE_KEY_FILE)
    }

    pub fn exists(&self) -> bool {
        self.private_key_path().exists()
    }

    /// Loads the private key, refusing files others can read and anything that is not a key.
    /// Temp files that an interrupted write left behind are removed first.
    pub fn load(&self) -> Result<PrivateKey, KeyError> {
        self.sweep_stale_temps()?;
        self.load_file(&self.private_key_path())
    }

    /// Removes the temp files (`.<file>.<pid>.tmp`, see [`atomic::write_atomic`]) that a write
    /// of this store interrupted by a crash left behind: they may hold private key bytes. The
    /// temp file of another process that is still running is left alone (it may be a write in
    /// progress); this process's own are stale (its writes and loads never overlap).
    pub(crate) fn sweep_stale_temps(&self) -> Result<(), KeyError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| KeyError::Io { path, source }
        };
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(&self.dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io(&self.dir))?;
            let is_file = entry.file_type().is_ok_and(|t| t.is_file());
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(temp_file_pid) else {
                continue;
            };
            if is_file && !process_running(pid) {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(io(&path))?;
            }
        }
        Ok(())
    }

    /// Loads one key file of this store with the same checks as `load`.
    pub(crate) fn load_file(&self, path: &Path) -> Result<PrivateKey, KeyError> {
        let path = path.to_path_buf();
        let io = |source: std::io::Error| KeyError::Io {
            path: path.clone(),
            source,
        };
        self.check_dir()?;
        // Open first (never through a symlink), then check what was opened: no window between
        // the checks and the read in which the file could be swapped.
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(KeyError::NotFound { path });
            }
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(KeyError::NotAFile { path });
            }
            Err(e) => return Err(io(e)),
        };
        let metadata = file.metadata().map_err(io)?;
        if !metadata.is_file() {
            return Err(KeyError::NotAFile { path });
        }
        let mode = metadata.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyError::InsecurePermissions { path, mode });
        }
        if metadata.len() > MAX_KEY_FILE_BYTES {
            return Err(KeyError::TooLarge {
                path,
                len: metadata.len(),
            });
        }
        let mut text = Zeroizing::new(String::new());
        file.take(MAX_KEY_FILE_BYTES)
            .read_to_string(&mut text)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::InvalidData => KeyError::NotBase64 { path: path.clone() },
                _ => io(e),
            })?;
        decode_key(&path, &text)
    }

    /// Generates and stores a new key. Refuses to replace an existing one unless `force`, and
    /// even then while a rotation is pending; a replaced key's age starts over.
    pub fn generate(&self, force: bool) -> Result<PrivateKey, KeyError> {
        let path = self.private_key_path();
        if path.exists() {
            if !force {
                return Err(KeyError::AlreadyExists { path });
            }
            self.prepare_replace()?;
        }
        self.create_dir()?;
        let key = PrivateKey::generate();
        write_key(&path, &key).map_err(|source| KeyError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(key)
    }

    /// Loads the key, or generates one if there is none yet. The flag says it was created.
    pub fn load_or_generate(&self) -> Result<(PrivateKey, bool), KeyError> {
        match self.load() {
            Ok(key) => Ok((key, false)),
            Err(KeyError::NotFound { .. }) => Ok((self.generate(false)?, true)),
            Err(error) => Err(error),
        }
    }

    pub(crate) fn create_dir(&self) -> Result<(), KeyError> {
        let io = |source| KeyError::Io {
            path: self.dir.clone(),
            source,
        };
        crate::make_private_dir(&self.dir).map_err(io)?;
        self.check_dir()
    }

    /// A key directory others can write to could have its key swapped; refuse it.
    fn check_dir(&self) -> Result<(), KeyError> {
        match std::fs::metadata(&self.dir) {
            Ok(metadata) => {
                let mode = metadata.mode() & 0o7777;
                if mode & 0o022 != 0 {
                    return Err(KeyError::InsecureDirectory {
                        path: self.dir.clone(),
                        mode,
                    });
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(KeyError::NotFound {
                path: self.private_key_path(),
            }),
            Err(source) => Err(KeyError::Io {
                path: self.dir.clone(),
                source,
            }),
        }
    }
}

/// The files of a key store that are written through a temp file.
const STORE_FILES: [&str; 3] = [
    PRIVATE_KEY_FILE,
    crate::rotation::NEXT_KEY_FILE,
    crate::rotation::STATE_FILE,
];

/// The process id in the name of a temp file of one of the store's files.
fn temp_file_pid(name: &str) -> Option<u32> {
    let (file, pid) = name
        .strip_prefix('.')?
        .strip_suffix(".tmp")?
        .rsplit_once('.')?;
    if !STORE_FILES.contains(&file) || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Whether a process other than this one with that id is running. Without /proc nothing can
/// be told, and every other process counts as running.
fn process_running(pid: u32) -> bool {
    if pid == std::process::id() {
        return false;
    }
    let proc = Path::new("/proc");
    !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}

/// Writes `key` to `path` as a key file: base64 and a newline, mode 0600, atomically.
pub(crate) fn write_key(path: &Path, key: &PrivateKey) -> std::io::Result<()> {
    let mut text = Zeroizing::new(key.to_base64().as_str().to_owned());
    text.push('\n');
    atomic::write_atomic(path, text.as_bytes(), 0o600)
}

fn decode_key(path: &Path, text: &str) -> Result<PrivateKey, KeyError> {
    use base64::Engine as _;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    // Lenient about padding and trailing bits, so a key cut short reports its length.
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    let decoded = Zeroizing::new(
        LENIENT
            .decode(text.trim())
            .map_err(|_| KeyError::NotBase64 {
                path: path.to_path_buf(),
            })?,
    );
    let bytes: [u8; 32] = decoded
        .as_slice()
        .try_into()
        .map_err(|_| KeyError::WrongLength {
            path: path.to_path_buf(),
            len: decoded.len(),
        })?;
    Ok(PrivateKey::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn store() -> (tempfile::TempDir, KeyStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path().join("keys"));
        (dir, store)
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn generate_then_load_gives_the_same_key_with_strict_modes() {
        let (_tmp, store) = store();
        let key = store.generate(false).unwrap();
        assert_eq!(store.load().unwrap().public_key(), key.public_key());
        assert_eq!(mode(store.dir()), 0o700);
        assert_eq!(mode(&store.private_key_path()), 0o600);
    }

    #[test]
    fn generate_refuses_to_overwrite_unless_forced() {
        let (_tmp, store) = store();
        let first = store.generate(false).unwrap().public_key();
        assert!(matches!(
            store.generate(false),
            Err(KeyError::AlreadyExists { .. })
        ));
        assert_eq!(store.load().unwrap().public_key(), first);
        let second = store.generate(true).unwrap().public_key();
        assert_ne!(first, second);
        assert_eq!(store.load().unwrap().public_key(), second);
    }

    #[test]
    fn load_or_generate_creates_once() {
        let (_tmp, store) = store();
        let (key, created) = store.load_or_generate().unwrap();
        assert!(created);
        let (again, created) = store.load_or_generate().unwrap();
        assert!(!created);
        assert_eq!(key.public_key(), again.public_key());
    }

    #[test]
    fn readable_by_others_is_refused_with_the_fix() {
        for bad in [0o644, 0o640, 0o604, 0o660] {
            let (_tmp, store) = store();
            store.generate(false).unwrap();
            let path = store.private_key_path();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(bad)).unwrap();
            let error = store.load().unwrap_err();
            assert!(
                matches!(error, KeyError::InsecurePermissions { .. }),
                "{bad:o}"
            );
            assert!(error.to_string().contains("chmod 600"));
        }
    }

    fn write_key_file(store: &KeyStore, contents: &[u8]) {
        std::fs::create_dir_all(store.dir()).unwrap();
        std::fs::set_permissions(store.dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
        atomic::write_atomic(&store.private_key_path(), contents, 0o600).unwrap();
    }

    #[test]
    fn truncated_garbage_empty_and_missing_keys_are_typed_errors() {
        use base64::Engine as _;
        let (_tmp, store) = store();
        assert!(matches!(store.load(), Err(KeyError::NotFound { .. })));
        let short = base64::engine::general_purpose::STANDARD.encode([9u8; 16]);
        write_key_file(&store, short.as_bytes());
        assert!(matches!(
            store.load(),
            Err(KeyError::WrongLength { len: 16, .. })
        ));
        write_key_file(&store, b"this is not base64!\n");
        assert!(matches!(store.load(), Err(KeyError::NotBase64 { .. })));
        write_key_file(&store, &[0xff, 0xfe, 0x00]);
        assert!(matches!(store.load(), Err(KeyError::NotBase64 { .. })));
        write_key_file(&store, b"");
        assert!(matches!(
            store.load(),
            Err(KeyError::WrongLength { len: 0, .. })
        ));
        write_key_file(&store, &[b'A'; 4096]);
        assert!(matches!(store.load(), Err(KeyError::TooLarge { .. })));
    }

    #[test]
    fn a_key_file_that_is_no_key_says_what_to_do() {
        let (_tmp, store) = store();
        for garbage in [&b"c2hvcnQ="[..], b"this is not base64!\n", &[b'A'; 4096]] {
            write_key_file(&store, garbage);
            let message = store.load().unwrap_err().to_string();
            assert!(message.contains("restore it from a backup"), "{message}");
            assert!(message.contains("weft key generate --force"), "{message}");
        }
    }

    #[test]
    fn error_messages_never_contain_key_material() {
        let (_tmp, store) = store();
        let key = store.generate(false).unwrap();
        std::fs::set_permissions(
            store.private_key_path(),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let message = store.load().unwrap_err().to_string();
        assert!(!message.contains(key.to_base64().as_str()));
    }

    /// A process id no process can have (above the kernel's largest `pid_max`).
    const DEAD_PID: u32 = 4_194_304;

    #[test]
    fn temp_files_of_the_store_are_recognised_by_name() {
        assert_eq!(temp_file_pid(".next.key.42.tmp"), Some(42));
        assert_eq!(temp_file_pid(".private.key.1.tmp"), Some(1));
        assert_eq!(temp_file_pid(".rotation.json.7.tmp"), Some(7));
        for other in [
            ".other.42.tmp",
            "next.key.42.tmp",
            ".next.key.x.tmp",
            ".next.key.+4.tmp",
        ] {
            assert_eq!(temp_file_pid(other), None, "{other}");
        }
    }

    #[test]
    fn load_sweeps_temp_files_a_crashed_write_left() {
        let (_tmp, store) = store();
        let key = store.generate(false).unwrap();
        let secret = key.to_base64().as_str().to_owned();
        let dead = store.dir().join(format!(".next.key.{DEAD_PID}.tmp"));
        let own = store
            .dir()
            .join(format!(".private.key.{}.tmp", std::process::id()));
        // pid 1 always runs: its write may be in progress.
        let live = store.dir().join(".rotation.json.1.tmp");
        let unrelated = store.dir().join(".notes.1234.tmp");
        for path in [&dead, &own, &live, &unrelated] {
            std::fs::write(path, &secret).unwrap();
        }
        assert_eq!(store.load().unwrap().public_key(), key.public_key());
        assert!(!dead.exists(), "the temp file of a dead process stayed");
        assert!(!own.exists(), "a stale temp file of this process id stayed");
        assert!(
            live.exists(),
            "the temp file of a running process was removed"
        );
        assert!(
            unrelated.exists(),
            "a file that is not the store's was removed"
        );
    }

    #[test]
    fn a_key_cut_short_reports_its_length() {
        let (_tmp, store) = store();
        let key = store.generate(false).unwrap();
        let full = key.to_base64();
        for keep in [42, 40, 30] {
            write_key_file(&store, &full.as_bytes()[..keep]);
            let error = store.load().unwrap_err();
            assert!(
                matches!(error, KeyError::WrongLength { .. }),
                "{keep} chars: {error}"
            );
            assert!(error.to_string().contains("truncated"));
        }
    }

    #[test]
    fn a_symlinked_key_file_is_refused() {
        let (tmp, store) = store();
        store.generate(false).unwrap();
        let elsewhere = tmp.path().join("elsewhere.key");
        std::fs::rename(store.private_key_path(), &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, store.private_key_path()).unwrap();
        let error = store.load().unwrap_err();
        assert!(matches!(error, KeyError::NotAFile { .. }), "{error}");
    }

    #[test]
    fn group_writable_directory_is_refused() {
        let (_tmp, store) = store();
        store.generate(false).unwrap();
        std::fs::set_permissions(store.dir(), std::fs::Permissions::from_mode(0o770)).unwrap();
        assert!(matches!(
            store.load(),
            Err(KeyError::InsecureDirectory { .. })
        ));
    }
}

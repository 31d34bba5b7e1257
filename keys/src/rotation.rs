//! Key rotation on disk: the next key beside the current one, and the key epoch.
//!
//! Files in the key directory: `private.key` (current), `next.key` (only while rotating) and
//! `rotation.json` (`{"epoch":N,"currentSince":T,"pending":null|{"nextPublicKey":..,
//! "startedAt":..,"graceSecs":..,"announcedAt":..}}`; `currentSince`: when the current key
//! became current; `announcedAt`: when the announcement was first published, absent until
//! then: the grace period counts from it).
//! Every write is atomic and each step has one commit point, so a crash anywhere leaves a
//! state `load_rotation` resolves without losing a key that peers may already know:
//!
//! - begin: `rotation.json` (pending, epoch + 1) is written first, then `next.key`. Pending with
//!   no `next.key` and a current key that is not the pending one means the crash came before
//!   the announcement (which is only published after both writes): the pending entry is dropped.
//! - complete: `next.key` is renamed over `private.key` (the old private key is gone from the
//!   directory at that instant), then `rotation.json` loses its pending entry. Pending whose
//!   next key is already the current key means the crash came between: the rotation is done.
//! - `next.key` with no pending entry was never announced (nothing writes it that way); it is
//!   deleted.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{KeyError, KeyStore, PrivateKey, PublicKey, atomic};

const NEXT_KEY_FILE: &str = "next.key";
const STATE_FILE: &str = "rotation.json";
/// A state file is a few hundred bytes; anything much larger is not one.
const MAX_STATE_FILE_BYTES: u64 = 4096;

/// A rotation that has been announced and not yet completed.
#[derive(Debug)]
pub struct PendingRotation {
    pub next: PrivateKey,
    /// Unix seconds when the rotation began (the next key was stored).
    pub started_at: u64,
    /// How long peers get to move to the next key before it becomes current regardless,
    /// counted from `announced_at`.
    pub grace_secs: u64,
    /// Unix seconds when the announcement was first published (`None`: not yet).
    pub announced_at: Option<u64>,
}

/// The rotation state of a key directory.
#[derive(Debug)]
pub struct RotationState {
    /// Raised by one at every announced rotation; never goes down.
    pub epoch: u64,
    /// Unix seconds since the current key is the current one (`private.key`'s modification
    /// time for a key no rotation made).
    pub current_since: u64,
    pub pending: Option<PendingRotation>,
}

/// Unknown fields are ignored (not refused), so an older weft can still read a state file a
/// newer one wrote, after a rollback.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StateFile {
    epoch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    current_since: Option<u64>,
    pending: Option<PendingFile>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PendingFile {
    next_public_key: String,
    started_at: u64,
    grace_secs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    announced_at: Option<u64>,
}

impl KeyStore {
    pub fn next_key_path(&self) -> PathBuf {
        self.dir().join(NEXT_KEY_FILE)
    }

    pub fn rotation_state_path(&self) -> PathBuf {
        self.dir().join(STATE_FILE)
    }

    /// Reads the rotation state for `current` (the loaded `private.key`), finishing or undoing
    /// what a crash left half-done (see the module documentation).
    pub fn load_rotation(&self, current: &PrivateKey) -> Result<RotationState, KeyError> {
        self.sweep_stale_temps()?;
        let mut state = self.read_state()?;
        let next_path = self.next_key_path();
        let next = match self.load_file(&next_path) {
            Ok(key) => Some(key),
            Err(KeyError::NotFound { .. }) => None,
            Err(error) => return Err(error),
        };
        let current_public = current.public_key().to_string();
        match (state.pending.clone(), next) {
            (Some(pending), Some(next)) => {
                if next.public_key().to_string() != pending.next_public_key {
                    return Err(KeyError::RotationState {
                        path: next_path,
                        reason: "next.key is not the key rotation.json announced",
                    });
                }
                return Ok(RotationState {
                    epoch: state.epoch,
                    current_since: self.current_since(&state),
                    pending: Some(PendingRotation {
                        next,
                        started_at: pending.started_at,
                        grace_secs: pending.grace_secs,
                        announced_at: pending.announced_at,
                    }),
                });
            }
            (Some(pending), None) => {
                // Completed (the next key is current now) or never announced: either way
                // nothing is pending any more.
                let completed = pending.next_public_key == current_public;
                state.pending = None;
                if completed {
                    // The crash came before the completion time was written: the key file
                    // (the renamed next.key) tells when the rotation began, near enough.
                    state.current_since = None;
                }
                self.write_state(&state)?;
                if !completed {
                    return Ok(RotationState {
                        epoch: state.epoch,
                        current_since: self.current_since(&state),
                        pending: None,
                    });
                }
            }
            (None, Some(_)) => {
                std::fs::remove_file(&next_path).map_err(|source| KeyError::Io {
                    path: next_path.clone(),
                    source,
                })?;
            }
            (None, None) => {}
        }
        Ok(RotationState {
            epoch: state.epoch,
            current_since: self.current_since(&state),
            pending: None,
        })
    }

    /// Generates the next key and stores it beside the current one: the pending entry (with a
    /// raised epoch) first, then `next.key`. Refuses while a rotation is pending.
    pub fn begin_rotation(
        &self,
        started_at: u64,
        grace_secs: u64,
    ) -> Result<RotationState, KeyError> {
        let mut state = self.read_state()?;
        if state.pending.is_some() || self.next_key_path().exists() {
            return Err(KeyError::RotationInProgress {
                path: self.next_key_path(),
            });
        }
        self.create_dir()?;
        let next = PrivateKey::generate();
        state.epoch = state.epoch.saturating_add(1);
        state.pending = Some(PendingFile {
            next_public_key: next.public_key().to_string(),
            started_at,
            grace_secs,
            announced_at: None,
        });
        self.write_state(&state)?;
        let path = self.next_key_path();
        let mut text = Zeroizing::new(next.to_base64().as_str().to_owned());
        text.push('\n');
        if let Err(source) = atomic::write_atomic(&path, text.as_bytes(), 0o600) {
            // The write may have failed after its rename (the directory fsync): remove a
            // next.key that got into place (none was there before), then withdraw the pending
            // entry (the raised epoch stays: epochs never go down), so a later rotation is not
            // refused for one that never started.
            let _ = std::fs::remove_file(&path);
            state.pending = None;
            let _ = self.write_state(&state);
            return Err(KeyError::Io { path, source });
        }
        Ok(RotationState {
            epoch: state.epoch,
            current_since: self.current_since(&state),
            pending: Some(PendingRotation {
                next,
                started_at,
                grace_secs,
                announced_at: None,
            }),
        })
    }

    /// Records when the pending rotation's announcement was first published (the grace period
    /// counts from then). A time already recorded is kept; without a pending rotation this
    /// does nothing.
    pub fn mark_announced(&self, at: u64) -> Result<(), KeyError> {
        let mut state = self.read_state()?;
        match state.pending.as_mut() {
            Some(pending) if pending.announced_at.is_none() => {
                pending.announced_at = Some(at);
                self.write_state(&state)
            }
            _ => Ok(()),
        }
    }

    /// Makes the next key the current one: `next.key` replaces `private.key` (one rename, so
    /// the old private key leaves the directory at once), then the pending entry goes.
    pub fn complete_rotation(&self, now: u64) -> Result<PrivateKey, KeyError> {
        let mut state = self.read_state()?;
        let next_path = self.next_key_path();
        let announced = state.pending.as_ref().map(|p| p.next_public_key.clone());
        let next = match self.load_file(&next_path) {
            Ok(key) => key,
            Err(KeyError::NotFound { .. }) => {
                // An earlier attempt renamed it and failed after: finish that one.
                let current = self.load()?;
                if announced != Some(current.public_key().to_string()) {
                    return Err(KeyError::RotationState {
                        path: next_path,
                        reason: "next.key is missing and private.key is not the announced key",
                    });
                }
                state.pending = None;
                state.current_since = Some(now);
                self.write_state(&state)?;
                return Ok(current);
            }
            Err(error) => return Err(error),
        };
        let announced = announced.as_deref();
        if announced != Some(next.public_key().to_string().as_str()) {
            return Err(KeyError::RotationState {
                path: next_path,
                reason: "next.key was not announced in rotation.json",
            });
        }
        let private_path = self.private_key_path();
        let io = |path: &PathBuf| {
            let path = path.clone();
            move |source| KeyError::Io { path, source }
        };
        std::fs::rename(&next_path, &private_path).map_err(io(&private_path))?;
        std::fs::File::open(self.dir())
            .and_then(|dir| dir.sync_all())
            .map_err(io(&self.dir().to_path_buf()))?;
        state.pending = None;
        state.current_since = Some(now);
        self.write_state(&state)?;
        Ok(next)
    }

    /// Before `private.key` is replaced outside a rotation: refuses while a rotation is
    /// pending, and drops the recorded key age so the new key's age is its file's (a crash
    /// before the key is written leaves the old key aged by its file, which is its own age).
    pub(crate) fn prepare_replace(&self) -> Result<(), KeyError> {
        let mut state = self.read_state()?;
        let next_path = self.next_key_path();
        if state.pending.is_some() || next_path.exists() {
            let path = if next_path.exists() {
                next_path
            } else {
                self.rotation_state_path()
            };
            return Err(KeyError::ReplaceWhileRotating { path });
        }
        if state.current_since.take().is_some() {
            self.write_state(&state)?;
        }
        Ok(())
    }

    /// The public key the pending rotation announced, if any (no private key is read).
    pub fn announced_next_key(&self) -> Result<Option<PublicKey>, KeyError> {
        let state = self.read_state()?;
        let path = self.rotation_state_path();
        state
            .pending
            .map(|p| {
                PublicKey::from_base64(&p.next_public_key).map_err(|_| KeyError::RotationState {
                    path,
                    reason: "nextPublicKey is not a public key",
                })
            })
            .transpose()
    }

    /// When the current key became current: recorded at a rotation's completion, else the
    /// key file's modification time (0 if even that is unknown).
    fn current_since(&self, state: &StateFile) -> u64 {
        state.current_since.unwrap_or_else(|| {
            std::fs::metadata(self.private_key_path())
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs())
        })
    }

    fn read_state(&self) -> Result<StateFile, KeyError> {
        let path = self.rotation_state_path();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(StateFile::default()),
            Err(source) => return Err(KeyError::Io { path, source }),
        };
        if bytes.len() as u64 > MAX_STATE_FILE_BYTES {
            return Err(KeyError::RotationState {
                path,
                reason: "the file is too large",
            });
        }
        serde_json::from_slice(&bytes).map_err(|_| KeyError::RotationState {
            path,
            reason: "not the JSON weft writes there",
        })
    }

    fn write_state(&self, state: &StateFile) -> Result<(), KeyError> {
        let path = self.rotation_state_path();
        let mut bytes = serde_json::to_vec(state).map_err(|_| KeyError::RotationState {
            path: path.clone(),
            reason: "cannot encode the state",
        })?;
        bytes.push(b'\n');
        atomic::write_atomic(&path, &bytes, 0o600).map_err(|source| KeyError::Io { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, KeyStore, PrivateKey) {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path().join("keys"));
        let current = store.generate(false).unwrap();
        (dir, store, current)
    }

    /// A file's modification time in Unix seconds, read independently of the store.
    fn modified_secs(path: &std::path::Path) -> u64 {
        std::fs::metadata(path)
            .unwrap()
            .modified()
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn files(store: &KeyStore) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(store.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_fresh_store_is_at_epoch_zero_with_nothing_pending() {
        let (_dir, store, current) = store();
        let state = store.load_rotation(&current).unwrap();
        assert_eq!(state.epoch, 0);
        assert!(state.pending.is_none());
        // A key no rotation made is as old as its file.
        assert_eq!(
            state.current_since,
            modified_secs(&store.private_key_path())
        );
    }

    #[test]
    fn begin_then_complete_replaces_the_key_and_raises_the_epoch() {
        let (_dir, store, current) = store();
        let old_text = std::fs::read_to_string(store.private_key_path()).unwrap();
        let begun = store.begin_rotation(1000, 300).unwrap();
        let next_public = begun.pending.as_ref().unwrap().next.public_key();
        assert_eq!(begun.epoch, 1);
        assert_ne!(next_public, current.public_key());
        assert_eq!(files(&store), ["next.key", "private.key", "rotation.json"]);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(store.next_key_path())
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(store.announced_next_key().unwrap(), Some(next_public));

        // Loading again (a restart) resumes the same rotation.
        let resumed = store.load_rotation(&current).unwrap();
        let pending = resumed.pending.unwrap();
        assert_eq!(pending.next.public_key(), next_public);
        assert_eq!((pending.started_at, pending.grace_secs), (1000, 300));

        let now_current = store.complete_rotation(5000).unwrap();
        assert_eq!(now_current.public_key(), next_public);
        assert_eq!(store.load().unwrap().public_key(), next_public);
        assert_eq!(files(&store), ["private.key", "rotation.json"]);
        for name in files(&store) {
            let text = std::fs::read_to_string(store.dir().join(name)).unwrap();
            assert!(
                !text.contains(old_text.trim()),
                "the old private key is still on disk"
            );
        }
        let after = store.load_rotation(&now_current).unwrap();
        assert_eq!(after.epoch, 1);
        assert_eq!(after.current_since, 5000);
        assert!(after.pending.is_none());
        assert_eq!(store.begin_rotation(2000, 300).unwrap().epoch, 2);
    }

    #[test]
    fn the_first_publication_time_is_kept_across_a_restart_and_older_files_still_read() {
        let (_dir, store, current) = store();
        store.begin_rotation(1000, 300).unwrap();
        let pending = store.load_rotation(&current).unwrap().pending.unwrap();
        assert_eq!(pending.announced_at, None, "not published yet");
        let text = std::fs::read_to_string(store.rotation_state_path()).unwrap();
        assert!(!text.contains("announcedAt"), "{text}");

        store.mark_announced(1500).unwrap();
        // Only the first publication counts.
        store.mark_announced(1600).unwrap();
        let pending = store.load_rotation(&current).unwrap().pending.unwrap();
        assert_eq!(pending.announced_at, Some(1500));
        assert_eq!((pending.started_at, pending.grace_secs), (1000, 300));

        // An older weft reads the file (it ignores the field it does not know).
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct OldPending {
            started_at: u64,
        }
        #[derive(Deserialize)]
        struct OldState {
            epoch: u64,
            pending: Option<OldPending>,
        }
        let text = std::fs::read_to_string(store.rotation_state_path()).unwrap();
        assert!(text.contains(r#""announcedAt":1500"#), "{text}");
        let old: OldState = serde_json::from_str(&text).unwrap();
        assert_eq!((old.epoch, old.pending.unwrap().started_at), (1, 1000));
    }

    #[test]
    fn a_second_rotation_while_one_is_pending_is_refused() {
        let (_dir, store, _current) = store();
        store.begin_rotation(1, 1).unwrap();
        let error = store.begin_rotation(2, 1).unwrap_err();
        assert!(matches!(error, KeyError::RotationInProgress { .. }));
        assert!(error.to_string().contains("already in progress"));
    }

    #[test]
    fn a_forced_generate_is_refused_while_rotating_and_restarts_the_key_age() {
        let (_dir, store, current) = store();
        store.begin_rotation(1, 1).unwrap();
        let error = store.generate(true).unwrap_err();
        assert!(
            matches!(error, KeyError::ReplaceWhileRotating { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("in progress"), "{error}");
        assert_eq!(store.load().unwrap().public_key(), current.public_key());
        assert!(store.load_rotation(&current).unwrap().pending.is_some());

        // Completed at t=5000: the key age is recorded. A replacement starts it over.
        let rotated = store.complete_rotation(5000).unwrap();
        assert_eq!(store.load_rotation(&rotated).unwrap().current_since, 5000);
        let replaced = store.generate(true).unwrap();
        let state = store.load_rotation(&replaced).unwrap();
        assert_eq!(
            state.current_since,
            modified_secs(&store.private_key_path())
        );
        assert!(state.current_since > 5000);
        assert_eq!(state.epoch, 1);
    }

    #[test]
    fn a_crash_after_the_rename_reads_as_completed() {
        let (_dir, store, _old) = store();
        // An earlier rotation completed at t=5000 (so the state holds an old key age).
        store.begin_rotation(1, 1).unwrap();
        store.complete_rotation(5000).unwrap();
        let next = store.begin_rotation(6000, 1).unwrap().pending.unwrap().next;
        // The rename of complete_rotation happened, the state write did not.
        std::fs::rename(store.next_key_path(), store.private_key_path()).unwrap();
        let current = store.load().unwrap();
        assert_eq!(current.public_key(), next.public_key());
        let state = store.load_rotation(&current).unwrap();
        assert!(state.pending.is_none());
        assert_eq!(state.epoch, 2);
        // The key's age is the renamed file's, not the old key's (which would make a
        // scheduled rotation start again at once).
        assert_eq!(
            state.current_since,
            modified_secs(&store.private_key_path())
        );
        assert_eq!(store.announced_next_key().unwrap(), None);
    }

    #[test]
    fn a_crash_before_next_key_was_written_drops_the_unannounced_rotation() {
        let (_dir, store, current) = store();
        store.begin_rotation(1, 1).unwrap();
        std::fs::remove_file(store.next_key_path()).unwrap();
        let state = store.load_rotation(&current).unwrap();
        assert!(state.pending.is_none());
        assert_eq!(store.load().unwrap().public_key(), current.public_key());
        // The epoch never goes down, so the next rotation gets a fresh one.
        assert_eq!(store.begin_rotation(2, 1).unwrap().epoch, 2);
    }

    #[test]
    fn a_next_key_nobody_announced_is_deleted() {
        let (_dir, store, current) = store();
        std::fs::write(store.next_key_path(), "garbage").unwrap();
        let mode = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600);
        std::fs::set_permissions(store.next_key_path(), mode).unwrap();
        // Garbage in next.key is refused as a key before anything else.
        assert!(store.load_rotation(&current).is_err());
        std::fs::write(
            store.next_key_path(),
            PrivateKey::generate().to_base64().as_str(),
        )
        .unwrap();
        let state = store.load_rotation(&current).unwrap();
        assert!(state.pending.is_none());
        assert!(!store.next_key_path().exists());
    }

    #[test]
    fn a_corrupt_state_file_is_a_clear_error() {
        let (_dir, store, current) = store();
        std::fs::write(store.rotation_state_path(), "{not json").unwrap();
        let error = store.load_rotation(&current).unwrap_err();
        assert!(error.to_string().contains("rotation.json"), "{error}");
    }

    #[test]
    fn a_next_key_that_does_not_match_the_announcement_is_refused() {
        let (_dir, store, current) = store();
        store.begin_rotation(1, 1).unwrap();
        std::fs::write(
            store.next_key_path(),
            PrivateKey::generate().to_base64().as_str(),
        )
        .unwrap();
        assert!(matches!(
            store.load_rotation(&current),
            Err(KeyError::RotationState { .. })
        ));
        assert!(store.complete_rotation(5000).is_err());
        assert_eq!(store.load().unwrap().public_key(), current.public_key());
    }

    #[test]
    fn completing_again_after_a_failure_past_the_rename_finishes_the_rotation() {
        let (_dir, store, _old) = store();
        let next = store.begin_rotation(1, 1).unwrap().pending.unwrap().next;
        // The rename happened, the state write did not (say the disk filled up).
        std::fs::rename(store.next_key_path(), store.private_key_path()).unwrap();
        let current = store.complete_rotation(5000).unwrap();
        assert_eq!(current.public_key(), next.public_key());
        assert_eq!(store.announced_next_key().unwrap(), None);
        assert_eq!(store.begin_rotation(2, 1).unwrap().epoch, 2);
    }

    #[test]
    fn a_next_key_write_that_fails_after_its_rename_leaves_no_next_key() {
        let (_dir, store, current) = store();
        // The rename into next.key succeeds, the directory fsync after it fails.
        crate::atomic::tests::fail_dir_sync(Some(store.next_key_path()));
        let result = store.begin_rotation(1, 1);
        crate::atomic::tests::fail_dir_sync(None);
        let error = result.unwrap_err();
        assert!(error.to_string().contains("next.key"), "{error}");
        assert!(!store.next_key_path().exists(), "next.key was left behind");
        assert_eq!(store.announced_next_key().unwrap(), None);
        // Not wedged: the next rotation starts (without a restart in between).
        assert_eq!(store.begin_rotation(2, 1).unwrap().epoch, 2);
        assert!(store.load_rotation(&current).unwrap().pending.is_some());
    }

    #[test]
    fn loading_the_rotation_sweeps_the_temp_file_of_a_crashed_next_key_write() {
        let (_dir, store, current) = store();
        // A crash while writing next.key: its temp file holds the private key bytes.
        let temp = store.dir().join(".next.key.4194304.tmp");
        std::fs::write(&temp, PrivateKey::generate().to_base64().as_str()).unwrap();
        let state = store.load_rotation(&current).unwrap();
        assert!(state.pending.is_none());
        assert_eq!(files(&store), ["private.key"]);
    }

    #[test]
    fn a_failed_next_key_write_withdraws_the_rotation() {
        let (_dir, store, current) = store();
        // A directory where the temp file for next.key goes makes that write fail (after
        // rotation.json was written), even for root.
        let blocker = store
            .dir()
            .join(format!(".next.key.{}.tmp", std::process::id()));
        std::fs::create_dir(&blocker).unwrap();
        let error = store.begin_rotation(1, 1).unwrap_err();
        assert!(error.to_string().contains("next.key"), "{error}");
        assert_eq!(store.announced_next_key().unwrap(), None);
        assert!(!store.next_key_path().exists());
        std::fs::remove_dir(&blocker).unwrap();
        let state = store.load_rotation(&current).unwrap();
        assert!(state.pending.is_none());
        // Not refused as "already in progress", and the epoch never goes down.
        assert_eq!(store.begin_rotation(2, 1).unwrap().epoch, 2);
    }
}

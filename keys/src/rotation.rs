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

use crate::store::write_key;
use serde::{Deserialize, Serialize};

use crate::{KeyError, KeyStore, PrivateKey, PublicKey, atomic};

pub(crate) const NEXT_KEY_FILE: &str = "next.key";
pub(crate) const STATE_FILE: &str = "rotation.json";
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
        if let Err(source) = write_key(&path, &next) {
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
        atomic::sync_dir(self.dir(), &private_path).map_err(io(&self.dir().to_path_buf()))?;
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
#[path = "rotation_tests.rs"]
mod tests;

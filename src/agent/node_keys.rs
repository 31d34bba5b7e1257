//! The agent's keys and their rotation. The order of every step is what keeps a crash
//! harmless: the key directory first (it is what a restart resumes from), then the
//! datapath (so handshakes to the next key are accepted before anyone learns it), then the
//! published record.

use std::time::Duration;

use weft_keys::{KeyError, KeyStore, PrivateKey, PublicKey};

use crate::rotation::{
    CompletedView, CompletionReason, KeyStatus, Observed, Rotation, RotationView,
};

/// The grace period of scheduled rotations (and the CLI's default).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(300);
/// Shortest and longest grace period a rotation accepts.
pub const MIN_GRACE: Duration = Duration::from_secs(1);
pub const MAX_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);

pub(crate) struct NodeKeys {
    store: KeyStore,
    current: PrivateKey,
    /// The next key and its rotation, while one is in progress.
    pending: Option<Pending>,
    epoch: u64,
    /// Unix seconds since the current key is current.
    current_since: u64,
    /// Rotate on its own once the current key is this old.
    interval: Option<Duration>,
    last: Option<CompletedView>,
    last_error: Option<String>,
}

pub(crate) use crate::rotation::unix_now;

struct Pending {
    next: PrivateKey,
    rotation: Rotation,
}

impl Pending {
    /// The rotation to epoch `epoch` the key directory holds.
    fn from_store(epoch: u64, stored: weft_keys::PendingRotation) -> Self {
        let rotation = Rotation {
            epoch,
            next_public_key: stored.next.public_key().to_string(),
            started_at: stored.started_at,
            grace_secs: stored.grace_secs,
            announced_at: stored.announced_at,
        };
        Self {
            next: stored.next,
            rotation,
        }
    }
}

impl NodeKeys {
    /// Loads (or creates) the node key and resumes a rotation the key directory shows pending.
    pub fn load(store: KeyStore, interval: Option<Duration>) -> Result<(Self, bool), KeyError> {
        let (current, created) = store.load_or_generate()?;
        let state = store.load_rotation(&current)?;
        let keys = Self {
            store,
            current,
            pending: state.pending.map(|p| Pending::from_store(state.epoch, p)),
            epoch: state.epoch,
            current_since: state.current_since,
            interval,
            last: None,
            last_error: None,
        };
        Ok((keys, created))
    }

    pub fn current(&self) -> &PrivateKey {
        &self.current
    }

    pub fn next(&self) -> Option<&PrivateKey> {
        self.pending.as_ref().map(|p| &p.next)
    }

    pub fn public_key(&self) -> PublicKey {
        self.current.public_key()
    }

    pub fn next_public_key(&self) -> Option<PublicKey> {
        self.next().map(PrivateKey::public_key)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn rotation(&self) -> Option<&Rotation> {
        self.pending.as_ref().map(|p| &p.rotation)
    }

    /// When the next scheduled rotation is due (Unix seconds), if rotations are scheduled and
    /// none is in progress. A key age from the future (a clock that was wrong) counts from now.
    pub fn next_scheduled(&self) -> Option<u64> {
        if self.pending.is_some() {
            return None;
        }
        let since = self.current_since.min(unix_now());
        self.interval
            .map(|i| crate::rotation::scheduled_at(since, i.as_secs()))
    }

    /// Generates and stores the next key. The caller then hands both keys to the datapath and
    /// publishes the record.
    pub fn begin(&mut self, grace: Duration) -> Result<&Rotation, String> {
        if let Some(rotation) = self.rotation() {
            return Err(format!(
                "a key rotation is already in progress (epoch {}); `weft key status` shows its progress",
                rotation.epoch
            ));
        }
        if !(MIN_GRACE..=MAX_GRACE).contains(&grace) {
            return Err(format!(
                "grace period {} is out of range ({} to {})",
                humantime::format_duration(grace),
                humantime::format_duration(MIN_GRACE),
                humantime::format_duration(MAX_GRACE)
            ));
        }
        let now = unix_now();
        let state = self
            .store
            .begin_rotation(now, grace.as_secs())
            .map_err(|e| self.failed(format!("cannot store the next key: {e}")))?;
        let Some(pending) = state.pending else {
            return Err(self.failed("the key store did not return the next key".into()));
        };
        self.epoch = state.epoch;
        self.last_error = None;
        let pending = self
            .pending
            .insert(Pending::from_store(state.epoch, pending));
        Ok(&pending.rotation)
    }

    /// The pending rotation's announcement has been published (at `now`), unless that was
    /// recorded already: the grace period counts from the first publication. The time is kept
    /// in the key directory, so a restart does not start the grace period over.
    pub fn mark_announced(&mut self, now: u64) {
        let Some(rotation) = self.pending.as_mut().map(|p| &mut p.rotation) else {
            return;
        };
        if rotation.announced_at.is_some() {
            return;
        }
        rotation.announced_at = Some(now);
        let epoch = rotation.epoch;
        tracing::info!(
            epoch,
            announced_at = now,
            "key rotation announcement published"
        );
        if let Err(error) = self.store.mark_announced(now) {
            // Kept in memory all the same; after a restart the grace period starts over at the
            // first publication then (longer, never shorter).
            self.failed(format!(
                "cannot record when the announcement was published: {error}"
            ));
        }
    }

    /// Makes the next key current on disk (the old private key leaves the directory). The
    /// caller then gives the datapath the new key alone and publishes the record.
    pub fn complete(
        &mut self,
        reason: CompletionReason,
        unmoved: Vec<String>,
    ) -> Result<(), String> {
        let Some(epoch) = self.rotation().map(|r| r.epoch) else {
            return Ok(());
        };
        let now = unix_now();
        let new = self
            .store
            .complete_rotation(now)
            .map_err(|e| self.failed(format!("cannot make the next key current: {e}")))?;
        self.current = new;
        self.current_since = now;
        self.pending = None;
        self.last_error = None;
        self.last = Some(CompletedView {
            epoch,
            completed_at: now,
            reason,
            unmoved_peers: unmoved,
        });
        Ok(())
    }

    /// Records a failure for `weft key status` and returns it.
    pub fn failed(&mut self, error: String) -> String {
        tracing::error!(%error, "key rotation");
        self.last_error = Some(error.clone());
        error
    }

    /// `published`: whether the registry holds the own record as the keys are now.
    pub fn status(&self, observed: Observed<'_>, published: bool) -> KeyStatus {
        KeyStatus {
            public_key: self.public_key().to_string(),
            next_public_key: self.next_public_key().map(|k| k.to_string()),
            key_epoch: self.epoch,
            current_since: self.current_since,
            next_scheduled_rotation: self.next_scheduled(),
            rotation: self.rotation().map(|r| RotationView::new(r, observed)),
            last_rotation: self.last.clone(),
            published,
            last_error: self.last_error.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn keys() -> (tempfile::TempDir, NodeKeys) {
        let dir = tempfile::tempdir().unwrap();
        let (keys, created) = NodeKeys::load(KeyStore::new(dir.path().join("keys")), None).unwrap();
        assert!(created);
        (dir, keys)
    }

    fn observed(peers: &BTreeSet<String>) -> Observed<'_> {
        Observed {
            synced: true,
            peers,
            progress: None,
            now: unix_now(),
        }
    }

    #[test]
    fn a_rotation_announces_then_replaces_the_key() {
        let (dir, mut keys) = keys();
        let old = keys.public_key();
        let rotation = keys.begin(Duration::from_secs(60)).unwrap().clone();
        assert_eq!(rotation.epoch, 1);
        let next = keys.next_public_key().unwrap();
        assert_eq!(rotation.next_public_key, next.to_string());
        assert_eq!(keys.public_key(), old);

        let peers: BTreeSet<String> = ["n2".to_string()].into();
        let status = keys.status(observed(&peers), true);
        assert_eq!(status.next_public_key, Some(next.to_string()));
        assert_eq!(status.rotation.as_ref().unwrap().pending_peers, vec!["n2"]);

        // A restart in between resumes the same rotation from disk.
        let (resumed, created) =
            NodeKeys::load(KeyStore::new(dir.path().join("keys")), None).unwrap();
        assert!(!created);
        assert_eq!(resumed.rotation(), Some(&rotation));
        assert_eq!(resumed.next_public_key(), Some(next));

        keys.complete(CompletionReason::GraceEnded, vec!["n2".into()])
            .unwrap();
        assert_eq!(keys.public_key(), next);
        assert!(keys.next().is_none() && keys.rotation().is_none());
        let status = keys.status(observed(&peers), true);
        let last = status.last_rotation.unwrap();
        assert_eq!((last.epoch, last.reason), (1, CompletionReason::GraceEnded));
        assert_eq!(last.unmoved_peers, vec!["n2"]);
        assert_eq!(status.key_epoch, 1);
    }

    #[test]
    fn the_first_publication_is_recorded_once_and_survives_a_restart() {
        let (dir, mut keys) = keys();
        let rotation = keys.begin(Duration::from_secs(60)).unwrap();
        assert_eq!(rotation.announced_at, None);
        assert_eq!(rotation.deadline(), None);
        keys.mark_announced(5000);
        keys.mark_announced(6000);
        assert_eq!(keys.rotation().unwrap().announced_at, Some(5000));
        let (resumed, _) = NodeKeys::load(KeyStore::new(dir.path().join("keys")), None).unwrap();
        assert_eq!(resumed.rotation().unwrap().announced_at, Some(5000));
        assert_eq!(resumed.rotation().unwrap().deadline(), Some(5060));
    }

    #[test]
    fn a_second_rotation_or_a_bad_grace_is_refused_with_the_reason() {
        let (_dir, mut keys) = keys();
        let error = keys.begin(Duration::from_millis(10)).unwrap_err();
        assert!(error.contains("out of range"), "{error}");
        let error = keys.begin(MAX_GRACE + Duration::from_secs(1)).unwrap_err();
        assert!(error.contains("out of range"), "{error}");
        assert!(keys.rotation().is_none());
        keys.begin(Duration::from_secs(60)).unwrap();
        let error = keys.begin(Duration::from_secs(60)).unwrap_err();
        assert!(error.contains("already in progress"), "{error}");
    }

    #[test]
    fn a_key_directory_that_cannot_take_the_state_fails_the_rotation_and_says_so() {
        let (dir, mut keys) = keys();
        // Something that is not weft's state file where rotation.json belongs.
        std::fs::create_dir(dir.path().join("keys/rotation.json")).unwrap();
        let error = keys.begin(Duration::from_secs(60)).unwrap_err();
        assert!(error.contains("cannot store the next key"), "{error}");
        assert!(error.contains("rotation.json"), "{error}");
        assert!(keys.rotation().is_none() && keys.next().is_none());
        let peers = BTreeSet::new();
        assert_eq!(keys.status(observed(&peers), true).last_error, Some(error));
    }

    #[test]
    fn scheduled_rotations_count_from_the_key_age_and_pause_while_rotating() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path().join("keys"));
        store.generate(false).unwrap();
        // A key age written while the clock was years ahead counts from now instead.
        std::fs::write(
            store.rotation_state_path(),
            r#"{"epoch":3,"currentSince":4000000000,"pending":null}"#,
        )
        .unwrap();
        let interval = Duration::from_secs(60);
        let (mut keys, _) = NodeKeys::load(store, Some(interval)).unwrap();
        let now = unix_now();
        let at = keys.next_scheduled().unwrap();
        assert!(
            (now + 60..=now + 61).contains(&at),
            "due at {at}, now {now}"
        );
        keys.begin(Duration::from_secs(5)).unwrap();
        assert_eq!(
            keys.next_scheduled(),
            None,
            "nothing is scheduled while rotating"
        );
        keys.complete(CompletionReason::AllPeersMoved, vec![])
            .unwrap();
        let at = keys.next_scheduled().unwrap();
        assert!(at >= now + 60, "the new key's age starts at its completion");
    }
}

//! Tests of `rotation.rs`: rotation on disk, crash recovery, the state file.

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

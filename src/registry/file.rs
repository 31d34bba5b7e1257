//! The file registry: one JSON file per node in a shared directory.
//!
//! `<dir>/<node>.json` holds `{"name": "<node>", "addresses": ["198.18.0.1"], "record": {...}}`
//! where `record` is exactly the `weft.dev/node` annotation document. Each agent writes only its
//! own file, atomically (temp file, fsync, rename). The directory is watched with inotify and
//! re-read in full on every change (and every `RESCAN_INTERVAL` as a safety net). A file that
//! cannot be read or parsed is skipped with a logged reason; it never stops the agent.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::{OwnNode, Registry, RegistryError, RegistrySnapshot, SkippedEntry, is_valid_node_name};
use crate::mesh::NodeEntry;
use crate::record::NodeRecord;

/// A registry file larger than this is not read.
const MAX_FILE_BYTES: u64 = 256 * 1024;
/// How often the directory is re-read even without inotify events.
const RESCAN_INTERVAL: Duration = Duration::from_secs(10);

/// The on-disk shape of one node's file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    name: String,
    addresses: Vec<IpAddr>,
    record: serde_json::Value,
}

/// A directory of node files.
#[derive(Debug, Clone)]
pub struct FileRegistry {
    dir: PathBuf,
}

impl FileRegistry {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file_of(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{node}.json"))
    }

    /// Reads the whole directory. Never fails: unreadable entries are reported as skipped.
    pub fn scan(&self) -> RegistrySnapshot {
        let mut snapshot = RegistrySnapshot::default();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(error) => {
                snapshot.skipped.push(SkippedEntry {
                    source: self.dir.display().to_string(),
                    reason: format!("cannot read registry directory: {error}"),
                });
                return snapshot;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            // Hidden files are temp files of atomic writes in progress.
            if file_name.starts_with('.') || !file_name.ends_with(".json") {
                continue;
            }
            match read_node_file(&path, file_name) {
                Ok(node) => snapshot.nodes.push(node),
                Err(reason) => snapshot.skipped.push(SkippedEntry {
                    source: path.display().to_string(),
                    reason,
                }),
            }
        }
        snapshot.sort();
        snapshot
    }
}

/// Reads one node file; the error is the reason it is skipped.
fn read_node_file(path: &Path, file_name: &str) -> Result<NodeEntry, String> {
    let metadata = std::fs::metadata(path).map_err(|e| format!("cannot stat: {e}"))?;
    if !metadata.is_file() {
        return Err("not a regular file".into());
    }
    if metadata.len() > MAX_FILE_BYTES {
        return Err(format!(
            "file is {} bytes, more than the {MAX_FILE_BYTES} allowed",
            metadata.len()
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let file: NodeFile =
        serde_json::from_slice(&bytes).map_err(|e| format!("not a node file: {e}"))?;
    if !is_valid_node_name(&file.name) {
        return Err(format!("invalid node name {:?}", file.name));
    }
    if file_name != format!("{}.json", file.name) {
        return Err(format!(
            "file name does not match the node name {:?} (expected {}.json)",
            file.name, file.name
        ));
    }
    Ok(NodeEntry {
        name: file.name,
        addresses: crate::registry::preference_order(&file.addresses),
        record: NodeRecord::from_value(file.record),
    })
}

/// Whether an inotify event can change what a scan reads (not an open, read or close).
pub(crate) fn changes_content(kind: &notify::EventKind) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode, ModifyKind};
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) | EventKind::Any => true,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Modify(_) => true,
        // A writer closing its file: the content is complete now.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Other => false,
    }
}

impl Registry for FileRegistry {
    async fn publish(&self, own: &OwnNode) -> Result<(), RegistryError> {
        let path = self.file_of(&own.name);
        let shown = path.display().to_string();
        let write_error = |source| RegistryError::Write {
            path: shown.clone(),
            source,
        };
        let file = NodeFile {
            name: own.name.clone(),
            addresses: crate::registry::preference_order(&own.addresses),
            record: own.record.to_value(),
        };
        let mut bytes =
            serde_json::to_vec_pretty(&file).map_err(|e| write_error(std::io::Error::other(e)))?;
        bytes.push(b'\n');
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            weft_keys::atomic::write_atomic(&path, &bytes, 0o644)
        })
        .await
        .map_err(|e| write_error(std::io::Error::other(e)))?
        .map_err(write_error)?;
        tracing::info!(node = %own.name, dir = %self.dir.display(), "published node record");
        Ok(())
    }

    async fn watch(
        &self,
        snapshots: watch::Sender<Option<RegistrySnapshot>>,
    ) -> Result<(), RegistryError> {
        let (events_tx, mut events) = mpsc::channel::<()>(1);
        let watch_error = |reason: String| RegistryError::Watch {
            path: self.dir.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(&self.dir).map_err(|e| watch_error(e.to_string()))?;
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // Only changes matter: reacting to reads (ours included) would rescan forever.
                if event.is_ok_and(|e| changes_content(&e.kind)) {
                    // A full channel already has a rescan pending; that one sees this change too.
                    let _ = events_tx.try_send(());
                }
            })
            .map_err(|e| watch_error(e.to_string()))?;
        notify::Watcher::watch(&mut watcher, &self.dir, notify::RecursiveMode::NonRecursive)
            .map_err(|e| watch_error(e.to_string()))?;

        let mut last_skipped = Vec::new();
        loop {
            let registry = self.clone();
            let snapshot = tokio::task::spawn_blocking(move || registry.scan())
                .await
                .map_err(|e| watch_error(e.to_string()))?;
            if snapshot.skipped != last_skipped {
                for skipped in &snapshot.skipped {
                    tracing::warn!(source = %skipped.source, reason = %skipped.reason, "skipping registry entry");
                }
                last_skipped = snapshot.skipped.clone();
            }
            snapshots.send_if_modified(|current| {
                if current.as_ref() == Some(&snapshot) {
                    false
                } else {
                    *current = Some(snapshot);
                    true
                }
            });
            if snapshots.is_closed() {
                return Ok(());
            }
            tokio::select! {
                _ = events.recv() => {}
                _ = tokio::time::sleep(RESCAN_INTERVAL) => {}
                _ = snapshots.closed() => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(name: &str, block: &str) -> OwnNode {
        let key = weft_keys::PrivateKey::generate().public_key();
        OwnNode {
            name: name.into(),
            addresses: vec!["198.18.0.1".parse().unwrap()],
            record: NodeRecord {
                public_key: key,
                next_public_key: None,
                endpoint: None,
                blocks: vec![block.parse().unwrap()],
                key_epoch: 0,
            },
        }
    }

    #[tokio::test]
    async fn published_record_reads_back_identically() {
        let dir = tempfile::tempdir().unwrap();
        let registry = FileRegistry::new(dir.path().join("registry"));
        let node = own("n1", "10.244.1.0/24");
        registry.publish(&node).await.unwrap();
        let snapshot = registry.scan();
        assert!(snapshot.holds(&node), "{snapshot:?}");
        assert!(snapshot.skipped.is_empty());
    }

    #[tokio::test]
    async fn garbage_and_mismatched_files_are_skipped_with_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let registry = FileRegistry::new(dir.path());
        let node = own("n1", "10.244.1.0/24");
        registry.publish(&node).await.unwrap();
        std::fs::write(dir.path().join("garbage.json"), b"\x00\xffnot json").unwrap();
        let n1 = std::fs::read_to_string(dir.path().join("n1.json")).unwrap();
        std::fs::write(dir.path().join("n9.json"), n1).unwrap();
        std::fs::write(dir.path().join(".n2.json.tmp"), b"partial").unwrap();
        std::fs::write(dir.path().join("README"), b"not a record").unwrap();

        let snapshot = registry.scan();
        assert_eq!(snapshot.nodes.len(), 1);
        assert!(snapshot.holds(&node));
        let reasons: Vec<_> = snapshot.skipped.iter().map(|s| s.reason.as_str()).collect();
        assert_eq!(snapshot.skipped.len(), 2, "{reasons:?}");
        assert!(reasons.iter().any(|r| r.starts_with("not a node file")));
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("does not match the node name"))
        );
    }

    #[tokio::test]
    async fn invalid_record_is_kept_as_a_node_with_a_rejected_record() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("n2.json"),
            br#"{"name":"n2","addresses":["198.18.0.2"],"record":{"v":1,"publicKey":"not-base64","blocks":[]}}"#,
        )
        .unwrap();
        let snapshot = FileRegistry::new(dir.path()).scan();
        assert_eq!(snapshot.nodes.len(), 1);
        assert!(snapshot.nodes[0].record.is_err());
    }

    #[test]
    fn reads_do_not_count_as_changes() {
        use notify::EventKind;
        use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
        assert!(!changes_content(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!changes_content(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(changes_content(&EventKind::Create(CreateKind::File)));
        assert!(changes_content(&EventKind::Modify(ModifyKind::Name(
            RenameMode::To
        ))));
        assert!(changes_content(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
    }

    #[tokio::test]
    async fn watch_sees_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let registry = FileRegistry::new(dir.path());
        let (tx, mut rx) = watch::channel(None);
        let watcher = tokio::spawn({
            let registry = registry.clone();
            async move { registry.watch(tx).await }
        });
        rx.wait_for(|s| s.is_some()).await.unwrap();
        let node = own("n3", "10.244.3.0/24");
        registry.publish(&node).await.unwrap();
        let seen = tokio::time::timeout(
            Duration::from_secs(30),
            rx.wait_for(|s| s.as_ref().is_some_and(|s| s.holds(&node))),
        )
        .await
        .is_ok();
        assert!(seen, "the watcher never reported the new record");
        drop(rx);
        watcher.abort();
    }
}

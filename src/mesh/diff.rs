//! The difference between two meshes, as the datapath will apply it peer by peer.

use std::collections::BTreeMap;

use super::Peer;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MeshDiff {
    pub added: Vec<Peer>,
    pub removed: Vec<String>,
    /// Peers present in both with any field changed, in their new form.
    pub changed: Vec<Peer>,
}

/// What turns `old` into `new`.
pub fn diff_peers(old: &BTreeMap<String, Peer>, new: &BTreeMap<String, Peer>) -> MeshDiff {
    let mut diff = MeshDiff::default();
    for (name, peer) in new {
        match old.get(name) {
            None => diff.added.push(peer.clone()),
            Some(before) if before != peer => diff.changed.push(peer.clone()),
            Some(_) => {}
        }
    }
    diff.removed = old
        .keys()
        .filter(|n| !new.contains_key(*n))
        .cloned()
        .collect();
    diff
}

impl MeshDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    /// Applies the diff to `old`.
    pub fn apply(&self, old: &BTreeMap<String, Peer>) -> BTreeMap<String, Peer> {
        let mut peers = old.clone();
        for name in &self.removed {
            peers.remove(name);
        }
        for peer in self.added.iter().chain(&self.changed) {
            peers.insert(peer.name.clone(), peer.clone());
        }
        peers
    }
}

//! Registries: where node records are published and watched. One trait, several backends
//! (the file registry for standalone nodes and the lab; Kubernetes Nodes in a cluster).

pub mod file;

use std::future::Future;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::mesh::NodeEntry;
use crate::record::NodeRecord;

/// This node as it publishes itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnNode {
    pub name: String,
    pub addresses: Vec<IpAddr>,
    pub record: NodeRecord,
}

/// An entry of the registry that could not be read at all (as opposed to a node whose record
/// is invalid, which still appears as a node with a rejected record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedEntry {
    pub source: String,
    pub reason: String,
}

/// Everything a registry knows at one moment, in a stable order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegistrySnapshot {
    pub nodes: Vec<NodeEntry>,
    pub skipped: Vec<SkippedEntry>,
}

impl RegistrySnapshot {
    /// Puts nodes and skipped entries in their stable order (by name, by source).
    pub fn sort(&mut self) {
        self.nodes.sort_by(|a, b| a.name.cmp(&b.name));
        self.skipped.sort_by(|a, b| a.source.cmp(&b.source));
    }

    /// Whether the registry holds `own`'s record as this node's (addresses aside).
    pub fn holds_record(&self, own: &OwnNode) -> bool {
        self.nodes
            .iter()
            .any(|node| node.name == own.name && node.record.as_ref() == Ok(&own.record))
    }

    /// Whether the registry holds exactly `own` as this node's entry.
    pub fn holds(&self, own: &OwnNode) -> bool {
        let addresses = preference_order(&own.addresses);
        self.nodes.iter().any(|node| {
            node.name == own.name
                && node.addresses == addresses
                && node.record.as_ref() == Ok(&own.record)
        })
    }
}

/// A node's addresses without repeats, in the order listed: the first is the one peers reach
/// it at when its record names no endpoint (a Node's InternalIP before its ExternalIP).
pub fn preference_order(addresses: &[IpAddr]) -> Vec<IpAddr> {
    let mut ordered: Vec<IpAddr> = Vec::with_capacity(addresses.len());
    for address in addresses {
        if !ordered.contains(address) {
            ordered.push(*address);
        }
    }
    ordered
}

/// Errors of registry backends.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot write record {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot watch registry {path}: {reason}")]
    Watch { path: String, reason: String },
    #[error("Kubernetes registry: {0}")]
    Kube(String),
}

/// A place where nodes publish their records and learn everyone else's.
pub trait Registry: Send + Sync + 'static {
    /// Publishes (or re-publishes) this node's record. Idempotent.
    fn publish(&self, own: &OwnNode) -> impl Future<Output = Result<(), RegistryError>> + Send;

    /// Watches the registry until `snapshots` has no receivers, sending a fresh snapshot
    /// whenever anything changes. Transient failures are logged and retried, never fatal.
    fn watch(
        &self,
        snapshots: watch::Sender<Option<RegistrySnapshot>>,
    ) -> impl Future<Output = Result<(), RegistryError>> + Send;
}

/// A node name as Kubernetes accepts it (RFC 1123 subdomain): lowercase alphanumerics, `-`
/// and `.`, starting and ending alphanumeric, at most 253 characters.
pub fn is_valid_node_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let edge_ok = |b: Option<&u8>| b.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    !name.is_empty()
        && name.len() <= 253
        && edge_ok(bytes.first())
        && edge_ok(bytes.last())
        && bytes
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_holds_the_own_node_with_its_addresses_in_order_without_repeats() {
        let record = NodeRecord::parse(&format!(
            r#"{{"v":1,"publicKey":"{}","blocks":["10.244.1.0/24"]}}"#,
            weft_keys::PrivateKey::from_bytes([1; 32]).public_key()
        ))
        .unwrap();
        let a: IpAddr = "198.18.0.1".parse().unwrap();
        let b: IpAddr = "203.0.113.1".parse().unwrap();
        let own = OwnNode {
            name: "n1".into(),
            addresses: vec![b, a, b],
            record: record.clone(),
        };
        let entry = |addresses| RegistrySnapshot {
            nodes: vec![NodeEntry {
                name: "n1".into(),
                addresses,
                record: Ok(record.clone()),
            }],
            skipped: vec![],
        };
        assert!(entry(vec![b, a]).holds(&own));
        // The first address is the default endpoint: another order is another entry.
        assert!(!entry(vec![a, b]).holds(&own));
        let other = OwnNode {
            addresses: vec![a],
            ..own
        };
        assert!(!entry(vec![b, a]).holds(&other));
    }

    #[test]
    fn node_names_follow_rfc1123() {
        for good in ["n1", "node-1.example", "a", "10-0-0-1"] {
            assert!(is_valid_node_name(good), "{good}");
        }
        for bad in [
            "",
            "N1",
            "-n1",
            "n1-",
            "n_1",
            "../n1",
            "n1/x",
            &"a".repeat(254),
        ] {
            assert!(!is_valid_node_name(bad), "{bad}");
        }
    }
}

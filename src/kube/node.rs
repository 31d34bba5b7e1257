//! Kubernetes Nodes as weft sees them, without IO: the registry entry of a Node (name,
//! addresses, record from the `weft.dev/node` annotation), the own Node's addresses and Pod
//! blocks, and the patch that publishes the record touching nothing but that annotation.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Node;

use crate::mesh::NodeEntry;
use crate::record::{ANNOTATION_KEY, NodeRecord, RecordError};
use crate::registry::{RegistrySnapshot, SkippedEntry, is_valid_node_name};

/// The Node's InternalIP addresses, then its ExternalIP ones, without duplicates. Hostnames
/// and unparsable entries are ignored.
pub fn node_addresses(node: &Node) -> Vec<IpAddr> {
    let listed = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut addresses: Vec<IpAddr> = Vec::new();
    for kind in ["InternalIP", "ExternalIP"] {
        for address in listed.iter().filter(|a| a.type_ == kind) {
            if let Ok(ip) = address.address.parse::<IpAddr>()
                && !addresses.contains(&ip)
            {
                addresses.push(ip);
            }
        }
    }
    addresses
}

/// Keeps what weft reads of a Node (the registry and `bird-config` alike): name,
/// annotations, resourceVersion, addresses and Pod CIDRs; the rest is dropped before caching.
pub fn trim_node(node: &mut Node) {
    node.metadata.managed_fields = None;
    node.metadata.labels = None;
    if let Some(status) = node.status.as_mut() {
        let addresses = status.addresses.take();
        *status = Default::default();
        status.addresses = addresses;
    }
    if let Some(spec) = node.spec.as_mut() {
        let (pod_cidr, pod_cidrs) = (spec.pod_cidr.take(), spec.pod_cidrs.take());
        *spec = Default::default();
        spec.pod_cidr = pod_cidr;
        spec.pod_cidrs = pod_cidrs;
    }
}

/// The Node's Pod CIDRs (`spec.podCIDRs`, else `spec.podCIDR`).
pub fn node_pod_cidrs(node: &Node) -> Result<Vec<IpNetwork>, String> {
    let spec = node.spec.as_ref();
    let listed: Vec<&String> = match spec.and_then(|s| s.pod_cidrs.as_ref()) {
        Some(cidrs) if !cidrs.is_empty() => cidrs.iter().collect(),
        _ => spec.and_then(|s| s.pod_cidr.as_ref()).into_iter().collect(),
    };
    listed
        .into_iter()
        .map(|text| {
            text.parse::<IpNetwork>()
                .map_err(|e| format!("spec.podCIDRs entry {text:?} is not a CIDR: {e}"))
        })
        .collect()
}

/// The registry entry of one Node: its record from the annotation (a Node without one has the
/// record error `Missing`), or the reason the Node is skipped entirely.
pub fn node_entry(node: &Node) -> Result<NodeEntry, SkippedEntry> {
    let name = node.metadata.name.clone().unwrap_or_default();
    if !is_valid_node_name(&name) {
        return Err(SkippedEntry {
            source: format!("node {name:?}"),
            reason: "invalid node name".into(),
        });
    }
    let record = match node
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_KEY))
    {
        Some(text) => NodeRecord::parse(text),
        None => Err(RecordError::Missing),
    };
    Ok(NodeEntry {
        name,
        addresses: node_addresses(node),
        record,
    })
}

/// The registry snapshot of a set of Nodes, in a stable order.
pub fn snapshot<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> RegistrySnapshot {
    let mut snapshot = RegistrySnapshot::default();
    for node in nodes {
        match node_entry(node) {
            Ok(entry) => snapshot.nodes.push(entry),
            Err(skipped) => snapshot.skipped.push(skipped),
        }
    }
    snapshot.sort();
    snapshot
}

/// The annotation value the Node carries now, if any.
pub fn published_record(node: &Node) -> Option<&str> {
    node.metadata
        .annotations
        .as_ref()?
        .get(ANNOTATION_KEY)
        .map(String::as_str)
}

/// A JSON merge patch that sets the `weft.dev/node` annotation and nothing else. With
/// `resource_version` the API server refuses it (409 Conflict) if the Node changed since it
/// was read, so a concurrent writer is never overwritten blindly.
pub fn annotation_patch(record: &NodeRecord, resource_version: Option<&str>) -> serde_json::Value {
    let mut metadata = serde_json::json!({
        "annotations": { ANNOTATION_KEY: record.to_json() },
    });
    if let (Some(rv), Some(map)) = (resource_version, metadata.as_object_mut()) {
        map.insert("resourceVersion".into(), rv.into());
    }
    serde_json::json!({ "metadata": metadata })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(value: serde_json::Value) -> Node {
        serde_json::from_value(value).unwrap()
    }

    fn record_json(key_byte: u8, block: &str) -> String {
        let key = weft_keys::PrivateKey::from_bytes([key_byte; 32]).public_key();
        format!(r#"{{"v":1,"publicKey":"{key}","blocks":["{block}"]}}"#)
    }

    #[test]
    fn addresses_prefer_internal_ips_and_skip_hostnames_and_garbage() {
        let n = node(serde_json::json!({
            "metadata": {"name": "n1"},
            "status": {"addresses": [
                {"type": "Hostname", "address": "n1"},
                {"type": "ExternalIP", "address": "203.0.113.7"},
                {"type": "InternalIP", "address": "198.18.0.1"},
                {"type": "InternalIP", "address": "not-an-ip"},
                {"type": "ExternalIP", "address": "198.18.0.1"},
            ]}
        }));
        assert_eq!(
            node_addresses(&n),
            vec![
                "198.18.0.1".parse::<IpAddr>().unwrap(),
                "203.0.113.7".parse().unwrap()
            ]
        );
    }

    #[test]
    fn entries_keep_the_internal_ip_first_even_when_an_external_ip_sorts_lower() {
        let n = node(serde_json::json!({
            "metadata": {"name": "n1"},
            "status": {"addresses": [
                {"type": "ExternalIP", "address": "3.120.7.9"},
                {"type": "InternalIP", "address": "172.31.5.10"},
            ]}
        }));
        let entry = node_entry(&n).unwrap();
        assert_eq!(entry.addresses[0], "172.31.5.10".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn pod_cidrs_come_from_pod_cidrs_then_pod_cidr_and_bad_ones_are_errors() {
        let both = node(serde_json::json!({
            "metadata": {"name": "n1"},
            "spec": {"podCIDR": "10.244.9.0/24", "podCIDRs": ["10.244.1.0/24", "fd00:1::/64"]}
        }));
        assert_eq!(node_pod_cidrs(&both).unwrap().len(), 2);
        let legacy = node(
            serde_json::json!({"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.244.9.0/24"}}),
        );
        assert_eq!(
            node_pod_cidrs(&legacy).unwrap(),
            vec!["10.244.9.0/24".parse::<IpNetwork>().unwrap()]
        );
        let bad =
            node(serde_json::json!({"metadata": {"name": "n1"}, "spec": {"podCIDRs": ["nope"]}}));
        assert!(node_pod_cidrs(&bad).unwrap_err().contains("nope"));
        let none = node(serde_json::json!({"metadata": {"name": "n1"}}));
        assert!(node_pod_cidrs(&none).unwrap().is_empty());
    }

    #[test]
    fn entries_carry_the_record_or_its_error_and_bad_names_are_skipped() {
        let good = node(serde_json::json!({
            "metadata": {"name": "n2", "annotations": {"weft.dev/node": record_json(2, "10.244.2.0/24"), "other": "x"}},
            "status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.2"}]}
        }));
        let missing = node(serde_json::json!({"metadata": {"name": "n3"}}));
        let corrupt = node(serde_json::json!({
            "metadata": {"name": "n4", "annotations": {"weft.dev/node": "{not json"}}
        }));
        let bad_name = node(serde_json::json!({"metadata": {"name": "N_5"}}));
        let snap = snapshot([&missing, &good, &corrupt, &bad_name]);
        let names: Vec<&str> = snap.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["n2", "n3", "n4"]);
        assert!(snap.nodes[0].record.is_ok());
        assert_eq!(
            snap.nodes[0].addresses,
            vec!["198.18.0.2".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(snap.nodes[1].record, Err(RecordError::Missing));
        assert_eq!(
            snap.nodes[2].record.as_ref().map_err(RecordError::code),
            Err("json")
        );
        assert_eq!(snap.skipped.len(), 1);
    }

    #[test]
    fn the_patch_sets_only_the_annotation_and_the_precondition() {
        let record = NodeRecord::parse(&record_json(1, "10.244.1.0/24")).unwrap();
        let patch = annotation_patch(&record, Some("42"));
        assert_eq!(
            patch,
            serde_json::json!({"metadata": {
                "annotations": {"weft.dev/node": record.to_json()},
                "resourceVersion": "42",
            }})
        );
        let metadata = patch["metadata"].as_object().unwrap();
        assert_eq!(metadata["annotations"].as_object().unwrap().len(), 1);
        assert!(
            annotation_patch(&record, None)["metadata"]
                .get("resourceVersion")
                .is_none()
        );
    }
}

//! The status document `weft status` prints: built by the agent, served on the admin socket,
//! rendered by the CLI as JSON (stable, documented in the README) or as a table.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::datapath::stats::DatapathStatus;
use crate::mesh::{Mesh, Rejection};
use crate::policy::files::RejectedPolicyFile;
use crate::registry::{OwnNode, SkippedEntry};

/// Version of the status JSON shape. Fields are only ever added within one version.
pub const STATUS_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub version: u32,
    pub node: NodeView,
    pub synced: Synced,
    pub peers: Vec<PeerView>,
    pub rejected: Vec<RejectionView>,
    pub skipped_records: Vec<SkippedEntry>,
    /// Files of the policy directory whose current content is not used, and what stands in.
    #[serde(default)]
    pub rejected_policy_files: Vec<RejectedPolicyFile>,
    pub learned_routes: usize,
    /// The encrypted datapath's live state; `null` when running the control plane only.
    #[serde(default)]
    pub datapath: Option<DatapathStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    pub name: String,
    pub addresses: Vec<String>,
    /// This node's record exactly as published (the `weft.dev/node` document).
    pub record: serde_json::Value,
}

/// Whether each input has been read at least once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Synced {
    pub registry: bool,
    pub routes: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerView {
    pub name: String,
    pub public_key: String,
    /// The key the peer is rotating to, while it rotates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_public_key: Option<String>,
    pub endpoint: Option<String>,
    pub allowed_ips: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RejectionView {
    /// `route`, `block` or `record`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_hop: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Stable machine-readable code, e.g. `not_claimed_by_next_hop`.
    pub reason: String,
    /// Human-readable explanation.
    pub message: String,
}

impl RejectionView {
    fn from_rejection(rejection: &Rejection) -> Self {
        // The mesh defines the flat JSON form of a rejection; reading it back keeps one
        // definition of that shape.
        serde_json::to_value(rejection)
            .and_then(serde_json::from_value)
            .unwrap_or_else(|error| Self {
                kind: "unknown".into(),
                prefix: None,
                next_hop: None,
                node: None,
                reason: "unrepresentable".into(),
                message: error.to_string(),
            })
    }
}

impl Status {
    pub fn new(
        own: &OwnNode,
        synced: Synced,
        mesh: &Mesh,
        skipped: &[SkippedEntry],
        learned_routes: usize,
    ) -> Self {
        Self {
            version: STATUS_VERSION,
            node: NodeView {
                name: own.name.clone(),
                addresses: own.addresses.iter().map(ToString::to_string).collect(),
                record: own.record.to_value(),
            },
            synced,
            peers: mesh
                .peers
                .values()
                .map(|peer| PeerView {
                    name: peer.name.clone(),
                    public_key: peer.public_key.to_string(),
                    next_public_key: peer.next_public_key.map(|k| k.to_string()),
                    endpoint: peer.endpoint.map(|e| e.to_string()),
                    allowed_ips: peer.allowed_ips.iter().map(ToString::to_string).collect(),
                })
                .collect(),
            rejected: Self::rejection_views(&mesh.rejections),
            skipped_records: skipped.to_vec(),
            rejected_policy_files: Vec::new(),
            learned_routes,
            datapath: None,
        }
    }

    /// The status form of the mesh's rejections, in the mesh's order.
    pub fn rejection_views(rejections: &[Rejection]) -> Vec<RejectionView> {
        rejections
            .iter()
            .map(RejectionView::from_rejection)
            .collect()
    }

    /// The human-readable form of `weft status`.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let record = &self.node.record;
        let text = |key: &str| record.get(key).and_then(|v| v.as_str()).unwrap_or("-");
        let blocks = record
            .get("blocks")
            .and_then(|b| b.as_array())
            .map(|b| {
                b.iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        let _ = writeln!(out, "node:       {}", self.node.name);
        let _ = writeln!(out, "public key: {}", text("publicKey"));
        let _ = writeln!(out, "addresses:  {}", self.node.addresses.join(","));
        let _ = writeln!(
            out,
            "blocks:     {}",
            if blocks.is_empty() { "-" } else { &blocks }
        );
        let _ = writeln!(
            out,
            "synced:     registry={} routes={} ({} learned routes)",
            self.synced.registry, self.synced.routes, self.learned_routes
        );
        out.push('\n');
        let peers: Vec<Vec<String>> = self
            .peers
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    p.public_key.clone(),
                    p.endpoint.clone().unwrap_or_else(|| "-".into()),
                    p.allowed_ips.join(","),
                ]
            })
            .collect();
        out.push_str(&table(
            &["PEER", "PUBLIC KEY", "ENDPOINT", "ALLOWED IPS"],
            &peers,
        ));
        if let Some(datapath) = &self.datapath {
            out.push('\n');
            let _ = writeln!(
                out,
                "datapath:   {} port {} encryption {}",
                datapath.interface, datapath.listen_port, datapath.encryption
            );
            if let Some(error) = &datapath.apply_error {
                let _ = writeln!(out, "apply error: {error} (retrying)");
            }
            if let Some(rotation) = &datapath.key_rotation {
                let pending = if rotation.pending.is_empty() {
                    String::new()
                } else {
                    format!(" (pending: {})", rotation.pending.join(", "))
                };
                let _ = writeln!(
                    out,
                    "rotating:   to next key {}, {}/{} peers moved{pending}",
                    rotation.next_public_key,
                    rotation.moved.len(),
                    rotation.moved.len() + rotation.pending.len()
                );
            }
            let drops = |map: &std::collections::BTreeMap<String, u64>| {
                let list: Vec<String> = map.iter().map(|(r, n)| format!("{r}={n}")).collect();
                if list.is_empty() {
                    "-".to_string()
                } else {
                    list.join(",")
                }
            };
            let rows: Vec<Vec<String>> = datapath
                .peers
                .iter()
                .map(|p| {
                    vec![
                        p.name.clone(),
                        p.handshake_age_secs
                            .map(|s| format!("{s}s ago"))
                            .unwrap_or_else(|| "never".into()),
                        p.rx_bytes.to_string(),
                        p.tx_bytes.to_string(),
                        drops(&p.drops),
                    ]
                })
                .collect();
            out.push_str(&table(
                &["PEER", "HANDSHAKE", "RX BYTES", "TX BYTES", "DROPS"],
                &rows,
            ));
            let _ = writeln!(out, "other drops: {}", drops(&datapath.drops));
            let policy = &datapath.policy;
            let _ = writeln!(
                out,
                "policy:     version {}, {} in force, {} rejected; verdicts: {}",
                policy.version,
                counted(policy.policies.len(), "policy", "policies"),
                counted(policy.rejected.len(), "policy", "policies"),
                drops(&policy.verdicts)
            );
            for rejected in &policy.rejected {
                let _ = writeln!(
                    out,
                    "  rejected policy {}: {}",
                    rejected.policy, rejected.reason
                );
            }
            for (pod, by_direction) in &policy.denied {
                let _ = writeln!(out, "  denied to/from {pod}: {}", drops(by_direction));
            }
        }
        let rejected: Vec<Vec<String>> = self
            .rejected
            .iter()
            .map(|r| {
                let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
                vec![
                    r.kind.clone(),
                    dash(&r.prefix),
                    dash(&r.next_hop),
                    dash(&r.node),
                    r.reason.clone(),
                    r.message.clone(),
                ]
            })
            .collect();
        optional_table(
            &mut out,
            &["REJECTED", "PREFIX", "NEXT HOP", "NODE", "REASON", "DETAIL"],
            &rejected,
        );
        let skipped: Vec<Vec<String>> = self
            .skipped_records
            .iter()
            .map(|s| vec![s.source.clone(), s.reason.clone()])
            .collect();
        optional_table(&mut out, &["SKIPPED RECORD", "REASON"], &skipped);
        let policy_files: Vec<Vec<String>> = self
            .rejected_policy_files
            .iter()
            .map(|f| {
                let in_force = f.in_force.code().to_string();
                vec![f.file.clone(), in_force, f.reason.clone()]
            })
            .collect();
        optional_table(
            &mut out,
            &["REJECTED POLICY FILE", "IN FORCE", "REASON"],
            &policy_files,
        );
        out
    }
}

/// `n` things, in the singular for one: `1 policy`, `0 policies`.
pub(crate) fn counted(n: usize, singular: &str, plural: &str) -> String {
    format!("{n} {}", if n == 1 { singular } else { plural })
}

/// A blank line and `table(headers, rows)`, unless there are no rows.
fn optional_table(out: &mut String, headers: &[&str], rows: &[Vec<String>]) {
    if !rows.is_empty() {
        out.push('\n');
        out.push_str(&table(headers, rows));
    }
}

/// Left-aligned columns, two spaces apart; the last column is not padded.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                let _ = write!(out, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push('\n');
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let rows = vec![vec![
            "n2".to_string(),
            "x".to_string(),
            "10.244.2.0/24".to_string(),
        ]];
        assert_eq!(
            table(&["PEER", "KEY", "ALLOWED"], &rows),
            "PEER  KEY  ALLOWED\nn2    x    10.244.2.0/24\n"
        );
    }

    #[test]
    fn counts_are_singular_for_one() {
        assert_eq!(counted(0, "policy", "policies"), "0 policies");
        assert_eq!(counted(1, "policy", "policies"), "1 policy");
        assert_eq!(counted(2, "Namespace", "Namespaces"), "2 Namespaces");
    }

    #[test]
    fn the_table_counts_policies_and_shows_a_key_rotation_in_progress() {
        let mut status: Status = serde_json::from_value(serde_json::json!({
            "version": 1,
            "node": {"name": "n1", "addresses": [], "record": {}},
            "synced": {"registry": true, "routes": true},
            "peers": [], "rejected": [], "skippedRecords": [], "learnedRoutes": 0,
            "datapath": {"interface": "weft0", "listenPort": 51820, "encryption": "required",
                         "peers": [], "drops": {},
                         "policy": {"version": 2, "policies": ["lab/a"], "rejected": [],
                                    "verdicts": {}, "denied": {}}}
        }))
        .expect("a status document");
        let table = status.to_table();
        assert!(
            table.contains("policy:     version 2, 1 policy in force, 0 policies rejected;"),
            "{table}"
        );
        assert!(!table.contains("rotating:"), "{table}");
        let datapath = status.datapath.as_mut().expect("a datapath");
        datapath.key_rotation = Some(crate::datapath::stats::KeyRotationProgress {
            next_public_key: "NEXT=".into(),
            moved: vec!["n2".into()],
            pending: vec!["n3".into()],
        });
        let table = status.to_table();
        assert!(
            table.contains("rotating:   to next key NEXT=, 1/2 peers moved (pending: n3)\n"),
            "{table}"
        );
    }

    #[test]
    fn rejected_policy_files_are_listed_and_optional_in_json() {
        let mut status: Status = serde_json::from_value(serde_json::json!({
            "version": 1,
            "node": {"name": "n1", "addresses": [], "record": {}},
            "synced": {"registry": true, "routes": true},
            "peers": [], "rejected": [], "skippedRecords": [], "learnedRoutes": 0
        }))
        .expect("a status without rejectedPolicyFiles still reads");
        assert!(status.rejected_policy_files.is_empty());
        status.rejected_policy_files.push(RejectedPolicyFile {
            file: "/p/deny.yaml".into(),
            reason: "document 0: bad NetworkPolicy".into(),
            in_force: crate::policy::files::InForce::LastGood,
        });
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(
            json["rejectedPolicyFiles"],
            serde_json::json!([{"file": "/p/deny.yaml", "reason": "document 0: bad NetworkPolicy",
                                "inForce": "last_good"}])
        );
        assert!(
            status
                .to_table()
                .contains("/p/deny.yaml          last_good  document 0: bad NetworkPolicy"),
            "{}",
            status.to_table()
        );
    }
}

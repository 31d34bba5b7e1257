//! Datapath counters: per-peer traffic and drops by reason, and their status form.

use serde::{Deserialize, Serialize};

/// Why the datapath dropped a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// A decrypted packet's source is outside the sending peer's allowed IPs (spoofing).
    SourceNotAllowed,
    /// A decrypted packet is not addressed to a local Pod block.
    DestinationNotLocal,
    /// A packet from the TUN has no peer for its destination.
    NoPeer,
    /// A peer has no endpoint to send to yet.
    NoEndpoint,
    /// A datagram is not a WireGuard message, or is malformed/truncated, or fails MAC1.
    Malformed,
    /// A handshake initiation from a static key that is not a peer.
    UnknownPeer,
    /// A message for a receiver index that is no session of ours.
    UnknownReceiver,
    /// boringtun refused a message of a known peer (decryption, replay, stale session, ...).
    Rejected,
    /// A decrypted or TUN packet that is not IPv4/IPv6.
    NotIp,
    /// NetworkPolicy: the destination Pod is isolated for ingress and nothing allows this.
    PolicyIngress,
    /// NetworkPolicy: the source Pod is isolated for egress and nothing allows this.
    PolicyEgress,
    /// NetworkPolicy: a policy source is configured and its first rule set is not in force
    /// yet, so nothing decrypted is delivered.
    PolicyNotSynced,
    /// NetworkPolicy: the destination is no known Pod (nor the node's own address) while a
    /// policy in force isolates Pods for ingress: it may be a new Pod whose address has not
    /// reached the policy source yet.
    PolicyUnknownDestination,
    /// NetworkPolicy: a later fragment of a datagram whose first fragment was not judged (or
    /// is no longer remembered), so its verdict is unknown.
    UnknownFragment,
}

impl DropReason {
    pub const ALL: [DropReason; 14] = [
        Self::SourceNotAllowed,
        Self::DestinationNotLocal,
        Self::NoPeer,
        Self::NoEndpoint,
        Self::Malformed,
        Self::UnknownPeer,
        Self::UnknownReceiver,
        Self::Rejected,
        Self::NotIp,
        Self::PolicyIngress,
        Self::PolicyEgress,
        Self::PolicyNotSynced,
        Self::PolicyUnknownDestination,
        Self::UnknownFragment,
    ];

    /// Stable name, as in `weft status` and metrics.
    pub fn code(self) -> &'static str {
        match self {
            Self::SourceNotAllowed => "source_not_allowed",
            Self::DestinationNotLocal => "destination_not_local",
            Self::NoPeer => "no_peer",
            Self::NoEndpoint => "no_endpoint",
            Self::Malformed => "malformed",
            Self::UnknownPeer => "unknown_peer",
            Self::UnknownReceiver => "unknown_receiver",
            Self::Rejected => "rejected",
            Self::NotIp => "not_ip",
            Self::PolicyIngress => "policy_ingress",
            Self::PolicyEgress => "policy_egress",
            Self::PolicyNotSynced => "policy_not_synced",
            Self::PolicyUnknownDestination => "policy_unknown_destination",
            Self::UnknownFragment => "unknown_fragment",
        }
    }

    fn slot(self) -> usize {
        self as usize
    }
}

/// Drop counts, indexed by reason (no allocation when counting).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropCounters([u64; DropReason::ALL.len()]);

impl DropCounters {
    pub fn count(&mut self, reason: DropReason) {
        self.0[reason.slot()] += 1;
    }

    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason.slot()]
    }

    /// Non-zero counts by reason code.
    pub fn to_map(&self) -> std::collections::BTreeMap<String, u64> {
        DropReason::ALL
            .iter()
            .filter(|r| self.get(**r) > 0)
            .map(|r| (r.code().to_string(), self.get(*r)))
            .collect()
    }
}

/// Traffic and drops attributed to one peer.
#[derive(Debug, Clone, Default)]
pub struct PeerCounters {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub drops: DropCounters,
}

/// The datapath as `weft status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatapathStatus {
    pub interface: String,
    pub listen_port: u16,
    pub encryption: String,
    pub peers: Vec<PeerTraffic>,
    /// Drops not attributable to a peer, by reason code.
    pub drops: std::collections::BTreeMap<String, u64>,
    /// Flows in the connection tracking table, its capacity, and flows evicted to make room.
    #[serde(default)]
    pub conntrack_flows: usize,
    #[serde(default)]
    pub conntrack_capacity: usize,
    #[serde(default)]
    pub conntrack_evictions: u64,
    /// Revoked flows (denied by a rule set change, held apart until idle for their timeout;
    /// as many fit as `conntrack_capacity`), and revoked flows evicted to make room.
    #[serde(default)]
    pub conntrack_revoked_flows: usize,
    #[serde(default)]
    pub conntrack_revoked_evictions: u64,
    /// NetworkPolicy on decrypted packets: the rule set in force, verdicts, denials.
    #[serde(default)]
    pub policy: super::policy_stats::PolicyStatus,
    /// Why the last attempt to apply the mesh to the kernel (routes, rules, the TUN) failed;
    /// `None` once it applies. Filled in by the agent, which retries.
    #[serde(default)]
    pub apply_error: Option<String>,
    /// While this node rotates its key: which peers have moved to the next key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_rotation: Option<KeyRotationProgress>,
}

/// Which peers have completed a handshake with this node's next key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyRotationProgress {
    pub next_public_key: String,
    pub moved: Vec<String>,
    pub pending: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerTraffic {
    pub name: String,
    pub public_key: String,
    pub endpoint: Option<String>,
    pub allowed_ips: Vec<String>,
    /// Seconds since the last completed handshake; `None` before the first.
    pub handshake_age_secs: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub drops: std::collections::BTreeMap<String, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_counters_count() {
        let codes: std::collections::BTreeSet<_> =
            DropReason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes.len(), DropReason::ALL.len());
        let mut drops = DropCounters::default();
        drops.count(DropReason::Malformed);
        drops.count(DropReason::Malformed);
        drops.count(DropReason::NotIp);
        assert_eq!(drops.get(DropReason::Malformed), 2);
        assert_eq!(drops.to_map().len(), 2);
    }
}

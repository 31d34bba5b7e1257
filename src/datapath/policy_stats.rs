//! NetworkPolicy counters of the datapath: verdicts on decrypted packets by kind, and denials
//! by the isolated Pod and direction. Counting never allocates except the first time a Pod is
//! denied; the per-Pod table is bounded.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::policy::{Direction, PolicySet};

/// Most Pods counted by name; denials of further Pods go to [`OTHER_PODS`].
const MAX_DENIED_PODS: usize = 4096;
/// The key that collects denials of Pods beyond [`MAX_DENIED_PODS`].
pub const OTHER_PODS: &str = "(other)";

/// What happened to one decrypted packet at the policy check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyOutcome {
    /// A reply to a flow this node sent.
    TrackedReply,
    /// A packet of an inbound flow already allowed under the rule set in force.
    TrackedAllowed,
    /// An ICMP error about a packet of a tracked flow (related to it).
    Related,
    /// A Pod talking to itself.
    SamePod,
    /// Checked against the rule set and allowed.
    Allowed,
    /// A later fragment of a datagram whose first fragment was allowed.
    Fragment,
    DeniedIngress,
    DeniedEgress,
    /// Denied: the destination is no known Pod while a policy isolates Pods for ingress.
    DeniedUnknownDestination,
}

impl PolicyOutcome {
    pub const ALL: [PolicyOutcome; 9] = [
        Self::TrackedReply,
        Self::TrackedAllowed,
        Self::Related,
        Self::SamePod,
        Self::Allowed,
        Self::Fragment,
        Self::DeniedIngress,
        Self::DeniedEgress,
        Self::DeniedUnknownDestination,
    ];

    /// Stable name, as in `weft status` and metrics.
    pub fn code(self) -> &'static str {
        match self {
            Self::TrackedReply => "tracked_reply",
            Self::TrackedAllowed => "tracked_allowed",
            Self::Related => "related",
            Self::SamePod => "same_pod",
            Self::Allowed => "allowed",
            Self::Fragment => "fragment",
            Self::DeniedIngress => "denied_ingress",
            Self::DeniedEgress => "denied_egress",
            Self::DeniedUnknownDestination => "denied_unknown_destination",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct PolicyCounters {
    verdicts: [u64; PolicyOutcome::ALL.len()],
    /// Denials by isolated Pod (`namespace/name`): [ingress, egress].
    denied: HashMap<String, [u64; 2]>,
}

impl PolicyCounters {
    pub fn count(&mut self, outcome: PolicyOutcome) {
        self.verdicts[outcome as usize] += 1;
    }

    /// Counts a denial of `pod`, isolated in `direction`.
    pub fn count_denial(&mut self, pod: &str, direction: Direction) {
        let (outcome, slot) = match direction {
            Direction::Ingress => (PolicyOutcome::DeniedIngress, 0),
            Direction::Egress => (PolicyOutcome::DeniedEgress, 1),
        };
        self.count(outcome);
        if let Some(counts) = self.denied.get_mut(pod) {
            counts[slot] += 1;
            return;
        }
        // Once the table is full, everything else lands in the overflow entry (allocated
        // once, then found like any other pod).
        let key = if self.denied.len() < MAX_DENIED_PODS {
            pod
        } else {
            OTHER_PODS
        };
        if let Some(counts) = self.denied.get_mut(key) {
            counts[slot] += 1;
            return;
        }
        self.denied.entry(key.to_string()).or_default()[slot] += 1;
    }

    pub fn get(&self, outcome: PolicyOutcome) -> u64 {
        self.verdicts[outcome as usize]
    }

    /// The status form, with the rule set in force.
    pub fn status(&self, set: &PolicySet, version: u64) -> PolicyStatus {
        PolicyStatus {
            version,
            policies: set.accepted.clone(),
            rejected: set
                .rejected
                .iter()
                .map(|r| RejectedPolicyStatus {
                    policy: r.policy.clone(),
                    reason: r.reason.clone(),
                })
                .collect(),
            address_conflicts: set.conflicts.len() as u64,
            verdicts: PolicyOutcome::ALL
                .iter()
                .map(|o| (o.code().to_string(), self.get(*o)))
                .collect(),
            denied: self
                .denied
                .iter()
                .map(|(pod, [ingress, egress])| {
                    let by_direction = [("ingress", *ingress), ("egress", *egress)]
                        .into_iter()
                        .filter(|(_, n)| *n > 0)
                        .map(|(d, n)| (d.to_string(), n))
                        .collect();
                    (pod.clone(), by_direction)
                })
                .collect(),
        }
    }
}

/// The policy part of `weft status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// Version of the rule set in force (0: none loaded); each change adds one.
    pub version: u64,
    /// Policies in force, `namespace/name`.
    pub policies: Vec<String>,
    /// Policies rejected, with the reason: none of their rules allow anything (from the API
    /// they still isolate the Pods they select).
    pub rejected: Vec<RejectedPolicyStatus>,
    /// Addresses claimed by more than one live Pod (each judged as one of them).
    #[serde(default)]
    pub address_conflicts: u64,
    /// Decrypted packets by policy outcome (every outcome, zeros included).
    pub verdicts: BTreeMap<String, u64>,
    /// Denied packets by isolated Pod and direction.
    pub denied: BTreeMap<String, BTreeMap<String, u64>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RejectedPolicyStatus {
    pub policy: String,
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denials_are_counted_per_pod_and_direction_and_in_the_verdicts() {
        let mut counters = PolicyCounters::default();
        counters.count_denial("x/a", Direction::Ingress);
        counters.count_denial("x/a", Direction::Ingress);
        counters.count_denial("x/a", Direction::Egress);
        counters.count_denial("y/b", Direction::Egress);
        counters.count(PolicyOutcome::TrackedReply);
        let status = counters.status(&PolicySet::default(), 7);
        assert_eq!(status.version, 7);
        assert_eq!(status.verdicts["denied_ingress"], 2);
        assert_eq!(status.verdicts["denied_egress"], 2);
        assert_eq!(status.verdicts["tracked_reply"], 1);
        assert_eq!(status.verdicts["allowed"], 0);
        assert_eq!(status.denied["x/a"]["ingress"], 2);
        assert_eq!(status.denied["x/a"]["egress"], 1);
        assert_eq!(status.denied["y/b"].get("ingress"), None);
    }

    #[test]
    fn the_per_pod_table_is_bounded() {
        let mut counters = PolicyCounters::default();
        for i in 0..MAX_DENIED_PODS + 10 {
            counters.count_denial(&format!("ns/p{i}"), Direction::Ingress);
        }
        let status = counters.status(&PolicySet::default(), 1);
        assert_eq!(status.denied.len(), MAX_DENIED_PODS + 1);
        assert_eq!(status.denied[OTHER_PODS]["ingress"], 10);
        assert_eq!(
            status.verdicts["denied_ingress"],
            (MAX_DENIED_PODS + 10) as u64
        );
    }
}

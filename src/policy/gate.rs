//! The policy decision for one decrypted packet: connection tracking first, then the rule set
//! in force. Pure (no IO, time passed in) and allocation-free per packet.
//!
//! - When a policy source is configured, nothing passes until its first rule set is in force.
//! - A reply to a flow this node opened passes while that flow was last judged allowed under
//!   the rule set in force; after a change it is judged again: it passes if the flow it
//!   answers is allowed, or if policy allows the reply on its own.
//! - A packet of a tracked inbound flow passes while the flow was last judged allowed under
//!   the rule set in force; after a change it is checked again.
//! - A tracked flow found denied is kept as revoked: its packets are dropped until it has been
//!   idle for its timeout (or a later rule set allows it again), whichever side keeps sending.
//!   Revoked flows have a table of their own, which flows a remote Pod opens do not evict.
//! - Anything else is checked against the rule set; if allowed, it is tracked. But while some
//!   policy in force isolates Pods for ingress, a packet to a local address that is no known
//!   Pod (nor one of this node's own addresses) is dropped: it may be a new Pod, which has its
//!   address from the CNI before its `status.podIP` reaches this node, and which policies
//!   must isolate from the start (fail closed; see [`Admission::UnknownDestination`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use super::conntrack::{Conntrack, FlowKey, Judged, Sent, Tracked};
use super::{Allowance, Direction, Flow, PolicySet, Protocol, Verdict};

/// What the gate decided for one decrypted packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission<'a> {
    /// A reply to a flow this node opened.
    TrackedReply,
    /// A packet of an inbound flow already allowed under the rule set in force.
    TrackedAllowed,
    /// A Pod talking to itself.
    SamePod,
    /// Checked against the rule set and allowed.
    Allowed,
    /// `pod` is isolated in `direction` and nothing allows the packet.
    Denied { direction: Direction, pod: &'a str },
    /// A policy source is configured and its first rule set is not in force yet.
    NotSynced,
    /// The destination is no known Pod (and no address of this node's own) while some policy
    /// in force isolates Pods for ingress. It may be a Pod this node has just started, whose
    /// address has not reached the policy source yet (nor which policies select it), so it
    /// is treated as isolated for ingress with nothing allowing the packet. Replies to flows
    /// it opened pass as any tracked reply does.
    UnknownDestination,
}

impl Admission<'_> {
    /// Whether the packet passes.
    pub fn is_allowed(&self) -> bool {
        matches!(
            self,
            Self::TrackedReply | Self::TrackedAllowed | Self::SamePod | Self::Allowed
        )
    }
}

/// Why `weft policy check` cannot judge a flow from or to Pod `key`, which has no known
/// address: nobody listed it, or it is listed without an address policy judges it by.
pub fn unknown_pod(set: &PolicySet, key: &str) -> String {
    if set.lists_without_address(key) {
        format!(
            "Pod {key} has no address yet (or none policy judges it by: it has finished, runs \
             on the host network, or another Pod holds its address)"
        )
    } else {
        format!("no Pod {key} is known")
    }
}

/// Why `weft policy check` cannot judge a flow to Pod `to` that has no known address: what
/// the node holding it does with such packets under `set`.
pub fn unknown_destination_note(set: &PolicySet, to: &str) -> String {
    let unknown = unknown_pod(set, to);
    if set.isolates_ingress() {
        format!(
            "{unknown}; while it has none, a node drops decrypted packets to an address of \
             its Pod blocks that is no known Pod (policy_unknown_destination), as a policy in \
             force isolates Pods for ingress"
        )
    } else {
        unknown
    }
}

pub struct PolicyGate {
    set: Arc<PolicySet>,
    /// Counts rule set changes: 0 before the first.
    version: u64,
    /// A policy source is configured: nothing passes before its first rule set, and local
    /// addresses that are no known Pod may be isolated (see [`Admission::UnknownDestination`]).
    required: bool,
    /// This node's own addresses in its Pod blocks (the tunnel's, on `weft0`): no Pod's, so
    /// never isolated.
    own_addresses: Vec<IpAddr>,
    conntrack: Conntrack,
}

impl PolicyGate {
    /// A gate with no rule set yet: with `required` (a policy source is configured) nothing
    /// passes until [`PolicyGate::set_policy`]; without, everything passes.
    pub fn new(conntrack: Conntrack, required: bool) -> Self {
        Self {
            set: Arc::new(PolicySet::default()),
            version: 0,
            required,
            own_addresses: Vec::new(),
            conntrack,
        }
    }

    /// This node's own addresses in its Pod blocks, which are no Pod's: packets to them are
    /// never taken for packets to a Pod not known yet.
    pub fn with_own_addresses(mut self, addresses: Vec<IpAddr>) -> Self {
        self.own_addresses = addresses;
        self
    }

    /// Puts a new rule set in force: at once for new flows, and for tracked flows at their
    /// next decrypted packet.
    pub fn set_policy(&mut self, set: Arc<PolicySet>) {
        self.set = set;
        self.version += 1;
    }

    pub fn policy(&self) -> &PolicySet {
        &self.set
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn conntrack(&self) -> &Conntrack {
        &self.conntrack
    }

    /// Whether packets are judged (rather than dropped for want of a rule set).
    pub fn synced(&self) -> bool {
        !self.required || self.version > 0
    }

    /// Records a packet this node sends into the mesh (see [`Conntrack::record_outbound`]).
    pub fn record_outbound(&mut self, key: FlowKey, sent: Sent, now: Instant) {
        self.conntrack.record_outbound(key, sent, self.version, now);
    }

    /// Forgets revoked flows idle for their timeout (see [`Conntrack::sweep_revoked`]); the
    /// datapath calls it on its status tick.
    pub fn sweep_revoked(&mut self, now: Instant) -> usize {
        self.conntrack.sweep_revoked(now)
    }

    /// Whether a decrypted ICMP error quoting `sent`, a packet a local Pod sent (as it sent
    /// it), is related to a tracked flow (see [`Conntrack::lookup_related`]) that `sent` was
    /// part of under the rule set in force: a flow judged under it, or else one policy still
    /// allows (a flow opened here: its own direction; an inbound flow: the remote side's).
    /// Looks only; records nothing.
    pub fn is_related(&self, sent: &FlowKey, now: Instant) -> bool {
        if !self.synced() {
            return false;
        }
        // Revoked flows are not in the live table `lookup_related` reads.
        match self.conntrack.lookup_related(sent, now) {
            Tracked::Reply(judged) | Tracked::Inbound(judged) if judged.version == self.version => {
                true
            }
            // A flow the local Pod opened: still allowed in its own direction.
            Tracked::Reply(_) => self.set.check(&flow(sent)).is_allowed(),
            // An inbound flow: judged as its packets would be now (an address that is no
            // known Pod any more included).
            Tracked::Inbound(_) => judge(
                &self.set,
                self.unknown_isolated(),
                &self.own_addresses,
                &sent.reversed(),
            )
            .is_allowed(),
            Tracked::Miss => false,
        }
    }

    /// Whether a local address that is no known Pod is isolated for ingress (see
    /// [`Admission::UnknownDestination`]).
    fn unknown_isolated(&self) -> bool {
        self.required && self.set.isolates_ingress()
    }

    /// Judges a decrypted packet of flow `key` (source: the remote side; destination: an
    /// address of this node's Pod blocks).
    pub fn admit(&mut self, key: &FlowKey, now: Instant) -> Admission<'_> {
        if !self.synced() {
            return Admission::NotSynced;
        }
        let current = Judged {
            version: self.version,
            revoked: false,
        };
        let unknown_isolated = self.unknown_isolated();
        let set: &PolicySet = &self.set;
        let on_its_own = |key: &FlowKey| judge(set, unknown_isolated, &self.own_addresses, key);
        match self.conntrack.lookup_inbound(key, now) {
            Tracked::Reply(judged) if judged == current => Admission::TrackedReply,
            Tracked::Inbound(judged) if judged == current => Admission::TrackedAllowed,
            tracked @ (Tracked::Reply(judged) | Tracked::Inbound(judged)) => {
                // A reply judged under an older rule set: it passes if the flow it answers is
                // still allowed. Otherwise (a reply revoked under this rule set, or a packet of
                // an inbound flow) the packet passes only if policy allows it on its own.
                let reply = matches!(tracked, Tracked::Reply(_));
                if reply
                    && judged.version != self.version
                    && set.check(&flow(&key.reversed())).is_allowed()
                {
                    self.conntrack.judge(key, self.version, true, now);
                    return Admission::TrackedReply;
                }
                let admission = on_its_own(key);
                rejudge(
                    &mut self.conntrack,
                    key,
                    judged,
                    self.version,
                    admission.is_allowed(),
                    now,
                );
                admission
            }
            Tracked::Miss => {
                let admission = on_its_own(key);
                if admission.is_allowed() {
                    self.conntrack.record_inbound(*key, self.version, now);
                }
                admission
            }
        }
    }
}

/// The rule set's verdict on a packet of flow `key` on its own. With `unknown_isolated`, a
/// destination that is no known Pod, nor one of `own_addresses`, is isolated for ingress.
fn judge<'a>(
    set: &'a PolicySet,
    unknown_isolated: bool,
    own_addresses: &[IpAddr],
    key: &FlowKey,
) -> Admission<'a> {
    match set.check(&flow(key)) {
        Verdict::SamePod => Admission::SamePod,
        Verdict::Allowed {
            ingress: Allowance::UnknownPod,
            ..
        } if unknown_isolated && !own_addresses.contains(&key.dst) => Admission::UnknownDestination,
        Verdict::Allowed { .. } => Admission::Allowed,
        Verdict::Denied { direction, pod } => Admission::Denied { direction, pod },
    }
}

/// Records the verdict on a tracked flow judged `judged` before, unless that is what it says
/// already (every further packet of a flow revoked under this rule set).
fn rejudge(
    conntrack: &mut Conntrack,
    key: &FlowKey,
    judged: Judged,
    version: u64,
    allowed: bool,
    now: Instant,
) {
    if judged.version != version || judged.revoked == allowed {
        conntrack.judge(key, version, allowed, now);
    }
}

fn flow(key: &FlowKey) -> Flow {
    Flow {
        src: key.src,
        dst: key.dst,
        protocol: Protocol::from_number(key.protocol),
        dst_port: key.dst_port,
    }
}

#[cfg(test)]
#[path = "gate_tests.rs"]
mod tests;

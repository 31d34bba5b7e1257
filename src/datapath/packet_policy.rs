//! NetworkPolicy as the datapath applies it to packets: what it encrypts is recorded in
//! connection tracking; what it decrypts is judged by the [`PolicyGate`] and counted. A
//! fragmented datagram is judged by its first fragment (the only one with ports); its later
//! fragments take that verdict, and are dropped as `unknown_fragment` if there is none. An
//! ICMP error about a packet a local Pod sent on a tracked flow is related to that flow: it
//! passes, and records nothing; what a local Pod sends as an ICMP error records nothing either.

use std::net::IpAddr;
use std::time::Instant;

use super::fragments::{FragmentKey, FragmentTable};
use super::packet::{Fragment, Header, Transport};
use super::policy_stats::{PolicyCounters, PolicyOutcome};
use super::stats::DropReason;
use crate::policy::Direction;
use crate::policy::conntrack::{FlowKey, Sent};
use crate::policy::gate::{Admission, PolicyGate};

pub struct PacketPolicy {
    pub gate: PolicyGate,
    pub counters: PolicyCounters,
    fragments: FragmentTable,
}

impl PacketPolicy {
    pub fn new(gate: PolicyGate, fragments: FragmentTable) -> Self {
        Self {
            gate,
            counters: PolicyCounters::default(),
            fragments,
        }
    }

    /// Records the flow of a packet this node sends. A later fragment has no ports and belongs
    /// to the flow its first fragment recorded. Only an opening packet (for TCP: SYN without
    /// ACK) opens a flow, but in the pickup window (see [`crate::policy::conntrack`]). An ICMP
    /// error (say, a local Pod's port unreachable for a remote UDP packet) belongs to no flow
    /// and records nothing: as a flow it would let the remote side's ICMP in as its replies.
    pub fn outbound(&mut self, header: &Header, now: Instant) {
        if let Some(t) = header.transport
            && !matches!(t.fragment, Fragment::Later(_))
            && header.icmp_error.is_none()
        {
            let sent = if t.opens_flow() {
                Sent::Opening
            } else {
                Sent::MidStream
            };
            self.gate
                .record_outbound(flow_key(header.source, header.destination, t), sent, now);
        }
    }

    /// Judges a decrypted packet (its source remote, its destination local), and counts it.
    pub fn inbound(&mut self, header: &Header, now: Instant) -> Result<(), DropReason> {
        let Some(t) = header.transport else {
            return Err(DropReason::NotIp);
        };
        let (source, destination) = (header.source, header.destination);
        let datagram = |id| FragmentKey {
            src: source,
            dst: destination,
            id,
        };
        match t.fragment {
            Fragment::Whole => self.admit(header, t, now),
            Fragment::First(id) => {
                let verdict = self.admit(header, t, now);
                self.fragments.remember(datagram(id), verdict, now);
                verdict
            }
            Fragment::Later(id) => {
                let verdict = self
                    .fragments
                    .verdict(&datagram(id), now)
                    .unwrap_or(Err(DropReason::UnknownFragment));
                match verdict {
                    Ok(()) => self.counters.count(PolicyOutcome::Fragment),
                    Err(DropReason::PolicyIngress) => {
                        self.counters.count(PolicyOutcome::DeniedIngress);
                    }
                    Err(DropReason::PolicyEgress) => {
                        self.counters.count(PolicyOutcome::DeniedEgress);
                    }
                    Err(DropReason::PolicyUnknownDestination) => {
                        self.counters.count(PolicyOutcome::DeniedUnknownDestination);
                    }
                    Err(_) => {}
                }
                verdict
            }
        }
    }

    /// Judges a decrypted packet that carries its transport header `t`: an ICMP error related
    /// to a tracked flow passes, anything else is up to the gate.
    fn admit(&mut self, header: &Header, t: Transport, now: Instant) -> Result<(), DropReason> {
        if self.is_related(header, now) {
            self.counters.count(PolicyOutcome::Related);
            return Ok(());
        }
        let key = flow_key(header.source, header.destination, t);
        let outcome = match self.gate.admit(&key, now) {
            Admission::TrackedReply => PolicyOutcome::TrackedReply,
            Admission::TrackedAllowed => PolicyOutcome::TrackedAllowed,
            Admission::SamePod => PolicyOutcome::SamePod,
            Admission::Allowed => PolicyOutcome::Allowed,
            Admission::Denied { direction, pod } => {
                self.counters.count_denial(pod, direction);
                return Err(match direction {
                    Direction::Ingress => DropReason::PolicyIngress,
                    Direction::Egress => DropReason::PolicyEgress,
                });
            }
            Admission::NotSynced => return Err(DropReason::PolicyNotSynced),
            Admission::UnknownDestination => {
                self.counters.count(PolicyOutcome::DeniedUnknownDestination);
                return Err(DropReason::PolicyUnknownDestination);
            }
        };
        self.counters.count(outcome);
        Ok(())
    }

    /// Whether `header` is an ICMP error about a packet its destination (a local Pod) sent on
    /// a tracked flow (see [`PolicyGate::is_related`]).
    fn is_related(&self, header: &Header, now: Instant) -> bool {
        header
            .icmp_error
            .and_then(|error| error.quoted)
            .is_some_and(|sent| {
                sent.source == header.destination
                    && self.gate.is_related(
                        &flow_key(sent.source, sent.destination, sent.transport),
                        now,
                    )
            })
    }
}

fn flow_key(src: IpAddr, dst: IpAddr, transport: Transport) -> FlowKey {
    FlowKey {
        protocol: transport.protocol,
        src,
        dst,
        src_port: transport.src_port,
        dst_port: transport.dst_port,
    }
}

#[cfg(test)]
#[path = "packet_policy_tests.rs"]
mod tests;

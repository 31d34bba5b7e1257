//! What the datapath does with each packet and datagram, without its devices: the peer table,
//! the checks after decryption and NetworkPolicy, with the TUN and the UDP socket behind
//! [`Wire`]. The engine drives it with the real devices, the tests with in-memory ones.
//!
//! TUN -> encapsulate for the peer whose allowed IPs hold the destination -> UDP.
//! UDP -> find the peer (handshake initiations by the initiator's static key, everything else
//! by receiver index) -> decapsulate -> checks (source in the peer's allowed IPs, destination
//! a local Pod block, NetworkPolicy) -> TUN.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use boringtun::noise::{Tunn, TunnResult};

use super::packet::{Header, parse};
use super::packet_policy::PacketPolicy;
use super::peers::{Incoming, PeerTable};
use super::prefix_table::PrefixTable;
use super::session::{HANDSHAKE_INITIATION, HANDSHAKE_RESPONSE, TRANSPORT_DATA, data_bytes};
use super::stats::{DropCounters, DropReason, PeerCounters};

/// The devices the forwarder's output goes to.
pub trait Wire {
    /// Sends a WireGuard message to `to` over UDP.
    async fn send(&mut self, message: &[u8], to: SocketAddr);
    /// Writes a decrypted packet that passed every check to the TUN.
    async fn deliver(&mut self, packet: &[u8]);
}

pub struct Forwarder {
    pub peers: PeerTable,
    /// The node's own Pod blocks: decrypted packets must be addressed inside them.
    pub local_blocks: PrefixTable<()>,
    /// NetworkPolicy: the rule set in force, connection tracking, fragments, counters.
    pub policy: PacketPolicy,
    /// Drops not attributable to a peer.
    pub drops: DropCounters,
}

impl Forwarder {
    /// A packet the kernel routed into the TUN: encrypt it for its peer.
    pub async fn outbound(&mut self, packet: &[u8], out: &mut [u8], wire: &mut impl Wire) {
        let Some(header) = parse(packet) else {
            self.drops.count(DropReason::NotIp);
            return;
        };
        if header.destination.is_multicast() || is_link_local(header.destination) {
            // The kernel's own chatter on the TUN (router solicitations, MLD): never for a peer.
            return;
        }
        let Some(index) = self.peers.index_for_destination(header.destination) else {
            self.drops.count(DropReason::NoPeer);
            return;
        };
        let Some(slot) = self.peers.slot_mut(index) else {
            return;
        };
        let endpoint = slot.endpoint;
        let Some(session) = slot.outbound() else {
            slot.counters.drops.count(DropReason::NoPeer);
            return;
        };
        match seal(&mut self.policy, &mut session.tunn, &header, packet, out) {
            TunnResult::WriteToNetwork(message) => match endpoint {
                Some(to) => send_to_peer(wire, &mut slot.counters, message, to).await,
                None => slot.counters.drops.count(DropReason::NoEndpoint),
            },
            TunnResult::Err(error) => {
                tracing::debug!(peer = %slot.peer.name, ?error, "encapsulate failed");
                slot.counters.drops.count(DropReason::Rejected);
            }
            _ => {}
        }
    }

    /// A datagram from the network: find its peer, decrypt, check, deliver.
    pub async fn receive(
        &mut self,
        src: SocketAddr,
        datagram: &[u8],
        out: &mut [u8],
        wire: &mut impl Wire,
    ) {
        let (peer, session) = match self.peers.classify(src, datagram, out) {
            Incoming::Session { peer, session } => (peer, session),
            Incoming::Reply(cookie) => {
                wire.send(cookie, src).await;
                return;
            }
            Incoming::Drop(reason) => {
                self.drops.count(reason);
                return;
            }
        };
        self.decapsulate(peer, session, src, datagram, out, wire)
            .await;
        // A handshake may have completed: outbound traffic may move to the new session.
        if matches!(
            datagram.first(),
            Some(&HANDSHAKE_INITIATION | &HANDSHAKE_RESPONSE)
        ) {
            self.peers.choose_outbound(Some(peer));
        }
    }

    async fn decapsulate(
        &mut self,
        peer: u32,
        session: u32,
        src: SocketAddr,
        datagram: &[u8],
        out: &mut [u8],
        wire: &mut impl Wire,
    ) {
        // A handshake initiation can be replayed (a captured one is accepted once by a session
        // that has seen no newer one: a peer removed and added again starts afresh), so it is
        // answered where it came from but does not move the peer's endpoint. Every other
        // message that authenticates cannot be replayed, and does (roaming).
        let moves_endpoint = datagram.first() != Some(&HANDSHAKE_INITIATION);
        let mut input = datagram;
        loop {
            let Some(slot) = self.peers.slot_mut(peer) else {
                return;
            };
            let Some(tunnel) = slot.session_mut(session) else {
                return;
            };
            let result = tunnel.tunn.decapsulate(Some(src.ip()), input, out);
            input = &[];
            match result {
                TunnResult::WriteToNetwork(message) => {
                    // A handshake answer or a queued packet: keep flushing until Done. Both
                    // follow an authenticated message (sessions check MAC1 only and never
                    // answer with a cookie; rate limiting happens once, in `classify`).
                    if moves_endpoint {
                        slot.endpoint = Some(src);
                    }
                    send_to_peer(wire, &mut slot.counters, message, src).await;
                }
                TunnResult::WriteToTunnelV4(packet, _) | TunnResult::WriteToTunnelV6(packet, _) => {
                    slot.endpoint = Some(src);
                    let packet: &[u8] = packet;
                    self.deliver(peer, packet, wire).await;
                    return;
                }
                TunnResult::Done => {
                    // A keepalive authenticated like any data message: the peer is there.
                    if datagram.first() == Some(&TRANSPORT_DATA) {
                        slot.endpoint = Some(src);
                    }
                    return;
                }
                TunnResult::Err(error) => {
                    tracing::debug!(peer = %slot.peer.name, ?error, "decapsulate refused a message");
                    slot.counters.drops.count(DropReason::Rejected);
                    return;
                }
            }
        }
    }

    /// The checks after decryption, in order: source in the peer's allowed IPs, destination
    /// a local Pod block, NetworkPolicy. Only then is the packet written to the TUN.
    async fn deliver(&mut self, index: u32, packet: &[u8], wire: &mut impl Wire) {
        if packet.is_empty() {
            return; // keepalive
        }
        let verdict = match parse(packet) {
            None => Err(DropReason::NotIp),
            Some(header) if !self.peers.source_allowed(index, header.source) => {
                Err(DropReason::SourceNotAllowed)
            }
            Some(header) if self.local_blocks.lookup(header.destination).is_none() => {
                Err(DropReason::DestinationNotLocal)
            }
            Some(header) => self
                .policy
                .inbound(&self.vouched(index, header), Instant::now()),
        };
        let Some(slot) = self.peers.slot_mut(index) else {
            return;
        };
        match verdict {
            Ok(()) => {
                slot.counters.rx_bytes += packet.len() as u64;
                wire.deliver(packet).await;
            }
            Err(reason) => {
                slot.counters.drops.count(reason);
                tracing::debug!(peer = %slot.peer.name, reason = reason.code(), "dropped a decrypted packet");
            }
        }
    }

    /// `header` as policy may take it from peer `index`: an ICMP error may pass as related to
    /// a tracked flow only if that peer could have answered the flow (the quoted packet went
    /// to one of its allowed IPs). Otherwise it is judged as any other packet, so a node
    /// cannot slip errors about other nodes' flows past its Pods' egress policy.
    fn vouched(&self, index: u32, mut header: Header) -> Header {
        let quoted = header.icmp_error.and_then(|error| error.quoted);
        if quoted.is_some_and(|sent| !self.peers.source_allowed(index, sent.destination)) {
            header.icmp_error = None;
        }
        header
    }

    /// Starts handshakes on new sessions at once (a new peer, or a key one side rotates to),
    /// so traffic can move to them without waiting for a packet or a keepalive.
    pub async fn initiate(&mut self, sessions: &[u32], out: &mut [u8], wire: &mut impl Wire) {
        for index in sessions {
            let Some(peer) = self.peers.peer_of_session(*index) else {
                continue;
            };
            let Some(slot) = self.peers.slot_mut(peer) else {
                continue;
            };
            let Some(to) = slot.endpoint else {
                continue;
            };
            let Some(session) = slot.session_mut(*index) else {
                continue;
            };
            if let TunnResult::WriteToNetwork(message) =
                session.tunn.format_handshake_initiation(out, false)
            {
                send_to_peer(wire, &mut slot.counters, message, to).await;
            }
        }
    }

    /// Runs boringtun's timers (handshake retries, keepalives, session expiry) on every
    /// session, then lets each peer choose its outbound session again.
    pub async fn run_timers(&mut self, out: &mut [u8], wire: &mut impl Wire) {
        for slot in self.peers.slots_mut() {
            for session in &mut slot.sessions {
                match session.tunn.update_timers(out) {
                    TunnResult::WriteToNetwork(message) => {
                        if let Some(to) = slot.endpoint {
                            send_to_peer(wire, &mut slot.counters, message, to).await;
                        }
                    }
                    TunnResult::Err(error) => {
                        tracing::trace!(peer = %slot.peer.name, ?error, "timer");
                    }
                    _ => {}
                }
            }
        }
        self.peers.choose_outbound(None);
    }
}

/// Sends a message to a peer, counting the packet it carries (if any) as sent: a packet is
/// counted when it leaves, including one queued during a handshake and flushed after it.
async fn send_to_peer(
    wire: &mut impl Wire,
    counters: &mut PeerCounters,
    message: &[u8],
    to: SocketAddr,
) {
    counters.tx_bytes += data_bytes(message) as u64;
    wire.send(message, to).await;
}

/// Records the flow of `packet`, then encrypts it. The flow is recorded first, whatever
/// encapsulation returns: a packet boringtun queues while a handshake is in progress (`Done`
/// now) is sent later, once the handshake completes, and its reply must be recognised then.
fn seal<'o>(
    policy: &mut PacketPolicy,
    tunn: &mut Tunn,
    header: &Header,
    packet: &[u8],
    out: &'o mut [u8],
) -> TunnResult<'o> {
    policy.outbound(header, Instant::now());
    tunn.encapsulate(packet, out)
}

fn is_link_local(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    }
}

#[cfg(test)]
#[path = "forward_tests.rs"]
mod tests;

//! The datapath loop: one task owning the TUN device, the UDP socket and the peer table.
//!
//! TUN -> encapsulate for the peer whose allowed IPs hold the destination -> UDP.
//! UDP -> find the peer (handshake initiations by the initiator's static key, everything else
//! by receiver index) -> decapsulate -> checks (source in the peer's allowed IPs, destination
//! a local Pod block) -> TUN. Timers run on a fixed tick. Buffers are allocated once.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tun_rs::AsyncDevice;

use super::packet::addresses;
use super::packet_policy::PacketPolicy;
use super::peers::{Incoming, PeerTable};
use super::prefix_table::PrefixTable;
use super::stats::{DatapathStatus, DropCounters, DropReason, PeerTraffic};
use crate::mesh::Peer;
use crate::policy::PolicySet;
use std::time::Instant;

/// Largest datagram or packet handled; also the size of each reusable buffer.
const BUFFER_BYTES: usize = 65_536;
/// Most packets handled per readiness wake-up of one direction before the loop looks at the
/// other direction, the timers and commands again.
const BATCH: usize = 64;
/// How often boringtun's timers run (handshake retries, keepalives, session expiry).
const TIMER_TICK: Duration = Duration::from_millis(100);
/// How often the status snapshot is refreshed and the handshake rate limiter reset.
const STATUS_TICK: Duration = Duration::from_secs(1);
/// Drops are summarised in the log at most this often.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What the agent tells the datapath. (No `Debug`: it can carry private keys.)
pub enum Command {
    /// The desired peers, as the mesh computation produced them.
    Peers(BTreeMap<String, Peer>),
    /// A new NetworkPolicy rule set: in force for new flows at once, and for tracked flows at
    /// their next decrypted packet (which may revoke them).
    Policy(Arc<PolicySet>),
    /// This node's static keys: the current one, and the next one while rotating (handshakes
    /// to either are accepted; peers are reached on the newest).
    Keys {
        current: x25519::StaticSecret,
        next: Option<x25519::StaticSecret>,
        /// Answered once the keys are in force.
        applied: tokio::sync::oneshot::Sender<()>,
    },
}

pub struct Engine {
    pub(super) tun: Arc<AsyncDevice>,
    pub(super) udp: UdpSocket,
    /// Whether `udp` is a dual-stack IPv6 socket (IPv4 peers then need mapped addresses).
    pub(super) udp_v6: bool,
    pub(super) peers: PeerTable,
    /// The node's own Pod blocks: decrypted packets must be addressed inside them.
    pub(super) local_blocks: PrefixTable<()>,
    pub(super) drops: DropCounters,
    pub(super) status: watch::Sender<DatapathStatus>,
    /// Drop totals by reason at the last drop log line (drops are logged at most every
    /// `DROP_LOG_INTERVAL`, as a summary, never per packet).
    pub(super) logged_drops: BTreeMap<String, u64>,
    pub(super) last_drop_log: Option<std::time::Instant>,
    /// NetworkPolicy: the rule set in force, connection tracking, fragments, counters.
    pub(super) policy: PacketPolicy,
}

/// Canonical form of an address received on a dual-stack socket.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

impl Engine {
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut tun_buf = vec![0u8; BUFFER_BYTES];
        let mut udp_buf = vec![0u8; BUFFER_BYTES];
        let mut out = vec![0u8; BUFFER_BYTES];
        let mut timers = tokio::time::interval(TIMER_TICK);
        timers.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut status = tokio::time::interval(STATUS_TICK);
        loop {
            tokio::select! {
                read = self.tun.recv(&mut tun_buf) => match read {
                    Ok(len) => {
                        self.encrypt_outbound(&tun_buf[..len], &mut out).await;
                        // Take what else is queued before going back to the scheduler.
                        for _ in 1..BATCH {
                            let Ok(len) = self.tun.try_recv(&mut tun_buf) else { break };
                            self.encrypt_outbound(&tun_buf[..len], &mut out).await;
                        }
                    }
                    Err(error) => {
                        tracing::error!(%error, "TUN read failed; datapath stops");
                        break;
                    }
                },
                received = self.udp.recv_from(&mut udp_buf) => match received {
                    Ok((len, src)) => {
                        self.receive_datagram(canonical(src), &udp_buf[..len], &mut out).await;
                        for _ in 1..BATCH {
                            let Ok((len, src)) = self.udp.try_recv_from(&mut udp_buf) else { break };
                            self.receive_datagram(canonical(src), &udp_buf[..len], &mut out).await;
                        }
                    }
                    Err(error) => tracing::debug!(%error, "UDP receive error"),
                },
                _ = timers.tick() => self.run_timers(&mut out).await,
                _ = status.tick() => {
                    self.peers.reset_rate_limiters();
                    self.publish_status();
                    self.log_drops();
                }
                command = commands.recv() => match command {
                    Some(Command::Peers(peers)) => {
                        let created = self.peers.sync(&peers);
                        self.initiate(&created, &mut out).await;
                        self.publish_status();
                    }
                    Some(Command::Keys { current, next, applied }) => {
                        // No handshake is started here: peers start them to a next key as
                        // soon as they read it, and the sessions' timers do otherwise.
                        self.peers.set_keys(current, next);
                        self.publish_status();
                        let _ = applied.send(());
                    }
                    Some(Command::Policy(policy)) => {
                        self.policy.gate.set_policy(policy);
                        tracing::info!(version = self.policy.gate.version(), "policy rule set in force");
                        self.publish_status();
                    }
                    None => break,
                },
            }
        }
    }

    /// A packet the kernel routed into the TUN: encrypt it for its peer.
    async fn encrypt_outbound(&mut self, packet: &[u8], out: &mut [u8]) {
        let Some((source, destination)) = addresses(packet) else {
            self.drops.count(DropReason::NotIp);
            return;
        };
        if destination.is_multicast() || is_link_local(destination) {
            // The kernel's own chatter on the TUN (router solicitations, MLD): never for a peer.
            return;
        }
        let Some(index) = self.peers.index_for_destination(destination) else {
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
        let sealed = seal(
            &mut self.policy,
            &mut session.tunn,
            (source, destination),
            packet,
            out,
        );
        match sealed {
            TunnResult::WriteToNetwork(bytes) => match endpoint {
                Some(to) => {
                    slot.counters.tx_bytes += packet.len() as u64;
                    let bytes: &[u8] = bytes;
                    let udp = &self.udp;
                    send_on(udp, self.udp_v6, bytes, to).await;
                }
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
    async fn receive_datagram(&mut self, src: SocketAddr, datagram: &[u8], out: &mut [u8]) {
        let (peer, session) = match self.peers.classify(src, datagram, out) {
            Incoming::Session { peer, session } => (peer, session),
            Incoming::Reply(cookie) => {
                send_on(&self.udp, self.udp_v6, cookie, src).await;
                return;
            }
            Incoming::Drop(reason) => {
                self.drops.count(reason);
                return;
            }
        };
        self.decapsulate(peer, session, src, datagram, out).await;
        // A handshake may have completed: outbound traffic may move to the new session.
        if matches!(datagram.first(), Some(1 | 2)) {
            self.peers.refresh_slot(peer);
        }
    }

    async fn decapsulate(
        &mut self,
        peer: u32,
        session: u32,
        src: SocketAddr,
        datagram: &[u8],
        out: &mut [u8],
    ) {
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
                TunnResult::WriteToNetwork(bytes) => {
                    // A handshake answer or a queued packet: keep flushing until Done. Both
                    // follow an authenticated message (sessions check MAC1 only and never
                    // answer with a cookie; rate limiting happens once, in `classify`), so
                    // the peer is where it spoke from.
                    slot.endpoint = Some(src);
                    let bytes: &[u8] = bytes;
                    send_on(&self.udp, self.udp_v6, bytes, src).await;
                }
                TunnResult::WriteToTunnelV4(packet, _) | TunnResult::WriteToTunnelV6(packet, _) => {
                    slot.endpoint = Some(src);
                    let packet: &[u8] = packet;
                    self.deliver(peer, packet).await;
                    return;
                }
                TunnResult::Done => return,
                TunnResult::Err(error) => {
                    tracing::debug!(peer = %slot.peer.name, ?error, "decapsulate refused a message");
                    slot.counters.drops.count(DropReason::Rejected);
                    return;
                }
            }
        }
    }

    /// Starts handshakes on new sessions at once (a new peer, or a key one side rotates to),
    /// so traffic can move to them without waiting for a packet or a keepalive.
    async fn initiate(&mut self, sessions: &[u32], out: &mut [u8]) {
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
            if let TunnResult::WriteToNetwork(bytes) =
                session.tunn.format_handshake_initiation(out, false)
            {
                let bytes: &[u8] = bytes;
                send_on(&self.udp, self.udp_v6, bytes, to).await;
            }
        }
    }

    /// The checks after decryption, in order: source in the peer's allowed IPs, destination
    /// a local Pod block. Only then is the packet written to the TUN.
    async fn deliver(&mut self, index: u32, packet: &[u8]) {
        if packet.is_empty() {
            return; // keepalive
        }
        let verdict = match addresses(packet) {
            None => Err(DropReason::NotIp),
            Some((source, _)) if !self.peers.source_allowed(index, source) => {
                Err(DropReason::SourceNotAllowed)
            }
            Some((_, destination)) if self.local_blocks.lookup(destination).is_none() => {
                Err(DropReason::DestinationNotLocal)
            }
            Some((source, destination)) => {
                self.policy
                    .inbound(source, destination, packet, Instant::now())
            }
        };
        let Some(slot) = self.peers.slot_mut(index) else {
            return;
        };
        match verdict {
            Ok(()) => {
                slot.counters.rx_bytes += packet.len() as u64;
                if let Err(error) = self.tun.send(packet).await {
                    tracing::debug!(%error, "TUN write failed");
                }
            }
            Err(reason) => {
                slot.counters.drops.count(reason);
                tracing::debug!(peer = %slot.peer.name, reason = reason.code(), "dropped a decrypted packet");
            }
        }
    }

    async fn run_timers(&mut self, out: &mut [u8]) {
        for slot in self.peers.slots_mut() {
            for session in &mut slot.sessions {
                match session.tunn.update_timers(out) {
                    TunnResult::WriteToNetwork(bytes) => {
                        if let Some(to) = slot.endpoint {
                            let bytes: &[u8] = bytes;
                            send_on(&self.udp, self.udp_v6, bytes, to).await;
                        }
                    }
                    TunnResult::Err(error) => {
                        tracing::trace!(peer = %slot.peer.name, ?error, "timer");
                    }
                    _ => {}
                }
            }
        }
        self.peers.refresh_preferred();
    }

    fn publish_status(&self) {
        let peers = self
            .peers
            .slots()
            .map(|slot| PeerTraffic {
                name: slot.peer.name.clone(),
                public_key: slot.peer.public_key.to_string(),
                endpoint: slot.endpoint.map(|e| e.to_string()),
                allowed_ips: slot
                    .peer
                    .allowed_ips
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                handshake_age_secs: slot.handshake_age().map(|d| d.as_secs()),
                rx_bytes: slot.counters.rx_bytes,
                tx_bytes: slot.counters.tx_bytes,
                drops: slot.counters.drops.to_map(),
            })
            .collect();
        let drops = self.drops.to_map();
        let conntrack = self.policy.gate.conntrack();
        let (flows, evictions) = (conntrack.len(), conntrack.evictions);
        let capacity = conntrack.capacity();
        let policy = self
            .policy
            .counters
            .status(self.policy.gate.policy(), self.policy.gate.version());
        let key_rotation = self.peers.key_moves();
        self.status.send_modify(|status| {
            status.key_rotation = key_rotation;
            status.peers = peers;
            status.drops = drops;
            status.conntrack_flows = flows;
            status.conntrack_capacity = capacity;
            status.conntrack_evictions = evictions;
            status.policy = policy;
        });
    }
}

impl Engine {
    /// Logs, at most every `DROP_LOG_INTERVAL`, how many packets were dropped since the last
    /// summary, by reason.
    fn log_drops(&mut self) {
        let due = self
            .last_drop_log
            .is_none_or(|at| at.elapsed() >= DROP_LOG_INTERVAL);
        if !due {
            return;
        }
        let mut totals = self.drops.to_map();
        for slot in self.peers.slots() {
            for (reason, count) in slot.counters.drops.to_map() {
                *totals.entry(reason).or_default() += count;
            }
        }
        let new: Vec<String> = totals
            .iter()
            .filter_map(|(reason, total)| {
                let before = self.logged_drops.get(reason).copied().unwrap_or(0);
                (*total > before).then(|| format!("{reason}={}", total - before))
            })
            .collect();
        if !new.is_empty() {
            tracing::warn!(drops = %new.join(" "), "datapath dropped packets");
        }
        self.logged_drops = totals;
        self.last_drop_log = Some(std::time::Instant::now());
    }
}

/// Records the flow of `packet` (from `addresses.0` to `addresses.1`), then encrypts it. The
/// flow is recorded first, whatever encapsulation returns: a packet boringtun queues while a
/// handshake is in progress (`Done` now) is sent later, once the handshake completes, and its
/// reply must be recognised then.
fn seal<'o>(
    policy: &mut PacketPolicy,
    tunn: &mut Tunn,
    addresses: (IpAddr, IpAddr),
    packet: &[u8],
    out: &'o mut [u8],
) -> TunnResult<'o> {
    policy.outbound(addresses.0, addresses.1, packet, Instant::now());
    tunn.encapsulate(packet, out)
}

fn is_link_local(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    }
}

/// Sends on a dual-stack (`v6`) or IPv4 socket, mapping IPv4 destinations for the former.
async fn send_on(udp: &UdpSocket, v6: bool, bytes: &[u8], to: SocketAddr) {
    let to = match to {
        SocketAddr::V4(v4) if v6 => {
            SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
        }
        _ => to,
    };
    if let Err(error) = udp.send_to(bytes, to).await {
        tracing::debug!(%error, %to, "UDP send failed");
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;

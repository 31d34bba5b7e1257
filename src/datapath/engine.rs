//! The datapath loop: one task owning the TUN device, the UDP socket and the [`Forwarder`]
//! (peer table, checks, policy), which decides what happens to each packet and datagram.
//! Timers run on a fixed tick. Buffers are allocated once.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use boringtun::x25519;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tun_rs::AsyncDevice;

use super::forward::{Forwarder, Wire};
use super::session::DATA_OVERHEAD;
use super::stats::{DatapathStatus, PeerTraffic};
use crate::mesh::Peer;
use crate::policy::PolicySet;

/// Largest datagram or packet handled; also the size of each reusable buffer.
const BUFFER_BYTES: usize = 65_536;
/// Most packets handled per readiness wake-up of one direction before the loop looks at the
/// other direction, the timers and commands again.
const BATCH: usize = 64;
/// How often boringtun's timers run (handshake retries, keepalives, session expiry).
const TIMER_TICK: Duration = Duration::from_millis(100);
/// How often the status snapshot is refreshed, the handshake rate limiter reset and expired
/// revoked flows forgotten.
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
    pub(super) forwarder: Forwarder,
    pub(super) status: watch::Sender<DatapathStatus>,
    /// Drop totals by reason at the last drop log line (drops are logged at most every
    /// `DROP_LOG_INTERVAL`, as a summary, never per packet).
    pub(super) logged_drops: BTreeMap<String, u64>,
    pub(super) last_drop_log: Option<std::time::Instant>,
}

/// The engine's devices, as the forwarder writes to them.
struct Devices<'a> {
    tun: &'a AsyncDevice,
    udp: &'a UdpSocket,
    udp_v6: bool,
}

impl<'a> Devices<'a> {
    fn new(tun: &'a AsyncDevice, udp: &'a UdpSocket, udp_v6: bool) -> Self {
        Self { tun, udp, udp_v6 }
    }
}

impl Wire for Devices<'_> {
    async fn send(&mut self, message: &[u8], to: SocketAddr) {
        send_on(self.udp, self.udp_v6, message, to).await;
    }

    async fn deliver(&mut self, packet: &[u8]) {
        if let Err(error) = self.tun.send(packet).await {
            tracing::debug!(%error, "TUN write failed");
        }
    }
}

/// Canonical form of an address received on a dual-stack socket.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

impl Engine {
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut tun_buf = vec![0u8; BUFFER_BYTES];
        let mut udp_buf = vec![0u8; BUFFER_BYTES];
        // boringtun needs room for the packet plus its 32 bytes of WireGuard data overhead.
        let mut out = vec![0u8; BUFFER_BYTES + DATA_OVERHEAD];
        let mut timers = tokio::time::interval(TIMER_TICK);
        timers.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut status = tokio::time::interval(STATUS_TICK);
        loop {
            tokio::select! {
                read = self.tun.recv(&mut tun_buf) => match read {
                    Ok(len) => {
                        let wire = &mut Devices::new(&self.tun, &self.udp, self.udp_v6);
                        self.forwarder.outbound(&tun_buf[..len], &mut out, wire).await;
                        // Take what else is queued before going back to the scheduler.
                        for _ in 1..BATCH {
                            let Ok(len) = self.tun.try_recv(&mut tun_buf) else { break };
                            self.forwarder.outbound(&tun_buf[..len], &mut out, wire).await;
                        }
                    }
                    Err(error) => {
                        tracing::error!(%error, "TUN read failed; datapath stops");
                        break;
                    }
                },
                received = self.udp.recv_from(&mut udp_buf) => match received {
                    Ok((len, src)) => {
                        let wire = &mut Devices::new(&self.tun, &self.udp, self.udp_v6);
                        let datagram = &udp_buf[..len];
                        self.forwarder.receive(canonical(src), datagram, &mut out, wire).await;
                        for _ in 1..BATCH {
                            let Ok((len, src)) = self.udp.try_recv_from(&mut udp_buf) else { break };
                            let datagram = &udp_buf[..len];
                            self.forwarder.receive(canonical(src), datagram, &mut out, wire).await;
                        }
                    }
                    Err(error) => tracing::debug!(%error, "UDP receive error"),
                },
                _ = timers.tick() => {
                    let wire = &mut Devices::new(&self.tun, &self.udp, self.udp_v6);
                    self.forwarder.run_timers(&mut out, wire).await;
                }
                _ = status.tick() => {
                    self.forwarder.peers.reset_rate_limiters();
                    self.forwarder.policy.gate.sweep_revoked(std::time::Instant::now());
                    self.publish_status();
                    self.log_drops();
                }
                command = commands.recv() => match command {
                    Some(Command::Peers(peers)) => {
                        let created = self.forwarder.peers.sync(&peers);
                        let wire = &mut Devices::new(&self.tun, &self.udp, self.udp_v6);
                        self.forwarder.initiate(&created, &mut out, wire).await;
                        self.publish_status();
                    }
                    Some(Command::Keys { current, next, applied }) => {
                        // No handshake is started here: peers start them to a next key as
                        // soon as they read it, and the sessions' timers do otherwise.
                        self.forwarder.peers.set_keys(current, next);
                        self.publish_status();
                        let _ = applied.send(());
                    }
                    Some(Command::Policy(policy)) => {
                        let gate = &mut self.forwarder.policy.gate;
                        gate.set_policy(policy);
                        tracing::info!(version = gate.version(), "policy rule set in force");
                        self.publish_status();
                    }
                    None => break,
                },
            }
        }
    }

    fn publish_status(&self) {
        let Forwarder {
            peers: table,
            policy,
            drops,
            ..
        } = &self.forwarder;
        let peers = table
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
        let key_rotation = table.key_moves();
        let drops = drops.to_map();
        let conntrack = policy.gate.conntrack();
        let (flows, evictions) = (conntrack.len(), conntrack.evictions);
        let (revoked, revoked_evictions) = (conntrack.revoked_len(), conntrack.revoked_evictions);
        let capacity = conntrack.capacity();
        let policy = policy
            .counters
            .status(policy.gate.policy(), policy.gate.version());
        self.status.send_modify(|status| {
            status.key_rotation = key_rotation;
            status.peers = peers;
            status.drops = drops;
            status.conntrack_flows = flows;
            status.conntrack_capacity = capacity;
            status.conntrack_evictions = evictions;
            status.conntrack_revoked_flows = revoked;
            status.conntrack_revoked_evictions = revoked_evictions;
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
        let mut totals = self.forwarder.drops.to_map();
        for slot in self.forwarder.peers.slots() {
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

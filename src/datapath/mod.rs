//! The encrypted datapath: userspace WireGuard (boringtun) between a TUN device and one UDP
//! socket, plus the kernel plumbing that steers Pod traffic into it. See `engine` for the
//! packet loop and `kernel` for routes and rules.

mod engine;
mod forward;
pub mod fragments;
pub mod kernel;
pub mod packet;
pub mod packet_policy;
pub mod peers;
pub mod policy_stats;
pub mod prefix_table;
pub mod session;
pub mod stats;
pub mod uapi;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use boringtun::x25519;
use ipnetwork::IpNetwork;
use tokio::sync::{mpsc, watch};

use crate::mesh::{Mesh, RejectReason, Subject};
use crate::record::{covers, overlaps};
use engine::{Command, Engine};
use kernel::{Kernel, Plumbing, TableRoute};
use peers::PeerTable;
use prefix_table::PrefixTable;
use stats::{DatapathStatus, DropCounters};

/// Handshakes per second before boringtun demands cookies.
const HANDSHAKE_RATE_LIMIT: u64 = 100;
/// Fragmented datagrams whose first fragment's verdict is remembered, and for how long (the
/// kernel's IPv4 reassembly timeout).
const FRAGMENT_DATAGRAMS: usize = 1024;
const FRAGMENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What happens to a BGP-routed Pod prefix that has no valid peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encryption {
    /// Unreachable in weft's table: never sent in clear (the default).
    Required,
    /// Left to the BGP route, in clear (migration only).
    Preferred,
}

impl Encryption {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Required => "required",
            Self::Preferred => "preferred",
        }
    }
}

#[derive(Debug, Clone)]
pub struct DatapathConfig {
    pub interface: String,
    pub listen_port: u16,
    pub fwmark: u32,
    pub table: u32,
    pub rule_priority: u32,
    /// `None`: the MTU of the interface holding `underlay_address` (1500 if none does).
    pub underlay_mtu: Option<u32>,
    pub underlay_address: Option<IpAddr>,
    /// WireGuard may run over IPv6 here (see [`underlay_may_be_ipv6`]): the TUN leaves room
    /// for the larger IPv6 header.
    pub ipv6_underlay: bool,
    pub local_blocks: Vec<IpNetwork>,
    pub encryption: Encryption,
    /// A clean stop leaves the rule and the unreachable routes in place (the tunnel routes
    /// go with the TUN), so Pod traffic is dropped, not sent in clear, until weft is back.
    pub keep_routing_on_exit: bool,
    /// Where the WireGuard userspace API socket is served.
    pub uapi_socket: std::path::PathBuf,
    /// Most live flows (and, apart, revoked ones) connection tracking holds; when full, the
    /// least recently used is evicted.
    pub conntrack_max: std::num::NonZeroUsize,
    /// For how long after the datapath starts any outbound TCP packet opens a tracked flow,
    /// not only a SYN (zero: never).
    pub conntrack_pickup: std::time::Duration,
    /// A NetworkPolicy source is configured: decrypted packets are dropped until its first
    /// rule set is in force (without one, nothing is isolated).
    pub policy_required: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("cannot create TUN device {name}: {source}")]
    Tun {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the WireGuard UDP socket on port {port}: {source}")]
    Socket {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel plumbing: {0}")]
    Kernel(#[from] kernel::KernelError),
    #[error("the datapath task has stopped")]
    Stopped,
}

/// The running datapath.
pub struct Datapath {
    config: DatapathConfig,
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<DatapathStatus>,
    kernel: Kernel,
    /// The table the last mesh asked for, which [`Datapath::repair`] puts back (before the
    /// first mesh, the start-up table: Pod CIDRs `unreachable`, own blocks `throw`).
    desired: std::sync::Mutex<BTreeSet<(IpNetwork, TableRoute)>>,
    task: tokio::task::JoinHandle<()>,
    uapi: tokio::task::JoinHandle<()>,
    /// The own private key `wg show` reports (the current one).
    uapi_key: uapi::SharedKeyHex,
}

/// The TUN's MTU: the underlay's minus WireGuard's overhead (outer IP header, UDP header,
/// 16 bytes of WireGuard header and 16 of authentication tag): 60 over IPv4, 80 over IPv6.
pub fn tunnel_mtu(underlay_mtu: u32, ipv6_underlay: bool) -> u32 {
    let overhead = if ipv6_underlay { 80 } else { 60 };
    underlay_mtu.saturating_sub(overhead)
}

/// Whether WireGuard may run over IPv6 to or from this node: its endpoint, or any of its
/// addresses (which peers may be given as endpoints, and over which peers with IPv6
/// endpoints are reached), is IPv6. Then every packet must fit an IPv6 underlay.
pub fn underlay_may_be_ipv6(addresses: &[IpAddr], endpoint: Option<std::net::SocketAddr>) -> bool {
    endpoint.is_some_and(|e| e.is_ipv6()) || addresses.iter().any(IpAddr::is_ipv6)
}

/// The first host address of each family's first block: the tunnel's own address, so traffic
/// the node itself sends to remote Pods carries a source peers accept.
pub fn tunnel_addresses(blocks: &[IpNetwork]) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for v4 in [true, false] {
        if let Some(block) = blocks.iter().find(|b| b.is_ipv4() == v4) {
            let first = match block.network() {
                IpAddr::V4(n) => IpAddr::from(u32::from(n).saturating_add(1).to_be_bytes()),
                IpAddr::V6(n) => IpAddr::V6(Ipv6Addr::from(u128::from(n).saturating_add(1))),
            };
            if block.contains(first) {
                out.push(first);
            }
        }
    }
    out
}

fn udp_socket(port: u16, fwmark: u32) -> std::io::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let open = |domain: Domain, addr: SocketAddr| -> std::io::Result<Socket> {
        let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
        if domain == Domain::IPV6 {
            socket.set_only_v6(false)?;
        }
        socket.set_mark(fwmark)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        Ok(socket)
    };
    let socket = open(
        Domain::IPV6,
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
    )
    .or_else(|_| open(Domain::IPV4, SocketAddr::from(([0, 0, 0, 0], port))))?;
    tokio::net::UdpSocket::from_std(socket.into())
}

impl Datapath {
    /// Creates the TUN and the socket, configures the kernel, and starts the packet loop.
    /// Until the first mesh, weft's table guards `initial` (with encryption required: its Pod
    /// CIDRs unreachable, its own blocks thrown back), whatever an earlier run left there.
    pub async fn start(
        config: DatapathConfig,
        initial: &Guarded,
        current: &weft_keys::PrivateKey,
        next: Option<&weft_keys::PrivateKey>,
    ) -> Result<Self, DatapathError> {
        let underlay_mtu = match (config.underlay_mtu, config.underlay_address) {
            (Some(mtu), _) => mtu,
            (None, Some(address)) => kernel::underlay_mtu(address).await?.unwrap_or(1500),
            (None, None) => 1500,
        };
        let mtu = tunnel_mtu(underlay_mtu, config.ipv6_underlay);
        let tun = tun_rs::DeviceBuilder::new()
            .name(config.interface.clone())
            .mtu(u16::try_from(mtu).unwrap_or(u16::MAX))
            .build_async()
            .map_err(|source| DatapathError::Tun {
                name: config.interface.clone(),
                source,
            })?;
        let udp = udp_socket(config.listen_port, config.fwmark).map_err(|source| {
            DatapathError::Socket {
                port: config.listen_port,
                source,
            }
        })?;
        let own_addresses = tunnel_addresses(&config.local_blocks);
        let kernel = Kernel::setup(Plumbing {
            interface: config.interface.clone(),
            table: config.table,
            fwmark: config.fwmark,
            rule_priority: config.rule_priority,
            mtu,
            tunnel_addresses: own_addresses.clone(),
            require_ipv6: config.local_blocks.iter().any(|b| b.is_ipv6()),
        })
        .await?;

        let mut peers = PeerTable::new(secret_of(current), HANDSHAKE_RATE_LIMIT);
        if let Some(next) = next {
            peers.set_keys(secret_of(current), Some(secret_of(next)));
        }
        let mut local_blocks = PrefixTable::default();
        for block in &config.local_blocks {
            local_blocks.insert(*block, ());
        }
        let (status_tx, status) = watch::channel(DatapathStatus {
            interface: config.interface.clone(),
            listen_port: config.listen_port,
            encryption: config.encryption.as_str().to_string(),
            ..DatapathStatus::default()
        });
        let udp_v6 = udp.local_addr().is_ok_and(|a| a.is_ipv6());
        let engine = Engine {
            tun: Arc::new(tun),
            udp,
            udp_v6,
            forwarder: forward::Forwarder {
                peers,
                local_blocks,
                drops: DropCounters::default(),
                policy: packet_policy::PacketPolicy::new(
                    crate::policy::gate::PolicyGate::new(
                        crate::policy::conntrack::Conntrack::new(
                            config.conntrack_max,
                            crate::policy::conntrack::Timeouts::default(),
                        )
                        .with_pickup(std::time::Instant::now(), config.conntrack_pickup),
                        config.policy_required,
                    )
                    .with_own_addresses(own_addresses),
                    fragments::FragmentTable::new(FRAGMENT_DATAGRAMS, FRAGMENT_TIMEOUT),
                ),
            },
            status: status_tx,
            logged_drops: BTreeMap::new(),
            last_drop_log: None,
        };
        let before_first_mesh = desired_table(&Mesh::default(), initial, config.encryption);
        kernel.sync_routes(&before_first_mesh).await?;
        let (commands, receiver) = mpsc::channel(16);
        let task = tokio::spawn(engine.run(receiver));
        let uapi_key = uapi::SharedKeyHex::new(current);
        let uapi_source = uapi::UapiSource {
            private_key_hex: uapi_key.clone(),
            fwmark: config.fwmark,
            status: status.clone(),
        };
        let uapi_path = config.uapi_socket.clone();
        let uapi = tokio::spawn(async move {
            if let Err(error) = uapi::serve(uapi_path.clone(), uapi_source).await {
                tracing::error!(%error, path = %uapi_path.display(), "WireGuard API socket failed");
            }
        });
        tracing::info!(interface = %config.interface, port = config.listen_port, mtu, "datapath up");
        Ok(Self {
            config,
            commands,
            status,
            kernel,
            desired: std::sync::Mutex::new(before_first_mesh),
            task,
            uapi,
            uapi_key,
        })
    }

    /// Sets this node's keys: `next` while rotating (handshakes to either key are accepted and
    /// peers are reached on it as they learn it), `None` once `current` is the only key.
    pub async fn set_keys(
        &self,
        current: &weft_keys::PrivateKey,
        next: Option<&weft_keys::PrivateKey>,
    ) -> Result<(), DatapathError> {
        let (applied, in_force) = tokio::sync::oneshot::channel();
        self.commands
            .send(Command::Keys {
                current: secret_of(current),
                next: next.map(secret_of),
                applied,
            })
            .await
            .map_err(|_| DatapathError::Stopped)?;
        in_force.await.map_err(|_| DatapathError::Stopped)?;
        self.uapi_key.set(current);
        Ok(())
    }

    /// Applies a new mesh: peers to the engine, routes to weft's table.
    pub async fn update(&self, mesh: &Mesh, guarded: &Guarded) -> Result<(), DatapathError> {
        self.commands
            .send(Command::Peers(mesh.peers.clone()))
            .await
            .map_err(|_| DatapathError::Stopped)?;
        let table = desired_table(mesh, guarded, self.config.encryption);
        if let Ok(mut desired) = self.desired.lock() {
            desired.clone_from(&table);
        }
        self.apply_kernel(&table).await.map(|_| ())
    }

    /// Puts the kernel state back as the last mesh asked for, whatever changed it since (a TUN
    /// set down, a rule or route deleted by hand): run periodically by the agent. Returns how
    /// many things it put back.
    pub async fn repair(&self) -> Result<usize, DatapathError> {
        let table = match self.desired.lock() {
            Ok(desired) => desired.clone(),
            Err(_) => return Err(DatapathError::Stopped),
        };
        self.apply_kernel(&table).await
    }

    /// Repairs the link and rules and syncs the routes to `table`. The routes are synced even
    /// if the link repair fails, so peers that come and go still get their routes and
    /// backstops; the first error is returned.
    async fn apply_kernel(
        &self,
        table: &BTreeSet<(IpNetwork, TableRoute)>,
    ) -> Result<usize, DatapathError> {
        let repaired = self.kernel.repair().await;
        let synced = self.kernel.sync_routes(table).await;
        Ok(repaired? + synced?)
    }

    /// Live datapath counters, refreshed every second and after every mesh change.
    pub fn status_receiver(&self) -> watch::Receiver<DatapathStatus> {
        self.status.clone()
    }

    /// Puts a new NetworkPolicy rule set in force.
    pub async fn set_policy(
        &self,
        policy: Arc<crate::policy::PolicySet>,
    ) -> Result<(), DatapathError> {
        self.commands
            .send(Command::Policy(policy))
            .await
            .map_err(|_| DatapathError::Stopped)
    }

    /// Completes if the packet loop stops (a TUN failure): the agent must not carry on then.
    pub async fn stopped(&self) {
        self.commands.closed().await;
    }

    /// Stops the packet loop and removes weft's rules and routes, unless configured to keep
    /// them ([`DatapathConfig::keep_routing_on_exit`]); the TUN disappears with the process.
    pub async fn shutdown(self) {
        self.task.abort();
        self.uapi.abort();
        let _ = std::fs::remove_file(&self.config.uapi_socket);
        if self.config.keep_routing_on_exit {
            tracing::info!(
                table = self.config.table,
                "leaving weft's rule and unreachable routes in place: Pod traffic to other nodes is dropped until weft is back"
            );
            return;
        }
        if let Err(error) = self.kernel.teardown().await {
            tracing::warn!(%error, "removing weft's routes and rules failed");
        }
    }
}

fn secret_of(key: &weft_keys::PrivateKey) -> x25519::StaticSecret {
    x25519::StaticSecret::from(*key.to_bytes())
}

/// Which prefixes are Pod addresses weft must guard (fail closed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Guarded {
    /// The cluster's Pod CIDRs, as configured.
    pub pod_cidrs: Vec<IpNetwork>,
    /// This node's own blocks (delivered locally, never tunnelled).
    pub own_blocks: Vec<IpNetwork>,
    /// Blocks that other nodes' valid records claim.
    pub remote_blocks: Vec<IpNetwork>,
}

/// The routes weft's table should hold for `mesh`: peers' allowed IPs into the tunnel; our
/// own blocks thrown back to the main table; and, with encryption required, every other Pod
/// prefix unreachable, so nothing meant for a Pod leaves in clear. Tunnel routes get an
/// unreachable backstop at a higher metric, which takes over if the TUN disappears.
pub fn desired_table(
    mesh: &Mesh,
    guarded: &Guarded,
    encryption: Encryption,
) -> BTreeSet<(IpNetwork, TableRoute)> {
    let tunnelled: BTreeSet<IpNetwork> = mesh
        .peers
        .values()
        .flat_map(|p| p.allowed_ips.iter().copied())
        .collect();
    let mut table: BTreeSet<(IpNetwork, TableRoute)> = tunnelled
        .iter()
        .map(|ip| (*ip, TableRoute::Tunnel))
        .collect();
    table.extend(guarded.own_blocks.iter().map(|b| (*b, TableRoute::Throw)));
    if encryption == Encryption::Preferred {
        return table;
    }
    let ours = |p: &IpNetwork| guarded.own_blocks.iter().any(|own| overlaps(own, p));
    let remote: Vec<IpNetwork> = guarded
        .remote_blocks
        .iter()
        .filter(|b| !ours(b))
        .copied()
        .collect();
    let rejected_pod_routes = mesh.rejections.iter().filter_map(|r| match r.subject {
        Subject::Route { prefix, .. } if r.reason != RejectReason::OwnNode => Some(prefix),
        _ => None,
    });
    let pod_routes: Vec<IpNetwork> = rejected_pod_routes
        .filter(|p| !ours(p))
        .filter(|p| {
            remote
                .iter()
                .chain(&guarded.pod_cidrs)
                .any(|guard| covers(guard, p))
        })
        .collect();
    let unreachable = guarded
        .pod_cidrs
        .iter()
        .chain(&remote)
        .chain(&pod_routes)
        .chain(&tunnelled);
    table.extend(unreachable.map(|p| (*p, TableRoute::Unreachable)));
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::{Peer, RejectReason, Rejection};

    #[test]
    fn tunnel_mtu_leaves_room_for_wireguard_over_each_underlay_family() {
        assert_eq!(tunnel_mtu(1500, false), 1440);
        assert_eq!(tunnel_mtu(1500, true), 1420);
        assert_eq!(tunnel_mtu(9000, false), 8940);
        assert_eq!(tunnel_mtu(40, false), 0);
    }

    #[test]
    fn an_ipv6_address_or_endpoint_anywhere_makes_room_for_an_ipv6_underlay() {
        let v4: IpAddr = "198.18.0.1".parse().unwrap();
        let v6: IpAddr = "2001:2::1".parse().unwrap();
        assert!(!underlay_may_be_ipv6(&[v4], None));
        assert!(!underlay_may_be_ipv6(
            &[v4],
            Some("203.0.113.1:51820".parse().unwrap())
        ));
        // IPv4 first, but peers may reach this node over its IPv6 address.
        assert!(underlay_may_be_ipv6(&[v4, v6], None));
        assert!(underlay_may_be_ipv6(
            &[v4],
            Some("[2001:2::9]:51820".parse().unwrap())
        ));
        assert!(underlay_may_be_ipv6(&[v6], None));
    }

    #[test]
    fn tunnel_address_is_the_first_host_of_each_family() {
        let blocks: Vec<IpNetwork> = vec![
            "10.244.3.0/24".parse().unwrap(),
            "fd00:10:244:3::/64".parse().unwrap(),
        ];
        assert_eq!(
            tunnel_addresses(&blocks),
            vec![
                "10.244.3.1".parse::<IpAddr>().unwrap(),
                "fd00:10:244:3::1".parse().unwrap()
            ]
        );
        assert!(tunnel_addresses(&["10.244.3.7/32".parse().unwrap()]).is_empty());
    }

    fn net(text: &str) -> IpNetwork {
        text.parse().unwrap()
    }

    #[test]
    fn pod_prefixes_without_a_peer_are_unreachable_only_when_encryption_is_required() {
        let peer = Peer {
            name: "n2".into(),
            public_key: weft_keys::PublicKey::from_bytes([2; 32]),
            next_public_key: None,
            endpoint: None,
            allowed_ips: vec![net("10.244.2.0/24")],
        };
        let route = |prefix: &str, reason| Rejection {
            subject: Subject::Route {
                prefix: net(prefix),
                next_hop: None,
            },
            reason,
        };
        let mesh = Mesh {
            peers: [("n2".to_string(), peer)].into_iter().collect(),
            rejections: vec![
                route("10.244.9.0/24", RejectReason::UnknownNextHop),
                route("10.244.1.0/24", RejectReason::OwnNode),
                route("0.0.0.0/0", RejectReason::UnknownNextHop),
                route("192.0.2.0/24", RejectReason::UnknownNextHop),
            ],
        };
        let guarded = Guarded {
            pod_cidrs: vec![net("10.244.0.0/16")],
            own_blocks: vec![net("10.244.1.0/24")],
            remote_blocks: vec![
                net("10.244.2.0/24"),
                net("10.244.3.0/24"),
                net("10.244.1.0/25"),
            ],
        };
        let required = desired_table(&mesh, &guarded, Encryption::Required);
        let expected: BTreeSet<(IpNetwork, TableRoute)> = [
            ("10.244.2.0/24", TableRoute::Tunnel),
            ("10.244.2.0/24", TableRoute::Unreachable),
            ("10.244.1.0/24", TableRoute::Throw),
            ("10.244.0.0/16", TableRoute::Unreachable),
            ("10.244.3.0/24", TableRoute::Unreachable),
            ("10.244.9.0/24", TableRoute::Unreachable),
        ]
        .into_iter()
        .map(|(p, k)| (net(p), k))
        .collect();
        // Non-Pod routes (a default route, other prefixes) are never touched; a remote claim
        // on our own block never blackholes our own Pods.
        assert_eq!(required, expected);
        let preferred = desired_table(&mesh, &guarded, Encryption::Preferred);
        let expected: BTreeSet<(IpNetwork, TableRoute)> = [
            ("10.244.2.0/24", TableRoute::Tunnel),
            ("10.244.1.0/24", TableRoute::Throw),
        ]
        .into_iter()
        .map(|(p, k)| (net(p), k))
        .collect();
        assert_eq!(preferred, expected);
    }
}

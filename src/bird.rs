//! `weft bird-config`: a BIRD 2 configuration rendered from the cluster's Nodes, for clusters
//! that do not run BGP already. Every node announces its own Pod blocks over iBGP and installs
//! the blocks it learns into the kernel (protocol `bird`, which weft reads). Topology: a
//! node-to-node full mesh, or route reflectors (named nodes peer with everyone as reflectors;
//! every other node peers with the reflectors only).
//!
//! Address families: a session runs between the two nodes' IPv4 addresses when both have one,
//! else between their IPv6 addresses (see [`session_addresses`]). IPv4 sessions carry the IPv4
//! blocks and, for dual-stack Nodes, the IPv6 blocks in an IPv6 channel with the owner's IPv6
//! address as next hop. IPv6 sessions carry the IPv6 channel only: IPv4 blocks over IPv6
//! sessions (extended next hop, RFC 8950) are not supported, so a node without an IPv4
//! address cannot have IPv4 blocks. The router id is the node's IPv4 address, or for a node
//! with IPv6 only one derived from its IPv6 address ([`derived_router_id`]).
//! No IO here.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

/// One node as BIRD needs it: its addresses and its Pod blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BirdNode {
    pub name: String,
    /// Its router id and its session address towards every node with an IPv4 address too.
    pub address_v4: Option<Ipv4Addr>,
    /// The next hop of its IPv6 blocks, and its session address towards nodes it shares no
    /// IPv4 with.
    pub address_v6: Option<Ipv6Addr>,
    pub blocks: Vec<IpNetwork>,
}

impl BirdNode {
    /// BIRD's 32-bit router id: the IPv4 address; for a node with IPv6 only, the
    /// [`derived_router_id`] of its IPv6 address; `None` without any address.
    pub fn router_id(&self) -> Option<Ipv4Addr> {
        self.address_v4
            .or_else(|| self.address_v6.map(derived_router_id))
    }

    /// Its addresses, IPv4 first.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> {
        let v4 = self.address_v4.map(IpAddr::V4);
        v4.into_iter().chain(self.address_v6.map(IpAddr::V6))
    }
}

/// The ends (own address, peer address) of the session between two nodes: IPv4 when both
/// have an IPv4 address (IPv4-only and dual-stack clusters peer as they always did), else IPv6
/// when both have an IPv6 address; `None` when they share no address family.
pub fn session_addresses(own: &BirdNode, peer: &BirdNode) -> Option<(IpAddr, IpAddr)> {
    match (
        own.address_v4,
        peer.address_v4,
        own.address_v6,
        peer.address_v6,
    ) {
        (Some(local), Some(neighbor), _, _) => Some((local.into(), neighbor.into())),
        (_, _, Some(local), Some(neighbor)) => Some((local.into(), neighbor.into())),
        _ => None,
    }
}

/// The router id of a node with IPv6 only: the 32-bit FNV-1a hash of its IPv6 address's 16
/// bytes as a dotted quad (never 0.0.0.0, which BIRD refuses). The same on every node and
/// every version; two nodes can still collide (odds about n²/2³³ for n nodes), which
/// [`render`] refuses and `render_nodes` leaves out.
pub fn derived_router_id(address: Ipv6Addr) -> Ipv4Addr {
    const FNV_OFFSET: u32 = 0x811c_9dc5;
    const FNV_PRIME: u32 = 0x0100_0193;
    let hash = address.octets().iter().fold(FNV_OFFSET, |hash, byte| {
        (hash ^ u32::from(*byte)).wrapping_mul(FNV_PRIME)
    });
    Ipv4Addr::from(hash.max(1))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BirdSettings {
    /// The cluster's private AS number (iBGP).
    pub asn: u32,
    /// Nodes acting as route reflectors; empty: full mesh.
    pub route_reflectors: BTreeSet<String>,
    /// The TCP-MD5 password every BGP session of the cluster uses, if any.
    pub password: Option<BgpPassword>,
}

impl BirdSettings {
    /// The mode of a written configuration: private when it holds the password.
    pub fn file_mode(&self) -> u32 {
        if self.password.is_some() {
            0o600
        } else {
            0o644
        }
    }
}

/// A BGP session password (TCP-MD5, RFC 2385): printable ASCII without `"` and `\` (it is
/// written into BIRD's configuration as a string), at most 80 bytes (the kernel's limit).
/// Never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct BgpPassword(String);

/// The kernel's TCP_MD5SIG_MAXKEYLEN.
const MAX_PASSWORD_BYTES: usize = 80;

impl BgpPassword {
    /// Parses the contents of a password file (one trailing newline is ignored).
    pub fn parse(text: &str) -> Result<Self, BirdConfigError> {
        let password = text
            .strip_suffix('\n')
            .map(|t| t.strip_suffix('\r').unwrap_or(t))
            .unwrap_or(text);
        if password.is_empty() {
            return Err(BirdConfigError::BadPassword("it is empty"));
        }
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(BirdConfigError::BadPassword(
                "it is longer than 80 bytes (the kernel's TCP-MD5 key limit)",
            ));
        }
        if !password
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\' || b == b' ')
        {
            return Err(BirdConfigError::BadPassword(
                "use printable ASCII without '\"' and '\\'",
            ));
        }
        Ok(Self(password.to_string()))
    }
}

impl std::fmt::Debug for BgpPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BgpPassword(<redacted>)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BirdConfigError {
    #[error("node {0} has no InternalIP/ExternalIP address for BGP")]
    NoAddress(String),
    #[error(
        "node {node} has IPv6 Pod block {block} but no IPv6 InternalIP/ExternalIP address to route it to"
    )]
    NoIpv6Address { node: String, block: IpNetwork },
    #[error(
        "node {node} has IPv4 Pod block {block} but no IPv4 InternalIP/ExternalIP address to route it to (IPv4 over IPv6 sessions is not supported)"
    )]
    NoIpv4Address { node: String, block: IpNetwork },
    #[error("node {0} shares no address family (IPv4 or IPv6) with this node for a BGP session")]
    NoCommonFamily(String),
    #[error("route reflector {0:?} is not a Node of the cluster")]
    UnknownReflector(String),
    #[error("node {0} uses the BGP address {1} of another node")]
    SharedAddress(String, IpAddr),
    #[error("nodes {node} and {other} would both have BGP router id {id}")]
    SharedRouterId {
        node: String,
        other: String,
        id: Ipv4Addr,
    },
    #[error("AS number 0 is reserved")]
    ReservedAsn,
    #[error("invalid BGP password: {0}")]
    BadPassword(&'static str),
}

/// A BGP session of the own node.
struct Session<'a> {
    peer: &'a BirdNode,
    neighbor: IpAddr,
    /// The peer is a route reflector client of the own node.
    client: bool,
}

/// Renders the configuration of `own` given the other nodes (each sharing an address family
/// with `own`; callers leave out nodes they cannot route to).
pub fn render(
    own: &BirdNode,
    others: &[BirdNode],
    settings: &BirdSettings,
) -> Result<String, BirdConfigError> {
    if settings.asn == 0 {
        return Err(BirdConfigError::ReservedAsn);
    }
    for reflector in &settings.route_reflectors {
        if reflector != &own.name && !others.iter().any(|n| &n.name == reflector) {
            return Err(BirdConfigError::UnknownReflector(reflector.clone()));
        }
    }
    let Some(router_id) = own.router_id() else {
        return Err(BirdConfigError::NoAddress(own.name.clone()));
    };
    let v6_next_hop = own_next_hop_v6(own)?;
    let sessions = sessions(own, others, settings)?;
    check_router_ids(own, others)?;
    // An IPv6 channel as soon as any node has IPv6 blocks: a reflector must carry them even
    // if it has none of its own.
    let ipv6 = own
        .blocks
        .iter()
        .chain(others.iter().flat_map(|n| &n.blocks))
        .any(|b| b.is_ipv6())
        || sessions.iter().any(|s| s.neighbor.is_ipv6());
    let asn = settings.asn;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# BIRD 2 for node {} (generated by `weft bird-config`)",
        own.name
    );
    let _ = writeln!(out, "router id {router_id};");
    let _ = writeln!(out, "protocol device {{ scan time 10; }}");
    let _ = writeln!(out, "# This node's Pod blocks, announced to BGP only.");
    if own.address_v4.is_some() {
        let _ = writeln!(
            out,
            "protocol static pods {{ ipv4;{} }}",
            routes(&own.blocks, false)
        );
    }
    if ipv6 {
        let _ = writeln!(
            out,
            "protocol static pods6 {{ ipv6;{} }}",
            routes(&own.blocks, true)
        );
    }
    let _ = writeln!(
        out,
        "# Learned routes go into the kernel's main table with protocol \"bird\" (weft reads them)."
    );
    if own.address_v4.is_some() {
        let _ = writeln!(
            out,
            "protocol kernel {{ ipv4 {{ import none; export where source = RTS_BGP; }}; }}"
        );
    }
    if ipv6 {
        let _ = writeln!(
            out,
            "protocol kernel kernel6 {{ ipv6 {{ import none; export where source = RTS_BGP; }}; }}"
        );
    }
    // Only the other nodes' Pod blocks are accepted, exactly: a peer announcing anything else
    // (a node address, a default route) could otherwise steer the host's own traffic.
    // No `next hop self`: own blocks get this node's address as next hop anyway, and
    // reflected routes must keep their owner's, which weft's cross-check requires.
    // Own IPv6 blocks get this node's IPv6 address as next hop: needed over IPv4 sessions;
    // over IPv6 ones it is the session's own address anyway, so one channel serves both.
    let own_routes = match v6_next_hop {
        Some(next_hop) => {
            format!("if proto = \"pods6\" then {{ bgp_next_hop = {next_hop}; accept; }} ")
        }
        None => String::new(),
    };
    let ipv6_channel = format!(
        "    ipv6 {{ import {}; export filter {{ {own_routes}if source = RTS_BGP then accept; reject; }}; }};",
        import_filter(others, true)
    );
    if let Some(local) = own.address_v4 {
        let _ = writeln!(out, "template bgp peer {{");
        write_session_basics(&mut out, local.into(), settings);
        let _ = writeln!(
            out,
            "    ipv4 {{ import {}; export where proto = \"pods\" || source = RTS_BGP; }};",
            import_filter(others, false)
        );
        if ipv6 {
            let _ = writeln!(out, "{ipv6_channel}");
        }
        let _ = writeln!(out, "}}");
    }
    if let (Some(local), true) = (
        own.address_v6,
        sessions.iter().any(|s| s.neighbor.is_ipv6()),
    ) {
        // IPv6 sessions: IPv6 blocks only.
        let _ = writeln!(out, "template bgp peer6 {{");
        write_session_basics(&mut out, local.into(), settings);
        let _ = writeln!(out, "{ipv6_channel}");
        let _ = writeln!(out, "}}");
    }
    for Session {
        peer,
        neighbor,
        client,
    } in sessions
    {
        let client = if client { " rr client;" } else { "" };
        // Named by address, so a node joining or leaving renames no other session (BIRD
        // restarts a protocol whose neighbour changes on reconfigure).
        let (template, name) = match neighbor {
            IpAddr::V4(address) => ("peer", address.to_string().replace('.', "_")),
            IpAddr::V6(address) => ("peer6", address.to_string().replace(':', "_")),
        };
        let _ = writeln!(
            out,
            "# node {}\nprotocol bgp {template}_{name} from {template} {{ neighbor {neighbor} as {asn};{client} }}",
            peer.name
        );
    }
    Ok(out)
}

/// The next hop of the own node's IPv6 blocks (its IPv6 address; `None` without IPv6
/// blocks); an error for own blocks of a family the node has no address of.
fn own_next_hop_v6(own: &BirdNode) -> Result<Option<Ipv6Addr>, BirdConfigError> {
    let first = |v6: bool| own.blocks.iter().find(|b| b.is_ipv6() == v6).copied();
    if let (Some(block), None) = (first(false), own.address_v4) {
        return Err(BirdConfigError::NoIpv4Address {
            node: own.name.clone(),
            block,
        });
    }
    match (first(true), own.address_v6) {
        (None, _) => Ok(None),
        (Some(_), Some(address)) => Ok(Some(address)),
        (Some(block), None) => Err(BirdConfigError::NoIpv6Address {
            node: own.name.clone(),
            block,
        }),
    }
}

/// The own node's sessions: every other node in a full mesh, else the reflectors (and on a
/// reflector, everyone), each over [`session_addresses`] and to a distinct address.
fn sessions<'a>(
    own: &BirdNode,
    others: &'a [BirdNode],
    settings: &BirdSettings,
) -> Result<Vec<Session<'a>>, BirdConfigError> {
    let own_is_reflector = settings.route_reflectors.contains(&own.name);
    let full_mesh = settings.route_reflectors.is_empty();
    let mut seen = BTreeSet::new();
    let mut sessions = Vec::new();
    for peer in others {
        let peer_is_reflector = settings.route_reflectors.contains(&peer.name);
        if !(full_mesh || own_is_reflector || peer_is_reflector) {
            continue;
        }
        let Some((local, neighbor)) = session_addresses(own, peer) else {
            return Err(match peer.addresses().next() {
                None => BirdConfigError::NoAddress(peer.name.clone()),
                Some(_) => BirdConfigError::NoCommonFamily(peer.name.clone()),
            });
        };
        if neighbor == local || !seen.insert(neighbor) {
            return Err(BirdConfigError::SharedAddress(peer.name.clone(), neighbor));
        }
        sessions.push(Session {
            peer,
            neighbor,
            client: own_is_reflector && !peer_is_reflector,
        });
    }
    Ok(sessions)
}

/// Every node (sessions or not: a reflector's clients are told apart by router id) needs its
/// own router id.
fn check_router_ids(own: &BirdNode, others: &[BirdNode]) -> Result<(), BirdConfigError> {
    let mut holders: BTreeMap<Ipv4Addr, &str> = BTreeMap::new();
    for node in std::iter::once(own).chain(others) {
        let Some(id) = node.router_id() else { continue };
        if let Some(other) = holders.insert(id, &node.name) {
            return Err(BirdConfigError::SharedRouterId {
                node: node.name.clone(),
                other: other.to_string(),
                id,
            });
        }
    }
    Ok(())
}

/// `    local ADDRESS as ASN; direct;` and the password, if any.
fn write_session_basics(out: &mut String, local: IpAddr, settings: &BirdSettings) {
    let _ = writeln!(out, "    local {local} as {};", settings.asn);
    let _ = writeln!(out, "    direct;");
    if let Some(BgpPassword(password)) = &settings.password {
        let _ = writeln!(out, "    password \"{password}\";");
    }
}

/// ` route B unreachable;` for each own block of one family.
fn routes(blocks: &[IpNetwork], v6: bool) -> String {
    blocks
        .iter()
        .filter(|b| b.is_ipv6() == v6)
        .map(|b| format!(" route {b} unreachable;"))
        .collect()
}

/// `where net ~ [ ... ]` over the other nodes' blocks of one family (`none` if there are none).
fn import_filter(others: &[BirdNode], v6: bool) -> String {
    let blocks: BTreeSet<String> = others
        .iter()
        .flat_map(|n| &n.blocks)
        .filter(|b| b.is_ipv6() == v6)
        .map(ToString::to_string)
        .collect();
    if blocks.is_empty() {
        return "none".into();
    }
    let list: Vec<String> = blocks.into_iter().collect();
    format!("where net ~ [ {} ]", list.join(", "))
}

#[cfg(test)]
#[path = "bird_tests.rs"]
mod tests;

//! `weft bird-config`: a BIRD 2 configuration rendered from the cluster's Nodes, for clusters
//! that do not run BGP already. Every node announces its own Pod blocks over iBGP and installs
//! the blocks it learns into the kernel (protocol `bird`, which weft reads). Topology: a
//! node-to-node full mesh, or route reflectors (named nodes peer with everyone as reflectors;
//! every other node peers with the reflectors only). Dual-stack: IPv6 blocks travel over the
//! same (IPv4) sessions in an IPv6 channel, with the node's IPv6 address as their next hop.
//! No IO here.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv6Addr};

use ipnetwork::IpNetwork;

/// One node as BIRD needs it: its BGP address and its Pod blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BirdNode {
    pub name: String,
    /// The BGP session address (IPv4).
    pub address: IpAddr,
    /// The next hop of this node's IPv6 blocks (needed only if it has any).
    pub address_v6: Option<Ipv6Addr>,
    pub blocks: Vec<IpNetwork>,
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
    #[error("node {0} has no IPv4 InternalIP/ExternalIP address for BGP")]
    NoAddress(String),
    #[error(
        "node {node} has IPv6 Pod block {block} but no IPv6 InternalIP/ExternalIP address to route it to"
    )]
    NoIpv6Address { node: String, block: IpNetwork },
    #[error("route reflector {0:?} is not a Node of the cluster")]
    UnknownReflector(String),
    #[error("node {0} uses the BGP address {1} of another node")]
    SharedAddress(String, std::net::Ipv4Addr),
    #[error("AS number 0 is reserved")]
    ReservedAsn,
    #[error("invalid BGP password: {0}")]
    BadPassword(&'static str),
}

/// Renders the configuration of `own` given the other nodes (each with an IPv4 address;
/// callers leave out nodes they cannot route to).
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
    let IpAddr::V4(router_id) = own.address else {
        return Err(BirdConfigError::NoAddress(own.name.clone()));
    };
    let own_v6: Vec<&IpNetwork> = own.blocks.iter().filter(|b| b.is_ipv6()).collect();
    let v6_next_hop = match (own_v6.first(), own.address_v6) {
        (None, _) => None,
        (Some(_), Some(address)) => Some(address),
        (Some(block), None) => {
            return Err(BirdConfigError::NoIpv6Address {
                node: own.name.clone(),
                block: **block,
            });
        }
    };
    // An IPv6 channel as soon as any node has IPv6 blocks: a reflector must carry them even
    // if it has none of its own.
    let ipv6 = !own_v6.is_empty() || others.iter().flat_map(|n| &n.blocks).any(|b| b.is_ipv6());
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
    let _ = writeln!(
        out,
        "protocol static pods {{ ipv4;{} }}",
        routes(&own.blocks, false)
    );
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
    let _ = writeln!(
        out,
        "protocol kernel {{ ipv4 {{ import none; export where source = RTS_BGP; }}; }}"
    );
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
    let _ = writeln!(out, "template bgp peer {{");
    let _ = writeln!(out, "    local {router_id} as {asn};");
    let _ = writeln!(out, "    direct;");
    if let Some(BgpPassword(password)) = &settings.password {
        let _ = writeln!(out, "    password \"{password}\";");
    }
    let _ = writeln!(
        out,
        "    ipv4 {{ import {}; export where proto = \"pods\" || source = RTS_BGP; }};",
        import_filter(others, false)
    );
    if ipv6 {
        // Own IPv6 blocks get this node's IPv6 address as next hop (the session is IPv4).
        let own_routes = match v6_next_hop {
            Some(next_hop) => {
                format!("if proto = \"pods6\" then {{ bgp_next_hop = {next_hop}; accept; }} ")
            }
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "    ipv6 {{ import {}; export filter {{ {own_routes}if source = RTS_BGP then accept; reject; }}; }};",
            import_filter(others, true)
        );
    }
    let _ = writeln!(out, "}}");
    let own_is_reflector = settings.route_reflectors.contains(&own.name);
    let full_mesh = settings.route_reflectors.is_empty();
    let mut seen = BTreeSet::new();
    for node in others {
        let peer_is_reflector = settings.route_reflectors.contains(&node.name);
        if !(full_mesh || own_is_reflector || peer_is_reflector) {
            continue;
        }
        let IpAddr::V4(address) = node.address else {
            return Err(BirdConfigError::NoAddress(node.name.clone()));
        };
        if address == router_id || !seen.insert(address) {
            return Err(BirdConfigError::SharedAddress(node.name.clone(), address));
        }
        let client = if own_is_reflector && !peer_is_reflector {
            " rr client;"
        } else {
            ""
        };
        // Named by address, so a node joining or leaving renames no other session (BIRD
        // restarts a protocol whose neighbour changes on reconfigure).
        let name = address.to_string().replace('.', "_");
        let _ = writeln!(
            out,
            "# node {}\nprotocol bgp peer_{name} from peer {{ neighbor {address} as {asn};{client} }}",
            node.name
        );
    }
    Ok(out)
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
mod tests {
    use super::*;

    fn node(name: &str, address: &str, block: &str) -> BirdNode {
        BirdNode {
            name: name.into(),
            address: address.parse().unwrap(),
            address_v6: None,
            blocks: vec![block.parse().unwrap()],
        }
    }

    fn nodes() -> Vec<BirdNode> {
        vec![
            node("n1", "198.18.0.1", "10.244.1.0/24"),
            node("n2", "198.18.0.2", "10.244.2.0/24"),
            node("n3", "198.18.0.3", "10.244.3.0/24"),
        ]
    }

    fn settings(reflectors: &[&str]) -> BirdSettings {
        BirdSettings {
            asn: 64512,
            route_reflectors: reflectors.iter().map(|r| r.to_string()).collect(),
            password: None,
        }
    }

    #[test]
    fn a_password_goes_into_every_session_and_never_into_debug() {
        let all = nodes();
        let password = BgpPassword::parse("s3cret pass-word\n").unwrap();
        let with = BirdSettings {
            password: Some(password.clone()),
            ..settings(&[])
        };
        let conf = render(&all[0], &all[1..], &with).unwrap();
        assert!(
            conf.contains("    password \"s3cret pass-word\";"),
            "{conf}"
        );
        assert!(
            !render(&all[0], &all[1..], &settings(&[]))
                .unwrap()
                .contains("password")
        );
        assert!(!format!("{with:?}").contains("s3cret"));
    }

    #[test]
    fn passwords_that_bird_or_the_kernel_cannot_take_are_refused() {
        for bad in [
            "",
            "\n",
            "with\"quote",
            "back\\slash",
            "tab\there",
            "é",
            &"x".repeat(81),
        ] {
            assert!(
                matches!(
                    BgpPassword::parse(bad),
                    Err(BirdConfigError::BadPassword(_))
                ),
                "{bad:?} accepted"
            );
        }
        assert!(BgpPassword::parse(&"x".repeat(80)).is_ok());
    }

    #[test]
    fn a_full_mesh_peers_with_every_other_node_and_announces_the_own_blocks() {
        let all = nodes();
        let conf = render(&all[0], &all[1..], &settings(&[])).unwrap();
        assert!(conf.contains("router id 198.18.0.1;"));
        assert!(conf.contains("route 10.244.1.0/24 unreachable;"));
        assert!(!conf.contains("route 10.244.2.0/24"));
        // Only the other nodes' blocks are accepted from peers.
        assert!(conf.contains("import where net ~ [ 10.244.2.0/24, 10.244.3.0/24 ];"));
        assert!(conf.contains("neighbor 198.18.0.2 as 64512;"));
        assert!(conf.contains("neighbor 198.18.0.3 as 64512;"));
        assert!(!conf.contains("rr client"));
    }

    #[test]
    fn route_reflectors_peer_with_everyone_and_clients_only_with_reflectors() {
        let all = nodes();
        let reflector = render(&all[0], &all[1..], &settings(&["n1"])).unwrap();
        assert_eq!(reflector.matches("rr client;").count(), 2);
        let client = render(
            &all[1],
            &[all[0].clone(), all[2].clone()],
            &settings(&["n1"]),
        )
        .unwrap();
        assert!(client.contains("neighbor 198.18.0.1 as 64512; }"));
        assert!(!client.contains("198.18.0.3"));
    }

    #[test]
    fn dual_stack_blocks_go_out_in_an_ipv6_channel_with_the_nodes_ipv6_next_hop() {
        let mut own = node("n1", "198.18.0.1", "10.244.1.0/24");
        own.blocks.push("fd00:10:244:1::/64".parse().unwrap());
        own.address_v6 = Some("fd00:198:18::1".parse().unwrap());
        let conf = render(&own, &nodes()[1..], &settings(&[])).unwrap();
        assert!(conf.contains("protocol static pods { ipv4; route 10.244.1.0/24 unreachable; }"));
        assert!(
            conf.contains("protocol static pods6 { ipv6; route fd00:10:244:1::/64 unreachable; }")
        );
        assert!(conf.contains("bgp_next_hop = fd00:198:18::1;"));
        assert!(conf.contains("protocol kernel kernel6"));
        // IPv4 only: nothing of the kind.
        let v4 = render(&nodes()[0], &nodes()[1..], &settings(&[])).unwrap();
        assert!(!v4.contains("ipv6"));
    }

    #[test]
    fn a_node_joining_renames_no_other_session() {
        let all = nodes();
        let before = render(&all[0], &all[1..], &settings(&[])).unwrap();
        let mut more = all[1..].to_vec();
        more.insert(0, node("n0", "198.18.0.9", "10.244.9.0/24"));
        let after = render(&all[0], &more, &settings(&[])).unwrap();
        let sessions = |conf: &str| -> Vec<String> {
            conf.lines()
                .filter(|l| l.starts_with("protocol bgp"))
                .map(String::from)
                .collect()
        };
        for session in sessions(&before) {
            assert!(sessions(&after).contains(&session), "{session} changed");
        }
        assert!(after.contains("protocol bgp peer_198_18_0_9 from peer"));
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        let all = nodes();
        assert_eq!(
            render(&all[0], &all[1..], &settings(&["n9"])),
            Err(BirdConfigError::UnknownReflector("n9".into()))
        );
        let v6 = node("n1", "fd00::1", "10.244.1.0/24");
        assert_eq!(
            render(&v6, &all[1..], &settings(&[])),
            Err(BirdConfigError::NoAddress("n1".into()))
        );
        let v6_block = node("n1", "198.18.0.1", "fd00:1::/64");
        assert!(matches!(
            render(&v6_block, &all[1..], &settings(&[])),
            Err(BirdConfigError::NoIpv6Address { .. })
        ));
        let twin = node("n4", "198.18.0.2", "10.244.4.0/24");
        let mut with_twin = all[1..].to_vec();
        with_twin.push(twin);
        assert!(matches!(
            render(&all[0], &with_twin, &settings(&[])),
            Err(BirdConfigError::SharedAddress(..))
        ));
        let zero = BirdSettings {
            asn: 0,
            ..settings(&[])
        };
        assert_eq!(
            render(&all[0], &all[1..], &zero),
            Err(BirdConfigError::ReservedAsn)
        );
    }
}

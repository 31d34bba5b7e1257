//! `compute_mesh`: the cross-check of BGP routes against node records.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ipnetwork::IpNetwork;

use super::{Mesh, MeshInput, NodeEntry, Peer, RejectReason, Rejection, Subject};
use crate::record::{NodeRecord, covers, in_pod_cidrs, overlaps};

/// Computes the desired mesh. Node names are expected to be unique (registries key by name).
pub fn compute_mesh(input: &MeshInput<'_>) -> Mesh {
    let world = World::new(input);
    let mut rejections = BTreeSet::new();
    for entry in input.nodes {
        let subject = || Subject::Record {
            node: entry.name.clone(),
        };
        if entry.name == input.local_node {
            rejections.insert(Rejection {
                subject: subject(),
                reason: RejectReason::OwnNode,
            });
        } else if let Err(error) = &entry.record {
            rejections.insert(Rejection {
                subject: subject(),
                reason: RejectReason::bad_record(error),
            });
        } else if let Some(nodes) = world.key_conflicts.get(entry.name.as_str()) {
            rejections.insert(Rejection {
                subject: subject(),
                reason: RejectReason::SharedKey {
                    nodes: nodes.iter().cloned().collect(),
                },
            });
        }
    }

    let mut contested = BTreeSet::new();
    for (node, block) in &world.claims {
        let nodes = world.claimants_overlapping(block, Some(node));
        if !nodes.is_empty() {
            contested.insert((*node, *block));
            if *node != input.local_node {
                rejections.insert(Rejection {
                    subject: Subject::Block {
                        node: node.to_string(),
                        prefix: *block,
                    },
                    reason: RejectReason::OverlappingClaims {
                        nodes: with(nodes, node),
                    },
                });
            }
        }
    }

    for (node, block) in &world.out_of_scope {
        if *node != input.local_node {
            rejections.insert(Rejection {
                subject: Subject::Block {
                    node: node.to_string(),
                    prefix: *block,
                },
                reason: RejectReason::OutsidePodCidrs,
            });
        }
    }

    let mut accepted: BTreeMap<&str, BTreeSet<IpNetwork>> = BTreeMap::new();
    for route in input.routes {
        if route.next_hops.is_empty() {
            let reason = if world.in_scope(&route.prefix) {
                RejectReason::UnknownNextHop
            } else {
                RejectReason::OutsidePodCidrs
            };
            rejections.insert(Rejection {
                subject: Subject::Route {
                    prefix: route.prefix,
                    next_hop: None,
                },
                reason,
            });
        }
        for hop in &route.next_hops {
            match world.judge(route.prefix, *hop) {
                Ok(node) => {
                    accepted.entry(node).or_default().insert(route.prefix);
                }
                Err(reason) => {
                    rejections.insert(Rejection {
                        subject: Subject::Route {
                            prefix: route.prefix,
                            next_hop: Some(*hop),
                        },
                        reason,
                    });
                }
            }
        }
    }

    for (node, block) in &world.claims {
        let routed = accepted
            .get(node)
            .is_some_and(|prefixes| prefixes.iter().any(|p| covers(block, p)));
        if *node != input.local_node && !routed && !contested.contains(&(*node, *block)) {
            rejections.insert(Rejection {
                subject: Subject::Block {
                    node: node.to_string(),
                    prefix: *block,
                },
                reason: RejectReason::ClaimedNotRouted,
            });
        }
    }

    let peers = accepted
        .into_iter()
        .filter_map(|(name, prefixes)| {
            let entry = world.entries.get(name)?;
            let record = entry.record.as_ref().ok()?;
            let endpoint = record.endpoint.or_else(|| {
                let first = entry.addresses.first()?;
                Some(SocketAddr::new(*first, input.default_port))
            });
            let peer = Peer {
                name: name.to_string(),
                public_key: record.public_key,
                next_public_key: record.next_public_key,
                endpoint,
                allowed_ips: normalize(prefixes),
            };
            Some((name.to_string(), peer))
        })
        .collect();
    Mesh {
        peers,
        rejections: rejections.into_iter().collect(),
    }
}

/// Sorted, and without prefixes contained in another one of the set.
fn normalize(prefixes: BTreeSet<IpNetwork>) -> Vec<IpNetwork> {
    let mut sorted: Vec<IpNetwork> = prefixes.into_iter().collect();
    sorted.sort_by_key(|p| (p.is_ipv6(), p.network(), p.prefix()));
    let mut out: Vec<IpNetwork> = Vec::with_capacity(sorted.len());
    for prefix in sorted {
        // Sorted by start address, a covering prefix comes before what it covers.
        if !out.iter().any(|kept| covers(kept, &prefix)) {
            out.push(prefix);
        }
    }
    out
}

fn with(mut nodes: BTreeSet<String>, node: &str) -> Vec<String> {
    nodes.insert(node.to_string());
    nodes.into_iter().collect()
}

/// Remote nodes whose keys collide with another node's, and with whom. A key names one node:
/// two nodes with the same `publicKey` are both distrusted; a `nextPublicKey` that is any
/// other node's key (current or next) distrusts the node announcing it, not the key's holder,
/// so nobody can take over another node's key by announcing it as their next one. Our own
/// node is never distrusted here.
fn key_conflicts<'a>(nodes: &'a [NodeEntry], local: &str) -> BTreeMap<&'a str, BTreeSet<String>> {
    let mut holders: BTreeMap<weft_keys::PublicKey, Vec<(&'a str, bool)>> = BTreeMap::new();
    for entry in nodes {
        if let Ok(record) = &entry.record {
            holders
                .entry(record.public_key)
                .or_default()
                .push((&entry.name, false));
            if let Some(next) = record.next_public_key {
                holders.entry(next).or_default().push((&entry.name, true));
            }
        }
    }
    let mut conflicts: BTreeMap<&'a str, BTreeSet<String>> = BTreeMap::new();
    for sharing in holders.values().filter(|h| h.len() > 1) {
        for (node, as_next) in sharing {
            let others: BTreeSet<String> = sharing
                .iter()
                .filter(|(other, _)| other != node)
                .map(|(other, _)| other.to_string())
                .collect();
            // A current key shared only with others' next keys stays trusted.
            let distrusted = *as_next || sharing.iter().any(|(o, next)| o != node && !next);
            if distrusted && *node != local && !others.is_empty() {
                conflicts.entry(node).or_default().extend(others);
            }
        }
    }
    conflicts
}

/// Indexes over the input.
struct World<'a> {
    local: &'a str,
    local_addresses: BTreeSet<IpAddr>,
    entries: BTreeMap<&'a str, &'a NodeEntry>,
    by_address: BTreeMap<IpAddr, BTreeSet<&'a str>>,
    /// (node, block) for every in-scope block of every valid record, ours included.
    claims: Vec<(&'a str, IpNetwork)>,
    /// (node, block) for blocks outside the Pod CIDRs: they take part in nothing.
    out_of_scope: Vec<(&'a str, IpNetwork)>,
    pod_cidrs: &'a [IpNetwork],
    /// Remote nodes whose record is distrusted for a key another node also holds.
    key_conflicts: BTreeMap<&'a str, BTreeSet<String>>,
}

impl<'a> World<'a> {
    fn new(input: &MeshInput<'a>) -> Self {
        let mut world = World {
            local: input.local_node,
            local_addresses: BTreeSet::new(),
            entries: BTreeMap::new(),
            by_address: BTreeMap::new(),
            claims: Vec::new(),
            out_of_scope: Vec::new(),
            pod_cidrs: input.pod_cidrs,
            key_conflicts: key_conflicts(input.nodes, input.local_node),
        };
        for entry in input.nodes {
            world.entries.insert(&entry.name, entry);
            if entry.name == input.local_node {
                world
                    .local_addresses
                    .extend(entry.addresses.iter().copied());
            } else {
                for address in &entry.addresses {
                    world
                        .by_address
                        .entry(*address)
                        .or_default()
                        .insert(&entry.name);
                }
            }
            if let Ok(record) = &entry.record {
                for block in &record.blocks {
                    let claim = (entry.name.as_str(), *block);
                    if world.in_scope(block) {
                        world.claims.push(claim);
                    } else {
                        world.out_of_scope.push(claim);
                    }
                }
            }
        }
        world.claims.sort();
        world
    }

    /// Inside the Pod CIDRs (everything is, when none are configured).
    fn in_scope(&self, prefix: &IpNetwork) -> bool {
        in_pod_cidrs(self.pod_cidrs, prefix)
    }

    /// A node's record, if it is valid and trusted.
    fn record(&self, node: &str) -> Option<&'a NodeRecord> {
        if self.key_conflicts.contains_key(node) {
            return None;
        }
        self.entries.get(node)?.record.as_ref().ok()
    }

    /// Nodes other than `except` with a block overlapping `prefix`.
    fn claimants_overlapping(&self, prefix: &IpNetwork, except: Option<&str>) -> BTreeSet<String> {
        self.claims
            .iter()
            .filter(|(node, block)| Some(*node) != except && overlaps(block, prefix))
            .map(|(node, _)| node.to_string())
            .collect()
    }

    /// Which node the route `prefix via hop` may be given to, or why it may not.
    fn judge(&self, prefix: IpNetwork, hop: IpAddr) -> Result<&'a str, RejectReason> {
        if !self.in_scope(&prefix) {
            return Err(RejectReason::OutsidePodCidrs);
        }
        if self.local_addresses.contains(&hop) {
            return Err(RejectReason::OwnNode);
        }
        let owners = self
            .by_address
            .get(&hop)
            .ok_or(RejectReason::UnknownNextHop)?;
        let node = match owners.iter().collect::<Vec<_>>().as_slice() {
            [node] => **node,
            _ => {
                return Err(RejectReason::AmbiguousNextHop {
                    nodes: owners.iter().map(|n| n.to_string()).collect(),
                });
            }
        };
        let record = self
            .record(node)
            .ok_or_else(|| RejectReason::NextHopRecordRejected {
                node: node.to_string(),
            })?;
        let claimed = record
            .blocks
            .iter()
            .any(|block| self.in_scope(block) && covers(block, &prefix));
        if !claimed {
            return Err(RejectReason::NotClaimedByNextHop {
                node: node.to_string(),
            });
        }
        let others = self.claimants_overlapping(&prefix, Some(node));
        if !others.is_empty() {
            return Err(RejectReason::OverlappingClaims {
                nodes: with(others, node),
            });
        }
        debug_assert_ne!(node, self.local);
        Ok(node)
    }
}

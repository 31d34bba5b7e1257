//! The mesh computation: a pure function `(local node, node records, learned routes) ->
//! desired peers`, and the diff between two meshes. No IO.
//!
//! A prefix becomes one of a peer's allowed IPs only when both sources agree: a BGP route
//! sends it to one of the node's addresses, and the node's record claims a block containing
//! it. Everything that does not become part of a peer gets a typed `Rejection`.

mod compute;
mod diff;
mod reason;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use ipnetwork::IpNetwork;
use weft_keys::PublicKey;

use crate::record::{NodeRecord, RecordError};
use crate::routes::LearnedRoute;

pub use compute::compute_mesh;
pub use diff::{MeshDiff, diff_peers};
pub use reason::{RejectReason, Rejection, Subject};

/// A node as a registry knows it: its name, underlay addresses and (possibly invalid) record.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeEntry {
    pub name: String,
    /// Without repeats, in preference order: the first is the default endpoint (a Node's
    /// InternalIP before its ExternalIP).
    pub addresses: Vec<IpAddr>,
    pub record: Result<NodeRecord, RecordError>,
}

/// Everything the mesh computation looks at.
#[derive(Debug, Clone, Copy)]
pub struct MeshInput<'a> {
    pub local_node: &'a str,
    pub nodes: &'a [NodeEntry],
    pub routes: &'a [LearnedRoute],
    /// Listen port assumed for nodes whose record has no endpoint.
    pub default_port: u16,
    /// The cluster's Pod CIDRs. When given, routes and claimed blocks outside them never
    /// become part of a peer: a record cannot pull underlay or service addresses into the
    /// mesh (or, fail closed, cut them off).
    pub pod_cidrs: &'a [IpNetwork],
}

/// One desired WireGuard peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub public_key: PublicKey,
    /// The key the peer is rotating to: handshakes go to it as soon as it is announced.
    pub next_public_key: Option<PublicKey>,
    pub endpoint: Option<SocketAddr>,
    /// Sorted (IPv4 first, then by address and length), without duplicates or nested prefixes.
    pub allowed_ips: Vec<IpNetwork>,
}

/// The desired mesh: peers by name, and why everything else was left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mesh {
    pub peers: BTreeMap<String, Peer>,
    /// Sorted and without duplicates.
    pub rejections: Vec<Rejection>,
}

#[cfg(test)]
mod tests;

//! Why a route, block or record did not become (part of) a peer.

use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::record::RecordError;

/// What a rejection is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Subject {
    /// A learned route (one next hop of it, for multipath routes).
    Route {
        prefix: IpNetwork,
        next_hop: Option<IpAddr>,
    },
    /// A block a node's record claims.
    Block { node: String, prefix: IpNetwork },
    /// A node's whole record.
    Record { node: String },
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum RejectReason {
    /// Our own record, or a route whose next hop is one of our own addresses.
    OwnNode,
    /// The route's next hop is no known node's address (or the route has no next hop).
    UnknownNextHop,
    /// The next-hop address belongs to several nodes.
    AmbiguousNextHop { nodes: Vec<String> },
    /// The next hop is a node whose record is invalid.
    NextHopRecordRejected { node: String },
    /// The next-hop node's record claims no block containing the prefix.
    NotClaimedByNextHop { node: String },
    /// A valid remote block that no accepted route lies inside.
    ClaimedNotRouted,
    /// Several nodes claim overlapping blocks; the overlap goes to none of them.
    OverlappingClaims { nodes: Vec<String> },
    /// The record failed validation.
    BadRecord { error: String, code: &'static str },
    /// The record's key (or the next key it announces) is also a key of these other nodes:
    /// a key identifies one node, so the record is not trusted.
    SharedKey { nodes: Vec<String> },
    /// The prefix lies (partly) outside the cluster's Pod CIDRs.
    OutsidePodCidrs,
}

impl RejectReason {
    pub fn bad_record(error: &RecordError) -> Self {
        Self::BadRecord {
            error: error.to_string(),
            code: error.code(),
        }
    }

    /// Stable machine-readable name, as shown in `weft status`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::OwnNode => "own_node",
            Self::UnknownNextHop => "unknown_next_hop",
            Self::AmbiguousNextHop { .. } => "ambiguous_next_hop",
            Self::NextHopRecordRejected { .. } => "next_hop_record_rejected",
            Self::NotClaimedByNextHop { .. } => "not_claimed_by_next_hop",
            Self::ClaimedNotRouted => "claimed_not_routed",
            Self::OverlappingClaims { .. } => "overlapping_claims",
            Self::BadRecord { .. } => "bad_record",
            Self::SharedKey { .. } => "shared_key",
            Self::OutsidePodCidrs => "outside_pod_cidrs",
        }
    }

    /// The node a route rejection is about, if any.
    fn node(&self) -> Option<&str> {
        match self {
            Self::NextHopRecordRejected { node } | Self::NotClaimedByNextHop { node } => Some(node),
            _ => None,
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OwnNode => write!(f, "this is our own node"),
            Self::UnknownNextHop => write!(f, "the next hop is no known node's address"),
            Self::AmbiguousNextHop { nodes } => {
                write!(
                    f,
                    "the next hop is an address of several nodes: {}",
                    nodes.join(", ")
                )
            }
            Self::NextHopRecordRejected { node } => {
                write!(f, "the next hop is node {node}, whose record is rejected")
            }
            Self::NotClaimedByNextHop { node } => {
                write!(
                    f,
                    "the next-hop node {node} does not claim this prefix in its record"
                )
            }
            Self::ClaimedNotRouted => write!(f, "claimed, but no BGP route sends it to this node"),
            Self::OverlappingClaims { nodes } => {
                write!(
                    f,
                    "overlapping blocks are claimed by {}; given to none",
                    nodes.join(", ")
                )
            }
            Self::BadRecord { error, .. } => write!(f, "invalid record: {error}"),
            Self::SharedKey { nodes } => write!(
                f,
                "its public or next key is also a key of {}; a key identifies one node",
                nodes.join(", ")
            ),
            Self::OutsidePodCidrs => write!(f, "not inside the cluster's Pod CIDRs"),
        }
    }
}

/// One thing left out of the mesh, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rejection {
    pub subject: Subject,
    pub reason: RejectReason,
}

/// Flat JSON: `{"kind","prefix"?,"nextHop"?,"node"?,"reason","message"}`.
impl Serialize for Rejection {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        match &self.subject {
            Subject::Route { prefix, next_hop } => {
                map.serialize_entry("kind", "route")?;
                map.serialize_entry("prefix", &prefix.to_string())?;
                if let Some(hop) = next_hop {
                    map.serialize_entry("nextHop", &hop.to_string())?;
                }
                if let Some(node) = self.reason.node() {
                    map.serialize_entry("node", node)?;
                }
            }
            Subject::Block { node, prefix } => {
                map.serialize_entry("kind", "block")?;
                map.serialize_entry("prefix", &prefix.to_string())?;
                map.serialize_entry("node", node)?;
            }
            Subject::Record { node } => {
                map.serialize_entry("kind", "record")?;
                map.serialize_entry("node", node)?;
            }
        }
        map.serialize_entry("reason", self.reason.code())?;
        map.serialize_entry("message", &self.reason.to_string())?;
        map.end()
    }
}

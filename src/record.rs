//! The node record: the `weft.dev/node` annotation each node publishes on its own Node.
//!
//! ```json
//! {"v":1,"publicKey":"<base64>","nextPublicKey":"<base64, only while rotating>",
//!  "endpoint":"203.0.113.7:51820","blocks":["10.244.3.0/26"],"keyEpoch":4}
//! ```
//! Parsing is strict and total: anything off gives a typed `RecordError`, never a panic.

use std::net::{IpAddr, SocketAddr};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize, Serializer};
use weft_keys::PublicKey;

/// The annotation key on the Node object.
pub const ANNOTATION_KEY: &str = "weft.dev/node";
/// The only record format version there is.
pub const RECORD_VERSION: u64 = 1;
/// Longest record accepted.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;
/// Most blocks one record may claim.
pub const MAX_BLOCKS: usize = 1024;

/// A validated node record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub public_key: PublicKey,
    pub next_public_key: Option<PublicKey>,
    pub endpoint: Option<SocketAddr>,
    pub blocks: Vec<IpNetwork>,
    pub key_epoch: u64,
}

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record is not valid JSON of the expected shape: {0}")]
    Json(String),
    #[error("record is {0} bytes, more than the {MAX_RECORD_BYTES} allowed")]
    TooLarge(usize),
    #[error("unsupported record version {0} (this weft reads version {RECORD_VERSION})")]
    UnsupportedVersion(u64),
    #[error("bad {field}: {reason}")]
    BadKey { field: &'static str, reason: String },
    #[error("nextPublicKey equals publicKey")]
    NextKeyIsCurrent,
    #[error("block {0:?} is not a CIDR")]
    BadBlock(String),
    #[error("block {0} is not canonical (host bits set; the network is {1})")]
    NonCanonicalBlock(String, String),
    #[error("blocks {0} and {1} overlap")]
    OverlappingBlocks(String, String),
    #[error("{0} blocks, more than the {MAX_BLOCKS} allowed")]
    TooManyBlocks(usize),
    #[error("bad endpoint {0:?}: {1}")]
    BadEndpoint(String, &'static str),
    #[error("the node has no weft.dev/node annotation (weft is not running there yet)")]
    Missing,
}

impl RecordError {
    /// A stable machine-readable name for the error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Json(_) => "json",
            Self::TooLarge(_) => "too_large",
            Self::UnsupportedVersion(_) => "unsupported_version",
            Self::BadKey { .. } => "bad_key",
            Self::NextKeyIsCurrent => "next_key_is_current",
            Self::BadBlock(_) => "bad_block",
            Self::NonCanonicalBlock(..) => "non_canonical_block",
            Self::OverlappingBlocks(..) => "overlapping_blocks",
            Self::TooManyBlocks(_) => "too_many_blocks",
            Self::BadEndpoint(..) => "bad_endpoint",
            Self::Missing => "missing",
        }
    }
}

/// The wire form, before validation.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct WireRecord {
    v: u64,
    public_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next_public_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    endpoint: Option<String>,
    blocks: Vec<String>,
    #[serde(default)]
    key_epoch: u64,
}

impl NodeRecord {
    /// Parses and validates an annotation value.
    pub fn parse(text: &str) -> Result<Self, RecordError> {
        if text.len() > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge(text.len()));
        }
        let wire: WireRecord =
            serde_json::from_str(text).map_err(|e| RecordError::Json(e.to_string()))?;
        Self::validate(wire)
    }

    /// Validates a record already parsed as JSON (e.g. embedded in a registry file).
    pub fn from_value(value: serde_json::Value) -> Result<Self, RecordError> {
        Self::parse(&value.to_string())
    }

    fn validate(wire: WireRecord) -> Result<Self, RecordError> {
        if wire.v != RECORD_VERSION {
            return Err(RecordError::UnsupportedVersion(wire.v));
        }
        let public_key = parse_key("publicKey", &wire.public_key)?;
        let next_public_key = wire
            .next_public_key
            .as_deref()
            .map(|k| parse_key("nextPublicKey", k))
            .transpose()?;
        if next_public_key == Some(public_key) {
            return Err(RecordError::NextKeyIsCurrent);
        }
        let endpoint = wire.endpoint.as_deref().map(parse_endpoint).transpose()?;
        if wire.blocks.len() > MAX_BLOCKS {
            return Err(RecordError::TooManyBlocks(wire.blocks.len()));
        }
        let blocks = wire
            .blocks
            .iter()
            .map(|b| parse_block(b))
            .collect::<Result<Vec<_>, _>>()?;
        check_disjoint(&blocks)?;
        Ok(Self {
            public_key,
            next_public_key,
            endpoint,
            blocks,
            key_epoch: wire.key_epoch,
        })
    }

    fn to_wire(&self) -> WireRecord {
        WireRecord {
            v: RECORD_VERSION,
            public_key: self.public_key.to_string(),
            next_public_key: self.next_public_key.map(|k| k.to_string()),
            endpoint: self.endpoint.map(|e| e.to_string()),
            blocks: self.blocks.iter().map(ToString::to_string).collect(),
            key_epoch: self.key_epoch,
        }
    }

    /// The canonical annotation value.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.to_wire()).unwrap_or_default()
    }

    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self.to_wire()).unwrap_or(serde_json::Value::Null)
    }
}

impl Serialize for NodeRecord {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_wire().serialize(serializer)
    }
}

fn parse_key(field: &'static str, text: &str) -> Result<PublicKey, RecordError> {
    PublicKey::from_base64(text).map_err(|e| RecordError::BadKey {
        field,
        reason: e.to_string(),
    })
}

fn parse_endpoint(text: &str) -> Result<SocketAddr, RecordError> {
    let bad = |why| RecordError::BadEndpoint(text.to_string(), why);
    let endpoint: SocketAddr = text.parse().map_err(|_| bad("not IP:PORT"))?;
    if endpoint.port() == 0 {
        return Err(bad("port 0"));
    }
    let ip = endpoint.ip();
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(bad("unspecified or multicast address"));
    }
    if matches!(ip, IpAddr::V4(v4) if v4.is_broadcast()) {
        return Err(bad("broadcast address"));
    }
    Ok(endpoint)
}

fn parse_block(text: &str) -> Result<IpNetwork, RecordError> {
    // `ipnetwork` accepts a bare address as a host route; a block must say its length.
    if !text.contains('/') {
        return Err(RecordError::BadBlock(text.to_string()));
    }
    let block: IpNetwork = text
        .parse()
        .map_err(|_| RecordError::BadBlock(text.to_string()))?;
    let network = IpNetwork::new(block.network(), block.prefix())
        .map_err(|_| RecordError::BadBlock(text.to_string()))?;
    if network.ip() != block.ip() {
        return Err(RecordError::NonCanonicalBlock(
            text.to_string(),
            network.to_string(),
        ));
    }
    Ok(block)
}

/// Whether two CIDRs share any address (for CIDRs: one contains the other's network).
pub fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    a.is_ipv4() == b.is_ipv4() && (a.contains(b.network()) || b.contains(a.network()))
}

/// Whether `prefix` lies inside one of `cidrs`.
pub fn within(cidrs: &[IpNetwork], prefix: &IpNetwork) -> bool {
    cidrs.iter().any(|cidr| covers(cidr, prefix))
}

/// Whether `prefix` is in scope of the configured Pod CIDRs `cidrs`: inside one of them, or
/// anywhere when none is configured (the control plane alone).
pub fn in_pod_cidrs(cidrs: &[IpNetwork], prefix: &IpNetwork) -> bool {
    cidrs.is_empty() || within(cidrs, prefix)
}

/// Whether `outer` contains all of `inner`.
pub fn covers(outer: &IpNetwork, inner: &IpNetwork) -> bool {
    outer.is_ipv4() == inner.is_ipv4()
        && outer.prefix() <= inner.prefix()
        && outer.contains(inner.network())
}

fn check_disjoint(blocks: &[IpNetwork]) -> Result<(), RecordError> {
    let mut sorted: Vec<&IpNetwork> = blocks.iter().collect();
    sorted.sort_by_key(|b| (b.is_ipv6(), b.network(), b.prefix()));
    // Sorted by start address, an overlap always shows between neighbours.
    for pair in sorted.windows(2) {
        if let [a, b] = pair
            && overlaps(a, b)
        {
            return Err(RecordError::OverlappingBlocks(a.to_string(), b.to_string()));
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "record_tests.rs"]
mod tests;

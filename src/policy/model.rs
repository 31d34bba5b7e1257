//! The policy engine's view of Pods and Namespaces, taken from k8s-openapi objects whatever
//! their source (API server or YAML files), and the packet it judges.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::selector::{Labels, Selector};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
    /// Any other IP protocol (ICMP, ...): only rules without ports allow it.
    Other,
}

impl Protocol {
    /// NetworkPolicy's protocol names; `None` (absent) means TCP.
    pub fn parse(text: Option<&str>) -> Result<Self, String> {
        match text.unwrap_or("TCP") {
            "TCP" => Ok(Self::Tcp),
            "UDP" => Ok(Self::Udp),
            "SCTP" => Ok(Self::Sctp),
            other => Err(format!("unknown protocol {other:?} (TCP, UDP or SCTP)")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
            Self::Other => "other",
        }
    }

    /// From an IP protocol number.
    pub fn from_number(number: u8) -> Self {
        match number {
            6 => Self::Tcp,
            17 => Self::Udp,
            132 => Self::Sctp,
            _ => Self::Other,
        }
    }
}

/// A packet as policy sees it: who talks to whom, on which protocol and destination port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: Protocol,
    pub dst_port: u16,
}

/// Container port name -> every (port, protocol) of that name, sorted: the API server lets
/// containers of one Pod repeat a port name, and a rule naming it matches any of them.
pub type NamedPorts = HashMap<String, Vec<(u16, Protocol)>>;

/// A Pod: identity, labels, addresses and named container ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub ips: Vec<IpAddr>,
    pub named_ports: NamedPorts,
    /// `metadata.creationTimestamp`: of two live Pods claiming one address, the newer holds it.
    pub created: Option<Time>,
    /// `metadata.deletionTimestamp` is set: the Pod is going away.
    pub terminating: bool,
}

impl PodInfo {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Reads a Pod object. Only Pods that are a policy identity come back: a Pod without an
    /// address is of no use to the datapath; a Pod that has finished (phase Succeeded or
    /// Failed) keeps its last `podIP`, which the node may have handed to a new Pod already;
    /// a hostNetwork Pod's address is its node's, shared with the node itself and every other
    /// hostNetwork Pod there. As most NetworkPolicy implementations do (and Kubernetes
    /// allows), hostNetwork Pods are neither isolated nor selected by podSelector or
    /// namespaceSelector peers: traffic to and from them is the node's traffic.
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
            return None;
        }
        let status = pod.status.as_ref();
        if matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        ) {
            return None;
        }
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.clone()?;
        let mut ips: Vec<IpAddr> = status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|ip| ip.ip.parse().ok())
            .collect();
        if ips.is_empty() {
            ips.extend(
                status
                    .and_then(|s| s.pod_ip.as_ref())
                    .and_then(|ip| ip.parse::<IpAddr>().ok()),
            );
        }
        if ips.is_empty() {
            return None;
        }
        let mut named_ports = NamedPorts::new();
        for container in pod.spec.iter().flat_map(|s| s.containers.iter()) {
            for port in container.ports.iter().flatten() {
                if let (Some(port_name), Ok(number), Ok(protocol)) = (
                    &port.name,
                    u16::try_from(port.container_port),
                    Protocol::parse(port.protocol.as_deref()),
                ) {
                    named_ports
                        .entry(port_name.clone())
                        .or_default()
                        .push((number, protocol));
                }
            }
        }
        for ports in named_ports.values_mut() {
            // Deterministic whatever order the containers list them in.
            ports.sort_unstable();
            ports.dedup();
        }
        Some(Self {
            namespace,
            name,
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ips,
            named_ports,
            created: pod.metadata.creation_timestamp.clone(),
            terminating: pod.metadata.deletion_timestamp.is_some(),
        })
    }

    /// Whether this Pod's claim on an address it shares with `other` comes first: a Pod that
    /// is not terminating before one that is, then the newer (addresses are reused only after
    /// their old Pod is gone, so the newer Pod is the one the node gave it to last), then the
    /// smaller `namespace/name` so that the choice never depends on the order Pods arrive in.
    pub fn claim_precedes(&self, other: &PodInfo) -> bool {
        let rank = |p: &PodInfo| (p.terminating, std::cmp::Reverse(p.created.clone()));
        (rank(self), &self.namespace, &self.name) < (rank(other), &other.namespace, &other.name)
    }
}

/// The label every namespace carries, set by the API server to the namespace's name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A Namespace's name and labels (the `kubernetes.io/metadata.name` label is always set, as
/// the API server does).
pub fn namespace_labels(namespace: &Namespace) -> Option<(String, Labels)> {
    let name = namespace.metadata.name.clone()?;
    let mut labels = namespace.metadata.labels.clone().unwrap_or_default();
    labels.insert(NAMESPACE_NAME_LABEL.into(), name.clone());
    Some((name, labels))
}

/// Whether a namespaceSelector selects namespace `name`. A namespace whose Namespace object
/// is unknown (not listed yet, or missing from a policy directory) still has its name label,
/// as every namespace does; its other labels are unknown, so a selector that requires
/// anything of them does not select it (fail closed: a namespaceSelector only ever allows).
pub fn namespace_selected(
    selector: &Selector,
    namespaces: &BTreeMap<String, Labels>,
    name: &str,
) -> bool {
    match namespaces.get(name) {
        Some(labels) => selector.matches(labels),
        None => {
            selector.only_requires(NAMESPACE_NAME_LABEL)
                && selector.matches(&Labels::from([(NAMESPACE_NAME_LABEL.into(), name.into())]))
        }
    }
}

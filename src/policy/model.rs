//! The policy engine's view of Pods and Namespaces, taken from k8s-openapi objects whatever
//! their source (API server or YAML files), and the packet it judges.

use std::collections::HashMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod};

use super::selector::Labels;

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

/// A Pod: identity, labels, addresses and named container ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub ips: Vec<IpAddr>,
    /// Container port name -> (port, protocol).
    pub named_ports: HashMap<String, (u16, Protocol)>,
}

impl PodInfo {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Reads a Pod object; Pods without an address are of no use to the datapath.
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.clone()?;
        let status = pod.status.as_ref();
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
        let mut named_ports = HashMap::new();
        for container in pod.spec.iter().flat_map(|s| s.containers.iter()) {
            for port in container.ports.iter().flatten() {
                if let (Some(port_name), Ok(number), Ok(protocol)) = (
                    &port.name,
                    u16::try_from(port.container_port),
                    Protocol::parse(port.protocol.as_deref()),
                ) {
                    named_ports.insert(port_name.clone(), (number, protocol));
                }
            }
        }
        Some(Self {
            namespace,
            name,
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ips,
            named_ports,
        })
    }
}

/// A Namespace's name and labels (the `kubernetes.io/metadata.name` label is always set, as
/// the API server does).
pub fn namespace_labels(namespace: &Namespace) -> Option<(String, Labels)> {
    let name = namespace.metadata.name.clone()?;
    let mut labels = namespace.metadata.labels.clone().unwrap_or_default();
    labels.insert("kubernetes.io/metadata.name".into(), name.clone());
    Some((name, labels))
}

//! A reference NetworkPolicy evaluator, written independently of the compiled engine and as
//! plainly as possible: for every packet it walks every policy. Only for tests. It takes
//! valid policies only (what a rejected one still does is tested on the engine alone).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::model::{Flow, Protocol};

type Labels = BTreeMap<String, String>;
type RawRule<'a> = (
    Option<&'a Vec<NetworkPolicyPeer>>,
    Option<&'a Vec<NetworkPolicyPort>>,
);

fn selector_matches(selector: &LabelSelector, labels: &Labels) -> bool {
    for (key, value) in selector.match_labels.iter().flatten() {
        if labels.get(key) != Some(value) {
            return false;
        }
    }
    for requirement in selector.match_expressions.iter().flatten() {
        let values = requirement.values.clone().unwrap_or_default();
        let have = labels.get(&requirement.key);
        let ok = match requirement.operator.as_str() {
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => !have.is_some_and(|v| values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// A Pod's addresses: those of `podIPs` that parse, or else its `podIP`.
fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    let mut ips = Vec::new();
    for entry in status.pod_ips.iter().flatten() {
        if let Ok(ip) = entry.ip.parse() {
            ips.push(ip);
        }
    }
    if ips.is_empty()
        && let Some(Ok(ip)) = status.pod_ip.as_ref().map(|ip| ip.parse())
    {
        ips.push(ip);
    }
    ips
}

/// Whether a Pod stands for its address in policy: not hostNetwork (its address is the
/// node's), not finished (phase Succeeded or Failed: its address may be someone else's now).
fn is_live(pod: &Pod) -> bool {
    let host_network = pod.spec.as_ref().and_then(|s| s.host_network) == Some(true);
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !host_network && phase != Some("Succeeded") && phase != Some("Failed")
}

/// The Pod that `ip` is judged as: of the live Pods with that address, one not being deleted
/// before one that is, then the newest, then the first by namespace and name.
fn pod_at(pods: &[Pod], ip: IpAddr) -> Option<&Pod> {
    let mut found: Vec<&Pod> = pods
        .iter()
        .filter(|p| is_live(p) && pod_ips(p).contains(&ip))
        .collect();
    found.sort_by(|a, b| {
        let deleting = |p: &Pod| p.metadata.deletion_timestamp.is_some();
        deleting(a)
            .cmp(&deleting(b))
            .then_with(|| {
                b.metadata
                    .creation_timestamp
                    .cmp(&a.metadata.creation_timestamp)
            })
            .then_with(|| pod_namespace(a).cmp(&pod_namespace(b)))
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
    found.first().copied()
}

fn pod_namespace(pod: &Pod) -> String {
    pod.metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into())
}

fn labels_of(pod: &Pod) -> Labels {
    pod.metadata.labels.clone().unwrap_or_default()
}

const NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Whether `selector` selects namespace `name`. Every namespace has the name label; when its
/// Namespace object is unknown that is all that is known of it, and a selector that asks
/// about any other label does not select it.
fn namespace_matches(selector: &LabelSelector, namespaces: &[Namespace], name: &str) -> bool {
    let known = namespaces
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(name));
    let mut labels = match known {
        Some(namespace) => namespace.metadata.labels.clone().unwrap_or_default(),
        None => {
            let keys = selector
                .match_labels
                .iter()
                .flatten()
                .map(|(key, _)| key)
                .chain(selector.match_expressions.iter().flatten().map(|e| &e.key));
            for key in keys {
                if key != NAME_LABEL {
                    return false;
                }
            }
            Labels::new()
        }
    };
    labels.insert(NAME_LABEL.into(), name.into());
    selector_matches(selector, &labels)
}

/// An ipBlock CIDR: IPv4 parts (and the prefix) may have leading zeros, read as decimal.
fn parse_cidr(text: &str) -> Option<IpNetwork> {
    let (address, prefix) = text.split_once('/')?;
    let number = |t: &str| -> Option<u64> {
        let trimmed = t.trim_start_matches('0');
        if t.is_empty() || trimmed.len() > 3 {
            return None;
        }
        if trimmed.is_empty() {
            Some(0)
        } else {
            trimmed.parse().ok()
        }
    };
    let prefix = u8::try_from(number(prefix)?).ok()?;
    let ip: IpAddr = if address.contains(':') {
        address.parse().ok()?
    } else {
        let parts: Vec<&str> = address.split('.').collect();
        if parts.len() != 4 {
            return None;
        }
        let mut octets = Vec::new();
        for part in parts {
            octets.push(u8::try_from(number(part)?).ok()?);
        }
        IpAddr::from([octets[0], octets[1], octets[2], octets[3]])
    };
    IpNetwork::new(ip, prefix).ok()
}

fn protocol_of(text: Option<&String>) -> Protocol {
    match text.map(String::as_str) {
        Some("UDP") => Protocol::Udp,
        Some("SCTP") => Protocol::Sctp,
        _ => Protocol::Tcp,
    }
}

fn peer_matches(
    peer: &NetworkPolicyPeer,
    policy_namespace: &str,
    ip: IpAddr,
    pods: &[Pod],
    namespaces: &[Namespace],
) -> bool {
    if let Some(block) = &peer.ip_block {
        let Some(cidr) = parse_cidr(&block.cidr) else {
            return false;
        };
        let excluded = block
            .except
            .iter()
            .flatten()
            .any(|e| parse_cidr(e).is_some_and(|e| e.contains(ip)));
        return cidr.contains(ip) && !excluded;
    }
    let Some(pod) = pod_at(pods, ip) else {
        return false;
    };
    let namespace = pod_namespace(pod);
    let namespace_ok = match &peer.namespace_selector {
        None => namespace == policy_namespace,
        Some(selector) => namespace_matches(selector, namespaces, &namespace),
    };
    let pod_ok = match &peer.pod_selector {
        None => true,
        Some(selector) => selector_matches(selector, &labels_of(pod)),
    };
    namespace_ok && pod_ok
}

fn port_matches(port: &NetworkPolicyPort, flow: &Flow, dst: Option<&Pod>) -> bool {
    if protocol_of(port.protocol.as_ref()) != flow.protocol {
        return false;
    }
    match &port.port {
        None => true,
        Some(IntOrString::Int(n)) => {
            let end = port.end_port.unwrap_or(*n);
            i32::from(flow.dst_port) >= *n && i32::from(flow.dst_port) <= end
        }
        Some(IntOrString::String(name)) => dst.is_some_and(|pod| {
            pod.spec
                .iter()
                .flat_map(|s| &s.containers)
                .flat_map(|c| c.ports.iter().flatten())
                .any(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && i32::from(flow.dst_port) == p.container_port
                        && protocol_of(p.protocol.as_ref()) == flow.protocol
                })
        }),
    }
}

/// Whether `pod`'s `direction` ("Ingress"/"Egress") allows the flow, with `peer` the other end.
fn direction_allows(
    direction: &str,
    pod: &Pod,
    peer: IpAddr,
    flow: &Flow,
    policies: &[NetworkPolicy],
    namespaces: &[Namespace],
    pods: &[Pod],
) -> bool {
    let dst = pod_at(pods, flow.dst);
    let mut isolated = false;
    for policy in policies {
        let namespace = policy
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        // Without a spec, the defaults: podSelector {} (every Pod), policyTypes [Ingress].
        let spec = policy.spec.clone().unwrap_or_default();
        if namespace != pod_namespace(pod)
            || !selector_matches(
                &spec.pod_selector.clone().unwrap_or_default(),
                &labels_of(pod),
            )
        {
            continue;
        }
        let has_egress = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        // An empty list is defaulted like an absent one.
        let types = spec
            .policy_types
            .clone()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| {
                if has_egress {
                    vec!["Ingress".into(), "Egress".into()]
                } else {
                    vec!["Ingress".into()]
                }
            });
        if !types.iter().any(|t| t == direction) {
            continue;
        }
        isolated = true;
        let rules: Vec<RawRule<'_>> = if direction == "Ingress" {
            spec.ingress
                .iter()
                .flatten()
                .map(|r| (r.from.as_ref(), r.ports.as_ref()))
                .collect()
        } else {
            spec.egress
                .iter()
                .flatten()
                .map(|r| (r.to.as_ref(), r.ports.as_ref()))
                .collect()
        };
        for (peers, ports) in rules {
            let peer_ok = match peers {
                None => true,
                Some(list) if list.is_empty() => true,
                Some(list) => list
                    .iter()
                    .any(|p| peer_matches(p, &namespace, peer, pods, namespaces)),
            };
            let port_ok = match ports {
                None => true,
                Some(list) if list.is_empty() => true,
                Some(list) => list.iter().any(|p| port_matches(p, flow, dst)),
            };
            if peer_ok && port_ok {
                return true;
            }
        }
    }
    !isolated
}

/// Whether NetworkPolicy allows `flow`.
pub fn allowed(
    policies: &[NetworkPolicy],
    namespaces: &[Namespace],
    pods: &[Pod],
    flow: &Flow,
) -> bool {
    if flow.src == flow.dst {
        return true;
    }
    let src = pod_at(pods, flow.src);
    let dst = pod_at(pods, flow.dst);
    // One Pod's two addresses (IPv4 and IPv6): a Pod may always reach itself.
    if let (Some(a), Some(b)) = (src, dst)
        && std::ptr::eq(a, b)
    {
        return true;
    }
    let egress = src.is_none_or(|pod| {
        direction_allows("Egress", pod, flow.dst, flow, policies, namespaces, pods)
    });
    let ingress = dst.is_none_or(|pod| {
        direction_allows("Ingress", pod, flow.src, flow, policies, namespaces, pods)
    });
    egress && ingress
}

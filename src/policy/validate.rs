//! NetworkPolicy validation: each policy is checked as the API server would before it is
//! resolved against Pods, and refused whole (with a reason) if anything in it is invalid.

use ipnetwork::IpNetwork;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::compile::RejectedPolicy;
use super::model::Protocol;
use super::selector::Selector;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PortMatch {
    /// Every port of the protocol.
    All(Protocol),
    Range(Protocol, u16, u16),
    /// A container port name, resolved against the destination Pod.
    Named(Protocol, String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct IpBlock {
    pub(super) cidr: IpNetwork,
    pub(super) except: Vec<IpNetwork>,
}

/// One policy after validation, before resolution against Pods.
pub(super) struct Checked {
    pub(super) key: String,
    pub(super) namespace: String,
    pub(super) selector: Selector,
    pub(super) ingress: Option<Vec<CheckedRule>>,
    pub(super) egress: Option<Vec<CheckedRule>>,
}

pub(super) struct CheckedRule {
    pub(super) peers: Option<Vec<CheckedPeer>>,
    pub(super) ports: Vec<PortMatch>,
}

pub(super) enum CheckedPeer {
    Pods {
        pods: Option<Selector>,
        namespaces: Option<Selector>,
    },
    Block(IpBlock),
}

fn check_port(port: &NetworkPolicyPort) -> Result<PortMatch, String> {
    let protocol = Protocol::parse(port.protocol.as_deref())?;
    let to_port = |n: i32| u16::try_from(n).ok().filter(|p| *p > 0);
    match (&port.port, port.end_port) {
        (None, None) => Ok(PortMatch::All(protocol)),
        (None, Some(_)) => Err("endPort without port".into()),
        (Some(IntOrString::Int(n)), end) => {
            let start = to_port(*n).ok_or_else(|| format!("port {n} is not 1-65535"))?;
            let end = match end {
                None => start,
                Some(e) => to_port(e)
                    .filter(|e| *e >= start)
                    .ok_or_else(|| format!("endPort {e} is not a port at or above {start}"))?,
            };
            Ok(PortMatch::Range(protocol, start, end))
        }
        (Some(IntOrString::String(_)), Some(_)) => Err("endPort with a named port".into()),
        (Some(IntOrString::String(name)), None) => {
            check_port_name(name).map_err(|why| format!("invalid port name {name:?}: {why}"))?;
            Ok(PortMatch::Named(protocol, name.clone()))
        }
    }
}

/// A named port must be an IANA service name (RFC 6335), as the API server checks it:
/// 1-15 characters of `a-z`, `0-9` and `-`, at least one letter, no `-` at either end and
/// no `--`.
fn check_port_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 15 {
        return Err("must be 1-15 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("must contain only lowercase letters (a-z), digits (0-9) and '-'");
    }
    if !name.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err("must contain at least one letter (a-z)");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("must not begin or end with '-'");
    }
    if name.contains("--") {
        return Err("must not contain consecutive '-'");
    }
    Ok(())
}

/// A CIDR as the API server reads an ipBlock's (`ParseCIDRSloppy`, without the opt-in
/// StrictIPCIDRValidation): an IPv4 address may have leading zeros in its parts, read as
/// decimal (`010.0.0.0/8` is 10.0.0.0/8), and so may the prefix length.
pub(super) fn parse_cidr(text: &str) -> Option<IpNetwork> {
    let (address, prefix) = text.split_once('/')?;
    let digits = |part: &str| -> Option<u32> {
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // Past 255 (or 128) is invalid whatever follows; stop before overflowing.
        part.bytes().try_fold(0u32, |n, b| {
            let n = n * 10 + u32::from(b - b'0');
            (n <= 0xFFFF).then_some(n)
        })
    };
    let prefix = u8::try_from(digits(prefix)?).ok()?;
    if address.contains(':') {
        return IpNetwork::new(address.parse::<std::net::Ipv6Addr>().ok()?.into(), prefix).ok();
    }
    let mut octets = [0u8; 4];
    let mut parts = address.split('.');
    for octet in &mut octets {
        *octet = u8::try_from(digits(parts.next()?)?).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    IpNetwork::new(std::net::Ipv4Addr::from(octets).into(), prefix).ok()
}

fn check_peer(peer: &NetworkPolicyPeer) -> Result<CheckedPeer, String> {
    if let Some(block) = &peer.ip_block {
        if peer.pod_selector.is_some() || peer.namespace_selector.is_some() {
            return Err("ipBlock cannot be combined with selectors in one peer".into());
        }
        let cidr = parse_cidr(&block.cidr)
            .ok_or_else(|| format!("ipBlock cidr {:?} is not a CIDR", block.cidr))?;
        let mut except = Vec::new();
        for text in block.except.iter().flatten() {
            let e = parse_cidr(text).ok_or_else(|| format!("except {text:?} is not a CIDR"))?;
            // As the API server requires: a strict subset (an except equal to the cidr would
            // leave an ipBlock that matches nothing).
            if !crate::record::covers(&cidr, &e) || e.prefix() <= cidr.prefix() {
                return Err(format!(
                    "except {text} is not a strict subset of cidr {}",
                    block.cidr
                ));
            }
            except.push(e);
        }
        return Ok(CheckedPeer::Block(IpBlock { cidr, except }));
    }
    if peer.pod_selector.is_none() && peer.namespace_selector.is_none() {
        return Err("a peer needs podSelector, namespaceSelector or ipBlock".into());
    }
    Ok(CheckedPeer::Pods {
        pods: peer
            .pod_selector
            .as_ref()
            .map(Selector::compile)
            .transpose()?,
        namespaces: peer
            .namespace_selector
            .as_ref()
            .map(Selector::compile)
            .transpose()?,
    })
}

type RawRule<'a> = (
    Option<&'a Vec<NetworkPolicyPeer>>,
    Option<&'a Vec<NetworkPolicyPort>>,
);

fn check_rules(rules: &[RawRule<'_>]) -> Result<Vec<CheckedRule>, String> {
    let mut out = Vec::new();
    for (peers, ports) in rules {
        let peers = match peers {
            None => None,
            Some(list) if list.is_empty() => None,
            Some(list) => Some(list.iter().map(check_peer).collect::<Result<Vec<_>, _>>()?),
        };
        let ports = ports
            .iter()
            .flat_map(|p| p.iter())
            .map(check_port)
            .collect::<Result<Vec<_>, _>>()?;
        out.push(CheckedRule { peers, ports });
    }
    Ok(out)
}

/// Validates a policy whole; a rejection names it (`namespace/name`, `?` without a name).
pub(super) fn check_policy(policy: &NetworkPolicy) -> Result<Checked, RejectedPolicy> {
    let namespace = policy_namespace(policy);
    let name = policy.metadata.name.as_deref();
    let key = format!("{namespace}/{}", name.unwrap_or("?"));
    let rejected = |reason: String| RejectedPolicy {
        policy: key.clone(),
        reason,
    };
    if name.is_none() {
        return Err(rejected("policy has no name".into()));
    }
    check_spec(policy, namespace, key.clone()).map_err(rejected)
}

/// What a policy that [`check_policy`] rejects still does: if its podSelector is valid, it
/// isolates the Pods it selects in its policyTypes directions (defaulted as for a valid
/// policy; both directions if it names an unknown type), with no rule allowing anything. A
/// policy the API server let through (its validation differs between versions and feature
/// gates) thus fails closed rather than leaving the Pods it meant to protect open.
pub(super) fn isolation_of_rejected(policy: &NetworkPolicy) -> Option<Checked> {
    let namespace = policy_namespace(policy);
    let key = format!(
        "{namespace}/{}",
        policy.metadata.name.as_deref().unwrap_or("?")
    );
    let spec = policy.spec.as_ref();
    let selector = pod_selector(spec).ok()?;
    let (ingress, egress) = isolated_directions(spec).unwrap_or((true, true));
    Some(Checked {
        key,
        namespace,
        selector,
        ingress: ingress.then(Vec::new),
        egress: egress.then(Vec::new),
    })
}

fn policy_namespace(policy: &NetworkPolicy) -> String {
    policy
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into())
}

/// The podSelector; absent selects every Pod of the namespace.
fn pod_selector(spec: Option<&NetworkPolicySpec>) -> Result<Selector, String> {
    Selector::compile(
        spec.and_then(|s| s.pod_selector.as_ref())
            .unwrap_or(&Default::default()),
    )
}

/// Whether the policy isolates (ingress, egress). policyTypes defaults (the API server's, for
/// an absent or empty list alike): Ingress always; Egress when egress rules are present.
fn isolated_directions(spec: Option<&NetworkPolicySpec>) -> Result<(bool, bool), String> {
    let has_egress_rules = spec
        .and_then(|s| s.egress.as_ref())
        .is_some_and(|rules| !rules.is_empty());
    match spec.and_then(|s| s.policy_types.as_ref()) {
        Some(types) if !types.is_empty() => {
            let (mut ingress, mut egress) = (false, false);
            for t in types {
                match t.as_str() {
                    "Ingress" => ingress = true,
                    "Egress" => egress = true,
                    other => return Err(format!("unknown policyType {other:?}")),
                }
            }
            Ok((ingress, egress))
        }
        _ => Ok((true, has_egress_rules)),
    }
}

fn check_spec(policy: &NetworkPolicy, namespace: String, key: String) -> Result<Checked, String> {
    let spec = policy.spec.as_ref();
    let selector = pod_selector(spec)?;
    let ingress_rules: Vec<_> = spec
        .and_then(|s| s.ingress.as_ref())
        .into_iter()
        .flatten()
        .map(|r| (r.from.as_ref(), r.ports.as_ref()))
        .collect();
    let egress_rules: Vec<_> = spec
        .and_then(|s| s.egress.as_ref())
        .into_iter()
        .flatten()
        .map(|r| (r.to.as_ref(), r.ports.as_ref()))
        .collect();
    let (isolates_ingress, isolates_egress) = isolated_directions(spec)?;
    let ingress = check_rules(&ingress_rules)?;
    let egress = check_rules(&egress_rules)?;
    Ok(Checked {
        key,
        namespace,
        selector,
        ingress: isolates_ingress.then_some(ingress),
        egress: isolates_egress.then_some(egress),
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::networking::v1::{IPBlock, NetworkPolicyIngressRule, NetworkPolicySpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn with_ingress(rule: NetworkPolicyIngressRule) -> NetworkPolicy {
        NetworkPolicy {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("x".into()),
                ..ObjectMeta::default()
            },
            spec: Some(NetworkPolicySpec {
                ingress: Some(vec![rule]),
                ..NetworkPolicySpec::default()
            }),
        }
    }

    fn with_block(cidr: &str, except: &[&str]) -> NetworkPolicy {
        with_ingress(NetworkPolicyIngressRule {
            from: Some(vec![NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: cidr.into(),
                    except: Some(except.iter().map(|e| e.to_string()).collect()),
                }),
                ..NetworkPolicyPeer::default()
            }]),
            ports: None,
        })
    }

    fn with_named_port(name: &str) -> NetworkPolicy {
        with_ingress(NetworkPolicyIngressRule {
            from: None,
            ports: Some(vec![NetworkPolicyPort {
                port: Some(IntOrString::String(name.into())),
                ..NetworkPolicyPort::default()
            }]),
        })
    }

    fn reason(policy: &NetworkPolicy) -> Option<String> {
        check_policy(policy).err().map(|rejected| rejected.reason)
    }

    #[test]
    fn an_except_must_be_a_strict_subset_of_the_cidr() {
        assert_eq!(reason(&with_block("10.0.0.0/16", &["10.0.1.0/24"])), None);
        assert_eq!(reason(&with_block("fd00::/48", &["fd00::/64"])), None);
        for (cidr, except) in [
            ("10.0.0.0/16", "10.0.0.0/16"),
            ("10.0.0.5/32", "10.0.0.5/32"),
            ("fd00::/48", "fd00::/48"),
            ("10.0.0.0/16", "10.0.0.0/8"),
            ("10.0.0.0/16", "10.1.0.0/24"),
            ("10.0.0.0/16", "fd00::/64"),
        ] {
            let why = reason(&with_block(cidr, &[except]))
                .unwrap_or_else(|| panic!("except {except} of {cidr} was accepted"));
            assert!(why.contains("strict subset"), "{why}");
        }
    }

    #[test]
    fn cidrs_are_read_as_the_api_server_reads_them() {
        for (text, read) in [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("010.0.0.0/8", "10.0.0.0/8"),
            ("010.000.001.000/024", "10.0.1.0/24"),
            ("0000000192.168.1.1/32", "192.168.1.1/32"),
            ("fd00::/48", "fd00::/48"),
            ("fd00::/048", "fd00::/48"),
        ] {
            assert_eq!(parse_cidr(text), read.parse().ok(), "{text}");
        }
        for bad in [
            "10.0.0.0",
            "10.0.0/8",
            "10.0.0.0.0/8",
            "256.0.0.0/8",
            "10.0.0.0/33",
            "10..0.0/8",
            "+10.0.0.0/8",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "fd00::/129",
            "0x0a.0.0.0/8",
        ] {
            assert_eq!(parse_cidr(bad), None, "{bad}");
        }
        assert_eq!(
            reason(&with_block("010.0.0.0/8", &["010.001.0.0/16"])),
            None
        );
        assert!(reason(&with_block("256.0.0.0/8", &[])).is_some());
    }

    #[test]
    fn named_ports_must_be_iana_service_names() {
        for good in [
            "http",
            "h",
            "serve-80-tcp",
            "a1",
            "1a",
            "metrics-9090",
            "abcdefghijklmno",
        ] {
            assert_eq!(reason(&with_named_port(good)), None, "{good}");
        }
        for (bad, why) in [
            ("", "1-15"),
            ("abcdefghijklmnop", "1-15"),
            ("HTTP", "lowercase"),
            ("web_ui", "lowercase"),
            ("web.ui", "lowercase"),
            ("8080", "at least one letter"),
            ("-http", "begin or end"),
            ("http-", "begin or end"),
            ("we--b", "consecutive"),
        ] {
            let reason = reason(&with_named_port(bad))
                .unwrap_or_else(|| panic!("port name {bad:?} was accepted"));
            assert!(
                reason.contains(why) && reason.contains("invalid port name"),
                "{bad:?}: {reason}"
            );
        }
    }
}

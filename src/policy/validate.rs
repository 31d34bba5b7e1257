//! NetworkPolicy validation: each policy is checked as the API server would before it is
//! resolved against Pods, and refused whole (with a reason) if anything in it is invalid.

use ipnetwork::IpNetwork;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
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

fn check_peer(peer: &NetworkPolicyPeer) -> Result<CheckedPeer, String> {
    if let Some(block) = &peer.ip_block {
        if peer.pod_selector.is_some() || peer.namespace_selector.is_some() {
            return Err("ipBlock cannot be combined with selectors in one peer".into());
        }
        let cidr: IpNetwork = block
            .cidr
            .parse()
            .map_err(|_| format!("ipBlock cidr {:?} is not a CIDR", block.cidr))?;
        let mut except = Vec::new();
        for text in block.except.iter().flatten() {
            let e: IpNetwork = text
                .parse()
                .map_err(|_| format!("except {text:?} is not a CIDR"))?;
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
    let namespace = policy
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
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

fn check_spec(policy: &NetworkPolicy, namespace: String, key: String) -> Result<Checked, String> {
    let spec = policy.spec.as_ref();
    let selector = match spec.and_then(|s| s.pod_selector.as_ref()) {
        Some(selector) => Selector::compile(selector)?,
        None => Selector::compile(&Default::default())?,
    };
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
    // policyTypes defaults (the API server's, for an absent or empty list alike): Ingress
    // always; Egress when egress rules are present.
    let types = match spec.and_then(|s| s.policy_types.as_ref()) {
        Some(types) if !types.is_empty() => types.clone(),
        _ if egress_rules.is_empty() => vec!["Ingress".to_string()],
        _ => vec!["Ingress".to_string(), "Egress".to_string()],
    };
    let mut isolates_ingress = false;
    let mut isolates_egress = false;
    for t in &types {
        match t.as_str() {
            "Ingress" => isolates_ingress = true,
            "Egress" => isolates_egress = true,
            other => return Err(format!("unknown policyType {other:?}")),
        }
    }
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

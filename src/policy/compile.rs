//! NetworkPolicy compiled ahead of time into per-Pod rule sets, and the per-packet check.
//!
//! Compilation resolves selectors against the known Pods and Namespaces once; the check then
//! looks up the two Pods by address and walks only the rules of the policies that select
//! them, with no allocation.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::ip_ranges::IpRanges;
use super::model::{Flow, NamedPorts, PodInfo, namespace_labels, namespace_selected};
use super::selector::Labels;
use super::validate::{
    Checked, CheckedPeer, CheckedRule, PortMatch, check_policy, isolation_of_rejected,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }
}

/// Why one direction of a flow is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowance<'a> {
    /// The Pod is not isolated in this direction (no policy selects it for it).
    NotIsolated,
    /// The address is no known Pod's, so no policy isolates it (the datapath's gate may still
    /// isolate such a local destination: see [`super::gate::Admission::UnknownDestination`]).
    UnknownPod,
    /// Rule `rule` (0-based) of policy `policy` (`namespace/name`) allows it.
    Rule { policy: &'a str, rule: usize },
}

/// The verdict on a flow, with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// A Pod talking to itself.
    SamePod,
    Allowed {
        egress: Allowance<'a>,
        ingress: Allowance<'a>,
    },
    /// `pod` is isolated in `direction` and no rule allows the flow.
    Denied { direction: Direction, pod: &'a str },
}

impl Verdict<'_> {
    pub fn is_allowed(&self) -> bool {
        !matches!(self, Self::Denied { .. })
    }
}

impl fmt::Display for Allowance<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotIsolated => write!(f, "not isolated"),
            Self::UnknownPod => write!(f, "no known Pod"),
            Self::Rule { policy, rule } => write!(f, "policy {policy} rule {rule}"),
        }
    }
}

impl fmt::Display for Verdict<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SamePod => write!(f, "allowed: a Pod may always reach itself"),
            Self::Allowed { egress, ingress } => {
                write!(f, "allowed: egress by {egress}, ingress by {ingress}")
            }
            Self::Denied { direction, pod } => write!(
                f,
                "denied: {pod} is isolated for {} and no policy allows this",
                direction.as_str()
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Peers {
    Any,
    Some {
        pods: HashSet<IpAddr>,
        /// The addresses the ipBlock peers match.
        blocks: IpRanges,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    policy: String,
    index: usize,
    peers: Peers,
    /// Empty: every port and protocol.
    ports: Vec<PortMatch>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct PodRules {
    key: String,
    ips: Vec<IpAddr>,
    named_ports: NamedPorts,
    /// Indexes into [`PolicySet::rules`]; `None`: not isolated in that direction.
    ingress: Option<Vec<usize>>,
    egress: Option<Vec<usize>>,
}

/// One policy's rules, resolved (into [`PolicySet::rules`], one after another) the first time
/// it selects a Pod.
#[derive(Debug, Clone, Default)]
struct Resolved {
    ingress: std::ops::Range<usize>,
    egress: std::ops::Range<usize>,
}

/// Resolves `policy`'s rules against the Pods and Namespaces, appending them to `rules`.
fn resolve_policy(
    policy: &Checked,
    pods: &[PodInfo],
    namespaces: &BTreeMap<String, Labels>,
    rules: &mut Vec<Rule>,
) -> Resolved {
    let mut resolve = |checked: &[CheckedRule]| {
        let start = rules.len();
        rules.extend(checked.iter().enumerate().map(|(index, rule)| Rule {
            policy: policy.key.clone(),
            index,
            peers: resolve_peers(rule.peers.as_deref(), &policy.namespace, pods, namespaces),
            ports: rule.ports.clone(),
        }));
        start..rules.len()
    };
    Resolved {
        ingress: policy
            .ingress
            .as_deref()
            .map(&mut resolve)
            .unwrap_or_default(),
        egress: policy
            .egress
            .as_deref()
            .map(&mut resolve)
            .unwrap_or_default(),
    }
}

/// A policy that could not be compiled, and why. None of its rules are in force, but the
/// Pods its podSelector selects are still isolated in its policyTypes directions (see
/// `validate::isolation_of_rejected`): a rejected policy fails closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedPolicy {
    pub policy: String,
    pub reason: String,
}

/// Several live Pods claiming one address: policy judges the address as `owner`'s (see
/// [`PodInfo::claim_precedes`]); the `others` (`namespace/name`, sorted) are ignored for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressConflict {
    pub ip: IpAddr,
    pub owner: String,
    pub others: Vec<String>,
}

/// Every Pod's compiled rules. The same inputs, in any order, compile to equal sets, so a
/// source can tell a change that matters to policy from one that does not.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicySet {
    pods: Vec<PodRules>,
    by_ip: HashMap<IpAddr, usize>,
    /// Every rule of every policy that selects a Pod, resolved once and shared by all the Pods
    /// it selects: a policy selecting N Pods with peers of M Pods costs N + M, not N x M.
    rules: Vec<Rule>,
    /// Policies in force (`namespace/name`), sorted.
    pub accepted: Vec<String>,
    pub rejected: Vec<RejectedPolicy>,
    /// Addresses claimed by more than one live Pod, by address.
    pub conflicts: Vec<AddressConflict>,
    /// Some policy in force isolates the Pods it selects for ingress (see
    /// [`PolicySet::isolates_ingress`]).
    isolates_ingress: bool,
    /// Pods (`namespace/name`) listed without an address policy judges them by (no
    /// `podIP` yet, finished, on the host network, or their address held by another Pod),
    /// so `weft policy check` can tell them from Pods nobody listed.
    without_address: BTreeSet<String>,
}

/// A Pod object's `namespace/name`, as [`PodInfo::key`] has it.
fn pod_key(pod: &Pod) -> Option<String> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    Some(format!("{namespace}/{}", pod.metadata.name.as_deref()?))
}

/// Gives every address to one Pod, deterministically, whatever order the Pods come in: each
/// Pod keeps only the addresses it holds, and Pods left without any are dropped, so a Pod
/// that lost its address is neither judged nor selected by it.
fn claim_addresses(mut pods: Vec<PodInfo>) -> (Vec<PodInfo>, Vec<AddressConflict>) {
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut claims: BTreeMap<IpAddr, Vec<usize>> = BTreeMap::new();
    for (index, pod) in pods.iter().enumerate() {
        for ip in &pod.ips {
            let claimants = claims.entry(*ip).or_default();
            // One claim per Pod, even if it lists an address twice.
            if claimants.last() != Some(&index) {
                claimants.push(index);
            }
        }
    }
    let mut owner_of = HashMap::new();
    let mut conflicts = Vec::new();
    for (ip, claimants) in claims {
        let Some(owner) = claimants.iter().copied().reduce(|best, next| {
            if pods[next].claim_precedes(&pods[best]) {
                next
            } else {
                best
            }
        }) else {
            continue;
        };
        owner_of.insert(ip, owner);
        if claimants.len() > 1 {
            let mut others: Vec<String> = claimants
                .iter()
                .filter(|i| **i != owner)
                .map(|i| pods[*i].key())
                .collect();
            others.sort();
            conflicts.push(AddressConflict {
                ip,
                owner: pods[owner].key(),
                others,
            });
        }
    }
    for (index, pod) in pods.iter_mut().enumerate() {
        pod.ips.retain(|ip| owner_of.get(ip) == Some(&index));
    }
    pods.retain(|pod| !pod.ips.is_empty());
    (pods, conflicts)
}

impl PolicySet {
    /// Compiles policies against the Pods and Namespaces known now.
    pub fn compile(policies: &[NetworkPolicy], namespaces: &[Namespace], pods: &[Pod]) -> Self {
        let namespaces: BTreeMap<String, Labels> =
            namespaces.iter().filter_map(namespace_labels).collect();
        let listed: BTreeSet<String> = pods.iter().filter_map(pod_key).collect();
        let (pods, conflicts) =
            claim_addresses(pods.iter().filter_map(PodInfo::from_pod).collect());
        let with_address: BTreeSet<String> = pods.iter().map(PodInfo::key).collect();
        let mut set = PolicySet {
            conflicts,
            without_address: listed.difference(&with_address).cloned().collect(),
            ..PolicySet::default()
        };
        let mut checked = Vec::new();
        for policy in policies {
            match check_policy(policy) {
                Ok(c) => {
                    set.accepted.push(c.key.clone());
                    checked.push(c);
                }
                Err(rejected) => {
                    checked.extend(isolation_of_rejected(policy));
                    set.rejected.push(rejected);
                }
            }
        }
        // Deterministic whatever order the policies come in (rules keep policy order).
        checked.sort_by(|a, b| a.key.cmp(&b.key));
        set.rejected.sort_by(|a, b| a.policy.cmp(&b.policy));
        set.accepted.sort();
        // Rejected policies isolate too (fail closed), so they count here.
        set.isolates_ingress = checked.iter().any(|c| c.ingress.is_some());
        let mut resolved: Vec<Option<Resolved>> = vec![None; checked.len()];
        for pod in &pods {
            let mut rules = PodRules {
                key: pod.key(),
                ips: pod.ips.clone(),
                named_ports: pod.named_ports.clone(),
                ..PodRules::default()
            };
            for (policy, slot) in checked.iter().zip(resolved.iter_mut()) {
                if policy.namespace != pod.namespace || !policy.selector.matches(&pod.labels) {
                    continue;
                }
                let shared = slot.get_or_insert_with(|| {
                    resolve_policy(policy, &pods, &namespaces, &mut set.rules)
                });
                if policy.ingress.is_some() {
                    rules
                        .ingress
                        .get_or_insert_with(Vec::new)
                        .extend(shared.ingress.clone());
                }
                if policy.egress.is_some() {
                    rules
                        .egress
                        .get_or_insert_with(Vec::new)
                        .extend(shared.egress.clone());
                }
            }
            let index = set.pods.len();
            for ip in &pod.ips {
                set.by_ip.insert(*ip, index);
            }
            set.pods.push(rules);
        }
        set
    }

    /// The verdict on one packet. Allocation-free.
    pub fn check(&self, flow: &Flow) -> Verdict<'_> {
        let src = self.by_ip.get(&flow.src).map(|i| &self.pods[*i]);
        let dst = self.by_ip.get(&flow.dst).map(|i| &self.pods[*i]);
        if flow.src == flow.dst || matches!((src, dst), (Some(a), Some(b)) if std::ptr::eq(a, b)) {
            return Verdict::SamePod;
        }
        let egress = match src.map(|s| (s, &s.egress)) {
            Some((pod, Some(rules))) => {
                match allowed_by(
                    &self.rules,
                    rules,
                    flow,
                    flow.dst,
                    dst.map(|d| &d.named_ports),
                ) {
                    Some(allowance) => allowance,
                    None => {
                        return Verdict::Denied {
                            direction: Direction::Egress,
                            pod: &pod.key,
                        };
                    }
                }
            }
            Some(_) => Allowance::NotIsolated,
            None => Allowance::UnknownPod,
        };
        let ingress = match dst.map(|d| (d, &d.ingress)) {
            Some((pod, Some(rules))) => {
                match allowed_by(&self.rules, rules, flow, flow.src, Some(&pod.named_ports)) {
                    Some(allowance) => allowance,
                    None => {
                        return Verdict::Denied {
                            direction: Direction::Ingress,
                            pod: &pod.key,
                        };
                    }
                }
            }
            Some(_) => Allowance::NotIsolated,
            None => Allowance::UnknownPod,
        };
        Verdict::Allowed { egress, ingress }
    }

    /// The first address of Pod `namespace/name`.
    pub fn pod_ip(&self, key: &str) -> Option<IpAddr> {
        self.pods
            .iter()
            .find(|p| p.key == key)?
            .ips
            .first()
            .copied()
    }

    /// Whether Pod `namespace/name` is listed but has no address policy judges it by.
    pub fn lists_without_address(&self, key: &str) -> bool {
        self.without_address.contains(key)
    }

    /// Whether `ip` is a known Pod.
    #[cfg(test)]
    pub fn knows(&self, ip: IpAddr) -> bool {
        self.by_ip.contains_key(&ip)
    }

    /// Whether some policy in force isolates the Pods it selects for ingress, whichever Pods
    /// those are now: only then can an address that is no known Pod yet be an isolated one.
    pub fn isolates_ingress(&self) -> bool {
        self.isolates_ingress
    }
}

fn resolve_peers(
    peers: Option<&[CheckedPeer]>,
    policy_namespace: &str,
    pods: &[PodInfo],
    namespaces: &BTreeMap<String, Labels>,
) -> Peers {
    let Some(peers) = peers else {
        return Peers::Any;
    };
    let mut ips = HashSet::new();
    let mut blocks = Vec::new();
    for peer in peers {
        match peer {
            CheckedPeer::Block(block) => blocks.push(block.clone()),
            CheckedPeer::Pods {
                pods: pod_selector,
                namespaces: ns_selector,
            } => {
                for pod in pods {
                    let ns_ok = match ns_selector {
                        None => pod.namespace == policy_namespace,
                        Some(selector) => namespace_selected(selector, namespaces, &pod.namespace),
                    };
                    let pod_ok = pod_selector.as_ref().is_none_or(|s| s.matches(&pod.labels));
                    if ns_ok && pod_ok {
                        ips.extend(pod.ips.iter().copied());
                    }
                }
            }
        }
    }
    Peers::Some {
        pods: ips,
        blocks: IpRanges::from_blocks(&blocks),
    }
}

/// The first of the rules `selected` (indexes into `rules`) allowing the flow with `peer` on
/// the other end.
fn allowed_by<'a>(
    rules: &'a [Rule],
    selected: &[usize],
    flow: &Flow,
    peer: IpAddr,
    dst_ports: Option<&NamedPorts>,
) -> Option<Allowance<'a>> {
    selected
        .iter()
        .filter_map(|index| rules.get(*index))
        .find(|rule| peer_matches(&rule.peers, peer) && port_matches(&rule.ports, flow, dst_ports))
        .map(|rule| Allowance::Rule {
            policy: &rule.policy,
            rule: rule.index,
        })
}

fn peer_matches(peers: &Peers, ip: IpAddr) -> bool {
    match peers {
        Peers::Any => true,
        Peers::Some { pods, blocks } => pods.contains(&ip) || blocks.contains(ip),
    }
}

fn port_matches(ports: &[PortMatch], flow: &Flow, dst_ports: Option<&NamedPorts>) -> bool {
    ports.is_empty()
        || ports.iter().any(|port| match port {
            PortMatch::All(protocol) => *protocol == flow.protocol,
            PortMatch::Range(protocol, start, end) => {
                *protocol == flow.protocol && (*start..=*end).contains(&flow.dst_port)
            }
            PortMatch::Named(protocol, name) => {
                *protocol == flow.protocol
                    && dst_ports
                        .and_then(|named| named.get(name.as_str()))
                        .is_some_and(|ports| ports.contains(&(flow.dst_port, flow.protocol)))
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
        serde_json::from_value(value).unwrap()
    }

    /// One policy selecting every Pod of a namespace, allowing from every Pod of it: its rule
    /// is resolved once and shared, not once per selected Pod (which would cost Pods squared).
    #[test]
    fn a_policy_is_resolved_once_whatever_it_selects() {
        let pods: Vec<Pod> = (0..200)
            .map(|i| {
                from_json(serde_json::json!({
                    "metadata": {"namespace": "x", "name": format!("p{i}"), "labels": {"app": "a"}},
                    "status": {"phase": "Running", "podIP": format!("10.244.{}.{}", i / 100, i % 100 + 2)}
                }))
            })
            .collect();
        let policy: NetworkPolicy = from_json(serde_json::json!({
            "metadata": {"namespace": "x", "name": "same-namespace"},
            "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}
        }));
        let namespace: Namespace = from_json(serde_json::json!({"metadata": {"name": "x"}}));
        let set = PolicySet::compile(&[policy], &[namespace], &pods);
        assert_eq!(set.pods.len(), 200);
        assert_eq!(set.rules.len(), 1);
        assert!(
            set.pods
                .iter()
                .all(|p| p.ingress.as_deref() == Some(&[0][..]))
        );
        let Peers::Some { pods: peers, .. } = &set.rules[0].peers else {
            panic!("the rule should list its peers");
        };
        assert_eq!(peers.len(), 200);
    }

    /// Only a policy with Ingress among its types makes an unknown address possibly isolated.
    #[test]
    fn a_set_isolates_for_ingress_when_some_policy_has_that_type() {
        let policy = |name: &str, types: serde_json::Value| -> NetworkPolicy {
            from_json(serde_json::json!({
                "metadata": {"namespace": "x", "name": name},
                "spec": {"podSelector": {"matchLabels": {"app": "none"}}, "policyTypes": types}
            }))
        };
        let egress = policy("egress", serde_json::json!(["Egress"]));
        let ingress = policy("ingress", serde_json::json!(["Ingress"]));
        assert!(!PolicySet::compile(&[], &[], &[]).isolates_ingress());
        assert!(!PolicySet::compile(std::slice::from_ref(&egress), &[], &[]).isolates_ingress());
        // Even selecting no Pod known now: it may select one not known yet.
        assert!(PolicySet::compile(&[egress, ingress], &[], &[]).isolates_ingress());
    }
}

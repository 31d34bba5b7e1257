use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Container, ContainerPort, Namespace, Pod, PodSpec, PodStatus};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta, Time,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;

mod pods;
mod property;
mod upstream_parity;

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn namespace(name: &str, extra: BTreeMap<String, String>) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(extra),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

/// How a test Pod stands: its phase, whether it is on the host network, when it was created
/// (seconds) and whether it is being deleted.
#[derive(Debug, Clone, Default)]
struct PodState {
    phase: Option<&'static str>,
    host_network: bool,
    created: Option<i64>,
    terminating: bool,
}

fn time(seconds: i64) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap())
}

/// Pod `name` of namespace index `ns`, at its usual address, with no phase.
fn pod(ns: usize, name: usize, pod_labels: BTreeMap<String, String>) -> Pod {
    let state = PodState::default();
    pod_at(
        NAMESPACES[ns],
        PODS[name],
        ip_of(ns, name),
        pod_labels,
        &state,
        80,
    )
}

/// A Pod whose named port `serve-80-tcp` is container port `serve_80`.
fn pod_at(
    ns: &str,
    name: &str,
    ip: IpAddr,
    pod_labels: BTreeMap<String, String>,
    state: &PodState,
    serve_80: i32,
) -> Pod {
    let ports = vec![
        ContainerPort {
            name: Some("serve-80-tcp".into()),
            container_port: serve_80,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        },
        ContainerPort {
            name: Some("serve-81-udp".into()),
            container_port: 81,
            protocol: Some("UDP".into()),
            ..ContainerPort::default()
        },
    ];
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: Some(pod_labels),
            creation_timestamp: state.created.map(time),
            deletion_timestamp: state.terminating.then(|| time(100)),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "c".into(),
                ports: Some(ports),
                ..Container::default()
            }],
            host_network: state.host_network.then_some(true),
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            pod_ip: Some(ip.to_string()),
            phase: state.phase.map(String::from),
            ..PodStatus::default()
        }),
    }
}

fn ip_of(ns: usize, name: usize) -> IpAddr {
    IpAddr::from([10, 244, ns as u8 + 1, name as u8 + 2])
}

fn policy(ns: &str, name: &str, spec: NetworkPolicySpec) -> NetworkPolicy {
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
    }
}

fn world() -> (Vec<Namespace>, Vec<Pod>) {
    let namespaces = NAMESPACES
        .iter()
        .map(|n| namespace(n, labels(&[("ns", n)])))
        .collect();
    let mut pods = Vec::new();
    for ns in 0..3 {
        for (p, name) in PODS.iter().enumerate() {
            pods.push(pod(ns, p, labels(&[("pod", name)])));
        }
    }
    (namespaces, pods)
}

fn flow(from: (usize, usize), to: (usize, usize), protocol: Protocol, port: u16) -> Flow {
    Flow {
        src: ip_of(from.0, from.1),
        dst: ip_of(to.0, to.1),
        protocol,
        dst_port: port,
    }
}

/// The verdict on a TCP flow to port 80 from Pod `from` to Pod `to` (as in `flow`).
fn tcp_80<'a>(set: &'a PolicySet, from: (usize, usize), to: (usize, usize)) -> Verdict<'a> {
    set.check(&flow(from, to, Protocol::Tcp, 80))
}

/// Denied because Pod x/a is isolated in `direction`.
fn denied_at_x_a(direction: Direction) -> Verdict<'static> {
    Verdict::Denied {
        direction,
        pod: "x/a",
    }
}

fn match_labels(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels(pairs)),
        ..LabelSelector::default()
    }
}

#[test]
fn default_deny_ingress_isolates_only_ingress() {
    let (namespaces, pods) = world();
    let policies = vec![policy(
        "x",
        "deny",
        NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            ..NetworkPolicySpec::default()
        },
    )];
    let set = PolicySet::compile(&policies, &namespaces, &pods);
    assert_eq!(
        tcp_80(&set, (1, 0), (0, 0)),
        denied_at_x_a(Direction::Ingress)
    );
    assert!(tcp_80(&set, (0, 0), (1, 0)).is_allowed());
    assert_eq!(tcp_80(&set, (0, 0), (0, 0)), Verdict::SamePod);
}

#[test]
fn empty_policy_types_default_like_absent_ones() {
    let (namespaces, pods) = world();
    let spec = |egress: Option<Vec<NetworkPolicyEgressRule>>| NetworkPolicySpec {
        pod_selector: Some(match_labels(&[("pod", "a")])),
        policy_types: Some(Vec::new()),
        egress,
        ..NetworkPolicySpec::default()
    };
    // No egress rules: Ingress only.
    let set = PolicySet::compile(&[policy("x", "deny", spec(None))], &namespaces, &pods);
    assert_eq!(
        tcp_80(&set, (1, 0), (0, 0)),
        denied_at_x_a(Direction::Ingress)
    );
    assert!(tcp_80(&set, (0, 0), (1, 0)).is_allowed());
    // Egress rules: Ingress and Egress.
    let to_y = NetworkPolicyEgressRule {
        to: Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(match_labels(&[("ns", "y")])),
            ..NetworkPolicyPeer::default()
        }]),
        ports: None,
    };
    let set = PolicySet::compile(
        &[policy("x", "both", spec(Some(vec![to_y])))],
        &namespaces,
        &pods,
    );
    assert_eq!(
        tcp_80(&set, (0, 0), (2, 0)),
        denied_at_x_a(Direction::Egress)
    );
    assert!(tcp_80(&set, (0, 0), (1, 0)).is_allowed());
    assert!(!tcp_80(&set, (1, 0), (0, 0)).is_allowed());
}

#[test]
fn allow_names_the_policy_and_rule() {
    let (namespaces, pods) = world();
    let policies = vec![policy(
        "x",
        "web",
        NetworkPolicySpec {
            pod_selector: Some(match_labels(&[("pod", "a")])),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![NetworkPolicyPeer {
                    namespace_selector: Some(match_labels(&[("ns", "y")])),
                    ..NetworkPolicyPeer::default()
                }]),
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::String("serve-80-tcp".into())),
                    ..NetworkPolicyPort::default()
                }]),
            }]),
            ..NetworkPolicySpec::default()
        },
    )];
    let set = PolicySet::compile(&policies, &namespaces, &pods);
    assert_eq!(
        tcp_80(&set, (1, 2), (0, 0)),
        Verdict::Allowed {
            egress: Allowance::NotIsolated,
            ingress: Allowance::Rule {
                policy: "x/web",
                rule: 0
            }
        }
    );
    assert!(
        !set.check(&flow((1, 2), (0, 0), Protocol::Tcp, 81))
            .is_allowed()
    );
    assert!(!tcp_80(&set, (2, 2), (0, 0)).is_allowed());
}

#[test]
fn invalid_policies_are_rejected_whole_with_a_reason() {
    let (namespaces, pods) = world();
    let bad_port = NetworkPolicyPort {
        port: Some(IntOrString::Int(90)),
        end_port: Some(80),
        ..NetworkPolicyPort::default()
    };
    let bad_block = NetworkPolicyPeer {
        ip_block: Some(IPBlock {
            cidr: "10.244.0.0/16".into(),
            except: Some(vec!["10.245.0.0/24".into()]),
        }),
        ..NetworkPolicyPeer::default()
    };
    let bad_selector = LabelSelector {
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: "k".into(),
            operator: "Near".into(),
            values: None,
        }]),
        ..LabelSelector::default()
    };
    let cases = vec![
        NetworkPolicySpec {
            ingress: Some(vec![NetworkPolicyIngressRule {
                ports: Some(vec![bad_port]),
                from: None,
            }]),
            ..NetworkPolicySpec::default()
        },
        NetworkPolicySpec {
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![bad_block]),
                ports: None,
            }]),
            ..NetworkPolicySpec::default()
        },
        NetworkPolicySpec {
            pod_selector: Some(bad_selector),
            ..NetworkPolicySpec::default()
        },
        NetworkPolicySpec {
            policy_types: Some(vec!["Sideways".into()]),
            ..NetworkPolicySpec::default()
        },
        NetworkPolicySpec {
            ingress: Some(vec![NetworkPolicyIngressRule {
                ports: Some(vec![NetworkPolicyPort {
                    protocol: Some("ICMP".into()),
                    ..NetworkPolicyPort::default()
                }]),
                from: None,
            }]),
            ..NetworkPolicySpec::default()
        },
    ];
    for (i, spec) in cases.into_iter().enumerate() {
        let selector_invalid = spec.pod_selector.is_some();
        let set = PolicySet::compile(&[policy("x", "bad", spec)], &namespaces, &pods);
        assert_eq!(set.rejected.len(), 1, "case {i} was accepted");
        assert!(!set.rejected[0].reason.is_empty());
        assert!(set.accepted.is_empty(), "case {i}");
        // Rejected whole: none of its rules allow anything. Its podSelector ({}) still
        // isolates x/a (fail closed), except where the selector itself is invalid (the only
        // case that sets one).
        let verdict = tcp_80(&set, (1, 0), (0, 0));
        if selector_invalid {
            assert!(verdict.is_allowed(), "case {i}: {verdict}");
        } else {
            assert_eq!(verdict, denied_at_x_a(Direction::Ingress), "case {i}");
        }
    }
}

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Container, ContainerPort, Namespace, Pod, PodSpec, PodStatus};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use proptest::prelude::*;

use super::reference;
use super::*;

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

fn pod(ns: usize, name: usize, pod_labels: BTreeMap<String, String>) -> Pod {
    let ports = vec![
        ContainerPort {
            name: Some("serve-80-tcp".into()),
            container_port: 80,
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
            name: Some(PODS[name].into()),
            namespace: Some(NAMESPACES[ns].into()),
            labels: Some(pod_labels),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "c".into(),
                ports: Some(ports),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            pod_ip: Some(ip_of(ns, name).to_string()),
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
    let verdict = set.check(&flow((1, 0), (0, 0), Protocol::Tcp, 80));
    assert_eq!(
        verdict,
        Verdict::Denied {
            direction: Direction::Ingress,
            pod: "x/a"
        }
    );
    assert!(
        set.check(&flow((0, 0), (1, 0), Protocol::Tcp, 80))
            .is_allowed()
    );
    assert_eq!(
        set.check(&flow((0, 0), (0, 0), Protocol::Tcp, 80)),
        Verdict::SamePod
    );
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
        set.check(&flow((1, 0), (0, 0), Protocol::Tcp, 80)),
        Verdict::Denied {
            direction: Direction::Ingress,
            pod: "x/a"
        }
    );
    assert!(
        set.check(&flow((0, 0), (1, 0), Protocol::Tcp, 80))
            .is_allowed()
    );
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
        set.check(&flow((0, 0), (2, 0), Protocol::Tcp, 80)),
        Verdict::Denied {
            direction: Direction::Egress,
            pod: "x/a"
        }
    );
    assert!(
        set.check(&flow((0, 0), (1, 0), Protocol::Tcp, 80))
            .is_allowed()
    );
    assert!(
        !set.check(&flow((1, 0), (0, 0), Protocol::Tcp, 80))
            .is_allowed()
    );
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
        set.check(&flow((1, 2), (0, 0), Protocol::Tcp, 80)),
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
    assert!(
        !set.check(&flow((2, 2), (0, 0), Protocol::Tcp, 80))
            .is_allowed()
    );
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
        let set = PolicySet::compile(&[policy("x", "bad", spec)], &namespaces, &pods);
        assert_eq!(set.rejected.len(), 1, "case {i} was accepted");
        assert!(!set.rejected[0].reason.is_empty());
        // Rejected whole: it isolates nothing.
        assert!(
            set.check(&flow((1, 0), (0, 0), Protocol::Tcp, 80))
                .is_allowed(),
            "case {i}"
        );
    }
}

// ---- the compiled engine agrees with the reference model on random worlds ----

fn arb_labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(
        prop::sample::select(vec!["app", "tier", "team"]).prop_map(String::from),
        prop::sample::select(vec!["1", "2"]).prop_map(String::from),
        0..3,
    )
}

fn arb_selector() -> impl Strategy<Value = LabelSelector> {
    let expression = (
        prop::sample::select(vec!["app", "tier", "team", "ns"]),
        prop::sample::select(vec!["In", "NotIn", "Exists", "DoesNotExist"]),
        prop::collection::vec(prop::sample::select(vec!["1", "2", "x", "y"]), 1..3),
    )
        .prop_map(|(key, op, values)| LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: if op == "In" || op == "NotIn" {
                Some(values.into_iter().map(String::from).collect())
            } else {
                None
            },
        });
    (arb_labels(), prop::collection::vec(expression, 0..2)).prop_map(|(labels, expressions)| {
        LabelSelector {
            match_labels: Some(labels),
            match_expressions: Some(expressions),
        }
    })
}

fn arb_peer() -> impl Strategy<Value = NetworkPolicyPeer> {
    prop_oneof![
        (
            proptest::option::of(arb_selector()),
            proptest::option::of(arb_selector())
        )
            .prop_filter("one selector", |(p, n)| p.is_some() || n.is_some())
            .prop_map(|(pod_selector, namespace_selector)| NetworkPolicyPeer {
                pod_selector,
                namespace_selector,
                ip_block: None
            }),
        (1u8..=3, any::<bool>()).prop_map(|(third, except)| NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: format!("10.244.{third}.0/24"),
                except: except.then(|| vec![format!("10.244.{third}.2/32")]),
            }),
            ..NetworkPolicyPeer::default()
        }),
    ]
}

fn arb_port() -> impl Strategy<Value = NetworkPolicyPort> {
    let protocol = proptest::option::of(
        prop::sample::select(vec!["TCP", "UDP", "SCTP"]).prop_map(String::from),
    );
    let port = prop_oneof![
        Just((None, None)),
        (80i32..=82).prop_map(|p| (Some(IntOrString::Int(p)), None)),
        (80i32..=81, 0i32..=2).prop_map(|(p, extra)| (Some(IntOrString::Int(p)), Some(p + extra))),
        prop::sample::select(vec!["serve-80-tcp", "serve-81-udp", "nope"])
            .prop_map(|n| (Some(IntOrString::String(n.into())), None)),
    ];
    (protocol, port).prop_map(|(protocol, (port, end_port))| NetworkPolicyPort {
        protocol,
        port,
        end_port,
    })
}

fn arb_rule() -> impl Strategy<
    Value = (
        Option<Vec<NetworkPolicyPeer>>,
        Option<Vec<NetworkPolicyPort>>,
    ),
> {
    (
        proptest::option::of(prop::collection::vec(arb_peer(), 0..3)),
        proptest::option::of(prop::collection::vec(arb_port(), 0..3)),
    )
}

fn arb_policy(index: usize) -> impl Strategy<Value = NetworkPolicy> {
    (
        prop::sample::select(NAMESPACES.to_vec()),
        arb_selector(),
        prop::sample::select(vec![
            None,
            Some(vec![]),
            Some(vec!["Ingress"]),
            Some(vec!["Egress"]),
            Some(vec!["Ingress", "Egress"]),
        ]),
        proptest::option::of(prop::collection::vec(arb_rule(), 0..3)),
        proptest::option::of(prop::collection::vec(arb_rule(), 0..3)),
    )
        .prop_map(move |(ns, selector, types, ingress, egress)| {
            policy(
                ns,
                &format!("p{index}"),
                NetworkPolicySpec {
                    pod_selector: Some(selector),
                    policy_types: types.map(|t| t.into_iter().map(String::from).collect()),
                    ingress: ingress.map(|rules| {
                        rules
                            .into_iter()
                            .map(|(from, ports)| NetworkPolicyIngressRule { from, ports })
                            .collect()
                    }),
                    egress: egress.map(|rules| {
                        rules
                            .into_iter()
                            .map(|(to, ports)| NetworkPolicyEgressRule { to, ports })
                            .collect()
                    }),
                },
            )
        })
}

fn arb_world() -> impl Strategy<Value = (Vec<NetworkPolicy>, Vec<Namespace>, Vec<Pod>)> {
    let namespaces = prop::collection::vec(arb_labels(), 3).prop_map(|all| {
        all.into_iter()
            .zip(NAMESPACES)
            .map(|(l, n)| namespace(n, l))
            .collect::<Vec<_>>()
    });
    let pods = prop::collection::vec(arb_labels(), 9).prop_map(|all| {
        all.into_iter()
            .enumerate()
            .map(|(i, l)| pod(i / 3, i % 3, l))
            .collect::<Vec<_>>()
    });
    let policies = (0usize..5).prop_flat_map(|n| (0..n).map(arb_policy).collect::<Vec<_>>());
    (policies, namespaces, pods)
}

fn arb_flow() -> impl Strategy<Value = Flow> {
    (
        0usize..3,
        0usize..4,
        0usize..3,
        0usize..3,
        prop::sample::select(vec![Protocol::Tcp, Protocol::Udp, Protocol::Sctp]),
        80u16..=82,
    )
        .prop_map(|(sn, sp, dn, dp, protocol, port)| Flow {
            // Pod index 3 is an address that is no Pod (traffic from outside the cluster).
            src: if sp == 3 {
                IpAddr::from([10, 244, sn as u8 + 1, 99])
            } else {
                ip_of(sn, sp)
            },
            dst: ip_of(dn, dp),
            protocol,
            dst_port: port,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn compiled_engine_agrees_with_the_reference(
        (policies, namespaces, pods) in arb_world(),
        flows in prop::collection::vec(arb_flow(), 1..20),
    ) {
        let set = PolicySet::compile(&policies, &namespaces, &pods);
        prop_assert!(set.rejected.is_empty(), "generator made an invalid policy: {:?}", set.rejected);
        for flow in flows {
            let verdict = set.check(&flow);
            let expected = reference::allowed(&policies, &namespaces, &pods, &flow);
            prop_assert_eq!(verdict.is_allowed(), expected, "{:?}: engine says {}", flow, verdict);
        }
    }
}

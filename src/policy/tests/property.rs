//! The compiled engine agrees with the reference model on random worlds: random labels,
//! selectors (namespace selectors on `kubernetes.io/metadata.name` too), policies (some
//! without a spec) and flows (TCP, UDP, SCTP and ICMP, IPv4 and IPv6, to and from addresses
//! that are no Pod), and Pods in every phase, some on the host network, some sharing an
//! address with another Pod, single- or dual-stack, some repeating a port name across
//! containers, some in a namespace whose Namespace object is missing.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod, PodIP};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use proptest::prelude::*;

use super::super::reference;
use super::*;

fn arb_labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(
        prop::sample::select(vec!["app", "tier", "team"]).prop_map(String::from),
        prop::sample::select(vec!["1", "2"]).prop_map(String::from),
        0..3,
    )
}

const NAME_LABEL: &str = "kubernetes.io/metadata.name";

fn arb_selector() -> impl Strategy<Value = LabelSelector> {
    let expression = (
        prop::sample::select(vec!["app", "tier", "team", "ns", NAME_LABEL]),
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

/// A namespace selector: any selector, or one on the namespace's name label alone.
fn arb_namespace_selector() -> impl Strategy<Value = LabelSelector> {
    let by_name = (
        prop::sample::select(NAMESPACES.to_vec()),
        prop::sample::select(vec!["matchLabels", "In", "NotIn"]),
    )
        .prop_map(|(name, how)| {
            let labels = BTreeMap::from([(NAME_LABEL.to_string(), name.to_string())]);
            match how {
                "matchLabels" => LabelSelector {
                    match_labels: Some(labels),
                    match_expressions: None,
                },
                op => LabelSelector {
                    match_labels: None,
                    match_expressions: Some(vec![LabelSelectorRequirement {
                        key: NAME_LABEL.into(),
                        operator: op.into(),
                        values: Some(vec![name.into()]),
                    }]),
                },
            }
        });
    prop_oneof![1 => arb_selector(), 2 => by_name]
}

/// An ipBlock around namespace `third`'s Pods (IPv4, with leading zeros or not, or IPv6), less
/// its Pod b if `except`.
fn ip_block(third: u8, except: bool, form: u8) -> IPBlock {
    let (cidr, less) = match form {
        0 => (
            format!("10.244.{third}.0/24"),
            format!("10.244.{third}.3/32"),
        ),
        1 => (
            format!("010.244.00{third}.000/24"),
            format!("10.244.{third}.03/32"),
        ),
        _ => (
            format!("fd00:10:244:{third}::/64"),
            format!("fd00:10:244:{third}::3/128"),
        ),
    };
    IPBlock {
        cidr,
        except: except.then(|| vec![less]),
    }
}

fn arb_peer() -> impl Strategy<Value = NetworkPolicyPeer> {
    prop_oneof![
        3 => (
            proptest::option::of(arb_selector()),
            proptest::option::of(arb_namespace_selector())
        )
            .prop_filter("one selector", |(p, n)| p.is_some() || n.is_some())
            .prop_map(|(pod_selector, namespace_selector)| NetworkPolicyPeer {
                pod_selector,
                namespace_selector,
                ip_block: None
            }),
        1 => (1u8..=3, any::<bool>(), 0u8..3).prop_map(|(third, except, form)| {
            NetworkPolicyPeer {
                ip_block: Some(ip_block(third, except, form)),
                ..NetworkPolicyPeer::default()
            }
        }),
    ]
}

fn arb_port() -> impl Strategy<Value = NetworkPolicyPort> {
    let protocol = proptest::option::of(
        prop::sample::select(vec!["TCP", "UDP", "SCTP"]).prop_map(String::from),
    );
    let port = prop_oneof![
        1 => Just((None, None)),
        1 => (80i32..=82).prop_map(|p| (Some(IntOrString::Int(p)), None)),
        1 => (80i32..=81, 0i32..=2).prop_map(|(p, extra)| (Some(IntOrString::Int(p)), Some(p + extra))),
        2 => prop::sample::select(vec!["serve-80-tcp", "serve-80-tcp", "serve-81-udp", "nope"])
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
        // Often every Pod of the namespace, so that rules are reached.
        prop_oneof![1 => Just(LabelSelector::default()), 2 => arb_selector()],
        prop::sample::select(vec![
            None,
            Some(vec![]),
            Some(vec!["Ingress"]),
            Some(vec!["Egress"]),
            Some(vec!["Ingress", "Egress"]),
        ]),
        proptest::option::of(prop::collection::vec(arb_rule(), 0..3)),
        proptest::option::of(prop::collection::vec(arb_rule(), 0..3)),
        prop::bool::weighted(0.1),
    )
        .prop_map(move |(ns, selector, types, ingress, egress, spec_less)| {
            let mut policy = policy(
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
            );
            if spec_less {
                policy.spec = None;
            }
            policy
        })
}

/// Pod `at`'s IPv6 address.
fn ipv6_of(ns: usize, name: usize) -> IpAddr {
    format!("fd00:10:244:{}::{}", ns + 1, name + 2)
        .parse()
        .unwrap()
}

/// Which addresses a Pod has: its IPv4 one, both (dual-stack), or its IPv6 one.
#[derive(Debug, Clone, Copy)]
enum Stack {
    V4,
    Dual,
    V6,
}

fn arb_stack() -> impl Strategy<Value = Stack> {
    prop_oneof![2 => Just(Stack::V4), 2 => Just(Stack::Dual), 1 => Just(Stack::V6)]
}

/// Gives `pod` (made at `ip_of(ns, name)`) the addresses of `stack`, and, if `repeat`, a
/// second container repeating the port name serve-80-tcp on TCP 81.
fn shape(mut pod: Pod, at: (usize, usize), stack: Stack, repeat: bool) -> Pod {
    let (v4, v6) = (ip_of(at.0, at.1), ipv6_of(at.0, at.1));
    let ips = match stack {
        Stack::V4 => vec![],
        Stack::Dual => vec![v4, v6],
        Stack::V6 => vec![v6],
    };
    if let Some(status) = pod.status.as_mut() {
        if matches!(stack, Stack::V6) {
            status.pod_ip = Some(v6.to_string());
        }
        status.pod_ips =
            (!ips.is_empty()).then(|| ips.iter().map(|ip| PodIP { ip: ip.to_string() }).collect());
    }
    if repeat && let Some(spec) = pod.spec.as_mut() {
        spec.containers.push(Container {
            name: "again".into(),
            ports: Some(vec![ContainerPort {
                name: Some("serve-80-tcp".into()),
                container_port: 81,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            }]),
            ..Container::default()
        });
    }
    pod
}

/// The Namespace objects of x, y and z with random labels, each there with probability
/// `known` (a Pod's namespace may have no Namespace object).
fn arb_namespaces(known: f64) -> impl Strategy<Value = Vec<Namespace>> {
    prop::collection::vec((arb_labels(), prop::bool::weighted(known)), 3).prop_map(|all| {
        all.into_iter()
            .zip(NAMESPACES)
            .filter(|((_, known), _)| *known)
            .map(|((l, _), n)| namespace(n, l))
            .collect::<Vec<_>>()
    })
}

fn arb_world() -> impl Strategy<Value = (Vec<NetworkPolicy>, Vec<Namespace>, Vec<Pod>)> {
    let namespaces = arb_namespaces(0.7);
    let pod = (
        arb_labels(),
        arb_state(),
        arb_stack(),
        prop::bool::weighted(0.4),
    );
    let pods = prop::collection::vec(pod, 9).prop_map(|all| {
        all.into_iter()
            .enumerate()
            .map(|(i, (l, state, stack, repeat))| {
                let (ns, name) = (i / 3, i % 3);
                let pod = pod_at(NAMESPACES[ns], PODS[name], ip_of(ns, name), l, &state, 80);
                shape(pod, (ns, name), stack, repeat)
            })
            .collect::<Vec<_>>()
    });
    // Pods claiming another Pod's address (an address reused, a stale Pod), whose named port
    // serve-80-tcp is 82: who holds the address decides labels and named ports.
    let claimant = (0usize..3, 0usize..9, arb_labels(), arb_state(), arb_stack());
    let claimants = prop::collection::vec(claimant, 0..4).prop_map(|all| {
        all.into_iter()
            .enumerate()
            .map(|(i, (ns, at, l, state, stack))| {
                let name = format!("d{i}");
                let at = (at / 3, at % 3);
                let pod = pod_at(NAMESPACES[ns], &name, ip_of(at.0, at.1), l, &state, 82);
                shape(pod, at, stack, false)
            })
            .collect::<Vec<_>>()
    });
    let pods = (pods, claimants).prop_map(|(pods, claimants)| [pods, claimants].concat());
    let policies = (1usize..6).prop_flat_map(|n| (0..n).map(arb_policy).collect::<Vec<_>>());
    (policies, namespaces, pods)
}

/// Mostly running Pods; some pending, finished, on the host network, being deleted; creation
/// times that often tie.
fn arb_state() -> impl Strategy<Value = PodState> {
    let phase = prop_oneof![
        4 => Just(None),
        4 => Just(Some("Running")),
        1 => Just(Some("Pending")),
        1 => Just(Some("Succeeded")),
        1 => Just(Some("Failed")),
    ];
    (
        phase,
        prop::bool::weighted(0.1),
        proptest::option::of(0i64..3),
        prop::bool::weighted(0.15),
    )
        .prop_map(|(phase, host_network, created, terminating)| PodState {
            phase,
            host_network,
            created,
            terminating,
        })
}

/// Address `pod` of namespace `ns`: Pod index 3 is an address that is no Pod (outside the
/// cluster, or a Pod not known yet).
fn address(ns: usize, pod: usize, v6: bool) -> IpAddr {
    match (pod, v6) {
        (3, false) => IpAddr::from([10, 244, ns as u8 + 1, 99]),
        (3, true) => format!("fd00:10:244:{}::99", ns + 1).parse().unwrap(),
        (_, false) => ip_of(ns, pod),
        (_, true) => ipv6_of(ns, pod),
    }
}

fn arb_flow() -> impl Strategy<Value = Flow> {
    // Mostly one family; now and then IPv4 to IPv6 (a Pod to its own other address).
    let families = prop_oneof![
        4 => Just((false, false)),
        4 => Just((true, true)),
        1 => Just((false, true)),
    ];
    (
        (0usize..3, 0usize..4),
        (0usize..3, 0usize..4),
        families,
        prop::sample::select(vec![
            Protocol::Tcp,
            Protocol::Udp,
            Protocol::Sctp,
            Protocol::Other,
        ]),
        80u16..=82,
    )
        .prop_map(
            |((sn, sp), (dn, dp), (src_v6, dst_v6), protocol, port)| Flow {
                src: address(sn, sp, src_v6),
                dst: address(dn, dp, dst_v6),
                protocol,
                dst_port: if protocol == Protocol::Other { 0 } else { port },
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    #[test]
    fn compiled_engine_agrees_with_the_reference(
        (policies, namespaces, pods) in arb_world(),
        flows in prop::collection::vec(arb_flow(), 5..30),
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

/// A small world where the rules are always reached: live Pods (IPv4, some repeating a port
/// name), some namespaces without their object, policies selecting every Pod of their
/// namespace (some without a spec) with ingress rules whose peers are namespaceSelectors and
/// whose ports may be named.
fn arb_focused_world() -> impl Strategy<Value = (Vec<NetworkPolicy>, Vec<Namespace>, Vec<Pod>)> {
    let namespaces = arb_namespaces(0.6);
    let pods = prop::collection::vec((arb_labels(), any::<bool>()), 9).prop_map(|all| {
        all.into_iter()
            .enumerate()
            .map(|(i, (l, repeat))| {
                let at = (i / 3, i % 3);
                shape(pod(at.0, at.1, l), at, Stack::V4, repeat)
            })
            .collect::<Vec<_>>()
    });
    let peers = prop::collection::vec(arb_namespace_selector(), 1..3).prop_map(|selectors| {
        selectors
            .into_iter()
            .map(|s| NetworkPolicyPeer {
                namespace_selector: Some(s),
                ..NetworkPolicyPeer::default()
            })
            .collect::<Vec<_>>()
    });
    let ports = proptest::option::of(
        prop::sample::select(vec!["serve-80-tcp", "serve-81-udp"]).prop_map(|name| {
            vec![NetworkPolicyPort {
                port: Some(IntOrString::String(name.into())),
                ..NetworkPolicyPort::default()
            }]
        }),
    );
    let policy_of = (
        prop::sample::select(NAMESPACES.to_vec()),
        proptest::option::of(peers),
        ports,
        prop::bool::weighted(0.15),
    );
    let policies = prop::collection::vec(policy_of, 1..4).prop_map(|all| {
        all.into_iter()
            .enumerate()
            .map(|(i, (ns, from, ports, spec_less))| {
                let mut policy = policy(
                    ns,
                    &format!("n{i}"),
                    NetworkPolicySpec {
                        pod_selector: Some(LabelSelector::default()),
                        ingress: Some(vec![NetworkPolicyIngressRule { from, ports }]),
                        ..NetworkPolicySpec::default()
                    },
                );
                if spec_less {
                    policy.spec = None;
                }
                policy
            })
            .collect::<Vec<_>>()
    });
    (policies, namespaces, pods)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn focused_world_agrees_with_the_reference(
        (policies, namespaces, pods) in arb_focused_world(),
        flows in prop::collection::vec(((0usize..3, 0usize..3), (0usize..3, 0usize..3), 80u16..=81), 5..15),
    ) {
        let set = PolicySet::compile(&policies, &namespaces, &pods);
        prop_assert!(set.rejected.is_empty(), "generator made an invalid policy: {:?}", set.rejected);
        for (from, to, port) in flows {
            let flow = flow(from, to, Protocol::Tcp, port);
            let verdict = set.check(&flow);
            let expected = reference::allowed(&policies, &namespaces, &pods, &flow);
            prop_assert_eq!(verdict.is_allowed(), expected, "{:?}: engine says {}", flow, verdict);
        }
    }
}

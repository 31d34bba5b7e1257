//! The compiled engine agrees with the reference model on random worlds: random labels,
//! selectors, policies and flows, and Pods in every phase, some on the host network, some
//! sharing an address with another Pod.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod};
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
    let pods = prop::collection::vec((arb_labels(), arb_state()), 9).prop_map(|all| {
        all.into_iter()
            .enumerate()
            .map(|(i, (l, state))| {
                let (ns, name) = (i / 3, i % 3);
                pod_at(NAMESPACES[ns], PODS[name], ip_of(ns, name), l, &state, 80)
            })
            .collect::<Vec<_>>()
    });
    // Pods claiming another Pod's address (an address reused, a stale Pod), whose named port
    // serve-80-tcp is 82: who holds the address decides labels and named ports.
    let claimants = prop::collection::vec((0usize..3, 0usize..9, arb_labels(), arb_state()), 0..4)
        .prop_map(|all| {
            all.into_iter()
                .enumerate()
                .map(|(i, (ns, at, l, state))| {
                    let name = format!("d{i}");
                    pod_at(NAMESPACES[ns], &name, ip_of(at / 3, at % 3), l, &state, 82)
                })
                .collect::<Vec<_>>()
        });
    let pods = (pods, claimants).prop_map(|(pods, claimants)| [pods, claimants].concat());
    let policies = (0usize..5).prop_flat_map(|n| (0..n).map(arb_policy).collect::<Vec<_>>());
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

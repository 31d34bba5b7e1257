//! Where the engine follows what the API server guarantees or lets through: the name label of
//! a namespace without a Namespace object, repeated port names, spec-less policies, sloppy
//! CIDRs, and policies it must reject (which still isolate, failing closed). Each is checked
//! against the reference model too.

use k8s_openapi::api::networking::v1::NetworkPolicyPeer;

use super::super::reference;
use super::*;

const NAME_LABEL: &str = "kubernetes.io/metadata.name";

fn expression(key: &str, operator: &str, values: &[&str]) -> LabelSelector {
    LabelSelector {
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }]),
        ..LabelSelector::default()
    }
}

/// x/a admits the Pods of the namespaces `selector` selects, on every port.
fn a_admits_namespaces(selector: LabelSelector) -> NetworkPolicy {
    a_admits(vec![NetworkPolicyPeer {
        namespace_selector: Some(selector),
        ..NetworkPolicyPeer::default()
    }])
}

fn a_admits(from: Vec<NetworkPolicyPeer>) -> NetworkPolicy {
    policy(
        "x",
        "admit",
        NetworkPolicySpec {
            pod_selector: Some(match_labels(&[("pod", "a")])),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(from),
                ports: None,
            }]),
            ..NetworkPolicySpec::default()
        },
    )
}

/// The engine's verdict on `flow`, after checking that the reference model agrees.
fn allowed(
    policies: &[NetworkPolicy],
    namespaces: &[Namespace],
    pods: &[Pod],
    flow: &Flow,
) -> bool {
    let set = PolicySet::compile(policies, namespaces, pods);
    assert!(set.rejected.is_empty(), "{:?}", set.rejected);
    let engine = set.check(flow).is_allowed();
    let expected = reference::allowed(policies, namespaces, pods, flow);
    assert_eq!(engine, expected, "{flow:?}: engine and reference disagree");
    engine
}

#[test]
fn a_namespace_without_its_object_still_has_its_name_label_and_nothing_else() {
    let (mut namespaces, pods) = world();
    // Namespace y's object is not (yet) known.
    namespaces.retain(|n| n.metadata.name.as_deref() != Some("y"));
    let from_y = flow((1, 0), (0, 0), Protocol::Tcp, 80);
    let from_z = flow((2, 0), (0, 0), Protocol::Tcp, 80);
    let cases = [
        // On the name label: judged as for any namespace.
        (match_labels(&[(NAME_LABEL, "y")]), true, false),
        (expression(NAME_LABEL, "In", &["y", "z"]), true, true),
        (expression(NAME_LABEL, "NotIn", &["y"]), false, true),
        (expression(NAME_LABEL, "DoesNotExist", &[]), false, false),
        (expression(NAME_LABEL, "Exists", &[]), true, true),
        // Every namespace.
        (LabelSelector::default(), true, true),
        // On its other labels, unknown: y is never selected (fail closed).
        (expression("ns", "NotIn", &["x"]), false, true),
        (expression("ns", "DoesNotExist", &[]), false, false),
        (match_labels(&[("ns", "y")]), false, false),
    ];
    for (selector, y_allowed, z_allowed) in cases {
        let policies = [a_admits_namespaces(selector.clone())];
        assert_eq!(
            allowed(&policies, &namespaces, &pods, &from_y),
            y_allowed,
            "{selector:?} from y"
        );
        assert_eq!(
            allowed(&policies, &namespaces, &pods, &from_z),
            z_allowed,
            "{selector:?} from z"
        );
    }
}

/// Pod `a` of namespace x with two containers that both name a port `web`: TCP 80 and 8080.
fn pod_with_repeated_port_name() -> Pod {
    let mut pod = pod(0, 0, labels(&[("pod", "a")]));
    let container = |name: &str, port: i32| Container {
        name: name.into(),
        ports: Some(vec![ContainerPort {
            name: Some("web".into()),
            container_port: port,
            ..ContainerPort::default()
        }]),
        ..Container::default()
    };
    if let Some(spec) = pod.spec.as_mut() {
        spec.containers = vec![container("one", 80), container("two", 8080)];
    }
    pod
}

#[test]
fn a_port_name_repeated_across_containers_matches_each_of_its_ports() {
    let (namespaces, mut pods) = world();
    pods[0] = pod_with_repeated_port_name();
    let policies = [policy(
        "x",
        "web",
        NetworkPolicySpec {
            pod_selector: Some(match_labels(&[("pod", "a")])),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: None,
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::String("web".into())),
                    ..NetworkPolicyPort::default()
                }]),
            }]),
            ..NetworkPolicySpec::default()
        },
    )];
    for (port, expected) in [(80, true), (8080, true), (81, false)] {
        let tcp = flow((1, 0), (0, 0), Protocol::Tcp, port);
        assert_eq!(
            allowed(&policies, &namespaces, &pods, &tcp),
            expected,
            "{port}"
        );
    }
    let udp = flow((1, 0), (0, 0), Protocol::Udp, 8080);
    assert!(!allowed(&policies, &namespaces, &pods, &udp));
}

#[test]
fn a_policy_without_spec_denies_all_ingress_in_its_namespace() {
    let (namespaces, pods) = world();
    let mut spec_less = policy("x", "bare", NetworkPolicySpec::default());
    spec_less.spec = None;
    let policies = [spec_less];
    assert!(!allowed(
        &policies,
        &namespaces,
        &pods,
        &flow((1, 0), (0, 1), Protocol::Tcp, 80)
    ));
    assert!(!allowed(
        &policies,
        &namespaces,
        &pods,
        &flow((0, 2), (0, 1), Protocol::Tcp, 80)
    ));
    // Egress is not isolated, nor are other namespaces.
    assert!(allowed(
        &policies,
        &namespaces,
        &pods,
        &flow((0, 1), (1, 0), Protocol::Tcp, 80)
    ));
    assert!(allowed(
        &policies,
        &namespaces,
        &pods,
        &flow((2, 0), (1, 0), Protocol::Tcp, 80)
    ));
}

#[test]
fn ipv4_cidrs_with_leading_zeros_are_read_as_decimal() {
    let (namespaces, pods) = world();
    // 010.244.002.000/24 is 10.244.2.0/24 (namespace y), less 10.244.2.3 (y/b).
    let policies = [a_admits(vec![NetworkPolicyPeer {
        ip_block: Some(IPBlock {
            cidr: "010.244.002.000/024".into(),
            except: Some(vec!["10.244.2.03/32".into()]),
        }),
        ..NetworkPolicyPeer::default()
    }])];
    assert!(allowed(
        &policies,
        &namespaces,
        &pods,
        &flow((1, 0), (0, 0), Protocol::Tcp, 80)
    ));
    assert!(!allowed(
        &policies,
        &namespaces,
        &pods,
        &flow((1, 1), (0, 0), Protocol::Tcp, 80)
    ));
    assert!(!allowed(
        &policies,
        &namespaces,
        &pods,
        &flow((2, 0), (0, 0), Protocol::Tcp, 80)
    ));
}

/// x/a, selected by a policy whose rules are invalid, with `types` as its policyTypes.
fn rejected_for_a(types: Option<&[&str]>) -> NetworkPolicy {
    policy(
        "x",
        "bad",
        NetworkPolicySpec {
            pod_selector: Some(match_labels(&[("pod", "a")])),
            policy_types: types.map(|t| t.iter().map(|t| t.to_string()).collect()),
            // Would allow everything from everywhere, if it were valid.
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: None,
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(90)),
                    end_port: Some(80),
                    ..NetworkPolicyPort::default()
                }]),
            }]),
            ..NetworkPolicySpec::default()
        },
    )
}

#[test]
fn a_rejected_policy_still_isolates_the_pods_it_selects_in_its_directions() {
    let (namespaces, pods) = world();
    let to_a = flow((1, 0), (0, 0), Protocol::Tcp, 80);
    let from_a = flow((0, 0), (1, 0), Protocol::Tcp, 80);
    let to_b = flow((1, 0), (0, 1), Protocol::Tcp, 80);
    for (types, ingress_isolated, egress_isolated) in [
        (None, true, false),
        (Some(&["Egress"][..]), false, true),
        (Some(&["Ingress", "Egress"][..]), true, true),
        // An unknown type: both directions, whatever was meant.
        (Some(&["Ingress", "Sideways"][..]), true, true),
    ] {
        let set = PolicySet::compile(&[rejected_for_a(types)], &namespaces, &pods);
        assert_eq!(set.rejected.len(), 1);
        assert_eq!(set.rejected[0].policy, "x/bad");
        assert!(
            set.rejected[0].reason.contains("endPort")
                || set.rejected[0].reason.contains("Sideways"),
            "{}",
            set.rejected[0].reason
        );
        assert!(set.accepted.is_empty());
        assert_eq!(
            !set.check(&to_a).is_allowed(),
            ingress_isolated,
            "{types:?}"
        );
        assert_eq!(
            !set.check(&from_a).is_allowed(),
            egress_isolated,
            "{types:?}"
        );
        assert!(set.check(&to_b).is_allowed(), "x/b is not selected");
    }
    // Beside a valid policy allowing y to x/a, the rejected one takes nothing away.
    let both = [
        rejected_for_a(None),
        a_admits_namespaces(match_labels(&[("ns", "y")])),
    ];
    let set = PolicySet::compile(&both, &namespaces, &pods);
    assert_eq!(set.accepted, vec!["x/admit".to_string()]);
    assert!(set.check(&to_a).is_allowed());
    assert!(
        !set.check(&flow((2, 0), (0, 0), Protocol::Tcp, 80))
            .is_allowed()
    );
}

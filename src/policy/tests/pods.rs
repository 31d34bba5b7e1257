//! Which Pod an address stands for: finished and hostNetwork Pods are no Pod identity, and
//! live Pods sharing an address resolve the same whatever order they come in.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Pod, PodIP};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicySpec,
};

use super::*;

/// x/a admits only Pods labelled pod=b in x.
fn only_b_to_a() -> NetworkPolicy {
    policy(
        "x",
        "only-b",
        NetworkPolicySpec {
            pod_selector: Some(match_labels(&[("pod", "a")])),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![NetworkPolicyPeer {
                    pod_selector: Some(match_labels(&[("pod", "b")])),
                    ..NetworkPolicyPeer::default()
                }]),
                ports: None,
            }]),
            ..NetworkPolicySpec::default()
        },
    )
}

fn from(src: IpAddr) -> Flow {
    Flow {
        src,
        dst: ip_of(0, 0),
        protocol: Protocol::Tcp,
        dst_port: 80,
    }
}

#[test]
fn finished_and_host_network_pods_are_not_pod_identities() {
    let (namespaces, mut pods) = world();
    let reused: IpAddr = "10.244.1.50".parse().unwrap();
    let node: IpAddr = "198.18.0.1".parse().unwrap();
    let b = || labels(&[("pod", "b")]);
    let state = |phase, host_network| PodState {
        phase: Some(phase),
        host_network,
        ..PodState::default()
    };
    // Finished Pods that were pod=b keep their podIP, now reused by a Pod that is not.
    for (name, phase) in [("done", "Succeeded"), ("crashed", "Failed")] {
        pods.push(pod_at("x", name, reused, b(), &state(phase, false), 80));
    }
    // A pod=b on the host network has the node's address.
    pods.push(pod_at("x", "host", node, b(), &state("Running", true), 80));
    let new = pod_at(
        "x",
        "new",
        reused,
        labels(&[("pod", "new")]),
        &state("Running", false),
        80,
    );
    for pods in [
        [pods.clone(), vec![new.clone()]].concat(),
        [vec![new.clone()], pods.clone()].concat(),
    ] {
        let set = PolicySet::compile(&[only_b_to_a()], &namespaces, &pods);
        assert_eq!(
            set.check(&from(reused)),
            Verdict::Denied {
                direction: Direction::Ingress,
                pod: "x/a"
            },
            "the reused address is judged as the finished Pod"
        );
        assert!(set.conflicts.is_empty(), "{:?}", set.conflicts);
        assert!(
            !set.check(&from(node)).is_allowed(),
            "node traffic as pod=b"
        );
        assert!(!set.knows(node));
        assert_eq!(set.pod_ip("x/host"), None);
        assert_eq!(set.pod_ip("x/done"), None);
        assert!(set.check(&from(ip_of(0, 1))).is_allowed());
    }
}

#[test]
fn live_pods_sharing_an_address_resolve_the_same_in_any_order_and_are_reported() {
    let (namespaces, mut pods) = world();
    let shared: IpAddr = "10.244.1.50".parse().unwrap();
    let claimant = |name: &str, pod_label: &str, created, terminating| {
        let state = PodState {
            phase: Some("Running"),
            created: Some(created),
            terminating,
            ..PodState::default()
        };
        pod_at("x", name, shared, labels(&[("pod", pod_label)]), &state, 80)
    };
    let verdict = |claimants: [Pod; 2]| {
        let mut results = Vec::new();
        for order in [
            claimants.to_vec(),
            claimants.iter().rev().cloned().collect(),
        ] {
            let all = [pods.clone(), order].concat();
            let set = PolicySet::compile(&[only_b_to_a()], &namespaces, &all);
            results.push((set.check(&from(shared)).is_allowed(), set.conflicts));
        }
        assert_eq!(results[0], results[1], "the order of the Pods decided");
        results.remove(0)
    };
    // The newer Pod holds the address: the older one's labels (pod=b) do not count.
    let (allowed, conflicts) = verdict([
        claimant("old", "b", 1, false),
        claimant("new", "z", 2, false),
    ]);
    assert!(!allowed);
    assert_eq!(
        conflicts,
        vec![AddressConflict {
            ip: shared,
            owner: "x/new".into(),
            others: vec!["x/old".into()]
        }]
    );
    // ... unless it is being deleted.
    let (allowed, conflicts) = verdict([
        claimant("old", "b", 1, false),
        claimant("new", "z", 2, true),
    ]);
    assert!(allowed);
    assert_eq!(conflicts[0].owner, "x/old");
    // Same age: the first by namespace/name.
    let (allowed, conflicts) =
        verdict([claimant("p1", "b", 1, false), claimant("p2", "z", 1, false)]);
    assert!(allowed);
    assert_eq!(conflicts[0].owner, "x/p1");
    // A Pod that lost its only address is gone from the rule set.
    pods.clear();
    let set = PolicySet::compile(
        &[],
        &namespaces,
        &[
            claimant("old", "b", 1, false),
            claimant("new", "z", 2, false),
        ],
    );
    assert_eq!(set.pod_ip("x/old"), None);
    assert_eq!(set.pod_ip("x/new"), Some(shared));
}

#[test]
fn a_pod_listing_its_address_twice_is_no_conflict() {
    let (namespaces, mut pods) = world();
    let ip = ip_of(0, 0).to_string();
    if let Some(status) = pods[0].status.as_mut() {
        status.pod_ips = Some(vec![PodIP { ip: ip.clone() }, PodIP { ip }]);
    }
    let set = PolicySet::compile(&[only_b_to_a()], &namespaces, &pods);
    assert!(set.conflicts.is_empty(), "{:?}", set.conflicts);
    assert_eq!(set.pod_ip("x/a"), Some(ip_of(0, 0)));
}

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use proptest::prelude::*;
use weft_keys::PublicKey;

use super::*;
use crate::record::{NodeRecord, RecordError, covers, overlaps};
use crate::routes::LearnedRoute;

fn key(n: u8) -> PublicKey {
    PublicKey::from_bytes([n.max(1); 32])
}

fn net(text: &str) -> IpNetwork {
    text.parse().unwrap()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn node(name: &str, address: &str, blocks: &[&str]) -> NodeEntry {
    NodeEntry {
        name: name.into(),
        addresses: vec![ip(address)],
        record: Ok(NodeRecord {
            public_key: key(name.len() as u8 + name.as_bytes()[name.len() - 1]),
            next_public_key: None,
            endpoint: None,
            blocks: blocks.iter().map(|b| net(b)).collect(),
            key_epoch: 0,
        }),
    }
}

fn route(prefix: &str, hops: &[&str]) -> LearnedRoute {
    LearnedRoute {
        prefix: net(prefix),
        next_hops: hops.iter().map(|h| ip(h)).collect(),
        protocol: 12,
    }
}

fn mesh(nodes: &[NodeEntry], routes: &[LearnedRoute]) -> Mesh {
    scoped_mesh(nodes, routes, &[])
}

fn scoped_mesh(nodes: &[NodeEntry], routes: &[LearnedRoute], pod_cidrs: &[IpNetwork]) -> Mesh {
    compute_mesh(&MeshInput {
        local_node: "n1",
        nodes,
        routes,
        default_port: 51820,
        pod_cidrs,
    })
}

fn lab() -> Vec<NodeEntry> {
    vec![
        node("n1", "198.18.0.1", &["10.244.1.0/24"]),
        node("n2", "198.18.0.2", &["10.244.2.0/24"]),
        node("n3", "198.18.0.3", &["10.244.3.0/24"]),
    ]
}

fn reasons(mesh: &Mesh) -> Vec<(String, &'static str)> {
    mesh.rejections
        .iter()
        .map(|r| {
            let what = match &r.subject {
                Subject::Route { prefix, next_hop } => format!("route {prefix} via {next_hop:?}"),
                Subject::Block { node, prefix } => format!("block {node} {prefix}"),
                Subject::Record { node } => format!("record {node}"),
            };
            (what, r.reason.code())
        })
        .collect()
}

#[test]
fn agreeing_routes_and_records_make_peers() {
    let routes = [
        route("10.244.2.0/24", &["198.18.0.2"]),
        route("10.244.3.0/24", &["198.18.0.3"]),
    ];
    let mesh = mesh(&lab(), &routes);
    assert_eq!(mesh.peers.len(), 2);
    let n2 = &mesh.peers["n2"];
    assert_eq!(n2.allowed_ips, vec![net("10.244.2.0/24")]);
    assert_eq!(n2.endpoint, Some("198.18.0.2:51820".parse().unwrap()));
    assert_eq!(reasons(&mesh), vec![("record n1".to_string(), "own_node")]);
}

#[test]
fn each_reason_is_given() {
    let mut nodes = lab();
    nodes.push(NodeEntry {
        name: "bad".into(),
        addresses: vec![ip("198.18.0.9")],
        record: Err(RecordError::UnsupportedVersion(7)),
    });
    nodes.push(node("twin", "198.18.0.3", &["10.244.33.0/24"]));
    nodes.push(node("rogue", "198.18.0.8", &["10.244.2.128/25"]));
    let routes = [
        route("10.244.1.0/24", &["198.18.0.1"]),
        route("10.244.7.0/24", &["198.18.0.7"]),
        route("10.244.3.0/24", &["198.18.0.3"]),
        route("10.244.9.0/24", &["198.18.0.9"]),
        route("10.244.20.0/24", &["198.18.0.2"]),
        route("10.244.2.0/24", &["198.18.0.2"]),
        route("10.244.5.0/24", &[]),
    ];
    let mesh = mesh(&nodes, &routes);
    assert!(mesh.peers.is_empty(), "{:?}", mesh.peers);
    let got: BTreeSet<_> = reasons(&mesh).into_iter().collect();
    let expected: BTreeSet<(String, &str)> = [
        ("record n1", "own_node"),
        ("record bad", "bad_record"),
        ("route 10.244.1.0/24 via Some(198.18.0.1)", "own_node"),
        (
            "route 10.244.7.0/24 via Some(198.18.0.7)",
            "unknown_next_hop",
        ),
        ("route 10.244.5.0/24 via None", "unknown_next_hop"),
        (
            "route 10.244.3.0/24 via Some(198.18.0.3)",
            "ambiguous_next_hop",
        ),
        (
            "route 10.244.9.0/24 via Some(198.18.0.9)",
            "next_hop_record_rejected",
        ),
        (
            "route 10.244.20.0/24 via Some(198.18.0.2)",
            "not_claimed_by_next_hop",
        ),
        (
            "route 10.244.2.0/24 via Some(198.18.0.2)",
            "overlapping_claims",
        ),
        ("block n2 10.244.2.0/24", "overlapping_claims"),
        ("block rogue 10.244.2.128/25", "overlapping_claims"),
        ("block n3 10.244.3.0/24", "claimed_not_routed"),
        ("block twin 10.244.33.0/24", "claimed_not_routed"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b))
    .collect();
    assert_eq!(got, expected);
}

#[test]
fn multipath_route_goes_to_the_next_hop_that_claims_it() {
    let routes = [route("10.244.2.0/24", &["198.18.0.2", "198.18.0.3"])];
    let mesh = mesh(&lab(), &routes);
    assert_eq!(mesh.peers.keys().collect::<Vec<_>>(), vec!["n2"]);
    assert!(reasons(&mesh).contains(&(
        "route 10.244.2.0/24 via Some(198.18.0.3)".to_string(),
        "not_claimed_by_next_hop"
    )));
}

#[test]
fn more_specific_routes_inside_a_block_are_accepted_and_nested_ones_collapse() {
    let routes = [
        route("10.244.2.0/26", &["198.18.0.2"]),
        route("10.244.2.0/25", &["198.18.0.2"]),
        route("10.244.2.128/26", &["198.18.0.2"]),
        route("10.244.0.0/16", &["198.18.0.2"]),
    ];
    let mesh = mesh(&lab(), &routes);
    assert_eq!(
        mesh.peers["n2"].allowed_ips,
        vec![net("10.244.2.0/25"), net("10.244.2.128/26")]
    );
    assert!(reasons(&mesh).contains(&(
        "route 10.244.0.0/16 via Some(198.18.0.2)".to_string(),
        "not_claimed_by_next_hop"
    )));
}

#[test]
fn a_remote_claim_on_our_own_block_is_rejected() {
    let mut nodes = lab();
    nodes.push(node("thief", "198.18.0.6", &["10.244.1.0/24"]));
    let mesh = mesh(&nodes, &[route("10.244.1.0/24", &["198.18.0.6"])]);
    assert!(mesh.peers.is_empty());
    assert!(reasons(&mesh).contains(&(
        "route 10.244.1.0/24 via Some(198.18.0.6)".to_string(),
        "overlapping_claims"
    )));
}

#[test]
fn without_a_record_endpoint_the_first_listed_address_is_the_endpoint() {
    // An InternalIP listed before an ExternalIP that sorts lower: the InternalIP is used.
    let mut nodes = lab();
    nodes[1].addresses = vec![ip("198.18.0.2"), ip("3.120.7.9")];
    let mesh = mesh(&nodes, &[route("10.244.2.0/24", &["198.18.0.2"])]);
    assert_eq!(
        mesh.peers["n2"].endpoint,
        Some("198.18.0.2:51820".parse().unwrap())
    );
}

#[test]
fn record_endpoint_wins_over_the_address() {
    let mut nodes = lab();
    if let Ok(record) = &mut nodes[1].record {
        record.endpoint = Some("203.0.113.7:4000".parse().unwrap());
    }
    let mesh = mesh(&nodes, &[route("10.244.2.0/24", &["198.18.0.2"])]);
    assert_eq!(
        mesh.peers["n2"].endpoint,
        Some("203.0.113.7:4000".parse().unwrap())
    );
}

#[test]
fn rejection_serializes_flat() {
    let mesh = mesh(&lab(), &[route("10.244.20.0/24", &["198.18.0.2"])]);
    let json = serde_json::to_value(&mesh.rejections).unwrap();
    assert!(json.as_array().unwrap().contains(&serde_json::json!({
        "kind": "route", "prefix": "10.244.20.0/24", "nextHop": "198.18.0.2", "node": "n2",
        "reason": "not_claimed_by_next_hop",
        "message": "the next-hop node n2 does not claim this prefix in its record"
    })));
}

// ---- properties over random worlds ----

fn arb_prefix() -> impl Strategy<Value = IpNetwork> {
    (0u8..12, prop::sample::select(vec![22u8, 23, 24, 25, 26])).prop_map(|(third, len)| {
        let raw = IpNetwork::new(IpAddr::from([10, 244, third * 2, 64]), len).unwrap();
        IpNetwork::new(raw.network(), len).unwrap()
    })
}

/// A Pod CIDR: half of the generated blocks' range (so some peers stay and some routes fall
/// outside), or one random block.
fn arb_pod_cidr() -> impl Strategy<Value = IpNetwork> {
    prop_oneof![
        prop::sample::select(vec![0u8, 16])
            .prop_map(|third| { IpNetwork::new(IpAddr::from([10, 244, third, 0]), 20).unwrap() }),
        arb_prefix(),
    ]
}

fn arb_address() -> impl Strategy<Value = IpAddr> {
    (1u8..=16).prop_map(|last| IpAddr::from([198, 18, 0, last]))
}

fn arb_node(index: usize) -> impl Strategy<Value = NodeEntry> {
    (
        prop::collection::vec(arb_address(), 0..3),
        prop::collection::vec(arb_prefix(), 0..3),
        prop::bool::weighted(0.8),
        any::<Option<u16>>(),
    )
        .prop_map(move |(addresses, blocks, valid, port)| {
            // Keep the record's own blocks disjoint, as validation would.
            let mut disjoint: Vec<IpNetwork> = Vec::new();
            for block in blocks {
                if !disjoint.iter().any(|b| overlaps(b, &block)) {
                    disjoint.push(block);
                }
            }
            NodeEntry {
                name: format!("n{}", index + 1),
                addresses,
                record: if valid {
                    Ok(NodeRecord {
                        public_key: key(index as u8 + 1),
                        next_public_key: None,
                        endpoint: port
                            .filter(|p| *p != 0)
                            .map(|p| ([203, 0, 113, 1], p).into()),
                        blocks: disjoint,
                        key_epoch: 0,
                    })
                } else {
                    Err(RecordError::NextKeyIsCurrent)
                },
            }
        })
}

fn arb_world() -> impl Strategy<Value = (Vec<NodeEntry>, Vec<LearnedRoute>)> {
    (1usize..=6)
        .prop_flat_map(|n| (0..n).map(arb_node).collect::<Vec<_>>())
        .prop_flat_map(|nodes| {
            let random = prop::collection::vec(
                (arb_prefix(), prop::collection::vec(arb_address(), 0..4)).prop_map(
                    |(prefix, next_hops)| LearnedRoute {
                        prefix,
                        next_hops,
                        protocol: 12,
                    },
                ),
                0..8,
            );
            // Routes that agree with some record (a claimed block via one of the claimant's
            // addresses), so that many worlds have peers to check the properties on.
            let agreeing: Vec<LearnedRoute> = nodes
                .iter()
                .filter_map(|n| Some((n, n.record.as_ref().ok()?)))
                .flat_map(|(n, record)| {
                    record.blocks.iter().flat_map(move |block| {
                        n.addresses.iter().map(move |address| LearnedRoute {
                            prefix: *block,
                            next_hops: vec![*address],
                            protocol: 12,
                        })
                    })
                })
                .collect();
            let count = agreeing.len();
            let agreeing = prop::sample::subsequence(agreeing, 0..=count);
            (Just(nodes), random, agreeing).prop_map(|(nodes, mut routes, agreeing)| {
                routes.extend(agreeing);
                (nodes, routes)
            })
        })
}

fn compute(nodes: &[NodeEntry], routes: &[LearnedRoute]) -> Mesh {
    scoped_mesh(nodes, routes, &[])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn allowed_ips_are_routed_via_and_claimed_by_their_peer((nodes, routes) in arb_world()) {
        let mesh = compute(&nodes, &routes);
        for peer in mesh.peers.values() {
            let entry = nodes.iter().find(|n| n.name == peer.name).unwrap();
            let record = entry.record.as_ref().unwrap();
            prop_assert_ne!(peer.name.as_str(), "n1");
            prop_assert!(!peer.allowed_ips.is_empty());
            for allowed in &peer.allowed_ips {
                prop_assert!(record.blocks.iter().any(|b| covers(b, allowed)),
                    "{} of {} is not claimed", allowed, peer.name);
                let routed = routes.iter().any(|r| r.prefix == *allowed
                    && r.next_hops.iter().any(|h| entry.addresses.contains(h)));
                prop_assert!(routed, "{} of {} is not routed via it", allowed, peer.name);
                // And no other node claims any of it.
                for other in nodes.iter().filter(|n| n.name != peer.name) {
                    if let Ok(other_record) = &other.record {
                        prop_assert!(!other_record.blocks.iter().any(|b| overlaps(b, allowed)));
                    }
                }
            }
        }
    }

    #[test]
    fn no_address_goes_to_two_peers((nodes, routes) in arb_world()) {
        let mesh = compute(&nodes, &routes);
        let all: Vec<(&str, &IpNetwork)> = mesh.peers.values()
            .flat_map(|p| p.allowed_ips.iter().map(move |a| (p.name.as_str(), a)))
            .collect();
        for (i, (peer_a, a)) in all.iter().enumerate() {
            for (peer_b, b) in &all[i + 1..] {
                if overlaps(a, b) {
                    prop_assert_eq!(peer_a, peer_b, "{} and {} overlap", a, b);
                    prop_assert!(false, "one peer holds overlapping allowed IPs {} and {}", a, b);
                }
            }
        }
    }

    #[test]
    fn allowed_ips_stay_inside_the_pod_cidrs(
        (nodes, routes) in arb_world(),
        pod_cidrs in prop::collection::vec(arb_pod_cidr(), 1..3),
    ) {
        let mesh = scoped_mesh(&nodes, &routes, &pod_cidrs);
        for allowed in mesh.peers.values().flat_map(|p| &p.allowed_ips) {
            prop_assert!(pod_cidrs.iter().any(|c| covers(c, allowed)), "{} escapes", allowed);
        }
        for route in routes.iter().filter(|r| !pod_cidrs.iter().any(|c| covers(c, &r.prefix))) {
            let rejected = mesh.rejections.iter().any(|r| r.reason == RejectReason::OutsidePodCidrs
                && matches!(r.subject, Subject::Route { prefix, .. } if prefix == route.prefix));
            prop_assert!(rejected, "route {} outside the Pod CIDRs has no reason", route.prefix);
        }
    }

    #[test]
    fn every_unused_route_has_a_reason((nodes, routes) in arb_world()) {
        let mesh = compute(&nodes, &routes);
        for route in &routes {
            let used = mesh.peers.values().any(|p| p.allowed_ips.iter().any(|a| covers(a, &route.prefix)));
            let explained = mesh.rejections.iter().any(|r| matches!(&r.subject,
                Subject::Route { prefix, .. } if *prefix == route.prefix));
            prop_assert!(used || explained, "route {} vanished without a reason", route.prefix);
        }
    }

    #[test]
    fn input_order_does_not_matter((nodes, routes) in arb_world(), seed in any::<u64>()) {
        let mesh = compute(&nodes, &routes);
        let mut nodes2 = nodes.clone();
        let mut routes2 = routes.clone();
        let rotate = |len: usize| if len == 0 { 0 } else { (seed as usize) % len };
        let (n, r) = (rotate(nodes2.len()), rotate(routes2.len()));
        nodes2.rotate_left(n);
        nodes2.reverse();
        routes2.rotate_left(r);
        routes2.reverse();
        prop_assert_eq!(compute(&nodes2, &routes2), mesh);
    }

    #[test]
    fn diff_applied_to_the_old_mesh_gives_the_new_one(
        (nodes_a, routes_a) in arb_world(),
        (nodes_b, routes_b) in arb_world(),
    ) {
        let old = compute(&nodes_a, &routes_a).peers;
        let new = compute(&nodes_b, &routes_b).peers;
        let diff = diff_peers(&old, &new);
        prop_assert_eq!(diff.apply(&old), new.clone());
        prop_assert!(diff_peers(&new, &new).is_empty());
        let names: BTreeMap<_, _> = diff.added.iter().map(|p| (&p.name, ())).collect();
        prop_assert!(diff.removed.iter().all(|n| !names.contains_key(n)));
    }
}

fn with_keys(mut entry: NodeEntry, public: u8, next: Option<u8>) -> NodeEntry {
    if let Ok(record) = &mut entry.record {
        record.public_key = key(public);
        record.next_public_key = next.map(key);
    }
    entry
}

fn lab_routes() -> Vec<LearnedRoute> {
    vec![
        route("10.244.2.0/24", &["198.18.0.2"]),
        route("10.244.3.0/24", &["198.18.0.3"]),
    ]
}

#[test]
fn announcing_another_nodes_key_as_next_distrusts_the_announcer_not_the_holder() {
    let [n1, n2, n3] = <[NodeEntry; 3]>::try_from(lab()).unwrap();
    let nodes = [
        with_keys(n1, 1, None),
        with_keys(n2, 2, None),
        with_keys(n3, 3, Some(2)),
    ];
    let mesh = mesh(&nodes, &lab_routes());
    assert_eq!(mesh.peers.keys().collect::<Vec<_>>(), ["n2"]);
    assert_eq!(mesh.peers["n2"].public_key, key(2));
    assert!(reasons(&mesh).contains(&("record n3".into(), "shared_key")));
    assert!(reasons(&mesh).contains(&(
        "route 10.244.3.0/24 via Some(198.18.0.3)".into(),
        "next_hop_record_rejected"
    )));
}

#[test]
fn two_nodes_with_one_key_are_both_distrusted_and_our_key_stays_ours() {
    let [n1, n2, n3] = <[NodeEntry; 3]>::try_from(lab()).unwrap();
    let shared = [
        with_keys(n1.clone(), 1, None),
        with_keys(n2.clone(), 7, None),
        with_keys(n3.clone(), 7, None),
    ];
    let mesh_shared = mesh(&shared, &lab_routes());
    assert!(mesh_shared.peers.is_empty(), "{:?}", mesh_shared.peers);
    assert!(reasons(&mesh_shared).contains(&("record n2".into(), "shared_key")));
    assert!(reasons(&mesh_shared).contains(&("record n3".into(), "shared_key")));

    // A remote record announcing our key (current or next) is distrusted; we are not.
    let copying = [
        with_keys(n1, 1, Some(11)),
        with_keys(n2, 2, Some(11)),
        with_keys(n3, 1, None),
    ];
    let mesh_copying = mesh(&copying, &lab_routes());
    assert!(mesh_copying.peers.is_empty(), "{:?}", mesh_copying.peers);
    assert!(
        !reasons(&mesh_copying)
            .iter()
            .any(|(what, code)| what == "record n1" && *code == "shared_key")
    );
}

#[test]
fn a_node_rotating_normally_keeps_its_peer_with_both_keys() {
    let [n1, n2, n3] = <[NodeEntry; 3]>::try_from(lab()).unwrap();
    let nodes = [
        with_keys(n1, 1, Some(11)),
        with_keys(n2, 2, Some(12)),
        with_keys(n3, 3, None),
    ];
    let mesh = mesh(&nodes, &lab_routes());
    assert_eq!(mesh.peers.len(), 2);
    assert_eq!(mesh.peers["n2"].next_public_key, Some(key(12)));
    assert!(!reasons(&mesh).iter().any(|(_, code)| *code == "shared_key"));
}

#[test]
fn blocks_and_routes_outside_the_pod_cidrs_are_rejected() {
    let mut nodes = lab();
    // n3 also claims part of the underlay and has BGP send it there.
    nodes[2] = node("n3", "198.18.0.3", &["10.244.3.0/24", "198.18.0.0/24"]);
    let routes = [
        route("10.244.2.0/24", &["198.18.0.2"]),
        route("10.244.3.0/24", &["198.18.0.3"]),
        route("198.18.0.0/24", &["198.18.0.3"]),
    ];
    let unscoped = mesh(&nodes, &routes);
    assert!(
        unscoped.peers["n3"]
            .allowed_ips
            .contains(&net("198.18.0.0/24"))
    );

    let scoped = scoped_mesh(&nodes, &routes, &[net("10.244.0.0/16")]);
    assert_eq!(scoped.peers["n3"].allowed_ips, vec![net("10.244.3.0/24")]);
    assert_eq!(scoped.peers["n2"].allowed_ips, vec![net("10.244.2.0/24")]);
    let found = reasons(&scoped);
    assert!(found.contains(&("block n3 198.18.0.0/24".into(), "outside_pod_cidrs")));
    assert!(found.contains(&(
        format!("route 198.18.0.0/24 via {:?}", Some(ip("198.18.0.3"))),
        "outside_pod_cidrs"
    )));
}

#[test]
fn a_claim_outside_the_pod_cidrs_takes_nothing_from_another_node() {
    let mut nodes = lab();
    // n3 claims a supernet of n2's block that reaches outside the Pod CIDRs.
    nodes[2] = node("n3", "198.18.0.3", &["10.0.0.0/8"]);
    let routes = [route("10.244.2.0/24", &["198.18.0.2"])];
    assert!(!mesh(&nodes, &routes).peers.contains_key("n2"));
    let scoped = scoped_mesh(&nodes, &routes, &[net("10.244.0.0/16")]);
    assert_eq!(scoped.peers["n2"].allowed_ips, vec![net("10.244.2.0/24")]);
    assert!(reasons(&scoped).contains(&("block n3 10.0.0.0/8".into(), "outside_pod_cidrs")));
}

/// The property tests above say nothing if the generated worlds rarely produce a peer: check
/// that a good share of them do (and some reject things), so the properties are exercised.
#[test]
fn generated_worlds_produce_peers_and_rejections() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = arb_world();
    let (mut with_peers, mut with_rejections) = (0, 0);
    for _ in 0..256 {
        let (nodes, routes) = strategy.new_tree(&mut runner).unwrap().current();
        let mesh = compute(&nodes, &routes);
        with_peers += usize::from(!mesh.peers.is_empty());
        with_rejections += usize::from(!mesh.rejections.is_empty());
    }
    assert!(
        with_peers >= 64,
        "only {with_peers} of 256 worlds have a peer"
    );
    assert!(
        with_rejections >= 64,
        "only {with_rejections} of 256 worlds reject anything"
    );
}

/// The same for the scoped property: random Pod CIDRs must both keep some peers and push some
/// routes outside, or `allowed_ips_stay_inside_the_pod_cidrs` checks nothing.
#[test]
fn generated_scoped_worlds_keep_peers_and_reject_outside_routes() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = (arb_world(), prop::collection::vec(arb_pod_cidr(), 1..3));
    let (mut with_peers, mut with_outside) = (0, 0);
    for _ in 0..256 {
        let ((nodes, routes), pod_cidrs) = strategy.new_tree(&mut runner).unwrap().current();
        let mesh = scoped_mesh(&nodes, &routes, &pod_cidrs);
        with_peers += usize::from(!mesh.peers.is_empty());
        with_outside += usize::from(
            mesh.rejections
                .iter()
                .any(|r| r.reason == RejectReason::OutsidePodCidrs),
        );
    }
    assert!(
        with_peers >= 20,
        "only {with_peers} of 256 scoped worlds have a peer"
    );
    assert!(
        with_outside >= 32,
        "only {with_outside} of 256 scoped worlds reject a route outside the Pod CIDRs"
    );
}

use super::*;

/// A node with one address (IPv4 or IPv6) and one block.
fn node(name: &str, address: &str, block: &str) -> BirdNode {
    let (address_v4, address_v6) = match address.parse().unwrap() {
        IpAddr::V4(v4) => (Some(v4), None),
        IpAddr::V6(v6) => (None, Some(v6)),
    };
    BirdNode {
        name: name.into(),
        address_v4,
        address_v6,
        blocks: vec![block.parse().unwrap()],
    }
}

/// An IPv6-only node `2001:2::K` with block `fd00:10:244:K::/64`.
fn node6(k: u8) -> BirdNode {
    node(
        &format!("n{k}"),
        &format!("2001:2::{k}"),
        &format!("fd00:10:244:{k}::/64"),
    )
}

/// A dual-stack node `198.18.0.K` and `2001:2::K` with both blocks.
fn dual(k: u8) -> BirdNode {
    let mut node = node(
        &format!("n{k}"),
        &format!("198.18.0.{k}"),
        &format!("10.244.{k}.0/24"),
    );
    node.address_v6 = Some(format!("2001:2::{k}").parse().unwrap());
    node.blocks
        .push(format!("fd00:10:244:{k}::/64").parse().unwrap());
    node
}

fn nodes() -> Vec<BirdNode> {
    vec![
        node("n1", "198.18.0.1", "10.244.1.0/24"),
        node("n2", "198.18.0.2", "10.244.2.0/24"),
        node("n3", "198.18.0.3", "10.244.3.0/24"),
    ]
}

fn settings(reflectors: &[&str]) -> BirdSettings {
    BirdSettings {
        asn: 64512,
        route_reflectors: reflectors.iter().map(|r| r.to_string()).collect(),
        password: None,
    }
}

#[test]
fn a_password_goes_into_every_session_and_never_into_debug() {
    let all = nodes();
    let password = BgpPassword::parse("s3cret pass-word\n").unwrap();
    let with = BirdSettings {
        password: Some(password.clone()),
        ..settings(&[])
    };
    let conf = render(&all[0], &all[1..], &with).unwrap();
    assert!(
        conf.contains("    password \"s3cret pass-word\";"),
        "{conf}"
    );
    assert!(
        !render(&all[0], &all[1..], &settings(&[]))
            .unwrap()
            .contains("password")
    );
    assert!(!format!("{with:?}").contains("s3cret"));
}

#[test]
fn passwords_that_bird_or_the_kernel_cannot_take_are_refused() {
    for bad in [
        "",
        "\n",
        "with\"quote",
        "back\\slash",
        "tab\there",
        "é",
        &"x".repeat(81),
    ] {
        assert!(
            matches!(
                BgpPassword::parse(bad),
                Err(BirdConfigError::BadPassword(_))
            ),
            "{bad:?} accepted"
        );
    }
    assert!(BgpPassword::parse(&"x".repeat(80)).is_ok());
}

#[test]
fn a_full_mesh_peers_with_every_other_node_and_announces_the_own_blocks() {
    let all = nodes();
    let conf = render(&all[0], &all[1..], &settings(&[])).unwrap();
    assert!(conf.contains("router id 198.18.0.1;"));
    assert!(conf.contains("route 10.244.1.0/24 unreachable;"));
    assert!(!conf.contains("route 10.244.2.0/24"));
    // Only the other nodes' blocks are accepted from peers.
    assert!(conf.contains("import where net ~ [ 10.244.2.0/24, 10.244.3.0/24 ];"));
    assert!(conf.contains("neighbor 198.18.0.2 as 64512;"));
    assert!(conf.contains("neighbor 198.18.0.3 as 64512;"));
    assert!(!conf.contains("rr client"));
}

#[test]
fn route_reflectors_peer_with_everyone_and_clients_only_with_reflectors() {
    let all = nodes();
    let reflector = render(&all[0], &all[1..], &settings(&["n1"])).unwrap();
    assert_eq!(reflector.matches("rr client;").count(), 2);
    let client = render(
        &all[1],
        &[all[0].clone(), all[2].clone()],
        &settings(&["n1"]),
    )
    .unwrap();
    assert!(client.contains("neighbor 198.18.0.1 as 64512; }"));
    assert!(!client.contains("198.18.0.3"));
}

#[test]
fn dual_stack_blocks_go_out_in_an_ipv6_channel_with_the_nodes_ipv6_next_hop() {
    let mut own = node("n1", "198.18.0.1", "10.244.1.0/24");
    own.blocks.push("fd00:10:244:1::/64".parse().unwrap());
    own.address_v6 = Some("fd00:198:18::1".parse().unwrap());
    let conf = render(&own, &nodes()[1..], &settings(&[])).unwrap();
    assert!(conf.contains("protocol static pods { ipv4; route 10.244.1.0/24 unreachable; }"));
    assert!(conf.contains("protocol static pods6 { ipv6; route fd00:10:244:1::/64 unreachable; }"));
    assert!(conf.contains("bgp_next_hop = fd00:198:18::1;"));
    assert!(conf.contains("protocol kernel kernel6"));
    // IPv4 only: nothing of the kind.
    let v4 = render(&nodes()[0], &nodes()[1..], &settings(&[])).unwrap();
    assert!(!v4.contains("ipv6"));
}

#[test]
fn a_node_joining_renames_no_other_session() {
    let all = nodes();
    let before = render(&all[0], &all[1..], &settings(&[])).unwrap();
    let mut more = all[1..].to_vec();
    more.insert(0, node("n0", "198.18.0.9", "10.244.9.0/24"));
    let after = render(&all[0], &more, &settings(&[])).unwrap();
    let sessions = |conf: &str| -> Vec<String> {
        conf.lines()
            .filter(|l| l.starts_with("protocol bgp"))
            .map(String::from)
            .collect()
    };
    for session in sessions(&before) {
        assert!(sessions(&after).contains(&session), "{session} changed");
    }
    assert!(after.contains("protocol bgp peer_198_18_0_9 from peer"));
}

#[test]
fn bad_input_is_a_clear_error() {
    let all = nodes();
    assert_eq!(
        render(&all[0], &all[1..], &settings(&["n9"])),
        Err(BirdConfigError::UnknownReflector("n9".into()))
    );
    let nowhere = BirdNode {
        address_v4: None,
        ..all[0].clone()
    };
    assert_eq!(
        render(&nowhere, &all[1..], &settings(&[])),
        Err(BirdConfigError::NoAddress("n1".into()))
    );
    // IPv4 blocks over IPv6 sessions are not supported.
    let v6 = node("n1", "2001:2::1", "10.244.1.0/24");
    assert!(matches!(
        render(&v6, &all[1..], &settings(&[])),
        Err(BirdConfigError::NoIpv4Address { .. })
    ));
    let v6_block = node("n1", "198.18.0.1", "fd00:1::/64");
    assert!(matches!(
        render(&v6_block, &all[1..], &settings(&[])),
        Err(BirdConfigError::NoIpv6Address { .. })
    ));
    let twin = node("n4", "198.18.0.2", "10.244.4.0/24");
    let mut with_twin = all[1..].to_vec();
    with_twin.push(twin);
    assert!(matches!(
        render(&all[0], &with_twin, &settings(&[])),
        Err(BirdConfigError::SharedAddress(..))
    ));
    let zero = BirdSettings {
        asn: 0,
        ..settings(&[])
    };
    assert_eq!(
        render(&all[0], &all[1..], &zero),
        Err(BirdConfigError::ReservedAsn)
    );
}

#[test]
fn sessions_use_ipv4_when_both_ends_have_it_and_ipv6_otherwise() {
    let v4 = |k| node(&format!("n{k}"), &format!("198.18.0.{k}"), "10.244.9.0/24");
    let ends = |a: &BirdNode, b: &BirdNode| {
        session_addresses(a, b).map(|(local, neighbor)| format!("{local} {neighbor}"))
    };
    assert_eq!(ends(&v4(1), &v4(2)).unwrap(), "198.18.0.1 198.18.0.2");
    assert_eq!(ends(&dual(1), &dual(2)).unwrap(), "198.18.0.1 198.18.0.2");
    assert_eq!(ends(&dual(1), &v4(2)).unwrap(), "198.18.0.1 198.18.0.2");
    assert_eq!(ends(&dual(1), &node6(2)).unwrap(), "2001:2::1 2001:2::2");
    assert_eq!(ends(&node6(1), &dual(2)).unwrap(), "2001:2::1 2001:2::2");
    assert_eq!(ends(&node6(1), &node6(2)).unwrap(), "2001:2::1 2001:2::2");
    assert_eq!(ends(&node6(1), &v4(2)), None);
    assert_eq!(ends(&v4(1), &node6(2)), None);
}

#[test]
fn an_ipv6_only_node_peers_over_ipv6_with_a_router_id_derived_from_its_address() {
    let all: Vec<BirdNode> = (1..=3).map(node6).collect();
    let conf = render(&all[0], &all[1..], &settings(&[])).unwrap();
    let id = derived_router_id("2001:2::1".parse().unwrap());
    assert!(conf.contains(&format!("router id {id};")), "{conf}");
    assert!(
        conf.contains("protocol static pods6 { ipv6; route fd00:10:244:1::/64 unreachable; }"),
        "{conf}"
    );
    assert!(
        conf.contains("template bgp peer6 {\n    local 2001:2::1 as 64512;\n    direct;\n"),
        "{conf}"
    );
    assert!(
        conf.contains("ipv6 { import where net ~ [ fd00:10:244:2::/64, fd00:10:244:3::/64 ];"),
        "{conf}"
    );
    assert!(conf.contains("bgp_next_hop = 2001:2::1;"), "{conf}");
    assert!(
        conf.contains("protocol bgp peer6_2001_2__2 from peer6 { neighbor 2001:2::2 as 64512; }"),
        "{conf}"
    );
    assert!(conf.contains("neighbor 2001:2::3 as 64512;"), "{conf}");
    // Nothing IPv4: no IPv4 channel, template or kernel protocol.
    assert!(!conf.contains("ipv4"), "{conf}");
    assert!(!conf.contains("template bgp peer {"), "{conf}");
}

#[test]
fn an_ipv6_only_route_reflector_peers_with_its_clients_over_ipv6() {
    let all: Vec<BirdNode> = (1..=3).map(node6).collect();
    let reflector = render(&all[0], &all[1..], &settings(&["n1"])).unwrap();
    assert_eq!(reflector.matches("from peer6 {").count(), 2, "{reflector}");
    assert_eq!(reflector.matches("rr client;").count(), 2, "{reflector}");
    let client = render(&all[2], &all[..2], &settings(&["n1"])).unwrap();
    assert!(
        client.contains("neighbor 2001:2::1 as 64512; }"),
        "{client}"
    );
    assert!(!client.contains("neighbor 2001:2::2"), "{client}");
}

#[test]
fn a_dual_stack_node_peers_over_ipv4_where_it_can_and_over_ipv6_with_ipv6_only_nodes() {
    let v4 = node("n2", "198.18.0.2", "10.244.2.0/24");
    let conf = render(&dual(1), &[v4, node6(3)], &settings(&[])).unwrap();
    assert!(conf.contains("router id 198.18.0.1;"), "{conf}");
    assert!(
        conf.contains("template bgp peer {\n    local 198.18.0.1 as 64512;"),
        "{conf}"
    );
    assert!(
        conf.contains("template bgp peer6 {\n    local 2001:2::1 as 64512;"),
        "{conf}"
    );
    assert!(
        conf.contains("protocol bgp peer_198_18_0_2 from peer { neighbor 198.18.0.2 as 64512; }"),
        "{conf}"
    );
    assert!(
        conf.contains("protocol bgp peer6_2001_2__3 from peer6 { neighbor 2001:2::3 as 64512; }"),
        "{conf}"
    );
    // Dual-stack peers keep their single IPv4 session, without any IPv6-only template.
    let conf = render(&dual(1), &[dual(2), dual(3)], &settings(&[])).unwrap();
    assert!(conf.contains("neighbor 198.18.0.3 as 64512;"), "{conf}");
    assert!(!conf.contains("peer6"), "{conf}");
}

#[test]
fn derived_router_ids_are_fnv1a_of_the_address_and_differ_between_addresses() {
    // FNV-1a (32-bit) of the 16 address bytes, computed independently.
    let id = |a: &str| derived_router_id(a.parse().unwrap()).to_string();
    assert_eq!(id("2001:2::1"), "177.19.7.23");
    assert_eq!(id("2001:2::2"), "178.19.8.170");
    let ids: BTreeSet<String> = (1..=1000u16)
        .map(|k| id(&format!("2001:2::{k:x}")))
        .collect();
    assert_eq!(ids.len(), 1000);
}

#[test]
fn nodes_that_would_share_a_router_id_are_refused() {
    // Two addresses whose FNV-1a hashes collide (found by search).
    let (a, b) = (
        "2001:2:0:b7f6:e4ca:a107:6f04:f5ac",
        "2001:2:0:b7c6:c2d6:4895:e155:7588",
    );
    assert_eq!(
        derived_router_id(a.parse().unwrap()),
        derived_router_id(b.parse().unwrap())
    );
    let twins = [
        node("n2", a, "fd00:10:244:2::/64"),
        node("n3", b, "fd00:10:244:3::/64"),
    ];
    assert_eq!(
        render(&node6(1), &twins, &settings(&[])),
        Err(BirdConfigError::SharedRouterId {
            node: "n3".into(),
            other: "n2".into(),
            id: "1.32.208.25".parse().unwrap(),
        })
    );
    // A derived id equal to another node's IPv4 address collides too; so do a reflector's
    // clients, which do not peer with each other.
    let lookalike = node("n3", "1.32.208.25", "10.244.3.0/24");
    let own = dual(1);
    let others = [twins[0].clone(), lookalike];
    assert!(matches!(
        render(&own, &others, &settings(&[])),
        Err(BirdConfigError::SharedRouterId { .. })
    ));
    let with_reflector = [node6(1), twins[0].clone(), twins[1].clone()];
    assert!(matches!(
        render(&node6(4), &with_reflector, &settings(&["n1"])),
        Err(BirdConfigError::SharedRouterId { .. })
    ));
}

#[test]
fn an_ipv6_only_peer_of_an_ipv4_only_node_is_a_clear_error() {
    let own = node("n1", "198.18.0.1", "10.244.1.0/24");
    assert_eq!(
        render(&own, &[node6(2)], &settings(&[])),
        Err(BirdConfigError::NoCommonFamily("n2".into()))
    );
}

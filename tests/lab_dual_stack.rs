//! A dual-stack lab (`WEFT_LAB_IPV6=1`): IPv6 Pod traffic crosses the underlay only inside
//! weft's WireGuard tunnels, as IPv4 does, and an IPv6 block without a verified peer fails
//! closed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{
    CLEAR_POD_TRAFFIC, Capture, Lab, Servers, run_ok, tcp_reaches, tcp_server_dual_stack, wait_for,
};

const CONVERGE: Duration = Duration::from_secs(60);
const NODES: usize = 3;

/// Node `j`'s Pod blocks, both families.
fn blocks(j: usize) -> BTreeSet<String> {
    BTreeSet::from([format!("10.244.{j}.0/24"), format!("fd00:10:244:{j}::/64")])
}

/// Whether node `k` peers with exactly the nodes in `others`, each on both of its blocks.
fn peers_on_both_blocks(lab: &Lab, k: usize, others: &[usize]) -> bool {
    let Some(peers) = lab.peers(k) else {
        return false;
    };
    let want: BTreeSet<(String, BTreeSet<String>)> = others
        .iter()
        .map(|j| (format!("n{j}"), blocks(*j)))
        .collect();
    peers.into_iter().collect::<BTreeSet<_>>() == want
}

fn others(k: usize) -> Vec<usize> {
    (1..=NODES).filter(|j| *j != k).collect()
}

/// The lines of node `k`'s `ip -6 rule` that send traffic to weft's table.
fn ipv6_weft_rules(lab: &Lab, k: usize) -> Vec<String> {
    run_ok("ip", &["-6", "-n", &lab.node_ns(k), "rule", "show"])
        .lines()
        .filter(|l| l.contains("lookup 51820"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn ipv6_pod_traffic_crosses_nodes_only_encrypted_and_an_unverified_ipv6_block_fails_closed() {
    let lab = Lab::up_dual_stack("wtds", NODES);
    for k in 1..=NODES {
        wait_for(
            CONVERGE,
            &format!("n{k} to peer with the others on both their blocks"),
            || peers_on_both_blocks(&lab, k, &others(k)).then_some(()),
        );
        assert_eq!(
            ipv6_weft_rules(&lab, k),
            ["5210: not from all fwmark 0x5746 lookup 51820"],
            "n{k} should hold weft's IPv6 rule exactly once"
        );
        // With an IPv6 address, WireGuard may run over IPv6: room for its larger header.
        let link = run_ok(
            "ip",
            &["-n", &lab.node_ns(k), "link", "show", &lab.interface(k)],
        );
        assert!(link.contains("mtu 1420"), "{link}");
    }

    // Every Pod reaches every Pod of every other node, over IPv6 and IPv4, and nothing
    // Pod-addressed crosses the underlay in clear meanwhile.
    let pods: Vec<(usize, String, Vec<String>)> = (1..=NODES)
        .flat_map(|k| {
            lab.pods(k)
                .into_iter()
                .zip(lab.pods6(k))
                .map(move |((ns, v4), (_, v6))| (k, ns, vec![v6, v4]))
        })
        .collect();
    assert_eq!(pods.len(), NODES * 2, "every Pod has both addresses");
    let servers = Servers(
        pods.iter()
            .map(|(_, ns, _)| tcp_server_dual_stack(ns))
            .collect(),
    );
    std::thread::sleep(Duration::from_millis(500));
    let clear = Capture::start(&lab, CLEAR_POD_TRAFFIC);
    let wireguard = Capture::start(&lab, "udp port 51820");
    lab.assert_pods_reach_remote_pods(&pods);
    drop(servers);
    clear.assert_nothing("Pod traffic crossed the underlay in clear");
    let encrypted = wireguard.stop();
    assert!(
        encrypted.len() > 20,
        "no WireGuard traffic seen: {encrypted:?}"
    );

    // n2's record goes away while BGP keeps routing its IPv6 block: the others make that block
    // unreachable rather than send it in clear through the BGP route.
    let (_, n2_pod) = lab.pods6(2)[0].clone();
    lab.script(&["stop-agent", "2"]);
    std::fs::remove_file(lab.registry_dir().join("n2.json")).unwrap();
    for k in [1, 3] {
        wait_for(Duration::from_secs(20), &format!("n{k} to drop n2"), || {
            peers_on_both_blocks(&lab, k, &[4 - k]).then_some(())
        });
        let main_table = run_ok("ip", &["-6", "-n", &lab.node_ns(k), "route", "show"]);
        assert!(
            main_table.contains("fd00:10:244:2::/64 via 2001:2::2"),
            "BGP should still route n2's IPv6 block on n{k}: {main_table}"
        );
        let (from, _) = lab.pods6(k)[0].clone();
        lab.assert_blackholed_on(k, &from, &n2_pod, "unreachable fd00:10:244:2::/64");
    }

    lab.script(&["start-agent", "2"]);
    for k in [1, 3] {
        let (from, _) = lab.pods6(k)[0].clone();
        wait_for(
            CONVERGE,
            &format!("n{k} to reach n2's IPv6 Pod with the record back"),
            || lab.ping(&from, &n2_pod, 1).then_some(()),
        );
    }
    let _server = Servers(vec![tcp_server_dual_stack(&lab.pods6(2)[0].0)]);
    std::thread::sleep(Duration::from_millis(500));
    let (from, _) = lab.pods6(1)[0].clone();
    assert!(
        tcp_reaches(&from, &n2_pod),
        "TCP over IPv6 to n2 did not come back"
    );
}

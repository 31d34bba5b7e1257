//! The encrypted datapath in the real lab: Pods on different nodes talk only through weft's
//! userspace WireGuard, nothing Pod-addressed crosses the underlay in clear, and prefixes
//! without a verified peer fail closed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use common::{CLEAR_POD_TRAFFIC, Capture, Lab, Servers, repo, run, run_ok, tcp_server, wait_for};

const CONVERGE: Duration = Duration::from_secs(60);

#[test]
fn every_pod_reaches_every_remote_pod_and_nothing_crosses_the_underlay_in_clear() {
    let lab = Lab::up("wtdp", 3);
    lab.wait_for_mesh(CONVERGE);
    let pods: Vec<(usize, String, Vec<String>)> = (1..=3)
        .flat_map(|k| {
            lab.pods(k)
                .into_iter()
                .map(move |(ns, ip)| (k, ns, vec![ip]))
        })
        .collect();
    let servers = Servers(pods.iter().map(|(_, ns, _)| tcp_server(ns)).collect());
    std::thread::sleep(Duration::from_millis(500));

    let clear = Capture::start(&lab, CLEAR_POD_TRAFFIC);
    let wireguard = Capture::start(&lab, "udp port 51820");
    // Between nodes, IPv4 carries only WireGuard and BGP.
    let other = Capture::start(&lab, "ip and not udp port 51820 and not tcp port 179");
    lab.assert_pods_reach_remote_pods(&pods);
    drop(servers);
    clear.assert_nothing("Pod traffic crossed the underlay in clear");
    other.assert_nothing("unexpected underlay traffic");
    let encrypted = wireguard.stop();
    assert!(
        encrypted.len() > 20,
        "no WireGuard traffic seen: {encrypted:?}"
    );

    // Every node counts traffic for both peers.
    for k in 1..=3 {
        let status = lab.status(k).unwrap();
        for peer in status["datapath"]["peers"].as_array().unwrap() {
            assert!(peer["rxBytes"].as_u64().unwrap() > 0, "n{k}: {peer}");
            assert!(peer["txBytes"].as_u64().unwrap() > 0, "n{k}: {peer}");
            assert!(
                peer["handshakeAgeSecs"].is_u64(),
                "n{k}: no handshake with {peer}"
            );
        }
    }
}

#[test]
fn a_block_without_a_bgp_route_or_a_record_is_unreachable_never_in_clear_and_comes_back() {
    let lab = Lab::up("wtfc", 3);
    lab.wait_for_mesh(CONVERGE);
    let (from, _) = lab.pods(1)[0].clone();
    let (_, to) = lab.pods(2)[0].clone();
    assert!(lab.ping(&from, &to, 5));

    lab.script(&["stop-bird", "2"]);
    wait_for(Duration::from_secs(20), "n1 to drop n2", || {
        let peers = lab.peers(1)?;
        peers.iter().all(|(n, _)| n != "n2").then_some(())
    });
    lab.assert_blackholed(&from, &to, "unreachable 10.244.0.0/16");

    lab.script(&["start-bird", "2"]);
    wait_for(CONVERGE, "n1 to reach n2's Pod again", || {
        lab.ping(&from, &to, 1).then_some(())
    });

    // Now the other source: BGP keeps routing n2's block, but n2's record is gone. Without
    // weft the BGP route would carry the traffic in clear.
    lab.script(&["stop-agent", "2"]);
    std::fs::remove_file(lab.registry_dir().join("n2.json")).unwrap();
    wait_for(Duration::from_secs(20), "n1 to drop n2's record", || {
        let peers = lab.peers(1)?;
        peers.iter().all(|(n, _)| n != "n2").then_some(())
    });
    let main_table = run_ok("ip", &["-n", &lab.node_ns(1), "route", "show"]);
    assert!(
        main_table.contains("10.244.2.0/24 via 198.18.0.2"),
        "BGP should still route n2's block: {main_table}"
    );
    lab.assert_blackholed(&from, &to, "unreachable 10.244.2.0/24");

    lab.script(&["start-agent", "2"]);
    wait_for(
        CONVERGE,
        "n1 to reach n2's Pod with the record back",
        || lab.ping(&from, &to, 1).then_some(()),
    );
}

/// Node `k`'s rules at weft's priority.
fn weft_rules(lab: &Lab, k: usize) -> String {
    run_ok(
        "ip",
        &["-n", &lab.node_ns(k), "rule", "show", "priority", "5210"],
    )
}

/// Node `k`'s routes in weft's table.
fn weft_table(lab: &Lab, k: usize) -> String {
    run_ok(
        "ip",
        &["-n", &lab.node_ns(k), "route", "show", "table", "51820"],
    )
}

/// Pings from `from` to `to` fail, and nothing Pod-addressed crosses the underlay in clear;
/// `while_what` says when.
fn assert_dropped_not_clear(lab: &Lab, from: &str, to: &str, while_what: &str) {
    let clear = Capture::start(lab, CLEAR_POD_TRAFFIC);
    assert!(!lab.ping(from, to, 2), "traffic flowed {while_what}");
    clear.assert_nothing(&format!("traffic left in clear {while_what}"));
}

/// Starts node `k`'s agent again and waits until `from` reaches `to`.
fn restart_agent(lab: &Lab, k: usize, from: &str, to: &str) {
    lab.script(&["start-agent", &k.to_string()]);
    lab.wait_for_mesh(CONVERGE);
    wait_for(CONVERGE, "traffic to flow again", || {
        lab.ping(from, to, 1).then_some(())
    });
}

#[test]
fn a_killed_agent_restarts_into_a_working_datapath_without_cleanup() {
    let lab = Lab::up("wtkill", 2);
    lab.wait_for_mesh(CONVERGE);
    let (from, _) = lab.pods(1)[0].clone();
    let (_, to) = lab.pods(2)[0].clone();
    assert!(lab.ping(&from, &to, 5));

    let pid = std::fs::read_to_string("/run/wtkill/n1/agent.pid").unwrap();
    run_ok("kill", &["-KILL", pid.trim()]);
    wait_for(Duration::from_secs(10), "the agent to die", || {
        (!run("kill", &["-0", pid.trim()]).status.success()).then_some(())
    });
    // While the agent is dead its TUN is gone: the unreachable backstops keep Pod traffic
    // from falling back to the clear BGP route.
    assert_dropped_not_clear(&lab, &from, &to, "while the agent was dead");
    restart_agent(&lab, 1, &from, &to);
    // Exactly one rule and no duplicate routes after the restart.
    let rules = weft_rules(&lab, 1);
    assert_eq!(rules.lines().count(), 1, "{rules}");
    let routes = weft_table(&lab, 1);
    let mut lines: Vec<&str> = routes.lines().collect();
    let total = lines.len();
    lines.dedup();
    assert_eq!(lines.len(), total, "{routes}");

    // A clean stop removes weft's rule and table.
    lab.script(&["stop-agent", "1"]);
    let rules = weft_rules(&lab, 1);
    assert!(
        rules.trim().is_empty(),
        "rule left after a clean stop: {rules}"
    );
    let routes = weft_table(&lab, 1);
    assert!(
        routes.trim().is_empty(),
        "routes left after a clean stop: {routes}"
    );
}

#[test]
fn a_clean_stop_keeping_routing_drops_pod_traffic_until_the_agent_is_back() {
    // As the DaemonSet runs it: every rollout stops the agent cleanly.
    let lab = Lab::up_with("wtkeep", 2, "--keep-routing-on-exit");
    lab.wait_for_mesh(CONVERGE);
    let (from, _) = lab.pods(1)[0].clone();
    let (_, to) = lab.pods(2)[0].clone();
    assert!(lab.ping(&from, &to, 5));

    lab.script(&["stop-agent", "1"]);
    let rules = weft_rules(&lab, 1);
    assert_eq!(rules.lines().count(), 1, "the rule must stay: {rules}");
    let routes = weft_table(&lab, 1);
    // The tunnel routes went with the TUN; the unreachable ones stay.
    assert!(routes.contains("unreachable 10.244.2.0/24"), "{routes}");
    assert!(!routes.contains("dev wtkeepn1"), "{routes}");
    assert_dropped_not_clear(&lab, &from, &to, "while the agent was stopped");

    restart_agent(&lab, 1, &from, &to);
    let rules = weft_rules(&lab, 1);
    assert_eq!(rules.lines().count(), 1, "{rules}");
}

/// The nftables forward filter README.md gives to refuse clear Pod traffic from the underlay.
fn readme_underlay_filter() -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme
        .find("nft -f - <<'NFT'\n")
        .expect("README has the filter");
    let body = &readme[start..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("\nNFT\n").unwrap()].to_string()
}

#[test]
fn the_readmes_underlay_filter_keeps_clear_pod_traffic_from_a_stopped_peer_off_the_pods() {
    let lab = Lab::up("wtguard", 2);
    lab.wait_for_mesh(CONVERGE);
    let (from, _) = lab.pods(2)[0].clone();
    let (pod, to) = lab.pods(1)[0].clone();
    assert!(lab.ping(&from, &to, 5));
    // A clean stop without --keep-routing-on-exit: n2 sends Pod traffic in clear.
    lab.script(&["stop-agent", "2"]);
    let mut nft = Command::new("ip")
        .args(["netns", "exec", &lab.node_ns(1), "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    nft.stdin
        .take()
        .unwrap()
        .write_all(readme_underlay_filter().as_bytes())
        .unwrap();
    assert!(
        nft.wait().unwrap().success(),
        "nft refused the README's filter"
    );

    let echo_requests = "icmp[0] == 8";
    let seen = Capture::on(&pod, "eth0", echo_requests);
    lab.ping(&from, &to, 2);
    seen.assert_nothing("a clear ping from the stopped peer reached the Pod through the filter");
    // Without the filter the same pings reach the Pod: the filter is what kept them off.
    run_ok(
        "ip",
        &[
            "netns",
            "exec",
            &lab.node_ns(1),
            "nft",
            "delete",
            "table",
            "inet",
            "weft_guard",
        ],
    );
    let seen = Capture::on(&pod, "eth0", echo_requests);
    lab.ping(&from, &to, 2);
    assert!(!seen.stop().is_empty(), "clear pings never arrived at all");
}

#[test]
fn garbage_udp_is_counted_and_changes_nothing() {
    let lab = Lab::up("wtjunk", 2);
    lab.wait_for_mesh(CONVERGE);
    // The TUN's MTU leaves room for WireGuard over the lab's IPv4 underlay (1500 - 60).
    let link = run_ok("ip", &["-n", &lab.node_ns(1), "link", "show", "wtjunkn1"]);
    assert!(link.contains("mtu 1440"), "{link}");
    let (from, _) = lab.pods(1)[0].clone();
    let (_, to) = lab.pods(2)[0].clone();
    assert!(lab.ping(&from, &to, 5));
    let script = "import socket, os\n\
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
        for n in range(200):\n\
        \x20   kind = bytes([n % 6])\n\
        \x20   s.sendto(kind + os.urandom(n % 160), ('198.18.0.1', 51820))\n";
    run_ok(
        "ip",
        &["netns", "exec", &lab.node_ns(2), "python3", "-c", script],
    );
    wait_for(Duration::from_secs(10), "n1 to count the garbage", || {
        let drops = lab.status(1)?["datapath"]["drops"].clone();
        let counted: u64 = ["malformed", "unknown_receiver", "unknown_peer"]
            .iter()
            .filter_map(|r| drops[*r].as_u64())
            .sum();
        (counted >= 150).then_some(())
    });
    assert!(lab.ping(&from, &to, 3), "garbage broke the tunnel");
}

#[test]
fn losing_the_tun_stops_the_agent_and_traffic_stays_off_the_clear_path() {
    let lab = Lab::up("wttun", 2);
    lab.wait_for_mesh(CONVERGE);
    let (from, _) = lab.pods(1)[0].clone();
    let (_, to) = lab.pods(2)[0].clone();
    assert!(lab.ping(&from, &to, 5));

    run_ok("ip", &["-n", &lab.node_ns(1), "link", "del", "wttunn1"]);
    let pid = std::fs::read_to_string("/run/wttun/n1/agent.pid").unwrap();
    wait_for(Duration::from_secs(10), "the agent to exit", || {
        (!run("kill", &["-0", pid.trim()]).status.success()).then_some(())
    });
    let log = std::fs::read_to_string("/run/wttun/n1/agent.log").unwrap();
    assert!(log.contains("the datapath stopped"), "{log}");
    assert_dropped_not_clear(&lab, &from, &to, "without a datapath");
    restart_agent(&lab, 1, &from, &to);
}

//! NetworkPolicy on decrypted traffic in the real lab: the lab's Pods are Kubernetes objects
//! in namespace "lab" (`nK-pJ`, labels node/pod) in the agents' policy directory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::duplex::Duplex;
use common::{Lab, Servers, run, tcp_reaches, tcp_server, wait_for};

/// Default deny ingress for n2-p1.
const DENY_N2_P1: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-n2-p1, namespace: lab}\nspec:\n  podSelector: {matchLabels: {node: n2, pod: p1}}\n  policyTypes: [Ingress]\n";

fn write_policy(lab: &Lab, file: &str, yaml: &str) {
    std::fs::write(format!("/run/{}/policy/{file}", lab.name), yaml).unwrap();
}

#[test]
fn policy_on_decryption_denies_allows_tracks_replies_and_follows_changes() {
    // No pickup window: only a SYN opens a TCP flow, from the start.
    let lab = Lab::up_with("wtpol", 2, "--conntrack-pickup 0s");
    lab.wait_for_mesh(Duration::from_secs(60));
    let (n1p1, _) = lab.pods(1)[0].clone();
    let (n1p2, _) = lab.pods(1)[1].clone();
    let (n2p1, n2p1_ip) = lab.pods(2)[0].clone();
    let (_, n2p2_ip) = lab.pods(2)[1].clone();
    let (_, n1p1_ip) = lab.pods(1)[0].clone();
    assert!(lab.ping(&n1p1, &n2p1_ip, 5));

    // Default deny ingress for n2-p1.
    write_policy(&lab, "deny.yaml", DENY_N2_P1);
    wait_for(Duration::from_secs(15), "the deny policy to apply", || {
        (!lab.ping(&n1p1, &n2p1_ip, 1)).then_some(())
    });
    assert!(
        lab.ping(&n1p1, &n2p2_ip, 3),
        "n2-p2 is not selected and must stay reachable"
    );
    let (allowed, verdict) = lab.policy_check(2, "lab/n1-p1", "lab/n2-p1", "8080");
    assert!(!allowed);
    assert!(
        verdict.contains("lab/n2-p1 is isolated for ingress"),
        "{verdict}"
    );
    let drops = lab.status(2).unwrap()["datapath"]["peers"][0]["drops"]["policy_ingress"].as_u64();
    assert!(
        drops.is_some_and(|n| n > 0),
        "denied packets are not counted"
    );
    let policy = lab.status(2).unwrap()["datapath"]["policy"].clone();
    assert_eq!(policy["policies"], serde_json::json!(["lab/deny-n2-p1"]));
    assert!(
        policy["denied"]["lab/n2-p1"]["ingress"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "denials are not counted per Pod: {policy}"
    );
    assert!(policy["verdicts"]["denied_ingress"].as_u64() > Some(0));

    // A typo in the policy's file: reported in `weft status`, and the policy stays in force
    // (its file's last good content) rather than vanishing and opening n2-p1.
    let version = |lab: &Lab| lab.status(2).unwrap()["datapath"]["policy"]["version"].as_u64();
    let before = version(&lab);
    write_policy(
        &lab,
        "deny.yaml",
        &DENY_N2_P1.replace("[Ingress]", "[Ingress"),
    );
    let rejected = wait_for(Duration::from_secs(15), "the broken file to show", || {
        lab.status(2)?["rejectedPolicyFiles"]
            .as_array()?
            .first()
            .cloned()
    });
    assert_eq!(
        rejected["file"], "/run/wtpol/policy/deny.yaml",
        "{rejected}"
    );
    assert_eq!(rejected["inForce"], "last_good", "{rejected}");
    assert_eq!(
        version(&lab),
        before,
        "the broken file changed the rule set"
    );
    assert!(
        !lab.ping(&n1p1, &n2p1_ip, 1),
        "a typo in its policy file opened n2-p1"
    );
    write_policy(&lab, "deny.yaml", DENY_N2_P1);
    wait_for(Duration::from_secs(15), "the fixed file to clear", || {
        lab.status(2)?["rejectedPolicyFiles"]
            .as_array()?
            .is_empty()
            .then_some(())
    });

    // Replies of a connection n2-p1 opens pass although its ingress is isolated.
    assert!(
        lab.ping(&n2p1, &n1p1_ip, 3),
        "the reply to n2-p1's own ping was dropped"
    );
    // Over TCP too: n2-p1's SYN, as the kernel sends it, opens the flow.
    {
        let _server = Servers(vec![tcp_server(&n1p1)]);
        wait_for(
            Duration::from_secs(10),
            "n2-p1's own TCP connection",
            || tcp_reaches(&n2p1, &n1p1_ip).then_some(()),
        );
    }

    // Allow TCP to the named port "http" from n1-p1 only.
    write_policy(
        &lab,
        "allow.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-http, namespace: lab}\nspec:\n  podSelector: {matchLabels: {node: n2, pod: p1}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {node: n1, pod: p1}}}]\n    ports: [{port: http}]\n",
    );
    let servers = Servers(vec![tcp_server(&n2p1)]);
    wait_for(Duration::from_secs(15), "the allow policy to apply", || {
        tcp_reaches(&n1p1, &n2p1_ip).then_some(())
    });
    assert!(!tcp_reaches(&n1p2, &n2p1_ip), "n1-p2 is not allowed");
    assert!(
        !lab.ping(&n1p1, &n2p1_ip, 1),
        "ICMP is not allowed by a TCP port rule"
    );
    let (allowed, verdict) = lab.policy_check(2, "lab/n1-p1", "lab/n2-p1", "8080/tcp");
    assert!(allowed, "{verdict}");
    assert!(verdict.contains("lab/allow-http"), "{verdict}");
    drop(servers);

    // Deleting the policies opens n2-p1 again.
    std::fs::remove_file("/run/wtpol/policy/deny.yaml").unwrap();
    std::fs::remove_file("/run/wtpol/policy/allow.yaml").unwrap();
    wait_for(Duration::from_secs(15), "the policies to go away", || {
        lab.ping(&n1p1, &n2p1_ip, 1).then_some(())
    });
}

/// Node `k`'s `policy_ingress` drops from its peers, and the rule set version in force.
fn ingress_drops_and_version(lab: &Lab, k: usize) -> Option<(u64, u64)> {
    let status = lab.status(k)?;
    let datapath = &status["datapath"];
    let drops = datapath["peers"]
        .as_array()?
        .iter()
        .filter_map(|p| p["drops"]["policy_ingress"].as_u64())
        .sum();
    Some((drops, datapath["policy"]["version"].as_u64()?))
}

#[test]
fn revoking_ingress_stops_an_established_stream_while_the_server_keeps_sending() {
    let lab = Lab::up("wtrev", 2);
    lab.wait_for_mesh(Duration::from_secs(60));
    let (n1p1, _) = lab.pods(1)[0].clone();
    let (n2p1, n2p1_ip) = lab.pods(2)[0].clone();
    // n1-p1 streams to n2-p1 and n2-p1 streams back on the same connection: n2-p1's packets
    // leave through weft at n2 all the time.
    let duplex = Duplex::start(
        &n2p1,
        &n2p1_ip,
        9100,
        &n1p1,
        format!("/run/{}/duplex-progress", lab.name).into(),
    );
    wait_for(Duration::from_secs(15), "the stream to flow", || {
        (duplex.received()? > 4096).then_some(())
    });
    let (drops_before, version_before) = ingress_drops_and_version(&lab, 2).unwrap();

    write_policy(&lab, "deny.yaml", DENY_N2_P1);
    wait_for(Duration::from_secs(15), "the deny policy to apply", || {
        let (_, version) = ingress_drops_and_version(&lab, 2)?;
        (version > version_before).then_some(())
    });
    let applied = Instant::now();

    // Within a few seconds the server receives nothing more, for good.
    let quiet = Duration::from_secs(2);
    let (mut last, mut since) = (duplex.received().unwrap(), Instant::now());
    while since.elapsed() < quiet {
        assert!(
            applied.elapsed() < Duration::from_secs(8),
            "the stream still carried data {:?} after the policy was applied ({last} bytes)",
            applied.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
        let now = duplex.received().unwrap();
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        duplex.received().unwrap(),
        last,
        "the revoked stream came back"
    );

    let (drops, _) = ingress_drops_and_version(&lab, 2).unwrap();
    assert!(drops > drops_before, "the denied packets were not counted");
    let policy = lab.status(2).unwrap()["datapath"]["policy"].clone();
    assert!(
        policy["denied"]["lab/n2-p1"]["ingress"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "denials are not counted per Pod: {policy}"
    );
}

/// A UDP responder in netns `ns` on port 7000 that answers every datagram after `delay_secs`.
fn slow_udp_responder(ns: &str, delay_secs: f64) -> std::process::Child {
    let script = format!(
        "import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('0.0.0.0', 7000))\nwhile True:\n    data, peer = s.recvfrom(64)\n    time.sleep({delay_secs})\n    s.sendto(data, peer)\n"
    );
    std::process::Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", &script])
        .spawn()
        .unwrap()
}

/// Sends one datagram from netns `from` to `to`:7000 and waits up to 5 s for the answer.
fn udp_exchange(from: &str, to: &str) -> bool {
    let script = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.settimeout(5)\ns.sendto(b'weft', ('{to}', 7000))\ntry:\n    print(s.recv(64).decode())\nexcept socket.timeout:\n    print('timeout')\n"
    );
    let out = run("ip", &["netns", "exec", from, "python3", "-c", &script]);
    String::from_utf8_lossy(&out.stdout).trim() == "weft"
}

/// `count` new UDP flows from netns `from` to `to`:9, 5 ms apart.
fn udp_flood(from: &str, to: &str, count: u16) -> std::process::Output {
    let flood = format!(
        "import socket, time\nfor port in range(20000, {}):\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n    s.bind(('0.0.0.0', port))\n    s.sendto(b'x', ('{to}', 9))\n    s.close()\n    time.sleep(0.005)\n",
        20000 + count
    );
    run("ip", &["netns", "exec", from, "python3", "-c", &flood])
}

#[test]
fn a_full_conntrack_table_evicts_and_judges_the_evicted_flows_next_packet_as_new() {
    // A tiny table: 8 flows.
    let lab = Lab::up_with("wtct", 2, "--conntrack-max 8");
    lab.wait_for_mesh(Duration::from_secs(60));
    let (n1p1, _) = lab.pods(1)[0].clone();
    let (n1p2, n1p2_ip) = lab.pods(1)[1].clone();
    let (n2p1, n2p1_ip) = lab.pods(2)[0].clone();
    let (_, n2p2_ip) = lab.pods(2)[1].clone();
    // n2-p1 accepts only n1-p1: n1-p2's packets reach it only as replies to flows n2-p1 opened.
    write_policy(
        &lab,
        "only-n1-p1.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: only-n1-p1, namespace: lab}\nspec:\n  podSelector: {matchLabels: {node: n2, pod: p1}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {node: n1, pod: p1}}}]\n",
    );
    wait_for(Duration::from_secs(15), "the policy to apply", || {
        let status = lab.status(2)?;
        (status["datapath"]["policy"]["version"].as_u64()? >= 2).then_some(())
    });
    let (allowed, verdict) = lab.policy_check(2, "lab/n1-p2", "lab/n2-p1", "7000/udp");
    assert!(!allowed, "{verdict}");
    let _responder = Servers(vec![slow_udp_responder(&n1p2, 2.0)]);
    wait_for(Duration::from_secs(10), "the UDP responder", || {
        let sockets = run(
            "ip",
            &["netns", "exec", &n1p2, "ss", "-Hlun", "sport = :7000"],
        );
        (!sockets.stdout.is_empty()).then_some(())
    });
    let counters = || {
        let status = lab.status(2).unwrap();
        let datapath = &status["datapath"];
        (
            datapath["conntrackEvictions"].as_u64().unwrap(),
            datapath["policy"]["denied"]["lab/n2-p1"]["ingress"]
                .as_u64()
                .unwrap_or(0),
        )
    };

    // Tracked, the reply comes back 2 s later although n2-p1's ingress is isolated.
    assert!(
        udp_exchange(&n2p1, &n1p2_ip),
        "the reply to a flow n2-p1 opened was dropped"
    );
    let (evictions_before, denied_before) = counters();

    // The same while 300 new flows to n2-p2 overflow the table: the flow n2-p1 opened is
    // evicted before the reply comes, which is then judged as new, and denied. Meanwhile
    // n1-p1's ping to n2-p1, evicted too, is allowed by policy on its own and loses nothing.
    let victim = {
        let (n2p1, n1p2_ip) = (n2p1.clone(), n1p2_ip.clone());
        std::thread::spawn(move || udp_exchange(&n2p1, &n1p2_ip))
    };
    let flooder = {
        let n1p2 = n1p2.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            udp_flood(&n1p2, &n2p2_ip, 300)
        })
    };
    let ping = run(
        "ip",
        &[
            "netns", "exec", &n1p1, "ping", "-c", "20", "-i", "0.1", "-W", "1", &n2p1_ip,
        ],
    );
    let flood = flooder.join().unwrap();
    assert!(
        flood.status.success(),
        "{}",
        String::from_utf8_lossy(&flood.stderr)
    );
    assert!(
        !victim.join().unwrap(),
        "the reply came through although its evicted flow is denied as a new one"
    );
    let summary = String::from_utf8_lossy(&ping.stdout).to_string();
    assert!(
        summary.contains(" 0% packet loss"),
        "a flow policy allows lost packets: {summary}"
    );

    let (evictions, denied) = wait_for(Duration::from_secs(5), "the counters", || {
        let (evictions, denied) = counters();
        (evictions > evictions_before && denied > denied_before).then_some((evictions, denied))
    });
    println!("evictions {evictions_before} -> {evictions}, denied {denied_before} -> {denied}");
    let status = lab.status(2).unwrap();
    assert!(
        status["datapath"]["conntrackFlows"].as_u64().unwrap() <= 8,
        "{}",
        status["datapath"]
    );
}

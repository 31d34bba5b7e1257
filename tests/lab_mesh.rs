//! The mesh control plane in a real lab: network namespaces, BIRD 2 over iBGP, Pods attached
//! with the real ptp + host-local CNI plugins, one `weft agent` per node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{Lab, wait_for};

const CONVERGE: Duration = Duration::from_secs(60);

fn address(k: usize) -> String {
    format!("198.18.0.{k}")
}

/// Node `k`'s peers, if they are exactly the other nodes, each with allowed IPs equal to the
/// blocks BIRD installed via that node.
fn peers_match_bgp(lab: &Lab, k: usize) -> Option<BTreeMap<String, BTreeSet<String>>> {
    let peers: BTreeMap<_, _> = lab.peers(k)?.into_iter().collect();
    let expected_names: BTreeSet<String> = (1..=lab.nodes)
        .filter(|j| *j != k)
        .map(|j| format!("n{j}"))
        .collect();
    if peers.keys().cloned().collect::<BTreeSet<_>>() != expected_names {
        return None;
    }
    for j in (1..=lab.nodes).filter(|j| *j != k) {
        let learned = lab.bird_routes_via(k, &address(j));
        if learned.is_empty() || peers.get(&format!("n{j}")) != Some(&learned) {
            return None;
        }
    }
    Some(peers)
}

#[test]
fn every_agent_peers_with_exactly_the_other_nodes_on_their_bgp_blocks() {
    let lab = Lab::up("wtmesh", 3);
    for k in 1..=3 {
        let peers = wait_for(
            CONVERGE,
            &format!("n{k} to peer with the other two nodes"),
            || peers_match_bgp(&lab, k),
        );
        for (name, ips) in &peers {
            let j: usize = name.trim_start_matches('n').parse().unwrap();
            assert_eq!(ips, &BTreeSet::from([format!("10.244.{j}.0/24")]));
        }
        let status = lab.status(k).unwrap();
        assert_eq!(status["node"]["name"], format!("n{k}"));
        assert_eq!(status["synced"]["registry"], true);
        assert_eq!(status["synced"]["routes"], true);
        // Each peer's key is the one that node published.
        for peer in status["peers"].as_array().unwrap() {
            let name = peer["name"].as_str().unwrap();
            let j: usize = name.trim_start_matches('n').parse().unwrap();
            let theirs = lab.status(j).unwrap();
            assert_eq!(peer["publicKey"], theirs["node"]["record"]["publicKey"]);
            assert_eq!(peer["endpoint"], format!("198.18.0.{j}:51820"));
        }
    }

    // `up` again is a no-op: same agents, same keys, same mesh.
    let keys_before: Vec<_> = (1..=3)
        .map(|k| lab.status(k).unwrap()["node"]["record"].clone())
        .collect();
    lab.script(&["up", "3"]);
    for k in 1..=3 {
        assert_eq!(lab.status(k).unwrap()["node"]["record"], keys_before[k - 1]);
        assert!(
            peers_match_bgp(&lab, k).is_some(),
            "n{k} lost its peers after a second up"
        );
    }

    // `down` leaves no namespace, process or file behind.
    lab.script(&["down"]);
    let namespaces = common::run_ok("ip", &["netns", "list"]);
    assert!(
        !namespaces.contains("wtmesh-"),
        "namespaces left: {namespaces}"
    );
    assert!(!std::path::Path::new("/run/wtmesh").exists());
    let processes = common::run_ok("ps", &["-eo", "args"]);
    assert!(
        !processes.contains("/run/wtmesh/"),
        "processes left: {processes}"
    );
}

#[test]
fn stopping_a_nodes_bird_removes_it_as_a_peer_and_starting_it_brings_it_back() {
    let lab = Lab::up("wtbird", 3);
    for k in 1..=3 {
        wait_for(CONVERGE, &format!("n{k} to converge"), || {
            peers_match_bgp(&lab, k)
        });
    }
    lab.script(&["stop-bird", "2"]);
    for k in [1, 3] {
        wait_for(Duration::from_secs(15), &format!("n{k} to drop n2"), || {
            let peers = lab.peers(k)?;
            let names: BTreeSet<_> = peers.into_iter().map(|(n, _)| n).collect();
            (names
                == BTreeSet::from(["n1".to_string(), "n3".to_string()])
                    .into_iter()
                    .filter(|n| *n != format!("n{k}"))
                    .collect())
            .then_some(())
        });
        // n2's record is still there; only its route is gone, and status says so.
        let status = lab.status(k).unwrap();
        let unrouted = status["rejected"].as_array().unwrap().iter().any(|r| {
            r["node"] == "n2"
                && r["prefix"] == "10.244.2.0/24"
                && r["reason"] == "claimed_not_routed"
        });
        assert!(
            unrouted,
            "n{k} does not report n2's block as unrouted: {status}"
        );
    }
    lab.script(&["start-bird", "2"]);
    for k in 1..=3 {
        wait_for(CONVERGE, &format!("n{k} to peer with n2 again"), || {
            peers_match_bgp(&lab, k)
        });
    }
}

fn write_registry_file(lab: &Lab, file: &str, contents: &str) {
    std::fs::write(lab.registry_dir().join(file), contents).unwrap();
}

fn rejections(lab: &Lab, k: usize) -> Vec<serde_json::Value> {
    lab.status(k).unwrap()["rejected"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn bad_records_are_rejected_with_visible_reasons_and_change_nothing_else() {
    let lab = Lab::up("wtrej", 3);
    for k in 1..=3 {
        wait_for(CONVERGE, &format!("n{k} to converge"), || {
            peers_match_bgp(&lab, k)
        });
    }
    let before_n3 = lab
        .peers(1)
        .unwrap()
        .into_iter()
        .find(|(n, _)| n == "n3")
        .unwrap();

    // A garbage file and a record with a corrupt public key.
    write_registry_file(&lab, "garbage.json", "\u{0}\u{1}this is not json{{{");
    write_registry_file(
        &lab,
        "badkey.json",
        r#"{"name":"badkey","addresses":["198.18.0.98"],"record":{"v":1,"publicKey":"AAAA!!notbase64","blocks":["10.244.98.0/24"]}}"#,
    );
    let status = wait_for(
        Duration::from_secs(15),
        "n1 to report the bad records",
        || {
            let status = lab.status(1)?;
            let bad_key = status["rejected"].as_array()?.iter().any(|r| {
                r["kind"] == "record" && r["node"] == "badkey" && r["reason"] == "bad_record"
            });
            let garbage = status["skippedRecords"].as_array()?.iter().any(|s| {
                s["source"]
                    .as_str()
                    .is_some_and(|p| p.ends_with("garbage.json"))
            });
            (bad_key && garbage).then_some(status)
        },
    );
    let message = status["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["node"] == "badkey")
        .unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("publicKey"),
        "message does not name the bad field: {message}"
    );
    // Nothing else changed: both real peers are still there with the same allowed IPs.
    for k in 1..=3 {
        assert!(
            peers_match_bgp(&lab, k).is_some(),
            "n{k} lost a peer: {:?}",
            lab.status(k)
        );
    }

    // A record that claims part of n2's block: n2's block becomes contested and is given to no
    // one (fail closed); the claim is reported on every node; n3 is untouched.
    // (With a key of its own: a record sharing another node's key is distrusted outright.)
    let rogue_key = serde_json::Value::from(
        weft_keys::PrivateKey::from_bytes([99; 32])
            .public_key()
            .to_string(),
    );
    write_registry_file(
        &lab,
        "rogue.json",
        &format!(
            r#"{{"name":"rogue","addresses":["198.18.0.99"],"record":{{"v":1,"publicKey":{rogue_key},"blocks":["10.244.2.0/25"]}}}}"#
        ),
    );
    wait_for(
        Duration::from_secs(15),
        "n1 to reject the overlapping claim",
        || {
            let rejected = rejections(&lab, 1);
            let rogue = rejected.iter().any(|r| {
                r["kind"] == "block"
                    && r["node"] == "rogue"
                    && r["prefix"] == "10.244.2.0/25"
                    && r["reason"] == "overlapping_claims"
            });
            let route = rejected.iter().any(|r| {
                r["kind"] == "route"
                    && r["prefix"] == "10.244.2.0/24"
                    && r["reason"] == "overlapping_claims"
            });
            let peers = lab.peers(1)?;
            let no_n2 = peers.iter().all(|(n, _)| n != "n2" && n != "rogue");
            (rogue && route && no_n2).then_some(())
        },
    );
    let n3_now = lab
        .peers(1)
        .unwrap()
        .into_iter()
        .find(|(n, _)| n == "n3")
        .unwrap();
    assert_eq!(n3_now, before_n3);

    // Removing the rogue claim gives n2 back; the garbage stays skipped and harmless.
    std::fs::remove_file(lab.registry_dir().join("rogue.json")).unwrap();
    for k in 1..=3 {
        wait_for(CONVERGE, &format!("n{k} to peer with n2 again"), || {
            peers_match_bgp(&lab, k)
        });
    }
}

#[test]
fn an_agent_restores_its_own_record_when_it_is_overwritten() {
    let lab = Lab::up("wtheal", 2);
    for k in 1..=2 {
        wait_for(CONVERGE, &format!("n{k} to converge"), || {
            peers_match_bgp(&lab, k)
        });
    }
    let path = lab.registry_dir().join("n2.json");
    std::fs::write(
        &path,
        r#"{"name":"n2","addresses":["198.18.0.2"],"record":{"v":1,"publicKey":"broken","blocks":[]}}"#,
    )
    .unwrap();
    wait_for(
        Duration::from_secs(30),
        "n2 to re-publish its record",
        || {
            let text = std::fs::read_to_string(&path).ok()?;
            text.contains("10.244.2.0/24").then_some(())
        },
    );
    wait_for(CONVERGE, "n1 to peer with n2 again", || {
        peers_match_bgp(&lab, 1)
    });
}

//! Hitless key rotation in the real lab (`weft key rotate`): a node announces its next key,
//! peers move over while traffic keeps flowing, the old key is retired and gone from disk; a
//! rotation survives a killed agent, and a peer that was away during a rotation reaches the
//! rotated node when it comes back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::stream::Stream;
use common::{
    BackgroundPing, Lab, files_containing_secret, output_text, run, run_ok, wait_for, weft_bin,
};
use serde_json::Value;

const CONVERGE: Duration = Duration::from_secs(60);
/// How long a control-plane change (a record, a peer key) gets to reach the other agents.
const PROPAGATE: Duration = Duration::from_secs(20);
/// The background ping: 4500 packets 10 ms apart (100 per second, so at least 45 s in all; a
/// loaded machine only makes it last longer), started 2 s before the rotation. It must still
/// be running when the rotation has completed and then send its whole count without a loss:
/// so it covered the rotation (a few seconds, even with a node restarted in the middle) and
/// the time after the old key is retired. Its rate is not asserted (a timing on shared cores).
const PING_COUNT: u32 = 4500;
const PING_INTERVAL: &str = "0.01";
const LEAD_IN: Duration = Duration::from_secs(2);
const STREAM_PORT: u16 = 9000;
/// The stream client stops by itself after this long if the test never stops it.
const STREAM_MAX_SECS: u32 = 300;
/// The longest a TCP stream may go without data while a key rotates.
const MAX_STREAM_GAP: Duration = Duration::from_secs(1);

/// Every node peers with every other node, and the first Pods of n1 and every other node ping
/// each other both ways.
fn converge(lab: &Lab) {
    lab.wait_for_mesh(CONVERGE);
    let (n1_pod, n1_ip) = lab.pod(1, 1);
    for k in 2..=lab.nodes {
        let (pod, ip) = lab.pod(k, 1);
        wait_for(CONVERGE, &format!("Pods of n1 and n{k} to ping"), || {
            (lab.ping(&n1_pod, &ip, 1) && lab.ping(&pod, &n1_ip, 1)).then_some(())
        });
    }
}

/// A node's key before a rotation.
struct KeyBefore {
    public: String,
    /// The base64 private key, as `private.key` held it.
    private: String,
    epoch: u64,
    record_epoch: u64,
}

fn key_before(lab: &Lab, k: usize) -> KeyBefore {
    let status = wait_for(
        Duration::from_secs(10),
        &format!("n{k}'s key status"),
        || lab.key_status(k),
    );
    assert!(status["rotation"].is_null(), "n{k} is rotating: {status}");
    assert!(status["nextPublicKey"].is_null(), "{status}");
    let public = status["publicKey"].as_str().unwrap().to_string();
    assert_eq!(public.len(), 44, "not a base64 x25519 key: {status}");
    let private = std::fs::read_to_string(lab.key_dir(k).join("private.key"))
        .unwrap()
        .trim()
        .to_string();
    assert!(!private.is_empty());
    let record = lab.registry_record(k).unwrap();
    assert_eq!(record["publicKey"], public.as_str(), "{record}");
    KeyBefore {
        public,
        private,
        epoch: status["keyEpoch"].as_u64().unwrap(),
        record_epoch: record["keyEpoch"].as_u64().unwrap_or(0),
    }
}

fn absent(value: &Value) -> bool {
    value.is_null()
}

/// The public key in `weft key show --key-dir` of node `k`: what `private.key` holds now.
fn key_on_disk(lab: &Lab, k: usize) -> String {
    run_ok(
        weft_bin(),
        &["key", "show", "--key-dir", lab.key_dir(k).to_str().unwrap()],
    )
    .trim()
    .to_string()
}

/// After a completed rotation of node `k` away from `before`: the agent, the key directory,
/// the registry, `weft status` and `wg show` on every node hold only the new key. Returns it.
fn assert_rotated(lab: &Lab, k: usize, before: &KeyBefore, reason: &str) -> String {
    let status = lab.key_status(k).unwrap();
    let new = status["publicKey"].as_str().unwrap().to_string();
    assert_ne!(
        new, before.public,
        "n{k}'s public key did not change: {status}"
    );
    assert!(absent(&status["nextPublicKey"]), "n{k}: {status}");
    assert!(
        absent(&status["rotation"]),
        "n{k} is still rotating: {status}"
    );
    assert!(
        status["keyEpoch"].as_u64().unwrap() > before.epoch,
        "n{k}'s key epoch did not increase: {status}"
    );
    let last = &status["lastRotation"];
    assert_eq!(last["reason"], reason, "n{k}: {status}");
    assert!(
        last["epoch"].as_u64().unwrap() > before.epoch,
        "n{k}: {status}"
    );
    if reason == "all_peers_moved" {
        assert_eq!(
            last["unmovedPeers"],
            serde_json::json!([]),
            "n{k}: {status}"
        );
    }
    assert!(status["lastError"].is_null(), "n{k}: {status}");

    // The key directory: the new key is current, no next key, the old private key is gone.
    let dir = lab.key_dir(k);
    assert_eq!(key_on_disk(lab, k), new, "n{k}'s private.key");
    assert!(
        !dir.join("next.key").exists(),
        "n{k} still has a next.key after the rotation"
    );
    let holding = files_containing_secret(&dir, &before.private);
    assert!(
        holding.is_empty(),
        "n{k}'s old private key is still on disk in {holding:?}"
    );

    // The registry and n{k}'s own status publish only the new key.
    wait_for(
        PROPAGATE,
        &format!("n{k}'s record to hold only the new key"),
        || {
            let record = lab.registry_record(k)?;
            (record["publicKey"] == new.as_str()
                && record.get("nextPublicKey").is_none_or(absent)
                && record["keyEpoch"].as_u64().unwrap_or(0) > before.record_epoch)
                .then_some(())
        },
    );
    let own = lab.status(k).unwrap()["node"]["record"].clone();
    assert_eq!(own["publicKey"], new.as_str(), "n{k}'s status: {own}");
    assert!(own.get("nextPublicKey").is_none_or(absent), "{own}");
    assert_eq!(
        lab.wg_show(k, "public-key"),
        vec![new.clone()],
        "wg show on n{k}"
    );

    // Every other node that runs an agent knows n{k} by its new key only.
    let name = format!("n{k}");
    for j in (1..=lab.nodes).filter(|j| *j != k) {
        wait_for(
            PROPAGATE,
            &format!("n{j} to hold {name}'s new key and not the old one"),
            || {
                let in_status = lab.peer_key(j, &name)? == new;
                let peers = lab.wg_show(j, "peers");
                let in_wg = peers.contains(&new) && !peers.contains(&before.public);
                (in_status && in_wg).then_some(())
            },
        );
    }
    new
}

/// Ping from a Pod on n1 to a Pod on n2 and a TCP stream from a Pod on n2 to a Pod on n1, both
/// running by the time this returns.
struct Traffic {
    ping: BackgroundPing,
    stream: Stream,
}

fn start_traffic(lab: &Lab) -> Traffic {
    let (ping_from, _) = lab.pod(1, 1);
    let (_, ping_to) = lab.pod(2, 1);
    let (server_ns, server_ip) = lab.pod(1, 2);
    let (client_ns, _) = lab.pod(2, 2);
    let stream = Stream::start(
        &server_ns,
        &server_ip,
        STREAM_PORT,
        &client_ns,
        STREAM_MAX_SECS,
    );
    let mut ping = BackgroundPing::start(&ping_from, &ping_to, PING_COUNT, PING_INTERVAL);
    std::thread::sleep(LEAD_IN);
    assert!(ping.running(), "the ping stopped before the rotation began");
    Traffic { ping, stream }
}

impl Traffic {
    /// Called right after the rotation completed: the ping must still be running (it was
    /// running before the rotation began, so it covers the whole rotation); then lets it send
    /// its whole count and stops the stream. Neither may lose anything.
    fn finish(mut self) {
        assert!(
            self.ping.running(),
            "the rotation outlasted the {PING_COUNT}-packet ping, so the ping did not cover it"
        );
        let ping = self.ping.finish();
        let stream = self.stream.finish();
        println!("ping: {}\nstream: {stream:?}", ping.summary());
        assert_eq!(
            ping.transmitted,
            u64::from(PING_COUNT),
            "the ping stopped before sending its whole count: {}",
            ping.summary()
        );
        assert!(
            ping.lossless(),
            "ping lost packets during the rotation: {}",
            ping.summary()
        );
        assert!(stream.bytes_sent > 0, "the stream sent nothing: {stream:?}");
        assert_eq!(
            stream.bytes_received, stream.bytes_sent,
            "the stream lost data: {stream:?}"
        );
        assert!(
            stream.max_gap < MAX_STREAM_GAP,
            "the TCP stream stalled for {:?} during the rotation: {stream:?}",
            stream.max_gap
        );
    }
}

fn rotate_ok(lab: &Lab, k: usize, extra: &[&str]) -> String {
    let out = lab.key_rotate(k, extra);
    assert!(
        out.status.success(),
        "weft key rotate {extra:?} on n{k} failed: {}",
        output_text(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !stdout.trim().is_empty(),
        "weft key rotate printed nothing: {}",
        output_text(&out)
    );
    stdout
}

#[test]
fn one_node_rotates_without_losing_a_ping_or_stalling_tcp() {
    let lab = Lab::up("wtrot1", 2);
    converge(&lab);
    let n1 = key_before(&lab, 1);
    let n2 = key_before(&lab, 2);

    let traffic = start_traffic(&lab);
    rotate_ok(&lab, 1, &["--wait", "--grace", "60s"]);
    traffic.finish();

    assert_rotated(&lab, 1, &n1, "all_peers_moved");
    // Only n1 rotated.
    let n2_now = lab.key_status(2).unwrap();
    assert_eq!(n2_now["publicKey"], n2.public.as_str(), "{n2_now}");
    assert_eq!(n2_now["keyEpoch"], n2.epoch, "{n2_now}");
    assert_eq!(key_on_disk(&lab, 2), n2.public);
}

#[test]
fn both_nodes_rotating_at_once_lose_nothing() {
    // Three nodes, n3's agent stopped: neither rotation can complete before n3 is back, so
    // both are provably open at the same time while n1 and n2 carry traffic.
    let lab = Lab::up("wtrot2", 3);
    converge(&lab);
    let before = [key_before(&lab, 1), key_before(&lab, 2)];
    lab.script(&["stop-agent", "3"]);

    let traffic = start_traffic(&lab);
    rotate_ok(&lab, 1, &["--grace", "120s"]);
    rotate_ok(&lab, 2, &["--grace", "120s"]);
    for k in 1..=2 {
        let record = lab.registry_record(k).unwrap();
        assert!(
            record["nextPublicKey"].is_string(),
            "n{k} does not announce a next key: {record}"
        );
    }
    // n1 and n2 move to each other's next keys while both rotations are open.
    for (k, other) in [(1, "n2"), (2, "n1")] {
        wait_for(PROPAGATE, &format!("n{k} to see {other} move"), || {
            let status = lab.key_status(k)?;
            let pending = status["rotation"]["pendingPeers"].as_array()?.clone();
            let moved = !pending.iter().any(|p| p == other) && pending.iter().any(|p| p == "n3");
            moved.then_some(())
        });
    }
    lab.script(&["start-agent", "3"]);
    for k in 1..=2 {
        wait_for(PROPAGATE, &format!("n{k}'s rotation to complete"), || {
            lab.key_status(k)?["rotation"].is_null().then_some(())
        });
    }
    traffic.finish();

    let new = [
        assert_rotated(&lab, 1, &before[0], "all_peers_moved"),
        assert_rotated(&lab, 2, &before[1], "all_peers_moved"),
    ];
    assert_ne!(new[0], new[1]);
}

#[test]
fn agent_killed_mid_rotation_resumes_and_completes() {
    let lab = Lab::up("wtrkill", 3);
    converge(&lab);
    let before = key_before(&lab, 1);
    // With n3's agent gone, n3 cannot move to n1's next key: the rotation stays open.
    lab.script(&["stop-agent", "3"]);

    let printed = rotate_ok(&lab, 1, &["--grace", "120s"]);
    assert_eq!(
        printed.trim().lines().count(),
        1,
        "key rotate without --wait prints one line: {printed:?}"
    );
    // Announced: next.key on disk and the record carries the next key and a higher epoch.
    let dir = lab.key_dir(1);
    assert!(
        dir.join("next.key").exists(),
        "no next.key after announcing"
    );
    let record = lab.registry_record(1).unwrap();
    let announced = record["nextPublicKey"]
        .as_str()
        .unwrap_or_else(|| panic!("n1's record has no nextPublicKey: {record}"))
        .to_string();
    assert_ne!(announced, before.public);
    assert_eq!(record["publicKey"], before.public.as_str(), "{record}");
    assert!(
        record["keyEpoch"].as_u64().unwrap_or(0) > before.record_epoch,
        "{record}"
    );
    let status = lab.key_status(1).unwrap();
    assert_eq!(status["nextPublicKey"], announced.as_str(), "{status}");
    let rotation = status["rotation"].clone();
    assert!(rotation.is_object(), "n1 is not rotating: {status}");
    let epoch = rotation["epoch"].as_u64().unwrap();
    assert!(epoch > before.epoch, "{status}");
    assert_eq!(rotation["graceSecs"], 120, "{status}");
    assert!(
        rotation["pendingPeers"]
            .as_array()
            .unwrap()
            .contains(&Value::from("n3")),
        "n3 is not pending: {status}"
    );

    // A second rotation while this one is open is refused and changes nothing.
    let again = lab.key_rotate(1, &["--grace", "120s"]);
    assert!(!again.status.success(), "{}", output_text(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already in progress"),
        "{}",
        output_text(&again)
    );
    let status = lab.key_status(1).unwrap();
    assert_eq!(status["nextPublicKey"], announced.as_str(), "{status}");
    assert_eq!(status["rotation"]["epoch"], epoch, "{status}");

    let pid = lab.agent_pid(1);
    run_ok("kill", &["-KILL", &pid]);
    wait_for(Duration::from_secs(10), "n1's agent to die", || {
        (!run("kill", &["-0", &pid]).status.success()).then_some(())
    });

    // The restarted agent resumes the same rotation: same next key, same epoch, still open.
    lab.script(&["start-agent", "1"]);
    let status = wait_for(
        Duration::from_secs(20),
        "n1's key status after the restart",
        || lab.key_status(1),
    );
    assert_eq!(status["publicKey"], before.public.as_str(), "{status}");
    assert_eq!(status["nextPublicKey"], announced.as_str(), "{status}");
    assert_eq!(status["rotation"]["epoch"], epoch, "{status}");
    assert!(dir.join("next.key").exists());

    lab.script(&["start-agent", "3"]);
    let (n1_pod, n1_ip) = lab.pod(1, 1);
    for k in [2, 3] {
        let (pod, ip) = lab.pod(k, 1);
        wait_for(
            CONVERGE,
            &format!("Pods of n1 and n{k} to ping again"),
            || (lab.ping(&n1_pod, &ip, 1) && lab.ping(&pod, &n1_ip, 1)).then_some(()),
        );
    }
    wait_for(CONVERGE, "n1's rotation to complete", || {
        let status = lab.key_status(1)?;
        status["rotation"].is_null().then_some(())
    });
    let new = assert_rotated(&lab, 1, &before, "all_peers_moved");
    assert_eq!(new, announced, "n1 did not rotate to the key it announced");
    let status = lab.key_status(1).unwrap();
    assert_eq!(status["lastRotation"]["epoch"], epoch, "{status}");
    // Traffic still flows on the new key.
    for k in [2, 3] {
        let (pod, ip) = lab.pod(k, 1);
        assert!(lab.ping(&n1_pod, &ip, 5), "n1 cannot reach n{k}'s Pod");
        assert!(lab.ping(&pod, &n1_ip, 5), "n{k} cannot reach n1's Pod");
    }
}

#[test]
fn a_peer_stopped_during_rotation_reaches_the_rotated_node_when_back() {
    let lab = Lab::up("wtrgrace", 3);
    converge(&lab);
    let before = key_before(&lab, 1);
    lab.script(&["stop-agent", "3"]);

    rotate_ok(&lab, 1, &["--wait", "--grace", "5s"]);
    let status = lab.key_status(1).unwrap();
    assert!(
        status["rotation"].is_null(),
        "n1 is still rotating: {status}"
    );
    assert_eq!(status["lastRotation"]["reason"], "grace_ended", "{status}");
    let new = status["publicKey"].as_str().unwrap().to_string();
    assert_ne!(new, before.public, "{status}");
    let unmoved = status["lastRotation"]["unmovedPeers"]
        .as_array()
        .unwrap_or_else(|| panic!("no lastRotation.unmovedPeers: {status}"));
    assert!(
        unmoved.contains(&Value::from("n3")),
        "n3 is not listed as unmoved: {status}"
    );

    // n3's agent is down, so only n2 can be checked for the new key now.
    wait_for(PROPAGATE, "n2 to hold n1's new key", || {
        (lab.peer_key(2, "n1")? == new).then_some(())
    });
    let (n1_pod, n1_ip) = lab.pod(1, 1);
    let (n2_pod, n2_ip) = lab.pod(2, 1);
    assert!(
        lab.ping(&n2_pod, &n1_ip, 5),
        "n2 cannot reach n1 after the rotation"
    );
    assert!(
        lab.ping(&n1_pod, &n2_ip, 5),
        "n1 cannot reach n2 after the rotation"
    );

    lab.script(&["start-agent", "3"]);
    let rotated = assert_rotated(&lab, 1, &before, "grace_ended");
    assert_eq!(rotated, new);
    let (n3_pod, n3_ip) = lab.pod(3, 1);
    wait_for(CONVERGE, "n3's Pod to reach n1's Pod", || {
        lab.ping(&n3_pod, &n1_ip, 1).then_some(())
    });
    assert!(lab.ping(&n1_pod, &n3_ip, 5), "n1 cannot reach n3's Pod");
    assert_eq!(lab.peer_key(3, "n1").as_deref(), Some(new.as_str()));
}

#[test]
fn scheduled_rotations_run_on_their_own_without_losing_traffic() {
    // Every key rotates once it is 10 s old: both nodes, on their own, often at once.
    let lab = Lab::up_with("wtrsched", 2, "--key-rotation-interval 10s");
    converge(&lab);
    let epoch = |k: usize| {
        wait_for(
            Duration::from_secs(10),
            &format!("n{k}'s key status"),
            || lab.key_status(k)?["keyEpoch"].as_u64(),
        )
    };
    let start = [epoch(1), epoch(2)];

    let traffic = start_traffic(&lab);
    for k in 1..=2 {
        wait_for(
            Duration::from_secs(25),
            &format!("n{k} to complete a scheduled rotation"),
            || {
                let status = lab.key_status(k)?;
                let completed = status["lastRotation"]["epoch"].as_u64()?;
                (completed > start[k - 1]).then_some(())
            },
        );
    }
    traffic.finish();

    for k in 1..=2 {
        let status = wait_for(PROPAGATE, &format!("n{k} between rotations"), || {
            let status = lab.key_status(k)?;
            status["rotation"].is_null().then_some(status)
        });
        // The next one is due when the current key is 10 s old, counted from its completion.
        let since = status["currentSince"].as_u64().unwrap();
        assert_eq!(
            status["nextScheduledRotation"].as_u64(),
            Some(since + 10),
            "{status}"
        );
        assert_eq!(
            status["lastRotation"]["completedAt"].as_u64(),
            Some(since),
            "{status}"
        );
        assert!(status["lastError"].is_null(), "{status}");
        let other = 3 - k;
        // The peer holds the node's current key (or is moving to its next one).
        wait_for(PROPAGATE, &format!("n{other} to hold n{k}'s key"), || {
            let public = lab.key_status(k)?["publicKey"].as_str()?.to_string();
            let record = lab.registry_record(k)?;
            let peers = lab.status(other)?["peers"].as_array()?.clone();
            let peer = peers.iter().find(|p| p["name"] == format!("n{k}"))?;
            (record["publicKey"] == public.as_str() && peer["publicKey"] == public.as_str())
                .then_some(())
        });
    }
}

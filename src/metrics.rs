//! Prometheus metrics, rendered from one status snapshot per scrape (so every number agrees
//! with `weft status` at that moment). Names follow the Prometheus conventions: `weft_`
//! prefix, base units, `_total` on counters.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::policy::files::InForce;
use crate::rotation::KeyStatus;
use crate::status::Status;

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn to_i64(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

/// The metrics text exposition of `status` (with `ready` as `weft_ready`, and
/// `apply_failures`, the datapath updates that failed since start, beside the datapath's).
pub fn render(
    status: &Status,
    ready: bool,
    keys: Option<&KeyStatus>,
    apply_failures: u64,
) -> String {
    let mut registry = Registry::default();
    let gauge = |registry: &mut Registry, name: &str, help: &str, value: i64| {
        let metric = Gauge::<i64>::default();
        metric.set(value);
        registry.register(name, help, metric);
    };
    let counter = |registry: &mut Registry, name: &str, help: &str, value: u64| {
        let metric = Counter::<u64>::default();
        metric.inc_by(value);
        registry.register(name, help, metric);
    };
    gauge(
        &mut registry,
        "weft_ready",
        "1 while /readyz answers 200",
        i64::from(ready),
    );
    let synced = Family::<Labels, Gauge>::default();
    synced
        .get_or_create(&labels(&[("source", "registry")]))
        .set(i64::from(status.synced.registry));
    synced
        .get_or_create(&labels(&[("source", "routes")]))
        .set(i64::from(status.synced.routes));
    registry.register(
        "weft_synced",
        "1 once the source has been read at least once",
        synced,
    );
    gauge(
        &mut registry,
        "weft_peers",
        "WireGuard peers of the mesh",
        to_i64(status.peers.len()),
    );
    if let Some(keys) = keys {
        gauge(
            &mut registry,
            "weft_key_epoch",
            "Key epoch of this node: raised by one at every announced key rotation",
            i64::try_from(keys.key_epoch).unwrap_or(i64::MAX),
        );
        gauge(
            &mut registry,
            "weft_key_rotation_in_progress",
            "1 while this node rotates its key (nextPublicKey is published)",
            i64::from(keys.rotation.is_some()),
        );
        let rotation = keys.rotation.as_ref();
        gauge(
            &mut registry,
            "weft_key_rotation_peers_moved",
            "Peers that completed a handshake with the next key of the rotation in progress",
            to_i64(rotation.map_or(0, |r| r.peers_moved)),
        );
        gauge(
            &mut registry,
            "weft_key_rotation_peers",
            "Peers the rotation in progress waits for",
            to_i64(rotation.map_or(0, |r| r.peers_total)),
        );
    }
    gauge(
        &mut registry,
        "weft_learned_routes",
        "Kernel routes of the watched protocols",
        to_i64(status.learned_routes),
    );
    let rejections = Family::<Labels, Gauge>::default();
    for rejection in &status.rejected {
        rejections
            .get_or_create(&labels(&[
                ("kind", &rejection.kind),
                ("reason", &rejection.reason),
            ]))
            .inc();
    }
    registry.register(
        "weft_rejections",
        "Prefixes, blocks and node records currently rejected, by kind and reason",
        rejections,
    );
    gauge(
        &mut registry,
        "weft_skipped_records",
        "Registry entries that could not be read",
        to_i64(status.skipped_records.len()),
    );
    let policy_files = Family::<Labels, Gauge>::default();
    for in_force in InForce::ALL {
        let count = status
            .rejected_policy_files
            .iter()
            .filter(|f| f.in_force == in_force)
            .count();
        policy_files
            .get_or_create(&labels(&[("in_force", in_force.code())]))
            .set(to_i64(count));
    }
    registry.register(
        "weft_policy_files_rejected",
        "Policy directory files whose current content is not used, by what stands in for it",
        policy_files,
    );
    if let Some(datapath) = &status.datapath {
        let handshake = Family::<Labels, Gauge>::default();
        let rx = Family::<Labels, Counter>::default();
        let tx = Family::<Labels, Counter>::default();
        let drops = Family::<Labels, Counter>::default();
        for peer in &datapath.peers {
            let peer_label = labels(&[("peer", &peer.name)]);
            if let Some(age) = peer.handshake_age_secs {
                handshake.get_or_create(&peer_label).set(to_i64(age));
            }
            rx.get_or_create(&peer_label).inc_by(peer.rx_bytes);
            tx.get_or_create(&peer_label).inc_by(peer.tx_bytes);
            for (reason, count) in &peer.drops {
                drops
                    .get_or_create(&labels(&[("peer", &peer.name), ("reason", reason)]))
                    .inc_by(*count);
            }
        }
        for (reason, count) in &datapath.drops {
            drops
                .get_or_create(&labels(&[("peer", ""), ("reason", reason)]))
                .inc_by(*count);
        }
        registry.register(
            "weft_peer_last_handshake_age_seconds",
            "Seconds since the peer's last completed handshake",
            handshake,
        );
        registry.register(
            "weft_peer_receive_bytes",
            "Bytes received from the peer through the tunnel",
            rx,
        );
        registry.register(
            "weft_peer_transmit_bytes",
            "Bytes sent to the peer through the tunnel",
            tx,
        );
        registry.register(
            "weft_datapath_dropped_packets",
            "Packets dropped by the datapath, by peer (empty: none attributable) and reason",
            drops,
        );
        gauge(
            &mut registry,
            "weft_conntrack_flows",
            "Flows in the connection tracking table",
            to_i64(datapath.conntrack_flows),
        );
        gauge(
            &mut registry,
            "weft_conntrack_capacity_flows",
            "Capacity of the connection tracking table",
            to_i64(datapath.conntrack_capacity),
        );
        gauge(
            &mut registry,
            "weft_conntrack_revoked_flows",
            "Flows a rule set change revoked, held apart until idle for their timeout",
            to_i64(datapath.conntrack_revoked_flows),
        );
        counter(
            &mut registry,
            "weft_datapath_apply_failures",
            "Datapath updates (peers, weft's routes) and periodic kernel repairs that failed; a failed one is retried every 2 s",
            apply_failures,
        );
        counter(
            &mut registry,
            "weft_conntrack_evictions",
            "Flows evicted from a full connection tracking table",
            datapath.conntrack_evictions,
        );
        counter(
            &mut registry,
            "weft_conntrack_revoked_evictions",
            "Revoked flows evicted from a full table before their timeout",
            datapath.conntrack_revoked_evictions,
        );
        let policy = &datapath.policy;
        gauge(
            &mut registry,
            "weft_policy_rule_set_version",
            "Changes of the NetworkPolicy rule set since start",
            to_i64(policy.version),
        );
        let policies = Family::<Labels, Gauge>::default();
        policies
            .get_or_create(&labels(&[("state", "accepted")]))
            .set(to_i64(policy.policies.len()));
        policies
            .get_or_create(&labels(&[("state", "rejected")]))
            .set(to_i64(policy.rejected.len()));
        registry.register(
            "weft_network_policies",
            "NetworkPolicies accepted, or rejected (allowing nothing; from the API they still isolate the Pods they select)",
            policies,
        );
        gauge(
            &mut registry,
            "weft_policy_address_conflicts",
            "Pod addresses claimed by more than one live Pod (policy judges each as one Pod)",
            to_i64(policy.address_conflicts),
        );
        let verdicts = Family::<Labels, Counter>::default();
        for (verdict, count) in &policy.verdicts {
            verdicts
                .get_or_create(&labels(&[("verdict", verdict)]))
                .inc_by(*count);
        }
        registry.register(
            "weft_policy_verdicts",
            "Decrypted packets by NetworkPolicy outcome",
            verdicts,
        );
        let denied = Family::<Labels, Counter>::default();
        for (pod, by_direction) in &policy.denied {
            for (direction, count) in by_direction {
                denied
                    .get_or_create(&labels(&[("pod", pod), ("direction", direction)]))
                    .inc_by(*count);
            }
        }
        registry.register(
            "weft_policy_denied_packets",
            "Packets denied by NetworkPolicy, by isolated Pod and direction",
            denied,
        );
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::stats::{DatapathStatus, PeerTraffic};

    fn status() -> Status {
        let mut status: Status = serde_json::from_value(serde_json::json!({
            "version": 1,
            "node": {"name": "n1", "addresses": ["198.18.0.1"], "record": {}},
            "synced": {"registry": true, "routes": false},
            "peers": [],
            "rejected": [
                {"kind": "record", "node": "n3", "reason": "bad_key", "message": "m"},
                {"kind": "record", "node": "n4", "reason": "bad_key", "message": "m"}
            ],
            "skippedRecords": [],
            "rejectedPolicyFiles": [
                {"file": "/p/a.yaml", "reason": "r", "inForce": "last_good"},
                {"file": "/p/b.yaml", "reason": "r", "inForce": "last_good"}
            ],
            "learnedRoutes": 2,
            "datapath": null
        }))
        .unwrap();
        let mut datapath = DatapathStatus::default();
        datapath.peers.push(PeerTraffic {
            name: "n2".into(),
            handshake_age_secs: Some(7),
            rx_bytes: 100,
            tx_bytes: 200,
            drops: [("source_not_allowed".to_string(), 3)].into(),
            ..PeerTraffic::default()
        });
        datapath.drops.insert("malformed".into(), 5);
        datapath.conntrack_flows = 12;
        datapath.conntrack_capacity = 64;
        datapath.conntrack_evictions = 4;
        datapath.conntrack_revoked_flows = 2;
        datapath.conntrack_revoked_evictions = 1;
        datapath.policy.verdicts.insert("denied_ingress".into(), 9);
        datapath.policy.address_conflicts = 2;
        datapath
            .policy
            .denied
            .insert("x/a".into(), [("ingress".to_string(), 9)].into());
        status.datapath = Some(datapath);
        status
    }

    #[test]
    fn the_exposition_carries_every_family_with_its_values() {
        let keys = KeyStatus {
            public_key: "cur".into(),
            next_public_key: Some("next".into()),
            key_epoch: 4,
            current_since: 0,
            next_scheduled_rotation: None,
            rotation: Some(crate::rotation::RotationView {
                epoch: 4,
                started_at: 1,
                grace_secs: 60,
                announced_at: Some(1),
                peers_moved: 1,
                peers_total: 3,
                pending_peers: vec!["n3".into(), "n4".into()],
            }),
            last_rotation: None,
            published: true,
            last_error: None,
        };
        let text = render(&status(), false, Some(&keys), 3);
        for line in [
            "weft_ready 0",
            "weft_synced{source=\"registry\"} 1",
            "weft_synced{source=\"routes\"} 0",
            "weft_rejections{kind=\"record\",reason=\"bad_key\"} 2",
            "weft_peer_last_handshake_age_seconds{peer=\"n2\"} 7",
            "weft_peer_receive_bytes_total{peer=\"n2\"} 100",
            "weft_peer_transmit_bytes_total{peer=\"n2\"} 200",
            "weft_datapath_dropped_packets_total{peer=\"n2\",reason=\"source_not_allowed\"} 3",
            "weft_datapath_dropped_packets_total{peer=\"\",reason=\"malformed\"} 5",
            "weft_policy_verdicts_total{verdict=\"denied_ingress\"} 9",
            "weft_policy_denied_packets_total{pod=\"x/a\",direction=\"ingress\"} 9",
            "weft_policy_address_conflicts 2",
            "weft_policy_files_rejected{in_force=\"last_good\"} 2",
            "weft_policy_files_rejected{in_force=\"nothing\"} 0",
            "weft_policy_files_rejected{in_force=\"previous_rule_set\"} 0",
            "weft_datapath_apply_failures_total 3",
            "weft_conntrack_flows 12",
            "weft_conntrack_capacity_flows 64",
            "weft_conntrack_evictions_total 4",
            "weft_conntrack_revoked_flows 2",
            "weft_conntrack_revoked_evictions_total 1",
            "weft_learned_routes 2",
            "weft_key_epoch 4",
            "weft_key_rotation_in_progress 1",
            "weft_key_rotation_peers_moved 1",
            "weft_key_rotation_peers 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        assert!(text.contains("# TYPE weft_peer_receive_bytes counter"));
        assert!(text.ends_with("# EOF\n"));
    }
}

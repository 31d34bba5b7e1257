use std::num::NonZeroUsize;
use std::time::Duration;

use serde_json::{Value, json};

use super::*;
use crate::policy::conntrack::{IPPROTO_TCP, Sent, Timeouts};
use crate::policy::test_support::{isolate, world, world_with};

/// Short timeouts the tests step past (TCP 1 h rather than the default 5 days).
const TEST_TIMEOUTS: Timeouts = Timeouts {
    tcp: Duration::from_secs(3600),
    udp: Duration::from_secs(120),
    other: Duration::from_secs(60),
};

fn gate(required: bool) -> PolicyGate {
    gate_holding(64, required)
}

/// A gate whose connection tracking holds `capacity` live flows.
fn gate_holding(capacity: usize, required: bool) -> PolicyGate {
    let conntrack = Conntrack::new(NonZeroUsize::new(capacity).unwrap(), TEST_TIMEOUTS);
    PolicyGate::new(conntrack, required)
}

/// Isolates `lab/s` for ingress, allowing `lab/c` on TCP `port` only.
fn s_allows_c_on(port: u16) -> Value {
    json!({
        "metadata": {"name": "s-allows-c", "namespace": "lab"},
        "spec": {
            "podSelector": {"matchLabels": {"pod": "s"}},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": [{"podSelector": {"matchLabels": {"pod": "c"}}}],
                "ports": [{"protocol": "TCP", "port": port}]
            }]
        }
    })
}

/// `lab/c`:40000 -> `lab/s`:80 over TCP: inbound at the gate's node.
fn c_to_s() -> FlowKey {
    FlowKey {
        protocol: IPPROTO_TCP,
        src: "10.244.1.2".parse().unwrap(),
        dst: "10.244.2.2".parse().unwrap(),
        src_port: 40000,
        dst_port: 80,
    }
}

const DENIED_S_INGRESS: Admission<'static> = Admission::Denied {
    direction: Direction::Ingress,
    pod: "lab/s",
};

#[test]
fn revoking_ingress_stops_an_inbound_flow_even_while_the_local_pod_keeps_sending() {
    let mut gate = gate(false);
    let t0 = Instant::now();
    gate.set_policy(world(&[]));
    let inbound = c_to_s();
    assert_eq!(gate.admit(&inbound, t0), Admission::Allowed);
    gate.record_outbound(inbound.reversed(), Sent::Opening, t0);
    assert_eq!(gate.admit(&inbound, t0), Admission::TrackedAllowed);

    gate.set_policy(world(&[isolate("s", "Ingress")]));
    for ms in 0..5 {
        let now = t0 + Duration::from_millis(ms);
        // The server keeps streaming to the client (even packets that may open a flow, as
        // any UDP packet may): that must not turn the client's packets into replies of a
        // flow the server opened.
        gate.record_outbound(inbound.reversed(), Sent::Opening, now);
        assert_eq!(gate.admit(&inbound, now), DENIED_S_INGRESS, "packet {ms}");
    }

    // A later rule set that allows it again lets the same flow through.
    gate.set_policy(world(&[]));
    assert_eq!(gate.admit(&inbound, t0), Admission::Allowed);
    assert_eq!(gate.admit(&inbound, t0), Admission::TrackedAllowed);
}

#[test]
fn revoking_the_remote_pods_egress_stops_its_flow_too() {
    let mut gate = gate(false);
    let t0 = Instant::now();
    gate.set_policy(world(&[]));
    let inbound = c_to_s();
    assert_eq!(gate.admit(&inbound, t0), Admission::Allowed);

    gate.set_policy(world(&[isolate("c", "Egress")]));
    let denied = Admission::Denied {
        direction: Direction::Egress,
        pod: "lab/c",
    };
    assert_eq!(gate.admit(&inbound, t0), denied);
    gate.record_outbound(inbound.reversed(), Sent::Opening, t0);
    assert_eq!(gate.admit(&inbound, t0), denied);
}

#[test]
fn replies_to_a_flow_opened_here_are_judged_again_when_the_rule_set_changes() {
    let mut gate = gate(false);
    let t0 = Instant::now();
    // `lab/s` is isolated for ingress: the client's packets pass only as replies.
    gate.set_policy(world(&[isolate("s", "Ingress")]));
    let reply = c_to_s();
    gate.record_outbound(reply.reversed(), Sent::Opening, t0);
    assert_eq!(gate.admit(&reply, t0), Admission::TrackedReply);

    // An unrelated change: the flow it answers is still allowed.
    gate.set_policy(world(&[isolate("s", "Ingress"), isolate("c", "Egress")]));
    assert_eq!(gate.admit(&reply, t0), Admission::TrackedReply);

    // The egress of the Pod that opened the flow is revoked: its replies stop, and sending
    // more on the flow does not bring them back.
    gate.set_policy(world(&[isolate("s", "Ingress"), isolate("s", "Egress")]));
    assert_eq!(gate.admit(&reply, t0), DENIED_S_INGRESS);
    gate.record_outbound(reply.reversed(), Sent::Opening, t0 + Duration::from_secs(1));
    assert_eq!(gate.admit(&reply, t0), DENIED_S_INGRESS);

    // Allowed again.
    gate.set_policy(world(&[isolate("s", "Ingress")]));
    assert_eq!(gate.admit(&reply, t0), Admission::TrackedReply);
    assert_eq!(gate.admit(&reply, t0), Admission::TrackedReply);
}

#[test]
fn a_reply_policy_allows_on_its_own_passes_whatever_the_flow_it_answers() {
    let mut gate = gate(false);
    let t0 = Instant::now();
    gate.set_policy(world(&[]));
    let reply = c_to_s();
    gate.record_outbound(reply.reversed(), Sent::Opening, t0);
    // `lab/s` may no longer send anything, but nothing isolates its ingress.
    gate.set_policy(world(&[isolate("s", "Egress")]));
    assert_eq!(gate.admit(&reply, t0), Admission::Allowed);
    assert_eq!(gate.admit(&reply, t0), Admission::TrackedReply);
}

#[test]
fn nothing_passes_before_the_first_rule_set_when_a_source_is_configured() {
    let mut gate = gate(true);
    let t0 = Instant::now();
    let inbound = c_to_s();
    assert!(!gate.synced());
    assert_eq!(gate.admit(&inbound, t0), Admission::NotSynced);
    // Not even replies to flows opened before the rule set arrived.
    gate.record_outbound(inbound.reversed(), Sent::Opening, t0);
    assert_eq!(gate.admit(&inbound, t0), Admission::NotSynced);

    gate.set_policy(world(&[isolate("s", "Ingress")]));
    assert!(gate.synced());
    // The reply is judged under the first rule set: the flow it answers is allowed.
    assert_eq!(gate.admit(&inbound, t0), Admission::TrackedReply);
    let other = FlowKey {
        src_port: 40001,
        ..inbound
    };
    assert_eq!(gate.admit(&other, t0), DENIED_S_INGRESS);
}

#[test]
fn without_a_policy_source_everything_passes_from_the_start() {
    let mut gate = gate(false);
    assert!(gate.synced());
    assert_eq!(gate.admit(&c_to_s(), Instant::now()), Admission::Allowed);
    assert_eq!(gate.version(), 0);
}

/// A gate holding 4 live flows where `lab/c` -> `lab/s`:80 ([`c_to_s`]) was allowed, answered
/// by the server, then revoked at its next packet by a rule set that takes `lab/c` on port
/// 8080 only; after which `lab/c` opened 16 flows to port 8080, more than the table holds.
fn revoked_then_flooded(t0: Instant) -> PolicyGate {
    let mut gate = gate_holding(4, false);
    gate.set_policy(world(&[]));
    let inbound = c_to_s();
    assert_eq!(gate.admit(&inbound, t0), Admission::Allowed);
    gate.record_outbound(inbound.reversed(), Sent::Opening, t0);

    gate.set_policy(world(&[s_allows_c_on(8080)]));
    assert_eq!(gate.admit(&inbound, t0), DENIED_S_INGRESS);

    for sport in 50000..50016 {
        let other = FlowKey {
            src_port: sport,
            dst_port: 8080,
            ..inbound
        };
        assert_eq!(gate.admit(&other, t0), Admission::Allowed, "port {sport}");
    }
    assert_eq!(gate.conntrack().evictions, 12);
    gate
}

#[test]
fn a_remote_pod_opening_many_allowed_flows_cannot_evict_a_revoked_one() {
    let t0 = Instant::now();
    let mut gate = revoked_then_flooded(t0);
    let inbound = c_to_s();

    // The server still answers on the revoked flow: that opens no flow of its own, and the
    // client's packets stay denied.
    let t1 = t0 + Duration::from_secs(1);
    gate.record_outbound(inbound.reversed(), Sent::Opening, t1);
    assert_eq!(gate.admit(&inbound, t1), DENIED_S_INGRESS);
    assert_eq!(gate.conntrack().revoked_evictions, 0);

    // Idle for its timeout, the revocation is forgotten: the server's next packet on the
    // connection opens no flow, and the client's is judged as new (denied); a connection the
    // server opens on those ports is a flow of its own, whose replies pass.
    let late = t1 + Duration::from_secs(3601);
    gate.record_outbound(inbound.reversed(), Sent::MidStream, late);
    assert_eq!(gate.conntrack().revoked_len(), 0);
    assert_eq!(gate.admit(&inbound, late), DENIED_S_INGRESS);
    gate.record_outbound(inbound.reversed(), Sent::Opening, late);
    assert_eq!(gate.admit(&inbound, late), Admission::TrackedReply);
}

#[test]
fn a_revoked_flow_is_allowed_again_by_a_later_rule_set_after_many_other_flows() {
    let t0 = Instant::now();
    let mut gate = revoked_then_flooded(t0);
    let inbound = c_to_s();

    gate.set_policy(world(&[s_allows_c_on(80)]));
    assert_eq!(gate.admit(&inbound, t0), Admission::Allowed);
    assert_eq!(gate.admit(&inbound, t0), Admission::TrackedAllowed);
    assert_eq!(gate.conntrack().revoked_len(), 0);
}

#[test]
fn revocations_beyond_the_revoked_tables_capacity_are_evicted_and_counted() {
    let mut gate = gate_holding(2, false);
    let t0 = Instant::now();
    let flow = |sport: u16| FlowKey {
        src_port: sport,
        ..c_to_s()
    };
    // Two rule set changes, each revoking two flows allowed before it.
    for round in 0..2u16 {
        gate.set_policy(world(&[]));
        for sport in [40000 + 2 * round, 40001 + 2 * round] {
            assert_eq!(gate.admit(&flow(sport), t0), Admission::Allowed);
        }
        gate.set_policy(world(&[isolate("s", "Ingress")]));
        for sport in [40000 + 2 * round, 40001 + 2 * round] {
            assert_eq!(gate.admit(&flow(sport), t0), DENIED_S_INGRESS);
        }
    }
    assert_eq!(gate.conntrack().revoked_len(), 2);
    assert_eq!(gate.conntrack().revoked_evictions, 2);
    // The first two were forgotten: an opening packet of the server's on one opens a flow.
    gate.record_outbound(flow(40000).reversed(), Sent::Opening, t0);
    assert_eq!(gate.admit(&flow(40000), t0), Admission::TrackedReply);
    // The last two stand.
    gate.record_outbound(flow(40003).reversed(), Sent::Opening, t0);
    assert_eq!(gate.admit(&flow(40003), t0), DENIED_S_INGRESS);
}

#[test]
fn a_remote_pod_evicting_its_own_flow_cannot_make_it_a_flow_the_server_opened() {
    let mut gate = gate_holding(4, false);
    let t0 = Instant::now();
    gate.set_policy(world(&[s_allows_c_on(80)]));
    let f1 = c_to_s();
    assert_eq!(gate.admit(&f1, t0), Admission::Allowed);
    // `lab/c` opens more cheap allowed flows than the table holds: F1's entry is evicted.
    for sport in 50000..50004 {
        let other = FlowKey {
            src_port: sport,
            ..f1
        };
        assert_eq!(gate.admit(&other, t0), Admission::Allowed, "port {sport}");
    }
    assert_eq!(gate.conntrack().evictions, 1);
    // The server sends its next packet on F1 (an ACK, data, a retransmission): it is not a
    // connection the server opened, so it records nothing.
    let t1 = t0 + Duration::from_secs(1);
    gate.record_outbound(f1.reversed(), Sent::MidStream, t1);
    // A rule set that denies `lab/c` -> `lab/s`:80 denies F1's packets.
    gate.set_policy(world(&[s_allows_c_on(8080)]));
    assert_eq!(gate.admit(&f1, t1), DENIED_S_INGRESS);
    assert_eq!(gate.admit(&f1, t1), DENIED_S_INGRESS);
}

/// An address of the local block (`lab/s`'s, 10.244.2.0/24) that is no known Pod: a Pod
/// started here whose address has not reached the policy source yet.
const NEW_POD: &str = "10.244.2.9";
/// The node's own address in its block (the tunnel's).
const TUNNEL: &str = "10.244.2.1";

/// `lab/c`:40000 -> `dst`:80 over TCP.
fn c_to(dst: &str) -> FlowKey {
    FlowKey {
        dst: dst.parse().unwrap(),
        ..c_to_s()
    }
}

/// A gate of a node whose own address is [`TUNNEL`], under `set`.
fn gate_of_node(required: bool, set: Arc<PolicySet>) -> PolicyGate {
    let mut gate = gate(required).with_own_addresses(vec![TUNNEL.parse().unwrap()]);
    gate.set_policy(set);
    gate
}

#[test]
fn an_unknown_local_destination_is_isolated_while_a_policy_isolates_for_ingress() {
    let t0 = Instant::now();
    let mut gate = gate_of_node(true, world(&[isolate("s", "Ingress")]));
    let to_new_pod = c_to(NEW_POD);
    assert_eq!(gate.admit(&to_new_pod, t0), Admission::UnknownDestination);
    // Not tracked: the next packet is judged again, and dropped again.
    assert_eq!(gate.admit(&to_new_pod, t0), Admission::UnknownDestination);
    // The node's own address is no Pod: not isolated.
    assert_eq!(gate.admit(&c_to(TUNNEL), t0), Admission::Allowed);
    // What the new Pod opens itself gets its replies.
    let reply = FlowKey {
        src_port: 53,
        ..to_new_pod
    };
    gate.record_outbound(reply.reversed(), Sent::Opening, t0);
    assert_eq!(gate.admit(&reply, t0), Admission::TrackedReply);

    // Its address arrives, with no policy selecting it: not isolated any more.
    gate.set_policy(world_with(&[isolate("s", "Ingress")], &[("n", NEW_POD)]));
    assert_eq!(gate.admit(&to_new_pod, t0), Admission::Allowed);
    // Selected by a policy: isolated by that policy.
    gate.set_policy(world_with(&[isolate("n", "Ingress")], &[("n", NEW_POD)]));
    assert_eq!(
        gate.admit(&to_new_pod, t0),
        Admission::Denied {
            direction: Direction::Ingress,
            pod: "lab/n",
        }
    );
}

#[test]
fn an_unknown_local_destination_passes_when_no_policy_isolates_for_ingress() {
    let t0 = Instant::now();
    // No policy at all, or one isolating for egress only: no Pod can be isolated for
    // ingress, so neither can one not known yet.
    for policies in [vec![], vec![isolate("s", "Egress")]] {
        let mut gate = gate_of_node(true, world(&policies));
        assert_eq!(gate.admit(&c_to(NEW_POD), t0), Admission::Allowed);
    }
}

#[test]
fn without_a_policy_source_an_unknown_local_destination_is_not_isolated() {
    let t0 = Instant::now();
    let mut gate = gate_of_node(false, world(&[isolate("s", "Ingress")]));
    assert_eq!(gate.admit(&c_to(NEW_POD), t0), Admission::Allowed);
    assert_eq!(gate.admit(&c_to_s(), t0), DENIED_S_INGRESS);
}

#[test]
fn a_flow_to_a_pod_that_finished_is_revoked_when_its_address_is_no_longer_known() {
    let t0 = Instant::now();
    let ingress = [isolate("s", "Ingress")];
    let mut gate = gate_of_node(true, world_with(&ingress, &[("n", NEW_POD)]));
    let inbound = c_to(NEW_POD);
    assert_eq!(gate.admit(&inbound, t0), Admission::Allowed);
    assert_eq!(gate.admit(&inbound, t0), Admission::TrackedAllowed);
    // `lab/n` finished: its address may be a new Pod's any moment.
    gate.set_policy(world(&ingress));
    assert_eq!(gate.admit(&inbound, t0), Admission::UnknownDestination);
    assert_eq!(gate.admit(&inbound, t0), Admission::UnknownDestination);
}

#[test]
fn an_icmp_error_about_a_flow_to_a_pod_that_finished_relates_to_nothing() {
    let t0 = Instant::now();
    let ingress = [isolate("s", "Ingress")];
    let mut gate = gate_of_node(true, world_with(&ingress, &[("n", NEW_POD)]));
    let inbound = c_to(NEW_POD);
    assert_eq!(gate.admit(&inbound, t0), Admission::Allowed);
    // What `lab/n` sent on that flow, as an error about it quotes it.
    let answer = inbound.reversed();
    assert!(gate.is_related(&answer, t0));
    gate.set_policy(world(&ingress));
    assert!(!gate.is_related(&answer, t0));
}

#[test]
fn policy_check_explains_a_destination_without_an_address() {
    let isolating = unknown_destination_note(&world(&[isolate("s", "Ingress")]), "lab/n");
    assert!(
        isolating.starts_with("no Pod lab/n is known;"),
        "{isolating}"
    );
    assert!(
        isolating.contains("policy_unknown_destination"),
        "{isolating}"
    );
    let open = unknown_destination_note(&world(&[isolate("s", "Egress")]), "lab/n");
    assert_eq!(open, "no Pod lab/n is known");
}

#[test]
fn policy_check_tells_a_pod_without_an_address_from_one_nobody_listed() {
    let pending: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "new", "namespace": "lab"},
        "status": {"phase": "Pending"}
    }))
    .unwrap();
    let set = PolicySet::compile(&[], &[], &[pending]);
    assert!(set.lists_without_address("lab/new"));
    assert!(
        unknown_pod(&set, "lab/new").starts_with("Pod lab/new has no address yet"),
        "{}",
        unknown_pod(&set, "lab/new")
    );
    assert!(!set.lists_without_address("lab/other"));
    assert_eq!(unknown_pod(&set, "lab/other"), "no Pod lab/other is known");
}

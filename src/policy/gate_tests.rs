use std::num::NonZeroUsize;
use std::time::Duration;

use super::*;
use crate::policy::conntrack::{IPPROTO_TCP, Timeouts};
use crate::policy::test_support::{isolate, world};

fn gate(required: bool) -> PolicyGate {
    let conntrack = Conntrack::new(NonZeroUsize::new(64).unwrap(), Timeouts::default());
    PolicyGate::new(conntrack, required)
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
    gate.record_outbound(inbound.reversed(), t0);
    assert_eq!(gate.admit(&inbound, t0), Admission::TrackedAllowed);

    gate.set_policy(world(&[isolate("s", "Ingress")]));
    for ms in 0..5 {
        let now = t0 + Duration::from_millis(ms);
        // The server keeps streaming to the client: that must not turn the client's packets
        // into replies of a flow the server opened.
        gate.record_outbound(inbound.reversed(), now);
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
    gate.record_outbound(inbound.reversed(), t0);
    assert_eq!(gate.admit(&inbound, t0), denied);
}

#[test]
fn replies_to_a_flow_opened_here_are_judged_again_when_the_rule_set_changes() {
    let mut gate = gate(false);
    let t0 = Instant::now();
    // `lab/s` is isolated for ingress: the client's packets pass only as replies.
    gate.set_policy(world(&[isolate("s", "Ingress")]));
    let reply = c_to_s();
    gate.record_outbound(reply.reversed(), t0);
    assert_eq!(gate.admit(&reply, t0), Admission::TrackedReply);

    // An unrelated change: the flow it answers is still allowed.
    gate.set_policy(world(&[isolate("s", "Ingress"), isolate("c", "Egress")]));
    assert_eq!(gate.admit(&reply, t0), Admission::TrackedReply);

    // The egress of the Pod that opened the flow is revoked: its replies stop, and sending
    // more on the flow does not bring them back.
    gate.set_policy(world(&[isolate("s", "Ingress"), isolate("s", "Egress")]));
    assert_eq!(gate.admit(&reply, t0), DENIED_S_INGRESS);
    gate.record_outbound(reply.reversed(), t0 + Duration::from_secs(1));
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
    gate.record_outbound(reply.reversed(), t0);
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
    gate.record_outbound(inbound.reversed(), t0);
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

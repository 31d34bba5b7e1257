use std::num::NonZeroUsize;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::datapath::packet::{ICMP, ICMPV6, TcpFlags, parse};
use crate::policy::conntrack::{Conntrack, Timeouts};
use crate::policy::test_support::world;

const C: [u8; 4] = [10, 244, 1, 2];
const S: [u8; 4] = [10, 244, 2, 2];
const MORE_FRAGMENTS: u16 = 0x2000;

/// `lab/s` accepts TCP port 80 only, from anyone. No pickup window.
fn policy() -> PacketPolicy {
    policy_tracking(Conntrack::new(
        NonZeroUsize::new(64).unwrap(),
        Timeouts::default(),
    ))
}

/// [`policy`] with a pickup window of 2 minutes from `started`.
fn policy_picking_up_from(started: Instant) -> PacketPolicy {
    let conntrack = Conntrack::new(NonZeroUsize::new(64).unwrap(), Timeouts::default());
    policy_tracking(conntrack.with_pickup(started, PICKUP))
}

const PICKUP: Duration = Duration::from_secs(120);

fn policy_tracking(conntrack: Conntrack) -> PacketPolicy {
    let mut gate = PolicyGate::new(conntrack, true);
    gate.set_policy(world(&[json!({
        "metadata": {"name": "web", "namespace": "lab"},
        "spec": {
            "podSelector": {"matchLabels": {"pod": "s"}},
            "ingress": [{"ports": [{"port": 80}]}]
        }
    })]));
    PacketPolicy::new(gate, FragmentTable::new(64, Duration::from_secs(30)))
}

fn ip(octets: [u8; 4]) -> IpAddr {
    IpAddr::from(octets)
}

/// The parsed headers of `packet`, which must be from `source` to `destination`.
fn header(packet: &[u8], source: IpAddr, destination: IpAddr) -> Header {
    let header = parse(packet).unwrap();
    assert_eq!((header.source, header.destination), (source, destination));
    header
}

/// An IPv4 packet from `C` to `S` with protocol `protocol`, identification `id`, the flags
/// and fragment offset field `fragment`, and `payload` (the TCP ports for a first fragment).
fn ipv4(protocol: u8, id: u16, fragment: u16, payload: &[u8]) -> Vec<u8> {
    let mut packet = vec![0u8; 20];
    packet[0] = 0x45;
    packet[4..6].copy_from_slice(&id.to_be_bytes());
    packet[6..8].copy_from_slice(&fragment.to_be_bytes());
    packet[8] = 64;
    packet[9] = protocol;
    packet[12..16].copy_from_slice(&C);
    packet[16..20].copy_from_slice(&S);
    packet.extend_from_slice(payload);
    let length = packet.len() as u16;
    packet[2..4].copy_from_slice(&length.to_be_bytes());
    packet
}

fn tcp_ports(dst_port: u16) -> [u8; 20] {
    tcp_segment(40000, dst_port, 0)
}

/// A TCP header from `src_port` to `dst_port` with `flags`.
fn tcp_segment(src_port: u16, dst_port: u16, flags: u8) -> [u8; 20] {
    let mut header = [0u8; 20];
    header[0..2].copy_from_slice(&src_port.to_be_bytes());
    header[2..4].copy_from_slice(&dst_port.to_be_bytes());
    header[12] = 0x50;
    header[13] = flags;
    header
}

#[test]
fn later_ipv4_fragments_take_the_verdict_of_their_first() {
    let mut policy = policy();
    let now = Instant::now();
    let mut check = |packet: &[u8]| policy.inbound(&header(packet, ip(C), ip(S)), now);

    // A datagram to port 80, in three fragments: all delivered (the later ones carry no
    // ports, so judged on their own they would be denied).
    assert_eq!(check(&ipv4(6, 1, MORE_FRAGMENTS, &tcp_ports(80))), Ok(()));
    assert_eq!(check(&ipv4(6, 1, MORE_FRAGMENTS | 3, &[0; 24])), Ok(()));
    assert_eq!(check(&ipv4(6, 1, 6, &[0; 8])), Ok(()));
    // A datagram to port 81: every fragment denied.
    let denied = Err(DropReason::PolicyIngress);
    assert_eq!(check(&ipv4(6, 2, MORE_FRAGMENTS, &tcp_ports(81))), denied);
    assert_eq!(check(&ipv4(6, 2, 3, &[0; 24])), denied);
    // Later fragments whose first was never seen (another identification, or another
    // protocol with the same identification): dropped.
    let unknown = Err(DropReason::UnknownFragment);
    assert_eq!(check(&ipv4(6, 3, 3, &[0; 24])), unknown);
    assert_eq!(check(&ipv4(17, 1, 3, &[0; 24])), unknown);

    let status = policy
        .counters
        .status(policy.gate.policy(), policy.gate.version());
    assert_eq!(status.verdicts["allowed"], 1);
    assert_eq!(status.verdicts["fragment"], 2);
    assert_eq!(status.verdicts["denied_ingress"], 2);
    assert_eq!(status.denied["lab/s"]["ingress"], 1);
}

const C6: &str = "fd00:10:244:1::2";
const S6: &str = "fd00:10:244:2::2";

/// An IPv6 packet from `C6` to `S6`: `first` as next header, then `rest`.
fn ipv6(first: u8, rest: &[&[u8]]) -> Vec<u8> {
    let mut packet = vec![0u8; 40];
    packet[0] = 0x60;
    packet[6] = first;
    packet[7] = 64;
    let c6: std::net::Ipv6Addr = C6.parse().unwrap();
    let s6: std::net::Ipv6Addr = S6.parse().unwrap();
    packet[8..24].copy_from_slice(&c6.octets());
    packet[24..40].copy_from_slice(&s6.octets());
    for part in rest {
        packet.extend_from_slice(part);
    }
    let length = (packet.len() - 40) as u16;
    packet[4..6].copy_from_slice(&length.to_be_bytes());
    packet
}

fn options(next: u8) -> [u8; 8] {
    [next, 0, 1, 4, 0, 0, 0, 0]
}

fn fragment(next: u8, offset_units: u16, more: bool, id: u32) -> [u8; 8] {
    let [a, b] = ((offset_units << 3) | u16::from(more)).to_be_bytes();
    let [c, d, e, f] = id.to_be_bytes();
    [next, 0, a, b, c, d, e, f]
}

#[test]
fn ipv6_packets_are_judged_by_the_transport_header_behind_extension_headers() {
    let mut policy = policy();
    let now = Instant::now();
    let (c6, s6): (IpAddr, IpAddr) = (C6.parse().unwrap(), S6.parse().unwrap());
    let mut check = |packet: &[u8]| policy.inbound(&header(packet, c6, s6), now);

    // Hop-by-hop, then destination options, then TCP.
    let to = |port| ipv6(0, &[&options(60), &options(6), &tcp_ports(port)]);
    assert_eq!(check(&to(80)), Ok(()));
    assert_eq!(check(&to(81)), Err(DropReason::PolicyIngress));

    // Fragmented, with destination options before the fragment header.
    let first = ipv6(
        60,
        &[&options(44), &fragment(6, 0, true, 9), &tcp_ports(80)],
    );
    assert_eq!(check(&first), Ok(()));
    let later = ipv6(60, &[&options(44), &fragment(6, 5, false, 9), &[0; 16]]);
    assert_eq!(check(&later), Ok(()));
    let stray = ipv6(44, &[&fragment(6, 5, false, 10), &[0; 16]]);
    assert_eq!(check(&stray), Err(DropReason::UnknownFragment));
}

#[test]
fn later_fragments_record_no_flow_of_their_own() {
    let mut policy = policy();
    let now = Instant::now();
    // Sent by `S` to `C`: the first fragment (a SYN) records the flow, the later ones (no
    // ports) nothing.
    let mut first = ipv4(6, 1, MORE_FRAGMENTS, &tcp_segment(40000, 80, SYN));
    first[12..16].copy_from_slice(&S);
    first[16..20].copy_from_slice(&C);
    policy.outbound(&header(&first, ip(S), ip(C)), now);
    let mut later = ipv4(6, 1, 3, &[0; 24]);
    later[12..16].copy_from_slice(&S);
    later[16..20].copy_from_slice(&C);
    policy.outbound(&header(&later, ip(S), ip(C)), now);
    assert_eq!(policy.gate.conntrack().len(), 1);
}

const SYN: u8 = TcpFlags::SYN;
const ACK: u8 = TcpFlags::ACK;
const SYN_ACK: u8 = TcpFlags::SYN | TcpFlags::ACK;
const TCP: u8 = 6;
const UDP: u8 = 17;

/// A whole IPv4 packet from `S`:40000 to `C`:81 (what `lab/s` sends as a client) with
/// `protocol` and, for TCP, `flags`.
fn from_s(protocol: u8, flags: u8) -> Vec<u8> {
    let mut packet = ipv4(protocol, 0, 0, &tcp_segment(40000, 81, flags));
    packet[12..16].copy_from_slice(&S);
    packet[16..20].copy_from_slice(&C);
    packet
}

/// The answer to [`from_s`]: `C`:81 to `S`:40000, which policy alone denies (`lab/s` accepts
/// port 80 only).
fn answer(protocol: u8) -> Vec<u8> {
    ipv4(protocol, 0, 0, &tcp_segment(81, 40000, ACK))
}

/// Whether `policy` delivers the answer to `S` sending `sent` at `now`.
fn answer_passes(policy: &mut PacketPolicy, sent: &[u8], now: Instant) -> bool {
    policy.outbound(&header(sent, ip(S), ip(C)), now);
    let protocol = sent[9];
    let reply = answer(protocol);
    match policy.inbound(&header(&reply, ip(C), ip(S)), now) {
        Ok(()) => true,
        Err(DropReason::PolicyIngress) => false,
        other => panic!("unexpected verdict {other:?}"),
    }
}

#[test]
fn a_syn_opens_a_flow_and_a_mid_stream_tcp_packet_does_not() {
    let mut policy = policy();
    let now = Instant::now();
    // A mid-stream ACK, or a SYN-ACK, of a connection weft does not track opens nothing:
    // the answer is judged on its own (denied).
    assert!(!answer_passes(&mut policy, &from_s(TCP, ACK), now));
    assert!(!answer_passes(&mut policy, &from_s(TCP, SYN_ACK), now));
    assert!(policy.gate.conntrack().is_empty());
    // A SYN opens the flow; the connection's later packets keep it.
    assert!(answer_passes(&mut policy, &from_s(TCP, SYN), now));
    assert!(answer_passes(&mut policy, &from_s(TCP, ACK), now));
}

#[test]
fn in_the_pickup_window_a_mid_stream_tcp_packet_opens_a_flow() {
    let started = Instant::now();
    let mut policy = policy_picking_up_from(started);
    // Just after a restart: the local client's connection is picked up.
    let inside = started + PICKUP - Duration::from_secs(1);
    assert!(answer_passes(&mut policy, &from_s(TCP, ACK), inside));
    // A fresh table, same window: a SYN-ACK is picked up too, but not once it has passed.
    let mut policy = policy_picking_up_from(started);
    assert!(answer_passes(&mut policy, &from_s(TCP, SYN_ACK), inside));
    let mut policy = policy_picking_up_from(started);
    let after = started + PICKUP;
    assert!(!answer_passes(&mut policy, &from_s(TCP, SYN_ACK), after));
    assert!(!answer_passes(&mut policy, &from_s(TCP, ACK), after));
    assert!(answer_passes(&mut policy, &from_s(TCP, SYN), after));
}

#[test]
fn any_udp_packet_of_no_tracked_flow_opens_one_in_or_out_of_the_window() {
    let started = Instant::now();
    for now in [started, started + PICKUP] {
        let mut policy = policy_picking_up_from(started);
        assert!(answer_passes(&mut policy, &from_s(UDP, 0), now));
    }
    assert!(answer_passes(&mut policy(), &from_s(UDP, 0), started));
}

/// While `lab/s` is isolated for ingress, a datagram to an address of its block that is no
/// known Pod (a Pod started here, its address not known yet) is dropped with a reason of its
/// own, its later fragments too, and counted.
#[test]
fn a_datagram_to_an_unknown_local_address_is_dropped_and_counted() {
    let mut policy = policy();
    let now = Instant::now();
    let unknown = [10, 244, 2, 9];
    let to_unknown = |mut packet: Vec<u8>| {
        packet[16..20].copy_from_slice(&unknown);
        packet
    };
    let mut check = |packet: &[u8]| policy.inbound(&header(packet, ip(C), ip(unknown)), now);
    let dropped = Err(DropReason::PolicyUnknownDestination);
    assert_eq!(check(&to_unknown(ipv4(6, 1, 0, &tcp_ports(80)))), dropped);
    assert_eq!(
        check(&to_unknown(ipv4(6, 2, MORE_FRAGMENTS, &tcp_ports(80)))),
        dropped
    );
    assert_eq!(check(&to_unknown(ipv4(6, 2, 3, &[0; 24]))), dropped);

    let status = policy
        .counters
        .status(policy.gate.policy(), policy.gate.version());
    assert_eq!(status.verdicts["denied_unknown_destination"], 3);
    assert_eq!(status.verdicts["allowed"], 0);
    assert!(status.denied.is_empty(), "{:?}", status.denied);
}

const UNREACHABLE: u8 = 3;
const PORT_UNREACHABLE: u8 = 3;
const FRAGMENTATION_NEEDED: u8 = 4;
const PACKET_TOO_BIG: u8 = 2;

/// An ICMP or ICMPv6 message of `icmp_type` and `code` quoting `quote`.
fn icmp(icmp_type: u8, code: u8, quote: &[u8]) -> Vec<u8> {
    let mut message = vec![icmp_type, code, 0, 0, 0, 0, 0x05, 0x00];
    message.extend_from_slice(quote);
    message
}

/// An ICMP error from `C` to `S` (from the remote Pod or a router on the way) quoting `quote`.
fn error_to_s(icmp_type: u8, code: u8, quote: &[u8]) -> Vec<u8> {
    ipv4(ICMP, 0, 0, &icmp(icmp_type, code, quote))
}

/// `packet` (IPv4) with source and destination swapped.
fn swapped(mut packet: Vec<u8>) -> Vec<u8> {
    let (source, destination) = packet[12..20].split_at_mut(4);
    source.swap_with_slice(destination);
    packet
}

/// The verdict on `packet`, decrypted from `C` to `S`.
fn to_s(policy: &mut PacketPolicy, packet: &[u8], now: Instant) -> Result<(), DropReason> {
    policy.inbound(&header(packet, ip(C), ip(S)), now)
}

fn verdicts(policy: &PacketPolicy, outcome: &str) -> u64 {
    let status = policy
        .counters
        .status(policy.gate.policy(), policy.gate.version());
    status.verdicts[outcome]
}

const DENIED: Result<(), DropReason> = Err(DropReason::PolicyIngress);

#[test]
fn a_port_unreachable_for_a_udp_flow_opened_here_is_delivered_as_related() {
    let mut policy = policy();
    let now = Instant::now();
    let sent = from_s(UDP, 0);
    let unreachable = error_to_s(UNREACHABLE, PORT_UNREACHABLE, &sent);
    // No flow yet: judged as ICMP to `lab/s` (which accepts TCP 80 only), denied.
    assert_eq!(to_s(&mut policy, &unreachable, now), DENIED);
    policy.outbound(&header(&sent, ip(S), ip(C)), now);
    assert_eq!(to_s(&mut policy, &unreachable, now), Ok(()));
    assert_eq!(verdicts(&policy, "related"), 1);
    // It records no flow of its own.
    assert_eq!(policy.gate.conntrack().len(), 1);
    // An error quoting a flow not tracked (another source port) is denied as before.
    let mut other = sent.clone();
    other[20..22].copy_from_slice(&40001u16.to_be_bytes());
    let unrelated = error_to_s(UNREACHABLE, PORT_UNREACHABLE, &other);
    assert_eq!(to_s(&mut policy, &unrelated, now), DENIED);
    assert_eq!(verdicts(&policy, "related"), 1);
    assert_eq!(verdicts(&policy, "denied_ingress"), 2);
}

#[test]
fn fragmentation_needed_for_a_tcp_connection_opened_here_is_delivered() {
    let mut policy = policy();
    let now = Instant::now();
    policy.outbound(&header(&from_s(TCP, SYN), ip(S), ip(C)), now);
    // A router quotes the IP header and 8 bytes of a data segment it could not forward.
    let data = from_s(TCP, ACK);
    let needed = error_to_s(UNREACHABLE, FRAGMENTATION_NEEDED, &data[..28]);
    assert_eq!(to_s(&mut policy, &needed, now), Ok(()));
    // Truncated short of 8 bytes of the TCP header: related to nothing, and no panic.
    let truncated = error_to_s(UNREACHABLE, FRAGMENTATION_NEEDED, &data[..27]);
    assert_eq!(to_s(&mut policy, &truncated, now), DENIED);
}

#[test]
fn packet_too_big_for_a_tracked_ipv6_flow_is_delivered() {
    let mut policy = policy();
    let now = Instant::now();
    let (c6, s6): (IpAddr, IpAddr) = (C6.parse().unwrap(), S6.parse().unwrap());
    // `lab/s` opens a TCP connection to `C6`:81.
    let mut syn = ipv6(6, &[&tcp_segment(40000, 81, SYN)]);
    let (source, destination) = syn[8..40].split_at_mut(16);
    source.swap_with_slice(destination);
    let too_big = ipv6(ICMPV6, &[&icmp(PACKET_TOO_BIG, 0, &syn)]);
    let check = |policy: &mut PacketPolicy| policy.inbound(&header(&too_big, c6, s6), now);
    assert_eq!(check(&mut policy), DENIED);
    policy.outbound(&header(&syn, s6, c6), now);
    assert_eq!(check(&mut policy), Ok(()));
}

#[test]
fn an_error_whose_quoted_packet_its_destination_did_not_send_is_not_related() {
    let mut policy = policy();
    let now = Instant::now();
    // A tracked flow, whose packets `C` sends (here, as if `C` were local).
    let sent_by_c = ipv4(UDP, 0, 0, &tcp_segment(40000, 81, 0));
    policy.outbound(&header(&sent_by_c, ip(C), ip(S)), now);
    // An error to `S` quoting it: `S` never sent that packet.
    let error = error_to_s(UNREACHABLE, PORT_UNREACHABLE, &sent_by_c);
    assert_eq!(to_s(&mut policy, &error, now), DENIED);
}

#[test]
fn an_error_relates_only_while_policy_allows_its_flow_and_never_once_revoked() {
    let mut policy = policy();
    let now = Instant::now();
    // `C` connects to `lab/s` on port 80 (allowed); `S` answers.
    assert_eq!(
        to_s(
            &mut policy,
            &ipv4(TCP, 0, 0, &tcp_segment(40000, 80, SYN)),
            now
        ),
        Ok(())
    );
    let answer = swapped(ipv4(TCP, 0, 0, &tcp_segment(80, 40000, SYN_ACK)));
    policy.outbound(&header(&answer, ip(S), ip(C)), now);
    let error = error_to_s(UNREACHABLE, FRAGMENTATION_NEEDED, &answer);
    assert_eq!(to_s(&mut policy, &error, now), Ok(()));
    // A new rule set that still allows the connection: still related.
    let accepting = |port: u16| {
        world(&[json!({
            "metadata": {"name": "web", "namespace": "lab"},
            "spec": {
                "podSelector": {"matchLabels": {"pod": "s"}},
                "ingress": [{"ports": [{"port": port}]}]
            }
        })])
    };
    policy.gate.set_policy(accepting(80));
    assert_eq!(to_s(&mut policy, &error, now), Ok(()));
    // One that no longer does: denied, before the flow is judged again and once `C`'s next
    // packet has revoked it.
    policy.gate.set_policy(accepting(8080));
    assert_eq!(to_s(&mut policy, &error, now), DENIED);
    let next = ipv4(TCP, 0, 0, &tcp_segment(40000, 80, ACK));
    assert_eq!(to_s(&mut policy, &next, now), DENIED);
    assert_eq!(to_s(&mut policy, &error, now), DENIED);
    assert_eq!(verdicts(&policy, "related"), 2);
}

#[test]
fn an_icmp_error_a_local_pod_sends_opens_no_flow() {
    let mut policy = policy();
    let now = Instant::now();
    // `C` sends UDP to `lab/s`:81 (denied, but say it were delivered); `S` answers port
    // unreachable.
    let from_c = ipv4(UDP, 0, 0, &tcp_segment(40000, 81, 0));
    let unreachable = swapped(error_to_s(UNREACHABLE, PORT_UNREACHABLE, &from_c));
    policy.outbound(&header(&unreachable, ip(S), ip(C)), now);
    assert!(policy.gate.conntrack().is_empty());
    // So `C`'s ICMP to `S` is still judged on its own: a timestamp request, an error.
    let timestamp = ipv4(ICMP, 0, 0, &icmp(13, 0, &[0; 12]));
    assert_eq!(to_s(&mut policy, &timestamp, now), DENIED);
    let error = error_to_s(UNREACHABLE, PORT_UNREACHABLE, &from_c);
    assert_eq!(to_s(&mut policy, &error, now), DENIED);
}

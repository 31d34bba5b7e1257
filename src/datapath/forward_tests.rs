use std::num::NonZeroUsize;
use std::time::Duration;

use boringtun::x25519;

use super::*;
use crate::datapath::fragments::FragmentTable;
use crate::policy::conntrack::{Conntrack, Timeouts};
use crate::policy::gate::PolicyGate;

/// An IPv4 UDP packet from 10.244.2.2:`sport` to 10.244.1.2:53.
fn udp_packet(sport: u16) -> [u8; 28] {
    let mut packet = [0u8; 28];
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&28u16.to_be_bytes());
    packet[8] = 64;
    packet[9] = 17;
    packet[12..16].copy_from_slice(&[10, 244, 2, 2]);
    packet[16..20].copy_from_slice(&[10, 244, 1, 2]);
    packet[20..22].copy_from_slice(&sport.to_be_bytes());
    packet[22..24].copy_from_slice(&53u16.to_be_bytes());
    packet[24..26].copy_from_slice(&8u16.to_be_bytes());
    packet
}

#[test]
fn packets_queued_during_a_handshake_are_recorded_as_flows_opened_here() {
    let own = x25519::StaticSecret::from([1; 32]);
    let peer = x25519::PublicKey::from(&x25519::StaticSecret::from([2; 32]));
    let mut tunn = Tunn::new(own, peer, None, None, 1 << 8, None);
    let conntrack = Conntrack::new(NonZeroUsize::new(16).unwrap(), Timeouts::default());
    let mut policy = PacketPolicy::new(
        PolicyGate::new(conntrack, false),
        FragmentTable::new(16, Duration::from_secs(30)),
    );
    let mut out = vec![0u8; 2048];

    // No session yet: the first packet is queued and starts the handshake...
    let first = seal(
        &mut policy,
        &mut tunn,
        &parse(&udp_packet(1000)).unwrap(),
        &udp_packet(1000),
        &mut out,
    );
    assert!(matches!(first, TunnResult::WriteToNetwork(_)));
    // ...and the next ones are queued behind it, with nothing to send now.
    for sport in [1001, 1002] {
        let queued = seal(
            &mut policy,
            &mut tunn,
            &parse(&udp_packet(sport)).unwrap(),
            &udp_packet(sport),
            &mut out,
        );
        assert!(matches!(queued, TunnResult::Done), "packet {sport}");
    }
    assert_eq!(policy.gate.conntrack().len(), 3);
}

/// An ICMP port unreachable from 10.244.2.5 to 10.244.1.2 quoting a UDP packet from
/// 10.244.1.2:5000 to `quoted_destination`:53.
fn port_unreachable_quoting(quoted_destination: [u8; 4]) -> Vec<u8> {
    let mut quote = udp_packet(5000).to_vec();
    quote[12..16].copy_from_slice(&[10, 244, 1, 2]);
    quote[16..20].copy_from_slice(&quoted_destination);
    let mut packet = vec![0u8; 20];
    packet[0] = 0x45;
    packet[8] = 64;
    packet[9] = 1;
    packet[12..16].copy_from_slice(&[10, 244, 2, 5]);
    packet[16..20].copy_from_slice(&[10, 244, 1, 2]);
    packet.extend_from_slice(&[3, 3, 0, 0, 0, 0, 0, 0]);
    packet.extend_from_slice(&quote);
    let total = u16::try_from(packet.len()).unwrap();
    packet[2..4].copy_from_slice(&total.to_be_bytes());
    packet
}

#[test]
fn only_the_peer_a_flow_went_to_vouches_for_icmp_errors_about_it() {
    let conntrack = Conntrack::new(NonZeroUsize::new(16).unwrap(), Timeouts::default());
    let mut peers = PeerTable::new(x25519::StaticSecret::from([1; 32]), 100);
    let b = crate::mesh::Peer {
        name: "b".into(),
        public_key: weft_keys::PrivateKey::from_bytes([2; 32]).public_key(),
        next_public_key: None,
        endpoint: None,
        allowed_ips: vec!["10.244.2.0/24".parse().unwrap()],
    };
    peers.sync(&[("b".to_string(), b)].into_iter().collect());
    let forwarder = Forwarder {
        peers,
        local_blocks: PrefixTable::default(),
        policy: PacketPolicy::new(
            PolicyGate::new(conntrack, false),
            FragmentTable::new(16, Duration::from_secs(30)),
        ),
        drops: DropCounters::default(),
    };
    let index = forwarder
        .peers
        .index_for_destination("10.244.2.5".parse().unwrap())
        .unwrap();

    // About a flow to b's own Pods: b may answer it, the error may be related.
    let about_b = parse(&port_unreachable_quoting([10, 244, 2, 9])).unwrap();
    assert!(about_b.icmp_error.unwrap().quoted.is_some());
    assert_eq!(forwarder.vouched(index, about_b), about_b);
    // About a flow to another node's Pod: b cannot vouch for it; judged as a plain packet.
    let about_c = parse(&port_unreachable_quoting([10, 244, 3, 5])).unwrap();
    assert!(about_c.icmp_error.unwrap().quoted.is_some());
    assert_eq!(forwarder.vouched(index, about_c).icmp_error, None);
}

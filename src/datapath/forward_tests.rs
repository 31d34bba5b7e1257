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

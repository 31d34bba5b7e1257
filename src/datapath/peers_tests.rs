//! Peer table tests, including key rotations between two in-memory nodes whose forwarders (the
//! datapath without its devices) exchange real WireGuard messages: every data packet sent at
//! every step must arrive.

use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::time::Duration;

use super::*;
use crate::datapath::forward::{Forwarder, Wire};
use crate::datapath::fragments::FragmentTable;
use crate::datapath::packet_policy::PacketPolicy;
use crate::datapath::session::HANDSHAKE_RESPONSE;
use crate::datapath::stats::DropCounters;
use crate::policy::conntrack::{Conntrack, Timeouts};
use crate::policy::gate::PolicyGate;

fn secret(seed: u8) -> x25519::StaticSecret {
    x25519::StaticSecret::from([seed; 32])
}

fn public(seed: u8) -> PublicKey {
    PublicKey::from_bytes(x25519::PublicKey::from(&secret(seed)).to_bytes())
}

fn peer(name: &str, key: u8, ips: &[&str]) -> Peer {
    Peer {
        name: name.into(),
        public_key: public(key),
        next_public_key: None,
        endpoint: Some(format!("198.18.0.{key}:51820").parse().unwrap()),
        allowed_ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
    }
}

fn table() -> PeerTable {
    PeerTable::new(secret(1), 100)
}

fn mesh(peers: &[Peer]) -> BTreeMap<String, Peer> {
    peers.iter().map(|p| (p.name.clone(), p.clone())).collect()
}

#[test]
fn lookups_follow_the_mesh() {
    let mut table = table();
    let created = table.sync(&mesh(&[
        peer("n2", 2, &["10.244.2.0/24"]),
        peer("n3", 3, &["10.244.3.0/24"]),
    ]));
    assert_eq!(created.len(), 2, "each new peer gets a session to initiate");
    let n2 = table
        .index_for_destination("10.244.2.7".parse().unwrap())
        .unwrap();
    let n3 = table
        .index_for_destination("10.244.3.7".parse().unwrap())
        .unwrap();
    assert_ne!(n2, n3);
    let session = table.slot_mut(n2).unwrap().outbound().unwrap().index;
    assert_eq!(table.index_for_receiver(session << 8 | 5), Some(n2));
    assert!(table.source_allowed(n2, "10.244.2.9".parse().unwrap()));
    assert!(!table.source_allowed(n2, "10.244.3.9".parse().unwrap()));
    assert_eq!(
        table.index_for_destination("10.244.4.1".parse().unwrap()),
        None
    );
}

#[test]
fn changing_one_peer_keeps_the_others_state() {
    let mut table = table();
    table.sync(&mesh(&[
        peer("n2", 2, &["10.244.2.0/24"]),
        peer("n3", 3, &["10.244.3.0/24"]),
    ]));
    let n3 = table
        .index_for_destination("10.244.3.1".parse().unwrap())
        .unwrap();
    table.slot_mut(n3).unwrap().counters.rx_bytes = 77;
    let n3_session = table.slot_mut(n3).unwrap().outbound().unwrap().index;
    let n2 = table
        .index_for_destination("10.244.2.1".parse().unwrap())
        .unwrap();
    let n2_old_session = table.slot_mut(n2).unwrap().outbound().unwrap().index;

    // n2 gets a new key, n4 arrives: n3's slot (and its counters/sessions) stays.
    let created = table.sync(&mesh(&[
        peer("n2", 12, &["10.244.2.0/24"]),
        peer("n3", 3, &["10.244.3.0/24", "10.244.33.0/24"]),
        peer("n4", 4, &["10.244.4.0/24"]),
    ]));
    assert_eq!(
        created.len(),
        2,
        "a session for n2's new key and one for n4"
    );
    assert_eq!(
        table.index_for_destination("10.244.33.1".parse().unwrap()),
        Some(n3)
    );
    assert_eq!(table.slot_mut(n3).unwrap().counters.rx_bytes, 77);
    assert_eq!(
        table.slot_mut(n3).unwrap().outbound().unwrap().index,
        n3_session
    );
    assert_eq!(
        table.index_for_receiver(n2_old_session << 8),
        None,
        "a new key must not reuse the old key's session"
    );
    let n2_slot = table.slot_mut(n2).unwrap();
    assert_eq!(n2_slot.sessions.len(), 1);
    assert_eq!(n2_slot.sessions[0].peer_key, public(12));
    assert_eq!(table.peers().len(), 3);

    table.sync(&mesh(&[peer("n3", 3, &["10.244.3.0/24"])]));
    assert_eq!(table.peers().len(), 1);
    assert_eq!(
        table.index_for_destination("10.244.2.1".parse().unwrap()),
        None
    );
}

/// A node of the in-memory network: its forwarder (Pods 10.244.<key>.0/24, no policy source)
/// and what it delivered.
struct Node {
    forwarder: Forwarder,
    addr: SocketAddr,
    /// Inner packets that passed decryption and every check after it.
    delivered: Vec<Vec<u8>>,
}

fn node(key: u8) -> Node {
    let mut local_blocks = PrefixTable::default();
    local_blocks.insert(format!("10.244.{key}.0/24").parse().unwrap(), ());
    let conntrack = Conntrack::new(NonZeroUsize::new(64).unwrap(), Timeouts::default());
    Node {
        forwarder: Forwarder {
            peers: PeerTable::new(secret(key), 100),
            local_blocks,
            policy: PacketPolicy::new(
                PolicyGate::new(conntrack, false),
                FragmentTable::new(16, Duration::from_secs(30)),
            ),
            drops: DropCounters::default(),
        },
        addr: format!("198.18.0.{key}:51820").parse().unwrap(),
        delivered: Vec::new(),
    }
}

/// Datagrams in flight: (to node, from address, bytes).
type Network = VecDeque<(usize, SocketAddr, Vec<u8>)>;

fn node_at(nodes: &[Node], addr: SocketAddr) -> usize {
    nodes.iter().position(|n| n.addr == addr).unwrap()
}

/// What one node's forwarder wrote: messages to send, packets delivered.
#[derive(Default)]
struct Outbox {
    sent: Vec<(SocketAddr, Vec<u8>)>,
    delivered: Vec<Vec<u8>>,
}

impl Wire for Outbox {
    async fn send(&mut self, message: &[u8], to: SocketAddr) {
        self.sent.push((to, message.to_vec()));
    }

    async fn deliver(&mut self, packet: &[u8]) {
        self.delivered.push(packet.to_vec());
    }
}

/// Runs `step` on node `at`'s forwarder (with a datapath-sized buffer), then puts what it sent
/// on the network and records what it delivered.
fn on_node(
    nodes: &mut [Node],
    at: usize,
    network: &mut Network,
    step: impl AsyncFnOnce(&mut Forwarder, &mut [u8], &mut Outbox),
) {
    let mut out = vec![0u8; 2048];
    let mut outbox = Outbox::default();
    futures::executor::block_on(step(&mut nodes[at].forwarder, &mut out, &mut outbox));
    let from = nodes[at].addr;
    nodes[at].delivered.extend(outbox.delivered);
    for (to, bytes) in outbox.sent {
        network.push_back((node_at(nodes, to), from, bytes));
    }
}

/// Delivers the datagrams in flight, and those they cause, until none is left.
fn pump(nodes: &mut [Node], network: &mut Network) {
    while let Some((to, from, bytes)) = network.pop_front() {
        on_node(nodes, to, network, async |forwarder, out, outbox| {
            forwarder.receive(from, &bytes, out, outbox).await;
        });
    }
}

/// Sends handshake initiations for new sessions, as the engine does.
fn initiate(nodes: &mut [Node], from: usize, sessions: &[u32], network: &mut Network) {
    on_node(nodes, from, network, async |forwarder, out, outbox| {
        forwarder.initiate(sessions, out, outbox).await;
    });
}

/// A packet from the TUN of node `from`, as the engine hands it to the forwarder.
fn outbound(nodes: &mut [Node], from: usize, packet: &[u8], network: &mut Network) {
    on_node(nodes, from, network, async |forwarder, out, outbox| {
        forwarder.outbound(packet, out, outbox).await;
    });
}

/// A minimal IPv4/UDP packet from `src` to `dst` carrying `seq`.
fn packet(src: [u8; 4], dst: [u8; 4], seq: u32) -> Vec<u8> {
    let mut p = vec![0u8; 32];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&32u16.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p[28..32].copy_from_slice(&seq.to_be_bytes());
    p
}

/// Sends one data packet from node `from` to the Pod address `dst` and delivers everything
/// that follows from it; the packet must arrive.
fn send(nodes: &mut [Node], from: usize, src: [u8; 4], dst: [u8; 4], seq: u32, wire: &mut Network) {
    let data = packet(src, dst, seq);
    outbound(nodes, from, &data, wire);
    pump(nodes, wire);
    let receiver = nodes
        .iter()
        .position(|n| n.addr != nodes[from].addr)
        .unwrap();
    assert_eq!(
        nodes[receiver].delivered.last(),
        Some(&data),
        "packet {seq} from node {from} was lost"
    );
}

/// Traffic both ways, several packets each: every one must arrive.
fn traffic(nodes: &mut [Node], seq: &mut u32, wire: &mut Network) {
    for _ in 0..3 {
        *seq += 1;
        send(nodes, 0, [10, 244, 1, 5], [10, 244, 2, 5], *seq, wire);
        *seq += 1;
        send(nodes, 1, [10, 244, 2, 5], [10, 244, 1, 5], *seq, wire);
    }
}

fn peer_a(key: u8, next: Option<u8>) -> BTreeMap<String, Peer> {
    let mut a = peer("a", key, &["10.244.1.0/24"]);
    a.endpoint = Some("198.18.0.1:51820".parse().unwrap());
    a.next_public_key = next.map(public);
    mesh(&[a])
}

fn peer_b(key: u8, next: Option<u8>) -> BTreeMap<String, Peer> {
    let mut b = peer("b", key, &["10.244.2.0/24"]);
    b.endpoint = Some("198.18.0.2:51820".parse().unwrap());
    b.next_public_key = next.map(public);
    mesh(&[b])
}

/// Two connected nodes: a (key 1, Pods 10.244.1.0/24) and b (key 2, Pods 10.244.2.0/24).
fn connected() -> (Vec<Node>, Network, u32) {
    connect(vec![node(1), node(2)])
}

/// Makes the two nodes peers, handshakes, and checks traffic both ways.
fn connect(mut nodes: Vec<Node>) -> (Vec<Node>, Network, u32) {
    let mut wire = Network::new();
    let created = nodes[0].forwarder.peers.sync(&peer_b(2, None));
    nodes[1].forwarder.peers.sync(&peer_a(1, None));
    initiate(&mut nodes, 0, &created, &mut wire);
    pump(&mut nodes, &mut wire);
    let mut seq = 0;
    traffic(&mut nodes, &mut seq, &mut wire);
    (nodes, wire, seq)
}

/// A handshake initiation from session `index` of `table`.
fn initiation(table: &mut PeerTable, index: u32, force: bool) -> Vec<u8> {
    let mut out = vec![0u8; 2048];
    let id = table.peer_of_session(index).unwrap();
    let session = table.slot_mut(id).unwrap().session_mut(index).unwrap();
    match session.tunn.format_handshake_initiation(&mut out, force) {
        TunnResult::WriteToNetwork(init) => init.to_vec(),
        _ => panic!("no initiation"),
    }
}

/// Why `table` drops `datagram` from `from`, or `None` if it takes it (or answers it).
fn dropped(table: &mut PeerTable, from: SocketAddr, datagram: &[u8]) -> Option<DropReason> {
    let mut reply = vec![0u8; 2048];
    match table.classify(from, datagram, &mut reply) {
        Incoming::Drop(reason) => Some(reason),
        _ => None,
    }
}

/// A handshake initiation from a table of its own holding key `key` with `peers`.
fn initiation_from(key: u8, peers: &BTreeMap<String, Peer>) -> Vec<u8> {
    let mut table = PeerTable::new(secret(key), 100);
    let created = table.sync(peers);
    initiation(&mut table, created[0], false)
}

/// The sessions of a node's table on one of its own keys.
fn sessions_on(node: &Node, own: x25519::PublicKey) -> Vec<u32> {
    node.forwarder
        .peers
        .slots()
        .flat_map(|slot| slot.sessions.iter())
        .filter(|s| s.own == own)
        .map(|s| s.index)
        .collect()
}

fn outbound_keys(node: &mut Node, peer: &str) -> (x25519::PublicKey, PublicKey) {
    let id = *node.forwarder.peers.by_name.get(peer).unwrap();
    let session = node
        .forwarder
        .peers
        .slot_mut(id)
        .unwrap()
        .outbound()
        .unwrap();
    (session.own, session.peer_key)
}

#[test]
fn one_side_rotating_loses_no_packet_at_any_step() {
    let (mut nodes, mut wire, mut seq) = connected();
    let a_next = x25519::PublicKey::from(&secret(11));

    // a announces: it accepts both keys and has a session on the next one. If its timers
    // start that handshake before b knows the next key, it goes nowhere; the old session
    // carries on.
    nodes[0]
        .forwarder
        .peers
        .set_keys(secret(1), Some(secret(11)));
    let early = sessions_on(&nodes[0], a_next);
    assert_eq!(early.len(), 1);
    initiate(&mut nodes, 0, &early, &mut wire);
    pump(&mut nodes, &mut wire);
    traffic(&mut nodes, &mut seq, &mut wire);
    assert_eq!(
        nodes[0].forwarder.peers.key_moves().unwrap().pending,
        vec!["b".to_string()]
    );

    // b reads a's record with the next key: it handshakes to it at once.
    let created = nodes[1].forwarder.peers.sync(&peer_a(1, Some(11)));
    initiate(&mut nodes, 1, &created, &mut wire);
    pump(&mut nodes, &mut wire);
    nodes[0].forwarder.peers.choose_outbound(None);
    nodes[1].forwarder.peers.choose_outbound(None);
    traffic(&mut nodes, &mut seq, &mut wire);
    let moves = nodes[0].forwarder.peers.key_moves().unwrap();
    assert_eq!(moves.moved, vec!["b".to_string()]);
    assert_eq!(outbound_keys(&mut nodes[0], "b").0, a_next);
    assert_eq!(outbound_keys(&mut nodes[1], "a").1, public(11));

    // a completes: the next key is its only key; then b reads the record without it.
    nodes[0].forwarder.peers.set_keys(secret(11), None);
    traffic(&mut nodes, &mut seq, &mut wire);
    nodes[1].forwarder.peers.sync(&peer_a(11, None));
    traffic(&mut nodes, &mut seq, &mut wire);
    assert!(nodes[0].forwarder.peers.key_moves().is_none());
    for node in &mut nodes {
        for slot in node.forwarder.peers.slots_mut() {
            for session in &slot.sessions {
                assert!(
                    session.own != x25519::PublicKey::from(&secret(1))
                        && session.peer_key != public(1),
                    "a session on a's old key survived"
                );
            }
        }
    }
}

#[test]
fn both_sides_rotating_at_once_lose_no_packet() {
    let (mut nodes, mut wire, mut seq) = connected();
    nodes[0]
        .forwarder
        .peers
        .set_keys(secret(1), Some(secret(11)));
    nodes[1]
        .forwarder
        .peers
        .set_keys(secret(2), Some(secret(12)));
    traffic(&mut nodes, &mut seq, &mut wire);

    // Each reads the other's announcement.
    let created = nodes[0].forwarder.peers.sync(&peer_b(2, Some(12)));
    initiate(&mut nodes, 0, &created, &mut wire);
    let created = nodes[1].forwarder.peers.sync(&peer_a(1, Some(11)));
    initiate(&mut nodes, 1, &created, &mut wire);
    pump(&mut nodes, &mut wire);
    nodes[0].forwarder.peers.choose_outbound(None);
    nodes[1].forwarder.peers.choose_outbound(None);
    traffic(&mut nodes, &mut seq, &mut wire);
    assert_eq!(
        nodes[0].forwarder.peers.key_moves().unwrap().moved,
        vec!["b".to_string()]
    );
    assert_eq!(
        nodes[1].forwarder.peers.key_moves().unwrap().moved,
        vec!["a".to_string()]
    );

    // a completes first, b a little later; the records follow.
    nodes[0].forwarder.peers.set_keys(secret(11), None);
    traffic(&mut nodes, &mut seq, &mut wire);
    nodes[1].forwarder.peers.sync(&peer_a(11, None));
    traffic(&mut nodes, &mut seq, &mut wire);
    nodes[1].forwarder.peers.set_keys(secret(12), None);
    traffic(&mut nodes, &mut seq, &mut wire);
    nodes[0].forwarder.peers.sync(&peer_b(12, None));
    traffic(&mut nodes, &mut seq, &mut wire);
    assert_eq!(
        outbound_keys(&mut nodes[0], "b"),
        (x25519::PublicKey::from(&secret(11)), public(12))
    );
    assert_eq!(
        outbound_keys(&mut nodes[1], "a"),
        (x25519::PublicKey::from(&secret(12)), public(11))
    );
}

#[test]
fn a_handshake_to_a_key_we_do_not_hold_is_dropped() {
    let (mut nodes, _, _) = connected();
    // b thinks a rotates to key 11, but a never announced it: a must refuse the handshake
    // (its MAC1 is keyed to a key a does not hold).
    let created = nodes[1].forwarder.peers.sync(&peer_a(1, Some(11)));
    let init = initiation(&mut nodes[1].forwarder.peers, created[0], false);
    let from = nodes[1].addr;
    assert_eq!(
        dropped(&mut nodes[0].forwarder.peers, from, &init),
        Some(DropReason::Malformed)
    );
}

#[test]
fn after_a_rotation_the_old_key_is_refused_both_ways() {
    let (mut nodes, mut wire, mut seq) = connected();
    nodes[0]
        .forwarder
        .peers
        .set_keys(secret(1), Some(secret(11)));
    let created = nodes[1].forwarder.peers.sync(&peer_a(1, Some(11)));
    initiate(&mut nodes, 1, &created, &mut wire);
    pump(&mut nodes, &mut wire);
    nodes[0].forwarder.peers.set_keys(secret(11), None);
    nodes[1].forwarder.peers.sync(&peer_a(11, None));
    traffic(&mut nodes, &mut seq, &mut wire);

    // Someone holding a's old key initiates to b as a: b knows no peer with that key.
    let init = initiation_from(1, &peer_b(2, None));
    let from = nodes[0].addr;
    assert_eq!(
        dropped(&mut nodes[1].forwarder.peers, from, &init),
        Some(DropReason::UnknownPeer)
    );

    // And b, still configured with a's old key somewhere, cannot reach a on it: a handshake
    // addressed to the old key fails a's MAC1 check.
    let init = initiation_from(2, &peer_a(1, None));
    let from = nodes[1].addr;
    assert_eq!(
        dropped(&mut nodes[0].forwarder.peers, from, &init),
        Some(DropReason::Malformed)
    );
}

#[test]
fn a_handshake_is_counted_once_by_the_rate_limiter() {
    // With a limit of one handshake per second, one handshake must still complete: counting
    // it twice (once on arrival, once inside the session) would answer it with a cookie.
    let mut b = node(2);
    b.forwarder.peers = PeerTable::new(secret(2), 1);
    let (mut nodes, _, _) = connect(vec![node(1), b]);
    let created: Vec<u32> = nodes[0]
        .forwarder
        .peers
        .slots()
        .flat_map(|slot| slot.sessions.iter().map(|s| s.index))
        .collect();

    // The next one within the second is over the limit: answered with a cookie reply, before
    // anything about it is trusted.
    let init = initiation(&mut nodes[0].forwarder.peers, created[0], true);
    let mut reply = vec![0u8; 2048];
    let from = nodes[0].addr;
    match nodes[1].forwarder.peers.classify(from, &init, &mut reply) {
        Incoming::Reply(cookie) => assert_eq!(cookie.first(), Some(&3)),
        other => panic!("expected a cookie reply, got {other:?}"),
    }
}

#[test]
fn truncated_handshakes_and_garbage_are_malformed() {
    let (mut nodes, _, _) = connected();
    let index = sessions_on(&nodes[1], x25519::PublicKey::from(&secret(2)))[0];
    let init = initiation(&mut nodes[1].forwarder.peers, index, true);
    let from = nodes[1].addr;
    for bad in [
        &init[..init.len() - 1],
        &init[..4],
        &[][..],
        &[1u8, 0, 0, 0, 7, 7][..],
    ] {
        assert_eq!(
            dropped(&mut nodes[0].forwarder.peers, from, bad),
            Some(DropReason::Malformed),
            "{} bytes",
            bad.len()
        );
    }
}

#[test]
fn data_for_an_unknown_receiver_index_is_dropped_as_such() {
    let (mut nodes, _, _) = connected();
    let from = nodes[1].addr;
    // A well-formed transport data message (type 4, receiver, counter, 16-byte tag) for a
    // receiver index no session of ours has.
    let mut data = vec![4u8, 0, 0, 0];
    data.extend_from_slice(&0xdead_be00u32.to_le_bytes());
    data.extend_from_slice(&[0u8; 8 + 16]);
    assert_eq!(
        dropped(&mut nodes[0].forwarder.peers, from, &data),
        Some(DropReason::UnknownReceiver)
    );
}

fn counters(node: &mut Node, peer: &str) -> PeerCounters {
    let id = *node.forwarder.peers.by_name.get(peer).unwrap();
    node.forwarder.peers.slot_mut(id).unwrap().counters.clone()
}

#[test]
fn packets_queued_during_a_handshake_count_as_sent_when_flushed() {
    let mut nodes = vec![node(1), node(2)];
    let mut network = Network::new();
    nodes[0].forwarder.peers.sync(&peer_b(2, None));
    nodes[1].forwarder.peers.sync(&peer_a(1, None));

    // No session yet: the packets wait in the session's queue; the first starts the
    // handshake. Nothing has been sent to b but that initiation.
    let packets: Vec<Vec<u8>> = (1..=3)
        .map(|seq| packet([10, 244, 1, 5], [10, 244, 2, 5], seq))
        .collect();
    for data in &packets {
        outbound(&mut nodes, 0, data, &mut network);
    }
    assert_eq!(network.len(), 1, "only the handshake initiation leaves");
    assert_eq!(counters(&mut nodes[0], "b").tx_bytes, 0);

    // The handshake completes and the queue is flushed: now they are sent, and counted.
    pump(&mut nodes, &mut network);
    assert_eq!(nodes[1].delivered, packets);
    let bytes: u64 = packets.iter().map(|p| p.len() as u64).sum();
    assert_eq!(counters(&mut nodes[0], "b").tx_bytes, bytes);
    assert_eq!(counters(&mut nodes[1], "a").rx_bytes, bytes);

    // A packet on the established session is counted as it leaves, once.
    let next = packet([10, 244, 1, 5], [10, 244, 2, 5], 4);
    outbound(&mut nodes, 0, &next, &mut network);
    pump(&mut nodes, &mut network);
    let bytes = bytes + next.len() as u64;
    assert_eq!(counters(&mut nodes[0], "b").tx_bytes, bytes);
    assert_eq!(counters(&mut nodes[1], "a").rx_bytes, bytes);
}

fn endpoint_of(node: &mut Node, peer: &str) -> Option<SocketAddr> {
    let id = *node.forwarder.peers.by_name.get(peer).unwrap();
    node.forwarder.peers.slot_mut(id).unwrap().endpoint
}

/// Runs `step` on a forwarder, returning what it sent (without putting it on the network:
/// the addresses may be nobody's).
fn sent_by(
    forwarder: &mut Forwarder,
    step: impl AsyncFnOnce(&mut Forwarder, &mut [u8], &mut Outbox),
) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut out = vec![0u8; 2048];
    let mut outbox = Outbox::default();
    futures::executor::block_on(step(forwarder, &mut out, &mut outbox));
    outbox.sent
}

#[test]
fn a_replayed_handshake_initiation_is_answered_but_does_not_move_the_endpoint() {
    let (mut nodes, _, _) = connected();
    let a_session = nodes[0].forwarder.peers.slots().next().unwrap().sessions[0].index;
    let captured = initiation(&mut nodes[0].forwarder.peers, a_session, true);
    // b drops peer a and adds it again: its new session has seen no initiation yet.
    nodes[1].forwarder.peers.sync(&BTreeMap::new());
    nodes[1].forwarder.peers.sync(&peer_a(1, None));
    let attacker: SocketAddr = "203.0.113.9:4444".parse().unwrap();
    let sent = sent_by(&mut nodes[1].forwarder, async |f, out, outbox| {
        f.receive(attacker, &captured, out, outbox).await;
    });
    assert!(
        sent.iter()
            .any(|(to, m)| *to == attacker && m[0] == HANDSHAKE_RESPONSE),
        "the initiation authenticates, so it is answered where it came from: {sent:?}"
    );
    assert_eq!(
        endpoint_of(&mut nodes[1], "a"),
        Some("198.18.0.1:51820".parse().unwrap()),
        "a replayable initiation moved the peer's endpoint"
    );
}

#[test]
fn a_keepalive_from_a_new_address_moves_the_endpoint() {
    let (mut nodes, _, _) = connected();
    let mut out = vec![0u8; 2048];
    let id = *nodes[0].forwarder.peers.by_name.get("b").unwrap();
    let slot = nodes[0].forwarder.peers.slot_mut(id).unwrap();
    let keepalive = match slot.outbound().unwrap().tunn.encapsulate(&[], &mut out) {
        TunnResult::WriteToNetwork(message) => message.to_vec(),
        _ => panic!("no keepalive"),
    };
    let roamed: SocketAddr = "198.18.0.11:51820".parse().unwrap();
    sent_by(&mut nodes[1].forwarder, async |f, out, outbox| {
        f.receive(roamed, &keepalive, out, outbox).await;
    });
    assert_eq!(endpoint_of(&mut nodes[1], "a"), Some(roamed));
}

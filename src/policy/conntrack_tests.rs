use super::*;

/// Short timeouts the tests step past (TCP 1 h rather than the default 5 days).
const TEST_TIMEOUTS: Timeouts = Timeouts {
    tcp: Duration::from_secs(3600),
    udp: Duration::from_secs(120),
    other: Duration::from_secs(60),
};

fn key(sport: u16) -> FlowKey {
    FlowKey {
        protocol: IPPROTO_TCP,
        src: "10.244.1.2".parse().unwrap(),
        dst: "10.244.2.2".parse().unwrap(),
        src_port: sport,
        dst_port: 80,
    }
}

fn table(capacity: usize) -> Conntrack {
    Conntrack::new(NonZeroUsize::new(capacity).unwrap(), TEST_TIMEOUTS)
}

fn allowed(version: u64) -> Judged {
    Judged {
        version,
        revoked: false,
    }
}

fn revoked(version: u64) -> Judged {
    Judged {
        version,
        revoked: true,
    }
}

#[test]
fn replies_to_outbound_flows_are_tracked_until_they_expire() {
    let mut ct = table(8);
    let t0 = Instant::now();
    ct.record_outbound(key(1000), Sent::Opening, 3, t0);
    assert_eq!(
        ct.lookup_inbound(&key(1000).reversed(), t0),
        Tracked::Reply(allowed(3))
    );
    // The same direction as the outbound flow is not a reply.
    assert_eq!(ct.lookup_inbound(&key(1000), t0), Tracked::Miss);
    let late = t0 + Duration::from_secs(3601);
    assert_eq!(
        ct.lookup_inbound(&key(1000).reversed(), late),
        Tracked::Miss
    );
    assert!(ct.is_empty());
}

#[test]
fn answering_an_inbound_flow_does_not_turn_it_into_a_reply() {
    let mut ct = table(8);
    let t0 = Instant::now();
    ct.record_inbound(key(1), 7, t0);
    // Even a packet that may open a flow (any UDP packet may) only answers the inbound one.
    ct.record_outbound(key(1).reversed(), Sent::Opening, 7, t0);
    assert_eq!(ct.len(), 1);
    // The inbound direction is still an inbound flow (re-checked when policy changes).
    assert_eq!(ct.lookup_inbound(&key(1), t0), Tracked::Inbound(allowed(7)));
}

#[test]
fn answering_a_revoked_inbound_flow_opens_no_flow_of_its_own() {
    let mut ct = table(8);
    let t0 = Instant::now();
    ct.record_inbound(key(1), 7, t0);
    ct.judge(&key(1), 8, false, t0);
    // The local Pod keeps sending on the flow (even packets that may open a flow): its
    // packets are not a flow it opened, so the remote side's packets never become replies.
    for s in 1..=3 {
        let t = t0 + Duration::from_secs(s);
        ct.record_outbound(key(1).reversed(), Sent::Opening, 8, t);
        assert_eq!(ct.lookup_inbound(&key(1), t), Tracked::Inbound(revoked(8)));
    }
    assert_eq!((ct.len(), ct.revoked_len()), (0, 1));
    // A later rule set may allow it again: a live flow once more.
    ct.judge(&key(1), 9, true, t0);
    assert_eq!(ct.lookup_inbound(&key(1), t0), Tracked::Inbound(allowed(9)));
    assert_eq!((ct.len(), ct.revoked_len()), (1, 0));
}

#[test]
fn a_revoked_flow_opened_here_stays_revoked_while_the_local_side_sends() {
    let mut ct = table(8);
    let t0 = Instant::now();
    ct.record_outbound(key(1), Sent::Opening, 1, t0);
    let reply = key(1).reversed();
    ct.judge(&reply, 2, false, t0);
    ct.record_outbound(key(1), Sent::Opening, 2, t0 + Duration::from_secs(1));
    assert_eq!(ct.lookup_inbound(&reply, t0), Tracked::Reply(revoked(2)));
    assert_eq!((ct.len(), ct.revoked_len()), (0, 1));
    // Allowed again: replies of a flow opened here once more.
    ct.judge(&reply, 3, true, t0);
    assert_eq!(ct.lookup_inbound(&reply, t0), Tracked::Reply(allowed(3)));
    ct.record_outbound(key(1), Sent::Opening, 3, t0);
    assert_eq!((ct.len(), ct.revoked_len()), (1, 0));
}

#[test]
fn a_revoked_flow_is_forgotten_once_idle_for_its_timeout() {
    let mut ct = table(8);
    let t0 = Instant::now();
    ct.record_inbound(key(1), 1, t0);
    ct.judge(&key(1), 2, false, t0);
    // Kept alive by the local side until then.
    let t1 = t0 + Duration::from_secs(3000);
    ct.record_outbound(key(1).reversed(), Sent::Opening, 2, t1);
    assert_eq!(ct.lookup_inbound(&key(1), t1), Tracked::Inbound(revoked(2)));
    // Idle for longer than the TCP timeout: forgotten. A mid-stream packet of the local side
    // opens nothing; a connection opening does.
    let late = t1 + Duration::from_secs(3601);
    ct.record_outbound(key(1).reversed(), Sent::MidStream, 2, late);
    assert_eq!((ct.len(), ct.revoked_len()), (0, 0));
    assert_eq!(ct.lookup_inbound(&key(1), late), Tracked::Miss);
    ct.record_outbound(key(1).reversed(), Sent::Opening, 2, late);
    assert_eq!(ct.lookup_inbound(&key(1), late), Tracked::Reply(allowed(2)));
    assert_eq!((ct.len(), ct.revoked_len()), (1, 0));
}

#[test]
fn an_idle_revoked_flow_is_forgotten_by_the_next_inbound_packet_too() {
    let mut ct = table(8);
    let t0 = Instant::now();
    ct.record_inbound(key(1), 1, t0);
    ct.judge(&key(1), 2, false, t0);
    let t1 = t0 + Duration::from_secs(3600);
    assert_eq!(ct.lookup_inbound(&key(1), t1), Tracked::Inbound(revoked(2)));
    let late = t1 + Duration::from_secs(3601);
    assert_eq!(ct.lookup_inbound(&key(1), late), Tracked::Miss);
    assert_eq!(ct.revoked_len(), 0);
}

#[test]
fn live_flows_filling_the_table_do_not_evict_a_revoked_flow() {
    let mut ct = table(2);
    let t0 = Instant::now();
    ct.record_inbound(key(1), 1, t0);
    ct.judge(&key(1), 2, false, t0);
    // The remote side opens many flows policy allows: live ones are evicted.
    for sport in 2..20 {
        ct.record_inbound(key(sport), 2, t0);
    }
    assert_eq!(ct.evictions, 16);
    // The revocation stands: the local side's packet opens no flow.
    ct.record_outbound(key(1).reversed(), Sent::Opening, 2, t0);
    assert_eq!(ct.lookup_inbound(&key(1), t0), Tracked::Inbound(revoked(2)));
    assert_eq!(
        (ct.len(), ct.revoked_len(), ct.revoked_evictions),
        (2, 1, 0)
    );
}

#[test]
fn a_full_revoked_table_evicts_the_least_recently_used_and_counts_it() {
    let mut ct = table(2);
    let t0 = Instant::now();
    for sport in 1..=3 {
        ct.record_inbound(key(sport), 1, t0);
        ct.judge(&key(sport), 2, false, t0);
        if sport == 2 {
            // Touch flow 1, so flow 2 is the least recently used revoked flow.
            ct.record_outbound(key(1).reversed(), Sent::Opening, 2, t0);
        }
    }
    assert_eq!((ct.revoked_len(), ct.revoked_evictions), (2, 1));
    assert_eq!(ct.evictions, 0);
    assert_eq!(ct.lookup_inbound(&key(2), t0), Tracked::Miss);
    assert_eq!(ct.lookup_inbound(&key(1), t0), Tracked::Inbound(revoked(2)));
    assert_eq!(ct.lookup_inbound(&key(3), t0), Tracked::Inbound(revoked(2)));
    // Judging a revoked flow revoked again is no eviction.
    ct.judge(&key(3), 3, false, t0);
    assert_eq!(ct.lookup_inbound(&key(3), t0), Tracked::Inbound(revoked(3)));
    assert_eq!(ct.revoked_evictions, 1);
}

#[test]
fn judging_an_untracked_packet_changes_nothing() {
    let mut ct = table(8);
    let t0 = Instant::now();
    ct.record_outbound(key(1), Sent::Opening, 1, t0);
    // key(1) itself is the outbound direction, not a packet of the flow coming in.
    ct.judge(&key(1), 2, false, t0);
    ct.judge(&key(2), 2, false, t0);
    assert_eq!(
        ct.lookup_inbound(&key(1).reversed(), t0),
        Tracked::Reply(allowed(1))
    );
    assert_eq!(ct.len(), 1);
}

#[test]
fn a_full_table_evicts_the_least_recently_used_and_counts_it() {
    let mut ct = table(2);
    let t0 = Instant::now();
    ct.record_outbound(key(1), Sent::Opening, 0, t0);
    ct.record_outbound(key(2), Sent::Opening, 0, t0);
    // Touch flow 1, so flow 2 is the least recently used.
    assert!(matches!(
        ct.lookup_inbound(&key(1).reversed(), t0),
        Tracked::Reply(_)
    ));
    ct.record_outbound(key(3), Sent::Opening, 0, t0);
    assert_eq!(ct.evictions, 1);
    assert_eq!(ct.len(), 2);
    assert_eq!(ct.lookup_inbound(&key(2).reversed(), t0), Tracked::Miss);
    assert!(matches!(
        ct.lookup_inbound(&key(1).reversed(), t0),
        Tracked::Reply(_)
    ));
    assert!(matches!(
        ct.lookup_inbound(&key(3).reversed(), t0),
        Tracked::Reply(_)
    ));
    // Refreshing an existing flow is no eviction.
    ct.record_outbound(key(3), Sent::Opening, 0, t0);
    assert_eq!(ct.evictions, 1);
}

fn udp_key(sport: u16) -> FlowKey {
    FlowKey {
        protocol: IPPROTO_UDP,
        ..key(sport)
    }
}

/// A table holding `capacity` live flows with a pickup window of 2 minutes from `created`.
fn table_with_pickup(capacity: usize, created: Instant) -> Conntrack {
    table(capacity).with_pickup(created, Duration::from_secs(120))
}

#[test]
fn a_mid_stream_tcp_packet_of_no_tracked_flow_opens_nothing() {
    let mut ct = table(8);
    let t0 = Instant::now();
    ct.record_outbound(key(1), Sent::MidStream, 1, t0);
    assert_eq!(ct.lookup_inbound(&key(1).reversed(), t0), Tracked::Miss);
    assert!(ct.is_empty());
    // A connection opening does; the flow's later packets refresh it.
    ct.record_outbound(key(1), Sent::Opening, 1, t0);
    let t1 = t0 + Duration::from_secs(3000);
    ct.record_outbound(key(1), Sent::MidStream, 1, t1);
    let t2 = t1 + Duration::from_secs(3000);
    assert_eq!(
        ct.lookup_inbound(&key(1).reversed(), t2),
        Tracked::Reply(allowed(1))
    );
}

#[test]
fn an_evicted_inbound_flow_answered_by_the_local_side_is_not_opened_here() {
    let mut ct = table(2);
    let t0 = Instant::now();
    ct.record_inbound(key(1), 1, t0);
    for sport in 2..=3 {
        ct.record_inbound(key(sport), 1, t0);
    }
    assert_eq!(ct.evictions, 1);
    // The local server's next packet on the evicted flow: not a flow it opened.
    ct.record_outbound(key(1).reversed(), Sent::MidStream, 1, t0);
    assert_eq!(ct.lookup_inbound(&key(1), t0), Tracked::Miss);
}

#[test]
fn in_the_pickup_window_any_outbound_tcp_packet_opens_a_flow() {
    let created = Instant::now();
    let mut ct = table_with_pickup(8, created);
    // Just after a restart: the local client's next packet on a connection it opened
    // before picks the connection up, so the server's replies pass.
    let t = created + Duration::from_secs(119);
    ct.record_outbound(key(1), Sent::MidStream, 1, t);
    assert_eq!(
        ct.lookup_inbound(&key(1).reversed(), t),
        Tracked::Reply(allowed(1))
    );
    // Once the window has passed, no more.
    let after = created + Duration::from_secs(120);
    ct.record_outbound(key(2), Sent::MidStream, 1, after);
    assert_eq!(ct.lookup_inbound(&key(2).reversed(), after), Tracked::Miss);
    ct.record_outbound(key(2), Sent::Opening, 1, after);
    assert_eq!(
        ct.lookup_inbound(&key(2).reversed(), after),
        Tracked::Reply(allowed(1))
    );
}

#[test]
fn a_zero_pickup_window_is_none() {
    let created = Instant::now();
    let mut ct = table(8).with_pickup(created, Duration::ZERO);
    ct.record_outbound(key(1), Sent::MidStream, 1, created);
    assert!(ct.is_empty());
}

#[test]
fn udp_packets_of_no_tracked_flow_open_one() {
    let mut ct = table(8);
    let t0 = Instant::now();
    ct.record_outbound(udp_key(1), Sent::Opening, 1, t0);
    assert_eq!(
        ct.lookup_inbound(&udp_key(1).reversed(), t0),
        Tracked::Reply(allowed(1))
    );
}

/// A table holding 2 live and 2 revoked flows, with `key(1)` revoked at `t0` and
/// `udp_key(2)` at `t0` + 10 s.
fn two_revoked(t0: Instant) -> Conntrack {
    let mut ct = table(2);
    ct.record_inbound(key(1), 1, t0);
    ct.judge(&key(1), 2, false, t0);
    let t1 = t0 + Duration::from_secs(10);
    ct.record_inbound(udp_key(2), 1, t1);
    ct.judge(&udp_key(2), 2, false, t1);
    assert_eq!(ct.revoked_len(), 2);
    ct
}

#[test]
fn a_sweep_forgets_revoked_flows_idle_for_their_timeout() {
    let t0 = Instant::now();
    let mut ct = two_revoked(t0);
    // Neither has been idle for its timeout (TCP 1 h, UDP 120 s).
    assert_eq!(ct.sweep_revoked(t0 + Duration::from_secs(60)), 0);
    assert_eq!(ct.revoked_len(), 2);
    // The TCP flow, least recently used, has: forgotten; the UDP one has too.
    let late = t0 + Duration::from_secs(3601);
    assert_eq!(ct.sweep_revoked(late), 2);
    assert_eq!(ct.revoked_len(), 0);
    assert_eq!(ct.revoked_evictions, 0);
}

#[test]
fn a_sweep_stops_at_the_least_recently_used_flow_still_revoked() {
    let t0 = Instant::now();
    let mut ct = two_revoked(t0);
    // The UDP flow expired, but the TCP flow before it has not: the UDP one waits for its
    // next packet or a later sweep.
    let t = t0 + Duration::from_secs(300);
    assert_eq!(ct.sweep_revoked(t), 0);
    assert_eq!(ct.lookup_inbound(&udp_key(2), t), Tracked::Miss);
    assert_eq!(ct.revoked_len(), 1);
}

#[test]
fn a_full_revoked_table_forgetting_an_expired_flow_counts_no_eviction() {
    let t0 = Instant::now();
    let mut ct = two_revoked(t0);
    // The TCP flow (least recently used) has expired when a third is revoked.
    let late = t0 + Duration::from_secs(3601);
    ct.record_inbound(key(3), 2, late);
    ct.judge(&key(3), 3, false, late);
    assert_eq!((ct.revoked_len(), ct.revoked_evictions), (2, 0));
    assert_eq!(ct.lookup_inbound(&key(1), late), Tracked::Miss);
    // The UDP flow (expired too) is next; then a live revocation is an eviction.
    ct.record_inbound(key(4), 2, late);
    ct.judge(&key(4), 3, false, late);
    assert_eq!(ct.revoked_evictions, 0);
    ct.record_inbound(key(5), 2, late);
    ct.judge(&key(5), 3, false, late);
    assert_eq!((ct.revoked_len(), ct.revoked_evictions), (2, 1));
}

#[test]
fn the_default_tcp_timeout_outlasts_keepalives() {
    // Past the pickup window only a SYN opens a TCP flow: a connection forgotten while idle
    // would stay broken. Linux sends the first keepalive after 2 h by default.
    assert!(Timeouts::default().tcp > Duration::from_secs(2 * 3600));
    assert_eq!(Timeouts::default().udp, TEST_TIMEOUTS.udp);
}

#[test]
fn an_icmp_error_relates_to_the_live_flow_its_quoted_packet_belongs_to() {
    let mut ct = table(8);
    let t0 = Instant::now();
    // Opened here: the quoted packet is the local side's, as it sent it.
    ct.record_outbound(key(1), Sent::Opening, 3, t0);
    assert_eq!(ct.lookup_related(&key(1), t0), Tracked::Reply(allowed(3)));
    // The reverse of a flow opened here is no packet the local side sent.
    assert_eq!(ct.lookup_related(&key(1).reversed(), t0), Tracked::Miss);
    // An inbound flow: the quoted packet is the local side's answer on it.
    ct.record_inbound(key(2), 3, t0);
    assert_eq!(
        ct.lookup_related(&key(2).reversed(), t0),
        Tracked::Inbound(allowed(3))
    );
    assert_eq!(ct.lookup_related(&key(2), t0), Tracked::Miss);
    // A revoked flow relates to nothing.
    ct.judge(&key(2), 4, false, t0);
    assert_eq!(ct.lookup_related(&key(2).reversed(), t0), Tracked::Miss);
    assert_eq!(ct.lookup_related(&key(9), t0), Tracked::Miss);
}

#[test]
fn a_related_lookup_refreshes_and_records_nothing() {
    let mut ct = table(8);
    let t0 = Instant::now();
    ct.record_outbound(key(1), Sent::Opening, 1, t0);
    // Looked up just before its timeout, it still expires at its timeout from t0.
    let before = t0 + Duration::from_secs(3600);
    assert_eq!(
        ct.lookup_related(&key(1), before),
        Tracked::Reply(allowed(1))
    );
    let after = t0 + Duration::from_secs(3601);
    assert_eq!(ct.lookup_related(&key(1), after), Tracked::Miss);
    assert_eq!(ct.lookup_inbound(&key(1).reversed(), after), Tracked::Miss);
    // Nor does a lookup of an untracked packet open a flow.
    assert_eq!(ct.lookup_related(&key(5), t0), Tracked::Miss);
    assert!(ct.is_empty());
}

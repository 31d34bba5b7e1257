//! Connection tracking for policy: flows this node opened (so their replies pass) and inbound
//! flows policy allowed (so their later packets skip the full check). Every flow carries the
//! rule set version it was last judged under; a flow judged denied after a rule set change is
//! kept as *revoked*, so neither direction can bring it back (an outbound packet answering a
//! revoked inbound flow does not open a flow of its own), until it has been idle for its
//! timeout. Bounded: when full, the least recently used flow is evicted and counted. Time is
//! passed in.

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use lru::LruCache;

/// IP protocol numbers.
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// A flow in one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub protocol: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
}

impl FlowKey {
    pub fn reversed(&self) -> Self {
        Self {
            protocol: self.protocol,
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }
}

/// Idle timeouts by protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp: Duration,
    pub udp: Duration,
    pub other: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp: Duration::from_secs(3600),
            udp: Duration::from_secs(120),
            other: Duration::from_secs(60),
        }
    }
}

impl Timeouts {
    fn of(&self, protocol: u8) -> Duration {
        match protocol {
            IPPROTO_TCP => self.tcp,
            IPPROTO_UDP => self.udp,
            _ => self.other,
        }
    }
}

/// The last judgement of a tracked flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Judged {
    /// The rule set version it was judged under (for a flow opened here and not judged since:
    /// the version in force when it was opened).
    pub version: u64,
    /// Denied under `version`: its packets are dropped until it expires.
    pub revoked: bool,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    last_seen: Instant,
    /// This node sent the flow's first packet (its key is the outbound direction); otherwise
    /// the key is the inbound direction policy allowed.
    opened_here: bool,
    judged: Judged,
}

/// What a lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tracked {
    /// A reply to a flow this node opened.
    Reply(Judged),
    /// A packet of an inbound flow policy allowed (or, if revoked, no longer allows).
    Inbound(Judged),
    /// Not tracked (or expired).
    Miss,
}

pub struct Conntrack {
    flows: LruCache<FlowKey, Entry>,
    timeouts: Timeouts,
    pub evictions: u64,
}

impl Conntrack {
    pub fn new(capacity: NonZeroUsize, timeouts: Timeouts) -> Self {
        Self {
            flows: LruCache::new(capacity),
            timeouts,
            evictions: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.flows.cap().get()
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    fn insert(&mut self, key: FlowKey, entry: Entry) {
        if !self.flows.contains(&key) && self.flows.len() == self.flows.cap().get() {
            self.evictions += 1;
        }
        self.flows.put(key, entry);
    }

    /// Records a packet this node sends (an encrypted outbound packet), with `version` the rule
    /// set in force. A packet answering an inbound flow, allowed or revoked, is that flow's
    /// reply, not a flow of its own: it only refreshes the inbound entry, so the inbound
    /// direction stays subject to policy. A packet of a flow opened here refreshes it (a
    /// revoked one stays revoked). Anything else opens a flow.
    pub fn record_outbound(&mut self, key: FlowKey, version: u64, now: Instant) {
        let timeout = self.timeouts.of(key.protocol);
        let reverse = key.reversed();
        if let Some(entry) = self.flows.get_mut(&reverse)
            && !entry.opened_here
        {
            if now.duration_since(entry.last_seen) <= timeout {
                entry.last_seen = now;
                return;
            }
            self.flows.pop(&reverse);
        }
        if let Some(entry) = self.flows.get_mut(&key)
            && entry.opened_here
            && now.duration_since(entry.last_seen) <= timeout
        {
            entry.last_seen = now;
            return;
        }
        self.insert(
            key,
            Entry {
                last_seen: now,
                opened_here: true,
                judged: Judged {
                    version,
                    revoked: false,
                },
            },
        );
    }

    /// Records an inbound flow policy allowed under `version`.
    pub fn record_inbound(&mut self, key: FlowKey, version: u64, now: Instant) {
        self.insert(
            key,
            Entry {
                last_seen: now,
                opened_here: false,
                judged: Judged {
                    version,
                    revoked: false,
                },
            },
        );
    }

    /// Looks up an inbound packet: a reply to a flow opened here, or a packet of an inbound
    /// flow. Refreshes what it finds (revoked flows too: they stay revoked while in use);
    /// forgets what has expired.
    pub fn lookup_inbound(&mut self, key: &FlowKey, now: Instant) -> Tracked {
        let timeout = self.timeouts.of(key.protocol);
        let reverse = key.reversed();
        if let Some(entry) = self.flows.get_mut(&reverse)
            && entry.opened_here
        {
            if now.duration_since(entry.last_seen) <= timeout {
                entry.last_seen = now;
                return Tracked::Reply(entry.judged);
            }
            self.flows.pop(&reverse);
        }
        if let Some(entry) = self.flows.get_mut(key)
            && !entry.opened_here
        {
            if now.duration_since(entry.last_seen) <= timeout {
                entry.last_seen = now;
                return Tracked::Inbound(entry.judged);
            }
            self.flows.pop(key);
        }
        Tracked::Miss
    }

    /// Records a new judgement of the tracked flow the inbound packet `key` belongs to (as
    /// [`Conntrack::lookup_inbound`] found it): allowed, or revoked, under `version`. Nothing
    /// happens if the packet belongs to no tracked flow.
    pub fn judge(&mut self, key: &FlowKey, version: u64, allowed: bool) {
        let judged = Judged {
            version,
            revoked: !allowed,
        };
        if let Some(entry) = self.flows.peek_mut(&key.reversed())
            && entry.opened_here
        {
            entry.judged = judged;
        } else if let Some(entry) = self.flows.peek_mut(key)
            && !entry.opened_here
        {
            entry.judged = judged;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        Conntrack::new(NonZeroUsize::new(capacity).unwrap(), Timeouts::default())
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
        ct.record_outbound(key(1000), 3, t0);
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
        ct.record_outbound(key(1).reversed(), 7, t0);
        assert_eq!(ct.len(), 1);
        // The inbound direction is still an inbound flow (re-checked when policy changes).
        assert_eq!(ct.lookup_inbound(&key(1), t0), Tracked::Inbound(allowed(7)));
    }

    #[test]
    fn answering_a_revoked_inbound_flow_opens_no_flow_of_its_own() {
        let mut ct = table(8);
        let t0 = Instant::now();
        ct.record_inbound(key(1), 7, t0);
        ct.judge(&key(1), 8, false);
        // The local Pod keeps sending on the flow: its packets are not a flow it opened, so
        // the remote side's packets never become replies.
        for s in 1..=3 {
            let t = t0 + Duration::from_secs(s);
            ct.record_outbound(key(1).reversed(), 8, t);
            assert_eq!(ct.lookup_inbound(&key(1), t), Tracked::Inbound(revoked(8)));
        }
        assert_eq!(ct.len(), 1);
        // A later rule set may allow it again.
        ct.judge(&key(1), 9, true);
        assert_eq!(ct.lookup_inbound(&key(1), t0), Tracked::Inbound(allowed(9)));
    }

    #[test]
    fn a_revoked_flow_opened_here_stays_revoked_while_the_local_side_sends() {
        let mut ct = table(8);
        let t0 = Instant::now();
        ct.record_outbound(key(1), 1, t0);
        let reply = key(1).reversed();
        ct.judge(&reply, 2, false);
        ct.record_outbound(key(1), 2, t0 + Duration::from_secs(1));
        assert_eq!(ct.lookup_inbound(&reply, t0), Tracked::Reply(revoked(2)));
        assert_eq!(ct.len(), 1);
    }

    #[test]
    fn a_revoked_flow_is_forgotten_once_idle_for_its_timeout() {
        let mut ct = table(8);
        let t0 = Instant::now();
        ct.record_inbound(key(1), 1, t0);
        ct.judge(&key(1), 2, false);
        // Kept alive by the local side until then.
        let t1 = t0 + Duration::from_secs(3000);
        ct.record_outbound(key(1).reversed(), 2, t1);
        assert_eq!(ct.lookup_inbound(&key(1), t1), Tracked::Inbound(revoked(2)));
        // Idle for longer than the TCP timeout: the next outbound packet opens a new flow.
        let late = t1 + Duration::from_secs(3601);
        ct.record_outbound(key(1).reversed(), 2, late);
        assert_eq!(ct.lookup_inbound(&key(1), late), Tracked::Reply(allowed(2)));
        assert_eq!(ct.len(), 1);
    }

    #[test]
    fn judging_an_untracked_packet_changes_nothing() {
        let mut ct = table(8);
        let t0 = Instant::now();
        ct.record_outbound(key(1), 1, t0);
        // key(1) itself is the outbound direction, not a packet of the flow coming in.
        ct.judge(&key(1), 2, false);
        ct.judge(&key(2), 2, false);
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
        ct.record_outbound(key(1), 0, t0);
        ct.record_outbound(key(2), 0, t0);
        // Touch flow 1, so flow 2 is the least recently used.
        assert!(matches!(
            ct.lookup_inbound(&key(1).reversed(), t0),
            Tracked::Reply(_)
        ));
        ct.record_outbound(key(3), 0, t0);
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
        ct.record_outbound(key(3), 0, t0);
        assert_eq!(ct.evictions, 1);
    }
}

//! Connection tracking for policy: flows this node opened (so their replies pass) and inbound
//! flows policy allowed (so their later packets skip the full check). Every flow carries the
//! rule set version it was last judged under; a flow judged denied after a rule set change is
//! kept as *revoked*, so neither direction can bring it back (an outbound packet answering a
//! revoked inbound flow does not open a flow of its own), until it has been idle for its
//! timeout or is judged allowed again. Time is passed in.
//!
//! Two bounded tables, each evicting its least recently used flow when full and counting it:
//! live flows, which any packet policy allows can add, and revoked flows, which only a rule
//! set change adds (a flow moves there when judged denied, and back when judged allowed). A
//! remote Pod opening many flows therefore evicts live flows only, never a revocation.

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
    /// This node sent the flow's first packet; otherwise policy allowed it inbound.
    opened_here: bool,
    judged: Judged,
}

impl Entry {
    /// Whether it has been idle for longer than `timeout` at `now`.
    fn expired(&self, timeout: Duration, now: Instant) -> bool {
        now.duration_since(self.last_seen) > timeout
    }
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

impl Tracked {
    fn of(entry: &Entry) -> Self {
        if entry.opened_here {
            Tracked::Reply(entry.judged)
        } else {
            Tracked::Inbound(entry.judged)
        }
    }
}

pub struct Conntrack {
    /// Live flows, by their first direction: outbound for a flow opened here, inbound
    /// otherwise.
    flows: LruCache<FlowKey, Entry>,
    /// Revoked flows, by the direction of their decrypted packets (inbound), whoever opened
    /// them: one probe finds them from either side. Grows as flows are revoked, up to
    /// `revoked_capacity`.
    revoked: LruCache<FlowKey, Entry>,
    revoked_capacity: usize,
    timeouts: Timeouts,
    /// Live flows evicted from a full table.
    pub evictions: u64,
    /// Revoked flows evicted from a full table (forgotten before their timeout).
    pub revoked_evictions: u64,
}

impl Conntrack {
    /// Tables for `capacity` live flows and as many revoked ones: a rule set change can revoke
    /// every tracked flow without evicting a revocation.
    pub fn new(capacity: NonZeroUsize, timeouts: Timeouts) -> Self {
        Self {
            flows: LruCache::new(capacity),
            revoked: LruCache::unbounded(),
            revoked_capacity: capacity.get(),
            timeouts,
            evictions: 0,
            revoked_evictions: 0,
        }
    }

    /// How many live flows the table holds (as many revoked ones besides).
    pub fn capacity(&self) -> usize {
        self.flows.cap().get()
    }

    /// Live flows.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// No live flow.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Revoked flows.
    pub fn revoked_len(&self) -> usize {
        self.revoked.len()
    }

    fn insert(&mut self, key: FlowKey, entry: Entry) {
        if !self.flows.contains(&key) && self.flows.len() == self.flows.cap().get() {
            self.evictions += 1;
        }
        self.flows.put(key, entry);
    }

    fn insert_revoked(&mut self, inbound: FlowKey, entry: Entry) {
        if !self.revoked.contains(&inbound) && self.revoked.len() >= self.revoked_capacity {
            self.revoked.pop_lru();
            self.revoked_evictions += 1;
        }
        self.revoked.put(inbound, entry);
    }

    /// The revoked flow whose decrypted packets are `inbound`, refreshed at `now`; forgotten
    /// if it has expired.
    fn touch_revoked(&mut self, inbound: &FlowKey, now: Instant) -> Option<Entry> {
        if self.revoked.is_empty() {
            return None;
        }
        let timeout = self.timeouts.of(inbound.protocol);
        let entry = self.revoked.get_mut(inbound)?;
        if entry.expired(timeout, now) {
            self.revoked.pop(inbound);
            return None;
        }
        entry.last_seen = now;
        Some(*entry)
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
            if !entry.expired(timeout, now) {
                entry.last_seen = now;
                return;
            }
            self.flows.pop(&reverse);
        }
        if let Some(entry) = self.flows.get_mut(&key)
            && entry.opened_here
            && !entry.expired(timeout, now)
        {
            entry.last_seen = now;
            return;
        }
        if self.touch_revoked(&reverse, now).is_some() {
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
    /// flow, live (probed first) or revoked. Refreshes what it finds (revoked flows too: they
    /// stay revoked while in use); forgets what has expired.
    pub fn lookup_inbound(&mut self, key: &FlowKey, now: Instant) -> Tracked {
        let timeout = self.timeouts.of(key.protocol);
        let reverse = key.reversed();
        if let Some(entry) = self.flows.get_mut(&reverse)
            && entry.opened_here
        {
            if !entry.expired(timeout, now) {
                entry.last_seen = now;
                return Tracked::Reply(entry.judged);
            }
            self.flows.pop(&reverse);
        }
        if let Some(entry) = self.flows.get_mut(key)
            && !entry.opened_here
        {
            if !entry.expired(timeout, now) {
                entry.last_seen = now;
                return Tracked::Inbound(entry.judged);
            }
            self.flows.pop(key);
        }
        match self.touch_revoked(key, now) {
            Some(entry) => Tracked::of(&entry),
            None => Tracked::Miss,
        }
    }

    /// Records a new judgement of the tracked flow the inbound packet `key` belongs to (as
    /// [`Conntrack::lookup_inbound`] found it): allowed, or revoked, under `version`. A live
    /// flow judged revoked moves to the revoked table, a revoked one judged allowed back to
    /// the live table. Nothing happens if the packet belongs to no tracked flow.
    pub fn judge(&mut self, key: &FlowKey, version: u64, allowed: bool) {
        let judged = Judged {
            version,
            revoked: !allowed,
        };
        let reverse = key.reversed();
        let live_key = if self.flows.peek(&reverse).is_some_and(|e| e.opened_here) {
            Some(reverse)
        } else if self.flows.peek(key).is_some_and(|e| !e.opened_here) {
            Some(*key)
        } else {
            None
        };
        if let Some(live_key) = live_key {
            if allowed {
                if let Some(entry) = self.flows.peek_mut(&live_key) {
                    entry.judged = judged;
                }
            } else if let Some(mut entry) = self.flows.pop(&live_key) {
                entry.judged = judged;
                self.insert_revoked(*key, entry);
            }
        } else if allowed {
            if let Some(mut entry) = self.revoked.pop(key) {
                entry.judged = judged;
                self.insert(if entry.opened_here { reverse } else { *key }, entry);
            }
        } else if let Some(entry) = self.revoked.peek_mut(key) {
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
        assert_eq!((ct.len(), ct.revoked_len()), (0, 1));
        // A later rule set may allow it again: a live flow once more.
        ct.judge(&key(1), 9, true);
        assert_eq!(ct.lookup_inbound(&key(1), t0), Tracked::Inbound(allowed(9)));
        assert_eq!((ct.len(), ct.revoked_len()), (1, 0));
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
        assert_eq!((ct.len(), ct.revoked_len()), (0, 1));
        // Allowed again: replies of a flow opened here once more.
        ct.judge(&reply, 3, true);
        assert_eq!(ct.lookup_inbound(&reply, t0), Tracked::Reply(allowed(3)));
        ct.record_outbound(key(1), 3, t0);
        assert_eq!((ct.len(), ct.revoked_len()), (1, 0));
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
        assert_eq!((ct.len(), ct.revoked_len()), (1, 0));
    }

    #[test]
    fn an_idle_revoked_flow_is_forgotten_by_the_next_inbound_packet_too() {
        let mut ct = table(8);
        let t0 = Instant::now();
        ct.record_inbound(key(1), 1, t0);
        ct.judge(&key(1), 2, false);
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
        ct.judge(&key(1), 2, false);
        // The remote side opens many flows policy allows: live ones are evicted.
        for sport in 2..20 {
            ct.record_inbound(key(sport), 2, t0);
        }
        assert_eq!(ct.evictions, 16);
        // The revocation stands: the local side's packet opens no flow.
        ct.record_outbound(key(1).reversed(), 2, t0);
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
            ct.judge(&key(sport), 2, false);
            if sport == 2 {
                // Touch flow 1, so flow 2 is the least recently used revoked flow.
                ct.record_outbound(key(1).reversed(), 2, t0);
            }
        }
        assert_eq!((ct.revoked_len(), ct.revoked_evictions), (2, 1));
        assert_eq!(ct.evictions, 0);
        assert_eq!(ct.lookup_inbound(&key(2), t0), Tracked::Miss);
        assert_eq!(ct.lookup_inbound(&key(1), t0), Tracked::Inbound(revoked(2)));
        assert_eq!(ct.lookup_inbound(&key(3), t0), Tracked::Inbound(revoked(2)));
        // Judging a revoked flow revoked again is no eviction.
        ct.judge(&key(3), 3, false);
        assert_eq!(ct.lookup_inbound(&key(3), t0), Tracked::Inbound(revoked(3)));
        assert_eq!(ct.revoked_evictions, 1);
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

//! Connection tracking for policy: flows this node originated (so their replies pass) and
//! inbound flows policy allowed (so their later packets skip the full check). Bounded: when
//! full, the least recently used flow is evicted and counted. Time is passed in.

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

#[derive(Debug, Clone, Copy)]
struct Entry {
    last_seen: Instant,
    /// The policy version the flow was allowed under (`None`: we originated it).
    policy_version: Option<u64>,
}

/// What a lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tracked {
    /// A reply to a flow this node originated.
    Reply,
    /// A flow allowed inbound under policy version `version`.
    Allowed { version: u64 },
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

    /// Records a flow this node sends (an encrypted outbound packet). A packet answering an
    /// inbound flow is that flow's reply, not a flow of its own: it only refreshes the inbound
    /// entry, so the inbound direction stays subject to policy changes.
    pub fn record_outbound(&mut self, key: FlowKey, now: Instant) {
        if let Some(entry) = self.flows.peek_mut(&key.reversed())
            && entry.policy_version.is_some()
        {
            entry.last_seen = now;
            return;
        }
        self.insert(
            key,
            Entry {
                last_seen: now,
                policy_version: None,
            },
        );
    }

    /// Records an inbound flow policy allowed under `version`.
    pub fn record_inbound(&mut self, key: FlowKey, version: u64, now: Instant) {
        self.insert(
            key,
            Entry {
                last_seen: now,
                policy_version: Some(version),
            },
        );
    }

    /// Looks up an inbound packet: a reply to an outbound flow, or a known inbound flow.
    /// Refreshes what it finds; forgets what has expired.
    pub fn lookup_inbound(&mut self, key: &FlowKey, now: Instant) -> Tracked {
        let timeout = self.timeouts.of(key.protocol);
        let reverse = key.reversed();
        if let Some(entry) = self.flows.get_mut(&reverse)
            && entry.policy_version.is_none()
        {
            if now.duration_since(entry.last_seen) <= timeout {
                entry.last_seen = now;
                return Tracked::Reply;
            }
            self.flows.pop(&reverse);
        }
        if let Some(entry) = self.flows.get_mut(key)
            && let Some(version) = entry.policy_version
        {
            if now.duration_since(entry.last_seen) <= timeout {
                entry.last_seen = now;
                return Tracked::Allowed { version };
            }
            self.flows.pop(key);
        }
        Tracked::Miss
    }

    /// Forgets a flow (policy no longer allows it).
    pub fn forget(&mut self, key: &FlowKey) {
        self.flows.pop(key);
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

    #[test]
    fn replies_to_outbound_flows_are_tracked_until_they_expire() {
        let mut ct = table(8);
        let t0 = Instant::now();
        ct.record_outbound(key(1000), t0);
        assert_eq!(ct.lookup_inbound(&key(1000).reversed(), t0), Tracked::Reply);
        // The same direction as the outbound flow is not a reply.
        assert_eq!(ct.lookup_inbound(&key(1000), t0), Tracked::Miss);
        let late = t0 + Duration::from_secs(3601) + Duration::from_secs(3600);
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
        ct.record_outbound(key(1).reversed(), t0);
        assert_eq!(ct.len(), 1);
        // The inbound direction is still an inbound flow (re-checked when policy changes).
        assert_eq!(
            ct.lookup_inbound(&key(1), t0),
            Tracked::Allowed { version: 7 }
        );
    }

    #[test]
    fn inbound_flows_carry_their_policy_version() {
        let mut ct = table(8);
        let t0 = Instant::now();
        ct.record_inbound(key(1), 7, t0);
        assert_eq!(
            ct.lookup_inbound(&key(1), t0),
            Tracked::Allowed { version: 7 }
        );
        ct.forget(&key(1));
        assert_eq!(ct.lookup_inbound(&key(1), t0), Tracked::Miss);
    }

    #[test]
    fn a_full_table_evicts_the_least_recently_used_and_counts_it() {
        let mut ct = table(2);
        let t0 = Instant::now();
        ct.record_outbound(key(1), t0);
        ct.record_outbound(key(2), t0);
        // Touch flow 1, so flow 2 is the least recently used.
        assert_eq!(ct.lookup_inbound(&key(1).reversed(), t0), Tracked::Reply);
        ct.record_outbound(key(3), t0);
        assert_eq!(ct.evictions, 1);
        assert_eq!(ct.len(), 2);
        assert_eq!(ct.lookup_inbound(&key(2).reversed(), t0), Tracked::Miss);
        assert_eq!(ct.lookup_inbound(&key(1).reversed(), t0), Tracked::Reply);
        assert_eq!(ct.lookup_inbound(&key(3).reversed(), t0), Tracked::Reply);
        // Refreshing an existing flow is no eviction.
        ct.record_outbound(key(3), t0);
        assert_eq!(ct.evictions, 1);
    }
}

//! Connection tracking for policy: flows this node opened (so their replies pass) and inbound
//! flows policy allowed (so their later packets skip the full check). Every flow carries the
//! rule set version it was last judged under; a flow judged denied after a rule set change is
//! kept as *revoked*, so neither direction can bring it back (an outbound packet answering a
//! revoked inbound flow does not open a flow of its own), until it has been idle for its
//! timeout or is judged allowed again. An ICMP error about a packet of a live flow is
//! *related* to it ([`Conntrack::lookup_related`]): found, never recorded. Time is passed in.
//!
//! A TCP flow is opened here only by a connection opening (SYN without ACK): a later TCP
//! packet of no tracked flow (say, the local server's next packet on an inbound flow that was
//! evicted) opens nothing, so eviction never turns an inbound connection into one the local
//! side opened. Except in the *pickup window* after the table is created (agent start): any
//! outbound TCP packet then opens a flow, so connections established before a restart keep
//! working (as Linux's `nf_conntrack_tcp_loose`). UDP, ICMP and other protocols have no
//! opening packet: any outbound packet of no tracked flow opens one.
//!
//! Two bounded tables, each evicting its least recently used flow when full and counting it:
//! live flows, which any packet policy allows can add, and revoked flows, which only a rule
//! set change adds (a flow moves there when judged denied, and back when judged allowed). A
//! remote Pod opening many flows therefore evicts live flows only, never a revocation. A
//! revoked flow idle for its timeout is forgotten by its next packet or by
//! [`Conntrack::sweep_revoked`] (the datapath's status tick), and pushing one out of a full
//! table is no eviction.

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
            // As Linux's established TCP timeout: well above keepalive intervals (2 h by
            // default), since past the pickup window only a SYN opens a TCP flow, and an idle
            // connection forgotten here would have its replies dropped for good.
            tcp: Duration::from_secs(5 * 24 * 3600),
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

/// What an outbound packet is to connection tracking, if it belongs to no tracked flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// It may open a flow: a TCP connection opening (SYN without ACK), or any packet of a
    /// protocol without one (UDP, ICMP, others).
    Opening,
    /// A TCP packet past the opening (or whose flags are unknown): it opens a flow only in the
    /// pickup window.
    MidStream,
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
    /// them: one probe finds them from either side. Sized up front (no rehash on the packet
    /// path); evicted explicitly, so evictions are counted.
    revoked: LruCache<FlowKey, Entry>,
    timeouts: Timeouts,
    /// Until then, any outbound TCP packet of no tracked flow opens one (see the module
    /// documentation); `None`: no pickup window.
    pickup_until: Option<Instant>,
    /// Live flows evicted from a full table.
    pub evictions: u64,
    /// Revoked flows evicted from a full table (forgotten before their timeout).
    pub revoked_evictions: u64,
}

/// Most expired revoked flows one [`Conntrack::sweep_revoked`] forgets, so a sweep after a
/// rule set change revoked a full table stays short.
pub const SWEEP_BATCH: usize = 4096;

impl Conntrack {
    /// Tables for `capacity` live flows and as many revoked ones: a rule set change can revoke
    /// every tracked flow without evicting a revocation. No pickup window (see
    /// [`Conntrack::with_pickup`]).
    pub fn new(capacity: NonZeroUsize, timeouts: Timeouts) -> Self {
        Self {
            flows: LruCache::new(capacity),
            revoked: LruCache::new(capacity),
            timeouts,
            pickup_until: None,
            evictions: 0,
            revoked_evictions: 0,
        }
    }

    /// With a pickup window of `window` from `created` (when the agent started): until then
    /// any outbound TCP packet of no tracked flow opens one. A zero `window` has none.
    pub fn with_pickup(mut self, created: Instant, window: Duration) -> Self {
        // A zero window ends where it starts: nothing is picked up.
        self.pickup_until = created.checked_add(window);
        self
    }

    /// Whether an outbound packet of no tracked flow opens one at `now`.
    fn opens(&self, sent: Sent, now: Instant) -> bool {
        sent == Sent::Opening || self.pickup_until.is_some_and(|until| now < until)
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

    /// Adds or replaces a live flow; a full table forgets its least recently used one, counted.
    fn insert(&mut self, key: FlowKey, entry: Entry) {
        // `push` hands back the entry it replaced (same key) or evicted (another key).
        if let Some((pushed_out, _)) = self.flows.push(key, entry)
            && pushed_out != key
        {
            self.evictions += 1;
        }
    }

    /// Whether a revoked flow has been idle for its timeout at `now`.
    fn revoked_expired(&self, inbound: &FlowKey, entry: &Entry, now: Instant) -> bool {
        entry.expired(self.timeouts.of(inbound.protocol), now)
    }

    /// Adds a revoked flow, judged at `now`; a full table first forgets its least recently
    /// used flow, counted as an eviction unless it had expired already.
    fn insert_revoked(&mut self, inbound: FlowKey, entry: Entry, now: Instant) {
        if let Some((pushed_out, oldest)) = self.revoked.push(inbound, entry)
            && pushed_out != inbound
            && !self.revoked_expired(&pushed_out, &oldest, now)
        {
            self.revoked_evictions += 1;
        }
    }

    /// Forgets revoked flows that have been idle for their timeout at `now`, from the least
    /// recently used on, stopping at the first that has not (an expired flow behind it waits
    /// for a later sweep, or its next packet) or after [`SWEEP_BATCH`]. Returns how many it
    /// forgot. Cheap enough for a periodic tick.
    pub fn sweep_revoked(&mut self, now: Instant) -> usize {
        let mut forgotten = 0;
        while forgotten < SWEEP_BATCH
            && self
                .revoked
                .peek_lru()
                .is_some_and(|(key, entry)| self.revoked_expired(key, entry, now))
        {
            self.revoked.pop_lru();
            forgotten += 1;
        }
        forgotten
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
    /// revoked one stays revoked). Anything else opens a flow if it is an opening packet
    /// ([`Sent::Opening`]) or sent in the pickup window; otherwise it records nothing (it is
    /// still sent: policy never drops what this node sends).
    pub fn record_outbound(&mut self, key: FlowKey, sent: Sent, version: u64, now: Instant) {
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
        if self.touch_revoked(&reverse, now).is_some() || !self.opens(sent, now) {
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

    /// Looks up the live flow a packet this node sent, `sent` (as it sent it), belongs to, for
    /// an ICMP error that quotes it: a flow opened here ([`Tracked::Reply`]), or an inbound
    /// flow `sent` answered ([`Tracked::Inbound`]). Revoked and expired flows relate to
    /// nothing. Looks only: refreshes nothing, forgets nothing, opens nothing.
    pub fn lookup_related(&self, sent: &FlowKey, now: Instant) -> Tracked {
        let timeout = self.timeouts.of(sent.protocol);
        let live = |key: &FlowKey, opened_here: bool| {
            self.flows
                .peek(key)
                .filter(|e| e.opened_here == opened_here && !e.expired(timeout, now))
        };
        if let Some(entry) = live(sent, true).or_else(|| live(&sent.reversed(), false)) {
            return Tracked::of(entry);
        }
        Tracked::Miss
    }

    /// Records a new judgement of the tracked flow the inbound packet `key` belongs to (as
    /// [`Conntrack::lookup_inbound`] found it): allowed, or revoked, under `version`. A live
    /// flow judged revoked moves to the revoked table, a revoked one judged allowed back to
    /// the live table. Nothing happens if the packet belongs to no tracked flow.
    pub fn judge(&mut self, key: &FlowKey, version: u64, allowed: bool, now: Instant) {
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
                self.insert_revoked(*key, entry, now);
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
#[path = "conntrack_tests.rs"]
mod tests;

//! Verdicts of fragmented packets. Only a datagram's first fragment carries the transport
//! header (ports) policy needs, so its verdict is remembered and the later fragments of the
//! same datagram take it; a later fragment whose first is unknown is dropped. The table is
//! allocated once, bounded and set-associative: nothing is allocated per packet, and a full
//! bucket replaces its oldest entry.

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::packet::FragmentId;
use super::stats::DropReason;

/// Entries per bucket.
const WAYS: usize = 4;

/// One fragmented datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragmentKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub id: FragmentId,
}

/// A datagram's verdict: delivered, or dropped for the reason given.
pub type FragmentVerdict = Result<(), DropReason>;

#[derive(Debug, Clone, Copy)]
struct Slot {
    key: FragmentKey,
    verdict: FragmentVerdict,
    at: Instant,
}

pub struct FragmentTable {
    slots: Box<[Option<Slot>]>,
    /// Randomly keyed, so remote Pods cannot aim their datagrams at one bucket.
    hasher: RandomState,
    timeout: Duration,
}

impl FragmentTable {
    /// A table of at least `capacity` entries (rounded up to whole buckets); an entry is
    /// forgotten `timeout` after its first fragment.
    pub fn new(capacity: usize, timeout: Duration) -> Self {
        let buckets = capacity.div_ceil(WAYS).max(1);
        Self {
            slots: vec![None; buckets * WAYS].into_boxed_slice(),
            hasher: RandomState::new(),
            timeout,
        }
    }

    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    fn bucket(&self, key: &FragmentKey) -> std::ops::Range<usize> {
        let buckets = (self.slots.len() / WAYS).max(1) as u64;
        // The remainder is below the bucket count, which is a usize.
        let start = (self.hasher.hash_one(key) % buckets) as usize * WAYS;
        start..start + WAYS
    }

    /// Remembers the verdict on a datagram's first fragment.
    pub fn remember(&mut self, key: FragmentKey, verdict: FragmentVerdict, now: Instant) {
        let range = self.bucket(&key);
        let timeout = self.timeout;
        let Some(bucket) = self.slots.get_mut(range) else {
            return;
        };
        let live = |slot: &Slot| now.saturating_duration_since(slot.at) <= timeout;
        let index = bucket
            .iter()
            .position(|s| s.is_some_and(|s| s.key == key))
            .or_else(|| bucket.iter().position(|s| !s.is_some_and(|s| live(&s))))
            .or_else(|| {
                (0..bucket.len()).min_by_key(|i| bucket.get(*i).and_then(|s| s.map(|s| s.at)))
            });
        if let Some(slot) = index.and_then(|i| bucket.get_mut(i)) {
            *slot = Some(Slot {
                key,
                verdict,
                at: now,
            });
        }
    }

    /// The verdict remembered for the datagram a later fragment belongs to, if any.
    pub fn verdict(&self, key: &FragmentKey, now: Instant) -> Option<FragmentVerdict> {
        self.slots
            .get(self.bucket(key))?
            .iter()
            .flatten()
            .find(|s| s.key == *key && now.saturating_duration_since(s.at) <= self.timeout)
            .map(|s| s.verdict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: u32) -> FragmentKey {
        FragmentKey {
            src: "10.244.1.2".parse().unwrap(),
            dst: "10.244.2.2".parse().unwrap(),
            id: FragmentId { id, protocol: 17 },
        }
    }

    #[test]
    fn later_fragments_find_the_verdict_of_their_first() {
        let mut table = FragmentTable::new(64, Duration::from_secs(30));
        let t0 = Instant::now();
        table.remember(key(1), Ok(()), t0);
        table.remember(key(2), Err(DropReason::PolicyIngress), t0);
        assert_eq!(table.verdict(&key(1), t0), Some(Ok(())));
        assert_eq!(
            table.verdict(&key(2), t0),
            Some(Err(DropReason::PolicyIngress))
        );
        assert_eq!(table.verdict(&key(3), t0), None);
        // Another protocol or source is another datagram.
        let other = FragmentKey {
            id: FragmentId { id: 1, protocol: 6 },
            ..key(1)
        };
        assert_eq!(table.verdict(&other, t0), None);
        let other = FragmentKey {
            src: "10.244.1.3".parse().unwrap(),
            ..key(1)
        };
        assert_eq!(table.verdict(&other, t0), None);
        // A new first fragment with the same identification replaces the verdict.
        table.remember(key(1), Err(DropReason::PolicyEgress), t0);
        assert_eq!(
            table.verdict(&key(1), t0),
            Some(Err(DropReason::PolicyEgress))
        );
    }

    #[test]
    fn verdicts_expire() {
        let mut table = FragmentTable::new(64, Duration::from_secs(30));
        let t0 = Instant::now();
        table.remember(key(1), Ok(()), t0);
        assert_eq!(
            table.verdict(&key(1), t0 + Duration::from_secs(30)),
            Some(Ok(()))
        );
        assert_eq!(table.verdict(&key(1), t0 + Duration::from_secs(31)), None);
    }

    #[test]
    fn the_table_is_bounded_and_keeps_the_newest() {
        let mut table = FragmentTable::new(8, Duration::from_secs(30));
        assert_eq!(table.capacity(), 8);
        let t0 = Instant::now();
        for id in 0..10_000u32 {
            table.remember(key(id), Ok(()), t0 + Duration::from_micros(u64::from(id)));
        }
        assert_eq!(table.capacity(), 8);
        let now = t0 + Duration::from_millis(10);
        let known = (0..10_000).filter(|id| table.verdict(&key(*id), now).is_some());
        assert!(known.count() <= 8);
        // The newest entry always survives: it replaced the oldest of its bucket.
        assert_eq!(table.verdict(&key(9_999), now), Some(Ok(())));
    }
}

//! The datapath's peer table: one boringtun `Tunn` per peer, found by destination address
//! (longest-prefix match over allowed IPs), by receiver index, or by static public key.
//! It follows the mesh live: adding, removing or changing one peer leaves every other peer's
//! sessions untouched.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use boringtun::noise::Tunn;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::x25519;
use ipnetwork::IpNetwork;
use weft_keys::PublicKey;

use super::prefix_table::PrefixTable;
use super::stats::PeerCounters;
use crate::mesh::{Peer, diff_peers};

/// Keepalive interval: keeps NAT mappings open and lets each side notice the other quickly.
const PERSISTENT_KEEPALIVE_SECS: u16 = 25;
/// boringtun keeps the low 8 bits of a receiver index for its sessions.
const MAX_INDEX: u32 = (1 << 24) - 1;

/// One live peer.
pub struct PeerSlot {
    pub peer: Peer,
    /// Where packets go: the record's endpoint, or where the peer last spoke from.
    pub endpoint: Option<SocketAddr>,
    pub tunn: Tunn,
    pub counters: PeerCounters,
}

/// All peers, with the lookups the datapath needs.
pub struct PeerTable {
    private: x25519::StaticSecret,
    public: x25519::PublicKey,
    rate_limiter: Arc<RateLimiter>,
    slots: HashMap<u32, PeerSlot>,
    by_key: HashMap<PublicKey, u32>,
    by_name: BTreeMap<String, u32>,
    routes: PrefixTable<u32>,
    next_index: u32,
}

impl PeerTable {
    pub fn new(private: x25519::StaticSecret, rate_limiter: Arc<RateLimiter>) -> Self {
        let public = x25519::PublicKey::from(&private);
        Self {
            private,
            public,
            rate_limiter,
            slots: HashMap::new(),
            by_key: HashMap::new(),
            by_name: BTreeMap::new(),
            routes: PrefixTable::default(),
            next_index: 1,
        }
    }

    pub fn private_key(&self) -> &x25519::StaticSecret {
        &self.private
    }

    pub fn public_key(&self) -> &x25519::PublicKey {
        &self.public
    }

    /// The peers as the mesh last described them.
    pub fn peers(&self) -> BTreeMap<String, Peer> {
        self.by_name
            .iter()
            .filter_map(|(name, index)| Some((name.clone(), self.slots.get(index)?.peer.clone())))
            .collect()
    }

    /// Makes the table hold exactly `desired`, touching only peers that changed.
    pub fn sync(&mut self, desired: &BTreeMap<String, Peer>) {
        let diff = diff_peers(&self.peers(), desired);
        for name in &diff.removed {
            if let Some(index) = self.by_name.remove(name)
                && let Some(slot) = self.slots.remove(&index)
            {
                self.by_key.remove(&slot.peer.public_key);
            }
        }
        for peer in &diff.changed {
            let Some(index) = self.by_name.get(&peer.name).copied() else {
                continue;
            };
            let Some(slot) = self.slots.get_mut(&index) else {
                continue;
            };
            if slot.peer.public_key != peer.public_key {
                // A new key is a new peer as far as WireGuard is concerned.
                self.by_key.remove(&slot.peer.public_key);
                self.by_name.remove(&peer.name);
                self.slots.remove(&index);
                self.add(peer.clone());
            } else {
                if slot.peer.endpoint != peer.endpoint {
                    slot.endpoint = peer.endpoint;
                }
                slot.peer = peer.clone();
            }
        }
        for peer in &diff.added {
            self.add(peer.clone());
        }
        self.routes.clear();
        for (index, slot) in &self.slots {
            for prefix in &slot.peer.allowed_ips {
                self.routes.insert(*prefix, *index);
            }
        }
    }

    fn add(&mut self, peer: Peer) {
        let Some(index) = self.free_index() else {
            tracing::error!(peer = %peer.name, "no free peer index; peer not added");
            return;
        };
        let tunn = Tunn::new(
            self.private.clone(),
            x25519::PublicKey::from(*peer.public_key.as_bytes()),
            None,
            Some(PERSISTENT_KEEPALIVE_SECS),
            index,
            Some(self.rate_limiter.clone()),
        );
        self.by_key.insert(peer.public_key, index);
        self.by_name.insert(peer.name.clone(), index);
        self.slots.insert(
            index,
            PeerSlot {
                endpoint: peer.endpoint,
                peer,
                tunn,
                counters: PeerCounters::default(),
            },
        );
    }

    fn free_index(&mut self) -> Option<u32> {
        for _ in 0..=MAX_INDEX {
            let candidate = self.next_index;
            self.next_index = if candidate >= MAX_INDEX {
                1
            } else {
                candidate + 1
            };
            if !self.slots.contains_key(&candidate) {
                return Some(candidate);
            }
        }
        None
    }

    /// The peer whose allowed IPs hold `destination` (longest prefix).
    pub fn index_for_destination(&self, destination: IpAddr) -> Option<u32> {
        self.routes.lookup(destination).copied()
    }

    /// The peer a receiver index of ours belongs to.
    pub fn index_for_receiver(&self, receiver: u32) -> Option<u32> {
        let index = receiver >> 8;
        self.slots.contains_key(&index).then_some(index)
    }

    pub fn index_for_key(&self, key: &PublicKey) -> Option<u32> {
        self.by_key.get(key).copied()
    }

    /// Whether `source` lies in the allowed IPs of peer `index` (and of no more specific peer).
    pub fn source_allowed(&self, index: u32, source: IpAddr) -> bool {
        self.routes.lookup(source) == Some(&index)
    }

    pub fn slot_mut(&mut self, index: u32) -> Option<&mut PeerSlot> {
        self.slots.get_mut(&index)
    }

    pub fn slots(&self) -> impl Iterator<Item = &PeerSlot> {
        self.by_name
            .values()
            .filter_map(|index| self.slots.get(index))
    }

    pub fn slots_mut(&mut self) -> impl Iterator<Item = &mut PeerSlot> {
        self.slots.values_mut()
    }

    pub fn rate_limiter(&self) -> &RateLimiter {
        &self.rate_limiter
    }

    /// Allowed IPs of every peer (for tests and status).
    pub fn allowed_ips(&self) -> Vec<IpNetwork> {
        self.slots()
            .flat_map(|s| s.peer.allowed_ips.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str, key: u8, ips: &[&str]) -> Peer {
        let secret = x25519::StaticSecret::from([key; 32]);
        Peer {
            name: name.into(),
            public_key: PublicKey::from_bytes(x25519::PublicKey::from(&secret).to_bytes()),
            endpoint: Some(format!("198.18.0.{key}:51820").parse().unwrap()),
            allowed_ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
        }
    }

    fn table() -> PeerTable {
        let private = x25519::StaticSecret::from([1u8; 32]);
        let limiter = Arc::new(RateLimiter::new(&x25519::PublicKey::from(&private), 100));
        PeerTable::new(private, limiter)
    }

    fn mesh(peers: &[Peer]) -> BTreeMap<String, Peer> {
        peers.iter().map(|p| (p.name.clone(), p.clone())).collect()
    }

    #[test]
    fn lookups_follow_the_mesh() {
        let mut table = table();
        table.sync(&mesh(&[
            peer("n2", 2, &["10.244.2.0/24"]),
            peer("n3", 3, &["10.244.3.0/24"]),
        ]));
        let n2 = table
            .index_for_destination("10.244.2.7".parse().unwrap())
            .unwrap();
        let n3 = table
            .index_for_destination("10.244.3.7".parse().unwrap())
            .unwrap();
        assert_ne!(n2, n3);
        assert_eq!(table.index_for_receiver(n2 << 8 | 5), Some(n2));
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
        let n2_before = table
            .index_for_destination("10.244.2.1".parse().unwrap())
            .unwrap();

        // n2 gets a new key, n4 arrives: n3's slot (and its counters/sessions) stays.
        table.sync(&mesh(&[
            peer("n2", 12, &["10.244.2.0/24"]),
            peer("n3", 3, &["10.244.3.0/24", "10.244.33.0/24"]),
            peer("n4", 4, &["10.244.4.0/24"]),
        ]));
        assert_eq!(
            table.index_for_destination("10.244.3.1".parse().unwrap()),
            Some(n3)
        );
        assert_eq!(
            table.index_for_destination("10.244.33.1".parse().unwrap()),
            Some(n3)
        );
        assert_eq!(table.slot_mut(n3).unwrap().counters.rx_bytes, 77);
        let n2_after = table
            .index_for_destination("10.244.2.1".parse().unwrap())
            .unwrap();
        assert_ne!(n2_before, n2_after, "a new key must get a fresh tunnel");
        assert_eq!(table.peers().len(), 3);

        table.sync(&mesh(&[peer("n3", 3, &["10.244.3.0/24"])]));
        assert_eq!(table.peers().len(), 1);
        assert_eq!(
            table.index_for_destination("10.244.2.1".parse().unwrap()),
            None
        );
        assert_eq!(table.index_for_receiver(n2_after << 8), None);
    }
}

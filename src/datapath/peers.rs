//! The datapath's peer table: peers found by destination address (longest-prefix match over
//! allowed IPs), by receiver index, or by static public key, each with its WireGuard sessions.
//! It follows the mesh live: adding, removing or changing one peer leaves every other peer's
//! sessions untouched. It also holds this node's static keys: one normally, two (current and
//! next) while rotating, and it accepts handshakes addressed to either.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, TunnResult};
use boringtun::x25519;
use weft_keys::PublicKey;

use super::prefix_table::PrefixTable;
use super::session::{OwnKey, Session, preferred};
use super::stats::{DropReason, KeyRotationProgress, PeerCounters};
use crate::mesh::{Peer, diff_peers};

/// boringtun keeps the low 8 bits of a receiver index for its sessions.
const MAX_INDEX: u32 = (1 << 24) - 1;
/// Size of a WireGuard cookie reply message.
const COOKIE_REPLY_BYTES: usize = 64;

/// One live peer.
pub struct PeerSlot {
    pub peer: Peer,
    /// Where packets go: the record's endpoint, or where the peer last spoke from.
    pub endpoint: Option<SocketAddr>,
    /// At most one per (our key, the peer's key) pair.
    pub sessions: Vec<Session>,
    /// The session outbound packets use (see `session::preferred`); only
    /// `PeerTable::choose_outbound` sets it.
    preferred: usize,
    pub counters: PeerCounters,
}

impl PeerSlot {
    /// The session outbound packets go through.
    pub fn outbound(&mut self) -> Option<&mut Session> {
        self.sessions.get_mut(self.preferred)
    }

    pub fn session_mut(&mut self, index: u32) -> Option<&mut Session> {
        self.sessions.iter_mut().find(|s| s.index == index)
    }

    /// The most recent completed handshake over all sessions.
    pub fn handshake_age(&self) -> Option<std::time::Duration> {
        self.sessions.iter().filter_map(Session::established).min()
    }

    fn peer_newest_key(&self) -> PublicKey {
        self.peer.next_public_key.unwrap_or(self.peer.public_key)
    }
}

/// Where a datagram from the network goes.
#[derive(Debug)]
pub enum Incoming<'o> {
    /// To this session of this peer.
    Session {
        peer: u32,
        session: u32,
    },
    /// Answer with this (a cookie reply: we are under handshake load).
    Reply(&'o [u8]),
    Drop(DropReason),
}

/// All peers, with the lookups the datapath needs.
pub struct PeerTable {
    /// Our current key, then our next key while rotating.
    keys: Vec<OwnKey>,
    handshakes_per_second: u64,
    slots: HashMap<u32, PeerSlot>,
    /// Session index -> peer id.
    sessions: HashMap<u32, u32>,
    /// Current and next keys of every peer -> peer id.
    by_key: HashMap<PublicKey, u32>,
    by_name: BTreeMap<String, u32>,
    routes: PrefixTable<u32>,
    next_peer: u32,
    next_index: u32,
}

impl PeerTable {
    pub fn new(current: x25519::StaticSecret, handshakes_per_second: u64) -> Self {
        Self {
            keys: vec![OwnKey::new(current, handshakes_per_second)],
            handshakes_per_second,
            slots: HashMap::new(),
            sessions: HashMap::new(),
            by_key: HashMap::new(),
            by_name: BTreeMap::new(),
            routes: PrefixTable::default(),
            next_peer: 1,
            next_index: 1,
        }
    }

    fn own_newest(&self) -> x25519::PublicKey {
        self.keys.last().map_or([0; 32].into(), |k| k.public)
    }

    /// Replaces our keys. Sessions on a key we no longer hold end; sessions on keys we keep
    /// stay; every peer gets a session on our newest key (its timers start the handshake if
    /// the peer does not start it first).
    pub fn set_keys(&mut self, current: x25519::StaticSecret, next: Option<x25519::StaticSecret>) {
        let mut old: Vec<OwnKey> = std::mem::take(&mut self.keys);
        let rate = self.handshakes_per_second;
        let mut keep = |secret: x25519::StaticSecret| {
            let public = x25519::PublicKey::from(&secret);
            match old.iter().position(|k| k.public == public) {
                Some(i) => old.swap_remove(i),
                None => OwnKey::new(secret, rate),
            }
        };
        let mut keys = vec![keep(current)];
        if let Some(next) = next {
            keys.push(keep(next));
        }
        self.keys = keys;
        let held: Vec<x25519::PublicKey> = self.keys.iter().map(|k| k.public).collect();
        let ids: Vec<u32> = self.slots.keys().copied().collect();
        for id in ids {
            self.retain_sessions(id, |s| held.contains(&s.own));
        }
        // Every peer's choice is made again (our newest key weighs in it): by
        // `retain_sessions` above, and by `add_session` for the new sessions.
        self.ensure_targets();
    }

    /// The peers as the mesh last described them.
    pub fn peers(&self) -> BTreeMap<String, Peer> {
        self.by_name
            .iter()
            .filter_map(|(name, id)| Some((name.clone(), self.slots.get(id)?.peer.clone())))
            .collect()
    }

    /// Makes the table hold exactly `desired`, touching only peers that changed. Returns the
    /// sessions created to reach peers on the newest keys (to initiate at once).
    pub fn sync(&mut self, desired: &BTreeMap<String, Peer>) -> Vec<u32> {
        let diff = diff_peers(&self.peers(), desired);
        for name in &diff.removed {
            if let Some(id) = self.by_name.remove(name) {
                self.retain_sessions(id, |_| false);
                self.slots.remove(&id);
            }
        }
        for peer in &diff.changed {
            let Some(id) = self.by_name.get(&peer.name).copied() else {
                continue;
            };
            let Some(slot) = self.slots.get_mut(&id) else {
                continue;
            };
            if slot.peer.endpoint != peer.endpoint {
                slot.endpoint = peer.endpoint;
            }
            slot.peer = peer.clone();
            // Sessions on a key the peer no longer has end (a new key is a new WireGuard
            // peer); sessions on its current or next key carry on.
            let keys = [Some(peer.public_key), peer.next_public_key];
            self.retain_sessions(id, |s| keys.contains(&Some(s.peer_key)));
        }
        for peer in &diff.added {
            let id = self.next_peer;
            self.next_peer = self.next_peer.wrapping_add(1).max(1);
            self.by_name.insert(peer.name.clone(), id);
            self.slots.insert(
                id,
                PeerSlot {
                    endpoint: peer.endpoint,
                    peer: peer.clone(),
                    sessions: Vec::new(),
                    preferred: 0,
                    counters: PeerCounters::default(),
                },
            );
        }
        self.by_key.clear();
        self.routes.clear();
        for (id, slot) in &self.slots {
            self.by_key.insert(slot.peer.public_key, *id);
            if let Some(next) = slot.peer.next_public_key {
                self.by_key.insert(next, *id);
            }
            for prefix in &slot.peer.allowed_ips {
                self.routes.insert(*prefix, *id);
            }
        }
        // A changed peer's choice was made again by `retain_sessions` (after its new keys were
        // in place), an added peer's by `add_session`; the others' did not change.
        self.ensure_targets()
    }

    /// Drops the sessions of peer `id` for which `keep` is false.
    fn retain_sessions(&mut self, id: u32, keep: impl Fn(&Session) -> bool) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        for session in slot.sessions.iter().filter(|s| !keep(s)) {
            self.sessions.remove(&session.index);
        }
        slot.sessions.retain(keep);
        self.choose_outbound(Some(id));
    }

    /// Gives every peer a session between our newest key and its newest key.
    fn ensure_targets(&mut self) -> Vec<u32> {
        let own = self.own_newest();
        let targets: Vec<(u32, PublicKey)> = self
            .slots
            .iter()
            .filter_map(|(id, slot)| {
                let key = slot.peer_newest_key();
                let has = slot
                    .sessions
                    .iter()
                    .any(|s| s.own == own && s.peer_key == key);
                (!has).then_some((*id, key))
            })
            .collect();
        targets
            .into_iter()
            .filter_map(|(id, key)| self.add_session(id, own, key))
            .collect()
    }

    fn add_session(&mut self, id: u32, own: x25519::PublicKey, peer_key: PublicKey) -> Option<u32> {
        let Some(index) = self.free_index() else {
            tracing::error!(peer = id, "no free session index; session not added");
            return None;
        };
        let own_key = self.keys.iter().find(|k| k.public == own)?;
        let session = Session::new(index, own_key, peer_key);
        let slot = self.slots.get_mut(&id)?;
        slot.sessions.push(session);
        self.sessions.insert(index, id);
        self.choose_outbound(Some(id));
        Some(index)
    }

    fn free_index(&mut self) -> Option<u32> {
        for _ in 0..=MAX_INDEX {
            let candidate = self.next_index;
            self.next_index = if candidate >= MAX_INDEX {
                1
            } else {
                candidate + 1
            };
            if !self.sessions.contains_key(&candidate) {
                return Some(candidate);
            }
        }
        None
    }

    /// Chooses the outbound session of peer `only`, or of every peer for `None`: the one
    /// place that decides it (by `session::preferred`). Called wherever what it depends on
    /// changes: a peer's sessions (added or dropped here), our keys or a peer's (`set_keys`,
    /// `sync`), and the sessions' handshake state (after a handshake message is handled and
    /// after the timers run, which the datapath reports).
    pub fn choose_outbound(&mut self, only: Option<u32>) {
        let own = self.own_newest();
        let choose = |slot: &mut PeerSlot| {
            let newest = slot.peer_newest_key();
            slot.preferred = preferred(&slot.sessions, &own, &newest).unwrap_or(0);
        };
        match only {
            Some(id) => self.slots.get_mut(&id).into_iter().for_each(choose),
            None => self.slots.values_mut().for_each(choose),
        }
    }

    /// Where a datagram goes. Handshake messages are matched to one of our keys by their MAC1;
    /// initiations then to a peer by the initiator's static key (creating the session for that
    /// pair of keys if it is new), everything else by receiver index.
    pub fn classify<'o>(
        &mut self,
        src: SocketAddr,
        datagram: &[u8],
        out: &'o mut [u8],
    ) -> Incoming<'o> {
        let mut addressed = None;
        for (position, key) in self.keys.iter().enumerate() {
            match key.limiter.verify_packet(Some(src.ip()), datagram, out) {
                Ok(packet) => {
                    addressed = Some((position, packet));
                    break;
                }
                Err(TunnResult::WriteToNetwork(_)) => {
                    // Under load: the cookie reply is in `out` (the borrow cannot leave the
                    // loop, so it is taken again here).
                    return Incoming::Reply(&out[..COOKIE_REPLY_BYTES]);
                }
                Err(_) => {}
            }
        }
        let Some((position, packet)) = addressed else {
            return Incoming::Drop(DropReason::Malformed);
        };
        let session = match packet {
            Packet::HandshakeInit(init) => {
                let Some(own) = self.keys.get(position) else {
                    return Incoming::Drop(DropReason::Malformed);
                };
                let Ok(half) = parse_handshake_anon(&own.secret, &own.public, &init) else {
                    return Incoming::Drop(DropReason::Malformed);
                };
                let initiator = PublicKey::from_bytes(half.peer_static_public);
                match self.session_for_init(own.public, initiator) {
                    Some(session) => session,
                    None => return Incoming::Drop(DropReason::UnknownPeer),
                }
            }
            Packet::HandshakeResponse(p) => p.receiver_idx >> 8,
            Packet::PacketCookieReply(p) => p.receiver_idx >> 8,
            Packet::PacketData(p) => p.receiver_idx >> 8,
        };
        match self.peer_of_session(session) {
            Some(peer) => Incoming::Session { peer, session },
            None => Incoming::Drop(DropReason::UnknownReceiver),
        }
    }

    /// The session between our key `own` and the peer holding `initiator` as its current or
    /// next key, created if this pair has none yet.
    fn session_for_init(&mut self, own: x25519::PublicKey, initiator: PublicKey) -> Option<u32> {
        let id = *self.by_key.get(&initiator)?;
        let slot = self.slots.get(&id)?;
        if let Some(found) = slot
            .sessions
            .iter()
            .find(|s| s.own == own && s.peer_key == initiator)
        {
            return Some(found.index);
        }
        self.add_session(id, own, initiator)
    }

    /// The peer whose allowed IPs hold `destination` (longest prefix).
    pub fn index_for_destination(&self, destination: IpAddr) -> Option<u32> {
        self.routes.lookup(destination).copied()
    }

    /// The peer that receiver index `receiver` of ours belongs to.
    #[cfg(test)]
    pub fn index_for_receiver(&self, receiver: u32) -> Option<u32> {
        self.peer_of_session(receiver >> 8)
    }

    /// The peer session `session` (a session index, as `sync` returns them) belongs to.
    pub fn peer_of_session(&self, session: u32) -> Option<u32> {
        self.sessions.get(&session).copied()
    }

    /// Whether `source` lies in the allowed IPs of peer `id` (and of no more specific peer).
    pub fn source_allowed(&self, id: u32, source: IpAddr) -> bool {
        self.routes.lookup(source) == Some(&id)
    }

    pub fn slot_mut(&mut self, id: u32) -> Option<&mut PeerSlot> {
        self.slots.get_mut(&id)
    }

    pub fn slots(&self) -> impl Iterator<Item = &PeerSlot> {
        self.by_name.values().filter_map(|id| self.slots.get(id))
    }

    pub fn slots_mut(&mut self) -> impl Iterator<Item = &mut PeerSlot> {
        self.slots.values_mut()
    }

    /// Resets every key's handshake counter (once a second).
    pub fn reset_rate_limiters(&self) {
        for key in &self.keys {
            key.limiter.reset_count();
        }
    }

    /// While rotating: which peers have completed a handshake with our next key.
    pub fn key_moves(&self) -> Option<KeyRotationProgress> {
        let next = self.keys.get(1)?.public;
        let mut moves = KeyRotationProgress {
            next_public_key: PublicKey::from_bytes(next.to_bytes()).to_string(),
            ..KeyRotationProgress::default()
        };
        for (name, id) in &self.by_name {
            let moved = self.slots.get(id).is_some_and(|slot| {
                slot.sessions
                    .iter()
                    .any(|s| s.own == next && s.established().is_some())
            });
            if moved {
                moves.moved.push(name.clone());
            } else {
                moves.pending.push(name.clone());
            }
        }
        Some(moves)
    }
}

#[cfg(test)]
#[path = "peers_tests.rs"]
mod tests;

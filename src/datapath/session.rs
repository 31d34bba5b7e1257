//! WireGuard sessions of one peer. A session is one boringtun `Tunn`: the protocol state
//! between one of our static keys and one of the peer's. Normally a peer has one; while either
//! side rotates its key there can be one per pair of (our current or next key, the peer's
//! current or next key), so old sessions keep carrying traffic while new ones handshake.

use std::sync::Arc;
use std::time::Duration;

use boringtun::noise::Tunn;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::x25519;
use weft_keys::PublicKey;

/// Keepalive interval: keeps NAT mappings open and lets each side notice the other quickly.
const PERSISTENT_KEEPALIVE_SECS: u16 = 25;

/// One of this node's static keys, with the handshake rate limiter keyed to it: a handshake's
/// MAC1 is keyed by the receiver's public key, so it tells which of our keys it addresses.
pub struct OwnKey {
    pub secret: x25519::StaticSecret,
    pub public: x25519::PublicKey,
    /// Rate-limits handshakes addressed to this key (checked once, when a datagram arrives).
    pub limiter: Arc<RateLimiter>,
    /// Checks MAC1 only: what the sessions' `Tunn`s get, so a handshake is counted once and a
    /// `Tunn` never answers with a cookie before authenticating anything.
    mac_only: Arc<RateLimiter>,
}

impl OwnKey {
    pub fn new(secret: x25519::StaticSecret, handshakes_per_second: u64) -> Self {
        let public = x25519::PublicKey::from(&secret);
        let limiter = Arc::new(RateLimiter::new(&public, handshakes_per_second));
        let mac_only = Arc::new(RateLimiter::new(&public, u64::MAX));
        Self {
            secret,
            public,
            limiter,
            mac_only,
        }
    }
}

/// One session: our key, the peer's key, and the state machine between them.
pub struct Session {
    /// Our receiver index for it (boringtun uses `index << 8 | n` on the wire).
    pub index: u32,
    pub own: x25519::PublicKey,
    pub peer_key: PublicKey,
    pub tunn: Tunn,
}

impl Session {
    pub fn new(index: u32, own: &OwnKey, peer_key: PublicKey) -> Self {
        let tunn = Tunn::new(
            own.secret.clone(),
            x25519::PublicKey::from(*peer_key.as_bytes()),
            None,
            Some(PERSISTENT_KEEPALIVE_SECS),
            index,
            Some(own.mac_only.clone()),
        );
        Self {
            index,
            own: own.public,
            peer_key,
            tunn,
        }
    }

    /// Time since the session's last completed handshake; `None` while it has no session.
    pub fn established(&self) -> Option<Duration> {
        self.tunn.time_since_last_handshake()
    }
}

/// Which session outbound packets use: among sessions with a completed handshake, the one on
/// the newest keys (our newest key, the peer's newest key; each counts one), then the most
/// recent handshake. With none established, the session on both newest keys, whose first
/// packet starts its handshake. `None` only for an empty list.
pub fn preferred(
    sessions: &[Session],
    own_newest: &x25519::PublicKey,
    peer_newest: &PublicKey,
) -> Option<usize> {
    let freshness =
        |s: &Session| u8::from(s.own == *own_newest) + u8::from(s.peer_key == *peer_newest);
    let established = sessions
        .iter()
        .enumerate()
        .filter_map(|(i, s)| Some((i, freshness(s), s.established()?)))
        .max_by(|a, b| a.1.cmp(&b.1).then(b.2.cmp(&a.2)))
        .map(|(i, ..)| i);
    established.or_else(|| {
        sessions
            .iter()
            .enumerate()
            .max_by_key(|(_, s)| freshness(s))
            .map(|(i, _)| i)
    })
}

/// WireGuard message types (the first byte of every message).
pub const HANDSHAKE_INITIATION: u8 = 1;
pub const HANDSHAKE_RESPONSE: u8 = 2;
pub const TRANSPORT_DATA: u8 = 4;
/// What a transport data message adds to its packet: type, receiver index and counter (16
/// bytes), then the AEAD tag (16 bytes).
pub const DATA_OVERHEAD: usize = 32;

/// The length of the packet a WireGuard message carries: for a transport data message, its
/// plaintext (boringtun does not pad, so the inner packet; 0 for a keepalive); 0 for handshake
/// and cookie messages.
pub fn data_bytes(message: &[u8]) -> usize {
    match message.first() {
        Some(&TRANSPORT_DATA) => message.len().saturating_sub(DATA_OVERHEAD),
        _ => 0,
    }
}

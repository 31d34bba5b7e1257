use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand_core::OsRng;
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use crate::{KeyError, PublicKey};

/// An x25519 private key. Zeroized on drop; never printed (its `Debug` is redacted and it has
/// no `Display`).
pub struct PrivateKey(StaticSecret);

impl PrivateKey {
    pub fn generate() -> Self {
        Self(StaticSecret::random_from_rng(OsRng))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let bytes = Zeroizing::new(bytes);
        Self(StaticSecret::from(*bytes))
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_bytes(x25519_dalek::PublicKey::from(&self.0).to_bytes())
    }

    /// Parses standard base64 (surrounding whitespace allowed, as in a key file).
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let decoded = Zeroizing::new(
            STANDARD
                .decode(text.trim())
                .map_err(|_| KeyError::Invalid("private key is not base64"))?,
        );
        let mut bytes = Zeroizing::new([0u8; 32]);
        if decoded.len() != bytes.len() {
            return Err(KeyError::Invalid("private key is not 32 bytes"));
        }
        bytes.copy_from_slice(&decoded);
        Ok(Self(StaticSecret::from(*bytes)))
    }

    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.to_bytes().as_slice()))
    }

    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    #[test]
    fn public_key_matches_rfc7748_vector() {
        let alice = PrivateKey::from_bytes(hex(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        ));
        assert_eq!(
            alice.public_key().as_bytes(),
            &hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
    }

    #[test]
    fn debug_does_not_print_the_key() {
        let key = PrivateKey::generate();
        let debug = format!("{key:?}");
        assert_eq!(debug, "PrivateKey(<redacted>)");
        assert!(!debug.contains(key.to_base64().as_str()));
    }

    #[test]
    fn base64_round_trip_keeps_the_key() {
        let key = PrivateKey::generate();
        let again = PrivateKey::from_base64(&format!("{}\n", key.to_base64().as_str())).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        assert!(PrivateKey::from_base64("AAAA").is_err());
        assert!(PrivateKey::from_base64("not base64 at all").is_err());
    }
}

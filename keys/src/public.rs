use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::KeyError;

/// An x25519 public key. Displays as standard padded base64 (44 characters), as `wg` does.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Strict: standard base64 with padding, exactly 32 bytes, not the all-zero key.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let bytes = STANDARD
            .decode(text)
            .map_err(|_| KeyError::Invalid("not standard base64"))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| KeyError::Invalid("not 32 bytes"))?;
        if bytes == [0; 32] {
            return Err(KeyError::Invalid("the all-zero key"));
        }
        Ok(Self(bytes))
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::from_base64(text)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn base64_round_trips(bytes in any::<[u8; 32]>().prop_filter("zero", |b| *b != [0; 32])) {
            let key = PublicKey::from_bytes(bytes);
            let text = key.to_string();
            prop_assert_eq!(text.len(), 44);
            prop_assert_eq!(text.parse::<PublicKey>().unwrap(), key);
        }

        #[test]
        fn parsing_never_panics(text in ".{0,80}") {
            let _ = PublicKey::from_base64(&text);
        }
    }

    #[test]
    fn rejects_wrong_length_bad_chars_and_zero() {
        assert!(PublicKey::from_base64(&STANDARD.encode([1u8; 31])).is_err());
        assert!(PublicKey::from_base64(&STANDARD.encode([1u8; 33])).is_err());
        assert!(PublicKey::from_base64("!!!!").is_err());
        assert!(PublicKey::from_base64(&STANDARD.encode([0u8; 32])).is_err());
        let good = STANDARD.encode([7u8; 32]);
        assert!(
            PublicKey::from_base64(&format!(" {good}")).is_err(),
            "whitespace accepted"
        );
        assert!(
            PublicKey::from_base64(good.trim_end_matches('=')).is_err(),
            "unpadded accepted"
        );
    }
}

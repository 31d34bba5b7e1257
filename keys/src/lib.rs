//! Key material for weft: x25519 private keys that never leak, base64 public keys, and an
//! on-disk key store with strict permissions and atomic writes.

pub mod atomic;
mod error;
mod private;
mod private_dir;
mod public;
mod rotation;
mod store;

pub use error::KeyError;
pub use private::PrivateKey;
pub use private_dir::make_private_dir;
pub use public::PublicKey;
pub use rotation::{PendingRotation, RotationState};
pub use store::{DEFAULT_KEY_DIR, KeyStore};

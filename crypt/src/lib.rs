//! Encryption at rest. A [`Keyring`] holds the node's 256-bit keys, each
//! named by an id, one of them current; a [`Cipher`] seals bytes under the
//! current key into a self-describing envelope (AES-256-GCM, see
//! docs/format.md, "Encryption at rest") and opens envelopes under whichever
//! listed key they name. Without a key ring a cipher passes bytes through, and
//! bytes that are not an envelope are always read as they are, so a store
//! written before encryption was turned on stays readable until it is rekeyed.

mod envelope;
mod file;
mod keyring;

pub use envelope::{Cipher, KeyUse, OpenError, is_sealed};
pub use file::{StateFileError, load_state_file, open_state, store_state_file};
pub use keyring::{KEY_BYTES, KeyFileError, Keyring};

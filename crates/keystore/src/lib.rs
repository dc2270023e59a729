//! The crypto chip of a drivesec device.
//!
//! A [`KeyStore`] holds private keys and only ever hands out *handles* to them:
//! callers generate, sign, agree (ECDH), read the public key, list and destroy,
//! but can never read a private key back. Two backends implement the trait:
//!
//! * [`soft::SoftKeyStore`]: keys in files encrypted at rest with AES-256-GCM
//!   under a key derived (HKDF-SHA256) from a per-device secret; the embedded
//!   default when no chip is fitted.
//! * [`pkcs11::Pkcs11KeyStore`]: keys generated on a PKCS#11 token (SoftHSM2 in
//!   tests, a real secure element in the field) as sensitive, non-extractable
//!   token objects; tokens are addressed by RFC 7512 `pkcs11:` URIs.
//!
//! [`adapters`] lets rustls and rcgen sign through any backend, so a TLS server
//! key or a CA key never enters the process when the backend is PKCS#11.
//!
//! Besides keys, a store holds named monotonic counters
//! ([`KeyStore::counter`], [`KeyStore::advance_counter`]) that can only be
//! raised; the audit trail anchors its last checkpoint in one. On PKCS#11
//! they live on the token, outside the state directory; on the soft backend
//! they are sealed under the device secret but live in the store directory,
//! so restoring an old copy of that directory rolls them back.
//!
//! Signature formats: ECDSA P-256 signs SHA-256(message) and returns the DER
//! `Ecdsa-Sig-Value` (what X.509 and TLS carry); Ed25519 returns the 64-byte
//! RFC 8032 signature of the message.

mod config;
mod counter;
mod error;
mod key;

pub mod adapters;
pub mod pkcs11;
pub mod soft;
pub mod verify;

pub use config::{KeystoreConfig, open_keystore};
pub use counter::{COUNTER_NAME_MAX, check_counter_name};
pub use error::KeystoreError;
pub use key::{KeyAlgorithm, KeyHandle, KeyInfo, PublicKey};

use zeroize::Zeroizing;

/// Result type of keystore operations.
pub type Result<T> = std::result::Result<T, KeystoreError>;

/// The handle-based interface of the crypto chip. Private keys never leave it.
pub trait KeyStore: Send + Sync {
    /// Short backend name: `soft` or `pkcs11`.
    fn backend(&self) -> &'static str;

    /// Where the keys live (a directory, or a PKCS#11 URI without secrets).
    fn location(&self) -> String;

    /// Whether this backend can generate and use keys of `alg`.
    fn supports(&self, alg: KeyAlgorithm) -> bool;

    /// Generates a new key pair inside the store under `handle`.
    ///
    /// Fails with [`KeystoreError::AlreadyExists`] if the handle is taken.
    fn generate(&self, handle: &KeyHandle, alg: KeyAlgorithm) -> Result<KeyInfo>;

    /// Signs `msg` with the key (see the crate docs for the signature format).
    fn sign(&self, handle: &KeyHandle, msg: &[u8]) -> Result<Vec<u8>>;

    /// P-256 ECDH with the key and a peer's SEC1 public point; returns the
    /// shared secret's x-coordinate (32 bytes), zeroized on drop.
    fn ecdh(&self, handle: &KeyHandle, peer_sec1: &[u8]) -> Result<Zeroizing<Vec<u8>>>;

    /// The key's public half and algorithm.
    fn info(&self, handle: &KeyHandle) -> Result<KeyInfo>;

    /// Every key in the store, sorted by handle.
    fn list(&self) -> Result<Vec<KeyInfo>>;

    /// Destroys one key pair.
    fn destroy(&self, handle: &KeyHandle) -> Result<()>;

    /// Destroys every key in the store (tamper response); returns how many
    /// key pairs were destroyed. Every counter goes too: afterwards each
    /// reads as never set.
    fn destroy_all(&self) -> Result<usize>;

    /// The named monotonic counter's value; None when it was never set.
    ///
    /// Names are 1 to 64 characters of `[a-z0-9-]`
    /// ([`check_counter_name`]); a stored value that does not authenticate
    /// is [`KeystoreError::CorruptCounter`], never `None`.
    fn counter(&self, name: &str) -> Result<Option<u64>>;

    /// Raises the named counter to `to` if it is lower (never lowers it); returns the value now held.
    ///
    /// A counter never set is below every value, so `to = 0` creates it at
    /// 0. Calls on one store are atomic with respect to each other (two
    /// advances end at the larger value), and the new value is durable
    /// when this returns. [`destroy`](KeyStore::destroy) never touches
    /// counters.
    fn advance_counter(&self, name: &str, to: u64) -> Result<u64>;
}

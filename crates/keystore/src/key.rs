use std::fmt;

use p256::pkcs8::EncodePublicKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{KeystoreError, Result};

/// A key algorithm the crypto chip can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyAlgorithm {
    /// ECDSA and ECDH on NIST P-256 (secp256r1).
    EcdsaP256,
    /// Ed25519 signatures (RFC 8032).
    Ed25519,
}

impl KeyAlgorithm {
    /// The name used in files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::Ed25519 => "ed25519",
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for KeyAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "ecdsa-p256" | "p256" | "p-256" => Ok(KeyAlgorithm::EcdsaP256),
            "ed25519" => Ok(KeyAlgorithm::Ed25519),
            other => Err(format!(
                "unknown key algorithm '{other}' (expected ecdsa-p256 or ed25519)"
            )),
        }
    }
}

/// The name of a key inside a store: 1 to 64 characters from `[A-Za-z0-9._-]`,
/// not starting with a dot. A handle never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyHandle(String);

impl KeyHandle {
    /// Validates and wraps a key name.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let reason = if name.is_empty() {
            Some("it is empty")
        } else if name.len() > 64 {
            Some("it is longer than 64 characters")
        } else if name.starts_with('.') {
            Some("it starts with a dot")
        } else if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            Some("only letters, digits, '.', '_' and '-' are allowed")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(KeystoreError::InvalidHandle {
                handle: name,
                reason,
            }),
            None => Ok(KeyHandle(name)),
        }
    }

    /// The key name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for KeyHandle {
    type Error = KeystoreError;
    fn try_from(s: String) -> Result<Self> {
        KeyHandle::new(s)
    }
}

impl From<KeyHandle> for String {
    fn from(h: KeyHandle) -> String {
        h.0
    }
}

impl fmt::Display for KeyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A public key: SEC1 uncompressed point (65 bytes) for P-256, 32 bytes for Ed25519.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    algorithm: KeyAlgorithm,
    raw: Vec<u8>,
}

impl PublicKey {
    /// Checks that `raw` is a valid public key of `algorithm`.
    pub fn from_raw(algorithm: KeyAlgorithm, raw: Vec<u8>) -> Result<Self> {
        match algorithm {
            KeyAlgorithm::EcdsaP256 => {
                let pk = p256::PublicKey::from_sec1_bytes(&raw)
                    .map_err(|_| KeystoreError::InvalidPeerKey("not a P-256 point".into()))?;
                let raw = p256::EncodedPoint::from(pk).to_bytes().to_vec();
                Ok(PublicKey { algorithm, raw })
            }
            KeyAlgorithm::Ed25519 => {
                let bytes: [u8; 32] = raw.as_slice().try_into().map_err(|_| {
                    KeystoreError::InvalidPeerKey("Ed25519 keys are 32 bytes".into())
                })?;
                ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                    .map_err(|_| KeystoreError::InvalidPeerKey("not an Ed25519 point".into()))?;
                Ok(PublicKey { algorithm, raw })
            }
        }
    }

    /// The algorithm.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// The raw public key bytes (the content of the SPKI BIT STRING).
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// DER `SubjectPublicKeyInfo`.
    pub fn spki_der(&self) -> Vec<u8> {
        let der = match self.algorithm {
            KeyAlgorithm::EcdsaP256 => p256::PublicKey::from_sec1_bytes(&self.raw)
                .ok()
                .and_then(|pk| pk.to_public_key_der().ok()),
            KeyAlgorithm::Ed25519 => <[u8; 32]>::try_from(self.raw.as_slice())
                .ok()
                .and_then(|b| ed25519_dalek::VerifyingKey::from_bytes(&b).ok())
                .and_then(|vk| vk.to_public_key_der().ok()),
        };
        // from_raw validated the key, so encoding cannot fail.
        der.map(|d| d.as_bytes().to_vec()).unwrap_or_default()
    }

    /// PEM `PUBLIC KEY`.
    pub fn spki_pem(&self) -> String {
        let b64 =
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, self.spki_der());
        let mut out = String::from("-----BEGIN PUBLIC KEY-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(chunk));
            out.push('\n');
        }
        out.push_str("-----END PUBLIC KEY-----\n");
        out
    }

    /// SHA-256 of the SPKI, hex: a stable fingerprint for logs and listings.
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(self.spki_der()))
    }
}

/// What a store says about one of its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// The key's handle.
    pub handle: KeyHandle,
    /// Its public half (which also names the algorithm).
    pub public_key: PublicKey,
}

impl KeyInfo {
    /// The key's algorithm.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.public_key.algorithm()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_validated() {
        assert!(KeyHandle::new("idevid").is_ok());
        assert!(KeyHandle::new("ca-root.2026_1").is_ok());
        for bad in ["", ".hidden", "a/b", "a b", "ü", &"x".repeat(65)] {
            assert!(KeyHandle::new(bad).is_err(), "{bad:?} accepted");
        }
    }
}

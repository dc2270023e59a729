use serde::{Deserialize, Serialize};

use crate::frame::Hash;

/// What a signed statement about the chain says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointKind {
    /// "The chain's record `seq` has hash `hash`." Written every N records or T seconds.
    Checkpoint,
    /// "Records up to and including `seq` (hash `hash`) were dropped by the
    /// capacity policy after being forwarded or exported." Lets a verifier
    /// accept a trail that no longer starts at record 1.
    Anchor,
}

/// A statement over the chain head, signed by the device key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Checkpoint or anchor.
    pub kind: CheckpointKind,
    /// Sequence number covered.
    pub seq: u64,
    /// Hash of record `seq`, hex.
    pub hash: String,
    /// When it was signed (RFC 3339 UTC).
    pub time: String,
    /// Signature algorithm: `ecdsa-p256-sha256` or `ed25519`.
    pub algorithm: String,
    /// Signature over [`Checkpoint::signed_bytes`], base64.
    pub signature: String,
}

impl Checkpoint {
    /// The exact bytes the signature covers.
    pub fn signed_bytes(kind: CheckpointKind, seq: u64, hash_hex: &str, time: &str) -> Vec<u8> {
        let tag = match kind {
            CheckpointKind::Checkpoint => "drivesec-audit-checkpoint/v1",
            CheckpointKind::Anchor => "drivesec-audit-anchor/v1",
        };
        format!("{tag}\nseq={seq}\nhash={hash_hex}\ntime={time}\n").into_bytes()
    }

    /// Whether the signature verifies with `key`.
    pub fn verify(&self, key: &drivesec_keystore::PublicKey) -> bool {
        let Ok(sig) =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &self.signature)
        else {
            return false;
        };
        let msg = Self::signed_bytes(self.kind, self.seq, &self.hash, &self.time);
        drivesec_keystore::verify::verify_signature(key, &msg, &sig)
    }

    /// The hash as bytes, if well-formed.
    pub fn hash_bytes(&self) -> Option<Hash> {
        hex::decode(&self.hash).ok()?.try_into().ok()
    }
}

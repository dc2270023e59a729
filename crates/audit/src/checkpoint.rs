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

/// A statement over the chain head, signed by the device key. Read
/// strictly (docs/audit.md, "Checkpoints and anchors"): these six fields,
/// each once, nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Checkpoint or anchor.
    pub kind: CheckpointKind,
    /// Sequence number covered.
    pub seq: u64,
    /// Hash of record `seq`: 64 lower-case hex digits.
    pub hash: String,
    /// When it was signed (RFC 3339 UTC).
    pub time: String,
    /// Signature algorithm: `ecdsa-p256-sha256` or `ed25519`.
    pub algorithm: String,
    /// Signature over [`Checkpoint::signed_bytes`]: base64, standard
    /// alphabet, padded, canonical (unused bits zero).
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

    /// Whether the statement is well-formed (its hash 64 lower-case hex
    /// digits) and the signature verifies with `key`. The signature must be
    /// canonical base64 (the standard engine refuses another alphabet,
    /// missing or extra padding and unused bits that are not zero), so one
    /// signature has one accepted spelling.
    pub fn verify(&self, key: &drivesec_keystore::PublicKey) -> bool {
        if self.hash_bytes().is_none() {
            return false;
        }
        let Ok(sig) =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &self.signature)
        else {
            return false;
        };
        let msg = Self::signed_bytes(self.kind, self.seq, &self.hash, &self.time);
        drivesec_keystore::verify::verify_signature(key, &msg, &sig)
    }

    /// The hash as bytes, if well-formed: exactly 64 lower-case hex digits
    /// (the signed bytes hold the hash as written, so a second spelling of
    /// one hash is refused rather than compared).
    pub fn hash_bytes(&self) -> Option<Hash> {
        if self.hash.len() != 64
            || !self
                .hash
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return None;
        }
        hex::decode(&self.hash).ok()?.try_into().ok()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const HASH: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn json(extra: &str) -> String {
        format!(
            r#"{{"kind":"checkpoint","seq":5,"hash":"{HASH}","time":"t","algorithm":"ed25519","signature":"AA=="{extra}}}"#
        )
    }

    /// A statement is read strictly: an unknown field, a field twice, a
    /// number that is not an unsigned integer, an upper-case hash are all
    /// refused (docs/audit.md, "Checkpoints and anchors").
    #[test]
    fn statements_are_read_strictly() {
        let ok: Checkpoint = serde_json::from_str(&json("")).unwrap();
        assert!(ok.hash_bytes().is_some());
        for bad in [
            json(r#","note":"x""#),
            json(r#","seq":6"#),
            json("").replace(r#""seq":5"#, r#""seq":5.0"#),
            json("").replace(r#""seq":5"#, r#""seq":-0"#),
            json("").replace(r#""kind":"checkpoint""#, r#""kind":"Checkpoint""#),
        ] {
            assert!(serde_json::from_str::<Checkpoint>(&bad).is_err(), "{bad}");
        }
        let upper: Checkpoint =
            serde_json::from_str(&json("").replace(HASH, &HASH.to_uppercase())).unwrap();
        assert!(upper.hash_bytes().is_none());
        let short: Checkpoint = serde_json::from_str(&json("").replace(HASH, &HASH[..62])).unwrap();
        assert!(short.hash_bytes().is_none());
    }
}

//! The manifest: what an image claims, encoded as canonical CBOR.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{FirmwareError, Result};

/// Format identifier carried in every manifest.
pub const FORMAT: &str = "drivesec-fw/1";

/// One recipient of the content key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// Key id of the recipient's firmware key (see [`crate::sign::key_id`]).
    pub kid: String,
    /// Ephemeral P-256 public key, SEC1 uncompressed.
    #[serde(with = "serde_bytes_hex")]
    pub epk: Vec<u8>,
    /// The content key, AES-256 key-wrapped (RFC 3394), 40 bytes.
    #[serde(with = "serde_bytes_hex")]
    pub wrapped_key: Vec<u8>,
}

/// Encryption parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encryption {
    /// Always `A256GCM-chunked`.
    pub alg: String,
    /// Who can decrypt.
    pub recipients: Vec<Recipient>,
}

/// The signed description of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// Product name.
    pub product: String,
    /// Hardware class the image runs on.
    pub hw_class: String,
    /// Semantic version.
    pub version: String,
    /// Anti-rollback counter: a device never boots an image below its stored counter.
    pub security_counter: u64,
    /// Build time, RFC 3339.
    pub build_time: String,
    /// Plaintext payload length.
    pub payload_len: u64,
    /// Plaintext bytes per chunk (the last may be shorter).
    pub chunk_size: u32,
    /// Root of the SHA-256 hash tree over the plaintext chunks, hex.
    pub root: String,
    /// Encryption parameters.
    pub encryption: Encryption,
    /// Optional embedded SBOM (CycloneDX JSON, as text).
    pub sbom: Option<String>,
}

impl Manifest {
    /// Number of chunks.
    pub fn chunk_count(&self) -> u64 {
        if self.payload_len == 0 {
            1
        } else {
            self.payload_len.div_ceil(u64::from(self.chunk_size))
        }
    }

    /// Canonical CBOR encoding (what signatures cover).
    pub fn to_cbor(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        ciborium::into_writer(self, &mut out)
            .map_err(|e| FirmwareError::Malformed(format!("manifest: {e}")))?;
        Ok(out)
    }

    /// Decodes and sanity-checks a manifest.
    pub fn from_cbor(bytes: &[u8]) -> Result<Self> {
        let m: Manifest = ciborium::from_reader(bytes)
            .map_err(|e| FirmwareError::Malformed(format!("manifest: {e}")))?;
        if m.format != FORMAT {
            return Err(FirmwareError::Malformed(format!(
                "unknown format '{}'",
                m.format
            )));
        }
        if m.chunk_size < 4096 || m.chunk_size > 16 << 20 {
            return Err(FirmwareError::Malformed(format!(
                "chunk size {} out of range",
                m.chunk_size
            )));
        }
        if m.encryption.alg != "A256GCM-chunked" || m.encryption.recipients.is_empty() {
            return Err(FirmwareError::Malformed(
                "unsupported or empty encryption parameters".into(),
            ));
        }
        if m.to_cbor()? != bytes {
            return Err(FirmwareError::Malformed(
                "manifest is not in canonical encoding".into(),
            ));
        }
        Ok(m)
    }

    /// SHA-256 of the canonical encoding: the image's identity, bound into every chunk.
    pub fn digest(&self) -> Result<[u8; 32]> {
        Ok(Sha256::digest(self.to_cbor()?).into())
    }
}

mod serde_bytes_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

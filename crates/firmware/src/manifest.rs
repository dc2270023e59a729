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

    /// Decodes a manifest and checks every field the format constrains
    /// (docs/image-format.md, "Manifest"): exactly the eleven keys, `format`,
    /// `version` (semver), `build_time` (RFC 3339), `chunk_size`, `root`
    /// (64 lowercase hex digits), `encryption` (`alg`, at least one
    /// recipient, each `kid` 16, `epk` 130 and `wrapped_key` 80 lowercase hex
    /// digits, `epk` an uncompressed point), then the canonical encoding.
    pub fn from_cbor(bytes: &[u8]) -> Result<Self> {
        let raw: RawManifest = ciborium::from_reader(bytes)
            .map_err(|e| FirmwareError::Malformed(format!("manifest: {e}")))?;
        let m = raw.check()?;
        if m.to_cbor()? != bytes {
            return Err(FirmwareError::NonCanonicalManifest);
        }
        Ok(m)
    }

    /// SHA-256 of the canonical encoding: the image's identity, bound into every chunk.
    pub fn digest(&self) -> Result<[u8; 32]> {
        Ok(Sha256::digest(self.to_cbor()?).into())
    }
}

/// The manifest as it arrives: every text field as text, so its form
/// (lowercase hex, lengths) can be checked before anything is decoded.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    format: String,
    product: String,
    hw_class: String,
    version: String,
    security_counter: u64,
    build_time: String,
    payload_len: u64,
    chunk_size: u32,
    root: String,
    encryption: RawEncryption,
    /// Required: null when there is no SBOM (`deserialize_with` turns off
    /// serde's "a missing Option is None").
    #[serde(deserialize_with = "required_option")]
    sbom: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEncryption {
    alg: String,
    recipients: Vec<RawRecipient>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecipient {
    kid: String,
    epk: String,
    wrapped_key: String,
}

fn required_option<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<String>, D::Error> {
    Option::<String>::deserialize(d)
}

/// Encryption algorithm identifier.
pub const ALG: &str = "A256GCM-chunked";
/// Smallest and largest `chunk_size`.
pub const CHUNK_SIZE_RANGE: std::ops::RangeInclusive<u32> = 4096..=16 << 20;

/// Whether `s` is `n` lowercase hex digits.
pub fn is_lower_hex(s: &str, n: usize) -> bool {
    s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn hex_field(index: usize, field: &'static str, s: &str, bytes: usize) -> Result<Vec<u8>> {
    if !is_lower_hex(s, 2 * bytes) {
        return Err(FirmwareError::BadRecipient {
            index,
            field,
            reason: format!(
                "must be {} lowercase hex digits ({bytes} bytes), got {} character(s)",
                2 * bytes,
                s.chars().count()
            ),
        });
    }
    hex::decode(s).map_err(|e| FirmwareError::BadRecipient {
        index,
        field,
        reason: e.to_string(),
    })
}

/// Whether `s` is a semantic version (semver 2.0.0): `MAJOR.MINOR.PATCH`,
/// each a decimal without leading zeros that fits in 64 bits, then
/// optionally `-` and dot-separated pre-release identifiers (`[0-9A-Za-z-]+`,
/// numeric ones without leading zeros), then optionally `+` and
/// dot-separated build identifiers (`[0-9A-Za-z-]+`).
pub fn is_semver(s: &str) -> bool {
    fn ident_ok(i: &str) -> bool {
        !i.is_empty() && i.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    }
    fn numeric_ok(i: &str) -> bool {
        !i.is_empty()
            && i.bytes().all(|b| b.is_ascii_digit())
            && (i == "0" || !i.starts_with('0'))
            && i.parse::<u64>().is_ok()
    }
    let (rest, build) = match s.split_once('+') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    let (core, pre) = match rest.split_once('-') {
        Some((a, b)) => (a, Some(b)),
        None => (rest, None),
    };
    let parts: Vec<&str> = core.split('.').collect();
    if parts.len() != 3 || !parts.iter().all(|p| numeric_ok(p)) {
        return false;
    }
    if let Some(pre) = pre
        && !pre
            .split('.')
            .all(|i| ident_ok(i) && (!i.bytes().all(|b| b.is_ascii_digit()) || numeric_ok(i)))
    {
        return false;
    }
    if let Some(build) = build
        && !build.split('.').all(ident_ok)
    {
        return false;
    }
    true
}

/// Whether `s` is an RFC 3339 `date-time` (section 5.6): `full-date`, `T`
/// (or `t`), `full-time` with an optional fraction and a `Z` (`z`) or
/// `+hh:mm`/`-hh:mm` offset, denoting a real date and time. The separator is
/// checked here: the parser underneath also takes a space or any other byte.
pub fn is_rfc3339(s: &str) -> bool {
    matches!(s.as_bytes().get(10), Some(b'T' | b't'))
        && time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok()
}

impl RawManifest {
    fn check(self) -> Result<Manifest> {
        if self.format != FORMAT {
            return Err(FirmwareError::Malformed(format!(
                "unknown format '{}'",
                self.format
            )));
        }
        if !is_semver(&self.version) {
            return Err(FirmwareError::BadVersion(self.version));
        }
        if !is_rfc3339(&self.build_time) {
            return Err(FirmwareError::BadBuildTime(self.build_time));
        }
        if !CHUNK_SIZE_RANGE.contains(&self.chunk_size) {
            return Err(FirmwareError::Malformed(format!(
                "chunk size {} out of range",
                self.chunk_size
            )));
        }
        if !is_lower_hex(&self.root, 64) {
            return Err(FirmwareError::BadRoot(self.root));
        }
        if self.encryption.alg != ALG {
            return Err(FirmwareError::Malformed(format!(
                "unsupported encryption '{}'",
                self.encryption.alg
            )));
        }
        if self.encryption.recipients.is_empty() {
            return Err(FirmwareError::NoRecipients);
        }
        let recipients = self
            .encryption
            .recipients
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                if !is_lower_hex(&r.kid, 16) {
                    return Err(FirmwareError::BadRecipient {
                        index: i,
                        field: "kid",
                        reason: "must be 16 lowercase hex digits".into(),
                    });
                }
                let epk = hex_field(i, "epk", &r.epk, 65)?;
                if epk[0] != 0x04 {
                    return Err(FirmwareError::BadRecipient {
                        index: i,
                        field: "epk",
                        reason: "must be an uncompressed SEC1 point (first byte 04)".into(),
                    });
                }
                let wrapped_key = hex_field(i, "wrapped_key", &r.wrapped_key, 40)?;
                Ok(Recipient {
                    kid: r.kid,
                    epk,
                    wrapped_key,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Manifest {
            format: self.format,
            product: self.product,
            hw_class: self.hw_class,
            version: self.version,
            security_counter: self.security_counter,
            build_time: self.build_time,
            payload_len: self.payload_len,
            chunk_size: self.chunk_size,
            root: self.root,
            encryption: Encryption {
                alg: self.encryption.alg,
                recipients,
            },
            sbom: self.sbom,
        })
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

//! Signed, encrypted firmware images (docs/image-format.md).
//!
//! * [`manifest::Manifest`]: what an image claims (product, hardware class,
//!   version, security counter, payload length, chunk size, hash-tree root,
//!   encryption recipients, build time, optional SBOM), encoded as CBOR.
//! * Signatures are COSE_Sign1 (ES256) over the manifest, detached; an image
//!   carries several (the vendor's release, the OEM's approval, ...), and the
//!   device's [`trust::TrustStore`] policy says which roles must have signed.
//! * The payload is encrypted in fixed-size chunks with AES-256-GCM under a
//!   random content key; each chunk's nonce is its index and its associated
//!   data binds the manifest digest, the index and the last-chunk flag, so
//!   reordering, truncation, splicing and mix-and-match fail.
//! * The content key is wrapped for each recipient device key with ECDH-ES
//!   (P-256) + HKDF-SHA256 + AES-256 key wrap; the device unwraps it through
//!   its keystore (the private key never leaves the chip).
//! * [`verify`] checks an image against a trust store and device policy and
//!   streams the decrypted, authenticated payload to a sink.

pub mod crypt;
pub mod image;
pub mod manifest;
pub mod sign;
pub mod slots;
pub mod storage;
pub mod trust;
pub mod verify;

/// Reads a PEM `PUBLIC KEY` (P-256) file.
pub fn read_public_key(path: &std::path::Path) -> Result<drivesec_keystore::PublicKey> {
    use p256::pkcs8::DecodePublicKey;
    let text = drivesec_fsutil::read_to_string(path)?;
    let pk = p256::PublicKey::from_public_key_pem(&text).map_err(|e| {
        FirmwareError::Malformed(format!(
            "{}: not a P-256 PEM public key: {e}",
            path.display()
        ))
    })?;
    Ok(drivesec_keystore::PublicKey::from_raw(
        drivesec_keystore::KeyAlgorithm::EcdsaP256,
        p256::EncodedPoint::from(pk).as_bytes().to_vec(),
    )?)
}

/// Why an image or a trust change was refused. Each attack in the update
/// threat catalogue maps to one variant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FirmwareError {
    /// Not a drivesec image, or a malformed part.
    #[error("malformed image: {0}")]
    Malformed(String),
    /// The manifest is not in the one encoding the format allows (keys in
    /// the documented order, shortest integers, definite lengths, lowercase hex).
    #[error("manifest is not in canonical encoding")]
    NonCanonicalManifest,
    /// The manifest's `version` is not a semantic version (semver 2.0.0).
    #[error("manifest version '{0}' is not a semantic version (MAJOR.MINOR.PATCH[-pre][+build])")]
    BadVersion(String),
    /// The manifest's `build_time` is not an RFC 3339 date-time.
    #[error("manifest build_time '{0}' is not an RFC 3339 date-time")]
    BadBuildTime(String),
    /// The manifest's `root` is not 64 lowercase hex digits (SHA-256).
    #[error("manifest root '{0}' is not 64 lowercase hex digits")]
    BadRoot(String),
    /// The manifest lists no recipient: nobody could decrypt it.
    #[error("manifest has no encryption recipients")]
    NoRecipients,
    /// A recipient entry has a field of the wrong form or length.
    #[error("recipient {index}: {field} {reason}")]
    BadRecipient {
        /// Its position in `recipients`, from 0.
        index: usize,
        /// `kid`, `epk` or `wrapped_key`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The signature block is followed by bytes that are not part of it.
    #[error("{0} byte(s) after the signatures array")]
    SignatureBlockTrailingBytes(usize),
    /// A signature is a bare COSE_Sign1 array, without tag 18.
    #[error("signature {0} is not a tagged COSE_Sign1 (tag 18)")]
    UntaggedSignature(usize),
    /// A signature carries a payload; image signatures are detached (nil payload).
    #[error("signature {0} carries a payload; image signatures are detached (nil)")]
    AttachedPayload(usize),
    /// A signature that is not a well-formed drivesec COSE_Sign1 (structure,
    /// headers, algorithm, key id, role, signature length, bytes after it).
    #[error("signature {index} is malformed: {reason}")]
    MalformedSignature {
        /// Its position in the signatures array, from 0.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The same key signed the image more than once (a key signs once).
    #[error("key {0} signed the image more than once")]
    DuplicateSigner(String),
    /// A valid signature whose role is not the role the trust store gives its key.
    #[error("key {kid} signed as '{signed}' but is trusted as '{trusted}'")]
    RoleMismatch {
        /// The signer.
        kid: String,
        /// The role in the signature's protected header.
        signed: String,
        /// The role in the trust store.
        trusted: String,
    },
    /// A signature by a key the trust store does not know.
    #[error("signed by an unknown key {0}")]
    UnknownKey(String),
    /// A signature by a revoked key.
    #[error("signed by revoked key {0}")]
    RevokedKey(String),
    /// A signature that does not verify.
    #[error("signature by {0} does not verify")]
    BadSignature(String),
    /// The policy's required signatures are not all present.
    #[error("missing required signature: {0}")]
    MissingApproval(String),
    /// The image is for other hardware.
    #[error("image is for hardware class '{image}', this device is '{device}'")]
    WrongHardware {
        /// In the image.
        image: String,
        /// The device's.
        device: String,
    },
    /// The image is for another product.
    #[error("image is for product '{image}', this device is '{device}'")]
    WrongProduct {
        /// In the image.
        image: String,
        /// The device's.
        device: String,
    },
    /// Anti-rollback: the image's security counter is below the device's.
    #[error("rollback refused: image security counter {image} is below the device's {device}")]
    Rollback {
        /// In the image.
        image: u64,
        /// The device's.
        device: u64,
    },
    /// None of the image's recipients is this device's firmware key.
    #[error("the image is not encrypted for this device (key {0})")]
    NotForThisDevice(String),
    /// A payload chunk failed authentication (flipped bit, reordered, spliced).
    #[error("payload chunk {0} failed authentication")]
    BadChunk(u64),
    /// The payload ends before the manifest says it does.
    #[error("payload truncated: {got} of {want} bytes")]
    Truncated {
        /// Bytes received.
        got: u64,
        /// Bytes declared.
        want: u64,
    },
    /// More payload than the manifest declares (endless data), stopped at the declared length.
    #[error("payload continues past the declared {0} bytes")]
    TooLong(u64),
    /// The decrypted payload does not hash to the signed root.
    #[error("payload does not match the signed hash-tree root")]
    DigestMismatch,
    /// A trust store whose policy requires nothing (no requirement, or a
    /// requirement of zero signatures): it would accept unsigned images.
    #[error("the policy must require at least one signature of each role it names")]
    EmptyPolicy,
    /// A trust store that is not well formed (a key that does not parse or
    /// whose id is not derived from it, a key id twice, ...).
    #[error("invalid trust store: {0}")]
    InvalidTrustStore(String),
    /// The slot a trial booted from changed before the trial was confirmed.
    #[error("slot {0} changed since it was booted; not confirming it")]
    SlotChanged(String),
    /// A trust rotation statement was refused.
    #[error("rotation refused: {0}")]
    Rotation(String),
    /// Keystore failure (unwrapping, signing).
    #[error(transparent)]
    Keystore(#[from] drivesec_keystore::KeystoreError),
    /// I/O on the image stream.
    #[error("I/O: {0}")]
    Io(String),
    /// File system failure.
    #[error(transparent)]
    Fs(#[from] drivesec_fsutil::FsError),
}

/// Result type of the firmware crate.
pub type Result<T> = std::result::Result<T, FirmwareError>;

/// An I/O error on an image stream or the slot storage.
fn io(e: std::io::Error) -> FirmwareError {
    FirmwareError::Io(e.to_string())
}

/// Reads until `buf` is full or the stream ends; returns how many bytes
/// were read (short only at the end of the stream).
fn read_full(r: &mut impl std::io::Read, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]).map_err(io)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

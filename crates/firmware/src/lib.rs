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

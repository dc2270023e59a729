//! COSE_Sign1 (ES256) signatures over the manifest, detached, one per signer.

use coset::{
    CborSerializable, CoseSign1, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable, iana,
};
use drivesec_keystore::{KeyAlgorithm, KeyHandle, KeyStore, PublicKey};
use sha2::{Digest, Sha256};

use crate::{FirmwareError, Result};

/// Private header label carrying the signer's role (`vendor`, `oem`, ...).
pub const ROLE_LABEL: &str = "drivesec-role";

/// A key's id: the first 16 hex digits of SHA-256 over its SubjectPublicKeyInfo.
pub fn key_id(pk: &PublicKey) -> String {
    hex::encode(&Sha256::digest(pk.spki_der())[..8])
}

/// Signs the manifest bytes with a keystore key (P-256) under `role`.
pub fn sign_manifest(
    manifest: &[u8],
    store: &dyn KeyStore,
    handle: &KeyHandle,
    role: &str,
) -> Result<CoseSign1> {
    let info = store.info(handle)?;
    if info.algorithm() != KeyAlgorithm::EcdsaP256 {
        return Err(FirmwareError::Malformed(
            "firmware signing keys are ECDSA P-256 (ES256)".into(),
        ));
    }
    let kid = key_id(&info.public_key);
    let protected = HeaderBuilder::new()
        .algorithm(iana::Algorithm::ES256)
        .key_id(kid.into_bytes())
        .text_value(ROLE_LABEL.into(), ciborium::Value::Text(role.to_string()))
        .build();
    let mut err = None;
    let sig = CoseSign1Builder::new()
        .protected(protected)
        .create_detached_signature(manifest, b"", |tbs| {
            match store
                .sign(handle, tbs)
                .map_err(FirmwareError::from)
                .and_then(|der| {
                    p256::ecdsa::Signature::from_der(&der)
                        .map(|s| s.to_bytes().to_vec())
                        .map_err(|_| {
                            FirmwareError::Malformed(
                                "keystore returned a malformed signature".into(),
                            )
                        })
                }) {
                Ok(s) => s,
                Err(e) => {
                    err = Some(e);
                    Vec::new()
                }
            }
        });
    match err {
        Some(e) => Err(e),
        None => Ok(sig.build()),
    }
}

/// The signer's key id.
pub fn kid_of(sig: &CoseSign1) -> String {
    String::from_utf8_lossy(&sig.protected.header.key_id).into_owned()
}

/// The signer's role.
pub fn role_of(sig: &CoseSign1) -> Option<String> {
    sig.protected
        .header
        .rest
        .iter()
        .find_map(|(l, v)| match (l, v) {
            (coset::Label::Text(t), ciborium::Value::Text(r)) if t == ROLE_LABEL => Some(r.clone()),
            _ => None,
        })
}

/// Whether `sig` is a valid ES256 signature of `manifest` by `pk`.
pub fn verify_with(sig: &CoseSign1, manifest: &[u8], pk: &PublicKey) -> bool {
    if sig.protected.header.alg
        != Some(coset::RegisteredLabelWithPrivate::Assigned(
            iana::Algorithm::ES256,
        ))
    {
        return false;
    }
    sig.verify_detached_signature(manifest, b"", |s, tbs| {
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, pk.raw())
            .verify(tbs, s)
            .map_err(|_| ())
    })
    .is_ok()
}

/// Encodes a signature (tagged COSE_Sign1).
pub fn encode(sig: &CoseSign1) -> Result<Vec<u8>> {
    sig.clone()
        .to_tagged_vec()
        .map_err(|e| FirmwareError::Malformed(format!("COSE_Sign1: {e}")))
}

/// Decodes a signature.
pub fn decode(bytes: &[u8]) -> Result<CoseSign1> {
    CoseSign1::from_tagged_slice(bytes)
        .or_else(|_| CoseSign1::from_slice(bytes))
        .map_err(|e| FirmwareError::Malformed(format!("COSE_Sign1: {e}")))
}

//! COSE_Sign1 (ES256) signatures over the manifest, detached, one per signer.

use coset::{
    AsCborValue, CoseSign1, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable, iana,
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

/// Whether `sig` is a valid ES256 signature of `manifest` by `pk`. A
/// signature that carries a payload is never valid here (and never reaches
/// coset's detached-payload code, which asserts there is none).
pub fn verify_with(sig: &CoseSign1, manifest: &[u8], pk: &PublicKey) -> bool {
    if sig.payload.is_some()
        || sig.protected.header.alg
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

/// Decodes one image signature strictly (docs/image-format.md,
/// "Signatures"); `index` is its position in the signatures array, for the
/// errors. The CBOR is checked by hand before coset sees it: exactly one
/// item, tag 18, a four-element array whose payload is nil. Then the
/// headers: protected `alg` ES256, `kid` 16 lowercase hex digits, the role
/// as non-empty text, nothing else; the unprotected header empty; the
/// signature 64 bytes.
pub fn decode_at(bytes: &[u8], index: usize) -> Result<CoseSign1> {
    let bad = |reason: String| FirmwareError::MalformedSignature { index, reason };
    let mut rest = bytes;
    let v: ciborium::Value =
        ciborium::from_reader(&mut rest).map_err(|e| bad(format!("not CBOR: {e}")))?;
    if !rest.is_empty() {
        return Err(bad(format!("{} byte(s) after the COSE_Sign1", rest.len())));
    }
    let preferred = preferred(&v, bytes);
    let inner = match v {
        ciborium::Value::Tag(18, inner) => *inner,
        ciborium::Value::Tag(t, _) => return Err(bad(format!("tag {t}, not 18 (COSE_Sign1)"))),
        ciborium::Value::Array(_) => return Err(FirmwareError::UntaggedSignature(index)),
        _ => return Err(bad("not a COSE_Sign1".into())),
    };
    let items = match inner {
        ciborium::Value::Array(items) if items.len() == 4 => items,
        _ => return Err(bad("COSE_Sign1 is not an array of four items".into())),
    };
    match &items[2] {
        ciborium::Value::Null => {}
        ciborium::Value::Bytes(_) => return Err(FirmwareError::AttachedPayload(index)),
        _ => return Err(bad("payload is neither nil nor a byte string".into())),
    }
    if !preferred {
        return Err(bad(
            "not in preferred CBOR encoding (definite lengths, shortest heads)".into(),
        ));
    }
    let sig = CoseSign1::from_cbor_value(ciborium::Value::Array(items))
        .map_err(|e| bad(format!("COSE_Sign1: {e}")))?;
    if !sig.unprotected.is_empty() {
        return Err(bad("the unprotected header must be empty".into()));
    }
    let h = &sig.protected.header;
    if h.alg
        != Some(coset::RegisteredLabelWithPrivate::Assigned(
            iana::Algorithm::ES256,
        ))
    {
        return Err(bad("alg is not ES256 (-7)".into()));
    }
    if !std::str::from_utf8(&h.key_id).is_ok_and(|k| crate::manifest::is_lower_hex(k, 16)) {
        return Err(bad("kid is not 16 lowercase hex digits".into()));
    }
    match role_of(&sig) {
        Some(r) if !r.is_empty() => {}
        _ => {
            return Err(bad(format!(
                "no '{ROLE_LABEL}' text in the protected header"
            )));
        }
    }
    if !h.crit.is_empty()
        || h.content_type.is_some()
        || !h.iv.is_empty()
        || !h.partial_iv.is_empty()
        || !h.counter_signatures.is_empty()
        || h.rest.len() != 1
    {
        return Err(bad(
            "the protected header holds more than alg, kid and the role".into(),
        ));
    }
    if sig.signature.len() != 64 {
        return Err(bad(format!(
            "signature is {} bytes, not 64 (r || s)",
            sig.signature.len()
        )));
    }
    Ok(sig)
}

/// Whether `bytes` are `v` in preferred serialization (RFC 8949 section
/// 4.1: definite lengths, every head in its shortest form): the bytes
/// re-encode identically.
fn preferred(v: &ciborium::Value, bytes: &[u8]) -> bool {
    let mut out = Vec::with_capacity(bytes.len());
    ciborium::into_writer(v, &mut out).is_ok() && out == bytes
}

/// Decodes one image signature strictly (see [`decode_at`]).
pub fn decode(bytes: &[u8]) -> Result<CoseSign1> {
    decode_at(bytes, 0)
}

/// Decodes the signature block: exactly one CBOR array of byte strings and
/// nothing after it, each entry a signature ([`decode_at`]), no key twice.
pub fn decode_block(bytes: &[u8]) -> Result<Vec<CoseSign1>> {
    let mut rest = bytes;
    let v: ciborium::Value = ciborium::from_reader(&mut rest)
        .map_err(|e| FirmwareError::Malformed(format!("signature block: {e}")))?;
    let ciborium::Value::Array(list) = &v else {
        return Err(FirmwareError::Malformed(
            "signature block is not a CBOR array".into(),
        ));
    };
    if !rest.is_empty() {
        return Err(FirmwareError::SignatureBlockTrailingBytes(rest.len()));
    }
    if !preferred(&v, bytes) {
        return Err(FirmwareError::Malformed(
            "signature block is not in preferred CBOR encoding (definite lengths, shortest heads)"
                .into(),
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            let sig = match v {
                ciborium::Value::Bytes(b) => decode_at(b, i)?,
                _ => {
                    return Err(FirmwareError::MalformedSignature {
                        index: i,
                        reason: "entry is not a byte string".into(),
                    });
                }
            };
            let kid = kid_of(&sig);
            if !seen.insert(kid.clone()) {
                return Err(FirmwareError::DuplicateSigner(kid));
            }
            Ok(sig)
        })
        .collect()
}

/// Encodes a signature block (the inverse of [`decode_block`]).
pub fn encode_block(sigs: &[CoseSign1]) -> Result<Vec<u8>> {
    let list: Vec<ciborium::Value> = sigs
        .iter()
        .map(|s| encode(s).map(ciborium::Value::Bytes))
        .collect::<Result<_>>()?;
    let mut out = Vec::new();
    ciborium::into_writer(&list, &mut out).map_err(|e| FirmwareError::Malformed(e.to_string()))?;
    Ok(out)
}

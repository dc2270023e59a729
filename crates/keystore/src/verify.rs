//! Signature verification with public keys only, by *ring*: an implementation
//! independent of both backends (RustCrypto for `soft`, the token for `pkcs11`).

use crate::{KeyAlgorithm, PublicKey};

/// Whether `sig` is a valid signature of `msg` by `public` (formats as in the crate docs).
pub fn verify_signature(public: &PublicKey, msg: &[u8], sig: &[u8]) -> bool {
    let alg: &dyn ring::signature::VerificationAlgorithm = match public.algorithm() {
        KeyAlgorithm::EcdsaP256 => &ring::signature::ECDSA_P256_SHA256_ASN1,
        KeyAlgorithm::Ed25519 => &ring::signature::ED25519,
    };
    ring::signature::UnparsedPublicKey::new(alg, public.raw())
        .verify(msg, sig)
        .is_ok()
}

//! Let rustls and rcgen sign through a [`KeyStore`].
//!
//! Both adapters hold only the store and a handle; each signature is one call
//! into the chip, so with the PKCS#11 backend the private key never enters the
//! process.

use std::sync::Arc;

use rustls::SignatureScheme;
use rustls::pki_types::{CertificateDer, SubjectPublicKeyInfoDer};
use rustls::sign::CertifiedKey;

use crate::{KeyAlgorithm, KeyHandle, KeyInfo, KeyStore, PublicKey, Result};

/// A keystore key seen as a rustls [`rustls::sign::SigningKey`].
#[derive(Clone)]
pub struct TlsKey {
    store: Arc<dyn KeyStore>,
    handle: KeyHandle,
    public: PublicKey,
    spki: Vec<u8>,
}

impl std::fmt::Debug for TlsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsKey")
            .field("backend", &self.store.backend())
            .field("handle", &self.handle)
            .finish()
    }
}

impl TlsKey {
    /// Looks the key up in the store.
    pub fn new(store: Arc<dyn KeyStore>, handle: &KeyHandle) -> Result<Self> {
        let KeyInfo { handle, public_key } = store.info(handle)?;
        let spki = public_key.spki_der();
        Ok(TlsKey {
            store,
            handle,
            public: public_key,
            spki,
        })
    }

    fn scheme(&self) -> SignatureScheme {
        match self.public.algorithm() {
            KeyAlgorithm::EcdsaP256 => SignatureScheme::ECDSA_NISTP256_SHA256,
            KeyAlgorithm::Ed25519 => SignatureScheme::ED25519,
        }
    }

    /// A rustls `CertifiedKey` pairing this key with its certificate chain (leaf first).
    pub fn certified(self, chain: Vec<CertificateDer<'static>>) -> CertifiedKey {
        CertifiedKey::new(chain, Arc::new(self))
    }
}

impl rustls::sign::SigningKey for TlsKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn rustls::sign::Signer>> {
        let scheme = self.scheme();
        offered
            .contains(&scheme)
            .then(|| Box::new(self.clone()) as Box<dyn rustls::sign::Signer>)
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(self.spki.as_slice()))
    }

    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        match self.public.algorithm() {
            KeyAlgorithm::EcdsaP256 => rustls::SignatureAlgorithm::ECDSA,
            KeyAlgorithm::Ed25519 => rustls::SignatureAlgorithm::ED25519,
        }
    }
}

impl rustls::sign::Signer for TlsKey {
    fn sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, rustls::Error> {
        self.store
            .sign(&self.handle, message)
            .map_err(|e| rustls::Error::General(format!("keystore signing failed: {e}")))
    }

    fn scheme(&self) -> SignatureScheme {
        TlsKey::scheme(self)
    }
}

/// A keystore key seen as an rcgen signing key, for a CA or a self-signed root.
pub struct CertSigningKey {
    store: Arc<dyn KeyStore>,
    handle: KeyHandle,
    public: PublicKey,
}

impl CertSigningKey {
    /// Looks the key up in the store.
    pub fn new(store: Arc<dyn KeyStore>, handle: &KeyHandle) -> Result<Self> {
        let KeyInfo { handle, public_key } = store.info(handle)?;
        Ok(CertSigningKey {
            store,
            handle,
            public: public_key,
        })
    }

    /// The key's public half.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }
}

impl rcgen::PublicKeyData for CertSigningKey {
    fn der_bytes(&self) -> &[u8] {
        self.public.raw()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        rcgen_algorithm(self.public.algorithm())
    }
}

impl rcgen::SigningKey for CertSigningKey {
    fn sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, rcgen::Error> {
        self.store
            .sign(&self.handle, msg)
            .map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

/// A bare public key (for example from a CSR or a device's keystore) as rcgen
/// public key data, so a CA can certify it.
pub struct CertPublicKey(pub PublicKey);

impl rcgen::PublicKeyData for CertPublicKey {
    fn der_bytes(&self) -> &[u8] {
        self.0.raw()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        rcgen_algorithm(self.0.algorithm())
    }
}

fn rcgen_algorithm(alg: KeyAlgorithm) -> &'static rcgen::SignatureAlgorithm {
    match alg {
        KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
    }
}

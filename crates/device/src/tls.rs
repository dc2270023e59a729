//! TLS for the HTTPS API: the device's identity (IDevID in factory state,
//! LDevID once commissioned) signs through the keystore; a client
//! certificate is always required.

use std::sync::Arc;

use drivesec_keystore::adapters::TlsKey;
use drivesec_state::config::TlsSettings;
use drivesec_state::{LifeCycle, StateDir};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};

use crate::{DeviceError, Result};

/// In factory state the device has no owner trust anchors yet, so it accepts
/// any client certificate whose holder proves possession of the key (the
/// handshake signature is verified); who the client is gets decided by the
/// one-time factory credential, and the commissioning exchange is pinned to
/// that certificate. Only the commissioning endpoints are served then.
#[derive(Debug)]
struct ProvisionalClientCert {
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for ProvisionalClientCert {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        x509_ok(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

fn x509_ok(cert: &CertificateDer<'_>) -> std::result::Result<(), rustls::Error> {
    webpki::EndEntityCert::try_from(cert)
        .map(|_| ())
        .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))
}

/// The crypto provider: *ring*.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// After the tamper response the device has no key to prove who it is. To
/// still answer status reads it makes a throwaway key in memory and a
/// self-signed certificate that says so (`CN=TAMPERED <serial>`); no client
/// can mistake it for the device's identity, which chains to the owner's or
/// the manufacturer's CA.
fn tamper_identity(state: &StateDir) -> Result<Arc<rustls::sign::CertifiedKey>> {
    let bad = |e: String| DeviceError::Invalid(format!("tampered identity: {e}"));
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| bad(e.to_string()))?;
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| bad(e.to_string()))?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("TAMPERED {}", state.file.serial_number),
    );
    let cert = params.self_signed(&key).map_err(|e| bad(e.to_string()))?;
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing =
        rustls::crypto::ring::sign::any_ecdsa_type(&der).map_err(|e| bad(e.to_string()))?;
    Ok(Arc::new(rustls::sign::CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

/// Builds the API's server configuration for the device's current state.
pub(crate) fn server_config(state: &StateDir, tls: &TlsSettings) -> Result<Arc<ServerConfig>> {
    let provider = provider();
    let versions: &[&rustls::SupportedProtocolVersion] = if tls.allow_tls12 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let certified = if state.tampered {
        tamper_identity(state)?
    } else {
        let (chain, handle) = match state.file.state {
            LifeCycle::Factory => (state.idevid_chain.clone(), state.file.idevid_key.clone()),
            LifeCycle::Commissioned => (
                state.ldevid_chain.clone().unwrap_or_default(),
                state
                    .file
                    .ldevid_key
                    .clone()
                    .ok_or_else(|| DeviceError::State {
                        path: state.dir.clone(),
                        reason: "commissioned but no LDevID key".into(),
                    })?,
            ),
        };
        Arc::new(TlsKey::new(state.store.clone(), &handle)?.certified(chain))
    };

    let verifier = client_verifier(state)?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| DeviceError::Invalid(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The client-certificate check of the state's life-cycle stage: any
/// well-formed certificate whose key signs the handshake in factory state;
/// once commissioned, a chain to the owner trust anchors, no certificate
/// of which is on an installed CRL.
/// The TLS servers check every handshake with it, and an open Modbus
/// session is checked again with a new one when the trust changes.
pub(crate) fn client_verifier(state: &StateDir) -> Result<Arc<dyn ClientCertVerifier>> {
    let provider = provider();
    Ok(match state.file.state {
        LifeCycle::Factory => Arc::new(ProvisionalClientCert {
            algs: provider.signature_verification_algorithms,
        }),
        LifeCycle::Commissioned => {
            let mut roots = rustls::RootCertStore::empty();
            for a in &state.trust_anchors {
                roots
                    .add(a.clone())
                    .map_err(|e| DeviceError::Invalid(format!("unusable trust anchor: {e}")))?;
            }
            let mut b = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            // The CRL policy (docs/pki.md): every certificate of the
            // client's path is checked against its issuer's CRL (the
            // issuing CA against the root's, when installed); an issuer
            // without a CRL is not a refusal (unknown status allowed); a
            // CRL past its nextUpdate stays enforced (its revoked stay
            // refused) and everything else gets in: a stale CRL is
            // reported (posture, audit, log), never a lock-out. The whole
            // path and ignored expiration are rustls's defaults (the
            // builder has no setter for them, only for the opposite);
            // crates/cli/tests/e2e/crl.rs fails if either changes.
            if !state.crls.is_empty() {
                b = b
                    .with_crls(state.crl_ders())
                    .allow_unknown_revocation_status();
            }
            b.build()
                .map_err(|e| DeviceError::Invalid(format!("client verifier: {e}")))?
        }
    })
}

/// The Modbus/TCP Security server's configuration: the same identity and
/// client-certificate checks as the API, TLS 1.2 when allowed, no ALPN.
pub(crate) fn modbus_config(
    state: &StateDir,
    m: &drivesec_state::config::ModbusSettings,
) -> Result<Arc<ServerConfig>> {
    let api = server_config(
        state,
        &TlsSettings {
            allow_tls12: m.allow_tls12,
        },
    )?;
    let mut cfg = (*api).clone();
    cfg.alpn_protocols.clear();
    Ok(Arc::new(cfg))
}

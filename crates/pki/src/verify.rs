//! Chain verification with rustls-webpki: path building to a trust anchor,
//! signatures, validity periods, basicConstraints, key usage for the purpose,
//! and (when CRLs are given) revocation of the end-entity certificate.

use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use webpki::{
    BorrowedCertRevocationList, CertRevocationList, ExpirationPolicy, RevocationCheckDepth,
    UnknownStatusPolicy,
};

use crate::{PkiError, Result};

/// What the certificate must be good for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// TLS server authentication (id-kp-serverAuth).
    Server,
    /// TLS client authentication (id-kp-clientAuth).
    Client,
}

/// Inputs of a chain check.
#[derive(Debug, Clone, Copy)]
pub struct VerifyOptions<'a> {
    /// Trust anchors (root certificates).
    pub roots: &'a [CertificateDer<'a>],
    /// Intermediate certificates that may be used to build the path.
    pub intermediates: &'a [CertificateDer<'a>],
    /// CRLs; when non-empty, the leaf's issuer must have one (unknown status
    /// fails) and a CRL past its nextUpdate fails.
    pub crls: &'a [CertificateRevocationListDer<'a>],
    /// Required purpose.
    pub usage: Usage,
    /// Verification time; `None` means now.
    pub time: Option<UnixTime>,
}

/// How CRLs are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrlPolicy {
    /// The leaf only; its issuer must have a CRL; a CRL past its
    /// nextUpdate fails ([`verify_chain`]).
    Strict,
    /// What a device applies to its clients (docs/pki.md, "CRL policy"):
    /// every certificate of the path against its issuer's CRL when one is
    /// given (unknown status allowed), and a CRL past its nextUpdate still
    /// enforced rather than failing every certificate.
    Device,
}

/// Verifies `leaf` against the options; the error text says why it failed.
pub fn verify_chain(leaf: &CertificateDer<'_>, opts: &VerifyOptions<'_>) -> Result<()> {
    verify_chain_with(leaf, opts, CrlPolicy::Strict)
}

/// [`verify_chain`] with a chosen CRL policy.
pub fn verify_chain_with(
    leaf: &CertificateDer<'_>,
    opts: &VerifyOptions<'_>,
    policy: CrlPolicy,
) -> Result<()> {
    let anchors = opts
        .roots
        .iter()
        .map(|r| {
            webpki::anchor_from_trusted_cert(r)
                .map(|a| a.to_owned())
                .map_err(|e| PkiError::Verify(format!("unusable trust anchor: {e:?}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let ee = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| PkiError::Verify(format!("unparseable certificate: {e:?}")))?;
    let crls = opts
        .crls
        .iter()
        .map(|c| {
            BorrowedCertRevocationList::from_der(c)
                .map(CertRevocationList::from)
                .map_err(|e| PkiError::Verify(format!("unparseable CRL: {e:?}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let crl_refs: Vec<&CertRevocationList<'_>> = crls.iter().collect();
    let revocation = if crl_refs.is_empty() {
        None
    } else {
        Some(
            webpki::RevocationOptionsBuilder::new(&crl_refs)
                .map_err(|_| PkiError::Verify("no CRLs".into()))?
                .with_depth(match policy {
                    CrlPolicy::Strict => RevocationCheckDepth::EndEntity,
                    CrlPolicy::Device => RevocationCheckDepth::Chain,
                })
                .with_status_policy(match policy {
                    CrlPolicy::Strict => UnknownStatusPolicy::Deny,
                    CrlPolicy::Device => UnknownStatusPolicy::Allow,
                })
                .with_expiration_policy(match policy {
                    CrlPolicy::Strict => ExpirationPolicy::Enforce,
                    CrlPolicy::Device => ExpirationPolicy::Ignore,
                })
                .build(),
        )
    };
    let usage = match opts.usage {
        Usage::Server => webpki::KeyUsage::server_auth(),
        Usage::Client => webpki::KeyUsage::client_auth(),
    };
    let time = opts.time.unwrap_or_else(UnixTime::now);
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        opts.intermediates,
        time,
        usage,
        revocation,
        None,
    )
    .map(|_| ())
    .map_err(|e| PkiError::Verify(describe_refusal(&e)))
}

/// Why webpki refused a certificate, in words (its debug form for the
/// rare reasons without their own sentence).
pub fn describe_refusal(e: &webpki::Error) -> String {
    match e {
        webpki::Error::CertRevoked => "the certificate is revoked".into(),
        webpki::Error::UnknownIssuer => "the chain does not lead to a trusted root".into(),
        webpki::Error::CertExpired { .. } => "the certificate has expired".into(),
        webpki::Error::CertNotValidYet { .. } => "the certificate is not valid yet".into(),
        webpki::Error::RequiredEkuNotFoundContext(_) => {
            "the certificate is not issued for this purpose (extendedKeyUsage)".into()
        }
        webpki::Error::InvalidSignatureForPublicKey => "a signature in the chain is invalid".into(),
        webpki::Error::UnknownRevocationStatus => "no CRL covers the certificate's issuer".into(),
        webpki::Error::CrlExpired { .. } => "the CRL is past its nextUpdate".into(),
        other => format!("{other:?}"),
    }
}

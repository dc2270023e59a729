//! Checking a device's attestation: a fresh nonce, the device's identity
//! signature over what it runs, and (optionally) the approved release.

use std::collections::BTreeSet;

use base64::Engine;
use drivesec_firmware::image::Header;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use serde::Serialize;
use serde_json::Value;

use crate::{OemError, Result};

/// What the attestation proved.
#[derive(Debug, Clone, Serialize)]
pub struct AttestReport {
    /// Device serial number.
    pub serial_number: String,
    /// Running version.
    pub version: String,
    /// Its security counter.
    pub security_counter: u64,
    /// Its payload root.
    pub root: String,
    /// Whether it runs on trial.
    pub trial: bool,
    /// It is exactly the approved release (same root, version and signers).
    pub matches_approved: Option<bool>,
}

/// Verifies an attestation response against the nonce sent, the roots the
/// device identity must chain to, the owner's `crls`, the device asked
/// (`device_name`: the signing certificate must carry it as a DNS name and
/// the statement must name it, so one device cannot relay another's
/// attestation), and optionally the approved image's header.
///
/// With `crls` (when there are any) the signing certificate's issuer must
/// have one and the certificate must not be on it, and a root's CRL applies
/// to the chain. A CRL past its nextUpdate still applies (the policy of the
/// tool's connections, docs/incident-response.md). So an attestation signed
/// with a revoked LDevID key does not count.
pub fn verify_attestation(
    resp: &Value,
    nonce_hex: &str,
    roots: &[CertificateDer<'static>],
    crls: &[CertificateRevocationListDer<'static>],
    device_name: Option<&str>,
    approved: Option<&Header>,
) -> Result<AttestReport> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let bad = |m: &str| OemError::Check(format!("attestation: {m}"));
    let statement = b64
        .decode(
            resp["statement"]
                .as_str()
                .ok_or_else(|| bad("no statement"))?,
        )
        .map_err(|_| bad("statement is not base64"))?;
    let sig = b64
        .decode(
            resp["signature"]
                .as_str()
                .ok_or_else(|| bad("no signature"))?,
        )
        .map_err(|_| bad("signature is not base64"))?;
    let chain = drivesec_pki::read_certs_pem(
        std::path::Path::new("certificate_chain"),
        resp["certificate_chain"]
            .as_str()
            .ok_or_else(|| bad("no certificate chain"))?
            .as_bytes(),
    )?;
    drivesec_pki::verify::verify_chain(
        &chain[0],
        &drivesec_pki::verify::VerifyOptions {
            roots,
            intermediates: &chain[1..],
            crls: &[],
            usage: drivesec_pki::verify::Usage::Server,
            time: None,
        },
    )?;
    if !crls.is_empty() {
        check_revocation(&chain[0], &chain[1..], roots, crls).map_err(|e| bad(&e))?;
    }
    if let Some(name) = device_name {
        let leaf = drivesec_pki::inspect::summarize(&chain[0])?;
        if !leaf
            .subject_alt_names
            .iter()
            .any(|s| s == &format!("DNS:{name}"))
        {
            return Err(bad(&format!(
                "signed by a certificate for {:?}, not for {name}",
                leaf.subject_alt_names
            )));
        }
    }
    let key = drivesec_pki::inspect::public_key(&chain[0])?;
    if !drivesec_keystore::verify::verify_signature(&key, &statement, &sig) {
        return Err(bad("the device's signature does not verify"));
    }
    let s: Value = serde_json::from_slice(&statement).map_err(|_| bad("statement is not JSON"))?;
    if s["kind"] != "drivesec-attestation/v1" {
        return Err(bad("unknown statement kind"));
    }
    if s["nonce"].as_str() != Some(nonce_hex) {
        return Err(bad("the nonce is not the one sent (replayed attestation)"));
    }
    if let Some(name) = device_name
        && s["device_name"].as_str() != Some(name)
    {
        return Err(bad(&format!("the statement is not about {name}")));
    }
    let fw = &s["firmware"];
    let field = |k: &str| {
        fw[k]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| bad(&format!("the statement has no firmware {k}")))
    };
    let report = AttestReport {
        serial_number: s["serial_number"]
            .as_str()
            .ok_or_else(|| bad("the statement has no serial number"))?
            .into(),
        version: field("version")?,
        security_counter: fw["security_counter"]
            .as_u64()
            .ok_or_else(|| bad("the statement has no security counter"))?,
        root: field("root")?,
        trial: fw["trial"]
            .as_bool()
            .ok_or_else(|| bad("the statement has no trial flag"))?,
        matches_approved: approved.map(|h| {
            let want: BTreeSet<String> = h
                .signatures
                .iter()
                .map(drivesec_firmware::sign::kid_of)
                .collect();
            let have: BTreeSet<String> =
                crate::client::strings(&fw["signers"]).into_iter().collect();
            fw["root"].as_str() == Some(h.manifest.root.as_str())
                && fw["version"].as_str() == Some(h.manifest.version.as_str())
                && fw["security_counter"].as_u64() == Some(h.manifest.security_counter)
                && !want.is_empty()
                && want == have
        }),
    };
    Ok(report)
}

/// The signer `leaf` (with `intermediates`, chaining to `roots`) against
/// `crls`: first the leaf, whose issuer must have a CRL, then the chain
/// against whichever CRLs cover it; expiry of a CRL is not enforced.
fn check_revocation(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    roots: &[CertificateDer<'static>],
    crls: &[CertificateRevocationListDer<'static>],
) -> std::result::Result<(), String> {
    use webpki::{RevocationCheckDepth, UnknownStatusPolicy};
    let anchors = roots
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).map_err(|e| format!("owner root: {e:?}")))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let parsed = crls
        .iter()
        .map(|c| {
            webpki::BorrowedCertRevocationList::from_der(c)
                .map(webpki::CertRevocationList::from)
                .map_err(|e| format!("the owner's CRL does not parse: {e:?}"))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let refs: Vec<&webpki::CertRevocationList<'_>> = parsed.iter().collect();
    let ee = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| format!("the signing certificate does not parse: {e:?}"))?;
    for (depth, status) in [
        (RevocationCheckDepth::EndEntity, UnknownStatusPolicy::Deny),
        (RevocationCheckDepth::Chain, UnknownStatusPolicy::Allow),
    ] {
        let opts = webpki::RevocationOptionsBuilder::new(&refs)
            .map_err(|_| "no CRL".to_string())?
            .with_depth(depth)
            .with_status_policy(status)
            .with_expiration_policy(webpki::ExpirationPolicy::Ignore)
            .build();
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            intermediates,
            UnixTime::now(),
            webpki::KeyUsage::server_auth(),
            Some(opts),
            None,
        )
        .map_err(|e| match e {
            webpki::Error::CertRevoked => {
                "signed by a certificate the owner's CRL revokes: it does not count".to_string()
            }
            webpki::Error::UnknownRevocationStatus => {
                "no CRL of the owner covers the signing certificate's issuer".to_string()
            }
            other => format!("the signing certificate: {other:?}"),
        })?;
    }
    Ok(())
}

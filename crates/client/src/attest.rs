//! Checking a device's attestation: a fresh nonce, the device's identity
//! signature over what it runs, and (optionally) the approved release.
//!
//! An attestation counts only for the connection it came over: it must be
//! signed with the key of the certificate the device presented in that
//! connection's handshake (the one the tool authenticated), name that
//! certificate (SHA-256 and serial) and the device serial number it
//! carries, and answer the nonce the tool just sent. A certificate the
//! answer carries is never what the signature is checked against; it must
//! be that same certificate. So neither another device (a relay, a man in
//! the middle with a genuine identity of its own) nor a recorded answer
//! passes (docs/image-format.md, "Attestation").

use std::collections::BTreeSet;

use base64::Engine;
use drivesec_api::firmware::{AttestAnswer, AttestRequest, AttestationStatement};
use drivesec_firmware::image::Header;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::client::{DeviceClient, PeerChain};
use crate::{ClientError, Result};

/// The statement kind this tool accepts: `drivesec-attestation/v2`, which
/// names the signing certificate. A `v1` statement (drivesecd before the
/// attestation was bound to the connection's certificate) is refused.
pub const STATEMENT_KIND: &str = drivesec_api::firmware::ATTESTATION_KIND;

/// The one field read of a statement before its kind is known (another
/// kind may mean other fields).
#[derive(Deserialize)]
struct StatementKind {
    /// The statement kind; absent: none.
    #[serde(default)]
    kind: Option<String>,
}

/// What the attestation proved.
#[derive(Debug, Clone, Serialize)]
pub struct AttestReport {
    /// Device serial number (the subject serialNumber of the certificate
    /// the connection authenticated, which the statement names).
    pub serial_number: String,
    /// The serial (hex) of that certificate, which signed the statement.
    pub certificate_serial: String,
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

/// An attestation answer as it arrived: its body, the nonce the tool sent
/// for it, and the certificate chain the device presented on the
/// connection the answer came over ([`crate::client::Reply::peer`]).
#[derive(Debug, Clone)]
pub struct Answer {
    /// The answer: `statement`, `signature`, `certificate_chain`.
    pub body: AttestAnswer,
    /// The nonce (hex) the tool sent in the request this answers.
    pub nonce: String,
    /// What that connection's handshake authenticated, leaf first.
    pub peer: PeerChain,
}

/// Asks the device behind `c` for an attestation over a fresh random
/// 32-byte nonce; the answer with the chain its connection authenticated.
pub fn request(c: &DeviceClient) -> Result<Answer> {
    let mut nonce = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
    let nonce = hex::encode(nonce);
    let r = c.call_with(
        "POST",
        "/api/v1/attest",
        &AttestRequest {
            nonce: nonce.clone(),
        },
    )?;
    Ok(Answer {
        body: r.answer()?,
        nonce,
        peer: r.peer,
    })
}

/// [`request`], then [`verify_attestation`].
pub fn attest(
    c: &DeviceClient,
    roots: &[CertificateDer<'static>],
    crls: &[CertificateRevocationListDer<'static>],
    device_name: Option<&str>,
    approved: Option<&Header>,
) -> Result<AttestReport> {
    verify_attestation(&request(c)?, roots, crls, device_name, approved)
}

/// Verifies an attestation [`Answer`]: the certificate its connection
/// authenticated (`answer.peer`) must chain to `roots` with server usage
/// and, with `crls` (when there are any), not be revoked (its issuer must
/// have one; a root's CRL applies to the chain; a CRL past its nextUpdate
/// still applies, the policy of the tool's connections,
/// docs/incident-response.md). The statement must be signed with that
/// certificate's key, name that certificate (SHA-256 of its DER and its
/// serial) and the device serial number in its subject, and carry
/// `answer.nonce`. The certificate the answer carries must be that same
/// certificate. With `device_name`, that certificate must carry it as a
/// DNS name and the statement must name it. With `approved`, the running
/// image is compared with that release.
pub fn verify_attestation(
    answer: &Answer,
    roots: &[CertificateDer<'static>],
    crls: &[CertificateRevocationListDer<'static>],
    device_name: Option<&str>,
    approved: Option<&Header>,
) -> Result<AttestReport> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let bad = |m: &str| ClientError::Check(format!("attestation: {m}"));
    let resp = &answer.body;
    // The certificate the connection authenticated: the only one that counts.
    let (leaf, intermediates) = answer
        .peer
        .split_first()
        .ok_or_else(|| bad("the connection it came over authenticated no certificate"))?;
    let statement = b64
        .decode(&resp.statement)
        .map_err(|_| bad("statement is not base64"))?;
    let sig = b64
        .decode(&resp.signature)
        .map_err(|_| bad("signature is not base64"))?;
    let carried = drivesec_pki::read_certs_pem(
        std::path::Path::new("certificate_chain"),
        resp.certificate_chain.as_bytes(),
    )?;
    let leaf_sha256 = hex::encode(Sha256::digest(leaf.as_ref()));
    if carried.first().map(|c| c.as_ref()) != Some(leaf.as_ref()) {
        let other = carried
            .first()
            .map(|c| hex::encode(Sha256::digest(c.as_ref())))
            .unwrap_or_default();
        return Err(bad(&format!(
            "the answer carries certificate SHA-256 {other}, not the one the device presented \
             on this connection ({leaf_sha256}): it was not made by the device the tool is \
             talking to (relayed, or a certificate other than the authenticated one)"
        )));
    }
    drivesec_pki::verify::verify_chain(
        leaf,
        &drivesec_pki::verify::VerifyOptions {
            roots,
            intermediates,
            crls: &[],
            usage: drivesec_pki::verify::Usage::Server,
            time: None,
        },
    )?;
    if !crls.is_empty() {
        check_revocation(leaf, intermediates, roots, crls).map_err(|e| bad(&e))?;
    }
    let summary = drivesec_pki::inspect::summarize(leaf)?;
    if let Some(name) = device_name
        && !summary
            .subject_alt_names
            .iter()
            .any(|s| s == &format!("DNS:{name}"))
    {
        return Err(bad(&format!(
            "the connection's certificate is for {:?}, not for {name}",
            summary.subject_alt_names
        )));
    }
    let key = drivesec_pki::inspect::public_key(leaf)?;
    if !drivesec_keystore::verify::verify_signature(&key, &statement, &sig) {
        return Err(bad(
            "the signature does not verify with the key of the certificate the device \
             presented on this connection (relayed from another device, or forged)",
        ));
    }
    // The signature covers these bytes: they are parsed only now, the kind
    // first (another kind may mean other fields).
    let kind = serde_json::from_slice::<StatementKind>(&statement)
        .map_err(|_| bad("statement is not a JSON object"))?
        .kind;
    match kind.as_deref() {
        Some(STATEMENT_KIND) => {}
        Some("drivesec-attestation/v1") => {
            return Err(bad(
                "a drivesec-attestation/v1 statement does not name the certificate it was \
                 signed under; the device's drivesecd predates connection-bound attestation \
                 (v2): update it",
            ));
        }
        _ => return Err(bad("unknown statement kind")),
    }
    let s = AttestationStatement::from_signed_bytes(&statement).map_err(|e| {
        bad(&format!(
            "the statement is not a {STATEMENT_KIND} statement: {e}"
        ))
    })?;
    if s.nonce != answer.nonce {
        return Err(bad("the nonce is not the one sent (replayed attestation)"));
    }
    if s.certificate.sha256 != leaf_sha256 || s.certificate.serial != summary.serial {
        return Err(bad(&format!(
            "the statement names certificate {:?} (SHA-256 {:?}), not the one the device \
             presented on this connection ({}, SHA-256 {leaf_sha256})",
            s.certificate.serial, s.certificate.sha256, summary.serial
        )));
    }
    let serial = drivesec_pki::inspect::subject_serial_number(leaf)?;
    if s.serial_number != serial {
        return Err(bad(&format!(
            "the statement names serial number {:?}, not {serial}, the one in the certificate \
             the device presented on this connection",
            s.serial_number
        )));
    }
    if let Some(name) = device_name
        && s.device_name.as_deref() != Some(name)
    {
        return Err(bad(&format!("the statement is not about {name}")));
    }
    let fw = s.firmware;
    let matches_approved = approved.map(|h| {
        let want: BTreeSet<String> = h
            .signatures
            .iter()
            .map(drivesec_firmware::sign::kid_of)
            .collect();
        let have: BTreeSet<String> = fw.signers.iter().cloned().collect();
        fw.root == h.manifest.root
            && fw.version == h.manifest.version
            && fw.security_counter == h.manifest.security_counter
            && !want.is_empty()
            && want == have
    });
    let report = AttestReport {
        serial_number: serial,
        certificate_serial: summary.serial,
        version: fw.version,
        security_counter: fw.security_counter,
        root: fw.root,
        trial: fw.trial,
        matches_approved,
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

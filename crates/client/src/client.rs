//! A client for the device API over mutual TLS: the tool's own certificate
//! and key (PEM files, as an engineer's tool holds them), and one of the ways
//! to trust the device: its IDevID chain to the manufacturer root (factory
//! state: the name is not checked, the serial number may be), or its LDevID
//! to the owner's root under the device's DNS name, checked against the
//! owner's CRLs, for the LDevID profile and (when known) the device's serial
//! number ([`DeviceTrust::Owned`]).
//!
//! A refused device certificate that is a tampered device's throwaway
//! `CN=TAMPERED <serial>` one, a genuine IDevID of another serial, a revoked
//! certificate, another profile than an LDevID or the LDevID of another
//! device is reported as such ([`PeerProblem`]) instead of as a bare TLS
//! error. Nothing is sent to a refused device: the request (and so any
//! password in it) goes only over a connection whose handshake proved the
//! device.
//!
//! Every connection has deadlines ([`Timeouts`]: TCP connect, TLS
//! handshake, each answer) and every answer a size cap chosen by its route,
//! so a silent or flooding device fails its own request instead of hanging
//! or exhausting the tool.
//!
//! The tool speaks the device API through its types (`drivesec_api`):
//! [`DeviceClient::get`], [`DeviceClient::request`] and
//! [`DeviceClient::send`] serialise the request type and parse the answer
//! as the type the route answers with. An error answer becomes
//! [`ClientError::Rejected`] with the device's [`ErrorBody`]; an answer that
//! does not parse as its type is [`ClientError::BadAnswer`], naming the
//! request and what did not parse. [`DeviceClient::call`] and
//! [`DeviceClient::ok`] keep the JSON as it came, for probes that look at
//! what a device answers to anything.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use drivesec_api::ErrorBody;
use drivesec_api::sessions::{LoginAnswer, LoginRequest, LogoutAnswer};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{ClientError, Result};

/// Why a device's certificate was refused, when that says more than the TLS
/// error: carried through the handshake error ([`peer_problem`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerProblem {
    /// The peer presented a tampered device's self-signed `CN=TAMPERED
    /// <serial>` certificate where an identity was expected. Unauthenticated
    /// (anyone can make such a certificate), so it only explains a refusal.
    Tampered {
        /// The serial number the certificate names.
        serial: String,
    },
    /// A genuine IDevID, but for another serial number than the expected one.
    WrongSerial {
        /// The serial number expected.
        expected: String,
        /// The one the IDevID's subject serialNumber carries.
        found: String,
    },
    /// The certificate chains to the owner's root but the owner's CRL
    /// revokes it.
    Revoked {
        /// The certificate's serial (hex).
        serial: String,
        /// Its subject.
        subject: String,
    },
    /// None of the owner's CRLs covers the certificate's issuer, so its
    /// revocation cannot be checked.
    NoCrlCoverage {
        /// The certificate's issuer.
        issuer: String,
    },
    /// A certificate of the owner's CA, but not an LDevID (a server or
    /// client certificate, say): it does not identify a device.
    NotLdevid {
        /// Which profile it is ("a server-profile certificate", ...).
        kind: String,
        /// Its subject.
        subject: String,
    },
    /// An IDevID that chains to the manufacturer's root but that the
    /// manufacturer's CRL revokes (a reprovisioned device's old identity,
    /// say).
    IdevidRevoked {
        /// The certificate's serial (hex).
        serial: String,
        /// Its subject.
        subject: String,
    },
    /// None of the manufacturer's CRLs covers the IDevID's issuer, so its
    /// revocation cannot be checked.
    NoManufacturerCrlCoverage {
        /// The IDevID's issuer.
        issuer: String,
    },
    /// A genuine LDevID, but for another serial number than the expected one.
    OtherDevice {
        /// The serial number expected.
        expected: String,
        /// The one the LDevID's subject serialNumber carries.
        found: String,
    },
}

impl PeerProblem {
    /// The problem with `who` (e.g. "drive-001.lab.drivesec at 127.0.0.1:8443") as the subject.
    pub fn describe(&self, who: &str) -> String {
        match self {
            PeerProblem::Tampered { serial } => format!(
                "{who} reports its tamper response has run (certificate CN=TAMPERED {serial}): \
                 its keys are destroyed; send it to the manufacturer for `drivesec factory reprovision`"
            ),
            PeerProblem::WrongSerial { expected, found } => format!(
                "{who} presents a genuine IDevID for serial {found}, not the expected serial {expected}: \
                 it is another device, and nothing was sent to it; check the serial on the device's label \
                 and the address"
            ),
            PeerProblem::Revoked { serial, subject } => format!(
                "{who} presents a certificate the owner's CRL revokes (serial {serial}, {subject}): \
                 it is not trusted as the device, and nothing was sent to it; if this is your device \
                 presenting its revoked LDevID, it has to be commissioned again (factory reset); \
                 otherwise something else answers at this address"
            ),
            PeerProblem::NoCrlCoverage { issuer } => format!(
                "{who}: none of the owner's CRLs covers its certificate's issuer ({issuer}), so its \
                 revocation cannot be checked; nothing was sent to it; give the CRL of that CA \
                 (its crl.pem: trust.crl in the inventory, --crl) and run the command again"
            ),
            PeerProblem::NotLdevid { kind, subject } => format!(
                "{who} presents {kind} ({subject}) where a device's LDevID is expected: a certificate \
                 of the owner's CA that is not an LDevID does not identify a device, and nothing was \
                 sent to it; something else answers at this address"
            ),
            PeerProblem::IdevidRevoked { serial, subject } => format!(
                "{who} presents an IDevID the manufacturer's CRL revokes (serial {serial}, \
                 {subject}): it is not trusted as the device, and nothing was sent to it; a \
                 reprovisioned device's old identity (`drivesec factory reprovision`) is revoked, \
                 so something that is not the device answers at this address"
            ),
            PeerProblem::NoManufacturerCrlCoverage { issuer } => format!(
                "{who}: none of the manufacturer's CRLs covers its IDevID's issuer ({issuer}), so \
                 its revocation cannot be checked; nothing was sent to it; give that CA's CRL \
                 (--manufacturer-crl; trust.manufacturer_crl in the inventory) and run the \
                 command again"
            ),
            PeerProblem::OtherDevice { expected, found } => format!(
                "{who} presents the owner's LDevID of serial {found}, not of the expected serial \
                 {expected}: it is another device, and nothing was sent to it; check the address and \
                 serial in the inventory"
            ),
        }
    }

    /// As a handshake error, which [`peer_problem`] finds again.
    fn into_tls(self) -> rustls::Error {
        rustls::Error::Other(rustls::OtherError(Arc::new(self)))
    }
}

impl std::fmt::Display for PeerProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe("the device"))
    }
}

impl std::error::Error for PeerProblem {}

/// The [`PeerProblem`] a failed handshake carries, if any (`err` is the
/// handshake's error, or any error whose source chain holds it).
pub fn peer_problem(err: &(dyn std::error::Error + 'static)) -> Option<PeerProblem> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(p) = e.downcast_ref::<PeerProblem>() {
            return Some(p.clone());
        }
        if let Some(rustls::Error::Other(o)) = e.downcast_ref::<rustls::Error>()
            && let Some(p) = o.0.downcast_ref::<PeerProblem>()
        {
            return Some(p.clone());
        }
        // io::Error hides the rustls error behind get_ref, not source.
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
        {
            cur = Some(inner);
            continue;
        }
        cur = e.source();
    }
    None
}

/// The serial a tampered device's throwaway certificate names, when `der`
/// is one: subject exactly `CN=TAMPERED <serial>`, the serial a token.
fn tampered_marker(der: &[u8]) -> Option<String> {
    let s = drivesec_pki::inspect::summarize(der).ok()?;
    let serial = s.subject.strip_prefix("CN=TAMPERED ")?;
    (!serial.is_empty()
        && serial.len() <= 64
        && serial
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    .then(|| serial.to_string())
}

/// `err`, a refused device certificate's error, or the [`PeerProblem`]
/// that explains it: a tampered device's marker, a revoked certificate, or
/// one whose issuer no CRL covers.
fn explain_refusal(end_entity: &[u8], err: rustls::Error) -> rustls::Error {
    if let Some(serial) = tampered_marker(end_entity) {
        return PeerProblem::Tampered { serial }.into_tls();
    }
    let summary = drivesec_pki::inspect::summarize(end_entity).ok();
    match (&err, summary) {
        (rustls::Error::InvalidCertificate(CertificateError::Revoked), Some(s)) => {
            PeerProblem::Revoked {
                serial: s.serial,
                subject: s.subject,
            }
            .into_tls()
        }
        (rustls::Error::InvalidCertificate(CertificateError::UnknownRevocationStatus), Some(s)) => {
            PeerProblem::NoCrlCoverage { issuer: s.issuer }.into_tls()
        }
        _ => err,
    }
}

/// The subject serialNumber of `der` when it is an LDevID as the OEM CA
/// issues them (docs/pki.md, "Certificate profiles"): OU exactly `LDevID`,
/// not a CA, exactly one serialNumber, extendedKeyUsage serverAuth and
/// clientAuth, the one URI `urn:drivesec:device:<serial>` among its names,
/// no role extension. Otherwise [`PeerProblem::NotLdevid`] naming the
/// profile it has. (A local helper: `drivesec_pki` has no profile reader.)
pub fn ldevid_serial(der: &[u8]) -> std::result::Result<String, PeerProblem> {
    let not = |kind: &str, subject: String| PeerProblem::NotLdevid {
        kind: kind.to_string(),
        subject,
    };
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|_| not("something that is not an X.509 certificate", String::new()))?;
    let subject = cert.subject().to_string();
    let ous: Vec<&str> = cert
        .subject()
        .iter_organizational_unit()
        .map(|a| a.as_str().unwrap_or("?"))
        .collect();
    let kind = match ous.as_slice() {
        ["LDevID"] => None,
        ["Servers"] => Some("a server-profile certificate"),
        ["Clients"] => Some("a client-profile certificate"),
        ["IDevID"] => Some("an IDevID"),
        _ => Some("a certificate that is not an LDevID"),
    };
    if let Some(k) = kind {
        return Err(not(k, subject));
    }
    let s = drivesec_pki::inspect::summarize(der)
        .map_err(|_| not("an unreadable certificate", subject.clone()))?;
    let serial = drivesec_pki::inspect::subject_serial_number(der).map_err(|_| {
        not(
            "an LDevID-named certificate without one serialNumber",
            subject.clone(),
        )
    })?;
    let uris: Vec<&String> = s
        .subject_alt_names
        .iter()
        .filter(|n| n.starts_with("URI:"))
        .collect();
    let eku = |u: &str| s.extended_key_usage.iter().any(|e| e == u);
    if s.is_ca
        || !eku("serverAuth")
        || !eku("clientAuth")
        || uris.len() != 1
        || *uris[0] != format!("URI:urn:drivesec:device:{serial}")
        || s.role_extension_critical.is_some()
    {
        return Err(not(
            "an LDevID-named certificate that does not have the LDevID profile",
            subject,
        ));
    }
    Ok(serial)
}

/// How the tool checks a commissioned device's certificate against the
/// owner's revocations (docs/incident-response.md, "How the tool
/// recognises a device").
#[derive(Debug, Clone)]
pub enum Revocation {
    /// The owner's CRLs. The device certificate's issuer must have one
    /// (a certificate whose revocation cannot be checked is refused) and
    /// the certificate must not be on it; a CRL of a root that revokes an
    /// issuing CA is applied to the chain too. A CRL past its nextUpdate
    /// still applies: its revocations stay refused, and the tool warns
    /// ([`Revocation::from_file`]).
    Crls(Vec<CertificateRevocationListDer<'static>>),
    /// No CRL is known: connecting is refused with this message, which
    /// says where to give one.
    Missing(String),
    /// Risky: no CRL is known and the user chose to go on without
    /// revocation checks (`--insecure-no-crl`).
    UncheckedRisky,
}

impl Revocation {
    /// The CRLs in `path` (PEM `X509 CRL` blocks, or one DER CRL), and a
    /// warning for each one past its nextUpdate (or without one).
    pub fn from_file(path: &Path) -> Result<(Revocation, Vec<String>)> {
        let bytes = drivesec_fsutil::read(path)?;
        let bad = |reason: String| ClientError::BadFile {
            path: path.to_path_buf(),
            reason,
        };
        let crls = drivesec_pki::crl::parse_crls(&bytes).map_err(|e| bad(e.to_string()))?;
        let warnings = stale_crl_warnings(&crls, &path.display().to_string()).map_err(bad)?;
        Ok((Revocation::Crls(crls), warnings))
    }

    /// The manufacturer's CRLs in `path` (revoked IDevIDs), and a warning
    /// for each one past its nextUpdate (or without one): a stale CRL still
    /// applies.
    pub fn manufacturer_from_file(path: &Path) -> Result<(Revocation, Vec<String>)> {
        let bytes = drivesec_fsutil::read(path)?;
        let bad = |reason: String| ClientError::BadFile {
            path: path.to_path_buf(),
            reason,
        };
        let crls = drivesec_pki::crl::parse_crls(&bytes).map_err(|e| bad(e.to_string()))?;
        let warnings =
            crl_warnings(&crls, &path.display().to_string(), CrlOf::Manufacturer).map_err(bad)?;
        Ok((Revocation::Crls(crls), warnings))
    }

    /// The manufacturer's CRLs of `path` when there is one; otherwise
    /// [`Revocation::Missing`] with `missing` as its message, or
    /// [`Revocation::UncheckedRisky`] (with a warning) when `insecure` says
    /// go on without.
    pub fn manufacturer_configured(
        path: Option<&Path>,
        insecure: bool,
        missing: impl FnOnce() -> String,
    ) -> Result<(Revocation, Vec<String>)> {
        match path {
            Some(p) => Revocation::manufacturer_from_file(p),
            None if insecure => Ok((
                Revocation::UncheckedRisky,
                vec![MFG_UNCHECKED_WARNING.into()],
            )),
            None => Ok((Revocation::Missing(missing()), vec![])),
        }
    }

    /// Turns a missing manufacturer CRL into going on without one: a
    /// warning when it does.
    pub fn allow_missing_manufacturer(&mut self) -> Option<String> {
        if matches!(self, Revocation::Missing(_)) {
            *self = Revocation::UncheckedRisky;
            return Some(MFG_UNCHECKED_WARNING.into());
        }
        None
    }

    /// The CRLs of `path` when there is one; otherwise [`Revocation::Missing`]
    /// with `missing` as its message, or [`Revocation::UncheckedRisky`]
    /// (with a warning) when `insecure` says go on without.
    pub fn configured(
        path: Option<&Path>,
        insecure: bool,
        missing: impl FnOnce() -> String,
    ) -> Result<(Revocation, Vec<String>)> {
        match path {
            Some(p) => Revocation::from_file(p),
            None if insecure => Ok((
                Revocation::UncheckedRisky,
                vec![
                    "no CRL is configured and --insecure-no-crl is given: device certificates are \
                     not checked for revocation"
                        .into(),
                ],
            )),
            None => Ok((Revocation::Missing(missing()), vec![])),
        }
    }

    /// Turns a missing CRL into going on without one (`--insecure-no-crl`):
    /// a warning when it does.
    pub fn allow_missing(&mut self) -> Option<String> {
        if matches!(self, Revocation::Missing(_)) {
            *self = Revocation::UncheckedRisky;
            return Some(
                "no CRL is configured and --insecure-no-crl is given: device certificates are not \
                 checked for revocation"
                    .into(),
            );
        }
        None
    }

    /// The CRLs to check a certificate against (none: unchecked); an error
    /// when they are missing.
    pub fn crls(&self) -> Result<&[CertificateRevocationListDer<'static>]> {
        match self {
            Revocation::Crls(c) => Ok(c),
            Revocation::Missing(why) => Err(ClientError::MissingCrl(why.clone())),
            Revocation::UncheckedRisky => Ok(&[]),
        }
    }
}

const MFG_UNCHECKED_WARNING: &str = "no manufacturer CRL is configured and its check is \
     switched off: IDevIDs are not checked for revocation (a reprovisioned device's old, revoked \
     identity would be accepted)";

/// Whose CRL a warning is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CrlOf {
    Owner,
    Manufacturer,
}

/// A warning for each of `crls` (read from `source`) past its nextUpdate
/// or without one; an error when one does not parse.
pub fn stale_crl_warnings(
    crls: &[CertificateRevocationListDer<'_>],
    source: &str,
) -> std::result::Result<Vec<String>, String> {
    crl_warnings(crls, source, CrlOf::Owner)
}

fn crl_warnings(
    crls: &[CertificateRevocationListDer<'_>],
    source: &str,
    of: CrlOf,
) -> std::result::Result<Vec<String>, String> {
    let now = time::OffsetDateTime::now_utc();
    let mut warnings = vec![];
    for (i, c) in crls.iter().enumerate() {
        let (_, crl) = x509_parser::parse_x509_crl(c)
            .map_err(|e| format!("CRL {}: does not parse: {e}", i + 1))?;
        let issuer = crl.issuer().to_string();
        match crl.next_update().map(|t| t.to_datetime()) {
            Some(next) if next >= now => {}
            next => warnings.push(format!(
                "the {} {source} (issuer {issuer}) is {}: revocations published since then \
                 are unknown to this tool (the ones it lists are still refused); {}",
                match of {
                    CrlOf::Owner => "owner's CRL",
                    CrlOf::Manufacturer => "manufacturer's CRL",
                },
                match next {
                    Some(t) => format!(
                        "past its nextUpdate ({})",
                        t.format(&time::format_description::well_known::Rfc3339)
                            .unwrap_or_default()
                    ),
                    None => "without a nextUpdate".into(),
                },
                match of {
                    CrlOf::Owner =>
                        "sign a fresh one (`drivesec ca crl --ca OEM_CA_DIR`) and push \
                                     it (`drivesec fleet push-crl`)",
                    CrlOf::Manufacturer => "get a fresh one from the manufacturer",
                }
            )),
        }
    }
    Ok(warnings)
}

/// What the tool requires of a commissioned device's certificate.
#[derive(Debug, Clone)]
pub struct OwnedTrust {
    /// Owner roots the LDevID must chain to.
    pub roots: Vec<CertificateDer<'static>>,
    /// The device's DNS name (in the LDevID).
    pub device_name: String,
    /// The device's serial number, when known: the LDevID's subject
    /// serialNumber must be exactly it.
    pub serial: Option<String>,
    /// The owner's CRLs.
    pub revocation: Revocation,
}

/// How the client decides that the peer is the right device.
#[derive(Debug, Clone)]
pub enum DeviceTrust {
    /// Factory state: the IDevID must chain to one of these manufacturer roots,
    /// must not be revoked by the manufacturer's CRLs (its issuer must have
    /// one, unless the check is explicitly off); when `serial` is set, the
    /// certificate's subject serialNumber must be exactly it.
    Idevid {
        /// Manufacturer roots.
        roots: Vec<CertificateDer<'static>>,
        /// Expected serial number.
        serial: Option<String>,
        /// The manufacturer's CRLs (revoked IDevIDs); missing refuses to
        /// connect.
        revocation: Revocation,
    },
    /// Risky: a device whose tamper response ran has no key left to prove
    /// who it is; it answers status reads under a throwaway self-signed
    /// certificate `CN=TAMPERED <serial>`. This accepts exactly that
    /// certificate for `serial` and nothing else; what such a device says
    /// cannot be authenticated.
    TamperedStatusRisky {
        /// The serial number the certificate must name.
        serial: String,
    },
    /// Commissioned: the LDevID chains to the owner roots, names the
    /// device, is not revoked by the owner's CRLs, has the LDevID profile,
    /// and carries the expected serial number when one is known.
    Owned(OwnedTrust),
}

impl DeviceTrust {
    /// [`DeviceTrust::Owned`] from its parts.
    pub fn owned(
        roots: Vec<CertificateDer<'static>>,
        device_name: impl Into<String>,
        serial: Option<String>,
        revocation: Revocation,
    ) -> DeviceTrust {
        DeviceTrust::Owned(OwnedTrust {
            roots,
            device_name: device_name.into(),
            serial: serial.filter(|s| !s.is_empty()),
            revocation,
        })
    }
}

/// What a device's server certificate must be: the check of each
/// [`DeviceTrust`].
#[derive(Debug)]
enum ServerCheck {
    /// A factory-state device: the IDevID chains to these roots, is not
    /// revoked by these CRLs (none: unchecked), and names the serial.
    Idevid {
        roots: Vec<CertificateDer<'static>>,
        crls: Vec<CertificateRevocationListDer<'static>>,
        serial: Option<String>,
    },
    /// A tampered device's throwaway `CN=TAMPERED <serial>` certificate.
    Tampered { serial: String },
    /// A commissioned device: webpki's checks (chain to the owner roots,
    /// the name; with the owner's CRLs, the leaf against its issuer's CRL,
    /// which must exist, then the chain against any CRL given), each
    /// refusal explained; then the LDevID profile and the serial.
    Owned {
        verifiers: Vec<Arc<rustls::client::WebPkiServerVerifier>>,
        serial: Option<String>,
    },
}

#[derive(Debug)]
struct CheckedVerifier {
    check: ServerCheck,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for CheckedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let summary = || {
            drivesec_pki::inspect::summarize(end_entity)
                .map_err(|e| rustls::Error::General(format!("certificate: {e}")))
        };
        match &self.check {
            ServerCheck::Idevid {
                roots,
                crls,
                serial,
            } => {
                verify_idevid(
                    end_entity,
                    intermediates,
                    roots,
                    crls,
                    drivesec_pki::verify::Usage::Server,
                    now,
                )?;
                if let Some(expected) = serial {
                    let found = drivesec_pki::inspect::subject_serial_number(end_entity)
                        .map_err(|e| rustls::Error::General(format!("IDevID: {e}")))?;
                    if &found != expected {
                        return Err(PeerProblem::WrongSerial {
                            expected: expected.clone(),
                            found,
                        }
                        .into_tls());
                    }
                }
            }
            ServerCheck::Tampered { serial } => {
                let s = summary()?;
                if s.subject != format!("CN=TAMPERED {serial}") {
                    return Err(rustls::Error::General(format!(
                        "'{}' is not the tampered marker of serial {serial}",
                        s.subject
                    )));
                }
            }
            ServerCheck::Owned { verifiers, serial } => {
                for webpki in verifiers {
                    webpki
                        .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
                        .map_err(|e| explain_refusal(end_entity, e))?;
                }
                let found = ldevid_serial(end_entity).map_err(PeerProblem::into_tls)?;
                if let Some(expected) = serial
                    && &found != expected
                {
                    return Err(PeerProblem::OtherDevice {
                        expected: expected.clone(),
                        found,
                    }
                    .into_tls());
                }
            }
        }
        Ok(ServerCertVerified::assertion())
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

/// Checks an IDevID `leaf` (with the `intermediates` presented): it chains
/// to the manufacturer `roots` for `usage`; with `crls` (the
/// manufacturer's), the leaf against its issuer's CRL, which must be among
/// them, then the whole chain against whichever CRLs cover it. A CRL past
/// its nextUpdate still applies (the caller warned when it read it). No
/// CRLs: not checked for revocation. The error explains a revoked or
/// uncovered IDevID as a [`PeerProblem`].
pub fn verify_idevid(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    roots: &[CertificateDer<'_>],
    crls: &[CertificateRevocationListDer<'_>],
    usage: drivesec_pki::verify::Usage,
    now: UnixTime,
) -> std::result::Result<(), rustls::Error> {
    let general = |m: String| rustls::Error::General(format!("IDevID: {m}"));
    let anchors = roots
        .iter()
        .map(|r| {
            webpki::anchor_from_trusted_cert(r)
                .map(|a| a.to_owned())
                .map_err(|e| general(format!("unusable manufacturer root: {e:?}")))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let ee = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| general(format!("unparseable certificate: {e:?}")))?;
    let parsed = crls
        .iter()
        .map(|c| {
            webpki::BorrowedCertRevocationList::from_der(c)
                .map(webpki::CertRevocationList::from)
                .map_err(|e| general(format!("unparseable manufacturer CRL: {e:?}")))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let refs: Vec<&webpki::CertRevocationList<'_>> = parsed.iter().collect();
    let key_usage = match usage {
        drivesec_pki::verify::Usage::Server => webpki::KeyUsage::server_auth(),
        drivesec_pki::verify::Usage::Client => webpki::KeyUsage::client_auth(),
    };
    let passes: Vec<Option<webpki::RevocationOptions<'_>>> = if refs.is_empty() {
        vec![None]
    } else {
        let builder = || {
            webpki::RevocationOptionsBuilder::new(&refs)
                .map_err(|_| general("no CRLs".into()))
                .map(|b| b.with_expiration_policy(webpki::ExpirationPolicy::Ignore))
        };
        vec![
            Some(
                builder()?
                    .with_depth(webpki::RevocationCheckDepth::EndEntity)
                    .with_status_policy(webpki::UnknownStatusPolicy::Deny)
                    .build(),
            ),
            Some(
                builder()?
                    .with_depth(webpki::RevocationCheckDepth::Chain)
                    .with_status_policy(webpki::UnknownStatusPolicy::Allow)
                    .build(),
            ),
        ]
    };
    for revocation in passes {
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            intermediates,
            now,
            key_usage,
            revocation,
            None,
        )
        .map_err(|e| {
            let summary = drivesec_pki::inspect::summarize(leaf).ok();
            if let Some(serial) = tampered_marker(leaf) {
                return PeerProblem::Tampered { serial }.into_tls();
            }
            match (e, summary) {
                (webpki::Error::CertRevoked, Some(s)) => PeerProblem::IdevidRevoked {
                    serial: s.serial,
                    subject: s.subject,
                }
                .into_tls(),
                (webpki::Error::UnknownRevocationStatus, Some(s)) => {
                    PeerProblem::NoManufacturerCrlCoverage { issuer: s.issuer }.into_tls()
                }
                (e, _) => general(idevid_refusal(&e)),
            }
        })?;
    }
    Ok(())
}

/// Why webpki refused an IDevID, in words: pki's sentences, with the
/// missing CRL named as the manufacturer's.
fn idevid_refusal(e: &webpki::Error) -> String {
    match e {
        webpki::Error::UnknownRevocationStatus => {
            "no manufacturer CRL covers the certificate's issuer".into()
        }
        other => drivesec_pki::verify::describe_refusal(other),
    }
}

/// The webpki verifiers of a commissioned device's certificate: chain and
/// name; with CRLs, first the leaf against its issuer's CRL (which must be
/// among them), then the whole chain against whichever CRLs cover it (a
/// root's CRL revoking the issuing CA). A CRL past its nextUpdate is still
/// applied (rustls' default: expiration not enforced).
fn owned_verifiers(
    roots: &[CertificateDer<'static>],
    crls: &[CertificateRevocationListDer<'static>],
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<Vec<Arc<rustls::client::WebPkiServerVerifier>>> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store
            .add(r.clone())
            .map_err(|e| ClientError::UnusableTrust {
                what: "owner root",
                reason: e.to_string(),
            })?;
    }
    let store = Arc::new(store);
    let build = |b: rustls::client::ServerCertVerifierBuilder| {
        b.build().map_err(|e| ClientError::UnusableTrust {
            what: "owner roots or CRLs",
            reason: e.to_string(),
        })
    };
    let base = || {
        rustls::client::WebPkiServerVerifier::builder_with_provider(store.clone(), provider.clone())
    };
    if crls.is_empty() {
        return Ok(vec![build(base())?]);
    }
    Ok(vec![
        build(
            base()
                .with_crls(crls.iter().cloned())
                .only_check_end_entity_revocation(),
        )?,
        build(
            base()
                .with_crls(crls.iter().cloned())
                .allow_unknown_revocation_status(),
        )?,
    ])
}

/// The tool's TLS identity: a certificate chain and its private key.
pub struct ClientIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for ClientIdentity {
    fn clone(&self) -> Self {
        ClientIdentity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientIdentity(<key redacted>)")
    }
}

impl ClientIdentity {
    /// Reads a PEM chain and a PEM (PKCS#8) key.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self> {
        let chain = drivesec_pki::read_cert_chain(cert)?;
        let text = zeroize::Zeroizing::new(drivesec_fsutil::read(key)?);
        let block = pem::parse(&*text).map_err(|e| ClientError::BadFile {
            path: key.to_path_buf(),
            reason: format!("not a PEM private key: {e}"),
        })?;
        let key_der = match block.tag() {
            "PRIVATE KEY" => PrivateKeyDer::Pkcs8(block.into_contents().into()),
            "EC PRIVATE KEY" => PrivateKeyDer::Sec1(block.into_contents().into()),
            other => {
                return Err(ClientError::BadFile {
                    path: key.to_path_buf(),
                    reason: format!("unsupported key block '{other}'"),
                });
            }
        };
        Ok(ClientIdentity {
            chain,
            key: key_der,
        })
    }
}

/// A response: status code and JSON body (or `{"text": ...}` for non-JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Body (JSON; anything else as `{"text": ...}`).
    pub body: Value,
    /// The body's bytes.
    pub raw: Vec<u8>,
    /// The certificate chain (leaf first) the device presented in the
    /// handshake of the connection this answer came over: what that
    /// connection authenticated, whichever call opened it. An answer that
    /// must be bound to the device's identity (an attestation) is checked
    /// against this, never against a certificate the body carries.
    pub peer: PeerChain,
    /// The request this answers, `METHOD PATH` (what errors name).
    pub request: String,
    /// The device that answered, as messages name it ([`DeviceClient::who`]).
    pub device: String,
}

impl Reply {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The device's error body (`{"error": CODE, "message": TEXT}`), when
    /// the answer is one.
    pub fn error_body(&self) -> Option<ErrorBody> {
        serde_json::from_slice(&self.raw).ok()
    }

    /// What the device said went wrong: its error body's message, or the
    /// answer as it came (JSON text) when it has none; at most
    /// [`ERROR_MESSAGE_SHOWN`] bytes of it, saying how many were left out.
    pub fn error_message(&self) -> String {
        bounded_message(match self.error_body() {
            Some(e) => e.message,
            None => self.body.to_string(),
        })
    }

    /// The answer itself when it is 2xx; otherwise [`ClientError::Rejected`]
    /// with the device's error body.
    pub fn success(self) -> Result<Reply> {
        match self.rejection() {
            Some(e) => Err(e),
            None => Ok(self),
        }
    }

    /// [`ClientError::Rejected`] for an answer that is not 2xx.
    fn rejection(&self) -> Option<ClientError> {
        if self.is_success() {
            return None;
        }
        let error = self.error_body();
        Some(ClientError::Rejected {
            request: self.request.clone(),
            status: self.status,
            message: bounded_message(match &error {
                Some(e) => e.message.clone(),
                None => self.body.to_string(),
            }),
            error,
        })
    }

    /// The answer as `A`, the type the route answers with: an error answer
    /// is [`ClientError::Rejected`], and a 2xx answer that does not parse as
    /// `A` (a missing or unknown field, a value of another type, not JSON)
    /// is [`ClientError::BadAnswer`] naming the request, the type and where
    /// it failed. Never a default in place of what is missing.
    pub fn answer<A: DeserializeOwned>(&self) -> Result<A> {
        if let Some(e) = self.rejection() {
            return Err(e);
        }
        parse_answer(&self.raw).map_err(|reason| ClientError::BadAnswer {
            device: self.device.clone(),
            request: self.request.clone(),
            reason: format!("{}: {reason}", type_name::<A>()),
        })
    }
}

/// `bytes` as `A`; where and why it did not parse (the path of the field
/// at fault, then serde_json's message).
fn parse_answer<A: DeserializeOwned>(bytes: &[u8]) -> std::result::Result<A, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let a = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let at = e.path().to_string();
        if at == "." {
            e.inner().to_string()
        } else {
            format!("`{at}`: {}", e.inner())
        }
    })?;
    de.end().map_err(|e| e.to_string())?;
    Ok(a)
}

/// The last segment of `A`'s type name (`LoginAnswer`).
fn type_name<A>() -> &'static str {
    let full = std::any::type_name::<A>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base)
}

/// The name a value of an API enum has on the wire (`commissioned`,
/// `safe-torque-off`); for anything that is not a string on the wire, its
/// JSON.
pub fn wire_name<T: Serialize + ?Sized>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

/// `name` as one segment of a request's path (`/api/v1/users/NAME`), when it
/// is a name a device can have: a-z, 0-9, `.`, `_` and `-`, starting with a
/// letter or digit (drivesec-access's account and role names; session
/// handles and parameter names are in it too). Anything else is
/// [`ClientError::BadName`] naming `what` it is, and nothing is sent: `#`,
/// `?`, `/` or `..` in it would change which request the device gets
/// (`users remove 'op#x'` would remove `op`).
pub fn path_name<'a>(what: &'static str, name: &'a str) -> Result<&'a str> {
    let ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if ok {
        Ok(name)
    } else {
        Err(ClientError::BadName {
            what,
            name: name.to_string(),
        })
    }
}

/// The most of a device's error message a [`ClientError::Rejected`]
/// carries (the rest is counted, not shown).
pub const ERROR_MESSAGE_SHOWN: usize = 1024;

/// What a device said went wrong, at most [`ERROR_MESSAGE_SHOWN`] bytes of
/// it (cut at a character boundary), saying how many bytes were left out.
fn bounded_message(message: String) -> String {
    if message.len() <= ERROR_MESSAGE_SHOWN {
        return message;
    }
    let mut end = ERROR_MESSAGE_SHOWN;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}... ({} more bytes of the device's message not shown)",
        &message[..end],
        message.len() - end
    )
}

/// A connection's peer certificate chain, leaf first (shared, not copied,
/// between the answers of one connection).
pub type PeerChain = Arc<[CertificateDer<'static>]>;

/// An open connection between calls: its sender and what its handshake authenticated.
type OpenConnection = (
    hyper::client::conn::http1::SendRequest<RequestBody>,
    PeerChain,
);

/// The TLS client configuration (no ALPN) for talking to the device at
/// `addr` as `identity`, and the name its certificate must carry. A
/// [`DeviceTrust::Owned`] whose CRL is missing is an error here, before
/// any connection.
pub fn tls_config(
    addr: SocketAddr,
    identity: Option<&ClientIdentity>,
    trust: &DeviceTrust,
    versions: Versions,
) -> Result<(rustls::ClientConfig, ServerName<'static>)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algs = provider.signature_verification_algorithms;
    let vers: &[&rustls::SupportedProtocolVersion] = match versions {
        Versions::Default => &[&rustls::version::TLS13, &rustls::version::TLS12],
        Versions::Tls12Only => &[&rustls::version::TLS12],
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(vers)
        .map_err(|e| ClientError::TlsConfig(e.to_string()))?;
    let dns = |device_name: &str| {
        ServerName::try_from(device_name.to_string()).map_err(|_| ClientError::NotDnsName {
            name: device_name.to_string(),
        })
    };
    let (check, server_name) = match trust {
        DeviceTrust::Idevid {
            roots,
            serial,
            revocation,
        } => (
            ServerCheck::Idevid {
                roots: roots.clone(),
                crls: revocation.crls()?.to_vec(),
                serial: serial.clone(),
            },
            ServerName::IpAddress(addr.ip().into()),
        ),
        DeviceTrust::TamperedStatusRisky { serial } => (
            ServerCheck::Tampered {
                serial: serial.clone(),
            },
            ServerName::IpAddress(addr.ip().into()),
        ),
        DeviceTrust::Owned(t) => (
            ServerCheck::Owned {
                verifiers: owned_verifiers(&t.roots, t.revocation.crls()?, &provider)?,
                serial: t.serial.clone(),
            },
            dns(&t.device_name)?,
        ),
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(CheckedVerifier { check, algs }));
    let cfg = match identity {
        Some(id) => builder
            .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
            .map_err(|e| ClientError::TlsConfig(format!("client certificate: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    Ok((cfg, server_name))
}

/// How long the client waits for a device. A device that does not keep to
/// these fails the request with [`ClientError::Timeout`] naming it and the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// The TCP connection (default 5 s).
    pub connect: Duration,
    /// The TLS handshake (default 10 s).
    pub handshake: Duration,
    /// One whole answer, head and body, from the request on (default
    /// 30 s). For the routes whose answers are streamed (audit export,
    /// trail segments): the head within this, then the body in windows of
    /// this length, each of which must bring at least
    /// [`Timeouts::min_rate`] on average (no total limit, but none for
    /// a trickle either: at most the route's cap at that rate).
    pub response: Duration,
    /// The slowest a streamed answer may come, bytes per second averaged
    /// over each window of [`Timeouts::response`] (default 32 KiB/s).
    pub min_rate: u64,
    /// One whole answer to a request the device works on for long: the
    /// firmware reboot, which verifies the image (default 300 s).
    pub slow_response: Duration,
    /// An upload: the most time without progress (the device taking
    /// bytes), and then until its answer (default 60 s). No total limit.
    pub upload_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            handshake: Duration::from_secs(10),
            response: Duration::from_secs(30),
            min_rate: 32 << 10,
            slow_response: Duration::from_secs(300),
            upload_idle: Duration::from_secs(60),
        }
    }
}

/// The largest answer to an ordinary (JSON) request.
pub const JSON_CAP: u64 = 1 << 20;
/// The largest audit record listing (`GET /api/v1/audit`, at most 10,000 records).
pub const AUDIT_RECORDS_CAP: u64 = 32 << 20;
/// The largest trail snapshot (`GET /api/v1/audit/trail`: checkpoints, base64).
pub const TRAIL_SNAPSHOT_CAP: u64 = 64 << 20;
/// The largest trail segment the tool collects, whatever length the
/// device's snapshot declares: a segment is at most the device's
/// `[audit] segment_bytes` (default 8 MiB), or one frame when that is
/// larger, so this leaves room for a device configured eight times the
/// default. A segment request is capped at the smaller of this and the
/// length asked for.
pub const SEGMENT_CAP: u64 = 64 << 20;
/// The most the tool collects of one device's trail (all segments
/// together, `audit review`): four times the default `[audit] max_bytes`
/// (256 MiB) plus its reserve.
pub const TRAIL_TOTAL_CAP: u64 = 1 << 30;
/// The largest audit export (`GET /api/v1/audit/export`, streamed to its destination).
pub const EXPORT_CAP: u64 = 4 << 30;

/// What the client takes in answer to one request.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Most bytes of body.
    cap: u64,
    /// How long it may take.
    wait: Wait,
}

#[derive(Debug, Clone, Copy)]
enum Wait {
    /// The whole answer within this.
    Total(Duration),
    /// Streamed answers: the head within this, then the body in windows
    /// of this length, each bringing at least `min_rate` bytes per second
    /// on average.
    Streamed(Duration),
}

/// The limits of the answer to `method path`, by route.
fn limits(t: &Timeouts, method: &str, path: &str) -> Limits {
    let (route, query) = path.split_once('?').unwrap_or((path, ""));
    let total = |cap| Limits {
        cap,
        wait: Wait::Total(t.response),
    };
    match (method, route) {
        ("GET", "/api/v1/audit") => total(AUDIT_RECORDS_CAP),
        ("GET", "/api/v1/audit/trail") => total(TRAIL_SNAPSHOT_CAP),
        ("GET", "/api/v1/audit/trail/segment") => Limits {
            // The prefix asked for, and never more than a segment can be:
            // the length asked for comes from the device's own snapshot.
            cap: query
                .split('&')
                .find_map(|kv| kv.strip_prefix("bytes="))
                .and_then(|v| v.parse().ok())
                .map_or(SEGMENT_CAP, |n: u64| n.min(SEGMENT_CAP)),
            wait: Wait::Streamed(t.response),
        },
        ("GET", "/api/v1/audit/export") => Limits {
            cap: EXPORT_CAP,
            wait: Wait::Streamed(t.response),
        },
        ("POST", "/api/v1/firmware/reboot") => Limits {
            cap: JSON_CAP,
            wait: Wait::Total(t.slow_response),
        },
        _ => total(JSON_CAP),
    }
}

/// When an upload last made progress.
#[derive(Debug)]
struct Progress {
    base: Instant,
    last_ms: AtomicU64,
}

impl Progress {
    fn new() -> Arc<Progress> {
        Arc::new(Progress {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }
    fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }
    fn idle(&self) -> Duration {
        self.base
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// A request body read from a file as it is sent.
struct FileBody {
    file: std::fs::File,
    left: u64,
    buf: Vec<u8>,
    progress: Arc<Progress>,
}

impl hyper::body::Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<hyper::body::Frame<Bytes>, std::io::Error>>>
    {
        use std::io::Read;
        let this = &mut *self;
        if this.left == 0 {
            return std::task::Poll::Ready(None);
        }
        // A local file: a short blocking read on this client's own runtime.
        let want = this.left.min(this.buf.len() as u64) as usize;
        let frame = match this.file.read(&mut this.buf[..want]) {
            Ok(0) => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file shrank while it was being sent",
            )),
            Ok(n) => {
                this.left -= n as u64;
                // Asked for more: the device took the previous piece.
                this.progress.touch();
                Ok(hyper::body::Frame::data(Bytes::copy_from_slice(
                    &this.buf[..n],
                )))
            }
            Err(e) => Err(e),
        };
        std::task::Poll::Ready(Some(frame))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.left)
    }
}

/// Every request body, boxed to one type so one connection carries them all.
type RequestBody =
    http_body_util::combinators::UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A client bound to one device. Consecutive calls share one mutual-TLS
/// connection (HTTP/1.1 keep-alive); when the device has closed it, the
/// next call opens a new one.
pub struct DeviceClient {
    rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
    timeouts: Timeouts,
    /// The open connection, between calls, with its peer's chain.
    conn: std::sync::Mutex<Option<OpenConnection>>,
    /// The certificate chain the device presented on the last connection.
    peer: std::sync::Mutex<Vec<CertificateDer<'static>>>,
    /// The session identifier, once logged in.
    pub session: Option<String>,
}

impl std::fmt::Debug for DeviceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceClient")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// TLS protocol versions a client offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    /// TLS 1.3 and 1.2.
    Default,
    /// TLS 1.2 only (for tests of the device's refusal).
    Tls12Only,
}

/// Where an answer's body goes.
enum Sink<'a> {
    /// Into the [`Reply`].
    Memory,
    /// Written out as it arrives (the reply's `raw` stays empty), for a
    /// successful answer; an error answer still comes into memory.
    Stream(&'a mut dyn std::io::Write),
}

impl DeviceClient {
    /// A client for the device at `addr`; `identity` None sends no client
    /// certificate. The default [`Timeouts`] apply ([`DeviceClient::with_timeouts`]).
    pub fn new(
        addr: SocketAddr,
        identity: Option<&ClientIdentity>,
        trust: &DeviceTrust,
        versions: Versions,
    ) -> Result<Self> {
        let (mut cfg, server_name) = tls_config(addr, identity, trust, versions)?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Runtime(e.to_string()))?;
        Ok(DeviceClient {
            rt,
            addr,
            tls: Arc::new(cfg),
            server_name,
            timeouts: Timeouts::default(),
            conn: std::sync::Mutex::new(None),
            peer: std::sync::Mutex::new(Vec::new()),
            session: None,
        })
    }

    /// The same client with other deadlines.
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Its deadlines.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// The certificate chain (leaf first) the device presented on the last
    /// connection this client opened: what its handshake proved (empty
    /// before the first call).
    pub fn peer_certificates(&self) -> Vec<CertificateDer<'static>> {
        self.peer.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// One request, on the open connection when there is one. Transport and
    /// TLS failures are errors; any HTTP status is a [`Reply`].
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Reply> {
        self.call_raw(
            method,
            path,
            body.map(|b| b.to_string().into_bytes()),
            "application/json",
        )
    }

    /// Like [`DeviceClient::call`] with a raw body.
    pub fn call_raw(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        content_type: &str,
    ) -> Result<Reply> {
        let content_type = body.is_some().then_some(content_type);
        let body = Bytes::from(body.unwrap_or_default());
        let (reply, reused) = self.transmit(
            method,
            path,
            content_type,
            Full::new(body.clone()),
            None,
            Sink::Memory,
        )?;
        // The device refused it unread because its trust changed while the
        // connection was open (docs/openapi.json): once more, on a new connection.
        if reused
            && reply.status == 421
            && reply
                .error_body()
                .is_some_and(|e| e.error == "connection-stale")
        {
            self.forget_connection();
            return Ok(self
                .transmit(
                    method,
                    path,
                    content_type,
                    Full::new(body),
                    None,
                    Sink::Memory,
                )?
                .0);
        }
        Ok(reply)
    }

    /// `GET path`, its body written to `out` as it arrives (within the
    /// route's size cap, e.g. [`EXPORT_CAP`]); the number of bytes. An
    /// answer that is not 2xx is an error naming its status, and nothing
    /// of it is written. A cut answer is an error too (what `out` got
    /// then is incomplete).
    pub fn download(&self, path: &str, out: &mut dyn std::io::Write) -> Result<u64> {
        let mut counted = Counted { inner: out, n: 0 };
        let (r, _) = self.transmit(
            "GET",
            path,
            None,
            Full::new(Bytes::new()),
            None,
            Sink::Stream(&mut counted),
        )?;
        // Not 2xx: `GET PATH: STATUS MESSAGE`, the device's error body kept.
        if let Some(e) = r.rejection() {
            return Err(e);
        }
        Ok(counted.n)
    }

    fn forget_connection(&self) {
        if let Ok(mut c) = self.conn.lock() {
            *c = None;
        }
    }

    /// Sends a file as the body, read and sent 64 KiB at a time (a GiB
    /// image never sits in memory), with its length as Content-Length. No
    /// total deadline: the upload fails when the device takes nothing for
    /// [`Timeouts::upload_idle`], or does not answer within it after the
    /// last byte.
    pub fn upload_file(
        &self,
        method: &str,
        path: &str,
        file: &Path,
        content_type: &str,
    ) -> Result<Reply> {
        let unreadable = |e: std::io::Error| ClientError::ReadFile {
            path: file.to_path_buf(),
            reason: e.to_string(),
        };
        let f = std::fs::File::open(file).map_err(unreadable)?;
        let len = f.metadata().map_err(unreadable)?.len();
        let progress = Progress::new();
        // Not sent again on a 421: the file is read as it is sent.
        Ok(self
            .transmit(
                method,
                path,
                Some(content_type),
                FileBody {
                    file: f,
                    left: len,
                    buf: vec![0; 64 * 1024],
                    progress: progress.clone(),
                },
                Some(progress),
                Sink::Memory,
            )?
            .0)
    }

    fn timeout(&self, what: impl Into<String>, after: Duration) -> ClientError {
        ClientError::Timeout {
            device: self.who(),
            what: what.into(),
            secs: after.as_secs().max(1),
        }
    }

    /// A new connection: TCP, the mutual-TLS handshake, HTTP/1.1, each
    /// within its deadline; with the chain the device presented on it.
    async fn connect(&self) -> Result<OpenConnection> {
        let t = self.timeouts;
        let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
        let tcp = tokio::time::timeout(t.connect, tokio::net::TcpStream::connect(self.addr))
            .await
            .map_err(|_| self.timeout("the TCP connection", t.connect))?
            .map_err(|e| ClientError::CannotConnect {
                device: self.who(),
                reason: e.to_string(),
            })?;
        let tls = tokio::time::timeout(
            t.handshake,
            connector.connect(self.server_name.clone(), tcp),
        )
        .await
        .map_err(|_| self.timeout("the TLS handshake", t.handshake))?
        .map_err(|e| match peer_problem(&e) {
            Some(p) => ClientError::Refused {
                message: p.describe(&self.who()),
                problem: p,
            },
            None => ClientError::Tls {
                device: self.who(),
                reason: e.to_string(),
            },
        })?;
        let chain: Vec<CertificateDer<'static>> = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| c.iter().map(|x| x.clone().into_owned()).collect())
            .unwrap_or_default();
        if let Ok(mut p) = self.peer.lock() {
            p.clone_from(&chain);
        }
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| ClientError::Http(format!("HTTP with {}: {e}", self.who())))?;
        tokio::spawn(conn);
        Ok((sender, chain.into()))
    }

    /// The device as a message names it: its DNS name and address, or the address.
    pub fn who(&self) -> String {
        match &self.server_name {
            ServerName::DnsName(n) => format!("{} at {}", n.as_ref(), self.addr),
            _ => format!("the device at {}", self.addr),
        }
    }

    /// Whether the last call left a connection open for the next (for
    /// tests of reuse; a close by the device since then shows only at the
    /// next call, since this client's runtime runs only during calls).
    pub fn has_open_connection(&self) -> bool {
        self.conn
            .lock()
            .map(|c| c.as_ref().is_some_and(|(s, _)| !s.is_closed()))
            .unwrap_or(false)
    }

    /// Waits for `fut` (a request's answer head): until `at` (`after` from
    /// the request), or, for an upload, while it makes progress.
    async fn head<F: std::future::Future>(
        &self,
        fut: F,
        at: tokio::time::Instant,
        after: Duration,
        upload: Option<&Progress>,
        what: &str,
    ) -> Result<F::Output> {
        match upload {
            None => tokio::time::timeout_at(at, fut)
                .await
                .map_err(|_| self.timeout(format!("the answer to {what}"), after)),
            Some(p) => {
                let idle = self.timeouts.upload_idle;
                tokio::pin!(fut);
                loop {
                    tokio::select! {
                        out = &mut fut => return Ok(out),
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {
                            if p.idle() > idle {
                                return Err(self.timeout(
                                    format!("the upload {what} (no bytes taken, or no answer after the last one)"),
                                    idle,
                                ));
                            }
                        }
                    }
                }
            }
        }
    }

    /// Sends one request; the reply, and whether it came on a connection
    /// an earlier call opened.
    fn transmit<B>(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: B,
        upload: Option<Arc<Progress>>,
        mut sink: Sink<'_>,
    ) -> Result<(Reply, bool)>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // A `#` would end the path there (the rest never sent): refused,
        // as a name that holds one is ([`path_name`]).
        if path.contains('#') {
            return Err(ClientError::BadRequest {
                what: format!("{method} {path}"),
                reason:
                    "a request path cannot hold '#' (it would be sent cut there); nothing was sent"
                        .into(),
            });
        }
        let route = path.split('?').next().unwrap_or(path);
        let what = format!("{method} {route}");
        let lim = limits(&self.timeouts, method, path);
        let fut = async {
            let mut builder = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header("host", self.addr.to_string());
            if let Some(s) = &self.session {
                builder = builder.header("authorization", format!("Bearer {s}"));
            }
            if let Some(ct) = content_type {
                builder = builder.header("content-type", ct);
            }
            let mut req = builder
                .body(body.map_err(Into::into).boxed_unsync())
                .map_err(|e| ClientError::Http(e.to_string()))?;
            let failed =
                |e: hyper::Error| ClientError::Http(format!("{what} to {}: {e}", self.who()));
            let after = lim.wait_len();
            let deadline = || tokio::time::Instant::now() + after;
            let mut at;
            // The open connection first. A request it did not send (the
            // device closed the connection meanwhile) goes on a new one;
            // one it sent is never sent twice.
            let open = self.conn.lock().ok().and_then(|mut c| c.take());
            let mut reused = false;
            let (sender, peer, resp) = 'sent: {
                if let Some((mut sender, peer)) = open {
                    // A closed connection fails `ready`, and `req` is still ours.
                    if sender.ready().await.is_ok() {
                        at = deadline();
                        match self
                            .head(
                                sender.try_send_request(req),
                                at,
                                after,
                                upload.as_deref(),
                                &what,
                            )
                            .await?
                        {
                            Ok(resp) => {
                                reused = true;
                                break 'sent (sender, peer, resp);
                            }
                            Err(mut e) => match e.take_message() {
                                Some(r) => req = r,
                                None => return Err(failed(e.into_error())),
                            },
                        }
                    }
                }
                let (mut sender, peer) = self.connect().await?;
                at = deadline();
                let resp = self
                    .head(
                        sender.send_request(req),
                        at,
                        after,
                        upload.as_deref(),
                        &what,
                    )
                    .await?
                    .map_err(failed)?;
                (sender, peer, resp)
            };
            let status = resp.status().as_u16();
            let ok = (200..300).contains(&status);
            let declared = resp
                .headers()
                .get(hyper::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            // An error answer is read (small) whatever the route.
            let cap = if ok { lim.cap } else { JSON_CAP };
            let too_large = || ClientError::TooLarge {
                device: self.who(),
                what: format!("the answer to {what}"),
                limit: cap,
                why: "more than a device sends for it; the tool stopped reading it. Check what answers at this address",
            };
            if declared.is_some_and(|n| n > cap) {
                return Err(too_large());
            }
            let mut body = resp.into_body();
            let mut got: u64 = 0;
            let mut bytes = Vec::new();
            // An upload's answer body gets its own time from the head on.
            if upload.is_some() {
                at = deadline();
            }
            // A streamed body: windows from the head on, each of which
            // must bring its share at the minimum rate. Time spent writing
            // the body out to its destination is not counted against the
            // device (neither here nor in a total deadline).
            let mut window = tokio::time::Instant::now();
            let mut window_got: u64 = 0;
            loop {
                let wake = match lim.wait {
                    Wait::Total(_) => at,
                    Wait::Streamed(w) => window + w,
                };
                let next = match tokio::time::timeout_at(wake, body.frame()).await {
                    Ok(next) => Some(next),
                    Err(_) if matches!(lim.wait, Wait::Total(_)) => {
                        return Err(self.timeout(format!("the answer to {what}"), after));
                    }
                    Err(_) => None,
                };
                if let Some(next) = next {
                    let Some(frame) = next else { break };
                    let frame = frame.map_err(|e| {
                        ClientError::Http(format!(
                            "{}: reading the answer to {what}: {e}",
                            self.who()
                        ))
                    })?;
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    got += data.len() as u64;
                    window_got += data.len() as u64;
                    if got > cap {
                        return Err(too_large());
                    }
                    match (&mut sink, ok) {
                        (Sink::Stream(out), true) => {
                            let writing = tokio::time::Instant::now();
                            out.write_all(&data).map_err(|e| ClientError::WriteAnswer {
                                request: what.clone(),
                                reason: e.to_string(),
                            })?;
                            // The time the destination took (a slow disk, a
                            // full pipe) is ours, not the device's: its
                            // deadlines move on by it.
                            let ours = writing.elapsed();
                            window += ours;
                            at += ours;
                        }
                        _ => bytes.extend_from_slice(&data),
                    }
                }
                if let Wait::Streamed(w) = lim.wait
                    && tokio::time::Instant::now() >= window + w
                {
                    let need =
                        u64::try_from(u128::from(self.timeouts.min_rate) * w.as_millis() / 1000)
                            .unwrap_or(u64::MAX);
                    if window_got < need {
                        return Err(self.timeout(
                            format!(
                                "sending {need} bytes of the answer to {what} (the minimum \
                                 rate, {} bytes/s; it sent {window_got} in that time)",
                                self.timeouts.min_rate
                            ),
                            w,
                        ));
                    }
                    window = tokio::time::Instant::now();
                    window_got = 0;
                }
            }
            // Kept for the next call unless the device is closing it.
            if !sender.is_closed()
                && let Ok(mut c) = self.conn.lock()
            {
                *c = Some((sender, peer.clone()));
            }
            let body = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| serde_json::json!({"text": String::from_utf8_lossy(&bytes)}));
            Ok::<_, ClientError>((
                Reply {
                    status,
                    body,
                    raw: bytes,
                    peer,
                    request: format!("{method} {path}"),
                    device: self.who(),
                },
                reused,
            ))
        };
        self.rt.block_on(fut)
    }

    /// A call that must succeed with 2xx, its JSON as it came (for probes
    /// and tests that look at what a device answers to anything; the
    /// tool's own calls use [`DeviceClient::get`], [`DeviceClient::request`]
    /// and [`DeviceClient::send`]).
    pub fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        Ok(self.ok_reply(method, path, body)?.body)
    }

    /// [`DeviceClient::ok`] keeping the whole [`Reply`] (its connection's
    /// peer chain with it).
    pub fn ok_reply(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Reply> {
        self.call(method, path, body)?.success()
    }

    /// `method path` with `body` serialised as JSON: the whole [`Reply`],
    /// whatever its status ([`Reply::answer`] reads it as the route's
    /// answer type).
    pub fn call_with<B: Serialize + ?Sized>(
        &self,
        method: &str,
        path: &str,
        body: &B,
    ) -> Result<Reply> {
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::BadRequest {
            what: format!("{method} {path}: the request"),
            reason: e.to_string(),
        })?;
        self.call_raw(method, path, Some(bytes), "application/json")
    }

    /// `GET path`: the answer as `A`, the type the route answers with
    /// ([`Reply::answer`]).
    pub fn get<A: DeserializeOwned>(&self, path: &str) -> Result<A> {
        self.request("GET", path)
    }

    /// `method path` without a body (`POST /api/v1/logout`, a `DELETE`):
    /// the answer as `A` ([`Reply::answer`]).
    pub fn request<A: DeserializeOwned>(&self, method: &str, path: &str) -> Result<A> {
        self.call(method, path, None)?.answer()
    }

    /// `method path` with `body` (the route's request type) as JSON: the
    /// answer as `A` ([`Reply::answer`]).
    pub fn send<B: Serialize + ?Sized, A: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: &B,
    ) -> Result<A> {
        self.call_with(method, path, body)?.answer()
    }

    /// Logs in and keeps the session. The password goes only over a
    /// connection whose handshake proved the device (a refused device
    /// gets no request at all).
    pub fn login(&mut self, username: &str, password: &str) -> Result<LoginAnswer> {
        let mut req = LoginRequest {
            username: username.to_string(),
            password: password.to_string(),
        };
        let sent = self.send::<_, LoginAnswer>("POST", "/api/v1/login", &req);
        zeroize::Zeroize::zeroize(&mut req.password);
        let a = sent?;
        self.session = Some(a.session.clone());
        Ok(a)
    }

    /// Ends the session (`POST /api/v1/logout`).
    pub fn logout(&self) -> Result<LogoutAnswer> {
        self.request("POST", "/api/v1/logout")
    }
}

impl Limits {
    fn wait_len(&self) -> Duration {
        match self.wait {
            Wait::Total(d) | Wait::Streamed(d) => d,
        }
    }
}

/// A writer that counts what passes.
struct Counted<'a> {
    inner: &'a mut dyn std::io::Write,
    n: u64,
}

impl std::io::Write for Counted<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A blocking TCP stream with one total deadline for everything read and
/// written through it (the synchronous TLS probes): before each read or
/// write the socket's timeout is set to the time left, and once none is
/// left the operation fails with [`std::io::ErrorKind::TimedOut`]. A peer
/// that trickles one byte at a time therefore cannot stretch the step
/// beyond the deadline ([`deadline_error`] names it).
#[derive(Debug)]
pub(crate) struct DeadlineStream {
    /// The socket.
    pub tcp: std::net::TcpStream,
    deadline: Instant,
}

impl DeadlineStream {
    /// `tcp` with `within` from now.
    pub(crate) fn new(tcp: std::net::TcpStream, within: Duration) -> Self {
        DeadlineStream {
            tcp,
            deadline: Instant::now() + within,
        }
    }

    /// A new deadline, `within` from now (the next step).
    pub(crate) fn restart(&mut self, within: Duration) {
        self.deadline = Instant::now() + within;
    }

    fn left(&self) -> std::io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the deadline passed",
            ));
        }
        Ok(left)
    }
}

impl std::io::Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.left()?;
        self.tcp.set_read_timeout(Some(left))?;
        std::io::Read::read(&mut self.tcp, buf)
    }
}

impl std::io::Write for DeadlineStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let left = self.left()?;
        self.tcp.set_write_timeout(Some(left))?;
        std::io::Write::write(&mut self.tcp, buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::Write::flush(&mut self.tcp)
    }
}

/// An I/O error of a step done through a [`DeadlineStream`]: the deadline
/// (a timeout or the socket's own) as [`ClientError::Timeout`] naming the
/// device at `addr` and `what`; anything else as `TLS with ADDR: ...`.
pub(crate) fn deadline_error(
    e: &std::io::Error,
    addr: SocketAddr,
    what: &str,
    within: Duration,
) -> ClientError {
    if matches!(
        e.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    ) {
        ClientError::Timeout {
            device: format!("the device at {addr}"),
            what: what.into(),
            secs: within.as_secs().max(1),
        }
    } else {
        ClientError::Tls {
            device: addr.to_string(),
            reason: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rcgen::{DistinguishedName, DnType};

    fn cert(attrs: &[(DnType, &str)]) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = DistinguishedName::new();
        for (t, v) in attrs {
            dn.push(t.clone(), *v);
        }
        p.distinguished_name = dn;
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    /// A CA of `kind` in a new directory under `dir`.
    fn ca(dir: &Path, kind: drivesec_pki::CaKind) -> drivesec_pki::Ca {
        drivesec_pki::Ca::init(
            &dir.join(kind.as_str()),
            &drivesec_pki::CaOptions::new(kind, "Test Drives"),
        )
        .unwrap()
    }

    /// A certificate of `profile` from `ca` over a fresh key (DER).
    fn issue(ca: &mut drivesec_pki::Ca, profile: drivesec_pki::Profile) -> Vec<u8> {
        issue_with_key(ca, profile).0
    }

    /// [`issue`], with the key (PKCS#8 DER).
    fn issue_with_key(
        ca: &mut drivesec_pki::Ca,
        profile: drivesec_pki::Profile,
    ) -> (Vec<u8>, Vec<u8>) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let der = ca
            .issue(&drivesec_pki::IssueRequest {
                profile,
                key: drivesec_pki::SubjectKey::CsrPem {
                    source: "test".into(),
                    pem: csr,
                },
            })
            .unwrap()
            .der;
        (der, key.serialize_der())
    }

    /// A device on loopback with an LDevID of `oem`, answering one request
    /// with `body` in 8 KiB pieces, promptly; the trust that recognises it.
    fn streaming_device(dir: &Path, body: Vec<u8>) -> (SocketAddr, DeviceTrust) {
        use std::io::{Read, Write};
        let mut oem = ca(dir, drivesec_pki::CaKind::Oem);
        let (ldevid, key) = issue_with_key(
            &mut oem,
            drivesec_pki::Profile::LdevId {
                serial_number: "SN-1".into(),
                device_name: "drive-001.lab.drivesec".into(),
                ip_addresses: vec!["127.0.0.1".parse().unwrap()],
                days: 30,
            },
        );
        let chain = vec![
            CertificateDer::from(ldevid),
            CertificateDer::from(oem.issuing_der().to_vec()),
        ];
        let cfg = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, rustls::pki_types::PrivateKeyDer::Pkcs8(key.into()))
            .unwrap(),
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let conn = rustls::ServerConnection::new(cfg).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if tls.read(&mut b).unwrap_or(0) == 0 {
                    return;
                }
                head.push(b[0]);
            }
            let _ = write!(
                tls,
                "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n\
                 content-length: {}\r\n\r\n",
                body.len()
            );
            for piece in body.chunks(8 << 10) {
                if tls.write_all(piece).and_then(|_| tls.flush()).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = tls.read(&mut b);
        });
        let root = oem.root_der().to_vec();
        (
            addr,
            DeviceTrust::owned(
                vec![CertificateDer::from(root)],
                "drive-001.lab.drivesec",
                Some("SN-1".into()),
                Revocation::UncheckedRisky,
            ),
        )
    }

    /// A destination that stalls on its first write (a disk that spins up,
    /// a pipe whose reader is busy) for longer than the rate window.
    struct StallsOnce {
        got: Vec<u8>,
        stall: Option<Duration>,
    }

    impl std::io::Write for StallsOnce {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Some(d) = self.stall.take() {
                std::thread::sleep(d);
            }
            self.got.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_slow_destination_is_not_blamed_on_the_device() {
        let t = tempfile::tempdir().unwrap();
        let body: Vec<u8> = (0..256u32 << 10).map(|i| (i % 251) as u8).collect();
        let (addr, trust) = streaming_device(t.path(), body.clone());
        // Windows of 1 s that must each bring 64 KiB: the device sends far
        // faster, but the destination takes 2.5 s over its first piece.
        let c = DeviceClient::new(addr, None, &trust, Versions::Default)
            .unwrap()
            .with_timeouts(Timeouts {
                response: Duration::from_secs(1),
                min_rate: 64 << 10,
                ..Timeouts::default()
            });
        let mut out = StallsOnce {
            got: Vec::new(),
            stall: Some(Duration::from_millis(2500)),
        };
        let n = c
            .download("/api/v1/audit/export", &mut out)
            .unwrap_or_else(|e| panic!("the destination's stall was blamed on the device: {e}"));
        assert_eq!(n, body.len() as u64);
        assert!(out.got == body, "the answer arrived whole");
    }

    #[test]
    fn only_an_ldevid_identifies_a_device() {
        let t = tempfile::tempdir().unwrap();
        let mut oem = ca(t.path(), drivesec_pki::CaKind::Oem);
        let mut mfg = ca(t.path(), drivesec_pki::CaKind::Manufacturer);
        let ldevid = issue(
            &mut oem,
            drivesec_pki::Profile::LdevId {
                serial_number: "SN-10".into(),
                device_name: "drive-001.lab.drivesec".into(),
                ip_addresses: vec!["127.0.0.1".parse().unwrap()],
                days: 30,
            },
        );
        assert_eq!(ldevid_serial(&ldevid).unwrap(), "SN-10");
        let server = issue(
            &mut oem,
            drivesec_pki::Profile::Server {
                dns_names: vec!["drive-001.lab.drivesec".into()],
                ip_addresses: vec![],
                days: 30,
            },
        );
        let client = issue(
            &mut oem,
            drivesec_pki::Profile::Client {
                name: "drive-001.lab.drivesec".into(),
                role: Some(drivesec_pki::Role::new("security-admin").unwrap()),
                days: 30,
            },
        );
        let idevid = issue(
            &mut mfg,
            drivesec_pki::Profile::IdevId {
                serial_number: "SN-10".into(),
                model: "iC7-Sim".into(),
            },
        );
        for (der, kind) in [
            (&server, "a server-profile certificate"),
            (&client, "a client-profile certificate"),
            (&idevid, "an IDevID"),
        ] {
            match ldevid_serial(der) {
                Err(PeerProblem::NotLdevid { kind: k, .. }) => assert_eq!(k, kind),
                other => panic!("{kind}: {other:?}"),
            }
        }
        // Named LDevID but not issued as one: refused all the same.
        let mut p = rcgen::CertificateParams::new(vec!["drive-001.lab.drivesec".into()]).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::OrganizationalUnitName, "LDevID");
        p.distinguished_name
            .push(rcgen::DnType::CustomDnType(vec![2, 5, 4, 5]), "SN-10");
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let fake = p
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap()
            .der()
            .to_vec();
        assert!(matches!(
            ldevid_serial(&fake),
            Err(PeerProblem::NotLdevid { .. })
        ));
    }

    #[test]
    fn a_stale_crl_is_kept_and_named() {
        let t = tempfile::tempdir().unwrap();
        let oem = ca(t.path(), drivesec_pki::CaKind::Oem);
        let (r, warnings) = Revocation::from_file(&oem.crl_path()).unwrap();
        assert!(matches!(&r, Revocation::Crls(c) if c.len() == 1));
        assert!(warnings.is_empty(), "{warnings:?}");
        let now = time::OffsetDateTime::now_utc();
        let stale = t.path().join("stale.pem");
        std::fs::write(
            &stale,
            oem.dangerous_crl(
                9,
                now - time::Duration::days(9),
                now - time::Duration::days(2),
            )
            .unwrap(),
        )
        .unwrap();
        let (r, warnings) = Revocation::from_file(&stale).unwrap();
        // Still applied (its revocations stay refused), and visible.
        assert!(matches!(&r, Revocation::Crls(c) if c.len() == 1));
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("stale.pem")
                && warnings[0].contains("past its nextUpdate")
                && warnings[0].contains("drivesec ca crl"),
            "{}",
            warnings[0]
        );
        let junk = t.path().join("junk.pem");
        std::fs::write(&junk, "not a CRL").unwrap();
        assert!(matches!(
            Revocation::from_file(&junk),
            Err(ClientError::BadFile { .. })
        ));
        // None given: missing (an error at the first connection) unless allowed.
        let (mut r, w) = Revocation::configured(None, false, || "set trust.crl".into()).unwrap();
        assert!(w.is_empty());
        assert!(matches!(r.crls(), Err(ClientError::MissingCrl(m)) if m == "set trust.crl"));
        let trust = DeviceTrust::owned(vec![], "d.example", None, r.clone());
        assert!(matches!(
            tls_config(
                "127.0.0.1:1".parse().unwrap(),
                None,
                &trust,
                Versions::Default
            ),
            Err(ClientError::MissingCrl(_))
        ));
        assert!(r.allow_missing().is_some());
        assert!(matches!(r, Revocation::UncheckedRisky));
        assert!(r.crls().unwrap().is_empty());
    }

    #[test]
    fn answers_are_capped_by_route() {
        let t = Timeouts::default();
        let cap = |m: &str, p: &str| limits(&t, m, p).cap;
        assert_eq!(cap("GET", "/api/v1/info"), JSON_CAP);
        assert_eq!(cap("POST", "/api/v1/login"), JSON_CAP);
        assert_eq!(cap("GET", "/api/v1/audit?limit=100"), AUDIT_RECORDS_CAP);
        assert_eq!(cap("GET", "/api/v1/audit/trail"), TRAIL_SNAPSHOT_CAP);
        // A segment: the prefix asked for, but never more than a segment
        // can be (the length asked for is the device's own claim).
        assert_eq!(
            cap(
                "GET",
                "/api/v1/audit/trail/segment?name=00000001.seg&bytes=4096"
            ),
            4096
        );
        assert_eq!(
            cap(
                "GET",
                "/api/v1/audit/trail/segment?name=00000001.seg&bytes=314572800"
            ),
            SEGMENT_CAP
        );
        assert_eq!(
            cap("GET", "/api/v1/audit/trail/segment?name=00000001.seg"),
            SEGMENT_CAP
        );
        assert_eq!(cap("GET", "/api/v1/audit/export"), EXPORT_CAP);
        assert!(matches!(
            limits(&t, "POST", "/api/v1/firmware/reboot").wait,
            Wait::Total(d) if d == t.slow_response
        ));
        assert!(matches!(
            limits(&t, "GET", "/api/v1/audit/export").wait,
            Wait::Streamed(d) if d == t.response
        ));
    }

    /// A reply to `GET /api/v1/users` with `status` and body `raw`.
    fn reply(status: u16, raw: &str) -> Reply {
        Reply {
            status,
            body: serde_json::from_str(raw).unwrap_or_else(|_| serde_json::json!({ "text": raw })),
            raw: raw.as_bytes().to_vec(),
            peer: Vec::new().into(),
            request: "GET /api/v1/users".into(),
            device: "drive-001.lab.drivesec at 127.0.0.1:8443".into(),
        }
    }

    #[test]
    fn a_typed_answer_parses_whole_or_names_what_did_not() {
        use drivesec_api::accounts::UserListAnswer;
        let user = r#"{"delayed_until":null,"failed_attempts":0,"locked_by_admin_only":false,
            "locked_certificates":[],"locked_until":null,"password_changed":"2026-01-01T00:00:00Z",
            "password_expired":false,"role":"viewer","role_since":null,"username":"ada"}"#;
        let a: UserListAnswer = reply(200, &format!(r#"{{"users":[{user}]}}"#))
            .answer()
            .unwrap();
        assert_eq!(a.users[0].username, "ada");
        // A missing field, a value of another type deep inside, not JSON,
        // something after the JSON: an error naming the request, the type
        // and where, never a default.
        for (raw, want) in [
            (r#"{}"#.to_string(), "missing field `users`"),
            (
                format!(
                    r#"{{"users":[{}]}}"#,
                    user.replace(r#""failed_attempts":0"#, r#""failed_attempts":"0""#)
                ),
                "`users[0].failed_attempts`: invalid type: string \"0\", expected u32",
            ),
            ("<html>".to_string(), "expected value"),
            (r#"{"users":[]} {}"#.to_string(), "trailing characters"),
        ] {
            let e = reply(200, &raw).answer::<UserListAnswer>().unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, ClientError::BadAnswer { .. }), "{msg}");
            assert!(
                msg.starts_with(
                    "drive-001.lab.drivesec at 127.0.0.1:8443: the answer to GET /api/v1/users \
                     is not what the device API defines: UserListAnswer: "
                ) && msg.contains(want),
                "{msg}"
            );
        }
    }

    #[test]
    fn an_error_answer_keeps_the_devices_code_and_words() {
        let e = reply(403, r#"{"error":"locked","message":"locked for 5 s"}"#)
            .answer::<drivesec_api::accounts::UserListAnswer>()
            .unwrap_err();
        assert_eq!(e.to_string(), "GET /api/v1/users: 403 locked for 5 s");
        assert!(
            matches!(&e, ClientError::Rejected { status: 403, error: Some(b), .. } if b.error == "locked"),
            "{e:?}"
        );
        // Not an error body (a proxy's page, say): the answer as it came.
        let r = reply(502, "bad gateway");
        assert_eq!(r.error_body(), None);
        assert_eq!(r.error_message(), r#"{"text":"bad gateway"}"#);
        let e = r.success().unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"GET /api/v1/users: 502 {"text":"bad gateway"}"#
        );
        assert!(matches!(e, ClientError::Rejected { error: None, .. }));
        // A 2xx is itself.
        assert_eq!(reply(200, "{}").success().unwrap().status, 200);
    }

    #[test]
    fn a_long_error_message_is_cut_saying_how_much() {
        // 2000 bytes of two-byte characters: cut at a character boundary.
        let long = "\u{e9}".repeat(1000);
        let raw = serde_json::json!({"error": "bad", "message": long}).to_string();
        let e = reply(400, &raw).success().unwrap_err();
        let ClientError::Rejected { message, error, .. } = &e else {
            panic!("{e:?}")
        };
        assert!(
            message.starts_with(&"\u{e9}".repeat(512))
                && message.ends_with("... (976 more bytes of the device's message not shown)"),
            "{message}"
        );
        // The error body keeps all of it; a short message is itself.
        assert_eq!(error.as_ref().unwrap().message, long);
        assert_eq!(bounded_message("short".into()), "short");
        let odd = format!("a{}", "\u{e9}".repeat(600));
        assert!(
            bounded_message(odd).ends_with("(178 more bytes of the device's message not shown)")
        );
    }

    #[test]
    fn only_a_device_name_goes_into_a_path() {
        for good in ["operator", "op-2", "a.b_c", "0f3a9c", "speed-reference"] {
            assert_eq!(path_name("account", good).unwrap(), good);
        }
        for bad in [
            "", "op#x", "op/role", "..", ".hidden", "-x", "Op", "a b", "op?x=1", "op%23", "\u{e9}",
        ] {
            let e = path_name("account", bad).unwrap_err();
            assert!(
                matches!(&e, ClientError::BadName { what: "account", name } if name == bad),
                "{bad}: {e:?}"
            );
            assert!(e.to_string().contains(&format!("account '{bad}'")), "{e}");
        }
    }

    #[test]
    fn an_enum_is_named_as_on_the_wire() {
        assert_eq!(
            wire_name(&drivesec_api::device::LifeCycle::Commissioned),
            "commissioned"
        );
        assert_eq!(
            wire_name(&drivesec_api::drive::DriveState::SafeTorqueOff),
            "safe-torque-off"
        );
        assert_eq!(wire_name(&7u8), "7");
    }

    #[test]
    fn a_tampered_marker_is_recognised_only_as_the_whole_subject() {
        let t = cert(&[(DnType::CommonName, "TAMPERED SN-7")]);
        assert_eq!(tampered_marker(&t).as_deref(), Some("SN-7"));
        for other in [
            cert(&[(DnType::CommonName, "TAMPERED ")]),
            cert(&[(DnType::CommonName, "TAMPERED SN 7")]),
            cert(&[
                (DnType::OrganizationName, "x"),
                (DnType::CommonName, "TAMPERED SN-7"),
            ]),
        ] {
            assert_eq!(tampered_marker(&other), None);
        }
        let e = PeerProblem::Tampered {
            serial: "SN-7".into(),
        }
        .into_tls();
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        assert_eq!(
            peer_problem(&io),
            Some(PeerProblem::Tampered {
                serial: "SN-7".into()
            })
        );
    }
}

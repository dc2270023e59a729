//! Checking CRLs before a device adopts them (docs/pki.md, "CRL policy").
//!
//! A CRL is accepted only if it parses (both x509-parser and rustls-webpki,
//! the parser that enforces it, must take it), is a v2 CRL with a cRLNumber
//! and a nextUpdate, and is signed by one of the CAs the device knows to
//! issue its client certificates: a trust anchor, or an intermediate CA
//! certificate that chains to one ([`known_issuers`]). A set of CRLs
//! replaces the installed one issuer by issuer ([`merge`]), and each new
//! CRL's number must be greater than the installed CRL of the same issuer:
//! a replayed older CRL would bring revoked certificates back.

use std::cmp::Ordering;

use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

/// Why a CRL is refused. The text names the CRL (its position in the
/// input, its issuer) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CrlError {
    /// The input is neither DER nor PEM with `X509 CRL` blocks.
    #[error("not a CRL: {0}")]
    Malformed(String),
    /// The input holds no CRL at all.
    #[error("no X509 CRL found in the input")]
    Empty,
    /// A CRL does not parse.
    #[error("CRL {index} does not parse: {reason}")]
    Unparseable {
        /// 1-based position in the input.
        index: usize,
        /// The parser's complaint.
        reason: String,
    },
    /// A required field is missing (cRLNumber, nextUpdate, v2).
    #[error("CRL {index} from '{issuer}' has no {field}")]
    Missing {
        /// 1-based position in the input.
        index: usize,
        /// Its issuer.
        issuer: String,
        /// The field.
        field: &'static str,
    },
    /// No CA the device knows has the CRL's issuer name.
    #[error(
        "CRL {index} is issued by '{issuer}', which is not a CA that issues this device's client certificates; send the CRL of the owner's issuing CA (`drivesec ca crl`) or root"
    )]
    UnknownIssuer {
        /// 1-based position in the input.
        index: usize,
        /// Its issuer.
        issuer: String,
    },
    /// A known CA has the issuer's name but its key did not sign the CRL
    /// (another CA using the same name), or it may not sign CRLs.
    #[error("CRL {index} claims issuer '{issuer}' but is not signed by that CA's key: {reason}")]
    BadSignature {
        /// 1-based position in the input.
        index: usize,
        /// Its issuer.
        issuer: String,
        /// Why.
        reason: String,
    },
    /// thisUpdate is after nextUpdate.
    #[error("CRL {index} from '{issuer}': thisUpdate is after nextUpdate")]
    BadDates {
        /// 1-based position in the input.
        index: usize,
        /// Its issuer.
        issuer: String,
    },
    /// Two CRLs of one issuer in the same input.
    #[error("two CRLs from '{issuer}' in one input; send one CRL per issuer")]
    DuplicateIssuer {
        /// The issuer.
        issuer: String,
    },
    /// The CRL is not newer than the installed one of the same issuer.
    #[error(
        "CRL number {number} from '{issuer}' is not greater than the installed CRL number {installed}: an older or replayed CRL is refused; send a newer one (`drivesec ca crl` signs the next number)"
    )]
    NotNewer {
        /// The issuer.
        issuer: String,
        /// The new CRL's number (decimal).
        number: String,
        /// The installed CRL's number (decimal).
        installed: String,
    },
}

impl CrlError {
    /// A short machine-readable name of the reason.
    pub fn code(&self) -> &'static str {
        match self {
            CrlError::Malformed(_) | CrlError::Empty | CrlError::Unparseable { .. } => {
                "crl-malformed"
            }
            CrlError::Missing { .. } | CrlError::BadDates { .. } => "crl-incomplete",
            CrlError::UnknownIssuer { .. } => "crl-unknown-issuer",
            CrlError::BadSignature { .. } => "crl-bad-signature",
            CrlError::DuplicateIssuer { .. } => "crl-duplicate-issuer",
            CrlError::NotNewer { .. } => "crl-not-newer",
        }
    }
}

/// A CRL number: a non-negative INTEGER of up to 20 octets (RFC 5280
/// §5.2.3), kept as minimal big-endian bytes and compared as a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlNumber(Vec<u8>);

impl CrlNumber {
    fn from_be(bytes: &[u8]) -> Self {
        let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        CrlNumber(bytes[start..].to_vec())
    }
}

impl PartialOrd for CrlNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for CrlNumber {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0
            .len()
            .cmp(&other.0.len())
            .then_with(|| self.0.cmp(&other.0))
    }
}

impl std::fmt::Display for CrlNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = x509_parser::num_bigint::BigUint::from_bytes_be(&self.0);
        write!(f, "{n}")
    }
}

/// A CRL that passed [`verify_crl`].
#[derive(Debug, Clone)]
pub struct CrlInfo {
    /// The CRL, DER.
    pub der: CertificateRevocationListDer<'static>,
    /// Its issuer (RFC 4514 style).
    pub issuer: String,
    /// Its issuer name, DER (what identifies the issuer).
    pub issuer_der: Vec<u8>,
    /// Its cRLNumber.
    pub number: CrlNumber,
    /// thisUpdate.
    pub this_update: OffsetDateTime,
    /// nextUpdate.
    pub next_update: OffsetDateTime,
    /// Serials of the certificates it revokes (lower-case hex).
    pub revoked: Vec<String>,
}

impl CrlInfo {
    /// The CRL as PEM (`X509 CRL`, LF line endings).
    pub fn pem(&self) -> String {
        pem::encode_config(
            &pem::Pem::new("X509 CRL", self.der.as_ref().to_vec()),
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        )
    }

    /// Whether `at` is past nextUpdate.
    pub fn is_overdue(&self, at: OffsetDateTime) -> bool {
        at > self.next_update
    }
}

/// Splits `input` into CRLs: PEM (every block must be `X509 CRL`) or one
/// DER CRL.
pub fn parse_crls(input: &[u8]) -> Result<Vec<CertificateRevocationListDer<'static>>, CrlError> {
    let text_start = input
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(input.len());
    if input[text_start..].starts_with(b"-----BEGIN") {
        let blocks =
            pem::parse_many(input).map_err(|e| CrlError::Malformed(format!("bad PEM: {e}")))?;
        let mut out = Vec::new();
        for (i, b) in blocks.into_iter().enumerate() {
            if b.tag() != "X509 CRL" {
                return Err(CrlError::Malformed(format!(
                    "PEM block {} is '{}', not 'X509 CRL'",
                    i + 1,
                    b.tag()
                )));
            }
            out.push(CertificateRevocationListDer::from(b.into_contents()));
        }
        if out.is_empty() {
            return Err(CrlError::Empty);
        }
        Ok(out)
    } else if input.first() == Some(&0x30) {
        Ok(vec![CertificateRevocationListDer::from(input.to_vec())])
    } else if input[text_start..].is_empty() {
        Err(CrlError::Empty)
    } else {
        Err(CrlError::Malformed(
            "neither PEM ('-----BEGIN X509 CRL-----') nor DER".into(),
        ))
    }
}

fn ca_cert(der: &[u8]) -> Option<X509Certificate<'_>> {
    let (rest, c) = X509Certificate::from_der(der).ok()?;
    (rest.is_empty() && c.is_ca()).then_some(c)
}

/// The CAs whose CRLs a device accepts: every trust anchor, and every
/// intermediate CA certificate whose signature verifies under an anchor
/// or an intermediate already accepted (so a stray certificate in a chain
/// file does not become a CRL issuer). Non-CA certificates are left out.
pub fn known_issuers(
    anchors: &[CertificateDer<'_>],
    intermediates: &[CertificateDer<'_>],
) -> Vec<CertificateDer<'static>> {
    let mut known: Vec<CertificateDer<'static>> =
        anchors.iter().map(|a| a.clone().into_owned()).collect();
    let mut pending: Vec<&CertificateDer<'_>> = intermediates
        .iter()
        .filter(|c| ca_cert(c).is_some() && !known.iter().any(|k| k.as_ref() == c.as_ref()))
        .collect();
    loop {
        let before = pending.len();
        pending.retain(|c| {
            let Some(cert) = ca_cert(c) else { return false };
            let signed_by_known = known.iter().any(|k| {
                X509Certificate::from_der(k).is_ok_and(|(_, issuer)| {
                    issuer.subject().as_raw() == cert.issuer().as_raw()
                        && cert.verify_signature(Some(issuer.public_key())).is_ok()
                })
            });
            if signed_by_known {
                known.push((*c).clone().into_owned());
            }
            !signed_by_known
        });
        if pending.len() == before {
            return known;
        }
    }
}

/// Parses and checks one CRL (DER): it must parse, carry a cRLNumber and a
/// nextUpdate, and be signed by one of `issuers` (a CA certificate with
/// the CRL's issuer name, whose keyUsage, if present, allows cRLSign).
/// `index` (1-based) names the CRL in errors.
pub fn verify_crl(
    der: &CertificateRevocationListDer<'_>,
    issuers: &[CertificateDer<'_>],
    index: usize,
) -> Result<CrlInfo, CrlError> {
    let unparseable = |reason: String| CrlError::Unparseable { index, reason };
    let (rest, crl) =
        x509_parser::parse_x509_crl(der.as_ref()).map_err(|e| unparseable(e.to_string()))?;
    if !rest.is_empty() {
        return Err(unparseable(format!("{} bytes after the CRL", rest.len())));
    }
    // The verifier that enforces it must take it too.
    webpki::BorrowedCertRevocationList::from_der(der.as_ref())
        .map_err(|e| unparseable(format!("{e:?}")))?;
    let issuer = crl.issuer().to_string();
    let missing = |field| CrlError::Missing {
        index,
        issuer: issuer.clone(),
        field,
    };
    let number = crl
        .crl_number()
        .map(|n| CrlNumber::from_be(&n.to_bytes_be()))
        .ok_or_else(|| missing("cRLNumber"))?;
    let next_update = crl
        .next_update()
        .map(|t| t.to_datetime())
        .ok_or_else(|| missing("nextUpdate"))?;
    let this_update = crl.last_update().to_datetime();
    if this_update > next_update {
        return Err(CrlError::BadDates { index, issuer });
    }
    let mut named = false;
    let mut why = String::new();
    for cand in issuers {
        let Ok((_, cert)) = X509Certificate::from_der(cand) else {
            continue;
        };
        if cert.subject().as_raw() != crl.issuer().as_raw() {
            continue;
        }
        named = true;
        if !cert.is_ca() {
            why = "the certificate with that name is not a CA".into();
            continue;
        }
        if let Ok(Some(ku)) = cert.key_usage()
            && !ku.value.crl_sign()
        {
            why = "the CA's keyUsage does not allow cRLSign".into();
            continue;
        }
        match crl.verify_signature(cert.public_key()) {
            Ok(()) => {
                return Ok(CrlInfo {
                    der: CertificateRevocationListDer::from(der.as_ref().to_vec()),
                    issuer,
                    issuer_der: crl.issuer().as_raw().to_vec(),
                    number,
                    this_update,
                    next_update,
                    revoked: crl
                        .iter_revoked_certificates()
                        .map(|r| hex::encode(r.raw_serial()))
                        .collect(),
                });
            }
            Err(e) => why = format!("the signature does not verify ({e})"),
        }
    }
    if named {
        Err(CrlError::BadSignature {
            index,
            issuer,
            reason: why,
        })
    } else {
        Err(CrlError::UnknownIssuer { index, issuer })
    }
}

/// Parses (DER or PEM) and checks every CRL in `input` against `issuers`;
/// at most one CRL per issuer.
pub fn verify_crls(input: &[u8], issuers: &[CertificateDer<'_>]) -> Result<Vec<CrlInfo>, CrlError> {
    let mut out: Vec<CrlInfo> = Vec::new();
    for (i, der) in parse_crls(input)?.iter().enumerate() {
        let info = verify_crl(der, issuers, i + 1)?;
        if out.iter().any(|o| o.issuer_der == info.issuer_der) {
            return Err(CrlError::DuplicateIssuer {
                issuer: info.issuer,
            });
        }
        out.push(info);
    }
    Ok(out)
}

/// The installed set after `new` replaces, issuer by issuer, the CRLs of
/// `installed`: each new CRL's number must be greater than the installed
/// one of its issuer; CRLs of other issuers stay. Installed CRLs come
/// first, in their order, the new issuers' after them.
pub fn merge(installed: &[CrlInfo], new: Vec<CrlInfo>) -> Result<Vec<CrlInfo>, CrlError> {
    for n in &new {
        if let Some(old) = installed.iter().find(|o| o.issuer_der == n.issuer_der)
            && n.number <= old.number
        {
            return Err(CrlError::NotNewer {
                issuer: n.issuer.clone(),
                number: n.number.to_string(),
                installed: old.number.to_string(),
            });
        }
    }
    let mut out: Vec<CrlInfo> = Vec::new();
    let mut new = new;
    for old in installed {
        match new.iter().position(|n| n.issuer_der == old.issuer_der) {
            Some(i) => out.push(new.remove(i)),
            None => out.push(old.clone()),
        }
    }
    out.extend(new);
    Ok(out)
}

/// The set as one PEM text, one `X509 CRL` block per issuer.
pub fn to_pem(set: &[CrlInfo]) -> String {
    set.iter().map(CrlInfo::pem).collect()
}

#[cfg(test)]
mod tests;

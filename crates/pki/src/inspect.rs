//! A readable summary of a certificate, for listings, tests and `--json`.

use serde::Serialize;
use sha2::{Digest, Sha256};
use x509_parser::extensions::{GeneralName, ParsedExtension};

use crate::role::{ROLE_EXTENSION_OID_STR, role_of_cert};
use crate::{PkiError, Result};

/// What a certificate says, in plain fields.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CertSummary {
    /// Subject DN (RFC 4514 style).
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// Serial number, lower-case hex.
    pub serial: String,
    /// Not valid before (RFC 3339).
    pub not_before: String,
    /// Not valid after (RFC 3339).
    pub not_after: String,
    /// basicConstraints cA.
    pub is_ca: bool,
    /// keyUsage bits set, by name.
    pub key_usage: Vec<String>,
    /// Whether keyUsage is marked critical.
    pub key_usage_critical: bool,
    /// extendedKeyUsage purposes, by name.
    pub extended_key_usage: Vec<String>,
    /// subjectAltName entries, as `DNS:..`, `IP:..`, `URI:..`.
    pub subject_alt_names: Vec<String>,
    /// Subject key identifier, hex.
    pub subject_key_id: Option<String>,
    /// Authority key identifier, hex.
    pub authority_key_id: Option<String>,
    /// The Modbus/TCP Security role, if exactly one valid role extension is present.
    pub role: Option<String>,
    /// Whether a role extension is present and marked critical.
    pub role_extension_critical: Option<bool>,
    /// SHA-256 of the DER certificate, hex.
    pub sha256_fingerprint: String,
}

fn rfc3339(t: x509_parser::time::ASN1Time) -> String {
    t.to_datetime()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// Summarises a DER certificate.
pub fn summarize(der: &[u8]) -> Result<CertSummary> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::Invalid(format!("not an X.509 certificate: {e}")))?;
    let mut s = CertSummary {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: hex::encode(cert.raw_serial()),
        not_before: rfc3339(cert.validity().not_before),
        not_after: rfc3339(cert.validity().not_after),
        is_ca: cert.is_ca(),
        key_usage: Vec::new(),
        key_usage_critical: false,
        extended_key_usage: Vec::new(),
        subject_alt_names: Vec::new(),
        subject_key_id: None,
        authority_key_id: None,
        role: role_of_cert(der)?.map(|r| r.to_string()),
        role_extension_critical: None,
        sha256_fingerprint: hex::encode(Sha256::digest(der)),
    };
    for ext in cert.extensions() {
        if ext.oid.to_id_string() == ROLE_EXTENSION_OID_STR {
            s.role_extension_critical = Some(ext.critical);
        }
        match ext.parsed_extension() {
            ParsedExtension::KeyUsage(ku) => {
                s.key_usage_critical = ext.critical;
                let names = [
                    (ku.digital_signature(), "digitalSignature"),
                    (ku.non_repudiation(), "nonRepudiation"),
                    (ku.key_encipherment(), "keyEncipherment"),
                    (ku.data_encipherment(), "dataEncipherment"),
                    (ku.key_agreement(), "keyAgreement"),
                    (ku.key_cert_sign(), "keyCertSign"),
                    (ku.crl_sign(), "cRLSign"),
                ];
                s.key_usage = names
                    .iter()
                    .filter(|(on, _)| *on)
                    .map(|(_, n)| n.to_string())
                    .collect();
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                let names = [
                    (eku.server_auth, "serverAuth"),
                    (eku.client_auth, "clientAuth"),
                    (eku.code_signing, "codeSigning"),
                    (eku.email_protection, "emailProtection"),
                    (eku.time_stamping, "timeStamping"),
                    (eku.ocsp_signing, "OCSPSigning"),
                    (eku.any, "anyExtendedKeyUsage"),
                ];
                s.extended_key_usage = names
                    .iter()
                    .filter(|(on, _)| *on)
                    .map(|(_, n)| n.to_string())
                    .collect();
            }
            ParsedExtension::SubjectAlternativeName(san) => {
                for n in &san.general_names {
                    s.subject_alt_names.push(match n {
                        GeneralName::DNSName(d) => format!("DNS:{d}"),
                        GeneralName::URI(u) => format!("URI:{u}"),
                        GeneralName::RFC822Name(e) => format!("email:{e}"),
                        GeneralName::IPAddress(ip) => match ip.len() {
                            4 => format!(
                                "IP:{}",
                                std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3])
                            ),
                            16 => {
                                let mut b = [0u8; 16];
                                b.copy_from_slice(ip);
                                format!("IP:{}", std::net::Ipv6Addr::from(b))
                            }
                            _ => format!("IP:{}", hex::encode(ip)),
                        },
                        other => format!("{other:?}"),
                    });
                }
            }
            ParsedExtension::SubjectKeyIdentifier(k) => s.subject_key_id = Some(hex::encode(k.0)),
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                s.authority_key_id = a.key_identifier.as_ref().map(|k| hex::encode(k.0))
            }
            _ => {}
        }
    }
    Ok(s)
}

/// The subject serialNumber attribute (OID 2.5.4.5) of a DER certificate,
/// as PrintableString or UTF8String text; an error unless there is exactly
/// one. The attribute is read whole, so an expected serial is compared
/// exactly, never found inside a longer one or another attribute's text
/// (as a search of [`CertSummary::subject`] would).
pub fn subject_serial_number(der: &[u8]) -> Result<String> {
    use x509_parser::asn1_rs::Tag;
    let bad = |why: String| PkiError::Invalid(format!("certificate subject: {why}"));
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::Invalid(format!("not an X.509 certificate: {e}")))?;
    let mut found = Vec::new();
    for a in cert
        .subject()
        .iter_by_oid(&x509_parser::oid_registry::OID_X509_SERIALNUMBER)
    {
        if !matches!(a.attr_value().tag(), Tag::PrintableString | Tag::Utf8String) {
            return Err(bad("serialNumber is not a string".into()));
        }
        found.push(
            std::str::from_utf8(a.as_slice())
                .map_err(|_| bad("serialNumber is not text".into()))?
                .to_string(),
        );
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(bad("no serialNumber".into())),
        n => Err(bad(format!("{n} serialNumber attributes"))),
    }
}

/// The subject public key of a certificate, as a keystore [`drivesec_keystore::PublicKey`].
pub fn public_key(der: &[u8]) -> Result<drivesec_keystore::PublicKey> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::Invalid(format!("not an X.509 certificate: {e}")))?;
    let spki = cert.public_key();
    let alg = match spki.algorithm.algorithm.to_id_string().as_str() {
        "1.2.840.10045.2.1" => drivesec_keystore::KeyAlgorithm::EcdsaP256,
        "1.3.101.112" => drivesec_keystore::KeyAlgorithm::Ed25519,
        other => {
            return Err(PkiError::Invalid(format!(
                "unsupported public key algorithm {other}"
            )));
        }
    };
    Ok(drivesec_keystore::PublicKey::from_raw(
        alg,
        spki.subject_public_key.data.to_vec(),
    )?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rcgen::{DistinguishedName, DnType, DnValue};

    fn cert(attrs: &[(DnType, &str)]) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = DistinguishedName::new();
        for (t, v) in attrs {
            let v = match t {
                DnType::CustomDnType(_) => DnValue::PrintableString((*v).try_into().unwrap()),
                _ => DnValue::Utf8String((*v).into()),
            };
            dn.push(t.clone(), v);
        }
        p.distinguished_name = dn;
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    fn serial_dn() -> DnType {
        DnType::CustomDnType(vec![2, 5, 4, 5])
    }

    #[test]
    fn the_subject_serial_number_is_read_whole() {
        let der = cert(&[
            (DnType::OrganizationName, "Drives"),
            (DnType::CommonName, "iC7-Sim SN-10 serialNumber=SN-1"),
            (serial_dn(), "SN-10"),
        ]);
        assert_eq!(subject_serial_number(&der).unwrap(), "SN-10");
        let none = cert(&[(DnType::CommonName, "serialNumber=SN-1")]);
        assert!(subject_serial_number(&none).is_err());
        assert!(subject_serial_number(b"\x30\x05junk").is_err());
    }
}

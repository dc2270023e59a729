//! Reading PEM files with errors that name the file.

use std::path::Path;

use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};

use crate::{PkiError, Result};

fn bad(path: &Path, reason: impl Into<String>) -> PkiError {
    PkiError::BadInput {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Parses every `CERTIFICATE` block in `text` (read from `path`), checking each is X.509.
pub fn read_certs_pem(path: &Path, text: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let blocks = pem::parse_many(text).map_err(|e| bad(path, format!("malformed PEM: {e}")))?;
    let mut out = Vec::new();
    for (i, b) in blocks.iter().enumerate() {
        if b.tag() != "CERTIFICATE" {
            continue;
        }
        x509_parser::parse_x509_certificate(b.contents()).map_err(|e| {
            bad(
                path,
                format!("PEM block {} is not a valid X.509 certificate: {e}", i + 1),
            )
        })?;
        out.push(CertificateDer::from(b.contents().to_vec()));
    }
    if out.is_empty() {
        return Err(bad(path, "no CERTIFICATE block found"));
    }
    Ok(out)
}

/// Reads a PEM file of one or more certificates (leaf first).
pub fn read_cert_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let text = drivesec_fsutil::read(path)?;
    read_certs_pem(path, &text)
}

/// Reads a PEM `X509 CRL` file.
pub fn read_crl(path: &Path) -> Result<CertificateRevocationListDer<'static>> {
    let text = drivesec_fsutil::read(path)?;
    let blocks = pem::parse_many(&text).map_err(|e| bad(path, format!("malformed PEM: {e}")))?;
    let b = blocks
        .into_iter()
        .find(|b| b.tag() == "X509 CRL")
        .ok_or_else(|| bad(path, "no X509 CRL block found"))?;
    Ok(CertificateRevocationListDer::from(b.into_contents()))
}

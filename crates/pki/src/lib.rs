//! drivesec's public key infrastructure.
//!
//! * [`ca::Ca`]: a two-tier certification authority (self-signed root,
//!   issuing CA) whose keys live in a [`drivesec_keystore::KeyStore`]. A
//!   *manufacturer* CA issues IEEE 802.1AR IDevIDs; an *OEM* CA issues LDevIDs,
//!   server certificates and client certificates for tools and people.
//! * [`role`]: the Modbus/TCP Security role extension
//!   (OID 1.3.6.1.4.1.50316.802.1, a DER UTF8String, non-critical).
//! * [`verify`]: chain, usage, validity and CRL checks with rustls-webpki.
//! * [`crl`]: checking a CRL before a device adopts it: parse, issuer,
//!   signature, number (docs/pki.md, "CRL policy").
//! * [`inspect`]: a summary of a certificate for listings and `--json`.
//!
//! Profiles (keyUsage, extendedKeyUsage, validity, subject, SAN) are chosen by
//! the CA from the request's kind, never copied from a CSR: a CSR contributes
//! only its public key, after its self-signature has been checked.

pub mod ca;
pub mod crl;
pub mod inspect;
mod pemfile;
pub mod role;
pub mod verify;

pub use ca::{Ca, CaKind, CaOptions, IssueRequest, Issued, Profile, PublishedCrl, SubjectKey};
pub use crl::{CrlError, CrlInfo};
pub use pemfile::{read_cert_chain, read_certs_pem, read_crl};
pub use role::{BUILTIN_ROLES, ROLE_EXTENSION_OID, Role};

use std::path::PathBuf;

/// What went wrong in the PKI, naming the file or input concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// An input file is not what it should be (bad PEM, bad CSR, ...).
    #[error("{path}: {reason}")]
    BadInput {
        /// The file (or `-` / a description for non-file input).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A request is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The CA directory already exists.
    #[error("{path} already exists; refusing to create a CA over it")]
    CaExists {
        /// The directory.
        path: PathBuf,
    },
    /// The directory is not a drivesec CA.
    #[error("{path} is not a drivesec CA directory: {reason}")]
    NotACa {
        /// The directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// This CA may not issue this profile.
    #[error("a {ca} CA does not issue {profile} certificates")]
    WrongCaKind {
        /// The CA's kind.
        ca: &'static str,
        /// The profile asked for.
        profile: &'static str,
    },
    /// No certificate with this serial was issued by the CA.
    #[error("serial {0} was not issued by this CA")]
    UnknownSerial(String),
    /// Chain verification failed.
    #[error("certificate verification failed: {0}")]
    Verify(String),
    /// The keystore failed.
    #[error(transparent)]
    Keystore(#[from] drivesec_keystore::KeystoreError),
    /// A file operation failed.
    #[error(transparent)]
    Fs(#[from] drivesec_fsutil::FsError),
    /// A CRL was refused.
    #[error(transparent)]
    Crl(#[from] crate::crl::CrlError),
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// Result type of PKI operations.
pub type Result<T> = std::result::Result<T, PkiError>;

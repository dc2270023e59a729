//! The drivesec device runtime, run by `drivesecd`.
//!
//! * [`state`]: the state directory (factory or commissioned) and the checks
//!   that refuse to start on a corrupt or inconsistent one.
//! * [`config`]: the daemon configuration file.
//! * [`api`]: the HTTPS API (mutual TLS always; sessions bound to the client
//!   certificate; permission per operation; every security-relevant action
//!   recorded in the audit trail). docs/openapi.json describes it.
//! * [`posture`]: the security level achieved in the current configuration.

pub mod api;
pub mod config;
pub mod credential;
pub mod drive_loop;
pub mod firmware;
pub mod modbus;
pub mod posture;
pub mod provision;
mod runtime;
mod server;
pub mod state;
mod tls;

use std::path::PathBuf;

pub use runtime::{build, run};

/// Why the device runtime cannot do something.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The state directory is corrupt or inconsistent.
    #[error("refusing the state directory {path}: {reason}")]
    State {
        /// The directory or file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The configuration file is wrong.
    #[error("configuration {path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A request or value is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// Binding or serving failed.
    #[error("network: {0}")]
    Net(String),
    /// Keystore failure.
    #[error(transparent)]
    Keystore(#[from] drivesec_keystore::KeystoreError),
    /// PKI failure.
    #[error(transparent)]
    Pki(#[from] drivesec_pki::PkiError),
    /// Audit failure.
    #[error(transparent)]
    Audit(#[from] drivesec_audit::AuditError),
    /// Accounts failure.
    #[error(transparent)]
    Access(#[from] drivesec_access::AccessError),
    /// File system failure.
    #[error(transparent)]
    Fs(#[from] drivesec_fsutil::FsError),
}

/// Result type of the device crate.
pub type Result<T> = std::result::Result<T, DeviceError>;

/// Now, UTC, RFC 3339.
pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

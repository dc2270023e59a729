//! The people's side of drivesec.
//!
//! * [`factory`]: the manufacturer's provisioning station for one device:
//!   identity key generated in the device's keystore, IDevID signed by the
//!   manufacturer CA, a one-time per-device factory credential stored on the
//!   device only as an Argon2id hash.
//! * [`lab`]: a complete local lab (manufacturer CA, OEM CA, provisioned
//!   devices, one client certificate per built-in role) described by `lab.json`.
//! * [`demo`]: the end-to-end story `drivesec demo` tells.

pub mod attest;
pub mod client;
pub mod commission;
pub mod daemons;
pub mod demo;
pub mod evidence;
pub mod factory;
pub mod incident;
pub mod inventory;
pub mod lab;
pub mod modbus;
pub mod posture;
pub mod provision;
pub mod review;
pub mod rollout;
pub mod validate;

use std::path::PathBuf;

/// What went wrong on the OEM/manufacturer side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OemError {
    /// An input or option is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// A directory that must be new already exists.
    #[error("{path} already exists and is not empty; refusing to overwrite it")]
    Exists {
        /// The directory.
        path: PathBuf,
    },
    /// A file that should describe something does not.
    #[error("{path}: {reason}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A verification step of the demo failed.
    #[error("check failed: {0}")]
    Check(String),
    /// PKI failure.
    #[error(transparent)]
    Pki(#[from] drivesec_pki::PkiError),
    /// Keystore failure.
    #[error(transparent)]
    Keystore(#[from] drivesec_keystore::KeystoreError),
    /// Device state or runtime failure.
    #[error(transparent)]
    Device(#[from] drivesec_device::DeviceError),
    /// File system failure.
    #[error(transparent)]
    Fs(#[from] drivesec_fsutil::FsError),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, OemError>;

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
    /// A device did not answer in time (docs/incident-response.md, "Deadlines and sizes").
    #[error(
        "{device}: {what} took longer than {secs} s; check that the device runs and the network path to it, then run the command again"
    )]
    Timeout {
        /// The device (name and address).
        device: String,
        /// What it did not finish: the TCP connection, the TLS handshake, the answer to a request.
        what: String,
        /// The deadline, seconds.
        secs: u64,
    },
    /// A device's answer was larger than the tool takes for that request.
    #[error("{device}: {what} is larger than {limit} bytes, {why}")]
    TooLarge {
        /// The device (name and address).
        device: String,
        /// The answer.
        what: String,
        /// The cap, bytes.
        limit: u64,
        /// Why that is the cap, and what to do.
        why: &'static str,
    },
    /// The device's certificate did not prove it is the expected device;
    /// nothing was sent to it.
    #[error("{message}")]
    Refused {
        /// What was wrong, naming the device and what to do.
        message: String,
        /// The problem.
        problem: crate::client::PeerProblem,
    },
    /// No CRL is known for a connection that must check the owner's
    /// revocations (the message says where to give one).
    #[error("{0}")]
    MissingCrl(String),
    /// Commissioning failed after the OEM CA issued the device's LDevID.
    #[error("{message}")]
    CommissioningFailed {
        /// What happened and what to do next.
        message: String,
        /// The LDevID serial revoked because of it (None: revoking failed too).
        revoked: Option<String>,
    },
    /// A device answered a request with an error status (not 2xx).
    #[error("{request}: {status} {message}")]
    Rejected {
        /// The request, `METHOD PATH`.
        request: String,
        /// The HTTP status.
        status: u16,
        /// The device's error body (a stable `error` code and a
        /// `message`), when the answer was one.
        error: Option<drivesec_api::ErrorBody>,
        /// What the device said: the error body's message, or the answer
        /// as it came.
        message: String,
    },
    /// A device's answer to a request is not what the device API defines
    /// for that request (docs/openapi.json): nothing of it is used.
    #[error("{device}: the answer to {request} is not what the device API defines: {reason}")]
    BadAnswer {
        /// The device (name and address).
        device: String,
        /// The request, `METHOD PATH`.
        request: String,
        /// The answer type and what did not parse (the field, and why).
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

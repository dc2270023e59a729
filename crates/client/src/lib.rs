//! The people's side of drivesec, one device at a time.
//!
//! * [`client`]: the device API client over mutual TLS ([`client::DeviceClient`]),
//!   how it recognises a device ([`client::DeviceTrust`], [`client::Revocation`],
//!   [`client::PeerProblem`]), its deadlines and answer caps.
//! * [`probe`]: one TLS handshake and request, reporting what was negotiated.
//! * [`commission`]: taking a factory-state device into service.
//! * [`attest`]: a fresh attestation, checked against the connection and an
//!   approved image.
//! * [`posture`]: a device's live SL-A.
//! * [`trail`]: copying a device's audit trail over the API, within caps.
//! * [`modbus`]: the Modbus/TCP Security client and its load generator.
//!
//! Many devices at once (fleets, inventories, rollouts) are
//! drivesec-ops's; this crate never imports it.

pub mod attest;
pub mod client;
pub mod commission;
pub mod modbus;
pub mod posture;
pub mod probe;
pub mod trail;

use std::net::SocketAddr;
use std::path::PathBuf;

/// What went wrong talking to a device, or preparing to.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A file that should describe something does not.
    #[error("{path}: {reason}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A local file to send could not be read.
    #[error("{path}: {reason}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
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
        problem: client::PeerProblem,
    },
    /// No CRL is known for a connection that must check the owner's
    /// revocations (the message says where to give one).
    #[error("{0}")]
    MissingCrl(String),
    /// The owner's roots or CRLs cannot be used to check a device.
    #[error("{what}: {reason}")]
    UnusableTrust {
        /// Which: "owner root", "owner roots or CRLs".
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The TLS configuration could not be made (protocol versions, the
    /// client certificate).
    #[error("{0}")]
    TlsConfig(String),
    /// A device name that cannot be checked against a certificate.
    #[error("'{name}' is not a DNS name")]
    NotDnsName {
        /// The name.
        name: String,
    },
    /// The TCP connection to a device could not be made.
    #[error("{device}: cannot connect: {reason}; check that it runs and the address")]
    CannotConnect {
        /// The device (name and address).
        device: String,
        /// Why.
        reason: String,
    },
    /// The TCP connection to an address could not be made (probes, Modbus).
    #[error("connect {addr}: {reason}")]
    Connect {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The TLS handshake or session failed for another reason than the
    /// device's certificate ([`ClientError::Refused`]) or a deadline.
    #[error("TLS with {device}: {reason}")]
    Tls {
        /// The device (name and address, or the address).
        device: String,
        /// Why.
        reason: String,
    },
    /// The HTTP exchange with a device failed (the message names the
    /// device and the request).
    #[error("{0}")]
    Http(String),
    /// A request body could not be made from its type.
    #[error("{what}: {reason}")]
    BadRequest {
        /// The request as messages name it (`METHOD PATH: the request`,
        /// `commissioning request`).
        what: String,
        /// Why.
        reason: String,
    },
    /// A name that would go into a request's path (an account, a role, a
    /// session handle, a parameter) is not one a device can have: refused
    /// before anything is sent, since `#`, `?` or `/` in it would change
    /// which request the device gets.
    #[error(
        "{what} '{name}' is not a name a device can have (only a-z, 0-9, '.', '_' and '-', \
         starting with a letter or digit); nothing was sent"
    )]
    BadName {
        /// What the name is (`account`, `role`, `session handle`, `parameter`).
        what: &'static str,
        /// The name as given.
        name: String,
    },
    /// A streamed answer could not be written to its destination.
    #[error("writing the answer to {request}: {reason}")]
    WriteAnswer {
        /// The request, `METHOD ROUTE`.
        request: String,
        /// Why.
        reason: String,
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
        /// as it came; at most `client::ERROR_MESSAGE_SHOWN` bytes of it,
        /// saying how many were left out (`error` keeps all of it).
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
    /// What a device sent (an attestation, a trail, its state after
    /// commissioning) did not pass a check.
    #[error("check failed: {0}")]
    Check(String),
    /// The Modbus/TCP Security exchange with a device failed.
    #[error("Modbus with {addr}: {reason}")]
    Modbus {
        /// The device's Modbus address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The Modbus load generator could not run.
    #[error("load: {0}")]
    Load(String),
    /// The client could not start its I/O runtime.
    #[error("runtime: {0}")]
    Runtime(String),
    /// Commissioning needs the device's serial number.
    #[error(
        "commissioning needs the device's expected serial number (`--serial`, as on the device's label)"
    )]
    NoSerial,
    /// The device to commission is not in factory state.
    #[error("the device at {addr} is not in factory state ({state:?})")]
    NotInFactoryState {
        /// Its address.
        addr: SocketAddr,
        /// The state it reports, as on the wire.
        state: String,
    },
    /// The device presented no certificate.
    #[error("the device presented no certificate")]
    NoCertificate,
    /// A signal stopped commissioning before the OEM CA issued anything.
    #[error(
        "commissioning {serial} at {addr} was interrupted before the OEM CA issued anything; nothing to revoke"
    )]
    InterruptedBeforeIssue {
        /// The expected serial number.
        serial: String,
        /// The device's address.
        addr: SocketAddr,
    },
    /// A signal stopped commissioning after the OEM CA issued the LDevID.
    #[error("interrupted (SIGINT/SIGTERM) before the device finished commissioning")]
    Interrupted,
    /// The commissioning could not run to its end (its thread could not
    /// start or panicked, it ended without finishing or revoking).
    #[error("{0}")]
    CommissioningAborted(String),
    /// Commissioning failed after the OEM CA issued the device's LDevID.
    #[error("{message}")]
    CommissioningFailed {
        /// What happened and what to do next.
        message: String,
        /// The LDevID serial revoked because of it (None: revoking failed too).
        revoked: Option<String>,
    },
    /// PKI failure.
    #[error(transparent)]
    Pki(#[from] drivesec_pki::PkiError),
    /// Keystore failure.
    #[error(transparent)]
    Keystore(#[from] drivesec_keystore::KeystoreError),
    /// File system failure.
    #[error(transparent)]
    Fs(#[from] drivesec_fsutil::FsError),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, ClientError>;

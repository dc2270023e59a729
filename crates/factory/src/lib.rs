//! The manufacturer's provisioning station of drivesec, for one device at a
//! time.
//!
//! * [`provision()`]: a new device state directory (docs/device-state.md):
//!   the identity key generated in the device's keystore, its IDevID signed
//!   by the manufacturer CA, a one-time factory credential stored on the
//!   device only as an Argon2id hash, the firmware key.
//! * [`reprovision()`]: a tampered device back at the manufacturer: its old
//!   IDevID revoked, the old directory kept as evidence, the same serial
//!   provisioned again on the same chip.
//!
//! What it writes is the device state directory's format (drivesec-state);
//! it never talks to a running device (that is drivesec-client's).

mod provision;
mod reprovision;

use std::path::PathBuf;

pub use provision::{
    DeviceFile, DeviceKeystore, IDEVID_KEY, LifeCycle, ProvisionOptions, Provisioned,
    check_factory_credential, provision,
};
pub use reprovision::{ReprovisionOptions, Reprovisioned, reprovision};

/// What went wrong at the provisioning station.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FactoryError {
    /// The serial number cannot name a device.
    #[error("serial number '{serial}' must be 1 to 64 characters from A-Z a-z 0-9 -")]
    BadSerial {
        /// The serial number given.
        serial: String,
    },
    /// The CA given is not a manufacturer CA.
    #[error("{dir} is an {kind} CA; factory provisioning needs the manufacturer CA")]
    NotManufacturerCa {
        /// The CA's directory.
        dir: PathBuf,
        /// Its kind.
        kind: String,
    },
    /// A directory that must be new already exists.
    #[error("{path} already exists and is not empty; refusing to overwrite it")]
    Exists {
        /// The directory.
        path: PathBuf,
    },
    /// The directory given is not a tampered device the station can take
    /// back (not a device, not tampered, its tamper input still active, an
    /// identity the manufacturer CA did not issue, ...).
    #[error("{dir}: {reason}")]
    CannotReprovision {
        /// The device directory.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
    /// `device.json` could not be written.
    #[error("{0}")]
    DeviceFile(String),
    /// The re-provisioning record (`reprovisioned.json`, the archive's
    /// name) could not be made.
    #[error("{0}")]
    Record(String),
    /// PKI failure.
    #[error(transparent)]
    Pki(#[from] drivesec_pki::PkiError),
    /// Keystore failure.
    #[error(transparent)]
    Keystore(#[from] drivesec_keystore::KeystoreError),
    /// The state directory's format refused something (a file it reads or
    /// writes, the factory credential's hash, the firmware key).
    #[error(transparent)]
    State(#[from] drivesec_state::StateError),
    /// File system failure.
    #[error(transparent)]
    Fs(#[from] drivesec_fsutil::FsError),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, FactoryError>;

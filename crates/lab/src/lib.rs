//! The local lab of drivesec, and the demo story told over one.
//!
//! * [`manifest`]: `DIR/lab.json` ([`LabManifest`]) and what the tool does
//!   with a lab: reach its devices as a role, pack releases, issue
//!   certificates from its OEM CA.
//! * [`targets`] (methods of [`LabManifest`]): the lab's devices as
//!   drivesec-ops [`Targets`](drivesec_ops::Targets) and as an
//!   [`Inventory`](drivesec_ops::inventory::Inventory).
//! * [`up`]: building a lab (CAs, factory-provisioned devices, role
//!   clients, firmware, running and commissioned daemons) and stopping it.
//! * [`daemons`]: starting and stopping `drivesecd` processes.
//! * [`demo`]: the end-to-end story `drivesec demo` tells, one module per
//!   chapter.

pub mod daemons;
pub mod demo;
pub mod manifest;
pub mod targets;
pub mod up;

use std::path::PathBuf;

pub use manifest::LabManifest;

/// What went wrong with a lab or the demo.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// Talking to one device failed, or preparing to.
    #[error(transparent)]
    Client(#[from] drivesec_client::ClientError),
    /// Working on the devices as a fleet failed.
    #[error(transparent)]
    Ops(#[from] drivesec_ops::OpsError),
    /// The provisioning station failed.
    #[error(transparent)]
    Factory(#[from] drivesec_factory::FactoryError),
    /// A directory that must be new already exists.
    #[error("{path} already exists and is not empty; refusing to overwrite it")]
    Exists {
        /// The directory.
        path: PathBuf,
    },
    /// A directory the lab cannot be built in (a symbolic link, someone
    /// else's, writable by others).
    #[error("{dir}: {why}; give the lab a new directory (or an empty one of your own)")]
    UnusableDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        why: String,
    },
    /// A number of devices the lab does not take.
    #[error("--devices must be 1..999, not {0}")]
    DeviceCount(usize),
    /// A file that should describe something does not (`lab.json`, a
    /// trust store).
    #[error("{path}: {reason}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// `lab.json` lacks what this needs (an account, a client, the firmware
    /// set-up, a device).
    #[error("{0}")]
    Incomplete(String),
    /// A lab device is not running (no API address).
    #[error("{device} is not running (lab up without --no-daemons)")]
    NotRunning {
        /// The device.
        device: String,
    },
    /// A lab device is not commissioned (no DNS name).
    #[error("{device} is not commissioned")]
    NotCommissioned {
        /// The device.
        device: String,
    },
    /// An address in `lab.json` that does not parse.
    #[error("{0}")]
    BadAddress(String),
    /// A key or CSR for a lab certificate could not be made.
    #[error("{what}: {reason}")]
    KeyGeneration {
        /// What failed (`key generation failed`, `CSR generation failed`,
        /// `server key`).
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// Packing, approving or reading the lab's firmware failed.
    #[error("{0}")]
    Firmware(String),
    /// A document the lab writes could not be made (JSON).
    #[error("{0}")]
    Encode(String),
    /// The demo's built-in plant model does not parse.
    #[error("built-in example: {0}")]
    Example(String),
    /// The fleet store failed.
    #[error("{0}")]
    Store(drivesec_fleet::FleetError),
    /// The tool cannot find its own executable (the daemon it starts).
    #[error("cannot find my executable: {0}")]
    NoExecutable(String),
    /// A daemon could not be started.
    #[error("cannot start {daemon}: {reason}")]
    CannotStart {
        /// The executable.
        daemon: PathBuf,
        /// Why.
        reason: String,
    },
    /// A daemon exited before it announced its address.
    #[error("drivesecd for {dir} exited ({status}): {last_line}")]
    DaemonExited {
        /// Its state directory.
        dir: PathBuf,
        /// Its exit status.
        status: String,
        /// The last line of its log.
        last_line: String,
    },
    /// A daemon did not announce its address in time.
    #[error("drivesecd for {dir} did not start within 30 s")]
    DaemonDidNotStart {
        /// Its state directory.
        dir: PathBuf,
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
    /// A device state directory or configuration refused.
    #[error(transparent)]
    State(#[from] drivesec_state::StateError),
    /// File system failure.
    #[error(transparent)]
    Fs(#[from] drivesec_fsutil::FsError),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, LabError>;

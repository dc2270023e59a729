//! The people's side of drivesec over many devices.
//!
//! * [`targets`]: [`Targets`], the devices a command works on and how to
//!   reach them (who acts, which roots and CRLs recognise them, how many at
//!   once), from an inventory file.
//! * [`inventory`]: the inventory file (docs/validation.md).
//! * [`provision`]: a profile applied to a device, and its drift.
//! * [`validate`] and [`evidence`]: FAT/SAT validation and the signed
//!   evidence of it.
//! * [`posture`]: the live SL-A of every device.
//! * [`rollout`]: firmware rollouts in waves over the fleet store.
//! * [`incident`]: fleet scans, LDevID renewal, CRL pushes.
//! * [`review`]: the access review over each device's audit trail.
//!
//! One device's side (the API client, commissioning, attestation, the
//! Modbus client) is drivesec-client's; a lab (`lab.json`) becomes targets
//! and an inventory in drivesec-lab. This crate imports neither the lab nor
//! the factory.

pub mod evidence;
pub mod incident;
pub mod inventory;
pub mod posture;
pub mod provision;
pub mod review;
pub mod rollout;
pub mod targets;
pub mod validate;

use std::path::PathBuf;

pub use targets::{Account, Target, Targets, read_secret};

/// What went wrong working on a set of devices.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpsError {
    /// Talking to one device failed, or preparing to.
    #[error(transparent)]
    Client(#[from] drivesec_client::ClientError),
    /// An inventory file does not parse.
    #[error("{path}: {reason}")]
    BadInventory {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// An inventory device's API address cannot be resolved.
    #[error("{path}: device {device}: api '{api}' is not HOST:PORT")]
    BadApiAddress {
        /// The inventory file.
        path: PathBuf,
        /// The device.
        device: String,
        /// The address as written.
        api: String,
    },
    /// An inventory device's pinned certificate fingerprint is not one.
    #[error(
        "{path}: device {device}: certificate_sha256 '{value}' is not a SHA-256 fingerprint (64 hex digits, colons allowed)"
    )]
    BadFingerprint {
        /// The inventory file.
        path: PathBuf,
        /// The device.
        device: String,
        /// The value as written.
        value: String,
    },
    /// An inventory device's address for validation is not IP:PORT.
    #[error("inventory device {device}: {what} '{value}' is not IP:PORT")]
    NotIpPort {
        /// The device.
        device: String,
        /// Which address (`api`, `modbus`).
        what: &'static str,
        /// The address as written.
        value: String,
    },
    /// An inventory device's asset is in no zone of the plan.
    #[error("inventory device {device}: asset '{asset}' is in no zone of the plan")]
    NotInPlan {
        /// The device.
        device: String,
        /// Its asset.
        asset: String,
    },
    /// A device's profile file cannot be used.
    #[error("{0}")]
    BadProfile(String),
    /// An approved release of the inventory cannot be read.
    #[error("approved release {path}: {reason}")]
    BadApprovedRelease {
        /// The image.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// What a rollout needs is missing from the inventory.
    #[error("{path}: {what} is needed for rollouts (docs/fleet.md)")]
    NeededForRollouts {
        /// The inventory file.
        path: PathBuf,
        /// What (`[operator]`, `trust.firmware_trust`).
        what: &'static str,
    },
    /// A firmware trust store does not parse.
    #[error("{path}: not a firmware trust store: {reason}")]
    BadTrustStore {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A release image cannot be read.
    #[error("{path}: {reason}")]
    BadRelease {
        /// The image.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A release image lacks the signatures the trust store asks for.
    #[error("{path}: not an approved release: {reason}")]
    NotApproved {
        /// The image.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Devices a rollout would claim are held by another campaign.
    #[error("devices held by another campaign: {}", .devices.join(", "))]
    HeldByAnotherCampaign {
        /// The devices.
        devices: Vec<String>,
    },
    /// The fleet store failed.
    #[error("{0}")]
    Store(drivesec_fleet::FleetError),
    /// The tool failed on one device (a panic): the others went on.
    #[error("{device}: the tool failed on this device (internal error)")]
    DeviceFailed {
        /// The device.
        device: String,
    },
    /// A device was not worked on.
    #[error("{device}: not processed")]
    NotProcessed {
        /// The device.
        device: String,
    },
    /// A device's LDevID cannot be renewed without its serial.
    #[error("{device}: the inventory gives no serial, which its LDevID must carry")]
    NoSerial {
        /// The device.
        device: String,
    },
    /// The OEM CA failed while it signed for another device.
    #[error("the OEM CA failed on another device")]
    CaFailed,
    /// A renewal failed after the OEM CA issued the new LDevID (the message
    /// says whether it was revoked and what to do).
    #[error("{0}")]
    RenewalFailed(String),
    /// A renewal whose new LDevID the device could not be seen presenting
    /// because it could not be reached; the LDevID is not revoked.
    #[error(
        "{device}: the OEM CA issued the new LDevID {serial} and {state}, but the device could not be reached to confirm it presents it ({why}). It is NOT revoked: the device may already be using it, and revoking it would lock you out. Run `drivesec fleet renew` again when the device is reachable (it reports what the device presents); if the device at that address is not yours, revoke it: `drivesec ca revoke --ca OEM_CA_DIR --serial {serial} --reason key-compromise`"
    )]
    RenewalUnconfirmed {
        /// The device.
        device: String,
        /// The new LDevID's serial.
        serial: String,
        /// What the device answered to its installation.
        state: String,
        /// Why it could not be reached.
        why: String,
    },
    /// The access review has no manufacturer root to verify trails with.
    #[error(
        "the access review verifies each trail with the device's IDevID and needs the manufacturer root (trust.manufacturer_root in the inventory)"
    )]
    NoManufacturerRoot,
    /// A device's name cannot name its directory of collected trails.
    #[error(
        "device name '{name}' cannot name a directory under {dir}: a plain name not starting with a dot is needed"
    )]
    BadDeviceName {
        /// The name, escaped.
        name: String,
        /// The trails directory.
        dir: PathBuf,
    },
    /// What a device or a document holds did not pass a check (a trail,
    /// its IDevID, an evidence signature).
    #[error("check failed: {0}")]
    Check(String),
    /// A document to sign cannot be canonicalised.
    #[error("{0}")]
    Canonical(String),
    /// A `--max-age` that is not a duration.
    #[error("--max-age '{value}': give a whole number and a unit: s, m, h, d or w (e.g. 90d)")]
    BadMaxAge {
        /// The value given.
        value: String,
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
pub type Result<T> = std::result::Result<T, OpsError>;

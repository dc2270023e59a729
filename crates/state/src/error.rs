//! Why a state directory, its configuration file or a state operation is
//! refused ([`StateError`]). drivesec-device turns each variant into the
//! `DeviceError` of the same name, so what users read is the same either way.

use std::path::PathBuf;

/// Why the state directory or the configuration cannot be used, or a state
/// operation cannot be done.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
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
    /// A value given is not acceptable (a certificate that does not match,
    /// an image that does not verify, ...).
    #[error("{0}")]
    Invalid(String),
    /// Another process (a running drivesecd, or a tool changing the
    /// directory) holds the state directory's lock ([`crate::lock`]).
    #[error("{}", crate::lock::in_use_message(.dir, .holder.as_ref()))]
    InUse {
        /// The state directory.
        dir: PathBuf,
        /// Who holds it, as it wrote into the lock file (`None` when it
        /// wrote nothing readable).
        holder: Option<crate::lock::Holder>,
    },
    /// Keystore failure.
    #[error(transparent)]
    Keystore(#[from] drivesec_keystore::KeystoreError),
    /// PKI failure.
    #[error(transparent)]
    Pki(#[from] drivesec_pki::PkiError),
    /// Accounts failure (the access policy a state directory holds).
    #[error(transparent)]
    Access(#[from] drivesec_access::AccessError),
    /// File system failure.
    #[error(transparent)]
    Fs(#[from] drivesec_fsutil::FsError),
}

/// What an image or a statement says is the sender's problem
/// ([`StateError::Invalid`]); the device's own keystore and file system
/// failing is not. drivesec-device answers firmware errors by the same
/// classification.
impl From<drivesec_firmware::FirmwareError> for StateError {
    fn from(e: drivesec_firmware::FirmwareError) -> Self {
        use drivesec_firmware::FirmwareError as F;
        match e {
            // The image's ephemeral key is the sender's.
            F::Keystore(k @ drivesec_keystore::KeystoreError::InvalidPeerKey(_)) => {
                StateError::Invalid(format!("the image's key agreement: {k}"))
            }
            F::Keystore(k) => StateError::Keystore(k),
            F::Fs(f) => StateError::Fs(f),
            other => StateError::Invalid(other.to_string()),
        }
    }
}

/// Result type of this crate.
pub type Result<T, E = StateError> = std::result::Result<T, E>;

//! Why the device cannot do something ([`DeviceError`]), with what the
//! HTTP edge needs to answer it: `api` maps each error to a status, a
//! stable code and a message, and nothing else in the crate knows HTTP.
//! Locks are taken through one helper ([`OrPoisoned`]).

use std::path::PathBuf;
use std::sync::LockResult;

/// The kind of a refusal the device makes itself; the API answers each
/// kind with its own status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// Not authenticated, or the credential was wrong (401).
    Unauthorized,
    /// Authenticated, but not allowed (403).
    Forbidden,
    /// No such thing (404).
    NotFound,
    /// Not in the device's current state (409).
    Conflict,
    /// Sent on a connection admitted before the device's identity or
    /// trust changed (421).
    StaleConnection,
    /// Well-formed, but a value the device cannot hold (422).
    Unprocessable,
    /// Too many attempts; retry later (429).
    TooMany,
    /// The device is busy; retry (503).
    Busy,
}

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
    /// A request the device refuses: its kind, a stable code (the API's
    /// `error`) and the message.
    #[error("{message}")]
    Refused {
        /// What kind of refusal.
        kind: Refusal,
        /// The stable code.
        code: &'static str,
        /// What the client is told.
        message: String,
    },
    /// The audit trail cannot take the record of an action (so the action
    /// is refused, SR 2.10) or answer a read.
    #[error("{}", trail_message(.0))]
    Trail(drivesec_audit::AuditError),
    /// Something failed inside the device; the client is not told what.
    #[error("{0}")]
    Internal(String),
    /// A lock whose holder panicked.
    #[error("{0} lock poisoned")]
    Poisoned(&'static str),
    /// Another process (a running drivesecd, or a tool changing the
    /// directory) holds the state directory's lock.
    #[error("{}", drivesec_state::lock::in_use_message(.dir, .holder.as_ref()))]
    InUse {
        /// The state directory.
        dir: PathBuf,
        /// Who holds it, as it wrote into the lock file.
        holder: Option<drivesec_state::lock::Holder>,
    },
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

/// A state directory's, configuration's or state operation's error is the
/// device error of the same name, with the same message (and so the same
/// answer).
impl From<drivesec_state::StateError> for DeviceError {
    fn from(e: drivesec_state::StateError) -> Self {
        use drivesec_state::StateError as S;
        match e {
            S::State { path, reason } => DeviceError::State { path, reason },
            S::Config { path, reason } => DeviceError::Config { path, reason },
            S::Invalid(m) => DeviceError::Invalid(m),
            S::InUse { dir, holder } => DeviceError::InUse { dir, holder },
            S::Keystore(e) => DeviceError::Keystore(e),
            S::Pki(e) => DeviceError::Pki(e),
            S::Access(e) => DeviceError::Access(e),
            S::Fs(e) => DeviceError::Fs(e),
            // A variant added to drivesec-state after this mapping.
            other => DeviceError::Internal(other.to_string()),
        }
    }
}

/// What the client is told when the trail cannot record: what to do next.
fn trail_message(e: &drivesec_audit::AuditError) -> String {
    use drivesec_audit::AuditError as A;
    match e {
        A::Full { .. } => format!(
            "{e}. A security administrator can still log in: forward or export the \
             trail so that delivered records can be dropped (policy drop-forwarded), \
             or raise [audit] max_bytes (docs/audit.md, \"Capacity\")"
        ),
        A::Failed(_) => format!(
            "{e}. Recorded actions are refused until drivesecd is restarted on \
             working storage (check the disk; the device log has the error)"
        ),
        other => other.to_string(),
    }
}

impl DeviceError {
    /// A refusal of `kind` with its code and message.
    pub(crate) fn refused(kind: Refusal, code: &'static str, message: impl Into<String>) -> Self {
        DeviceError::Refused {
            kind,
            code,
            message: message.into(),
        }
    }

    /// Not in the device's current state (`wrong-state`).
    pub(crate) fn conflict(message: impl Into<String>) -> Self {
        Self::refused(Refusal::Conflict, "wrong-state", message)
    }

    /// A failure inside the device.
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        DeviceError::Internal(message.into())
    }
}

/// Result type of the device crate.
pub(crate) type Result<T> = std::result::Result<T, DeviceError>;

/// The one way the device takes its locks: a lock whose holder panicked is
/// [`DeviceError::Poisoned`] (`NAME lock poisoned`), answered 500 like
/// every failure inside the device.
pub(crate) trait OrPoisoned<G> {
    /// The guard, or the poisoned lock's error.
    fn or_poisoned(self, name: &'static str) -> Result<G>;
}

impl<G> OrPoisoned<G> for LockResult<G> {
    fn or_poisoned(self, name: &'static str) -> Result<G> {
        self.map_err(|_| DeviceError::Poisoned(name))
    }
}

#[cfg(test)]
mod tests {
    use drivesec_state::StateError;

    use super::DeviceError;

    /// A state error reaches users as it did when the state directory was
    /// the device's own: the same variant, so the same answer, and the
    /// same message.
    #[test]
    fn a_state_error_is_the_device_error_of_the_same_name() {
        let path = std::path::PathBuf::from("/state");
        for (e, same_variant) in [
            (
                StateError::State {
                    path: path.clone(),
                    reason: "device.json is missing".into(),
                },
                (|d: &DeviceError| matches!(d, DeviceError::State { .. }))
                    as fn(&DeviceError) -> bool,
            ),
            (
                StateError::Config {
                    path: path.clone(),
                    reason: "bad".into(),
                },
                |d| matches!(d, DeviceError::Config { .. }),
            ),
            (StateError::Invalid("not for this key".into()), |d| {
                matches!(d, DeviceError::Invalid(_))
            }),
            (
                StateError::InUse {
                    dir: path.clone(),
                    holder: Some(drivesec_state::lock::Holder {
                        pid: 42,
                        what: "drivesecd".into(),
                    }),
                },
                |d| matches!(d, DeviceError::InUse { .. }),
            ),
            (
                StateError::Fs(drivesec_fsutil::FsError::AlreadyExists { path }),
                |d| matches!(d, DeviceError::Fs(_)),
            ),
        ] {
            let message = e.to_string();
            let d = DeviceError::from(e);
            assert!(same_variant(&d), "{d:?}");
            assert_eq!(d.to_string(), message);
        }
    }
}

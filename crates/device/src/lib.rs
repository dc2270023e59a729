//! The drivesec device runtime, run by `drivesecd`.
//!
//! * [`state`]: the state directory (factory or commissioned) and the checks
//!   that refuse to start on a corrupt or inconsistent one.
//! * [`config`]: the daemon configuration file.
//! * [`api`]: the HTTPS API (mutual TLS always; sessions bound to the client
//!   certificate; permission per operation; every security-relevant action
//!   recorded in the audit trail). docs/openapi.json describes it.
//! * [`posture`]: the security level achieved in the current configuration.
//! * [`credential`]: the one-time factory credential.
//! * [`drive_loop`]: the drive's tick thread (Safe Torque Off read first).
//! * [`firmware`]: the boot stage, streamed updates, trust rotation.
//! * [`modbus`]: the Modbus/TCP Security server.
//! * [`provision`]: applying a device profile in one transaction.
//!
//! Private: connection admission, the TLS set-up, the accept loops, the
//! runtime that ties them together, forwarding and aggregated records.
//! The API's request and answer types are `drivesec-api`'s.

mod admission;
pub mod api;
pub mod config;
pub mod credential;
pub mod drive_loop;
pub mod firmware;
mod forwarding;
pub mod modbus;
pub mod posture;
pub mod provision;
mod runtime;
mod server;
pub mod state;
mod tally;
mod tls;

use std::path::PathBuf;

pub use runtime::{build, run};

/// Runs blocking work (a disk flush, a keystore operation, a wait) from
/// async code. drivesecd's network side has one event-loop thread by
/// default (`[runtime] network_threads`); on its multi-thread runtime the
/// loop's other connections move to another thread for the time being, so
/// one flush does not stall every session. Elsewhere (a blocking-pool
/// thread, the drive tick, a current-thread test runtime) `f` just runs.
pub(crate) fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    /// With one network thread, a handler waiting in `blocking` does not
    /// hold up the other connections: here the waiter can only finish if
    /// another task runs meanwhile.
    #[test]
    fn blocking_work_lets_the_other_connections_run() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let got = rt.block_on(async {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
            let waiter = tokio::spawn(async move {
                started_tx.send(()).unwrap();
                super::blocking(|| rx.recv_timeout(Duration::from_secs(5)).is_ok())
            });
            started.await.unwrap();
            tokio::spawn(async move { tx.send(()).unwrap() });
            waiter.await.unwrap()
        });
        assert!(got, "the other task never ran while the waiter blocked");
    }
}

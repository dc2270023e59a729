//! The drivesec device runtime, run by `drivesecd`: [`run`] serves a
//! device until shutdown, [`build`] makes it and its API router without
//! serving (in-process tests).
//!
//! Public, for the binaries and the tests:
//!
//! * [`api`]: the HTTPS API's connection information and OpenAPI document
//!   (docs/openapi.json); the API itself is served by [`run`].
//! * [`DeviceError`] with its [`Refusal`] kinds.
//!
//! The state directory's format (what the factory writes, the checks that
//! refuse a corrupt directory, `drivesecd.toml`, the factory credential) is
//! drivesec-state's.
//!
//! Private, in layers, top to bottom (no module imports from a layer above
//! its own, and no module import cycle remains: `scripts/module-cycles`):
//!
//! 1. `runtime`: the wiring; builds the device, binds the listeners and
//!    runs the one accept loop on each.
//! 2. `api` (HTTP only: routes, handlers, extractors, the connection
//!    service, and the error answer every `DeviceError` becomes) and
//!    `modbus` (Modbus/TCP Security and plain Modbus sessions over the
//!    drive's registers), siblings that never import each other.
//! 3. `device`: the device itself (`Device`: its state and every operation
//!    on it, recorded), behind both interfaces and knowing neither.
//! 4. `accept` (the accept loop, generic over TLS or plain, the admission
//!    pools and a per-connection service) over `admission` (the handshake
//!    and established pools); `posture` (SL-A), `tls`, `firmware` (the
//!    slots at run time), `drive_loop` (the tick thread), `tally`
//!    (aggregated records).
//! 5. `error` (with the lock helper).
//!
//! The API's request and answer types are `drivesec-api`'s.

mod accept;
mod admission;
pub mod api;
mod device;
mod drive_loop;
mod error;
mod firmware;
mod modbus;
mod posture;
mod runtime;
mod tally;
mod tls;

pub use error::{DeviceError, Refusal};
pub(crate) use error::{OrPoisoned, Result};
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

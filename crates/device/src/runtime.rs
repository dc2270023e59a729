//! Wiring: builds the device from its state directory and config, starts
//! what runs beside it (forwarding, the drive, the boot stage), binds the
//! listeners and runs the one accept loop (`crate::accept`) on each: the
//! API's connections (`crate::api::conn`), Modbus/TCP Security and plain
//! Modbus (`crate::modbus`).

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use drivesec_audit::{Actor, Event};
use drivesec_fsutil::{self as fsu, Mode};
use drivesec_state::config::{ApiSettings, DeviceConfig};
use drivesec_state::{StateDir, StateLock, files};
use tokio::net::TcpListener;

use crate::accept::{self, Kind};
use crate::admission::{Gate, Limits};
use crate::device::Device;
use crate::{DeviceError, OrPoisoned, Result};

/// The admission bounds of the API listener.
fn limits(a: &ApiSettings) -> Limits {
    Limits {
        handshakes: a.max_handshakes,
        handshakes_per_source: a.max_handshakes_per_source,
        handshake_timeout: Duration::from_millis(a.handshake_timeout_ms),
        connections: a.max_connections,
        per_certificate: a.max_connections_per_certificate,
    }
}

/// Loads the state directory (refusing a corrupt one) and builds the device and its router.
pub fn build(state_dir: &Path, config: DeviceConfig) -> Result<(Arc<Device>, Router)> {
    let st = StateDir::load(state_dir)?;
    // Settings made through the API override the configuration file's;
    // the result passes the same check as `drivesecd check`.
    let config = config.for_state(&st)?;
    let max_body = config.api.max_body_bytes;
    let dev = Device::open(st, config)?;
    // Forwarding that cannot start, or whose settings cannot be read, never
    // stops the device: it is logged and shown in the posture (the owner
    // sets forwarding again over the API).
    match dev.forwarding_settings() {
        Ok(Some(f)) => {
            if let Err(e) = dev.start_forwarding(&f, false) {
                tracing::error!(error = %e, "audit forwarding could not start");
                dev.note_start_finding(format!("audit forwarding could not start: {e}"));
            }
        }
        Ok(None) => {}
        Err(e) => {
            let e = crate::api::answer_debug(e);
            // Moved aside (kept as evidence), so every later read sees no
            // settings instead of failing: forwarding is off until the owner
            // sets it again.
            let path = dev
                .state
                .read()
                .or_poisoned("state")?
                .path(files::FORWARDING);
            let aside = path.with_extension("json.unreadable");
            let moved = std::fs::rename(&path, &aside);
            tracing::error!(error = %e, ?moved, "audit forwarding settings could not be read");
            dev.note_start_finding(format!(
                "audit forwarding settings could not be read ({e}; kept as {}): forwarding is off until they are set again",
                aside.display()
            ));
        }
    }
    // Neither may a trail that cannot take the record (a drive must never
    // be bricked by its audit trail).
    if let Err(e) = dev.audit(Event::new(Actor::Device, "device.start").essential()) {
        let e = crate::api::answer_debug(e);
        tracing::error!(error = %e, "the device start could not be recorded");
        dev.note_start_finding(format!("the device start could not be recorded: {e}"));
    }
    // The drive, on its own thread.
    dev.start_drive(state_dir)?;
    // The boot stage, once the drive loop runs (a trial's health check
    // watches it): nothing runs that does not verify. A tampered device
    // has no firmware key left to verify with: it only reports its state.
    let tampered_at_start = dev.state.read().map(|s| s.tampered).unwrap_or(true);
    if tampered_at_start {
        tracing::error!("the device is tampered: keys destroyed; serving status only");
        if let Err(e) = dev.audit(Event::new(Actor::Device, "device.start-tampered").essential()) {
            let e = crate::api::answer_debug(e);
            tracing::error!(error = %e, "the tampered start could not be recorded");
            dev.note_start_finding(format!("the tampered start could not be recorded: {e}"));
        }
    } else {
        dev.boot_firmware().map_err(|e| {
            DeviceError::Invalid(format!("boot stage: {}", crate::api::answer_debug(e)))
        })?;
    }
    let router = crate::api::router(dev.clone(), max_body);
    Ok((dev, router))
}

/// Serves the API until `shutdown` completes. The bound address is written
/// to `STATE/api.addr` (useful with port 0).
///
/// One daemon per state directory: the directory's exclusive lock
/// (`STATE/drivesecd.lock`, `drivesec_state::lock`) is taken before
/// anything in it is read or written, and held until this returns (the
/// kernel releases it however the process ends). While another process
/// holds it, this fails with [`DeviceError::InUse`], naming its PID.
pub async fn run(
    state_dir: &Path,
    config: DeviceConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let _lock = StateLock::acquire(state_dir, "drivesecd")?;
    let listen = config.listen;
    let api_settings = config.api.clone();
    let (dev, app) = build(state_dir, config)?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| DeviceError::Net(format!("bind {listen}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| DeviceError::Net(e.to_string()))?;
    // Modbus is bound before api.addr appears, so whoever waits for that
    // file finds modbus.addr too.
    let (tx, rx) = tokio::sync::watch::channel(false);
    let modbus = start_modbus(state_dir, &dev, &rx).await?;
    fsu::write_atomic(
        &state_dir.join(files::API_ADDR),
        format!("{addr}\n").as_bytes(),
        Mode::Public,
    )?;
    tracing::info!(%addr, "drivesecd API listening");
    let server = tokio::spawn(accept::serve(
        listener,
        Kind::Tls(dev.tls.clone()),
        Gate::new(limits(&api_settings)),
        Arc::new(crate::api::conn::Connections::new(
            dev.clone(),
            app,
            &api_settings,
        )),
        rx.clone(),
    ));
    // Session ends nobody asked for (idle or absolute timeout) are recorded too.
    let reaper = {
        let dev = dev.clone();
        let mut rx = rx;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {
                        dev.record_expired_sessions();
                        dev.flush_tally(false);
                        dev.report_stale_crl();
                    }
                    _ = rx.changed() => return,
                }
            }
        })
    };
    shutdown.await;
    let _ = tx.send(true);
    let _ = server.await;
    let _ = reaper.await;
    for m in modbus {
        let _ = m.await;
    }
    dev.flush_tally(true);
    if let Ok(mut f) = dev.forwarder.lock()
        && let Some(fw) = f.take()
    {
        fw.stop();
    }
    if let Some(d) = dev.drive.get() {
        d.stop();
    }
    let _ = dev.audit(Event::new(Actor::Device, "device.stop").essential());
    if let Ok(log) = dev.audit.read() {
        log.checkpoint_now()?;
    }
    Ok(())
}

/// Binds and starts the Modbus servers the configuration asks for; the TLS
/// server's address goes to `STATE/modbus.addr`, the plain one's (risky) to
/// `STATE/modbus-plain.addr`.
async fn start_modbus(
    state_dir: &Path,
    dev: &Arc<Device>,
    shutdown: &tokio::sync::watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let (m, api) = {
        let c = dev.config.read().or_poisoned("config")?;
        (c.modbus.clone(), c.api.clone())
    };
    let mut tasks = vec![];
    if !m.enabled {
        return Ok(tasks);
    }
    // The API's handshake bounds, Modbus's own session bounds; TLS and
    // plain sessions share them.
    let gate = Gate::new(Limits {
        connections: m.max_connections,
        per_certificate: m.max_connections_per_certificate,
        ..limits(&api)
    });
    let bind = |addr: std::net::SocketAddr, file: &'static str| async move {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| DeviceError::Net(format!("bind Modbus {addr}: {e}")))?;
        let bound = l
            .local_addr()
            .map_err(|e| DeviceError::Net(e.to_string()))?;
        fsu::write_atomic(
            &state_dir.join(file),
            format!("{bound}\n").as_bytes(),
            Mode::Public,
        )?;
        tracing::info!(addr = %bound, file, "Modbus listening");
        Ok::<_, DeviceError>(l)
    };
    let l = bind(m.listen, files::MODBUS_ADDR).await?;
    tasks.push(tokio::spawn(accept::serve(
        l,
        Kind::Tls(dev.modbus_tls.clone()),
        gate.clone(),
        Arc::new(crate::modbus::Secure::new(dev.clone())),
        shutdown.clone(),
    )));
    if let Some(plain) = m.insecure_plain_listen {
        tracing::warn!(%plain, "RISKY: plain Modbus/TCP without authentication is enabled");
        let l = bind(plain, files::MODBUS_PLAIN_ADDR).await?;
        tasks.push(tokio::spawn(accept::serve(
            l,
            Kind::Plain,
            gate,
            Arc::new(crate::modbus::Plain::new(
                dev.clone(),
                m.insecure_plain_role.clone(),
            )),
            shutdown.clone(),
        )));
    }
    Ok(tasks)
}

//! Wiring: builds the shared device from its state directory and config,
//! serves the API, and carries out state changes (commissioning, CRL
//! installation, forwarding, factory reset).

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use axum::Router;
use drivesec_access::{Accounts, Sessions};
use drivesec_audit::forward::{ForwardConfig, Forwarder};
use drivesec_audit::{Actor, AuditLog, Event, Signer};
use drivesec_drive::ParamSet;
use drivesec_fsutil::{self as fsu, Mode};
use drivesec_keystore::KeyHandle;
use tokio::net::TcpListener;
use zeroize::Zeroizing;

use crate::api::ops_types::ForwardingSettings;
use crate::api::{ApiError, Device};
use crate::config::DeviceConfig;
use crate::state::{LifeCycle, StateDir, files};
use crate::{DeviceError, Result, posture, server, tls};

fn open_audit(st: &StateDir, config: &DeviceConfig) -> Result<AuditLog> {
    Ok(AuditLog::open(
        &st.path(files::AUDIT),
        config.audit.clone(),
        Signer {
            store: st.store.clone(),
            handle: st.file.idevid_key.clone(),
        },
    )?)
}

fn load_params(st: &StateDir) -> Result<ParamSet> {
    let p = st.path(files::PARAMS);
    if !p.exists() {
        return Ok(ParamSet::default());
    }
    let set: ParamSet =
        serde_json::from_slice(&fsu::read(&p)?).map_err(|e| DeviceError::State {
            path: p.clone(),
            reason: e.to_string(),
        })?;
    for (name, value) in set.values() {
        set.check(name, *value).map_err(|e| DeviceError::State {
            path: p.clone(),
            reason: e.to_string(),
        })?;
    }
    Ok(set)
}

/// Loads the state directory (refusing a corrupt one) and builds the device and its router.
pub fn build(state_dir: &Path, config: DeviceConfig) -> Result<(Arc<Device>, Router)> {
    let st = StateDir::load(state_dir)?;
    // Settings made through the API override the configuration file's;
    // the result passes the same check as `drivesecd check`.
    let config = config.for_state(&st)?;
    // The trail is checked before anything signs over it: what the check
    // finds is recorded, shown in the posture and forwarded; the device
    // starts anyway (docs/audit.md, "Start-up check").
    let audit = open_audit(&st, &config)?;
    for f in audit.startup_check().findings() {
        tracing::error!(finding = %f, "audit trail start-up check");
    }
    if !audit.startup_check().stray_files.is_empty() {
        tracing::warn!(files = ?audit.startup_check().stray_files, "stray files in the audit trail's segments/ are ignored");
    }
    let accounts = match st.file.state {
        LifeCycle::Commissioned => Some(Accounts::open(
            &st.path(files::ACCOUNTS),
            config.access.clone(),
        )?),
        LifeCycle::Factory => None,
    };
    let params = load_params(&st)?;
    let tls_cfg = tls::server_config(&st, &config.tls)?;
    let modbus_tls = tls::modbus_config(&st, &config.modbus)?;
    let modbus_rights = crate::modbus::load_rights(&st)?;
    let trust = Trust::of(&st)?;
    let firmware = crate::firmware::Firmware::open(&st)?;
    let dev = Arc::new(Device {
        sessions: Mutex::new(Sessions::new(config.access.session.clone())),
        login_permits: tokio::sync::Semaphore::new(config.api.max_concurrent_logins),
        login_attempts: Mutex::new(std::collections::HashMap::new()),
        state: RwLock::new(st),
        accounts: Mutex::new(accounts),
        audit: RwLock::new(Arc::new(audit)),
        params: Arc::new(Mutex::new(params)),
        drive: std::sync::OnceLock::new(),
        factory_failures: Mutex::default(),
        pending: Mutex::new(None),
        tls: Arc::new(RwLock::new(tls_cfg)),
        forwarder: Mutex::new(None),
        firmware: Mutex::new(firmware),
        running: Mutex::new(None),
        firmware_gate: Arc::new(tokio::sync::Mutex::new(())),
        boot_lock: Arc::new(tokio::sync::RwLock::new(())),
        config: RwLock::new(config.clone()),
        modbus_tls: Arc::new(RwLock::new(modbus_tls)),
        modbus_rights: RwLock::new(Arc::new(modbus_rights)),
        renewal: Mutex::new(None),
        trust: tokio::sync::watch::Sender::new(trust),
        tally: crate::tally::Tally::default(),
        reset_request: Mutex::new(None),
        segment_downloads: Arc::new(tokio::sync::Semaphore::new(crate::api::SEGMENT_DOWNLOADS)),
        segment_downloaders: Default::default(),
        reset_gate: tokio::sync::RwLock::new(()),
    });
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
            // Moved aside (kept as evidence), so every later read sees no
            // settings instead of failing: forwarding is off until the owner
            // sets it again.
            let path = dev
                .state
                .read()
                .map(|st| st.path(files::FORWARDING))
                .map_err(|_| DeviceError::Invalid("state lock poisoned".into()))?;
            let aside = path.with_extension("json.unreadable");
            let moved = std::fs::rename(&path, &aside);
            tracing::error!(error = ?e, ?moved, "audit forwarding settings could not be read");
            dev.note_start_finding(format!(
                "audit forwarding settings could not be read ({e:?}; kept as {}): forwarding is off until they are set again",
                aside.display()
            ));
        }
    }
    // Neither may a trail that cannot take the record (a drive must never
    // be bricked by its audit trail).
    if let Err(e) = dev.audit(Event::new(Actor::Device, "device.start").essential()) {
        tracing::error!(error = ?e, "the device start could not be recorded");
        dev.note_start_finding(format!("the device start could not be recorded: {e:?}"));
    }
    // The drive, on its own thread; STO changes and the tamper response
    // are recorded from another.
    let (tampered, store) = {
        let st = dev
            .state
            .read()
            .map_err(|_| DeviceError::Invalid("state lock poisoned".into()))?;
        (st.tampered, st.store.clone())
    };
    // Seal, then erase: the trail's last signed checkpoint covers the
    // detection, because after the erase nothing can sign any more.
    let sealer = Arc::downgrade(&dev);
    let respond: crate::drive_loop::TamperResponse = Box::new(move || {
        tracing::error!("tamper input active: sealing the audit trail, then destroying every key");
        if let Some(dev) = sealer.upgrade() {
            dev.seal_trail_before_erase();
        }
        let r = store.destroy_all().map_err(|e| e.to_string());
        match &r {
            Ok(n) => tracing::error!(keys = n, "tamper response: keys destroyed"),
            Err(e) => tracing::error!(error = %e, "tamper response: destroying the keys failed"),
        }
        r
    });
    let weak = Arc::downgrade(&dev);
    let (link, _tick) = crate::drive_loop::start(
        state_dir,
        dev.params.clone(),
        tampered,
        respond,
        move |ev| {
            let Some(dev) = weak.upgrade() else { return };
            match ev {
                crate::drive_loop::DriveEvent::Sto(c) => {
                    let _ = dev.audit(
                        Event::new(
                            Actor::Device,
                            if c.active {
                                "drive.sto-active"
                            } else {
                                "drive.sto-released"
                            },
                        )
                        .details(serde_json::json!({"speed_rpm": c.speed_rpm}))
                        .essential(),
                    );
                }
                crate::drive_loop::DriveEvent::Tamper {
                    destroyed,
                    speed_rpm,
                } => dev.tampered_now(destroyed, speed_rpm),
            }
        },
    )
    .map_err(|e| DeviceError::Invalid(format!("starting the drive: {e}")))?;
    let _ = dev.drive.set(link);
    // The boot stage, once the drive loop runs (a trial's health check
    // watches it): nothing runs that does not verify. A tampered device
    // has no firmware key left to verify with: it only reports its state.
    let tampered_at_start = dev.state.read().map(|s| s.tampered).unwrap_or(true);
    if tampered_at_start {
        tracing::error!("the device is tampered: keys destroyed; serving status only");
        if let Err(e) = dev.audit(Event::new(Actor::Device, "device.start-tampered").essential()) {
            tracing::error!(error = ?e, "the tampered start could not be recorded");
            dev.note_start_finding(format!("the tampered start could not be recorded: {e:?}"));
        }
    } else {
        dev.boot_firmware()
            .map_err(|e| DeviceError::Invalid(format!("boot stage: {e:?}")))?;
    }
    let router = crate::api::router(dev.clone(), config.api.max_body_bytes);
    Ok((dev, router))
}

/// Serves the API until `shutdown` completes. The bound address is written
/// to `STATE/api.addr` (useful with port 0).
pub async fn run(
    state_dir: &Path,
    config: DeviceConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
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
        &state_dir.join("api.addr"),
        format!("{addr}\n").as_bytes(),
        Mode::Public,
    )?;
    tracing::info!(%addr, "drivesecd API listening");
    let server = tokio::spawn(server::serve(
        listener,
        dev.clone(),
        dev.tls.clone(),
        dev.trust.subscribe(),
        app,
        api_settings,
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
        let c = dev
            .config
            .read()
            .map_err(|_| DeviceError::Invalid("config lock poisoned".into()))?;
        (c.modbus.clone(), c.api.clone())
    };
    let mut tasks = vec![];
    if !m.enabled {
        return Ok(tasks);
    }
    // The API's handshake bounds, Modbus's own session bounds; TLS and
    // plain sessions share them.
    let gate = crate::admission::Gate::new(crate::admission::Limits {
        connections: m.max_connections,
        per_certificate: m.max_connections_per_certificate,
        ..crate::server::limits(&api)
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
    let l = bind(m.listen, "modbus.addr").await?;
    tasks.push(tokio::spawn(crate::modbus::serve_tls(
        l,
        dev.clone(),
        gate.clone(),
        shutdown.clone(),
    )));
    if let Some(plain) = m.insecure_plain_listen {
        tracing::warn!(%plain, "RISKY: plain Modbus/TCP without authentication is enabled");
        let l = bind(plain, "modbus-plain.addr").await?;
        tasks.push(tokio::spawn(crate::modbus::serve_plain(
            l,
            dev.clone(),
            m.insecure_plain_role.clone(),
            gate,
            shutdown.clone(),
        )));
    }
    Ok(tasks)
}

impl Device {
    /// Whether the tamper response has run.
    pub(crate) fn is_tampered(&self) -> bool {
        self.drive.get().is_some_and(|l| l.tampered())
            || self.state.read().map(|s| s.tampered).unwrap_or(true)
    }

    /// The tamper response's first step, before any key is destroyed: the
    /// detection is recorded and a checkpoint signed over it, so the trail
    /// up to the tamper stays verifiable (docs/audit.md).
    pub(crate) fn seal_trail_before_erase(&self) {
        let _ = self.audit(Event::new(Actor::Device, "device.tamper-detected").essential());
        match self.audit_log() {
            Ok(log) => {
                if let Err(e) = log.checkpoint_now() {
                    tracing::error!(error = %e, "tamper response: the final checkpoint failed");
                }
            }
            Err(e) => tracing::error!(error = e.message(), "tamper response: no audit trail"),
        }
    }

    /// After the tick ran the tamper response (keys destroyed): record it,
    /// mark the state directory, forget every secret held in memory, and
    /// switch TLS to the throwaway "TAMPERED" identity so status can still
    /// be read.
    pub(crate) fn tampered_now(
        &self,
        destroyed: std::result::Result<usize, String>,
        speed_rpm: f64,
    ) {
        let when = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let _ = self.audit(
            Event::new(Actor::Device, "device.tampered")
                .outcome(if destroyed.is_ok() {
                    drivesec_audit::Outcome::Success
                } else {
                    drivesec_audit::Outcome::Failure
                })
                .details(serde_json::json!({
                    "keys_destroyed": destroyed.as_ref().ok(),
                    "error": destroyed.as_ref().err(),
                    "speed_rpm": speed_rpm,
                }))
                .essential(),
        );
        // Secrets in memory: sessions, a pending commissioning, login state.
        if let Ok(c) = self.config.read()
            && let Ok(mut s) = self.sessions.lock()
        {
            *s = Sessions::new(c.access.session.clone());
        }
        if let Ok(mut p) = self.pending.lock() {
            *p = None;
        }
        if let Ok(mut f) = self.forwarder.lock()
            && let Some(fw) = f.take()
        {
            fw.stop();
        }
        let reloaded = self.state.read().ok().map(|st| {
            let _ = st.mark_tampered(&serde_json::json!({
                "time": when, "keys_destroyed": destroyed.as_ref().ok(), "error": destroyed.as_ref().err(),
            }));
            st.dir.clone()
        });
        if let Some(dir) = reloaded {
            match StateDir::load(&dir) {
                Ok(st) => {
                    if let Err(e) = self.adopt_state(st) {
                        tracing::error!(error = e.message(), "switching to the tampered identity");
                    }
                }
                Err(e) => tracing::error!(%e, "reloading the tampered state"),
            }
        }
    }

    /// Switches to a freshly loaded state: accounts, TLS identity and trust follow it.
    pub(crate) fn adopt_state(&self, st: StateDir) -> std::result::Result<(), ApiError> {
        let config = self
            .config
            .read()
            .map_err(|_| ApiError::internal("config lock poisoned"))?
            .clone();
        let accounts = match st.file.state {
            LifeCycle::Commissioned => Some(
                Accounts::open(&st.path(files::ACCOUNTS), config.access.clone())
                    .map_err(|e| ApiError::internal(e.to_string()))?,
            ),
            LifeCycle::Factory => None,
        };
        let tls_cfg = tls::server_config(&st, &config.tls)?;
        let modbus_tls = tls::modbus_config(&st, &config.modbus)?;
        let rights = crate::modbus::load_rights(&st)?;
        let trust = Trust::of(&st)?;
        *self
            .modbus_tls
            .write()
            .map_err(|_| ApiError::internal("lock poisoned"))? = modbus_tls;
        *self
            .modbus_rights
            .write()
            .map_err(|_| ApiError::internal("lock poisoned"))? = Arc::new(rights);
        *self
            .accounts
            .lock()
            .map_err(|_| ApiError::internal("lock poisoned"))? = accounts;
        *self
            .tls
            .write()
            .map_err(|_| ApiError::internal("lock poisoned"))? = tls_cfg;
        *self
            .state
            .write()
            .map_err(|_| ApiError::internal("lock poisoned"))? = st;
        // Connections admitted under the old trust or identity: the API's
        // close, a Modbus session stays only if its certificate passes the
        // new check (docs/openapi.json, docs/modbus.md). One step of the
        // generation per adopted state, even when two are adopted at once.
        self.trust.send_modify(|t| {
            t.generation += 1;
            t.modbus = trust.modbus;
            t.crls = trust.crls;
        });
        // The forwarder signs its TLS handshakes with the identity it was
        // started with, which a renewal has just destroyed: a running
        // forwarder starts again under the state's identity (its cursor is
        // on disk, so nothing is lost or sent twice beyond the usual).
        let running = self.forwarder.lock().is_ok_and(|f| f.is_some());
        if running
            && let Ok(Some(s)) = self.forwarding_settings()
            && let Err(e) = self.start_forwarding(&s, false)
        {
            tracing::error!(%e, "restarting audit forwarding under the new identity");
        }
        Ok(())
    }

    /// A JSON file of the state directory (`files::*`), if present.
    pub(crate) fn state_json<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> std::result::Result<Option<T>, ApiError> {
        let path = self
            .state
            .read()
            .map_err(|_| ApiError::internal("state lock poisoned"))?
            .path(name);
        if !path.exists() {
            return Ok(None);
        }
        let raw = fsu::read(&path).map_err(|e| ApiError::internal(e.to_string()))?;
        serde_json::from_slice(&raw)
            .map(Some)
            .map_err(|e| ApiError::internal(format!("{}: {e}", path.display())))
    }

    /// The stored forwarding settings, if any.
    pub(crate) fn forwarding_settings(
        &self,
    ) -> std::result::Result<Option<ForwardingSettings>, ApiError> {
        self.state_json(files::FORWARDING)
    }

    /// Notes a start-up finding for the posture (see
    /// [`drivesec_audit::AuditLog::note_finding`]).
    fn note_start_finding(&self, finding: String) {
        if let Ok(a) = self.audit_log() {
            a.note_finding(finding);
        }
    }

    /// Starts (or restarts) forwarding with the device's current identity,
    /// from the trail the device writes now; with `persist`, the settings
    /// are stored too (`PUT /api/v1/audit/forwarding`, whose handler holds
    /// the reset gate, so no factory reset runs meanwhile). Refused when
    /// that trail was retired by a factory reset: nothing is forwarded
    /// from it (the reset starts a new one).
    pub(crate) fn start_forwarding(&self, s: &ForwardingSettings, persist: bool) -> Result<()> {
        if persist && let Ok(st) = self.state.read() {
            let dir = st.dir.clone();
            drop(st);
            crate::provision::failpoint_hold(&dir, "forwarding:hold");
        }
        let collector = s.collector.parse().map_err(|_| {
            DeviceError::Invalid(format!("collector '{}' is not IP:PORT", s.collector))
        })?;
        let roots = drivesec_pki::read_certs_pem(Path::new("ca_pem"), s.ca_pem.as_bytes())?;
        let (chain, key, host, fwd_path) = {
            let st = self
                .state
                .read()
                .map_err(|_| DeviceError::Invalid("state lock poisoned".into()))?;
            let (chain, key): (Vec<_>, KeyHandle) = match (&st.ldevid_chain, &st.file.ldevid_key) {
                (Some(c), Some(k)) => (c.clone(), k.clone()),
                _ => (st.idevid_chain.clone(), st.file.idevid_key.clone()),
            };
            let host = st
                .file
                .device_name
                .clone()
                .unwrap_or_else(|| st.file.serial_number.clone());
            (chain, key, host, st.path(files::FORWARDING))
        };
        let store = self
            .state
            .read()
            .map_err(|_| DeviceError::Invalid("state lock poisoned".into()))?
            .store
            .clone();
        let cfg = ForwardConfig::new(
            collector,
            s.server_name.clone(),
            roots,
            chain,
            store,
            key,
            host,
        );
        let cfg = crate::forwarding::configure(cfg, s, self.trust.subscribe())?;
        // The trail the device writes now (a factory reset replaces it;
        // forwarding then starts anew with the new one): only what that
        // log has made durable is sent.
        let log = self
            .audit
            .read()
            .map_err(|_| DeviceError::Invalid("audit lock poisoned".into()))?
            .clone();
        if log.durable_mark().retired() {
            return Err(DeviceError::Invalid(
                "the audit trail was retired by a factory reset: forwarding is not started from it"
                    .into(),
            ));
        }
        let fwd = Forwarder::start(&log, cfg)?;
        if persist {
            let json =
                serde_json::to_vec_pretty(s).map_err(|e| DeviceError::Invalid(e.to_string()))?;
            fsu::write_atomic(&fwd_path, &json, Mode::Public)?;
        }
        let old = self
            .forwarder
            .lock()
            .map_err(|_| DeviceError::Invalid("lock poisoned".into()))?
            .replace(fwd);
        if let Some(o) = old {
            o.stop();
        }
        Ok(())
    }

    /// A clone of the firmware side, so the shared lock is released before
    /// any file is read or any image verified.
    pub(crate) fn firmware_snapshot(
        &self,
    ) -> std::result::Result<Option<crate::firmware::Firmware>, ApiError> {
        Ok(self
            .firmware
            .lock()
            .map_err(|_| ApiError::internal("lock poisoned"))?
            .clone())
    }

    /// Runs the boot stage (at start and on `POST /api/v1/firmware/reboot`):
    /// verifies what is to run, boots a pending image on trial, confirms it
    /// after the health check, and records the outcome (and any revert).
    pub(crate) fn boot_firmware(
        &self,
    ) -> std::result::Result<Option<crate::firmware::Running>, ApiError> {
        let Some(fw) = self.firmware_snapshot()? else {
            return Ok(None);
        };
        // Health check: the drive's control loop runs the window on the
        // trial image, the crypto chip signs and the audit trail records.
        let window = self
            .config
            .read()
            .map(|c| c.firmware.health_window_ticks)
            .unwrap_or(10);
        let healthy = || {
            let loop_runs = crate::drive_loop::ticks_advance(
                || self.drive.get().and_then(|d| d.status()).map(|s| s.ticks),
                u64::from(window),
            );
            let st = match self.state.read() {
                Ok(s) => s,
                Err(_) => return false,
            };
            // A test-only fault file can make the check fail (docs/fleet.md).
            loop_runs
                && !crate::provision::failpoint_set(&st.dir, "boot:health-fail")
                && st.store.sign(&st.file.idevid_key, b"health").is_ok()
                && self
                    .audit(
                        Event::new(Actor::Device, "firmware.health-check")
                            .details(serde_json::json!({"window_ticks": window})),
                    )
                    .is_ok()
        };
        let result = fw.boot(healthy);
        match result {
            Ok((running, reverted)) => {
                if let Some(reason) = reverted {
                    self.audit(
                        Event::new(Actor::Device, "firmware.reverted")
                            .outcome(drivesec_audit::Outcome::Failure)
                            .details(serde_json::json!({"reason": reason}))
                            .essential(),
                    )?;
                }
                self.audit(
                    Event::new(Actor::Device, if running.trial { "firmware.trial" } else { "firmware.running" })
                        .target(running.version.clone())
                        .details(serde_json::json!({"slot": running.slot, "security_counter": running.security_counter, "root": running.root}))
                        .essential(),
                )?;
                *self
                    .running
                    .lock()
                    .map_err(|_| ApiError::internal("lock poisoned"))? = Some(running.clone());
                Ok(Some(running))
            }
            Err(e) => {
                // Nothing verified runs: never attest or report a stale image.
                if let Ok(mut r) = self.running.lock() {
                    *r = None;
                }
                let _ = self.audit(
                    Event::new(Actor::Device, "firmware.boot-failed")
                        .outcome(drivesec_audit::Outcome::Failure)
                        .details(serde_json::json!({"error": e.to_string()}))
                        .essential(),
                );
                Err(e.into())
            }
        }
    }

    /// Purges timed-out sessions and records each end in the audit trail.
    pub(crate) fn record_expired_sessions(&self) {
        let ended = match self.sessions.lock() {
            Ok(mut s) => {
                s.purge_expired(std::time::Instant::now());
                s.take_expired()
            }
            Err(_) => return,
        };
        for s in ended {
            let _ = self.audit(
                Event::new(Actor::User(s.username.clone()), "auth.session.expired")
                    .target(s.handle.clone())
                    .details(serde_json::json!({
                        "certificate": s.client_fingerprint, "role": s.role,
                        "age_secs": s.age_secs, "idle_secs": s.idle_secs,
                    })),
            );
        }
    }

    /// Validates, stores and applies a new access policy.
    pub(crate) fn set_access_policy(
        &self,
        policy: drivesec_access::AccessPolicy,
    ) -> std::result::Result<(), ApiError> {
        policy.validate()?;
        let path = self
            .state
            .read()
            .map_err(|_| ApiError::internal("state lock poisoned"))?
            .path(files::ACCESS_POLICY);
        self.with_accounts(|a| a.set_policy(policy.clone()))?;
        policy.save(&path)?;
        self.lock_sessions()?.set_policy(policy.session.clone());
        self.config
            .write()
            .map_err(|_| ApiError::internal("config lock poisoned"))?
            .access = policy;
        Ok(())
    }

    /// The security posture of the current configuration.
    pub(crate) fn posture(&self) -> std::result::Result<posture::Posture, ApiError> {
        let st = self
            .state
            .read()
            .map_err(|_| ApiError::internal("state lock poisoned"))?;
        let config = self
            .config
            .read()
            .map_err(|_| ApiError::internal("config lock poisoned"))?;
        let forwarding = self.forwarding_settings()?.is_some();
        let users = self
            .accounts
            .lock()
            .map_err(|_| ApiError::internal("lock poisoned"))?
            .as_ref()
            .map(|a| a.users());
        let audit_findings = self.audit_log()?.findings();
        let live = posture::Live {
            audit_findings,
            firmware_verified: self
                .running
                .lock()
                .map_err(|_| ApiError::internal("lock poisoned"))?
                .is_some(),
            modbus_roles: self
                .modbus_rights()
                .roles
                .keys()
                .map(|r| r.as_str().to_string())
                .collect(),
            forwarding_refused: crate::forwarding::refused(self),
        };
        Ok(posture::assess(
            &st,
            &config,
            forwarding,
            users.as_deref(),
            &live,
        ))
    }

    /// After a factory reset that failed: forwarding as stored in
    /// `forwarding.json` (if the reset did not get to erase it) starts
    /// again; a failure to start is logged and shown in the posture.
    fn restart_forwarding_after_failed_reset(&self) {
        match self.forwarding_settings() {
            Ok(Some(f)) => {
                if let Err(e) = self.start_forwarding(&f, false) {
                    tracing::error!(error = %e, "after a failed factory reset audit forwarding could not start again");
                    self.note_start_finding(format!(
                        "after a failed factory reset audit forwarding could not start again: {e}"
                    ));
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(
                    error = e.message(),
                    "after a failed factory reset the forwarding settings could not be read"
                );
            }
        }
    }

    /// Wipes ownership and returns the new one-time factory credential.
    /// When a collector is configured, waits (at most 5 s) until the trail up
    /// to `record_seq` (the reset's own record) has been forwarded, since the
    /// local trail is about to be wiped.
    pub(crate) fn factory_reset_now(
        &self,
        record_seq: u64,
    ) -> std::result::Result<Zeroizing<String>, ApiError> {
        let forwarder = self
            .forwarder
            .lock()
            .map_err(|_| ApiError::internal("lock poisoned"))?
            .take();
        if let Some(f) = forwarder {
            f.nudge();
            let start = std::time::Instant::now();
            while f.status().forwarded < record_seq
                && start.elapsed() < std::time::Duration::from_secs(5)
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            f.stop();
        }
        let config = self
            .config
            .read()
            .map_err(|_| ApiError::internal("config lock poisoned"))?
            .clone();
        *self.lock_sessions()? = Sessions::new(config.access.session.clone());
        // The old trail ends here, sealed by a final checkpoint; nothing
        // writes into its directory after it is archived.
        // A failed final checkpoint leaves the archived trail's tail
        // unsigned (verify names it); the approved reset goes on.
        if let Err(e) = self.audit_log()?.retire() {
            tracing::error!(error = %e, "factory reset: the old trail's final checkpoint failed");
        }
        let (cred, dir) = {
            let st = self
                .state
                .read()
                .map_err(|_| ApiError::internal("state lock poisoned"))?;
            let p = st.path(files::PARAMS);
            let reset = (|| {
                if p.exists() {
                    fsu::shred(&p).map_err(|e| ApiError::internal(e.to_string()))?;
                }
                Ok::<_, ApiError>(st.factory_reset()?)
            })();
            match reset {
                Ok(cred) => (cred, st.dir.clone()),
                Err(e) => {
                    // The old trail was retired: whatever the reset did,
                    // the device must not go on without a trail.
                    let reopened = match open_audit(&st, &config) {
                        Ok(again) => {
                            if let Ok(mut a) = self.audit.write() {
                                *a = Arc::new(again);
                            }
                            true
                        }
                        Err(open) => {
                            tracing::error!(error = %open, "after a failed factory reset the audit trail did not reopen");
                            false
                        }
                    };
                    drop(st);
                    // Nor without the forwarding it had: the forwarder
                    // stopped above starts again from the settings still
                    // stored (as at start-up), on the reopened trail.
                    if reopened {
                        self.restart_forwarding_after_failed_reset();
                    }
                    return Err(e);
                }
            }
        };
        // Test-only: the owner's files are erased, the factory state not
        // yet adopted.
        crate::provision::failpoint_hold(&dir, "reset:erased");
        *self
            .params
            .lock()
            .map_err(|_| ApiError::internal("lock poisoned"))? = ParamSet::default();
        let st = StateDir::load(&dir)?;
        let fresh = open_audit(&st, &config)?;
        self.adopt_state(st)?;
        *self
            .audit
            .write()
            .map_err(|_| ApiError::internal("audit lock poisoned"))? = Arc::new(fresh);
        self.audit(Event::new(Actor::Device, "device.factory-reset").essential())?;
        Ok(cred)
    }
}

/// The trust open connections were admitted under. The device sends a new
/// one each time it adopts a state (commissioning, a CRL or trust-anchor
/// change, LDevID renewal, factory reset, the tamper response).
#[derive(Clone)]
pub(crate) struct Trust {
    /// 0 at start, one more for each state adopted.
    pub(crate) generation: u64,
    /// The check an open Modbus session's certificate must still pass; none
    /// when the device serves no Modbus (factory state). After the tamper
    /// response open sessions stay, for status reads only (docs/modbus.md).
    pub(crate) modbus: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    /// The owner's CRLs the state holds, which the audit forwarder checks
    /// the collector's certificate against (`crate::forwarding`).
    pub(crate) crls: Arc<Vec<rustls::pki_types::CertificateRevocationListDer<'static>>>,
}

impl Trust {
    /// Whether a connection was admitted under this trust (no state was
    /// adopted since its handshake).
    pub(crate) fn admits(&self, conn: &crate::api::ConnInfo) -> bool {
        self.generation == conn.trust_generation
    }

    /// The trust of `st`, at generation 0 (`adopt_state` counts from there).
    pub(crate) fn of(st: &StateDir) -> Result<Trust> {
        Ok(Trust {
            generation: 0,
            modbus: if st.file.state == LifeCycle::Commissioned {
                Some(tls::client_verifier(st)?)
            } else {
                None
            },
            crls: Arc::new(st.crl_ders()),
        })
    }
}

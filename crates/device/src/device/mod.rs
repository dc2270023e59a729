//! The device itself, behind every interface: its state directory,
//! configuration, accounts and sessions, audit trail, parameters, drive,
//! firmware, trust and settings, and what each operation does to them.
//! The HTTPS API (`crate::api`) and the Modbus/TCP Security server
//! (`crate::modbus`) both work through it; it knows neither, nor HTTP:
//! its refusals are [`DeviceError`]s that carry their kind and code, and
//! the API's edge turns them into answers.
//!
//! One child per area, each adding its part of [`Device`]'s methods:
//! `audit` (records, reservations, aggregated denials), `sessions`
//! (sessions bound to client certificates, permissions, the hash pool,
//! accounts), `commission` (the factory credential and its back-off),
//! `trust` (adopting a state: identity, trust and what follows them),
//! `drive` (the tick thread, STO records, the tamper response),
//! `forwarding`, `firmware` (boot stage), `settings` (access policy, Modbus
//! rights, posture, stale CRLs), `provision` (profiles), `reset` (factory
//! reset) and `downloads` (the bound on trail segment downloads).

mod audit;
mod commission;
pub(crate) mod downloads;
mod drive;
mod firmware;
mod forwarding;
mod provision;
pub(crate) mod reset;
mod sessions;
mod settings;
mod trust;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use drivesec_access::{Accounts, Permission, Sessions};
use drivesec_audit::{AuditLog, Signer};
use drivesec_drive::ParamSet;
use drivesec_fsutil as fsu;
use drivesec_state::config::DeviceConfig;
use drivesec_state::{LifeCycle, StateDir, files};

use crate::{DeviceError, Result};

pub(crate) use audit::Recorder;
pub(crate) use commission::FactoryBackoff;
pub(crate) use provision::check_counts;
pub(crate) use sessions::stale_connection;
pub(crate) use trust::Trust;

/// What the TLS layer knows about a connection, attached to every request.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// SHA-256 of the client certificate (DER), hex.
    pub fingerprint: String,
    /// The client's address.
    pub addr: SocketAddr,
    /// The device's trust generation when the connection was admitted (0
    /// at start, one more for each state adopted); a session request on a
    /// connection admitted under an older one is refused (421).
    pub trust_generation: u64,
}

/// A commissioning exchange in progress.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub(crate) device_name: String,
    pub(crate) fingerprint: String,
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) username: String,
    pub(crate) role: String,
    pub(crate) permissions: std::collections::BTreeSet<Permission>,
    pub(crate) conn: ConnInfo,
    pub(crate) session_handle: String,
    /// The account's password must be changed first: only the change,
    /// `/me` and logout are served (`Device::session`).
    pub(crate) must_change_password: bool,
}

/// Everything the handlers and the Modbus sessions share.
pub struct Device {
    pub(crate) state: RwLock<StateDir>,
    pub(crate) config: RwLock<DeviceConfig>,
    pub(crate) accounts: Mutex<Option<Accounts>>,
    pub(crate) sessions: Mutex<Sessions>,
    pub(crate) audit: RwLock<Arc<AuditLog>>,
    pub(crate) params: Arc<Mutex<ParamSet>>,
    /// The drive's tick thread (set once at start).
    pub(crate) drive: std::sync::OnceLock<Arc<crate::drive_loop::DriveLink>>,
    pub(crate) login_permits: tokio::sync::Semaphore,
    pub(crate) login_attempts:
        Mutex<std::collections::HashMap<String, std::collections::VecDeque<Instant>>>,
    /// Wrong factory credentials per client certificate and address.
    pub(crate) factory_failures: Mutex<FactoryBackoff>,
    pub(crate) pending: Mutex<Option<Pending>>,
    pub(crate) tls: Arc<RwLock<Arc<rustls::ServerConfig>>>,
    pub(crate) forwarder: Mutex<Option<drivesec_audit::forward::Forwarder>>,
    pub(crate) firmware: Mutex<Option<crate::firmware::Firmware>>,
    pub(crate) running: Mutex<Option<crate::firmware::Running>>,
    /// Serialises firmware operations (upload, reboot, trust rotation);
    /// taken with `try_lock`, so a second one gets 409 instead of waiting.
    /// Owned guards: the blocking work holds it to its end even when the
    /// client goes away and its request is dropped.
    pub(crate) firmware_gate: Arc<tokio::sync::Mutex<()>>,
    /// Held (write) while a reboot runs the boot stage, so a status read
    /// (read) never sees the boot state switched but `running` not yet.
    pub(crate) boot_lock: Arc<tokio::sync::RwLock<()>>,
    /// The Modbus/TCP Security server's TLS configuration (follows `tls`).
    pub(crate) modbus_tls: Arc<RwLock<Arc<rustls::ServerConfig>>>,
    /// Modbus rights per role.
    pub(crate) modbus_rights: RwLock<Arc<drivesec_modbus::Rights>>,
    /// The key handle of an LDevID renewal in progress.
    pub(crate) renewal: Mutex<Option<drivesec_keystore::KeyHandle>>,
    /// The trust open connections were admitted under; each adopted state
    /// sends a new one, and every open connection is told.
    pub(crate) trust: tokio::sync::watch::Sender<Trust>,
    /// What a flood can repeat (API and Modbus denials, failed logins,
    /// refused connections), recorded aggregated.
    pub(crate) tally: crate::tally::Tally,
    /// A factory reset waiting for its second person.
    pub(crate) reset_request: Mutex<Option<reset::ResetRequest>>,
    /// Trail segment downloads in progress ([`downloads::SEGMENT_DOWNLOADS`]
    /// permits; one more is answered 503 `busy`).
    pub(crate) segment_downloads: Arc<tokio::sync::Semaphore>,
    /// Of those, how many each client certificate has
    /// ([`downloads::SEGMENT_DOWNLOADS_PER_CERTIFICATE`]).
    pub(crate) segment_downloaders: downloads::SegmentDownloaders,
    /// Keeps a factory reset and the owner's settings changes apart: each
    /// handler that writes the owner's settings or adopts a state holds it
    /// (read) from before it authenticates the request to its end; an
    /// approved factory reset holds it (write) while it runs. A change
    /// that waited for a reset is then refused (its session is gone), and
    /// none can write the previous owner's settings into the factory
    /// device.
    pub(crate) reset_gate: tokio::sync::RwLock<()>,
}

/// Opens the audit trail of a state directory, signed with its IDevID key.
pub(crate) fn open_audit(st: &StateDir, config: &DeviceConfig) -> Result<AuditLog> {
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

impl Device {
    /// The device of a loaded state directory with its configuration
    /// (settings made through the API already applied): the trail is
    /// opened and checked before anything signs over it (what the check
    /// finds is logged here, recorded and shown in the posture; the
    /// device starts anyway, docs/audit.md, "Start-up check"), then the
    /// accounts, parameters, TLS configurations, Modbus rights, trust and
    /// firmware side. Nothing runs yet.
    pub(crate) fn open(st: StateDir, config: DeviceConfig) -> Result<Arc<Device>> {
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
        let tls_cfg = crate::tls::server_config(&st, &config.tls)?;
        let modbus_tls = crate::tls::modbus_config(&st, &config.modbus)?;
        let modbus_rights = settings::stored_modbus_rights(&st)?;
        let trust = Trust::of(&st)?;
        let firmware = crate::firmware::Firmware::open(&st)?;
        Ok(Arc::new(Device {
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
            config: RwLock::new(config),
            modbus_tls: Arc::new(RwLock::new(modbus_tls)),
            modbus_rights: RwLock::new(Arc::new(modbus_rights)),
            renewal: Mutex::new(None),
            trust: tokio::sync::watch::Sender::new(trust),
            tally: crate::tally::Tally::default(),
            reset_request: Mutex::new(None),
            segment_downloads: Arc::new(tokio::sync::Semaphore::new(downloads::SEGMENT_DOWNLOADS)),
            segment_downloaders: Default::default(),
            reset_gate: tokio::sync::RwLock::new(()),
        }))
    }
}

//! The device's side of audit forwarding (docs/audit.md, "Forwarding"):
//! the settings' own checks, and what the forwarder checks the collector's
//! certificate against.
//!
//! The collector's certificate must pass the owner's CRLs the device holds,
//! as client certificates on the API and Modbus do. The forwarder reads
//! them from the device's trust (`Device::trust`, a watch channel): before
//! every connection, and when the device adopts a new state (a CRL
//! installed, commissioning, renewal, reset), it checks an open connection
//! again and ends it if the collector no longer passes. The receiver does
//! not keep the device alive, so the forwarder thread never owns it.

use std::path::Path;

use drivesec_api::audit::ForwardingSettings;
use drivesec_audit::forward::{
    CollectorTrust, DEFAULT_MAX_MESSAGE, ENTERPRISE_NUMBER, ForwardConfig, Forwarder,
    check_enterprise_number, check_max_message,
};
use drivesec_fsutil::{self as fsu, Mode};
use drivesec_keystore::KeyHandle;
use drivesec_state::files;
use rustls::pki_types::CertificateRevocationListDer;
use tokio::sync::watch;

use super::Device;
use super::trust::Trust;
use crate::{DeviceError, OrPoisoned, Result};

/// The CRLs of the state the device has adopted, as the forwarder asks.
struct DeviceCrls(watch::Receiver<Trust>);

impl CollectorTrust for DeviceCrls {
    fn generation(&self) -> u64 {
        self.0.borrow().generation
    }

    fn crls(&self) -> std::result::Result<Vec<CertificateRevocationListDer<'static>>, String> {
        Ok(self.0.borrow().crls.as_ref().clone())
    }
}

/// Applies the settings' enterprise number and message size (each checked)
/// and the device's CRLs to a forwarder configuration.
fn configure(
    mut cfg: ForwardConfig,
    s: &ForwardingSettings,
    trust: watch::Receiver<Trust>,
) -> Result<ForwardConfig> {
    let invalid = |e: drivesec_audit::AuditError| DeviceError::Invalid(e.to_string());
    cfg.enterprise_number = match s.enterprise_number {
        Some(n) => check_enterprise_number(u64::from(n)).map_err(invalid)?,
        None => ENTERPRISE_NUMBER,
    };
    cfg.max_message = match s.max_message_bytes {
        Some(n) => check_max_message(u64::from(n)).map_err(invalid)?,
        None => DEFAULT_MAX_MESSAGE,
    };
    cfg.collector_trust = std::sync::Arc::new(DeviceCrls(trust));
    Ok(cfg)
}

impl Device {
    /// The stored forwarding settings, if any.
    pub(crate) fn forwarding_settings(&self) -> Result<Option<ForwardingSettings>> {
        self.state_json(files::FORWARDING)
    }

    /// Why the forwarder's collector is refused (its certificate failed the
    /// check), for the posture; none when forwarding is off or delivering.
    pub(crate) fn forwarding_refused(&self) -> Option<String> {
        self.forwarder
            .lock()
            .ok()?
            .as_ref()?
            .status()
            .collector_refused
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
            drivesec_state::journal::failpoint_hold(&dir, "forwarding:hold");
        }
        let collector = s.collector.parse().map_err(|_| {
            DeviceError::Invalid(format!("collector '{}' is not IP:PORT", s.collector))
        })?;
        let roots = drivesec_pki::read_certs_pem(Path::new("ca_pem"), s.ca_pem.as_bytes())?;
        let (chain, key, host, fwd_path, store) = {
            let st = self.state.read().or_poisoned("state")?;
            let (chain, key): (Vec<_>, KeyHandle) = match (&st.ldevid_chain, &st.file.ldevid_key) {
                (Some(c), Some(k)) => (c.clone(), k.clone()),
                _ => (st.idevid_chain.clone(), st.file.idevid_key.clone()),
            };
            let host = st
                .file
                .device_name
                .clone()
                .unwrap_or_else(|| st.file.serial_number.clone());
            (
                chain,
                key,
                host,
                st.path(files::FORWARDING),
                st.store.clone(),
            )
        };
        let cfg = ForwardConfig::new(
            collector,
            s.server_name.clone(),
            roots,
            chain,
            store,
            key,
            host,
        );
        let cfg = configure(cfg, s, self.trust.subscribe())?;
        // The trail the device writes now (a factory reset replaces it;
        // forwarding then starts anew with the new one): only what that
        // log has made durable is sent.
        let log = self.audit.read().or_poisoned("audit")?.clone();
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
        let old = self.forwarder.lock().or_poisoned("forwarder")?.replace(fwd);
        if let Some(o) = old {
            o.stop();
        }
        Ok(())
    }

    /// After a factory reset that failed: forwarding as stored in
    /// `forwarding.json` (if the reset did not get to erase it) starts
    /// again; a failure to start is logged and shown in the posture.
    pub(crate) fn restart_forwarding_after_failed_reset(&self) {
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
                    error = e.to_string().as_str(),
                    "after a failed factory reset the forwarding settings could not be read"
                );
            }
        }
    }
}

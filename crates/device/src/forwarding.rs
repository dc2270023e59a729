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

use drivesec_audit::forward::{
    CollectorTrust, DEFAULT_MAX_MESSAGE, ENTERPRISE_NUMBER, ForwardConfig, check_enterprise_number,
    check_max_message,
};
use rustls::pki_types::CertificateRevocationListDer;
use tokio::sync::watch;

use crate::api::Device;
use crate::api::ops_types::ForwardingSettings;
use crate::runtime::Trust;
use crate::{DeviceError, Result};

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
pub(crate) fn configure(
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

/// Why the forwarder's collector is refused (its certificate failed the
/// check), for the posture; none when forwarding is off or delivering.
pub(crate) fn refused(dev: &Device) -> Option<String> {
    dev.forwarder
        .lock()
        .ok()?
        .as_ref()?
        .status()
        .collector_refused
}

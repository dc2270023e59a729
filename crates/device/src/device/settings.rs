//! The owner's settings held in the state directory (access policy,
//! Modbus rights) and what the device reports of them: the posture and
//! the staleness of the installed CRLs.

use std::sync::Arc;

use drivesec_fsutil::{self as fsu, Mode};
use drivesec_modbus::Rights;
use serde_json::json;

use drivesec_state::{StateDir, files};

use super::Device;
use crate::posture;
use crate::{DeviceError, OrPoisoned, Result};

/// The Modbus rights table a state directory stores (`modbus-rights.json`;
/// empty when none was set).
pub(super) fn stored_modbus_rights(st: &StateDir) -> Result<Rights> {
    let p = st.path(files::MODBUS_RIGHTS);
    if !p.exists() {
        return Ok(Rights::default());
    }
    let r: Rights = serde_json::from_slice(&fsu::read(&p)?).map_err(|e| DeviceError::State {
        path: p.clone(),
        reason: e.to_string(),
    })?;
    r.validate().map_err(|e| DeviceError::State {
        path: p.clone(),
        reason: e.to_string(),
    })?;
    Ok(r)
}

impl Device {
    /// A JSON file of the state directory (`files::*`), if present.
    pub(crate) fn state_json<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>> {
        let path = self.state.read().or_poisoned("state")?.path(name);
        if !path.exists() {
            return Ok(None);
        }
        let raw = fsu::read(&path)?;
        serde_json::from_slice(&raw)
            .map(Some)
            .map_err(|e| DeviceError::internal(format!("{}: {e}", path.display())))
    }

    /// Validates, stores and applies a new access policy.
    pub(crate) fn set_access_policy(&self, policy: drivesec_access::AccessPolicy) -> Result<()> {
        policy.validate()?;
        let path = self
            .state
            .read()
            .or_poisoned("state")?
            .path(files::ACCESS_POLICY);
        // Stored first: a policy that cannot be stored is applied nowhere
        // (not to the accounts either), rather than half.
        crate::blocking(|| policy.save(&path))?;
        self.with_accounts(|a| a.set_policy(policy.clone()))?;
        self.lock_sessions()?.set_policy(policy.session.clone());
        self.config.write().or_poisoned("config")?.access = policy;
        Ok(())
    }

    /// The security posture of the current configuration.
    ///
    /// What it needs of other locks is gathered first, and the state and
    /// configuration locks are taken last, together, for the assessment
    /// alone: `forwarding_settings` takes the state lock (read) itself,
    /// and a second read of a std `RwLock` this thread already holds
    /// waits behind a writer queued in between (`adopt_state`), which
    /// waits for the first: a deadlock. (No test forces that interleaving:
    /// nothing can hold a writer between the two reads from outside, so
    /// the order here is what prevents it.)
    pub(crate) fn posture(&self) -> Result<posture::Posture> {
        let forwarding = self.forwarding_settings()?.is_some();
        let users = self
            .accounts
            .lock()
            .or_poisoned("accounts")?
            .as_ref()
            .map(|a| a.users());
        let audit_findings = self.audit_log()?.findings();
        let live = posture::Live {
            audit_findings,
            firmware_verified: self
                .running
                .lock()
                .or_poisoned("running firmware")?
                .is_some(),
            modbus_roles: self
                .modbus_rights()
                .roles
                .keys()
                .map(|r| r.as_str().to_string())
                .collect(),
            forwarding_refused: self.forwarding_refused(),
        };
        let st = self.state.read().or_poisoned("state")?;
        let config = self.config.read().or_poisoned("config")?;
        Ok(posture::assess(
            &st,
            &config,
            forwarding,
            users.as_deref(),
            &live,
        ))
    }

    /// Stores and applies a new Modbus rights table.
    pub(crate) fn set_modbus_rights(&self, rights: Rights) -> Result<()> {
        rights
            .validate()
            .map_err(|e| DeviceError::Invalid(e.to_string()))?;
        let path = self
            .state
            .read()
            .or_poisoned("state")?
            .path(files::MODBUS_RIGHTS);
        let json =
            serde_json::to_vec_pretty(&rights).map_err(|e| DeviceError::internal(e.to_string()))?;
        fsu::write_atomic(&path, &json, Mode::Public)?;
        *self.modbus_rights.write().or_poisoned("modbus rights")? = Arc::new(rights);
        Ok(())
    }

    pub(crate) fn modbus_rights(&self) -> Arc<Rights> {
        self.modbus_rights
            .read()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Records, once per stage and loaded state, that an installed CRL
    /// became overdue (`trust.crl.overdue`, a warning) or stale
    /// (`trust.crl.stale`, an error log line too). Called every second by
    /// the runtime and after each CRL installation; cheap when nothing changed.
    pub(crate) fn report_stale_crl(&self) {
        use std::sync::atomic::Ordering;
        let (level, details, flag) = {
            let (Ok(st), Ok(c)) = (self.state.read(), self.config.read()) else {
                return;
            };
            let stages = posture::crl_stages(&st, &c, time::OffsetDateTime::now_utc());
            let level = stages.iter().map(|(_, s)| s.level()).max().unwrap_or(0);
            // Nothing to report, or already reported for this loaded state:
            // the usual case every second, done before any record is built.
            if level == 0 || st.crl_reported.load(Ordering::SeqCst) >= level {
                return;
            }
            let details: Vec<_> = stages
                .iter()
                .filter(|(_, s)| *s != posture::CrlStage::Current)
                .map(|(crl, s)| {
                    json!({"issuer": crl.issuer, "number": crl.number.to_string(),
                        "next_update": posture::rfc3339(crl.next_update), "status": s.name(),
                        "grace_secs": c.trust.crl_grace_secs})
                })
                .collect();
            (level, details, st.crl_reported.clone())
        };
        if flag.fetch_max(level, Ordering::SeqCst) >= level {
            return;
        }
        let action = if level == 2 {
            tracing::error!(crls = %serde_json::Value::from(details.clone()), "an owner CRL is stale: its revocations stay enforced, other certificates get in without current revocation status; install a newer CRL");
            "trust.crl.stale"
        } else {
            tracing::warn!(crls = %serde_json::Value::from(details.clone()), "an owner CRL is past its nextUpdate (within the grace period)");
            "trust.crl.overdue"
        };
        let r = self.audit(
            drivesec_audit::Event::new(drivesec_audit::Actor::Device, action)
                .outcome(drivesec_audit::Outcome::Failure)
                .details(json!({"crls": details}))
                .essential(),
        );
        if r.is_err() {
            // Not recorded: try again next time.
            flag.store(level - 1, Ordering::SeqCst);
        }
    }
}

//! Factory reset: asked for by one account and approved by a second
//! (`POST /api/v1/factory-reset`), or run locally; the owner's keys,
//! settings and accounts go, the trail is sealed and kept.

use std::sync::Arc;

use drivesec_access::{Permission, Sessions};
use drivesec_audit::{Actor, Event};
use drivesec_drive::ParamSet;
use drivesec_state::StateDir;
use drivesec_state::journal::failpoint_hold;
use zeroize::Zeroizing;

use super::{Caller, Device, open_audit};
use crate::{DeviceError, OrPoisoned, Result};

/// A factory reset asked for and not yet approved.
#[derive(Debug, Clone)]
pub(crate) struct ResetRequest {
    pub(crate) id: String,
    pub(crate) username: String,
    pub(crate) fingerprint: String,
    pub(crate) at: std::time::Instant,
}

/// How long a factory-reset request waits for its second person.
pub(crate) const RESET_APPROVAL_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);

impl Device {
    /// Why `c` cannot be the second person for `asked` (None: it can). The
    /// approver is another account, over another client certificate, settled
    /// in its role and password for `api.factory_reset_approver_min_age_secs`
    /// (an account the requester just made, re-roled or re-passworded
    /// cannot approve before the owner had time to see that in the trail),
    /// and the requester still holds `factory-reset`.
    pub(crate) fn second_person_refusal(
        &self,
        asked: &ResetRequest,
        c: &Caller,
    ) -> Result<Option<String>> {
        if asked.username == c.username {
            return Ok(Some("it asked for the reset itself".into()));
        }
        if asked.fingerprint == c.conn.fingerprint {
            return Ok(Some(
                "it uses the same client certificate as the account that asked".into(),
            ));
        }
        let min_age = self
            .config
            .read()
            .or_poisoned("config")?
            .api
            .factory_reset_approver_min_age_secs;
        let holds = |a: &drivesec_access::Accounts, user: &str| {
            a.permissions_of(user)
                .is_some_and(|p| p.contains(&Permission::FactoryReset))
        };
        let (settled, requester_can, approver_can) = self.with_accounts(|a| {
            Ok((
                a.settled_since(&c.username),
                holds(a, &asked.username),
                holds(a, &c.username),
            ))
        })?;
        if !requester_can {
            return Ok(Some(
                "the account that asked no longer holds factory-reset".into(),
            ));
        }
        if !approver_can {
            return Ok(Some("it no longer holds factory-reset".into()));
        }
        let age = settled
            .map(|t| (time::OffsetDateTime::now_utc() - t).whole_seconds())
            .unwrap_or(0);
        if age < min_age as i64 {
            return Ok(Some(format!(
                "its role or password changed {age} s ago; an approver must be settled for {min_age} s"
            )));
        }
        Ok(None)
    }

    /// Wipes ownership and returns the new one-time factory credential.
    /// When a collector is configured, waits (at most 5 s) until the trail up
    /// to `record_seq` (the reset's own record) has been forwarded, since the
    /// local trail is about to be wiped.
    pub(crate) fn factory_reset_now(&self, record_seq: u64) -> Result<Zeroizing<String>> {
        let forwarder = self.forwarder.lock().or_poisoned("forwarder")?.take();
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
        let config = self.config.read().or_poisoned("config")?.clone();
        *self.lock_sessions()? = Sessions::new(config.access.session.clone());
        // The old trail ends here, sealed by a final checkpoint; nothing
        // writes into its directory after it is archived.
        // A failed final checkpoint leaves the archived trail's tail
        // unsigned (verify names it); the approved reset goes on.
        if let Err(e) = self.audit_log()?.retire() {
            tracing::error!(error = %e, "factory reset: the old trail's final checkpoint failed");
        }
        let (cred, dir) = {
            let st = self.state.read().or_poisoned("state")?;
            match st.factory_reset().map_err(DeviceError::from) {
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
        failpoint_hold(&dir, "reset:erased");
        *self.params.lock().or_poisoned("params")? = ParamSet::default();
        let st = StateDir::load(&dir)?;
        let fresh = open_audit(&st, &config)?;
        self.adopt_state(st)?;
        *self.audit.write().or_poisoned("audit")? = Arc::new(fresh);
        self.audit(Event::new(Actor::Device, "device.factory-reset").essential())?;
        Ok(cred)
    }
}

//! The drive's tick thread wired to the device: STO changes recorded, the
//! drive's parameters written (over the API and Modbus alike), and the
//! tamper response (seal the trail, destroy every key, serve status only
//! under a throwaway identity).

use std::path::Path;
use std::sync::Arc;

use drivesec_access::Sessions;
use drivesec_audit::{Actor, Event};
use drivesec_drive::ParamSet;
use drivesec_fsutil::{self as fsu, Mode};
use drivesec_state::{StateDir, files};

use super::Device;
use crate::drive_loop::{DriveEvent, TamperResponse};
use crate::{DeviceError, OrPoisoned, Refusal, Result};

impl Device {
    /// Sets the parameters `changes` names, all or none: each value is
    /// checked first (one out of range is refused, `Unprocessable`
    /// `out-of-range`, and nothing changes), then the new set is stored
    /// in `params.json` (crash-safe, through `crate::blocking`: the fsync
    /// never holds up the network thread's other connections) and only
    /// then takes effect for the drive. Returns the set as it was. An
    /// empty `changes` changes and stores nothing.
    pub(crate) fn write_params(&self, changes: &[(&str, f64)]) -> Result<ParamSet> {
        let path = self.state.read().or_poisoned("state")?.path(files::PARAMS);
        let mut params = self.params.lock().or_poisoned("params")?;
        if changes.is_empty() {
            return Ok(params.clone());
        }
        let mut next = params.clone();
        for (name, value) in changes {
            next.set(name, *value).map_err(|e| {
                DeviceError::refused(Refusal::Unprocessable, "out-of-range", e.to_string())
            })?;
        }
        let json =
            serde_json::to_vec_pretty(&next).map_err(|e| DeviceError::internal(e.to_string()))?;
        crate::blocking(|| fsu::write_atomic(&path, &json, Mode::Public))?;
        Ok(std::mem::replace(&mut *params, next))
    }

    /// Starts the drive on its own thread; STO changes and the tamper
    /// response are recorded from another.
    pub(crate) fn start_drive(self: &Arc<Self>, state_dir: &Path) -> Result<()> {
        let (tampered, store) = {
            let st = self.state.read().or_poisoned("state")?;
            (st.tampered, st.store.clone())
        };
        // Seal, then erase: the trail's last signed checkpoint covers the
        // detection, because after the erase nothing can sign any more.
        let sealer = Arc::downgrade(self);
        let respond: TamperResponse = Box::new(move || {
            tracing::error!(
                "tamper input active: sealing the audit trail, then destroying every key"
            );
            if let Some(dev) = sealer.upgrade() {
                dev.seal_trail_before_erase();
            }
            let r = store.destroy_all().map_err(|e| e.to_string());
            match &r {
                Ok(n) => tracing::error!(keys = n, "tamper response: keys destroyed"),
                Err(e) => {
                    tracing::error!(error = %e, "tamper response: destroying the keys failed")
                }
            }
            r
        });
        let weak = Arc::downgrade(self);
        let (link, _tick) = crate::drive_loop::start(
            state_dir,
            self.params.clone(),
            tampered,
            respond,
            move |ev| {
                let Some(dev) = weak.upgrade() else { return };
                match ev {
                    DriveEvent::Sto(c) => {
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
                    DriveEvent::Tamper {
                        destroyed,
                        speed_rpm,
                    } => dev.tampered_now(destroyed, speed_rpm),
                }
            },
        )
        .map_err(|e| DeviceError::Invalid(format!("starting the drive: {e}")))?;
        let _ = self.drive.set(link);
        Ok(())
    }

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
            Err(e) => tracing::error!(
                error = e.to_string().as_str(),
                "tamper response: no audit trail"
            ),
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
        let when = crate::now_rfc3339();
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
                        tracing::error!(
                            error = e.to_string().as_str(),
                            "switching to the tampered identity"
                        );
                    }
                }
                Err(e) => tracing::error!(%e, "reloading the tampered state"),
            }
        }
    }
}

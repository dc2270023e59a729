//! The boot stage on the device: what runs is verified first, a trial is
//! confirmed by a health check (the drive loop, the crypto chip and the
//! trail all working) or reverted, and every outcome is recorded.

use drivesec_audit::{Actor, Event};
use drivesec_state::journal::failpoint_set;

use super::Device;
use crate::{OrPoisoned, Result};

impl Device {
    /// A clone of the firmware side, so the shared lock is released before
    /// any file is read or any image verified.
    pub(crate) fn firmware_snapshot(&self) -> Result<Option<crate::firmware::Firmware>> {
        Ok(self.firmware.lock().or_poisoned("firmware")?.clone())
    }

    /// Runs the boot stage (at start and on `POST /api/v1/firmware/reboot`):
    /// verifies what is to run, boots a pending image on trial, confirms it
    /// after the health check, and records the outcome (and any revert).
    pub(crate) fn boot_firmware(&self) -> Result<Option<crate::firmware::Running>> {
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
                && !failpoint_set(&st.dir, "boot:health-fail")
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
                *self.running.lock().or_poisoned("running firmware")? = Some(running.clone());
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
                Err(e)
            }
        }
    }
}

//! The story `drivesec demo` tells, end to end, with every claim checked,
//! one module per chapter.
//!
//! A lab is built (manufacturer CA, OEM CA, factory-provisioned
//! devices, role clients), then every identity is verified independently:
//! chains with rustls-webpki (and `openssl verify` when it is installed), each
//! device proves possession of its IDevID key by signing a fresh challenge
//! inside its keystore, each factory credential matches its device's hash and
//! a wrong one does not, and each client certificate carries its role.
//! Then the running devices: one allowed and one denied action per role,
//! the firmware story (unapproved image refused, approved release confirmed
//! after a trial boot, attestation, a corrupted update reverted), the drive
//! (operator start, viewer refused, STO from the local input beats every
//! command, no restart after release), and each audit trail verified.

mod audit;
mod drive;
mod firmware;
mod fleet;
mod identities;
mod plan;
mod roles;
mod tamper;
mod validation;

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::up::{LabOptions, LabStep, down, up};
use crate::{LabError, Result};

pub use audit::AuditReport;
pub use drive::DriveReport;
pub use firmware::FirmwareReport;
pub use fleet::FleetReport;
pub use identities::{ClientReport, DeviceReport};
pub use plan::PlanReport;
pub use roles::RoleReport;
pub use tamper::{ReprovisionReport, TamperReport};
pub use validation::ValidationReport;

/// What the demo did and found.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// The lab directory.
    pub lab_dir: PathBuf,
    /// Devices.
    pub devices: Vec<DeviceReport>,
    /// Clients.
    pub clients: Vec<ClientReport>,
    /// A login and an allowed and a denied action per role, per device.
    pub sessions: Vec<RoleReport>,
    /// The firmware update story.
    pub firmware: Option<FirmwareReport>,
    /// The drive and STO story.
    pub drive: Option<DriveReport>,
    /// The IEC 62443 assessment with live SL-A.
    pub plan: Option<PlanReport>,
    /// Provisioning to SL-T and validation.
    pub validation: Option<ValidationReport>,
    /// Rollout, renewal, access review.
    pub fleet: Option<FleetReport>,
    /// The tamper story.
    pub tamper: Option<TamperReport>,
    /// Each device's audit trail.
    pub audit: Vec<AuditReport>,
    /// Everything checked out.
    pub ok: bool,
}

/// Builds a lab with `opts` and verifies it, narrating to `out`.
pub fn run(
    opts: &LabOptions,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(LabStep),
) -> Result<DemoReport> {
    let w = |out: &mut dyn Write, s: String| {
        let _ = writeln!(out, "{s}");
    };
    w(
        out,
        format!("drivesec demo: building a lab in {}", opts.dir.display()),
    );
    let lab = up(opts, progress)?;
    // Stop the daemons whatever happens next.
    struct Down<'a>(&'a Path);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            let _ = down(self.0);
        }
    }
    let _down = Down(&opts.dir);
    w(
        out,
        "  manufacturer CA and OEM CA created (keys in soft keystores)".into(),
    );
    w(
        out,
        format!(
            "  {} device(s) factory-provisioned with {} keystores; {} role clients issued",
            lab.devices.len(),
            opts.keystore.as_str(),
            lab.clients.len()
        ),
    );
    if lab.devices.iter().any(|d| d.api.is_some()) {
        w(
            out,
            "  each device runs drivesecd on loopback, was commissioned (LDevID from the OEM CA, first security-admin) and has one account per role".into(),
        );
    }
    let mut report = identities::verify_lab(&lab, &opts.dir, out)?;
    if lab.devices.iter().any(|d| d.api.is_some()) {
        report.sessions = roles::role_story(&lab, out)?;
        let fw = firmware::firmware_story(&lab, &opts.dir, out)?;
        let drive = drive::drive_story(&lab, out)?;
        report.audit = audit::audit_story(&lab, out)?;
        let plan = plan::plan_story(&lab, &opts.dir, out)?;
        let validation = validation::validation_story(&lab, &opts.dir, out)?;
        let fleet = fleet::fleet_story(&lab, &opts.dir, out)?;
        let tamper = tamper::tamper_story(&lab, &opts.dir, out)?;
        report.ok = report
            .sessions
            .iter()
            .all(|s| s.login_ok && (200..300).contains(&s.allowed.1) && s.denied.1 == 403)
            && report
                .audit
                .iter()
                .all(|a| a.intact && a.denied_records >= lab.users.len())
            && fw.as_ref().is_none_or(|f| {
                f.unapproved_status == 400
                    && f.running_after_update == f.release
                    && f.confirmed
                    && f.attested
                    && f.running_after_broken == f.release
                    && f.revert_reason.is_some()
            })
            && drive.as_ref().is_none_or(|d| {
                d.running_speed_rpm > 0.0
                    && d.viewer_exception == 1
                    && d.sto_state == "safe-torque-off"
                    && d.sto_torque_pct == 0.0
                    && d.after_release == "ready"
            })
            && plan
                .as_ref()
                .is_none_or(|p| !p.live_devices.is_empty() && p.zones == 8)
            && tamper.as_ref().is_none_or(|t| {
                t.keys_before > 0
                    && t.keys_after == 0
                    && t.tampered
                    && t.identity_refused
                    && t.login_status == 423
                    && t.reprovisioned.as_ref().is_none_or(|r| {
                        r.old_idevid_in_crl
                            && r.keys_after == 2
                            && r.new_idevid_serial != r.old_idevid_serial
                    })
            });
        report.firmware = fw;
        report.drive = drive;
        report.tamper = tamper;
        report.plan = plan;
        report.validation = validation;
        report.fleet = fleet;
        if !report.ok {
            return Err(LabError::Check(format!(
                "the running lab did not behave: {}",
                serde_json::to_string(&report).unwrap_or_default()
            )));
        }
        w(
            out,
            "\nEverything checked out; the daemons are stopped now. For a lab that keeps running: drivesec lab up --dir DIR".into(),
        );
    }
    Ok(report)
}

pub(crate) fn mark(ok: bool) -> &'static str {
    if ok { "ok" } else { "FAILED" }
}

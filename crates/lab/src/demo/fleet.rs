//! Chapter 8: the fleet: the lab's drives in a fleet store, an approved
//! release rolled out in waves (the second drive fails its health check
//! and reverts, its wave halts), every LDevID renewed through a key each
//! drive makes, a fleet scan, and the access review.

use std::io::Write;
use std::path::{Path, PathBuf};

use drivesec_ops::rollout::{Event, Plan};
use serde::Serialize;

use crate::manifest::{LabDevice, LabManifest};
use crate::{LabError, Result};

/// The fleet story.
#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    /// The rollout halted (expected: the second drive fails its health check).
    pub halted: bool,
    /// Drives running the release.
    pub updated: Vec<String>,
    /// Drives that reverted.
    pub reverted: Vec<String>,
    /// LDevIDs renewed.
    pub renewed: usize,
    /// Every audit trail verified.
    pub trails_intact: bool,
    /// The fleet store.
    pub store: PathBuf,
}

/// The fleet story: the lab's drives in a fleet store (SQLite in the lab),
/// an approved release rolled out in waves with the second drive failing
/// its health check and reverting while its wave halts, every LDevID
/// renewed through a key each drive makes, and the access review.
pub(super) fn fleet_story(
    lab: &LabManifest,
    dir: &Path,
    out: &mut dyn Write,
) -> Result<Option<FleetReport>> {
    let running: Vec<&LabDevice> = lab.devices.iter().filter(|d| d.api.is_some()).collect();
    if running.len() < 3 {
        return Ok(None);
    }
    let work = dir.join("firmware").join("releases");
    let image = lab.release(&work, "1.3.0", 4, 256 * 1024, true)?;
    // The running drives, updated by the lab's engineer.
    let (targets, trust) = lab.rollout_targets()?;
    let store_path = dir.join("fleet.db");
    let mut store = drivesec_fleet::open(&format!("sqlite:{}", store_path.display()))
        .map_err(LabError::Store)?;
    let _ = writeln!(
        out,
        "\nThe fleet (store {}): rolling out the approved release 1.3.0 in waves; {}'s next health check is made to fail:",
        store_path.display(),
        running[1].name
    );
    let failpoint = running[1].dir.join("test-failpoint");
    drivesec_fsutil::write_atomic(
        &failpoint,
        b"boot:health-fail",
        drivesec_fsutil::Mode::Private,
    )?;
    let mut lines = vec![];
    let outcome = drivesec_ops::rollout::run(
        store.as_mut(),
        &targets,
        &image,
        &trust,
        &Plan {
            canary: 1,
            max_failure_rate: 0.2,
        },
        &mut |e| {
            let l = match &e {
                Event::Wave { wave, devices } => {
                    Some(format!("  wave {wave}: {}", devices.join(", ")))
                }
                Event::Device {
                    device,
                    state,
                    detail,
                } if matches!(
                    state,
                    drivesec_fleet::DeviceState::Done
                        | drivesec_fleet::DeviceState::Reverted
                        | drivesec_fleet::DeviceState::Failed
                ) =>
                {
                    Some(format!("    {device}: {} ({detail})", state.as_str()))
                }
                Event::Halted { wave, failed, of } => Some(format!(
                    "  halted: wave {wave} had {failed} failure(s) of {of}; the failed drive reverted by itself"
                )),
                Event::Finished { done, failed } => {
                    Some(format!("  finished: {done} updated, {failed} failed"))
                }
                _ => None,
            };
            if let Some(l) = l {
                lines.push(l);
            }
        },
    );
    let _ = std::fs::remove_file(&failpoint);
    let outcome = outcome?;
    for l in &lines {
        let _ = writeln!(out, "{l}");
    }
    let mut oem = drivesec_pki::Ca::open(&lab.oem_ca_dir)?;
    let reach = lab.targets()?;
    let renewed = drivesec_ops::incident::renew(&reach, &mut oem, 30, 730, true)?;
    let _ = writeln!(
        out,
        "  LDevIDs renewed through keys the drives made themselves: {}",
        renewed
            .iter()
            .filter(|r| r.renewed)
            .map(|r| format!(
                "{} (new serial {})",
                r.device,
                r.serial.as_deref().unwrap_or("?")
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let seen = drivesec_ops::incident::scan(&reach, store.as_mut())?;
    let review = drivesec_ops::review::review(&reach, &dir.join("trails"), 90, 5)?;
    let review_path = dir.join("access-review.json");
    drivesec_fsutil::write_atomic(
        &review_path,
        serde_json::to_string_pretty(&review)
            .map_err(|e| LabError::Encode(e.to_string()))?
            .as_bytes(),
        drivesec_fsutil::Mode::Public,
    )?;
    let never: usize = review
        .iter()
        .map(|d| d.accounts.iter().filter(|a| a.never_used).count())
        .sum();
    let _ = writeln!(
        out,
        "  fleet scan: {} drive(s) recorded; access review: trails intact on {} of {}, {never} never-used account(s), {} privilege change(s): {}",
        seen.len(),
        review.iter().filter(|d| d.trail_intact).count(),
        review.len(),
        review
            .iter()
            .map(|d| d.privilege_changes.len())
            .sum::<usize>(),
        review_path.display()
    );
    Ok(Some(FleetReport {
        halted: outcome.halted,
        updated: outcome.done,
        reverted: outcome.failed,
        renewed: renewed.iter().filter(|r| r.renewed).count(),
        trails_intact: review.iter().all(|d| d.trail_intact),
        store: store_path,
    }))
}

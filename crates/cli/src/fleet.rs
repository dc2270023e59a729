//! `drivesec fleet ...`: rollouts and the fleet's state.

use anyhow::{Result, bail};
use drivesec_fsutil as fsu;
use drivesec_oem::rollout::{Event, Fleet, Plan};

use crate::cli::{FleetCommand, FleetDevices};
use crate::text::safe;

/// A fresh private directory under the system's temporary directory
/// (random name, created exclusively, 0700).
pub(crate) fn scratch_dir(what: &str) -> Result<std::path::PathBuf> {
    crate::commands::fresh_private_dir(&format!("drivesec-{what}"))
}

/// Where a fleet command's devices come from.
pub(crate) enum Source {
    Lab(drivesec_oem::lab::LabManifest),
    Inventory(drivesec_oem::inventory::Inventory, std::path::PathBuf),
}

impl FleetDevices {
    pub(crate) fn source(&self) -> Result<Source> {
        Ok(match (&self.lab, &self.inventory) {
            (Some(lab), _) => Source::Lab(drivesec_oem::lab::LabManifest::load(lab)?),
            (None, Some(path)) => Source::Inventory(
                drivesec_oem::inventory::Inventory::load(path)?,
                path.clone(),
            ),
            (None, None) => bail!("give --lab DIR or --inventory FILE"),
        })
    }

    /// The devices, reached as the security administrator, `--parallel` at
    /// a time. A missing CRL stops here (unless `--insecure-no-crl`);
    /// warnings (a stale CRL) go to stderr.
    pub(crate) fn reach(&self) -> Result<drivesec_oem::incident::Reach> {
        let mut reach = match self.source()? {
            Source::Lab(m) => drivesec_oem::incident::Reach::from_lab(&m)?,
            Source::Inventory(inv, path) => {
                drivesec_oem::incident::Reach::from_inventory(&inv, &path)?
            }
        };
        reach.parallel = self.parallel.max(1);
        if self.insecure_no_crl {
            reach.allow_missing_crl();
        }
        if let drivesec_oem::client::Revocation::Missing(why) = &reach.revocation {
            bail!("{why}");
        }
        warn(&reach.warnings);
        Ok(reach)
    }
}

/// Prints each warning on stderr.
pub(crate) fn warn(warnings: &[String]) {
    for w in warnings {
        eprintln!("warning: {}", safe(w));
    }
}

/// The error for devices a fleet command could not work on, if any.
pub(crate) fn failed_devices(what: &str, failed: &[String]) -> Result<()> {
    if failed.is_empty() {
        return Ok(());
    }
    bail!(
        "{} device(s) could not be {what}: {}",
        failed.len(),
        safe(&failed.join(", "))
    )
}

/// Runs a `fleet` command.
pub fn run(c: FleetCommand, json: bool) -> Result<()> {
    match c {
        FleetCommand::Rollout {
            store,
            devices,
            release,
            canary,
            max_failure_rate,
        } => {
            if !(0.0..=1.0).contains(&max_failure_rate) {
                bail!("--max-failure-rate must be between 0 and 1, not {max_failure_rate}");
            }
            let parallel = devices.parallel;
            let mut fleet = match devices.source()? {
                Source::Lab(m) => Fleet::from_lab(&m)?,
                Source::Inventory(inv, path) => Fleet::from_inventory(&inv, &path)?,
            };
            if devices.insecure_no_crl {
                fleet.allow_missing_crl();
            }
            if let drivesec_oem::client::Revocation::Missing(why) = &fleet.operator.revocation {
                bail!("{why}");
            }
            warn(&fleet.warnings);
            let targets = &fleet.targets;
            let mut s = drivesec_fleet::open(&store)?;
            let bar = (!json).then(|| {
                let b = indicatif::ProgressBar::new(targets.len() as u64);
                b.set_style(
                    indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                b
            });
            let mut on_event = |e: Event| {
                if json {
                    if let Ok(l) = serde_json::to_string(&e) {
                        println!("{l}");
                    }
                    return;
                }
                let Some(b) = &bar else { return };
                match &e {
                    Event::Campaign {
                        id,
                        release,
                        remaining,
                        resumed,
                    } => {
                        b.set_position(done_before(targets.len(), *remaining));
                        b.println(format!(
                            "{} campaign {}: release {}, {remaining} device(s) to go",
                            if *resumed { "resuming" } else { "starting" },
                            safe(id),
                            safe(release)
                        ));
                    }
                    Event::Wave { wave, devices } => {
                        b.println(format!("wave {wave}: {}", safe(&devices.join(", "))));
                    }
                    Event::Device {
                        device,
                        state,
                        detail,
                    } => match state {
                        drivesec_fleet::DeviceState::Done
                        | drivesec_fleet::DeviceState::Reverted
                        | drivesec_fleet::DeviceState::Failed => {
                            b.inc(1);
                            b.println(format!(
                                "  {}: {} ({})",
                                safe(device),
                                state_name(*state),
                                safe(detail)
                            ));
                        }
                        _ => b.set_message(format!("{}: {}", safe(device), safe(detail))),
                    },
                    Event::Halted { wave, failed, of } => {
                        b.println(format!(
                            "halted: wave {wave} had {failed} failure(s) of {of}"
                        ));
                    }
                    Event::Finished { done, failed } => {
                        b.println(format!("finished: {done} updated, {failed} failed"));
                    }
                }
            };
            let out = drivesec_oem::rollout::run(
                s.as_mut(),
                targets,
                &fleet.operator,
                &release,
                &fleet.trust,
                &Plan {
                    canary,
                    parallel,
                    max_failure_rate,
                },
                &mut on_event,
            )?;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            if out.halted {
                bail!(
                    "campaign {} halted: {} failed ({})",
                    safe(&out.campaign),
                    out.failed.len(),
                    safe(&out.failed.join(", "))
                );
            }
            Ok(())
        }
        FleetCommand::Scan {
            store,
            devices,
            margin_days,
        } => {
            let reach = devices.reach()?;
            let mut s = drivesec_fleet::open(&store)?;
            let seen = drivesec_oem::incident::scan(&reach, s.as_mut())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&seen)?);
            } else {
                for d in &seen {
                    let note = if d.tampered {
                        "TAMPERED (claimed, unauthenticated: it presents only its tamper marker): \
                         keys destroyed, flagged for re-provisioning"
                            .to_string()
                    } else if let Some(e) = &d.error {
                        match &d.tamper_claim {
                            Some(c) => format!("FAILED {}; tamper {}", safe(e), safe(c)),
                            None => format!("FAILED {}", safe(e)),
                        }
                    } else if !d.reachable {
                        "unreachable".to_string()
                    } else {
                        match d.days_left {
                            Some(n) if n < margin_days => {
                                format!("LDevID expires in {n} days: renew")
                            }
                            Some(n) => {
                                format!("LDevID {} valid {n} more days", safe(&d.ldevid_serial))
                            }
                            None => String::new(),
                        }
                    };
                    let boot = d
                        .boot_issue
                        .as_ref()
                        .map(|b| format!("; firmware reverted: {}", safe(b)))
                        .unwrap_or_default();
                    println!(
                        "{:<12} {:<8} {note}{boot}",
                        safe(&d.device),
                        safe(&d.firmware_version)
                    );
                }
            }
            let flagged = seen.iter().filter(|d| d.tampered).count();
            let failed: Vec<String> = seen
                .iter()
                .filter(|d| d.error.is_some())
                .map(|d| d.device.clone())
                .collect();
            if flagged > 0 {
                bail!(
                    "{flagged} device(s) report tamper{}",
                    if failed.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; {} could not be scanned: {}",
                            failed.len(),
                            safe(&failed.join(", "))
                        )
                    }
                );
            }
            failed_devices("scanned", &failed)
        }
        FleetCommand::Renew {
            devices,
            ca,
            margin_days,
            days,
            force,
        } => {
            let ca = match (ca, devices.source()?) {
                (Some(ca), _) => ca,
                (None, Source::Lab(m)) => m.oem_ca_dir,
                (None, Source::Inventory(_, path)) => bail!(
                    "--ca OEM_CA_DIR is needed with --inventory {} (the CA that signs the new LDevIDs)",
                    path.display()
                ),
            };
            let mut oem = drivesec_pki::Ca::open(&ca)?;
            let reach = devices.reach()?;
            let r = drivesec_oem::incident::renew(&reach, &mut oem, margin_days, days, force)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                for x in &r {
                    if let Some(e) = &x.error {
                        println!("{}: FAILED {}", safe(&x.device), safe(e));
                    } else if x.renewed {
                        println!(
                            "{}: renewed (was {} days from expiry, LDevID {}), new LDevID {} valid until {}",
                            safe(&x.device),
                            x.days_left_before
                                .map(|d| d.to_string())
                                .unwrap_or_else(|| "?".into()),
                            safe(x.previous_serial.as_deref().unwrap_or("?")),
                            safe(x.serial.as_deref().unwrap_or("?")),
                            safe(x.not_after.as_deref().unwrap_or("?"))
                        );
                    } else {
                        println!(
                            "{}: not due ({} days left)",
                            safe(&x.device),
                            x.days_left_before.unwrap_or_default()
                        );
                    }
                }
            }
            let failed: Vec<String> = r
                .iter()
                .filter(|x| x.error.is_some())
                .map(|x| x.device.clone())
                .collect();
            failed_devices("renewed", &failed)
        }
        FleetCommand::PushCrl { devices, crl } => {
            let pem = fsu::read_to_string(&crl)?;
            let r = drivesec_oem::incident::push_crl(&devices.reach()?, &pem)?;
            let failed: Vec<String> = r
                .iter()
                .filter_map(|(d, x)| x.as_ref().err().map(|e| format!("{d}: {e}")))
                .collect();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "installed": r.iter().filter(|(_, x)| x.is_ok()).map(|(d, _)| d).collect::<Vec<_>>(),
                        "failed": failed,
                    }))?
                );
            } else {
                for (d, x) in &r {
                    match x {
                        Ok(()) => println!("{}: CRL installed", safe(d)),
                        Err(e) => println!("{}: FAILED {}", safe(d), safe(&e.to_string())),
                    }
                }
            }
            if !failed.is_empty() {
                bail!("the CRL did not reach {} device(s)", failed.len());
            }
            Ok(())
        }
        FleetCommand::Status { store, campaign } => {
            let mut s = drivesec_fleet::open(&store)?;
            let devices = s.devices()?;
            let camp = match &campaign {
                Some(id) => Some(s.campaign_devices(id)?),
                None => None,
            };
            let mut last_validation = std::collections::BTreeMap::new();
            for d in &devices {
                if let Some(v) = s.validations(&d.name)?.pop() {
                    last_validation.insert(d.name.clone(), v);
                }
            }
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "devices": devices, "campaign": camp, "last_validation": last_validation,
                    }))?
                );
                return Ok(());
            }
            for d in &devices {
                let validated = match last_validation.get(&d.name) {
                    Some(v) => format!(
                        "  validated {}: {}{}",
                        safe(&v.at),
                        if v.passed {
                            "passed".to_string()
                        } else {
                            format!("{} finding(s)", v.findings)
                        },
                        if v.profile.is_empty() {
                            String::new()
                        } else {
                            format!(" against {}", safe(&v.profile))
                        }
                    ),
                    None => String::new(),
                };
                println!(
                    "{:<12} {:<10} {:<6} {}{}{validated}",
                    safe(&d.name),
                    safe(if d.firmware_version.is_empty() {
                        "?"
                    } else {
                        &d.firmware_version
                    }),
                    safe(if d.zone.is_empty() { "-" } else { &d.zone }),
                    safe(d.campaign.as_deref().unwrap_or("-")),
                    if d.tampered { "  TAMPERED" } else { "" }
                );
                if !d.boot_issue.is_empty() {
                    println!("{:<12} firmware reverted: {}", "", safe(&d.boot_issue));
                }
            }
            if let (Some(id), Some(c)) = (&campaign, &camp) {
                println!("campaign {}:", safe(id));
                for d in c {
                    println!(
                        "  wave {} {:<12} {:<9} {}",
                        d.wave,
                        safe(&d.device),
                        state_name(d.state),
                        safe(&d.detail)
                    );
                }
            }
            Ok(())
        }
    }
}

fn state_name(s: drivesec_fleet::DeviceState) -> &'static str {
    s.as_str()
}

/// Where a (resumed) campaign's progress bar starts: the `targets` to work
/// on less the `remaining` ones the store still holds unfinished, which can
/// be more than the targets (devices that left the inventory since).
fn done_before(targets: usize, remaining: usize) -> u64 {
    targets.saturating_sub(remaining) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_survives_more_remaining_than_targets() {
        assert_eq!(done_before(4, 1), 3);
        assert_eq!(done_before(4, 4), 0);
        // The store still holds 5 unfinished devices, 2 of them no longer
        // in the inventory: no underflow (a panic in debug builds).
        assert_eq!(done_before(3, 5), 0);
    }
}

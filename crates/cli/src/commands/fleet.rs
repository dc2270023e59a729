//! `drivesec fleet ...`: rollouts in waves, scans, LDevID renewal, CRL
//! pushes and the fleet's state (docs/fleet.md).

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Subcommand;
use drivesec_fsutil as fsu;
use drivesec_ops::rollout::{Event, Plan};

use crate::fleet_devices::{FleetDevices, Source, failed_devices};
use crate::output::{bar_line, print_json, progress_bar};
use crate::text::safe;

/// `drivesec fleet ...`.
#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Roll an OEM-approved release across the lab's devices in waves: a
    /// canary, then doubling batches; halts when a wave fails too often;
    /// resumes after being killed.
    Rollout {
        /// The fleet store (`sqlite:PATH` or `postgres://...`).
        #[arg(long, env = "DRIVESEC_FLEET_STORE", hide_env_values = true)]
        store: String,
        /// The devices (a rollout acts as the lab's engineer or the
        /// inventory's [operator], and checks releases against the lab's or
        /// the inventory's trust.firmware_trust).
        #[command(flatten)]
        devices: FleetDevices,
        /// The release image (packed by the vendor, approved by the OEM).
        #[arg(long)]
        release: PathBuf,
        /// Devices in the canary wave.
        #[arg(long, default_value_t = 1)]
        canary: usize,
        /// Halt when more than this fraction of a wave fails (0..1).
        #[arg(long, default_value_t = 0.2)]
        max_failure_rate: f64,
    },
    /// Read every device's state into the store: firmware, LDevID expiry,
    /// tamper (a tampered device is flagged for re-provisioning).
    Scan {
        /// The fleet store.
        #[arg(long, env = "DRIVESEC_FLEET_STORE", hide_env_values = true)]
        store: String,
        /// The devices (reached as the security administrator).
        #[command(flatten)]
        devices: FleetDevices,
        /// Warn about LDevIDs expiring within this many days.
        #[arg(long, default_value_t = 30)]
        margin_days: i64,
    },
    /// Renew every LDevID expiring within the margin: each device makes a new
    /// key in its keystore, the OEM CA signs it, the device switches to it.
    Renew {
        /// The devices (reached as the security administrator).
        #[command(flatten)]
        devices: FleetDevices,
        /// The OEM CA that signs the new LDevIDs (default: the lab's; needed
        /// with --inventory).
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Renew what expires within this many days.
        #[arg(long, default_value_t = 30)]
        margin_days: i64,
        /// Validity of the new certificates, days.
        #[arg(long, default_value_t = 730)]
        days: i64,
        /// Renew every device now.
        #[arg(long)]
        force: bool,
    },
    /// After a key compromise: install a CRL on every device.
    PushCrl {
        /// The devices (reached as the security administrator).
        #[command(flatten)]
        devices: FleetDevices,
        /// The CRL (PEM), as `ca revoke` publishes it.
        #[arg(long)]
        crl: PathBuf,
    },
    /// Every device's firmware version and campaign, and a campaign's device states.
    Status {
        /// The fleet store.
        #[arg(long, env = "DRIVESEC_FLEET_STORE", hide_env_values = true)]
        store: String,
        /// Also show this campaign's devices.
        #[arg(long)]
        campaign: Option<String>,
    },
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
            let (fleet, trust) = match devices.source()? {
                Source::Lab(m, _) => m.rollout_targets()?,
                Source::Inventory(inv, path) => drivesec_ops::rollout::from_inventory(&inv, &path)?,
            };
            let fleet = devices.finish(fleet)?;
            let targets = &fleet.devices;
            let mut s = drivesec_fleet::open(&store)?;
            // Hidden with --json, and without a terminal: then its lines go
            // to stdout ([`bar_line`]).
            let bar = progress_bar(json, targets.len() as u64, "{pos}/{len} {msg}");
            let mut on_event = |e: Event| {
                if json {
                    if let Ok(l) = serde_json::to_string(&e) {
                        println!("{l}");
                    }
                    return;
                }
                match &e {
                    Event::Campaign {
                        id,
                        release,
                        remaining,
                        resumed,
                    } => {
                        bar.set_position(done_before(targets.len(), *remaining));
                        bar_line(
                            &bar,
                            format!(
                                "{} campaign {}: release {}, {remaining} device(s) to go",
                                if *resumed { "resuming" } else { "starting" },
                                safe(id),
                                safe(release)
                            ),
                        );
                    }
                    Event::Wave { wave, devices } => {
                        bar_line(&bar, format!("wave {wave}: {}", safe(&devices.join(", "))));
                    }
                    Event::Device {
                        device,
                        state,
                        detail,
                    } => match state {
                        drivesec_fleet::DeviceState::Done
                        | drivesec_fleet::DeviceState::Reverted
                        | drivesec_fleet::DeviceState::Failed => {
                            bar.inc(1);
                            bar_line(
                                &bar,
                                format!(
                                    "  {}: {} ({})",
                                    safe(device),
                                    state.as_str(),
                                    safe(detail)
                                ),
                            );
                        }
                        _ => bar.set_message(format!("{}: {}", safe(device), safe(detail))),
                    },
                    Event::Halted { wave, failed, of } => {
                        bar_line(
                            &bar,
                            format!("halted: wave {wave} had {failed} failure(s) of {of}"),
                        );
                    }
                    Event::Finished { done, failed } => {
                        bar_line(&bar, format!("finished: {done} updated, {failed} failed"));
                    }
                }
            };
            let out = drivesec_ops::rollout::run(
                s.as_mut(),
                &fleet,
                &release,
                &trust,
                &Plan {
                    canary,
                    max_failure_rate,
                },
                &mut on_event,
            )?;
            bar.finish_and_clear();
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
            let seen = drivesec_ops::incident::scan(&reach, s.as_mut())?;
            if json {
                print_json(&seen)?;
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
            // lab.json or the inventory, read once for the CA and the devices.
            let source = devices.source()?;
            let ca = match (ca, &source) {
                (Some(ca), _) => ca,
                (None, Source::Lab(m, _)) => m.oem_ca_dir.clone(),
                (None, Source::Inventory(_, path)) => bail!(
                    "--ca OEM_CA_DIR is needed with --inventory {} (the CA that signs the new LDevIDs)",
                    path.display()
                ),
            };
            let mut oem = drivesec_pki::Ca::open(&ca)?;
            let reach = devices.finish(source.targets()?)?;
            let r = drivesec_ops::incident::renew(&reach, &mut oem, margin_days, days, force)?;
            if json {
                print_json(&r)?;
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
            let r = drivesec_ops::incident::push_crl(&devices.reach()?, &pem)?;
            let failed: Vec<String> = r
                .iter()
                .filter_map(|(d, x)| x.as_ref().err().map(|e| format!("{d}: {e}")))
                .collect();
            if json {
                print_json(&serde_json::json!({
                    "installed": r.iter().filter(|(_, x)| x.is_ok()).map(|(d, _)| d).collect::<Vec<_>>(),
                    "failed": failed,
                }))?;
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
                print_json(&serde_json::json!({
                    "devices": devices, "campaign": camp, "last_validation": last_validation,
                }))?;
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
                        d.state.as_str(),
                        safe(&d.detail)
                    );
                }
            }
            Ok(())
        }
    }
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

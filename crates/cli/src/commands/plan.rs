//! `drivesec plan ...`: check, assess, profile and firewall a plant model
//! (docs/risk-method.md).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use drivesec_fsutil::{self as fsu, Mode};
use drivesec_iec62443::check::Problem;
use drivesec_iec62443::model::{self, Loaded};
use drivesec_iec62443::{PlanError, assess, firewall, report};
use drivesec_ops::targets::DEFAULT_PARALLEL;

use crate::dirs::{check_output_dir, output_dir};
use crate::fleet_devices::{failed_devices, finish};
use crate::output::{print_document, print_json};
use crate::text::{safe, safe_lines};

/// `drivesec plan ...`.
#[derive(Debug, Subcommand)]
pub enum PlanCommand {
    /// Validate a plant model (TOML); every problem with file, line and
    /// column; exit 2 when there is one.
    Check {
        /// The model.
        model: PathBuf,
    },
    /// Assess a model (ZCR 1 to 7): SL-T per zone with its rationale, each
    /// component's SL-C against it, conduits, residual risk, approvals.
    Assess {
        /// The model.
        model: PathBuf,
        /// Write assessment.json, assessment.md and assessment.html (with the
        /// zone drawing) into this directory instead of printing.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Fetch live SL-A from the running devices of this lab (`lab.json`,
        /// or its directory); assets name their device with `device = ...`.
        #[arg(long, conflicts_with = "live_inventory")]
        live: Option<PathBuf>,
        /// Or from the devices of this inventory file (docs/validation.md).
        #[arg(long)]
        live_inventory: Option<PathBuf>,
    },
    /// Derive the device profile a zone's SL-T calls for (TLS, passwords,
    /// lockout, sessions, Modbus rights, audit forwarding, certificate
    /// lifetimes, accounts), as a reviewed, diffable TOML file.
    Profile {
        /// The model.
        model: PathBuf,
        /// The zone.
        #[arg(long)]
        zone: String,
        /// Write it here instead of printing.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write a synthetic plant model (zones of ten assets, five conduits
    /// per zone, a threat per zone and per ten conduits), for scale tests.
    Generate {
        /// How many assets.
        #[arg(long, default_value_t = 1000)]
        assets: usize,
        /// Seed (same seed, same plant).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Write it here instead of printing.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// nftables rules from the conduits: deny by default, allow exactly the
    /// declared flows (zones need `subnet`).
    Firewall {
        /// The model.
        model: PathBuf,
        /// Write the ruleset here instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Loads and checks; problems are printed (as JSON with `--json`) and make
/// the command fail with exit code 2.
fn load_checked(path: &Path, json: bool) -> Result<Loaded> {
    let (loaded, problems): (Option<Loaded>, Vec<Problem>) = match model::load(path) {
        Ok(l) => {
            let p = drivesec_iec62443::check::check(&l);
            (Some(l), p)
        }
        Err(PlanError::Invalid(p)) => (None, p),
        Err(e) => return Err(e.into()),
    };
    let errors = problems.iter().filter(|p| !p.warning).count();
    if json && (errors > 0 || loaded.is_none()) {
        print_json(&serde_json::json!({"valid": false, "problems": problems}))?;
    } else {
        for p in &problems {
            eprintln!("{}", safe_lines(&p.to_string()));
        }
    }
    match loaded {
        Some(l) if errors == 0 => Ok(l),
        _ => bail!(
            "{}: {errors} problem(s); the model is not valid",
            path.display()
        ),
    }
}

fn lab_json(p: &Path) -> PathBuf {
    if p.is_dir() {
        p.join("lab.json")
    } else {
        p.to_path_buf()
    }
}

/// Runs a `plan` command.
pub fn run(c: PlanCommand, json: bool) -> Result<()> {
    match c {
        PlanCommand::Check { model } => {
            let l = load_checked(&model, json)?;
            let m = &l.model;
            if json {
                print_json(&serde_json::json!({
                    "valid": true, "problems": [], "assets": m.assets.len(), "zones": m.zones.len(),
                    "conduits": m.conduits.len(), "threats": m.threats.len(),
                }))?;
            } else {
                println!(
                    "{}: valid ({} assets, {} zones, {} conduits, {} threat scenarios)",
                    model.display(),
                    m.assets.len(),
                    m.zones.len(),
                    m.conduits.len(),
                    m.threats.len()
                );
            }
            Ok(())
        }
        PlanCommand::Assess {
            model,
            out,
            live,
            live_inventory,
        } => {
            let l = load_checked(&model, json)?;
            // Refused before any device is contacted (docs/validation.md).
            if let Some(dir) = &out {
                check_output_dir(dir, "plan assess")?;
            }
            let mut a = assess::assess(&l.model);
            let reach = match (live, live_inventory) {
                (Some(lab), _) => {
                    let lab = lab_json(&lab);
                    let m = drivesec_lab::LabManifest::load(lab.parent().unwrap_or(Path::new(".")))
                        .with_context(|| format!("reading {}", lab.display()))?;
                    Some(m.targets()?)
                }
                (None, Some(inv)) => Some(drivesec_ops::Targets::from_inventory(
                    &drivesec_ops::inventory::Inventory::load(&inv)?,
                    &inv,
                )?),
                (None, None) => None,
            };
            // Devices that could not be assessed live (None: not --live).
            let live_failed = match reach {
                Some(reach) => {
                    let reach = finish(reach, DEFAULT_PARALLEL, false)?;
                    let postures = drivesec_ops::posture::fetch(&reach)?;
                    assess::attach_live(&mut a, &l.model, &postures);
                    if !json {
                        for f in &postures.failed {
                            eprintln!(
                                "{}: FAILED {} (no live SL-A)",
                                safe(&f.device),
                                safe(&f.error)
                            );
                        }
                    }
                    Some(postures.failed)
                }
                None => None,
            };
            // The assessment as JSON, with `live_failed` when --live.
            let doc = {
                let mut v = serde_json::to_value(&a)?;
                if let (Some(f), Some(o)) = (&live_failed, v.as_object_mut()) {
                    o.insert("live_failed".into(), serde_json::to_value(f)?);
                }
                v
            };
            match out {
                Some(dir) => {
                    output_dir(&dir, "plan assess")?;
                    let files = [
                        (
                            "assessment.json",
                            serde_json::to_string_pretty(&doc)? + "\n",
                        ),
                        ("assessment.md", report::markdown(&a)),
                        ("assessment.html", report::html(&l.model, &a)),
                    ];
                    for (name, text) in &files {
                        fsu::write_atomic(&dir.join(name), text.as_bytes(), Mode::Public)?;
                    }
                    if json {
                        let mut summary = serde_json::json!({
                            "json": dir.join("assessment.json"), "markdown": dir.join("assessment.md"),
                            "html": dir.join("assessment.html"), "approvals": a.approvals.len(),
                        });
                        if let (Some(f), Some(o)) = (&live_failed, summary.as_object_mut()) {
                            o.insert("live_failed".into(), serde_json::to_value(f)?);
                        }
                        print_json(&summary)?;
                    } else {
                        for (name, _) in &files {
                            println!("{}", safe(&dir.join(name).display().to_string()));
                        }
                    }
                }
                None if json => print_json(&doc)?,
                None => print_document(&report::markdown(&a)),
            }
            let failed: Vec<String> = live_failed
                .unwrap_or_default()
                .into_iter()
                .map(|f| f.device)
                .collect();
            failed_devices("assessed live", &failed)
        }
        PlanCommand::Profile { model, zone, out } => {
            let l = load_checked(&model, json)?;
            let a = assess::assess(&l.model);
            let Some(z) = a.zones.iter().find(|z| z.zone == zone) else {
                let known: Vec<&str> = a.zones.iter().map(|z| z.zone.as_str()).collect();
                bail!(
                    "{}: no zone '{}' (zones: {})",
                    model.display(),
                    safe(&zone),
                    safe(&known.join(", "))
                );
            };
            let p = drivesec_iec62443::profile::derive(&l.model, &zone, z.sl_t);
            if json {
                print_json(&p)?;
                return Ok(());
            }
            let text = drivesec_iec62443::profile::to_toml(&p, &l.model.system.name);
            match out {
                Some(path) => {
                    fsu::write_atomic(&path, text.as_bytes(), Mode::Public)?;
                    println!("{}", path.display());
                }
                None => print_document(&text),
            }
            Ok(())
        }
        PlanCommand::Generate { assets, seed, out } => {
            if assets == 0 || assets > 1_000_000 {
                bail!("--assets must be 1..=1000000, not {assets}");
            }
            let text = drivesec_iec62443::synth::generate(assets, seed);
            match out {
                Some(p) => {
                    fsu::write_atomic(&p, text.as_bytes(), Mode::Public)?;
                    println!("{}", p.display());
                }
                None => print_document(&text),
            }
            Ok(())
        }
        PlanCommand::Firewall { model, out } => {
            let l = load_checked(&model, json)?;
            let text = firewall::nftables(&l.model).map_err(|zones| {
                anyhow::anyhow!(
                    "{}: zones without a subnet: {} (add subnet = \"a.b.c.d/n\")",
                    model.display(),
                    safe(&zones.join(", "))
                )
            })?;
            match out {
                Some(p) => {
                    fsu::write_atomic(&p, text.as_bytes(), Mode::Public)?;
                    println!("{}", p.display());
                }
                None => print_document(&text),
            }
            Ok(())
        }
    }
}

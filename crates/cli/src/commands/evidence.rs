//! `drivesec evidence ...`: one signed file for re-certification (the plant
//! model, its assessment with live SL-A, a validation run, the access
//! review), and its check.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;
use drivesec_fsutil::{self as fsu, Mode};
use drivesec_keystore::KeyHandle;
use sha2::{Digest, Sha256};

use super::validate::{evidence_key, lab_signer, soft};
use crate::dirs::scratch_dir;
use crate::fleet_devices::{FleetDevices, Source};
use crate::output::print_json;
use crate::text::safe;

/// `drivesec evidence ...`.
#[derive(Debug, Subcommand)]
pub enum EvidenceCommand {
    /// Pack the plant model, its assessment (with live SL-A), a validation
    /// run and the access review of a lab into one signed file.
    Bundle {
        /// The plant model.
        #[arg(long)]
        plan: PathBuf,
        /// The devices (validated and reviewed as the security administrator).
        #[command(flatten)]
        devices: FleetDevices,
        /// The OEM's soft keystore directory that signs the bundle (default:
        /// the lab's evidence keystore; needed with --inventory).
        #[arg(long, requires = "sign_key")]
        sign_keystore: Option<PathBuf>,
        /// The key's handle in it (with --sign-keystore).
        #[arg(long, requires = "sign_keystore")]
        sign_key: Option<String>,
        /// Where to write the bundle (JSON).
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a bundle's signature against the OEM's evidence key.
    Verify {
        /// The bundle.
        file: PathBuf,
        /// The OEM's evidence public key (PEM).
        #[arg(long, required_unless_present = "lab", conflicts_with = "lab")]
        key: Option<PathBuf>,
        /// Or the lab whose evidence key signed it.
        #[arg(long)]
        lab: Option<PathBuf>,
    },
}

/// Runs `evidence bundle|verify`.
pub fn run(c: EvidenceCommand, json: bool) -> Result<()> {
    const KIND: &str = "drivesec-evidence-bundle";
    match c {
        EvidenceCommand::Verify { file, key, lab } => {
            let v: serde_json::Value = serde_json::from_slice(&fsu::read(&file)?)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            let pk = drivesec_firmware::read_public_key(&evidence_key(&key, &lab)?)?;
            let doc = drivesec_ops::evidence::verify_kind(&v, &pk, KIND)
                .map_err(|e| anyhow!("{}: {e}", file.display()))?;
            if json {
                print_json(&doc["contents"])?;
            } else {
                println!(
                    "{}: signature valid; {} generated {}",
                    safe(&file.display().to_string()),
                    safe(doc["system"].as_str().unwrap_or("")),
                    safe(doc["generated_at"].as_str().unwrap_or(""))
                );
            }
            Ok(())
        }
        EvidenceCommand::Bundle {
            plan,
            devices,
            sign_keystore,
            sign_key,
            out,
        } => {
            let text = fsu::read_to_string(&plan)?;
            let loaded = drivesec_iec62443::model::parse(&plan, &text)?;
            if drivesec_iec62443::check::check(&loaded)
                .iter()
                .any(|p| !p.warning)
            {
                bail!("{}: the plan is not valid (run plan check)", plan.display());
            }
            let model = &loaded.model;
            let given = match (sign_keystore, sign_key) {
                (Some(dir), Some(key)) => Some((soft(&dir)?, KeyHandle::new(&key)?)),
                _ => None,
            };
            // The devices as the flags say (--parallel, --insecure-no-crl):
            // a missing CRL stops here, before any device is contacted.
            let source = devices.source()?;
            let reach = devices.finish(source.targets()?)?;
            let (inv, signer) = match source {
                Source::Lab(m, lab) => {
                    let inv = m.inventory(&lab, &|dev: &str| model.asset_of_device(dev))?;
                    let signer = match given {
                        Some(s) => s,
                        None => lab_signer(&lab, &m)?,
                    };
                    (inv, signer)
                }
                Source::Inventory(inv, _) => {
                    let signer = given.ok_or_else(|| {
                        anyhow!(
                            "--sign-keystore DIR --sign-key NAME are needed: the OEM evidence key that signs the bundle"
                        )
                    })?;
                    (inv, signer)
                }
            };
            let mut assessment = drivesec_iec62443::assess::assess(model);
            // A device that fails here has no live SL-A in the bundle; its
            // validation and review record why.
            let postures = drivesec_ops::posture::fetch(&reach)?;
            for f in &postures.failed {
                eprintln!(
                    "{}: FAILED {} (no live SL-A)",
                    safe(&f.device),
                    safe(&f.error)
                );
            }
            drivesec_iec62443::assess::attach_live(&mut assessment, model, &postures);
            let (ctx, targets) = drivesec_ops::validate::prepare(model, &inv)?;
            let results = drivesec_ops::validate::validate_all(&ctx, &targets, reach.parallel);
            let plan_sha = hex::encode(Sha256::digest(text.as_bytes()));
            let validation =
                drivesec_ops::evidence::document(&model.system.name, &plan_sha, &results);
            let trails = scratch_dir("bundle")?;
            let review = drivesec_ops::review::review(&reach, &trails, 90, 5);
            let _ = std::fs::remove_dir_all(&trails);
            let review = review?;
            let doc = serde_json::json!({
                "format": 1,
                "kind": KIND,
                "system": model.system.name,
                "generated_at": time::OffsetDateTime::now_utc()
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
                "plan_sha256": plan_sha,
                "contents": {
                    "plan_toml": text,
                    "assessment": assessment,
                    "validation": validation,
                    "audit_review": review,
                },
            });
            let signed = drivesec_ops::evidence::sign(doc, signer.0.as_ref(), &signer.1)?;
            fsu::write_atomic(
                &out,
                (serde_json::to_string_pretty(&signed)? + "\n").as_bytes(),
                Mode::Public,
            )?;
            let findings: usize = results.iter().map(|r| r.failures().count()).sum();
            if json {
                print_json(
                    &serde_json::json!({"bundle": out, "validation_findings": findings, "approvals": assessment.approvals.len()}),
                )?;
            } else {
                println!(
                    "{}: plan, assessment ({} approval items), validation ({} findings), access review of {} device(s); signed with the OEM evidence key",
                    safe(&out.display().to_string()),
                    assessment.approvals.len(),
                    findings,
                    review.len()
                );
            }
            Ok(())
        }
    }
}

//! `drivesec validate`: FAT/SAT validation with signed evidence
//! (docs/validation.md), and the check of an evidence file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use drivesec_fsutil::{self as fsu, Mode};
use drivesec_keystore::{KeyHandle, KeyStore, KeystoreConfig, open_keystore};
use drivesec_ops::inventory::Inventory;
use drivesec_ops::validate::Verdict;
use sha2::{Digest, Sha256};

use crate::dirs::{check_output_dir, output_dir};
use crate::output::print_json;
use crate::text::{safe, safe_lines};

/// `drivesec validate ...`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ValidateArgs {
    /// Check a signed evidence file instead.
    #[command(subcommand)]
    pub command: Option<ValidateCommand>,
    /// The plant model (zones and SL-T).
    #[arg(long)]
    pub plan: Option<PathBuf>,
    /// The inventory (docs/validation.md).
    #[arg(long, conflicts_with = "lab")]
    pub inventory: Option<PathBuf>,
    /// Or a running lab (its devices are the assets whose `device` names them;
    /// the evidence is signed with the lab's evidence key).
    #[arg(long)]
    pub lab: Option<PathBuf>,
    /// Write evidence.json, junit.xml and report.html here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Sign the evidence with this key (soft keystore directory or PKCS#11 URI and key).
    #[arg(long)]
    pub sign_keystore: Option<PathBuf>,
    /// PKCS#11 URI of the signing token.
    #[arg(long)]
    pub sign_pkcs11_uri: Option<String>,
    /// Key handle for signing.
    #[arg(long)]
    pub sign_key: Option<String>,
    /// Devices validated at once.
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
    /// Record each device's result (passed, findings, evidence digest, the
    /// profile it was held to) in this fleet store (`sqlite:PATH` or
    /// `postgres://...`); `fleet status` shows the last one.
    #[arg(long)]
    pub store: Option<String>,
}

/// `drivesec validate verify-evidence`.
#[derive(Debug, Subcommand)]
pub enum ValidateCommand {
    /// Check a signed evidence file against the OEM's evidence key and,
    /// when given, against the plan, the inventory and a maximum age.
    VerifyEvidence {
        /// The evidence file.
        file: PathBuf,
        /// The OEM's evidence public key (PEM), as `firmware keygen` writes it.
        #[arg(long, required_unless_present = "lab", conflicts_with = "lab")]
        key: Option<PathBuf>,
        /// Or the lab whose evidence key signed it (`evidence.public_key` in lab.json).
        #[arg(long)]
        lab: Option<PathBuf>,
        /// The plan the evidence must be for (its SHA-256 must match).
        #[arg(long)]
        plan: Option<PathBuf>,
        /// The inventory whose every device must be in the evidence, with
        /// the serial number (and certificate fingerprint) it names.
        #[arg(long)]
        inventory: Option<PathBuf>,
        /// The oldest the evidence may be, e.g. 90d, 12h, 30m, 2w.
        #[arg(long)]
        max_age: Option<String>,
        /// Exit 0 for authentic evidence that records failed checks
        /// (findings); without it, such evidence exits 2.
        #[arg(long)]
        accept_findings: bool,
    },
}

/// A signing key in a keystore.
pub(crate) type Signer = (Arc<dyn KeyStore>, KeyHandle);

pub(crate) fn soft(dir: &Path) -> Result<Arc<dyn KeyStore>> {
    Ok(open_keystore(
        &KeystoreConfig::Soft {
            dir: "keystore".into(),
            secret_file: "secret".into(),
        },
        dir,
    )?)
}

/// The evidence public key: `--key FILE`, or the one in a lab's lab.json.
pub(crate) fn evidence_key(key: &Option<PathBuf>, lab: &Option<PathBuf>) -> Result<PathBuf> {
    match (key, lab) {
        (Some(k), _) => Ok(k.clone()),
        (None, Some(lab)) => Ok(drivesec_lab::LabManifest::load(lab)?
            .evidence
            .ok_or_else(|| {
                anyhow!(
                    "{}: this lab has no evidence key (it was made before labs had one); give --key",
                    lab.display()
                )
            })?
            .public_key),
        (None, None) => bail!("give --key FILE or --lab DIR"),
    }
}

/// The signing key of a lab: its own evidence key, never the firmware
/// approval key.
pub(crate) fn lab_signer(lab: &Path, m: &drivesec_lab::LabManifest) -> Result<Signer> {
    let e = m.evidence.as_ref().ok_or_else(|| {
        anyhow!(
            "{}: this lab has no evidence key (it was made before labs had one); \
             give --sign-keystore DIR --sign-key NAME",
            lab.display()
        )
    })?;
    Ok((soft(&e.keystore)?, KeyHandle::new(e.key.clone())?))
}

/// Runs `validate verify-evidence`.
fn verify_evidence(c: &ValidateCommand, json: bool) -> Result<()> {
    let ValidateCommand::VerifyEvidence {
        file,
        key,
        lab,
        plan,
        inventory,
        max_age,
        accept_findings,
    } = c;
    // Bad arguments first: nothing is read before they are all usable.
    let max_age = max_age
        .as_deref()
        .map(drivesec_ops::evidence::parse_max_age)
        .transpose()?;
    let v: serde_json::Value = serde_json::from_slice(&fsu::read(file)?)
        .with_context(|| format!("{} is not JSON", file.display()))?;
    let pk = drivesec_firmware::read_public_key(&evidence_key(key, lab)?)?;
    let doc =
        drivesec_ops::evidence::verify(&v, &pk).map_err(|e| anyhow!("{}: {e}", file.display()))?;
    let mut expect = drivesec_ops::evidence::Expectations {
        max_age,
        ..Default::default()
    };
    if let Some(plan) = plan {
        expect.plan_sha256 = Some(hex::encode(Sha256::digest(fsu::read(plan)?)));
    }
    if let Some(path) = inventory {
        expect.devices = Inventory::load(path)?
            .devices
            .into_iter()
            .map(|d| drivesec_ops::evidence::ExpectedDevice {
                name: d.name,
                serial: d.serial,
                certificate_sha256: d.certificate_sha256,
            })
            .collect();
    }
    let mismatches =
        drivesec_ops::evidence::mismatches(&doc, &expect, time::OffsetDateTime::now_utc());
    let failed = failed_checks(&doc);
    let checked: Vec<&str> = [
        plan.as_ref().map(|_| "plan"),
        inventory.as_ref().map(|_| "inventory"),
        expect.max_age.map(|_| "max-age"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if json {
        print_json(&serde_json::json!({
            "signature": "valid", "checked": checked, "mismatches": mismatches,
            "failed_checks": failed, "summary": doc["summary"],
        }))?;
    } else {
        println!(
            "{}: signature valid; {} device(s), {} finding(s), generated {}",
            safe(&file.display().to_string()),
            safe(&doc["summary"]["devices"].to_string()),
            safe(&doc["summary"]["failures"].to_string()),
            safe(doc["generated_at"].as_str().unwrap_or(""))
        );
        for m in &mismatches {
            println!("  MISMATCH {}", safe(m));
        }
        if !checked.is_empty() && mismatches.is_empty() {
            println!("  matches the {}", checked.join(", "));
        }
    }
    if !mismatches.is_empty() {
        bail!(
            "{}: {} mismatch(es) with the {}",
            file.display(),
            mismatches.len(),
            checked.join(", ")
        );
    }
    if failed > 0 {
        let msg = format!(
            "{}: the evidence is authentic, and it records {failed} failed check(s)",
            file.display()
        );
        if !accept_findings {
            bail!("{msg}: the validation it records did not pass (--accept-findings to exit 0)");
        }
        eprintln!("warning: {} (accepted: --accept-findings)", safe(&msg));
    }
    Ok(())
}

/// The failed checks a verified evidence document records: its checks
/// with verdict `fail`, and at least its summary's `failures` (at least
/// one when the summary says it did not pass), so neither part alone can
/// hide a finding.
fn failed_checks(doc: &serde_json::Value) -> u64 {
    let listed = doc["devices"]
        .as_array()
        .map(|ds| {
            ds.iter()
                .flat_map(|d| d["checks"].as_array().into_iter().flatten())
                .filter(|c| c["verdict"] != "pass" && c["verdict"] != "skipped")
                .count() as u64
        })
        .unwrap_or(0);
    let summary = &doc["summary"];
    let counted = summary["failures"].as_u64().unwrap_or(0);
    let not_passed = u64::from(summary["passed"] != true);
    listed.max(counted).max(not_passed)
}

/// Runs `validate`.
pub fn run(a: ValidateArgs, json: bool) -> Result<()> {
    if let Some(c) = &a.command {
        return verify_evidence(c, json);
    }
    let plan = a
        .plan
        .as_ref()
        .ok_or_else(|| anyhow!("give --plan MODEL (and --inventory FILE or --lab DIR)"))?;
    // Before any device is contacted: an --out that cannot be used stops here.
    if let Some(out) = &a.out {
        check_output_dir(out, "validate")?;
    }
    let text = fsu::read_to_string(plan)?;
    let loaded = drivesec_iec62443::model::parse(plan, &text)?;
    let problems = drivesec_iec62443::check::check(&loaded);
    if problems.iter().any(|p| !p.warning) {
        for p in &problems {
            eprintln!("{}", safe_lines(&p.to_string()));
        }
        bail!("{}: the plan is not valid", plan.display());
    }
    let (inv, signer): (Inventory, Option<Signer>) = match (&a.inventory, &a.lab) {
        (Some(p), None) => (Inventory::load(p)?, None),
        (None, Some(lab)) => {
            let m = drivesec_lab::LabManifest::load(lab)?;
            let model = &loaded.model;
            let inv = m.inventory(lab, &|dev: &str| model.asset_of_device(dev))?;
            // Only needed when the evidence is written and no other key is given.
            let signer = if a.out.is_some() && a.sign_key.is_none() {
                Some(lab_signer(lab, &m)?)
            } else {
                None
            };
            (inv, signer)
        }
        _ => bail!("give --inventory FILE or --lab DIR"),
    };
    let signer = match (&a.sign_keystore, &a.sign_pkcs11_uri, &a.sign_key) {
        (Some(dir), None, Some(k)) => Some((soft(dir)?, KeyHandle::new(k.clone())?)),
        (None, Some(uri), Some(k)) => Some((
            Arc::new(drivesec_keystore::pkcs11::Pkcs11KeyStore::open_uri(
                uri,
                &std::env::current_dir()?,
            )?) as Arc<dyn KeyStore>,
            KeyHandle::new(k.clone())?,
        )),
        (None, None, None) => signer,
        _ => bail!("give --sign-key with --sign-keystore DIR or --sign-pkcs11-uri URI"),
    };
    let (ctx, targets) = drivesec_ops::validate::prepare(&loaded.model, &inv)?;
    if targets.is_empty() {
        bail!("the inventory names no device of the plan");
    }
    let results = drivesec_ops::validate::validate_all(&ctx, &targets, a.parallel);
    let plan_sha = hex::encode(Sha256::digest(text.as_bytes()));
    let doc = drivesec_ops::evidence::document(&loaded.model.system.name, &plan_sha, &results);
    let failures: usize = results.iter().map(|r| r.failures().count()).sum();
    let mut evidence_sha = hex::encode(Sha256::digest(serde_json::to_vec(&doc)?));
    if let Some(out) = &a.out {
        let (store, handle) = signer
            .as_ref()
            .ok_or_else(|| anyhow!("evidence must be signed: give --sign-key (with --sign-keystore or --sign-pkcs11-uri)"))?;
        let signed = drivesec_ops::evidence::sign(doc.clone(), store.as_ref(), handle)?;
        output_dir(out, "validate")?;
        let files: [(&str, String); 3] = [
            (
                "evidence.json",
                serde_json::to_string_pretty(&signed)? + "\n",
            ),
            ("junit.xml", drivesec_ops::evidence::junit(&results)),
            ("report.html", drivesec_ops::evidence::html(&doc)),
        ];
        for (name, body) in &files {
            fsu::write_atomic(&out.join(name), body.as_bytes(), Mode::Public)?;
        }
        evidence_sha = hex::encode(Sha256::digest(files[0].1.as_bytes()));
    }
    if let Some(url) = &a.store {
        record(url, &inv, &results, &doc, &evidence_sha)?;
    }
    if json {
        print_json(&doc)?;
    } else {
        for r in &results {
            let fails: Vec<_> = r.failures().collect();
            println!(
                "{} ({}, zone {}, SL-T {}): {} check(s), {} finding(s), {:.2} s",
                safe(&r.device),
                safe(&r.asset),
                safe(&r.zone),
                r.sl_t,
                r.checks.len(),
                fails.len(),
                r.seconds
            );
            for c in fails {
                println!("  FAIL {} {}: {}", c.requirement, c.id, safe(&c.detail));
            }
            for c in r.checks.iter().filter(|c| c.verdict == Verdict::Skipped) {
                println!("  skipped {} {}: {}", c.requirement, c.id, safe(&c.detail));
            }
        }
        if let Some(out) = &a.out {
            for f in ["evidence.json", "junit.xml", "report.html"] {
                println!("{}", safe(&out.join(f).display().to_string()));
            }
        }
    }
    if failures > 0 {
        bail!("validation failed: {failures} finding(s)");
    }
    Ok(())
}

/// Records each device's validation in the fleet store: the device (zone
/// from the plan), and its result with the evidence digest and the profile
/// (file name and SHA-256 prefix) it was held to.
fn record(
    url: &str,
    inv: &Inventory,
    results: &[drivesec_ops::validate::DeviceResult],
    doc: &serde_json::Value,
    evidence_sha: &str,
) -> Result<()> {
    let mut store = drivesec_fleet::open(url)?;
    let at = doc["generated_at"].as_str().unwrap_or_default().to_string();
    for r in results {
        let Some(d) = inv.devices.iter().find(|d| d.name == r.device) else {
            continue;
        };
        let mut rec = store.device(&d.name)?.unwrap_or_else(|| {
            drivesec_fleet::DeviceRecord::new(&d.name, "", &d.api, &d.device_name)
        });
        rec.zone = r.zone.clone();
        rec.api = d.api.clone();
        rec.device_name = d.device_name.clone();
        if let Some(s) = &d.serial {
            rec.serial = s.clone();
        }
        store.upsert_device(&rec)?;
        let profile = match &d.profile {
            Some(p) => format!(
                "{} sha256:{}",
                p.file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default(),
                &hex::encode(Sha256::digest(fsu::read(p)?))[..16]
            ),
            None => String::new(),
        };
        let findings = r.failures().count();
        store.record_validation(&drivesec_fleet::ValidationRecord {
            device: d.name.clone(),
            at: at.clone(),
            passed: findings == 0,
            findings: findings as i64,
            evidence_sha: evidence_sha.to_string(),
            profile,
        })?;
    }
    Ok(())
}

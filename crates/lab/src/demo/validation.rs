//! Chapter 7: provisioning to SL-T and validation (FAT/SAT): the cell's
//! profile applied to each running drive, every drive validated, the
//! evidence signed with the lab's evidence key.

use std::io::Write;
use std::path::{Path, PathBuf};

use drivesec_keystore::{KeyHandle, open_keystore};
use serde::Serialize;

use crate::manifest::LabManifest;
use crate::{LabError, Result};

/// The provisioning and validation story.
#[derive(Debug, Clone, Serialize)]
pub struct ValidationReport {
    /// Devices provisioned with the cell's profile.
    pub provisioned: usize,
    /// Devices validated.
    pub validated: usize,
    /// Findings in all.
    pub findings: usize,
    /// The signed evidence file.
    pub evidence: PathBuf,
}

/// The provisioning and validation story: each running drive of the lab
/// gets the cell's profile (derived from the packaging line's SL-T, keeping
/// the lab's accounts so the demo can go on), then every drive is validated
/// against the cell's SL-T; reports in `DIR/validation/`.
pub(super) fn validation_story(
    lab: &LabManifest,
    dir: &Path,
    out: &mut dyn Write,
) -> Result<Option<ValidationReport>> {
    use drivesec_iec62443::{assess, model, profile};
    let loaded = model::parse(
        Path::new("examples/packaging-line.toml"),
        drivesec_iec62443::PACKAGING_LINE,
    )
    .map_err(|e| LabError::Example(e.to_string()))?;
    let a = assess::assess(&loaded.model);
    let Some(cell) = a.zones.iter().find(|z| z.zone == "cell") else {
        return Ok(None);
    };
    let mut p = profile::derive(&loaded.model, "cell", cell.sl_t);
    p.accounts = lab
        .users
        .iter()
        .map(|(role, u)| profile::Account {
            username: u.username.clone(),
            role: role.clone(),
        })
        .chain(lab.admin.iter().map(|a| profile::Account {
            username: a.username.clone(),
            role: "security-admin".into(),
        }))
        .collect();
    let vdir = dir.join("validation");
    drivesec_fsutil::create_private_dir(&vdir)
        .or_else(|e| if vdir.is_dir() { Ok(()) } else { Err(e) })?;
    drivesec_fsutil::write_atomic(
        &vdir.join("cell-profile.toml"),
        profile::to_toml(&p, &loaded.model.system.name).as_bytes(),
        drivesec_fsutil::Mode::Public,
    )?;
    let _ = writeln!(
        out,
        "\nProvisioning to SL-T and validation (FAT/SAT) of the drives as the cell's assets:"
    );
    let mut provisioned = 0;
    for d in lab
        .devices
        .iter()
        .filter(|d| d.api.is_some() && d.device_name.is_some())
    {
        let c = lab.session(d, "security-admin")?;
        let r = drivesec_ops::provision::apply(&c, &p)?;
        let again = drivesec_ops::provision::apply(&c, &p)?;
        let drift = drivesec_ops::provision::diff(&c, &p)?;
        let _ = c.logout();
        let _ = writeln!(
            out,
            "  {}: cell profile applied ({} change(s)); re-applied: {} change(s); drift left: {}",
            d.name,
            r.changed.len(),
            again.changed.len(),
            if drift.is_empty() {
                "none".to_string()
            } else {
                drift.join("; ")
            }
        );
        provisioned += 1;
    }
    let model = &loaded.model;
    let inv = lab.inventory(dir, &|dev: &str| model.asset_of_device(dev))?;
    let mut inv = inv;
    // The releases the OEM approved in the firmware story are approved for this plant.
    if let Ok(rd) = std::fs::read_dir(dir.join("firmware").join("releases")) {
        let mut imgs: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "img"))
            .collect();
        imgs.sort();
        inv.validator.approved_releases.extend(imgs);
    }
    let (ctx, targets) = drivesec_ops::validate::prepare(model, &inv)?;
    let results = drivesec_ops::validate::validate_all(&ctx, &targets, 8);
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        drivesec_iec62443::PACKAGING_LINE.as_bytes(),
    ));
    let doc = drivesec_ops::evidence::document(&model.system.name, &sha, &results);
    // The lab's evidence key, never the firmware approval key.
    let ek = lab
        .evidence
        .as_ref()
        .ok_or_else(|| LabError::Incomplete("the lab has no evidence key".into()))?;
    let store = open_keystore(
        &drivesec_keystore::KeystoreConfig::Soft {
            dir: "keystore".into(),
            secret_file: "secret".into(),
        },
        &ek.keystore,
    )?;
    let signed =
        drivesec_ops::evidence::sign(doc.clone(), store.as_ref(), &KeyHandle::new(&ek.key)?)?;
    let json =
        serde_json::to_string_pretty(&signed).map_err(|e| LabError::Encode(e.to_string()))?;
    for (name, text) in [
        ("evidence.json", json),
        ("junit.xml", drivesec_ops::evidence::junit(&results)),
        ("report.html", drivesec_ops::evidence::html(&doc)),
    ] {
        drivesec_fsutil::write_atomic(
            &vdir.join(name),
            text.as_bytes(),
            drivesec_fsutil::Mode::Public,
        )?;
    }
    let mut findings = 0;
    for r in &results {
        let f: Vec<&drivesec_ops::validate::Check> = r.failures().collect();
        findings += f.len();
        let _ = writeln!(
            out,
            "  {} ({} in zone {}, SL-T {}): {} checks, {} finding(s){}",
            r.device,
            r.asset,
            r.zone,
            r.sl_t,
            r.checks.len(),
            f.len(),
            if f.is_empty() {
                String::new()
            } else {
                format!(
                    ": {}",
                    f.iter()
                        .map(|c| format!("{} {}", c.requirement, c.id))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
    }
    let _ = writeln!(
        out,
        "  (the lab's soft-keystore drives cannot reach the cell's SL-T 3: the findings are the gaps the assessment predicted)\n  evidence signed with the OEM evidence key: {}\n  JUnit: {}\n  report: {}",
        vdir.join("evidence.json").display(),
        vdir.join("junit.xml").display(),
        vdir.join("report.html").display()
    );
    Ok(Some(ValidationReport {
        provisioned,
        validated: results.len(),
        findings,
        evidence: vdir.join("evidence.json"),
    }))
}

//! Chapter 6: the lab as the packaging line of
//! examples/packaging-line.toml, assessed with live SL-A from the running
//! devices.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::manifest::LabManifest;
use crate::{LabError, Result};

/// The plan story.
#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    /// The HTML report.
    pub report: PathBuf,
    /// Zones assessed.
    pub zones: usize,
    /// Assets that got a live SL-A.
    pub live_devices: Vec<String>,
    /// Items for the asset owner's approval.
    pub approvals: usize,
}

/// The plan story: the lab as the packaging line of
/// examples/packaging-line.toml (drive-001..003 are its drives), assessed
/// with live SL-A from the running devices; reports in `DIR/assessment/`.
pub(super) fn plan_story(
    lab: &LabManifest,
    dir: &Path,
    out: &mut dyn Write,
) -> Result<Option<PlanReport>> {
    use drivesec_iec62443::{assess, model, notation, report};
    let loaded = model::parse(
        Path::new("examples/packaging-line.toml"),
        drivesec_iec62443::PACKAGING_LINE,
    )
    .map_err(|e| LabError::Example(e.to_string()))?;
    let mut a = assess::assess(&loaded.model);
    let live = drivesec_ops::posture::fetch(&lab.targets()?)?;
    assess::attach_live(&mut a, &loaded.model, &live);
    let rdir = dir.join("assessment");
    drivesec_fsutil::create_private_dir(&rdir)
        .or_else(|e| if rdir.is_dir() { Ok(()) } else { Err(e) })?;
    let json = serde_json::to_string_pretty(&a).map_err(|e| LabError::Encode(e.to_string()))?;
    for (name, text) in [
        ("assessment.json", json),
        ("assessment.md", report::markdown(&a)),
        ("assessment.html", report::html(&loaded.model, &a)),
    ] {
        drivesec_fsutil::write_atomic(
            &rdir.join(name),
            text.as_bytes(),
            drivesec_fsutil::Mode::Public,
        )?;
    }
    let _ = writeln!(
        out,
        "\nIEC 62443 assessment of the lab as \"{}\" (examples/packaging-line.toml), with live SL-A:",
        a.system
    );
    for z in &a.zones {
        let _ = writeln!(out, "  SL-T({}) = {}", z.zone, z.notation);
    }
    let mut drives = vec![];
    if let Some(cell) = a.zones.iter().find(|z| z.zone == "cell") {
        for g in &cell.assets {
            let missing: usize = g
                .missing
                .values()
                .flatten()
                .filter(|m| m.compensated_by.is_none())
                .count();
            let _ = writeln!(
                out,
                "  {:<15} SL-C {}  SL-A {}  {missing} requirement(s) missing for the cell's SL-T",
                g.asset,
                g.sl_c.as_ref().map(notation).unwrap_or_else(|| "?".into()),
                g.sl_a
                    .as_ref()
                    .map(notation)
                    .unwrap_or_else(|| "(no device)".into()),
            );
            if g.sl_a.is_some() {
                drives.push(g.asset.clone());
            }
        }
    }
    let _ = writeln!(
        out,
        "  {} item(s) for the asset owner's approval; report: {}",
        a.approvals.len(),
        rdir.join("assessment.html").display()
    );
    Ok(Some(PlanReport {
        report: rdir.join("assessment.html"),
        zones: a.zones.len(),
        live_devices: drives,
        approvals: a.approvals.len(),
    }))
}

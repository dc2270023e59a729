//! Chapter 5: each running device's audit trail verified against its
//! IDevID certificate, the denied actions of the role chapter in it.

use std::io::Write;

use drivesec_pki::inspect::public_key;
use drivesec_pki::read_cert_chain;
use serde::Serialize;

use super::mark;
use crate::manifest::LabManifest;
use crate::{LabError, Result};

/// A device's audit trail, checked at the end.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    /// Device.
    pub device: String,
    /// Records in the trail.
    pub records: u64,
    /// `verify` found it intact against the IDevID certificate.
    pub intact: bool,
    /// Denied actions recorded.
    pub denied_records: usize,
}

/// Each running device's audit trail verified against its IDevID certificate.
pub(super) fn audit_story(lab: &LabManifest, out: &mut dyn Write) -> Result<Vec<AuditReport>> {
    let _ = writeln!(
        out,
        "\nAudit trails (hash chain and signed checkpoints, verified with each IDevID):"
    );
    let mut reports = Vec::new();
    for d in lab.devices.iter().filter(|d| d.api.is_some()) {
        let chain = read_cert_chain(&d.idevid)?;
        let key = public_key(&chain[0])?;
        let trail = d.dir.join("audit");
        let r = drivesec_audit::verify::verify(&trail, &key)
            .map_err(|e| LabError::Check(e.to_string()))?;
        let q = drivesec_audit::reader::Query {
            outcome: Some(drivesec_audit::Outcome::Denied),
            ..Default::default()
        };
        let denied = drivesec_audit::reader::read(&trail, &q, 100_000)
            .map_err(|e| LabError::Check(e.to_string()))?
            .len();
        let _ = writeln!(
            out,
            "  {:<9} {} records, {} denied actions recorded, intact {}",
            d.name,
            r.records,
            denied,
            mark(r.ok)
        );
        reports.push(AuditReport {
            device: d.name.clone(),
            records: r.records,
            intact: r.ok,
            denied_records: denied,
        });
    }
    Ok(reports)
}

//! Live SL-A: each device's posture, fetched over its API by the security
//! administrator (of a lab or an inventory), for `plan assess --live`.

use std::collections::BTreeMap;

use drivesec_iec62443::assess::LivePosture;

use crate::incident::Reach;
use crate::{OemError, Result};

/// Posture of every device `reach` reaches, by device name.
pub fn fetch(reach: &Reach) -> Result<BTreeMap<String, LivePosture>> {
    let mut out = BTreeMap::new();
    for d in &reach.devices {
        let c = reach.session(d)?;
        let p = c.ok("GET", "/api/v1/posture", None)?;
        let _ = c.call("POST", "/api/v1/logout", None);
        let sl_a = crate::client::posture_sl_a(&p).ok_or_else(|| {
            OemError::Invalid(format!("{}: posture without a 7-value sl_a", d.name))
        })?;
        let reasons = p["foundational_requirements"]
            .as_array()
            .map(|frs| {
                frs.iter()
                    .flat_map(|f| {
                        let fr = f["fr"].as_str().unwrap_or("").to_string();
                        f["reasons"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default()
                            .into_iter()
                            .filter_map(move |r| r.as_str().map(|r| format!("{fr}: {r}")))
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.insert(d.name.clone(), LivePosture { sl_a, reasons });
    }
    Ok(out)
}

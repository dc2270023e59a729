//! Live SL-A: each running lab device's posture, fetched over its API by
//! the lab's security administrator, for `plan assess --live`.

use std::collections::BTreeMap;

use drivesec_iec62443::assess::LivePosture;

use crate::client::{ClientIdentity, DeviceClient, DeviceTrust, Versions};
use crate::lab::LabManifest;
use crate::{OemError, Result};

/// Posture of every lab device with a running API, by device name.
pub fn fetch(lab: &LabManifest) -> Result<BTreeMap<String, LivePosture>> {
    let user = lab
        .users
        .get("security-admin")
        .ok_or_else(|| OemError::Invalid("lab.json has no security-admin user".into()))?;
    let files = lab
        .clients
        .get("security-admin")
        .ok_or_else(|| OemError::Invalid("lab.json has no security-admin client".into()))?;
    let id = ClientIdentity::from_files(&files.cert, &files.key)?;
    let roots = drivesec_pki::read_cert_chain(&lab.oem_ca)?;
    let mut out = BTreeMap::new();
    for d in &lab.devices {
        let (Some(api), Some(name)) = (&d.api, &d.device_name) else {
            continue;
        };
        let addr = api
            .trim_start_matches("https://")
            .parse()
            .map_err(|_| OemError::Invalid(format!("bad api address {api}")))?;
        let mut c = DeviceClient::new(
            addr,
            Some(&id),
            &DeviceTrust::Ldevid {
                roots: roots.clone(),
                device_name: name.clone(),
            },
            Versions::Default,
        )?;
        c.login(&user.username, &user.password)?;
        let p = c.ok("GET", "/api/v1/posture", None)?;
        let _ = c.call("POST", "/api/v1/logout", None);
        let v: Vec<u8> = p["sl_a"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_u64())
                    .map(|x| x as u8)
                    .collect()
            })
            .unwrap_or_default();
        let sl_a: [u8; 7] = v.try_into().map_err(|_| {
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

//! Incident response over a lab's devices (docs/incident-response.md):
//! scan the fleet (versions, certificate expiry, tamper) into the store,
//! and push a CRL to every device after a key compromise.

use drivesec_fleet::{DeviceRecord, FleetStore};
use serde::Serialize;

use crate::client::{DeviceClient, DeviceTrust, Versions};
use crate::lab::LabManifest;
use crate::{OemError, Result};

/// What a scan saw of one device.
#[derive(Debug, Clone, Serialize)]
pub struct Seen {
    /// Device.
    pub device: String,
    /// Reachable under its identity.
    pub reachable: bool,
    /// Its tamper response has run (answers only under the TAMPERED identity).
    pub tampered: bool,
    /// Firmware running.
    pub firmware_version: String,
    /// LDevID expiry.
    pub ldevid_not_after: String,
    /// Days left.
    pub days_left: Option<i64>,
}

/// Reads every device's state and records it in the store; a device whose
/// tamper response has run is flagged (queued for re-provisioning).
pub fn scan(lab: &LabManifest, store: &mut dyn FleetStore) -> Result<Vec<Seen>> {
    let id = lab.identity("security-admin")?;
    let db = |e: drivesec_fleet::FleetError| OemError::Invalid(e.to_string());
    let mut out = vec![];
    for d in &lab.devices {
        let (Some(_), Some(name)) = (&d.api, &d.device_name) else {
            continue;
        };
        let addr = lab.api_addr(d)?;
        let trust = lab.device_trust(d)?;
        let mut seen = Seen {
            device: d.name.clone(),
            reachable: false,
            tampered: false,
            firmware_version: String::new(),
            ldevid_not_after: String::new(),
            days_left: None,
        };
        if let Ok(c) = lab.session(d, "security-admin") {
            seen.reachable = true;
            if let Ok(f) = c.ok("GET", "/api/v1/firmware", None) {
                seen.firmware_version = f["running"]["version"].as_str().unwrap_or("").into();
            }
            // The certificate the device presents, as any client sees it.
            if let Some(leaf) = crate::validate::probe(addr, Some(&id), &trust, Versions::Default)
                .ok()
                .and_then(|(_, _, chain)| chain.into_iter().next())
                .and_then(|c| drivesec_pki::inspect::summarize(&c).ok())
            {
                seen.days_left = time::OffsetDateTime::parse(
                    &leaf.not_after,
                    &time::format_description::well_known::Rfc3339,
                )
                .ok()
                .map(|t| (t - time::OffsetDateTime::now_utc()).whole_days());
                seen.ldevid_not_after = leaf.not_after;
            }
            let _ = c.call("POST", "/api/v1/logout", None);
        } else {
            // No identity answers: is it the tamper response?
            let t = DeviceClient::new(
                addr,
                Some(&id),
                &DeviceTrust::TamperedStatusRisky {
                    serial: d.serial_number.clone(),
                },
                Versions::Default,
            )?;
            seen.tampered = t
                .ok("GET", "/api/v1/info", None)
                .is_ok_and(|v| v["tampered"] == true);
        }
        let mut rec = store.device(&d.name).map_err(db)?.unwrap_or(DeviceRecord {
            name: d.name.clone(),
            serial: d.serial_number.clone(),
            api: addr.to_string(),
            device_name: name.clone(),
            zone: String::new(),
            firmware_version: String::new(),
            ldevid_not_after: String::new(),
            tampered: false,
            campaign: None,
        });
        if seen.reachable {
            rec.firmware_version = seen.firmware_version.clone();
            rec.ldevid_not_after = seen.ldevid_not_after.clone();
        }
        rec.tampered = seen.tampered;
        store.upsert_device(&rec).map_err(db)?;
        out.push(seen);
    }
    Ok(out)
}

/// Installs `crl_pem` on every reachable device; per device, Ok or why not.
pub fn push_crl(
    lab: &LabManifest,
    crl_pem: &str,
) -> Result<Vec<(String, std::result::Result<(), String>)>> {
    let mut out = vec![];
    for d in lab
        .devices
        .iter()
        .filter(|d| d.api.is_some() && d.device_name.is_some())
    {
        let r = lab
            .session(d, "security-admin")
            .and_then(|c| {
                c.ok(
                    "PUT",
                    "/api/v1/security/crl",
                    Some(&serde_json::json!({"crl_pem": crl_pem})),
                )?;
                let _ = c.call("POST", "/api/v1/logout", None);
                Ok(())
            })
            .map_err(|e| e.to_string());
        out.push((d.name.clone(), r));
    }
    Ok(out)
}

/// One device's renewal.
#[derive(Debug, Clone, Serialize)]
pub struct Renewed {
    /// Device.
    pub device: String,
    /// Days left on the old LDevID.
    pub days_left_before: Option<i64>,
    /// Renewed now (false: not yet due).
    pub renewed: bool,
    /// The new certificate's serial.
    pub serial: Option<String>,
    /// Its expiry.
    pub not_after: Option<String>,
}

/// Renews, through the device's own new key, every LDevID that expires
/// within `margin_days` (all of them with `force`), issuing `days`-long
/// certificates from the OEM CA.
pub fn renew(
    lab: &LabManifest,
    oem: &mut drivesec_pki::Ca,
    margin_days: i64,
    days: i64,
    force: bool,
) -> Result<Vec<Renewed>> {
    let id = lab.identity("security-admin")?;
    let mut out = vec![];
    for d in &lab.devices {
        let (Some(_), Some(name)) = (&d.api, &d.device_name) else {
            continue;
        };
        let addr = lab.api_addr(d)?;
        let trust = lab.device_trust(d)?;
        let left = crate::validate::probe(addr, Some(&id), &trust, Versions::Default)
            .ok()
            .and_then(|(_, _, chain)| chain.into_iter().next())
            .and_then(|c| drivesec_pki::inspect::summarize(&c).ok())
            .and_then(|s| {
                time::OffsetDateTime::parse(
                    &s.not_after,
                    &time::format_description::well_known::Rfc3339,
                )
                .ok()
            })
            .map(|t| (t - time::OffsetDateTime::now_utc()).whole_days());
        let due = force || left.is_none_or(|l| l < margin_days);
        let mut r = Renewed {
            device: d.name.clone(),
            days_left_before: left,
            renewed: false,
            serial: None,
            not_after: None,
        };
        if due {
            let c = lab.session(d, "security-admin")?;
            let csr = c.ok("POST", "/api/v1/identity/renew", None)?["csr_pem"]
                .as_str()
                .ok_or_else(|| OemError::Invalid(format!("{}: no CSR", d.name)))?
                .to_string();
            let issued = oem.issue(&drivesec_pki::IssueRequest {
                profile: drivesec_pki::Profile::LdevId {
                    serial_number: d.serial_number.clone(),
                    device_name: name.clone(),
                    ip_addresses: vec![addr.ip()],
                    days,
                },
                key: drivesec_pki::SubjectKey::CsrPem {
                    source: format!("renewal CSR from {}", d.name),
                    pem: csr,
                },
            })?;
            let v = c.ok(
                "PUT",
                "/api/v1/identity/ldevid",
                Some(&serde_json::json!({"chain_pem": issued.chain_pem})),
            )?;
            let _ = c.call("POST", "/api/v1/logout", None);
            r.renewed = true;
            r.serial = v["serial"].as_str().map(str::to_string);
            r.not_after = v["not_after"].as_str().map(str::to_string);
        }
        out.push(r);
    }
    Ok(out)
}

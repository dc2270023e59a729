//! Incident response over a fleet's devices (docs/incident-response.md):
//! scan the fleet (versions, certificate expiry, tamper) into the store,
//! renew LDevIDs, and push a CRL to every device after a key compromise.
//! The devices come from a running lab or an inventory file ([`Reach`]).

use std::net::SocketAddr;

use drivesec_fleet::{DeviceRecord, FleetStore};
use rustls::pki_types::CertificateDer;
use serde::Serialize;
use zeroize::Zeroizing;

use crate::client::{ClientIdentity, DeviceClient, DeviceTrust, Versions};
use crate::lab::LabManifest;
use crate::{OemError, Result};

/// One device incident response reaches.
#[derive(Debug, Clone)]
pub struct ReachDevice {
    /// Name (the store's key).
    pub name: String,
    /// Serial number (empty when the inventory does not say).
    pub serial: String,
    /// API address.
    pub addr: SocketAddr,
    /// The DNS name its LDevID carries.
    pub device_name: String,
}

/// The devices, and the security administrator incident response acts as.
pub struct Reach {
    /// The devices.
    pub devices: Vec<ReachDevice>,
    /// The administrator's client certificate.
    pub admin: ClientIdentity,
    /// Its account.
    pub admin_user: String,
    /// Its password.
    pub admin_password: Zeroizing<String>,
    /// Owner roots (device identities chain to them).
    pub roots: Vec<CertificateDer<'static>>,
    /// The manufacturer root (IDevIDs chain to it), when known.
    pub manufacturer_roots: Option<Vec<CertificateDer<'static>>>,
}

/// A running lab's commissioned devices.
pub fn lab_devices(lab: &LabManifest) -> Result<Vec<ReachDevice>> {
    let mut devices = vec![];
    for d in &lab.devices {
        if let (Some(_), Some(name)) = (&d.api, &d.device_name) {
            devices.push(ReachDevice {
                name: d.name.clone(),
                serial: d.serial_number.clone(),
                addr: lab.api_addr(d)?,
                device_name: name.clone(),
            });
        }
    }
    Ok(devices)
}

/// An inventory's devices (`path` names the file in errors).
pub fn inventory_devices(
    inv: &crate::inventory::Inventory,
    path: &std::path::Path,
) -> Result<Vec<ReachDevice>> {
    inv.devices
        .iter()
        .map(|d| {
            Ok(ReachDevice {
                name: d.name.clone(),
                serial: d.serial.clone().unwrap_or_default(),
                addr: d.addr(path)?,
                device_name: d.device_name.clone(),
            })
        })
        .collect()
}

impl Reach {
    /// A running lab's commissioned devices, as its security-admin account.
    pub fn from_lab(lab: &LabManifest) -> Result<Reach> {
        let user = lab
            .users
            .get("security-admin")
            .ok_or_else(|| OemError::Invalid("lab.json has no security-admin account".into()))?;
        let devices = lab_devices(lab)?;
        Ok(Reach {
            devices,
            admin: lab.identity("security-admin")?,
            admin_user: user.username.clone(),
            admin_password: Zeroizing::new(user.password.clone()),
            roots: drivesec_pki::read_cert_chain(&lab.oem_ca)?,
            manufacturer_roots: Some(drivesec_pki::read_cert_chain(&lab.manufacturer_ca)?),
        })
    }

    /// An inventory's devices (`path` for messages), as its validator's
    /// security administrator.
    pub fn from_inventory(
        inv: &crate::inventory::Inventory,
        path: &std::path::Path,
    ) -> Result<Reach> {
        let v = &inv.validator;
        let devices = inventory_devices(inv, path)?;
        let password = Zeroizing::new(drivesec_fsutil::read_to_string(&v.admin_password_file)?);
        Ok(Reach {
            devices,
            admin: ClientIdentity::from_files(&v.admin_cert, &v.admin_key)?,
            admin_user: v.admin_user.clone(),
            admin_password: Zeroizing::new(password.trim_end_matches(['\r', '\n']).to_string()),
            roots: drivesec_pki::read_cert_chain(&inv.trust.oem_root)?,
            manufacturer_roots: inv
                .trust
                .manufacturer_root
                .as_ref()
                .map(|p| drivesec_pki::read_cert_chain(p))
                .transpose()?,
        })
    }

    fn trust(&self, d: &ReachDevice) -> DeviceTrust {
        DeviceTrust::Ldevid {
            roots: self.roots.clone(),
            device_name: d.device_name.clone(),
        }
    }

    /// A session on `d` as the security administrator.
    pub fn session(&self, d: &ReachDevice) -> Result<DeviceClient> {
        let mut c =
            DeviceClient::new(d.addr, Some(&self.admin), &self.trust(d), Versions::Default)?;
        c.login(&self.admin_user, &self.admin_password)?;
        Ok(c)
    }

    /// Days left on the LDevID the device presents, as any client sees it.
    fn ldevid_days_left(&self, d: &ReachDevice) -> Option<(String, i64)> {
        let leaf =
            crate::validate::probe(d.addr, Some(&self.admin), &self.trust(d), Versions::Default)
                .ok()
                .and_then(|(_, _, chain)| chain.into_iter().next())
                .and_then(|c| drivesec_pki::inspect::summarize(&c).ok())?;
        let t = time::OffsetDateTime::parse(
            &leaf.not_after,
            &time::format_description::well_known::Rfc3339,
        )
        .ok()?;
        Some((
            leaf.not_after,
            (t - time::OffsetDateTime::now_utc()).whole_days(),
        ))
    }
}

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
    /// Why its boot stage last reverted to the other slot (a corrupted or
    /// unconfirmed image), if it did.
    pub boot_issue: Option<String>,
}

/// Reads every device's state and records it in the store; a device whose
/// tamper response has run is flagged (queued for re-provisioning).
pub fn scan(reach: &Reach, store: &mut dyn FleetStore) -> Result<Vec<Seen>> {
    let db = |e: drivesec_fleet::FleetError| OemError::Invalid(e.to_string());
    let mut out = vec![];
    for d in &reach.devices {
        let mut seen = Seen {
            device: d.name.clone(),
            reachable: false,
            tampered: false,
            firmware_version: String::new(),
            ldevid_not_after: String::new(),
            days_left: None,
            boot_issue: None,
        };
        if let Ok(c) = reach.session(d) {
            seen.reachable = true;
            if let Ok(f) = c.ok("GET", "/api/v1/firmware", None) {
                seen.firmware_version = f["running"]["version"].as_str().unwrap_or("").into();
                seen.boot_issue = f["boot_state"]["last_revert"].as_str().map(str::to_string);
            }
            if let Some((not_after, left)) = reach.ldevid_days_left(d) {
                seen.days_left = Some(left);
                seen.ldevid_not_after = not_after;
            }
            let _ = c.call("POST", "/api/v1/logout", None);
        } else if !d.serial.is_empty() {
            // No identity answers: is it the tamper response?
            let t = DeviceClient::new(
                d.addr,
                Some(&reach.admin),
                &DeviceTrust::TamperedStatusRisky {
                    serial: d.serial.clone(),
                },
                Versions::Default,
            )?;
            seen.tampered = t
                .ok("GET", "/api/v1/info", None)
                .is_ok_and(|v| v["tampered"] == true);
        }
        let mut rec = store.device(&d.name).map_err(db)?.unwrap_or_else(|| {
            DeviceRecord::new(&d.name, &d.serial, &d.addr.to_string(), &d.device_name)
        });
        if seen.reachable {
            rec.firmware_version = seen.firmware_version.clone();
            rec.ldevid_not_after = seen.ldevid_not_after.clone();
            rec.boot_issue = seen.boot_issue.clone().unwrap_or_default();
        }
        rec.tampered = seen.tampered;
        store.upsert_device(&rec).map_err(db)?;
        out.push(seen);
    }
    Ok(out)
}

/// Installs `crl_pem` on every reachable device; per device, Ok or why not.
pub fn push_crl(
    reach: &Reach,
    crl_pem: &str,
) -> Result<Vec<(String, std::result::Result<(), String>)>> {
    let mut out = vec![];
    for d in &reach.devices {
        let r = reach
            .session(d)
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
    reach: &Reach,
    oem: &mut drivesec_pki::Ca,
    margin_days: i64,
    days: i64,
    force: bool,
) -> Result<Vec<Renewed>> {
    let mut out = vec![];
    for d in &reach.devices {
        let left = reach.ldevid_days_left(d).map(|(_, l)| l);
        let due = force || left.is_none_or(|l| l < margin_days);
        let mut r = Renewed {
            device: d.name.clone(),
            days_left_before: left,
            renewed: false,
            serial: None,
            not_after: None,
        };
        if due {
            if d.serial.is_empty() {
                return Err(OemError::Invalid(format!(
                    "{}: the inventory gives no serial, which its LDevID must carry",
                    d.name
                )));
            }
            let c = reach.session(d)?;
            let csr = c.ok("POST", "/api/v1/identity/renew", None)?["csr_pem"]
                .as_str()
                .ok_or_else(|| OemError::Invalid(format!("{}: no CSR", d.name)))?
                .to_string();
            let issued = oem.issue(&drivesec_pki::IssueRequest {
                profile: drivesec_pki::Profile::LdevId {
                    serial_number: d.serial.clone(),
                    device_name: d.device_name.clone(),
                    ip_addresses: vec![d.addr.ip()],
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

//! The inventory file `drivesec validate` reads (docs/validation.md, schema
//! docs/inventory.schema.json): where each device is, which asset of the
//! plant model it is, who it must prove to be, and what the validator uses
//! to test it. Paths are relative to the inventory file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{OpsError, Result};

/// The whole inventory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    /// Trust material.
    pub trust: Trust,
    /// The validator's own credentials and references.
    pub validator: Validator,
    /// Who performs rollouts (`drivesec fleet rollout --inventory`).
    #[serde(default)]
    pub operator: Option<RolloutOperator>,
    /// The devices.
    pub devices: Vec<InventoryDevice>,
}

/// Trust material.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trust {
    /// The owner's root certificate (PEM).
    pub oem_root: PathBuf,
    /// The owner's CRL (PEM), if any.
    #[serde(default)]
    pub crl: Option<PathBuf>,
    /// The firmware trust store (JSON): the signatures a release needs
    /// (rollouts accept only images it approves).
    #[serde(default)]
    pub firmware_trust: Option<PathBuf>,
    /// The manufacturer's root certificate (PEM): devices' IDevIDs chain to
    /// it (the access review verifies each trail with the IDevID).
    #[serde(default)]
    pub manufacturer_root: Option<PathBuf>,
    /// The manufacturer's CRL (PEM): revoked IDevIDs (a reprovisioned
    /// device's old one, say). Every IDevID check applies it; without it,
    /// they refuse unless told to go on without (`--insecure-no-crl`).
    #[serde(default)]
    pub manufacturer_crl: Option<PathBuf>,
}

/// An account with `update-firmware` and its client certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutOperator {
    /// Client certificate chain (PEM).
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// The account.
    pub user: String,
    /// A file holding its password.
    pub password_file: PathBuf,
}

/// What the validator uses.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Validator {
    /// A security administrator's client certificate chain and key.
    pub admin_cert: PathBuf,
    /// Its key.
    pub admin_key: PathBuf,
    /// Its account.
    pub admin_user: String,
    /// A file holding its password.
    pub admin_password_file: PathBuf,
    /// A low-privilege (viewer) client certificate and key.
    pub low_privilege_cert: PathBuf,
    /// Its key.
    pub low_privilege_key: PathBuf,
    /// A revoked client certificate and key (optional).
    #[serde(default)]
    pub revoked_cert: Option<PathBuf>,
    /// Its key.
    #[serde(default)]
    pub revoked_key: Option<PathBuf>,
    /// Approved firmware images (packed and approved).
    pub approved_releases: Vec<PathBuf>,
    /// Minimum remaining LDevID validity, days (default 30).
    #[serde(default = "margin")]
    pub expiry_margin_days: i64,
}

fn margin() -> i64 {
    30
}

/// One device.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryDevice {
    /// Name.
    pub name: String,
    /// Its asset id in the plant model.
    pub asset: String,
    /// HTTPS API address.
    pub api: String,
    /// Modbus/TCP Security address.
    #[serde(default)]
    pub modbus: Option<String>,
    /// The DNS name its LDevID carries.
    pub device_name: String,
    /// Its serial number.
    #[serde(default)]
    pub serial: Option<String>,
    /// The SHA-256 fingerprint (64 hex digits) of the certificate it
    /// presented at acceptance, pinned: `validate verify-evidence
    /// --inventory` reports evidence from a device with another certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_sha256: Option<String>,
    /// The profile it was provisioned with.
    #[serde(default)]
    pub profile: Option<PathBuf>,
}

impl InventoryDevice {
    /// Its API address, resolved; an error names the inventory `file` and
    /// the device.
    pub fn addr(&self, file: &Path) -> Result<std::net::SocketAddr> {
        std::net::ToSocketAddrs::to_socket_addrs(&self.api)
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| OpsError::BadApiAddress {
                path: file.to_path_buf(),
                device: self.name.clone(),
                api: self.api.clone(),
            })
    }
}

impl Inventory {
    /// Reads an inventory; relative paths are made relative to its directory.
    pub fn load(path: &Path) -> Result<Inventory> {
        let text = drivesec_fsutil::read_to_string(path)?;
        let mut inv: Inventory = toml::from_str(&text).map_err(|e| OpsError::BadInventory {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        abs(&mut inv.trust.oem_root);
        for p in inv
            .trust
            .crl
            .iter_mut()
            .chain(inv.trust.firmware_trust.iter_mut())
            .chain(inv.trust.manufacturer_root.iter_mut())
            .chain(inv.trust.manufacturer_crl.iter_mut())
        {
            abs(p);
        }
        if let Some(o) = &mut inv.operator {
            for p in [&mut o.cert, &mut o.key, &mut o.password_file] {
                abs(p);
            }
        }
        let v = &mut inv.validator;
        for p in [
            &mut v.admin_cert,
            &mut v.admin_key,
            &mut v.admin_password_file,
            &mut v.low_privilege_cert,
            &mut v.low_privilege_key,
        ] {
            abs(p);
        }
        for p in v.revoked_cert.iter_mut().chain(v.revoked_key.iter_mut()) {
            abs(p);
        }
        for p in &mut v.approved_releases {
            abs(p);
        }
        for d in &mut inv.devices {
            if let Some(p) = &mut d.profile {
                abs(p);
            }
            if let Some(f) = &mut d.certificate_sha256 {
                let hex = f.replace(':', "").to_ascii_lowercase();
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(OpsError::BadFingerprint {
                        path: path.to_path_buf(),
                        device: d.name.clone(),
                        value: f.clone(),
                    });
                }
                *f = hex;
            }
        }
        Ok(inv)
    }
}

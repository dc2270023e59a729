//! A running lab as the people's side of operations sees it: its
//! commissioned devices as [`Targets`] (as the security administrator, or
//! for rollouts the engineer), and as an [`Inventory`].

use std::path::Path;

use drivesec_client::client::Revocation;
use drivesec_firmware::trust::TrustStore;
use drivesec_ops::inventory::{Inventory, InventoryDevice, RolloutOperator, Trust, Validator};
use drivesec_ops::targets::{Account, DEFAULT_PARALLEL, Target, Targets, no_manufacturer_crl};
use zeroize::Zeroizing;

use crate::manifest::LabManifest;
use crate::{LabError, Result};

impl LabManifest {
    /// The lab's commissioned devices (those with an API and a DNS name).
    pub fn target_devices(&self) -> Result<Vec<Target>> {
        let mut devices = vec![];
        for d in &self.devices {
            if let (Some(_), Some(name)) = (&d.api, &d.device_name) {
                devices.push(Target {
                    name: d.name.clone(),
                    serial: d.serial_number.clone(),
                    addr: self.api_addr(d)?,
                    device_name: name.clone(),
                });
            }
        }
        Ok(devices)
    }

    /// The lab's commissioned devices, as its security-admin account,
    /// checked against the lab's OEM CRL (and IDevIDs against its
    /// manufacturer's).
    pub fn targets(&self) -> Result<Targets> {
        let user = self
            .users
            .get("security-admin")
            .ok_or_else(|| LabError::Incomplete("lab.json has no security-admin account".into()))?;
        let devices = self.target_devices()?;
        let (revocation, mut warnings) = Revocation::from_file(&self.crl)?;
        let (manufacturer_revocation, w) =
            Revocation::manufacturer_from_file(&self.manufacturer_crl)?;
        warnings.extend(w);
        Ok(Targets {
            devices,
            account: Account {
                identity: self.identity("security-admin")?,
                username: user.username.clone(),
                password: Zeroizing::new(user.password.clone()),
            },
            roots: drivesec_pki::read_cert_chain(&self.oem_ca)?,
            revocation,
            warnings,
            parallel: DEFAULT_PARALLEL,
            manufacturer_roots: Some(drivesec_pki::read_cert_chain(&self.manufacturer_ca)?),
            manufacturer_revocation,
        })
    }

    /// The lab's commissioned devices updated by its engineer account, and
    /// the firmware trust store its releases are checked against. The
    /// targets check no IDevID.
    pub fn rollout_targets(&self) -> Result<(Targets, TrustStore)> {
        let fw = self
            .firmware
            .as_ref()
            .ok_or_else(|| LabError::Incomplete("the lab has no firmware set-up".into()))?;
        let user = self
            .users
            .get("engineer")
            .ok_or_else(|| LabError::Incomplete("lab.json has no engineer".into()))?;
        let files = self
            .clients
            .get("engineer")
            .ok_or_else(|| LabError::Incomplete("lab.json has no engineer client".into()))?;
        let devices = self.target_devices()?;
        let (revocation, warnings) = Revocation::from_file(&self.crl)?;
        let identity =
            drivesec_client::client::ClientIdentity::from_files(&files.cert, &files.key)?;
        let roots = drivesec_pki::read_cert_chain(&self.oem_ca)?;
        let trust = drivesec_ops::rollout::read_trust(&fw.trust)?;
        Ok((
            Targets {
                devices,
                account: Account {
                    identity,
                    username: user.username.clone(),
                    password: Zeroizing::new(user.password.clone()),
                },
                roots,
                revocation,
                warnings,
                parallel: DEFAULT_PARALLEL,
                manufacturer_roots: None,
                manufacturer_revocation: no_manufacturer_crl(),
            },
            trust,
        ))
    }

    /// The inventory of this running lab in `lab_dir`: its devices are the
    /// assets whose `device` names them (`asset_of` maps lab device name ->
    /// asset id). The security administrator's and the engineer's passwords
    /// are written to `lab_dir/secrets/` for it (0600).
    pub fn inventory(
        &self,
        lab_dir: &Path,
        asset_of: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Inventory> {
        let admin = self
            .users
            .get("security-admin")
            .ok_or_else(|| LabError::Incomplete("lab.json has no security-admin user".into()))?;
        let pw = lab_dir
            .join("secrets")
            .join("validator-security-admin.password");
        drivesec_fsutil::write_atomic(
            &pw,
            admin.password.as_bytes(),
            drivesec_fsutil::Mode::Private,
        )?;
        let engineer = self
            .users
            .get("engineer")
            .ok_or_else(|| LabError::Incomplete("lab.json has no engineer user".into()))?;
        let engineer_pw = lab_dir.join("secrets").join("rollout-engineer.password");
        drivesec_fsutil::write_atomic(
            &engineer_pw,
            engineer.password.as_bytes(),
            drivesec_fsutil::Mode::Private,
        )?;
        let client = |role: &str| {
            self.clients
                .get(role)
                .cloned()
                .ok_or_else(|| LabError::Incomplete(format!("lab.json has no {role} client")))
        };
        let (a, v, e) = (
            client("security-admin")?,
            client("viewer")?,
            client("engineer")?,
        );
        let fw = self
            .firmware
            .as_ref()
            .ok_or_else(|| LabError::Incomplete("the lab has no firmware set-up".into()))?;
        let devices = self
            .devices
            .iter()
            .filter_map(|d| {
                let asset = asset_of(&d.name)?;
                Some(InventoryDevice {
                    name: d.name.clone(),
                    asset,
                    api: d.api.as_ref()?.trim_start_matches("https://").to_string(),
                    modbus: d.modbus.clone(),
                    device_name: d.device_name.clone()?,
                    serial: Some(d.serial_number.clone()),
                    certificate_sha256: None,
                    profile: None,
                })
            })
            .collect();
        Ok(Inventory {
            trust: Trust {
                oem_root: self.oem_ca.clone(),
                crl: Some(self.crl.clone()),
                firmware_trust: Some(fw.trust.clone()),
                manufacturer_root: Some(self.manufacturer_ca.clone()),
                manufacturer_crl: Some(self.manufacturer_crl.clone()),
            },
            operator: Some(RolloutOperator {
                cert: e.cert,
                key: e.key,
                user: engineer.username.clone(),
                password_file: engineer_pw,
            }),
            validator: Validator {
                admin_cert: a.cert,
                admin_key: a.key,
                admin_user: admin.username.clone(),
                admin_password_file: pw,
                low_privilege_cert: v.cert,
                low_privilege_key: v.key,
                revoked_cert: None,
                revoked_key: None,
                approved_releases: vec![fw.factory_image.clone()],
                expiry_margin_days: 30,
            },
            devices,
        })
    }
}

//! The devices a command works on and how to reach them: [`Targets`].
//!
//! One type for every command over many devices (posture, validation's
//! live parts, rollouts, scans, renewals, CRL pushes, the access review):
//! the devices, the account that acts on them (a security administrator,
//! or for rollouts an account with `update-firmware`), the owner's roots
//! and CRLs that recognise their LDevIDs, the manufacturer's that
//! recognise their IDevIDs, and how many are worked on at once
//! ([`Targets::each`]: a device that fails is reported and passed).
//! They come from an inventory file ([`Targets::from_inventory`]) or a
//! running lab (drivesec-lab's `LabManifest::targets`).

use std::net::SocketAddr;
use std::path::Path;

use drivesec_client::client::{ClientIdentity, DeviceClient, DeviceTrust, Revocation, Versions};
use rustls::pki_types::CertificateDer;
use zeroize::Zeroizing;

use crate::inventory::Inventory;
use crate::{OpsError, Result};

/// Devices worked on at once unless told otherwise.
pub const DEFAULT_PARALLEL: usize = 8;

/// One device.
#[derive(Debug, Clone)]
pub struct Target {
    /// Name (the fleet store's key).
    pub name: String,
    /// Serial number (empty when the inventory does not say).
    pub serial: String,
    /// API address.
    pub addr: SocketAddr,
    /// The DNS name its LDevID carries.
    pub device_name: String,
}

/// Who acts on the devices: a client certificate and an account.
#[derive(Debug, Clone)]
pub struct Account {
    /// The client certificate and key.
    pub identity: ClientIdentity,
    /// The account.
    pub username: String,
    /// Its password.
    pub password: Zeroizing<String>,
}

/// The devices, who acts on them, and how they are recognised.
pub struct Targets {
    /// The devices.
    pub devices: Vec<Target>,
    /// Who acts on them.
    pub account: Account,
    /// Owner roots (device LDevIDs chain to them).
    pub roots: Vec<CertificateDer<'static>>,
    /// The owner's CRLs every device certificate is checked against.
    pub revocation: Revocation,
    /// What the caller should show before it starts (a stale CRL, say).
    pub warnings: Vec<String>,
    /// Devices worked on at once.
    pub parallel: usize,
    /// The manufacturer root (IDevIDs chain to it), when known.
    pub manufacturer_roots: Option<Vec<CertificateDer<'static>>>,
    /// The manufacturer's CRLs every IDevID is checked against (missing:
    /// IDevID checks refuse, until [`Targets::allow_missing_crl`]).
    pub manufacturer_revocation: Revocation,
}

/// The manufacturer revocation of targets that check no IDevID (a
/// rollout's): an IDevID check over them refuses, saying so.
pub fn no_manufacturer_crl() -> Revocation {
    Revocation::Missing(
        "no manufacturer CRL is known for these devices: they were read for a rollout, which \
         checks no IDevID"
            .into(),
    )
}

impl Targets {
    /// An inventory's devices (`path` for messages), as its validator's
    /// security administrator, checked against `trust.crl` (without one,
    /// every connection is refused until [`Targets::allow_missing_crl`]).
    pub fn from_inventory(inv: &Inventory, path: &Path) -> Result<Targets> {
        let v = &inv.validator;
        let devices = inventory_devices(inv, path)?;
        let password = read_secret(&v.admin_password_file)?;
        let identity = ClientIdentity::from_files(&v.admin_cert, &v.admin_key)?;
        let roots = drivesec_pki::read_cert_chain(&inv.trust.oem_root)?;
        let (revocation, mut warnings) = inventory_revocation(inv, path)?;
        let (manufacturer_revocation, w) = Revocation::manufacturer_configured(
            inv.trust.manufacturer_crl.as_deref(),
            false,
            || {
                format!(
                    "{}: trust.manufacturer_crl is not set, and the tool checks every IDevID \
                     against the manufacturer's CRL (a reprovisioned device's old IDevID is \
                     revoked there): set it to the manufacturer CA's crl.pem; `audit review` also \
                     takes --insecure-no-crl to go on without revocation checks",
                    path.display()
                )
            },
        )?;
        warnings.extend(w);
        Ok(Targets {
            devices,
            account: Account {
                identity,
                username: v.admin_user.clone(),
                password,
            },
            roots,
            revocation,
            warnings,
            parallel: DEFAULT_PARALLEL,
            manufacturer_roots: inv
                .trust
                .manufacturer_root
                .as_ref()
                .map(|p| drivesec_pki::read_cert_chain(p))
                .transpose()?,
            manufacturer_revocation,
        })
    }

    /// Risky (`--insecure-no-crl`): when no CRL is configured, go on without
    /// revocation checks (a warning is added); a configured CRL is always
    /// checked.
    pub fn allow_missing_crl(&mut self) {
        if let Some(w) = self.revocation.allow_missing() {
            self.warnings.push(w);
        }
        // The manufacturer's CRL only matters where an IDevID is checked
        // (the manufacturer root is known): warn only then.
        if let Some(w) = self.manufacturer_revocation.allow_missing_manufacturer()
            && self.manufacturer_roots.is_some()
        {
            self.warnings.push(w);
        }
    }

    /// How `d`'s certificate is checked: the owner roots, its DNS name, the
    /// owner's CRLs, the LDevID profile and its serial (when known).
    pub fn trust(&self, d: &Target) -> DeviceTrust {
        DeviceTrust::owned(
            self.roots.clone(),
            d.device_name.clone(),
            Some(d.serial.clone()),
            self.revocation.clone(),
        )
    }

    /// A client of `d` (not logged in) that has completed one request
    /// (`GET /api/v1/info`, answered 2xx), so its handshake proved the
    /// device. What counts is that handshake (the certificate it
    /// presented), not what the answer says, which is not read.
    pub fn connected(&self, d: &Target) -> drivesec_client::Result<DeviceClient> {
        let c = DeviceClient::new(
            d.addr,
            Some(&self.account.identity),
            &self.trust(d),
            Versions::Default,
        )?;
        c.call("GET", "/api/v1/info", None)?.success()?;
        Ok(c)
    }

    /// A session on `d` as the account. The password goes only to a device
    /// whose certificate passed [`Targets::trust`].
    pub fn session(&self, d: &Target) -> drivesec_client::Result<DeviceClient> {
        let mut c = DeviceClient::new(
            d.addr,
            Some(&self.account.identity),
            &self.trust(d),
            Versions::Default,
        )?;
        c.login(&self.account.username, &self.account.password)?;
        Ok(c)
    }

    /// Runs `f` on every device, at most [`Targets::parallel`] at once (a
    /// device that does not answer holds one worker until its deadline, not
    /// the others); the results in the devices' order. A panic on one
    /// device is that device's error.
    pub fn each<T: Send>(&self, f: impl Fn(&Target) -> Result<T> + Sync) -> Vec<Result<T>> {
        each_device(&self.devices, self.parallel, f)
    }
}

/// A password (or credential) file's text, without its line end: what an
/// inventory's `password_file`s and the tool's `--password-file` hold.
pub fn read_secret(path: &Path) -> Result<Zeroizing<String>> {
    let text = Zeroizing::new(drivesec_fsutil::read_to_string(path)?);
    Ok(Zeroizing::new(
        text.trim_end_matches(['\r', '\n']).to_string(),
    ))
}

/// [`Targets::each`] over any devices.
fn each_device<T: Send>(
    devices: &[Target],
    parallel: usize,
    f: impl Fn(&Target) -> Result<T> + Sync,
) -> Vec<Result<T>> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<Result<T>>>> = devices
        .iter()
        .map(|_| std::sync::Mutex::new(None))
        .collect();
    std::thread::scope(|s| {
        for _ in 0..parallel.max(1).min(devices.len()) {
            s.spawn(|| {
                while let Some(i) = Some(next.fetch_add(1, std::sync::atomic::Ordering::SeqCst))
                    .filter(|i| *i < devices.len())
                {
                    let d = &devices[i];
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(d)))
                        .unwrap_or_else(|_| {
                            Err(OpsError::DeviceFailed {
                                device: d.name.clone(),
                            })
                        });
                    if let Ok(mut slot) = slots[i].lock() {
                        *slot = Some(r);
                    }
                }
            });
        }
    });
    slots
        .into_iter()
        .zip(devices)
        .map(|(m, d)| {
            m.into_inner().ok().flatten().unwrap_or_else(|| {
                Err(OpsError::NotProcessed {
                    device: d.name.clone(),
                })
            })
        })
        .collect()
}

/// An inventory's devices (`path` names the file in errors).
pub fn inventory_devices(inv: &Inventory, path: &Path) -> Result<Vec<Target>> {
    inv.devices
        .iter()
        .map(|d| {
            Ok(Target {
                name: d.name.clone(),
                serial: d.serial.clone().unwrap_or_default(),
                addr: d.addr(path)?,
                device_name: d.device_name.clone(),
            })
        })
        .collect()
}

/// The owner's CRLs of an inventory: `trust.crl`, or [`Revocation::Missing`]
/// saying to set it (`path` names the file).
pub fn inventory_revocation(inv: &Inventory, path: &Path) -> Result<(Revocation, Vec<String>)> {
    Ok(Revocation::configured(
        inv.trust.crl.as_deref(),
        false,
        || {
            format!(
                "{}: trust.crl is not set, and the tool checks every device's LDevID against \
                 the owner's CRL: set trust.crl to the OEM CA's crl.pem (docs/validation.md); \
                 fleet commands, `audit review` and `evidence bundle` also take --insecure-no-crl \
                 to go on without revocation checks",
                path.display()
            )
        },
    )?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn devices(n: usize) -> Vec<Target> {
        (0..n)
            .map(|i| Target {
                name: format!("d{i}"),
                serial: String::new(),
                addr: "127.0.0.1:1".parse().unwrap(),
                device_name: "d.example".into(),
            })
            .collect()
    }

    #[test]
    fn each_device_is_bounded_ordered_and_carries_on() {
        let ds = devices(10);
        let running = std::sync::atomic::AtomicUsize::new(0);
        let most = std::sync::atomic::AtomicUsize::new(0);
        let r = each_device(&ds, 3, |d| {
            let now = running.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            most.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(20));
            running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            match d.name.as_str() {
                "d3" => Err(OpsError::Check("d3 is silent".into())),
                "d5" => panic!("a bug on d5"),
                n => Ok(n.to_string()),
            }
        });
        assert!(most.load(std::sync::atomic::Ordering::SeqCst) <= 3);
        assert_eq!(r.len(), 10);
        for (i, x) in r.iter().enumerate() {
            match i {
                3 => assert!(x.as_ref().unwrap_err().to_string().contains("silent")),
                5 => assert!(x.as_ref().unwrap_err().to_string().contains("d5")),
                _ => assert_eq!(x.as_ref().unwrap(), &format!("d{i}")),
            }
        }
    }
}

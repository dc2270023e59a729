//! Chapter 1: every identity of the lab verified independently: device
//! chains (rustls-webpki, and `openssl verify` when installed), key
//! possession through each keystore, factory credentials, client roles.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use drivesec_client::client::{ClientIdentity, DeviceClient, Versions};
use drivesec_factory::{DeviceFile, LifeCycle, check_factory_credential};
use drivesec_keystore::verify::verify_signature;
use drivesec_keystore::{KeyHandle, open_keystore};
use drivesec_pki::inspect::{public_key, summarize};
use drivesec_pki::role::role_of_cert;
use drivesec_pki::verify::{Usage, VerifyOptions, verify_chain};
use drivesec_pki::{read_cert_chain, read_crl};
use rand_core::{OsRng, RngCore};
use serde::Serialize;

use super::{DemoReport, mark};
use crate::manifest::{LabDevice, LabManifest};
use crate::{LabError, Result};

/// One verified device.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceReport {
    /// Name.
    pub name: String,
    /// Serial number.
    pub serial_number: String,
    /// Keystore backend.
    pub keystore: String,
    /// IDevID subject.
    pub idevid_subject: String,
    /// IDevID chain and manufacturer CRL verified by webpki against the manufacturer root.
    pub chain_ok: bool,
    /// The keystore signed a fresh challenge that verifies with the IDevID key.
    pub possession_ok: bool,
    /// Before commissioning: the factory credential matched its hash and a
    /// wrong one did not. After: the hash is gone and the device refuses
    /// commissioning (the credential is dead).
    pub credential_ok: bool,
    /// `openssl verify` result, `None` when openssl is not installed.
    pub openssl_ok: Option<bool>,
}

/// One verified client.
#[derive(Debug, Clone, Serialize)]
pub struct ClientReport {
    /// The role it was issued for.
    pub role: String,
    /// The role read back from the certificate extension.
    pub role_in_certificate: Option<String>,
    /// Chain and CRL check by webpki against the OEM root.
    pub chain_ok: bool,
    /// `openssl verify` result.
    pub openssl_ok: Option<bool>,
}

fn openssl_verify(root: &Path, chain: &Path, crl: Option<&Path>, purpose: &str) -> Option<bool> {
    let mut cmd = Command::new("openssl");
    cmd.arg("verify")
        .arg("-CAfile")
        .arg(root)
        .arg("-untrusted")
        .arg(chain);
    cmd.arg("-purpose").arg(purpose);
    if let Some(crl) = crl {
        cmd.arg("-crl_check").arg("-CRLfile").arg(crl);
    }
    cmd.arg(chain);
    cmd.output().ok().map(|o| o.status.success())
}

/// Verifies every identity of an existing lab.
pub(super) fn verify_lab(
    lab: &LabManifest,
    lab_dir: &Path,
    out: &mut dyn Write,
) -> Result<DemoReport> {
    let mfg_roots = read_cert_chain(&lab.manufacturer_ca)?;
    let oem_roots = read_cert_chain(&lab.oem_ca)?;
    let crl = read_crl(&lab.crl)?;
    let mfg_crls = [read_crl(&lab.manufacturer_crl)?];
    let mut devices = Vec::new();
    let _ = writeln!(
        out,
        "\nDevices (IDevID from the manufacturer CA; key inside the device keystore):"
    );
    for d in &lab.devices {
        let chain = read_cert_chain(&d.idevid)?;
        let leaf = &chain[0];
        let chain_ok = verify_chain(
            leaf,
            &VerifyOptions {
                roots: &mfg_roots,
                intermediates: &chain[1..],
                crls: &mfg_crls,
                usage: Usage::Client,
                time: None,
            },
        )
        .is_ok();
        let file = DeviceFile::load(&d.dir)?;
        let store = open_keystore(&file.keystore, &d.dir)?;
        let mut challenge = [0u8; 32];
        OsRng.fill_bytes(&mut challenge);
        let sig = store.sign(&KeyHandle::new(file.idevid_key.as_str())?, &challenge)?;
        let possession_ok = verify_signature(&public_key(leaf)?, &challenge, &sig);
        let cred = drivesec_fsutil::read_to_string(&d.factory_credential)?;
        let credential_ok = if file.state == LifeCycle::Factory {
            check_factory_credential(&d.dir, cred.trim())?
                && !check_factory_credential(&d.dir, "AAAAA-AAAAA-AAAAA-AAAAA-AAAAA")?
        } else {
            // Commissioned: the hash is gone and the device refuses to be commissioned again.
            !d.dir.join("factory-credential.hash").exists()
                && factory_credential_refused(lab, d, cred.trim())?
        };
        let openssl_ok = openssl_verify(
            &lab.manufacturer_ca,
            &d.idevid,
            Some(&lab.manufacturer_crl),
            "sslclient",
        );
        let subject = summarize(leaf)?.subject;
        let _ = writeln!(
            out,
            "  {:<9} {:<13} {:<6} chain {}  key-possession {}  factory-credential {}  openssl {}",
            d.name,
            d.serial_number,
            d.keystore,
            mark(chain_ok),
            mark(possession_ok),
            mark(credential_ok),
            openssl_ok
                .map(mark)
                .unwrap_or("n/a (openssl not installed)"),
        );
        devices.push(DeviceReport {
            name: d.name.clone(),
            serial_number: d.serial_number.clone(),
            keystore: d.keystore.clone(),
            idevid_subject: subject,
            chain_ok,
            possession_ok,
            credential_ok,
            openssl_ok,
        });
    }
    let mut clients = Vec::new();
    let _ = writeln!(
        out,
        "\nClients (OEM CA; role in extension 1.3.6.1.4.1.50316.802.1):"
    );
    for (role, files) in &lab.clients {
        let chain = read_cert_chain(&files.cert)?;
        let crls = [crl.clone()];
        let chain_ok = verify_chain(
            &chain[0],
            &VerifyOptions {
                roots: &oem_roots,
                intermediates: &chain[1..],
                crls: &crls,
                usage: Usage::Client,
                time: None,
            },
        )
        .is_ok();
        let role_in_certificate = role_of_cert(&chain[0])?.map(|r| r.to_string());
        let openssl_ok = openssl_verify(&lab.oem_ca, &files.cert, Some(&lab.crl), "sslclient");
        let _ = writeln!(
            out,
            "  {:<15} role-extension {:<15} chain+CRL {}  openssl {}",
            role,
            role_in_certificate.as_deref().unwrap_or("(none)"),
            mark(chain_ok),
            openssl_ok.map(mark).unwrap_or("n/a"),
        );
        clients.push(ClientReport {
            role: role.clone(),
            role_in_certificate,
            chain_ok,
            openssl_ok,
        });
    }
    let ok = devices
        .iter()
        .all(|d| d.chain_ok && d.possession_ok && d.credential_ok && d.openssl_ok != Some(false))
        && clients.iter().all(|c| {
            c.chain_ok
                && c.role_in_certificate.as_deref() == Some(c.role.as_str())
                && c.openssl_ok != Some(false)
        });
    let report = DemoReport {
        lab_dir: std::path::absolute(lab_dir).unwrap_or_else(|_| lab_dir.to_path_buf()),
        devices,
        clients,
        sessions: Vec::new(),
        firmware: None,
        drive: None,
        plan: None,
        validation: None,
        fleet: None,
        tamper: None,
        audit: Vec::new(),
        ok,
    };
    if !ok {
        return Err(LabError::Check(format!(
            "the lab in {} did not verify: {}",
            lab_dir.display(),
            serde_json::to_string(&report).unwrap_or_default()
        )));
    }
    let _ = writeln!(
        out,
        "\nAll identities verified. lab.json: {}",
        lab_dir.join("lab.json").display()
    );
    Ok(report)
}

/// Tries to commission a commissioned device with its old credential: must be refused.
fn factory_credential_refused(lab: &LabManifest, d: &LabDevice, cred: &str) -> Result<bool> {
    let (Some(api), Some(_)) = (&d.api, &d.device_name) else {
        return Ok(true);
    };
    let files = lab
        .clients
        .get("security-admin")
        .ok_or_else(|| LabError::Incomplete("no security-admin client".into()))?;
    let id = ClientIdentity::from_files(&files.cert, &files.key)?;
    let addr = api
        .trim_start_matches("https://")
        .parse()
        .map_err(|_| LabError::BadAddress(format!("bad api {api}")))?;
    let trust = lab.device_trust(d)?;
    let c = DeviceClient::new(addr, Some(&id), &trust, Versions::Default)?;
    let r = c.call_with(
        "POST",
        "/api/v1/commission/begin",
        &drivesec_api::commissioning::CommissionBeginRequest {
            factory_credential: cred.to_string(),
            device_name: "takeover.example".into(),
        },
    )?;
    Ok(r.status == 409)
}

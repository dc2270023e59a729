//! Chapter 9: tamper on the last device (the enclosure switch): its keys
//! gone, status only under a throwaway certificate; then back at the
//! manufacturer, re-provisioned on the same chip.

use std::io::Write;
use std::path::{Path, PathBuf};

use drivesec_client::client::{ClientIdentity, DeviceClient, DeviceTrust, Versions};
use serde::Serialize;

use crate::manifest::{LabDevice, LabManifest};
use crate::{LabError, Result};

/// The tamper story.
#[derive(Debug, Clone, Serialize)]
pub struct TamperReport {
    /// Device.
    pub device: String,
    /// Private keys in its keystore before.
    pub keys_before: usize,
    /// And after the tamper input (0 expected).
    pub keys_after: usize,
    /// The device reports itself tampered.
    pub tampered: bool,
    /// Its identity (LDevID) handshake fails now.
    pub identity_refused: bool,
    /// A login got this status (423 expected).
    pub login_status: u16,
    /// Then the manufacturer re-provisioned it.
    pub reprovisioned: Option<ReprovisionReport>,
}

/// The manufacturer's side of the tamper story.
#[derive(Debug, Clone, Serialize)]
pub struct ReprovisionReport {
    /// The old IDevID serial, now revoked (key compromise).
    pub old_idevid_serial: String,
    /// Whether the manufacturer CRL names it.
    pub old_idevid_in_crl: bool,
    /// The new IDevID serial.
    pub new_idevid_serial: String,
    /// Keys in the keystore afterwards (IDevID and firmware key: 2).
    pub keys_after: usize,
    /// The factory firmware installed for the new firmware key.
    pub firmware: String,
    /// The anti-rollback floor carried over.
    pub security_counter_floor: u64,
    /// Where the old directory (the evidence) went.
    pub archive: PathBuf,
}

/// The tamper story, on the last device (after its trail was verified):
/// the enclosure switch, the keys gone, status only.
pub(super) fn tamper_story(
    lab: &LabManifest,
    work: &Path,
    out: &mut dyn Write,
) -> Result<Option<TamperReport>> {
    let Some(d) = lab.devices.iter().rev().find(|d| d.api.is_some()) else {
        return Ok(None);
    };
    let (Some(api), Some(tamper), Some(_)) = (&d.api, &d.tamper, &d.device_name) else {
        return Ok(None);
    };
    let addr: std::net::SocketAddr = api
        .trim_start_matches("https://")
        .parse()
        .map_err(|_| LabError::BadAddress(format!("bad api address {api}")))?;
    let keys = || -> Result<usize> {
        let st = drivesec_state::StateDir::load(&d.dir)?;
        Ok(st.store.list()?.len())
    };
    let keys_before = keys()?;
    let _ = writeln!(
        out,
        "\nTamper on {} (enclosure switch = the local input {}):",
        d.name,
        tamper.display()
    );
    if let Some(parent) = tamper.parent() {
        drivesec_fsutil::create_private_dir(parent)
            .or_else(|e| if parent.is_dir() { Ok(()) } else { Err(e) })?;
    }
    drivesec_fsutil::write_atomic(tamper, b"1", drivesec_fsutil::Mode::Public)?;
    let f = lab
        .clients
        .get("viewer")
        .ok_or_else(|| LabError::Incomplete("no viewer client in the lab".into()))?;
    let id = ClientIdentity::from_files(&f.cert, &f.key)?;
    let marker = DeviceClient::new(
        addr,
        Some(&id),
        &DeviceTrust::TamperedStatusRisky {
            serial: d.serial_number.clone(),
        },
        Versions::Default,
    )?;
    // Whether the device said (under its marker) that its tamper response
    // ran; None while it did not.
    let mut tampered = None;
    for _ in 0..500 {
        if let Ok(i) = marker.get::<drivesec_api::device::DeviceInfo>("/api/v1/info")
            && i.tampered
        {
            tampered = Some(i.tampered);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let keys_after = keys()?;
    let identity_refused =
        DeviceClient::new(addr, Some(&id), &lab.device_trust(d)?, Versions::Default)?
            .call("GET", "/api/v1/info", None)
            .is_err();
    let login_status = marker
        .call_with(
            "POST",
            "/api/v1/login",
            &drivesec_api::sessions::LoginRequest {
                username: "x".into(),
                password: "y".into(),
            },
        )?
        .status;
    let _ = writeln!(
        out,
        "  private keys in its keystore: {keys_before} before, {keys_after} after; its LDevID handshake {}",
        if identity_refused {
            "now fails"
        } else {
            "STILL WORKS"
        }
    );
    let _ = writeln!(
        out,
        "  status under the self-signed TAMPERED certificate: tampered = {}; a login -> {login_status}",
        tampered.map_or_else(|| "null".to_string(), |t| t.to_string())
    );
    let reprovisioned = reprovision_story(lab, d, work, out)?;
    Ok(Some(TamperReport {
        device: d.name.clone(),
        keys_before,
        keys_after,
        tampered: tampered == Some(true),
        identity_refused,
        login_status,
        reprovisioned,
    }))
}

/// The tampered device goes back to the manufacturer: drivesecd stopped,
/// the enclosure closed, a new identity on the same chip, the old one
/// revoked, factory firmware for the new firmware key at or above the old
/// anti-rollback counter.
fn reprovision_story(
    lab: &LabManifest,
    d: &LabDevice,
    work: &Path,
    out: &mut dyn Write,
) -> Result<Option<ReprovisionReport>> {
    let (Some(pid), Some(tamper), Some(fw)) = (d.pid, &d.tamper, &lab.firmware) else {
        return Ok(None);
    };
    crate::daemons::stop(pid);
    drivesec_fsutil::remove_durable(tamper)?;
    let mut mfg = drivesec_pki::Ca::open(&lab.manufacturer_ca_dir)?;
    let r = drivesec_factory::reprovision(
        &mut mfg,
        &drivesec_factory::ReprovisionOptions {
            device_dir: d.dir.clone(),
            archive: None,
        },
    )?;
    let floor = r.security_counter_floor;
    let image = lab.release(work, "1.1.1", floor, 64 * 1024, true)?;
    let trust: drivesec_firmware::trust::TrustStore =
        serde_json::from_slice(&drivesec_fsutil::read(&fw.trust)?).map_err(|e| {
            LabError::BadFile {
                path: fw.trust.clone(),
                reason: e.to_string(),
            }
        })?;
    let st = drivesec_state::StateDir::load(&d.dir)?;
    drivesec_state::firmware::install_factory(&st, &trust, &drivesec_fsutil::read(&image)?)?;
    let keys_after = st.store.list()?.len();
    // The old IDevID still chains to the manufacturer root, and the
    // manufacturer CRL now refuses it.
    let old = drivesec_pki::read_cert_chain(&r.archive.join("idevid.crt"))?;
    let roots = drivesec_pki::read_cert_chain(&lab.manufacturer_ca)?;
    let crl = drivesec_pki::read_crl(&r.crl)?;
    let check = |crls: &[rustls::pki_types::CertificateRevocationListDer<'_>]| {
        drivesec_pki::verify::verify_chain(
            &old[0],
            &drivesec_pki::verify::VerifyOptions {
                roots: &roots,
                intermediates: old.get(1..).unwrap_or(&[]),
                crls,
                usage: drivesec_pki::verify::Usage::Client,
                time: None,
            },
        )
    };
    let in_crl = check(&[]).is_ok() && check(std::slice::from_ref(&crl)).is_err();
    let _ = writeln!(
        out,
        "  back at the manufacturer (drivesec factory reprovision): old IDevID {} revoked{}, new IDevID {} on the same keystore ({keys_after} keys), factory firmware 1.1.1 at counter {floor} (the old floor); evidence kept in {}",
        r.revoked_idevid_serial,
        if in_crl {
            " (the manufacturer CRL now refuses it)"
        } else {
            " but the manufacturer CRL DOES NOT refuse it"
        },
        r.provisioned.idevid_serial,
        r.archive.display()
    );
    Ok(Some(ReprovisionReport {
        old_idevid_serial: r.revoked_idevid_serial,
        old_idevid_in_crl: in_crl,
        new_idevid_serial: r.provisioned.idevid_serial,
        keys_after,
        firmware: "1.1.1".into(),
        security_counter_floor: floor,
        archive: r.archive,
    }))
}

//! Chapter 3: firmware on the first running device: an unapproved image
//! refused, an approved release confirmed after a trial boot and attested,
//! a corrupted update reverted by the boot stage.

use std::io::Write;
use std::path::Path;

use drivesec_api::firmware::{FirmwareRebootAnswer, FirmwareStatus};
use drivesec_client::client::{DeviceClient, Revocation};
use drivesec_pki::read_cert_chain;
use serde::Serialize;

use super::mark;
use crate::manifest::LabManifest;
use crate::{LabError, Result};

/// The firmware update story on the first running device.
#[derive(Debug, Clone, Serialize)]
pub struct FirmwareReport {
    /// Device.
    pub device: String,
    /// Version running from the factory.
    pub factory_version: String,
    /// The release packed (vendor-signed, OEM-approved).
    pub release: String,
    /// Status the vendor-signed but unapproved image got (400 expected).
    pub unapproved_status: u16,
    /// Why it was refused.
    pub unapproved_reason: String,
    /// Running after update, trial boot and health check.
    pub running_after_update: String,
    /// Whether that boot was confirmed (not on trial any more).
    pub confirmed: bool,
    /// The device's anti-rollback counter after confirmation.
    pub counter_after_update: u64,
    /// A fresh-nonce attestation verified and matched the approved release.
    pub attested: bool,
    /// Running after a verified update whose slot was then corrupted.
    pub running_after_broken: String,
    /// The revert reason the boot stage recorded.
    pub revert_reason: Option<String>,
}

/// A client logged in as the lab account of `role` over that role's
/// certificate, trusting the device's LDevID for `device_name`.
fn role_session(
    lab: &LabManifest,
    addr: std::net::SocketAddr,
    device_name: &str,
    role: &str,
) -> Result<DeviceClient> {
    let d = lab
        .devices
        .iter()
        .find(|d| {
            d.device_name.as_deref() == Some(device_name) && lab.api_addr(d).ok() == Some(addr)
        })
        .ok_or_else(|| LabError::Incomplete(format!("no lab device {device_name} at {addr}")))?;
    lab.session(d, role)
}

/// On the first running device: an approved release updates it (trial boot,
/// health check, confirm), an unapproved one is refused, an attestation
/// proves what runs, and a broken update is reverted by the boot stage.
pub(super) fn firmware_story(
    lab: &LabManifest,
    lab_dir: &Path,
    out: &mut dyn Write,
) -> Result<Option<FirmwareReport>> {
    let Some(d) = lab.devices.iter().find(|d| d.api.is_some()) else {
        return Ok(None);
    };
    if lab.firmware.is_none() {
        return Ok(None);
    }
    let (Some(api), Some(name)) = (&d.api, &d.device_name) else {
        return Ok(None);
    };
    let addr = api
        .trim_start_matches("https://")
        .parse()
        .map_err(|_| LabError::BadAddress(format!("bad api address {api}")))?;
    let roots = read_cert_chain(&lab.oem_ca)?;
    let c = role_session(lab, addr, name, "engineer")?;
    let w = |out: &mut dyn Write, s: String| {
        let _ = writeln!(out, "{s}");
    };
    w(
        out,
        format!(
            "\nFirmware on {} (engineer role; images signed by the vendor, approved by the OEM):",
            d.name
        ),
    );
    let work = lab_dir.join("firmware").join("releases");
    drivesec_fsutil::create_private_dir(&work)?;
    let before: FirmwareStatus = c.get("/api/v1/firmware")?;
    let factory_version = before.running.map(|r| r.version).unwrap_or_default();
    let upload = |c: &DeviceClient, p: &Path| {
        c.call_raw(
            "POST",
            "/api/v1/firmware",
            Some(drivesec_fsutil::read(p)?),
            "application/octet-stream",
        )
    };
    let release = "1.1.0";
    let unapproved = lab.release(&work, release, 2, 256 * 1024, false)?;
    let r = upload(&c, &unapproved)?;
    let unapproved_status = r.status;
    let unapproved_reason = r.error_body().map(|e| e.message).unwrap_or_default();
    w(
        out,
        format!(
            "  vendor-signed {release} without the OEM approval -> {} {}",
            r.status, unapproved_reason
        ),
    );
    let approved = lab.release(&work, release, 2, 256 * 1024, true)?;
    let r = upload(&c, &approved)?;
    if r.status != 200 {
        return Err(LabError::Check(format!(
            "the approved release was refused: {}",
            r.body
        )));
    }
    let after: FirmwareRebootAnswer = c.request("POST", "/api/v1/firmware/reboot")?;
    let running_after_update = after
        .running
        .as_ref()
        .map(|r| r.version.clone())
        .unwrap_or_default();
    let confirmed = after.running.as_ref().is_some_and(|r| !r.trial);
    let counter_after_update = after.boot_state.as_ref().map_or(0, |b| b.counter);
    w(
        out,
        format!(
            "  approved {release} streamed in and verified chunk by chunk; reboot: trial boot, health check -> running {running_after_update} confirmed {}, security counter {counter_after_update}",
            mark(confirmed)
        ),
    );
    let header = drivesec_firmware::image::Header::read_file(&approved)
        .map_err(|e| LabError::Firmware(e.to_string()))?;
    let att = drivesec_client::attest::request(&c)?;
    let (revocation, _) = Revocation::from_file(&lab.crl)?;
    let crls = revocation.crls()?;
    let attested =
        drivesec_client::attest::verify_attestation(&att, &roots, crls, Some(name), Some(&header))
            .map(|r| r.matches_approved == Some(true))
            .unwrap_or(false);
    w(
        out,
        format!(
            "  attestation with a fresh nonce, signed by the device's LDevID key, is the approved {release}: {}",
            mark(attested)
        ),
    );
    let broken = lab.release(&work, "1.2.0", 3, 256 * 1024, true)?;
    let r = upload(&c, &broken)?;
    if r.status != 200 {
        return Err(LabError::Check(format!("1.2.0 was refused: {}", r.body)));
    }
    let state: FirmwareStatus = c.get("/api/v1/firmware")?;
    let pending = state
        .boot_state
        .and_then(|b| b.pending)
        .unwrap_or_else(|| "b".to_string());
    // A flash fault after staging: one byte of the pending slot changes.
    let slot = d.dir.join("firmware").join(format!("slot-{pending}.img"));
    let mut bytes = drivesec_fsutil::read(&slot)?;
    let at = bytes.len().saturating_sub(4096);
    if let Some(b) = bytes.get_mut(at) {
        *b ^= 0x20;
    }
    std::fs::write(&slot, bytes).map_err(|e| drivesec_fsutil::FsError::io("write", &slot, e))?;
    let after: FirmwareRebootAnswer = c.request("POST", "/api/v1/firmware/reboot")?;
    let running_after_broken = after.running.map(|r| r.version).unwrap_or_default();
    let revert_reason = after.boot_state.and_then(|b| b.last_revert);
    w(
        out,
        format!(
            "  1.2.0 staged, then its slot corrupted (flash fault); reboot: the boot stage refuses it and stays on {running_after_broken}: {}",
            revert_reason.as_deref().unwrap_or("(no revert recorded)")
        ),
    );
    let _ = c.logout();
    Ok(Some(FirmwareReport {
        device: d.name.clone(),
        factory_version,
        release: release.into(),
        unapproved_status,
        unapproved_reason,
        running_after_update,
        confirmed,
        counter_after_update,
        attested,
        running_after_broken,
        revert_reason,
    }))
}

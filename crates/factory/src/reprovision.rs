//! Re-provisioning a tampered device back at the manufacturer
//! (docs/incident-response.md): the old identity revoked and kept as
//! evidence, a new one on the same chip, the anti-rollback counter carried
//! over.

use std::path::{Path, PathBuf};

use drivesec_fsutil as fsu;
use drivesec_keystore::pkcs11::Pkcs11Uri;
use drivesec_keystore::{KeystoreConfig, open_keystore};
use drivesec_pki::Ca;
use drivesec_state::files::{self, REPROVISIONED};
use drivesec_state::firmware::security_counter_floor;
use zeroize::Zeroizing;

use crate::provision::{
    DeviceFile, DeviceKeystore, ProvisionOptions, Provisioned, check_manufacturer, provision_with,
};
use crate::{FactoryError, Result};

/// A tampered device back at the manufacturer (docs/incident-response.md).
#[derive(Debug, Clone)]
pub struct ReprovisionOptions {
    /// The tampered device's state directory (drivesecd stopped).
    pub device_dir: PathBuf,
    /// Where the old directory is kept as evidence; default
    /// `DIR.tampered-<UTC time>` beside it.
    pub archive: Option<PathBuf>,
}

/// What re-provisioning did.
#[derive(Debug)]
pub struct Reprovisioned {
    /// The new identity, as the station made it.
    pub provisioned: Provisioned,
    /// The old directory (audit trail, `tampered.json`, old certificates).
    pub archive: PathBuf,
    /// The old IDevID's serial, now revoked (keyCompromise).
    pub revoked_idevid_serial: String,
    /// Whether this run revoked it (false: it already was).
    pub newly_revoked: bool,
    /// The manufacturer CRL that names it.
    pub crl: PathBuf,
    /// The old anti-rollback counter: factory firmware installed on the new
    /// directory must be at least this (`reprovisioned.json`).
    pub security_counter_floor: u64,
}

/// Gives a tampered device a new identity: checks it is tampered and its
/// tamper input is clear, revokes the old IDevID (keyCompromise) at the
/// manufacturer CA, moves the old directory aside as evidence, and
/// provisions the same serial again on the same chip (new keys, new IDevID,
/// new factory credential), carrying the anti-rollback counter over. On any
/// failure after the move, the old directory is put back.
pub fn reprovision(mfg: &mut Ca, opts: &ReprovisionOptions) -> Result<Reprovisioned> {
    check_manufacturer(mfg)?;
    let dir = &opts.device_dir;
    let invalid = |reason: String| FactoryError::CannotReprovision {
        dir: dir.clone(),
        reason,
    };
    if !dir.join(files::DEVICE).exists() {
        return Err(invalid(
            "not a device state directory (no device.json)".into(),
        ));
    }
    if !dir.join(files::TAMPERED).exists() {
        return Err(invalid(
            "the device is not tampered (no tampered.json); a device whose keys are intact is reset with `drivesecd --state DIR factory-reset`".into(),
        ));
    }
    let input = drivesec_state::io::tamper_path(dir);
    if std::fs::symlink_metadata(&input).is_ok() {
        return Err(invalid(format!(
            "the tamper input {} is still active; inspect and close the enclosure first",
            input.display()
        )));
    }
    let file = DeviceFile::load(dir).map_err(|e| invalid(e.to_string()))?;
    let idevid = drivesec_pki::read_cert_chain(&dir.join(files::IDEVID))?;
    let leaf = idevid
        .first()
        .ok_or_else(|| invalid("idevid.crt holds no certificate".into()))?;
    let old_serial = drivesec_pki::inspect::summarize(leaf)?.serial;
    if !mfg
        .issued_serials()
        .iter()
        .any(|s| s.eq_ignore_ascii_case(&old_serial))
    {
        return Err(invalid(format!(
            "its IDevID (serial {old_serial}) was not issued by the manufacturer CA {}",
            mfg.dir().display()
        )));
    }
    let boot = dir.join(files::FIRMWARE).join("boot.json");
    let floor = if boot.exists() {
        let v: serde_json::Value = serde_json::from_slice(&fsu::read(&boot)?)
            .map_err(|e| invalid(format!("firmware/boot.json: {e}")))?;
        v["counter"].as_u64().unwrap_or(0)
    } else {
        0
    }
    .max(security_counter_floor(dir)?);
    // The same chip: the soft store is rebuilt in the new directory; a token
    // is reused with the PIN the old directory held.
    let keystore = match &file.keystore {
        KeystoreConfig::Pkcs11 { uri } => {
            let u = Pkcs11Uri::parse(uri)?;
            match u.pin_source.as_deref() {
                Some("file:pin") => DeviceKeystore::Pkcs11Token {
                    uri: uri.clone(),
                    user_pin: Zeroizing::new(fsu::read_to_string(&dir.join("pin"))?),
                },
                _ => DeviceKeystore::Pkcs11 { uri: uri.clone() },
            }
        }
        _ => DeviceKeystore::Soft,
    };
    let archive = match &opts.archive {
        Some(a) => a.clone(),
        None => {
            let stamp = time::OffsetDateTime::now_utc()
                .format(time::macros::format_description!(
                    "[year][month][day]T[hour][minute][second]Z"
                ))
                .map_err(|e| FactoryError::Record(e.to_string()))?;
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "device".into());
            dir.with_file_name(format!("{name}.tampered-{stamp}"))
        }
    };
    if archive.exists() {
        return Err(FactoryError::Exists { path: archive });
    }
    // Last of the checks passed: from here on things change. A token is
    // emptied first (the tamper response did; this finishes a partial one).
    if let KeystoreConfig::Pkcs11 { .. } = &file.keystore {
        open_keystore(&file.keystore, dir)?.destroy_all()?;
    }
    let (crl, newly_revoked) = if mfg
        .revoked_serials()
        .iter()
        .any(|s| s.eq_ignore_ascii_case(&old_serial))
    {
        (mfg.crl_path(), false)
    } else {
        (mfg.revoke(&old_serial, "key-compromise")?, true)
    };
    let parent = |p: &Path| p.parent().unwrap_or(Path::new(".")).to_path_buf();
    std::fs::rename(dir, &archive).map_err(|e| fsu::FsError::io("rename", dir, e))?;
    fsu::sync_dir(&parent(dir))?;
    fsu::sync_dir(&parent(&archive))?;
    let record = serde_json::to_vec_pretty(&serde_json::json!({
        "format": "drivesec-reprovisioned",
        "version": 1,
        "previous_idevid_serial": old_serial,
        "archive": archive,
        "security_counter_floor": floor,
        "at": time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
    }))
    .map_err(|e| FactoryError::Record(e.to_string()))?;
    let opts_new = ProvisionOptions {
        device_dir: dir.clone(),
        serial_number: file.serial_number.clone(),
        model: file.model.clone(),
        keystore,
    };
    match provision_with(mfg, &opts_new, &[(REPROVISIONED, &record)]) {
        Ok(p) => Ok(Reprovisioned {
            provisioned: p,
            archive,
            revoked_idevid_serial: old_serial,
            newly_revoked,
            crl,
            security_counter_floor: floor,
        }),
        Err(e) => {
            // Put the evidence back where it was; the old identity stays revoked.
            if std::fs::rename(&archive, dir).is_ok() {
                let _ = fsu::sync_dir(&parent(dir));
            }
            Err(e)
        }
    }
}

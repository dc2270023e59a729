//! Incident response over a fleet's devices (docs/incident-response.md):
//! scan the fleet (versions, certificate expiry, tamper) into the store,
//! renew LDevIDs, and push a CRL to every device after a key compromise.
//! The devices come from a running lab or an inventory file ([`Targets`]).
//! Each command works on the devices `parallel` at a time
//! ([`Targets::each`]), carries on past a device that fails, and reports
//! which did and why.

use drivesec_api::device::DeviceInfo;
use drivesec_api::firmware::FirmwareStatus;
use drivesec_api::identity::{InstallLdevid, RenewalCsr};
use drivesec_api::security::{CrlInstallAnswer, CrlInstallRequest};
use drivesec_fleet::{DeviceRecord, FleetStore};
use serde::Serialize;

use drivesec_client::ClientError;
use drivesec_client::client::{DeviceClient, DeviceTrust, PeerProblem, Versions};

use crate::targets::{Target, Targets};
use crate::{OpsError, Result};

/// The LDevID `c`'s device presented: (serial, notAfter, days left).
fn presented_ldevid(c: &DeviceClient) -> Option<(String, String, i64)> {
    let leaf = c
        .peer_certificates()
        .into_iter()
        .next()
        .and_then(|c| drivesec_pki::inspect::summarize(&c).ok())?;
    let t = time::OffsetDateTime::parse(
        &leaf.not_after,
        &time::format_description::well_known::Rfc3339,
    )
    .ok()?;
    Some((
        leaf.serial,
        leaf.not_after,
        (t - time::OffsetDateTime::now_utc()).whole_days(),
    ))
}

/// What a scan saw of one device.
#[derive(Debug, Clone, Serialize)]
pub struct Seen {
    /// Device.
    pub device: String,
    /// Reachable under its identity.
    pub reachable: bool,
    /// Its tamper response has run, as far as anyone can tell: it presents
    /// only its `CN=TAMPERED <serial>` marker and says so over it
    /// (unauthenticated: the keys that could prove it are destroyed).
    /// Flagged in the store for re-provisioning.
    pub tampered: bool,
    /// What a `CN=TAMPERED <serial>` status connection claimed, always
    /// "claimed, unauthenticated"; when the device's identity connection
    /// failed for another reason, that `error` stands and the claim is not
    /// recorded in the store.
    pub tamper_claim: Option<String>,
    /// Firmware running.
    pub firmware_version: String,
    /// The serial (hex) of the LDevID it presents.
    pub ldevid_serial: String,
    /// LDevID expiry.
    pub ldevid_not_after: String,
    /// Days left.
    pub days_left: Option<i64>,
    /// Why its boot stage last reverted to the other slot (a corrupted or
    /// unconfirmed image), if it did.
    pub boot_issue: Option<String>,
    /// Why it could not be scanned (not reachable under its identity, no
    /// answer in time, refused), unless it is flagged as tampered.
    pub error: Option<String>,
}

impl Seen {
    /// `d` before anything was read from it.
    fn nothing_yet(d: &Target) -> Seen {
        Seen {
            device: d.name.clone(),
            reachable: false,
            tampered: false,
            tamper_claim: None,
            firmware_version: String::new(),
            ldevid_serial: String::new(),
            ldevid_not_after: String::new(),
            days_left: None,
            boot_issue: None,
            error: None,
        }
    }
}

/// Reads one device's state.
fn scan_one(targets: &Targets, d: &Target) -> Seen {
    let mut seen = Seen::nothing_yet(d);
    match targets.session(d) {
        Ok(c) => {
            seen.reachable = true;
            match c.get::<FirmwareStatus>("/api/v1/firmware") {
                Ok(f) => {
                    seen.firmware_version = f.running.map(|r| r.version).unwrap_or_default();
                    seen.boot_issue = f.boot_state.and_then(|b| b.last_revert);
                }
                Err(e) => seen.error = Some(e.to_string()),
            }
            if let Some((serial, not_after, left)) = presented_ldevid(&c) {
                seen.ldevid_serial = serial;
                seen.days_left = Some(left);
                seen.ldevid_not_after = not_after;
            }
            let _ = c.logout();
        }
        Err(e) => {
            // No identity answers: is it the tamper response? (Not asked of a
            // device that does not answer at all.) What answers under a
            // `CN=TAMPERED <serial>` certificate is unauthenticated: anyone
            // can make one.
            let claims_tamper = !d.serial.is_empty()
                && !matches!(e, ClientError::Timeout { .. })
                && DeviceClient::new(
                    d.addr,
                    Some(&targets.account.identity),
                    &DeviceTrust::TamperedStatusRisky {
                        serial: d.serial.clone(),
                    },
                    Versions::Default,
                )
                .and_then(|t| t.get::<DeviceInfo>("/api/v1/info"))
                .is_ok_and(|v| v.tampered);
            // Flagged only when all the device presented is its own tamper
            // marker; a claim beside another refusal (a revoked or another
            // device's certificate, say) does not hide that refusal.
            let marker_only = matches!(
                &e,
                ClientError::Refused {
                    problem: PeerProblem::Tampered { serial },
                    ..
                } if *serial == d.serial
            );
            if claims_tamper && marker_only {
                seen.tampered = true;
                seen.tamper_claim = Some(format!(
                    "claimed, unauthenticated: it presents only the tamper marker CN=TAMPERED {} \
                     and says its tamper response has run",
                    d.serial
                ));
            } else {
                if claims_tamper {
                    seen.tamper_claim = Some(format!(
                        "claimed, unauthenticated, not recorded: a status connection under \
                         CN=TAMPERED {} says its tamper response has run, but its identity \
                         connection failed otherwise",
                        d.serial
                    ));
                }
                seen.error = Some(e.to_string());
            }
        }
    }
    seen
}

/// Reads every device's state (`targets.parallel` at a time) and records it
/// in the store; a device whose tamper response has run is flagged
/// (queued for re-provisioning). A device that cannot be scanned is in the
/// result with its `error`; the store keeps what it knew of it.
pub fn scan(targets: &Targets, store: &mut dyn FleetStore) -> Result<Vec<Seen>> {
    let db = OpsError::Store;
    let seen: Vec<Seen> = targets
        .each(|d| Ok(scan_one(targets, d)))
        .into_iter()
        .zip(&targets.devices)
        .map(|(r, d)| {
            r.unwrap_or_else(|e| Seen {
                error: Some(e.to_string()),
                ..Seen::nothing_yet(d)
            })
        })
        .collect();
    for (d, seen) in targets.devices.iter().zip(&seen) {
        let mut rec = store.device(&d.name).map_err(db)?.unwrap_or_else(|| {
            DeviceRecord::new(&d.name, &d.serial, &d.addr.to_string(), &d.device_name)
        });
        if seen.reachable {
            rec.firmware_version = seen.firmware_version.clone();
            rec.ldevid_not_after = seen.ldevid_not_after.clone();
            rec.boot_issue = seen.boot_issue.clone().unwrap_or_default();
            // Under its identity again (re-provisioned, commissioned).
            rec.tampered = false;
        }
        if seen.tampered {
            rec.tampered = true;
        }
        store.upsert_device(&rec).map_err(db)?;
    }
    Ok(seen)
}

/// Installs `crl_pem` on every reachable device (`targets.parallel` at a
/// time); per device, Ok or why not.
pub fn push_crl(
    targets: &Targets,
    crl_pem: &str,
) -> Result<Vec<(String, std::result::Result<(), String>)>> {
    let r = targets.each(|d| {
        let c = targets.session(d)?;
        c.send::<_, CrlInstallAnswer>(
            "PUT",
            "/api/v1/security/crl",
            &CrlInstallRequest {
                crl_pem: crl_pem.to_string(),
            },
        )?;
        let _ = c.logout();
        Ok(())
    });
    Ok(targets
        .devices
        .iter()
        .zip(r)
        .map(|(d, r)| (d.name.clone(), r.map_err(|e| e.to_string())))
        .collect())
}

/// One device's renewal.
#[derive(Debug, Clone, Serialize)]
pub struct Renewed {
    /// Device.
    pub device: String,
    /// Days left on the old LDevID.
    pub days_left_before: Option<i64>,
    /// The serial (hex) of the LDevID it presented before: revoke it after a
    /// key compromise (docs/incident-response.md).
    pub previous_serial: Option<String>,
    /// Renewed now (false: not yet due, or failed).
    pub renewed: bool,
    /// The new certificate's serial, as the OEM CA issued it (and the
    /// device was then seen presenting).
    pub serial: Option<String>,
    /// Its expiry, as issued.
    pub not_after: Option<String>,
    /// The LDevID issued for this renewal and revoked because the renewal
    /// then failed (the device was not seen presenting it).
    pub revoked: Option<String>,
    /// Why it could not be renewed (or checked).
    pub error: Option<String>,
}

/// Renews, through the device's own new key, every LDevID that expires
/// within `margin_days` (all of them with `force`), issuing `days`-long
/// certificates from the OEM CA; `targets.parallel` devices at a time, the CA
/// signing one at a time. A device that fails is in the result with its
/// `error`.
pub fn renew(
    targets: &Targets,
    oem: &mut drivesec_pki::Ca,
    margin_days: i64,
    days: i64,
    force: bool,
) -> Result<Vec<Renewed>> {
    let oem = std::sync::Mutex::new(oem);
    let r = targets.each(|d| {
        let mut r = Renewed {
            device: d.name.clone(),
            days_left_before: None,
            previous_serial: None,
            renewed: false,
            serial: None,
            not_after: None,
            revoked: None,
            error: None,
        };
        if let Err(e) = renew_one(targets, &oem, d, &mut r, margin_days, days, force) {
            r.error = Some(e.to_string());
        }
        Ok(r)
    });
    Ok(targets
        .devices
        .iter()
        .zip(r)
        .map(|(d, r)| {
            r.unwrap_or_else(|e| Renewed {
                device: d.name.clone(),
                days_left_before: None,
                previous_serial: None,
                renewed: false,
                serial: None,
                not_after: None,
                revoked: None,
                error: Some(e.to_string()),
            })
        })
        .collect())
}

/// One device of [`renew`], filling `r` as it goes.
fn renew_one(
    targets: &Targets,
    oem: &std::sync::Mutex<&mut drivesec_pki::Ca>,
    d: &Target,
    r: &mut Renewed,
    margin_days: i64,
    days: i64,
    force: bool,
) -> Result<()> {
    let mut c = targets.connected(d)?;
    let presented = presented_ldevid(&c);
    r.days_left_before = presented.as_ref().map(|p| p.2);
    r.previous_serial = presented.map(|p| p.0);
    let due = force || r.days_left_before.is_none_or(|l| l < margin_days);
    if !due {
        return Ok(());
    }
    if d.serial.is_empty() {
        return Err(OpsError::NoSerial {
            device: d.name.clone(),
        });
    }
    c.login(&targets.account.username, &targets.account.password)?;
    let csr = c
        .request::<RenewalCsr>("POST", "/api/v1/identity/renew")?
        .csr_pem;
    let issued = {
        let mut ca = oem.lock().map_err(|_| OpsError::CaFailed)?;
        ca.issue(&drivesec_pki::IssueRequest {
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
        })?
    };
    // From here on the issued LDevID exists. It is revoked when the device
    // positively refuses it or presents another certificate; when the
    // device cannot be reached to tell, it is not (revoking an LDevID the
    // device may already be using would lock its owner out of it).
    let install = match c.call_with(
        "PUT",
        "/api/v1/identity/ldevid",
        &InstallLdevid {
            chain_pem: issued.chain_pem.clone(),
        },
    ) {
        // What counts is the certificate it presents next, not this answer.
        Ok(r) if r.is_success() => Install::Accepted,
        Ok(r) => Install::Refused(format!(
            "the device refused it ({} {})",
            r.status,
            r.error_body().map(|e| e.message).unwrap_or_default()
        )),
        Err(e) => Install::Unknown(e.to_string()),
    };
    let _ = c.logout();
    // Whatever the device answered (its reply may also have been lost),
    // what counts is the certificate it presents on a new connection:
    // asked again, with back-off, while it cannot be reached (a device
    // restarting its listener, a lost packet).
    let mut seen = presents_after_renewal(targets, d, &issued);
    let mut wait = std::time::Duration::from_secs(1);
    for _ in 0..4 {
        if !matches!(seen, Presented::Unreachable(_)) {
            break;
        }
        std::thread::sleep(wait);
        wait *= 2;
        seen = presents_after_renewal(targets, d, &issued);
    }
    match (seen, install) {
        (Presented::Exactly, _) => {}
        (Presented::Other(why), install)
        | (Presented::Unreachable(why), install @ Install::Refused(_)) => {
            let cause = match install {
                Install::Accepted => why,
                Install::Refused(e) | Install::Unknown(e) => format!("{e}, and {why}"),
            };
            let (message, revoked) = revoke_unproven(oem, d, &issued.serial, &cause);
            r.revoked = revoked;
            return Err(OpsError::RenewalFailed(message));
        }
        (Presented::Unreachable(why), install) => {
            let state = match install {
                Install::Accepted => "the device accepted it".to_string(),
                Install::Refused(e) | Install::Unknown(e) => format!("its answer was lost ({e})"),
            };
            return Err(OpsError::RenewalUnconfirmed {
                device: d.name.clone(),
                serial: issued.serial.clone(),
                state,
                why,
            });
        }
    }
    // What the CA issued, never what the device said about it.
    let summary = drivesec_pki::inspect::summarize(&issued.der)?;
    r.renewed = true;
    r.serial = Some(summary.serial);
    r.not_after = Some(summary.not_after);
    Ok(())
}

/// How the device answered the installation of a renewed LDevID.
enum Install {
    /// 2xx.
    Accepted,
    /// An error status: the device positively refused it.
    Refused(String),
    /// No answer (connection lost, deadline): it may have installed it.
    Unknown(String),
}

/// What a new connection to a device showed after a renewal.
enum Presented {
    /// It presents exactly the certificate just issued.
    Exactly,
    /// It presents another certificate (or none): why.
    Other(String),
    /// It could not be reached (or the handshake failed): why.
    Unreachable(String),
}

/// What a new connection to `d` (checked as [`Targets::trust`]: owner
/// roots, name, CRL, LDevID profile, serial) presents, compared with
/// `issued`.
fn presents_after_renewal(
    targets: &Targets,
    d: &Target,
    issued: &drivesec_pki::Issued,
) -> Presented {
    let fresh = match targets.connected(d) {
        Ok(c) => c,
        Err(e) => {
            return Presented::Unreachable(format!(
                "reconnecting to check it presents the new LDevID failed: {e}"
            ));
        }
    };
    match fresh.peer_certificates().into_iter().next() {
        Some(leaf) if leaf.as_ref() == issued.der.as_slice() => Presented::Exactly,
        Some(leaf) => Presented::Other(format!(
            "on a new connection it presents LDevID {}, not the one just issued",
            drivesec_pki::inspect::summarize(&leaf)
                .map(|s| s.serial)
                .unwrap_or_else(|_| "(unreadable)".into())
        )),
        None => Presented::Other("on a new connection it presents no certificate".into()),
    }
}

/// After renewing `d` failed (`cause`) once the OEM CA had issued the
/// LDevID `serial`: revokes it (reason cessation-of-operation, the OEM CRL
/// re-signed), so no key the tool did not see installed keeps a valid
/// LDevID. The error message, and the serial when it is revoked.
fn revoke_unproven(
    oem: &std::sync::Mutex<&mut drivesec_pki::Ca>,
    d: &Target,
    serial: &str,
    cause: &str,
) -> (String, Option<String>) {
    let head = format!(
        "{}: renewal failed after the OEM CA issued the new LDevID {serial}: {cause}",
        d.name
    );
    let revoked = match oem.lock() {
        Ok(mut ca) => {
            let dir = ca.dir().display().to_string();
            ca.revoke(serial, "cessation-of-operation")
                .map(|_| ca.crl_path())
                .map_err(|e| (e.to_string(), dir))
        }
        Err(_) => Err((
            "the OEM CA failed on another device".to_string(),
            "OEM_CA_DIR".to_string(),
        )),
    };
    match revoked {
        Ok(crl) => (
            format!(
                "{head}. That LDevID is revoked (the OEM CRL {} is re-signed; push it with \
                 `drivesec fleet push-crl`). The device keeps its previous LDevID if it did not \
                 take the new one: run the renewal again; if it did take it, it now presents a \
                 revoked certificate and has to be factory-reset and commissioned again",
                crl.display()
            ),
            Some(serial.to_string()),
        ),
        Err((e, dir)) => (
            format!(
                "{head}. Revoking that LDevID failed too ({e}): revoke it now with \
                 `drivesec ca revoke --ca {dir} --serial {serial} --reason \
                 cessation-of-operation` and push the CRL"
            ),
            None,
        ),
    }
}

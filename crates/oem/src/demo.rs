//! The story `drivesec demo` tells, end to end, with every claim checked.
//!
//! A lab is built (manufacturer CA, OEM CA, factory-provisioned
//! devices, role clients), then every identity is verified independently:
//! chains with rustls-webpki (and `openssl verify` when it is installed), each
//! device proves possession of its IDevID key by signing a fresh challenge
//! inside its keystore, each factory credential matches its device's hash and
//! a wrong one does not, and each client certificate carries its role.
//! Then the running devices: one allowed and one denied action per role,
//! the firmware story (unapproved image refused, approved release confirmed
//! after a trial boot, attestation, a corrupted update reverted), the drive
//! (operator start, viewer refused, STO from the local input beats every
//! command, no restart after release), and each audit trail verified.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use drivesec_api::firmware::{FirmwareRebootAnswer, FirmwareStatus};
use drivesec_keystore::verify::verify_signature;
use drivesec_keystore::{KeyHandle, open_keystore};
use drivesec_pki::inspect::{public_key, summarize};
use drivesec_pki::role::role_of_cert;
use drivesec_pki::verify::{Usage, VerifyOptions, verify_chain};
use drivesec_pki::{read_cert_chain, read_crl};
use rand_core::{OsRng, RngCore};
use serde::Serialize;

use crate::client::{ClientIdentity, DeviceClient, DeviceTrust, Versions};
use crate::factory::{DeviceFile, check_factory_credential};
use crate::lab::{LabManifest, LabOptions, LabStep, up};
use crate::{OemError, Result};

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

/// One role's session on a running device.
#[derive(Debug, Clone, Serialize)]
pub struct RoleReport {
    /// Device.
    pub device: String,
    /// Role.
    pub role: String,
    /// Login succeeded over the role's client certificate.
    pub login_ok: bool,
    /// An action the role may take, and the status it got.
    pub allowed: (String, u16),
    /// An action the role may not take, and the status it got (403 expected).
    pub denied: (String, u16),
}

/// A device's audit trail, checked at the end.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    /// Device.
    pub device: String,
    /// Records in the trail.
    pub records: u64,
    /// `verify` found it intact against the IDevID certificate.
    pub intact: bool,
    /// Denied actions recorded.
    pub denied_records: usize,
}

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

/// The drive and Safe Torque Off on the first running device.
#[derive(Debug, Clone, Serialize)]
pub struct DriveReport {
    /// Device.
    pub device: String,
    /// Speed the operator's start reached, rpm.
    pub running_speed_rpm: f64,
    /// The viewer's Modbus write got this exception (01 expected).
    pub viewer_exception: u8,
    /// State and torque while STO was active and the operator kept commanding.
    pub sto_state: String,
    /// Torque then, percent.
    pub sto_torque_pct: f64,
    /// State after STO was released (no restart by itself: `ready`).
    pub after_release: String,
}

/// The plan story.
#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    /// The HTML report.
    pub report: PathBuf,
    /// Zones assessed.
    pub zones: usize,
    /// Assets that got a live SL-A.
    pub live_devices: Vec<String>,
    /// Items for the asset owner's approval.
    pub approvals: usize,
}

/// The provisioning and validation story.
#[derive(Debug, Clone, Serialize)]
pub struct ValidationReport {
    /// Devices provisioned with the cell's profile.
    pub provisioned: usize,
    /// Devices validated.
    pub validated: usize,
    /// Findings in all.
    pub findings: usize,
    /// The signed evidence file.
    pub evidence: PathBuf,
}

/// The fleet story.
#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    /// The rollout halted (expected: the second drive fails its health check).
    pub halted: bool,
    /// Drives running the release.
    pub updated: Vec<String>,
    /// Drives that reverted.
    pub reverted: Vec<String>,
    /// LDevIDs renewed.
    pub renewed: usize,
    /// Every audit trail verified.
    pub trails_intact: bool,
    /// The fleet store.
    pub store: PathBuf,
}

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

/// What the demo did and found.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// The lab directory.
    pub lab_dir: PathBuf,
    /// Devices.
    pub devices: Vec<DeviceReport>,
    /// Clients.
    pub clients: Vec<ClientReport>,
    /// A login and an allowed and a denied action per role, per device.
    pub sessions: Vec<RoleReport>,
    /// The firmware update story.
    pub firmware: Option<FirmwareReport>,
    /// The drive and STO story.
    pub drive: Option<DriveReport>,
    /// The IEC 62443 assessment with live SL-A.
    pub plan: Option<PlanReport>,
    /// Provisioning to SL-T and validation.
    pub validation: Option<ValidationReport>,
    /// Rollout, renewal, access review.
    pub fleet: Option<FleetReport>,
    /// The tamper story.
    pub tamper: Option<TamperReport>,
    /// Each device's audit trail.
    pub audit: Vec<AuditReport>,
    /// Everything checked out.
    pub ok: bool,
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

/// Builds a lab with `opts` and verifies it, narrating to `out`.
pub fn run(
    opts: &LabOptions,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(LabStep),
) -> Result<DemoReport> {
    let w = |out: &mut dyn Write, s: String| {
        let _ = writeln!(out, "{s}");
    };
    w(
        out,
        format!("drivesec demo: building a lab in {}", opts.dir.display()),
    );
    let lab = up(opts, progress)?;
    // Stop the daemons whatever happens next.
    struct Down<'a>(&'a Path);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            let _ = crate::lab::down(self.0);
        }
    }
    let _down = Down(&opts.dir);
    w(
        out,
        "  manufacturer CA and OEM CA created (keys in soft keystores)".into(),
    );
    w(
        out,
        format!(
            "  {} device(s) factory-provisioned with {} keystores; {} role clients issued",
            lab.devices.len(),
            opts.keystore.as_str(),
            lab.clients.len()
        ),
    );
    if lab.devices.iter().any(|d| d.api.is_some()) {
        w(
            out,
            "  each device runs drivesecd on loopback, was commissioned (LDevID from the OEM CA, first security-admin) and has one account per role".into(),
        );
    }
    let mut report = verify_lab(&lab, &opts.dir, out)?;
    if lab.devices.iter().any(|d| d.api.is_some()) {
        report.sessions = role_story(&lab, out)?;
        let fw = firmware_story(&lab, &opts.dir, out)?;
        let drive = drive_story(&lab, out)?;
        report.audit = audit_story(&lab, out)?;
        let plan = plan_story(&lab, &opts.dir, out)?;
        let validation = validation_story(&lab, &opts.dir, out)?;
        let fleet = fleet_story(&lab, &opts.dir, out)?;
        let tamper = tamper_story(&lab, &opts.dir, out)?;
        report.ok = report
            .sessions
            .iter()
            .all(|s| s.login_ok && (200..300).contains(&s.allowed.1) && s.denied.1 == 403)
            && report
                .audit
                .iter()
                .all(|a| a.intact && a.denied_records >= lab.users.len())
            && fw.as_ref().is_none_or(|f| {
                f.unapproved_status == 400
                    && f.running_after_update == f.release
                    && f.confirmed
                    && f.attested
                    && f.running_after_broken == f.release
                    && f.revert_reason.is_some()
            })
            && drive.as_ref().is_none_or(|d| {
                d.running_speed_rpm > 0.0
                    && d.viewer_exception == 1
                    && d.sto_state == "safe-torque-off"
                    && d.sto_torque_pct == 0.0
                    && d.after_release == "ready"
            })
            && plan
                .as_ref()
                .is_none_or(|p| !p.live_devices.is_empty() && p.zones == 8)
            && tamper.as_ref().is_none_or(|t| {
                t.keys_before > 0
                    && t.keys_after == 0
                    && t.tampered
                    && t.identity_refused
                    && t.login_status == 423
                    && t.reprovisioned.as_ref().is_none_or(|r| {
                        r.old_idevid_in_crl
                            && r.keys_after == 2
                            && r.new_idevid_serial != r.old_idevid_serial
                    })
            });
        report.firmware = fw;
        report.drive = drive;
        report.tamper = tamper;
        report.plan = plan;
        report.validation = validation;
        report.fleet = fleet;
        if !report.ok {
            return Err(OemError::Check(format!(
                "the running lab did not behave: {}",
                serde_json::to_string(&report).unwrap_or_default()
            )));
        }
        w(
            out,
            "\nEverything checked out; the daemons are stopped now. For a lab that keeps running: drivesec lab up --dir DIR".into(),
        );
    }
    Ok(report)
}

/// A request of the role story: method, path and body (the route's request
/// type), whose answer's status is what the story shows.
type Action = (&'static str, &'static str, Option<ActionBody>);

/// The request body of an [`Action`].
#[derive(Serialize)]
#[serde(untagged)]
enum ActionBody {
    /// `PUT /api/v1/params/{name}`.
    Param(drivesec_api::drive::ParamWriteRequest),
    /// `POST /api/v1/users`.
    User(drivesec_api::accounts::NewUserRequest),
}

/// Per device and role: log in, one allowed action, one denied action.
fn role_story(lab: &LabManifest, out: &mut dyn Write) -> Result<Vec<RoleReport>> {
    use crate::client::{ClientIdentity, DeviceClient, Versions};
    use drivesec_api::accounts::NewUserRequest;
    use drivesec_api::drive::ParamWriteRequest;
    let param = |value| Some(ActionBody::Param(ParamWriteRequest { value }));
    let plan: [(&str, Action, Action); 5] = [
        (
            "viewer",
            ("GET", "/api/v1/params", None),
            ("PUT", "/api/v1/params/speed-reference", param(100.0)),
        ),
        (
            "operator",
            ("PUT", "/api/v1/params/speed-reference", param(600.0)),
            ("PUT", "/api/v1/params/max-speed", param(1400.0)),
        ),
        (
            "engineer",
            ("PUT", "/api/v1/params/accel-time", param(4.0)),
            ("GET", "/api/v1/users", None),
        ),
        (
            "security-admin",
            ("GET", "/api/v1/users", None),
            ("PUT", "/api/v1/params/speed-reference", param(0.0)),
        ),
        (
            "auditor",
            ("GET", "/api/v1/audit?limit=5", None),
            (
                "POST",
                "/api/v1/users",
                Some(ActionBody::User(NewUserRequest {
                    username: "mallory".into(),
                    role: "engineer".into(),
                    password: "Aa1-aaaaaaaaaaaaaa".into(),
                })),
            ),
        ),
    ];
    let call = |c: &DeviceClient, (method, path, body): &Action| match body {
        Some(b) => c.call_with(method, path, b),
        None => c.call(method, path, None),
    };
    let _ = writeln!(
        out,
        "\nRoles on the running devices (mutual TLS with each role's certificate, then a login):"
    );
    let mut reports = Vec::new();
    for d in &lab.devices {
        let (Some(api), Some(_)) = (&d.api, &d.device_name) else {
            continue;
        };
        let addr = api
            .trim_start_matches("https://")
            .parse()
            .map_err(|_| OemError::Invalid(format!("bad api address {api}")))?;
        for (role, allowed, denied) in &plan {
            let files = lab
                .clients
                .get(*role)
                .ok_or_else(|| OemError::Invalid(format!("no client for {role}")))?;
            let user = lab
                .users
                .get(*role)
                .ok_or_else(|| OemError::Invalid(format!("no account for {role}")))?;
            let id = ClientIdentity::from_files(&files.cert, &files.key)?;
            let trust = lab.device_trust(d)?;
            let mut c = DeviceClient::new(addr, Some(&id), &trust, Versions::Default)?;
            let login_ok = c.login(&user.username, &user.password).is_ok();
            let a = call(&c, allowed)?;
            let dn = call(&c, denied)?;
            let _ = c.logout();
            let _ = writeln!(
                out,
                "  {:<9} {:<15} login {}  {} {} -> {}  {} {} -> {}",
                d.name,
                role,
                mark(login_ok),
                allowed.0,
                allowed.1,
                a.status,
                denied.0,
                denied.1,
                dn.status
            );
            reports.push(RoleReport {
                device: d.name.clone(),
                role: role.to_string(),
                login_ok,
                allowed: (format!("{} {}", allowed.0, allowed.1), a.status),
                denied: (format!("{} {}", denied.0, denied.1), dn.status),
            });
        }
    }
    Ok(reports)
}

/// A client logged in as the lab account of `role` over that role's
/// certificate, trusting the device's LDevID for `device_name`.
fn role_session(
    lab: &LabManifest,
    addr: std::net::SocketAddr,
    device_name: &str,
    role: &str,
) -> Result<crate::client::DeviceClient> {
    let d = lab
        .devices
        .iter()
        .find(|d| {
            d.device_name.as_deref() == Some(device_name) && lab.api_addr(d).ok() == Some(addr)
        })
        .ok_or_else(|| OemError::Invalid(format!("no lab device {device_name} at {addr}")))?;
    lab.session(d, role)
}

/// On the first running device: an approved release updates it (trial boot,
/// health check, confirm), an unapproved one is refused, an attestation
/// proves what runs, and a broken update is reverted by the boot stage.
fn firmware_story(
    lab: &LabManifest,
    lab_dir: &Path,
    out: &mut dyn Write,
) -> Result<Option<FirmwareReport>> {
    use crate::client::DeviceClient;
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
        .map_err(|_| OemError::Invalid(format!("bad api address {api}")))?;
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
        return Err(OemError::Check(format!(
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
        .map_err(|e| OemError::Invalid(e.to_string()))?;
    let att = crate::attest::request(&c)?;
    let (revocation, _) = crate::client::Revocation::from_file(&lab.crl)?;
    let crls = revocation.crls()?;
    let attested = crate::attest::verify_attestation(&att, &roots, crls, Some(name), Some(&header))
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
        return Err(OemError::Check(format!("1.2.0 was refused: {}", r.body)));
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

/// On the first running device: the operator starts the drive, a viewer's
/// start is refused, the local STO input stops torque while the operator
/// keeps commanding, and after release the drive waits for a new start.
fn drive_story(lab: &LabManifest, out: &mut dyn Write) -> Result<Option<DriveReport>> {
    use crate::modbus::ModbusClient;
    let Some(d) = lab.devices.iter().find(|d| d.modbus.is_some()) else {
        return Ok(None);
    };
    let (Some(modbus), Some(_), Some(sto)) = (&d.modbus, &d.device_name, &d.sto) else {
        return Ok(None);
    };
    let addr = modbus
        .parse()
        .map_err(|_| OemError::Invalid(format!("bad Modbus address {modbus}")))?;
    let trust = lab.device_trust(d)?;
    let connect = |role: &str| -> Result<ModbusClient> {
        let f = lab
            .clients
            .get(role)
            .ok_or_else(|| OemError::Invalid(format!("no {role} client in the lab")))?;
        ModbusClient::connect(
            addr,
            Some(&ClientIdentity::from_files(&f.cert, &f.key)?),
            &trust,
            Versions::Default,
        )
    };
    let refused = |what: &str, code: u8| OemError::Check(format!("{what}: exception {code}"));
    let mut operator = connect("operator")?;
    let mut viewer = connect("viewer")?;
    // Input registers: 0 status word, 1 state, 2 speed, 3 torque (0.1 %).
    let read = |c: &mut ModbusClient| -> Result<Vec<u16>> {
        c.read_input(0, 9)?
            .map_err(|e| refused("reading status", e))
    };
    let wait = |c: &mut ModbusClient, what: &dyn Fn(&[u16]) -> bool| -> Result<Vec<u16>> {
        let mut last = vec![];
        for _ in 0..500 {
            last = read(c)?;
            if what(&last) {
                return Ok(last);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Err(OemError::Check(format!(
            "the drive did not get there: {last:?}"
        )))
    };
    let state_name = |code: u16| {
        ["not-ready", "ready", "running", "fault", "safe-torque-off"]
            .get(usize::from(code))
            .copied()
            .unwrap_or("?")
            .to_string()
    };
    let _ = writeln!(
        out,
        "\nThe drive on {} over Modbus/TCP Security at {modbus} (TLS, role in the client certificate; STO from the local input {}):",
        d.name,
        sto.display()
    );
    wait(&mut viewer, &|s| s[1] == 1)?;
    // Control word: run low, then high; speed reference 600 rpm.
    operator
        .write_single(0, 0)?
        .map_err(|e| refused("operator's control word", e))?;
    operator
        .write_multiple(0, &[1, 600])?
        .map_err(|e| refused("operator's start", e))?;
    // The operator now controls the drive: it polls, so the device's
    // connection-loss watchdog (a silent controller is cut off) never fires.
    let v = wait(&mut operator, &|s| s[1] == 2 && (s[2] as i16) >= 150)?;
    let running_speed_rpm = f64::from(v[2] as i16);
    let _ = writeln!(
        out,
        "  operator (FC 16: control word run, 600 rpm): running, {running_speed_rpm:.0} rpm and ramping"
    );
    let viewer_exception = match viewer.write_single(0, 0)? {
        Ok(()) => 0,
        Err(e) => e,
    };
    let _ = writeln!(
        out,
        "  viewer tries to stop it (FC 06) -> exception {viewer_exception:02} (illegal function: not in the viewer's rights), recorded"
    );
    if let Some(parent) = sto.parent() {
        drivesec_fsutil::create_private_dir(parent)
            .or_else(|e| if parent.is_dir() { Ok(()) } else { Err(e) })?;
    }
    drivesec_fsutil::write_atomic(sto, b"1", drivesec_fsutil::Mode::Public)?;
    wait(&mut operator, &|s| s[1] == 4)?;
    let mut worst_torque = 0i16;
    for i in 0..10u16 {
        // The operator keeps commanding run; STO wins on every tick.
        let _ = operator.write_multiple(0, &[i % 2, 900])?;
        let s = read(&mut viewer)?;
        worst_torque = worst_torque.max((s[3] as i16).abs());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let v = read(&mut viewer)?;
    let sto_state = state_name(v[1]);
    let sto_torque_pct = f64::from(worst_torque) / 10.0;
    let _ = writeln!(
        out,
        "  STO input set while the operator keeps writing run: {sto_state}, torque {sto_torque_pct} % on every read, coasting at {} rpm",
        v[2] as i16
    );
    operator
        .write_single(0, 0)?
        .map_err(|e| refused("operator", e))?;
    std::fs::remove_file(sto).map_err(|e| drivesec_fsutil::FsError::io("remove", sto, e))?;
    wait(&mut operator, &|s| s[1] == 1)?;
    std::thread::sleep(std::time::Duration::from_millis(100));
    let after_release = state_name(read(&mut viewer)?[1]);
    let _ = writeln!(
        out,
        "  STO released: {after_release} (no restart without a new rising edge of run)"
    );
    Ok(Some(DriveReport {
        device: d.name.clone(),
        running_speed_rpm,
        viewer_exception,
        sto_state,
        sto_torque_pct,
        after_release,
    }))
}

/// The plan story: the lab as the packaging line of
/// examples/packaging-line.toml (drive-001..003 are its drives), assessed
/// with live SL-A from the running devices; reports in `DIR/assessment/`.
fn plan_story(lab: &LabManifest, dir: &Path, out: &mut dyn Write) -> Result<Option<PlanReport>> {
    use drivesec_iec62443::{assess, model, notation, report};
    let loaded = model::parse(
        Path::new("examples/packaging-line.toml"),
        drivesec_iec62443::PACKAGING_LINE,
    )
    .map_err(|e| OemError::Invalid(format!("built-in example: {e}")))?;
    let mut a = assess::assess(&loaded.model);
    let live = crate::posture::fetch(&crate::incident::Reach::from_lab(lab)?)?;
    assess::attach_live(&mut a, &loaded.model, &live);
    let rdir = dir.join("assessment");
    drivesec_fsutil::create_private_dir(&rdir)
        .or_else(|e| if rdir.is_dir() { Ok(()) } else { Err(e) })?;
    let json = serde_json::to_string_pretty(&a).map_err(|e| OemError::Invalid(e.to_string()))?;
    for (name, text) in [
        ("assessment.json", json),
        ("assessment.md", report::markdown(&a)),
        ("assessment.html", report::html(&loaded.model, &a)),
    ] {
        drivesec_fsutil::write_atomic(
            &rdir.join(name),
            text.as_bytes(),
            drivesec_fsutil::Mode::Public,
        )?;
    }
    let _ = writeln!(
        out,
        "\nIEC 62443 assessment of the lab as \"{}\" (examples/packaging-line.toml), with live SL-A:",
        a.system
    );
    for z in &a.zones {
        let _ = writeln!(out, "  SL-T({}) = {}", z.zone, z.notation);
    }
    let mut drives = vec![];
    if let Some(cell) = a.zones.iter().find(|z| z.zone == "cell") {
        for g in &cell.assets {
            let missing: usize = g
                .missing
                .values()
                .flatten()
                .filter(|m| m.compensated_by.is_none())
                .count();
            let _ = writeln!(
                out,
                "  {:<15} SL-C {}  SL-A {}  {missing} requirement(s) missing for the cell's SL-T",
                g.asset,
                g.sl_c.as_ref().map(notation).unwrap_or_else(|| "?".into()),
                g.sl_a
                    .as_ref()
                    .map(notation)
                    .unwrap_or_else(|| "(no device)".into()),
            );
            if g.sl_a.is_some() {
                drives.push(g.asset.clone());
            }
        }
    }
    let _ = writeln!(
        out,
        "  {} item(s) for the asset owner's approval; report: {}",
        a.approvals.len(),
        rdir.join("assessment.html").display()
    );
    Ok(Some(PlanReport {
        report: rdir.join("assessment.html"),
        zones: a.zones.len(),
        live_devices: drives,
        approvals: a.approvals.len(),
    }))
}

/// The provisioning and validation story: each running drive of the lab
/// gets the cell's profile (derived from the packaging line's SL-T, keeping
/// the lab's accounts so the demo can go on), then every drive is validated
/// against the cell's SL-T; reports in `DIR/validation/`.
fn validation_story(
    lab: &LabManifest,
    dir: &Path,
    out: &mut dyn Write,
) -> Result<Option<ValidationReport>> {
    use drivesec_iec62443::{assess, model, profile};
    let loaded = model::parse(
        Path::new("examples/packaging-line.toml"),
        drivesec_iec62443::PACKAGING_LINE,
    )
    .map_err(|e| OemError::Invalid(format!("built-in example: {e}")))?;
    let a = assess::assess(&loaded.model);
    let Some(cell) = a.zones.iter().find(|z| z.zone == "cell") else {
        return Ok(None);
    };
    let mut p = profile::derive(&loaded.model, "cell", cell.sl_t);
    p.accounts = lab
        .users
        .iter()
        .map(|(role, u)| profile::Account {
            username: u.username.clone(),
            role: role.clone(),
        })
        .chain(lab.admin.iter().map(|a| profile::Account {
            username: a.username.clone(),
            role: "security-admin".into(),
        }))
        .collect();
    let vdir = dir.join("validation");
    drivesec_fsutil::create_private_dir(&vdir)
        .or_else(|e| if vdir.is_dir() { Ok(()) } else { Err(e) })?;
    drivesec_fsutil::write_atomic(
        &vdir.join("cell-profile.toml"),
        profile::to_toml(&p, &loaded.model.system.name).as_bytes(),
        drivesec_fsutil::Mode::Public,
    )?;
    let _ = writeln!(
        out,
        "\nProvisioning to SL-T and validation (FAT/SAT) of the drives as the cell's assets:"
    );
    let mut provisioned = 0;
    for d in lab
        .devices
        .iter()
        .filter(|d| d.api.is_some() && d.device_name.is_some())
    {
        let c = lab.session(d, "security-admin")?;
        let r = crate::provision::apply(&c, &p)?;
        let again = crate::provision::apply(&c, &p)?;
        let drift = crate::provision::diff(&c, &p)?;
        let _ = c.logout();
        let _ = writeln!(
            out,
            "  {}: cell profile applied ({} change(s)); re-applied: {} change(s); drift left: {}",
            d.name,
            r.changed.len(),
            again.changed.len(),
            if drift.is_empty() {
                "none".to_string()
            } else {
                drift.join("; ")
            }
        );
        provisioned += 1;
    }
    let model = &loaded.model;
    let inv =
        crate::inventory::Inventory::from_lab(dir, lab, &|dev: &str| model.asset_of_device(dev))?;
    let mut inv = inv;
    // The releases the OEM approved in the firmware story are approved for this plant.
    if let Ok(rd) = std::fs::read_dir(dir.join("firmware").join("releases")) {
        let mut imgs: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "img"))
            .collect();
        imgs.sort();
        inv.validator.approved_releases.extend(imgs);
    }
    let (ctx, targets) = crate::validate::prepare(model, &inv)?;
    let results = crate::validate::validate_all(&ctx, &targets, 8);
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        drivesec_iec62443::PACKAGING_LINE.as_bytes(),
    ));
    let doc = crate::evidence::document(&model.system.name, &sha, &results);
    // The lab's evidence key, never the firmware approval key.
    let ek = lab
        .evidence
        .as_ref()
        .ok_or_else(|| OemError::Invalid("the lab has no evidence key".into()))?;
    let store = open_keystore(
        &drivesec_keystore::KeystoreConfig::Soft {
            dir: "keystore".into(),
            secret_file: "secret".into(),
        },
        &ek.keystore,
    )?;
    let signed = crate::evidence::sign(doc.clone(), store.as_ref(), &KeyHandle::new(&ek.key)?)?;
    let json =
        serde_json::to_string_pretty(&signed).map_err(|e| OemError::Invalid(e.to_string()))?;
    for (name, text) in [
        ("evidence.json", json),
        ("junit.xml", crate::evidence::junit(&results)),
        ("report.html", crate::evidence::html(&doc)),
    ] {
        drivesec_fsutil::write_atomic(
            &vdir.join(name),
            text.as_bytes(),
            drivesec_fsutil::Mode::Public,
        )?;
    }
    let mut findings = 0;
    for r in &results {
        let f: Vec<&crate::validate::Check> = r.failures().collect();
        findings += f.len();
        let _ = writeln!(
            out,
            "  {} ({} in zone {}, SL-T {}): {} checks, {} finding(s){}",
            r.device,
            r.asset,
            r.zone,
            r.sl_t,
            r.checks.len(),
            f.len(),
            if f.is_empty() {
                String::new()
            } else {
                format!(
                    ": {}",
                    f.iter()
                        .map(|c| format!("{} {}", c.requirement, c.id))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
    }
    let _ = writeln!(
        out,
        "  (the lab's soft-keystore drives cannot reach the cell's SL-T 3: the findings are the gaps the assessment predicted)\n  evidence signed with the OEM evidence key: {}\n  JUnit: {}\n  report: {}",
        vdir.join("evidence.json").display(),
        vdir.join("junit.xml").display(),
        vdir.join("report.html").display()
    );
    Ok(Some(ValidationReport {
        provisioned,
        validated: results.len(),
        findings,
        evidence: vdir.join("evidence.json"),
    }))
}

/// The fleet story: the lab's drives in a fleet store (SQLite in the lab),
/// an approved release rolled out in waves with the second drive failing
/// its health check and reverting while its wave halts, every LDevID
/// renewed through a key each drive makes, and the access review.
fn fleet_story(lab: &LabManifest, dir: &Path, out: &mut dyn Write) -> Result<Option<FleetReport>> {
    let running: Vec<&crate::lab::LabDevice> =
        lab.devices.iter().filter(|d| d.api.is_some()).collect();
    if running.len() < 3 {
        return Ok(None);
    }
    let work = dir.join("firmware").join("releases");
    let image = lab.release(&work, "1.3.0", 4, 256 * 1024, true)?;
    // The running drives, updated by the lab's engineer.
    let fleet = crate::rollout::Fleet::from_lab(lab)?;
    let store_path = dir.join("fleet.db");
    let mut store = drivesec_fleet::open(&format!("sqlite:{}", store_path.display()))
        .map_err(|e| OemError::Invalid(e.to_string()))?;
    let _ = writeln!(
        out,
        "\nThe fleet (store {}): rolling out the approved release 1.3.0 in waves; {}'s next health check is made to fail:",
        store_path.display(),
        running[1].name
    );
    let failpoint = running[1].dir.join("test-failpoint");
    drivesec_fsutil::write_atomic(
        &failpoint,
        b"boot:health-fail",
        drivesec_fsutil::Mode::Private,
    )?;
    let mut lines = vec![];
    let outcome = crate::rollout::run(
        store.as_mut(),
        &fleet.targets,
        &fleet.operator,
        &image,
        &fleet.trust,
        &crate::rollout::Plan {
            canary: 1,
            parallel: 8,
            max_failure_rate: 0.2,
        },
        &mut |e| {
            let l = match &e {
                crate::rollout::Event::Wave { wave, devices } => {
                    Some(format!("  wave {wave}: {}", devices.join(", ")))
                }
                crate::rollout::Event::Device {
                    device,
                    state,
                    detail,
                } if matches!(
                    state,
                    drivesec_fleet::DeviceState::Done
                        | drivesec_fleet::DeviceState::Reverted
                        | drivesec_fleet::DeviceState::Failed
                ) =>
                {
                    Some(format!("    {device}: {} ({detail})", state.as_str()))
                }
                crate::rollout::Event::Halted { wave, failed, of } => Some(format!(
                    "  halted: wave {wave} had {failed} failure(s) of {of}; the failed drive reverted by itself"
                )),
                crate::rollout::Event::Finished { done, failed } => {
                    Some(format!("  finished: {done} updated, {failed} failed"))
                }
                _ => None,
            };
            if let Some(l) = l {
                lines.push(l);
            }
        },
    );
    let _ = std::fs::remove_file(&failpoint);
    let outcome = outcome?;
    for l in &lines {
        let _ = writeln!(out, "{l}");
    }
    let mut oem = drivesec_pki::Ca::open(&lab.oem_ca_dir)?;
    let reach = crate::incident::Reach::from_lab(lab)?;
    let renewed = crate::incident::renew(&reach, &mut oem, 30, 730, true)?;
    let _ = writeln!(
        out,
        "  LDevIDs renewed through keys the drives made themselves: {}",
        renewed
            .iter()
            .filter(|r| r.renewed)
            .map(|r| format!(
                "{} (new serial {})",
                r.device,
                r.serial.as_deref().unwrap_or("?")
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let seen = crate::incident::scan(&reach, store.as_mut())?;
    let review = crate::review::review(&reach, &dir.join("trails"), 90, 5)?;
    let review_path = dir.join("access-review.json");
    drivesec_fsutil::write_atomic(
        &review_path,
        serde_json::to_string_pretty(&review)
            .map_err(|e| OemError::Invalid(e.to_string()))?
            .as_bytes(),
        drivesec_fsutil::Mode::Public,
    )?;
    let never: usize = review
        .iter()
        .map(|d| d.accounts.iter().filter(|a| a.never_used).count())
        .sum();
    let _ = writeln!(
        out,
        "  fleet scan: {} drive(s) recorded; access review: trails intact on {} of {}, {never} never-used account(s), {} privilege change(s): {}",
        seen.len(),
        review.iter().filter(|d| d.trail_intact).count(),
        review.len(),
        review
            .iter()
            .map(|d| d.privilege_changes.len())
            .sum::<usize>(),
        review_path.display()
    );
    Ok(Some(FleetReport {
        halted: outcome.halted,
        updated: outcome.done,
        reverted: outcome.failed,
        renewed: renewed.iter().filter(|r| r.renewed).count(),
        trails_intact: review.iter().all(|d| d.trail_intact),
        store: store_path,
    }))
}

/// The tamper story, on the last device (after its trail was verified):
/// the enclosure switch, the keys gone, status only.
fn tamper_story(
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
        .map_err(|_| OemError::Invalid(format!("bad api address {api}")))?;
    let keys = || -> Result<usize> {
        let st = drivesec_device::state::StateDir::load(&d.dir)?;
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
        .ok_or_else(|| OemError::Invalid("no viewer client in the lab".into()))?;
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
    d: &crate::lab::LabDevice,
    work: &Path,
    out: &mut dyn Write,
) -> Result<Option<ReprovisionReport>> {
    let (Some(pid), Some(tamper), Some(fw)) = (d.pid, &d.tamper, &lab.firmware) else {
        return Ok(None);
    };
    crate::daemons::stop(pid);
    drivesec_fsutil::remove_durable(tamper)?;
    let mut mfg = drivesec_pki::Ca::open(&lab.manufacturer_ca_dir)?;
    let r = crate::factory::reprovision(
        &mut mfg,
        &crate::factory::ReprovisionOptions {
            device_dir: d.dir.clone(),
            archive: None,
        },
    )?;
    let floor = r.security_counter_floor;
    let image = lab.release(work, "1.1.1", floor, 64 * 1024, true)?;
    let trust: drivesec_firmware::trust::TrustStore =
        serde_json::from_slice(&drivesec_fsutil::read(&fw.trust)?)
            .map_err(|e| OemError::Invalid(format!("{}: {e}", fw.trust.display())))?;
    let st = drivesec_device::state::StateDir::load(&d.dir)?;
    drivesec_device::firmware::install_factory(&st, &trust, &drivesec_fsutil::read(&image)?)?;
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

/// Each running device's audit trail verified against its IDevID certificate.
fn audit_story(lab: &LabManifest, out: &mut dyn Write) -> Result<Vec<AuditReport>> {
    let _ = writeln!(
        out,
        "\nAudit trails (hash chain and signed checkpoints, verified with each IDevID):"
    );
    let mut reports = Vec::new();
    for d in lab.devices.iter().filter(|d| d.api.is_some()) {
        let chain = read_cert_chain(&d.idevid)?;
        let key = public_key(&chain[0])?;
        let trail = d.dir.join("audit");
        let r = drivesec_audit::verify::verify(&trail, &key)
            .map_err(|e| OemError::Check(e.to_string()))?;
        let q = drivesec_audit::reader::Query {
            outcome: Some(drivesec_audit::Outcome::Denied),
            ..Default::default()
        };
        let denied = drivesec_audit::reader::read(&trail, &q, 100_000)
            .map_err(|e| OemError::Check(e.to_string()))?
            .len();
        let _ = writeln!(
            out,
            "  {:<9} {} records, {} denied actions recorded, intact {}",
            d.name,
            r.records,
            denied,
            mark(r.ok)
        );
        reports.push(AuditReport {
            device: d.name.clone(),
            records: r.records,
            intact: r.ok,
            denied_records: denied,
        });
    }
    Ok(reports)
}

/// Verifies every identity of an existing lab.
pub fn verify_lab(lab: &LabManifest, lab_dir: &Path, out: &mut dyn Write) -> Result<DemoReport> {
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
        let credential_ok = if file.state == crate::factory::LifeCycle::Factory {
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
        return Err(OemError::Check(format!(
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
fn factory_credential_refused(
    lab: &LabManifest,
    d: &crate::lab::LabDevice,
    cred: &str,
) -> Result<bool> {
    use crate::client::{ClientIdentity, DeviceClient, Versions};
    let (Some(api), Some(_)) = (&d.api, &d.device_name) else {
        return Ok(true);
    };
    let files = lab
        .clients
        .get("security-admin")
        .ok_or_else(|| OemError::Invalid("no security-admin client".into()))?;
    let id = ClientIdentity::from_files(&files.cert, &files.key)?;
    let addr = api
        .trim_start_matches("https://")
        .parse()
        .map_err(|_| OemError::Invalid(format!("bad api {api}")))?;
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

fn mark(ok: bool) -> &'static str {
    if ok { "ok" } else { "FAILED" }
}

//! `drivesec device ...`: the client side of the device API.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use drivesec_api::accounts::{
    NewRoleRequest, NewUserRequest, RoleAddedAnswer, RoleListAnswer, RoleRemovedAnswer,
    RoleSetAnswer, SetRoleRequest, UserAddedAnswer, UserListAnswer, UserRemovedAnswer,
    UserUnlockedAnswer,
};
use drivesec_api::audit::{AuditRecordsAnswer, ForwardingSetAnswer, ForwardingSettings};
use drivesec_api::device::DeviceInfo;
use drivesec_api::drive::{
    DriveCommand as Command, DriveControlAnswer, DriveControlRequest, DriveStatus,
    ParamWriteAnswer, ParamWriteRequest, ParamsAnswer,
};
use drivesec_api::firmware::{
    FirmwareBootState, FirmwareRebootAnswer, FirmwareStatus, FirmwareUploadAnswer, RunningFirmware,
    TrustRotationAnswer, TrustRotationRequest,
};
use drivesec_api::security::{
    FactoryResetAnswer, FactoryResetPendingAnswer, FactoryResetRequest, Posture,
};
use drivesec_api::sessions::{
    MeAnswer, OwnPasswordAnswer, OwnPasswordRequest, SessionListAnswer, SessionTerminatedAnswer,
};
use drivesec_fsutil::{self as fsu, Mode};
use drivesec_oem::client::{
    ClientIdentity, DeviceClient, DeviceTrust, Revocation, Versions, wire_name,
};
use drivesec_oem::lab::LabManifest;
use serde::Serialize;
use serde_json::{Value, json};

use crate::cli::{
    AttestArgs, DeviceArgs, DeviceAuditCommand, DeviceCommand, DeviceFirmwareCommand, DriveCommand,
    ParamsCommand, RolesCommand, SessionsCommand, UsersCommand,
};
use crate::commands::safe_lines;
use crate::text::safe;

/// Any part of a device answer as its JSON text, safe to print (serde_json
/// leaves DEL, C1 controls and bidi overrides in strings as they are).
/// Through a JSON value, so an object's keys are in alphabetical order, as
/// they were always printed.
fn shown<T: Serialize + ?Sized>(v: &T) -> String {
    safe(&as_json(v).to_string()).into_owned()
}

/// An API enum value's name on the wire (`commissioned`,
/// `safe-torque-off`), safe to print.
fn named<T: Serialize + ?Sized>(v: &T) -> String {
    safe(&wire_name(v)).into_owned()
}

/// `v` as a JSON value (objects with their keys in alphabetical order).
fn as_json<T: Serialize + ?Sized>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or_default()
}

/// Where the device is and who we are.
struct Target {
    addr: std::net::SocketAddr,
    name: Option<String>,
    ca: Option<std::path::PathBuf>,
    /// The owner's CRL file (None: none found).
    crl: Option<std::path::PathBuf>,
    /// Go on without a CRL (`--insecure-no-crl`).
    insecure_no_crl: bool,
    /// The device's serial number, when known (`--serial`, or a lab's).
    serial: Option<String>,
    /// The manufacturer's CRL file, for commissioning (None: none found).
    manufacturer_crl: Option<std::path::PathBuf>,
    identity: ClientIdentity,
    user: Option<String>,
    password: Option<zeroize::Zeroizing<String>>,
}

fn read_secret(path: &Path) -> Result<zeroize::Zeroizing<String>> {
    let s = fsu::read_to_string(path)?;
    Ok(zeroize::Zeroizing::new(
        s.trim_end_matches(['\n', '\r']).to_string(),
    ))
}

fn target(a: &DeviceArgs) -> Result<Target> {
    if let Some(lab_dir) = &a.lab {
        let m = LabManifest::load(lab_dir)?;
        let d = match &a.device {
            Some(n) => m
                .devices
                .iter()
                .find(|d| &d.name == n)
                .ok_or_else(|| anyhow!("no device '{n}' in the lab"))?,
            None => m
                .devices
                .first()
                .ok_or_else(|| anyhow!("the lab has no devices"))?,
        };
        let api = d
            .api
            .as_ref()
            .ok_or_else(|| anyhow!("{} is not running (lab up without --no-daemons)", d.name))?;
        let role = a.as_role.clone().unwrap_or_else(|| "security-admin".into());
        let files = m
            .clients
            .get(&role)
            .ok_or_else(|| anyhow!("no client certificate for role '{role}'"))?;
        let creds = if a.as_role.is_none() {
            m.admin.clone()
        } else {
            m.users.get(&role).cloned()
        };
        return Ok(Target {
            addr: api.trim_start_matches("https://").parse()?,
            name: d.device_name.clone(),
            ca: Some(m.oem_ca.clone()),
            crl: Some(a.crl.clone().unwrap_or_else(|| m.crl.clone())),
            insecure_no_crl: a.insecure_no_crl,
            serial: Some(a.serial.clone().unwrap_or_else(|| d.serial_number.clone())),
            manufacturer_crl: Some(m.manufacturer_crl.clone()),
            identity: ClientIdentity::from_files(&files.cert, &files.key)?,
            user: a
                .user
                .clone()
                .or(creds.as_ref().map(|c| c.username.clone())),
            password: match &a.password_file {
                Some(p) => Some(read_secret(p)?),
                None => creds.map(|c| zeroize::Zeroizing::new(c.password)),
            },
        });
    }
    let api = a
        .api
        .as_ref()
        .ok_or_else(|| anyhow!("give --api IP:PORT (or --lab DIR)"))?;
    let (cert, key) = match (&a.cert, &a.key) {
        (Some(c), Some(k)) => (c, k),
        _ => bail!("give --cert and --key: the device requires a client certificate"),
    };
    Ok(Target {
        addr: api
            .trim_start_matches("https://")
            .parse()
            .with_context(|| format!("--api '{api}' is not IP:PORT"))?,
        name: a.name.clone(),
        ca: a.ca.clone(),
        // Given, or the CA directory's own beside the root (`ca init` layout).
        crl: a.crl.clone().or_else(|| {
            a.ca.as_ref()
                .and_then(|c| c.parent())
                .map(|d| d.join("crl.pem"))
                .filter(|p| p.is_file())
        }),
        insecure_no_crl: a.insecure_no_crl,
        serial: a.serial.clone().filter(|s| !s.is_empty()),
        manufacturer_crl: None,
        identity: ClientIdentity::from_files(cert, key)?,
        user: a.user.clone(),
        password: a.password_file.as_deref().map(read_secret).transpose()?,
    })
}

fn owned(t: &Target) -> Result<DeviceClient> {
    let name = t
        .name
        .clone()
        .ok_or_else(|| anyhow!("give --name (the device's DNS name in its LDevID)"))?;
    let ca =
        t.ca.as_ref()
            .ok_or_else(|| anyhow!("give --ca (the owner root certificate)"))?;
    let (revocation, warnings) = revocation(t)?;
    crate::fleet::warn(&warnings);
    Ok(DeviceClient::new(
        t.addr,
        Some(&t.identity),
        &DeviceTrust::owned(
            drivesec_pki::read_cert_chain(ca)?,
            name,
            t.serial.clone(),
            revocation,
        ),
        Versions::Default,
    )?)
}

/// The owner's CRLs the device is checked against: the target's CRL file;
/// without one, an error saying where to give it, unless `--insecure-no-crl`.
fn revocation(t: &Target) -> Result<(Revocation, Vec<String>)> {
    let (r, w) = Revocation::configured(t.crl.as_deref(), t.insecure_no_crl, || {
        "no CRL to check the device's LDevID against: give --crl (the owner's CRL, e.g. \
         OEM_CA_DIR/crl.pem; by default crl.pem beside the --ca file is used), or \
         --insecure-no-crl to go on without revocation checks"
            .into()
    })?;
    if let Revocation::Missing(why) = &r {
        bail!("{why}");
    }
    Ok((r, w))
}

fn logged_in(t: &Target) -> Result<DeviceClient> {
    let mut c = owned(t)?;
    let user = t
        .user
        .as_ref()
        .ok_or_else(|| anyhow!("give --user and --password-file"))?;
    let pw = t
        .password
        .as_ref()
        .ok_or_else(|| anyhow!("give --password-file"))?;
    c.login(user, pw)?;
    Ok(c)
}

/// `v` as pretty JSON with `--json` (a device answer's keys in
/// alphabetical order, as the device writes them), else `text(v)`.
fn print<T: Serialize + ?Sized>(json: bool, v: &T, text: impl FnOnce(&T)) -> Result<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::to_value(v)?)?
        );
    } else {
        text(v);
    }
    Ok(())
}

/// A commissioning that ended because a signal came before it failed or
/// succeeded (`Interrupt::ended_by_signal`): the tool exits 130, what
/// happened said as for any error (the commissioning's error, shown as
/// is).
#[derive(Debug)]
pub struct EndedBySignal(drivesec_oem::OemError);

impl std::fmt::Display for EndedBySignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for EndedBySignal {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.0)
    }
}

/// Handles SIGINT and SIGTERM while a device is commissioned. What each
/// signal does, and what is said about it, follows the phase the
/// commissioning is in (`drivesec_oem::commission::Interrupted`): before
/// the OEM CA issued anything the process exits at once (130); while the
/// LDevID is issued or the device finished, the commissioning abandons its
/// remaining steps and revokes that LDevID (naming it; it then fails,
/// saying what happened), and further signals do not cut that short; once
/// the revocation was decided, or the commissioning succeeded, a signal
/// changes nothing and says so (a commissioned device stays commissioned).
/// SIGKILL cannot be handled: the LDevID's serial is printed right after
/// issuance for `ca revoke`. What the watcher says is written without
/// panicking (a closed stderr must not end the watcher: later signals
/// would go unhandled). The exit code is decided by whichever of a
/// signal, a failure or the success the commissioning recorded first
/// ([`EndedBySignal`]), so the watcher's `exit(130)` (only before
/// issuance) and the command's own end always agree.
fn watch_signals(interrupt: &drivesec_oem::commission::Interrupt, device: &str) -> Result<()> {
    use std::io::Write as _;
    use tokio::signal::unix::{SignalKind, signal};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal watcher")?;
    // Registered here, before commissioning starts.
    let (mut int, mut term) = {
        let _in_rt = rt.enter();
        (
            signal(SignalKind::interrupt()).context("handling SIGINT")?,
            signal(SignalKind::terminate()).context("handling SIGTERM")?,
        )
    };
    let interrupt = interrupt.clone();
    let device = safe(device).into_owned();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            rt.block_on(async {
                loop {
                    let name = tokio::select! {
                        _ = int.recv() => "SIGINT",
                        _ = term.recv() => "SIGTERM",
                    };
                    let what = interrupt.interrupt();
                    let _ = writeln!(std::io::stderr(), "{}", what.message(name, &device));
                    if what.exits_now() {
                        std::process::exit(130);
                    }
                }
            })
        })
        .context("starting the signal watcher")?;
    Ok(())
}

/// Runs one `drivesec device` command.
pub fn run(a: DeviceArgs, json: bool) -> Result<()> {
    let t = target(&a)?;
    if let DeviceCommand::Commission {
        manufacturer_root,
        manufacturer_crl,
        insecure_no_manufacturer_crl,
        oem_ca,
        credential_file,
        admin,
        admin_password_file,
    } = &a.command
    {
        let name = t
            .name
            .clone()
            .ok_or_else(|| anyhow!("give --name: the DNS name the device will carry"))?;
        let serial = a.serial.clone().filter(|s| !s.is_empty()).ok_or_else(|| {
            anyhow!(
                "give --serial: the device's serial number as on its label or delivery \
                 papers (its IDevID must carry exactly it; never taken from the device)"
            )
        })?;
        // Given; with --lab, the lab's; else the manufacturer CA
        // directory's own beside the root (`ca init` layout).
        let mfg_crl = manufacturer_crl
            .clone()
            .or_else(|| t.manufacturer_crl.clone())
            .or_else(|| {
                manufacturer_root
                    .parent()
                    .map(|d| d.join("crl.pem"))
                    .filter(|p| p.is_file())
            });
        let (manufacturer_revocation, warnings) = Revocation::manufacturer_configured(
            mfg_crl.as_deref(),
            *insecure_no_manufacturer_crl,
            || {
                "no manufacturer CRL to check the device's IDevID against (a reprovisioned \
                 device's old IDevID is revoked there): give --manufacturer-crl (the \
                 manufacturer CA's crl.pem; by default crl.pem beside the --manufacturer-root \
                 file is used), or --insecure-no-manufacturer-crl to go on without"
                    .into()
            },
        )?;
        if let Revocation::Missing(why) = &manufacturer_revocation {
            bail!("{why}");
        }
        crate::fleet::warn(&warnings);
        let mut ca = drivesec_pki::Ca::open(oem_ca)?;
        let credential = read_secret(credential_file)?;
        let pw = read_secret(admin_password_file)?;
        let manufacturer_roots = drivesec_pki::read_cert_chain(manufacturer_root)?;
        // Nothing fails between here and the commissioning, which records
        // its own failures: a signal meanwhile exits 130 and nothing else.
        let interrupt = drivesec_oem::commission::Interrupt::new();
        watch_signals(&interrupt, &name)?;
        let ca_dir = oem_ca.clone();
        let r = drivesec_oem::commission::commission_interruptible(
            &mut ca,
            &drivesec_oem::commission::CommissionRequest {
                addr: t.addr,
                identity: &t.identity,
                manufacturer_roots,
                manufacturer_revocation,
                serial,
                factory_credential: &credential,
                device_name: &name,
                ip_addresses: vec![t.addr.ip()],
                days: 730,
                admin_username: admin,
                admin_password: &pw,
            },
            &interrupt,
            &mut |serial| {
                // Said at once: if this process is killed (SIGKILL, power)
                // before it ends, this is what to revoke. If it cannot be
                // said (stderr closed), this panics and the commissioning
                // revokes the LDevID as it unwinds: no LDevID is left
                // that nobody was told about.
                eprintln!(
                    "the OEM CA issued LDevID {serial} for {}; if this run is killed before it \
                     ends, revoke it: drivesec ca revoke --ca {} --serial {serial} --reason \
                     cessation-of-operation",
                    safe(&name),
                    ca_dir.display()
                );
            },
        );
        let r = match r {
            Ok(r) => r,
            // A signal came first: 130, as when the watcher exits itself.
            Err(e) if interrupt.ended_by_signal() => return Err(EndedBySignal(e).into()),
            Err(e) => return Err(e.into()),
        };
        let v = serde_json::to_value(&r)?;
        return print(json, &v, |_| {
            println!(
                "commissioned {} as {} (LDevID {}); the factory credential is dead",
                safe(&r.serial_number),
                safe(&r.device_name),
                safe(&r.ldevid_serial)
            )
        });
    }
    let c = match &a.command {
        DeviceCommand::Info => owned(&t)?,
        _ => logged_in(&t)?,
    };
    let result = match &a.command {
        DeviceCommand::Firmware(f) => firmware(&c, &t, f, json),
        DeviceCommand::Attest(at) => attest(&c, &t, at, json),
        DeviceCommand::Password { new_password_file } => {
            change_password(&c, &t, new_password_file, json)
        }
        DeviceCommand::FactoryReset { approve } => factory_reset(&c, &t, approve.as_deref(), json),
        cmd => dispatch(&c, cmd, json),
    };
    let _ = c.logout();
    result
}

/// `device factory-reset`: ask, or approve another account's request.
fn factory_reset(c: &DeviceClient, t: &Target, approve: Option<&str>, json: bool) -> Result<()> {
    let password = t.password.as_ref().ok_or_else(|| {
        anyhow!("a factory reset needs your password again: give --password-file")
    })?;
    let mut body = FactoryResetRequest {
        password: password.to_string(),
        approve: approve.map(str::to_string),
    };
    let sent = c.call_with("POST", "/api/v1/factory-reset", &body);
    zeroize::Zeroize::zeroize(&mut body.password);
    let r = sent?.success()?;
    // 202: asked, waiting for a second person; 200: done.
    if r.status == 202 {
        let v: FactoryResetPendingAnswer = r.answer()?;
        return print(json, &v, |v| {
            println!(
                "factory reset requested ({id}); another account with factory-reset approves it \
                 within {} s: drivesec device factory-reset --approve {id}",
                v.expires_in_secs,
                id = safe(&v.request)
            )
        });
    }
    let v: FactoryResetAnswer = r.answer()?;
    print(json, &v, |v| {
        println!(
            "the device is back in factory state; new one-time factory credential: {}",
            safe(&v.factory_credential)
        )
    })
}

/// `device password`: the logged-in account changes its own password.
fn change_password(
    c: &DeviceClient,
    t: &Target,
    new_password_file: &std::path::Path,
    json: bool,
) -> Result<()> {
    let old = t
        .password
        .as_ref()
        .ok_or_else(|| anyhow!("give --password-file (the current password)"))?;
    let new = read_secret(new_password_file)?;
    let mut body = OwnPasswordRequest {
        old_password: old.to_string(),
        new_password: new.to_string(),
    };
    let sent = c.send::<_, OwnPasswordAnswer>("POST", "/api/v1/me/password", &body);
    zeroize::Zeroize::zeroize(&mut body.old_password);
    zeroize::Zeroize::zeroize(&mut body.new_password);
    print(json, &sent?, |v| {
        println!(
            "password changed; {} other session(s) ended",
            v.sessions_ended
        )
    })
}

fn read_profile(path: &std::path::Path) -> Result<drivesec_iec62443::profile::Profile> {
    Ok(drivesec_iec62443::profile::load(path)?)
}

fn dispatch(c: &DeviceClient, cmd: &DeviceCommand, json: bool) -> Result<()> {
    match cmd {
        DeviceCommand::Commission { .. }
        | DeviceCommand::Firmware(_)
        | DeviceCommand::Attest(_)
        | DeviceCommand::Password { .. } => {
            unreachable!("handled in run")
        }
        DeviceCommand::Info => print(json, &c.get::<DeviceInfo>("/api/v1/info")?, |v| {
            println!(
                "{} {} serial {} ({})",
                safe(&v.manufacturer),
                safe(&v.model),
                safe(&v.serial_number),
                named(&v.state)
            );
            println!("{}", safe_lines(&v.banner));
        }),
        DeviceCommand::Login => print(json, &c.get::<MeAnswer>("/api/v1/me")?, |v| {
            println!(
                "logged in as {} ({}): {}",
                safe(&v.username),
                safe(&v.role),
                shown(&v.permissions)
            );
        }),
        DeviceCommand::Drive(d) => {
            let control = |command, speed_reference| DriveControlRequest {
                command,
                speed_reference,
            };
            let body = match d {
                DriveCommand::Status => {
                    return print(json, &c.get::<DriveStatus>("/api/v1/drive")?, |v| {
                        println!(
                            "{} at {:.1} rpm, torque {:.1} %, current {:.1} A, fault 0x{:04x}, STO {}",
                            named(&v.state),
                            v.speed_rpm,
                            v.torque_pct,
                            v.current_a,
                            v.fault_code,
                            if v.sto { "active" } else { "off" }
                        )
                    });
                }
                DriveCommand::Start { speed } => control(Some(Command::Start), *speed),
                DriveCommand::Stop => control(Some(Command::Stop), None),
                DriveCommand::QuickStop => control(Some(Command::QuickStop), None),
                DriveCommand::Reset => control(Some(Command::Reset), None),
                DriveCommand::Reference { rpm } => control(None, Some(*rpm)),
            };
            print(
                json,
                &c.send::<_, DriveControlAnswer>("PUT", "/api/v1/drive/control", &body)?,
                |_| println!("accepted; `device drive status` shows the drive"),
            )
        }
        DeviceCommand::Provision {
            profile,
            passwords_out,
        } => {
            let p = read_profile(profile)?;
            let new: Vec<String> = {
                let (_, cur) = drivesec_oem::provision::current(c)?;
                p.accounts
                    .iter()
                    .filter(|a| !cur.accounts.iter().any(|b| b.username == a.username))
                    .map(|a| a.username.clone())
                    .collect()
            };
            if !new.is_empty() && passwords_out.is_none() {
                bail!(
                    "the profile creates account(s) {}: give --passwords-out FILE for their initial passwords",
                    new.join(", ")
                );
            }
            let r = drivesec_oem::provision::apply(c, &p)?;
            if let Some(out) = passwords_out
                && !r.initial_passwords.is_empty()
            {
                let text: String = r
                    .initial_passwords
                    .iter()
                    .map(|(u, pw)| format!("{u} {pw}\n"))
                    .collect();
                fsu::write_atomic(out, text.as_bytes(), Mode::Private)?;
            }
            print(
                json,
                &json!({"changed": r.changed, "created": r.initial_passwords.keys().collect::<Vec<_>>()}),
                |_| {
                    if r.changed.is_empty() {
                        println!("the device already matches the profile; nothing changed");
                    } else {
                        for l in &r.changed {
                            println!("changed: {}", safe(l));
                        }
                    }
                },
            )
        }
        DeviceCommand::Diff { profile } => {
            let p = read_profile(profile)?;
            let d = drivesec_oem::provision::diff(c, &p)?;
            print(json, &json!({"drift": d}), |_| {
                if d.is_empty() {
                    println!("no drift from {}", profile.display());
                }
                for l in &d {
                    println!("drift: {}", safe(l));
                }
            })?;
            if d.is_empty() {
                Ok(())
            } else {
                bail!("{} item(s) differ from {}", d.len(), profile.display())
            }
        }
        DeviceCommand::Posture => print(json, &c.get::<Posture>("/api/v1/posture")?, |v| {
            println!("{}", safe(&v.notation));
            for fr in &v.foundational_requirements {
                println!("  {} {:<45} SL {}", named(&fr.fr), safe(&fr.name), fr.level);
                for r in &fr.reasons {
                    println!("      - {}", safe(r));
                }
            }
        }),
        DeviceCommand::FactoryReset { .. } => bail!("factory-reset is run by `device::run`"),
        DeviceCommand::Users(u) => {
            let v = match u {
                UsersCommand::List => as_json(&c.get::<UserListAnswer>("/api/v1/users")?),
                UsersCommand::Add {
                    username,
                    role,
                    new_password_file,
                } => {
                    let pw = read_secret(new_password_file)?;
                    let mut body = NewUserRequest {
                        username: username.clone(),
                        role: role.clone(),
                        password: pw.to_string(),
                    };
                    let sent = c.send::<_, UserAddedAnswer>("POST", "/api/v1/users", &body);
                    zeroize::Zeroize::zeroize(&mut body.password);
                    as_json(&sent?)
                }
                UsersCommand::Remove { username } => as_json(&c.request::<UserRemovedAnswer>(
                    "DELETE",
                    &format!("/api/v1/users/{username}"),
                )?),
                UsersCommand::Role { username, role } => as_json(&c.send::<_, RoleSetAnswer>(
                    "PUT",
                    &format!("/api/v1/users/{username}/role"),
                    &SetRoleRequest { role: role.clone() },
                )?),
                UsersCommand::Unlock { username } => as_json(&c.request::<UserUnlockedAnswer>(
                    "POST",
                    &format!("/api/v1/users/{username}/unlock"),
                )?),
            };
            print_answer(json, &v)
        }
        DeviceCommand::Roles(r) => {
            let v = match r {
                RolesCommand::List => as_json(&c.get::<RoleListAnswer>("/api/v1/roles")?),
                RolesCommand::Add {
                    role_name: name,
                    permissions,
                } => as_json(&c.send::<_, RoleAddedAnswer>(
                    "POST",
                    "/api/v1/roles",
                    &NewRoleRequest {
                        name: name.clone(),
                        permissions: permissions.clone(),
                    },
                )?),
                RolesCommand::Remove { role_name: name } => as_json(
                    &c.request::<RoleRemovedAnswer>("DELETE", &format!("/api/v1/roles/{name}"))?,
                ),
            };
            print_answer(json, &v)
        }
        DeviceCommand::Sessions(s) => {
            let v = match s {
                SessionsCommand::List => as_json(&c.get::<SessionListAnswer>("/api/v1/sessions")?),
                SessionsCommand::Terminate { handle } => {
                    as_json(&c.request::<SessionTerminatedAnswer>(
                        "DELETE",
                        &format!("/api/v1/sessions/{handle}"),
                    )?)
                }
            };
            print_answer(json, &v)
        }
        DeviceCommand::Params(p) => match p {
            ParamsCommand::Get => print(json, &c.get::<ParamsAnswer>("/api/v1/params")?, |v| {
                for (k, x) in &v.values {
                    println!("{:<22} {}", safe(k), shown(x));
                }
            }),
            ParamsCommand::Set { param: name, value } => print(
                json,
                &c.send::<_, ParamWriteAnswer>(
                    "PUT",
                    &format!("/api/v1/params/{name}"),
                    &ParamWriteRequest { value: *value },
                )?,
                |v| {
                    println!(
                        "{} = {} (was {})",
                        safe(&v.name),
                        shown(&v.value),
                        shown(&v.old)
                    )
                },
            ),
        },
        DeviceCommand::Audit(au) => {
            match au {
                DeviceAuditCommand::Show {
                    from,
                    action,
                    limit,
                } => {
                    let mut q = format!("/api/v1/audit?limit={limit}");
                    if let Some(f) = from {
                        q.push_str(&format!("&from={f}"));
                    }
                    if let Some(ac) = action {
                        q.push_str(&format!("&action={ac}"));
                    }
                    print(json, &c.get::<AuditRecordsAnswer>(&q)?, |v| {
                        for r in &v.records {
                            println!(
                                "{:>7} {} {:<28} {:<24} {:<8} {}",
                                r.seq,
                                safe(&r.time),
                                shown(&r.actor),
                                safe(&r.action),
                                named(&r.outcome),
                                safe(r.target.as_deref().unwrap_or("-"))
                            );
                        }
                    })
                }
                DeviceAuditCommand::Export { out } => {
                    // Streamed as it arrives (capped, client::EXPORT_CAP): to
                    // a temporary file renamed into place only when the
                    // whole export came, or to stdout.
                    let path = "/api/v1/audit/export";
                    match out {
                        Some(p) => fsu::write_atomic_with(p, Mode::Private, |f| {
                            c.download(path, f)
                                .map(|_| ())
                                .map_err(|e| anyhow!("export refused or cut: {e}"))
                        })?,
                        None => {
                            let stdout = std::io::stdout();
                            let mut lock = stdout.lock();
                            c.download(path, &mut lock)
                                .map_err(|e| anyhow!("export refused or cut: {e}"))?;
                        }
                    }
                    Ok(())
                }
                DeviceAuditCommand::Forward {
                    collector,
                    server_name,
                    collector_ca,
                } => {
                    let ca = fsu::read_to_string(collector_ca)?;
                    let v = c.send::<_, ForwardingSetAnswer>(
                        "PUT",
                        "/api/v1/audit/forwarding",
                        &ForwardingSettings {
                            collector: collector.clone(),
                            server_name: server_name.clone(),
                            ca_pem: ca,
                            enterprise_number: None,
                            max_message_bytes: None,
                        },
                    )?;
                    print(json, &v, |_| {
                        println!("the device now forwards its audit trail to {collector}")
                    })
                }
            }
        }
    }
}

/// A device answer shown as it is: pretty JSON, with `--json` and without
/// (keys in alphabetical order, as the device writes them).
fn print_answer(json: bool, v: &Value) -> Result<()> {
    print(json, v, |v| {
        println!(
            "{}",
            safe_lines(&serde_json::to_string_pretty(v).unwrap_or_default())
        )
    })
}

/// What runs and the boot state, for people.
fn show_state(running: Option<&RunningFirmware>, boot_state: Option<&FirmwareBootState>) {
    match running {
        None => println!("no verified firmware is running"),
        Some(r) => println!(
            "running {} (security counter {}) from slot {}{}",
            safe(&r.version),
            r.security_counter,
            safe(&r.slot),
            if r.trial { " on trial" } else { "" }
        ),
    }
    if let Some(b) = boot_state {
        println!("boot state: {}", shown(b));
    }
}

fn firmware(c: &DeviceClient, t: &Target, f: &DeviceFirmwareCommand, json: bool) -> Result<()> {
    match f {
        DeviceFirmwareCommand::Status => {
            print(json, &c.get::<FirmwareStatus>("/api/v1/firmware")?, |v| {
                show_state(v.running.as_ref(), v.boot_state.as_ref())
            })
        }
        DeviceFirmwareCommand::Reboot => print(
            json,
            &c.request::<FirmwareRebootAnswer>("POST", "/api/v1/firmware/reboot")?,
            |v| show_state(v.running.as_ref(), v.boot_state.as_ref()),
        ),
        DeviceFirmwareCommand::Trust { statement } => {
            use base64::Engine;
            let bytes = fsu::read(statement)?;
            let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
            let r = c.call_with(
                "PUT",
                "/api/v1/firmware/trust",
                &TrustRotationRequest { statement: b64 },
            )?;
            if !r.is_success() {
                bail!(
                    "the device refused {}: {} {}",
                    statement.display(),
                    r.status,
                    safe(&r.error_message())
                );
            }
            print(json, &r.answer::<TrustRotationAnswer>()?, |v| {
                println!("firmware trust store now at version {}", v.trust.version)
            })
        }
        DeviceFirmwareCommand::Update { image } => {
            let r = c.upload_file(
                "POST",
                "/api/v1/firmware",
                image,
                "application/octet-stream",
            )?;
            if !r.is_success() {
                bail!(
                    "the device refused {}: {} {}",
                    image.display(),
                    r.status,
                    safe(&r.error_message())
                );
            }
            print(json, &r.answer::<FirmwareUploadAnswer>()?, |v| {
                println!(
                    "staged {} (security counter {}); it boots on trial at the next reboot",
                    safe(&v.staged),
                    v.security_counter
                )
            })
        }
        DeviceFirmwareCommand::Attest(at) => attest(c, t, at, json),
    }
}

fn attest(c: &DeviceClient, t: &Target, a: &AttestArgs, json: bool) -> Result<()> {
    let root_path = a
        .identity_root
        .as_ref()
        .or(t.ca.as_ref())
        .ok_or_else(|| anyhow!("give --identity-root (or --ca)"))?;
    let roots = drivesec_pki::read_cert_chain(root_path)?;
    let header = match &a.approved {
        Some(p) => Some(
            drivesec_firmware::image::Header::read_file(p)
                .with_context(|| format!("approved image {}", p.display()))?,
        ),
        None => None,
    };
    // A fresh nonce, and the answer checked against the certificate this
    // connection authenticated (and the owner's CRLs: an attestation by a
    // revoked key does not count).
    let (revocation, _) = revocation(t)?;
    let report = drivesec_oem::attest::attest(
        c,
        &roots,
        revocation.crls()?,
        t.name.as_deref(),
        header.as_ref(),
    )?;
    if report.matches_approved == Some(false) {
        if json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        bail!(
            "device {} runs {} (root {}), not the approved release",
            safe(&report.serial_number),
            safe(&report.version),
            safe(&report.root)
        );
    }
    print(json, &serde_json::to_value(&report)?, |_| {
        println!(
            "device {} attests {} (security counter {}, root {}){}{}",
            safe(&report.serial_number),
            safe(&report.version),
            report.security_counter,
            safe(&report.root),
            if report.trial { ", on trial" } else { "" },
            if report.matches_approved == Some(true) {
                "; it is the approved release"
            } else {
                ""
            }
        )
    })
}

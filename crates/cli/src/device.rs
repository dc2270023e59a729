//! `drivesec device ...`: the client side of the device API.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use drivesec_fsutil::{self as fsu, Mode};
use drivesec_oem::client::{ClientIdentity, DeviceClient, DeviceTrust, Revocation, Versions};
use drivesec_oem::lab::LabManifest;
use serde_json::{Value, json};

use crate::cli::{
    AttestArgs, DeviceArgs, DeviceAuditCommand, DeviceCommand, DeviceFirmwareCommand, DriveCommand,
    ParamsCommand, RolesCommand, SessionsCommand, UsersCommand,
};
use crate::commands::safe_lines;
use crate::text::safe;

/// A string field of a device reply, safe to print.
fn field<'a>(v: &'a Value, key: &str) -> std::borrow::Cow<'a, str> {
    safe(v[key].as_str().unwrap_or(""))
}

/// Any JSON value of a device reply as text, safe to print (serde_json
/// leaves DEL, C1 controls and bidi overrides in strings as they are).
fn shown(v: &Value) -> String {
    safe(&v.to_string()).into_owned()
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

fn print(json: bool, v: &Value, text: impl FnOnce(&Value)) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        text(v);
    }
    Ok(())
}

/// Handles SIGINT and SIGTERM while a device is commissioned: before the
/// OEM CA issued anything the process exits at once (130); after, the first
/// signal makes the commissioning abandon its remaining steps and revoke
/// the LDevID it issued (it then fails, naming what happened), and further
/// signals are noted but do not cut that short. SIGKILL cannot be handled:
/// the LDevID's serial is printed right after issuance for `ca revoke`.
fn watch_signals(interrupt: &drivesec_oem::commission::Interrupt) -> Result<()> {
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
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            rt.block_on(async {
                let mut first = true;
                loop {
                    let name = tokio::select! {
                        _ = int.recv() => "SIGINT",
                        _ = term.recv() => "SIGTERM",
                    };
                    if !first {
                        eprintln!("{name}: still revoking the LDevID just issued; wait for it");
                        continue;
                    }
                    first = false;
                    if interrupt.interrupt() {
                        eprintln!(
                            "{name}: commissioning interrupted before the OEM CA issued anything; \
                             nothing to revoke"
                        );
                        std::process::exit(130);
                    }
                    eprintln!(
                        "{name}: interrupting the commissioning; revoking the LDevID just issued"
                    );
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
        let interrupt = drivesec_oem::commission::Interrupt::new();
        watch_signals(&interrupt)?;
        let ca_dir = oem_ca.clone();
        let r = drivesec_oem::commission::commission_interruptible(
            &mut ca,
            &drivesec_oem::commission::CommissionRequest {
                addr: t.addr,
                identity: &t.identity,
                manufacturer_roots: drivesec_pki::read_cert_chain(manufacturer_root)?,
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
                // before it ends, this is what to revoke.
                eprintln!(
                    "the OEM CA issued LDevID {serial} for {}; if this run is killed before it \
                     ends, revoke it: drivesec ca revoke --ca {} --serial {serial} --reason \
                     cessation-of-operation",
                    safe(&name),
                    ca_dir.display()
                );
            },
        )?;
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
    let _ = c.call("POST", "/api/v1/logout", None);
    result
}

/// `device factory-reset`: ask, or approve another account's request.
fn factory_reset(c: &DeviceClient, t: &Target, approve: Option<&str>, json: bool) -> Result<()> {
    let password = t.password.as_ref().ok_or_else(|| {
        anyhow!("a factory reset needs your password again: give --password-file")
    })?;
    let body = serde_json::json!({"password": password.as_str(), "approve": approve});
    print(
        json,
        &c.ok("POST", "/api/v1/factory-reset", Some(&body))?,
        |v| match v["request"].as_str() {
            Some(id) => println!(
                "factory reset requested ({id}); another account with factory-reset approves it \
                 within {} s: drivesec device factory-reset --approve {id}",
                shown(&v["expires_in_secs"]),
                id = safe(id)
            ),
            None => println!(
                "the device is back in factory state; new one-time factory credential: {}",
                field(v, "factory_credential")
            ),
        },
    )
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
    let body = serde_json::json!({"old_password": old.as_str(), "new_password": new.as_str()});
    print(
        json,
        &c.ok("POST", "/api/v1/me/password", Some(&body))?,
        |v| {
            println!(
                "password changed; {} other session(s) ended",
                shown(&v["sessions_ended"])
            )
        },
    )
}

fn read_profile(path: &std::path::Path) -> Result<drivesec_iec62443::profile::Profile> {
    Ok(drivesec_iec62443::profile::load(path)?)
}

fn dispatch(c: &DeviceClient, cmd: &DeviceCommand, json: bool) -> Result<()> {
    let get = |path: &str| c.ok("GET", path, None).map_err(anyhow::Error::from);
    match cmd {
        DeviceCommand::Commission { .. }
        | DeviceCommand::Firmware(_)
        | DeviceCommand::Attest(_)
        | DeviceCommand::Password { .. } => {
            unreachable!("handled in run")
        }
        DeviceCommand::Info => print(json, &get("/api/v1/info")?, |v| {
            println!(
                "{} {} serial {} ({})",
                field(v, "manufacturer"),
                field(v, "model"),
                field(v, "serial_number"),
                field(v, "state")
            );
            println!("{}", safe_lines(v["banner"].as_str().unwrap_or("")));
        }),
        DeviceCommand::Login => print(json, &get("/api/v1/me")?, |v| {
            println!(
                "logged in as {} ({}): {}",
                field(v, "username"),
                field(v, "role"),
                shown(&v["permissions"])
            );
        }),
        DeviceCommand::Drive(d) => {
            let body = match d {
                DriveCommand::Status => {
                    return print(json, &get("/api/v1/drive")?, |v| {
                        println!(
                            "{} at {:.1} rpm, torque {:.1} %, current {:.1} A, fault 0x{:04x}, STO {}",
                            field(v, "state"),
                            v["speed_rpm"].as_f64().unwrap_or(0.0),
                            v["torque_pct"].as_f64().unwrap_or(0.0),
                            v["current_a"].as_f64().unwrap_or(0.0),
                            v["fault_code"].as_u64().unwrap_or(0),
                            if v["sto"].as_bool() == Some(true) {
                                "active"
                            } else {
                                "off"
                            }
                        )
                    });
                }
                DriveCommand::Start { speed } => match speed {
                    Some(s) => json!({"command": "start", "speed_reference": s}),
                    None => json!({"command": "start"}),
                },
                DriveCommand::Stop => json!({"command": "stop"}),
                DriveCommand::QuickStop => json!({"command": "quick-stop"}),
                DriveCommand::Reset => json!({"command": "reset"}),
                DriveCommand::Reference { rpm } => json!({"speed_reference": rpm}),
            };
            print(
                json,
                &c.ok("PUT", "/api/v1/drive/control", Some(&body))?,
                |_| println!("accepted; `device drive status` shows the drive"),
            )
        }
        DeviceCommand::Provision {
            profile,
            passwords_out,
        } => {
            let p = read_profile(profile)?;
            let new: Vec<String> = {
                let cur = get("/api/v1/profile")?;
                p.accounts
                    .iter()
                    .filter(|a| {
                        !cur["current"]["accounts"]
                            .as_array()
                            .is_some_and(|l| l.iter().any(|b| b["username"] == a.username.as_str()))
                    })
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
        DeviceCommand::Posture => print(json, &get("/api/v1/posture")?, |v| {
            println!("{}", field(v, "notation"));
            for fr in v["foundational_requirements"]
                .as_array()
                .into_iter()
                .flatten()
            {
                println!(
                    "  {} {:<45} SL {}",
                    field(fr, "fr"),
                    field(fr, "name"),
                    shown(&fr["level"])
                );
                for r in fr["reasons"].as_array().into_iter().flatten() {
                    println!("      - {}", safe(r.as_str().unwrap_or("")));
                }
            }
        }),
        DeviceCommand::FactoryReset { .. } => bail!("factory-reset is run by `device::run`"),
        DeviceCommand::Users(u) => {
            let v = match u {
                UsersCommand::List => get("/api/v1/users")?,
                UsersCommand::Add {
                    username,
                    role,
                    new_password_file,
                } => {
                    let pw = read_secret(new_password_file)?;
                    c.ok(
                        "POST",
                        "/api/v1/users",
                        Some(&json!({"username": username, "role": role, "password": pw.as_str()})),
                    )?
                }
                UsersCommand::Remove { username } => {
                    c.ok("DELETE", &format!("/api/v1/users/{username}"), None)?
                }
                UsersCommand::Role { username, role } => c.ok(
                    "PUT",
                    &format!("/api/v1/users/{username}/role"),
                    Some(&json!({"role": role})),
                )?,
                UsersCommand::Unlock { username } => {
                    c.ok("POST", &format!("/api/v1/users/{username}/unlock"), None)?
                }
            };
            print(json, &v, |v| {
                println!(
                    "{}",
                    safe_lines(&serde_json::to_string_pretty(v).unwrap_or_default())
                )
            })
        }
        DeviceCommand::Roles(r) => {
            let v = match r {
                RolesCommand::List => get("/api/v1/roles")?,
                RolesCommand::Add {
                    role_name: name,
                    permissions,
                } => c.ok(
                    "POST",
                    "/api/v1/roles",
                    Some(&json!({"name": name, "permissions": permissions})),
                )?,
                RolesCommand::Remove { role_name: name } => {
                    c.ok("DELETE", &format!("/api/v1/roles/{name}"), None)?
                }
            };
            print(json, &v, |v| {
                println!(
                    "{}",
                    safe_lines(&serde_json::to_string_pretty(v).unwrap_or_default())
                )
            })
        }
        DeviceCommand::Sessions(s) => {
            let v = match s {
                SessionsCommand::List => get("/api/v1/sessions")?,
                SessionsCommand::Terminate { handle } => {
                    c.ok("DELETE", &format!("/api/v1/sessions/{handle}"), None)?
                }
            };
            print(json, &v, |v| {
                println!(
                    "{}",
                    safe_lines(&serde_json::to_string_pretty(v).unwrap_or_default())
                )
            })
        }
        DeviceCommand::Params(p) => {
            let v = match p {
                ParamsCommand::Get => get("/api/v1/params")?,
                ParamsCommand::Set { param: name, value } => c.ok(
                    "PUT",
                    &format!("/api/v1/params/{name}"),
                    Some(&json!({"value": value})),
                )?,
            };
            print(json, &v, |v| match v.get("values") {
                Some(vals) => {
                    for (k, x) in vals.as_object().into_iter().flatten() {
                        println!("{:<22} {}", safe(k), shown(x));
                    }
                }
                None => println!(
                    "{} = {} (was {})",
                    field(v, "name"),
                    shown(&v["value"]),
                    shown(&v["old"])
                ),
            })
        }
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
                    print(json, &get(&q)?, |v| {
                        for r in v["records"].as_array().into_iter().flatten() {
                            println!(
                                "{:>7} {} {:<28} {:<24} {:<8} {}",
                                shown(&r["seq"]),
                                field(r, "time"),
                                shown(&r["actor"]),
                                field(r, "action"),
                                field(r, "outcome"),
                                safe(r["target"].as_str().unwrap_or("-"))
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
                    let v = c.ok("PUT", "/api/v1/audit/forwarding", Some(&json!({"collector": collector, "server_name": server_name, "ca_pem": ca})))?;
                    print(json, &v, |_| {
                        println!("the device now forwards its audit trail to {collector}")
                    })
                }
            }
        }
    }
}

fn firmware(c: &DeviceClient, t: &Target, f: &DeviceFirmwareCommand, json: bool) -> Result<()> {
    let show_state = |v: &Value| {
        let r = &v["running"];
        if r.is_null() {
            println!("no verified firmware is running");
        } else {
            println!(
                "running {} (security counter {}) from slot {}{}",
                field(r, "version"),
                shown(&r["security_counter"]),
                safe(r["slot"].as_str().unwrap_or("?")),
                if r["trial"].as_bool() == Some(true) {
                    " on trial"
                } else {
                    ""
                }
            );
        }
        if !v["boot_state"].is_null() {
            println!("boot state: {}", shown(&v["boot_state"]));
        }
    };
    match f {
        DeviceFirmwareCommand::Status => {
            print(json, &c.ok("GET", "/api/v1/firmware", None)?, show_state)
        }
        DeviceFirmwareCommand::Reboot => print(
            json,
            &c.ok("POST", "/api/v1/firmware/reboot", None)?,
            show_state,
        ),
        DeviceFirmwareCommand::Trust { statement } => {
            use base64::Engine;
            let bytes = fsu::read(statement)?;
            let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
            let r = c.call(
                "PUT",
                "/api/v1/firmware/trust",
                Some(&json!({"statement": b64})),
            )?;
            if !(200..300).contains(&r.status) {
                bail!(
                    "the device refused {}: {} {}",
                    statement.display(),
                    r.status,
                    safe(r.body["message"].as_str().unwrap_or(&r.body.to_string()))
                );
            }
            print(json, &r.body, |v| {
                println!(
                    "firmware trust store now at version {}",
                    shown(&v["trust"]["version"])
                )
            })
        }
        DeviceFirmwareCommand::Update { image } => {
            let r = c.upload_file(
                "POST",
                "/api/v1/firmware",
                image,
                "application/octet-stream",
            )?;
            if !(200..300).contains(&r.status) {
                bail!(
                    "the device refused {}: {} {}",
                    image.display(),
                    r.status,
                    safe(r.body["message"].as_str().unwrap_or(&r.body.to_string()))
                );
            }
            print(json, &r.body, |v| {
                println!(
                    "staged {} (security counter {}); it boots on trial at the next reboot",
                    field(v, "staged"),
                    shown(&v["security_counter"])
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
    let mut nonce = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
    let nonce = hex::encode(nonce);
    let resp = c.ok("POST", "/api/v1/attest", Some(&json!({"nonce": nonce})))?;
    // The signing certificate is checked against the owner's CRLs too: an
    // attestation by a revoked key does not count.
    let (revocation, _) = revocation(t)?;
    let report = drivesec_oem::attest::verify_attestation(
        &resp,
        &nonce,
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

//! Where the device is and who the tool is to it: the connection flags of
//! `drivesec device` (or a lab's), the owner's trust and CRL, the client
//! certificate and the account.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use drivesec_client::client::{ClientIdentity, DeviceClient, DeviceTrust, Revocation, Versions};
use drivesec_lab::LabManifest;
use drivesec_ops::read_secret;

use clap::Args;

use crate::output::warn;
use crate::text::safe;

/// How to reach the device and who to be to it: `drivesec device`'s
/// options, given before or after the command.
#[derive(Debug, Args)]
pub struct Connection {
    /// Take the address, names, certificates and account from a lab (with --device and --as).
    #[arg(long, global = true)]
    pub lab: Option<PathBuf>,
    /// Lab device name (default: the first).
    #[arg(long, global = true)]
    pub device: Option<String>,
    /// Lab role whose client certificate and account to use (default: security-admin's first account).
    #[arg(long = "as", global = true)]
    pub as_role: Option<String>,
    /// Device API address, IP:PORT.
    #[arg(long, global = true)]
    pub api: Option<String>,
    /// The device's DNS name (in its LDevID).
    #[arg(long, global = true)]
    pub name: Option<String>,
    /// Owner root certificate the LDevID must chain to.
    #[arg(long, global = true)]
    pub ca: Option<PathBuf>,
    /// The owner's CRL(s) (PEM) the device's LDevID is checked against
    /// (default: `crl.pem` beside the --ca file, as in a CA directory; with
    /// --lab, the lab's).
    #[arg(long, global = true)]
    pub crl: Option<PathBuf>,
    /// Risky: when no CRL is found, go on without checking the device's
    /// certificate for revocation.
    #[arg(long, global = true)]
    pub insecure_no_crl: bool,
    /// The device's serial number, exactly as its certificate's subject
    /// serialNumber carries it. With --api, the LDevID must name exactly
    /// it (a genuine LDevID of another device is refused); with --lab, the
    /// lab's serial is the default. Required by `commission`: take it from
    /// the label or delivery papers, never from the device's own answers (a
    /// genuine IDevID of another device must not receive this one's
    /// credential).
    #[arg(long, global = true)]
    pub serial: Option<String>,
    /// This tool's client certificate chain (PEM).
    #[arg(long, global = true)]
    pub cert: Option<PathBuf>,
    /// This tool's private key (PEM).
    #[arg(long, global = true)]
    pub key: Option<PathBuf>,
    /// Account name.
    #[arg(long, global = true)]
    pub user: Option<String>,
    /// File holding the account's password.
    #[arg(long, global = true)]
    pub password_file: Option<PathBuf>,
}

/// Where the device is and who we are.
pub(super) struct Target {
    pub(super) addr: std::net::SocketAddr,
    pub(super) name: Option<String>,
    pub(super) ca: Option<std::path::PathBuf>,
    /// The owner's CRL file (None: none found).
    pub(super) crl: Option<std::path::PathBuf>,
    /// Go on without a CRL (`--insecure-no-crl`).
    pub(super) insecure_no_crl: bool,
    /// The device's serial number, when known (`--serial`, or a lab's).
    pub(super) serial: Option<String>,
    /// The manufacturer's CRL file, for commissioning (None: none found).
    pub(super) manufacturer_crl: Option<std::path::PathBuf>,
    pub(super) identity: ClientIdentity,
    pub(super) user: Option<String>,
    pub(super) password: Option<zeroize::Zeroizing<String>>,
    /// With --lab: lab.json, and the account it holds the password of
    /// (the one `--as` names), which `device passwd` leaves stale there.
    pub(super) lab_account: Option<(PathBuf, String)>,
}

/// The device and the tool's identity from the flags, or from a lab.
pub(super) fn target(a: &Connection) -> Result<Target> {
    if let Some(lab_dir) = &a.lab {
        let m = LabManifest::load(lab_dir)?;
        let d = match &a.device {
            Some(n) => m.devices.iter().find(|d| &d.name == n).ok_or_else(|| {
                anyhow!(
                    "no device '{n}' in the lab; its devices: {}",
                    names(m.devices.iter().map(|d| d.name.as_str()))
                )
            })?,
            None => m
                .devices
                .first()
                .ok_or_else(|| anyhow!("the lab has no devices"))?,
        };
        let addr = m.api_addr(d)?;
        let role = a.as_role.clone().unwrap_or_else(|| "security-admin".into());
        let files = m.clients.get(&role).ok_or_else(|| {
            anyhow!(
                "no client certificate for role '{role}' in the lab; its roles: {}",
                names(m.clients.keys().map(String::as_str))
            )
        })?;
        let creds = if a.as_role.is_none() {
            m.admin.clone()
        } else {
            m.users.get(&role).cloned()
        };
        return Ok(Target {
            addr,
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
            lab_account: creds
                .as_ref()
                .map(|c| (lab_dir.join("lab.json"), c.username.clone())),
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
        lab_account: None,
    })
}

/// Names for a message: `a, b, c` (escaped), or `none`.
fn names<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let all: Vec<&str> = names.collect();
    if all.is_empty() {
        "none".into()
    } else {
        safe(&all.join(", ")).into_owned()
    }
}

/// A client for the commissioned device `t` names (not logged in).
pub(super) fn owned(t: &Target) -> Result<DeviceClient> {
    let name = t
        .name
        .clone()
        .ok_or_else(|| anyhow!("give --name (the device's DNS name in its LDevID)"))?;
    let ca =
        t.ca.as_ref()
            .ok_or_else(|| anyhow!("give --ca (the owner root certificate)"))?;
    let (revocation, warnings) = revocation(t)?;
    warn(&warnings);
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
pub(super) fn revocation(t: &Target) -> Result<(Revocation, Vec<String>)> {
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

/// [`owned`], logged in with the target's account and password.
pub(super) fn logged_in(t: &Target) -> Result<DeviceClient> {
    let pw = t
        .password
        .as_ref()
        .ok_or_else(|| anyhow!("give --password-file"))?;
    logged_in_with(t, pw, false)
}

/// [`owned`], logged in with the target's account and `password`. An
/// account that must change its password first (an administrator set it)
/// can do nothing else: a hint on stderr says how, unless `changing` it
/// (`device passwd`).
pub(super) fn logged_in_with(t: &Target, password: &str, changing: bool) -> Result<DeviceClient> {
    let mut c = owned(t)?;
    let user = t
        .user
        .as_ref()
        .ok_or_else(|| anyhow!("give --user and --password-file"))?;
    let login = c.login(user, password)?;
    if login.must_change_password && !changing {
        warn(&[format!(
            "the account {user} must change its password before it can do anything else: \
             run drivesec device passwd (with the same connection options; the new password \
             from --new-password-file FILE or stdin)"
        )]);
    }
    Ok(c)
}

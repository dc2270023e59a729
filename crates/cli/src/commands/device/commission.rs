//! `drivesec device commission`: taking ownership of a factory-state
//! device, and what a signal does meanwhile (docs/provisioning.md).

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use drivesec_client::client::Revocation;
use drivesec_ops::read_secret;

use super::answer::print;
use super::target::Target;
use crate::output::warn;
use crate::text::safe;

/// `device commission`.
#[derive(Debug, Args)]
pub struct CommissionArgs {
    /// Manufacturer root certificate (to check the IDevID).
    #[arg(long)]
    manufacturer_root: PathBuf,
    /// The manufacturer's CRL(s) (PEM) the IDevID is checked against: a
    /// reprovisioned device's old IDevID is revoked there (default:
    /// `crl.pem` beside the --manufacturer-root file, as in a CA
    /// directory; with --lab, the lab's).
    #[arg(long)]
    manufacturer_crl: Option<PathBuf>,
    /// Risky: when no manufacturer CRL is found, go on without checking
    /// the IDevID for revocation (a revoked IDevID, such as a
    /// reprovisioned device's old one, would receive the factory
    /// credential and the administrator's password).
    #[arg(long)]
    insecure_no_manufacturer_crl: bool,
    /// The OEM CA directory that signs the LDevID.
    #[arg(long)]
    oem_ca: PathBuf,
    /// File holding the one-time factory credential.
    #[arg(long)]
    credential_file: PathBuf,
    /// First security administrator's account name.
    #[arg(long)]
    admin: String,
    /// File holding their password.
    #[arg(long)]
    admin_password_file: PathBuf,
}

/// A commissioning that ended because a signal came before it failed or
/// succeeded (`Interrupt::ended_by_signal`): the tool exits 130, what
/// happened said as for any error (the commissioning's error, shown as
/// is).
#[derive(Debug)]
pub struct EndedBySignal(drivesec_client::ClientError);

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
/// commissioning is in (`drivesec_client::commission::Interrupted`): before
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
fn watch_signals(interrupt: &drivesec_client::commission::Interrupt, device: &str) -> Result<()> {
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

/// Runs `device commission` on the device `t` names; `serial` is the
/// `--serial` given, the one the IDevID must carry.
pub(super) fn run(
    t: &Target,
    serial: Option<String>,
    a: &CommissionArgs,
    json: bool,
) -> Result<()> {
    let CommissionArgs {
        manufacturer_root,
        manufacturer_crl,
        insecure_no_manufacturer_crl,
        oem_ca,
        credential_file,
        admin,
        admin_password_file,
    } = a;
    let name = t
        .name
        .clone()
        .ok_or_else(|| anyhow!("give --name: the DNS name the device will carry"))?;
    let serial = serial.filter(|s| !s.is_empty()).ok_or_else(|| {
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
    warn(&warnings);
    let mut ca = drivesec_pki::Ca::open(oem_ca)?;
    let credential = read_secret(credential_file)?;
    let pw = read_secret(admin_password_file)?;
    let manufacturer_roots = drivesec_pki::read_cert_chain(manufacturer_root)?;
    // Nothing fails between here and the commissioning, which records
    // its own failures: a signal meanwhile exits 130 and nothing else.
    let interrupt = drivesec_client::commission::Interrupt::new();
    watch_signals(&interrupt, &name)?;
    let ca_dir = oem_ca.clone();
    let r = drivesec_client::commission::commission_interruptible(
        &mut ca,
        &drivesec_client::commission::CommissionRequest {
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
    print(json, &v, |_| {
        println!(
            "commissioned {} as {} (LDevID {}); the factory credential is dead",
            safe(&r.serial_number),
            safe(&r.device_name),
            safe(&r.ldevid_serial)
        )
    })
}

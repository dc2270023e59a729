//! `drivesec factory ...`: the manufacturer's factory station: provision,
//! re-provision, install the factory firmware.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Subcommand, ValueEnum};
use drivesec_factory::{DeviceKeystore, ProvisionOptions, provision};
use drivesec_fsutil::{self as fsu, Mode};
use drivesec_pki::Ca;
use serde_json::json;

use crate::dirs::check_writable_file;
use crate::output::print_json;
use crate::text::safe;

/// Keystore backend choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// Software keystore encrypted at rest.
    Soft,
    /// PKCS#11 token (SoftHSM2 unless --pkcs11-module says otherwise).
    Pkcs11,
}

/// The PKCS#11 module given, or SoftHSM2.
pub(crate) fn module(arg: &Option<PathBuf>) -> PathBuf {
    arg.clone()
        .unwrap_or_else(drivesec_keystore::pkcs11::default_module)
}

/// `drivesec factory ...`.
#[derive(Debug, Subcommand)]
pub enum FactoryCommand {
    /// Provision one device: identity key in its keystore, IDevID, one-time credential.
    Provision {
        /// The manufacturer CA directory.
        #[arg(long)]
        ca: PathBuf,
        /// The device state directory to create.
        #[arg(long)]
        device_dir: PathBuf,
        /// The device's serial number.
        #[arg(long)]
        serial: String,
        /// Product model.
        #[arg(long, default_value = "iC7-Sim")]
        model: String,
        /// Device keystore backend.
        #[arg(long, value_enum, default_value_t = BackendArg::Soft)]
        keystore: BackendArg,
        /// For pkcs11: an existing token (RFC 7512 URI with pin-source). When
        /// absent, a fresh token is initialised on --pkcs11-module.
        #[arg(long)]
        pkcs11_uri: Option<String>,
        /// For pkcs11 without --pkcs11-uri: the module (default SoftHSM2).
        #[arg(long)]
        pkcs11_module: Option<PathBuf>,
        /// Write the one-time factory credential here (0600) instead of stdout.
        #[arg(long)]
        credential_out: Option<PathBuf>,
    },
    /// Re-provision a tampered device returned to the manufacturer: revoke
    /// its old IDevID (keyCompromise), keep the old directory as evidence,
    /// and give the same serial new keys on the same chip, a new IDevID and
    /// a new factory credential. drivesecd must be stopped; the tamper input
    /// must be clear.
    Reprovision {
        /// The manufacturer CA directory.
        #[arg(long)]
        ca: PathBuf,
        /// The tampered device's state directory.
        #[arg(long)]
        device_dir: PathBuf,
        /// Where to keep the old directory (default DIR.tampered-<UTC time>).
        #[arg(long)]
        archive: Option<PathBuf>,
        /// Write the new one-time factory credential here (0600) instead of stdout.
        #[arg(long)]
        credential_out: Option<PathBuf>,
    },
    /// Install the factory firmware (slot A) and the firmware trust store
    /// into a provisioned device directory. The image must be packed for the
    /// device's firmware key and carry the signatures the trust store asks
    /// for; after re-provisioning it must not be below the old device's
    /// anti-rollback counter.
    InstallFirmware {
        /// The device state directory (drivesecd stopped).
        #[arg(long)]
        device_dir: PathBuf,
        /// The firmware trust store (JSON).
        #[arg(long)]
        trust: PathBuf,
        /// The approved image.
        #[arg(long)]
        image: PathBuf,
    },
}

/// Runs a `factory` command.
pub fn run(cmd: FactoryCommand, json: bool) -> Result<()> {
    match cmd {
        FactoryCommand::Reprovision {
            ca,
            device_dir,
            archive,
            credential_out,
        } => factory_reprovision(ca, device_dir, archive, credential_out, json),
        FactoryCommand::InstallFirmware {
            device_dir,
            trust,
            image,
        } => {
            let trust_store: drivesec_firmware::trust::TrustStore =
                serde_json::from_str(&fsu::read_to_string(&trust)?).with_context(|| {
                    format!("{} is not a firmware trust store", trust.display())
                })?;
            // Never into a running drive (nor beside another tool changing
            // it): refused, naming the holder's PID, before anything is read.
            let _lock = drivesec_state::StateLock::acquire(
                &device_dir,
                "drivesec factory install-firmware",
            )?;
            let st = drivesec_state::StateDir::load(&device_dir)?;
            if device_dir.join("firmware").join("boot.json").exists() {
                bail!(
                    "{} already has firmware; updates go through the device (drivesec device firmware update)",
                    device_dir.display()
                );
            }
            let bytes = fsu::read(&image)?;
            drivesec_state::firmware::install_factory(&st, &trust_store, &bytes)
                .with_context(|| format!("installing {}", image.display()))?;
            let floor = drivesec_state::firmware::security_counter_floor(&device_dir)?;
            if json {
                print_json(
                    &json!({"device_dir": device_dir, "image": image, "security_counter_floor": floor}),
                )
            } else {
                println!(
                    "installed {} in slot A of {} (anti-rollback floor {floor})",
                    image.display(),
                    device_dir.display()
                );
                Ok(())
            }
        }
        FactoryCommand::Provision {
            ca,
            device_dir,
            serial,
            model,
            keystore,
            pkcs11_uri,
            pkcs11_module,
            credential_out,
        } => {
            let mut mfg = Ca::open(&ca)?;
            let keystore = match (keystore, pkcs11_uri) {
                (BackendArg::Soft, None) => DeviceKeystore::Soft,
                (BackendArg::Soft, Some(_)) => bail!("--pkcs11-uri needs --keystore pkcs11"),
                (BackendArg::Pkcs11, Some(uri)) => DeviceKeystore::Pkcs11 { uri },
                (BackendArg::Pkcs11, None) => {
                    let so_pin_file = credential_out
                        .as_ref()
                        .map(|p| p.with_extension("so-pin"))
                        .ok_or_else(|| anyhow::anyhow!("a new token needs --credential-out, beside which its SO PIN is kept"))?;
                    DeviceKeystore::Pkcs11NewToken {
                        module: module(&pkcs11_module),
                        so_pin_file,
                    }
                }
            };
            check_credential_out(&credential_out)?;
            let p = provision(
                &mut mfg,
                &ProvisionOptions {
                    device_dir,
                    serial_number: serial,
                    model,
                    keystore,
                },
            )?;
            let shown = deliver_credential(&p, &credential_out)?;
            if json {
                print_json(&json!({
                    "device_dir": p.device_dir, "serial_number": p.serial_number,
                    "idevid": p.idevid_path, "idevid_serial": p.idevid_serial,
                    "keystore": p.backend, "pkcs11_uri": p.pkcs11_uri, "idevid_key_uri": p.idevid_key_uri,
                    "factory_credential": shown, "factory_credential_file": credential_out,
                }))
            } else {
                println!(
                    "provisioned {} in {} ({} keystore)",
                    p.serial_number,
                    p.device_dir.display(),
                    p.backend
                );
                println!(
                    "IDevID: {} (serial {})",
                    p.idevid_path.display(),
                    p.idevid_serial
                );
                match (shown, credential_out) {
                    (Some(c), _) => println!(
                        "one-time factory credential (shown once, stored only as a hash): {c}"
                    ),
                    (None, Some(path)) => {
                        println!("one-time factory credential written to {}", path.display())
                    }
                    _ => {}
                }
                Ok(())
            }
        }
    }
}

fn factory_reprovision(
    ca: PathBuf,
    device_dir: PathBuf,
    archive: Option<PathBuf>,
    credential_out: Option<PathBuf>,
    json: bool,
) -> Result<()> {
    check_credential_out(&credential_out)?;
    // drivesecd must be stopped: a running one holds the directory's lock
    // (refused, naming its PID). No lock file is made where none is (the
    // old directory is kept as evidence as it was); held until the old
    // directory is archived and the new one is in place.
    let _lock =
        drivesec_state::StateLock::acquire_existing(&device_dir, "drivesec factory reprovision")?;
    let mut mfg = Ca::open(&ca)?;
    let r = drivesec_factory::reprovision(
        &mut mfg,
        &drivesec_factory::ReprovisionOptions {
            device_dir,
            archive,
        },
    )?;
    let p = &r.provisioned;
    let shown = deliver_credential(p, &credential_out)?;
    if json {
        return print_json(&json!({
            "device_dir": p.device_dir, "serial_number": p.serial_number,
            "idevid": p.idevid_path, "idevid_serial": p.idevid_serial,
            "keystore": p.backend, "pkcs11_uri": p.pkcs11_uri,
            "revoked_idevid_serial": r.revoked_idevid_serial, "newly_revoked": r.newly_revoked,
            "crl": r.crl, "archive": r.archive, "security_counter_floor": r.security_counter_floor,
            "factory_credential": shown, "factory_credential_file": credential_out,
        }));
    }
    println!(
        "re-provisioned {} in {} ({} keystore)",
        safe(&p.serial_number),
        p.device_dir.display(),
        p.backend
    );
    println!(
        "old IDevID {} revoked (keyCompromise){}; CRL: {}",
        r.revoked_idevid_serial,
        if r.newly_revoked { "" } else { " earlier" },
        r.crl.display()
    );
    println!(
        "new IDevID: {} (serial {})",
        p.idevid_path.display(),
        p.idevid_serial
    );
    println!(
        "evidence (old directory, audit trail): {}",
        r.archive.display()
    );
    println!(
        "next: install factory firmware packed for {} with security counter >= {}, then commission",
        p.device_dir.join("firmware-key.pub").display(),
        r.security_counter_floor
    );
    match (shown, credential_out) {
        (Some(c), _) => {
            println!("one-time factory credential (shown once, stored only as a hash): {c}")
        }
        (None, Some(path)) => println!("one-time factory credential written to {}", path.display()),
        _ => {}
    }
    Ok(())
}

/// Before a device is (re-)provisioned: the one-time factory credential,
/// shown nowhere else when `out` is given, can be written there (a new
/// file, in a directory that takes it).
fn check_credential_out(out: &Option<PathBuf>) -> Result<()> {
    let Some(p) = out else { return Ok(()) };
    if p.exists() {
        bail!(
            "{} already exists; refusing to overwrite a credential",
            p.display()
        );
    }
    check_writable_file("--credential-out", p)
}

/// The one-time factory credential goes to `out` (0600, never overwritten)
/// or, without a file, back to be shown once.
fn deliver_credential(
    p: &drivesec_factory::Provisioned,
    out: &Option<PathBuf>,
) -> Result<Option<String>> {
    match out {
        Some(path) => {
            fsu::write_new(
                path,
                format!("{}\n", p.factory_credential.as_str()).as_bytes(),
                Mode::Private,
            )?;
            Ok(None)
        }
        None => Ok(Some(p.factory_credential.as_str().to_string())),
    }
}

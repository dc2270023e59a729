//! `drivesec device firmware ...` and `device attest`: what runs, updates,
//! the boot stage, trust rotation and attestation.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use drivesec_api::firmware::{
    FirmwareBootState, FirmwareRebootAnswer, FirmwareStatus, FirmwareUploadAnswer, RunningFirmware,
    TrustRotationAnswer, TrustRotationRequest,
};
use drivesec_client::client::DeviceClient;
use drivesec_fsutil as fsu;

use super::answer::{print, shown};
use super::target::{Target, revocation};
use crate::output::print_json;
use crate::text::safe;

/// `device firmware`.
#[derive(Debug, Subcommand)]
pub enum DeviceFirmwareCommand {
    /// What runs, the slots and the boot state.
    Status,
    /// Send an image; the device verifies it chunk by chunk into the inactive slot.
    Update {
        /// The image.
        #[arg(long)]
        image: PathBuf,
    },
    /// Restart into the boot stage (a pending image boots on trial and is
    /// confirmed after the health check).
    Reboot,
    /// Apply a trust rotation statement (from `drivesec firmware rotate`).
    Trust {
        /// The signed statement.
        #[arg(long)]
        statement: PathBuf,
    },
    /// Ask for a signed attestation with a fresh nonce and check it.
    Attest(AttestArgs),
}

/// What an attestation is checked against.
#[derive(Debug, Args)]
pub struct AttestArgs {
    /// The approved release the device should be running.
    #[arg(long)]
    pub approved: Option<PathBuf>,
    /// Root certificate the device identity must chain to (default: --ca).
    #[arg(long)]
    pub identity_root: Option<PathBuf>,
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

/// Runs a `device firmware` command.
pub(super) fn run(
    c: &DeviceClient,
    t: &Target,
    f: &DeviceFirmwareCommand,
    json: bool,
) -> Result<()> {
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

/// `device attest` (and `device firmware attest`): a signed attestation for
/// a fresh nonce, checked against this connection's certificate.
pub(super) fn attest(c: &DeviceClient, t: &Target, a: &AttestArgs, json: bool) -> Result<()> {
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
    let report = drivesec_client::attest::attest(
        c,
        &roots,
        revocation.crls()?,
        t.name.as_deref(),
        header.as_ref(),
    )?;
    if report.matches_approved == Some(false) {
        if json {
            print_json(&report)?;
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

//! `drivesec device ...`: the client side of the device API. How to reach
//! the device (`target`), then one module per group of commands; what the
//! device answers is shown through `answer`.

mod accounts;
mod answer;
mod audit;
mod commission;
mod drive;
mod firmware;
mod security;
mod target;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use drivesec_api::device::DeviceInfo;
use drivesec_client::client::DeviceClient;

use self::accounts::{RolesCommand, SessionsCommand, UsersCommand};
use self::answer::{named, print};
use self::audit::DeviceAuditCommand;
use self::commission::CommissionArgs;
pub use self::commission::EndedBySignal;
use self::drive::{DriveCommand, ParamsCommand};
use self::firmware::{AttestArgs, DeviceFirmwareCommand};
use self::target::{Connection, logged_in, owned, target};
use crate::text::{safe, safe_lines};

/// `drivesec device`: how to reach the device, then what to do.
#[derive(Debug, Args)]
pub struct DeviceArgs {
    /// How to reach the device.
    #[command(flatten)]
    pub connection: Connection,
    /// What to do.
    #[command(subcommand)]
    pub command: DeviceCommand,
}

/// Device operations.
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Take ownership of a factory-state device.
    Commission(CommissionArgs),
    /// Identity, state and banner.
    Info,
    /// Log in and show the account's role and permissions.
    Login,
    /// Change your own password (the --user account). Required first after
    /// an administrator set it. The current password is --password-file's
    /// (or the lab's), the new one --new-password-file's; one not given is
    /// read from stdin, one a line, the current first (never from a
    /// terminal, where it would be shown as typed).
    #[command(visible_alias = "password")]
    Passwd {
        /// File holding the new password.
        #[arg(long)]
        new_password_file: Option<PathBuf>,
    },
    /// Accounts.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Roles.
    #[command(subcommand)]
    Roles(RolesCommand),
    /// Sessions.
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// Drive parameters.
    #[command(subcommand)]
    Params(ParamsCommand),
    /// The device's audit trail.
    #[command(subcommand)]
    Audit(DeviceAuditCommand),
    /// The security level achieved now (SL-A per FR) and the settings report.
    Posture,
    /// Apply a device profile (`plan profile`) in one transaction; new
    /// accounts get random initial passwords, written to --passwords-out.
    Provision {
        /// The profile (TOML).
        #[arg(long)]
        profile: PathBuf,
        /// Where to write the initial passwords of accounts created (0600).
        #[arg(long)]
        passwords_out: Option<PathBuf>,
    },
    /// Report where the device differs from a profile, item by item; exit 2
    /// when it does.
    Diff {
        /// The profile (TOML).
        #[arg(long)]
        profile: PathBuf,
    },
    /// Wipe ownership back to factory state. It takes two people: the first
    /// security administrator asks (prints a request id), another account
    /// with factory-reset approves with `--approve ID` (prints the new
    /// one-time factory credential). Each gives its own password again
    /// (--password-file, or the lab's). The audit trail is sealed and kept
    /// on the device.
    FactoryReset {
        /// Approve the request with this id (made by another account).
        #[arg(long, value_name = "ID")]
        approve: Option<String>,
    },
    /// Firmware: status, update, restart into the boot stage, attestation.
    #[command(subcommand)]
    Firmware(DeviceFirmwareCommand),
    /// The drive: status, start, stop, quick stop, fault reset, speed
    /// reference. (Safe Torque Off is a local input, not a command.)
    #[command(subcommand)]
    Drive(DriveCommand),
    /// Ask for a signed attestation of the running firmware with a fresh
    /// nonce and check it (same as `device firmware attest`).
    Attest(AttestArgs),
}

/// Runs one `drivesec device` command.
pub fn run(a: DeviceArgs, json: bool) -> Result<()> {
    let t = target(&a.connection)?;
    match &a.command {
        DeviceCommand::Commission(c) => {
            return commission::run(&t, a.connection.serial.clone(), c, json);
        }
        DeviceCommand::Passwd { new_password_file } => {
            return accounts::passwd(&t, new_password_file.as_deref(), json);
        }
        _ => {}
    }
    let c = match &a.command {
        DeviceCommand::Info => owned(&t)?,
        _ => logged_in(&t)?,
    };
    let result = match &a.command {
        DeviceCommand::Commission(_) | DeviceCommand::Passwd { .. } => {
            unreachable!("handled above")
        }
        DeviceCommand::Info => info(&c, json),
        DeviceCommand::Login => accounts::login(&c, json),
        DeviceCommand::Users(u) => accounts::users(&c, u, json),
        DeviceCommand::Roles(r) => accounts::roles(&c, r, json),
        DeviceCommand::Sessions(s) => accounts::sessions(&c, s, json),
        DeviceCommand::Params(p) => drive::params(&c, p, json),
        DeviceCommand::Drive(d) => drive::drive(&c, d, json),
        DeviceCommand::Audit(au) => audit::run(&c, au, json),
        DeviceCommand::Posture => security::posture(&c, json),
        DeviceCommand::Provision {
            profile,
            passwords_out,
        } => security::provision(&c, profile, passwords_out.as_deref(), json),
        DeviceCommand::Diff { profile } => security::diff(&c, profile, json),
        DeviceCommand::FactoryReset { approve } => {
            security::factory_reset(&c, &t, approve.as_deref(), json)
        }
        DeviceCommand::Firmware(f) => firmware::run(&c, &t, f, json),
        DeviceCommand::Attest(at) => firmware::attest(&c, &t, at, json),
    };
    let _ = c.logout();
    result
}

/// `device info`: identity, state and banner.
fn info(c: &DeviceClient, json: bool) -> Result<()> {
    print(json, &c.get::<DeviceInfo>("/api/v1/info")?, |v| {
        println!(
            "{} {} serial {} ({})",
            safe(&v.manufacturer),
            safe(&v.model),
            safe(&v.serial_number),
            named(&v.state)
        );
        println!("{}", safe_lines(&v.banner));
    })
}

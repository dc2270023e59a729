//! `drivesec`: the tool of the people around the drive. Parsing, dispatch
//! to one module per command (`commands`), and exit codes; the work is
//! done in the library crates.
//!
//! Exit codes: 0 success, 2 any error (bad input, failed check), with the
//! error and its causes on stderr; 130 for a `device commission` a signal
//! ended (docs/provisioning.md).

mod commands;
mod daemon;
mod dirs;
mod fleet_devices;
mod output;
mod text;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use commands::audit::AuditCommand;
use commands::ca::CaCommand;
use commands::cert::CertArgs;
use commands::demo::DemoArgs;
use commands::device::DeviceArgs;
use commands::evidence::EvidenceCommand;
use commands::factory::FactoryCommand;
use commands::firmware::FirmwareCommand;
use commands::fleet::FleetCommand;
use commands::lab::LabCommand;
use commands::plan::PlanCommand;
use commands::validate::ValidateArgs;

/// drivesec: security for networked motor drives, per IEC 62443.
#[derive(Debug, Parser)]
#[command(name = "drivesec", version, about, long_about = None)]
pub struct Cli {
    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the end-to-end story: build a lab and verify every identity in it.
    Demo(DemoArgs),
    /// Certification authorities: create, issue, revoke, publish CRLs.
    #[command(subcommand)]
    Ca(CaCommand),
    /// The manufacturer's factory station.
    #[command(subcommand)]
    Factory(FactoryCommand),
    /// A complete local lab of CAs, devices and role clients.
    #[command(subcommand)]
    Lab(LabCommand),
    /// Show what a certificate says (subject, usages, SAN, role extension).
    Cert(CertArgs),
    /// Audit trails: verify, show, export.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Talk to a running device: commission, accounts, sessions, parameters, audit, posture.
    Device(DeviceArgs),
    /// Firmware images: keys, packing, approval, inspection, verification.
    #[command(subcommand)]
    Firmware(FirmwareCommand),
    /// IEC 62443 planning: check a plant model, assess its risk (SL-T, SL-C,
    /// SL-A), derive firewall rules (docs/risk-method.md).
    #[command(subcommand)]
    Plan(PlanCommand),
    /// FAT/SAT validation: test each live device against its zone's SL-T,
    /// actively, and write signed evidence (docs/validation.md).
    Validate(ValidateArgs),
    /// The fleet: patch rollouts in waves and the fleet's state (docs/fleet.md).
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// Signed evidence for re-certification.
    #[command(subcommand)]
    Evidence(EvidenceCommand),
}

/// Runs one command.
fn run(cli: Cli) -> Result<()> {
    let json = cli.json;
    match cli.command {
        Command::Demo(a) => commands::demo::run(a, json),
        Command::Ca(c) => commands::ca::run(c, json),
        Command::Factory(c) => commands::factory::run(c, json),
        Command::Lab(c) => commands::lab::run(c, json),
        Command::Cert(a) => commands::cert::run(a, json),
        Command::Audit(c) => commands::audit::run(c, json),
        Command::Device(a) => commands::device::run(a, json),
        Command::Firmware(c) => commands::firmware::run(c, json),
        Command::Plan(c) => commands::plan::run(c, json),
        Command::Validate(a) => commands::validate::run(a, json),
        Command::Fleet(c) => commands::fleet::run(c, json),
        Command::Evidence(c) => commands::evidence::run(c, json),
    }
}

fn main() -> ExitCode {
    // Invoked as `drivesecd` (the lab starts daemons this way): be the daemon.
    let arg0 = std::env::args_os().next().unwrap_or_default();
    if std::path::Path::new(&arg0)
        .file_name()
        .is_some_and(|n| n == "drivesecd")
    {
        return daemon::main();
    }
    let cli = Cli::parse();
    // A pkcs11 lab or demo without a token directory runs again with its own.
    let reexec = match &cli.command {
        Command::Lab(c) => commands::lab::reexec_with_lab_softhsm(c),
        Command::Demo(a) => commands::demo::reexec_with_lab_softhsm(a),
        _ => None,
    };
    if let Some(code) = reexec {
        return code;
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Errors carry what devices and files said: escaped, and any
            // line after an error's first indented, so no text inside an
            // error can pass for a line of the tool's own.
            eprintln!("error: {}", text::continued(&e.to_string()));
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {}", text::continued(&cause.to_string()));
            }
            if e.is::<commands::device::EndedBySignal>() {
                ExitCode::from(130)
            } else {
                ExitCode::from(2)
            }
        }
    }
}

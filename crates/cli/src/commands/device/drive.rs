//! `drivesec device drive|params`: the drive's state and commands, and its
//! parameters.

use anyhow::Result;
use clap::Subcommand;
use drivesec_api::drive::{
    DriveCommand as Command, DriveControlAnswer, DriveControlRequest, DriveStatus,
    ParamWriteAnswer, ParamWriteRequest, ParamsAnswer,
};
use drivesec_client::client::{DeviceClient, path_name};

use super::answer::{named, print, shown};
use crate::text::safe;

/// `device drive`.
#[derive(Debug, Subcommand)]
pub enum DriveCommand {
    /// State, speed, torque, current, fault code and STO.
    Status,
    /// Start (a run edge), optionally with a new speed reference.
    Start {
        /// Speed reference, rpm.
        #[arg(long, allow_negative_numbers = true)]
        speed: Option<f64>,
    },
    /// Stop along the deceleration ramp.
    Stop,
    /// Quick stop: ramp to zero and stay stopped.
    QuickStop,
    /// Reset a fault.
    Reset,
    /// Set the speed reference, rpm.
    Reference {
        /// rpm (range-checked like the speed-reference parameter).
        #[arg(allow_negative_numbers = true)]
        rpm: f64,
    },
}

/// `device params`.
#[derive(Debug, Subcommand)]
pub enum ParamsCommand {
    /// Show values.
    Get,
    /// Write one value.
    Set {
        /// Parameter name.
        param: String,
        /// Value.
        value: f64,
    },
}

/// `device drive ...`.
pub(super) fn drive(c: &DeviceClient, d: &DriveCommand, json: bool) -> Result<()> {
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

/// `device params ...`.
pub(super) fn params(c: &DeviceClient, p: &ParamsCommand, json: bool) -> Result<()> {
    match p {
        ParamsCommand::Get => print(json, &c.get::<ParamsAnswer>("/api/v1/params")?, |v| {
            for (k, x) in &v.values {
                println!("{:<22} {}", safe(k), shown(x));
            }
        }),
        ParamsCommand::Set { param: name, value } => print(
            json,
            &c.send::<_, ParamWriteAnswer>(
                "PUT",
                &format!("/api/v1/params/{}", path_name("parameter", name)?),
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
    }
}

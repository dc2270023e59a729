//! The drive's process data over HTTPS: status for every role, start, stop,
//! quick stop, fault reset and the speed reference for `drive-control`.
//! Safe Torque Off is not here and cannot be: it is a local input
//! (`drive_loop::sto_path`).

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use drivesec_access::Permission;
use drivesec_api::drive::{
    DriveCommand, DriveControlAnswer, DriveControlRequest, DriveState, DriveStatus,
};
use drivesec_audit::Outcome;
use drivesec_drive::machine::{CW_FAULT_RESET, CW_QUICK_STOP, CW_RUN, State as Machine};
use serde_json::json;

use super::{ApiError, Body, Caller, ConnInfo, Device, caller, reply};
use crate::OrPoisoned;

fn link(dev: &Device) -> Result<&Arc<crate::drive_loop::DriveLink>, ApiError> {
    dev.drive
        .get()
        .ok_or_else(|| ApiError::conflict("the drive is not running"))
}

pub(crate) async fn status(
    State(dev): State<Arc<Device>>,
    c: Caller,
) -> Result<Response, ApiError> {
    dev.require(&c, Permission::ReadInfo, "drive.read")?;
    Ok(reply(drive_status(&dev)?))
}

/// The drive's status as the API shows it.
pub(crate) fn drive_status(dev: &Device) -> Result<DriveStatus, ApiError> {
    let l = link(dev)?;
    let s = l
        .status()
        .ok_or_else(|| ApiError::conflict("the drive has not ticked yet"))?;
    let tampered = l.tampered();
    Ok(DriveStatus {
        state: match s.state {
            Machine::NotReady => DriveState::NotReady,
            Machine::Ready => DriveState::Ready,
            Machine::Running => DriveState::Running,
            Machine::Fault => DriveState::Fault,
            Machine::SafeTorqueOff => DriveState::SafeTorqueOff,
        },
        status_word: s.status_word
            | if tampered {
                drivesec_drive::machine::SW_TAMPERED
            } else {
                0
            },
        control_word: l.control_word(),
        speed_rpm: s.speed_rpm,
        torque_pct: s.torque_pct,
        current_a: s.current_a,
        fault_code: s.fault_code,
        sto: s.sto,
        tampered,
        ticks: s.ticks,
    })
}

pub(crate) async fn control(
    State(dev): State<Arc<Device>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Body(req): Body<DriveControlRequest>,
) -> Result<Response, ApiError> {
    let c = caller(&dev, &headers, &conn)?;
    dev.require(&c, Permission::DriveControl, "drive.control")?;
    if req.command.is_none() && req.speed_reference.is_none() {
        return Err(ApiError::bad_request(
            "give command (start, stop, quick-stop, reset) and/or speed_reference",
        ));
    }
    if let Some(r) = req.speed_reference {
        dev.params
            .lock()
            .or_poisoned("params")?
            .check("speed-reference", r)
            .map_err(|e| {
                ApiError::new(
                    axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                    "out-of-range",
                    e.to_string(),
                )
            })?;
    }
    let l = link(&dev)?;
    // The record's room first: a command the trail cannot record is refused.
    let rec = dev.reserve("drive.control")?;
    let words: Vec<u16> = match req.command {
        None => vec![],
        // A start is an edge: run low, then high.
        Some(DriveCommand::Start) => vec![0, CW_RUN],
        Some(DriveCommand::Stop) => vec![0],
        Some(DriveCommand::QuickStop) => vec![CW_QUICK_STOP],
        Some(DriveCommand::Reset) => vec![0, CW_FAULT_RESET, 0],
    };
    l.command(&words, req.speed_reference);
    rec.record(
        Device::event(&c, "drive.control", Outcome::Success)
            .details(json!({"certificate": c.conn.fingerprint, "role": c.role, "command": req.command.map(|c| format!("{c:?}")), "speed_reference": req.speed_reference})),
    )?;
    Ok(reply(DriveControlAnswer { accepted: true }))
}

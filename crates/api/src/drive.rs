//! The drive operations: parameters, process data and control.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::route::{Body, Method, Route, schema_of};

/// A parameter group; each has its own write permission.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum ParamGroup {
    /// Setpoints adjusted in operation (`write-params-operation`).
    Operation,
    /// Speed limits and ramp times (`write-params-limits`).
    Limits,
    /// Motor nameplate data (`write-params-motor`).
    Motor,
}

/// One parameter's definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ParamDefinition {
    /// Its name, e.g. `speed-reference` (the `{name}` of
    /// `PUT /api/v1/params/{name}`).
    pub name: String,
    /// Its group, which decides the permission a write needs.
    pub group: ParamGroup,
    /// Its unit (`rpm`, `%`, `s`, `kW`, `A`; empty for a count).
    pub unit: String,
    /// The smallest value accepted.
    pub min: f64,
    /// The largest value accepted.
    pub max: f64,
    /// Whether only whole numbers are accepted.
    pub integer: bool,
    /// The factory default.
    pub default: f64,
    /// What it is, for people.
    pub description: String,
}

/// The answer of `GET /api/v1/params`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ParamsAnswer {
    /// The current value of each parameter, by name.
    pub values: BTreeMap<String, f64>,
    /// Every parameter's definition, in the drive's order.
    pub definitions: Vec<ParamDefinition>,
}

/// `PUT /api/v1/params/{name}`: the parameter's new value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ParamWriteRequest {
    /// The new value, in the parameter's unit; outside `min`..`max` (or not
    /// whole for an integer parameter) is 422 `out-of-range` and nothing
    /// changes.
    pub value: f64,
}

/// The answer of `PUT /api/v1/params/{name}`: the value written, now in
/// force and stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ParamWriteAnswer {
    /// The parameter.
    pub name: String,
    /// Its new value.
    pub value: f64,
    /// Its value before the write (null if it had none).
    #[schema(required)]
    pub old: Option<f64>,
}

/// The drive's state (docs/modbus.md, the `state` register).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DriveState {
    /// Pre-charging; cannot run yet.
    NotReady,
    /// Ready; waits for a rising edge of the run bit.
    Ready,
    /// Torque on, following the reference.
    Running,
    /// Faulted; torque off until a fault reset.
    Fault,
    /// Safe Torque Off active (the local STO input).
    SafeTorqueOff,
}

/// The answer of `GET /api/v1/drive`: the drive's process data, as the
/// tick thread last published it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DriveStatus {
    /// The state.
    pub state: DriveState,
    /// The status word: bit 0 ready, 1 running, 2 fault, 3 STO, 4 at
    /// reference, 5 tampered (docs/modbus.md).
    pub status_word: u16,
    /// The control word last written (bit 0 run, 1 quick stop, 7 fault
    /// reset).
    pub control_word: u16,
    /// The actual speed, rpm.
    pub speed_rpm: f64,
    /// The torque, percent of rated (0 when torque is off).
    pub torque_pct: f64,
    /// The motor current, A (0 when torque is off).
    pub current_a: f64,
    /// The active fault code (0: none).
    pub fault_code: u16,
    /// Whether the Safe Torque Off input is active.
    pub sto: bool,
    /// Whether the device's tamper response has run.
    pub tampered: bool,
    /// Ticks of the drive since the device started.
    pub ticks: u64,
}

/// A command to the drive's state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DriveCommand {
    /// Start: a rising edge of the run bit.
    Start,
    /// Stop along the deceleration ramp.
    Stop,
    /// Quick stop: ramp to zero and stay stopped.
    QuickStop,
    /// Reset a fault (a rising edge of the fault-reset bit).
    Reset,
}

/// `PUT /api/v1/drive/control`: a command, a new speed reference, or both
/// (at least one).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DriveControlRequest {
    /// The command to post.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<DriveCommand>,
    /// The runtime speed reference, rpm; range-checked like the
    /// `speed-reference` parameter (422 `out-of-range`). Not stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_reference: Option<f64>,
}

/// The answer of `PUT /api/v1/drive/control`: the command was handed to the
/// drive's tick thread (`GET /api/v1/drive` shows its effect).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DriveControlAnswer {
    /// Always true.
    pub accepted: bool,
}

/// The drive operations.
pub(crate) fn routes() -> Vec<Route> {
    vec![
        Route::new(
            Method::Get,
            "/api/v1/params",
            "Drive parameter values and definitions",
            Body::Json(schema_of::<ParamsAnswer>),
        )
        .tag("drive")
        .permission("read-params"),
        Route::new(
            Method::Put,
            "/api/v1/params/{name}",
            "Write one parameter (permission per group: write-params-operation, write-params-limits, write-params-motor); 422 when out of range, nothing changed",
            Body::Json(schema_of::<ParamWriteAnswer>),
        )
        .tag("drive")
        .path_param("name")
        .request(Body::Json(schema_of::<ParamWriteRequest>))
        .error(404)
        .error(422),
        Route::new(
            Method::Get,
            "/api/v1/drive",
            "The drive's process data: state, status and control words, speed, torque, current, fault code, STO input (docs/modbus.md)",
            Body::Json(schema_of::<DriveStatus>),
        )
        .tag("drive")
        .permission("read-info"),
        Route::new(
            Method::Put,
            "/api/v1/drive/control",
            "Start (run edge), stop, quick-stop or reset the drive, and/or set the runtime speed reference (range-checked like the speed-reference parameter; 422 when out of range). Safe Torque Off cannot be set or cleared here: it is a local input",
            Body::Json(schema_of::<DriveControlAnswer>),
        )
        .tag("drive")
        .permission("drive-control")
        .request(Body::Json(schema_of::<DriveControlRequest>))
        .error(422),
    ]
}

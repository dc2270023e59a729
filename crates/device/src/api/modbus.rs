//! The Modbus/TCP Security rights table over HTTPS: read with
//! `read-security-settings`, replaced as a whole with
//! `write-security-settings` (checked first; a bad table changes nothing).

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use drivesec_access::Permission;
use drivesec_audit::Outcome;
use drivesec_modbus::Rights;
use serde_json::json;

use super::{ApiError, Body, Caller, ConnInfo, Device, ok};

pub(crate) async fn get_rights(
    State(dev): State<Arc<Device>>,
    c: Caller,
) -> Result<Response, ApiError> {
    dev.require(&c, Permission::ReadSecuritySettings, "modbus.rights.read")?;
    dev.commissioned()?;
    let r = dev.modbus_rights();
    Ok(ok(
        serde_json::to_value(&*r).map_err(|e| ApiError::internal(e.to_string()))?
    ))
}

pub(crate) async fn set_rights(
    State(dev): State<Arc<Device>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Body(rights): Body<Rights>,
) -> Result<Response, ApiError> {
    let c = dev.caller(&headers, &conn)?;
    dev.require(&c, Permission::WriteSecuritySettings, "modbus.rights.write")?;
    dev.commissioned()?;
    let old = dev.modbus_rights();
    let rec = dev.reserve("modbus.rights.write")?;
    if let Err(e) = dev.set_modbus_rights(rights.clone()) {
        rec.record(
            Device::event(&c, "modbus.rights.write", Outcome::Failure).details(
                json!({"certificate": c.conn.fingerprint, "role": c.role, "reason": e.message()}),
            ),
        )?;
        return Err(e);
    }
    rec.record(
        Device::event(&c, "modbus.rights.write", Outcome::Success).details(
            json!({"certificate": c.conn.fingerprint, "role": c.role, "old": &*old, "new": rights}),
        ),
    )?;
    Ok(ok(json!({"roles": rights.roles.len()})))
}

//! Provisioning over HTTPS: the device's settings in profile form, and a
//! profile applied in one transaction (docs/provisioning.md).

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use drivesec_access::Permission;
use drivesec_audit::Outcome;
use serde_json::json;

use super::{ApiError, Body, ConnInfo, Device, ok};
use crate::provision::ProvisionRequest;

pub(crate) async fn get_profile(
    State(dev): State<Arc<Device>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let c = dev.caller(&headers, &conn)?;
    dev.require(&c, Permission::ReadSecuritySettings, "profile.read")?;
    dev.commissioned()?;
    Ok(ok(json!({
        "applied": dev.applied_profile()?,
        "current": dev.current_profile()?,
    })))
}

pub(crate) async fn put_profile(
    State(dev): State<Arc<Device>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Body(req): Body<ProvisionRequest>,
) -> Result<Response, ApiError> {
    let c = dev.caller(&headers, &conn)?;
    dev.require(&c, Permission::WriteSecuritySettings, "device.provision")?;
    dev.require(&c, Permission::ManageUsers, "device.provision")?;
    dev.commissioned()?;
    let Ok(_gate) = dev.firmware_gate.try_lock() else {
        return Err(ApiError::conflict(
            "another firmware or provisioning operation is in progress",
        ));
    };
    let zone = req.profile.zone.clone();
    match tokio::task::block_in_place(|| dev.provision(&c, req)) {
        Ok(changed) => Ok(ok(json!({"zone": zone, "changed": changed}))),
        Err(e) => {
            let _ = dev.audit(
                Device::event(&c, "device.provision", Outcome::Failure)
                    .details(json!({"zone": zone, "reason": e.message()})),
            );
            Err(e)
        }
    }
}

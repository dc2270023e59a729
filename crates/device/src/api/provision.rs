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

use super::{ApiError, Body, Caller, ConnInfo, Device, ok};
use crate::provision::ProvisionRequest;

pub(crate) async fn get_profile(
    State(dev): State<Arc<Device>>,
    c: Caller,
) -> Result<Response, ApiError> {
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

/// LDevID renewal, step 1: the device makes a new key in its keystore and
/// answers a CSR for it.
pub(crate) async fn renew_begin(
    State(dev): State<Arc<Device>>,
    c: Caller,
) -> Result<Response, ApiError> {
    dev.require(&c, Permission::ManageTrust, "identity.renew")?;
    dev.commissioned()?;
    let rec = dev.reserve("identity.renew-begin")?;
    // The new key is made and the CSR signed in the keystore.
    let (next, csr) = crate::blocking(|| {
        let st = dev
            .state
            .read()
            .map_err(|_| ApiError::internal("state lock poisoned"))?;
        st.renewal_csr().map_err(ApiError::from)
    })?;
    *dev.renewal
        .lock()
        .map_err(|_| ApiError::internal("lock poisoned"))? = Some(next.clone());
    rec.record(
        Device::event(&c, "identity.renew-begin", Outcome::Success)
            .details(json!({"key": next.as_str()})),
    )?;
    Ok(ok(json!({"csr_pem": csr})))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RenewComplete {
    chain_pem: String,
}

/// LDevID renewal, step 2: the new certificate is installed (checked to be
/// for the new key and to chain to the owner), TLS switches to it, the old
/// key is destroyed.
pub(crate) async fn renew_complete(
    State(dev): State<Arc<Device>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Body(req): Body<RenewComplete>,
) -> Result<Response, ApiError> {
    let c = dev.caller(&headers, &conn)?;
    dev.require(&c, Permission::ManageTrust, "identity.renew")?;
    let next = dev
        .renewal
        .lock()
        .map_err(|_| ApiError::internal("lock poisoned"))?
        .clone()
        .ok_or_else(|| {
            ApiError::conflict("no renewal in progress: POST /api/v1/identity/renew first")
        })?;
    let rec = dev.reserve("identity.renewed")?;
    let st = {
        let cur = dev
            .state
            .read()
            .map_err(|_| ApiError::internal("state lock poisoned"))?;
        cur.install_renewed(&next, &req.chain_pem)
    };
    let st = match st {
        Ok(s) => s,
        Err(e) => {
            let e: ApiError = e.into();
            rec.record(
                Device::event(&c, "identity.renewed", Outcome::Failure)
                    .details(json!({"reason": e.message()})),
            )?;
            return Err(e);
        }
    };
    let serial = st
        .ldevid_chain
        .as_ref()
        .and_then(|c| c.first())
        .and_then(|c| drivesec_pki::inspect::summarize(c).ok())
        .map(|s| (s.serial, s.not_after));
    dev.adopt_state(st)?;
    *dev.renewal
        .lock()
        .map_err(|_| ApiError::internal("lock poisoned"))? = None;
    rec.record(
        Device::event(&c, "identity.renewed", Outcome::Success)
            .details(json!({"serial": serial.as_ref().map(|s| &s.0), "not_after": serial.as_ref().map(|s| &s.1)}))
            .essential(),
    )?;
    Ok(ok(
        json!({"serial": serial.as_ref().map(|s| &s.0), "not_after": serial.map(|s| s.1)}),
    ))
}

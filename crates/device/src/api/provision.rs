//! Provisioning over HTTPS: the device's settings in profile form, and a
//! profile applied in one transaction (docs/provisioning.md); LDevID
//! renewal.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use drivesec_access::Permission;
use drivesec_api::identity::{InstallLdevid, LdevidInstalled, RenewalCsr};
use drivesec_api::provisioning::{ApplyProfile, ProfileApplied, ProfileState};
use drivesec_audit::Outcome;
use serde_json::json;

use super::{ApiError, Body, Caller, ConnInfo, Device, reply, settings_change};
use crate::{DeviceError, OrPoisoned};

pub(crate) async fn get_profile(
    State(dev): State<Arc<Device>>,
    c: Caller,
) -> Result<Response, ApiError> {
    dev.require(&c, Permission::ReadSecuritySettings, "profile.read")?;
    dev.commissioned()?;
    Ok(reply(ProfileState {
        applied: dev.applied_profile()?,
        current: dev.current_profile()?,
    }))
}

pub(crate) async fn put_profile(
    State(dev): State<Arc<Device>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Body(req): Body<ApplyProfile>,
) -> Result<Response, ApiError> {
    // A malformed body is answered before a missing session.
    crate::device::check_counts(&req.profile)?;
    let (_settings, c) = settings_change(&dev, &headers, &conn).await?;
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
        Ok(changed) => Ok(reply(ProfileApplied { zone, changed })),
        Err(e) => {
            let e = ApiError::from(e);
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
    // Not beside a factory reset (which destroys the LDevID keys): one
    // that ran while this waited left the device in factory state.
    let _settings = dev.reset_gate.read().await;
    dev.commissioned()?;
    let rec = dev.reserve("identity.renew-begin")?;
    // The new key is made and the CSR signed in the keystore.
    let (next, csr) = crate::blocking(|| {
        let st = dev.state.read().or_poisoned("state")?;
        st.renewal_csr()
            .map_err(|e| ApiError::from(DeviceError::from(e)))
    })?;
    *dev.renewal.lock().or_poisoned("renewal")? = Some(next.clone());
    rec.record(
        Device::event(&c, "identity.renew-begin", Outcome::Success)
            .details(json!({"key": next.as_str()})),
    )?;
    Ok(reply(RenewalCsr { csr_pem: csr }))
}

/// LDevID renewal, step 2: the new certificate is installed (checked to be
/// for the new key and to chain to the owner), TLS switches to it, the old
/// key is destroyed.
pub(crate) async fn renew_complete(
    State(dev): State<Arc<Device>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Body(req): Body<InstallLdevid>,
) -> Result<Response, ApiError> {
    let (_settings, c) = settings_change(&dev, &headers, &conn).await?;
    dev.require(&c, Permission::ManageTrust, "identity.renew")?;
    let next = dev
        .renewal
        .lock()
        .or_poisoned("renewal")?
        .clone()
        .ok_or_else(|| {
            ApiError::conflict("no renewal in progress: POST /api/v1/identity/renew first")
        })?;
    let rec = dev.reserve("identity.renewed")?;
    let st = {
        let cur = dev.state.read().or_poisoned("state")?;
        cur.install_renewed(&next, &req.chain_pem)
            .map_err(DeviceError::from)
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
    *dev.renewal.lock().or_poisoned("renewal")? = None;
    rec.record(
        Device::event(&c, "identity.renewed", Outcome::Success)
            .details(json!({"serial": serial.as_ref().map(|s| &s.0), "not_after": serial.as_ref().map(|s| &s.1)}))
            .essential(),
    )?;
    let (serial, not_after) = serial.unzip();
    Ok(reply(LdevidInstalled { serial, not_after }))
}

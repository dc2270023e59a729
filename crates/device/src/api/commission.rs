//! Taking ownership of a factory-state device.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::response::Response;
use drivesec_access::Accounts;
use drivesec_api::commissioning as api;
use drivesec_audit::Outcome;
use serde_json::json;

use super::{ApiError, Body, ConnInfo, Device, reply};
use crate::device::Pending;
use crate::{DeviceError, OrPoisoned};

pub(crate) async fn begin(
    State(dev): State<Arc<Device>>,
    Extension(conn): Extension<ConnInfo>,
    Body(req): Body<api::CommissionBeginRequest>,
) -> Result<Response, ApiError> {
    dev.in_factory_state()?;
    dev.check_credential(&conn, req.factory_credential).await?;
    let rec = dev.reserve("commission.begin")?;
    let csr = {
        let st = dev.state.read().or_poisoned("state")?;
        st.ldevid_csr(&req.device_name).map_err(DeviceError::from)?
    };
    *dev.pending.lock().or_poisoned("pending")? = Some(Pending {
        device_name: req.device_name.clone(),
        fingerprint: conn.fingerprint.clone(),
    });
    rec.record(
        Device::cert_event(&conn, "commission.begin", Outcome::Success)
            .target(req.device_name.clone())
            .details(json!({"certificate": conn.fingerprint}))
            .essential(),
    )?;
    Ok(reply(api::CommissionBeginAnswer {
        csr_pem: csr,
        device_name: req.device_name,
    }))
}

pub(crate) async fn complete(
    State(dev): State<Arc<Device>>,
    Extension(conn): Extension<ConnInfo>,
    Body(req): Body<api::CommissionCompleteRequest>,
) -> Result<Response, ApiError> {
    dev.in_factory_state()?;
    let pending = dev
        .pending
        .lock()
        .or_poisoned("pending")?
        .clone()
        .ok_or_else(|| ApiError::conflict("call commission/begin first"))?;
    if pending.fingerprint != conn.fingerprint {
        return Err(ApiError::conflict(
            "commissioning must be completed over the client certificate that began it",
        ));
    }
    dev.check_credential(&conn, req.factory_credential.clone())
        .await?;
    let config = dev.config.read().or_poisoned("config")?.clone();
    let policy = config.access.clone();
    let d2 = dev.clone();
    let name = pending.device_name.clone();
    let admin = req.admin_username.clone();
    // Room for the outcome's record before the commit point.
    let rec = dev.reserve("device.commissioned")?;
    let new_state = tokio::task::spawn_blocking(move || {
        let st = d2.state.read().or_poisoned("state")?;
        st.install_ownership_with(
            &name,
            &req.ldevid_chain_pem,
            &req.trust_anchors_pem,
            req.crl_pem.as_deref(),
            // The TLS configurations of the commissioned state are built
            // before anything is written: one that cannot be built is
            // refused while the device is still in factory state.
            |owned| -> crate::Result<()> {
                crate::tls::server_config(owned, &config.tls)?;
                crate::tls::modbus_config(owned, &config.modbus)?;
                Ok(())
            },
            |path| -> crate::Result<()> {
                let mut acc = Accounts::create(path, policy.clone())
                    .map_err(|e| DeviceError::Invalid(e.to_string()))?;
                acc.add_user(
                    &req.admin_username,
                    "security-admin",
                    &req.admin_password,
                    time::OffsetDateTime::now_utc(),
                )
                .map_err(|e| DeviceError::Invalid(format!("first security administrator: {e}")))?;
                Ok(())
            },
        )
        .map_err(ApiError::from)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let new_state = match new_state {
        Ok(s) => s,
        Err(e) => {
            rec.record(
                Device::cert_event(&conn, "commission.complete", Outcome::Failure)
                    .target(pending.device_name.clone())
                    .details(json!({"certificate": conn.fingerprint, "reason": e.message()}))
                    .essential(),
            )?;
            return Err(e);
        }
    };
    dev.adopt_state(new_state)?;
    *dev.pending.lock().or_poisoned("pending")? = None;
    rec.record(
        Device::cert_event(&conn, "device.commissioned", Outcome::Success)
            .target(pending.device_name.clone())
            .details(json!({"certificate": conn.fingerprint, "security_admin": admin}))
            .essential(),
    )?;
    Ok(reply(api::CommissionCompleteAnswer {
        device_name: pending.device_name,
        state: api::CommissionedState::Commissioned,
    }))
}

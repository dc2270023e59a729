//! Taking ownership of a factory-state device.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use drivesec_access::Accounts;
use drivesec_audit::Outcome;
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, Body, ConnInfo, Device, Pending, ok};
use crate::state::LifeCycle;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BeginReq {
    factory_credential: String,
    device_name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CompleteReq {
    factory_credential: String,
    ldevid_chain_pem: String,
    trust_anchors_pem: String,
    #[serde(default)]
    crl_pem: Option<String>,
    admin_username: String,
    admin_password: String,
}

impl Device {
    fn in_factory_state(&self) -> Result<(), ApiError> {
        let st = self
            .state
            .read()
            .map_err(|_| ApiError::internal("state lock poisoned"))?;
        if st.file.state != LifeCycle::Factory {
            return Err(ApiError::conflict("the device is already commissioned"));
        }
        Ok(())
    }

    /// Checks the factory credential with a bounded number of failures.
    async fn check_credential(
        self: &Arc<Self>,
        conn: &ConnInfo,
        candidate: String,
    ) -> Result<(), ApiError> {
        let (max, lock) = {
            let c = self
                .config
                .read()
                .map_err(|_| ApiError::internal("config lock poisoned"))?;
            (
                c.api.factory_max_failures,
                Duration::from_secs(c.api.factory_lockout_secs),
            )
        };
        {
            let mut f = self
                .factory_failures
                .lock()
                .map_err(|_| ApiError::internal("lock poisoned"))?;
            if let Some(since) = f.1 {
                if since.elapsed() < lock {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "locked",
                        "commissioning is locked after too many wrong factory credentials; try later",
                    ));
                }
                *f = (0, None);
            }
        }
        let _permit = self.hash_permit(Duration::from_secs(5)).await?;
        let dev = self.clone();
        let good = tokio::task::spawn_blocking(move || {
            dev.state
                .read()
                .map_err(|_| ApiError::internal("state lock poisoned"))?
                .check_factory_credential(&candidate)
                .map_err(ApiError::from)
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
        if good {
            if let Ok(mut f) = self.factory_failures.lock() {
                *f = (0, None);
            }
            return Ok(());
        }
        let locked = {
            let mut f = self
                .factory_failures
                .lock()
                .map_err(|_| ApiError::internal("lock poisoned"))?;
            f.0 += 1;
            if f.0 >= max {
                f.1 = Some(Instant::now());
            }
            f.1.is_some()
        };
        self.audit(
            Device::cert_event(conn, "commission.credential", Outcome::Failure)
                .details(json!({"certificate": conn.fingerprint, "locked": locked}))
                .essential(),
        )?;
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid-credentials",
            "invalid factory credential",
        ))
    }
}

pub(crate) async fn begin(
    State(dev): State<Arc<Device>>,
    Extension(conn): Extension<ConnInfo>,
    Body(req): Body<BeginReq>,
) -> Result<Response, ApiError> {
    dev.in_factory_state()?;
    dev.check_credential(&conn, req.factory_credential).await?;
    let csr = {
        let st = dev
            .state
            .read()
            .map_err(|_| ApiError::internal("state lock poisoned"))?;
        st.ldevid_csr(&req.device_name)?
    };
    *dev.pending
        .lock()
        .map_err(|_| ApiError::internal("lock poisoned"))? = Some(Pending {
        device_name: req.device_name.clone(),
        fingerprint: conn.fingerprint.clone(),
    });
    dev.audit(
        Device::cert_event(&conn, "commission.begin", Outcome::Success)
            .target(req.device_name.clone())
            .details(json!({"certificate": conn.fingerprint}))
            .essential(),
    )?;
    Ok(ok(json!({"csr_pem": csr, "device_name": req.device_name})))
}

pub(crate) async fn complete(
    State(dev): State<Arc<Device>>,
    Extension(conn): Extension<ConnInfo>,
    Body(req): Body<CompleteReq>,
) -> Result<Response, ApiError> {
    dev.in_factory_state()?;
    let pending = dev
        .pending
        .lock()
        .map_err(|_| ApiError::internal("lock poisoned"))?
        .clone()
        .ok_or_else(|| ApiError::conflict("call commission/begin first"))?;
    if pending.fingerprint != conn.fingerprint {
        return Err(ApiError::conflict(
            "commissioning must be completed over the client certificate that began it",
        ));
    }
    dev.check_credential(&conn, req.factory_credential.clone())
        .await?;
    let policy = dev
        .config
        .read()
        .map_err(|_| ApiError::internal("config lock poisoned"))?
        .access
        .clone();
    let d2 = dev.clone();
    let name = pending.device_name.clone();
    let admin = req.admin_username.clone();
    let new_state = tokio::task::spawn_blocking(move || {
        let st = d2
            .state
            .read()
            .map_err(|_| ApiError::internal("state lock poisoned"))?;
        st.install_ownership(
            &name,
            &req.ldevid_chain_pem,
            &req.trust_anchors_pem,
            req.crl_pem.as_deref(),
            |path| {
                let mut acc = Accounts::create(path, policy.clone())
                    .map_err(|e| crate::DeviceError::Invalid(e.to_string()))?;
                acc.add_user(
                    &req.admin_username,
                    "security-admin",
                    &req.admin_password,
                    time::OffsetDateTime::now_utc(),
                )
                .map_err(|e| {
                    crate::DeviceError::Invalid(format!("first security administrator: {e}"))
                })?;
                Ok(())
            },
        )
        .map_err(ApiError::from)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    dev.adopt_state(new_state)?;
    *dev.pending
        .lock()
        .map_err(|_| ApiError::internal("lock poisoned"))? = None;
    dev.audit(
        Device::cert_event(&conn, "device.commissioned", Outcome::Success)
            .target(pending.device_name.clone())
            .details(json!({"certificate": conn.fingerprint, "security_admin": admin}))
            .essential(),
    )?;
    Ok(ok(
        json!({"state": "commissioned", "device_name": pending.device_name}),
    ))
}

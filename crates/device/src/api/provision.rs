//! Provisioning over HTTPS: the device's settings in profile form, and a
//! profile applied in one transaction (docs/provisioning.md); LDevID
//! renewal.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use drivesec_access::Permission;
use drivesec_api::identity::{InstallLdevid, LdevidInstalled, RenewalCsr};
use drivesec_api::provisioning::{self as wire, ApplyProfile, ProfileApplied, ProfileState};
use drivesec_audit::Outcome;
use drivesec_iec62443::profile::{self, Profile};
use serde_json::json;

use super::{ApiError, Body, Caller, ConnInfo, Device, reply};
use crate::provision::ProvisionRequest;

/// The wire form of a profile (the same JSON as the profile's own type).
fn profile_to_wire(p: Profile) -> wire::Profile {
    wire::Profile {
        format: p.format,
        zone: p.zone,
        sl_t: p.sl_t,
        allow_tls12: p.allow_tls12,
        password: wire::ProfilePassword {
            min_length: p.password.min_length as u64,
            min_classes: p.password.min_classes,
            history: p.password.history as u64,
            max_age_days: p.password.max_age_days,
        },
        lockout: wire::ProfileLockout {
            max_failures: p.lockout.max_failures,
            lockout_secs: p.lockout.lockout_secs,
        },
        session: wire::ProfileSession {
            idle_secs: p.session.idle_secs,
            absolute_secs: p.session.absolute_secs,
            max_per_user: p.session.max_per_user as u64,
        },
        banner: p.banner,
        audit_forwarding: p.audit_forwarding,
        ldevid_days: p.ldevid_days,
        client_days: p.client_days,
        modbus: wire::ProfileModbus {
            enabled: p.modbus.enabled,
            allow_tls12: p.modbus.allow_tls12,
            plain: p.modbus.plain,
            rights: p
                .modbus
                .rights
                .into_iter()
                .map(|g| wire::ProfileGrant {
                    role: g.role,
                    functions: g.functions,
                    start: g.start,
                    end: g.end,
                })
                .collect(),
        },
        accounts: p
            .accounts
            .into_iter()
            .map(|a| wire::ProfileAccount {
                username: a.username,
                role: a.role,
            })
            .collect(),
    }
}

/// A profile from its wire form. A count the device cannot hold is a
/// malformed body (422), as when the profile was parsed straight into its
/// own type.
fn profile_from_wire(p: wire::Profile) -> Result<Profile, ApiError> {
    let size = |field: &str, v: u64| {
        usize::try_from(v).map_err(|_| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad-json",
                format!("profile.{field}: {v} is too large"),
            )
        })
    };
    Ok(Profile {
        format: p.format,
        zone: p.zone,
        sl_t: p.sl_t,
        allow_tls12: p.allow_tls12,
        password: profile::Password {
            min_length: size("password.min_length", p.password.min_length)?,
            min_classes: p.password.min_classes,
            history: size("password.history", p.password.history)?,
            max_age_days: p.password.max_age_days,
        },
        lockout: profile::Lockout {
            max_failures: p.lockout.max_failures,
            lockout_secs: p.lockout.lockout_secs,
        },
        session: profile::Session {
            idle_secs: p.session.idle_secs,
            absolute_secs: p.session.absolute_secs,
            max_per_user: size("session.max_per_user", p.session.max_per_user)?,
        },
        banner: p.banner,
        audit_forwarding: p.audit_forwarding,
        ldevid_days: p.ldevid_days,
        client_days: p.client_days,
        modbus: profile::Modbus {
            enabled: p.modbus.enabled,
            allow_tls12: p.modbus.allow_tls12,
            plain: p.modbus.plain,
            rights: p
                .modbus
                .rights
                .into_iter()
                .map(|g| profile::Grant {
                    role: g.role,
                    functions: g.functions,
                    start: g.start,
                    end: g.end,
                })
                .collect(),
        },
        accounts: p
            .accounts
            .into_iter()
            .map(|a| profile::Account {
                username: a.username,
                role: a.role,
            })
            .collect(),
    })
}

pub(crate) async fn get_profile(
    State(dev): State<Arc<Device>>,
    c: Caller,
) -> Result<Response, ApiError> {
    dev.require(&c, Permission::ReadSecuritySettings, "profile.read")?;
    dev.commissioned()?;
    Ok(reply(ProfileState {
        applied: dev.applied_profile()?.map(profile_to_wire),
        current: profile_to_wire(dev.current_profile()?),
    }))
}

pub(crate) async fn put_profile(
    State(dev): State<Arc<Device>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Body(req): Body<ApplyProfile>,
) -> Result<Response, ApiError> {
    // A malformed body is answered before a missing session.
    let req = ProvisionRequest {
        profile: profile_from_wire(req.profile)?,
        initial_passwords: req.initial_passwords,
    };
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
        Ok(changed) => Ok(reply(ProfileApplied { zone, changed })),
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
    let (serial, not_after) = serial.unzip();
    Ok(reply(LdevidInstalled { serial, not_after }))
}

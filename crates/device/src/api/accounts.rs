//! Login, sessions, users and roles.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use drivesec_access::{AccessError, Accounts, Permission};
use drivesec_audit::Outcome;
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, Body, Caller, ConnInfo, Device, PathParam, ok};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginReq {
    username: String,
    password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewUser {
    username: String,
    role: String,
    password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RoleReq {
    role: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PasswordReq {
    password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OwnPasswordReq {
    old_password: String,
    new_password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewRole {
    name: String,
    permissions: Vec<String>,
}

impl Device {
    /// Runs `f` on the accounts store (commissioned devices only).
    pub(crate) fn with_accounts<T>(
        &self,
        f: impl FnOnce(&mut Accounts) -> Result<T, AccessError>,
    ) -> Result<T, ApiError> {
        let mut g = self
            .accounts
            .lock()
            .map_err(|_| ApiError::internal("accounts lock poisoned"))?;
        let acc = g.as_mut().ok_or_else(|| {
            ApiError::conflict("the device is in factory state: only commissioning is available")
        })?;
        Ok(f(acc)?)
    }

    /// Audits a management action and maps its result.
    fn managed<T>(
        &self,
        c: &Caller,
        action: &str,
        target: &str,
        r: Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let outcome = if r.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        };
        let mut ev = Device::event(c, action, outcome).target(target.to_string());
        if let Err(e) = &r {
            ev = ev.details(json!({"certificate": c.conn.fingerprint, "role": c.role, "error": format!("{e:?}")}));
        }
        self.audit(ev)?;
        r
    }
}

pub(crate) async fn login(
    State(dev): State<Arc<Device>>,
    Extension(conn): Extension<ConnInfo>,
    Body(req): Body<LoginReq>,
) -> Result<Response, ApiError> {
    dev.commissioned()?;
    if let Err((e, first)) = dev.login_rate(&conn.fingerprint) {
        if first {
            dev.audit(
                Device::cert_event(&conn, "auth.login.rate-limited", Outcome::Denied)
                    .details(json!({"certificate": conn.fingerprint}))
                    .essential(),
            )?;
        }
        return Err(e);
    }
    // Bounded hashing: a flood waits briefly, then is told to come back.
    let _permit = dev.hash_permit(Duration::from_secs(2)).await?;
    let d2 = dev.clone();
    let user = req.username.clone();
    let result = tokio::task::spawn_blocking(move || {
        d2.with_accounts(|a| {
            a.authenticate(
                &req.username,
                &req.password,
                time::OffsetDateTime::now_utc(),
            )
        })
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let base = |outcome| {
        Device::cert_event(&conn, "auth.login", outcome)
            .target(user.clone())
            .details(json!({"certificate": conn.fingerprint}))
    };
    let auth = match result {
        Ok(a) => a,
        Err(e) => {
            let locked = e.code == "locked";
            dev.audit(
                base(Outcome::Failure)
                    .details(json!({"certificate": conn.fingerprint, "locked": locked})),
            )?;
            if locked {
                dev.audit(
                    Device::cert_event(&conn, "auth.lockout", Outcome::Denied)
                        .target(user.clone())
                        .essential(),
                )?;
            }
            return Err(e);
        }
    };
    let session = dev
        .sessions
        .lock()
        .map_err(|_| ApiError::internal("session lock poisoned"))?
        .create(&auth, &conn.fingerprint, Instant::now());
    let session = match session {
        Ok(s) => s,
        Err(e) => {
            dev.audit(
                base(Outcome::Denied)
                    .details(json!({"certificate": conn.fingerprint, "reason": e.to_string()})),
            )?;
            return Err(e.into());
        }
    };
    dev.audit(
        drivesec_audit::Event::new(
            drivesec_audit::Actor::User(auth.username.clone()),
            "auth.login",
        )
        .source(conn.addr.to_string())
        .details(
            json!({"certificate": conn.fingerprint, "role": auth.role, "session": session.handle}),
        ),
    )?;
    let banner = dev
        .config
        .read()
        .map_err(|_| ApiError::internal("config lock poisoned"))?
        .access
        .banner
        .clone();
    Ok(ok(json!({
        "session": session.id, "handle": session.handle, "username": auth.username, "role": auth.role,
        "permissions": auth.permissions, "must_change_password": auth.must_change_password, "banner": banner,
    })))
}

pub(crate) async fn logout(
    State(dev): State<Arc<Device>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let c = dev.caller(&headers, &conn)?;
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    dev.sessions
        .lock()
        .map_err(|_| ApiError::internal("session lock poisoned"))?
        .logout(token);
    dev.audit(Device::event(&c, "auth.logout", Outcome::Success).target(c.session_handle.clone()))?;
    Ok(ok(json!({"logged_out": true})))
}

pub(crate) async fn me(c: Caller) -> Result<Response, ApiError> {
    Ok(ok(
        json!({"username": c.username, "role": c.role, "permissions": c.permissions, "session": c.session_handle}),
    ))
}

pub(crate) async fn change_own_password(
    State(dev): State<Arc<Device>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Body(req): Body<OwnPasswordReq>,
) -> Result<Response, ApiError> {
    let c = dev.caller(&headers, &conn)?;
    let now = time::OffsetDateTime::now_utc();
    let r = dev.with_accounts(|a| {
        a.authenticate(&c.username, &req.old_password, now)?;
        a.set_password(&c.username, &req.new_password, now)
    });
    dev.managed(&c, "user.password.change", &c.username, r)?;
    Ok(ok(json!({"changed": true})))
}

pub(crate) async fn list_users(
    State(dev): State<Arc<Device>>,
    c: Caller,
) -> Result<Response, ApiError> {
    dev.require(&c, Permission::ReadUsers, "user.list")?;
    let users = dev.with_accounts(|a| Ok(a.users()))?;
    Ok(ok(json!({"users": users})))
}

pub(crate) async fn add_user(
    State(dev): State<Arc<Device>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Body(req): Body<NewUser>,
) -> Result<Response, ApiError> {
    let c = dev.caller(&headers, &conn)?;
    dev.require(&c, Permission::ManageUsers, "user.add")?;
    let r = dev.with_accounts(|a| {
        a.add_user(
            &req.username,
            &req.role,
            &req.password,
            time::OffsetDateTime::now_utc(),
        )
    });
    dev.managed(&c, "user.add", &req.username, r)?;
    Ok(ok(json!({"username": req.username, "role": req.role})))
}

pub(crate) async fn remove_user(
    State(dev): State<Arc<Device>>,
    PathParam(name): PathParam,
    c: Caller,
) -> Result<Response, ApiError> {
    dev.require(&c, Permission::ManageUsers, "user.remove")?;
    if name == c.username {
        return Err(ApiError::bad_request("you cannot remove your own account"));
    }
    let r = dev.with_accounts(|a| a.remove_user(&name));
    dev.managed(&c, "user.remove", &name, r)?;
    let ended = dev
        .sessions
        .lock()
        .map_err(|_| ApiError::internal("session lock poisoned"))?
        .terminate_user(&name);
    Ok(ok(json!({"removed": name, "sessions_ended": ended})))
}

pub(crate) async fn set_role(
    State(dev): State<Arc<Device>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    PathParam(name): PathParam,
    Body(req): Body<RoleReq>,
) -> Result<Response, ApiError> {
    let c = dev.caller(&headers, &conn)?;
    dev.require(&c, Permission::ManageUsers, "user.role.change")?;
    let r = dev.with_accounts(|a| {
        a.set_role(&name, &req.role)?;
        a.permissions_of(&name)
            .ok_or_else(|| AccessError::UnknownUser(name.clone()))
    });
    let perms = dev.managed(&c, "user.role.change", &name, r)?;
    dev.sessions
        .lock()
        .map_err(|_| ApiError::internal("session lock poisoned"))?
        .refresh_permissions(&name, &req.role, perms);
    Ok(ok(json!({"username": name, "role": req.role})))
}

pub(crate) async fn unlock(
    State(dev): State<Arc<Device>>,
    PathParam(name): PathParam,
    c: Caller,
) -> Result<Response, ApiError> {
    dev.require(&c, Permission::ManageUsers, "user.unlock")?;
    let r = dev.with_accounts(|a| a.unlock(&name));
    dev.managed(&c, "user.unlock", &name, r)?;
    Ok(ok(json!({"unlocked": name})))
}

pub(crate) async fn reset_password(
    State(dev): State<Arc<Device>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    PathParam(name): PathParam,
    Body(req): Body<PasswordReq>,
) -> Result<Response, ApiError> {
    let c = dev.caller(&headers, &conn)?;
    dev.require(&c, Permission::ManageUsers, "user.password.reset")?;
    let r = dev
        .with_accounts(|a| a.set_password(&name, &req.password, time::OffsetDateTime::now_utc()));
    dev.managed(&c, "user.password.reset", &name, r)?;
    Ok(ok(json!({"reset": name})))
}

pub(crate) async fn list_roles(
    State(dev): State<Arc<Device>>,
    c: Caller,
) -> Result<Response, ApiError> {
    dev.require(&c, Permission::ReadUsers, "role.list")?;
    let roles = dev.with_accounts(|a| Ok(a.roles()))?;
    Ok(ok(json!({"roles": roles})))
}

pub(crate) async fn add_role(
    State(dev): State<Arc<Device>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Body(req): Body<NewRole>,
) -> Result<Response, ApiError> {
    let c = dev.caller(&headers, &conn)?;
    dev.require(&c, Permission::ManageRoles, "role.add")?;
    let mut perms = BTreeSet::new();
    for p in &req.permissions {
        perms.insert(
            p.parse::<Permission>()
                .map_err(|_| ApiError::bad_request(format!("unknown permission '{p}'")))?,
        );
    }
    let r = dev.with_accounts(|a| a.add_role(&req.name, perms.clone()));
    dev.managed(&c, "role.add", &req.name, r)?;
    Ok(ok(json!({"name": req.name, "permissions": perms})))
}

pub(crate) async fn remove_role(
    State(dev): State<Arc<Device>>,
    PathParam(name): PathParam,
    c: Caller,
) -> Result<Response, ApiError> {
    dev.require(&c, Permission::ManageRoles, "role.remove")?;
    let r = dev.with_accounts(|a| a.remove_role(&name));
    dev.managed(&c, "role.remove", &name, r)?;
    Ok(ok(json!({"removed": name})))
}

pub(crate) async fn list_sessions(
    State(dev): State<Arc<Device>>,
    c: Caller,
) -> Result<Response, ApiError> {
    dev.require(&c, Permission::ReadSessions, "session.list")?;
    let list = dev
        .sessions
        .lock()
        .map_err(|_| ApiError::internal("session lock poisoned"))?
        .list(Instant::now());
    Ok(ok(json!({"sessions": list})))
}

pub(crate) async fn terminate_session(
    State(dev): State<Arc<Device>>,
    PathParam(handle): PathParam,
    c: Caller,
) -> Result<Response, ApiError> {
    dev.require(&c, Permission::TerminateSessions, "session.terminate")?;
    let ended = dev
        .sessions
        .lock()
        .map_err(|_| ApiError::internal("session lock poisoned"))?
        .terminate(&handle);
    let r = ended.ok_or_else(|| ApiError::not_found(format!("no session '{handle}'")));
    let info = dev.managed(&c, "session.terminate", &handle, r)?;
    Ok(ok(json!({"terminated": handle, "username": info.username})))
}

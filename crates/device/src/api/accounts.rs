//! Login, sessions, users and roles.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use drivesec_access::{AccessError, Permission, Role, SessionSummary, UserInfo};
use drivesec_api::accounts as api;
use drivesec_api::sessions as sessions_api;
use drivesec_audit::Outcome;
use serde_json::json;

use super::{
    ApiError, Body, Caller, ConnInfo, Device, PathParam, own_password_change, reply,
    session_caller, settings_change,
};
use crate::device::Recorder;
use crate::{DeviceError, OrPoisoned};

/// A permission set as listed on the wire: the names, in the set's order.
fn wire_permissions(set: &BTreeSet<Permission>) -> Vec<String> {
    set.iter().map(|p| p.as_str().to_string()).collect()
}

/// An account as listed on the wire.
fn wire_user(u: UserInfo) -> api::UserSummary {
    api::UserSummary {
        delayed_until: u.delayed_until,
        failed_attempts: u.failed_attempts,
        locked_by_admin_only: u.locked_by_admin_only,
        locked_certificates: u.locked_certificates,
        locked_until: u.locked_until,
        password_changed: u.password_changed,
        password_expired: u.password_expired,
        role: u.role,
        role_since: u.role_since,
        username: u.username,
    }
}

/// A role as listed on the wire.
fn wire_role(r: Role) -> api::RoleSummary {
    api::RoleSummary {
        builtin: r.builtin,
        permissions: wire_permissions(&r.permissions),
        name: r.name,
    }
}

/// A session as listed on the wire.
fn wire_session(s: SessionSummary) -> sessions_api::SessionSummary {
    sessions_api::SessionSummary {
        age_secs: s.age_secs,
        client_fingerprint: s.client_fingerprint,
        handle: s.handle,
        idle_secs: s.idle_secs,
        role: s.role,
        username: s.username,
    }
}

/// An unknown role's refusal (404 `not-found`) names the roles there are,
/// so that a mistyped one (`operater`) is seen as such. Only the refusal
/// of `role` itself: an unknown user (also 404 `not-found`) is answered as
/// it is, naming the user.
fn naming_roles<T>(dev: &Device, role: &str, r: crate::Result<T>) -> Result<T, ApiError> {
    match r {
        Err(DeviceError::Access(AccessError::UnknownRole(unknown))) if unknown == role => {
            let roles = dev.with_accounts(|a| Ok(a.roles()))?;
            let known: Vec<&str> = roles.iter().map(|r| r.name.as_str()).collect();
            Err(ApiError::not_found(format!(
                "no such role: {role} (the roles are: {})",
                known.join(", ")
            )))
        }
        r => r.map_err(ApiError::from),
    }
}

/// Records an account action's outcome in the room `rec` held for it
/// (taken before the action, so an action the trail cannot record was
/// refused before it ran).
fn managed<T, E: Into<ApiError>>(
    rec: Recorder,
    c: &Caller,
    action: &str,
    target: &str,
    r: Result<T, E>,
) -> Result<T, ApiError> {
    // As the client is answered: its code decides the outcome, and the
    // record names it.
    let r = r.map_err(Into::into);
    let outcome = match &r {
        Ok(_) => Outcome::Success,
        Err(e) if matches!(e.code, "privilege-escalation" | "rate-limited") => Outcome::Denied,
        Err(_) => Outcome::Failure,
    };
    let mut ev = Device::event(c, action, outcome).target(target.to_string());
    if let Err(e) = &r {
        ev = ev.details(
            json!({"certificate": c.conn.fingerprint, "role": c.role, "error": format!("{e:?}")}),
        );
    }
    rec.record(ev)?;
    r
}

pub(crate) async fn login(
    State(dev): State<Arc<Device>>,
    Extension(conn): Extension<ConnInfo>,
    Body(req): Body<sessions_api::LoginRequest>,
) -> Result<Response, ApiError> {
    dev.commissioned()?;
    if let Err((e, first)) = dev.login_rate(&conn.fingerprint) {
        if first {
            // Once per certificate and minute; a refusal, outside the reserve.
            let _ = dev.audit(
                Device::cert_event(&conn, "auth.login.rate-limited", Outcome::Denied)
                    .details(json!({"certificate": conn.fingerprint})),
            );
        }
        return Err(e.into());
    }
    // A login writes the accounts too (failure counts, locks): never
    // beside a factory reset, into the factory device.
    let _settings = dev.reset_gate.read().await;
    // Bounded hashing: a flood waits briefly, then is told to come back.
    let user = req.username.clone();
    let fingerprint = conn.fingerprint.clone();
    let result = dev
        .with_accounts_hashing(move |a| {
            let auth = a.authenticate_from(
                &req.username,
                &req.password,
                &fingerprint,
                time::OffsetDateTime::now_utc(),
            )?;
            // What the session is made from, under the same lock.
            let tag = a.credential_tag(&auth.username);
            Ok((auth, tag))
        })
        .await
        .map_err(ApiError::from);
    // Each record gives its own details.
    let base = |outcome| Device::cert_event(&conn, "auth.login", outcome).target(user.clone());
    let (auth, tag) = match result {
        Ok(a) => a,
        Err(e) => {
            let locked = e.code == "locked";
            let delayed = e.code == "login-delayed";
            if delayed {
                // No password was checked: one record per certificate per
                // aggregation window.
                dev.audit_tallied(
                    &format!("login-delayed|{}", conn.fingerprint),
                    base(Outcome::Denied)
                        .details(json!({"certificate": conn.fingerprint, "delayed": true})),
                );
                return Err(e);
            }
            if e.code == "busy" {
                return Err(e);
            }
            // Aggregated per certificate: a guesser writes at most two
            // records per window (docs/audit.md, "Floods"). Not per
            // account: a guesser cannot make a new key (and a new record)
            // per username it tries.
            dev.audit_tallied(
                &format!("login-failed|{}", conn.fingerprint),
                base(Outcome::Failure)
                    .details(json!({"certificate": conn.fingerprint, "locked": locked})),
            );
            if locked {
                // Answered on every attempt while locked: aggregated, and
                // outside the reserve (a refusal changes nothing).
                dev.audit_tallied(
                    &format!("lockout|{}", conn.fingerprint),
                    Device::cert_event(&conn, "auth.lockout", Outcome::Denied)
                        .target(user.clone())
                        .details(json!({"certificate": conn.fingerprint})),
                );
            }
            return Err(e);
        }
    };
    // Room for the login's record before the session exists.
    let rec = dev.reserve("auth.login")?;
    let session = dev
        .lock_sessions()?
        .create(&auth, &conn.fingerprint, Instant::now());
    let session = match session {
        Ok(s) => s,
        Err(e) => {
            rec.record(
                base(Outcome::Denied)
                    .details(json!({"certificate": conn.fingerprint, "reason": e.to_string()})),
            )?;
            return Err(e.into());
        }
    };
    // A role change, removal or password reset that ran while the password
    // was being checked must not leave a session with what was taken away:
    // the account must still be as it was when the login began.
    let unchanged =
        tag.is_some() && dev.with_accounts(|a| Ok(a.credential_tag(&auth.username)))? == tag;
    if !unchanged {
        dev.lock_sessions()?.logout(&session.id);
        rec.record(base(Outcome::Denied).details(json!({
            "certificate": conn.fingerprint,
            "reason": "the account changed while logging in",
        })))?;
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "account-changed",
            "the account's role or password changed during the login; log in again",
        ));
    }
    rec.record(
        drivesec_audit::Event::new(
            drivesec_audit::Actor::User(auth.username.clone()),
            "auth.login",
        )
        .source(conn.addr.to_string())
        .details(json!({
            "certificate": conn.fingerprint, "role": auth.role, "session": session.handle,
            "must_change_password": auth.must_change_password,
        })),
    )?;
    let banner = dev
        .config
        .read()
        .or_poisoned("config")?
        .access
        .banner
        .clone();
    Ok(reply(sessions_api::LoginAnswer {
        banner,
        handle: session.handle,
        must_change_password: auth.must_change_password,
        permissions: wire_permissions(&auth.permissions),
        role: auth.role,
        session: session.id,
        username: auth.username,
    }))
}

pub(crate) async fn logout(
    State(dev): State<Arc<Device>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let c = session_caller(&dev, &headers, &conn)?;
    let token = super::bearer(&headers).unwrap_or_default();
    let rec = dev.reserve("auth.logout")?;
    dev.lock_sessions()?.logout(token);
    rec.record(
        Device::event(&c, "auth.logout", Outcome::Success).target(c.session_handle.clone()),
    )?;
    Ok(reply(sessions_api::LogoutAnswer { logged_out: true }))
}

pub(crate) async fn me(
    State(dev): State<Arc<Device>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let c = session_caller(&dev, &headers, &conn)?;
    Ok(reply(sessions_api::MeAnswer {
        must_change_password: c.must_change_password,
        permissions: wire_permissions(&c.permissions),
        role: c.role,
        session: c.session_handle,
        username: c.username,
    }))
}

pub(crate) async fn change_own_password(
    State(dev): State<Arc<Device>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Body(req): Body<sessions_api::OwnPasswordRequest>,
) -> Result<Response, ApiError> {
    let (_settings, c) = own_password_change(&dev, &headers, &conn).await?;
    // Per-session rate limit, before any hash: a flood is answered 429 and
    // recorded once per aggregation window.
    let allowed = dev
        .lock_sessions()?
        .password_attempt(&c.session_handle, Instant::now());
    if let Err(e) = allowed {
        let e = ApiError::from(e);
        dev.audit_tallied(
            &format!("password-rate|{}", c.session_handle),
            Device::event(&c, "user.password.change", Outcome::Denied)
                .target(c.username.clone())
                .details(json!({
                    "certificate": c.conn.fingerprint, "role": c.role,
                    "session": c.session_handle, "error": e.code,
                })),
        );
        return Err(e);
    }
    let rec = dev.reserve("user.password.change")?;
    let (user, fingerprint) = (c.username.clone(), c.conn.fingerprint.clone());
    let r = dev
        .with_accounts_hashing(move |a| {
            let now = time::OffsetDateTime::now_utc();
            a.authenticate_from(&user, &req.old_password, &fingerprint, now)?;
            a.set_password(&user, &req.new_password, now)
        })
        .await
        .map_err(ApiError::from);
    let r = match r {
        // Nothing was checked: the reserved record goes unused.
        Err(e) if e.code == "busy" => return Err(e),
        r => r,
    };
    managed(rec, &c, "user.password.change", &c.username, r)?;
    // The changing session goes on (now unrestricted); the account's other
    // sessions end: whoever held them must log in with the new password.
    dev.lock_sessions()?.password_changed(&c.username);
    let ended =
        dev.end_sessions_of(&c, &c.username, Some(&c.session_handle), "password changed")?;
    Ok(reply(sessions_api::OwnPasswordAnswer {
        changed: true,
        sessions_ended: ended as u64,
    }))
}

pub(crate) async fn list_users(
    State(dev): State<Arc<Device>>,
    c: Caller,
) -> Result<Response, ApiError> {
    dev.require(&c, Permission::ReadUsers, "user.list")?;
    let users = dev.with_accounts(|a| Ok(a.users()))?;
    Ok(reply(api::UserListAnswer {
        users: users.into_iter().map(wire_user).collect(),
    }))
}

pub(crate) async fn add_user(
    State(dev): State<Arc<Device>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Body(req): Body<api::NewUserRequest>,
) -> Result<Response, ApiError> {
    let (_settings, c) = settings_change(&dev, &headers, &conn).await?;
    dev.require(&c, Permission::ManageUsers, "user.add")?;
    let (who, perms) = (c.username.clone(), c.permissions.clone());
    let (user, role, pw) = (req.username.clone(), req.role.clone(), req.password);
    // An administrator sets the first password: the holder must change it.
    let rec = dev.reserve("user.add")?;
    dev.hold_point("accounts:hold").await;
    let r = dev
        .with_accounts_hashing(move |a| {
            a.check_assign(&who, &perms, &user, &role)?;
            a.add_user_by_admin(&user, &role, &pw, time::OffsetDateTime::now_utc())
        })
        .await;
    let r = naming_roles(&dev, &req.role, r);
    managed(rec, &c, "user.add", &req.username, r)?;
    Ok(reply(api::UserAddedAnswer {
        must_change_password: true,
        role: req.role,
        username: req.username,
    }))
}

pub(crate) async fn remove_user(
    State(dev): State<Arc<Device>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    PathParam(name): PathParam,
) -> Result<Response, ApiError> {
    let (_settings, c) = settings_change(&dev, &headers, &conn).await?;
    dev.require(&c, Permission::ManageUsers, "user.remove")?;
    if name == c.username {
        return Err(ApiError::bad_request("you cannot remove your own account"));
    }
    let rec = dev.reserve("user.remove")?;
    let r = dev.with_accounts(|a| {
        a.check_manage(&c.username, &c.permissions, &name)?;
        a.remove_user(&name)
    });
    managed(rec, &c, "user.remove", &name, r)?;
    // No other account changed: ending the removed one's sessions is the
    // whole of what `resync_sessions` would do.
    let ended = dev.end_sessions_of(&c, &name, None, "account removed")?;
    Ok(reply(api::UserRemovedAnswer {
        removed: name,
        sessions_ended: ended as u64,
    }))
}

pub(crate) async fn set_role(
    State(dev): State<Arc<Device>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    PathParam(name): PathParam,
    Body(req): Body<api::SetRoleRequest>,
) -> Result<Response, ApiError> {
    let (_settings, c) = settings_change(&dev, &headers, &conn).await?;
    dev.require(&c, Permission::ManageUsers, "user.role.change")?;
    let rec = dev.reserve("user.role.change")?;
    dev.hold_point("accounts:hold").await;
    let r = dev.with_accounts(|a| {
        // Both the role it has and the role it gets must be within reach.
        a.check_manage(&c.username, &c.permissions, &name)?;
        a.check_assign(&c.username, &c.permissions, &name, &req.role)?;
        a.set_role(&name, &req.role, time::OffsetDateTime::now_utc())
    });
    let r = naming_roles(&dev, &req.role, r);
    managed(rec, &c, "user.role.change", &name, r)?;
    // The account's open sessions hold the new role from their next request.
    dev.resync_sessions(&c, "role changed")?;
    Ok(reply(api::RoleSetAnswer {
        role: req.role,
        username: name,
    }))
}

pub(crate) async fn unlock(
    State(dev): State<Arc<Device>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    PathParam(name): PathParam,
) -> Result<Response, ApiError> {
    let (_settings, c) = settings_change(&dev, &headers, &conn).await?;
    dev.require(&c, Permission::ManageUsers, "user.unlock")?;
    let rec = dev.reserve("user.unlock")?;
    let r = dev.with_accounts(|a| {
        a.check_manage(&c.username, &c.permissions, &name)?;
        a.unlock(&name)
    });
    managed(rec, &c, "user.unlock", &name, r)?;
    Ok(reply(api::UserUnlockedAnswer { unlocked: name }))
}

pub(crate) async fn reset_password(
    State(dev): State<Arc<Device>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    PathParam(name): PathParam,
    Body(req): Body<api::PasswordResetRequest>,
) -> Result<Response, ApiError> {
    let (_settings, c) = settings_change(&dev, &headers, &conn).await?;
    dev.require(&c, Permission::ManageUsers, "user.password.reset")?;
    let rec = dev.reserve("user.password.reset")?;
    let (user, pw) = (name.clone(), req.password);
    let (who, perms) = (c.username.clone(), c.permissions.clone());
    let r = dev
        .with_accounts_hashing(move |a| {
            a.check_manage(&who, &perms, &user)?;
            a.reset_password(&user, &pw, time::OffsetDateTime::now_utc())
        })
        .await;
    managed(rec, &c, "user.password.reset", &name, r)?;
    // Whoever held the old password loses every session made with it.
    let ended = dev.end_sessions_of(&c, &name, None, "password reset")?;
    Ok(reply(api::PasswordResetAnswer {
        must_change_password: true,
        reset: name,
        sessions_ended: ended as u64,
    }))
}

pub(crate) async fn list_roles(
    State(dev): State<Arc<Device>>,
    c: Caller,
) -> Result<Response, ApiError> {
    dev.require(&c, Permission::ReadUsers, "role.list")?;
    let roles = dev.with_accounts(|a| Ok(a.roles()))?;
    Ok(reply(api::RoleListAnswer {
        roles: roles.into_iter().map(wire_role).collect(),
    }))
}

pub(crate) async fn add_role(
    State(dev): State<Arc<Device>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Body(req): Body<api::NewRoleRequest>,
) -> Result<Response, ApiError> {
    let (_settings, c) = settings_change(&dev, &headers, &conn).await?;
    dev.require(&c, Permission::ManageRoles, "role.add")?;
    let mut perms = BTreeSet::new();
    for p in &req.permissions {
        perms.insert(
            p.parse::<Permission>()
                .map_err(|_| ApiError::bad_request(format!("unknown permission '{p}'")))?,
        );
    }
    let rec = dev.reserve("role.add")?;
    let r = dev.with_accounts(|a| {
        a.check_role_grant(&c.permissions, &perms)?;
        a.add_role(&req.name, perms.clone())
    });
    managed(rec, &c, "role.add", &req.name, r)?;
    Ok(reply(api::RoleAddedAnswer {
        permissions: wire_permissions(&perms),
        name: req.name,
    }))
}

pub(crate) async fn remove_role(
    State(dev): State<Arc<Device>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    PathParam(name): PathParam,
) -> Result<Response, ApiError> {
    let (_settings, c) = settings_change(&dev, &headers, &conn).await?;
    dev.require(&c, Permission::ManageRoles, "role.remove")?;
    let rec = dev.reserve("role.remove")?;
    let r = dev.with_accounts(|a| a.remove_role(&name));
    managed(rec, &c, "role.remove", &name, r)?;
    dev.resync_sessions(&c, "role removed")?;
    Ok(reply(api::RoleRemovedAnswer { removed: name }))
}

pub(crate) async fn list_sessions(
    State(dev): State<Arc<Device>>,
    c: Caller,
) -> Result<Response, ApiError> {
    dev.require(&c, Permission::ReadSessions, "session.list")?;
    let list = dev.lock_sessions()?.list(Instant::now());
    Ok(reply(sessions_api::SessionListAnswer {
        sessions: list.into_iter().map(wire_session).collect(),
    }))
}

pub(crate) async fn terminate_session(
    State(dev): State<Arc<Device>>,
    PathParam(handle): PathParam,
    c: Caller,
) -> Result<Response, ApiError> {
    dev.require(&c, Permission::TerminateSessions, "session.terminate")?;
    let rec = dev.reserve("session.terminate")?;
    let ended = dev.lock_sessions()?.terminate(&handle);
    let r = ended.ok_or_else(|| ApiError::not_found(format!("no session '{handle}'")));
    let info = managed(rec, &c, "session.terminate", &handle, r)?;
    Ok(reply(sessions_api::SessionTerminatedAnswer {
        terminated: handle,
        username: info.username,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use drivesec_access::{Accounts, Sessions};

    use super::*;

    /// The bytes the device wrote before the API's types: `json!` objects,
    /// whose keys serde_json sorts.
    fn old_bytes(v: serde_json::Value) -> String {
        serde_json::to_string(&v).unwrap()
    }

    #[test]
    fn roles_and_users_are_written_as_before() {
        let roles = drivesec_access::builtin_roles();
        let wire = api::RoleListAnswer {
            roles: roles.iter().cloned().map(wire_role).collect(),
        };
        assert_eq!(
            serde_json::to_string(&wire).unwrap(),
            old_bytes(json!({"roles": roles}))
        );

        let d = tempfile::tempdir().unwrap();
        let policy = drivesec_access::AccessPolicy {
            hash: drivesec_access::HashParams {
                memory_kib: drivesec_access::MIN_HASH_MEMORY_KIB,
                iterations: 5,
                parallelism: 1,
            },
            ..Default::default()
        };
        let mut a = Accounts::create(&d.path().join("accounts.json"), policy).unwrap();
        let now = time::OffsetDateTime::now_utc();
        a.add_user("admin", "security-admin", "Sec-Officer-01", now)
            .unwrap();
        a.add_user("alice", "operator", "Correct-Horse-1", now)
            .unwrap();
        // A lock, a delay and a failure count, so no field is at its default.
        for _ in 0..8 {
            let _ = a.authenticate_from("alice", "wrong", "fp-1", now);
        }
        let users = a.users();
        assert!(users.iter().any(|u| u.locked_until.is_some()), "{users:?}");
        let wire = api::UserListAnswer {
            users: users.iter().cloned().map(wire_user).collect(),
        };
        assert_eq!(
            serde_json::to_string(&wire).unwrap(),
            old_bytes(json!({"users": users}))
        );
    }

    #[test]
    fn sessions_are_written_as_before() {
        let mut s = Sessions::new(drivesec_access::SessionPolicy::default());
        let auth = drivesec_access::Authenticated {
            username: "alice".into(),
            role: "operator".into(),
            permissions: drivesec_access::builtin_roles()
                .into_iter()
                .find(|r| r.name == "operator")
                .unwrap()
                .permissions,
            must_change_password: false,
        };
        s.create(&auth, "fp-1", Instant::now()).unwrap();
        let list = s.list(Instant::now());
        let wire = sessions_api::SessionListAnswer {
            sessions: list.iter().cloned().map(wire_session).collect(),
        };
        assert_eq!(
            serde_json::to_string(&wire).unwrap(),
            old_bytes(json!({"sessions": list}))
        );
        assert_eq!(
            serde_json::to_value(wire_permissions(&auth.permissions)).unwrap(),
            serde_json::to_value(&auth.permissions).unwrap()
        );
    }
}

//! Who is acting: sessions bound to the client certificate of the
//! connection they were made on, one permission per operation, the bounded
//! pool that hashes passwords, the login rate, and the accounts store.

use std::collections::BTreeSet;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use drivesec_access::{AccessError, Accounts, Permission, SessionSummary, Sessions};
use drivesec_audit::Outcome;
use serde_json::json;

use super::{Caller, ConnInfo, Device};
use crate::{DeviceError, OrPoisoned, Refusal, Result};

/// The refusal of a request on a connection admitted before the device's
/// identity or trust changed: not processed, to be sent on a new connection.
pub(crate) fn stale_connection() -> DeviceError {
    DeviceError::refused(
        Refusal::StaleConnection,
        "connection-stale",
        "the device's identity or trust changed since this connection was opened; \
         send the request on a new connection",
    )
}

impl Device {
    /// Refuses a request on a connection admitted under an older trust
    /// ([`stale_connection`]). Checked when the request's head arrives and
    /// again once its body did: a body held back across a trust change is
    /// not served.
    pub(crate) fn check_admitted(&self, conn: &ConnInfo) -> Result<()> {
        if self.trust.borrow().admits(conn) {
            Ok(())
        } else {
            Err(stale_connection())
        }
    }

    /// The caller of session `token` on connection `conn` (the session must
    /// have been made with the connection's client certificate), also one
    /// whose password must be changed first.
    pub(crate) fn session(&self, token: &str, conn: &ConnInfo) -> Result<Caller> {
        let info = self
            .lock_sessions()?
            .validate(token, &conn.fingerprint, Instant::now())?;
        Ok(Caller {
            username: info.username,
            role: info.role,
            permissions: info.permissions,
            conn: conn.clone(),
            session_handle: info.handle,
            must_change_password: info.must_change_password,
        })
    }

    /// The test-only hold point `point` (`drivesec_state::journal::failpoint_hold`),
    /// waited for on a blocking thread; nothing unless the state
    /// directory's fault file names it.
    pub(crate) async fn hold_point(&self, point: &'static str) {
        let Some(dir) = self.state.read().ok().map(|st| st.dir.clone()) else {
            return;
        };
        if drivesec_state::journal::failpoint_set(&dir, point) {
            let _ = tokio::task::spawn_blocking(move || {
                drivesec_state::journal::failpoint_hold(&dir, point);
            })
            .await;
        }
    }

    /// Asks the caller for its password again before a destructive action
    /// (through the bounded hash pool; a wrong one counts toward the
    /// account's lockout like a failed login and is recorded).
    pub(crate) async fn reauthenticate(
        self: &Arc<Self>,
        c: &Caller,
        password: String,
        action: &str,
    ) -> Result<()> {
        let _permit = self.hash_permit(Duration::from_secs(2)).await?;
        let (dev, user, client) = (self.clone(), c.username.clone(), c.conn.fingerprint.clone());
        let r = tokio::task::spawn_blocking(move || {
            dev.with_accounts(|a| {
                a.authenticate_from(&user, &password, &client, time::OffsetDateTime::now_utc())
            })
        })
        .await
        .map_err(|e| DeviceError::internal(e.to_string()))?;
        if let Err(e) = r {
            self.audit(
                Self::event(c, "auth.reauthenticate", Outcome::Failure)
                    .target(action.to_string())
                    .details(json!({"certificate": c.conn.fingerprint, "reason": e.to_string()})),
            )?;
            return Err(DeviceError::refused(
                Refusal::Unauthorized,
                "reauthentication-failed",
                "this action needs the caller's password again, and it was wrong",
            ));
        }
        Ok(())
    }

    /// Checks a permission; a denial is audited and refused (`forbidden`).
    pub(crate) fn require(&self, c: &Caller, p: Permission, action: &str) -> Result<()> {
        if c.permissions.contains(&p) {
            return Ok(());
        }
        let ev = Self::event(c, action, Outcome::Denied).details(json!({
            "certificate": c.conn.fingerprint, "role": c.role, "missing_permission": p.as_str(),
        }));
        // Aggregated per certificate and account: a flood of forbidden
        // requests cannot fill the trail.
        self.audit_tallied(&format!("denied|{}|{}", c.conn.fingerprint, c.username), ev);
        Err(DeviceError::refused(
            Refusal::Forbidden,
            "forbidden",
            format!("role '{}' lacks permission '{}'", c.role, p.as_str()),
        ))
    }

    /// A slot for one password or credential hash: a flood waits at most
    /// `wait`, then is told to come back (`busy`), so it cannot starve the device.
    pub(crate) async fn hash_permit(
        &self,
        wait: Duration,
    ) -> Result<tokio::sync::SemaphorePermit<'_>> {
        tokio::time::timeout(wait, self.login_permits.acquire())
            .await
            .map_err(|_| {
                DeviceError::refused(Refusal::Busy, "busy", "too many logins in progress; retry")
            })?
            .map_err(|_| DeviceError::internal("login semaphore closed"))
    }

    /// Per-client-certificate login rate limit (sliding minute). On refusal,
    /// also says whether this is the first in the window (worth recording).
    pub(crate) fn login_rate(
        &self,
        fingerprint: &str,
    ) -> std::result::Result<(), (DeviceError, bool)> {
        let limit = self
            .config
            .read()
            .map(|c| c.api.logins_per_minute)
            .unwrap_or(30) as usize;
        let mut map = self
            .login_attempts
            .lock()
            .or_poisoned("login attempts")
            .map_err(|e| (e, false))?;
        let now = Instant::now();
        map.retain(|_, q| {
            while q
                .front()
                .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60))
            {
                q.pop_front();
            }
            !q.is_empty()
        });
        let q = map.entry(fingerprint.to_string()).or_default();
        if q.len() >= limit {
            let first = q.len() == limit;
            q.push_back(now);
            return Err((
                DeviceError::refused(
                    Refusal::TooMany,
                    "rate-limited",
                    format!(
                        "more than {limit} login attempts in a minute from this client certificate; retry later"
                    ),
                ),
                first,
            ));
        }
        q.push_back(now);
        Ok(())
    }

    /// Refuses everything but commissioning in factory state.
    pub(crate) fn commissioned(&self) -> Result<()> {
        let st = self.state.read().or_poisoned("state")?;
        if st.file.state == drivesec_state::LifeCycle::Factory {
            return Err(DeviceError::conflict(
                "the device is in factory state: only commissioning is available",
            ));
        }
        Ok(())
    }

    /// Runs `f` on the accounts store (commissioned devices only). Waiting
    /// for the store (a password hash may hold it) goes through
    /// `crate::blocking`, so the network thread serves others meanwhile.
    pub(crate) fn with_accounts<T>(
        &self,
        f: impl FnOnce(&mut Accounts) -> std::result::Result<T, AccessError>,
    ) -> Result<T> {
        crate::blocking(|| {
            let mut g = self.accounts.lock().or_poisoned("accounts")?;
            let acc = g.as_mut().ok_or_else(|| {
                DeviceError::conflict(
                    "the device is in factory state: only commissioning is available",
                )
            })?;
            f(acc).map_err(DeviceError::from)
        })
    }

    /// Runs `f`, which hashes passwords, on the accounts store in the
    /// bounded hash pool: a permit (a flood waits briefly, then is told
    /// `busy`) and a blocking thread, never the network thread.
    pub(crate) async fn with_accounts_hashing<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Accounts) -> std::result::Result<T, AccessError> + Send + 'static,
    ) -> Result<T> {
        let _permit = self.hash_permit(Duration::from_secs(2)).await?;
        let dev = self.clone();
        tokio::task::spawn_blocking(move || dev.with_accounts(f))
            .await
            .map_err(|e| DeviceError::internal(e.to_string()))?
    }

    /// The session table, locked.
    pub(crate) fn lock_sessions(&self) -> Result<MutexGuard<'_, Sessions>> {
        self.sessions.lock().or_poisoned("session")
    }

    /// The refusal of a session whose password must be changed first, for
    /// anything but the change, `/me` and logout; recorded (aggregated per
    /// certificate and account).
    pub(crate) fn password_change_required(&self, c: &Caller) -> DeviceError {
        self.audit_tallied(
            &format!(
                "password-change-required|{}|{}",
                c.conn.fingerprint, c.username
            ),
            Device::event(c, "auth.password-change-required", Outcome::Denied),
        );
        DeviceError::refused(
            Refusal::Forbidden,
            "password-change-required",
            "the password must be changed first (POST /api/v1/me/password)",
        )
    }

    /// Records sessions the device ended (`reason`: what ended them).
    fn record_ended(&self, c: &Caller, ended: &[SessionSummary], reason: &str) -> Result<()> {
        for s in ended {
            self.audit(
                Device::event(c, "session.end", Outcome::Success)
                    .target(s.handle.clone())
                    .details(json!({
                        "certificate": c.conn.fingerprint, "role": c.role,
                        "username": s.username, "session_certificate": s.client_fingerprint,
                        "reason": reason,
                    }))
                    .essential(),
            )?;
        }
        Ok(())
    }

    /// Brings every open session in line with the accounts after a change
    /// made by `c`: sessions of accounts that no longer exist end, the
    /// others take their account's current role and permissions at once.
    /// Both are recorded.
    pub(crate) fn resync_sessions(&self, c: &Caller, reason: &str) -> Result<()> {
        let current: std::collections::BTreeMap<String, (String, BTreeSet<Permission>)> = self
            .with_accounts(|a| {
                Ok(a.users()
                    .into_iter()
                    .map(|u| {
                        let perms = a.permissions_of(&u.username).unwrap_or_default();
                        (u.username, (u.role, perms))
                    })
                    .collect())
            })?;
        let (ended, changed) = self
            .lock_sessions()?
            .reconcile(Instant::now(), |u| current.get(u).cloned());
        self.record_ended(c, &ended, reason)?;
        for s in &changed {
            self.audit(
                Device::event(c, "session.permissions-changed", Outcome::Success)
                    .target(s.handle.clone())
                    .details(json!({
                        "certificate": c.conn.fingerprint, "role": c.role,
                        "username": s.username, "new_role": s.role, "reason": reason,
                    }))
                    .essential(),
            )?;
        }
        Ok(())
    }

    /// Ends `username`'s sessions (all but `keep`) and records them.
    pub(crate) fn end_sessions_of(
        &self,
        c: &Caller,
        username: &str,
        keep: Option<&str>,
        reason: &str,
    ) -> Result<usize> {
        let ended = self
            .lock_sessions()?
            .end_user_sessions(username, keep, Instant::now());
        self.record_ended(c, &ended, reason)?;
        Ok(ended.len())
    }
}

//! The sessions operations: login, logout, the caller's own account and
//! password, and the list of live sessions.
//!
//! The fields of the answer types are in alphabetical order: the order the
//! device has always written them in.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::accounts::Permission;
use crate::route::{Body, Method, Route, schema_of};

/// A login (`POST /api/v1/login`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The account name.
    pub username: String,
    /// The account's password.
    pub password: String,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The answer of `POST /api/v1/login`: a session bound to the client
/// certificate of the connection it was made over.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LoginAnswer {
    /// The login banner (SR 1.12) to show the user: the access policy's
    /// `banner`, at most 4096 bytes, possibly empty.
    pub banner: String,
    /// The session's public handle: it names the session in listings,
    /// in the audit trail and to `DELETE /api/v1/sessions/{handle}`.
    pub handle: String,
    /// The password must be changed before anything else: until then the
    /// session is served only `POST /api/v1/me/password`, `GET /api/v1/me`
    /// and logout (403 `password-change-required` for the rest).
    pub must_change_password: bool,
    /// What the account's role allows, in the order the `Permission`
    /// schema lists them. Strings, not `Permission`, so that a client
    /// reads a newer device's permission it does not know yet.
    #[schema(value_type = Vec<Permission>)]
    pub permissions: Vec<String>,
    /// The account's role.
    pub role: String,
    /// The secret session identifier (64 hex characters), sent as
    /// `Authorization: Bearer SESSION` over a connection with the same
    /// client certificate.
    pub session: String,
    /// The account name.
    pub username: String,
}

impl std::fmt::Debug for LoginAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginAnswer")
            .field("banner", &self.banner)
            .field("handle", &self.handle)
            .field("must_change_password", &self.must_change_password)
            .field("permissions", &self.permissions)
            .field("role", &self.role)
            .field("session", &"<redacted>")
            .field("username", &self.username)
            .finish()
    }
}

/// The answer of `POST /api/v1/logout`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogoutAnswer {
    /// Always true: the session has ended.
    pub logged_out: bool,
}

/// The answer of `GET /api/v1/me`: the caller's session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MeAnswer {
    /// The password must be changed before anything else
    /// (`POST /api/v1/me/password`).
    pub must_change_password: bool,
    /// What the caller's role allows, in the order the `Permission`
    /// schema lists them. Strings, not `Permission`, so that a client
    /// reads a newer device's permission it does not know yet.
    #[schema(value_type = Vec<Permission>)]
    pub permissions: Vec<String>,
    /// The caller's role.
    pub role: String,
    /// The session's public handle (not the secret identifier).
    pub session: String,
    /// The caller's account name.
    pub username: String,
}

/// A change of the caller's own password (`POST /api/v1/me/password`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OwnPasswordRequest {
    /// The current password (401 when wrong; counts like a failed login).
    pub old_password: String,
    /// The new password, checked against the password policy (length,
    /// character classes, history; 400 when it fails).
    pub new_password: String,
}

impl std::fmt::Debug for OwnPasswordRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnPasswordRequest")
            .field("old_password", &"<redacted>")
            .field("new_password", &"<redacted>")
            .finish()
    }
}

/// The answer of `POST /api/v1/me/password`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OwnPasswordAnswer {
    /// Always true: the password was changed; this session goes on,
    /// no longer restricted to the change.
    pub changed: bool,
    /// How many of the account's other sessions ended.
    #[schema(minimum = 0)]
    pub sessions_ended: u64,
}

/// A live session as listed to administrators (never its secret
/// identifier).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SessionSummary {
    /// Seconds since the login.
    #[schema(minimum = 0)]
    pub age_secs: u64,
    /// SHA-256 fingerprint (hex) of the client certificate the session is
    /// bound to.
    pub client_fingerprint: String,
    /// The public handle (for `DELETE /api/v1/sessions/{handle}`).
    pub handle: String,
    /// Seconds since the session was last used.
    #[schema(minimum = 0)]
    pub idle_secs: u64,
    /// The account's role.
    pub role: String,
    /// The account.
    pub username: String,
}

/// The answer of `GET /api/v1/sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SessionListAnswer {
    /// Every live session, by account name, then oldest first.
    pub sessions: Vec<SessionSummary>,
}

/// The answer of `DELETE /api/v1/sessions/{handle}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SessionTerminatedAnswer {
    /// The handle of the session ended.
    pub terminated: String,
    /// The account whose session it was.
    pub username: String,
}

/// The sessions operations.
pub(crate) fn routes() -> Vec<Route> {
    vec![
        Route::new(Method::Post, "/api/v1/login", "Log in; returns a session identifier bound to this TLS client certificate", Body::Json(schema_of::<LoginAnswer>))
            .tag("sessions")
            .describe("Rate-limited per client certificate (api.logins_per_minute, 429); password hashing is bounded (api.max_concurrent_logins, 503 when busy); unknown user and wrong password give the same 401. Failures count per account and client certificate: a lock (403 `locked`) holds only for the certificate that failed; after access.lockout.account_max_failures failures over all certificates, a certificate new to the account gets 429 `login-delayed` (docs/permissions.md). The answer says `must_change_password`. 409 `account-changed`: the account's role or password changed while the password was checked; log in again.")
            .tls_only()
            .request(Body::Json(schema_of::<LoginRequest>))
            ,
        Route::new(Method::Post, "/api/v1/logout", "End this session", Body::Json(schema_of::<LogoutAnswer>))
            .tag("sessions")
            ,
        Route::new(Method::Get, "/api/v1/me", "The caller's account, role and permissions", Body::Json(schema_of::<MeAnswer>))
            .tag("sessions")
            .describe("Served also while the password must be changed (`must_change_password` in the answer).")
            ,
        Route::new(Method::Post, "/api/v1/me/password", "Change the caller's password", Body::Json(schema_of::<OwnPasswordAnswer>))
            .tag("sessions")
            .describe("Per session at most access.session.password_changes_per_minute attempts a minute (429 `rate-limited`, before any hash); hashing in the bounded pool (503 `busy`); a wrong old password is 401 and counts like a failed login. Clears a pending change; the account's other sessions end (`sessions_ended`). Served also while the password must be changed.")
            .request(Body::Json(schema_of::<OwnPasswordRequest>))
            ,
        Route::new(Method::Get, "/api/v1/sessions", "List live sessions (public handles only)", Body::Json(schema_of::<SessionListAnswer>))
            .tag("sessions")
            .permission("read-sessions")
            ,
        Route::new(Method::Delete, "/api/v1/sessions/{handle}", "Terminate a session remotely", Body::Json(schema_of::<SessionTerminatedAnswer>))
            .tag("sessions")
            .permission("terminate-sessions")
            .path_param("handle")
            .error(404)
            ,
    ]
}

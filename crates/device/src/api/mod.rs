//! The HTTPS API (docs/openapi.json): routing, the shared device state,
//! authentication of sessions bound to the TLS client certificate,
//! authorisation by permission, and error responses.

mod accounts;
mod commission;
mod drive;
mod firmware;
mod modbus;
mod ops;
mod provision;

pub(crate) use ops::SEGMENT_DOWNLOADS;

/// Request and settings types of the operations endpoints.
pub mod ops_types {
    pub use super::ops::ForwardingSettings;
}

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use drivesec_access::{AccessError, Accounts, Permission, Sessions};
use drivesec_audit::{Actor, AuditLog, Event, Outcome};
use drivesec_drive::ParamSet;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::DeviceError;
use crate::config::DeviceConfig;
use crate::state::StateDir;

/// What the TLS layer knows about a connection, attached to every request.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// SHA-256 of the client certificate (DER), hex.
    pub fingerprint: String,
    /// The client's address.
    pub addr: SocketAddr,
    /// The device's trust generation when the connection was admitted (0
    /// at start, one more for each state adopted); a session request on a
    /// connection admitted under an older one is refused (421).
    pub trust_generation: u64,
}

/// A commissioning exchange in progress.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub device_name: String,
    pub fingerprint: String,
}

/// Everything the handlers share.
pub struct Device {
    pub(crate) state: RwLock<StateDir>,
    pub(crate) config: RwLock<DeviceConfig>,
    pub(crate) accounts: Mutex<Option<Accounts>>,
    pub(crate) sessions: Mutex<Sessions>,
    pub(crate) audit: RwLock<Arc<AuditLog>>,
    pub(crate) params: Arc<Mutex<ParamSet>>,
    /// The drive's tick thread (set once at start).
    pub(crate) drive: std::sync::OnceLock<Arc<crate::drive_loop::DriveLink>>,
    pub(crate) login_permits: tokio::sync::Semaphore,
    pub(crate) login_attempts:
        Mutex<std::collections::HashMap<String, std::collections::VecDeque<Instant>>>,
    /// Wrong factory credentials per client certificate and address.
    pub(crate) factory_failures: Mutex<commission::FactoryBackoff>,
    pub(crate) pending: Mutex<Option<Pending>>,
    pub(crate) tls: Arc<RwLock<Arc<rustls::ServerConfig>>>,
    pub(crate) forwarder: Mutex<Option<drivesec_audit::forward::Forwarder>>,
    pub(crate) firmware: Mutex<Option<crate::firmware::Firmware>>,
    pub(crate) running: Mutex<Option<crate::firmware::Running>>,
    /// Serialises firmware operations (upload, reboot, trust rotation);
    /// taken with `try_lock`, so a second one gets 409 instead of waiting.
    /// Owned guards: the blocking work holds it to its end even when the
    /// client goes away and its request is dropped.
    pub(crate) firmware_gate: Arc<tokio::sync::Mutex<()>>,
    /// Held (write) while a reboot runs the boot stage, so a status read
    /// (read) never sees the boot state switched but `running` not yet.
    pub(crate) boot_lock: Arc<tokio::sync::RwLock<()>>,
    /// The Modbus/TCP Security server's TLS configuration (follows `tls`).
    pub(crate) modbus_tls: Arc<RwLock<Arc<rustls::ServerConfig>>>,
    /// Modbus rights per role.
    pub(crate) modbus_rights: RwLock<Arc<drivesec_modbus::Rights>>,
    /// The key handle of an LDevID renewal in progress.
    pub(crate) renewal: Mutex<Option<drivesec_keystore::KeyHandle>>,
    /// The trust open connections were admitted under; each adopted state
    /// sends a new one, and every open connection is told.
    pub(crate) trust: tokio::sync::watch::Sender<crate::runtime::Trust>,
    /// What a flood can repeat (API and Modbus denials, failed logins,
    /// refused connections), recorded aggregated.
    pub(crate) tally: crate::tally::Tally,
    /// A factory reset waiting for its second person.
    pub(crate) reset_request: Mutex<Option<ops::ResetRequest>>,
    /// Trail segment downloads in progress ([`ops::SEGMENT_DOWNLOADS`]
    /// permits; one more is answered 503 `busy`).
    pub(crate) segment_downloads: Arc<tokio::sync::Semaphore>,
    /// Of those, how many each client certificate has
    /// ([`ops::SEGMENT_DOWNLOADS_PER_CERTIFICATE`]).
    pub(crate) segment_downloaders: ops::SegmentDownloaders,
    /// Keeps a factory reset and the owner's settings changes apart: each
    /// handler that writes the owner's settings or adopts a state holds it
    /// (read) from before it authenticates the request to its end; an
    /// approved factory reset holds it (write) while it runs. A change
    /// that waited for a reset is then refused (its session is gone), and
    /// none can write the previous owner's settings into the factory
    /// device ([`Device::settings_change`]).
    pub(crate) reset_gate: tokio::sync::RwLock<()>,
}

/// Room in the audit trail for the record of an action about to be taken:
/// [`Device::reserve`] before the action, [`Recorder::record`] after it.
pub(crate) struct Recorder {
    log: Arc<AuditLog>,
    room: drivesec_audit::Reservation,
}

impl Recorder {
    /// Records the action's event in the room held for it.
    pub(crate) fn record(self, mut ev: Event) -> Result<u64, ApiError> {
        ev.essential |= reserved_tier(&ev);
        let Recorder { log, room } = self;
        Ok(crate::blocking(|| log.append_reserved(room, ev))?.seq)
    }
}

/// Whether an event may use the trail's reserve (`audit.reserve_bytes`)
/// once routine records fill it: successful authentication and security
/// administration (failures and refusals are aggregated instead), besides
/// the events marked essential where they are made (the device's own,
/// security responses).
pub(crate) fn reserved_tier(ev: &Event) -> bool {
    // Refusals and failed attempts change nothing and are aggregated;
    // only what was done (or the record of a device event) may use the
    // reserve, so no flood of attempts can eat it.
    ev.outcome == Outcome::Success && security_action(&ev.action)
}

/// Authentication and the security administration of the device.
fn security_action(action: &str) -> bool {
    const SECURITY: [&str; 10] = [
        "auth.",
        "user.",
        "role.",
        "session.",
        "security.",
        "trust.",
        "audit.forwarding.",
        "identity.",
        "device.",
        "commission.",
    ];
    SECURITY.iter().any(|p| action.starts_with(p))
}

/// The answer on a connection admitted before the device's identity or
/// trust changed: refused unprocessed, to be sent on a new connection.
pub(crate) fn stale_connection() -> ApiError {
    ApiError::new(
        StatusCode::MISDIRECTED_REQUEST,
        "connection-stale",
        "the device's identity or trust changed since this connection was opened; \
         send the request on a new connection",
    )
}

/// An error response: status, a stable code, and a message naming the problem.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// The HTTP status.
    #[cfg(test)]
    pub(crate) fn status_code(&self) -> u16 {
        self.status.as_u16()
    }

    /// The message the client sees (also what is audited).
    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", message)
    }

    pub(crate) fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "wrong-state", message)
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // What went wrong inside (a path, a lock, a library's text) is for
        // the device log, not the client.
        let message = if self.status.is_server_error() && self.code == "internal" {
            tracing::error!(error = %self.message, "internal error answered 500");
            "internal error; the device log has the details".to_string()
        } else {
            self.message
        };
        (
            self.status,
            axum::Json(drivesec_api::ErrorBody {
                error: self.code.to_string(),
                message,
            }),
        )
            .into_response()
    }
}

impl From<AccessError> for ApiError {
    fn from(e: AccessError) -> Self {
        use AccessError as A;
        let msg = e.to_string();
        match e {
            A::InvalidCredentials => {
                ApiError::new(StatusCode::UNAUTHORIZED, "invalid-credentials", msg)
            }
            A::Locked { .. } => ApiError::new(StatusCode::FORBIDDEN, "locked", msg),
            A::SessionInvalid => ApiError::new(StatusCode::UNAUTHORIZED, "session-invalid", msg),
            A::TooManySessions { .. } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too-many-sessions", msg)
            }
            A::Delayed { .. } => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "login-delayed", msg),
            A::RateLimited { .. } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate-limited", msg)
            }
            A::Escalation(_) => ApiError::new(StatusCode::FORBIDDEN, "privilege-escalation", msg),
            A::UnknownUser(_) | A::UnknownRole(_) => ApiError::not_found(msg),
            A::UserExists(_) | A::RoleExists(_) | A::RoleInUse(_) | A::BuiltinRole(_) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", msg)
            }
            // The request is fine but would leave nobody able to manage users.
            A::LastAdmin(_) => ApiError::new(StatusCode::CONFLICT, "last-admin", msg),
            A::PasswordRejected { .. }
            | A::InvalidName { .. }
            | A::UnknownPermission(_)
            | A::InvalidPolicy(_) => ApiError::bad_request(msg),
            _ => ApiError::internal(msg),
        }
    }
}

/// A refused CRL (docs/pki.md, "CRL policy"): 400 with the refusal's code
/// (`crl-malformed`, `crl-unknown-issuer`, ...).
impl From<drivesec_pki::CrlError> for ApiError {
    fn from(e: drivesec_pki::CrlError) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            e.code(),
            format!("CRL refused: {e}"),
        )
    }
}

impl From<DeviceError> for ApiError {
    fn from(e: DeviceError) -> Self {
        use drivesec_pki::PkiError as P;
        match e {
            DeviceError::Invalid(m) => ApiError::bad_request(m),
            DeviceError::Pki(P::Crl(c)) => c.into(),
            // What the client sent (PEM, certificates, collector settings) is wrong.
            DeviceError::Pki(p @ (P::BadInput { .. } | P::Invalid(_) | P::Verify(_))) => {
                ApiError::bad_request(p.to_string())
            }
            DeviceError::Audit(a @ drivesec_audit::AuditError::Forward(_)) => {
                ApiError::bad_request(a.to_string())
            }
            DeviceError::Access(a) => a.into(),
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl From<drivesec_audit::AuditError> for ApiError {
    fn from(e: drivesec_audit::AuditError) -> Self {
        match e {
            // SR 2.10: when the trail cannot record, the action is refused.
            // The message says what to do next.
            drivesec_audit::AuditError::Full { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit-unavailable",
                format!(
                    "{e}. A security administrator can still log in: forward or export the \
                     trail so that delivered records can be dropped (policy drop-forwarded), \
                     or raise [audit] max_bytes (docs/audit.md, \"Capacity\")"
                ),
            ),
            drivesec_audit::AuditError::Failed(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit-unavailable",
                format!(
                    "{e}. Recorded actions are refused until drivesecd is restarted on \
                     working storage (check the disk; the device log has the error)"
                ),
            ),
            other => ApiError::internal(other.to_string()),
        }
    }
}

/// JSON bodies: size-limited by the router, unknown fields rejected by the
/// types (`deny_unknown_fields`), every rejection a 4xx with the reason.
pub(crate) struct Body<T>(pub T);

impl<S, T> FromRequest<S> for Body<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Body(v)),
            Err(rej) => Err(match rej {
                JsonRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too-large",
                        "request body too large",
                    )
                }
                JsonRejection::MissingJsonContentType(_) => ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "content-type",
                    "send JSON with Content-Type: application/json",
                ),
                other => ApiError::new(other.status(), "bad-json", other.body_text()),
            }),
        }
    }
}

/// The logged-in caller of a request: its session (bearer token) bound to
/// the connection's client certificate. Handlers that read a body resolve
/// it after the body instead (`Device::caller`), so a malformed body is
/// answered before a missing session, as it always was.
impl axum::extract::FromRequestParts<Arc<Device>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        dev: &Arc<Device>,
    ) -> Result<Self, Self::Rejection> {
        let conn = parts
            .extensions
            .get::<ConnInfo>()
            .cloned()
            .ok_or_else(|| ApiError::internal("no connection information"))?;
        dev.caller(&parts.headers, &conn)
    }
}

/// One path segment (`/users/{name}`), with rejections answered as JSON.
pub(crate) struct PathParam(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(p)| PathParam(p))
            .map_err(|e| ApiError::bad_request(format!("bad path: {}", e.body_text())))
    }
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub username: String,
    pub role: String,
    pub permissions: std::collections::BTreeSet<Permission>,
    pub conn: ConnInfo,
    pub session_handle: String,
    /// The account's password must be changed first: only the change,
    /// `/me` and logout are served (`Device::session_caller`).
    pub must_change_password: bool,
}

impl Device {
    /// Records an event; when the trail cannot take it the caller gets the error (and refuses).
    pub(crate) fn audit(&self, ev: Event) -> Result<(), ApiError> {
        self.audit_seq(ev).map(|_| ())
    }

    /// Records an event and returns its sequence number.
    pub(crate) fn audit_seq(&self, mut ev: Event) -> Result<u64, ApiError> {
        ev.essential |= reserved_tier(&ev);
        // An append waits for its group's flush.
        let log = self.audit_log()?;
        Ok(crate::blocking(|| log.append(ev))?.seq)
    }

    /// Holds room in the trail for the record of `action`, to be taken
    /// before the action: if the trail cannot record it, the action is
    /// refused (503 `audit-unavailable`) and nothing changes.
    pub(crate) fn reserve(&self, action: &str) -> Result<Recorder, ApiError> {
        let log = self.audit_log()?;
        let room = log.reserve(security_action(action), action)?;
        Ok(Recorder { log, room })
    }

    /// Records an event that a flood could repeat (a denial), aggregated
    /// per `key` (`crate::tally`). A denial the trail cannot take is still
    /// refused; the refusal changes nothing.
    pub(crate) fn audit_tallied(&self, key: &str, ev: Event) {
        if let Some(ev) = self.tally.hit(key, ev) {
            let _ = self.audit(ev);
        }
    }

    /// Records the summaries of aggregation windows that closed (every
    /// second, and all of them at shutdown).
    pub(crate) fn flush_tally(&self, all: bool) {
        for ev in self.tally.due(all) {
            let _ = self.audit(ev);
        }
    }

    /// A connection refused by the admission bounds (`crate::admission`),
    /// recorded aggregated per listener and source address.
    /// The count is taken at once; the record is written on a blocking
    /// thread, so the accept loop never waits for the trail's flush.
    pub(crate) fn connection_refused(self: &Arc<Self>, listener: &str, addr: SocketAddr) {
        tracing::debug!(listener, %addr, "connection refused: over an admission bound");
        let ev = self.tally.hit(
            &format!("refused|{listener}|{}", addr.ip()),
            Event::new(Actor::Device, "net.connection-refused")
                .source(addr.ip().to_string())
                .outcome(Outcome::Denied)
                .details(json!({"listener": listener})),
        );
        if let Some(ev) = ev {
            let dev = self.clone();
            tokio::task::spawn_blocking(move || {
                let _ = dev.audit(ev);
            });
        }
    }

    /// A handler panicked: the client got a bare 500 and the connection
    /// closes; the route is recorded, the panic's text went to the log.
    pub(crate) fn handler_panicked(&self, conn: &ConnInfo, method: &str, path: &str) {
        tracing::error!(method, path, "an API handler panicked");
        let _ = self.audit(
            Self::cert_event(conn, "api.handler-failed", Outcome::Failure)
                .details(json!({"certificate": conn.fingerprint, "method": method, "path": path}))
                .essential(),
        );
    }

    /// The current audit log (replaced on factory reset).
    pub(crate) fn audit_log(&self) -> Result<Arc<AuditLog>, ApiError> {
        Ok(self
            .audit
            .read()
            .map_err(|_| ApiError::internal("audit lock poisoned"))?
            .clone())
    }

    /// An event from an authenticated caller.
    pub(crate) fn event(c: &Caller, action: &str, outcome: Outcome) -> Event {
        Event::new(Actor::User(c.username.clone()), action)
            .source(c.conn.addr.to_string())
            .outcome(outcome)
            .details(json!({"certificate": c.conn.fingerprint, "role": c.role}))
    }

    /// An event from a TLS client not (yet) logged in.
    pub(crate) fn cert_event(conn: &ConnInfo, action: &str, outcome: Outcome) -> Event {
        Event::new(Actor::Certificate(conn.fingerprint.clone()), action)
            .source(conn.addr.to_string())
            .outcome(outcome)
    }

    /// Resolves the session of a request; a session whose password must
    /// be changed first is refused (403 `password-change-required`).
    pub(crate) fn caller(&self, headers: &HeaderMap, conn: &ConnInfo) -> Result<Caller, ApiError> {
        let c = self.session_caller(headers, conn)?;
        if c.must_change_password {
            return Err(self.password_change_required(&c));
        }
        Ok(c)
    }

    /// For a handler that writes the owner's settings or adopts a state:
    /// waits while an approved factory reset runs, then authenticates the
    /// request. The guard is held to the handler's end, so no reset starts
    /// meanwhile; a request that waited for one is refused here (the reset
    /// ended every session and the connection's trust), never applied to
    /// the factory device ([`Device::reset_gate`]).
    pub(crate) async fn settings_change(
        &self,
        headers: &HeaderMap,
        conn: &ConnInfo,
    ) -> Result<(tokio::sync::RwLockReadGuard<'_, ()>, Caller), ApiError> {
        let gate = self.reset_gate.read().await;
        let c = self.caller(headers, conn)?;
        Ok((gate, c))
    }

    /// [`Device::settings_change`] for a change of the caller's own
    /// password, the one change a session whose password must be changed
    /// first may make (it writes the accounts like any other).
    pub(crate) async fn own_password_change(
        &self,
        headers: &HeaderMap,
        conn: &ConnInfo,
    ) -> Result<(tokio::sync::RwLockReadGuard<'_, ()>, Caller), ApiError> {
        let gate = self.reset_gate.read().await;
        let c = self.session_caller(headers, conn)?;
        Ok((gate, c))
    }

    /// The test-only hold point `point` (`crate::provision::failpoint_hold`),
    /// waited for on a blocking thread; nothing unless the state
    /// directory's fault file names it.
    pub(crate) async fn hold_point(&self, point: &'static str) {
        let Some(dir) = self.state.read().ok().map(|st| st.dir.clone()) else {
            return;
        };
        if crate::provision::failpoint_set(&dir, point) {
            let _ = tokio::task::spawn_blocking(move || {
                crate::provision::failpoint_hold(&dir, point);
            })
            .await;
        }
    }

    /// Resolves the session of a request, also one whose password must be
    /// changed first (only for the change itself, `/me` and logout).
    pub(crate) fn session_caller(
        &self,
        headers: &HeaderMap,
        conn: &ConnInfo,
    ) -> Result<Caller, ApiError> {
        // Checked here, after the body arrived, as well as when the headers
        // did: a body held back across a trust change is not served.
        if !self.trust.borrow().admits(conn) {
            return Err(stale_connection());
        }
        let token = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "no-session",
                    "log in first (Authorization: Bearer SESSION)",
                )
            })?;
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

    /// Asks the caller for its password again before a destructive action
    /// (through the bounded hash pool; a wrong one counts toward the
    /// account's lockout like a failed login and is recorded).
    pub(crate) async fn reauthenticate(
        self: &Arc<Self>,
        c: &Caller,
        password: String,
        action: &str,
    ) -> Result<(), ApiError> {
        let _permit = self.hash_permit(std::time::Duration::from_secs(2)).await?;
        let (dev, user, client) = (self.clone(), c.username.clone(), c.conn.fingerprint.clone());
        let r = tokio::task::spawn_blocking(move || {
            dev.with_accounts(|a| {
                a.authenticate_from(&user, &password, &client, time::OffsetDateTime::now_utc())
            })
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
        if let Err(e) = r {
            self.audit(
                Self::event(c, "auth.reauthenticate", Outcome::Failure)
                    .target(action.to_string())
                    .details(json!({"certificate": c.conn.fingerprint, "reason": e.message()})),
            )?;
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "reauthentication-failed",
                "this action needs the caller's password again, and it was wrong",
            ));
        }
        Ok(())
    }

    /// Checks a permission; a denial is audited and answered 403.
    pub(crate) fn require(&self, c: &Caller, p: Permission, action: &str) -> Result<(), ApiError> {
        if c.permissions.contains(&p) {
            return Ok(());
        }
        let ev = Self::event(c, action, Outcome::Denied).details(json!({
            "certificate": c.conn.fingerprint, "role": c.role, "missing_permission": p.as_str(),
        }));
        // Aggregated per certificate and account: a flood of forbidden
        // requests cannot fill the trail.
        self.audit_tallied(&format!("denied|{}|{}", c.conn.fingerprint, c.username), ev);
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("role '{}' lacks permission '{}'", c.role, p.as_str()),
        ))
    }

    /// A slot for one password or credential hash: a flood waits at most
    /// `wait`, then is told to come back (503), so it cannot starve the device.
    pub(crate) async fn hash_permit(
        &self,
        wait: std::time::Duration,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
        tokio::time::timeout(wait, self.login_permits.acquire())
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    "too many logins in progress; retry",
                )
            })?
            .map_err(|_| ApiError::internal("login semaphore closed"))
    }

    /// Per-client-certificate login rate limit (sliding minute). On refusal,
    /// also says whether this is the first in the window (worth recording).
    pub(crate) fn login_rate(&self, fingerprint: &str) -> Result<(), (ApiError, bool)> {
        let limit = self
            .config
            .read()
            .map(|c| c.api.logins_per_minute)
            .unwrap_or(30) as usize;
        let mut map = self
            .login_attempts
            .lock()
            .map_err(|_| (ApiError::internal("lock poisoned"), false))?;
        let now = Instant::now();
        map.retain(|_, q| {
            while q
                .front()
                .is_some_and(|t| now.duration_since(*t) > std::time::Duration::from_secs(60))
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
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
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

    pub(crate) fn commissioned(&self) -> Result<(), ApiError> {
        let st = self
            .state
            .read()
            .map_err(|_| ApiError::internal("state lock poisoned"))?;
        if st.file.state == crate::state::LifeCycle::Factory {
            return Err(ApiError::conflict(
                "the device is in factory state: only commissioning is available",
            ));
        }
        Ok(())
    }
}

/// The OpenAPI document, checked into docs/openapi.json and served at /api/v1/openapi.json.
pub const OPENAPI: &str = include_str!("../../../../docs/openapi.json");

/// The API router.
pub fn router(dev: Arc<Device>, max_body: usize) -> Router {
    Router::new()
        .route(
            "/api/v1/openapi.json",
            get(|| async { ([("content-type", "application/json")], OPENAPI) }),
        )
        .route("/api/v1/info", get(ops::info))
        .route("/api/v1/commission/begin", post(commission::begin))
        .route("/api/v1/commission/complete", post(commission::complete))
        .route("/api/v1/login", post(accounts::login))
        .route("/api/v1/logout", post(accounts::logout))
        .route("/api/v1/me", get(accounts::me))
        .route("/api/v1/me/password", post(accounts::change_own_password))
        .route(
            "/api/v1/users",
            get(accounts::list_users).post(accounts::add_user),
        )
        .route("/api/v1/users/{name}", delete(accounts::remove_user))
        .route("/api/v1/users/{name}/role", put(accounts::set_role))
        .route("/api/v1/users/{name}/unlock", post(accounts::unlock))
        .route(
            "/api/v1/users/{name}/password",
            post(accounts::reset_password),
        )
        .route(
            "/api/v1/roles",
            get(accounts::list_roles).post(accounts::add_role),
        )
        .route("/api/v1/roles/{name}", delete(accounts::remove_role))
        .route("/api/v1/sessions", get(accounts::list_sessions))
        .route(
            "/api/v1/sessions/{handle}",
            delete(accounts::terminate_session),
        )
        .route("/api/v1/params", get(ops::get_params))
        .route("/api/v1/params/{name}", put(ops::set_param))
        .route("/api/v1/audit", get(ops::read_audit))
        .route("/api/v1/audit/export", get(ops::export_audit))
        .route(
            "/api/v1/audit/forwarding",
            get(ops::get_forwarding).put(ops::set_forwarding),
        )
        .route("/api/v1/audit/trail", get(ops::trail))
        .route("/api/v1/audit/trail/segment", get(ops::trail_segment))
        .route(
            "/api/v1/audit/forwarding/test",
            axum::routing::post(ops::test_forwarding),
        )
        .route("/api/v1/posture", get(ops::posture))
        .route("/api/v1/security/crl", put(ops::install_crl))
        .route(
            "/api/v1/security/access",
            get(ops::get_access_policy).put(ops::set_access_policy),
        )
        .route("/api/v1/factory-reset", post(ops::factory_reset))
        // The upload reads the raw body and enforces MAX_IMAGE_BYTES itself.
        .route(
            "/api/v1/firmware",
            get(firmware::status).post(firmware::upload),
        )
        .route("/api/v1/firmware/reboot", post(firmware::reboot))
        .route("/api/v1/firmware/trust", put(firmware::rotate_trust))
        .route("/api/v1/attest", post(firmware::attest))
        .route("/api/v1/drive", get(drive::status))
        .route("/api/v1/drive/control", put(drive::control))
        .route(
            "/api/v1/modbus/rights",
            get(modbus::get_rights).put(modbus::set_rights),
        )
        .route(
            "/api/v1/profile",
            get(provision::get_profile).put(provision::put_profile),
        )
        .route("/api/v1/identity/renew", post(provision::renew_begin))
        .route("/api/v1/identity/ldevid", put(provision::renew_complete))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(axum::middleware::from_fn_with_state(
            dev.clone(),
            tamper_gate,
        ))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(dev)
}

/// Once the tamper response has run, the API answers only status reads
/// (`GET /api/v1/info`, `GET /api/v1/drive`, no session needed: the
/// accounts' sessions were wiped with the other secrets) and 423 `tampered`
/// to everything else.
async fn tamper_gate(
    axum::extract::State(dev): axum::extract::State<Arc<Device>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    if !dev.is_tampered() {
        return next.run(req).await;
    }
    let get = req.method() == axum::http::Method::GET;
    match req.uri().path() {
        "/api/v1/info" if get => next.run(req).await,
        "/api/v1/drive" if get => match drive::drive_status(&dev) {
            Ok(v) => reply(v),
            Err(e) => e.into_response(),
        },
        _ => ApiError::new(
            StatusCode::LOCKED,
            "tampered",
            "the device's tamper response has run: its keys are destroyed and only status can be read; it must be re-provisioned by the manufacturer and commissioned again",
        )
        .into_response(),
    }
}

/// A 200 response carrying one of the API's answer types.
pub(crate) fn reply<T: serde::Serialize>(answer: T) -> Response {
    axum::Json(answer).into_response()
}

//! The HTTPS API (docs/openapi.json), HTTP only: the route table, the
//! handlers (one module per area), the extractors (strict JSON bodies,
//! path segments, the session of a request bound to the connection's
//! client certificate), the connection service the accept loop runs for
//! each TLS connection (`conn`), and `ApiError`, the answer to every
//! [`DeviceError`]. What an operation does is the device's
//! (`crate::device`); a handler checks, calls and answers.

mod accounts;
mod commission;
pub(crate) mod conn;
mod drive;
mod firmware;
mod modbus;
mod ops;
mod provision;

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use drivesec_access::AccessError;
use serde::de::DeserializeOwned;

pub use crate::device::ConnInfo;
use crate::device::{Caller, Device};
use crate::{DeviceError, Refusal};

/// An error response: status, a stable code, and a message naming the problem.
#[derive(Debug)]
pub(crate) struct ApiError {
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

/// The status each kind of refusal is answered with.
fn status_of(kind: Refusal) -> StatusCode {
    match kind {
        Refusal::Unauthorized => StatusCode::UNAUTHORIZED,
        Refusal::Forbidden => StatusCode::FORBIDDEN,
        Refusal::NotFound => StatusCode::NOT_FOUND,
        Refusal::Conflict => StatusCode::CONFLICT,
        Refusal::StaleConnection => StatusCode::MISDIRECTED_REQUEST,
        Refusal::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
        Refusal::TooMany => StatusCode::TOO_MANY_REQUESTS,
        Refusal::Busy => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The HTTP edge: every error of the device is answered here.
impl From<DeviceError> for ApiError {
    fn from(e: DeviceError) -> Self {
        use drivesec_pki::PkiError as P;
        match e {
            DeviceError::Invalid(m) => ApiError::bad_request(m),
            DeviceError::Refused {
                kind,
                code,
                message,
            } => ApiError::new(status_of(kind), code, message),
            DeviceError::Trail(a) => a.into(),
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
            e @ (drivesec_audit::AuditError::Full { .. }
            | drivesec_audit::AuditError::Failed(_)) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit-unavailable",
                DeviceError::Trail(e).to_string(),
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
/// it after the body instead ([`caller`]), so a malformed body is
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
        caller(dev, &parts.headers, &conn)
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

/// The session token of a request (`Authorization: Bearer SESSION`).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Resolves the session of a request, also one whose password must be
/// changed first (only for the change, `/me` and logout).
pub(crate) fn session_caller(
    dev: &Device,
    headers: &HeaderMap,
    conn: &ConnInfo,
) -> Result<Caller, ApiError> {
    // Checked here, after the body arrived, as well as when the headers
    // did: a body held back across a trust change is not served.
    dev.check_admitted(conn)?;
    let token = bearer(headers).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "no-session",
            "log in first (Authorization: Bearer SESSION)",
        )
    })?;
    Ok(dev.session(token, conn)?)
}

/// Resolves the session of a request; a session whose password must be
/// changed first is refused (403 `password-change-required`).
pub(crate) fn caller(
    dev: &Device,
    headers: &HeaderMap,
    conn: &ConnInfo,
) -> Result<Caller, ApiError> {
    let c = session_caller(dev, headers, conn)?;
    if c.must_change_password {
        return Err(dev.password_change_required(&c).into());
    }
    Ok(c)
}

/// For a handler that writes the owner's settings or adopts a state:
/// waits while an approved factory reset runs, then authenticates the
/// request. The guard is held to the handler's end, so no reset starts
/// meanwhile; a request that waited for one is refused here (the reset
/// ended every session and the connection's trust), never applied to
/// the factory device (`Device::reset_gate`).
pub(crate) async fn settings_change<'a>(
    dev: &'a Device,
    headers: &HeaderMap,
    conn: &ConnInfo,
) -> Result<(tokio::sync::RwLockReadGuard<'a, ()>, Caller), ApiError> {
    let gate = dev.reset_gate.read().await;
    let c = caller(dev, headers, conn)?;
    Ok((gate, c))
}

/// [`settings_change`] for a change of the caller's own password, the one
/// change a session whose password must be changed first may make (it
/// writes the accounts like any other).
pub(crate) async fn own_password_change<'a>(
    dev: &'a Device,
    headers: &HeaderMap,
    conn: &ConnInfo,
) -> Result<(tokio::sync::RwLockReadGuard<'a, ()>, Caller), ApiError> {
    let gate = dev.reset_gate.read().await;
    let c = session_caller(dev, headers, conn)?;
    Ok((gate, c))
}

/// How start-up findings and errors show a failure of the device: as the
/// API answers it (status, code and message).
pub(crate) fn answer_debug(e: DeviceError) -> String {
    format!("{:?}", ApiError::from(e))
}

/// The OpenAPI document, checked into docs/openapi.json and served at /api/v1/openapi.json.
pub const OPENAPI: &str = include_str!("../../../../docs/openapi.json");

/// The API router.
pub(crate) fn router(dev: Arc<Device>, max_body: usize) -> Router {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use drivesec_firmware::FirmwareError as F;

    use super::*;
    use crate::firmware::fw;

    fn status(e: F) -> u16 {
        ApiError::from(fw(e)).status_code()
    }

    /// What an image or statement says is the client's problem (400); the
    /// device's own keystore and file system failing is not (500).
    #[test]
    fn image_faults_are_the_clients_and_device_faults_are_not() {
        assert_eq!(status(F::BadChunk(3)), 400);
        assert_eq!(
            status(F::Rollback {
                image: 1,
                device: 2
            }),
            400
        );
        assert_eq!(status(F::MissingApproval("oem".into())), 400);
        let disk = drivesec_fsutil::FsError::io(
            "write",
            std::path::Path::new("firmware/slot-b.img.tmp"),
            std::io::Error::other("no space left on device"),
        );
        assert_eq!(status(F::Fs(disk)), 500);
        assert_eq!(
            status(F::Keystore(drivesec_keystore::KeystoreError::Crypto(
                "unwrap failed".into()
            ))),
            500
        );
        assert_eq!(
            status(F::Keystore(
                drivesec_keystore::KeystoreError::InvalidPeerKey("not on the curve".into())
            )),
            400
        );
    }

    /// What the device refuses is answered with the status of its kind and
    /// its own code and message; what fails inside it, a poisoned lock
    /// included, is a 500 whose body names nothing inside.
    #[test]
    fn the_devices_errors_are_answered_as_before() {
        use http_body_util::BodyExt as _;
        let answer = |e: DeviceError| {
            let resp = ApiError::from(e).into_response();
            let status = resp.status().as_u16();
            let body = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(resp.into_body().collect())
                .unwrap()
                .to_bytes();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            (
                status,
                body["error"].as_str().unwrap().to_string(),
                body["message"].as_str().unwrap().to_string(),
            )
        };
        let s = |x: &str| x.to_string();
        assert_eq!(
            answer(DeviceError::conflict("the drive is busy")),
            (409, s("wrong-state"), s("the drive is busy"))
        );
        assert_eq!(
            answer(DeviceError::Invalid("bad value".into())),
            (400, s("bad-request"), s("bad value"))
        );
        assert_eq!(answer(crate::device::stale_connection()).0, 421);
        for (kind, status) in [
            (Refusal::Unauthorized, 401),
            (Refusal::Forbidden, 403),
            (Refusal::NotFound, 404),
            (Refusal::Conflict, 409),
            (Refusal::StaleConnection, 421),
            (Refusal::Unprocessable, 422),
            (Refusal::TooMany, 429),
            (Refusal::Busy, 503),
        ] {
            assert_eq!(
                answer(DeviceError::refused(kind, "some-code", "why")),
                (status, s("some-code"), s("why"))
            );
        }
        let poisoned = std::sync::Mutex::new(());
        let _ = std::thread::scope(|t| {
            t.spawn(|| {
                let _g = poisoned.lock();
                panic!("holder panicked");
            })
            .join()
        });
        let e = crate::OrPoisoned::or_poisoned(poisoned.lock(), "state").unwrap_err();
        assert_eq!(e.to_string(), "state lock poisoned");
        assert_eq!(
            answer(e),
            (
                500,
                s("internal"),
                s("internal error; the device log has the details")
            )
        );
        let full = drivesec_audit::AuditError::Failed("disk gone".into());
        let (status, code, message) = answer(DeviceError::Trail(full));
        assert_eq!((status, code.as_str()), (503, "audit-unavailable"));
        assert!(
            message.ends_with("(check the disk; the device log has the error)"),
            "{message}"
        );
    }
}

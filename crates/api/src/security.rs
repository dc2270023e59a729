//! The security operations: the posture (SL-A per IEC 62443 foundational
//! requirement and the settings report), CRL installation, the access
//! policy and the two-person factory reset.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::audit::AuditSettings;
use crate::device::LifeCycle;
use crate::route::{Body, Method, Route, schema_of};

/// An IEC 62443 foundational requirement.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
pub enum FoundationalRequirement {
    /// FR 1, identification and authentication control (IAC).
    #[serde(rename = "FR1")]
    Fr1,
    /// FR 2, use control (UC).
    #[serde(rename = "FR2")]
    Fr2,
    /// FR 3, system integrity (SI).
    #[serde(rename = "FR3")]
    Fr3,
    /// FR 4, data confidentiality (DC).
    #[serde(rename = "FR4")]
    Fr4,
    /// FR 5, restricted data flow (RDF).
    #[serde(rename = "FR5")]
    Fr5,
    /// FR 6, timely response to events (TRE).
    #[serde(rename = "FR6")]
    Fr6,
    /// FR 7, resource availability (RA).
    #[serde(rename = "FR7")]
    Fr7,
}

impl FoundationalRequirement {
    /// The seven, in the order of an SL vector.
    pub const ALL: [FoundationalRequirement; 7] = [
        FoundationalRequirement::Fr1,
        FoundationalRequirement::Fr2,
        FoundationalRequirement::Fr3,
        FoundationalRequirement::Fr4,
        FoundationalRequirement::Fr5,
        FoundationalRequirement::Fr6,
        FoundationalRequirement::Fr7,
    ];

    /// Its place in an SL vector (0 for FR 1).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One foundational requirement's achieved security level, with every
/// finding that capped it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FrAssessment {
    /// The requirement.
    pub fr: FoundationalRequirement,
    /// Its name (`Identification and authentication control`, ...).
    pub name: String,
    /// The level achieved, 0 to 4: 4 less every cap below.
    #[schema(maximum = 4)]
    pub level: u8,
    /// Every cap applied, in the order found, each naming the requirement
    /// and what to change, ending in `-> at most N` (`SR 1.5 RE1 (SL 3):
    /// soft keystore, no hardware protection of keys -> at most 2`).
    pub reasons: Vec<String>,
}

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum TlsVersion {
    /// TLS 1.3.
    #[serde(rename = "TLSv1.3")]
    Tls13,
    /// TLS 1.2 (ECDHE with AEAD suites only).
    #[serde(rename = "TLSv1.2")]
    Tls12,
}

/// Whether a listener asks for a client certificate: always.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ClientCertificate {
    /// Every connection must present a client certificate (mutual TLS).
    Required,
}

/// The device, as the settings report names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PostureDevice {
    /// The serial number.
    pub serial_number: String,
    /// The model.
    pub model: String,
    /// Factory or commissioned.
    pub state: LifeCycle,
    /// The DNS name given at commissioning; null before.
    #[schema(required)]
    pub device_name: Option<String>,
}

/// The HTTPS API's TLS settings in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PostureTls {
    /// The protocol versions accepted (1.3 always; 1.2 when
    /// `tls.allow_tls12`).
    pub versions: Vec<TlsVersion>,
    /// The cipher suites offered, by their IANA-style names
    /// (`TLS13_AES_256_GCM_SHA384`, ...).
    pub cipher_suites: Vec<String>,
    /// Always `required`.
    pub client_certificate: ClientCertificate,
}

/// Where the device's keys live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PostureKeystore {
    /// The backend: `soft` (encrypted at rest in software) or `pkcs11` (a
    /// token).
    pub backend: String,
    /// Where: a directory, or a PKCS#11 URI without secrets.
    pub location: String,
}

/// One of the owner's trust anchors installed on the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TrustAnchorSummary {
    /// Its subject (RFC 4514 style).
    pub subject: String,
    /// SHA-256 of the certificate (DER), hex.
    pub sha256: String,
    /// The end of its validity (RFC 3339).
    pub not_after: String,
}

/// Where an installed CRL stands against its nextUpdate and
/// `trust.crl_grace_secs` (docs/pki.md, "CRL policy").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CrlStatus {
    /// Before its nextUpdate.
    Current,
    /// Past its nextUpdate, within the grace period: still enforced, a
    /// warning.
    Overdue,
    /// Past the grace period: still enforced, reported as an error; other
    /// certificates get in without current revocation status.
    Stale,
}

/// One installed CRL (one per issuer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InstalledCrl {
    /// Its issuer (RFC 4514 style).
    pub issuer: String,
    /// Its cRLNumber, in decimal (a string: it may exceed 64 bits).
    pub number: String,
    /// Its thisUpdate (RFC 3339).
    pub this_update: String,
    /// Its nextUpdate (RFC 3339).
    pub next_update: String,
    /// How many certificates it revokes.
    pub revoked: u64,
    /// Where it stands now.
    pub status: CrlStatus,
}

/// The HTTPS API's request handling and connection limits (`[api]` of the
/// device configuration; docs/device-api.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiSettings {
    /// The largest request body accepted, bytes.
    pub max_body_bytes: u64,
    /// Password hashes computed at the same time.
    pub max_concurrent_logins: u64,
    /// Login attempts accepted per client certificate per minute.
    pub logins_per_minute: u32,
    /// Wrong factory credentials from one client certificate before it
    /// must wait.
    pub factory_max_failures: u32,
    /// The longest such wait, seconds.
    pub factory_lockout_secs: u64,
    /// Connections in the TLS handshake at once.
    pub max_handshakes: u64,
    /// Of those, from one IP address.
    pub max_handshakes_per_source: u64,
    /// Time a client has to complete the TLS handshake, milliseconds.
    pub handshake_timeout_ms: u64,
    /// Authenticated API connections at once.
    pub max_connections: u64,
    /// Of those, with one client certificate.
    pub max_connections_per_certificate: u64,
    /// Time to send a request's head (and most idle time between requests
    /// on a kept-alive connection), seconds.
    pub header_timeout_secs: u64,
    /// Longest pause between two pieces of a request body, seconds.
    pub body_timeout_secs: u64,
    /// Slowest average body rate accepted once a body took longer than
    /// `body_timeout_secs`, bytes per second.
    pub min_body_bytes_per_sec: u64,
    /// How long an account must have held its role and password before it
    /// may approve another's factory reset, seconds.
    pub factory_reset_approver_min_age_secs: u64,
}

/// What the drive does when its controlling Modbus session ends or goes
/// silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CommLossReaction {
    /// Ramp to zero along the deceleration ramp, then ready (no restart
    /// without a new run edge).
    RampToStop,
    /// Trip into fault (torque off, coast).
    Fault,
    /// Keep running (named as the risky choice it is).
    IgnoreRisky,
}

/// The Modbus/TCP Security server's settings in force (docs/modbus.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PostureModbus {
    /// Whether Modbus/TCP Security is served.
    pub enabled: bool,
    /// The TLS listener's `IP:PORT`.
    pub listen: String,
    /// The TLS versions accepted.
    pub tls_versions: Vec<TlsVersion>,
    /// Always `required`.
    pub client_certificate: ClientCertificate,
    /// The roles the rights table has rights for.
    pub rights_roles: Vec<String>,
    /// Risky: the `IP:PORT` plain, unauthenticated Modbus/TCP is served
    /// on; null when it is not.
    #[schema(required)]
    pub insecure_plain_listen: Option<String>,
    /// Risky: the role whose rights plain Modbus/TCP clients get; null:
    /// none.
    #[schema(required)]
    pub insecure_plain_role: Option<String>,
    /// What the drive does when the controlling session is lost.
    pub comm_loss_reaction: CommLossReaction,
    /// How long the controlling session may stay silent, milliseconds.
    pub comm_loss_timeout_ms: u64,
}

/// The machine-readable settings report (CR 7.6 RE1): what the posture was
/// assessed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PostureSettings {
    /// The device.
    pub device: PostureDevice,
    /// Whether the one-time factory credential still exists (it dies at
    /// commissioning).
    pub factory_credential: bool,
    /// The HTTPS API's TLS.
    pub tls: PostureTls,
    /// The keystore.
    pub keystore: PostureKeystore,
    /// The owner's trust anchors (those the device could read).
    pub trust_anchors: Vec<TrustAnchorSummary>,
    /// Whether any CRL is installed.
    pub crl_installed: bool,
    /// The installed CRLs and where each stands.
    pub crls: Vec<InstalledCrl>,
    /// How long a CRL past its nextUpdate counts as overdue before stale,
    /// seconds.
    pub crl_grace_secs: u64,
    /// The access policy in force.
    pub access: AccessPolicy,
    /// How many accounts hold each role (empty before commissioning).
    pub accounts_per_role: BTreeMap<String, u64>,
    /// The audit trail's settings.
    pub audit: AuditSettings,
    /// Whether audit forwarding is configured.
    pub audit_forwarding: bool,
    /// Why the forwarder refuses its collector's certificate; null when it
    /// does not.
    #[schema(required)]
    pub audit_forwarding_refused: Option<String>,
    /// The API's limits.
    pub api: ApiSettings,
    /// Whether a verified firmware image is running.
    pub firmware_verified: bool,
    /// What the audit trail's start-up check found (damage, a rewind, what
    /// it could not check); empty when it passed.
    pub audit_start_up_findings: Vec<String>,
    /// The Modbus/TCP Security server.
    pub modbus: PostureModbus,
}

/// The answer of `GET /api/v1/posture`: the security level the device
/// achieves in its current configuration (SL-A per IEC 62443 foundational
/// requirement), with the reason for every point lost, and the settings
/// report. The findings are rules over the live state, capped by what the
/// device's own IEC 62443-4-2 declaration says it does not implement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Posture {
    /// The SL-A vector in FR order {IAC UC SI DC RDF TRE RA}, each 0 to 4.
    #[schema(min_items = 7, max_items = 7)]
    pub sl_a: [u8; 7],
    /// The vector written out: `SL-A(device) = {a b c d e f g}`.
    pub notation: String,
    /// Each foundational requirement, in FR order.
    pub foundational_requirements: Vec<FrAssessment>,
    /// The settings report (CR 7.6 RE1).
    pub settings: PostureSettings,
}

/// `PUT /api/v1/security/crl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CrlInstallRequest {
    /// One or more PEM `X509 CRL` blocks (or one DER CRL).
    pub crl_pem: String,
}

/// The answer of `PUT /api/v1/security/crl`: checked, written and adopted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CrlInstallAnswer {
    /// Always true.
    pub installed: bool,
}

/// Password strength, reuse and age rules (SR 1.5, SR 1.7); a field left
/// out takes its default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AccessPasswordPolicy {
    /// The least length in characters, 8 to 256.
    #[schema(minimum = 8, maximum = 256)]
    pub min_length: u64,
    /// How many of the classes lower-case, upper-case, digit and other a
    /// password must use, 0 to 4.
    #[schema(maximum = 4)]
    pub min_classes: u8,
    /// A new password must differ from the last `history` passwords, the
    /// current one included (0: no check), at most 24.
    #[schema(maximum = 24)]
    pub history: u64,
    /// Days after which a password must be changed at the next login, at
    /// least 1; null: never.
    #[schema(minimum = 1)]
    pub max_age_days: Option<u32>,
}

impl Default for AccessPasswordPolicy {
    fn default() -> Self {
        AccessPasswordPolicy {
            min_length: 12,
            min_classes: 3,
            history: 5,
            max_age_days: Some(365),
        }
    }
}

/// Lockout after failed logins, per account and client certificate
/// (docs/permissions.md, "Failed logins"); a field left out takes its
/// default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AccessLockoutPolicy {
    /// Consecutive failed logins to one account over one client
    /// certificate that lock the account for that certificate (at least 1).
    #[schema(minimum = 1)]
    pub max_failures: u32,
    /// How long the first lock of an (account, certificate) pair lasts,
    /// seconds; each further lock in a row lasts twice as long, up to
    /// `max_lockout_secs`. 0: until an administrator unlocks it (except for
    /// accounts holding `manage-users`, whose locks always end).
    pub lockout_secs: u64,
    /// The longest lock, seconds (1 to 604800, a week).
    #[schema(minimum = 1, maximum = 604800)]
    pub max_lockout_secs: u64,
    /// Failed logins to one account over all certificates since its last
    /// successful login, after which a certificate new to the account must
    /// wait before each attempt.
    pub account_max_failures: u32,
    /// The longest such wait, seconds (1 to 3600); it starts at one second
    /// and doubles with each further failure.
    #[schema(minimum = 1, maximum = 3600)]
    pub max_delay_secs: u64,
}

impl Default for AccessLockoutPolicy {
    fn default() -> Self {
        AccessLockoutPolicy {
            max_failures: 5,
            lockout_secs: 900,
            max_lockout_secs: 86_400,
            account_max_failures: 20,
            max_delay_secs: 60,
        }
    }
}

/// Session limits (SR 2.5, 2.6, 2.7); a field left out takes its default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AccessSessionPolicy {
    /// A session unused for this many seconds expires (at least 1).
    #[schema(minimum = 1)]
    pub idle_secs: u64,
    /// A session expires this many seconds after login, however active (at
    /// least 1).
    #[schema(minimum = 1)]
    pub absolute_secs: u64,
    /// Live sessions one account may hold at once (at least 1).
    #[schema(minimum = 1)]
    pub max_per_user: u64,
    /// Own-password changes one session may attempt per minute (1 to 60).
    #[schema(minimum = 1, maximum = 60)]
    pub password_changes_per_minute: u32,
}

impl Default for AccessSessionPolicy {
    fn default() -> Self {
        AccessSessionPolicy {
            idle_secs: 900,
            absolute_secs: 28_800,
            max_per_user: 3,
            password_changes_per_minute: 3,
        }
    }
}

/// Argon2id cost of new password hashes; a field left out takes its
/// default. Memory 7168 to 131072 KiB, iterations 1 to 10, parallelism 1
/// to 8, and memory x iterations between 35840 and 262144.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AccessHashParams {
    /// Memory, KiB.
    #[schema(minimum = 7168, maximum = 131072)]
    pub memory_kib: u32,
    /// Passes.
    #[schema(minimum = 1, maximum = 10)]
    pub iterations: u32,
    /// Lanes.
    #[schema(minimum = 1, maximum = 8)]
    pub parallelism: u32,
}

impl Default for AccessHashParams {
    fn default() -> Self {
        AccessHashParams {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1,
        }
    }
}

/// The system use notification a device shows before login when none is
/// configured.
pub const DEFAULT_BANNER: &str = "Authorised use only; activity is recorded.";

/// The access policy: the answer of `GET /api/v1/security/access` and the
/// request of `PUT /api/v1/security/access` (which replaces the whole
/// policy: a field left out takes its default, not its current value; an
/// unknown field is refused). Out-of-range values are 400 naming the
/// field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AccessPolicy {
    /// Password rules.
    pub password: AccessPasswordPolicy,
    /// Lockout rules.
    pub lockout: AccessLockoutPolicy,
    /// Session limits.
    pub session: AccessSessionPolicy,
    /// Password hashing cost.
    pub hash: AccessHashParams,
    /// The system use notification shown before login (SR 1.12), at most
    /// 4096 bytes.
    #[schema(max_length = 4096)]
    pub banner: String,
}

impl Default for AccessPolicy {
    fn default() -> Self {
        AccessPolicy {
            password: AccessPasswordPolicy::default(),
            lockout: AccessLockoutPolicy::default(),
            session: AccessSessionPolicy::default(),
            hash: AccessHashParams::default(),
            banner: DEFAULT_BANNER.to_owned(),
        }
    }
}

/// The answer of `PUT /api/v1/security/access`: validated, stored and in
/// force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AccessPolicySetAnswer {
    /// Always true.
    pub applied: bool,
}

/// `POST /api/v1/factory-reset`: ask for a factory reset, or approve
/// another account's request.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FactoryResetRequest {
    /// The caller's own password, asked again.
    pub password: String,
    /// To approve: the request id another account's request answered.
    /// Absent: ask.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approve: Option<String>,
}

impl std::fmt::Debug for FactoryResetRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FactoryResetRequest")
            .field("password", &"<redacted>")
            .field("approve", &self.approve)
            .finish()
    }
}

/// The 202 answer of `POST /api/v1/factory-reset` without `approve`: the
/// request waits for a second person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FactoryResetPendingAnswer {
    /// Always true.
    pub pending: bool,
    /// The request id the approver gives as `approve`.
    pub request: String,
    /// Seconds the request waits for its approval (600).
    pub expires_in_secs: u64,
    /// What to do next, for people.
    pub next: String,
}

/// The answer of an approved `POST /api/v1/factory-reset`: the device is
/// back in factory state.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FactoryResetAnswer {
    /// Always `factory`.
    pub state: LifeCycle,
    /// The new one-time factory credential, for commissioning the device
    /// again; shown only here.
    pub factory_credential: String,
}

impl std::fmt::Debug for FactoryResetAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FactoryResetAnswer")
            .field("state", &self.state)
            .field("factory_credential", &"<redacted>")
            .finish()
    }
}

/// The security operations.
pub(crate) fn routes() -> Vec<Route> {
    vec![
        Route::new(
            Method::Get,
            "/api/v1/posture",
            "SL-A vector per foundational requirement with reasons, and the settings report (CR 7.6 RE1)",
            Body::Json(schema_of::<Posture>),
        )
        .tag("security")
        .permission("read-security-settings"),
        Route::new(
            Method::Put,
            "/api/v1/security/crl",
            "Install a CRL of one of the owner's CAs (checked, built in memory, written, then adopted; a refusal changes nothing)",
            Body::Json(schema_of::<CrlInstallAnswer>),
        )
        .tag("security")
        .permission("manage-trust")
        .describe("The body's `crl_pem` holds one or more PEM `X509 CRL` blocks (or one DER CRL). Each must be v2 with cRLNumber and nextUpdate, signed by a CA the device knows (a trust anchor or a CA of its own chain), and newer (greater number) than the installed CRL of the same issuer; CRLs of other issuers stay. Refusals are 400 with `error` one of `crl-malformed`, `crl-incomplete`, `crl-unknown-issuer`, `crl-bad-signature`, `crl-duplicate-issuer`, `crl-not-newer`. A CRL past its nextUpdate stays enforced and is reported (docs/pki.md, \"CRL policy\").")
        .request(Body::Json(schema_of::<CrlInstallRequest>)),
        Route::new(
            Method::Post,
            "/api/v1/factory-reset",
            "Factory reset, two people: ask (202 with a request id), then another account approves; wipes ownership (LDevID key, trust, accounts) back to factory state, keeps the audit trail sealed under audit-archive/, returns the new one-time factory credential",
            Body::Json(schema_of::<FactoryResetAnswer>),
        )
        .tag("security")
        .permission("factory-reset")
        .describe("The caller's password is asked again. Without `approve`: answers 202 `{pending, request, expires_in_secs}`. With `approve`: another account than the one that asked, within 600 s (403 `second-person-required` for the same account, 409 for an unknown or expired id). A wrong password is 401 `reauthentication-failed`. See docs/device-api.md.")
        .request(Body::Json(schema_of::<FactoryResetRequest>))
        .answer(
            202,
            "Requested; waiting for a second person's approval",
            Body::Json(schema_of::<FactoryResetPendingAnswer>),
        ),
        Route::new(
            Method::Get,
            "/api/v1/security/access",
            "The access policy in force: password, lockout and session rules, hash cost, banner",
            Body::Json(schema_of::<AccessPolicy>),
        )
        .tag("security")
        .permission("read-security-settings"),
        Route::new(
            Method::Put,
            "/api/v1/security/access",
            "Replace the access policy (validated; stored in the state directory, overriding the configuration file)",
            Body::Json(schema_of::<AccessPolicySetAnswer>),
        )
        .tag("security")
        .permission("write-security-settings")
        .request(Body::Json(schema_of::<AccessPolicy>)),
    ]
}

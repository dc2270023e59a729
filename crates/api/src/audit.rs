//! The audit operations: reading and exporting the trail, collecting it for
//! remote verification, and forwarding it to a syslog collector.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::route::{Body, Method, Route, schema_of};

/// How an audited action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AuditOutcome {
    /// Done.
    Success,
    /// Attempted and failed.
    Failure,
    /// Refused by access control.
    Denied,
}

/// How far the device trusted its clock when it stamped a record (SR 2.11;
/// `audit.time_quality` of its configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TimeQuality {
    /// Synchronised to a trusted time source.
    Synchronized,
    /// A free-running clock, never or not recently synchronised.
    Unsynchronized,
    /// Not known.
    Unknown,
}

/// Who did what a record records: `{"kind": "user", "id": NAME}`,
/// `{"kind": "certificate", "id": SHA256}` or `{"kind": "device"}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", content = "id", rename_all = "kebab-case")]
pub enum AuditActor {
    /// A logged-in account, by name.
    User(String),
    /// A TLS client not logged in, by its certificate's SHA-256
    /// fingerprint (hex).
    Certificate(String),
    /// The device itself.
    Device,
}

/// One record of the audit trail, with its place in the hash chain
/// (docs/audit.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditRecord {
    /// Its sequence number (from 1, never reused).
    pub seq: u64,
    /// Its hash, hex: SHA-256 over its frame (length, sequence number,
    /// previous hash, body; docs/audit.md, "Frame").
    pub hash: String,
    /// The previous record's hash, hex (64 zeros before record 1).
    pub prev: String,
    /// When, UTC, RFC 3339 with microseconds.
    pub time: String,
    /// How far the clock was trusted when it was stamped.
    pub time_quality: TimeQuality,
    /// Who.
    pub actor: AuditActor,
    /// From where: the client's `IP:PORT`; null for the device's own
    /// records.
    #[schema(required)]
    pub source: Option<String>,
    /// What, as a dotted name (`auth.login`, `param.write`, ...).
    pub action: String,
    /// On what (an account, a parameter, a request id, ...); null when the
    /// action has no target.
    #[schema(required)]
    pub target: Option<String>,
    /// How it ended.
    pub outcome: AuditOutcome,
    /// Anything else the action records: an open JSON object whose keys
    /// depend on the action (docs/audit.md lists them).
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    /// Whether it was essential (recorded also when the trail is full).
    pub essential: bool,
}

/// The query of `GET /api/v1/audit` and `GET /api/v1/audit/export`: every
/// filter given must match; none given reads from the first record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// The first sequence number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(nullable = false)]
    pub from: Option<u64>,
    /// The last sequence number (inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(nullable = false)]
    pub to: Option<u64>,
    /// Records stamped at or after this time (RFC 3339, UTC); not RFC 3339
    /// is 400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(nullable = false)]
    pub since: Option<String>,
    /// Records stamped before this time (RFC 3339, UTC); not RFC 3339 is 400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(nullable = false)]
    pub until: Option<String>,
    /// The actor's id (account name or certificate fingerprint), or
    /// `device`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(nullable = false)]
    pub actor: Option<String>,
    /// The action, or a prefix ending in `.` (`auth.`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(nullable = false)]
    pub action: Option<String>,
    /// The outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(inline, nullable = false)]
    pub outcome: Option<AuditOutcome>,
    /// At most this many records (`GET /api/v1/audit` only): 100 when
    /// absent; more than 10000 reads 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(maximum = 10000, nullable = false)]
    pub limit: Option<u64>,
}

/// The answer of `GET /api/v1/audit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditRecordsAnswer {
    /// The records that matched, in sequence order (readable frames only:
    /// damage hides only itself; `GET /api/v1/audit/export` needs the
    /// whole chain).
    pub records: Vec<AuditRecord>,
}

/// One segment of a trail snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TrailSegment {
    /// The segment's file name: 20 digits and `.seg`.
    pub name: String,
    /// Its length at the snapshot: what to fetch with
    /// `GET /api/v1/audit/trail/segment`.
    pub bytes: u64,
}

/// The answer of `GET /api/v1/audit/trail`: one consistent snapshot of the
/// trail for remote verification (docs/audit.md, "Collecting a trail").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TrailSnapshot {
    /// The IDevID certificate chain (PEM) whose key signs the checkpoints.
    pub idevid_pem: String,
    /// The trail's small files by name (`anchor.json`, `checkpoint.json`,
    /// `checkpoints.log`, those present), each its content in base64.
    pub files: BTreeMap<String, String>,
    /// The segments in order, each with the length to fetch.
    pub segments: Vec<TrailSegment>,
}

/// The query of `GET /api/v1/audit/trail/segment`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SegmentQuery {
    /// The segment, as `GET /api/v1/audit/trail` listed it.
    #[param(pattern = r"^[0-9]{20}\.seg$")]
    pub name: String,
    /// How many bytes from its start (at most its length).
    pub bytes: u64,
}

/// Where the audit trail is forwarded (RFC 5425: syslog over mutual TLS):
/// the request of `PUT /api/v1/audit/forwarding`, and what
/// `GET /api/v1/audit/forwarding` shows (docs/audit.md, "Forwarding").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardingSettings {
    /// The collector's `IP:PORT`.
    pub collector: String,
    /// The DNS name or IP address the collector's certificate must carry.
    pub server_name: String,
    /// PEM trust anchors for the collector's certificate.
    pub ca_pem: String,
    /// Private enterprise number of the syslog SD-ID `drivesec@N`; 50316
    /// (the project's) when absent; 0 is refused (400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 4294967295_u64)]
    pub enterprise_number: Option<u32>,
    /// Longest syslog message in octets; a longer record's MSG is cut and
    /// marked `truncated="true"`; 8192 (rsyslog's default maxMessageSize)
    /// when absent; outside the range is 400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 2048, maximum = 262144)]
    pub max_message_bytes: Option<u32>,
}

/// What the forwarder has done since it started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ForwardingStatus {
    /// The delivery cursor: the last `seq` written to the collector's
    /// connection.
    pub forwarded: u64,
    /// Whether a connection is up.
    pub connected: bool,
    /// Connections opened since the forwarder started.
    pub connections: u64,
    /// Failed connection attempts, refused collectors and failed writes.
    pub failures: u64,
    /// The last failure, in words; null when none.
    #[schema(required)]
    pub last_error: Option<String>,
    /// Why the device refused the collector's certificate at the last
    /// handshake or re-check (revoked, not trusted, expired, wrong name);
    /// null once a handshake succeeds. Nothing is sent to a refused
    /// collector.
    #[schema(required)]
    pub collector_refused: Option<String>,
}

/// The answer of `GET /api/v1/audit/forwarding`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ForwardingAnswer {
    /// The settings; null when forwarding is not configured.
    #[schema(required)]
    pub settings: Option<ForwardingSettings>,
    /// The forwarder's status; null when no forwarder runs.
    #[schema(required)]
    pub status: Option<ForwardingStatus>,
}

/// The answer of `PUT /api/v1/audit/forwarding`: stored, and the forwarder
/// (re)started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ForwardingSetAnswer {
    /// The collector the trail now goes to.
    pub collector: String,
}

/// The answer of `POST /api/v1/audit/forwarding/test`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ForwardingTestAnswer {
    /// The test record's sequence number; delivered once
    /// `GET /api/v1/audit/forwarding` shows `status.forwarded` at least this.
    pub seq: u64,
}

/// What the trail does when it reaches `max_bytes` (SR 2.9, 2.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum FullPolicy {
    /// Delete the oldest segments whose every record was forwarded or
    /// exported; if that frees nothing, refuse non-essential records.
    DropForwarded,
    /// Keep everything; refuse non-essential records (and so their
    /// actions); essential records may use the reserve.
    RefuseNonEssential,
}

/// The audit trail's settings (`[audit]` of the device configuration), as
/// the posture's settings report shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditSettings {
    /// A new segment file starts when the current one reaches this size,
    /// bytes.
    pub segment_bytes: u64,
    /// A checkpoint is signed after this many records...
    pub checkpoint_every: u64,
    /// ...or this many seconds after the first record not yet covered.
    pub checkpoint_interval: u64,
    /// The bound on all segments together, bytes.
    pub max_bytes: u64,
    /// A warning is recorded when usage reaches this percentage of
    /// `max_bytes`.
    #[schema(maximum = 100)]
    pub warn_percent: u8,
    /// What happens when the trail is full.
    pub when_full: FullPolicy,
    /// Room beyond `max_bytes` kept for essential records, bytes.
    pub reserve_bytes: u64,
    /// The quality of the clock stamped into records.
    pub time_quality: TimeQuality,
}

/// The audit operations.
pub(crate) fn routes() -> Vec<Route> {
    vec![
        Route::new(
            Method::Get,
            "/api/v1/audit",
            "Read audit records by range, time and filter",
            Body::Json(schema_of::<AuditRecordsAnswer>),
        )
        .tag("audit")
        .permission("read-audit")
        .query_type::<AuditQuery>(),
        Route::new(
            Method::Get,
            "/api/v1/audit/export",
            "Export audit records as JSON lines",
            Body::Bytes("application/jsonl"),
        )
        .tag("audit")
        .permission("read-audit")
        .describe("The answer is `application/jsonl`: one `AuditRecord` (the schema of `GET /api/v1/audit`'s records) per line, streamed in order. The chain must be whole over the range asked for: damage, or a read failure part-way, aborts the response without a clean end of the chunked body, so a cut export is never taken for a whole one. `limit` does not apply.")
        .query_type::<AuditQuery>(),
        Route::new(
            Method::Get,
            "/api/v1/audit/trail",
            "A consistent snapshot for remote verification: the IDevID chain, the small trail files (base64) and each segment's name and length (docs/audit.md, \"Collecting a trail\")",
            Body::Json(schema_of::<TrailSnapshot>),
        )
        .tag("audit")
        .permission("read-audit"),
        Route::new(
            Method::Get,
            "/api/v1/audit/trail/segment",
            "The first `bytes` of segment `name` (20 digits + .seg), as application/octet-stream; 400 for a bad name or a length beyond the segment, 404 when the segment is gone",
            Body::Bytes("application/octet-stream"),
        )
        .tag("audit")
        .permission("read-audit")
        .query_type::<SegmentQuery>()
        .error(404),
        Route::new(
            Method::Get,
            "/api/v1/audit/forwarding",
            "Forwarding settings and status",
            Body::Json(schema_of::<ForwardingAnswer>),
        )
        .tag("audit")
        .permission("read-security-settings"),
        Route::new(
            Method::Put,
            "/api/v1/audit/forwarding",
            "Configure forwarding to a syslog collector (RFC 5425, mutual TLS)",
            Body::Json(schema_of::<ForwardingSetAnswer>),
        )
        .tag("audit")
        .permission("configure-audit-forwarding")
        .request(Body::Json(schema_of::<ForwardingSettings>)),
        Route::new(
            Method::Post,
            "/api/v1/audit/forwarding/test",
            "Record a test record and forward it now; answers {\"seq\": n}. GET /api/v1/audit/forwarding shows status.forwarded >= n once the collector took it. 409 when forwarding is not configured",
            Body::Json(schema_of::<ForwardingTestAnswer>),
        )
        .tag("audit")
        .permission("configure-audit-forwarding"),
    ]
}

//! Device information, drive parameters, the audit trail, forwarding,
//! posture, trust and factory reset.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use drivesec_access::Permission;
use drivesec_api::{audit as wire_audit, drive as wire_drive, security as wire_security};
use drivesec_audit::Outcome;
use drivesec_audit::reader::{self, Query as AuditQuery};
use drivesec_drive::{Group, PARAMS};
use drivesec_fsutil as fsu;
use drivesec_state::files;
use serde_json::json;

use super::{ApiError, Body, Caller, ConnInfo, Device, PathParam, reply, settings_change};
use crate::device::downloads::{
    CertificateDownload, SEGMENT_DOWNLOADS, SEGMENT_DOWNLOADS_PER_CERTIFICATE,
};
use crate::device::reset::{RESET_APPROVAL_WINDOW, ResetRequest};
use crate::posture::{access_policy, life_cycle};
use crate::{DeviceError, OrPoisoned};

use drivesec_api::audit::ForwardingSettings;

pub(crate) async fn info(State(dev): State<Arc<Device>>) -> Result<Response, ApiError> {
    let tampered = dev.is_tampered();
    let st = dev.state.read().or_poisoned("state")?;
    let banner = dev
        .config
        .read()
        .or_poisoned("config")?
        .access
        .banner
        .clone();
    Ok(reply(drivesec_api::device::DeviceInfo {
        serial_number: st.file.serial_number.clone(),
        model: st.file.model.clone(),
        manufacturer: st.file.manufacturer.clone(),
        state: life_cycle(st.file.state),
        device_name: st.file.device_name.clone(),
        banner,
        firmware_version: env!("CARGO_PKG_VERSION").to_string(),
        api: drivesec_api::device::ApiVersion::V1,
        tampered,
    }))
}

fn param_group(g: Group) -> wire_drive::ParamGroup {
    match g {
        Group::Operation => wire_drive::ParamGroup::Operation,
        Group::Limits => wire_drive::ParamGroup::Limits,
        Group::Motor => wire_drive::ParamGroup::Motor,
    }
}

fn param_definition(d: &drivesec_drive::ParamDef) -> wire_drive::ParamDefinition {
    let drivesec_drive::ParamDef {
        name,
        group,
        unit,
        min,
        max,
        integer,
        default,
        description,
    } = d;
    wire_drive::ParamDefinition {
        name: name.to_string(),
        group: param_group(*group),
        unit: unit.to_string(),
        min: *min,
        max: *max,
        integer: *integer,
        default: *default,
        description: description.to_string(),
    }
}

pub(crate) async fn get_params(
    State(dev): State<Arc<Device>>,
    c: Caller,
) -> Result<Response, ApiError> {
    dev.require(&c, Permission::ReadParams, "param.read")?;
    let p = dev.params.lock().or_poisoned("params")?.clone();
    Ok(reply(wire_drive::ParamsAnswer {
        values: p.values().clone(),
        definitions: PARAMS.iter().map(param_definition).collect(),
    }))
}

pub(crate) async fn set_param(
    State(dev): State<Arc<Device>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    PathParam(name): PathParam,
    Body(req): Body<wire_drive::ParamWriteRequest>,
) -> Result<Response, ApiError> {
    let (_settings, c) = settings_change(&dev, &headers, &conn).await?;
    let def = drivesec_drive::def(&name)
        .ok_or_else(|| ApiError::not_found(format!("unknown parameter '{name}'")))?;
    let perm = match def.group {
        Group::Operation => Permission::WriteParamsOperation,
        Group::Limits => Permission::WriteParamsLimits,
        Group::Motor => Permission::WriteParamsMotor,
    };
    dev.require(&c, perm, "param.write")?;
    let rec = dev.reserve("param.write")?;
    match dev.write_params(&[(name.as_str(), req.value)]) {
        Ok(before) => {
            let old = before.get(&name);
            rec.record(
                Device::event(&c, "param.write", Outcome::Success)
                    .target(name.clone())
                    .details(json!({"certificate": c.conn.fingerprint, "role": c.role, "old": old, "new": req.value})),
            )?;
            Ok(reply(wire_drive::ParamWriteAnswer {
                name,
                value: req.value,
                old,
            }))
        }
        Err(e @ DeviceError::Refused { .. }) => {
            rec.record(
                Device::event(&c, "param.write", Outcome::Failure)
                    .target(name.clone())
                    .details(json!({"certificate": c.conn.fingerprint, "role": c.role, "rejected": req.value, "reason": e.to_string()})),
            )?;
            Err(e.into())
        }
        Err(e) => Err(e.into()),
    }
}

fn audit_query(p: &wire_audit::AuditQuery) -> Result<AuditQuery, ApiError> {
    let outcome = p.outcome.map(|o| match o {
        wire_audit::AuditOutcome::Success => Outcome::Success,
        wire_audit::AuditOutcome::Failure => Outcome::Failure,
        wire_audit::AuditOutcome::Denied => Outcome::Denied,
    });
    for t in [&p.since, &p.until].into_iter().flatten() {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .map_err(|_| ApiError::bad_request(format!("'{t}' is not an RFC 3339 time")))?;
    }
    Ok(AuditQuery {
        from_seq: p.from,
        to_seq: p.to,
        since: p.since.clone(),
        until: p.until.clone(),
        actor: p.actor.clone(),
        action: p.action.clone(),
        outcome,
    })
}

pub(crate) async fn read_audit(
    State(dev): State<Arc<Device>>,
    q: Result<Query<wire_audit::AuditQuery>, axum::extract::rejection::QueryRejection>,
    c: Caller,
) -> Result<Response, ApiError> {
    dev.require(&c, Permission::ReadAudit, "audit.read")?;
    let Query(p) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let query = audit_query(&p)?;
    let dir = dev.audit_log()?.dir().to_path_buf();
    let limit = usize::try_from(p.limit.unwrap_or(100).min(10_000)).unwrap_or(10_000);
    let rec = dev.reserve("audit.read")?;
    let records = tokio::task::spawn_blocking(move || reader::read(&dir, &query, limit))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    rec.record(
        Device::event(&c, "audit.read", Outcome::Success)
            .details(json!({"certificate": c.conn.fingerprint, "records": records.len()})),
    )?;
    Ok(reply(wire_audit::AuditRecordsAnswer {
        records: records.into_iter().map(audit_record).collect(),
    }))
}

/// A record read back, on the wire.
fn audit_record(r: reader::StoredRecord) -> wire_audit::AuditRecord {
    use drivesec_audit::{Actor, TimeQuality};
    let reader::StoredRecord {
        seq,
        hash,
        prev,
        record:
            drivesec_audit::Record {
                time,
                time_quality,
                actor,
                source,
                action,
                target,
                outcome,
                details,
                essential,
            },
    } = r;
    wire_audit::AuditRecord {
        seq,
        hash,
        prev,
        time,
        time_quality: match time_quality {
            TimeQuality::Synchronized => wire_audit::TimeQuality::Synchronized,
            TimeQuality::Unsynchronized => wire_audit::TimeQuality::Unsynchronized,
            TimeQuality::Unknown => wire_audit::TimeQuality::Unknown,
        },
        actor: match actor {
            Actor::User(u) => wire_audit::AuditActor::User(u),
            Actor::Certificate(f) => wire_audit::AuditActor::Certificate(f),
            Actor::Device => wire_audit::AuditActor::Device,
        },
        source,
        action,
        target,
        outcome: match outcome {
            Outcome::Success => wire_audit::AuditOutcome::Success,
            Outcome::Failure => wire_audit::AuditOutcome::Failure,
            Outcome::Denied => wire_audit::AuditOutcome::Denied,
        },
        details,
        essential,
    }
}

pub(crate) async fn export_audit(
    State(dev): State<Arc<Device>>,
    q: Result<Query<wire_audit::AuditQuery>, axum::extract::rejection::QueryRejection>,
    c: Caller,
) -> Result<Response, ApiError> {
    dev.require(&c, Permission::ReadAudit, "audit.export")?;
    let Query(p) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let query = audit_query(&p)?;
    let dir = dev.audit_log()?.dir().to_path_buf();
    let rec = dev.reserve("audit.export")?;
    // Streamed: the trail is read and sent a chunk at a time, so memory
    // stays bounded whatever its size. A read failure mid-way aborts the
    // response (no clean end of the chunked body), so a client never takes
    // a cut export for a whole one.
    let (mut out, body) = ChunkWriter::new(None);
    tokio::task::spawn_blocking(move || {
        let r = reader::export_jsonl(&dir, &query, &mut out).and_then(|done| {
            out.flush_chunk()
                .map_err(|e| drivesec_audit::AuditError::Invalid(format!("export output: {e}")))?;
            Ok(done)
        });
        let (outcome, details) = match &r {
            Ok((n, last)) => (
                Outcome::Success,
                json!({"certificate": c.conn.fingerprint, "records": n, "last_seq": last}),
            ),
            Err(e) => (
                Outcome::Failure,
                json!({"certificate": c.conn.fingerprint, "reason": e.to_string()}),
            ),
        };
        if let Err(e) = &r {
            tracing::error!(error = %e, "audit export failed part-way");
            out.abort("the export failed");
        }
        let _ = rec.record(Device::event(&c, "audit.export", outcome).details(details));
    });
    let body = axum::body::Body::new(body);
    Ok(([("content-type", "application/jsonl")], body).into_response())
}

/// Bytes an export sends at a time.
const EXPORT_CHUNK: usize = 64 * 1024;

/// Longest an export waits for the client to take the next chunk; a
/// client that stops reading is cut off, so it cannot hold the export's
/// thread and its audit room.
const EXPORT_STALL: std::time::Duration = std::time::Duration::from_secs(30);

/// The slowest a segment download may be taken, bytes per second,
/// averaged over each [`EXPORT_STALL`] from the answer on (the first
/// window included, so the connection's buffers filling at once count
/// only toward the first): what the tool's client demands of devices
/// (`drivesec_client::client::Timeouts::min_rate`). A slower reader is cut off, and
/// its place given back.
pub(crate) const SEGMENT_MIN_RATE: u64 = 32 << 10;

/// Why a streamed answer was cut off by the device (its client did not
/// take it fast enough), as opposed to a client that went away.
const CUT: &str = "cut off";

/// A minimum average rate over windows ([`EXPORT_STALL`] long, but for
/// tests).
struct Pace {
    min_rate: u64,
    window: std::time::Duration,
    window_start: std::time::Instant,
    window_sent: u64,
}

impl Pace {
    fn window_end(&self) -> std::time::Instant {
        self.window_start + self.window
    }

    /// Checks the window if it ended: it must have taken its share.
    fn check(&mut self) -> std::io::Result<()> {
        self.check_at(std::time::Instant::now())
    }

    fn check_at(&mut self, now: std::time::Instant) -> std::io::Result<()> {
        if now < self.window_end() {
            return Ok(());
        }
        let need = u64::try_from(u128::from(self.min_rate) * self.window.as_millis() / 1000)
            .unwrap_or(u64::MAX);
        if self.window_sent < need {
            return Err(std::io::Error::other(format!(
                "{CUT}: the client took {} bytes in {} ms, below the minimum rate of {} bytes/s",
                self.window_sent,
                self.window.as_millis(),
                self.min_rate
            )));
        }
        self.window_start = now;
        self.window_sent = 0;
        Ok(())
    }
}

/// A `Write` that hands full chunks to the response body.
struct ChunkWriter {
    tx: tokio::sync::mpsc::Sender<axum::body::Bytes>,
    /// Ends the response with an error at once, ahead of the chunks
    /// still queued (see [`ChunkWriter::abort`]).
    abort: Option<tokio::sync::oneshot::Sender<std::io::Error>>,
    rt: tokio::runtime::Handle,
    buf: Vec<u8>,
    /// Longest wait for the client to take a chunk ([`EXPORT_STALL`]).
    stall: std::time::Duration,
    pace: Option<Pace>,
}

impl ChunkWriter {
    /// A writer and the response body it feeds; with `min_rate`, a client
    /// that takes the body slower than that on average is cut off
    /// ([`Pace`]).
    fn new(min_rate: Option<u64>) -> (ChunkWriter, ChunkBody) {
        Self::with_times(min_rate, EXPORT_STALL)
    }

    /// [`ChunkWriter::new`] with `stall` for [`EXPORT_STALL`] (tests).
    fn with_times(min_rate: Option<u64>, stall: std::time::Duration) -> (ChunkWriter, ChunkBody) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let (abort, aborted) = tokio::sync::oneshot::channel();
        let out = ChunkWriter {
            tx,
            abort: Some(abort),
            rt: tokio::runtime::Handle::current(),
            buf: Vec::with_capacity(EXPORT_CHUNK),
            stall,
            pace: min_rate.map(|min_rate| Pace {
                min_rate,
                window: stall,
                window_start: std::time::Instant::now(),
                window_sent: 0,
            }),
        };
        (
            out,
            ChunkBody {
                rx,
                aborted: Some(aborted),
                failed: false,
            },
        )
    }

    /// Fails the response: the body ends with an error, so the client
    /// never takes a cut answer for a whole one and the connection closes.
    fn abort(&mut self, why: &str) {
        if let Some(a) = self.abort.take() {
            let _ = a.send(std::io::Error::other(why.to_string()));
        }
    }

    fn flush_chunk(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(EXPORT_CHUNK));
        let stalled = std::time::Instant::now() + self.stall;
        loop {
            let wake = match &self.pace {
                Some(p) => stalled.min(p.window_end()),
                None => stalled,
            };
            let room = tokio::time::timeout_at(wake.into(), self.tx.reserve());
            match self.rt.block_on(room) {
                Ok(Ok(room)) => {
                    let n = chunk.len() as u64;
                    room.send(chunk.into());
                    if let Some(p) = &mut self.pace {
                        p.window_sent += n;
                        p.check()?;
                    }
                    return Ok(());
                }
                Ok(Err(_)) => return Err(std::io::Error::other("the client went away")),
                Err(_) if std::time::Instant::now() >= stalled => {
                    return Err(std::io::Error::other(format!(
                        "{CUT}: the client took no data for {} ms",
                        self.stall.as_millis()
                    )));
                }
                Err(_) => {
                    if let Some(p) = &mut self.pace {
                        p.check()?;
                    }
                }
            }
        }
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= EXPORT_CHUNK {
            self.flush_chunk()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The receiving end, as a response body.
struct ChunkBody {
    rx: tokio::sync::mpsc::Receiver<axum::body::Bytes>,
    /// Until the writer ends, normally (dropped) or not (an error).
    aborted: Option<tokio::sync::oneshot::Receiver<std::io::Error>>,
    /// Ended with an error: nothing more.
    failed: bool,
}

impl hyper::body::Body for ChunkBody {
    type Data = axum::body::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        use std::future::Future as _;
        if self.failed {
            return std::task::Poll::Ready(None);
        }
        if let Some(a) = self.aborted.as_mut() {
            match std::pin::Pin::new(a).poll(cx) {
                std::task::Poll::Ready(Ok(e)) => {
                    self.aborted = None;
                    self.failed = true;
                    self.rx.close();
                    return std::task::Poll::Ready(Some(Err(e)));
                }
                // The writer ended without an error: what it queued is the answer.
                std::task::Poll::Ready(Err(_)) => self.aborted = None,
                std::task::Poll::Pending => {}
            }
        }
        self.rx
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

/// What a remote verifier needs, as one consistent snapshot: the IDevID
/// chain whose key signs the checkpoints, the small trail files by content
/// (base64), and each segment's name and the length to fetch with
/// `GET /api/v1/audit/trail/segment` (docs/audit.md, "Collecting a trail").
pub(crate) async fn trail(State(dev): State<Arc<Device>>, c: Caller) -> Result<Response, ApiError> {
    use base64::Engine as _;
    dev.require(&c, Permission::ReadAudit, "audit.trail.read")?;
    let rec = dev.reserve("audit.trail.read")?;
    let log = dev.audit_log()?;
    // A checkpoint over everything recorded so far first: the collected
    // trail is signed up to the moment it was asked for (what comes after,
    // this read's own record included, is the next collection's).
    let snap = tokio::task::spawn_blocking(move || {
        if let Err(e) = log.checkpoint_now() {
            tracing::warn!(%e, "checkpoint before a trail snapshot");
        }
        log.snapshot()
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    let idevid = {
        let st = dev.state.read().or_poisoned("state")?;
        fsu::read_to_string(&st.path(files::IDEVID))
            .map_err(|e| ApiError::internal(e.to_string()))?
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let files: std::collections::BTreeMap<String, String> = snap
        .files
        .iter()
        .map(|(n, b)| (n.clone(), b64.encode(b)))
        .collect();
    let segments: Vec<_> = snap
        .segments
        .iter()
        .map(|(n, l)| wire_audit::TrailSegment {
            name: n.clone(),
            bytes: *l,
        })
        .collect();
    rec.record(
        Device::event(&c, "audit.trail.read", Outcome::Success)
            .details(json!({"certificate": c.conn.fingerprint, "segments": segments.len()})),
    )?;
    Ok(reply(wire_audit::TrailSnapshot {
        idevid_pem: idevid,
        files,
        segments,
    }))
}

/// The first `bytes` of one segment, as listed by `GET /api/v1/audit/trail`.
///
/// Streamed like the export: the file is read and sent
/// [`EXPORT_CHUNK`] at a time, so a download holds at most a few chunks
/// whatever the segment's size (segments an older configuration wrote can
/// be larger than today's bound), and at most [`SEGMENT_DOWNLOADS`] run at
/// once, [`SEGMENT_DOWNLOADS_PER_CERTIFICATE`] of them with one client
/// certificate. A client that takes the answer slower than
/// [`SEGMENT_MIN_RATE`] (or nothing for [`EXPORT_STALL`]) is cut off and
/// its place given back, recorded. The answer's bytes and its
/// `Content-Length` are the prefix's; a read failure part-way aborts the
/// response short of that length, so a client never takes a cut segment
/// for a whole one.
pub(crate) async fn trail_segment(
    State(dev): State<Arc<Device>>,
    q: Result<Query<wire_audit::SegmentQuery>, axum::extract::rejection::QueryRejection>,
    c: Caller,
) -> Result<Response, ApiError> {
    dev.require(&c, Permission::ReadAudit, "audit.trail.read")?;
    let Query(p) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    // Refused at once, never queued; aggregated per certificate like the
    // other refusals a flood repeats (docs/audit.md, "Floods").
    let busy = |limit: usize, per_certificate: bool, text: String| {
        dev.audit_tallied(
            &format!("busy|audit.trail.segment|{}", c.conn.fingerprint),
            Device::event(&c, "audit.trail.read", Outcome::Denied)
                .target(p.name.clone())
                .details(json!({"certificate": c.conn.fingerprint, "role": c.role,
                    "busy": true, "limit": limit, "per_certificate": per_certificate})),
        );
        ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "busy", text)
    };
    let Some(mine) = CertificateDownload::take(&dev.segment_downloaders, &c.conn.fingerprint)
    else {
        return Err(busy(
            SEGMENT_DOWNLOADS_PER_CERTIFICATE,
            true,
            format!(
                "{SEGMENT_DOWNLOADS_PER_CERTIFICATE} trail segment downloads with this client certificate are in progress, the most one certificate gets at once; retry"
            ),
        ));
    };
    let Ok(permit) = dev.segment_downloads.clone().try_acquire_owned() else {
        return Err(busy(
            SEGMENT_DOWNLOADS,
            false,
            format!(
                "{SEGMENT_DOWNLOADS} trail segment downloads are in progress, the most this device serves at once; retry"
            ),
        ));
    };
    let dir = dev.audit_log()?.dir().to_path_buf();
    let name = p.name.clone();
    let (file, bytes) = tokio::task::spawn_blocking(move || {
        drivesec_audit::open_segment_prefix(&dir, &name, p.bytes)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| match e {
        drivesec_audit::AuditError::Invalid(m) => ApiError::bad_request(m),
        // The file system's text names the device's paths: not for clients.
        drivesec_audit::AuditError::Fs(_) => ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "not-found",
            "no such segment (dropped since the snapshot?)",
        ),
        other => ApiError::from(other),
    })?;
    let (mut out, body) = ChunkWriter::new(Some(SEGMENT_MIN_RATE));
    let name = p.name;
    tokio::task::spawn_blocking(move || {
        // Held until the last chunk is handed over, the client went away
        // or was cut off.
        let places = (permit, mine);
        let sent = std::io::copy(&mut std::io::Read::take(&file, bytes), &mut out)
            .and_then(|n| out.flush_chunk().map(|()| n));
        let failed = match sent {
            Ok(n) if n == bytes => return,
            Ok(n) => format!("the segment ended after {n} of {bytes} bytes"),
            Err(e) => e.to_string(),
        };
        tracing::warn!(segment = %name, error = %failed, "trail segment download cut off");
        out.abort("the download failed");
        drop(out);
        // The place is free before the record says so.
        drop(places);
        if failed.starts_with(CUT) {
            // Aggregated per certificate: a client repeating it cannot
            // fill the trail.
            dev.audit_tallied(
                &format!("cut|audit.trail.segment|{}", c.conn.fingerprint),
                Device::event(&c, "audit.trail.read", Outcome::Failure)
                    .target(name)
                    .details(json!({"certificate": c.conn.fingerprint, "role": c.role,
                        "cut": true, "reason": failed, "min_rate": SEGMENT_MIN_RATE})),
            );
        }
    });
    let body = axum::body::Body::new(body);
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/octet-stream".to_string(),
            ),
            (axum::http::header::CONTENT_LENGTH, bytes.to_string()),
        ],
        body,
    )
        .into_response())
}

/// The forwarder's status on the wire.
fn forwarding_status(s: drivesec_audit::forward::ForwardStatus) -> wire_audit::ForwardingStatus {
    let drivesec_audit::forward::ForwardStatus {
        forwarded,
        connected,
        connections,
        failures,
        last_error,
        collector_refused,
    } = s;
    wire_audit::ForwardingStatus {
        forwarded,
        connected,
        connections,
        failures,
        last_error,
        collector_refused,
    }
}

pub(crate) async fn get_forwarding(
    State(dev): State<Arc<Device>>,
    c: Caller,
) -> Result<Response, ApiError> {
    dev.require(
        &c,
        Permission::ReadSecuritySettings,
        "audit.forwarding.read",
    )?;
    let settings = dev.forwarding_settings()?;
    let status = dev
        .forwarder
        .lock()
        .or_poisoned("forwarder")?
        .as_ref()
        .map(|f| forwarding_status(f.status()));
    Ok(reply(wire_audit::ForwardingAnswer { settings, status }))
}

pub(crate) async fn set_forwarding(
    State(dev): State<Arc<Device>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Body(req): Body<ForwardingSettings>,
) -> Result<Response, ApiError> {
    let (_settings, c) = settings_change(&dev, &headers, &conn).await?;
    dev.require(
        &c,
        Permission::ConfigureAuditForwarding,
        "audit.forwarding.set",
    )?;
    let rec = dev.reserve("audit.forwarding.set")?;
    // Keystore and file work (and a test's hold point): off the network thread.
    let r = crate::blocking(|| dev.start_forwarding(&req, true));
    let r = r.map_err(ApiError::from);
    let outcome = if r.is_ok() {
        Outcome::Success
    } else {
        Outcome::Failure
    };
    rec.record(Device::event(&c, "audit.forwarding.set", outcome).target(req.collector.clone()))?;
    r?;
    Ok(reply(wire_audit::ForwardingSetAnswer {
        collector: req.collector,
    }))
}

/// Records a test record and hands it to the forwarder now; answers its
/// sequence number, which `GET /api/v1/audit/forwarding` shows delivered
/// (`status.forwarded`) once the collector took it. 409 when forwarding is
/// not configured.
pub(crate) async fn test_forwarding(
    State(dev): State<Arc<Device>>,
    c: Caller,
) -> Result<Response, ApiError> {
    dev.require(
        &c,
        Permission::ConfigureAuditForwarding,
        "audit.forwarding.test",
    )?;
    if dev.forwarding_settings()?.is_none() {
        return Err(ApiError::conflict("audit forwarding is not configured"));
    }
    let seq =
        dev.audit_seq(Device::event(&c, "audit.forwarding.test", Outcome::Success).essential())?;
    if let Ok(f) = dev.forwarder.lock()
        && let Some(f) = f.as_ref()
    {
        f.nudge();
    }
    Ok(reply(wire_audit::ForwardingTestAnswer { seq }))
}

pub(crate) async fn posture(
    State(dev): State<Arc<Device>>,
    c: Caller,
) -> Result<Response, ApiError> {
    dev.require(&c, Permission::ReadSecuritySettings, "posture.read")?;
    Ok(reply(dev.posture()?))
}

pub(crate) async fn get_access_policy(
    State(dev): State<Arc<Device>>,
    c: Caller,
) -> Result<Response, ApiError> {
    dev.require(&c, Permission::ReadSecuritySettings, "security.access.read")?;
    let p = dev.config.read().or_poisoned("config")?.access.clone();
    Ok(reply(access_policy(p)))
}

/// Replaces the password, lockout and session policies and the banner
/// (stored in the state directory; it overrides the configuration file).
pub(crate) async fn set_access_policy(
    State(dev): State<Arc<Device>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Body(policy): Body<wire_security::AccessPolicy>,
) -> Result<Response, ApiError> {
    let (_settings, c) = settings_change(&dev, &headers, &conn).await?;
    dev.require(&c, Permission::WriteSecuritySettings, "security.access.set")?;
    let rec = dev.reserve("security.access.set")?;
    let r = dev.set_access_policy(access_policy_from(policy));
    let outcome = if r.is_ok() {
        Outcome::Success
    } else {
        Outcome::Failure
    };
    rec.record(Device::event(&c, "security.access.set", outcome).essential())?;
    r?;
    Ok(reply(wire_security::AccessPolicySetAnswer {
        applied: true,
    }))
}

/// A policy from the wire, to be validated (`AccessPolicy::validate`); a
/// count beyond this machine's `usize` saturates, and validation refuses it.
fn access_policy_from(p: wire_security::AccessPolicy) -> drivesec_access::AccessPolicy {
    let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    let wire_security::AccessPolicy {
        password,
        lockout,
        session,
        hash,
        banner,
    } = p;
    drivesec_access::AccessPolicy {
        password: drivesec_access::PasswordPolicy {
            min_length: size(password.min_length),
            min_classes: password.min_classes,
            history: size(password.history),
            max_age_days: password.max_age_days,
        },
        lockout: drivesec_access::LockoutPolicy {
            max_failures: lockout.max_failures,
            lockout_secs: lockout.lockout_secs,
            max_lockout_secs: lockout.max_lockout_secs,
            account_max_failures: lockout.account_max_failures,
            max_delay_secs: lockout.max_delay_secs,
        },
        session: drivesec_access::SessionPolicy {
            idle_secs: session.idle_secs,
            absolute_secs: session.absolute_secs,
            max_per_user: size(session.max_per_user),
            password_changes_per_minute: session.password_changes_per_minute,
        },
        hash: drivesec_access::HashParams {
            memory_kib: hash.memory_kib,
            iterations: hash.iterations,
            parallelism: hash.parallelism,
        },
        banner,
    }
}

pub(crate) async fn install_crl(
    State(dev): State<Arc<Device>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Body(req): Body<wire_security::CrlInstallRequest>,
) -> Result<Response, ApiError> {
    let (_settings, c) = settings_change(&dev, &headers, &conn).await?;
    dev.require(&c, Permission::ManageTrust, "trust.crl.install")?;
    // Check, build, write, adopt (docs/pki.md, "CRL policy"): a refused
    // CRL (400 naming why) changes nothing, in memory or on disk. One
    // installation at a time, so two cannot both pass the number check
    // against the same installed CRL.
    static GATE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _gate = GATE.lock().or_poisoned("CRL installation")?;
    let rec = dev.reserve("trust.crl.install")?;
    let config = dev.config.read().or_poisoned("config")?.clone();
    let r = (|| -> Result<drivesec_state::StateDir, ApiError> {
        let st = dev.state.read().or_poisoned("state")?;
        let set = st
            .check_crl(req.crl_pem.as_bytes())
            .map_err(ApiError::from)?;
        let next = st.with_crls(set);
        crate::tls::server_config(&next, &config.tls)?;
        crate::tls::modbus_config(&next, &config.modbus)?;
        next.write_crls().map_err(DeviceError::from)?;
        Ok(next)
    })();
    let details = match &r {
        Ok(next) => json!({"crls": next.crls.iter().map(|x| json!({
            "issuer": x.issuer, "number": x.number.to_string(),
            "next_update": crate::posture::rfc3339(x.next_update),
            "revoked": x.revoked.len()})).collect::<Vec<_>>()}),
        Err(e) => json!({"reason": e.message()}),
    };
    let r = r.and_then(|next| Ok(dev.adopt_state(next)?));
    let outcome = if r.is_ok() {
        Outcome::Success
    } else {
        Outcome::Failure
    };
    rec.record(
        Device::event(&c, "trust.crl.install", outcome)
            .details(details)
            .essential(),
    )?;
    r?;
    dev.report_stale_crl();
    Ok(reply(wire_security::CrlInstallAnswer { installed: true }))
}

/// A factory reset erases the owner's configuration, accounts and keys, so
/// it takes two people (docs/device-api.md, "Factory reset: two people, and the trail survives"): a security
/// administrator asks for it with its password (202 and a request id), and
/// another account with `factory-reset`, with its own password, approves it
/// within ten minutes. Locally, `drivesecd --state DIR factory-reset`
/// (physical presence) needs neither. The trail is sealed and kept.
pub(crate) async fn factory_reset(
    State(dev): State<Arc<Device>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Body(req): Body<wire_security::FactoryResetRequest>,
) -> Result<Response, ApiError> {
    // Held (read) while the password is checked again, which writes the
    // accounts (failure counts), and while a request is stored.
    let (settings, c) = settings_change(&dev, &headers, &conn).await?;
    dev.require(&c, Permission::FactoryReset, "device.factory-reset")?;
    dev.reauthenticate(&c, req.password, "device.factory-reset")
        .await?;
    let Some(id) = req.approve else {
        let rec = dev.reserve("device.factory-reset-requested")?;
        let id = hex::encode(rand_bytes());
        let mut slot = dev.reset_request.lock().or_poisoned("reset request")?;
        // Another account's pending request is not replaced (it would be
        // a way to cancel it); the same account asking again replaces its own.
        if let Some(other) = slot.as_ref()
            && other.username != c.username
            && other.at.elapsed() <= RESET_APPROVAL_WINDOW
        {
            return Err(ApiError::conflict(format!(
                "a factory reset asked for by {} is waiting for approval; approve it or let it expire",
                other.username
            )));
        }
        *slot = Some(ResetRequest {
            id: id.clone(),
            username: c.username.clone(),
            fingerprint: c.conn.fingerprint.clone(),
            at: std::time::Instant::now(),
        });
        drop(slot);
        rec.record(
            Device::event(&c, "device.factory-reset-requested", Outcome::Success)
                .target(id.clone())
                .essential(),
        )?;
        return Ok((
            axum::http::StatusCode::ACCEPTED,
            axum::Json(wire_security::FactoryResetPendingAnswer {
                pending: true,
                request: id,
                expires_in_secs: RESET_APPROVAL_WINDOW.as_secs(),
                next: "another account with factory-reset approves it with its own password (\"approve\": REQUEST)".to_string(),
            }),
        )
            .into_response());
    };
    drop(settings);
    // No change of the owner's settings runs beside the reset: those in
    // progress finish first (their records go into the trail the reset
    // seals), those that come later find their session gone. The request
    // is taken and the second person checked only then, under the gate:
    // an approval whose client goes away while it waits leaves the request
    // in place, and a change that finished meanwhile (the requester's
    // role, the approver's account) is honoured.
    let _reset = match dev.reset_gate.try_write() {
        Ok(g) => g,
        Err(_) => {
            tracing::info!(
                "factory reset approved: waiting for the settings changes in progress to finish"
            );
            dev.reset_gate.write().await
        }
    };
    let asked = {
        let mut slot = dev.reset_request.lock().or_poisoned("reset request")?;
        match slot.as_ref() {
            Some(r) if r.at.elapsed() > RESET_APPROVAL_WINDOW => {
                *slot = None;
                None
            }
            Some(r) if r.id == id => {
                let why = dev.second_person_refusal(r, &c)?;
                if let Some(why) = why {
                    // A refused approval ends the request: the requester
                    // must ask again (and the owner sees both in the trail).
                    *slot = None;
                    drop(slot);
                    dev.audit(
                        Device::event(&c, "device.factory-reset", Outcome::Denied)
                            .target(id.clone())
                            .details(json!({"certificate": c.conn.fingerprint, "reason": why})),
                    )?;
                    return Err(ApiError::new(
                        axum::http::StatusCode::FORBIDDEN,
                        "second-person-required",
                        format!("this account cannot approve the factory reset: {why}"),
                    ));
                }
                slot.take()
            }
            _ => None,
        }
    };
    let Some(asked) = asked else {
        return Err(ApiError::conflict(
            "no such factory-reset request (expired, already used or never made): ask again",
        ));
    };
    // Recorded before the wipe; the trail is then sealed and kept.
    let seq = dev.audit_seq(
        Device::event(&c, "device.factory-reset", Outcome::Success)
            .target(asked.id.clone())
            .details(json!({"requested_by": asked.username, "approved_by": c.username}))
            .essential(),
    )?;
    let credential = crate::blocking(|| dev.factory_reset_now(seq))?;
    Ok(reply(wire_security::FactoryResetAnswer {
        state: drivesec_api::device::LifeCycle::Factory,
        factory_credential: credential.as_str().to_string(),
    }))
}

fn rand_bytes() -> [u8; 16] {
    use rand_core::RngCore;
    let mut b = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut b);
    b
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    /// The minimum rate of a segment download is checked per window of
    /// 30 s: a window that brought less than its share cuts the download
    /// (whatever the windows before brought), one that brought its share
    /// starts the next; nothing is checked before a window ends.
    #[test]
    fn a_download_window_below_the_minimum_rate_cuts_it() {
        use super::{EXPORT_STALL, Pace, SEGMENT_MIN_RATE};
        let start = std::time::Instant::now();
        let share = SEGMENT_MIN_RATE * EXPORT_STALL.as_secs();
        let mut p = Pace {
            min_rate: SEGMENT_MIN_RATE,
            window: EXPORT_STALL,
            window_start: start,
            window_sent: 0,
        };
        // Before the first window ends, nothing is due.
        p.check_at(start + EXPORT_STALL / 2).unwrap();
        // The first window brought a burst (the buffers filling): fine.
        p.window_sent = 100 * share;
        let second = start + EXPORT_STALL;
        p.check_at(second).unwrap();
        assert_eq!((p.window_start, p.window_sent), (second, 0));
        // The second brings just under its share: cut.
        p.window_sent = share - 1;
        let e = p.check_at(second + EXPORT_STALL).unwrap_err();
        assert!(e.to_string().contains("below the minimum rate"), "{e}");
        // Exactly its share is enough.
        p.window_sent = share;
        p.check_at(second + EXPORT_STALL).unwrap();
    }

    /// A body taken steadily (never a pause near the stall limit) but
    /// slower than the minimum rate ends the writer with the rate's cut,
    /// and the body with an error; one taken fast enough gets everything.
    /// Scaled down: windows of 1 s, 1 MiB/s, chunks taken every 200 ms
    /// (320 KiB/s) or at once.
    #[test]
    fn a_writer_taken_below_the_minimum_rate_is_cut() {
        use super::{ChunkWriter, EXPORT_CHUNK};
        use http_body_util::BodyExt as _;
        use std::io::Write as _;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let run = |pause: std::time::Duration| {
            let (mut out, mut body) = rt.block_on(async {
                ChunkWriter::with_times(Some(1 << 20), std::time::Duration::from_secs(1))
            });
            // As the handlers run it: on a blocking thread of the runtime.
            let writer = rt.spawn_blocking(move || {
                let chunk = vec![7u8; EXPORT_CHUNK];
                let r = (0..64)
                    .try_for_each(|_| out.write_all(&chunk))
                    .and_then(|()| out.flush_chunk());
                if r.is_err() {
                    out.abort("cut");
                }
                r.map_err(|e| e.to_string())
            });
            let (mut got, mut failed) = (0usize, false);
            rt.block_on(async {
                while let Some(f) = body.frame().await {
                    match f {
                        Ok(f) => got += f.into_data().map(|d| d.len()).unwrap_or(0),
                        Err(_) => {
                            failed = true;
                            break;
                        }
                    }
                    tokio::time::sleep(pause).await;
                }
            });
            drop(body);
            (rt.block_on(writer).unwrap(), got, failed)
        };
        let (slow, got, failed) = run(std::time::Duration::from_millis(200));
        let e = slow.unwrap_err();
        assert!(e.contains("below the minimum rate"), "{e}");
        assert!(failed && got < 64 * EXPORT_CHUNK, "{got}");
        let (fast, got, failed) = run(std::time::Duration::ZERO);
        fast.unwrap();
        assert!(!failed && got == 64 * EXPORT_CHUNK, "{got}");
    }

    /// A body left partly out takes the same defaults through the API's
    /// type as through the access crate's own.
    #[test]
    fn an_access_policy_reads_the_same_through_the_wire_type() {
        for body in [
            "{}",
            r#"{"banner": "b", "password": {"min_length": 14}}"#,
            r#"{"password": {"max_age_days": null}}"#,
            r#"{"lockout": {"max_failures": 3}, "session": {"idle_secs": 60}, "hash": {"iterations": 3}}"#,
        ] {
            let wire: drivesec_api::security::AccessPolicy = serde_json::from_str(body).unwrap();
            let own: drivesec_access::AccessPolicy = serde_json::from_str(body).unwrap();
            assert_eq!(super::access_policy_from(wire.clone()), own, "{body}");
            assert_eq!(crate::posture::access_policy(own.clone()), wire, "{body}");
            assert_eq!(
                serde_json::to_value(&wire).unwrap(),
                serde_json::to_value(&own).unwrap(),
                "{body}"
            );
        }
        for body in [r#"{"nope": 1}"#, r#"{"password": {"nope": 1}}"#] {
            assert!(serde_json::from_str::<drivesec_api::security::AccessPolicy>(body).is_err());
        }
    }
}

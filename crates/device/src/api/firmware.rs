//! Firmware on the device: status, updates (streamed and verified chunk by
//! chunk), restart into the boot stage, and attestation.

use std::io::Read;
use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine;
use drivesec_access::Permission;
use drivesec_api::firmware as wire;
use drivesec_audit::Outcome;
use drivesec_firmware::slots::{BootState, Slot};
use drivesec_firmware::trust::{TrustStore, TrustedKey};
use http_body_util::BodyExt;
use serde_json::json;
use sha2::Digest;

use super::{ApiError, Body, Caller, ConnInfo, Device, caller, reply};
use crate::OrPoisoned;
use crate::firmware::Running;

/// Largest image accepted through the API.
pub(crate) const MAX_IMAGE_BYTES: usize = 1 << 30;

/// What runs, as the API sends it.
fn running_wire(r: &Running) -> wire::RunningFirmware {
    wire::RunningFirmware {
        root: r.root.clone(),
        security_counter: r.security_counter,
        signers: r.signers.clone(),
        slot: r.slot.clone(),
        trial: r.trial,
        version: r.version.clone(),
    }
}

/// A slot's name on the wire (`a`, `b`).
fn slot_wire(s: Slot) -> String {
    match s {
        Slot::A => wire::FirmwareSlot::A,
        Slot::B => wire::FirmwareSlot::B,
    }
    .as_str()
    .to_string()
}

/// The boot state, as the API sends it.
fn boot_state_wire(b: &BootState) -> wire::FirmwareBootState {
    wire::FirmwareBootState {
        active: slot_wire(b.active),
        attempts_left: u32::from(b.attempts_left),
        counter: b.counter,
        last_revert: b.last_revert.clone(),
        pending: b.pending.map(slot_wire),
    }
}

/// A trusted key, as the API sends it.
fn key_wire(k: &TrustedKey) -> wire::FirmwareTrustedKey {
    wire::FirmwareTrustedKey {
        kid: k.kid.clone(),
        public_key: k.public_key.clone(),
        revoked: k.revoked,
        role: k.role.clone(),
    }
}

/// The trust store, as the API sends it.
fn trust_wire(t: &TrustStore) -> wire::FirmwareTrust {
    wire::FirmwareTrust {
        keys: t.keys.iter().map(key_wire).collect(),
        policy: t
            .policy
            .iter()
            .map(|q| wire::FirmwareSignatureRequirement {
                min: q.min as u64,
                role: q.role.clone(),
            })
            .collect(),
        root: key_wire(&t.root),
        version: t.version,
    }
}

pub(crate) async fn status(
    State(dev): State<Arc<Device>>,
    c: Caller,
) -> Result<Response, ApiError> {
    dev.require(&c, Permission::ReadInfo, "firmware.read")?;
    // One snapshot: a reboot in progress finishes first.
    let _boot = dev.boot_lock.read().await;
    let running = dev.running.lock().or_poisoned("running firmware")?.clone();
    let fw = dev.firmware_snapshot()?;
    let state = fw.as_ref().map(|f| f.state()).transpose()?;
    let trust = fw.as_ref().map(|f| trust_wire(f.trust()));
    Ok(reply(wire::FirmwareStatus {
        boot_state: state.as_ref().map(boot_state_wire),
        running: running.as_ref().map(running_wire),
        trust,
    }))
}

pub(crate) async fn rotate_trust(
    State(dev): State<Arc<Device>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Body(req): Body<wire::TrustRotationRequest>,
) -> Result<Response, ApiError> {
    let c = caller(&dev, &headers, &conn)?;
    dev.require(&c, Permission::ManageTrust, "firmware.trust-rotate")?;
    let _gate = busy(&dev)?;
    let rec = dev.reserve("firmware.trust-rotated")?;
    let result = match base64::engine::general_purpose::STANDARD.decode(req.statement.trim()) {
        Err(_) => Err(ApiError::bad_request("statement must be base64")),
        Ok(statement) => {
            let mut fw = dev.firmware.lock().or_poisoned("firmware")?;
            match fw.as_mut() {
                None => Err(ApiError::conflict("this device has no firmware slots")),
                Some(f) => f.rotate_trust(&statement).cloned().map_err(ApiError::from),
            }
        }
    };
    match result {
        Ok(t) => {
            let revoked: Vec<&str> = t
                .keys
                .iter()
                .filter(|k| k.revoked)
                .map(|k| k.kid.as_str())
                .collect();
            rec.record(
                Device::event(&c, "firmware.trust-rotated", Outcome::Success)
                    .target(t.version.to_string())
                    .details(json!({"certificate": c.conn.fingerprint, "root": t.root.kid, "keys": t.keys.len(), "revoked": revoked}))
                    .essential(),
            )?;
            Ok(reply(wire::TrustRotationAnswer {
                trust: trust_wire(&t),
            }))
        }
        Err(e) => {
            rec.record(
                Device::event(&c, "firmware.trust-refused", Outcome::Failure)
                    .details(json!({"certificate": c.conn.fingerprint, "reason": e.message()}))
                    .essential(),
            )?;
            Err(e)
        }
    }
}

/// How long the upload waits for the next piece of the body.
const FRAME_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Takes the firmware gate, or answers 409 when another firmware operation runs.
fn busy(dev: &Device) -> Result<tokio::sync::OwnedMutexGuard<()>, ApiError> {
    dev.firmware_gate
        .clone()
        .try_lock_owned()
        .map_err(|_| ApiError::conflict("another firmware operation is in progress"))
}

/// Reads and drops up to [`MAX_IMAGE_BYTES`] of a refused upload, then
/// hands back the refusal.
async fn discard(body: &mut axum::body::Body, e: ApiError) -> ApiError {
    let mut total = 0usize;
    while let Ok(Some(Ok(frame))) = tokio::time::timeout(FRAME_TIMEOUT, body.frame()).await {
        if let Ok(d) = frame.into_data() {
            total += d.len();
            if total > MAX_IMAGE_BYTES {
                break;
            }
        }
    }
    e
}

/// A blocking reader over the request body's chunks. An `Err` item (body
/// too large, broken or stalled) fails the read, so staging aborts.
struct BodyReader {
    rx: tokio::sync::mpsc::Receiver<Result<axum::body::Bytes, String>>,
    cur: axum::body::Bytes,
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(m)) => return Err(std::io::Error::other(m)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

pub(crate) async fn upload(
    State(dev): State<Arc<Device>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    // Without a session the body is not read at all: the refusal goes out
    // at once and the connection closes, so a client that has no session
    // cannot hold a connection by trickling an upload. A logged-in
    // caller's refusal is answered after the body is read (bounded by the
    // size limit and the minimum rate, docs/device-api.md), so it sees the
    // 4xx instead of a reset mid-upload.
    let mut body = body;
    let c = match caller(&dev, &headers, &conn) {
        Ok(c) => c,
        Err(e) => {
            let mut resp = axum::response::IntoResponse::into_response(e);
            resp.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            return Ok(resp);
        }
    };
    if let Err(e) = dev.require(&c, Permission::UpdateFirmware, "firmware.update") {
        return Err(discard(&mut body, e.into()).await);
    }
    let gate = match busy(&dev) {
        Ok(g) => g,
        Err(e) => return Err(discard(&mut body, e).await),
    };
    // Room for the outcome's record before anything is staged.
    let rec = match dev.reserve("firmware.staged") {
        Ok(r) => r,
        Err(e) => return Err(discard(&mut body, e.into()).await),
    };
    // A clone: the shared lock is not held while the body streams in.
    let fw = dev.firmware_snapshot()?;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    // Staging and its record run to the end on their own thread, holding
    // the gate, even if the client goes away after sending the image.
    let c2 = c.clone();
    let staging = tokio::task::spawn_blocking(move || {
        let _gate = gate;
        let Some(f) = fw else {
            return Err(ApiError::conflict("this device has no firmware slots"));
        };
        let mut r = BodyReader {
            rx,
            cur: axum::body::Bytes::new(),
        };
        // A parser bug must not cost the record: a panic while staging is a
        // refusal like any other (the slot's temp file is never marked
        // pending before the image verified).
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f.stage(&mut r)))
            .unwrap_or_else(|_| {
                tracing::error!("staging an uploaded image panicked");
                Err(crate::DeviceError::Invalid(
                    "the image could not be processed".into(),
                ))
            });
        // Drain what the client still sends so it gets our answer.
        let mut sink = [0u8; 8192];
        while matches!(r.read(&mut sink), Ok(n) if n > 0) {}
        let result = result.map_err(ApiError::from);
        match &result {
            Ok(m) => rec.record(
                Device::event(&c2, "firmware.staged", Outcome::Success)
                    .target(m.version.clone())
                    .details(json!({"certificate": c2.conn.fingerprint, "role": c2.role, "security_counter": m.security_counter, "root": m.root}))
                    .essential(),
            )
            .map(|_| ())?,
            Err(e) => rec.record(
                Device::event(&c2, "firmware.refused", Outcome::Failure)
                    .details(json!({"certificate": c2.conn.fingerprint, "role": c2.role, "reason": e.message()}))
                    .essential(),
            )
            .map(|_| ())?,
        }
        result
    });
    let mut total = 0usize;
    let mut failure = None;
    loop {
        let frame = match tokio::time::timeout(FRAME_TIMEOUT, body.frame()).await {
            Err(_) => {
                failure = Some(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout",
                    format!("no image data for {} s", FRAME_TIMEOUT.as_secs()),
                ));
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                failure = Some(ApiError::bad_request(format!("reading the image: {e}")));
                break;
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            total += data.len();
            if total > MAX_IMAGE_BYTES {
                failure = Some(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too-large",
                    format!("images are limited to {MAX_IMAGE_BYTES} bytes"),
                ));
                break;
            }
            if tx.send(Ok(data)).await.is_err() {
                break;
            }
        }
    }
    if let Some(f) = &failure {
        // Fails the staging read: nothing becomes pending.
        let _ = tx.send(Err(f.message().to_string())).await;
    }
    drop(tx);
    let result = staging
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    // The body's own failure (timeout, size) is the answer, when there was one.
    match (failure, result) {
        (Some(f), _) => Err(f),
        (None, Ok(m)) => Ok(reply(wire::FirmwareUploadAnswer {
            pending: true,
            security_counter: m.security_counter,
            staged: m.version,
        })),
        (None, Err(e)) => Err(e),
    }
}

pub(crate) async fn reboot(
    State(dev): State<Arc<Device>>,
    c: Caller,
) -> Result<Response, ApiError> {
    dev.require(&c, Permission::UpdateFirmware, "firmware.reboot")?;
    let gate = busy(&dev)?;
    dev.audit(Device::event(&c, "firmware.reboot", Outcome::Success).essential())?;
    let d2 = dev.clone();
    // The boot stage runs to its end holding both locks, even if the client
    // goes away: no second firmware operation and no status read in between.
    let boot = dev.boot_lock.clone().write_owned().await;
    let (running, state) = tokio::task::spawn_blocking(move || {
        let (_gate, _boot) = (gate, boot);
        let running = d2.boot_firmware()?;
        let state = d2.firmware_snapshot()?.map(|f| f.state()).transpose()?;
        Ok::<_, ApiError>((running, state))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(reply(wire::FirmwareRebootAnswer {
        boot_state: state.as_ref().map(boot_state_wire),
        running: running.as_ref().map(running_wire),
    }))
}

pub(crate) async fn attest(
    State(dev): State<Arc<Device>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Body(req): Body<wire::AttestRequest>,
) -> Result<Response, ApiError> {
    let c = caller(&dev, &headers, &conn)?;
    dev.require(&c, Permission::ReadInfo, "firmware.attest")?;
    let nonce = hex::decode(&req.nonce).map_err(|_| ApiError::bad_request("nonce must be hex"))?;
    if !(16..=64).contains(&nonce.len()) {
        return Err(ApiError::bad_request("nonce must be 16 to 64 bytes"));
    }
    let running = dev
        .running
        .lock()
        .or_poisoned("running firmware")?
        .clone()
        .ok_or_else(|| ApiError::conflict("no firmware is running from a verified slot"))?;
    let (statement, sig, chain) = {
        let st = dev.state.read().or_poisoned("state")?;
        let (handle, chain) = match (&st.file.ldevid_key, &st.ldevid_chain) {
            (Some(k), Some(c)) => (k.clone(), c.clone()),
            _ => (st.file.idevid_key.clone(), st.idevid_chain.clone()),
        };
        // The certificate whose key signs: the one this device presents in
        // its TLS handshakes (a connection admitted under another identity
        // gets 421 before it reaches here). Named in the statement, so a
        // verifier can bind the answer to the connection it came over.
        let leaf = chain
            .first()
            .ok_or_else(|| ApiError::internal("no identity certificate"))?;
        let leaf_serial = drivesec_pki::inspect::summarize(leaf)
            .map_err(|e| ApiError::internal(e.to_string()))?
            .serial;
        // These bytes are what is signed and sent (base64) as they are.
        let statement = wire::AttestationStatement {
            certificate: wire::AttestedCertificate {
                serial: leaf_serial,
                sha256: hex::encode(sha2::Sha256::digest(leaf.as_ref())),
            },
            device_name: st.file.device_name.clone(),
            firmware: running_wire(&running),
            kind: wire::ATTESTATION_KIND.to_string(),
            nonce: req.nonce,
            serial_number: st.file.serial_number.clone(),
            time: crate::now_rfc3339(),
        };
        let bytes =
            serde_json::to_vec(&statement).map_err(|e| ApiError::internal(e.to_string()))?;
        let sig = st
            .store
            .sign(&handle, &bytes)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        (bytes, sig, chain)
    };
    let chain_pem: String = chain
        .iter()
        .map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.to_vec())))
        .collect();
    let b64 = base64::engine::general_purpose::STANDARD;
    dev.audit(Device::event(&c, "firmware.attest", Outcome::Success))?;
    Ok(reply(wire::AttestAnswer {
        certificate_chain: chain_pem,
        signature: b64.encode(sig),
        statement: b64.encode(&statement),
    }))
}

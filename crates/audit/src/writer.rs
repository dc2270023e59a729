//! The appending side: group commit, segment rotation, checkpoints, capacity,
//! and crash recovery on open.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine;
use drivesec_fsutil::{self as fsu, Mode};
use drivesec_keystore::{KeyHandle, KeyStore};

use crate::checkpoint::{Checkpoint, CheckpointKind};
use crate::frame::{self, Decoded, Hash};
use crate::record::now_rfc3339;
use crate::{Actor, AuditConfig, AuditError, Event, FullPolicy, Record, Result};

/// The key checkpoints are signed with: a keystore and a handle in it.
#[derive(Clone)]
pub struct Signer {
    /// The device's keystore.
    pub store: Arc<dyn KeyStore>,
    /// The signing key's handle.
    pub handle: KeyHandle,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

/// A record that is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Its sequence number.
    pub seq: u64,
    /// Its hash.
    pub hash: Hash,
}

/// How full the trail is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CapacityStatus {
    /// Bytes in all segments (including records being written).
    pub used_bytes: u64,
    /// The bound.
    pub max_bytes: u64,
    /// The warning threshold in bytes.
    pub warn_bytes: u64,
    /// Usage is at or above the warning threshold.
    pub warning: bool,
    /// Usage is at or above the bound.
    pub full: bool,
    /// Last sequence number made durable.
    pub durable_seq: u64,
    /// Last sequence number covered by a signed checkpoint.
    pub checkpoint_seq: u64,
    /// Why the last background checkpoint failed (for example, the signing
    /// key was zeroized), if it did: an audit processing failure (SR 2.10).
    pub checkpoint_error: Option<String>,
}

pub(crate) const SEGMENTS: &str = "segments";
pub(crate) const CHECKPOINT_LOG: &str = "checkpoints.log";
pub(crate) const LATEST_CHECKPOINT: &str = "checkpoint.json";
pub(crate) const ANCHOR: &str = "anchor.json";
const QUARANTINE: &str = "quarantine";
const CURSORS: &str = "cursors";

/// Segment file name for a first sequence number.
pub(crate) fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

/// The segments of a trail, sorted by first sequence number.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let seg_dir = dir.join(SEGMENTS);
    let rd = match std::fs::read_dir(&seg_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(fsu::FsError::io("list", &seg_dir, e).into()),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(|e| fsu::FsError::io("list", &seg_dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".seg") {
            let first = stem.parse::<u64>().map_err(|_| AuditError::Corrupt {
                path: e.path(),
                reason: "segment file name is not a sequence number".into(),
            })?;
            out.push((first, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Reads a signed statement file, if present.
pub(crate) fn read_checkpoint(path: &Path) -> Result<Option<Checkpoint>> {
    if !path.exists() {
        return Ok(None);
    }
    let cp = serde_json::from_slice(&fsu::read(path)?).map_err(|e| AuditError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(Some(cp))
}

/// Reads a delivery cursor (`forwarded` or `exported`): the last sequence number handed on.
pub fn read_cursor(dir: &Path, name: &str) -> Result<u64> {
    let p = dir.join(CURSORS).join(name);
    if !p.exists() {
        return Ok(0);
    }
    let text = fsu::read_to_string(&p)?;
    text.trim().parse().map_err(|_| AuditError::Corrupt {
        path: p,
        reason: "cursor is not a number".into(),
    })
}

/// Durably records a delivery cursor.
pub fn write_cursor(dir: &Path, name: &str, seq: u64) -> Result<()> {
    let d = dir.join(CURSORS);
    fsu::create_private_dir(&d)?;
    fsu::write_atomic(&d.join(name), format!("{seq}\n").as_bytes(), Mode::Public)?;
    Ok(())
}

#[derive(Debug, Clone)]
struct SegInfo {
    first_seq: u64,
    bytes: u64,
    /// Hash stored as `prev` in the segment's first record.
    first_prev: Hash,
}

struct State {
    next_seq: u64,
    head: Hash,
    pending: Vec<u8>,
    spare: Vec<u8>,
    /// (offset in `pending`, first seq) where a new segment starts.
    splits: Vec<(usize, u64)>,
    durable: u64,
    durable_head: Hash,
    flushing: bool,
    failed: Option<String>,
    segments: VecDeque<SegInfo>,
    used: u64,
    warned: bool,
    full_reported: bool,
    checkpoint_seq: u64,
    first_uncovered: Option<Instant>,
    checkpoint_error: Option<String>,
    /// Bytes held by [`Reservation`]s not yet used: counted as used by the
    /// capacity policy, so the record an action promised always fits.
    reserved: u64,
}

struct Io {
    file: File,
}

struct Shared {
    dir: PathBuf,
    config: AuditConfig,
    signer: Signer,
    state: Mutex<State>,
    cond: Condvar,
    io: Mutex<Io>,
    checkpointing: Mutex<()>,
    stop: Mutex<bool>,
    stop_cond: Condvar,
    closed: AtomicBool,
}

/// See [`AuditLog::snapshot`].
#[derive(Debug, Clone)]
pub struct TrailSnapshot {
    /// `anchor.json`, `checkpoint.json`, `checkpoints.log` (those present), by content.
    pub files: Vec<(String, Vec<u8>)>,
    /// `segments/NAME` and the length to copy, in order.
    pub segments: Vec<(String, u64)>,
}

/// Whether `name` is a segment file name: 20 digits and `.seg`.
pub fn is_segment_name(name: &str) -> bool {
    name.len() == 24 && name.ends_with(".seg") && name[..20].bytes().all(|b| b.is_ascii_digit())
}

/// Reads the first `bytes` of segment `name` of the trail in `dir`.
pub fn read_segment_prefix(dir: &Path, name: &str, bytes: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    if !is_segment_name(name) {
        return Err(AuditError::Invalid(format!(
            "'{name}' is not a segment name"
        )));
    }
    let p = dir.join(SEGMENTS).join(name);
    let f = File::open(&p).map_err(|e| fsu::FsError::io("open", &p, e))?;
    let len = f
        .metadata()
        .map_err(|e| fsu::FsError::io("stat", &p, e))?
        .len();
    if bytes > len {
        return Err(AuditError::Invalid(format!(
            "segment {name} holds {len} bytes, not {bytes}"
        )));
    }
    let mut out = Vec::with_capacity(bytes as usize);
    f.take(bytes)
        .read_to_end(&mut out)
        .map_err(|e| fsu::FsError::io("read", &p, e))?;
    Ok(out)
}

/// An open audit trail, appending.
pub struct AuditLog {
    shared: Arc<Shared>,
    ticker: Option<JoinHandle<()>>,
}

/// Which part of the capacity a record may use (docs/audit.md, "The
/// reserve tier").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    /// Up to `max_bytes`.
    Routine,
    /// Essential, from the network: half of `reserve_bytes` beyond.
    Network,
    /// Essential, the device's own: all of `reserve_bytes` beyond.
    Device,
}

/// Room for one record; see [`AuditLog::reserve`].
pub struct Reservation {
    shared: Arc<Shared>,
    held: u64,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("held", &self.held)
            .finish_non_exhaustive()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.held > 0
            && let Ok(mut st) = self.shared.lock()
        {
            st.reserved = st.reserved.saturating_sub(self.held);
        }
    }
}

/// The room one reservation holds: a frame with a record of up to 1 KiB.
const RESERVED_RECORD: u64 = (frame::HEADER + frame::TRAILER + 1024) as u64;

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

fn poisoned() -> AuditError {
    AuditError::Failed("internal lock poisoned".into())
}

impl Shared {
    fn lock(&self) -> Result<MutexGuard<'_, State>> {
        self.state.lock().map_err(|_| poisoned())
    }

    fn seg_path(&self, first: u64) -> PathBuf {
        self.dir.join(SEGMENTS).join(segment_name(first))
    }

    /// Writes one group: the bytes, new segments where they start, one fdatasync.
    fn write_group(&self, buf: &[u8], splits: &[(usize, u64)]) -> std::io::Result<()> {
        let mut io = self
            .io
            .lock()
            .map_err(|_| std::io::Error::other("io lock poisoned"))?;
        let mut at = 0;
        for &(offset, first) in splits {
            io.file.write_all(&buf[at..offset])?;
            io.file.sync_data()?;
            let path = self.seg_path(first);
            io.file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)?;
            File::open(self.dir.join(SEGMENTS))?.sync_all()?;
            at = offset;
        }
        io.file.write_all(&buf[at..])?;
        io.file.sync_data()
    }

    fn sign(&self, kind: CheckpointKind, seq: u64, hash: &Hash) -> Result<Checkpoint> {
        let hash_hex = hex::encode(hash);
        let time = now_rfc3339();
        let msg = Checkpoint::signed_bytes(kind, seq, &hash_hex, &time);
        let sig = self.signer.store.sign(&self.signer.handle, &msg)?;
        let algorithm = match self.signer.store.info(&self.signer.handle)?.algorithm() {
            drivesec_keystore::KeyAlgorithm::EcdsaP256 => "ecdsa-p256-sha256",
            drivesec_keystore::KeyAlgorithm::Ed25519 => "ed25519",
        };
        Ok(Checkpoint {
            kind,
            seq,
            hash: hash_hex,
            time,
            algorithm: algorithm.into(),
            signature: base64::engine::general_purpose::STANDARD.encode(sig),
        })
    }

    /// Signs and stores a checkpoint over the durable head if it moved.
    fn checkpoint(&self) -> Result<()> {
        let _one = self.checkpointing.lock().map_err(|_| poisoned())?;
        let (seq, head) = {
            let st = self.lock()?;
            if st.durable <= st.checkpoint_seq || st.failed.is_some() {
                return Ok(());
            }
            (st.durable, st.durable_head)
        };
        let cp = self.sign(CheckpointKind::Checkpoint, seq, &head)?;
        let line = serde_json::to_string(&cp).map_err(|e| AuditError::Invalid(e.to_string()))?;
        let log = self.dir.join(CHECKPOINT_LOG);
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| fsu::FsError::io("open", &log, e))?;
        f.write_all(format!("{line}\n").as_bytes())
            .and_then(|()| f.sync_data())
            .map_err(|e| fsu::FsError::io("append", &log, e))?;
        fsu::write_atomic(
            &self.dir.join(LATEST_CHECKPOINT),
            line.as_bytes(),
            Mode::Public,
        )?;
        let mut st = self.lock()?;
        st.checkpoint_seq = seq;
        if st.durable == seq {
            st.first_uncovered = None;
        }
        Ok(())
    }

    fn checkpoint_due(&self) -> bool {
        let Ok(st) = self.lock() else { return false };
        st.durable > st.checkpoint_seq
            && (st.durable - st.checkpoint_seq >= self.config.checkpoint_every
                || st
                    .first_uncovered
                    .is_some_and(|t| t.elapsed() >= self.config.checkpoint_interval))
    }

    /// Drops the oldest segments that were forwarded or exported, writing a
    /// signed anchor first. Returns the bytes freed.
    fn drop_delivered(&self, st: &mut State) -> Result<u64> {
        let delivered =
            read_cursor(&self.dir, "forwarded")?.max(read_cursor(&self.dir, "exported")?);
        let mut freed = 0;
        let mut dropped: Option<(u64, u64)> = None;
        while st.segments.len() > 1 {
            let next_first = st.segments[1].first_seq;
            let last = next_first - 1;
            // Only whole segments that are durable and delivered.
            if last > delivered || last > st.durable {
                break;
            }
            let anchor_hash = st.segments[1].first_prev;
            let anchor = self.sign(CheckpointKind::Anchor, last, &anchor_hash)?;
            let json =
                serde_json::to_vec(&anchor).map_err(|e| AuditError::Invalid(e.to_string()))?;
            fsu::write_atomic(&self.dir.join(ANCHOR), &json, Mode::Public)?;
            let Some(seg) = st.segments.pop_front() else {
                break;
            };
            let path = self.seg_path(seg.first_seq);
            std::fs::remove_file(&path).map_err(|e| fsu::FsError::io("remove", &path, e))?;
            fsu::sync_dir(&self.dir.join(SEGMENTS))?;
            st.used -= seg.bytes;
            freed += seg.bytes;
            dropped = Some((dropped.map_or(seg.first_seq, |(f, _)| f), last));
        }
        // The drop itself is on the record: which records went, and up to
        // which one the collector or an export had them.
        if let Some((first, last)) = dropped {
            let rec = self.device_event(
                "audit.capacity.dropped",
                serde_json::json!({"first_seq": first, "last_seq": last, "delivered_seq": delivered, "bytes": freed}),
            );
            self.push(st, &rec)?;
        }
        Ok(freed)
    }

    /// Encodes one record into the pending group.
    fn push(&self, st: &mut State, rec: &Record) -> Result<Appended> {
        let body = serde_json::to_vec(rec).map_err(|e| AuditError::Invalid(e.to_string()))?;
        if body.len() > frame::MAX_BODY {
            return Err(AuditError::Invalid(format!(
                "record of {} bytes exceeds the {} byte limit",
                body.len(),
                frame::MAX_BODY
            )));
        }
        let frame_len = (frame::HEADER + body.len() + frame::TRAILER) as u64;
        let seq = st.next_seq;
        let cur = st.segments.back().map(|s| s.bytes).unwrap_or(0);
        if st.segments.is_empty() || (cur > 0 && cur + frame_len > self.config.segment_bytes) {
            if !st.segments.is_empty() {
                st.splits.push((st.pending.len(), seq));
            }
            st.segments.push_back(SegInfo {
                first_seq: seq,
                bytes: 0,
                first_prev: st.head,
            });
        }
        let hash = frame::encode(seq, &st.head, &body, &mut st.pending);
        if let Some(s) = st.segments.back_mut() {
            s.bytes += frame_len;
        }
        st.used += frame_len;
        st.head = hash;
        st.next_seq += 1;
        if st.first_uncovered.is_none() {
            st.first_uncovered = Some(Instant::now());
        }
        Ok(Appended { seq, hash })
    }

    fn device_event(&self, action: &str, details: serde_json::Value) -> Record {
        let ev = Event::new(Actor::Device, action)
            .details(details)
            .essential();
        Record::from_event(ev, now_rfc3339(), self.config.time_quality)
    }

    /// Capacity policy for one record of about `len` bytes.
    fn admit(&self, st: &mut State, tier: Tier, len: u64, what: &str) -> Result<()> {
        let essential = tier != Tier::Routine;
        // What reservations hold counts as used.
        let len = len + st.reserved;
        let c = &self.config;
        if st.used + len > c.max_bytes && c.when_full == FullPolicy::DropForwarded {
            self.drop_delivered(st)?;
        }
        let warn_at = c.max_bytes / 100 * u64::from(c.warn_percent);
        if st.used + len >= warn_at && !st.warned {
            st.warned = true;
            let rec = self.device_event(
                "audit.capacity.warning",
                serde_json::json!({"used_bytes": st.used, "max_bytes": c.max_bytes, "warn_percent": c.warn_percent}),
            );
            self.push(st, &rec)?;
        } else if st.used + len < warn_at {
            st.warned = false;
            st.full_reported = false;
        }
        if st.used + len <= c.max_bytes {
            return Ok(());
        }
        // Essential records from the network get half the reserve; the
        // device's own (tamper, start, stop, recovery) all of it, so no
        // network traffic can take the room the device keeps for itself.
        let hard = match tier {
            Tier::Device => c.max_bytes + c.reserve_bytes,
            _ => c.max_bytes + c.reserve_bytes / 2,
        };
        if essential && st.used + len <= hard {
            if !st.full_reported {
                st.full_reported = true;
                let rec = self.device_event(
                    "audit.capacity.full",
                    serde_json::json!({"used_bytes": st.used, "max_bytes": c.max_bytes, "policy": c.when_full}),
                );
                self.push(st, &rec)?;
            }
            return Ok(());
        }
        Err(AuditError::Full {
            used: st.used,
            limit: c.max_bytes,
            what: what.into(),
        })
    }
}

impl AuditLog {
    /// Opens (or creates) the trail in `dir`, recovering from a crash: a torn
    /// tail is cut back to the last complete record, the cut bytes are kept
    /// under `quarantine/`, and the cut is recorded as an essential event.
    pub fn open(dir: &Path, config: AuditConfig, signer: Signer) -> Result<AuditLog> {
        if config.segment_bytes < 4096
            || config.max_bytes < config.segment_bytes
            || config.warn_percent > 100
        {
            return Err(AuditError::Invalid(
                "segment_bytes must be >= 4096, max_bytes >= segment_bytes and warn_percent <= 100"
                    .into(),
            ));
        }
        fsu::create_private_dir(&dir.join(SEGMENTS))?;
        let anchor = read_checkpoint(&dir.join(ANCHOR))?;
        let latest = read_checkpoint(&dir.join(LATEST_CHECKPOINT))?;
        let mut recovered: Vec<serde_json::Value> = Vec::new();
        let mut segs = list_segments(dir)?;

        // Find the chain head, cutting a torn tail back.
        let mut head = anchor
            .as_ref()
            .and_then(|a| a.hash_bytes())
            .unwrap_or([0; 32]);
        let mut next_seq = anchor.as_ref().map(|a| a.seq + 1).unwrap_or(1);
        let mut infos: VecDeque<SegInfo> = VecDeque::new();
        while let Some((first, path)) = segs.last().cloned() {
            let data = fsu::read(&path)?;
            let (end, last) = scan(&data, first);
            if end < data.len() {
                let tail = &data[end..];
                if tail.iter().any(|&b| b != 0) {
                    let q = dir.join(QUARANTINE);
                    fsu::create_private_dir(&q)?;
                    let qname = format!("{}.{end}.bin", segment_name(first));
                    fsu::write_atomic(&q.join(&qname), tail, Mode::Public)?;
                    recovered.push(serde_json::json!({
                        "segment": segment_name(first), "offset": end, "bytes": tail.len(), "quarantined": qname,
                    }));
                }
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| fsu::FsError::io("open", &path, e))?;
                f.set_len(end as u64)
                    .map_err(|e| fsu::FsError::io("truncate", &path, e))?;
                f.sync_all()
                    .map_err(|e| fsu::FsError::io("fsync", &path, e))?;
            }
            match last {
                Some((seq, hash, _)) => {
                    head = hash;
                    next_seq = seq + 1;
                    break;
                }
                None => {
                    // An empty segment (crash right after rotation): remove and look further back.
                    std::fs::remove_file(&path)
                        .map_err(|e| fsu::FsError::io("remove", &path, e))?;
                    fsu::sync_dir(&dir.join(SEGMENTS))?;
                    segs.pop();
                }
            }
        }
        let mut used = 0;
        for (first, path) in &segs {
            let bytes = std::fs::metadata(path)
                .map_err(|e| fsu::FsError::io("stat", path, e))?
                .len();
            used += bytes;
            infos.push_back(SegInfo {
                first_seq: *first,
                bytes,
                first_prev: first_prev_of(path)?,
            });
        }
        let file = match segs.last() {
            Some((_, path)) => OpenOptions::new()
                .append(true)
                .open(path)
                .map_err(|e| fsu::FsError::io("open", path, e))?,
            None => {
                let path = dir.join(SEGMENTS).join(segment_name(next_seq));
                let f = OpenOptions::new()
                    .create_new(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| fsu::FsError::io("create", &path, e))?;
                fsu::sync_dir(&dir.join(SEGMENTS))?;
                infos.push_back(SegInfo {
                    first_seq: next_seq,
                    bytes: 0,
                    first_prev: head,
                });
                f
            }
        };
        let checkpoint_seq = latest.as_ref().map(|c| c.seq).unwrap_or(0);
        let state = State {
            next_seq,
            head,
            pending: Vec::new(),
            spare: Vec::new(),
            splits: Vec::new(),
            durable: next_seq - 1,
            durable_head: head,
            flushing: false,
            failed: None,
            segments: infos,
            used,
            warned: false,
            full_reported: false,
            checkpoint_seq: checkpoint_seq.min(next_seq - 1),
            first_uncovered: None,
            checkpoint_error: None,
            reserved: 0,
        };
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            config,
            signer,
            state: Mutex::new(state),
            cond: Condvar::new(),
            io: Mutex::new(Io { file }),
            checkpointing: Mutex::new(()),
            stop: Mutex::new(false),
            stop_cond: Condvar::new(),
            closed: AtomicBool::new(false),
        });
        let log = AuditLog {
            ticker: Some(spawn_ticker(shared.clone())),
            shared,
        };
        for r in recovered {
            log.append(
                Event::new(Actor::Device, "audit.recovery.truncated")
                    .details(r)
                    .essential(),
            )?;
        }
        if checkpoint_seq > next_seq - 1 {
            log.append(
                Event::new(Actor::Device, "audit.recovery.missing-records")
                    .outcome(crate::Outcome::Failure)
                    .details(serde_json::json!({"checkpoint_seq": checkpoint_seq, "last_seq": next_seq - 1}))
                    .essential(),
            )?;
        }
        Ok(log)
    }

    /// Holds room for one record of an action about to be taken, so that
    /// the action runs only if its record is certain to fit (SR 2.10: an
    /// action the trail cannot record is refused). The capacity policy
    /// decides now, as it would for an append of `essential`; the room is
    /// given back if the reservation is dropped unused. Only a write
    /// failure can then stop [`Reservation::append`].
    pub fn reserve(&self, essential: bool, what: &str) -> Result<Reservation> {
        let sh = &self.shared;
        let mut st = sh.lock()?;
        if let Some(f) = &st.failed {
            return Err(AuditError::Failed(f.clone()));
        }
        let tier = if essential {
            Tier::Network
        } else {
            Tier::Routine
        };
        sh.admit(&mut st, tier, RESERVED_RECORD, what)?;
        st.reserved += RESERVED_RECORD;
        Ok(Reservation {
            shared: sh.clone(),
            held: RESERVED_RECORD,
        })
    }

    /// Appends the event a reservation was taken for; returns once it is durable.
    pub fn append_reserved(&self, mut r: Reservation, ev: Event) -> Result<Appended> {
        let sh = &self.shared;
        if !Arc::ptr_eq(sh, &r.shared) {
            return Err(AuditError::Invalid(
                "the reservation belongs to another trail".into(),
            ));
        }
        let mut st = sh.lock()?;
        st.reserved = st.reserved.saturating_sub(r.held);
        r.held = 0;
        if let Some(f) = &st.failed {
            return Err(AuditError::Failed(f.clone()));
        }
        let rec = Record::from_event(ev, now_rfc3339(), sh.config.time_quality);
        let a = sh.push(&mut st, &rec)?;
        self.wait_durable(st, a.seq)?;
        if sh.checkpoint_due() {
            sh.stop_cond.notify_all();
        }
        Ok(a)
    }

    /// Appends one event; returns once it is durable.
    pub fn append(&self, ev: Event) -> Result<Appended> {
        let v = self.append_batch(vec![ev])?;
        v.into_iter()
            .next()
            .ok_or_else(|| AuditError::Failed("empty append result".into()))
    }

    /// Appends events in order as one group; returns once all are durable.
    /// Concurrent callers share fsyncs (group commit).
    pub fn append_batch(&self, events: Vec<Event>) -> Result<Vec<Appended>> {
        let sh = &self.shared;
        let mut st = sh.lock()?;
        if let Some(f) = &st.failed {
            return Err(AuditError::Failed(f.clone()));
        }
        let mut out = Vec::with_capacity(events.len());
        // One timestamp per call: the records of a batch are stamped together.
        let now = now_rfc3339();
        for ev in events {
            let what = ev.action.clone();
            let tier = match (ev.essential, &ev.actor) {
                (false, _) => Tier::Routine,
                (true, Actor::Device) => Tier::Device,
                (true, _) => Tier::Network,
            };
            let rec = Record::from_event(ev, now.clone(), sh.config.time_quality);
            // Rough size for the capacity check; push() computes the exact one.
            let estimate = (frame::HEADER + frame::TRAILER + 256) as u64;
            if let Err(e) = sh.admit(&mut st, tier, estimate, &what) {
                if out.is_empty() {
                    return Err(e);
                }
                // Records already queued in this batch stay; wait for them, then report.
                self.wait_durable(st, out.last().map(|a: &Appended| a.seq).unwrap_or(0))?;
                return Err(e);
            }
            out.push(sh.push(&mut st, &rec)?);
        }
        let last = out.last().map(|a| a.seq).unwrap_or(0);
        self.wait_durable(st, last)?;
        if sh.checkpoint_due() {
            // Signing and storing the checkpoint happens on the background
            // thread, off the appenders' latency path.
            sh.stop_cond.notify_all();
        }
        Ok(out)
    }

    fn wait_durable<'a>(&'a self, mut st: MutexGuard<'a, State>, seq: u64) -> Result<()> {
        let sh = &self.shared;
        loop {
            if let Some(f) = &st.failed {
                return Err(AuditError::Failed(f.clone()));
            }
            if st.durable >= seq {
                return Ok(());
            }
            if st.flushing {
                st = sh.cond.wait(st).map_err(|_| poisoned())?;
                continue;
            }
            // Lead this group; the spare buffer keeps its capacity across groups.
            st.flushing = true;
            let spare = std::mem::take(&mut st.spare);
            let buf = std::mem::replace(&mut st.pending, spare);
            let splits = std::mem::take(&mut st.splits);
            let (last, head) = (st.next_seq - 1, st.head);
            drop(st);
            let res = sh.write_group(&buf, &splits);
            st = sh.lock()?;
            st.flushing = false;
            let mut buf = buf;
            buf.clear();
            st.spare = buf;
            match res {
                Ok(()) => {
                    st.durable = last;
                    st.durable_head = head;
                }
                Err(e) => st.failed = Some(format!("writing the trail failed: {e}")),
            }
            sh.cond.notify_all();
        }
    }

    /// A consistent copy of what a verifier needs, taken with appends,
    /// checkpoints and segment drops held off: the small files (anchor,
    /// latest checkpoint, checkpoint log) by content, the segments by name
    /// and length (they only grow, so their first `bytes` stay as they are).
    pub fn snapshot(&self) -> Result<TrailSnapshot> {
        let sh = &self.shared;
        let _cp = sh.checkpointing.lock().map_err(|_| poisoned())?;
        let _st = sh.lock()?;
        let _io = sh.io.lock().map_err(|_| poisoned())?;
        let mut files = Vec::new();
        for name in [ANCHOR, LATEST_CHECKPOINT, CHECKPOINT_LOG] {
            let p = sh.dir.join(name);
            if p.exists() {
                files.push((name.to_string(), fsu::read(&p)?));
            }
        }
        let seg_dir = sh.dir.join(SEGMENTS);
        let mut segments = Vec::new();
        for e in std::fs::read_dir(&seg_dir).map_err(|e| fsu::FsError::io("list", &seg_dir, e))? {
            let e = e.map_err(|e| fsu::FsError::io("list", &seg_dir, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if is_segment_name(&name) {
                let len = e
                    .metadata()
                    .map_err(|err| fsu::FsError::io("stat", &e.path(), err))?
                    .len();
                segments.push((name, len));
            }
        }
        segments.sort();
        Ok(TrailSnapshot { files, segments })
    }

    /// Signs a checkpoint over the current head now (if it moved).
    pub fn checkpoint_now(&self) -> Result<()> {
        self.shared.checkpoint()
    }

    /// Capacity and progress figures.
    pub fn status(&self) -> Result<CapacityStatus> {
        let st = self.shared.lock()?;
        let c = &self.shared.config;
        let warn_bytes = c.max_bytes / 100 * u64::from(c.warn_percent);
        Ok(CapacityStatus {
            used_bytes: st.used,
            max_bytes: c.max_bytes,
            warn_bytes,
            warning: st.used >= warn_bytes,
            full: st.used >= c.max_bytes,
            durable_seq: st.durable,
            checkpoint_seq: st.checkpoint_seq,
            checkpoint_error: st.checkpoint_error.clone(),
        })
    }

    /// Records that everything up to `seq` has been exported (so the
    /// drop-forwarded policy may delete it).
    pub fn mark_exported(&self, seq: u64) -> Result<()> {
        write_cursor(&self.shared.dir, "exported", seq)
    }

    /// The trail's directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Writes a final checkpoint and stops the background ticker.
    pub fn close(mut self) -> Result<()> {
        self.stop_ticker();
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.checkpoint()
    }

    fn stop_ticker(&mut self) {
        if let Ok(mut s) = self.shared.stop.lock() {
            *s = true;
        }
        self.shared.stop_cond.notify_all();
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.stop_ticker();
        if !self.shared.closed.load(Ordering::SeqCst) {
            let _ = self.shared.checkpoint();
        }
    }
}

fn spawn_ticker(sh: Arc<Shared>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let tick = (sh.config.checkpoint_interval / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        loop {
            while sh.checkpoint_due() {
                let result = sh.checkpoint();
                if let Ok(mut st) = sh.lock() {
                    st.checkpoint_error = result.as_ref().err().map(|e| e.to_string());
                }
                if result.is_err() {
                    break;
                }
            }
            let Ok(stop) = sh.stop.lock() else { return };
            if *stop {
                return;
            }
            // Woken early by an appender when a checkpoint falls due.
            match sh.stop_cond.wait_timeout(stop, tick) {
                Ok((g, _)) if *g => return,
                Ok(_) => {}
                Err(_) => return,
            }
        }
    })
}

/// Scans a segment: the offset where valid frames end, and the last valid
/// frame's (seq, hash, offset).
pub(crate) fn scan(data: &[u8], first_seq: u64) -> (usize, Option<(u64, Hash, usize)>) {
    let mut off = 0;
    let mut last = None;
    let mut expect = first_seq;
    while off < data.len() {
        match frame::decode(&data[off..]) {
            Decoded::Frame(f) if f.seq == expect => {
                last = Some((f.seq, f.hash, off));
                off += f.len;
                expect += 1;
            }
            _ => break,
        }
    }
    (off, last)
}

/// The `prev` hash in a segment's first frame header (zeros if unreadable;
/// only used to sign an anchor when the segment before it is dropped).
fn first_prev_of(path: &Path) -> Result<Hash> {
    use std::io::Read;
    let mut head = [0u8; frame::HEADER];
    let mut f = File::open(path).map_err(|e| fsu::FsError::io("open", path, e))?;
    if f.read_exact(&mut head).is_err() {
        return Ok([0; 32]);
    }
    let mut prev = [0u8; 32];
    prev.copy_from_slice(&head[16..48]);
    Ok(prev)
}

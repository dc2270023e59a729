//! The appending side: group commit, segment rotation, checkpoints, capacity,
//! and crash recovery on open.

use std::collections::{BTreeSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine;
use drivesec_fsutil::{self as fsu, Mode};
use drivesec_keystore::{KeyHandle, KeyStore, PublicKey};

use crate::checkpoint::{Checkpoint, CheckpointKind};
use crate::frame::{self, Hash};
use crate::layout::{
    ANCHOR, CHECKPOINT_LOG, LATEST_CHECKPOINT, QUARANTINE, SEGMENTS, is_segment_name, segment_dir,
    segment_name, segment_number,
};
use crate::record::now_rfc3339;
use crate::scan::{Item, Scanner};
use crate::verify::{DeviceReport, Problem, ProblemKind};
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

/// How far the records of an open trail are durable, for a reader beside
/// the writer (the forwarder): every record numbered at or below
/// [`DurableMark::seq`] that is in the trail's directory has been
/// fdatasynced. A cheap handle ([`AuditLog::durable_mark`]); it outlives the
/// log, and says when the log was retired (its directory archived by a
/// factory reset, so the path now holds another trail).
#[derive(Debug, Clone, Default)]
pub struct DurableMark(Arc<MarkInner>);

#[derive(Debug, Default)]
struct MarkInner {
    seq: AtomicU64,
    retired: AtomicBool,
}

impl DurableMark {
    /// Every record numbered at or below this is durable: the last record
    /// of the last group the writer synced, and at open the highest number
    /// in use (whatever is on disk after recovery is durable).
    pub fn seq(&self) -> u64 {
        self.0.seq.load(Ordering::Acquire)
    }

    /// The trail was retired ([`AuditLog::retire`]): its directory was
    /// archived, and nothing more of it is to be read there.
    pub fn retired(&self) -> bool {
        self.0.retired.load(Ordering::Acquire)
    }

    /// A mark at `seq`, for tests of readers.
    #[doc(hidden)]
    pub fn at(seq: u64) -> DurableMark {
        let m = DurableMark::default();
        m.advance(seq);
        m
    }

    fn advance(&self, seq: u64) {
        self.0.seq.fetch_max(seq, Ordering::AcqRel);
    }
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

const CURSORS: &str = "cursors";

/// The keystore counter that anchors the trail outside its directory: the
/// highest sequence number a checkpoint was signed for (docs/audit.md,
/// "Start-up check").
pub const CHECKPOINT_COUNTER: &str = "audit-checkpoint";

/// The smallest frame (a 1-byte body): what bounds how many records a
/// trail of a given size can hold (docs/audit.md, "Start-up check").
const MIN_FRAME: u64 = (frame::HEADER + 1 + frame::TRAILER) as u64;

/// The action of the record `open` writes for a setting above its upper
/// bound that it brought down to the bound (docs/audit.md, "Settings").
pub const CONFIG_CLAMPED: &str = "audit.config-clamped";

/// Why start-up recovery cuts out a valid frame whose number no record,
/// statement or counter of the trail can account for.
const IMPLAUSIBLE: &str = "implausible sequence number";

/// Why start-up recovery moves a whole segment to `quarantine/`: its name
/// is above every number the trail can account for, and it does not carry
/// the chain on.
const IMPLAUSIBLE_NAME: &str = "implausible segment name";

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
    /// Its last record, in file order: (seq, hash); what an anchor names
    /// when the segment is dropped.
    last: Option<(u64, Hash)>,
    /// The highest number it holds or held (see `Kept::max_seq`): the
    /// segment is dropped only once every record up to it was delivered.
    max_seq: u64,
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
    /// `open` is appending its recovery and start-up records: they are
    /// admitted beyond the reserve (a bounded, small number of records).
    opening: bool,
    /// Lines of `checkpoints.log` at or below this seq (the anchor's) are
    /// to be pruned, under the checkpoint writer's lock ([`Shared::prune_log`]);
    /// 0 when nothing is pending.
    prune_log_upto: u64,
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
    /// What readers beside the writer may take as durable.
    mark: DurableMark,
    /// Tests hold a written group before its fsync ([`AuditLog::hold_syncs`]).
    hold: Mutex<bool>,
    hold_cond: Condvar,
}

/// See [`AuditLog::snapshot`].
#[derive(Debug, Clone)]
pub struct TrailSnapshot {
    /// `anchor.json`, `checkpoint.json`, `checkpoints.log` (those present), by content.
    pub files: Vec<(String, Vec<u8>)>,
    /// `segments/NAME` and the length to copy, in order.
    pub segments: Vec<(String, u64)>,
}

/// Opens segment `name` of the trail in `dir` for sending its first
/// `bytes` (a prefix from [`AuditLog::snapshot`]): the file, positioned at
/// offset 0, and the number of bytes to send. Refuses a name that is not a
/// segment name, an entry that is not a regular file (a symbolic link is
/// not followed), and `bytes` beyond the file's length. The caller streams
/// the bytes in bounded pieces (`Read::take(bytes)`).
pub fn open_segment_prefix(dir: &Path, name: &str, bytes: u64) -> Result<(File, u64)> {
    use std::os::unix::fs::MetadataExt;
    if !is_segment_name(name) {
        return Err(AuditError::Invalid(format!(
            "'{name}' is not a segment name"
        )));
    }
    let p = dir.join(SEGMENTS).join(name);
    // The entry itself must be a regular file (as the snapshot lists
    // segments), and the file opened the one that was checked.
    let entry = std::fs::symlink_metadata(&p).map_err(|e| fsu::FsError::io("stat", &p, e))?;
    let f = File::open(&p).map_err(|e| fsu::FsError::io("open", &p, e))?;
    let meta = f.metadata().map_err(|e| fsu::FsError::io("stat", &p, e))?;
    if !entry.is_file() || !meta.is_file() || (entry.dev(), entry.ino()) != (meta.dev(), meta.ino())
    {
        return Err(AuditError::Invalid(format!(
            "segments/{name} is not a regular file"
        )));
    }
    let len = meta.len();
    if bytes > len {
        return Err(AuditError::Invalid(format!(
            "segment {name} holds {len} bytes, not {bytes}"
        )));
    }
    Ok((f, bytes))
}

/// Reads the first `bytes` of segment `name` of the trail in `dir` into
/// memory (see [`open_segment_prefix`], which streams).
pub fn read_segment_prefix(dir: &Path, name: &str, bytes: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let (f, bytes) = open_segment_prefix(dir, name, bytes)?;
    let p = dir.join(SEGMENTS).join(name);
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
    startup: StartupCheck,
    /// Start-up findings noted after `open` (see [`AuditLog::note_finding`]).
    notes: Mutex<Vec<String>>,
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
        // Written but not yet durable: a test may hold the group here.
        let mut held = self
            .hold
            .lock()
            .map_err(|_| std::io::Error::other("hold lock poisoned"))?;
        while *held {
            held = self
                .hold_cond
                .wait(held)
                .map_err(|_| std::io::Error::other("hold lock poisoned"))?;
        }
        drop(held);
        io.file.sync_data()
    }

    fn sign(&self, kind: CheckpointKind, seq: u64, hash: &Hash) -> Result<Checkpoint> {
        sign_statement(&self.signer, kind, seq, hash)
    }

    /// Signs and stores a checkpoint over the durable head if it moved.
    ///
    /// Write order (docs/audit.md, "Checkpoints and anchors"): first
    /// `checkpoint.json` (atomically), then the line in `checkpoints.log`
    /// (and, after a capacity drop, the log pruned behind the anchor), then
    /// the keystore's counter. A crash between the steps leaves
    /// `checkpoint.json` newer than the log or the counter behind the
    /// files, both of which start-up completes; `checkpoint.json` older
    /// than the log, or the counter ahead of the files, never comes from a
    /// crash: that is a cut or a rewind.
    fn checkpoint(&self) -> Result<()> {
        self.checkpoint_unless_failed(true)
    }

    /// [`Shared::checkpoint`]; `unless_failed: false` signs even after the
    /// log stopped taking appends (used by [`AuditLog::retire`], whose
    /// stop is deliberate, never after a write failure).
    fn checkpoint_unless_failed(&self, unless_failed: bool) -> Result<()> {
        let one = self.checkpointing.lock().map_err(|_| poisoned())?;
        let (seq, head) = {
            let st = self.lock()?;
            if st.durable <= st.checkpoint_seq || (unless_failed && st.failed.is_some()) {
                return Ok(());
            }
            (st.durable, st.durable_head)
        };
        let cp = self.sign(CheckpointKind::Checkpoint, seq, &head)?;
        let line = serde_json::to_string(&cp).map_err(|e| AuditError::Invalid(e.to_string()))?;
        fsu::write_atomic(
            &self.dir.join(LATEST_CHECKPOINT),
            line.as_bytes(),
            Mode::Public,
        )?;
        append_log_line(&self.dir, &line)?;
        // With this line the newest, the lines a drop left behind can go.
        let upto = std::mem::take(&mut self.lock()?.prune_log_upto);
        if upto > 0 && !self.prune_log(&one, upto).unwrap_or(false) {
            // Tried again at the next checkpoint; the log stays valid.
            let mut st = self.lock()?;
            st.prune_log_upto = st.prune_log_upto.max(upto);
        }
        {
            let mut st = self.lock()?;
            st.checkpoint_seq = seq;
            if st.durable == seq {
                st.first_uncovered = None;
            }
        }
        // Anchored outside the directory last: only a checkpoint that is on
        // disk may raise the counter.
        self.signer.store.advance_counter(CHECKPOINT_COUNTER, seq)?;
        Ok(())
    }

    /// Removes from `checkpoints.log` the lines of valid checkpoints at or
    /// below `upto` (the anchor's seq: their records are gone), except the
    /// newest line, which `checkpoint.json` is checked against. A valid
    /// checkpoint is what the verifier takes for one: kind `checkpoint`
    /// and a signature that verifies. Lines that are not (a forgery, or an
    /// anchor copied into the log, which the verifier reports) stay as
    /// evidence, and so do valid checkpoints that another valid one (in the
    /// log or `checkpoint.json`) contradicts for the same seq: no verdict
    /// depends on what is pruned. The log is replaced atomically (temp
    /// file, fsync, rename, directory fsync); the caller holds the
    /// checkpoint writer's lock (`_one`), so no checkpoint appends meanwhile.
    /// Returns whether it is done: no valid line at or below `upto` is left
    /// (false when the newest line is one: the next checkpoint tries again).
    fn prune_log(&self, _one: &MutexGuard<'_, ()>, upto: u64) -> Result<bool> {
        let path = self.dir.join(CHECKPOINT_LOG);
        if !path.exists() {
            return Ok(true);
        }
        let key = self.signer.store.info(&self.signer.handle)?.public_key;
        let data = fsu::read(&path)?;
        let lines: Vec<&[u8]> = data
            .split_inclusive(|&b| b == b'\n')
            .filter(|l| l.iter().any(|&b| b != b'\n'))
            .collect();
        // The valid checkpoints at or below `upto`: (seq, hash) per line.
        let valid = |c: Checkpoint| {
            (c.kind == CheckpointKind::Checkpoint && c.seq <= upto && c.verify(&key))
                .then_some((c.seq, c.hash))
        };
        let below: Vec<Option<(u64, String)>> = lines
            .iter()
            .map(|l| {
                serde_json::from_slice::<Checkpoint>(l.trim_ascii_end())
                    .ok()
                    .and_then(valid)
            })
            .collect();
        let latest = read_statement(&self.dir.join(LATEST_CHECKPOINT)).and_then(valid);
        let covered: Vec<bool> = below
            .iter()
            .map(|b| {
                b.as_ref().is_some_and(|(seq, hash)| {
                    below
                        .iter()
                        .flatten()
                        .chain(&latest)
                        .all(|(s, h)| s != seq || h == hash)
                })
            })
            .collect();
        let newest_covered = covered.last().copied().unwrap_or(false);
        let kept: Vec<u8> = lines
            .iter()
            .zip(&covered)
            .enumerate()
            .filter(|(i, (_, covered))| i + 1 == lines.len() || !**covered)
            .flat_map(|(_, (l, _))| l.iter().copied())
            .collect();
        if kept.len() != data.len() {
            fsu::write_atomic(&path, &kept, Mode::Public)?;
        }
        Ok(!newest_covered)
    }

    fn checkpoint_due(&self) -> bool {
        let Ok(st) = self.lock() else { return false };
        // A failed or retired log signs nothing more in the background.
        st.failed.is_none()
            && st.durable > st.checkpoint_seq
            && (st.durable - st.checkpoint_seq >= self.config.checkpoint_every
                || st
                    .first_uncovered
                    .is_some_and(|t| t.elapsed() >= self.config.checkpoint_interval))
    }

    /// Drops the oldest segments that were forwarded or exported, writing a
    /// signed anchor first. Returns the bytes freed.
    fn drop_delivered(&self, st: &mut State) -> Result<u64> {
        // A cursor is never trusted beyond the last durable record (one
        // written at rest would otherwise mark undelivered records as sent).
        let delivered = read_cursor(&self.dir, "forwarded")
            .unwrap_or(0)
            .max(read_cursor(&self.dir, "exported").unwrap_or(0))
            .min(st.durable);
        let mut freed = 0;
        let mut dropped: Option<(u64, Option<u64>)> = None;
        while st.segments.len() > 1 {
            let seg = &st.segments[0];
            // Only whole segments that are durable and delivered, judged by
            // the records the segment holds (never by the next segment's
            // name, which may have been planted at rest).
            if seg.max_seq > delivered || seg.max_seq > st.durable {
                break;
            }
            // The anchor names the segment's real last record; a segment
            // without one leaves the anchor as it is.
            if let Some((last, hash)) = seg.last {
                let anchor = self.sign(CheckpointKind::Anchor, last, &hash)?;
                let json =
                    serde_json::to_vec(&anchor).map_err(|e| AuditError::Invalid(e.to_string()))?;
                fsu::write_atomic(&self.dir.join(ANCHOR), &json, Mode::Public)?;
            }
            let Some(seg) = st.segments.pop_front() else {
                break;
            };
            let path = self.seg_path(seg.first_seq);
            fsu::remove_durable(&path)?;
            st.used -= seg.bytes;
            freed += seg.bytes;
            let last = seg.last.map(|l| l.0).or(dropped.and_then(|d| d.1));
            dropped = Some((dropped.map_or(seg.first_seq, |(f, _)| f), last));
        }
        // The log's lines for what the anchor now covers go too (so the log,
        // read whole at every start, stays bounded), at the next checkpoint:
        // the log is rewritten only under the checkpoint writer's lock,
        // which is taken before this state lock (and the rewrite, which
        // checks signatures, is no work to do while appends wait).
        if let Some((_, Some(last))) = dropped {
            st.prune_log_upto = st.prune_log_upto.max(last);
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
                last: None,
                max_seq: 0,
            });
        }
        let hash = frame::encode(seq, &st.head, &body, &mut st.pending);
        if let Some(s) = st.segments.back_mut() {
            s.bytes += frame_len;
            s.last = Some((seq, hash));
            s.max_seq = s.max_seq.max(seq);
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
            Tier::Device => c.max_bytes.saturating_add(c.reserve_bytes),
            _ => c.max_bytes.saturating_add(c.reserve_bytes / 2),
        };
        // The few records `open` appends (recovery, findings) always fit:
        // a full trail must never stop the device from starting.
        if essential && (st.used + len <= hard || st.opening) {
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

/// Signs a statement about the chain with the device key.
fn sign_statement(
    signer: &Signer,
    kind: CheckpointKind,
    seq: u64,
    hash: &Hash,
) -> Result<Checkpoint> {
    let hash_hex = hex::encode(hash);
    let time = now_rfc3339();
    let msg = Checkpoint::signed_bytes(kind, seq, &hash_hex, &time);
    let sig = signer.store.sign(&signer.handle, &msg)?;
    let algorithm = match signer.store.info(&signer.handle)?.algorithm() {
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

/// Appends one line to `checkpoints.log` and makes it durable.
fn append_log_line(dir: &Path, line: &str) -> Result<()> {
    let log = dir.join(CHECKPOINT_LOG);
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| fsu::FsError::io("open", &log, e))?;
    f.write_all(format!("{line}\n").as_bytes())
        .and_then(|()| f.sync_data())
        .map_err(|e| fsu::FsError::io("append", &log, e))?;
    Ok(())
}

/// A signed statement file, if present and readable (whether its signature
/// holds is the verifier's business).
fn read_statement(path: &Path) -> Option<Checkpoint> {
    read_checkpoint(path).ok().flatten()
}

/// The action of the record of a `quarantine` that was no directory (a
/// symbolic link planted at rest) and was moved aside (docs/audit.md,
/// "Start-up check").
const QUARANTINE_REPLACED: &str = "audit.recovery.quarantine-replaced";

/// `quarantine/` (made 0700 when missing), never through a symbolic link:
/// whatever else stood there was moved aside by [`set_aside_quarantine`]
/// at start-up; one that appeared since fails here, and nothing is
/// written through it.
fn quarantine_dir(dir: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let q = dir.join(QUARANTINE);
    match std::fs::DirBuilder::new().mode(0o700).create(&q) {
        Ok(()) => fsu::sync_dir(dir)?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(fsu::FsError::io("create directory", &q, e).into()),
    }
    fsu::open_dir_nofollow(&q)?
        .set_permissions(std::fs::Permissions::from_mode(0o700))
        .map_err(|e| fsu::FsError::io("chmod", &q, e))?;
    Ok(q)
}

/// A `quarantine` that is not a directory (a symbolic link planted at
/// rest, to anywhere, or a file) is renamed aside to
/// `quarantine.invalid-N` (the link itself: a rename never follows it),
/// on the record, so recovery never moves segments out of the trail or
/// changes the mode of what it points at; a real `quarantine/` is created
/// when needed. Never a refusal: the device starts anyway.
fn set_aside_quarantine(dir: &Path, out: &mut Recovered) -> Result<()> {
    let q = dir.join(QUARANTINE);
    let was = match std::fs::symlink_metadata(&q) {
        Ok(md) if md.is_dir() => return Ok(()),
        Ok(md) if md.file_type().is_symlink() => "symbolic link",
        Ok(_) => "not a directory",
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(fsu::FsError::io("stat", &q, e).into()),
    };
    for n in 1u32.. {
        let name = format!("{QUARANTINE}.invalid-{n}");
        let aside = dir.join(&name);
        match std::fs::symlink_metadata(&aside) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::rename(&q, &aside).map_err(|e| fsu::FsError::io("rename", &q, e))?;
                fsu::sync_dir(dir)?;
                out.push((
                    QUARANTINE_REPLACED,
                    serde_json::json!({ "file": QUARANTINE, "was": was, "moved_to": name }),
                ));
                return Ok(());
            }
            Ok(_) => {}
            Err(e) => return Err(fsu::FsError::io("stat", &aside, e).into()),
        }
    }
    Err(AuditError::Failed(
        "no free name to move quarantine aside".into(),
    ))
}

/// Puts something under `quarantine/` named `base`, or, when that name is
/// taken, `base.1`, `base.2`, ...: `place` puts it at the path it is given
/// and says whether it did (false: the name is taken). Returns the name.
fn into_quarantine(
    dir: &Path,
    base: &str,
    mut place: impl FnMut(&Path) -> Result<bool>,
) -> Result<String> {
    let q = quarantine_dir(dir)?;
    let mut name = base.to_string();
    for n in 1u32.. {
        if place(&q.join(&name))? {
            return Ok(name);
        }
        name = format!("{base}.{n}");
    }
    Err(AuditError::Failed("no free quarantine name".into()))
}

/// Keeps `bytes` under `quarantine/` as evidence, named `base` (with a
/// counter added if that name is taken); returns the name.
fn quarantine(dir: &Path, base: &str, bytes: &[u8]) -> Result<String> {
    into_quarantine(dir, base, |dst| {
        match fsu::write_new(dst, bytes, Mode::Public) {
            Ok(()) => Ok(true),
            Err(fsu::FsError::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    })
}

/// Copies the bytes `from..to` of `path` to a new file under `quarantine/`
/// named `base` (with a counter added if taken), streaming; returns the
/// name.
fn quarantine_range(dir: &Path, base: &str, path: &Path, from: u64, to: u64) -> Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::OpenOptionsExt;
    let mut src = File::open(path).map_err(|e| fsu::FsError::io("open", path, e))?;
    src.seek(SeekFrom::Start(from))
        .map_err(|e| fsu::FsError::io("seek", path, e))?;
    into_quarantine(dir, base, |dst_path| {
        let mut dst = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(dst_path)
        {
            Ok(dst) => dst,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(fsu::FsError::io("create", dst_path, e).into()),
        };
        std::io::copy(&mut (&mut src).take(to.saturating_sub(from)), &mut dst)
            .and_then(|_| dst.sync_all())
            .map_err(|e| fsu::FsError::io("write", dst_path, e))?;
        if let Some(q) = dst_path.parent() {
            fsu::sync_dir(q)?;
        }
        Ok(true)
    })
}

/// Moves the entry at `path` (a file, or whatever else stands there: a
/// rename never follows a symbolic link) to `quarantine/` under the name
/// `base` (with a counter added if that name is taken), durably; returns
/// the name. A rename: no copy, so it takes no room however large the
/// file.
fn quarantine_file(dir: &Path, base: &str, path: &Path) -> Result<String> {
    into_quarantine(dir, base, |dst| match std::fs::symlink_metadata(dst) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::rename(path, dst).map_err(|e| fsu::FsError::io("rename", path, e))?;
            if let Some(q) = dst.parent() {
                fsu::sync_dir(q)?;
            }
            if let Some(parent) = path.parent() {
                fsu::sync_dir(parent)?;
            }
            Ok(true)
        }
        Ok(_) => Ok(false),
        Err(e) => Err(fsu::FsError::io("stat", dst, e).into()),
    })
}

/// The reason start-up gives when it moves a stray entry of `segments/`
/// carrying a segment's name (a directory, a symbolic link: anything but
/// a regular file) to `quarantine/` (docs/audit.md, "Start-up check").
const STRAY_SEGMENT_NAME: &str = "not a regular file";

/// Moves every stray entry of `segments/` that carries a segment's name
/// (`stray`: the stray names [`segment_dir`] found) to `quarantine/` as
/// `NAME.stray`, as it is (unfollowed), on the record: the writer creates
/// each segment under its name with `O_EXCL`, so such an entry at the name
/// of the next segment would stop the trail at the rotation (or at open).
/// The other strays (names that are no segment's) stay, ignored.
fn set_aside_strays(dir: &Path, stray: &[String], out: &mut Recovered) -> Result<()> {
    for name in stray {
        if segment_number(name).is_none() {
            continue;
        }
        let path = dir.join(SEGMENTS).join(name);
        let was = match std::fs::symlink_metadata(&path) {
            Ok(md) if md.is_file() => continue,
            Ok(md) if md.is_dir() => "directory",
            Ok(md) if md.file_type().is_symlink() => "symbolic link",
            Ok(_) => "not a regular file",
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(fsu::FsError::io("stat", &path, e).into()),
        };
        let moved = quarantine_file(dir, &format!("{name}.stray"), &path)?;
        out.push((
            "audit.recovery.quarantined",
            serde_json::json!({
                "segment": name, "offset": null, "bytes": null,
                "reason": STRAY_SEGMENT_NAME, "was": was,
                "after_seq": null, "before_seq": null,
                "quarantined": moved,
            }),
        ));
    }
    Ok(())
}

/// Makes a file or directory durable (fsync), as start-up does with what it
/// found before trusting it.
fn sync_path(path: &Path) -> Result<()> {
    #[cfg(test)]
    tests::SYNCED.with(|s| s.borrow_mut().push(path.to_path_buf()));
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| fsu::FsError::io("fsync", path, e))?;
    Ok(())
}

/// Whether segment `first` at `path` (named above the plausible limit)
/// starts with the record its name says, carrying `chain` on: a genuine
/// chain that climbed past the limit. Its first bytes are that frame, or
/// unreadable bytes (that frame damaged at rest, its number readable or
/// not) when `first` may come next in the chain and the first frame after
/// them carries the chain on past them (or none follows).
fn starts_chain(path: &Path, first: u64, chain: &Chain) -> Result<bool> {
    let mut sc = Scanner::open(path)?;
    let u = match sc.next_item()? {
        Some(Item::Frame {
            offset: 0,
            frame: f,
        }) => return Ok(f.seq == first && continues(chain, f.seq, &f.prev)),
        Some(Item::Unreadable(u)) if u.offset == 0 => u,
        _ => return Ok(false),
    };
    let Some(c) = *chain else {
        return Ok(false);
    };
    if !c.may_be_next(first) || u.damaged_seq.is_some_and(|d| d != first) {
        return Ok(false);
    }
    let past = Some(ChainEnd {
        skipped: c.skipped.saturating_add(u.end - u.offset),
        ..c
    });
    Ok(match sc.next_item()? {
        Some(Item::Frame { frame: f, .. }) => f.seq > first && continues(&past, f.seq, &f.prev),
        _ => true,
    })
}

/// Whether any of the bytes `from..to` of `path` is not zero (read in
/// pieces).
fn any_nonzero(path: &Path, from: u64, to: u64) -> Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(path).map_err(|e| fsu::FsError::io("open", path, e))?;
    f.seek(SeekFrom::Start(from))
        .map_err(|e| fsu::FsError::io("seek", path, e))?;
    let mut r = f.take(to.saturating_sub(from));
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = r
            .read(&mut chunk)
            .map_err(|e| fsu::FsError::io("read", path, e))?;
        if n == 0 {
            return Ok(false);
        }
        if chunk[..n].iter().any(|&b| b != 0) {
            return Ok(true);
        }
    }
}

/// Appends the bytes `from..to` of `src` (at `path`) to `dst`.
fn copy_range(src: &mut File, path: &Path, from: u64, to: u64, dst: &mut File) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    src.seek(SeekFrom::Start(from))
        .map_err(|e| fsu::FsError::io("seek", path, e))?;
    std::io::copy(&mut src.take(to.saturating_sub(from)), dst)
        .map_err(|e| fsu::FsError::io("copy", path, e))?;
    Ok(())
}

/// What crash recovery found in the trail's files, as records to append.
type Recovered = Vec<(&'static str, serde_json::Value)>;

/// Repairs `checkpoints.log`: a last line with no newline that is not a
/// statement is a torn append, cut off and kept under `quarantine/`; one
/// that is a statement gets its newline. Then a `checkpoint.json` newer
/// than the log's last line (a crash between the two writes, which come in
/// that order) is appended to the log.
fn repair_checkpoint_log(dir: &Path, key: Option<&PublicKey>, out: &mut Recovered) -> Result<()> {
    let path = dir.join(CHECKPOINT_LOG);
    let mut data = if path.exists() {
        fsu::read(&path)?
    } else {
        Vec::new()
    };
    let line_start = data
        .iter()
        .rposition(|&b| b == b'\n')
        .map(|i| i + 1)
        .unwrap_or(0);
    if line_start < data.len() {
        let tail = data[line_start..].to_vec();
        let f = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| fsu::FsError::io("open", &path, e))?;
        if serde_json::from_slice::<Checkpoint>(&tail).is_ok() {
            (&f).write_all(b"\n")
                .map_err(|e| fsu::FsError::io("append", &path, e))?;
            data.push(b'\n');
        } else {
            let mut details = serde_json::json!({
                "file": CHECKPOINT_LOG, "offset": line_start, "bytes": tail.len(),
            });
            if tail.iter().any(|&b| b != 0) {
                details["quarantined"] =
                    quarantine(dir, &format!("{CHECKPOINT_LOG}.{line_start}.bin"), &tail)?.into();
            }
            f.set_len(line_start as u64)
                .map_err(|e| fsu::FsError::io("truncate", &path, e))?;
            data.truncate(line_start);
            out.push(("audit.recovery.truncated", details));
        }
        f.sync_all()
            .map_err(|e| fsu::FsError::io("fsync", &path, e))?;
    }
    let Some(latest) = read_statement(&dir.join(LATEST_CHECKPOINT)) else {
        return Ok(());
    };
    let logged = data
        .split(|&b| b == b'\n')
        .filter_map(|l| serde_json::from_slice::<Checkpoint>(l).ok())
        .map(|c| c.seq)
        .max();
    let genuine = key.is_none_or(|k| latest.verify(k));
    if latest.kind == CheckpointKind::Checkpoint && genuine && logged.is_none_or(|s| s < latest.seq)
    {
        let line =
            serde_json::to_string(&latest).map_err(|e| AuditError::Invalid(e.to_string()))?;
        append_log_line(dir, &line)?;
        out.push((
            "audit.recovery.checkpoint-log",
            serde_json::json!({"restored_seq": latest.seq, "logged_seq": logged}),
        ));
    }
    Ok(())
}

/// What recovery kept of one segment.
#[derive(Debug, Clone, Copy)]
struct Kept {
    /// The last record in the file: (seq, hash).
    last: Option<(u64, Hash)>,
    /// The highest sequence number it holds or held (a record that was
    /// written whole and damaged later counts: its number was given out).
    max_seq: u64,
}

/// The end of the chain kept so far at start-up, in file order: the last
/// record kept (or the verified anchor), and the unreadable bytes read
/// after it (see [`walk`]).
#[derive(Debug, Clone, Copy)]
struct ChainEnd {
    seq: u64,
    hash: Hash,
    /// Unreadable bytes since `seq`: they may have held one record per
    /// [`MIN_FRAME`] bytes.
    skipped: u64,
    /// Those bytes hold a frame written whole (its checksum wrong now)
    /// with a number they may hold: damage, not a torn write.
    whole: bool,
}

type Chain = Option<ChainEnd>;

impl ChainEnd {
    /// Whether number `seq` may come next: `seq - self.seq - 1` numbers
    /// skipped, at most one per [`MIN_FRAME`] unreadable bytes.
    fn may_be_next(&self, seq: u64) -> bool {
        seq.checked_sub(self.seq)
            .and_then(|d| d.checked_sub(1))
            .is_some_and(|k| k <= self.skipped / MIN_FRAME)
    }
}

/// Whether a frame numbered `seq` with `prev` continues `chain`: the next
/// number with `prev` the chain's hash, or, after unreadable bytes, a
/// number at most one per [`MIN_FRAME`] of those bytes further (its
/// `prev` unchecked: the hash of the record before it is unknown).
fn continues(chain: &Chain, seq: u64, prev: &Hash) -> bool {
    chain.is_some_and(|c| {
        if c.seq.checked_add(1) == Some(seq) {
            c.hash == *prev
        } else {
            c.may_be_next(seq)
        }
    })
}

/// One step of [`walk`], in file order.
enum Step {
    /// A valid frame that stays.
    Keep { offset: u64, seq: u64, hash: Hash },
    /// Bytes to cut out: unreadable bytes, or a valid frame with an
    /// implausible number (`implausible`: its number).
    Cut {
        start: u64,
        end: u64,
        reason: &'static str,
        implausible: Option<u64>,
        /// [`frame::damaged_seq`] of unreadable bytes.
        damaged_seq: Option<u64>,
    },
    /// Only zero bytes from here on (unwritten space).
    End(u64),
}

/// Walks a segment (streaming) and decides, frame by frame, what recovery
/// keeps: a valid frame numbered above `limit` (see [`plausible_limit`])
/// that does not continue `chain` is cut; every other valid frame stays
/// and becomes the chain's end. Unreadable bytes after the chain's end
/// (frames damaged at rest, their numbers readable or not) let the chain
/// go on past them: the next frame may skip one number per [`MIN_FRAME`]
/// of those bytes (its `prev` unchecked: the hash before it is unknown),
/// so a chain still climbs at most one number per frame of at least
/// [`MIN_FRAME`] bytes, and damage costs the damaged frames only. The
/// same walk from the same `chain` gives the same steps (recovery walks
/// twice).
fn walk(
    path: &Path,
    limit: u64,
    chain: &mut Chain,
    mut on: impl FnMut(Step) -> Result<()>,
) -> Result<()> {
    let mut sc = Scanner::open(path)?;
    while let Some(item) = sc.next_item()? {
        let step = match item {
            Item::Frame { offset, frame: f }
                if f.seq > limit && !continues(chain, f.seq, &f.prev) =>
            {
                Step::Cut {
                    start: offset,
                    end: offset + f.len as u64,
                    reason: IMPLAUSIBLE,
                    implausible: Some(f.seq),
                    damaged_seq: None,
                }
            }
            Item::Frame { offset, frame: f } => {
                *chain = Some(ChainEnd {
                    seq: f.seq,
                    hash: f.hash,
                    skipped: 0,
                    whole: false,
                });
                Step::Keep {
                    offset,
                    seq: f.seq,
                    hash: f.hash,
                }
            }
            Item::End { offset } => Step::End(offset),
            Item::Unreadable(u) => {
                if let Some(c) = chain {
                    c.whole |= u.damaged_seq.is_some_and(|d| c.may_be_next(d));
                    c.skipped = c.skipped.saturating_add(u.end - u.offset);
                }
                Step::Cut {
                    start: u.offset,
                    end: u.end,
                    reason: u.reason,
                    implausible: None,
                    damaged_seq: u.damaged_seq,
                }
            }
        };
        on(step)?;
    }
    Ok(())
}

/// How many cuts of one segment start-up records one by one (each its own
/// `audit.recovery.*` record and `quarantine/` file); the rest are
/// summed up in one record and one file (docs/audit.md, "Start-up check").
const CUTS_LISTED: usize = 16;

/// The reason of the summary of a segment's cuts (see [`Cuts`]) when they
/// are unreadable bytes for different reasons (a bad checksum, a bad
/// magic, ...), none a frame with an implausible number.
const UNREADABLE_MIXED: &str = "unreadable bytes";

/// The reason of the summary of a segment's cuts when they are both
/// unreadable bytes and frames with implausible numbers.
const UNREADABLE_OR_IMPLAUSIBLE: &str = "unreadable bytes or implausible sequence numbers";

/// Bytes of a segment recovery cuts out.
#[derive(Debug, Clone)]
struct Cut {
    start: u64,
    end: u64,
    reason: &'static str,
    /// The last record kept before it in its segment.
    after: Option<u64>,
    /// The first record kept after it in its segment.
    before: Option<u64>,
    /// Frames with an implausible number cut: how many, and the first
    /// one's number.
    implausible: u64,
    first_implausible: Option<u64>,
    /// How many cuts it stands for, and their bytes (the summary of the
    /// cuts beyond [`CUTS_LISTED`] spans the records kept between them).
    cuts: u64,
    cut_bytes: u64,
}

/// The cuts of one segment: the first [`CUTS_LISTED`] one by one, the
/// rest as one summary (so a segment crafted with many small damaged
/// spans costs a bounded number of records and files).
#[derive(Default)]
struct Cuts {
    listed: Vec<Cut>,
    rest: Option<Cut>,
    count: u64,
}

impl Cuts {
    fn push(&mut self, c: Cut) {
        self.count += 1;
        if self.listed.len() < CUTS_LISTED {
            self.listed.push(c);
            return;
        }
        match &mut self.rest {
            None => self.rest = Some(c),
            Some(r) => {
                r.end = c.end;
                r.before = c.before;
                r.implausible += c.implausible;
                r.first_implausible = r.first_implausible.or(c.first_implausible);
                r.cuts += c.cuts;
                r.cut_bytes += c.cut_bytes;
                // One reason when the cuts share it; else what they are.
                if r.reason != c.reason {
                    r.reason = if r.implausible == 0 {
                        UNREADABLE_MIXED
                    } else {
                        UNREADABLE_OR_IMPLAUSIBLE
                    };
                }
            }
        }
    }

    /// The cut that ended last, to note the record kept right after it.
    fn last_mut(&mut self) -> Option<&mut Cut> {
        match &mut self.rest {
            Some(r) => Some(r),
            None => self.listed.last_mut(),
        }
    }
}

/// Reads a segment (streaming, whatever its length) and moves whatever is
/// not a frame (torn or damaged bytes) to `quarantine/`, keeping every
/// frame after it: one bad frame costs that frame only.
///
/// A valid frame numbered above `limit` (see [`plausible_limit`]) that
/// does not continue the chain kept before it (`chain`, in this segment or
/// an earlier one; see [`walk`]) is cut out too, and described in
/// `implausible` for the start-up report: it must not steer numbering. One
/// that continues it stays: a genuine chain is never cut for its numbers,
/// and a chain can climb only one number per frame above the limit, so
/// numbering stays far from the end of the number space.
///
/// Each cut is one record and one `quarantine/` file, for the first
/// [`CUTS_LISTED`] cuts of the segment; the cuts after those are one
/// summary record and one file (their bytes from the first to the last,
/// the records kept between them included).
fn repair_segment(
    dir: &Path,
    first: u64,
    path: &Path,
    limit: u64,
    chain: &mut Chain,
    out: &mut Recovered,
    implausible: &mut Vec<Problem>,
) -> Result<Kept> {
    let name = segment_name(first);
    let size = std::fs::metadata(path)
        .map_err(|e| fsu::FsError::io("stat", path, e))?
        .len();
    let chain_before = *chain;
    let mut last: Option<(u64, Hash)> = None;
    let mut max_seq = 0u64;
    let mut cuts = Cuts::default();
    let mut end_of_frames = size;
    walk(path, limit, chain, |step| {
        match step {
            Step::Keep { offset, seq, hash } => {
                if let Some(c) = cuts.last_mut()
                    && c.end == offset
                {
                    c.before = Some(seq);
                }
                last = Some((seq, hash));
                max_seq = max_seq.max(seq);
            }
            Step::End(offset) => end_of_frames = offset,
            Step::Cut {
                start,
                end,
                reason,
                implausible,
                damaged_seq,
            } => {
                // A whole frame damaged later held the number due here
                // (after a kept record: at most one above it).
                let due = last.map_or(first, |(s, _)| s.saturating_add(1));
                if implausible.is_none()
                    && damaged_seq == Some(due)
                    && (due <= limit || last.is_some())
                {
                    max_seq = max_seq.max(due);
                }
                cuts.push(Cut {
                    start,
                    end,
                    reason,
                    after: last.map(|l| l.0),
                    before: None,
                    implausible: u64::from(implausible.is_some()),
                    first_implausible: implausible,
                    cuts: 1,
                    cut_bytes: end - start,
                });
            }
        }
        Ok(())
    })?;
    if cuts.count == 0 && end_of_frames == size {
        return Ok(Kept { last, max_seq });
    }
    let summary = cuts.rest.iter().map(|r| (r, true));
    for (c, is_summary) in cuts.listed.iter().map(|c| (c, false)).chain(summary) {
        if c.implausible > 0 {
            let seq = c.after.map_or(first, |s| s.saturating_add(1));
            let numbers = match c.first_implausible {
                Some(n) if c.implausible == 1 => format!("a frame numbered {n}"),
                Some(n) => format!("{} frames, the first numbered {n},", c.implausible),
                None => format!("{} frames", c.implausible),
            };
            implausible.push(Problem {
                seq: Some(seq),
                kind: ProblemKind::DamagedRecord,
                file: format!("{SEGMENTS}/{name}"),
                offset: Some(c.start),
                message: format!(
                    "{numbers} (no record, checkpoint or counter of the trail allows a number above {limit}, and {} not continue the chain kept before {}) {} cut out{}",
                    if c.implausible == 1 { "it does" } else { "they do" },
                    if c.implausible == 1 { "it" } else { "them" },
                    if c.implausible == 1 { "was" } else { "were" },
                    c.after
                        .map(|s| format!(" after record {s}"))
                        .unwrap_or_default()
                ),
            });
        }
        let torn = !is_summary && c.end == size && c.reason != IMPLAUSIBLE;
        let mut details = serde_json::json!({
            "segment": name, "offset": c.start, "bytes": c.end - c.start, "reason": c.reason,
            "after_seq": c.after, "before_seq": c.before,
        });
        if is_summary {
            details["cuts"] = c.cuts.into();
            details["cut_bytes"] = c.cut_bytes.into();
        }
        if any_nonzero(path, c.start, c.end)? {
            details["quarantined"] = quarantine_range(
                dir,
                &format!("{name}.{}.bin", c.start),
                path,
                c.start,
                c.end,
            )?
            .into();
        }
        out.push((
            if torn {
                "audit.recovery.truncated"
            } else {
                "audit.recovery.quarantined"
            },
            details,
        ));
    }
    let only_tail = cuts.count == 0 || (cuts.count == 1 && cuts.listed[0].end == size);
    if only_tail {
        let keep = cuts.listed.first().map_or(end_of_frames, |c| c.start);
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| fsu::FsError::io("open", path, e))?;
        f.set_len(keep)
            .map_err(|e| fsu::FsError::io("truncate", path, e))?;
        f.sync_all()
            .map_err(|e| fsu::FsError::io("fsync", path, e))?;
    } else {
        // The frames kept, copied piece by piece into the new segment: the
        // same walk again (from the same chain, so the same steps), in
        // bounded memory whatever the number of cuts.
        let mut src = File::open(path).map_err(|e| fsu::FsError::io("open", path, e))?;
        let mut again = chain_before;
        fsu::write_atomic_with(path, Mode::Public, |dst| -> Result<()> {
            let mut at = 0;
            walk(path, limit, &mut again, |step| {
                match step {
                    Step::Cut { start, end, .. } => {
                        copy_range(&mut src, path, at, start, dst)?;
                        at = end;
                    }
                    Step::End(offset) => end_of_frames = offset,
                    Step::Keep { .. } => {}
                }
                Ok(())
            })?;
            copy_range(&mut src, path, at, end_of_frames.max(at), dst)
        })?;
    }
    Ok(Kept { last, max_seq })
}

/// The highest sequence number a frame may carry at start-up (docs/audit.md,
/// "Start-up check", rule 1): `trusted` (the highest number a signed
/// statement or the keystore counter vouches for) plus the number of
/// smallest frames that fit in `max_bytes + reserve_bytes` and in the
/// segments as found. A frame above it was not written by this device.
fn plausible_limit(trusted: u64, config: &AuditConfig, segment_bytes: u64) -> u64 {
    let room = config
        .max_bytes
        .saturating_add(config.reserve_bytes)
        .saturating_add(segment_bytes);
    trusted.saturating_add(room / MIN_FRAME)
}

/// Starts a new trail in `dir` that carries on from the trail in
/// `previous` (the one a factory reset just archived): a signed anchor for
/// `previous`'s last record, so the new trail's first record follows it,
/// sequence numbers are never given out twice and the keystore's
/// checkpoint counter never has to go back. Returns the anchor's sequence
/// number, or `None` when `previous` holds no record.
///
/// Only what verifies is anchored (an offline reset runs without the
/// daemon's start-up check, on a directory someone may have written to):
/// `previous` is verified with the signing key first, and the anchor goes
/// to the last record of its verified chain, the record before the first
/// bad one when it is damaged. A frame past the damage (a forged number,
/// say) is never signed for, and an `anchor.json` there counts only when
/// its signature verifies.
pub fn continue_after(dir: &Path, previous: &Path, signer: &Signer) -> Result<Option<u64>> {
    let key = signer.store.info(&signer.handle)?.public_key;
    let report = crate::verify::verify(previous, &key)?;
    // The last record the verified chain vouches for.
    let target = match report.first_bad_seq {
        Some(bad) => bad.checked_sub(1).filter(|s| *s >= 1),
        None => report.last_seq,
    };
    // The highest record at or below it, the first of that number in file
    // order (the verified chain comes before anything appended after it).
    let (segs, _) = segment_dir(previous)?;
    let mut last: Option<(u64, Hash)> = None;
    if let Some(want) = target {
        for (_, path) in &segs {
            let mut sc = Scanner::open(path)?;
            while let Some(item) = sc.next_item()? {
                if let Item::Frame { frame: f, .. } = item
                    && f.seq <= want
                    && last.is_none_or(|(s, _)| f.seq > s)
                {
                    last = Some((f.seq, f.hash));
                }
            }
        }
    }
    // No record left: the archived trail's own anchor, when it verifies.
    let last = last.or_else(|| {
        let a = read_statement(&previous.join(ANCHOR))?;
        (report.anchor == Some(a.seq)).then_some(())?;
        Some((a.seq, a.hash_bytes()?))
    });
    let Some((seq, hash)) = last else {
        return Ok(None);
    };
    fsu::create_private_dir(&dir.join(SEGMENTS))?;
    let anchor = sign_statement(signer, CheckpointKind::Anchor, seq, &hash)?;
    let json = serde_json::to_vec(&anchor).map_err(|e| AuditError::Invalid(e.to_string()))?;
    fsu::write_atomic(&dir.join(ANCHOR), &json, Mode::Public)?;
    Ok(Some(seq))
}

/// What [`AuditLog::open`] found when it checked the trail, before it
/// signed anything (docs/audit.md, "Start-up check").
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StartupCheck {
    /// What the verifier found once crash damage was repaired (empty when
    /// the trail is intact); includes earlier start-up reports still in it.
    pub problems: Vec<Problem>,
    /// The first bad record.
    pub first_bad_seq: Option<u64>,
    /// The keystore counter [`CHECKPOINT_COUNTER`]: the highest record a
    /// checkpoint was ever signed for; `None` when never set.
    pub anchored_seq: Option<u64>,
    /// The highest record a signed statement in the directory covers.
    pub found_seq: Option<u64>,
    /// The signed checkpoints went back or vanished: the counter is ahead
    /// of every statement in the directory.
    pub rewound: bool,
    /// Entries of `segments/` that are not segments, as found: ignored,
    /// but for those that carry a segment's name (a directory, a symbolic
    /// link), which were moved to `quarantine/` (on the record).
    pub stray_files: Vec<String>,
    /// What could not be checked, and why.
    pub unchecked: Vec<String>,
    /// Delivery cursors that were unreadable or claimed records beyond the
    /// last one present (written at rest): each was reset and recorded
    /// (`audit.cursor-reset`).
    pub cursors: Vec<String>,
    /// The `audit.cursor-reset` records an earlier start wrote that are
    /// still in the trail: a finding for as long as they are there.
    pub earlier_cursor_resets: Vec<u64>,
    /// Settings above their upper bound (from a configuration an older
    /// version accepted) that the trail was opened with brought down to
    /// the bound: a finding at every start until the configuration is
    /// fixed, recorded as `audit.config-clamped`.
    pub config_clamped: Vec<crate::Clamped>,
    /// Records appended for what was found: (action, sequence number).
    pub recorded: Vec<(String, u64)>,
    /// The sequence number the trail continued at.
    pub next_seq: u64,
}

impl StartupCheck {
    /// Whether the trail passed in full: intact, not rewound, all checked.
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
            && !self.rewound
            && self.unchecked.is_empty()
            && self.cursors.is_empty()
            && self.earlier_cursor_resets.is_empty()
            && self.config_clamped.is_empty()
    }

    /// One sentence per finding (for logs and the device's posture).
    pub fn findings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.rewound {
            out.push(format!(
                "the trail's signed checkpoints went back: the keystore counter says record {} was covered, the directory's statements reach {} (records removed or rewritten at rest)",
                self.anchored_seq.unwrap_or(0),
                self.found_seq
                    .map_or_else(|| "no record".to_string(), |f| format!("record {f}"))
            ));
        }
        if let Some(p) = self.problems.first() {
            out.push(format!(
                "the trail failed its start-up verification: {} problem(s), first bad record {}: {}",
                self.problems.len(),
                self.first_bad_seq
                    .map_or_else(|| "unknown".to_string(), |s| s.to_string()),
                p.message
            ));
        }
        for u in &self.unchecked {
            out.push(format!("the trail was not fully checked at start-up: {u}"));
        }
        for c in &self.config_clamped {
            out.push(format!(
                "the configuration sets {} to {}, above its bound {}: the trail uses {} (set it at most {} in the configuration file; `drivesecd check` names it)",
                c.setting, c.configured, c.bound, c.bound, c.bound
            ));
        }
        for c in &self.cursors {
            out.push(format!(
                "a delivery cursor was out of the trail (the cursor written or records removed at rest, or a cursor a version that sent records before they were durable left after a power cut): {c}"
            ));
        }
        if let (Some(first), Some(last)) = (
            self.earlier_cursor_resets.first(),
            self.earlier_cursor_resets.last(),
        ) {
            out.push(format!(
                "a delivery cursor was out of the trail: an earlier start-up reset it ({} audit.cursor-reset record(s) in the trail, records {first}..{last}); records may be missing at the collector or an export",
                self.earlier_cursor_resets.len()
            ));
        }
        out
    }
}

/// How many problems or names a start-up record lists at most.
const DETAIL_ITEMS: usize = 16;
/// How many characters of one string a start-up record keeps at most.
const DETAIL_CHARS: usize = 256;

/// `s` cut to [`DETAIL_CHARS`] characters (marked with `…` when cut).
fn clip(s: &str) -> String {
    match s.char_indices().nth(DETAIL_CHARS) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// The `audit.integrity-failed` record for what verification found that
/// no earlier start-up report in the trail names (by record), if anything.
fn integrity_event(
    problems: &[Problem],
    device_reports: &[DeviceReport],
    stray: &[String],
) -> Option<Event> {
    let known: BTreeSet<u64> = device_reports
        .iter()
        .flat_map(|d| d.seqs.iter().copied())
        .collect();
    let new: Vec<&Problem> = problems
        .iter()
        .filter(|p| p.kind != ProblemKind::ReportedByDevice && !known.contains(&p.seq.unwrap_or(0)))
        .collect();
    if new.is_empty() {
        return None;
    }
    let mut seqs: Vec<u64> = new.iter().map(|p| p.seq.unwrap_or(0)).collect();
    seqs.sort_unstable();
    seqs.dedup();
    seqs.truncate(256);
    // Bounded, whatever the directory holds: a start-up record must always
    // fit in a frame (docs/audit.md, "Start-up check").
    let problems: Vec<serde_json::Value> = new
        .iter()
        .take(DETAIL_ITEMS)
        .map(|p| {
            serde_json::json!({"kind": p.kind, "seq": p.seq,
                "file": clip(&p.file),
                "offset": p.offset, "message": clip(&p.message)})
        })
        .collect();
    let stray_names: Vec<String> = stray.iter().take(DETAIL_ITEMS).map(|n| clip(n)).collect();
    Some(
        Event::new(Actor::Device, crate::verify::INTEGRITY_FAILED)
            .outcome(crate::Outcome::Failure)
            .details(serde_json::json!({
                "first_bad_seq": new.iter().filter_map(|p| p.seq).min(),
                "problem_count": new.len(),
                "problems": problems,
                "seqs": seqs,
                "stray_files": stray_names,
                "stray_count": stray.len(),
            }))
            .essential(),
    )
}

impl AuditLog {
    /// Opens (or creates) the trail in `dir`. Before anything is signed:
    ///
    /// 1. crash damage is repaired: a torn line at the end of
    ///    `checkpoints.log` and bytes in a segment that are not frames are
    ///    moved to `quarantine/` (the frames after them stay), so are a
    ///    frame and a whole segment whose number or name nothing in the
    ///    trail can account for, and a stray entry with a segment's name
    ///    (a directory, a symbolic link: it would stop the creation of
    ///    that segment), and a `checkpoint.json` newer than the log is
    ///    appended to it; then what is kept is fsynced (it may have been
    ///    in the page cache only);
    /// 2. the trail is verified with the signing key's public half, and the
    ///    keystore counter [`CHECKPOINT_COUNTER`] is compared with the
    ///    highest signed statement in the directory;
    /// 3. numbering continues after every number ever used (records,
    ///    damaged records, checkpoints, the counter, the delivery cursors);
    /// 4. what recovery did is recorded (`audit.recovery.*`), and what the
    ///    check found too (`audit.integrity-failed`, `audit.trail-rewound`,
    ///    failures, essential), then a checkpoint is signed over those
    ///    records at once.
    ///
    /// Findings never stop the trail from opening; see
    /// [`AuditLog::startup_check`].
    pub fn open(dir: &Path, mut config: AuditConfig, signer: Signer) -> Result<AuditLog> {
        // A value above an upper bound (a configuration an older version
        // accepted) is brought down to it and reported, never refused: a
        // drive must not stop starting because a bound was added.
        let clamped = config.clamp();
        config.validate().map_err(AuditError::Invalid)?;
        fsu::create_private_dir(&dir.join(SEGMENTS))?;
        let mut check = StartupCheck {
            config_clamped: clamped,
            ..StartupCheck::default()
        };
        let key = match signer.store.info(&signer.handle) {
            Ok(i) => Some(i.public_key),
            Err(e) => {
                check.unchecked.push(format!(
                    "the signing key cannot be read ({e}), so the trail was not verified"
                ));
                None
            }
        };
        let mut recovered: Recovered = Vec::new();
        check.anchored_seq = match signer.store.counter(CHECKPOINT_COUNTER) {
            Ok(v) => v,
            Err(e) => {
                check.unchecked.push(format!(
                    "the keystore counter '{CHECKPOINT_COUNTER}' cannot be read ({e}), so a rewind of the trail cannot be detected"
                ));
                None
            }
        };

        // 1. Crash damage.
        set_aside_quarantine(dir, &mut recovered)?;
        repair_checkpoint_log(dir, key.as_ref(), &mut recovered)?;
        let (segs, stray) = segment_dir(dir)?;
        set_aside_strays(dir, &stray, &mut recovered)?;
        check.stray_files = stray;
        // The signed statements, read once: recovery changes neither.
        let anchor = read_statement(&dir.join(ANCHOR));
        let latest = read_statement(&dir.join(LATEST_CHECKPOINT));
        // What a signature or the counter vouches for; numbers far above it
        // were not given out by this device (without the key, the
        // statements are taken as they are).
        let signed = |st: &Option<Checkpoint>| {
            st.as_ref()
                .filter(|c| key.as_ref().is_none_or(|k| c.verify(k)))
                .map(|c| c.seq)
        };
        let trusted = [signed(&anchor), signed(&latest), check.anchored_seq]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(0);
        let mut seg_bytes = 0u64;
        for (_, path) in &segs {
            seg_bytes = seg_bytes.saturating_add(
                std::fs::metadata(path)
                    .map_err(|e| fsu::FsError::io("stat", path, e))?
                    .len(),
            );
        }
        let limit = plausible_limit(trusted, &config, seg_bytes);
        let mut implausible = Vec::new();
        let mut top = 0u64;
        let mut last: Option<(u64, Hash)> = None;
        // The last frame kept so far, which a frame above the limit must
        // continue to be kept; at first the verified anchor's record.
        let mut chain: Chain = anchor
            .as_ref()
            .filter(|a| {
                a.kind == CheckpointKind::Anchor && key.as_ref().is_none_or(|k| a.verify(k))
            })
            .and_then(|a| {
                Some(ChainEnd {
                    seq: a.seq,
                    hash: a.hash_bytes()?,
                    skipped: 0,
                    whole: false,
                })
            });
        let mut kept_segs: Vec<(u64, PathBuf)> = Vec::new();
        let mut kept: Vec<Kept> = Vec::new();
        for (first, path) in segs {
            // A segment named above the limit that does not carry the chain
            // on (planted at rest): its name would steer which segment the
            // writer and the forwarder take for the last one, and what a
            // drop counts as delivered. It goes to quarantine/ whole, on the
            // record; one with no frame at all is only removed.
            if first > limit && !starts_chain(&path, first, &chain)? {
                let size = std::fs::metadata(&path)
                    .map_err(|e| fsu::FsError::io("stat", &path, e))?
                    .len();
                let name = segment_name(first);
                if size == 0 || !any_nonzero(&path, 0, size)? {
                    fsu::remove_durable(&path)?;
                    continue;
                }
                let after = chain.map(|c| c.seq);
                let moved = quarantine_file(dir, &format!("{name}.0.bin"), &path)?;
                implausible.push(Problem {
                    seq: Some(after.map_or(1, |s| s.saturating_add(1))),
                    kind: ProblemKind::MisnamedSegment,
                    file: format!("{SEGMENTS}/{name}"),
                    offset: None,
                    message: format!(
                        "segment {name} (named above {limit}, which no record, checkpoint or counter of the trail allows, and not carrying on the chain kept before it) was moved to {QUARANTINE}/{moved}"
                    ),
                });
                recovered.push((
                    "audit.recovery.quarantined",
                    serde_json::json!({
                        "segment": name, "offset": 0, "bytes": size,
                        "reason": IMPLAUSIBLE_NAME, "after_seq": after, "before_seq": null,
                        "quarantined": moved,
                    }),
                ));
                continue;
            }
            let k = repair_segment(
                dir,
                first,
                &path,
                limit,
                &mut chain,
                &mut recovered,
                &mut implausible,
            )?;
            top = top.max(k.max_seq);
            if k.last.is_some() {
                last = k.last;
            }
            kept_segs.push((first, path));
            kept.push(k);
        }
        // Damage after the last record kept that holds a frame written
        // whole may have held a record per MIN_FRAME bytes, given out
        // before it was damaged: none of those numbers is given out again.
        if let Some(c) = chain
            && c.whole
        {
            top = top.max(c.seq.saturating_add(c.skipped / MIN_FRAME));
        }
        let mut segs = kept_segs;
        // An empty last segment (a crash right after rotation) goes; a new
        // one is made, named for the record it will start with.
        while let Some((_, path)) = segs.last() {
            let len = std::fs::metadata(path)
                .map_err(|e| fsu::FsError::io("stat", path, e))?
                .len();
            if len > 0 {
                break;
            }
            fsu::remove_durable(path)?;
            segs.pop();
            kept.pop();
        }
        // What is on disk now may be only in the page cache (a daemon
        // killed between a write and its fdatasync): it is made durable
        // before it is verified, signed over, counted as durable or sent.
        // Only the last segment can hold such bytes: the writer fdatasyncs
        // a segment before it creates the next one, and the repair above
        // fsyncs every segment it changed. One fsync, not one per segment
        // (a trail of many small segments would take minutes to start).
        if let Some((_, path)) = segs.last() {
            sync_path(path)?;
        }
        sync_path(&dir.join(SEGMENTS))?;
        let log_path = dir.join(CHECKPOINT_LOG);
        if log_path.exists() {
            sync_path(&log_path)?;
        }

        // 2. Verification and the counter, before anything is signed.
        let report = match &key {
            Some(k) => match crate::verify::verify(dir, k) {
                Ok(r) => Some(r),
                Err(e) => {
                    check
                        .unchecked
                        .push(format!("verification could not read the trail: {e}"));
                    None
                }
            },
            None => None,
        };
        let (found, checkpointed) = match &report {
            Some(r) => (r.signed_seq.max(r.anchor), r.signed_seq),
            None => {
                let cp = latest.as_ref().map(|c| c.seq);
                (cp.max(anchor.as_ref().map(|a| a.seq)), cp)
            }
        };
        check.found_seq = found;
        check.rewound = check.anchored_seq.is_some_and(|a| a > found.unwrap_or(0));
        // Frames cut out for their number are problems the repaired trail
        // no longer shows: they join the verifier's.
        let report = report.map(|mut r| {
            r.problems.extend(implausible.iter().cloned());
            r.problems.sort_by_key(|p| p.seq);
            r.first_bad_seq = r.problems.iter().filter_map(|p| p.seq).min();
            r
        });
        if let Some(r) = &report {
            check.problems = r.problems.clone();
            check.first_bad_seq = r.first_bad_seq;
            check.earlier_cursor_resets = r.cursor_resets.clone();
        } else if !implausible.is_empty() {
            check.first_bad_seq = implausible.iter().filter_map(|p| p.seq).min();
            check.problems = implausible;
        }

        // 3. Where numbering continues.
        let mut head = anchor
            .as_ref()
            .and_then(|a| a.hash_bytes())
            .unwrap_or([0; 32]);
        let mut durable = anchor.as_ref().map(|a| a.seq).unwrap_or(0);
        if let Some((seq, hash)) = last {
            head = hash;
            durable = seq;
        }
        // Every number a kept record, a signed statement or the counter
        // holds counts; a cursor (written at rest, unsigned) only within
        // the plausible range.
        for used in [Some(durable), found, check.anchored_seq]
            .into_iter()
            .flatten()
        {
            top = top.max(used);
        }
        // The delivery cursors, read once (an unreadable one counts as 0
        // here, and is reset below).
        let cursors = ["forwarded", "exported"].map(|name| (name, read_cursor(dir, name)));
        for (_, c) in &cursors {
            let c = *c.as_ref().unwrap_or(&0);
            if c <= limit {
                top = top.max(c);
            }
        }
        // So does the number in a segment's name (within the plausible
        // range): a new segment then sorts after every one present, and
        // file order stays sequence order even after a misnamed one.
        for (first, _) in &segs {
            if *first <= limit {
                top = top.max(*first);
            }
        }
        let next_seq = top.saturating_add(1);
        check.next_seq = next_seq;
        // Kept frames are all at or below `top`; should one not be, nothing
        // counts as durable beyond next_seq - 1.
        let mut checkpointed = checkpointed.unwrap_or(0);
        if durable >= next_seq {
            durable = next_seq - 1;
            checkpointed = durable;
        }
        // A delivery cursor says up to which record the collector (or an
        // export) has the trail. One beyond the last record present, or
        // unreadable, was written at rest: trusted, it would stop delivery
        // and let the capacity policy drop undelivered records. It is reset
        // (to the last record, or to 0 when unreadable) and reported.
        let mut cursor_events = Vec::new();
        for (name, cursor) in cursors {
            let (found_cursor, reset) = match cursor {
                Ok(v) if v <= durable => continue,
                Ok(v) => (Some(v), durable),
                Err(_) => (None, 0),
            };
            let mut msg = match found_cursor {
                Some(v) => format!(
                    "cursors/{name} says record {v} was delivered but the last record present is {durable}; reset to {reset}"
                ),
                None => format!("cursors/{name} cannot be read; reset to {reset}"),
            };
            if let Err(e) = write_cursor(dir, name, reset) {
                msg.push_str(&format!(" (rewriting it failed: {e})"));
            }
            check.cursors.push(msg);
            cursor_events.push(
                Event::new(Actor::Device, crate::verify::CURSOR_RESET)
                    .outcome(crate::Outcome::Failure)
                    .details(serde_json::json!({
                        "cursor": name,
                        "found": found_cursor,
                        "last_seq": durable,
                        "reset_to": reset,
                    }))
                    .essential(),
            );
        }

        let mut infos: VecDeque<SegInfo> = VecDeque::new();
        let mut used = 0;
        for ((first, path), k) in segs.iter().zip(&kept) {
            let bytes = std::fs::metadata(path)
                .map_err(|e| fsu::FsError::io("stat", path, e))?
                .len();
            used += bytes;
            infos.push_back(SegInfo {
                first_seq: *first,
                bytes,
                last: k.last,
                max_seq: k.max_seq,
            });
        }
        // A last segment whose first record is not the one its name says
        // (renamed at rest) stays as evidence, unwritten: the next record
        // starts a fresh segment named for it.
        let misnamed = match segs.last() {
            Some((first, path)) => first_seq_of(path)?.is_some_and(|s| s != *first),
            None => false,
        };
        let file = match segs.last().filter(|_| !misnamed) {
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
                    last: None,
                    max_seq: 0,
                });
                f
            }
        };
        let state = State {
            next_seq,
            head,
            pending: Vec::new(),
            spare: Vec::new(),
            splits: Vec::new(),
            durable,
            durable_head: head,
            flushing: false,
            failed: None,
            segments: infos,
            used,
            warned: false,
            full_reported: false,
            checkpoint_seq: checkpointed.min(durable),
            first_uncovered: None,
            checkpoint_error: None,
            reserved: 0,
            opening: true,
            // Lines a drop before a crash (or a trail older than pruning)
            // left behind go at the first checkpoint.
            prune_log_upto: anchor
                .as_ref()
                .filter(|a| {
                    a.kind == CheckpointKind::Anchor && key.as_ref().is_some_and(|k| a.verify(k))
                })
                .map_or(0, |a| a.seq),
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
            // Everything on disk after recovery is durable, and numbered
            // below `next_seq`.
            mark: DurableMark::at(next_seq - 1),
            hold: Mutex::new(false),
            hold_cond: Condvar::new(),
        });
        let mut log = AuditLog {
            ticker: None,
            shared,
            startup: StartupCheck::default(),
            notes: Mutex::new(Vec::new()),
        };

        // 4. On the record, then sealed.
        for (action, details) in recovered {
            log.append(
                Event::new(Actor::Device, action)
                    .details(details)
                    .essential(),
            )?;
        }
        let mut findings = Vec::new();
        for c in &check.config_clamped {
            findings.push(
                Event::new(Actor::Device, CONFIG_CLAMPED)
                    .outcome(crate::Outcome::Failure)
                    .details(serde_json::json!({
                        "setting": c.setting,
                        "configured": c.configured,
                        "used": c.bound,
                    }))
                    .essential(),
            );
        }
        match &report {
            Some(r) => findings.extend(integrity_event(
                &r.problems,
                &r.device_reports,
                &check.stray_files,
            )),
            None => findings.extend(integrity_event(&check.problems, &[], &check.stray_files)),
        }
        findings.extend(cursor_events);
        if check.rewound {
            let first_bad = found.map_or(1, |f| f + 1);
            findings.push(
                Event::new(Actor::Device, crate::verify::TRAIL_REWOUND)
                    .outcome(crate::Outcome::Failure)
                    .details(serde_json::json!({
                        "anchored_seq": check.anchored_seq,
                        "found_seq": found,
                        "last_seq": last.map(|l| l.0),
                        "first_bad_seq": first_bad,
                        "next_seq": next_seq,
                        "seqs": [first_bad],
                    }))
                    .essential(),
            );
        }
        for ev in findings {
            let action = ev.action.clone();
            let a = log.append(ev)?;
            check.recorded.push((action, a.seq));
        }
        if !check.recorded.is_empty() {
            if let Err(e) = log.shared.checkpoint()
                && let Ok(mut st) = log.shared.lock()
            {
                st.checkpoint_error = Some(e.to_string());
            }
        } else if report.is_some()
            && let Some(f) = found
            && check.anchored_seq.is_none_or(|a| a < f)
        {
            // The counter is behind the verified statements (a crash after
            // a checkpoint was written, or the first start with a counter):
            // it catches up with the directory.
            if let Err(e) = log
                .shared
                .signer
                .store
                .advance_counter(CHECKPOINT_COUNTER, f)
            {
                check.unchecked.push(format!(
                    "the keystore counter '{CHECKPOINT_COUNTER}' could not be raised to {f}: {e}"
                ));
            }
        }
        if let Ok(mut st) = log.shared.lock() {
            st.opening = false;
        }
        log.startup = check;
        log.ticker = Some(spawn_ticker(log.shared.clone()));
        Ok(log)
    }

    /// What the start-up check found (see [`AuditLog::open`]).
    pub fn startup_check(&self) -> &StartupCheck {
        &self.startup
    }

    /// Notes a finding made while the device started that could not go on
    /// the record (e.g. `device.start` refused for capacity): it is shown
    /// with the start-up check's findings.
    pub fn note_finding(&self, finding: String) {
        if let Ok(mut n) = self.notes.lock() {
            n.push(finding);
        }
    }

    /// The start-up check's findings and the noted ones (for the posture).
    pub fn findings(&self) -> Vec<String> {
        let mut out = self.startup.findings();
        if let Ok(n) = self.notes.lock() {
            out.extend(n.iter().cloned());
        }
        out
    }

    /// Holds room for one record of an action about to be taken, so that
    /// the action runs only if its record is certain to fit (SR 2.10: an
    /// action the trail cannot record is refused). The capacity policy
    /// decides now, as it would for an append of `essential`; the room is
    /// given back if the reservation is dropped unused. Only a write
    /// failure can then stop [`AuditLog::append_reserved`].
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
                    sh.mark.advance(last);
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
        // The segments the readers see, in their order: stray entries stay out.
        let mut segments = Vec::new();
        for (first, path) in segment_dir(&sh.dir)?.0 {
            let len = std::fs::symlink_metadata(&path)
                .map_err(|e| fsu::FsError::io("stat", &path, e))?
                .len();
            segments.push((segment_name(first), len));
        }
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

    /// Ends this trail for good, as a factory reset does before it
    /// archives the directory: appends are refused from now on (records
    /// still being written fail), a final checkpoint covers every durable
    /// record, and nothing is written to the directory afterwards (no
    /// checkpoint on drop), so it can be moved away.
    pub fn retire(&self) -> Result<()> {
        let sh = &self.shared;
        {
            let mut st = sh.lock()?;
            st.failed = Some("the trail was retired (archived by a factory reset)".into());
            while st.flushing {
                st = sh.cond.wait(st).map_err(|_| poisoned())?;
            }
        }
        sh.cond.notify_all();
        sh.closed.store(true, Ordering::SeqCst);
        sh.mark.0.retired.store(true, Ordering::Release);
        if let Ok(mut s) = sh.stop.lock() {
            *s = true;
        }
        sh.stop_cond.notify_all();
        sh.checkpoint_unless_failed(false)
    }

    /// What a reader beside the writer may take as durable (see
    /// [`DurableMark`]): the forwarder sends nothing above it.
    pub fn durable_mark(&self) -> DurableMark {
        self.shared.mark.clone()
    }

    /// While `true`, a group of records is written to its segment but held
    /// before its fdatasync (appends wait): for tests of what a reader
    /// beside the writer sees of records not yet durable.
    #[doc(hidden)]
    pub fn hold_syncs(&self, hold: bool) {
        if let Ok(mut h) = self.shared.hold.lock() {
            *h = hold;
        }
        self.shared.hold_cond.notify_all();
    }

    /// Stops the background ticker and drops the log without the final
    /// checkpoint, as if the process had died here: for crash tests.
    #[doc(hidden)]
    pub fn abandon(mut self) {
        self.stop_ticker();
        self.shared.closed.store(true, Ordering::SeqCst);
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

/// The sequence number of the first frame of a segment, if it holds one.
fn first_seq_of(path: &Path) -> Result<Option<u64>> {
    use std::io::Read;
    let mut head = [0u8; frame::HEADER];
    let mut f = File::open(path).map_err(|e| fsu::FsError::io("open", path, e))?;
    if f.read_exact(&mut head).is_err() || head[0..4] != frame::MAGIC {
        return Ok(None);
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&head[8..16]);
    Ok(Some(u64::from_le_bytes(seq)))
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::path::PathBuf;

    use drivesec_keystore::{KeyAlgorithm, KeyHandle, KeystoreConfig};

    use super::*;

    thread_local! {
        /// What [`super::sync_path`] made durable on this thread.
        pub(super) static SYNCED: RefCell<Vec<PathBuf>> = const { RefCell::new(Vec::new()) };
    }

    /// `open_segment_prefix` opens a segment for sending its first bytes,
    /// and refuses what is not a segment of the trail: another name, a
    /// symbolic link, more bytes than the file holds.
    #[test]
    fn a_segment_prefix_is_opened_only_within_a_segment_file() {
        use std::io::Read;
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = tmp.path();
        let segs = dir.join(SEGMENTS);
        std::fs::create_dir_all(&segs).unwrap_or_else(|e| panic!("{e}"));
        let name = segment_name(1);
        std::fs::write(segs.join(&name), b"0123456789").unwrap_or_else(|e| panic!("{e}"));
        let (f, n) = open_segment_prefix(dir, &name, 4).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n, 4);
        let mut got = Vec::new();
        f.take(n)
            .read_to_end(&mut got)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got, b"0123");
        assert!(open_segment_prefix(dir, &name, 10).is_ok());
        assert!(open_segment_prefix(dir, &name, 11).is_err());
        assert!(open_segment_prefix(dir, "../checkpoint.json", 0).is_err());
        std::fs::write(dir.join("secret"), b"x").unwrap_or_else(|e| panic!("{e}"));
        let link = segment_name(2);
        std::os::unix::fs::symlink(dir.join("secret"), segs.join(&link))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(open_segment_prefix(dir, &link, 1).is_err());
        assert_eq!(
            read_segment_prefix(dir, &name, 3).unwrap_or_else(|e| panic!("{e}")),
            b"012"
        );
    }

    /// A daemon killed between a write and its fdatasync leaves records
    /// in the page cache only; the next start reads them from there. Open
    /// makes the last segment (the writer syncs a segment before it starts
    /// the next one), `segments/` and `checkpoints.log` durable before it
    /// verifies, signs, publishes the durable mark (what the forwarder may
    /// send) or counts them; and no more than that, however many segments
    /// the trail holds: a trail of 4 KiB segments up to 1 GiB would
    /// otherwise cost ~262 000 fsyncs (minutes on eMMC). Here 40 segments
    /// cost the same three as a trail of one.
    #[test]
    fn open_makes_what_it_found_durable_with_a_bounded_number_of_fsyncs() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (_, store) = KeystoreConfig::create_soft(tmp.path(), "ks", "secret")
            .unwrap_or_else(|e| panic!("{e}"));
        let handle = KeyHandle::new("idevid").unwrap_or_else(|e| panic!("{e}"));
        store
            .generate(&handle, KeyAlgorithm::EcdsaP256)
            .unwrap_or_else(|e| panic!("{e}"));
        let signer = Signer { store, handle };
        let dir = tmp.path().join("audit");
        let cfg = AuditConfig {
            segment_bytes: 4096,
            checkpoint_every: 20,
            ..AuditConfig::default()
        };
        let log =
            AuditLog::open(&dir, cfg.clone(), signer.clone()).unwrap_or_else(|e| panic!("{e}"));
        let pad = "p".repeat(1000);
        for i in 0..160 {
            log.append(
                Event::new(Actor::Device, "x").details(serde_json::json!({ "i": i, "pad": pad })),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        }
        log.checkpoint_now().unwrap_or_else(|e| panic!("{e}"));
        log.abandon();
        let (found, _) = segment_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert!(found.len() >= 40, "{}", found.len());
        SYNCED.with(|s| s.borrow_mut().clear());
        let log = AuditLog::open(&dir, cfg, signer).unwrap_or_else(|e| panic!("{e}"));
        assert!(log.startup_check().passed(), "{:#?}", log.startup_check());
        let synced = SYNCED.with(|s| s.borrow().clone());
        let (_, last) = found.last().unwrap_or_else(|| panic!("no segment"));
        assert!(
            synced.contains(last),
            "{} not synced: {synced:?}",
            last.display()
        );
        assert!(synced.contains(&dir.join(SEGMENTS)), "{synced:?}");
        assert!(synced.contains(&dir.join(CHECKPOINT_LOG)), "{synced:?}");
        assert!(synced.len() <= 3, "{} fsyncs: {synced:?}", synced.len());
        assert_eq!(log.durable_mark().seq(), 160);
        log.close().unwrap_or_else(|e| panic!("{e}"));
    }
}

//! Verification of a whole trail against the device's public key.
//!
//! Checks, in one pass: every frame's checksum (reading on past damaged
//! bytes, so the records after them are still checked); sequence numbers
//! without gap, repeat or reordering; each record's `prev` against the
//! previous record's hash; each segment's name against its first record;
//! every signed checkpoint (in `checkpoints.log` and `checkpoint.json`)
//! against the record it covers; the anchor of dropped segments; that no
//! checkpoint covers a record beyond the end of the trail (a cut tail); and
//! the device's own reports of damage it found at start-up. Problems are
//! reported with the sequence number of the first bad record; records no
//! signed checkpoint covers yet are named as the unsigned tail.
//! docs/audit.md ("Verification") is the specification.

use std::collections::BTreeMap;
use std::path::Path;

use drivesec_keystore::PublicKey;
use serde::Serialize;

use crate::Result;
use crate::checkpoint::{Checkpoint, CheckpointKind};
use crate::frame::Hash;
use crate::layout::{ANCHOR, CHECKPOINT_LOG, LATEST_CHECKPOINT, QUARANTINE, segment_dir};
use crate::scan::{Item, Scanner};

/// The action of the record the device writes when its start-up check
/// finds the trail damaged (docs/audit.md, "Start-up check").
pub const INTEGRITY_FAILED: &str = "audit.integrity-failed";
/// The action of the record the device writes when its signed checkpoints
/// went back or vanished: the keystore's counter is ahead of the trail.
pub const TRAIL_REWOUND: &str = "audit.trail-rewound";
/// The action of the record the device writes when its start-up check
/// reset a delivery cursor that claimed records beyond the trail or could
/// not be read. Not a problem of the records (the chain and the signatures
/// are untouched), so not part of the verdict; the device's posture counts
/// it for as long as it is in the trail (docs/audit.md, "Start-up check").
pub const CURSOR_RESET: &str = "audit.cursor-reset";

/// Kinds of problems a verification can find.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemKind {
    /// Bytes that are not a valid frame (modified, torn or inserted bytes),
    /// or a frame whose body is not a record.
    DamagedRecord,
    /// Sequence numbers jump: records were removed.
    MissingRecords,
    /// A sequence number repeats or goes back: records were inserted or reordered.
    OutOfOrder,
    /// A record's hash is not the one its successor recorded.
    BrokenLink,
    /// Records do not hash to what a signed checkpoint says.
    CheckpointMismatch,
    /// A checkpoint or anchor is malformed or its signature does not verify.
    ForgedCheckpoint,
    /// Records covered by a signed checkpoint are missing at the end, or
    /// the latest checkpoint was replaced by an older one or removed.
    CutTail,
    /// A segment file's name does not match its first record.
    MisnamedSegment,
    /// The device found damage or a rewind at start-up and recorded it in
    /// the trail (`audit.integrity-failed`, `audit.trail-rewound`).
    ReportedByDevice,
}

impl ProblemKind {
    /// The kebab-case name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::DamagedRecord => "damaged-record",
            ProblemKind::MissingRecords => "missing-records",
            ProblemKind::OutOfOrder => "out-of-order",
            ProblemKind::BrokenLink => "broken-link",
            ProblemKind::CheckpointMismatch => "checkpoint-mismatch",
            ProblemKind::ForgedCheckpoint => "forged-checkpoint",
            ProblemKind::CutTail => "cut-tail",
            ProblemKind::MisnamedSegment => "misnamed-segment",
            ProblemKind::ReportedByDevice => "reported-by-device",
        }
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The first record concerned, when one can be named.
    pub seq: Option<u64>,
    /// What kind.
    pub kind: ProblemKind,
    /// The file concerned.
    pub file: String,
    /// Byte offset in that file, when known.
    pub offset: Option<u64>,
    /// Plain description.
    pub message: String,
}

/// A first and last sequence number, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SeqRange {
    /// First.
    pub first: u64,
    /// Last.
    pub last: u64,
}

/// A record in which the device reported damage it found at start-up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceReport {
    /// The report's own sequence number.
    pub seq: u64,
    /// `audit.integrity-failed` or `audit.trail-rewound`.
    pub action: String,
    /// The first record the report says is bad.
    pub first_bad_seq: Option<u64>,
    /// The sequence numbers of the problems it reported (`details.seqs`).
    pub seqs: Vec<u64>,
}

/// The outcome of a verification.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// True only when nothing is wrong (records not yet signed are not a
    /// problem: see `unsigned`).
    pub ok: bool,
    /// Records read.
    pub records: u64,
    /// First sequence number present.
    pub first_seq: Option<u64>,
    /// Last sequence number present.
    pub last_seq: Option<u64>,
    /// Signed checkpoints whose signature and hash were checked.
    pub checkpoints_verified: u64,
    /// Sequence number `checkpoint.json` covers.
    pub latest_checkpoint: Option<u64>,
    /// The highest sequence number a checkpoint with a valid signature
    /// covers (in `checkpoints.log` or `checkpoint.json`).
    pub signed_seq: Option<u64>,
    /// Records up to this one were dropped under the capacity policy or
    /// archived by a factory reset (signed anchor).
    pub anchor: Option<u64>,
    /// Records present that no signed checkpoint covers: protected by the
    /// chain only, so they could be cut or replaced undetected. All of
    /// them when nothing is signed.
    pub unsigned: Option<SeqRange>,
    /// No signed checkpoint covers any record present (and there are records).
    pub nothing_signed: bool,
    /// The first bad record, when one can be named.
    pub first_bad_seq: Option<u64>,
    /// Everything found, in sequence order.
    pub problems: Vec<Problem>,
    /// Entries of `segments/` that are not segment files: ignored.
    pub stray_files: Vec<String>,
    /// Files under `quarantine/`: bytes recovery moved out of the trail.
    pub quarantined: Vec<String>,
    /// The device's own reports of damage found at start-up.
    pub device_reports: Vec<DeviceReport>,
    /// The sequence numbers of the device's `audit.cursor-reset` records
    /// (not problems; see [`CURSOR_RESET`]).
    #[serde(skip)]
    pub cursor_resets: Vec<u64>,
}

struct Checker<'k> {
    key: &'k PublicKey,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn problem(
        &mut self,
        seq: Option<u64>,
        kind: ProblemKind,
        file: &str,
        offset: Option<u64>,
        message: String,
    ) {
        self.problems.push(Problem {
            seq,
            kind,
            file: file.into(),
            offset,
            message,
        });
    }

    fn statement(&mut self, text: &[u8], file: &str, want: CheckpointKind) -> Option<(u64, Hash)> {
        let cp: Checkpoint = match serde_json::from_slice(text) {
            Ok(cp) => cp,
            Err(e) => {
                self.problem(
                    None,
                    ProblemKind::ForgedCheckpoint,
                    file,
                    None,
                    format!("unreadable statement: {e}"),
                );
                return None;
            }
        };
        let hash = cp.hash_bytes();
        if cp.kind != want || hash.is_none() || !cp.verify(self.key) {
            self.problem(
                Some(cp.seq),
                ProblemKind::ForgedCheckpoint,
                file,
                None,
                format!(
                    "the signed statement for record {} does not verify with the device key",
                    cp.seq
                ),
            );
            return None;
        }
        hash.map(|h| (cp.seq, h))
    }
}

/// Unreadable bytes met in a segment, reported once the next readable
/// record (or the end of the trail) shows which records they held.
struct Damage {
    file: String,
    offset: u64,
    end: u64,
    reason: &'static str,
}

/// Whether a record is one of the device's start-up reports; returns the
/// report's fields.
fn device_report(seq: u64, r: &crate::Record) -> Option<DeviceReport> {
    if (r.action != INTEGRITY_FAILED && r.action != TRAIL_REWOUND)
        || r.actor != crate::Actor::Device
    {
        return None;
    }
    let d = &r.details;
    Some(DeviceReport {
        seq,
        action: r.action.clone(),
        first_bad_seq: d["first_bad_seq"].as_u64(),
        seqs: d["seqs"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
            .unwrap_or_default(),
    })
}

/// Reports unreadable bytes; `next` is the first readable record after them.
fn report_damage(c: &mut Checker<'_>, d: Damage, expected: u64, next: Option<u64>) {
    let (seq, what) = match next {
        Some(n) if n > expected => (
            expected,
            format!("records {expected}..{} are unreadable", n - 1),
        ),
        Some(n) => (n, format!("bytes before record {n} are not a record")),
        None => (
            expected,
            format!("record {expected} and after are unreadable (no readable record follows)"),
        ),
    };
    c.problem(
        Some(seq),
        ProblemKind::DamagedRecord,
        &d.file,
        Some(d.offset),
        format!(
            "{what}: {} at bytes {}..{} (modified, inserted or torn bytes)",
            d.reason, d.offset, d.end
        ),
    );
}

/// Verifies the trail in `dir` against the device key.
pub fn verify(dir: &Path, key: &PublicKey) -> Result<Report> {
    let mut c = Checker {
        key,
        problems: Vec::new(),
    };
    let anchor_path = dir.join(ANCHOR);
    let anchor = if anchor_path.exists() {
        c.statement(
            &drivesec_fsutil::read(&anchor_path)?,
            ANCHOR,
            CheckpointKind::Anchor,
        )
    } else {
        None
    };

    // Signed checkpoints: seq -> hash.
    let mut checkpoints: BTreeMap<u64, Hash> = BTreeMap::new();
    let mut verified = 0u64;
    let log_path = dir.join(CHECKPOINT_LOG);
    let mut log_max: Option<u64> = None;
    if log_path.exists() {
        let text = drivesec_fsutil::read(&log_path)?;
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            if let Some((seq, h)) = c.statement(line, CHECKPOINT_LOG, CheckpointKind::Checkpoint) {
                if checkpoints.get(&seq).is_some_and(|x| *x != h) {
                    c.problem(
                        Some(seq),
                        ProblemKind::ForgedCheckpoint,
                        CHECKPOINT_LOG,
                        None,
                        format!("two signed checkpoints disagree about record {seq}"),
                    );
                }
                checkpoints.insert(seq, h);
                log_max = log_max.max(Some(seq));
                verified += 1;
            }
        }
    }
    let mut latest = None;
    let latest_path = dir.join(LATEST_CHECKPOINT);
    if latest_path.exists() {
        if let Some((seq, h)) = c.statement(
            &drivesec_fsutil::read(&latest_path)?,
            LATEST_CHECKPOINT,
            CheckpointKind::Checkpoint,
        ) {
            // checkpoint.json is written before the log line (a crash
            // between the two leaves it newer, which is fine); older than
            // the log means it was replaced.
            if let Some(max) = log_max
                && seq < max
            {
                c.problem(
                    Some(seq + 1),
                    ProblemKind::CutTail,
                    LATEST_CHECKPOINT,
                    None,
                    format!("checkpoint.json covers record {seq} but checkpoints.log has one for record {max} (the latest checkpoint was replaced by an older one)"),
                );
            }
            if checkpoints.get(&seq).is_some_and(|x| *x != h) {
                c.problem(
                    Some(seq),
                    ProblemKind::ForgedCheckpoint,
                    LATEST_CHECKPOINT,
                    None,
                    format!("two signed checkpoints disagree about record {seq}"),
                );
            }
            checkpoints.insert(seq, h);
            verified += 1;
            latest = Some(seq);
        }
    } else if let Some(max) = log_max {
        c.problem(
            Some(max),
            ProblemKind::CutTail,
            LATEST_CHECKPOINT,
            None,
            format!("checkpoint.json is missing but checkpoints.log has a checkpoint for record {max} (it is written first, so it was removed)"),
        );
    }

    // Walk the chain.
    let (segs, stray_files) = segment_dir(dir)?;
    let genesis_start = segs.first().is_none_or(|(first, _)| *first == 1);
    let (mut expected, mut head) = match (anchor, genesis_start) {
        (Some((seq, h)), false) => (seq + 1, h),
        _ => (1, [0u8; 32]),
    };
    // Whether `head` is the hash of record `expected - 1` (false after
    // unreadable bytes or a gap).
    let mut head_known = true;
    let mut first_seq = None;
    let mut last_seq = None;
    let mut records = 0u64;
    let mut pending: Option<Damage> = None;
    let mut reports: Vec<DeviceReport> = Vec::new();
    let mut cursor_resets: Vec<u64> = Vec::new();
    // Hashes of the records that checkpoints name, compared after the walk.
    let mut seen: BTreeMap<u64, Vec<(Hash, String, u64)>> = BTreeMap::new();
    for (first, path) in &segs {
        let name = crate::layout::segment_name(*first);
        let file = format!("segments/{name}");
        let mut sc = Scanner::open(path)?;
        let mut first_in_seg = true;
        while let Some(item) = sc.next_item()? {
            let (off, f) = match item {
                Item::Frame { offset, frame } => (offset, frame),
                Item::End { offset } => {
                    if offset == 0 && *first != expected {
                        c.problem(
                            Some(expected.min(*first)),
                            ProblemKind::MisnamedSegment,
                            &file,
                            Some(0),
                            format!(
                                "an empty segment is named for record {first} where record {expected} is next"
                            ),
                        );
                    }
                    break;
                }
                Item::Unreadable(u) => {
                    if let Some(d) = pending.take_if(|d| d.file != file) {
                        report_damage(&mut c, d, expected, None);
                    }
                    match &mut pending {
                        Some(d) => d.end = u.end,
                        None => {
                            pending = Some(Damage {
                                file: file.clone(),
                                offset: u.offset,
                                end: u.end,
                                reason: u.reason,
                            })
                        }
                    }
                    head_known = false;
                    // The scanner goes on at the next frame, if any.
                    continue;
                }
            };
            if first_in_seg && f.seq != *first {
                c.problem(
                    Some(f.seq.min(*first)),
                    ProblemKind::MisnamedSegment,
                    &file,
                    Some(0),
                    format!(
                        "segment named for record {first} starts with record {}",
                        f.seq
                    ),
                );
            }
            first_in_seg = false;
            let damaged = pending.take();
            let after_damage = damaged.is_some();
            if let Some(d) = damaged {
                report_damage(&mut c, d, expected, Some(f.seq));
            }
            if f.seq > expected {
                if !after_damage {
                    c.problem(
                        Some(expected),
                        ProblemKind::MissingRecords,
                        &file,
                        Some(off),
                        format!(
                            "records {expected}..{} are missing (next record found is {})",
                            f.seq - 1,
                            f.seq
                        ),
                    );
                }
            } else if f.seq < expected {
                c.problem(
                    Some(f.seq),
                    ProblemKind::OutOfOrder,
                    &file,
                    Some(off),
                    format!(
                        "record {} appears where record {expected} belongs (inserted or reordered)",
                        f.seq
                    ),
                );
            } else if head_known && f.prev != head {
                let bad = f.seq.saturating_sub(1).max(1);
                let message = if f.seq == 1 || Some(f.seq - 1) == anchor.map(|a| a.0) {
                    format!(
                        "record {} does not start the chain (records before it were removed)",
                        f.seq
                    )
                } else {
                    format!(
                        "record {bad} does not hash to the value record {} recorded (modified, or a record inserted or removed)",
                        f.seq
                    )
                };
                c.problem(
                    Some(bad),
                    ProblemKind::BrokenLink,
                    &file,
                    Some(off),
                    message,
                );
            }
            match crate::Record::parse(f.body) {
                Ok(r) => {
                    if r.action == CURSOR_RESET && r.actor == crate::Actor::Device {
                        cursor_resets.push(f.seq);
                    }
                    reports.extend(device_report(f.seq, &r));
                }
                Err(e) => c.problem(
                    Some(f.seq),
                    ProblemKind::DamagedRecord,
                    &file,
                    Some(off),
                    format!("record {}: the body is not a record: {e}", f.seq),
                ),
            }
            if checkpoints.contains_key(&f.seq) {
                seen.entry(f.seq)
                    .or_default()
                    .push((f.hash, file.clone(), off));
            }
            if anchor.is_some_and(|(s, h)| s == f.seq && h != f.hash) {
                c.problem(
                    Some(f.seq),
                    ProblemKind::CheckpointMismatch,
                    &file,
                    Some(off),
                    format!("record {} does not match the signed anchor", f.seq),
                );
            }
            first_seq.get_or_insert(f.seq);
            last_seq = Some(f.seq);
            records += 1;
            head = f.hash;
            head_known = true;
            expected = f.seq.saturating_add(1);
        }
    }
    if let Some(d) = pending.take() {
        report_damage(&mut c, d, expected, None);
    }
    // A checkpoint whose record does not hash as signed means the interval
    // since the previous checkpoint was rewritten and re-chained. When the
    // walk already named a bad record in that interval, that finding is the
    // more precise one.
    let mut prev_cp = anchor.map(|a| a.0).unwrap_or(0);
    for (&seq, hash) in &checkpoints {
        if let Some(found) = seen.get(&seq)
            && !found.iter().any(|(h, _, _)| h == hash)
        {
            let explained = c
                .problems
                .iter()
                .any(|p| p.seq.is_some_and(|s| s > prev_cp && s <= seq));
            if !explained {
                let (_, file, off) = &found[0];
                let (file, off) = (file.clone(), *off);
                c.problem(
                    Some(prev_cp + 1),
                    ProblemKind::CheckpointMismatch,
                    &file,
                    Some(off),
                    format!(
                        "records {}..{seq} do not match the signed checkpoint at record {seq} (rewritten)",
                        prev_cp + 1
                    ),
                );
            }
        }
        prev_cp = seq;
    }
    let end = expected - 1;
    let signed_seq = checkpoints.keys().next_back().copied();
    if let Some(cp) = signed_seq
        && cp > end
    {
        c.problem(
            Some(end + 1),
            ProblemKind::CutTail,
            "segments",
            None,
            format!("the trail ends at record {end} but a signed checkpoint covers record {cp}: records {}..{cp} were removed", end + 1),
        );
    }
    // What the device itself found at start-up stays part of the verdict:
    // a rewind, in particular, leaves no other trace in the directory.
    for r in &reports {
        let first_bad = r.first_bad_seq.unwrap_or(r.seq);
        let message = if r.action == TRAIL_REWOUND {
            format!(
                "record {}: at start-up the device found its signed checkpoints had gone back or vanished (the keystore's counter was ahead of the trail): records from {first_bad} on are not proven",
                r.seq
            )
        } else {
            format!(
                "record {}: at start-up the device found the trail damaged from record {first_bad} on (see that record's details)",
                r.seq
            )
        };
        c.problem(
            Some(first_bad),
            ProblemKind::ReportedByDevice,
            "segments",
            None,
            message,
        );
    }
    // The unsigned tail: records after the highest signed checkpoint (or
    // the anchor, whose records are gone).
    let covered = signed_seq
        .unwrap_or(0)
        .max(anchor.map(|a| a.0).unwrap_or(0));
    let unsigned = match (first_seq, last_seq) {
        (Some(f), Some(l)) if l > covered => Some(SeqRange {
            first: f.max(covered + 1),
            last: l,
        }),
        _ => None,
    };
    let nothing_signed = records > 0 && unsigned.is_some_and(|u| Some(u.first) == first_seq);
    let mut quarantined = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir.join(QUARANTINE)) {
        for e in rd.flatten() {
            quarantined.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    quarantined.sort();
    let mut problems = c.problems;
    problems.sort_by_key(|p| (p.seq.unwrap_or(0), p.kind));
    let first_bad_seq = problems.iter().filter_map(|p| p.seq).min();
    Ok(Report {
        ok: problems.is_empty(),
        records,
        first_seq,
        last_seq,
        checkpoints_verified: verified,
        latest_checkpoint: latest,
        signed_seq,
        anchor: anchor.map(|a| a.0),
        unsigned,
        nothing_signed,
        first_bad_seq,
        problems,
        stray_files,
        quarantined,
        device_reports: reports,
        cursor_resets,
    })
}

//! Verification of a whole trail against the device's public key.
//!
//! Checks, in one pass: every frame's checksum; sequence numbers without gap,
//! repeat or reordering; each record's `prev` against the previous record's
//! hash; every signed checkpoint (in `checkpoints.log` and `checkpoint.json`)
//! against the record it covers; the anchor of dropped segments; and that no
//! checkpoint covers a record beyond the end of the trail (a cut tail).
//! Problems are reported with the sequence number of the first bad record.

use std::collections::BTreeMap;
use std::path::Path;

use drivesec_keystore::PublicKey;
use serde::Serialize;

use crate::Result;
use crate::checkpoint::{Checkpoint, CheckpointKind};
use crate::frame::{self, Decoded, Hash};
use crate::writer::{ANCHOR, CHECKPOINT_LOG, LATEST_CHECKPOINT, list_segments, segment_name};

/// Kinds of problems a verification can find.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemKind {
    /// A frame is malformed or fails its checksum (modified or torn bytes).
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
    /// Records covered by a signed checkpoint are missing at the end.
    CutTail,
    /// A segment file's name does not match its first record.
    MisnamedSegment,
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

/// The outcome of a verification.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// True only when nothing is wrong.
    pub ok: bool,
    /// Records read.
    pub records: u64,
    /// First sequence number present.
    pub first_seq: Option<u64>,
    /// Last sequence number present.
    pub last_seq: Option<u64>,
    /// Signed checkpoints whose signature and hash were checked.
    pub checkpoints_verified: u64,
    /// Sequence number the latest checkpoint covers.
    pub latest_checkpoint: Option<u64>,
    /// Records up to this one were dropped under the capacity policy (signed anchor).
    pub anchor: Option<u64>,
    /// The first bad record, when one can be named.
    pub first_bad_seq: Option<u64>,
    /// Everything found, in sequence order.
    pub problems: Vec<Problem>,
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
    if log_path.exists() {
        let text = drivesec_fsutil::read(&log_path)?;
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            if let Some((seq, h)) = c.statement(line, CHECKPOINT_LOG, CheckpointKind::Checkpoint) {
                checkpoints.insert(seq, h);
                verified += 1;
            }
        }
    }
    let mut latest = None;
    let latest_path = dir.join(LATEST_CHECKPOINT);
    if latest_path.exists()
        && let Some((seq, h)) = c.statement(
            &drivesec_fsutil::read(&latest_path)?,
            LATEST_CHECKPOINT,
            CheckpointKind::Checkpoint,
        )
    {
        if let Some((&max, _)) = checkpoints.iter().next_back()
            && seq < max
        {
            c.problem(
                    Some(seq + 1),
                    ProblemKind::CutTail,
                    LATEST_CHECKPOINT,
                    None,
                    format!("checkpoint.json covers record {seq} but checkpoints.log has one for record {max}"),
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

    // Walk the chain.
    let segs = list_segments(dir)?;
    let genesis_start = segs.first().is_none_or(|(first, _)| *first == 1);
    let (mut expected, mut head) = match (anchor, genesis_start) {
        (Some((seq, h)), false) => (seq + 1, h),
        _ => (1, [0u8; 32]),
    };
    let mut first_seq = None;
    let mut records = 0u64;
    // Hashes of the records that checkpoints name, compared after the walk.
    let mut seen: BTreeMap<u64, Vec<(Hash, String, u64)>> = BTreeMap::new();
    'segments: for (first, path) in &segs {
        let name = segment_name(*first);
        let file = format!("segments/{name}");
        let data = drivesec_fsutil::read(path)?;
        let mut off = 0usize;
        let mut first_in_seg = true;
        while off < data.len() {
            let f = match frame::decode(&data[off..]) {
                Decoded::Frame(f) => f,
                Decoded::End => break,
                Decoded::Bad(reason) => {
                    c.problem(
                        Some(expected),
                        ProblemKind::DamagedRecord,
                        &file,
                        Some(off as u64),
                        format!("record {expected}: {reason} (bytes modified or torn)"),
                    );
                    break 'segments;
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
            if f.seq > expected {
                c.problem(
                    Some(expected),
                    ProblemKind::MissingRecords,
                    &file,
                    Some(off as u64),
                    format!(
                        "records {expected}..{} are missing (next record found is {})",
                        f.seq - 1,
                        f.seq
                    ),
                );
            } else if f.seq < expected {
                c.problem(
                    Some(f.seq),
                    ProblemKind::OutOfOrder,
                    &file,
                    Some(off as u64),
                    format!(
                        "record {} appears where record {expected} belongs (inserted or reordered)",
                        f.seq
                    ),
                );
            } else if f.prev != head {
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
                    Some(off as u64),
                    message,
                );
            }
            if checkpoints.contains_key(&f.seq) {
                seen.entry(f.seq)
                    .or_default()
                    .push((f.hash, file.clone(), off as u64));
            }
            if anchor.is_some_and(|(s, h)| s == f.seq && h != f.hash) {
                c.problem(
                    Some(f.seq),
                    ProblemKind::CheckpointMismatch,
                    &file,
                    Some(off as u64),
                    format!("record {} does not match the signed anchor", f.seq),
                );
            }
            first_seq.get_or_insert(f.seq);
            records += 1;
            head = f.hash;
            expected = f.seq + 1;
            off += f.len;
        }
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
    let last_seq = (records > 0).then(|| expected - 1);
    let end = expected - 1;
    if let Some((&cp, _)) = checkpoints.iter().next_back()
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
    let mut problems = c.problems;
    problems.sort_by_key(|p| p.seq.unwrap_or(0));
    let first_bad_seq = problems.iter().filter_map(|p| p.seq).min();
    Ok(Report {
        ok: problems.is_empty(),
        records,
        first_seq,
        last_seq,
        checkpoints_verified: verified,
        latest_checkpoint: latest,
        anchor: anchor.map(|a| a.0),
        first_bad_seq,
        problems,
    })
}

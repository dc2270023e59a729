//! Reading the trail: by sequence range, by time, by filter; JSON-lines export.
//!
//! Readers may run beside a writer: a record still being written at the end
//! of the last segment is simply not seen yet.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::Path;

use serde::Serialize;

use crate::frame::Hash;
use crate::layout::list_segments;
use crate::scan::{Item, Scanner};
use crate::{AuditError, Outcome, Record, Result};

/// A record as read back, with its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredRecord {
    /// Sequence number.
    pub seq: u64,
    /// Its hash, hex.
    pub hash: String,
    /// The previous record's hash, hex.
    pub prev: String,
    /// The record.
    #[serde(flatten)]
    pub record: Record,
}

/// Which records to read. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// First sequence number.
    pub from_seq: Option<u64>,
    /// Last sequence number (inclusive).
    pub to_seq: Option<u64>,
    /// Records at or after this RFC 3339 UTC time.
    pub since: Option<String>,
    /// Records before this RFC 3339 UTC time.
    pub until: Option<String>,
    /// Actor id (user name or certificate fingerprint), or `device`.
    pub actor: Option<String>,
    /// Action, or a prefix ending in `.` (e.g. `auth.`).
    pub action: Option<String>,
    /// Outcome.
    pub outcome: Option<Outcome>,
}

impl Query {
    fn matches(&self, seq: u64, r: &Record) -> bool {
        use crate::Actor;
        self.from_seq.is_none_or(|f| seq >= f)
            && self.to_seq.is_none_or(|t| seq <= t)
            && self
                .since
                .as_ref()
                .is_none_or(|s| r.time.as_str() >= s.as_str())
            && self
                .until
                .as_ref()
                .is_none_or(|u| r.time.as_str() < u.as_str())
            && self.outcome.is_none_or(|o| r.outcome == o)
            && self.action.as_ref().is_none_or(|a| {
                if a.ends_with('.') {
                    r.action.starts_with(a.as_str())
                } else {
                    r.action == *a
                }
            })
            && self.actor.as_ref().is_none_or(|a| match &r.actor {
                Actor::User(u) | Actor::Certificate(u) => u == a,
                Actor::Device => a == "device",
            })
    }
}

/// Calls `f(seq, hash, prev, body)` for every readable frame from `from_seq` on,
/// in order, until it returns `Break`. Bytes that are not a frame are
/// skipped to the next readable frame (so damage hides only itself); use
/// [`check`] or [`export_jsonl`] where a complete chain is required.
pub fn for_each_frame(
    dir: &Path,
    from_seq: u64,
    mut f: impl FnMut(u64, &Hash, &Hash, &[u8]) -> ControlFlow<()>,
) -> Result<()> {
    let segs = list_segments(dir)?;
    for (i, (_, path)) in segs.iter().enumerate() {
        if let Some((next_first, _)) = segs.get(i + 1)
            && *next_first <= from_seq
        {
            continue;
        }
        let mut sc = Scanner::open(path)?;
        while let Some(item) = sc.next_item()? {
            if let Item::Frame { frame: fr, .. } = item
                && fr.seq >= from_seq
                && f(fr.seq, &fr.hash, &fr.prev, fr.body).is_break()
            {
                return Ok(());
            }
            // Unreadable bytes: the scanner goes on at the next frame.
        }
    }
    Ok(())
}

fn damaged(path: &Path, reason: String) -> AuditError {
    AuditError::Corrupt {
        path: path.to_path_buf(),
        reason: format!(
            "{reason}: the trail is damaged (`drivesec audit verify` names every problem)"
        ),
    }
}

/// Walks records `from_seq..=to_seq` requiring an unbroken chain: every
/// frame readable, each segment starting with the record its name says,
/// sequence numbers without gap, repeat or step back, each `prev` equal to
/// the previous record's hash. Calls `f` for each record in the range and
/// fails, naming the damage, at the first break inside it. Damage wholly
/// before `from_seq` does not matter; an incomplete frame at the very end
/// is a record still being written and ends the walk.
fn walk_chain(
    dir: &Path,
    from_seq: u64,
    to_seq: u64,
    mut f: impl FnMut(u64, &Hash, &Hash, &[u8]) -> Result<()>,
) -> Result<()> {
    let segs = list_segments(dir)?;
    let mut prev: Option<(u64, Hash)> = None;
    let last_index = segs.len().saturating_sub(1);
    for (i, (first, path)) in segs.iter().enumerate() {
        if let Some((next_first, _)) = segs.get(i + 1)
            && *next_first <= from_seq
        {
            continue;
        }
        let mut sc = Scanner::open(path)?;
        let mut first_in_seg = true;
        // Unreadable bytes since the last record: (offset, reason).
        let mut bad: Option<(u64, &'static str)> = None;
        while let Some(item) = sc.next_item()? {
            let fr = match item {
                Item::Frame { frame, .. } => frame,
                Item::End { .. } => break,
                Item::Unreadable(u) => {
                    if u.to_end
                        && i == last_index
                        && u.reason.starts_with("truncated")
                        && bad.is_none()
                    {
                        // A record being appended right now.
                        break;
                    }
                    bad.get_or_insert((u.offset, u.reason));
                    // The scanner goes on at the next frame, if any.
                    continue;
                }
            };
            // Past the range: done, unless the range itself ends short (the
            // last record read is below `to_seq` and this one does not
            // follow it): then the checks below name what is missing.
            if fr.seq > to_seq
                && !prev.is_some_and(|(ps, _)| ps < to_seq && ps.saturating_add(1) >= from_seq)
            {
                return Ok(());
            }
            let in_range = fr.seq > from_seq;
            if let Some((at, reason)) = bad.take()
                && in_range
            {
                return Err(damaged(
                    path,
                    format!(
                        "unreadable bytes at offset {at} ({reason}) before record {}{}",
                        fr.seq,
                        prev.map(|(s, _)| format!(", after record {s}"))
                            .unwrap_or_default()
                    ),
                ));
            }
            if first_in_seg && fr.seq != *first && fr.seq >= from_seq {
                return Err(damaged(
                    path,
                    format!(
                        "the segment is named for record {first} but starts with record {}",
                        fr.seq
                    ),
                ));
            }
            first_in_seg = false;
            if let Some((ps, ph)) = prev
                && in_range
            {
                if fr.seq != ps.saturating_add(1) {
                    return Err(damaged(
                        path,
                        if fr.seq > ps {
                            format!(
                                "records {}..{} are missing (record {} follows record {ps})",
                                ps + 1,
                                fr.seq - 1,
                                fr.seq
                            )
                        } else {
                            format!(
                                "record {} follows record {ps} (inserted or reordered)",
                                fr.seq
                            )
                        },
                    ));
                }
                if fr.prev != ph {
                    return Err(damaged(
                        path,
                        format!(
                            "record {ps} does not hash to the value record {} recorded (modified)",
                            fr.seq
                        ),
                    ));
                }
            }
            if fr.seq > to_seq {
                return Ok(());
            }
            prev = Some((fr.seq, fr.hash));
            if fr.seq >= from_seq {
                f(fr.seq, &fr.hash, &fr.prev, fr.body)?;
            }
        }
        if let Some((at, reason)) = bad
            && prev.is_none_or(|(s, _)| s >= from_seq)
        {
            return Err(damaged(
                path,
                format!(
                    "unreadable bytes at offset {at} ({reason}){}",
                    prev.map(|(s, _)| format!(" after record {s}"))
                        .unwrap_or_default()
                ),
            ));
        }
    }
    Ok(())
}

/// Checks that records `from_seq..=to_seq` form an unbroken chain (see
/// [`export_jsonl`]); the error names the first break. No key is needed:
/// this finds damage, not forgery (`verify` checks the signatures).
pub fn check(dir: &Path, from_seq: u64, to_seq: u64) -> Result<()> {
    walk_chain(dir, from_seq, to_seq, |_, _, _, _| Ok(()))
}

fn parse(seq: u64, body: &[u8]) -> Result<Record> {
    Record::parse(body).map_err(|e| AuditError::Corrupt {
        path: format!("record {seq}").into(),
        // The parser quotes what it read (an unknown variant, say), which
        // came from the trail: control characters are shown escaped.
        reason: format!("body is not a record: {}", printable(&e.to_string())),
    })
}

/// `s` with control characters escaped (`\u{1b}`), for messages that
/// quote bytes read from a trail.
fn printable(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let esc: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            esc
        })
        .collect()
}

/// Reads matching records, at most `limit`.
pub fn read(dir: &Path, q: &Query, limit: usize) -> Result<Vec<StoredRecord>> {
    let mut out = Vec::new();
    let mut err = None;
    for_each_frame(dir, q.from_seq.unwrap_or(1), |seq, hash, prev, body| {
        if q.to_seq.is_some_and(|t| seq > t) || out.len() >= limit {
            return ControlFlow::Break(());
        }
        match parse(seq, body) {
            Ok(record) if q.matches(seq, &record) => out.push(StoredRecord {
                seq,
                hash: hex::encode(hash),
                prev: hex::encode(prev),
                record,
            }),
            Ok(_) => {}
            Err(e) => {
                err = Some(e);
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    })?;
    match err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// Writes matching records as JSON lines; returns (count, last sequence number written).
///
/// An export never drops or reorders records silently: the range is first
/// checked ([`check`]) and the export then fails, naming the damage,
/// rather than write a record after a gap, an unreadable frame, a
/// misnamed segment or a broken link.
pub fn export_jsonl(dir: &Path, q: &Query, out: &mut dyn Write) -> Result<(u64, u64)> {
    let from = q.from_seq.unwrap_or(1);
    let to = q.to_seq.unwrap_or(u64::MAX);
    check(dir, from, to)?;
    let mut n = 0;
    let mut last = 0;
    walk_chain(dir, from, to, |seq, hash, prev, body| {
        let record = parse(seq, body)?;
        if q.matches(seq, &record) {
            let line = serde_json::to_string(&StoredRecord {
                seq,
                hash: hex::encode(hash),
                prev: hex::encode(prev),
                record,
            })
            .map_err(|e| AuditError::Invalid(e.to_string()))?;
            writeln!(out, "{line}")
                .map_err(|e| AuditError::Invalid(format!("export output: {e}")))?;
            n += 1;
            last = seq;
        }
        Ok(())
    })?;
    Ok((n, last))
}

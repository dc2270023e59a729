//! Reading the trail: by sequence range, by time, by filter; JSON-lines export.
//!
//! Readers may run beside a writer: a record still being written at the end
//! of the last segment is simply not seen yet.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::Path;

use serde::Serialize;

use crate::frame::{self, Decoded, Hash};
use crate::writer::list_segments;
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
/// in order, until it returns `Break`.
pub fn for_each_frame(
    dir: &Path,
    from_seq: u64,
    mut f: impl FnMut(u64, &Hash, &Hash, &[u8]) -> ControlFlow<()>,
) -> Result<()> {
    let segs = list_segments(dir)?;
    for (i, (first, path)) in segs.iter().enumerate() {
        if let Some((next_first, _)) = segs.get(i + 1)
            && *next_first <= from_seq
        {
            continue;
        }
        let _ = first;
        let data = drivesec_fsutil::read(path)?;
        let mut off = 0;
        while off < data.len() {
            match frame::decode(&data[off..]) {
                Decoded::Frame(fr) => {
                    if fr.seq >= from_seq && f(fr.seq, &fr.hash, &fr.prev, fr.body).is_break() {
                        return Ok(());
                    }
                    off += fr.len;
                }
                _ => break,
            }
        }
    }
    Ok(())
}

fn parse(seq: u64, body: &[u8]) -> Result<Record> {
    serde_json::from_slice(body).map_err(|e| AuditError::Corrupt {
        path: format!("record {seq}").into(),
        reason: format!("body is not a record: {e}"),
    })
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
pub fn export_jsonl(dir: &Path, q: &Query, out: &mut dyn Write) -> Result<(u64, u64)> {
    let mut n = 0;
    let mut last = 0;
    let mut err = None;
    for_each_frame(dir, q.from_seq.unwrap_or(1), |seq, hash, prev, body| {
        if q.to_seq.is_some_and(|t| seq > t) {
            return ControlFlow::Break(());
        }
        let res = parse(seq, body).and_then(|record| {
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
        });
        match res {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                err = Some(e);
                ControlFlow::Break(())
            }
        }
    })?;
    match err {
        Some(e) => Err(e),
        None => Ok((n, last)),
    }
}

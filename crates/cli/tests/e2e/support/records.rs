//! Reading a device's audit trail and picking records from it.

use std::path::Path;

use drivesec_audit::reader::StoredRecord;
use serde_json::Value;

/// The records of a trail directory, in order.
pub fn trail_records(trail: &Path) -> Vec<StoredRecord> {
    drivesec_audit::reader::read(trail, &drivesec_audit::reader::Query::default(), usize::MAX)
        .unwrap()
}

/// The records of `action`.
pub fn actions<'a>(recs: &'a [StoredRecord], action: &str) -> Vec<&'a StoredRecord> {
    recs.iter().filter(|r| r.record.action == action).collect()
}

/// A record's outcome as the trail spells it (`success`, `failure`, ...).
pub fn outcome(r: &StoredRecord) -> String {
    serde_json::to_value(r.record.outcome)
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

/// The records of `action` that failed.
pub fn failures<'a>(recs: &'a [StoredRecord], action: &str) -> Vec<&'a StoredRecord> {
    actions(recs, action)
        .into_iter()
        .filter(|r| outcome(r) == "failure")
        .collect()
}

/// How many events one aggregated record (as the API lists it) stands for.
pub fn counted_in(r: &Value) -> u64 {
    drivesec_audit::events_counted(&r["details"])
}
